// `npm run build:cuda`: compiles runtime/cuda into runtime/cuda/build/ (git-ignored):
//   libdejavu_cuda.so  the engine loaded by runtime/cuda/lib.ts through koffi
//   cuda-check         the kernel/engine correctness program run by scripts/cuda-check.sh
// Needs nvcc (CUDA 12.4+). Compiling needs no GPU; running does. One binary for every architecture in
// DEJAVU_CUDA_ARCH (default sm_80,sm_90): sm_90 gets the streamed fast path, sm_80 and newer the portable path
// (runtime/cuda/engine.cu picks by the device's compute capability), plus PTX of the newest for later GPUs.
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const src = join(root, 'runtime', 'cuda');
const out = join(src, 'build');
const archs = (process.env.DEJAVU_CUDA_ARCH ?? 'sm_80,sm_90').split(',').map((a) => a.trim()).filter(Boolean);
for (const a of archs)
  if (!/^sm_(\d{2,3})a?$/.test(a) || Number(a.match(/\d+/)[0]) < 80) {
    console.error(`build:cuda: DEJAVU_CUDA_ARCH: '${a}' is not an architecture sm_80 or newer (e.g. sm_80,sm_86,sm_90)`);
    process.exit(1);
  }
const num = (a) => a.replace(/^sm_/, '');
const gencode = archs.flatMap((a) => ['-gencode', `arch=compute_${num(a)},code=sm_${num(a)}`]);
const newest = archs[archs.length - 1];
gencode.push('-gencode', `arch=compute_${num(newest)},code=compute_${num(newest)}`);

// NVCC, when set, is the only candidate (a wrong path is reported as such, not silently replaced by another nvcc).
function findNvcc() {
  const candidates = process.env.NVCC ? [process.env.NVCC] : ['nvcc', '/usr/local/cuda/bin/nvcc'];
  for (const c of candidates) {
    try {
      execFileSync(c, ['--version'], { stdio: 'ignore' });
      return c;
    } catch {}
  }
  return null;
}

const nvcc = findNvcc();
if (!nvcc) {
  console.error((process.env.NVCC ? `build:cuda: NVCC=${process.env.NVCC} does not run as nvcc (\`--version\` failed); fix or unset it. `
    : 'build:cuda: nvcc not found (set NVCC=/path/to/nvcc or put the CUDA toolkit on PATH). ') +
    'The CUDA runtime is optional: everything else works without it.');
  process.exit(1);
}
mkdirSync(out, { recursive: true });
const common = ['-O3', ...gencode, '--threads', '0', '-std=c++17', '-lineinfo'];  // --threads: the architectures in parallel
const jobs = [
  ['libdejavu_cuda.so', [...common, '-shared', '-Xcompiler', '-fPIC', '-o', join(out, 'libdejavu_cuda.so'), join(src, 'engine.cu'), '-ldl']],
  ['cuda-check', [...common, '-o', join(out, 'cuda-check'), join(src, 'check.cu'), '-ldl']],
];
const only = process.argv.includes('--lib-only') ? jobs.slice(0, 1) : jobs;
const results = await Promise.all(only.map(([name, args]) => new Promise((resolve) => {
  const t0 = Date.now();
  const p = spawn(nvcc, args, { stdio: ['ignore', 'inherit', 'inherit'] });
  p.on('close', (code) => {
    console.error(`build:cuda: ${name} ${code === 0 ? 'built' : 'FAILED'} (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
    resolve(code === 0);
  });
})));
if (!results.every(Boolean)) process.exit(1);
let gpu = false;
try {
  gpu = execFileSync('nvidia-smi', ['-L'], { encoding: 'utf8' }).includes('GPU');
} catch {}
if (!gpu) console.error('build:cuda: built, but no NVIDIA GPU is visible here (nvidia-smi): the library loads only where one is.');
