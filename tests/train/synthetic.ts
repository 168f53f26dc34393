/**
 * Small synthetic shard folders with planted structure, written with collect's own writer (LayerChunk +
 * ArrowFileWriter + shardSchema), so train is tested against the real format.
 *
 * Per token and layer l: att_in and mlp_in are random normal vectors. Labels are learnable functions of the inputs:
 *   mlp_active[l] = relu(A_l · mlp_in[l] + b_l) > 0 (b_l < 0, so ~20% of neurons are active);
 *   head h of layer l has norm exp(0.5 · C_l[h] · att_in[l-1]) (att_in[0] for l = 0), so its top-k heads are a
 *   monotone function of a linear score of the previous layer's att_in (what lookahead predicts).
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ArrowFileWriter } from '../../collect/arrow-file.js';
import { LayerChunk } from '../../collect/chunk.js';
import { shardSchema, type ShardDims } from '../../collect/schema.js';
import { Rng } from '../../train/rng.js';

export interface SyntheticOptions {
  dir: string;
  layers?: number;
  d?: number;
  H?: number;
  ffn?: number;
  docs?: number;
  tokens?: number;
  /** Documents per shard file. */
  docsPerShard?: number;
  seed?: number;
  fingerprint?: string;
  /** Layers whose MLP is never active (all-zero labels). */
  deadMlpLayers?: number[];
  /** First document index (to build a second folder of other documents). */
  firstDoc?: number;
}

function normal(rng: Rng): number {
  const u = Math.max(rng.next(), 1e-12);
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * rng.next());
}

export async function writeSyntheticShards(o: SyntheticOptions): Promise<{ dir: string; dims: ShardDims; tokens: number }> {
  const L = o.layers ?? 3;
  const d = o.d ?? 16;
  const H = o.H ?? 4;
  const ffn = o.ffn ?? 24;
  const docs = o.docs ?? 40;
  const T = o.tokens ?? 24;
  const perShard = o.docsPerShard ?? 16;
  const fp = o.fingerprint ?? 'f'.repeat(64);
  const dead = new Set(o.deadMlpLayers ?? []);
  const dims: ShardDims = { dModel: d, nHeads: H, ffnDim: ffn, topK: 0 };
  // The planted model (fixed by the seed of the *structure*, 1234, so two folders share it).
  const prng = new Rng(1234);
  const A = Array.from({ length: L }, () => Float32Array.from({ length: ffn * d }, () => normal(prng) / Math.sqrt(d)));
  const bias = Array.from({ length: L }, () => Float32Array.from({ length: ffn }, () => -0.85 + 0.1 * normal(prng)));
  const C = Array.from({ length: L }, () => Float32Array.from({ length: H * d }, () => normal(prng) / Math.sqrt(d)));
  const hd = d / H; // LayerChunk.putHeadOut reads [T][H * (d / H)]
  const rng = new Rng(o.seed ?? 7);
  mkdirSync(o.dir, { recursive: true });
  const chunks = Array.from({ length: L }, (_, l) => new LayerChunk(l, dims, perShard * T));
  const schemas = Array.from({ length: L }, (_, l) => shardSchema(dims, { modelFingerprint: fp, layer: l, collectArgs: { synthetic: true } }));
  for (let l = 0; l < L; l++) mkdirSync(join(o.dir, `layer_${String(l).padStart(2, '0')}`), { recursive: true });
  let shard = 0;
  const flush = () => {
    for (let l = 0; l < L; l++) {
      const w = ArrowFileWriter.create(join(o.dir, `layer_${String(l).padStart(2, '0')}`, `shard_${String(shard).padStart(5, '0')}.arrow`), schemas[l]);
      w.write(chunks[l].toBatch(schemas[l]));
      w.commit();
      chunks[l].reset();
    }
    shard++;
  };
  const first = o.firstDoc ?? 0;
  for (let doc = first; doc < first + docs; doc++) {
    const att = Array.from({ length: L }, () => Float32Array.from({ length: T * d }, () => normal(rng)));
    const mlp = Array.from({ length: L }, () => Float32Array.from({ length: T * d }, () => normal(rng)));
    for (let l = 0; l < L; l++) {
      const c = chunks[l];
      c.beginDoc(doc, T);
      c.putAttIn(att[l], T);
      c.putMlpIn(mlp[l], T);
      const src = att[Math.max(0, l - 1)];
      const heads = new Float32Array(T * H * hd);
      const act = new Float32Array(T * ffn);
      for (let t = 0; t < T; t++) {
        for (let h = 0; h < H; h++) {
          let s = 0;
          for (let i = 0; i < d; i++) s += C[l][h * d + i] * src[t * d + i];
          heads[(t * H + h) * hd] = Math.exp(0.5 * s);
        }
        // The MLP label sees the LayerNorm'd input, as a real MLP block does.
        let mean = 0;
        for (let i = 0; i < d; i++) mean += mlp[l][t * d + i];
        mean /= d;
        let v = 0;
        for (let i = 0; i < d; i++) v += (mlp[l][t * d + i] - mean) ** 2;
        const inv = 1 / Math.sqrt(v / d + 1e-5);
        for (let j = 0; j < ffn; j++) {
          let s = bias[l][j];
          for (let i = 0; i < d; i++) s += A[l][j * d + i] * (mlp[l][t * d + i] - mean) * inv;
          act[t * ffn + j] = dead.has(l) ? 0 : Math.max(0, s);
        }
      }
      c.putHeadOut(heads, T);
      c.putFc1Act(act, T);
      c.endDoc(T);
    }
    if (!chunks[0].fits(T)) flush();
  }
  if (chunks[0].rows > 0) flush();
  writeFileSync(join(o.dir, 'manifest.json'), JSON.stringify({ synthetic: true, model_fingerprint: fp, layers: L }));
  return { dir: o.dir, dims, tokens: docs * T };
}
