/**
 * Test helpers that write one set of OPT tensors as a Hugging Face model folder in each supported layout: single or
 * sharded safetensors, pytorch_model.bin (our own zip + pickle writers), in F16 / BF16 / F32, with any name prefix.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { f32ToBf16, f32ToF16 } from '../../../checkpoints/float16.js';
import { writeSafetensors, type TensorToWrite } from '../../../checkpoints/safetensors.js';
import { buildTorchZip, type BinTensor } from './pickle-writer.js';
import { mulberry32 } from '../../../datasets/select.js';

export type FloatDtype = 'F16' | 'BF16' | 'F32';

/** A tensor by its canonical name (`decoder.…` or `lm_head.weight`), values in fp32. */
export interface ModelTensor {
  name: string;
  shape: number[];
  data: Float32Array;
}

const created: string[] = [];

/** Remove every folder tempDir() made (call from afterAll, so repeated runs leave nothing in the temp dir). */
export function removeTempDirs(): void {
  for (const d of created.splice(0)) rmSync(d, { recursive: true, force: true });
}

export function tempDir(label: string): string {
  const d = mkdtempSync(join(tmpdir(), `dejavu-ckpt-${label}-`));
  created.push(d);
  return d;
}

export function writeConfig(dir: string, config: Record<string, unknown>): void {
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'config.json'), JSON.stringify(config, null, 2));
}

/** Element bytes of `data` stored as `dtype`. */
export function encodeAs(data: Float32Array, dtype: FloatDtype): Uint8Array {
  const a = dtype === 'F32' ? data : dtype === 'F16' ? f32ToF16(data) : f32ToBf16(data);
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

function toWrite(t: ModelTensor, dtype: FloatDtype): TensorToWrite {
  return { dtype, shape: t.shape, data: t.data };
}

export function writeSafetensorsFolder(dir: string, tensors: ModelTensor[], dtype: FloatDtype, prefix = 'model.'): void {
  const rec: Record<string, TensorToWrite> = {};
  for (const t of tensors) rec[prefixed(t.name, prefix)] = toWrite(t, dtype);
  writeSafetensors(join(dir, 'model.safetensors'), rec, { format: 'pt' });
}

/** Shards split round-robin (so every shard holds tensors from everywhere in the model) + the HF index. */
export function writeShardedFolder(dir: string, tensors: ModelTensor[], dtype: FloatDtype, shards: number, prefix = 'model.'): void {
  const weightMap: Record<string, string> = {};
  for (let s = 0; s < shards; s++) {
    const file = `model-${String(s + 1).padStart(5, '0')}-of-${String(shards).padStart(5, '0')}.safetensors`;
    const rec: Record<string, TensorToWrite> = {};
    tensors.forEach((t, i) => {
      if (i % shards !== s) return;
      rec[prefixed(t.name, prefix)] = toWrite(t, dtype);
      weightMap[prefixed(t.name, prefix)] = file;
    });
    writeSafetensors(join(dir, file), rec, { format: 'pt' });
  }
  writeFileSync(join(dir, 'model.safetensors.index.json'), JSON.stringify({ metadata: {}, weight_map: weightMap }, null, 2));
}

export interface BinOptions {
  prefix?: string;
  orderedDict?: boolean;
  deflate?: boolean;
  /** Also store lm_head.weight as a view of the embedding's storage, as torch.save of a tied model does. */
  tiedLmHead?: boolean;
}

export function writeTorchBinFolder(dir: string, tensors: ModelTensor[], dtype: FloatDtype, opts: BinOptions = {}): void {
  const prefix = opts.prefix ?? 'model.';
  const rec: Record<string, BinTensor> = {};
  tensors.forEach((t, i) => {
    rec[prefixed(t.name, prefix)] = { dtype, shape: t.shape, storage: encodeAs(t.data, dtype), key: String(i) };
  });
  if (opts.tiedLmHead) {
    const emb = rec[prefixed('decoder.embed_tokens.weight', prefix)];
    rec['lm_head.weight'] = { ...emb };
  }
  writeFileSync(join(dir, 'pytorch_model.bin'), buildTorchZip(rec, { orderedDict: opts.orderedDict, deflate: opts.deflate }));
}

function prefixed(name: string, prefix: string): string {
  return name === 'lm_head.weight' ? name : prefix + name;
}

/** A seeded generator so synthetic models are reproducible: the datasets' mulberry32. */
export const rng = mulberry32;

export interface TinyConfig {
  vocab: number;
  hidden: number;
  proj: number;
  heads: number;
  layers: number;
  ffn: number;
  maxPos: number;
  preLN: boolean;
  finalLN: boolean;
  lmHead: boolean;
}

/** HF tensor names of a small OPT, written out by hand (independently of checkpoints/opt-names.ts). */
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
