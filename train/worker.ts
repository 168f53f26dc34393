/**
 * One training worker thread (see run.ts): its own tfjs + backend, trains the jobs the main thread hands it one at
 * a time, and posts each result back.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { DejavuError, fsErrorToDejavu } from '../common/errors.js';
import { backendLine, selectBackend, type BackendName } from './backend.js';
import type { Job } from './jobs.js';
import { trainJob, type ResolvedOptions } from './trainer.js';
import { openShardSet } from './shard-reader.js';

/** An error for the main thread: bad input and filesystem errors (a full disk, ...) stay one-line DejavuErrors. */
function asMessage(e: unknown): { message: string; dejavu: boolean } {
  const d = e instanceof DejavuError ? e : fsErrorToDejavu(e);
  return d ? { message: d.message, dejavu: true } : { message: (e as Error).message, dejavu: false };
}

const { options, backend, skipWebGpu } = workerData as { options: ResolvedOptions; backend: BackendName; skipWebGpu?: string };
const port = parentPort!;
try {
  const b = await selectBackend(backend, { skipWebGpu });
  const set = await openShardSet(options.shards, { verify: false }); // the main thread checked the checksums
  port.on('message', async (m: { job?: Job; exit?: boolean }) => {
    if (m.exit) {
      port.close();
      return;
    }
    try {
      const result = await trainJob(b.tf, set, m.job!, options);
      port.postMessage({ job: { layer: m.job!.layer, target: m.job!.target }, result });
    } catch (e) {
      port.postMessage({ error: asMessage(e) });
    }
  });
  port.postMessage({ ready: b.description, name: b.name, line: backendLine(b) });
} catch (e) {
  port.postMessage({ error: asMessage(e) });
}
