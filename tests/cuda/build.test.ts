/**
 * Compiles the CUDA library with nvcc when nvcc is installed (CI machines without CUDA skip), then loads it through
 * the koffi binding: koffi resolves every declared entry point at load, so a signature or symbol mismatch between
 * lib.ts and engine.cu fails here. Without a GPU the first call must fail with a clear DejavuError.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../helpers/fixtures.js';
import { DejavuError } from '../../common/errors.js';
import { loadCudaLib } from '../../runtime/cuda/lib.js';

function has(cmd: string, args: string[]): boolean {
  try {
    execFileSync(cmd, args, { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}
const NVCC = has('nvcc', ['--version']);
const GPU = has('nvidia-smi', ['-L']);

describe.skipIf(!NVCC)('CUDA library build (nvcc present)', () => {
  it('npm run build:cuda compiles runtime/cuda/engine.cu for sm_80 (portable path) and sm_90 (streamed path)', () => {
    const r = spawnSync(process.execPath, [join(REPO_ROOT, 'scripts', 'build-cuda.mjs'), '--lib-only'], { encoding: 'utf8' });
    expect(r.stderr).toMatch(/libdejavu_cuda\.so built/);
    expect(r.status).toBe(0);
    expect(existsSync(join(REPO_ROOT, 'runtime', 'cuda', 'build', 'libdejavu_cuda.so'))).toBe(true);
  }, 120_000);

  // The stand-alone GPU programs under bench/cuda (they include the engine's headers, so an API change breaks them).
  const programs: [file: string, why: string, flags: string[]][] = [
    ['mmadot.cu', 'the consumer microbenchmark (its mma.sync / ldmatrix inline PTX included)', []],
    ['stream.cu', 'the streaming microbenchmark (it includes kernels.cuh and tma.cuh)', []],
  ];
  for (const [file, why, flags] of programs)
    it(`bench/cuda/${file} compiles: ${why}`, () => {
      const out = join(mkdtempSync(join(tmpdir(), 'dj-bench-cu-')), file.replace('.cu', ''));
      const src = join(REPO_ROOT, 'bench', 'cuda', file);
      const r = spawnSync('nvcc', ['-O3', '-arch=sm_90', '-std=c++17', ...flags, '-o', out, src], { encoding: 'utf8' });
      expect(r.stderr).not.toMatch(/error/);
      expect(r.status).toBe(0);
      expect(existsSync(out)).toBe(true);
    }, 240_000);

  it.skipIf(GPU)('the binding loads every entry point; without a GPU the first call is a clear DejavuError', async () => {
    const lib = await loadCudaLib(join(REPO_ROOT, 'runtime', 'cuda', 'build', 'libdejavu_cuda.so'));
    expect(() => lib.deviceInfo()).toThrow(DejavuError);
    expect(() => lib.deviceInfo()).toThrow(/no usable CUDA GPU on this machine \(.*(driver|device)/i);
  });
});

describe('build:cuda arguments', () => {
  it('an architecture older than sm_80 is refused before nvcc runs', () => {
    const r = spawnSync(process.execPath, [join(REPO_ROOT, 'scripts', 'build-cuda.mjs'), '--lib-only'], {
      encoding: 'utf8',
      env: { ...process.env, DEJAVU_CUDA_ARCH: 'sm_75' },
    });
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/DEJAVU_CUDA_ARCH: 'sm_75' is not an architecture sm_80 or newer/);
  });
});

// Options cross koffi as one struct (engine.cu DjOptions): the library reads no DEJAVU_CUDA_* knobs and nothing
// writes process.env to steer it.
describe('runtime/cuda reads no environment knobs', () => {
  const dir = join(REPO_ROOT, 'runtime', 'cuda');
  it('no getenv in the library sources', () => {
    for (const f of readdirSync(dir).filter((f) => /\.(cu|cuh)$/.test(f) && f !== 'check.cu'))
      expect(readFileSync(join(dir, f), 'utf8'), f).not.toMatch(/\bgetenv\s*\(/);
  });
  it('no process.env writes in any source folder (options travel as arguments)', () => {
    const sources = (dir: string): string[] =>
      readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
        e.isDirectory() ? sources(join(dir, e.name)) : e.name.endsWith('.ts') ? [join(dir, e.name)] : []);
    const files = ['bench', 'checkpoints', 'cli', 'collect', 'common', 'datasets', 'export', 'report', 'runtime', 'train']
      .filter((d) => existsSync(join(REPO_ROOT, d)))
      .flatMap((d) => sources(join(REPO_ROOT, d)));
    expect(files.length).toBeGreaterThan(50);
    for (const f of files)
      expect(readFileSync(f, 'utf8'), f).not.toMatch(/process\.env(\.\w+|\[[^\]]+\])\s*(\?\?|\|\|)?=[^=]/);
  });
});

describe('nvcc missing', () => {
  it('npm run build:cuda stops with a clear message, exit 1, building nothing', () => {
    const r = spawnSync(process.execPath, [join(REPO_ROOT, 'scripts', 'build-cuda.mjs'), '--lib-only'], {
      encoding: 'utf8',
      env: { ...process.env, NVCC: join(tmpdir(), 'no-such-nvcc') },
    });
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/NVCC=.*no-such-nvcc does not run as nvcc/);
    expect(r.stderr).not.toMatch(/built/);
  });
});

describe('CUDA library missing', () => {
  it('loadCudaLib names the file and how to build it', async () => {
    const path = join(mkdtempSync(join(tmpdir(), 'dj-cuda-')), 'libdejavu_cuda.so');
    await expect(loadCudaLib(path)).rejects.toThrow(/not built; run `npm run build:cuda`/);
  });
});
