/**
 * Small random OPT models in Hugging Face layout, for checks of the model variants on real loading paths (tests, and
 * runtime/cuda/check-variants.ts on the GPU): every form (pre/post-LN, project_in/out, final LayerNorm or not, tied or
 * separate LM head) with its HF tensor names, written out by hand (independently of checkpoints/opt-names.ts).
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { mulberry32 } from '../datasets/select.js';
import { writeSafetensors, type TensorToWrite } from './safetensors.js';

export type FloatDtype = 'F16' | 'BF16' | 'F32';

/** A tensor by its canonical name (`decoder.…` or `lm_head.weight`), values in fp32. */
export interface ModelTensor {
  name: string;
  shape: number[];
  data: Float32Array;
}

export interface TinyConfig {
  vocab: number;
  hidden: number;
  /** word_embed_proj_dim: != hidden gives project_in / project_out. */
  proj: number;
  heads: number;
  layers: number;
  ffn: number;
  maxPos: number;
  preLN: boolean;
  /** A final LayerNorm (pre-LN only: Hugging Face builds none for post-LN models). */
  finalLN: boolean;
  /** A separate lm_head.weight (untied). */
  lmHead: boolean;
}

/** A seeded generator so synthetic models are reproducible: the datasets' mulberry32. */
export const rng = mulberry32;

/** The tensors of a small OPT, uniform in [-0.1, 0.1), seeded. */
export function tinyModel(c: TinyConfig, seed = 1): ModelTensor[] {
  const r = rng(seed);
  const t = (name: string, ...shape: number[]): ModelTensor => {
    const data = new Float32Array(shape.reduce((a, b) => a * b, 1));
    for (let i = 0; i < data.length; i++) data[i] = Math.fround((r() - 0.5) * 0.2);
    return { name, shape, data };
  };
  const out = [t('decoder.embed_tokens.weight', c.vocab, c.proj), t('decoder.embed_positions.weight', c.maxPos + 2, c.hidden)];
  if (c.proj !== c.hidden) out.push(t('decoder.project_in.weight', c.hidden, c.proj), t('decoder.project_out.weight', c.proj, c.hidden));
  if (c.finalLN) out.push(t('decoder.final_layer_norm.weight', c.hidden), t('decoder.final_layer_norm.bias', c.hidden));
  for (let l = 0; l < c.layers; l++) {
    const p = `decoder.layers.${l}.`;
    for (const m of ['q_proj', 'k_proj', 'v_proj', 'out_proj']) {
      out.push(t(`${p}self_attn.${m}.weight`, c.hidden, c.hidden), t(`${p}self_attn.${m}.bias`, c.hidden));
    }
    out.push(t(`${p}self_attn_layer_norm.weight`, c.hidden), t(`${p}self_attn_layer_norm.bias`, c.hidden));
    out.push(t(`${p}fc1.weight`, c.ffn, c.hidden), t(`${p}fc1.bias`, c.ffn));
    out.push(t(`${p}fc2.weight`, c.hidden, c.ffn), t(`${p}fc2.bias`, c.hidden));
    out.push(t(`${p}final_layer_norm.weight`, c.hidden), t(`${p}final_layer_norm.bias`, c.hidden));
  }
  if (c.lmHead) out.push(t('lm_head.weight', c.vocab, c.proj));
  return out;
}

export function tinyConfigJson(c: TinyConfig, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    model_type: 'opt',
    vocab_size: c.vocab,
    hidden_size: c.hidden,
    word_embed_proj_dim: c.proj,
    num_attention_heads: c.heads,
    num_hidden_layers: c.layers,
    ffn_dim: c.ffn,
    max_position_embeddings: c.maxPos,
    do_layer_norm_before: c.preLN,
    _remove_final_layer_norm: c.preLN && !c.finalLN,
    tie_word_embeddings: !c.lmHead,
    activation_function: 'relu',
    torch_dtype: 'float32',
    ...extra,
  };
}

export function writeConfig(dir: string, config: Record<string, unknown>): void {
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'config.json'), JSON.stringify(config, null, 2));
}

/** HF names carry a `model.` prefix on decoder tensors; lm_head.weight never. */
export function prefixed(name: string, prefix: string): string {
  return name === 'lm_head.weight' ? name : prefix + name;
}

export function writeSafetensorsFolder(dir: string, tensors: ModelTensor[], dtype: FloatDtype, prefix = 'model.'): void {
  const rec: Record<string, TensorToWrite> = {};
  for (const t of tensors) rec[prefixed(t.name, prefix)] = { dtype, shape: t.shape, data: t.data };
  writeSafetensors(join(dir, 'model.safetensors'), rec, { format: 'pt' });
}
