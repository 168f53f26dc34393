/**
 * The oracle-heads protocol (docs/sparse-runtime.md) on a small case, 2 c4mini validation docs x 64 tokens at half
 * the heads, MLP dense, both KV policies: the CPU runtime's perplexity against the float64 TS reference
 * (tests/sparse/heads-reference.ts), and that reference against bench/oracle_heads_reference.py when python3 with
 * numpy is here (skipped otherwise). bench/results/oracle-heads-opt-mini.json holds the full-size figures.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadOptCheckpoint } from '../../checkpoints/opt-checkpoint.js';
import type { OptCheckpoint } from '../../checkpoints/types.js';
import { loadBundle, type Bundle } from '../../export/bundle.js';
import { tokenizeDocs } from '../../runtime/sparse/eval.js';
import { sparseModePerplexity } from '../../runtime/sparse/ppl.js';
import { C4_VALID_JSON, HAVE_FIXTURES, OPT_MINI, REPO_ROOT } from '../helpers/fixtures.js';
import { referenceHeads, referenceLogits } from './heads-reference.js';

const HAVE_NUMPY = spawnSync('python3', ['-c', 'import numpy'], { encoding: 'utf8' }).status === 0;
const POLICIES = ['all', 'selected'] as const;

function referencePpl(ckpt: OptCheckpoint, docs: Int32Array[], policy: 'all' | 'selected'): number {
  let nll = 0,
    n = 0;
  for (const ids of docs) {
    const { hidden } = referenceHeads(ckpt, ids, { oracleK: (l) => (l === 0 ? null : 6) }, policy);
    for (let t = 0; t + 1 < ids.length; t++) {
      const z = referenceLogits(ckpt, hidden[t]);
      let m = -Infinity;
      for (const v of z) m = Math.max(m, v);
      let s = 0;
      for (const v of z) s += Math.exp(v - m);
      nll += m + Math.log(s) - z[ids[t + 1]];
      n++;
    }
  }
  return Math.exp(nll / n);
}

describe.skipIf(!HAVE_FIXTURES)('oracle heads, 2 docs x 64 tokens, 50% heads, MLP dense', () => {
  let ckpt: OptCheckpoint;
  let bundle: Bundle;
  let docs: Int32Array[];
  let dir: string;
  const ref: Record<string, number> = {};

  beforeAll(async () => {
    ckpt = await loadOptCheckpoint(OPT_MINI, { quiet: true });
    bundle = loadBundle(join(REPO_ROOT, 'examples', 'opt-mini-bundle'), ckpt);
    docs = await tokenizeDocs(OPT_MINI, [C4_VALID_JSON], { docs: 2 }, 64);
    dir = mkdtempSync(join(tmpdir(), 'dejavu-oracle-ref-'));
    for (const p of POLICIES) ref[p] = referencePpl(ckpt, docs, p);
  }, 120_000);
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it.each(POLICIES)('KV %s: the CPU runtime within 0.5% of the reference', (policy) => {
    const r = sparseModePerplexity(ckpt, bundle, docs, 'oracle', { headsFrac: 0.5, mlpK: ckpt.config.ffnDim, kvPolicy: policy, quiet: true });
    expect(Math.abs(r.ppl / ref[policy] - 1)).toBeLessThan(5e-3);
  });

  it('the two policies are far apart here (the comparison above can tell them apart)', () => {
    expect(ref.selected / ref.all - 1).toBeGreaterThan(0.02);
  });

  it.skipIf(!HAVE_NUMPY)('the numpy reference script gives the TS reference\'s figures (float64 both)', () => {
    const ids = join(dir, 'ids.json');
    writeFileSync(ids, JSON.stringify({ docs: docs.map((d) => Array.from(d)) }));
    const res = spawnSync('python3', [join(REPO_ROOT, 'bench', 'oracle_heads_reference.py'), '--model', OPT_MINI, '--ids', ids, '--heads-frac', '0.5'], {
      encoding: 'utf8',
    });
    expect(res.status, res.stderr).toBe(0);
    const out = JSON.parse(res.stdout) as { runs: { kv_policy: string; heads_k: number; ppl: number }[] };
    for (const p of POLICIES) {
      const run = out.runs.find((r) => r.kv_policy === p)!;
      expect(run.heads_k).toBe(6);
      expect(Math.abs(run.ppl / ref[p] - 1)).toBeLessThan(1e-5);
    }
  }, 120_000);
});
