import { spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { f16BitsToF32, f32ToF16 } from '../../checkpoints/float16.js';
import { ArrowFileWriter } from '../../collect/arrow-file.js';
import { LayerChunk } from '../../collect/chunk.js';
import { forwardRows, type HookedModel } from '../../collect/doc-rows.js';
import { maskBytes, unpackActive } from '../../collect/labels.js';
import { readShard } from '../../collect/read-shard.js';
import { rowBytes, shardSchema } from '../../collect/schema.js';
import { SHARD_FORMAT, type ShardDims } from '../../common/contracts.js';

const dir = mkdtempSync(join(tmpdir(), 'dejavu-shard-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const dims: ShardDims = { dModel: 8, nHeads: 2, ffnDim: 19, topK: 3 };
const meta = { modelFingerprint: 'ab'.repeat(32), layer: 4, collectArgs: { max_len: 64, layers: [4] } };

function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 4294967296) * 2 - 1;
}

/**
 * One synthetic document through forwardRows + a chunk, exactly as collect does it: a stand-in model calls the hooks
 * (for layer 3, not collected, and layer 4), the hook arrays become compact rows, the rows go into the chunk.
 */
function feedDoc(c: LayerChunk, doc: number, T: number, r: () => number) {
  const { dModel: d, ffnDim: ffn } = dims;
  const att = Float32Array.from({ length: T * d }, r);
  const heads = Float32Array.from({ length: T * d }, r);
  const mlp = Float32Array.from({ length: T * d }, () => r() * 100);
  const act = Float32Array.from({ length: T * ffn }, () => Math.max(0, r()));
  const model: HookedModel = {
    prefill(ids, { hooks }) {
      expect(ids.length).toBe(T);
      for (const l of [3, 4]) {
        hooks.attIn!(l, att, T);
        hooks.headOut!(l, heads, T);
        hooks.mlpIn!(l, mlp, T);
        hooks.fc1Act!(l, act, T);
      }
    },
  };
  const [rows] = forwardRows(model, new Int32Array(T), [4], dims);
  c.append(doc, T, rows);
  return { att, heads, mlp, act };
}

describe('shard file (Arrow IPC file, batch by batch)', () => {
  const schema = shardSchema(dims, meta);
  const path = join(dir, 'shard_00000.arrow');
  const r = rng(3);
  const chunk = new LayerChunk(dims, 16);
  const w = ArrowFileWriter.create(path, schema);
  const docs = [
    { index: 7, T: 5 },
    { index: 9, T: 9 },
    { index: 12, T: 11 }, // does not fit beside the first two (16 rows): second batch
  ];
  const inputs: ReturnType<typeof feedDoc>[] = [];
  for (const doc of docs) {
    if (!chunk.fits(doc.T)) {
      w.write(chunk.toBatch(schema));
      chunk.reset();
    }
    inputs.push(feedDoc(chunk, doc.index, doc.T, r));
  }
  // Before commit nothing is visible under the final name, only the hidden temp file.
  const beforeCommit = readdirSync(dir);
  w.write(chunk.toBatch(schema));
  const bytes = w.commit();

  it('is invisible until committed, then renamed into place with no temp file left', () => {
    expect(beforeCommit).toEqual([`.shard_00000.arrow.${process.pid}.tmp`]);
    expect(readdirSync(dir)).toEqual(['shard_00000.arrow']);
    expect(statSync(path).size).toBe(bytes);
    const buf = readFileSync(path);
    expect(buf.subarray(0, 6).toString()).toBe('ARROW1'); // IPC file magic at both ends
    expect(buf.subarray(buf.length - 6).toString()).toBe('ARROW1');
  });

  it('reads back with apache-arrow: schema, metadata and every value', () => {
    const s = readShard(path);
    expect(s.rows).toBe(25);
    expect(s.batches).toBe(2);
    expect(s.metadata.get('dejavu.format')).toBe(SHARD_FORMAT);
    expect(s.metadata.get('dejavu.layer')).toBe('4');
    expect(s.metadata.get('dejavu.ffn_dim')).toBe('19');
    expect(JSON.parse(s.metadata.get('dejavu.collect_args')!)).toEqual(meta.collectArgs);
    expect(Object.keys(JSON.parse(s.metadata.get('dejavu.labels')!))).toContain('mlp_active');
    expect([...s.columns.keys()]).toEqual(['doc', 'pos', 'att_in', 'mlp_in', 'head_norm', 'mlp_active', 'mlp_topk_val', 'mlp_topk_idx']);
    expect(s.columns.get('mlp_active')!.width).toBe(maskBytes(19));
    let row = 0;
    docs.forEach((doc, k) => {
      const inp = inputs[k];
      for (let t = 0; t < doc.T; t++, row++) {
        expect(s.columns.get('doc')!.values[row]).toBe(doc.index);
        expect(s.columns.get('pos')!.values[row]).toBe(t);
      }
      const start = row - doc.T;
      const d = dims.dModel;
      const slice = (name: string, w: number) => s.columns.get(name)!.values.subarray(start * w, row * w);
      expect(Array.from(slice('att_in', d))).toEqual(Array.from(f32ToF16(inp.att)));
      expect(Array.from(slice('mlp_in', d))).toEqual(Array.from(f32ToF16(inp.mlp)));
      const hn = slice('head_norm', 2) as Uint16Array;
      for (let t = 0; t < doc.T; t++) {
        for (let h = 0; h < 2; h++) {
          let ss = 0;
          for (let c = 0; c < 4; c++) ss += inp.heads[t * d + h * 4 + c] ** 2;
          expect(f16BitsToF32(hn[t * 2 + h])).toBeCloseTo(Math.sqrt(ss), 2);
        }
        const bits = unpackActive(slice('mlp_active', 3) as Uint8Array, 19, t * 3);
        for (let n = 0; n < 19; n++) expect(bits[n]).toBe(inp.act[t * 19 + n] > 0 ? 1 : 0);
        const idx = slice('mlp_topk_idx', 3);
        const top = Array.from({ length: 19 }, (_, i) => i).sort((a, b) => inp.act[t * 19 + b] - inp.act[t * 19 + a] || a - b);
        expect(Array.from(idx.subarray(t * 3, t * 3 + 3))).toEqual(top.slice(0, 3));
      }
    });
  });

  it('costs row bytes plus a small fixed framing per batch and file', () => {
    const data = 25 * rowBytes(dims);
    expect(bytes).toBeGreaterThan(data);
    // Framing: magic, footer with schema + metadata, per-batch message headers and 8-byte padding per buffer.
    expect(bytes - data).toBeLessThan(4096);
  });

  it('forwardRows refuses a runtime whose hooks miss rows', () => {
    const partial: HookedModel = { prefill: (_ids, { hooks }) => hooks.attIn!(4, new Float32Array(8 * 3), 3) };
    expect(() => forwardRows(partial, new Int32Array(3), [4], dims)).toThrow(/layer 4: the runtime's hooks delivered att_in 3, mlp_in 0, head 0, fc1 0 rows for 3 tokens/);
  });

  it('abort() removes the temporary file and leaves no shard', () => {
    const p2 = join(dir, 'shard_00001.arrow');
    const w2 = ArrowFileWriter.create(p2, schema);
    w2.write(chunk.toBatch(schema));
    w2.abort();
    expect(readdirSync(dir)).toEqual(['shard_00000.arrow']);
  });

  const py = spawnSync('python3', ['-c', 'import pyarrow'], { encoding: 'utf8' });
  it.skipIf(py.status !== 0)('opens in pyarrow (pa.ipc.open_file) with the same values', () => {
    const script = `
import json, sys, pyarrow as pa, numpy as np
r = pa.ipc.open_file(sys.argv[1])
t = r.read_all()
md = {k.decode(): v.decode() for k, v in t.schema.metadata.items()}
att = np.asarray(t.column('att_in').combine_chunks().flatten()).view(np.uint16) if t.column('att_in').type.value_type == pa.float16() else None
bits = np.unpackbits(t.column('mlp_active').combine_chunks().flatten().to_numpy().reshape(t.num_rows, -1), axis=1, bitorder='little')
print(json.dumps({'rows': t.num_rows, 'batches': r.num_record_batches, 'types': [str(f.type) for f in t.schema],
  'layer': md['dejavu.layer'], 'doc': t.column('doc').to_pylist(), 'att_sum': float(np.asarray(t.column('att_in').combine_chunks().flatten(), dtype=np.float64).sum()),
  'active': int(bits[:, :19].sum()), 'pad': int(bits[:, 19:].sum())}))
`;
    const res = spawnSync('python3', ['-c', script, path], { encoding: 'utf8' });
    expect(res.stderr).toBe('');
    const out = JSON.parse(res.stdout);
    const s = readShard(path);
    expect(out.rows).toBe(25);
    expect(out.batches).toBe(2);
    expect(out.layer).toBe('4');
    expect(out.types).toEqual([
      'int32',
      'int32',
      'fixed_size_list<item: halffloat not null>[8]',
      'fixed_size_list<item: halffloat not null>[8]',
      'fixed_size_list<item: halffloat not null>[2]',
      'fixed_size_list<item: uint8 not null>[3]',
      'fixed_size_list<item: halffloat not null>[3]',
      'fixed_size_list<item: int32 not null>[3]',
    ]);
    expect(out.doc).toEqual(Array.from(s.columns.get('doc')!.values));
    let attSum = 0;
    for (const h of s.columns.get('att_in')!.values as Uint16Array) attSum += f16BitsToF32(h);
    expect(out.att_sum).toBeCloseTo(attSum, 6);
    let active = 0;
    for (let i = 0; i < 25; i++) for (const b of unpackActive(s.columns.get('mlp_active')!.values as Uint8Array, 19, i * 3)) active += b;
    expect(out.active).toBe(active);
    expect(out.pad).toBe(0);
  });
});
