/**
 * Perplexity: the NLL arithmetic, the concurrent loop, the `dejavu eval ppl` command, and the acceptance figure —
 * opt-mini on the first 50 c4mini validation documents at max-len 512 gives Hugging Face's 63.544 over 20,241 predicted
 * tokens, from the .json.gz and from each .parquet variant.
 */
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { Command } from 'commander';
import { loadOptCheckpoint } from '../../checkpoints/opt-checkpoint.js';
import { createReadStats, loadTokenizer, readDocuments } from '../../datasets/index.js';
import type { Tokenizer } from '../../datasets/types.js';
import { register } from '../../cli/commands/eval.js';
import { OptModel } from '../../runtime/cpu/model.js';
import { encodeDocuments, perplexity, sequenceNll, type DocScore } from '../../runtime/cpu/perplexity.js';
import { C4_VALID_JSON, C4_VALID_PARQUET, HAVE_FIXTURES, OPT_MINI } from '../helpers/fixtures.js';

describe('perplexity arithmetic', () => {
  it('sequenceNll: row t predicts token t+1; the first token is never predicted', () => {
    const V = 4;
    // Row 0 is uniform (NLL ln 4 for any target); row 1 gives token 2 probability 4/(1+1+4+2) = 0.5; row 2 is unused.
    const logits = new Float32Array([0, 0, 0, 0, 0, 0, Math.log(4), Math.log(2), 9, 9, 9, 9]);
    const s = sequenceNll(logits, [1, 3, 2], V);
    expect(s.predicted).toBe(2);
    expect(s.nll).toBeCloseTo(Math.log(4) + Math.log(2), 6);
    expect(sequenceNll(new Float32Array(V), [1], V)).toEqual({ nll: 0, predicted: 0 });
    expect(sequenceNll(new Float32Array(V), [], V)).toEqual({ nll: 0, predicted: 0 });
  });

  it('perplexity = exp(total NLL / predicted tokens), independent of completion order', async () => {
    const docs = [1, 2, 3, 4, 5, 6, 7].map((n) => new Int32Array(n + 1));
    const scorer = (ids: Int32Array): Promise<DocScore> =>
      new Promise((r) => setTimeout(() => r({ nll: 0.5 * (ids.length - 1) + ids.length / 10, predicted: ids.length - 1 }), 40 - 5 * ids.length));
    const seen: number[] = [];
    const a = await perplexity(docs, scorer, { concurrency: 3, onDoc: (p) => seen.push(p.docs) });
    const b = await perplexity(docs, scorer, { concurrency: 1 });
    const totalNll = docs.reduce((s, d) => s + 0.5 * (d.length - 1) + d.length / 10, 0);
    expect(a.tokens).toBe(28);
    expect(a.docs).toBe(7);
    expect(a.ppl).toBeCloseTo(Math.exp(totalNll / 28), 12);
    expect(a.ppl).toBe(b.ppl);
    expect(seen).toEqual([1, 2, 3, 4, 5, 6, 7]);
  });

  it('a failing scorer fails the run', async () => {
    const docs = [new Int32Array(3), new Int32Array(3)];
    await expect(perplexity(docs, () => Promise.reject(new Error('boom')), { concurrency: 2 })).rejects.toThrow('boom');
    await expect(perplexity(docs, () => { throw new Error('sync boom'); })).rejects.toThrow('sync boom');
  });
});

describe.skipIf(!HAVE_FIXTURES)('opt-mini perplexity on c4mini validation (HF: 63.544 over 20,241 tokens)', () => {
  let model: OptModel;
  let tokenizer: Tokenizer;
  // Every variant holds the same 50 documents; identical token ids are scored once (memoised on the ids), so each
  // file still goes through its reader, the tokenizer and the perplexity loop, and any difference in text would be
  // scored afresh and show in the figure.
  const memo = new Map<string, DocScore>();
  let modelCalls = 0;
  const scorer = (ids: Int32Array): DocScore => {
    const key = ids.join(',');
    let s = memo.get(key);
    if (!s) {
      modelCalls++;
      s = sequenceNll(model.prefill(ids), ids, model.config.vocabSize);
      memo.set(key, s);
    }
    return s;
  };

  beforeAll(async () => {
    model = await OptModel.load(await loadOptCheckpoint(OPT_MINI, { quiet: true }), { backend: 'auto' });
    tokenizer = await loadTokenizer(OPT_MINI);
  });
  afterAll(() => model?.dispose());

  for (const file of [C4_VALID_JSON, ...C4_VALID_PARQUET]) {
    const name = file.split('/').pop()!;
    it(`--docs 50 --max-len 512 on ${name}: 63.54 +- 0.05 over 20,241 tokens`, async () => {
      const stats = createReadStats();
      const r = await perplexity(encodeDocuments(readDocuments([file], { docs: 50 }, stats), tokenizer, 512), scorer);
      console.log(`${name}: ppl ${r.ppl.toFixed(4)} over ${r.tokens} tokens, ${r.docs} docs (${modelCalls} model calls so far)`);
      expect(stats.skipped).toBe(0);
      expect(r.docs).toBe(50);
      expect(r.tokens).toBe(20241);
      expect(Math.abs(r.ppl - 63.544)).toBeLessThanOrEqual(0.05);
    });
  }

  it('`dejavu eval ppl --json` prints one JSON object with ppl, tokens, docs, seconds, tokens_per_s', async () => {
    const out: string[] = [];
    const spy = vi.spyOn(console, 'log').mockImplementation((s: unknown) => void out.push(String(s)));
    try {
      const program = new Command().exitOverride();
      register(program);
      await program.parseAsync(
        ['eval', 'ppl', '--model', OPT_MINI, '--data', C4_VALID_JSON, '--docs', '4', '--max-len', '128', '--json'],
        { from: 'user' },
      );
    } finally {
      spy.mockRestore();
    }
    expect(out).toHaveLength(1);
    const j = JSON.parse(out[0]);
    expect(Object.keys(j).sort()).toEqual(['docs', 'ppl', 'seconds', 'tokens', 'tokens_per_s']);
    expect(j.docs).toBe(4);
    // Same documents through the function: the command adds nothing but I/O.
    const r = await perplexity(encodeDocuments(readDocuments([C4_VALID_JSON], { docs: 4 }), tokenizer, 128), scorer);
    expect(j.tokens).toBe(r.tokens);
    expect(Math.abs(j.ppl - r.ppl) / r.ppl).toBeLessThan(1e-5);
  });

  it('`dejavu eval ppl` rejects --docs with --sample and a max-len past the position table', async () => {
    const run = (args: string[]) => {
      const program = new Command().exitOverride();
      register(program);
      return program.parseAsync(['eval', 'ppl', '--model', OPT_MINI, '--data', C4_VALID_JSON, ...args], { from: 'user' });
    };
    await expect(run(['--docs', '2', '--sample', '2'])).rejects.toThrow(/--docs or --sample/);
    await expect(run(['--docs', '2', '--max-len', '4096'])).rejects.toThrow(/max_position_embeddings/);
    await expect(run(['--docs', 'x'])).rejects.toThrow(/--docs/);
    // --mlp-groups is checked before the bundle is read
    await expect(run(['--docs', '2', '--bundle', 'no-such-bundle', '--mlp-groups', 'x'])).rejects.toThrow(/--mlp-groups/);
    await expect(run(['--docs', '2', '--bundle', 'no-such-bundle', '--mlp-groups', '0'])).rejects.toThrow(/--mlp-groups/);
  });
});
