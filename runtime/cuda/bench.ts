/**
 * `dejavu bench --device cuda`: per-token decode latency on the GPU, dense vs sparse, against the bandwidth floor
 * measured in the same run (bytes a step must move / device-to-device copy bandwidth).
 *
 * Protocol: prompt tokens are decoded by the dense graph (prefill, which also warms up), then `gen` tokens are
 * generated greedily by each mode from the same position, each timed with CUDA events over the whole run of graph
 * replays; 3 repetitions, median reported. Modes: dense; sparse (predictors + top-k + gathered kernels);
 * fixed (the same sparse kernels on the last predicted selections, predictors left out: the predictor share is
 * 1 - fixed/sparse); predictors alone (their own time, for reference). The sparse mode is timed under both KV
 * policies: the chosen one (`kvPolicy`, default 'all': the headline `sparse`) and the other, side by side in
 * `kv_policies`. `sweep`: dense once, then the sparse mode at every point of heads x neurons (bench-format.ts
 * SWEEP_*) under both policies, k set per layer and the graphs rebuilt per point on the same engine. Engine
 * behaviour comes from the options only (lib.ts CudaOptions), never from the environment.
 */
import { DejavuError } from '../../common/errors.js';
import { MLP_INPUTS, mlpInputSource, type MlpInput } from '../../common/mlp-input.js';
import { CudaEngine, type SparsityPlan } from './engine.js';
import { avgStepBytes, shapeDims, weightBytes, type Dims, type StepSparsity } from './floor.js';
import { CUDA_PATHS, KV_POLICIES, MLP_SELECTIONS, loadCudaLib, type CudaLib, type CudaOptions, type Mode } from './lib.js';
import { QUALITY_COST, SWEEP_HEADS, SWEEP_KV_POLICIES, SWEEP_NEURONS, otherKvPolicy, type SweepPoint } from './bench-format.js';

export interface CudaBenchOptions {
  shape?: string;
  model?: string;
  bundle?: string;
  density?: { mlp: number; heads: number };
  prompt: number;
  gen: number;
  json: boolean;
  /** Predictor rank for random predictors (shapes / model without bundle). */
  rank?: number;
  /** Where random MLP predictors read (train's --mlp-input names; default att_in). */
  mlpInput?: MlpInput;
  /** How MLP neurons are picked: exact top-k (default) or the fused predictors' grouped top-k (docs/cuda.md v24). */
  mlpSelect?: CudaOptions['selection'];
  /** Which kernels: auto (default: streamed where it runs), streamed, or portable. */
  path?: CudaOptions['path'];
  /** KV policy of the headline sparse figure: 'all' (default) or 'selected'; the other one is timed beside it. */
  kvPolicy?: CudaOptions['kvPolicy'];
  /** ms/token over SWEEP_HEADS x SWEEP_NEURONS x both KV policies instead of one density (no --density). */
  sweep?: boolean;
  seed?: number;
  reps?: number;
  /** With --model: C4 files whose perplexity (dense by the prefill, predicted by the timed sparse graph) goes in the JSON. */
  data?: string[];
  /** Documents of --data scored (the first N; default 20). */
  evalDocs?: number;
  /** Tokens per scored document, BOS included (default 512). */
  maxLen?: number;
  /** Also time the prefill of one sequence of this many tokens against the card's fp16 GEMM rate. */
  prefillLen?: number;
  /** The loaded library (default: loadCudaLib()). */
  lib?: CudaLib;
}

const log = (json: boolean, msg: string) => {
  if (!json) process.stderr.write(`${msg}\n`);
};

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

const r3 = (x: number) => Math.round(x * 1000) / 1000;

export async function runCudaBench(o: CudaBenchOptions): Promise<Record<string, unknown>> {
  const json = o.json;
  if (!o.shape && !o.model) throw new DejavuError('give --shape opt-13b (random weights) or --model DIR', '--shape');
  if (o.bundle && !o.model) throw new DejavuError('--bundle needs --model (a bundle is bound to a model)', '--bundle');
  if (!(Number.isInteger(o.prompt) && o.prompt >= 1)) throw new DejavuError(`${o.prompt}: must be an integer >= 1`, '--prompt');
  if (!(Number.isInteger(o.gen) && o.gen >= 1)) throw new DejavuError(`${o.gen}: must be an integer >= 1`, '--gen');
  const density = o.density ?? { mlp: 0.05, heads: 0.2 };
  for (const [k, v] of Object.entries(density))
    if (!(v > 0 && v <= 1)) throw new DejavuError(`${k}=${v}: density must be in (0, 1]`, '--density');
  const rank = o.rank ?? 128;
  if (!(Number.isInteger(rank) && rank >= 8 && rank % 8 === 0)) throw new DejavuError(`${rank}: the predictor rank must be a multiple of 8`, '--rank');
  if (o.rank !== undefined && o.bundle) throw new DejavuError('a bundle records its predictors\' rank; --rank is for random predictors', '--rank');
  const mlpInput = o.mlpInput ?? 'att_in';
  if (!MLP_INPUTS.includes(mlpInput)) throw new DejavuError(`'${mlpInput}': expected one of ${MLP_INPUTS.join(', ')}`, '--mlp-input');
  if (o.mlpInput && o.bundle) throw new DejavuError('a bundle records where its predictors read; --mlp-input is for random predictors', '--mlp-input');
  const reps = o.reps ?? 3;
  const selection = o.mlpSelect ?? 'exact';
  if (!MLP_SELECTIONS.includes(selection)) throw new DejavuError(`'${selection}': expected exact or grouped`, '--mlp-select');
  const kvPolicy = o.kvPolicy ?? 'all';
  if (!KV_POLICIES.includes(kvPolicy)) throw new DejavuError(`'${kvPolicy}': expected all or selected`, '--kv-policy');
  if (o.sweep && o.density) throw new DejavuError('the sweep sets the densities itself (heads x neurons); leave --density out', '--density');
  if (o.sweep && o.kvPolicy) throw new DejavuError('the sweep times both KV policies at every point; leave --kv-policy out', '--kv-policy');
  const path = o.path ?? 'auto';
  if (!CUDA_PATHS.includes(path)) throw new DejavuError(`'${path}': expected one of ${CUDA_PATHS.join(', ')}`, '--path');
  if (path === 'portable' && selection === 'grouped')
    throw new DejavuError('the grouped top-k runs inside the streamed kernels; the portable path has the exact top-k only', '--mlp-select');
  // The grouped top-k lives in the fused predictors, which read att_in: random predictors elsewhere would silently
  // run the exact top-k under the grouped label.
  if (!o.bundle && selection === 'grouped' && mlpInputSource(mlpInput, 1).column !== 'att_in')
    throw new DejavuError(`grouped needs MLP predictors that read att_in; --mlp-input ${mlpInput} gets the exact top-k`, '--mlp-select');
  if (o.bundle && selection === 'grouped') {
    // Before any GPU work: a predictor the fused kernels cannot take would silently get the exact top-k.
    const { readManifest, groupedSelectionProblem } = await import('../../export/bundle.js');
    const why = groupedSelectionProblem(readManifest(o.bundle));
    if (why) throw new DejavuError(why, o.bundle);
  }
  const options: CudaOptions = { path, selection, kvPolicy };
  if (o.data && !o.model) throw new DejavuError('--data needs --model (its tokenizer and weights); shapes have random weights', '--data');
  if (o.data && o.sweep) throw new DejavuError('the sweep times many densities; give --data to a single-density bench', '--data');
  const evalDocs = o.evalDocs ?? 20;
  const maxLen = o.maxLen ?? 512;
  if (!(Number.isInteger(evalDocs) && evalDocs >= 1)) throw new DejavuError(`${evalDocs}: must be an integer >= 1`, '--eval-docs');
  if (!(Number.isInteger(maxLen) && maxLen >= 2)) throw new DejavuError(`${maxLen}: must be an integer >= 2`, '--max-len');
  if (o.prefillLen !== undefined && !(Number.isInteger(o.prefillLen) && o.prefillLen >= 1))
    throw new DejavuError(`${o.prefillLen}: must be an integer >= 1`, '--prefill-len');

  const lib = o.lib ?? (await loadCudaLib());
  const info = lib.deviceInfo();
  log(json, `device: ${info.name} (${info.sms} SMs, ${(info.memBytes / 2 ** 30).toFixed(1)} GiB)`);

  // ---- model: a checkpoint streamed to the GPU (load.ts), or random weights of a shape ----
  const t0 = performance.now();
  let dims: Dims;
  let eng: CudaEngine;
  let config: import('../../checkpoints/types.js').OptConfig | undefined;
  let model: import('../../export/bundle.js').LoadedModelIdentity | undefined;
  let load: import('./load.js').LoadStats | undefined;
  let docs: Int32Array[] | undefined;
  const prefillTokens = Math.max(o.prompt, o.prefillLen ?? 0, o.data ? Math.max(maxLen, 4096) : 0);
  if (o.model) {
    if (o.data) {
      const { createReadStats, loadTokenizer, readDocuments } = await import('../../datasets/index.js');
      const tok = await loadTokenizer(o.model);
      docs = [];
      for await (const d of readDocuments(o.data, { docs: evalDocs }, createReadStats())) docs.push(tok.encode(d.text, maxLen));
      if (!docs.some((d) => d.length >= 2)) throw new DejavuError('no predicted tokens in the selected documents', '--data');
    }
    const maxT = Math.max(o.prompt + o.gen + 8, docs ? maxLen : 0);
    const { loadModelToGpu } = await import('./load.js');
    const r = await loadModelToGpu(lib, o.model, { maxT, prefillTokens, options });
    ({ engine: eng, dims, config, model } = r);
    load = r.stats;
  } else {
    dims = shapeDims(o.shape!);
    const maxT = o.prompt + o.gen + 8;
    if (maxT > dims.maxPos) throw new DejavuError(`prompt + gen = ${o.prompt + o.gen} exceeds ${dims.maxPos} positions`, '--gen');
    const hd = dims.d / dims.heads;
    const need = weightBytes(dims) + 2 * 2 * dims.layers * dims.heads * maxT * hd + (1 << 30);
    if (need > info.memBytes * 0.97)
      throw new DejavuError(
        `${o.shape}: needs ${(need / 1e9).toFixed(1)} GB of GPU memory (fp16 weights ${(weightBytes(dims) / 1e9).toFixed(1)} GB), ` +
          `${info.name} has ${(info.memBytes / 1e9).toFixed(1)} GB`,
        '--shape',
      );
    eng = CudaEngine.create(lib, dims, maxT, 1e-5, options);
  }
  if (o.prompt + o.gen + 8 > dims.maxPos) {
    eng.destroy();
    throw new DejavuError(`prompt + gen = ${o.prompt + o.gen} exceeds ${dims.maxPos} positions`, '--gen');
  }
  try {
    if (!o.model) eng.fillRandom(o.seed ?? 1);
    // The sweep times its heads = 1 row first, with MLP predictors only (a predictor once set runs in every sparse
    // step); `installAttn` adds the attention predictors before the first row with fewer heads.
    const sweep0 = { heads: 1, mlp: SWEEP_NEURONS[0] };
    let bundle: import('../../export/bundle.js').Bundle | undefined;
    const fromBundle = (b: import('../../export/bundle.js').Bundle, dn?: { mlp: number; heads: number }) =>
      // --density (or a sweep point) with a bundle overrides its k (in the layers it has predictors for).
      eng.applyBundle(b, dn ? { headsK: Math.max(1, Math.round(dn.heads * dims.heads)), mlpK: Math.max(1, Math.round(dn.mlp * dims.ffn)) } : {});
    let plan: SparsityPlan;
    if (o.bundle) {
      const { loadBundle } = await import('../../export/bundle.js');
      bundle = loadBundle(o.bundle, model);
      plan = o.sweep ? fromBundle({ ...bundle, attn: bundle.attn.map(() => null) }, sweep0) : fromBundle(bundle, o.density);
    } else {
      plan = eng.randomPredictors(o.sweep ? sweep0 : density, rank, mlpInput);
    }
    const installAttn = (heads: number): SparsityPlan =>
      bundle ? fromBundle(bundle, { heads, mlp: sweep0.mlp }) : eng.randomPredictors({ heads, mlp: sweep0.mlp }, rank, mlpInput);
    eng.build();
    const enginePath = eng.path();
    log(json, `${enginePath} path, ${selection} MLP selection${o.sweep ? '' : `, KV policy ${kvPolicy}`}`);
    log(json, `loaded + graphs in ${((performance.now() - t0) / 1000).toFixed(1)} s`);

    // Prompt: seeded pseudo-random ids (the timing does not depend on the text).
    let s = (o.seed ?? 1) >>> 0;
    const ids = Array.from({ length: o.prompt }, () => {
      s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
      return s % dims.vocab;
    });
    // The prompt through the CUDA prefill into the KV cache, then one dense step (its last position): decode from there.
    eng.prefill([Int32Array.from(ids)], { fillKv: true });
    eng.run('dense', 1);

    const time = (mode: Mode, steps: number): number => {
      const xs: number[] = [];
      eng.run(mode, 2); // warm-up (graph upload, first replay)
      eng.setPos(o.prompt);
      for (let r = 0; r < reps; r++) {
        xs.push(eng.run(mode, steps) / steps);
        eng.setPos(o.prompt);
      }
      return median(xs);
    };
    const denseMs = time('dense', o.gen);
    // The copy bandwidth is measured after every timing (as the floors need it only for the result).
    let bw = NaN;
    const measureBandwidth = () => (bw = lib.copyBandwidth(1 << 30, 10) * 1e9); // bytes/s, read + write counted
    const dB = avgStepBytes(dims, o.prompt, o.gen);
    const floorOf = (p: SparsityPlan, kv: CudaOptions['kvPolicy']) => (avgStepBytes(dims, o.prompt, o.gen, { ...p, kvPolicy: kv }).total / bw) * 1e3;
    const avg = (a: number[]) => a.reduce((x, y) => x + y, 0) / a.length;
    const groups = () => Array.from({ length: dims.layers }, (_, l) => eng.mlpGroups(l));
    const common: Record<string, unknown> = {
      device: info.name,
      date: new Date().toISOString().slice(0, 10),
      shape: o.shape ?? null,
      model: o.model ?? null,
      bundle: o.bundle ?? null,
      weights: o.model ? 'checkpoint, streamed to the GPU in fp16' : 'random fp16 (GPU hash fill)',
      prompt_phase: 'CUDA prefill (cuBLAS) into the KV cache, then one dense decode step',
      ...(load ? { load: { ...load, seconds: r3(load.seconds) } } : {}),
      dims,
      prompt: o.prompt,
      gen: o.gen,
      batch: 1,
    };
    const kvRule = 'all: K/V of every head every step; selected: skipped heads compute no K/V, their slots masked when picked later';

    if (o.sweep) {
      const points: (SweepPoint & { plan: SparsityPlan })[] = [];
      let attn = false;
      // heads = 1 first (no attention predictor), then down; both policies at each point, the default first.
      for (const heads of [...SWEEP_HEADS].sort((a, b) => b - a)) {
        if (heads < 1 && !attn) {
          plan = installAttn(heads);
          attn = true;
        }
        for (const neurons of SWEEP_NEURONS) {
          const p = eng.setDensity(plan, { heads, mlp: neurons });
          for (const kv of SWEEP_KV_POLICIES) {
            eng.setOptions({ ...options, kvPolicy: kv });
            eng.build();
            const ms = time('sparse', o.gen);
            points.push({
              heads,
              neurons,
              kv_policy: kv,
              ms_per_token: r3(ms),
              plan: p,
              speedup: r3(denseMs / ms),
              kept: { heads: r3(avg(p.kH) / dims.heads), neurons: r3(avg(p.kM) / dims.ffn) },
              mlp_groups: groups(),
            });
            log(json, `heads ${heads}, neurons ${neurons}, KV ${kv}: ${ms.toFixed(3)} ms/token`);
          }
        }
      }
      measureBandwidth();
      const floorMs = (dB.total / bw) * 1e3;
      const sweep: SweepPoint[] = points.map(({ plan: p, ...pt }) => ({ ...pt, floor_ms: r3(floorOf(p, pt.kv_policy)) }));
      return {
        ...common,
        sparsity_source: plan.source,
        mlp_input: o.bundle ? null : mlpInput,
        mlp_selection: selection,
        mlp_selection_rule: mlpSelectionRule(selection),
        predictor_rank: { attn: Math.max(...plan.rankAttn), mlp: Math.max(...plan.rankMlp) },
        engine_path: enginePath,
        kv_policy_rule: kvRule,
        copy_bandwidth_gbps: r3(bw / 1e9),
        dense: { ms_per_token: r3(denseMs), tokens_per_s: r3(1000 / denseMs) },
        floor_ms: r3(floorMs),
        dense_vs_floor: r3(denseMs / floorMs),
        sweep_grid: { heads: [...SWEEP_HEADS], neurons: [...SWEEP_NEURONS], kv_policies: [...SWEEP_KV_POLICIES] },
        sweep,
        quality_cost: QUALITY_COST,
        seconds: r3((performance.now() - t0) / 1000),
      };
    }

    const sparseMs = time('sparse', o.gen);
    const fixedMs = time('fixed', o.gen); // selections left by the last sparse step
    const predMs = time('predictors', o.gen);
    const other = otherKvPolicy(kvPolicy);
    eng.setOptions({ ...options, kvPolicy: other });
    eng.build();
    const otherMs = time('sparse', o.gen);
    eng.setOptions(options);
    eng.build();
    const mlpGroups = groups();
    // Per-kernel-kind breakdown (eager launches with events: gaps included, so the total exceeds a graph replay).
    const prof = (mode: Mode) => {
      const steps = 8;
      eng.setPos(o.prompt);
      const p = eng.profile(mode, steps);
      eng.setPos(o.prompt);
      return Object.fromEntries(Object.entries(p).filter(([, v]) => v > 0).map(([k, v]) => [k, r3((v / steps) * 1000)]));
    };
    const profile = { dense_us_per_step: prof('dense'), sparse_us_per_step: prof('sparse') };
    const kernels = {
      dense: eng.kernelsPerStep('dense'),
      sparse: eng.kernelsPerStep('sparse'),
      predictors: eng.kernelsPerStep('predictors'),
    };

    // ---- floors ----
    measureBandwidth();
    const floorMs = (dB.total / bw) * 1e3;
    const sp: StepSparsity = { ...plan, kvPolicy };
    const sB = avgStepBytes(dims, o.prompt, o.gen, sp);
    const sparseFloorMs = (sB.total / bw) * 1e3;
    const policyFigures = (kv: CudaOptions['kvPolicy'], ms: number) => {
      const f = floorOf(plan, kv);
      return { ms_per_token: r3(ms), tokens_per_s: r3(1000 / ms), floor_ms: r3(f), vs_floor: r3(ms / f), vs_dense_floor: r3(ms / floorMs), speedup: r3(denseMs / ms) };
    };
    const result: Record<string, unknown> = {
      ...common,
      density: { mlp: r3(avg(plan.kM) / dims.ffn), heads: r3(avg(plan.kH) / dims.heads) },
      sparsity_source: plan.source,
      mlp_input: o.bundle ? null : mlpInput,
      mlp_selection: selection,
      mlp_selection_rule: mlpSelectionRule(selection),
      mlp_groups: mlpGroups,
      predictor_rank: { attn: Math.max(...plan.rankAttn), mlp: Math.max(...plan.rankMlp) },
      engine_path: enginePath,
      kv_policy: kvPolicy,
      kv_policy_rule: `sparse: KV policy ${kvPolicy}; kv_policies: both side by side (${kvRule})`,
      copy_bandwidth_gbps: r3(bw / 1e9),
      bytes_per_token: { dense: Math.round(dB.total), sparse: Math.round(sB.total), sparse_predictors: Math.round(sB.predictors) },
      dense: {
        ms_per_token: r3(denseMs),
        tokens_per_s: r3(1000 / denseMs),
        kernels_per_step: kernels.dense,
        achieved_gbps: r3(dB.total / (denseMs * 1e-3) / 1e9),
      },
      sparse: {
        ms_per_token: r3(sparseMs),
        tokens_per_s: r3(1000 / sparseMs),
        predictor_ms_share: r3(Math.max(0, (sparseMs - fixedMs) / sparseMs)),
        fixed_selection_ms_per_token: r3(fixedMs),
        predictors_alone_ms: r3(predMs),
        kernels_per_step: kernels.sparse,
        achieved_gbps: r3(sB.total / (sparseMs * 1e-3) / 1e9),
      },
      kv_policies: { [kvPolicy]: policyFigures(kvPolicy, sparseMs), [other]: policyFigures(other, otherMs) },
      profile,
      speedup: r3(denseMs / sparseMs),
      floor_ms: r3(floorMs),
      dense_vs_floor: r3(denseMs / floorMs),
      sparse_floor_ms: r3(sparseFloorMs),
      sparse_vs_sparse_floor: r3(sparseMs / sparseFloorMs),
      sparse_vs_dense_floor: r3(sparseMs / floorMs),
      quality_cost: QUALITY_COST,
    };
    if (bundle) {
      // The quality the bundle recorded at export (export --ppl-budget / --calib-data), beside this speed.
      const { describeRecordedQuality, recordedQualityJson } = await import('../../export/quality.js');
      const recorded = recordedQualityJson(bundle.manifest);
      if (recorded) {
        result.recorded_quality = recorded;
        log(json, describeRecordedQuality(bundle.manifest) ?? '');
      }
    }
    if (docs) {
      // The timed configuration's quality (options as timed): dense from the prefill, predicted from the sparse graph.
      const { decodePerplexity, prefillPerplexity } = await import('./eval-ppl.js');
      const dense = prefillPerplexity(eng, docs, Math.max(maxLen, 4096), json);
      const predicted = decodePerplexity(eng, docs, 'sparse', json);
      result.quality = {
        data: o.data,
        docs: docs.filter((d) => d.length >= 2).length,
        max_len: maxLen,
        kv_policy: kvPolicy,
        mlp_selection: selection,
        mlp_groups: mlpGroups,
        dense,
        predicted,
        predicted_vs_dense: r3(predicted.ppl / dense.ppl - 1),
      };
      log(json, `quality (${docs.length} docs x ${maxLen}): dense ${dense.ppl.toFixed(3)}, predicted ${predicted.ppl.toFixed(3)} (${(100 * (predicted.ppl / dense.ppl - 1)).toFixed(2)}%)`);
    }
    if (o.prefillLen) {
      const { measurePrefill } = await import('./prefill-rate.js');
      const c = config ?? { hiddenSize: dims.d, ffnDim: dims.ffn, numLayers: dims.layers, vocabSize: dims.vocab, wordEmbedProjDim: dims.d };
      result.prefill = measurePrefill(eng, c, o.prefillLen);
      const pr = result.prefill as import('./prefill-rate.js').PrefillRate;
      log(json, `prefill of ${o.prefillLen} tokens: ${pr.tokens_per_s} tokens/s, ${pr.tflops} TFLOP/s = ${pr.fraction_of_gemm_rate} of the GEMM's ${pr.gemm.tflops}`);
    }
    result.seconds = r3((performance.now() - t0) / 1000);
    log(
      json,
      `${o.shape ?? o.model}: dense ${denseMs.toFixed(3)} ms/token (floor ${floorMs.toFixed(3)}, x${(denseMs / floorMs).toFixed(2)}), ` +
        `sparse (KV ${kvPolicy}) ${sparseMs.toFixed(3)} ms/token (floor ${sparseFloorMs.toFixed(3)}; ${(sparseMs / floorMs).toFixed(3)} of the dense floor), ` +
        `KV ${other} ${otherMs.toFixed(3)} ms/token, ` +
        `speedup ${(denseMs / sparseMs).toFixed(2)}x, predictor share ${(100 * Math.max(0, (sparseMs - fixedMs) / sparseMs)).toFixed(1)}%`,
    );
    return result;
  } finally {
    eng.destroy();
  }
}

/** How the MLP neurons are picked from the predictor scores (docs/cuda.md v24), in one line for the JSON. */
export function mlpSelectionRule(selection: CudaOptions['selection']): string {
  return selection === 'grouped'
    ? 'each block of the attention kernel takes its share of k from its own ~n/G consecutive neurons (G = its grid); runtime/sparse groupedTopK, eval --mlp-groups'
    : 'one top-k over all neurons per predictor';
}
