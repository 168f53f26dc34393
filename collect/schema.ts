/**
 * The shard schema (docs/shards.md): column layout, schema metadata and label definitions. The same Schema object is
 * used for every batch of a shard file, so the Arrow writer never sees a "new" schema mid-file.
 */
import { Field, FixedSizeList, Float16, Int32, Schema, Uint8 } from 'apache-arrow';
import { SHARD_FORMAT, SHARD_META, type ShardDims } from '../common/contracts.js';
import { maskBytes } from './labels.js';

export interface ShardMeta {
  modelFingerprint: string;
  layer: number;
  /** The canonical collect arguments (the same object the resume check compares). */
  collectArgs: unknown;
}

/** What each column means; stored as `dejavu.labels` so a shard explains itself. */
export function labelDefinitions(dims: ShardDims): Record<string, string> {
  const defs: Record<string, string> = {
    doc: 'document index in file order across all inputs (document 0 = first line/row of the first file)',
    pos: 'token position within the document (0 = the BOS token when the tokenizer adds one)',
    att_in: 'decoder layer input: residual stream before self_attn_layer_norm (fp32 -> fp16, round to nearest even)',
    mlp_in:
      'MLP block input: residual stream before final_layer_norm (pre-LN); the MLP block input for post-LN models (fp16)',
    head_norm: 'L2 norm of each head output (softmax(QK^T/sqrt(hd))V of head h, before out_proj), fp32 then fp16',
    mlp_active: `bitmask of relu(fc1(LN(mlp_in))) > 0, least significant bit first: neuron 8*i+j = bit j of byte i; ${maskBytes(dims.ffnDim) * 8 - dims.ffnDim} padding bits are 0`,
  };
  if (dims.topK > 0) {
    defs.mlp_topk_val = `the ${dims.topK} largest relu(fc1) activations, descending (fp16)`;
    defs.mlp_topk_idx = 'their neuron indices; ties keep the lower index first';
  }
  return defs;
}

export function shardFields(dims: ShardDims): Field[] {
  const list = (n: number, t: Float16 | Uint8 | Int32) => new FixedSizeList(n, new Field('item', t, false));
  const fields = [
    new Field('doc', new Int32(), false),
    new Field('pos', new Int32(), false),
    new Field('att_in', list(dims.dModel, new Float16()), false),
    new Field('mlp_in', list(dims.dModel, new Float16()), false),
    new Field('head_norm', list(dims.nHeads, new Float16()), false),
    new Field('mlp_active', list(maskBytes(dims.ffnDim), new Uint8()), false),
  ];
  if (dims.topK > 0) {
    fields.push(new Field('mlp_topk_val', list(dims.topK, new Float16()), false));
    fields.push(new Field('mlp_topk_idx', list(dims.topK, new Int32()), false));
  }
  return fields;
}

/** Schema metadata (common/contracts.ts SHARD_META; all values strings). */
export function shardSchema(dims: ShardDims, meta: ShardMeta): Schema {
  const m = new Map<string, string>([
    [SHARD_META.format, SHARD_FORMAT],
    [SHARD_META.modelFingerprint, meta.modelFingerprint],
    [SHARD_META.layer, String(meta.layer)],
    [SHARD_META.dModel, String(dims.dModel)],
    [SHARD_META.nHeads, String(dims.nHeads)],
    [SHARD_META.ffnDim, String(dims.ffnDim)],
    [SHARD_META.topK, String(dims.topK)],
    [SHARD_META.labels, JSON.stringify(labelDefinitions(dims))],
    [SHARD_META.collectArgs, JSON.stringify(meta.collectArgs)],
  ]);
  return new Schema(shardFields(dims), m);
}

/** Bytes of one row's column data (what the bytes-per-token bound counts, before Arrow's per-batch framing). */
export function rowBytes(dims: ShardDims): number {
  return 4 + 4 + 2 * dims.dModel * 2 + 2 * dims.nHeads + maskBytes(dims.ffnDim) + dims.topK * (2 + 4);
}
