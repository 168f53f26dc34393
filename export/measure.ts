/**
 * Where export's calibration perplexities are measured (export/budget.ts): the CPU runtime (runtime/sparse/ppl.ts:
 * dense prefill, the sparse decode step in worker threads) or the CUDA engine (runtime/cuda/calib-ppl.ts: dense by
 * the prefill, predicted through the decode graphs `bench --device cuda` times). Both measure the same thing: the
 * staging bundle's predictors with per-layer k set per measurement, under the KV policy and MLP selection given.
 */
import { availableParallelism, cpus } from 'node:os';
import type { OptCheckpoint } from '../checkpoints/types.js';
import type { KvPolicy } from '../runtime/sparse/model.js';
import { densePerplexity, parallelSparsePerplexity } from '../runtime/sparse/ppl.js';
import type { Bundle } from './bundle.js';
import type { LayerK } from './layer-k.js';

/** What measured, as the manifest's quality record states it (`quality.device`). */
export interface DeviceRecord {
  type: 'cpu' | 'cuda';
  /** The CPU model or the GPU's name. */
  name: string;
  /** cpu: worker threads of the sparse measurements. */
  threads?: number;
  /** cuda: the decode kernels that ran (streamed or portable). */
  path?: 'streamed' | 'portable';
  /** cuda, grouped selection: the GPU's neuron groups per layer (1 where the MLP is dense or exact). */
  mlp_groups_per_layer?: number[];
}

export interface PplMeasurer {
  readonly device: DeviceRecord;
  /** Neuron groups of the grouped MLP selection measured (undefined: exact). */
  readonly mlpGroups: number | undefined;
  /** Dense perplexity of `docs`. */
  dense(docs: Int32Array[]): Promise<number>;
  /** Predicted perplexity of `docs` with per-layer k `layerK` (undefined: the bundle's own k). */
  predicted(docs: Int32Array[], layerK: LayerK | undefined, quiet: boolean): Promise<number>;
  /** Frees what the measurer holds (the GPU engine). */
  close(): void;
}

/** The CPU runtime's measurer: the eval machinery of `dejavu eval ppl --bundle`. */
export function cpuMeasurer(
  ckpt: OptCheckpoint,
  bundle: Bundle,
  o: { kvPolicy?: KvPolicy; mlpGroups?: number; threads?: number },
): PplMeasurer {
  const threads = o.threads ?? availableParallelism();
  return {
    device: { type: 'cpu', name: cpus()[0]?.model?.trim() || 'cpu', threads },
    mlpGroups: o.mlpGroups,
    dense: async (docs) => (await densePerplexity(ckpt, docs, { quiet: true })).ppl,
    predicted: async (docs, layerK, quiet) =>
      (await parallelSparsePerplexity(ckpt, bundle, docs, 'predicted', { kvPolicy: o.kvPolicy, mlpGroups: o.mlpGroups, threads, layerK, quiet })).ppl,
    close: () => {},
  };
}
