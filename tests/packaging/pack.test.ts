/**
 * The npm package can build its CUDA library: `npm pack` ships scripts/build-cuda.mjs and every file it compiles,
 * found by reading the script's sources and following their `#include "..."` lines (so headers added or removed
 * later are covered without editing this test), and `dejavu build-cuda` runs that script from an installed copy.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, posix } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../helpers/fixtures.js';

const BUILD_SCRIPT = 'scripts/build-cuda.mjs';

/** The .cu files build-cuda.mjs hands to nvcc, as repository paths. */
function buildSources(): string[] {
  const text = readFileSync(join(REPO_ROOT, BUILD_SCRIPT), 'utf8');
  const srcDecl = /const src = join\(root((?:,\s*'[^']+')+)\)/.exec(text);
  expect(srcDecl, `${BUILD_SCRIPT}: no \`const src = join(root, ...)\`; update this test's parser`).not.toBeNull();
  const srcDir = [...srcDecl![1].matchAll(/'([^']+)'/g)].map((m) => m[1]).join('/');
  const files = [...text.matchAll(/join\(src,\s*'([^']+\.cu)'\)/g)].map((m) => `${srcDir}/${m[1]}`);
  expect(files.length, `${BUILD_SCRIPT}: no join(src, '*.cu') sources found; update this test's parser`).toBeGreaterThan(0);
  return files;
}

/** Every repository file the build reads: the sources and, transitively, the files they #include "...". */
function filesTheBuildReads(): string[] {
  const seen = new Set<string>();
  const queue = buildSources();
  while (queue.length) {
    const file = queue.pop()!;
    if (seen.has(file)) continue;
    const abs = join(REPO_ROOT, file);
    expect(existsSync(abs), `${file} (read by the CUDA build) is missing from the repository`).toBe(true);
    seen.add(file);
    for (const m of readFileSync(abs, 'utf8').matchAll(/^\s*#\s*include\s+"([^"]+)"/gm))
      queue.push(posix.normalize(posix.join(posix.dirname(file), m[1])));
  }
  return [BUILD_SCRIPT, ...[...seen].sort()];
}

let packed: string[];
beforeAll(() => {
  // --ignore-scripts: the list comes from package.json "files" and the tree; `prepare` (a full tsc build) is not needed.
  const r = spawnSync('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], { cwd: REPO_ROOT, encoding: 'utf8' });
  expect(r.status, r.stderr).toBe(0);
  const out = JSON.parse(r.stdout) as { files: { path: string }[] }[];
  packed = out[0].files.map((f) => f.path);
}, 120_000);

describe('npm pack', () => {
  it('ships the CUDA build script and every file it compiles (sources and their #include chain)', () => {
    const needed = filesTheBuildReads();
    expect(needed.filter((f) => f.endsWith('.cuh')).length).toBeGreaterThan(0);
    expect(needed.filter((f) => !packed.includes(f))).toEqual([]);
  });

  it('ships no build output (runtime/cuda/build/ is made on the installing machine)', () => {
    expect(packed.filter((f) => f.startsWith('runtime/cuda/build/'))).toEqual([]);
  });
});

describe('dejavu build-cuda', () => {
  it('finds the package root from dist/cli/commands and from cli/commands (lib.ts looks in <root>/runtime/cuda/build)', async () => {
    const { packageRoot } = await import('../../cli/commands/build-cuda.js');
    expect(packageRoot(join(REPO_ROOT, 'dist', 'cli', 'commands'))).toBe(REPO_ROOT);
    expect(packageRoot(join(REPO_ROOT, 'cli', 'commands'))).toBe(REPO_ROOT);
  });
});

// `dejavu build-cuda` as a process (dist/ is built by `npm ci` through `prepare`).
const CLI = join(REPO_ROOT, 'dist', 'cli', 'main.js');
describe.skipIf(!existsSync(join(REPO_ROOT, 'dist', 'cli', 'commands', 'build-cuda.js')))('dejavu build-cuda (CLI)', () => {
  it("without a working nvcc: the script's one-line reason, exit 1, nothing on stdout", () => {
    const r = spawnSync(process.execPath, [CLI, 'build-cuda', '--lib-only', '--json'], {
      encoding: 'utf8',
      env: { ...process.env, NVCC: join(tmpdir(), 'no-such-nvcc') },
    });
    expect(r.status).toBe(1);
    expect(r.stdout).toBe('');
    expect(r.stderr.trim().split('\n')).toEqual([expect.stringMatching(/NVCC=.*no-such-nvcc does not run as nvcc/)]);
  });
});
