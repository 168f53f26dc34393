/**
 * PrefillPool with real worker threads. Workers run compiled JavaScript, so this needs the build (`npm ci` runs it
 * through `prepare`; CI always has it); from TypeScript sources alone the pool falls back to one in-process model,
 * which the perplexity tests exercise.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadOptCheckpoint } from '../../checkpoints/opt-checkpoint.js';
import { OptModel } from '../../runtime/cpu/model.js';
import { sequenceNll } from '../../runtime/cpu/perplexity.js';
import type { PrefillPool as Pool } from '../../runtime/cpu/pool.js';
import { HAVE_FIXTURES, OPT_MINI, REPO_ROOT } from '../helpers/fixtures.js';

const BUILT_POOL = join(REPO_ROOT, 'dist', 'runtime', 'cpu', 'pool.js');
const HAVE_BUILD = existsSync(BUILT_POOL) && existsSync(join(REPO_ROOT, 'dist', 'runtime', 'cpu', 'prefill-worker.js'));

describe.skipIf(!HAVE_FIXTURES || !HAVE_BUILD)('PrefillPool (worker threads, built dist/)', () => {
  let pool: Pool;
  let model: OptModel;
  beforeAll(async () => {
    const { PrefillPool } = (await import(pathToFileURL(BUILT_POOL).href)) as { PrefillPool: typeof Pool };
    pool = await PrefillPool.create(OPT_MINI, { workers: 2 });
    model = await OptModel.load(await loadOptCheckpoint(OPT_MINI, { quiet: true }), { backend: 'js' });
  });
  afterAll(async () => {
    await pool?.close();
  });

  it('two workers score documents like the in-process model, whichever worker takes which', async () => {
    expect(pool.size).toBe(2);
    expect(pool.backend).toMatch(/^2 x tfjs-wasm/);
    const docs = [20, 33, 9, 41].map((n, k) => Int32Array.from({ length: n }, (_, i) => (i * 37 + k * 11 + 2) % 8192));
    const got = await Promise.all(docs.map((d) => pool.score(d)));
    docs.forEach((d, i) => {
      const want = sequenceNll(model.prefill(d), d, model.config.vocabSize);
      expect(got[i].predicted).toBe(d.length - 1);
      expect(Math.abs(got[i].nll - want.nll) / want.nll).toBeLessThan(1e-5);
    });
  });

  it('an error inside a worker rejects that request with the message, and the pool keeps working', async () => {
    await expect(pool.score(Int32Array.from([2, 9000, 5, 6, 7, 8, 9, 10]))).rejects.toThrow(/outside the vocabulary/);
    const ok = await pool.score(Int32Array.from([2, 5, 6]));
    expect(ok.predicted).toBe(2);
  });
});
