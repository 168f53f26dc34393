/**
 * check-mini's model-variant section (run on the GPU): small random OPTs in Hugging Face layout that opt-mini does not
 * exercise (post-LN, project_in/out, a separate LM head, no final LayerNorm; checkpoints/tiny-model.ts), each written
 * as F32, F16 and BF16 safetensors, streamed onto the GPU (load.ts) and run through the prefill; logits compared with
 * the CPU runtime's (runtime/cpu/model.ts) on the same ids. Pass: relative error <= 2e-3.
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
import { OptModel } from '../cpu/model.js';
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
  rel: number;
  pass: boolean;
}

/** Every variant x dtype; `say` gets one line each. */
export async function checkVariants(lib: CudaLib, say: (s: string) => void, dtypes: FloatDtype[] = ['F32', 'F16', 'BF16']): Promise<VariantResult[]> {
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
      for (const dtype of dtypes) {
        const dir = join(root, `v${vi}-${dtype}`);
        writeConfig(dir, tinyConfigJson(v.config, { torch_dtype: { F32: 'float32', F16: 'float16', BF16: 'bfloat16' }[dtype] }));
        writeSafetensorsFolder(dir, tensors, dtype);
        if (!cpuLogits) {
          const m = await OptModel.load(await loadOptCheckpoint(dir, { quiet: true }), { backend: 'js' });
          cpuLogits = m.prefill(ids, { logits: 'all' });
          m.dispose();
        }
        const { engine } = await loadModelToGpu(lib, dir, { maxT: ids.length, prefillTokens: ids.length });
        try {
          const g = new Float32Array(ids.length * v.config.vocab);
          engine.prefill([ids], { logits: g });
          const rel = relError(g, cpuLogits);
          out.push({ variant: v.name, dtype, rel, pass: rel <= VARIANT_TOL });
          say(`variant ${v.name}, ${dtype}: GPU prefill vs CPU runtime logits (${ids.length} positions): rel ${rel.toExponential(2)} ${rel <= VARIANT_TOL ? 'PASS' : 'FAIL'}`);
        } finally {
          engine.destroy();
        }
      }
    }
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
  return out;
}
