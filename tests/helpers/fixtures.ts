import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The repository root and the shared fixtures beside it (../shared/fixtures); CI has them, a bare clone may not. */
export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const FIXTURES = process.env.DEJAVU_FIXTURES ?? resolve(REPO_ROOT, '..', 'shared', 'fixtures');
export const HAVE_FIXTURES = existsSync(join(FIXTURES, 'opt-mini', 'model.safetensors'));

export const OPT_MINI = join(FIXTURES, 'opt-mini');
export const TINY_BIN = join(FIXTURES, 'tiny-opt-bin-fp16');
export const C4_VALID_JSON = join(FIXTURES, 'c4mini', 'c4mini-validation.00000-of-00001.json.gz');
export const C4_TRAIN_JSON = join(FIXTURES, 'c4mini', 'c4mini-train.00000-of-00001.json.gz');
export const C4_VALID_PARQUET = [
  'c4mini-validation.00000-of-00001.parquet',
  'c4mini-validation.zstd-rowgroups16.parquet',
  'c4mini-validation.gzip-largestring.parquet',
].map((f) => join(FIXTURES, 'c4mini', f));
