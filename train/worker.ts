/**
 * One training worker thread (see run.ts): its own tfjs + backend, trains the jobs the main thread hands it one at
 * a time, and posts each result back.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { DejavuError } from '../common/errors.js';
import { selectBackend, type BackendName } from './backend.js';
import type { Job } from './jobs.js';
import { trainJob, type TrainOptions } from './trainer.js';
import { openShardSet } from './shard-reader.js';

const { options, backend } = workerData as { options: TrainOptions; backend: BackendName };
const port = parentPort!;
try {
  const b = await selectBackend(backend);
  const set = await openShardSet(options.shards);
  port.on('message', async (m: { job?: Job; exit?: boolean }) => {
    if (m.exit) {
      port.close();
      return;
    }
    try {
      const result = await trainJob(b.tf, set, m.job!, options);
      port.postMessage({ job: { layer: m.job!.layer, target: m.job!.target }, result });
    } catch (e) {
      port.postMessage({ error: { message: (e as Error).message, dejavu: e instanceof DejavuError } });
    }
  });
  port.postMessage({ ready: b.description });
} catch (e) {
  port.postMessage({ error: { message: (e as Error).message, dejavu: e instanceof DejavuError } });
}
