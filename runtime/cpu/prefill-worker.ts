/**
 * A worker thread of PrefillPool: loads the checkpoint itself (nothing large crosses the thread boundary), runs the
 * dense prefill on its own tfjs-wasm instance (one core), and answers 'score' (document NLL) and 'prefill' (timing).
 */
import { parentPort, workerData } from 'node:worker_threads';
import { loadOptCheckpoint } from '../../checkpoints/opt-checkpoint.js';
import { DejavuError } from '../../common/errors.js';
import { OptModel, type CpuBackend, type LogitsMode } from './model.js';
import { sequenceNll } from './perplexity.js';

export type WorkerJob = { op: 'score'; ids: Int32Array } | { op: 'prefill'; ids: Int32Array; logits: LogitsMode };
export type WorkerRequest = WorkerJob & { id: number };

export type WorkerReply =
  | { type: 'ready'; backend: string }
  | { type: 'fatal'; message: string; dejavu: boolean }
  | { type: 'result'; id: number; value: unknown }
  | { type: 'error'; id: number; message: string; dejavu: boolean };

const port = parentPort!;
const { modelDir, backend } = workerData as { modelDir: string; backend: CpuBackend };

const describe = (e: unknown) => ({ message: e instanceof Error ? e.message : String(e), dejavu: e instanceof DejavuError });

try {
  const ckpt = await loadOptCheckpoint(modelDir, { quiet: true });
  const model = await OptModel.load(ckpt, { backend });
  const V = model.config.vocabSize;
  port.on('message', (req: WorkerRequest) => {
    try {
      if (req.op === 'score') {
        port.postMessage({ type: 'result', id: req.id, value: sequenceNll(model.prefill(req.ids), req.ids, V) });
      } else {
        const t0 = performance.now();
        model.prefill(req.ids, { logits: req.logits });
        port.postMessage({ type: 'result', id: req.id, value: { ms: performance.now() - t0 } });
      }
    } catch (e) {
      port.postMessage({ type: 'error', id: req.id, ...describe(e) });
    }
  });
  port.postMessage({ type: 'ready', backend: model.backend } satisfies WorkerReply);
} catch (e) {
  port.postMessage({ type: 'fatal', ...describe(e) } satisfies WorkerReply);
}
