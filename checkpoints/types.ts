/**
 * The typed interface between checkpoints/ (which reads files) and runtime/ (which computes). Everything a forward pass
 * needs, in fp32, in PyTorch's nn.Linear layout: a weight `W` of a Linear(in -> out) is row-major [out][in].
 */

/** A validated OPT config.json (Hugging Face names mapped to camelCase). */
export interface OptConfig {
  vocabSize: number;
  hiddenSize: number; // d
  numLayers: number;
  numHeads: number; // H
  headDim: number; // d / H
  ffnDim: number;
  maxPositionEmbeddings: number;
  /** Embedding width; differs from hiddenSize in e.g. opt-350m, which then has project_in / project_out. */
  wordEmbedProjDim: number;
  /** true = pre-LN (every OPT except 350m). */
  doLayerNormBefore: boolean;
  /** Only 'relu' is supported (all released OPT models). */
  activation: 'relu';
  enableBias: boolean;
  layerNormElementwiseAffine: boolean;
  /** opt-350m removes the final LayerNorm. */
  hasFinalLayerNorm: boolean;
  tieWordEmbeddings: boolean;
  bosTokenId: number;
  eosTokenId: number;
  padTokenId: number;
  /** Storage dtype declared by the config (`torch_dtype` or `dtype`). */
  dtype: 'float16' | 'bfloat16' | 'float32';
}

export interface LayerWeights {
  /** self_attn_layer_norm */
  attnLnW: Float32Array;
  attnLnB: Float32Array;
  /** q/k/v/out projections: W [d][d], b [d]. Head h owns rows h*headDim .. (h+1)*headDim-1 of q/k/v and the same
   *  columns of out_proj. */
  qW: Float32Array;
  qB: Float32Array;
  kW: Float32Array;
  kB: Float32Array;
  vW: Float32Array;
  vB: Float32Array;
  oW: Float32Array;
  oB: Float32Array;
  /** final_layer_norm (the MLP block's LayerNorm) */
  mlpLnW: Float32Array;
  mlpLnB: Float32Array;
  /** fc1 W [ffn][d], b [ffn]; fc2 W [d][ffn], b [d] */
  fc1W: Float32Array;
  fc1B: Float32Array;
  fc2W: Float32Array;
  fc2B: Float32Array;
}

export interface OptWeights {
  /** [vocab][wordEmbedProjDim] */
  embedTokens: Float32Array;
  /** [maxPositionEmbeddings + 2][hiddenSize]: OPT's learned positions carry an offset of 2. */
  embedPositions: Float32Array;
  /** Linear(wordEmbedProjDim -> hiddenSize), no bias; only when the widths differ. */
  projectIn?: Float32Array;
  /** Linear(hiddenSize -> wordEmbedProjDim), no bias; only when the widths differ. */
  projectOut?: Float32Array;
  /** decoder.final_layer_norm; absent when the config removes it. */
  finalLnW?: Float32Array;
  finalLnB?: Float32Array;
  /** [vocab][wordEmbedProjDim]; the same array as embedTokens when tied. */
  lmHead: Float32Array;
  layers: LayerWeights[];
}

/** A loaded model folder. */
export interface OptCheckpoint {
  dir: string;
  config: OptConfig;
  weights: OptWeights;
  /** Hex SHA-256 of the architecture fingerprint and weights_sha256: binds shards, predictors and bundles to these
   *  weights (checkpoints/fingerprint.ts). */
  fingerprint: string;
  /** Hex SHA-256 of the canonical config + sorted tensor names/shapes/dtypes (the whole fingerprint before weight
   *  values were hashed: artifacts of that time carry it). */
  architectureFingerprint: string;
  /** Content hash of the tensors the model reads (checkpoints/weights-hash.ts). */
  weightsSha256: string;
  /** Which file format the weights came from, e.g. 'safetensors', 'safetensors-sharded', 'pytorch-bin'. */
  format: string;
}
