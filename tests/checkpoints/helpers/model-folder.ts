/**
 * Test helpers that write one set of OPT tensors as a Hugging Face model folder in each supported layout: single or
 * sharded safetensors, pytorch_model.bin (our own zip + pickle writers), in F16 / BF16 / F32, with any name prefix.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { f32ToBf16, f32ToF16 } from '../../../checkpoints/float16.js';
import { writeSafetensors, type TensorToWrite } from '../../../checkpoints/safetensors.js';
import { prefixed, type FloatDtype, type ModelTensor } from '../../../checkpoints/tiny-model.js';
import { buildTorchZip, type BinTensor } from './pickle-writer.js';

// The small random OPT models and the single-file writer live in checkpoints/tiny-model.ts (the GPU check uses them).
export { rng, tinyConfigJson, tinyModel, writeConfig, writeSafetensorsFolder, type FloatDtype, type ModelTensor, type TinyConfig } from '../../../checkpoints/tiny-model.js';

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

/** Element bytes of `data` stored as `dtype`. */
export function encodeAs(data: Float32Array, dtype: FloatDtype): Uint8Array {
  const a = dtype === 'F32' ? data : dtype === 'F16' ? f32ToF16(data) : f32ToBf16(data);
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

function toWrite(t: ModelTensor, dtype: FloatDtype): TensorToWrite {
  return { dtype, shape: t.shape, data: t.data };
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
