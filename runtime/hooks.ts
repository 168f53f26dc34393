/**
 * Named hook points of the one OPT model definition (runtime/cpu). `collect` records through these; nothing else
 * re-implements the model. All arrays are row-major [T][...] over the T tokens of the current call, valid only during
 * the callback (the runtime may reuse buffers): copy what you keep.
 */
export interface ForwardHooks {
  /** Decoder layer input: the residual stream before the attention block's LayerNorm. [T][d] */
  attIn?(layer: number, x: Float32Array, T: number): void;
  /** The MLP block's input: residual stream before its LayerNorm (pre-LN); the block input for post-LN. [T][d] */
  mlpIn?(layer: number, x: Float32Array, T: number): void;
  /** Concatenated per-head attention outputs before out_proj: head h is columns h*headDim..(h+1)*headDim-1. [T][d] */
  headOut?(layer: number, heads: Float32Array, T: number): void;
  /** relu(fc1(LN(x))) [T][ffn] */
  fc1Act?(layer: number, act: Float32Array, T: number): void;
}
