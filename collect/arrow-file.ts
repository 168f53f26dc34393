/**
 * An Arrow IPC *file* written batch by batch straight to disk under a temporary name, then fsynced and renamed into
 * place. apache-arrow's RecordBatchFileWriter normally queues every byte in memory until it is read; handing it a
 * sink that passes the bytes on to a writer thread (at most IN_FLIGHT_CAP bytes held there) keeps memory bounded
 * whatever the file size.
 */
import { openSync, renameSync, rmSync } from 'node:fs';
import { AsyncByteQueue, RecordBatchFileWriter, type RecordBatch, type Schema } from 'apache-arrow';
import { tempPathFor } from '../common/atomic.js';
import { DejavuError, fsErrorToDejavu } from '../common/errors.js';
import { ThreadedFile } from './writer-threads.js';

/**
 * A byte sink the Arrow writer accepts (it must be an AsyncByteQueue) that hands the bytes to a writer thread, which
 * writes them to the file and computes the manifest's per-shard SHA-256 on the way (collect/writer-threads.ts).
 */
class ThreadSink extends AsyncByteQueue {
  constructor(readonly file: ThreadedFile) {
    super();
  }
  override write(value: unknown): void {
    const v = value as ArrayBufferView;
    this.file.write(new Uint8Array(v.buffer, v.byteOffset, v.byteLength));
  }
}

export class ArrowFileWriter {
  private readonly writer: RecordBatchFileWriter;
  private readonly sink: ThreadSink;
  private open = true;
  readonly tempPath: string;
  /** Hex SHA-256 of the whole file, set by commit(). */
  sha256 = '';

  private constructor(
    readonly path: string,
    readonly schema: Schema,
  ) {
    this.tempPath = tempPathFor(path);
    let fd: number;
    try {
      fd = openSync(this.tempPath, 'w');
    } catch (e) {
      throw new DejavuError(`cannot create a shard file: ${(e as Error).message}`, this.tempPath);
    }
    this.sink = new ThreadSink(new ThreadedFile(fd));
    this.writer = new RecordBatchFileWriter();
    // reset(sink, schema) adopts our AsyncByteQueue as is and writes the file preamble into it.
    this.writer.reset(this.sink, schema);
  }

  /** Opens `<dir>/.<name>.<pid>.tmp`; nothing is visible under `path` until commit(). */
  static create(path: string, schema: Schema): ArrowFileWriter {
    return new ArrowFileWriter(path, schema);
  }

  /** Appends one record batch built on this file's Schema (LayerChunk.toBatch). */
  write(batch: RecordBatch): void {
    // RecordBatch re-wraps the schema (cloned fields). The Arrow writer silently ends the file when a batch's fields
    // differ from the file's, so a mismatch is a bug to surface here rather than a truncated shard.
    const f = batch.schema.fields;
    const g = this.schema.fields;
    const same = (i: number) => f[i].name === g[i].name && f[i].nullable === g[i].nullable && String(f[i].type) === String(g[i].type);
    if (f.length !== g.length || !f.every((_, i) => same(i))) {
      throw new Error('batch schema differs from the file schema');
    }
    if (batch.numRows === 0) return;
    this.writer.write(batch);
  }

  /** Bytes written so far (before the footer). */
  get bytes(): number {
    return this.sink.file.bytes;
  }

  /** Footer, fsync, close, rename into place. Returns the file size; `sha256` is its checksum from then on. */
  commit(): number {
    return ArrowFileWriter.commitAll([this])[0];
  }

  /**
   * commit() for several files at once: every footer is written and every fsync asked for before the first is
   * waited on, so the writer threads sync their files side by side. Returns each file's size.
   */
  static commitAll(writers: ArrowFileWriter[]): number[] {
    for (const w of writers) {
      w.writer.finish(); // writes the footer (schema + batch index) and closes the sink
      w.sink.file.end();
      w.open = false;
    }
    return writers.map((w) => {
      const r = w.sink.file.result();
      if ('error' in r) {
        const e = Object.assign(new Error(r.error.message), { code: r.error.code, syscall: r.error.syscall });
        throw fsErrorToDejavu(e, w.path) ?? new DejavuError(`cannot write: ${r.error.message}`, w.path);
      }
      renameSync(w.tempPath, w.path);
      w.sha256 = r.sha256;
      return w.sink.file.bytes;
    });
  }

  /** Drops the temporary file (on error or interrupt). Safe to call twice. */
  abort(): void {
    if (this.open) {
      this.sink.file.drop();
      this.open = false;
    }
    rmSync(this.tempPath, { force: true });
  }
}
