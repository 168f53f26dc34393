/**
 * Worker thread for sparse perplexity: loads the model and bundle itself, scores the documents it is given in one
 * mode, reports progress (tokens) and the NLL sum with per-layer density averages. See ppl.ts.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { loadOptCheckpoint } from '../../checkpoints/opt-checkpoint.js';
import { loadBundle } from '../../export/bundle.js';
import type { LayerK } from '../../export/layer-k.js';
import type { KvPolicy, SparseMode } from './model.js';
import { sparseModePerplexity } from './ppl.js';

export interface PplWorkerData {
  modelDir: string;
  bundleDir: string;
  mode: SparseMode;
  docs: Int32Array[];
  headsFrac?: number;
  mlpK?: number;
  headsK?: number;
  mlpGroups?: number;
  kvPolicy?: KvPolicy;
  layerK?: LayerK;
}

const data = workerData as PplWorkerData;
try {
  const ckpt = await loadOptCheckpoint(data.modelDir, { quiet: true });
  const bundle = loadBundle(data.bundleDir, ckpt);
  const r = sparseModePerplexity(ckpt, bundle, data.docs, data.mode, {
    headsFrac: data.headsFrac,
    mlpK: data.mlpK,
    headsK: data.headsK,
    mlpGroups: data.mlpGroups,
    kvPolicy: data.kvPolicy,
    layerK: data.layerK,
    quiet: true,
    onTokens: (n) => parentPort!.postMessage({ progress: n }),
  });
  parentPort!.postMessage({ result: r });
} catch (e) {
  parentPort!.postMessage({ error: (e as Error).message, dejavu: (e as Error).name === 'DejavuError' });
}
