/**
 * Hugging Face OPT tensor names <-> OptWeights. Files name tensors `model.decoder.*` (OPTForCausalLM), `decoder.*`
 * (OPTModel, older facebook/opt-* .bin files) and `lm_head.weight`; everything here works on the canonical form
 * without the `model.` prefix.
 */
import type { LayerWeights, OptConfig, OptWeights } from './types.js';

/** Canonical name of a stored tensor, or undefined when it is not part of an OPT decoder / LM head. */
export function canonicalName(stored: string): string | undefined {
  const n = stored.startsWith('model.') ? stored.slice('model.'.length) : stored;
  if (n.startsWith('decoder.') || n === 'lm_head.weight') return n;
  return undefined;
}

export const LM_HEAD = 'lm_head.weight';

/** Per-layer tensor suffixes and how each maps onto LayerWeights. */
const LAYER_LINEARS = [
  ['self_attn.q_proj', 'qW', 'qB'],
  ['self_attn.k_proj', 'kW', 'kB'],
  ['self_attn.v_proj', 'vW', 'vB'],
  ['self_attn.out_proj', 'oW', 'oB'],
  ['fc1', 'fc1W', 'fc1B'],
  ['fc2', 'fc2W', 'fc2B'],
] as const;
const LAYER_NORMS = [
  ['self_attn_layer_norm', 'attnLnW', 'attnLnB'],
  ['final_layer_norm', 'mlpLnW', 'mlpLnB'],
] as const;

/** What a tensor is for, so absent-but-optional tensors (no bias, no affine LN) can be synthesised. */
export type TensorRole = 'weight' | 'bias' | 'ln_weight' | 'ln_bias';

export interface ExpectedTensor {
  name: string;
  shape: number[];
  role: TensorRole;
}

/**
 * Every tensor the model reads, with its shape (PyTorch layout). Biases are omitted when `enable_bias` is false and
 * LayerNorm parameters when `layer_norm_elementwise_affine` is false (torch then has no such parameters); lm_head is
 * omitted when tied (it is embed_tokens).
 */
export function expectedTensors(c: OptConfig): ExpectedTensor[] {
  const d = c.hiddenSize;
  const out: ExpectedTensor[] = [];
  const linear = (prefix: string, o: number, i: number, bias: boolean) => {
    out.push({ name: `${prefix}.weight`, shape: [o, i], role: 'weight' });
    if (bias) out.push({ name: `${prefix}.bias`, shape: [o], role: 'bias' });
  };
  const norm = (prefix: string) => {
    if (!c.layerNormElementwiseAffine) return;
    out.push({ name: `${prefix}.weight`, shape: [d], role: 'ln_weight' });
    out.push({ name: `${prefix}.bias`, shape: [d], role: 'ln_bias' });
  };
  out.push({ name: 'decoder.embed_tokens.weight', shape: [c.vocabSize, c.wordEmbedProjDim], role: 'weight' });
  // OPT's learned positions are offset by 2, hence two extra rows.
  out.push({ name: 'decoder.embed_positions.weight', shape: [c.maxPositionEmbeddings + 2, d], role: 'weight' });
  if (c.wordEmbedProjDim !== d) {
    linear('decoder.project_in', d, c.wordEmbedProjDim, false);
    linear('decoder.project_out', c.wordEmbedProjDim, d, false);
  }
  if (c.hasFinalLayerNorm) norm('decoder.final_layer_norm');
  for (let l = 0; l < c.numLayers; l++) {
    const p = `decoder.layers.${l}`;
    norm(`${p}.self_attn_layer_norm`);
    for (const [s] of LAYER_LINEARS.slice(0, 4)) linear(`${p}.${s}`, d, d, c.enableBias);
    norm(`${p}.final_layer_norm`);
    linear(`${p}.fc1`, c.ffnDim, d, c.enableBias);
    linear(`${p}.fc2`, d, c.ffnDim, c.enableBias);
  }
  if (!c.tieWordEmbeddings) out.push({ name: LM_HEAD, shape: [c.vocabSize, c.wordEmbedProjDim], role: 'weight' });
  return out;
}

/**
 * Build OptWeights from canonical-name lookups. `get` returns the tensor for a name in expectedTensors(c); parameters
 * the config says do not exist come back as their identity values (zero bias, unit LayerNorm scale), so the runtime
 * needs no special cases. With tied embeddings lmHead is the very same array as embedTokens.
 */
export function assembleWeights(c: OptConfig, get: (name: string) => Float32Array): OptWeights {
  const d = c.hiddenSize;
  const zeros = (n: number) => new Float32Array(n);
  const ones = (n: number) => new Float32Array(n).fill(1);
  const bias = (name: string, n: number) => (c.enableBias ? get(name) : zeros(n));
  const lnW = (name: string) => (c.layerNormElementwiseAffine ? get(name) : ones(d));
  const lnB = (name: string) => (c.layerNormElementwiseAffine ? get(name) : zeros(d));

  const embedTokens = get('decoder.embed_tokens.weight');
  const weights: OptWeights = {
    embedTokens,
    embedPositions: get('decoder.embed_positions.weight'),
    lmHead: c.tieWordEmbeddings ? embedTokens : get(LM_HEAD),
    layers: [],
  };
  if (c.wordEmbedProjDim !== d) {
    weights.projectIn = get('decoder.project_in.weight');
    weights.projectOut = get('decoder.project_out.weight');
  }
  if (c.hasFinalLayerNorm) {
    weights.finalLnW = lnW('decoder.final_layer_norm.weight');
    weights.finalLnB = lnB('decoder.final_layer_norm.bias');
  }
  for (let l = 0; l < c.numLayers; l++) {
    const p = `decoder.layers.${l}`;
    const layer = {} as LayerWeights;
    for (const [s, w, b] of LAYER_LINEARS) {
      const out = s === 'fc1' ? c.ffnDim : d;
      layer[w] = get(`${p}.${s}.weight`);
      layer[b] = bias(`${p}.${s}.bias`, out);
    }
    for (const [s, w, b] of LAYER_NORMS) {
      layer[w] = lnW(`${p}.${s}.weight`);
      layer[b] = lnB(`${p}.${s}.bias`);
    }
    weights.layers.push(layer);
  }
  return weights;
}
