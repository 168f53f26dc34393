/**
 * A forward worker of collect/forward.ts: loads the model folder itself (nothing large crosses the thread boundary),
 * and for each document runs the runtime's prefill with collect's hooks, answering with the compact rows (buffers
 * transferred, not copied).
 */
import { parentPort, workerData } from 'node:worker_threads';
import { loadOptCheckpoint } from '../checkpoints/opt-checkpoint.js';
import { DejavuError } from '../common/errors.js';
import { OptModel } from '../runtime/cpu/model.js';
import { forwardRows, transferList } from './doc-rows.js';
import type { WorkerData, WorkerMessage, WorkerRequest } from './forward.js';

const port = parentPort!;
const { modelDir, layers, dims } = workerData as WorkerData;
const fail = (e: unknown) => ({ message: e instanceof Error ? e.message : String(e), dejavu: e instanceof DejavuError });

try {
  const ckpt = await loadOptCheckpoint(modelDir, { quiet: true });
  const model = await OptModel.load(ckpt);
  port.on('message', (req: WorkerRequest) => {
    try {
      const rows = forwardRows(model, req.ids, layers, dims);
      port.postMessage({ type: 'rows', id: req.id, rows } satisfies WorkerMessage, transferList(rows));
    } catch (e) {
      port.postMessage({ type: 'error', id: req.id, ...fail(e) } satisfies WorkerMessage);
    }
  });
  port.postMessage({ type: 'ready', fingerprint: ckpt.fingerprint, backend: model.backend } satisfies WorkerMessage);
} catch (e) {
  port.postMessage({ type: 'fatal', ...fail(e) } satisfies WorkerMessage);
}
