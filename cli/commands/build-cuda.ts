/**
 * `dejavu build-cuda`: runs scripts/build-cuda.mjs (what `npm run build:cuda` runs in the repository), so an installed
 * package can build its CUDA library too. The script compiles into <package>/runtime/cuda/build/, where
 * runtime/cuda/lib.ts looks for libdejavu_cuda.so.
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Command } from 'commander';
import { DejavuError } from '../../common/errors.js';

/** The package root: this file is cli/commands/ in the source tree and dist/cli/commands/ once compiled. */
export function packageRoot(here = dirname(fileURLToPath(import.meta.url))): string {
  const candidates = [resolve(here, '..', '..', '..'), resolve(here, '..', '..')];
  return candidates.find((r) => existsSync(join(r, 'scripts', 'build-cuda.mjs'))) ?? candidates[0];
}

export function register(program: Command): void {
  program
    .command('build-cuda')
    .description('compile the CUDA library (and the cuda-check program) with nvcc into runtime/cuda/build/ of this package: `npm run build:cuda` for an installed package')
    .option('--lib-only', 'build only libdejavu_cuda.so, not cuda-check')
    .option('--json', 'print one JSON object on stdout: {library, cuda_check}')
    .action((f: { libOnly?: boolean; json?: boolean }) => {
      const root = packageRoot();
      const script = join(root, 'scripts', 'build-cuda.mjs');
      if (!existsSync(script)) throw new DejavuError('missing: this copy of dejavu-ts cannot build its CUDA library (reinstall the package)', script);
      // nvcc's own output goes to stderr with the script's progress, so --json leaves stdout to the one object.
      const r = spawnSync(process.execPath, [script, ...(f.libOnly ? ['--lib-only'] : [])], { stdio: ['ignore', 2, 2] });
      if (r.error) throw new DejavuError(`could not run it (${r.error.message})`, script);
      if (r.status !== 0) {
        // The script has already printed its one-line reason (nvcc missing, a compile error).
        process.exitCode = r.status ?? 1;
        return;
      }
      const build = join(root, 'runtime', 'cuda', 'build');
      if (f.json)
        process.stdout.write(JSON.stringify({ library: join(build, 'libdejavu_cuda.so'), cuda_check: f.libOnly ? null : join(build, 'cuda-check') }) + '\n');
    });
}
