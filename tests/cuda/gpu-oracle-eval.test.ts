/**
 * `eval ppl --device cuda` with the oracle mode (runtime/cuda/eval-ppl.ts, engine.cu dj_oracle_nll), through a stand-in
 * library: the CLI takes oracle on cuda (default modes dense,oracle,predicted), passes --heads-frac / --mlp-k /
 * --kv-policy through to the engine, runs the oracle's decode per document without building the graphs, and states
 * the configuration in its JSON. The GPU's oracle figures themselves come from check-mini (section 8) on a GPU.
 */
import { Command } from 'commander';
import { join } from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import type { CudaLib, CudaOptions, Mode } from '../../runtime/cuda/lib.js';
import { REPO_ROOT } from '../helpers/fixtures.js';

const MINI = join(REPO_ROOT, 'examples', 'opt-mini');
const BUNDLE = join(REPO_ROOT, 'examples', 'opt-mini-bundle-att-in');
const VALID = join(REPO_ROOT, 'examples', 'c4mini', 'c4mini-validation.00000-of-00001.json.gz');

/** NLL per token the stand-in returns: the prefill (dense), the oracle's decode, the sparse graph (predicted). */
const NLL = { dense: 1.5, oracle: 2, predicted: 2.5 };

/** A CudaLib recording what eval ppl --device cuda asks of it (only the entry points that path uses). */
function fakeLib() {
  const st = {
    options: undefined as Partial<CudaOptions> | undefined,
    kH: [] as number[],
    kM: [] as number[],
    builds: 0,
    prompt: 0,
    oracleSteps: [] as number[],
    decodeSteps: [] as { mode: Mode; steps: number }[],
    prefills: 0,
  };
  const impl = {
    file: 'fake.so',
    deviceInfo: () => ({ name: 'Fake GPU', sms: 132, memBytes: 80e9 }),
    memInfo: () => ({ freeBytes: 64e9, totalBytes: 80e9 }),
    create(c, options = {}) {
      st.options = options;
      st.kH = Array(c.layers).fill(c.heads);
      st.kM = Array(c.layers).fill(c.ffn);
      return {};
    },
    destroy: () => {},
    setVariant: () => {},
    uploadRaw: () => {},
    path: () => 'streamed',
    setPredictor(_h, l, target, _tap, _src, _w1, _w2, _rank, k) {
      if (target === 0) st.kH[l] = k;
      else st.kM[l] = k;
    },
    setK(_h, l, kH, kM) {
      st.kH[l] = kH;
      st.kM[l] = kM;
    },
    mlpGroups: () => 1,
    build: () => void st.builds++,
    prefill(_h, _tokens, lens, out) {
      st.prefills++;
      let o = 0;
      for (const n of lens) {
        for (let i = 0; i < n; i++) out.nll![o + i] = i + 1 < n ? NLL.dense : 0;
        o += n;
      }
    },
    setPrompt(_h, ids) {
      st.prompt = ids.length;
    },
    oracleNll(_h, steps, nll) {
      st.oracleSteps.push(steps);
      nll.fill(NLL.oracle);
    },
    decodeNll(_h, mode, steps, nll) {
      st.decodeSteps.push({ mode, steps });
      nll.fill(NLL.predicted);
    },
  } satisfies Partial<CudaLib>;
  return { lib: impl as Partial<CudaLib> as CudaLib, st };
}

let fake = fakeLib();
vi.mock('../../runtime/cuda/lib.js', async (orig) => ({
  ...(await orig<typeof import('../../runtime/cuda/lib.js')>()),
  loadCudaLib: async () => fake.lib,
}));

/** Runs `dejavu eval ppl ...args` (stderr kept quiet); returns what it printed on stdout. */
async function evalPpl(args: string[]): Promise<string[]> {
  const { register } = await import('../../cli/commands/eval.js');
  const program = new Command().exitOverride();
  register(program);
  const printed: string[] = [];
  const log = vi.spyOn(console, 'log').mockImplementation((s: unknown) => void printed.push(String(s)));
  const write = process.stderr.write;
  process.stderr.write = (() => true) as typeof process.stderr.write;
  try {
    await program.parseAsync(['node', 'dejavu', 'eval', 'ppl', '--model', MINI, '--data', VALID, '--docs', '2', '--max-len', '24', ...args]);
  } finally {
    process.stderr.write = write;
    log.mockRestore();
  }
  return printed;
}

afterEach(() => {
  fake = fakeLib();
});

describe('eval ppl --device cuda: the oracle on the GPU', () => {
  it('takes the CPU oracle study\'s flags: oracle per document, heads k from --heads-frac, MLP dense by --mlp-k, KV policy, no graphs', async () => {
    const out = await evalPpl([
      '--device', 'cuda', '--bundle', BUNDLE, '--modes', 'dense,oracle', '--heads-frac', '0.5', '--mlp-k', '1536',
      '--kv-policy', 'selected', '--workers', '1', '--json',
    ]);
    const r = JSON.parse(out[0]);
    expect(fake.st.options).toMatchObject({ kvPolicy: 'selected', selection: 'exact' });
    // The att_in bundle marks layers 1-5: round(0.5 x 12) = 6 heads there, every neuron (1536 = ffn) everywhere.
    expect(r.heads_k_per_layer).toEqual([12, 6, 6, 6, 6, 6]);
    expect(r.mlp_k_per_layer).toEqual([1536, 1536, 1536, 1536, 1536, 1536]);
    expect(fake.st.builds).toBe(0);  // the oracle's eager kernels need no graphs
    expect(fake.st.decodeSteps).toEqual([]);
    expect(fake.st.oracleSteps.length).toBe(2);  // one teacher-forced run per document, every predicted token
    expect(fake.st.oracleSteps.every((s) => s === 23)).toBe(true);
    expect(r.docs).toBe(2);
    expect(r.kv_policy).toBe('selected');
    expect(r.oracle).toMatchObject({ kv_policy: 'selected', selection: 'exact', tokens: 46, mlp_groups_per_layer: [1, 1, 1, 1, 1, 1] });
    expect(r.oracle.ppl).toBeCloseTo(Math.exp(NLL.oracle), 10);
    expect(r.dense.ppl).toBeCloseTo(Math.exp(NLL.dense), 10);
    expect(r.oracle_vs_dense).toBeCloseTo(Math.exp(NLL.oracle - NLL.dense) - 1, 4);
    expect(r.predicted).toBeUndefined();
    expect(r.mlp_groups_per_layer).toBeUndefined();  // G is the predicted graph's, and no graph was built
  });

  it('with --bundle the default modes are dense, oracle and predicted, the oracle at the bundle\'s own k', async () => {
    const out = await evalPpl(['--device', 'cuda', '--bundle', BUNDLE, '--json']);
    const r = JSON.parse(out[0]);
    expect(Object.keys(r)).toEqual(expect.arrayContaining(['dense', 'oracle', 'predicted', 'oracle_vs_dense', 'predicted_vs_dense']));
    expect(r.kv_policy).toBe('all');
    expect(r.heads_k_per_layer).toEqual([12, 7, 7, 7, 8, 8]);
    expect(r.mlp_k_per_layer.slice(1)).toEqual([95, 140, 199, 272, 286]);
    expect(fake.st.builds).toBe(1);
    expect(fake.st.oracleSteps.length).toBe(2);
    expect(fake.st.decodeSteps.map((s) => s.mode)).toEqual(['sparse', 'sparse']);
    expect(r.mlp_groups_per_layer).toEqual([1, 1, 1, 1, 1, 1]);
  });

  it('prints the oracle line beside dense and predicted', async () => {
    const out = (await evalPpl(['--device', 'cuda', '--bundle', BUNDLE, '--kv-policy', 'selected'])).join('\n');
    expect(out).toMatch(/^oracle +7\.3891 \(\+64\.87% vs dense\) +kv selected, true top-k/m);
    expect(out).toMatch(/^predicted +12\.1825/m);
    expect(out).toMatch(/k per layer heads 12,7,7,7,8,8/);
  });

  it('refuses an unknown mode, oracle without a bundle, and more than one worker', async () => {
    await expect(evalPpl(['--device', 'cuda', '--bundle', BUNDLE, '--modes', 'dense,orcale'])).rejects.toThrow(/unknown mode 'orcale' \(dense, oracle, predicted\)/);
    await expect(evalPpl(['--device', 'cuda', '--modes', 'oracle'])).rejects.toThrow(/only applies with --bundle/);
    await expect(evalPpl(['--device', 'cuda', '--bundle', BUNDLE, '--workers', '2'])).rejects.toThrow(/one engine/);
  });

  it('runCudaPerplexity refuses oracle without a bundle before loading the library', async () => {
    const { runCudaPerplexity } = await import('../../runtime/cuda/eval-ppl.js');
    await expect(runCudaPerplexity({ model: MINI, docs: [Int32Array.of(2, 5, 7)], maxLen: 8, modes: ['oracle'] })).rejects.toThrow(/oracle perplexity needs --bundle/);
  });
});
