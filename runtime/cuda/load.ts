/**
 * A Hugging Face OPT folder straight onto the GPU: the config is validated, the card's free memory checked against
 * what the engine will hold, then the weights stream from disk one tensor at a time in their stored dtype
 * (checkpoints/tensor-stream.ts) and are converted to fp16 / fp32 on the GPU (engine.cu dj_upload_raw). The host
 * holds one tensor's bytes at a time, never an fp32 copy of the model. Any failure frees the GPU memory taken.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { computeFingerprint, modelFingerprint } from '../../checkpoints/fingerprint.js';
import { parseOptConfig } from '../../checkpoints/opt-config.js';
import { expectedTensors, LM_HEAD } from '../../checkpoints/opt-names.js';
import { streamTensors } from '../../checkpoints/tensor-stream.js';
import type { OptConfig } from '../../checkpoints/types.js';
import { combineTensorHashes, tensorSha256, type HashedTensor } from '../../checkpoints/weights-hash.js';
import { DejavuError } from '../../common/errors.js';
import type { LoadedModelIdentity } from '../../export/bundle.js';
import { CudaEngine } from './engine.js';
import type { Dims } from './floor.js';
import { TENSOR, type CudaLib, type CudaOptions } from './lib.js';

/** Where each canonical tensor goes: TENSOR id and layer (-1: not uploaded, e.g. a tied lm_head the file stores). */
export function tensorTarget(name: string, c: OptConfig): { id: number; layer: number } | undefined {
  const top: Record<string, number> = {
    'decoder.embed_tokens.weight': TENSOR.embed,
    'decoder.embed_positions.weight': TENSOR.positions,
    'decoder.final_layer_norm.weight': TENSOR.lnfW,
    'decoder.final_layer_norm.bias': TENSOR.lnfB,
    'decoder.project_in.weight': TENSOR.projIn,
    'decoder.project_out.weight': TENSOR.projOut,
    [LM_HEAD]: TENSOR.lmHead,
  };
  if (name in top) return name === LM_HEAD && c.tieWordEmbeddings ? { id: -1, layer: -1 } : { id: top[name], layer: 0 };
  const m = /^decoder\.layers\.(\d+)\.(.+)$/.exec(name);
  if (!m) return undefined;
  const layer = Number(m[1]);
  const per: Record<string, number> = {
    'self_attn_layer_norm.weight': TENSOR.ln1W, 'self_attn_layer_norm.bias': TENSOR.ln1B,
    'self_attn.q_proj.weight': TENSOR.qW, 'self_attn.q_proj.bias': TENSOR.qB,
    'self_attn.k_proj.weight': TENSOR.kW, 'self_attn.k_proj.bias': TENSOR.kB,
    'self_attn.v_proj.weight': TENSOR.vW, 'self_attn.v_proj.bias': TENSOR.vB,
    'self_attn.out_proj.weight': TENSOR.oW, 'self_attn.out_proj.bias': TENSOR.oB,
    'final_layer_norm.weight': TENSOR.ln2W, 'final_layer_norm.bias': TENSOR.ln2B,
    'fc1.weight': TENSOR.fc1W, 'fc1.bias': TENSOR.fc1B, 'fc2.weight': TENSOR.fc2W, 'fc2.bias': TENSOR.fc2B,
  };
  return m[2] in per ? { id: per[m[2]], layer } : undefined;
}

/** Bytes the engine will hold on the GPU for this model: fp16 weights, KV cache, workspace (prefill included). */
export function deviceBytes(c: OptConfig, maxT: number, prefillTokens: number): { weights: number; kv: number; workspace: number } {
  const d = c.hiddenSize, ffn = c.ffnDim, L = c.numLayers, V = c.vocabSize, e = c.wordEmbedProjDim, H = c.numHeads;
  const weights =
    2 * (V * d + (c.maxPositionEmbeddings + 2) * d + L * (4 * d * d + 2 * ffn * d)) + 4 * L * (9 * d + ffn) +
    (c.tieWordEmbeddings ? 0 : 2 * V * d) + (e !== d ? 4 * d * e : 0);
  const kv = L * H * maxT * (2 * 2 * c.headDim + 1);
  // engine.cu pf_reserve: residual, GEMM outputs, fp16 activations, S and P of a head group (<= 1 GiB), LM-head chunk.
  const T = prefillTokens;
  const n = Math.min(T, c.maxPositionEmbeddings);
  const att = Math.min(6 * H * n * n, Math.max(6 * n * n, 2 ** 30));
  const prefill = T > 0 ? 4 * T * d + 4 * T * Math.max(3 * d, ffn) + 10 * T * d + 2 * T * ffn + att + 4 * Math.min(T, 1024) * V : 0;
  const workspace = prefill + (64 << 20) + 4 * (V + 8 * d + ffn + 4 * L * d + maxT);
  return { weights, kv, workspace };
}

export interface LoadStats {
  seconds: number;
  /** Bytes read from the checkpoint files. */
  bytes: number;
  tensors: number;
  /** Peak anonymous resident memory of this process while loading (Linux /proc; undefined elsewhere). */
  peak_rss_anon_bytes?: number;
  dtypes: string[];
}

function rssAnon(): number | undefined {
  try {
    const m = /RssAnon:\s+(\d+) kB/.exec(readFileSync('/proc/self/status', 'utf8'));
    return m ? Number(m[1]) * 1024 : undefined;
  } catch {
    return undefined;
  }
}

const GB = (b: number) => (b / 1e9).toFixed(2);

/**
 * Create an engine for the model in `dir` and stream its weights onto the GPU. `prefillTokens`: the most tokens one
 * prefill will take (counted in the memory check). Refuses, before allocating, a model that does not fit the card's
 * free memory (one line with both sizes).
 */
export async function loadModelToGpu(
  lib: CudaLib,
  dir: string,
  o: { maxT: number; prefillTokens?: number; options?: Partial<CudaOptions>; onTensor?: (done: number, total: number) => void },
): Promise<{ engine: CudaEngine; config: OptConfig; dims: Dims; stats: LoadStats; model: LoadedModelIdentity }> {
  const config = parseOptConfig(join(dir, 'config.json'));
  const dims = CudaEngine.dimsOf({ config, dir });
  if (o.maxT > config.maxPositionEmbeddings)
    throw new DejavuError(`${o.maxT} tokens exceed the model's max_position_embeddings (${config.maxPositionEmbeddings})`, dir);
  if (![32, 64, 128].includes(config.headDim))
    throw new DejavuError(`head dim ${config.headDim} (hidden_size / num_attention_heads) is not supported on the GPU (32, 64, 128)`, join(dir, 'config.json'));
  const need = deviceBytes(config, o.maxT, o.prefillTokens ?? 0);
  const total = need.weights + need.kv + need.workspace;
  const mem = lib.memInfo();
  if (total > mem.freeBytes)
    throw new DejavuError(
      `the model needs ${GB(total)} GB of GPU memory (fp16 weights ${GB(need.weights)} GB, KV cache ${GB(need.kv)} GB, ` +
        `workspace ${GB(need.workspace)} GB); the GPU has ${GB(mem.freeBytes)} GB free of ${GB(mem.totalBytes)} GB`,
      dir,
    );
  const t0 = performance.now();
  const engine = CudaEngine.create(lib, dims, o.maxT, 1e-5, o.options);
  try {
    engine.setVariant({
      preLn: config.doLayerNormBefore,
      finalLn: config.hasFinalLayerNorm,
      embedDim: config.wordEmbedProjDim,
      untiedHead: !config.tieWordEmbeddings,
    });
    const expected = new Map(expectedTensors(config).map((t) => [t.name, t]));
    const seen = new Set<string>();
    let bytes = 0;
    let peak = rssAnon();
    const dtypes = new Set<string>();
    // The model fingerprint as loadOptCheckpoint computes it, from the bytes streamed anyway (bundles bind to it).
    const hashed: HashedTensor[] = [];
    for await (const t of streamTensors(dir)) {
      const target = tensorTarget(t.name, config);
      if (!target || target.id < 0) continue;
      const want = expected.get(t.name);
      if (!want) throw new DejavuError(`tensor ${t.name} is not part of this config's model`, t.file);
      if (want.shape.join(',') !== t.shape.join(','))
        throw new DejavuError(`tensor ${t.name} has shape [${t.shape}], the config implies [${want.shape}]`, t.file);
      const n = t.shape.reduce((a, b) => a * b, 1);
      engine.uploadRaw(target.id, target.layer, t.bytes, t.dtype, n);
      hashed.push({ name: t.name, dtype: t.dtype, shape: t.shape, sha256: tensorSha256(t.bytes) });
      seen.add(t.name);
      dtypes.add(t.dtype);
      bytes += t.bytes.length;
      const r = rssAnon();
      if (r !== undefined) peak = Math.max(peak ?? 0, r);
      o.onTensor?.(seen.size, expected.size);
    }
    const missing = [...expected.keys()].filter((n) => !seen.has(n));
    if (missing.length)
      throw new DejavuError(`missing tensor${missing.length > 1 ? 's' : ''} ${missing.slice(0, 3).join(', ')}${missing.length > 3 ? ` and ${missing.length - 3} more` : ''}`, dir);
    // Parameters the config says do not exist (enable_bias false, LayerNorm without affine): identity values.
    const d = config.hiddenSize;
    const put = (id: number, layer: number, n: number, v: number) => {
      const a = new Float32Array(n).fill(v);
      engine.uploadRaw(id, layer, new Uint8Array(a.buffer), 'F32', n);
    };
    for (let l = 0; l < config.numLayers; l++) {
      if (!config.enableBias)
        for (const [id, n] of [[TENSOR.qB, d], [TENSOR.kB, d], [TENSOR.vB, d], [TENSOR.oB, d], [TENSOR.fc1B, config.ffnDim], [TENSOR.fc2B, d]])
          put(id, l, n, 0);
      if (!config.layerNormElementwiseAffine)
        for (const [id, v] of [[TENSOR.ln1W, 1], [TENSOR.ln1B, 0], [TENSOR.ln2W, 1], [TENSOR.ln2B, 0]]) put(id, l, d, v);
    }
    if (config.hasFinalLayerNorm && !config.layerNormElementwiseAffine) {
      put(TENSOR.lnfW, 0, d, 1);
      put(TENSOR.lnfB, 0, d, 0);
    }
    const stats: LoadStats = {
      seconds: (performance.now() - t0) / 1000,
      bytes,
      tensors: seen.size,
      dtypes: [...dtypes].sort(),
      ...(peak !== undefined ? { peak_rss_anon_bytes: peak } : {}),
    };
    const architectureFingerprint = computeFingerprint(config, hashed.map(({ name, shape, dtype }) => ({ name, shape, dtype })));
    const weightsSha256 = combineTensorHashes(hashed);
    const model = { dir, config, architectureFingerprint, weightsSha256, fingerprint: modelFingerprint(architectureFingerprint, weightsSha256) };
    return { engine, config, dims, stats, model };
  } catch (e) {
    engine.destroy();
    throw e;
  }
}
