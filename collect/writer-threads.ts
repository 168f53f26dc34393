/**
 * Shard bytes are written and SHA-256-hashed on writer threads, off the thread that builds the batches (and, in
 * `collect --device cuda`, waits on the GPU). Measured on the H100 machine with the OPT-6.7B shape (592 KB of shards
 * a token): one core hashes 1.44 GB/s and the disk took 1.45 GB/s with fsync, so hashing and writing in turn on one
 * thread reached half the disk's rate. Each file belongs to one thread (its bytes stay in order); files are spread
 * over the threads round robin, and each thread holds at most IN_FLIGHT_CAP bytes not yet written, so a slow disk
 * slows the producer instead of filling memory.
 *
 * The calling thread waits synchronously (Atomics.wait + receiveMessageOnPort), as the Arrow writer's sink must: a
 * file's result() returns once its bytes are written, fsync'd and closed.
 */
import { availableParallelism } from 'node:os';
import { MessageChannel, receiveMessageOnPort, Worker, type MessagePort } from 'node:worker_threads';

/** Bytes copied into one message to a writer thread (small Arrow pieces are gathered up to this). */
const STAGE_BYTES = 4 << 20;
/** Bytes a writer thread may hold, posted but not yet written. */
const IN_FLIGHT_CAP = 128 << 20;
const MAX_THREADS = 4;

/** A system error's parts, as they cross the thread boundary (an Error's code and syscall do not). */
export type WriteError = { message: string; code?: string; syscall?: string };
type Result = { id: number; sha256?: string; error?: WriteError };

// Node built-ins only, evaluated as a worker: it runs the same from the TypeScript sources (tests) and from dist.
const WORKER_SOURCE = `
const { workerData, parentPort } = require('node:worker_threads');
const { writeSync, fsyncSync, closeSync } = require('node:fs');
const { createHash } = require('node:crypto');
const { port, inflight, signal } = workerData;
const files = new Map();
const fail = (e) => ({ message: e.message, code: e.code, syscall: e.syscall });
parentPort.on('message', (m) => {
  let f = files.get(m.id);
  if (!f) files.set(m.id, (f = { hash: createHash('sha256'), error: null }));
  if (m.op === 'data') {
    const buf = new Uint8Array(m.buf, 0, m.n);
    if (!f.error) {
      try {
        let off = 0;
        while (off < m.n) off += writeSync(m.fd, buf, off, m.n - off);
        f.hash.update(buf);
      } catch (e) { f.error = fail(e); }
    }
    Atomics.sub(inflight, 0, m.n);
    Atomics.notify(inflight, 0);
    return;
  }
  files.delete(m.id);
  if (m.op === 'drop') {
    try { closeSync(m.fd); } catch {}
    return;
  }
  try {
    if (!f.error) fsyncSync(m.fd);
  } catch (e) { f.error = fail(e); }
  try { closeSync(m.fd); } catch (e) { f.error = f.error || fail(e); }
  port.postMessage(f.error ? { id: m.id, error: f.error } : { id: m.id, sha256: f.hash.digest('hex') });
  Atomics.add(signal, 0, 1);
  Atomics.notify(signal, 0);
});
`;

/** One writer thread, with its own channel back and its own in-flight count. */
class WriterThread {
  private readonly worker: Worker;
  private readonly inflight = new Int32Array(new SharedArrayBuffer(4));
  private readonly signal = new Int32Array(new SharedArrayBuffer(4));
  private readonly port: MessagePort;
  private readonly results = new Map<number, Result>();
  private nextId = 0;

  constructor() {
    const { port1, port2 } = new MessageChannel();
    this.port = port1;
    this.port.unref();
    this.worker = new Worker(WORKER_SOURCE, {
      eval: true,
      workerData: { port: port2, inflight: this.inflight, signal: this.signal },
      transferList: [port2],
      trackUnmanagedFds: false, // the fds are the caller's: opened there, closed here
    });
    this.worker.unref();
  }

  open(): number {
    return this.nextId++;
  }

  /** Hands `buf` (transferred) over; waits first while the thread already holds IN_FLIGHT_CAP bytes. */
  post(id: number, fd: number, buf: ArrayBuffer, n: number): void {
    for (;;) {
      const cur = Atomics.load(this.inflight, 0);
      if (cur === 0 || cur + n <= IN_FLIGHT_CAP) break;
      Atomics.wait(this.inflight, 0, cur, 1000);
    }
    Atomics.add(this.inflight, 0, n);
    this.worker.postMessage({ op: 'data', id, fd, buf, n }, [buf]);
  }

  request(op: 'end' | 'drop', id: number, fd: number): void {
    this.worker.postMessage({ op, id, fd });
  }

  /** Blocks until the thread has answered `id`'s end request. */
  wait(id: number): Result {
    for (;;) {
      const seen = Atomics.load(this.signal, 0);
      for (let m = receiveMessageOnPort(this.port); m; m = receiveMessageOnPort(this.port)) {
        const r = m.message as Result;
        this.results.set(r.id, r);
      }
      const r = this.results.get(id);
      if (r) {
        this.results.delete(id);
        return r;
      }
      Atomics.wait(this.signal, 0, seen, 1000);
    }
  }
}

let threads: WriterThread[] | undefined;
let turn = 0;

/** Writer threads: min(4, cores - 1), at least one; started on first use, never keeping the process alive. */
function nextThread(): WriterThread {
  threads ??= Array.from({ length: Math.max(1, Math.min(MAX_THREADS, availableParallelism() - 1)) }, () => new WriterThread());
  return threads[turn++ % threads.length];
}

/**
 * One file's bytes, written in order by one writer thread to an fd the caller opened. write() copies (the Arrow
 * writer reuses its buffers); end() asks for fsync + close and result() waits for them, giving the SHA-256 of every
 * byte written or the first write error; drop() gives the fd back to the thread to close, without waiting.
 */
export class ThreadedFile {
  private readonly thread = nextThread();
  private readonly id = this.thread.open();
  private stage = new ArrayBuffer(STAGE_BYTES);
  private staged = 0;
  private done = false;
  bytes = 0;

  constructor(private readonly fd: number) {}

  write(buf: Uint8Array): void {
    if (this.done) throw new Error('write after end');
    const n = buf.byteLength;
    this.bytes += n;
    if (this.staged + n <= STAGE_BYTES) {
      new Uint8Array(this.stage, this.staged, n).set(buf);
      this.staged += n;
      if (this.staged === STAGE_BYTES) this.flush();
      return;
    }
    this.flush();
    if (n <= STAGE_BYTES) {
      new Uint8Array(this.stage, 0, n).set(buf);
      this.staged = n;
    } else {
      const copy = new ArrayBuffer(n);
      new Uint8Array(copy).set(buf);
      this.thread.post(this.id, this.fd, copy, n);
    }
  }

  private flush(): void {
    if (this.staged === 0) return;
    this.thread.post(this.id, this.fd, this.stage, this.staged);
    this.stage = new ArrayBuffer(STAGE_BYTES);
    this.staged = 0;
  }

  /** Asks for fsync + close after the bytes written so far; result() waits for it (several files end at once). */
  end(): void {
    if (this.done) throw new Error('end twice');
    this.flush();
    this.done = true;
    this.thread.request('end', this.id, this.fd);
  }

  /** After end(): the file's SHA-256 once its bytes are written, fsync'd and the fd closed, or the first error. */
  result(): { sha256: string } | { error: WriteError } {
    const r = this.thread.wait(this.id);
    return r.error !== undefined ? { error: r.error } : { sha256: r.sha256! };
  }

  /** Drops what is not yet written and has the thread close the fd (the caller removes the file). */
  drop(): void {
    if (this.done) return;
    this.done = true;
    this.staged = 0;
    this.thread.request('drop', this.id, this.fd);
  }
}

/** Writer threads started (tests check the bound). */
export function writerThreads(): number {
  return threads?.length ?? 0;
}
