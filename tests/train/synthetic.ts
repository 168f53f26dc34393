/**
 * Small synthetic shard folders with planted structure, written with collect's own schema (shardSchema), label math
 * (packActive, headNorms) and Arrow file writer (ArrowFileWriter), so train is tested against the real format.
 *
 * Per token and layer l: att_in and mlp_in are random normal vectors. Labels are learnable functions of the inputs:
 *   mlp_active[l] = relu(A_l · mlp_in[l] + b_l) > 0 (b_l < 0, so ~20% of neurons are active);
 *   head h of layer l has norm exp(0.5 · C_l[h] · att_in[l-1]) (att_in[0] for l = 0), so its top-k heads are a
 *   monotone function of a linear score of the previous layer's att_in (what lookahead predicts).
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { makeData, RecordBatch, Struct, type Data, type Schema } from 'apache-arrow';
import { f32ToF16 } from '../../checkpoints/float16.js';
import { ArrowFileWriter } from '../../collect/arrow-file.js';
import { headNorms, maskBytes, packActive } from '../../collect/labels.js';
import { shardSchema } from '../../collect/schema.js';
import type { ShardDims } from '../../common/contracts.js';
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

/** Rows of one layer pending for the current shard file. */
class Rows {
  doc: number[] = [];
  pos: number[] = [];
  att: Uint16Array[] = [];
  mlp: Uint16Array[] = [];
  head: Uint16Array[] = [];
  act: Uint8Array[] = [];
  get length(): number {
    return this.doc.length;
  }
  toBatch(schema: Schema): RecordBatch {
    const n = this.doc.length;
    const f = schema.fields;
    const cat = <T extends Uint16Array | Uint8Array>(parts: T[], C: new (n: number) => T): T => {
      const out = new C(parts.reduce((a, p) => a + p.length, 0));
      let o = 0;
      for (const p of parts) (out.set(p as never, o), (o += p.length));
      return out;
    };
    const list = (i: number, values: Uint16Array | Uint8Array): Data =>
      makeData({ type: f[i].type, length: n, nullCount: 0, child: makeData({ type: f[i].type.children[0].type, length: values.length, nullCount: 0, data: values }) });
    const children: Data[] = [
      makeData({ type: f[0].type, length: n, nullCount: 0, data: Int32Array.from(this.doc) }),
      makeData({ type: f[1].type, length: n, nullCount: 0, data: Int32Array.from(this.pos) }),
      list(2, cat(this.att, Uint16Array)),
      list(3, cat(this.mlp, Uint16Array)),
      list(4, cat(this.head, Uint16Array)),
      list(5, cat(this.act, Uint8Array)),
    ];
    return new RecordBatch(schema, makeData({ type: new Struct(f), length: n, nullCount: 0, children }));
  }
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
  const hd = d / H;
  const rng = new Rng(o.seed ?? 7);
  mkdirSync(o.dir, { recursive: true });
  const chunks = Array.from({ length: L }, () => new Rows());
  const schemas = Array.from({ length: L }, (_, l) => shardSchema(dims, { modelFingerprint: fp, layer: l, collectArgs: { synthetic: true } }));
  for (let l = 0; l < L; l++) mkdirSync(join(o.dir, `layer_${String(l).padStart(2, '0')}`), { recursive: true });
  let shard = 0;
  const shardRows: number[] = [];
  const flush = () => {
    shardRows.push(chunks[0].length);
    for (let l = 0; l < L; l++) {
      const w = ArrowFileWriter.create(join(o.dir, `layer_${String(l).padStart(2, '0')}`, `shard_${String(shard).padStart(5, '0')}.arrow`), schemas[l]);
      w.write(chunks[l].toBatch(schemas[l]));
      w.commit();
      chunks[l] = new Rows();
    }
    shard++;
  };
  const first = o.firstDoc ?? 0;
  for (let doc = first; doc < first + docs; doc++) {
    const att = Array.from({ length: L }, () => Float32Array.from({ length: T * d }, () => normal(rng)));
    const mlp = Array.from({ length: L }, () => Float32Array.from({ length: T * d }, () => normal(rng)));
    for (let l = 0; l < L; l++) {
      const c = chunks[l];
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
      const norms = new Float32Array(T * H);
      headNorms(heads, T, H, hd, norms, 0);
      const bits = new Uint8Array(T * maskBytes(ffn));
      packActive(act, T, ffn, bits, 0);
      for (let t = 0; t < T; t++) {
        c.doc.push(doc);
        c.pos.push(t);
      }
      c.att.push(f32ToF16(att[l]));
      c.mlp.push(f32ToF16(mlp[l]));
      c.head.push(f32ToF16(norms));
      c.act.push(bits);
    }
    if (chunks[0].length + T > perShard * T) flush();
  }
  if (chunks[0].length > 0) flush();
  const shards = shardRows.map((rows, i) => ({ file: `shard_${String(i).padStart(5, '0')}.arrow`, rows }));
  writeFileSync(join(o.dir, 'manifest.json'), JSON.stringify({ format: 'dejavu-shards/1', complete: true, synthetic: true, model_fingerprint: fp, layers: Array.from({ length: L }, (_, l) => l), shards }));
  return { dir: o.dir, dims, tokens: docs * T };
}
