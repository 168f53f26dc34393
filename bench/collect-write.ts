/**
 * `npm run bench collect-write`: collect's shard writing alone, at OPT-6.7B's row size (d 4096, 32 heads, ffn 16384:
 * 18,504 bytes a row), into files on this machine's disk, fsync'd before the clock stops. Compares, alternating in
 * one run:
 *   - `writer_threads`: ArrowFileWriter as collect uses it (bytes written and SHA-256-hashed on writer threads,
 *     collect/writer-threads.ts; every file's fsync asked for before the first is awaited);
 *   - `one_thread`: the same Arrow files with every byte written and hashed on the calling thread, one after the
 *     other (what collect did before the writer threads);
 * beside the two rates that bound them, measured in the same run: SHA-256 on one core, and the disk's sequential
 * write rate (one file written with large writes, then fsync).
 *
 * Env: DEJAVU_BENCH_WRITE_GB (bytes per run, default 3), DEJAVU_BENCH_WRITE_LAYERS (files per run, default 8),
 * DEJAVU_BENCH_WRITE_ROUNDS (default 2), DEJAVU_BENCH_WRITE_OUT (parent folder, default the OS temp dir).
 */
import { createHash } from 'node:crypto';
import { closeSync, fstatSync, fsyncSync, mkdtempSync, openSync, renameSync, rmSync, writeSync } from 'node:fs';
import { availableParallelism, cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { AsyncByteQueue, RecordBatchFileWriter } from 'apache-arrow';
import { ArrowFileWriter } from '../collect/arrow-file.js';
import { LayerChunk } from '../collect/chunk.js';
import type { LayerRows } from '../collect/doc-rows.js';
import { rowBytes, shardSchema } from '../collect/schema.js';
import type { ShardDims } from '../common/contracts.js';

const DIMS: ShardDims = { dModel: 4096, nHeads: 32, ffnDim: 16384, topK: 0 };

/** The writer before the writer threads: write(2) then hash, on the calling thread. */
class OneThreadSink extends AsyncByteQueue {
  readonly hash = createHash('sha256');
  constructor(private readonly fd: number) {
    super();
  }
  override write(value: unknown): void {
    const v = value as ArrayBufferView;
    const buf = new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
    let off = 0;
    while (off < buf.byteLength) off += writeSync(this.fd, buf, off, buf.byteLength - off);
    this.hash.update(buf);
  }
}

/** One batch's worth of rows, filled once with varied values (the hash and the disk do not care which). */
function filledChunk(rows: number): LayerChunk {
  const { dModel: d, nHeads: H, ffnDim: ffn } = DIMS;
  const c = new LayerChunk(DIMS, rows);
  const nb = Math.ceil(ffn / 8);
  const r: LayerRows = {
    attIn: Uint16Array.from({ length: rows * d }, (_, i) => (i * 2654435761) >>> 17),
    mlpIn: Uint16Array.from({ length: rows * d }, (_, i) => (i * 40503) >>> 3),
    headNorm: Uint16Array.from({ length: rows * H }, (_, i) => i),
    mlpActive: Uint8Array.from({ length: rows * nb }, (_, i) => (i * 131) & 255),
    topkVal: new Uint16Array(0),
    topkIdx: new Int32Array(0),
  };
  c.append(0, rows, r);
  return c;
}

export async function run(): Promise<Record<string, unknown>> {
  const gb = Number(process.env.DEJAVU_BENCH_WRITE_GB ?? 3);
  const layers = Number(process.env.DEJAVU_BENCH_WRITE_LAYERS ?? 8);
  const rounds = Number(process.env.DEJAVU_BENCH_WRITE_ROUNDS ?? 2);
  const parent = process.env.DEJAVU_BENCH_WRITE_OUT ?? tmpdir();
  const row = rowBytes(DIMS);
  const batchRows = Math.floor((8 << 20) / row);
  const batchesPerLayer = Math.ceil((gb * 1e9) / (layers * batchRows * row));
  const chunk = filledChunk(batchRows);
  const schemas = Array.from({ length: layers }, (_, l) => shardSchema(DIMS, { modelFingerprint: 'ab'.repeat(32), layer: l, collectArgs: {} }));
  const dir = mkdtempSync(join(parent, 'dejavu-bench-write-'));
  const r3 = (x: number) => Math.round(x * 1000) / 1000;
  const timed = (f: () => number) => {
    const t0 = performance.now();
    const bytes = f();
    const s = (performance.now() - t0) / 1000;
    return { bytes, seconds: r3(s), gb_per_s: r3(bytes / 1e9 / s) };
  };

  const threads = () => {
    const ws = schemas.map((s, l) => ArrowFileWriter.create(join(dir, `t${l}.arrow`), s));
    for (let b = 0; b < batchesPerLayer; b++) ws.forEach((w, l) => w.write(chunk.toBatch(schemas[l])));
    const bytes = ArrowFileWriter.commitAll(ws).reduce((a, x) => a + x, 0);
    ws.forEach((w) => rmSync(w.path));
    return bytes;
  };
  const oneThread = () => {
    let bytes = 0;
    const open = schemas.map((s, l) => {
      const path = join(dir, `o${l}.arrow`);
      const fd = openSync(path + '.tmp', 'w');
      const sink = new OneThreadSink(fd);
      const w = new RecordBatchFileWriter();
      w.reset(sink, s);
      return { path, fd, sink, w };
    });
    for (let b = 0; b < batchesPerLayer; b++) open.forEach((o, l) => o.w.write(chunk.toBatch(schemas[l])));
    for (const o of open) {
      o.w.finish();
      fsyncSync(o.fd);
      bytes += fstatSync(o.fd).size;
      closeSync(o.fd);
      renameSync(o.path + '.tmp', o.path);
      o.sink.hash.digest('hex');
      rmSync(o.path);
    }
    return bytes;
  };
  const disk = () => {
    const buf = new Uint8Array(64 << 20).fill(7);
    const path = join(dir, 'dd.bin');
    const fd = openSync(path, 'w');
    const n = Math.ceil((gb * 1e9) / buf.byteLength);
    for (let i = 0; i < n; i++) for (let off = 0; off < buf.byteLength; ) off += writeSync(fd, buf, off, buf.byteLength - off);
    fsyncSync(fd);
    closeSync(fd);
    rmSync(path);
    return n * buf.byteLength;
  };
  const sha = () => {
    const buf = new Uint8Array(256 << 20).fill(7);
    const h = createHash('sha256');
    for (let i = 0; i < 4; i++) h.update(buf);
    h.digest();
    return 4 * buf.byteLength;
  };

  const runs: Record<string, ReturnType<typeof timed>[]> = { writer_threads: [], one_thread: [], disk: [], sha256_one_core: [] };
  try {
    for (let i = 0; i < rounds; i++) {
      for (const [name, f] of [['disk', disk], ['writer_threads', threads], ['one_thread', oneThread], ['sha256_one_core', sha]] as const) {
        const t = timed(f);
        runs[name].push(t);
        process.stderr.write(`  round ${i + 1}: ${name} ${t.gb_per_s} GB/s (${(t.bytes / 1e9).toFixed(2)} GB in ${t.seconds} s)\n`);
      }
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  const best = (name: string) => Math.max(...runs[name].map((t) => t.gb_per_s));
  const perToken = row * 32; // OPT-6.7B: 32 layers
  const tok = (gbps: number) => Math.round((gbps * 1e9) / perToken);
  return {
    device: `${cpus()[0]?.model ?? 'cpu'} (${availableParallelism()} cores)`,
    what: `Arrow shard files at OPT-6.7B row size (${row} bytes a row, batches of ${batchRows} rows), ${layers} files, ~${gb} GB a run, fsync'd; best of ${rounds} rounds`,
    row_bytes: row,
    layers,
    batches_per_layer: batchesPerLayer,
    best_gb_per_s: { writer_threads: best('writer_threads'), one_thread: best('one_thread'), disk: best('disk'), sha256_one_core: best('sha256_one_core') },
    opt_6_7b_tokens_per_s: { writer_threads: tok(best('writer_threads')), one_thread: tok(best('one_thread')), disk: tok(best('disk')) },
    writer_threads_vs_disk: r3(best('writer_threads') / best('disk')),
    one_thread_vs_disk: r3(best('one_thread') / best('disk')),
    runs,
  };
}

