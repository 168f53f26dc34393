/**
 * check-mini's model-variant section (run on the GPU): small random OPTs in Hugging Face layout that opt-mini does not
 * exercise (post-LN, project_in/out, a separate LM head, no final LayerNorm; checkpoints/tiny-model.ts), each written
 * as F32, F16 and BF16 safetensors, streamed onto the GPU (load.ts) and run through the prefill; logits compared with
 * the CPU runtime's (runtime/cpu/model.ts) on the same ids. Then, from the first dtype's file, the decode kernels on
 * the same ids (every form runs the portable path): the dense graph's logits at every position; the oracle's decode
 * with nothing skipped (its NLL); the fixed-selection graph with new random heads and neurons each step after a dense
 * start, under each KV policy, against the CPU sparse runtime (runtime/sparse/model.ts) given the same selections.
 * Pass: relative error <= 2e-3 each.
 *
 * The weights are rounded to bf16 first, so the three files hold the same values (bf16 values are exact in fp16 and
 * fp32): the error measured is the GPU's fp16 arithmetic and the variant's wiring, not the file's rounding.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { bf16ToF32, f32ToBf16 } from '../../checkpoints/float16.js';
import { loadOptCheckpoint } from '../../checkpoints/opt-checkpoint.js';
import { rng, tinyConfigJson, tinyModel, writeConfig, writeSafetensorsFolder, type FloatDtype, type TinyConfig } from '../../checkpoints/tiny-model.js';
import type { OptCheckpoint } from '../../checkpoints/types.js';
import { OptModel } from '../cpu/model.js';
import { SparseOptModel, type KvPolicy } from '../sparse/model.js';
import type { CudaLib } from './lib.js';
import { loadModelToGpu } from './load.js';

export const VARIANT_TOL = 2e-3;

/** ||a - b|| / ||b|| (Infinity when a holds a non-finite value). */
export function relError(a: Float32Array, b: Float32Array): number {
  let num = 0;
  let den = 0;
  for (let i = 0; i < b.length; i++) {
    if (!Number.isFinite(a[i])) return Infinity;
    num += (a[i] - b[i]) ** 2;
    den += b[i] ** 2;
  }
  return Math.sqrt(num / den);
}

/** k distinct indices of 0..n-1, ascending (a fixed selection). */
export function pick(n: number, k: number, r: () => number): Int32Array {
  const all = Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(r() * (i + 1));
    [all[i], all[j]] = [all[j], all[i]];
  }
  return Int32Array.from(all.slice(0, k).sort((a, b) => a - b));
}

/** Per position, the NLL of the next id from logits [n][V] (n - 1 values). */
function nllOf(logits: Float32Array, ids: Int32Array, V: number): Float32Array {
  const out = new Float32Array(ids.length - 1);
  for (let t = 0; t + 1 < ids.length; t++) {
    const row = logits.subarray(t * V, (t + 1) * V);
    let m = -Infinity;
    for (const v of row) m = Math.max(m, v);
    let z = 0;
    for (const v of row) z += Math.exp(v - m);
    out[t] = m + Math.log(z) - row[ids[t + 1]];
  }
  return out;
}

const BASE: TinyConfig = { vocab: 2000, hidden: 256, proj: 128, heads: 4, layers: 2, ffn: 1024, maxPos: 128, preLN: false, finalLN: false, lmHead: true };

/** The forms checked: name and config. Head dim 64, word_embed_proj_dim 128 != hidden 256 (project_in/out). */
export const VARIANTS: { name: string; config: TinyConfig }[] = [
  { name: 'post-LN, project_in/out, untied head', config: BASE },
  { name: 'post-LN, project_in/out, tied head (opt-350m form)', config: { ...BASE, lmHead: false } },
  { name: 'pre-LN without final LayerNorm, project_in/out, untied head', config: { ...BASE, preLN: true } },
];

export interface VariantResult {
  variant: string;
  dtype: FloatDtype;
  /** What was compared: 'prefill logits', 'decode dense logits', 'oracle decode NLL (nothing skipped)',
   *  'decode fixed selections logits, KV all' or '..., KV selected'. */
  check: string;
  rel: number;
  pass: boolean;
}

const P0 = 16;  // dense decode steps before the fixed selections

/** The decode kernels on one variant's file vs the CPU runtimes (header). */
async function decodeChecks(lib: CudaLib, dir: string, ckpt: OptCheckpoint, cpuLogits: Float32Array, ids: Int32Array, seed: number) {
  const N = ids.length;
  const out: { check: string; rel: number }[] = [];
  const { engine, dims } = await loadModelToGpu(lib, dir, { maxT: N + 8, options: { kvPolicy: 'all' } });
  const { vocab: V, heads: H, ffn, layers: L } = dims;
  try {
    engine.build();
    engine.setPrompt(ids);
    const dense = new Float32Array(N * V);
    for (let p = 0; p < N; p++) {
      engine.run('dense', 1);
      dense.set(engine.logits(), p * V);
    }
    out.push({ check: 'decode dense logits', rel: relError(dense, cpuLogits) });
    for (let l = 0; l < L; l++) engine.setK(l, H, ffn);
    engine.setPrompt(ids);
    out.push({ check: 'oracle decode NLL (nothing skipped)', rel: relError(engine.oracleNll(N - 1), nllOf(cpuLogits, ids, V)) });
    const kH = Math.max(1, Math.round(H / 2));
    const kM = Math.round(ffn / 8);
    const r = rng(seed);
    for (const kvPolicy of ['all', 'selected'] as KvPolicy[]) {
      engine.setOptions({ kvPolicy });
      for (let l = 0; l < L; l++) engine.setSelection(l, pick(H, kH, r), pick(ffn, kM, r));
      engine.build();
      engine.setPrompt(ids);
      const cpu = new SparseOptModel(ckpt, undefined, { mode: 'dense', kvPolicy });
      const cache = cpu.newCache(N + 8);
      for (let p = 0; p < P0; p++) {
        engine.run('dense', 1);
        cpu.decodeStep(ids[p], cache);
      }
      const g = new Float32Array((N - P0) * V);
      const want = new Float32Array((N - P0) * V);
      for (let p = P0; p < N; p++) {
        const heads = Array.from({ length: L }, () => pick(H, kH, r));
        const neurons = Array.from({ length: L }, () => pick(ffn, kM, r));
        heads.forEach((h, l) => engine.setSelection(l, h, neurons[l]));
        engine.run('fixed', 1);
        g.set(engine.logits(), (p - P0) * V);
        want.set(cpu.decodeStep(ids[p], cache, { heads, neurons }), (p - P0) * V);
      }
      out.push({ check: `decode fixed selections logits, KV ${kvPolicy}`, rel: relError(g, want) });
    }
  } finally {
    engine.destroy();
  }
  return out;
}

/** Every variant x dtype; `say` gets one line each. */
export async function checkVariants(
  lib: CudaLib,
  say: (s: string) => void,
  dtypes: FloatDtype[] = ['F32', 'F16', 'BF16'],
  decode = true,
): Promise<VariantResult[]> {
  const root = mkdtempSync(join(tmpdir(), 'dejavu-variants-'));
  const out: VariantResult[] = [];
  try {
    for (const [vi, v] of VARIANTS.entries()) {
      // LayerNorm gains around 1, as trained models have them (tinyModel draws every value in [-0.1, 0.1)).
      const tensors = tinyModel(v.config, 100 + vi).map((t) => {
        const data = t.name.endsWith('layer_norm.weight') ? t.data.map((x) => 1 + x) : t.data;
        return { ...t, data: bf16ToF32(f32ToBf16(data)) };
      });
      const r = rng(7 + vi);
      const ids = Int32Array.from({ length: 48 }, (_, i) => (i === 0 ? 2 : Math.floor(r() * v.config.vocab)));
      let cpuLogits: Float32Array | undefined;
      let ckpt: OptCheckpoint | undefined;
      const report = (dtype: FloatDtype, check: string, rel: number) => {
        out.push({ variant: v.name, dtype, check, rel, pass: rel <= VARIANT_TOL });
        say(`variant ${v.name}, ${dtype}: GPU ${check} vs CPU runtime (${ids.length} positions): rel ${rel.toExponential(2)} ${rel <= VARIANT_TOL ? 'PASS' : 'FAIL'}`);
      };
      for (const dtype of dtypes) {
        const dir = join(root, `v${vi}-${dtype}`);
        writeConfig(dir, tinyConfigJson(v.config, { torch_dtype: { F32: 'float32', F16: 'float16', BF16: 'bfloat16' }[dtype] }));
        writeSafetensorsFolder(dir, tensors, dtype);
        if (!cpuLogits) {
          ckpt = await loadOptCheckpoint(dir, { quiet: true });
          const m = await OptModel.load(ckpt, { backend: 'js' });
          cpuLogits = m.prefill(ids, { logits: 'all' });
          m.dispose();
        }
        const { engine } = await loadModelToGpu(lib, dir, { maxT: ids.length, prefillTokens: ids.length });
        try {
          const g = new Float32Array(ids.length * v.config.vocab);
          engine.prefill([ids], { logits: g });
          report(dtype, 'prefill logits', relError(g, cpuLogits));
        } finally {
          engine.destroy();
        }
      }
      if (decode && ckpt && cpuLogits) {
        for (const d of await decodeChecks(lib, join(root, `v${vi}-${dtypes[0]}`), ckpt, cpuLogits, ids, 11 + vi)) report(dtypes[0], d.check, d.rel);
      }
    }
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
  return out;
}
