/**
 * SHA-256 of many files at once. One core hashes ~1.4 GB/s, so an OPT-1.3B collection's 37 GB of shards would take
 * ~25 s on one thread; here the files are spread over worker threads (when there is enough to hash for their
 * start-up to pay), each streaming its files through its own hash.
 */
import { createHash } from 'node:crypto';
import { createReadStream, statSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';

/** Below this many bytes in all, one thread hashes (a worker costs tens of milliseconds to start). */
export const PARALLEL_HASH_MIN_BYTES = 256 * 2 ** 20;

/** Hex SHA-256 of one file, streamed in 4 MiB reads. */
export async function sha256File(path: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path, { highWaterMark: 4 * 2 ** 20 })) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

// The worker: hashes each path it is sent and answers { i, hex } or { i, error }.
const WORKER = `
const { parentPort } = require('node:worker_threads');
const { createHash } = require('node:crypto');
const { createReadStream } = require('node:fs');
parentPort.on('message', async ({ i, path }) => {
  try {
    const hash = createHash('sha256');
    for await (const chunk of createReadStream(path, { highWaterMark: 4 * 2 ** 20 })) hash.update(chunk);
    parentPort.postMessage({ i, hex: hash.digest('hex') });
  } catch (e) {
    parentPort.postMessage({ i, error: { message: e.message, code: e.code, path } });
  }
});
`;

/**
 * Hex SHA-256 of each file, in the order given. `threads` bounds the workers (default: the cores, at most 8; the disk
 * or the page cache is the limit beyond that); `minBytes` is the total below which one thread hashes. A read error
 * rejects with the error of the first failing file.
 */
export async function sha256Files(paths: string[], opts: { threads?: number; minBytes?: number } = {}): Promise<string[]> {
  const bytes = paths.reduce((a, p) => a + statSync(p).size, 0);
  const threads = Math.min(opts.threads ?? Math.min(8, availableParallelism()), paths.length);
  if (threads <= 1 || bytes < (opts.minBytes ?? PARALLEL_HASH_MIN_BYTES)) {
    const out: string[] = [];
    for (const p of paths) out.push(await sha256File(p));
    return out;
  }
  const out: string[] = new Array(paths.length);
  // Largest first, so one big file does not finish alone at the end.
  const queue = paths.map((p, i) => ({ i, path: p, size: statSync(p).size })).sort((a, b) => b.size - a.size);
  const errors: { i: number; error: NodeJS.ErrnoException }[] = [];
  const run = () =>
    new Promise<void>((resolve, reject) => {
      const w = new Worker(WORKER, { eval: true });
      const next = () => {
        const job = queue.shift();
        if (job) w.postMessage({ i: job.i, path: job.path });
        else void w.terminate().then(() => resolve());
      };
      w.on('message', (m: { i: number; hex?: string; error?: { message: string; code?: string; path: string } }) => {
        if (m.error) errors.push({ i: m.i, error: Object.assign(new Error(m.error.message), { code: m.error.code, path: m.error.path }) });
        else out[m.i] = m.hex!;
        next();
      });
      w.on('error', reject);
      next();
    });
  await Promise.all(Array.from({ length: threads }, run));
  if (errors.length > 0) throw errors.sort((a, b) => a.i - b.i)[0].error;
  return out;
}
