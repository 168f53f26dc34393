import { describe, expect, it } from 'vitest';
import { parseDensity } from '../../cli/commands/bench.js';
import { runCpuBench } from '../../runtime/sparse/bench-cpu.js';
import { HAVE_FIXTURES, OPT_MINI } from '../helpers/fixtures.js';

describe('bench --density parsing', () => {
  it('parses mlp/heads and defaults the missing one to dense', () => {
    expect(parseDensity('mlp=0.1,heads=0.5')).toEqual({ mlp: 0.1, heads: 0.5 });
    expect(parseDensity('mlp=0.05')).toEqual({ mlp: 0.05, heads: 1 });
    expect(() => parseDensity('mlp=0')).toThrow(/--density/);
    expect(() => parseDensity('ffn=0.1')).toThrow(/expected mlp=F,heads=F/);
  });
});

// Structure and bookkeeping only: timings are not asserted here (they belong to bench/decode-cpu.ts).
describe.skipIf(!HAVE_FIXTURES)('CPU decode bench on opt-mini', () => {
  it('reports dense and sparse per token and per block, densities, floor, Amdahl bound and KV policy cost', async () => {
    const r = (await runCpuBench({ model: OPT_MINI, density: { mlp: 0.1, heads: 0.5 }, prompt: 8, gen: 4, rounds: 1, quiet: true })) as Record<string, any>;
    expect(r.device).toBe('cpu');
    expect(r.mlp_density).toBeCloseTo(Math.round(0.1 * 1536) / 1536, 3);
    expect(r.head_density).toBe(0.5);
    for (const k of ['dense', 'sparse']) {
      expect(r[k].ms_per_token).toBeGreaterThan(0);
      expect(Object.keys(r[k].blocks_ms_per_token)).toEqual(['embed', 'attention', 'attention_kv_projection', 'mlp', 'predictors', 'lm_head']);
    }
    expect(r.speedup).toBeCloseTo(r.dense.ms_per_token / r.sparse.ms_per_token, 2);
    // The floor's byte counts follow from the shapes: dense reads every layer weight and the LM head.
    const d = 384, ffn = 1536, V = 8192, ctx = 8 + 1.5;
    expect(r.floor.dense_bytes_per_token).toBe(Math.round(6 * (4 * d * d + 2 * d * ffn + 2 * ctx * d) * 4 + V * d * 4));
    expect(r.floor.sparse_bytes_per_token).toBeLessThan(r.floor.dense_bytes_per_token);
    expect(r.amdahl.dense_mlp_share).toBeGreaterThan(0);
    expect(r.amdahl.dense_mlp_share).toBeLessThan(1);
    expect(r.kv_policy_cost.kv_all_heads_ms_per_token).toBeGreaterThan(0);
  });

  it('refuses a missing selection source and bad densities', async () => {
    await expect(runCpuBench({ model: OPT_MINI, prompt: 4, gen: 2, quiet: true })).rejects.toThrow(/--bundle B or --density/);
    await expect(runCpuBench({ model: OPT_MINI, prompt: 2040, gen: 20, density: { mlp: 0.1, heads: 1 }, quiet: true })).rejects.toThrow(/max_position_embeddings/);
  });
});
