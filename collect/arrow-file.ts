/**
 * An Arrow IPC *file* written batch by batch straight to disk under a temporary name, then fsynced and renamed into
 * place. apache-arrow's RecordBatchFileWriter normally queues every byte in memory until it is read; handing it a
 * sink that writes synchronously to a file descriptor keeps memory at one batch whatever the file size.
 */
import { createHash } from 'node:crypto';
import { closeSync, fsyncSync, openSync, renameSync, rmSync, writeSync } from 'node:fs';
import { AsyncByteQueue, RecordBatchFileWriter, type RecordBatch, type Schema } from 'apache-arrow';
import { tempPathFor } from '../common/atomic.js';
import { DejavuError } from '../common/errors.js';

/** A byte sink the Arrow writer accepts (it must be an AsyncByteQueue) that writes through to a file descriptor. */
class FdSink extends AsyncByteQueue {
  bytes = 0;
  /** SHA-256 of the bytes as written (the manifest's per-shard checksum), computed on the way: no second read. */
  readonly hash = createHash('sha256');
  constructor(
    private readonly fd: number,
    private readonly path: string,
  ) {
    super();
  }
  override write(value: unknown): void {
    const v = value as ArrayBufferView;
    const buf = new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
    let off = 0;
    try {
      while (off < buf.byteLength) off += writeSync(this.fd, buf, off, buf.byteLength - off);
    } catch (e) {
      throw new DejavuError(`cannot write: ${(e as Error).message}`, this.path);
    }
    this.hash.update(buf);
    this.bytes += buf.byteLength;
  }
}

export class ArrowFileWriter {
  private readonly writer: RecordBatchFileWriter;
  private readonly sink: FdSink;
  private fd: number | undefined;
  readonly tempPath: string;
  /** Hex SHA-256 of the whole file, set by commit(). */
  sha256 = '';

  private constructor(
    readonly path: string,
    readonly schema: Schema,
  ) {
    this.tempPath = tempPathFor(path);
    try {
      this.fd = openSync(this.tempPath, 'w');
    } catch (e) {
      throw new DejavuError(`cannot create a shard file: ${(e as Error).message}`, this.tempPath);
    }
    this.sink = new FdSink(this.fd, this.tempPath);
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
    return this.sink.bytes;
  }

  /** Footer, fsync, close, rename into place. Returns the file size; `sha256` is its checksum from then on. */
  commit(): number {
    this.writer.finish(); // writes the footer (schema + batch index) and closes the sink
    const fd = this.fd!;
    this.fd = undefined;
    try {
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(this.tempPath, this.path);
    this.sha256 = this.sink.hash.digest('hex');
    return this.sink.bytes;
  }

  /** Drops the temporary file (on error or interrupt). Safe to call twice. */
  abort(): void {
    if (this.fd !== undefined) {
      try {
        closeSync(this.fd);
      } catch {
        /* already closed */
      }
      this.fd = undefined;
    }
    rmSync(this.tempPath, { force: true });
  }
}
