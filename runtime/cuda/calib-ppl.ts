/**
 * export's calibration measurements on the GPU (export/measure.ts PplMeasurer): one engine holds the model and the
 * staging bundle's predictors for the whole search; each measurement sets k per layer on the engine, rebuilds the
 * graphs when k changed, and scores the documents as `dejavu eval ppl --device cuda` does (eval-ppl.ts): dense by
 * the prefill, predicted by teacher-forced decode through the sparse graph `bench --device cuda` times.
 */
import { DejavuError } from '../../common/errors.js';
import { log } from '../../common/progress.js';
import type { LayerK } from '../../export/layer-k.js';
import type { PplMeasurer } from '../../export/measure.js';
import { decodePerplexity, prefillPerplexity } from './eval-ppl.js';
import type { CudaLib, CudaOptions } from './lib.js';
import { loadModelToGpu } from './load.js';

export interface CudaMeasurerOptions {
  /** The model folder (streamed onto the GPU) and the staging bundle bound to it. */
  model: string;
  bundle: string;
  /** The longest document any measurement scores (tokens, BOS included). */
  maxT: number;
  kvPolicy: CudaOptions['kvPolicy'];
  selection: CudaOptions['selection'];
  path?: CudaOptions['path'];
  /** Grouped: the G the caller expects (--mlp-groups); refused when the GPU's differs. */
  mlpGroups?: number;
}

/** Per layer (kH, kM) of a measurement: layerK's (null: dense), or the bundle's own k when undefined. */
export function layerKOnEngine(plan: { kH: number[]; kM: number[] }, dims: { heads: number; ffn: number }, k: LayerK | undefined): { kH: number[]; kM: number[] } {
  if (!k) return { kH: [...plan.kH], kM: [...plan.kM] };
  return { kH: plan.kH.map((_, l) => k.attn[l] ?? dims.heads), kM: plan.kM.map((_, l) => k.mlp[l] ?? dims.ffn) };
}

export async function cudaMeasurer(lib: CudaLib, o: CudaMeasurerOptions): Promise<PplMeasurer> {
  const info = lib.deviceInfo();
  const batchTokens = Math.max(o.maxT, 4096);
  const { engine, dims, model } = await loadModelToGpu(lib, o.model, {
    maxT: o.maxT,
    prefillTokens: batchTokens,
    options: { path: o.path ?? 'auto', selection: o.selection, kvPolicy: o.kvPolicy },
  });
  try {
    const { loadBundle } = await import('../../export/bundle.js');
    const plan = engine.applyBundle(loadBundle(o.bundle, model));
    engine.build();
    let built = `${plan.kH}|${plan.kM}`;
    const groups = plan.kM.map((_, l) => (plan.rankMlp[l] > 0 ? engine.mlpGroups(l) : 1));
    let mlpGroups: number | undefined;
    if (o.selection === 'grouped') {
      const gs = [...new Set(groups.filter((_, l) => plan.rankMlp[l] > 0))];
      if (gs.length === 0) throw new DejavuError('grouped selection measured, but the bundle has no MLP predictor', '--mlp-select');
      mlpGroups = gs[0];
      if (o.mlpGroups !== undefined && gs.some((g) => g !== o.mlpGroups))
        throw new DejavuError(`the GPU's grouped selection uses G = ${gs.join(', ')} on this model; drop --mlp-groups or give ${gs[0]}`, '--mlp-groups');
    }
    const path = engine.path();
    log(`calibration on ${info.name} (${path} path, KV ${o.kvPolicy}, MLP ${o.selection}${mlpGroups ? `, G = ${mlpGroups}` : ''})`);
    return {
      device: { type: 'cuda', name: info.name, path, ...(o.selection === 'grouped' ? { mlp_groups_per_layer: groups } : {}) },
      mlpGroups,
      dense: async (docs) => prefillPerplexity(engine, docs, batchTokens, true).ppl,
      predicted: async (docs, layerK, quiet) => {
        const k = layerKOnEngine(plan, dims, layerK);
        const key = `${k.kH}|${k.kM}`;
        if (key !== built) {
          k.kH.forEach((kH, l) => engine.setK(l, kH, k.kM[l]));
          engine.build();
          built = key;
        }
        return decodePerplexity(engine, docs, 'sparse', quiet).ppl;
      },
      close: () => engine.destroy(),
    };
  } catch (e) {
    engine.destroy();
    throw e;
  }
}
