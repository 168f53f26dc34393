/**
 * koffi binding to runtime/cuda/build/libdejavu_cuda.so (built by `npm run build:cuda`). Thin: one JS function per C
 * entry point, each turning a non-zero status into a DejavuError with the library's message. No tfjs, no arrow: this
 * module runs on the GPU machine with a pruned node_modules (koffi only).
 */
import { existsSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { PredictorInput } from '../../common/contracts.js';
import { DejavuError } from '../../common/errors.js';

/** Decode modes, one CUDA graph each (engine.cu `Mode`). */
export const MODE = { dense: 0, sparse: 1, fixed: 2, predictors: 3 } as const;
export type Mode = keyof typeof MODE;

/** Tensor ids for `upload` (engine.cu `Tensor`). */
export const TENSOR = {
  embed: 0, positions: 1, lnfW: 2, lnfB: 3, lmHead: 4, projIn: 5, projOut: 6,
  ln1W: 10, ln1B: 11, qW: 12, qB: 13, kW: 14, kB: 15, vW: 16, vB: 17, oW: 18, oB: 19,
  ln2W: 20, ln2B: 21, fc1W: 22, fc1B: 23, fc2W: 24, fc2B: 25,
} as const;

/** Checkpoint dtypes for `uploadRaw` (engine.cu `Dtype`). */
export const DTYPE = { F32: 0, F16: 1, BF16: 2 } as const;

/** Where the residual stream is read by a predictor. */
export const TAP = { att_in: 0, mlp_in: 1 } as const satisfies Record<PredictorInput, number>;

type Fn = (...args: unknown[]) => unknown;

/**
 * An engine's options (engine.cu `DjOptions`; dj_create, dj_set_options, effective at the next build):
 * - path: 'streamed' (fused.cuh: sm_90+, d <= 10240), 'portable' (per-op kernels, sm_80+), or 'auto' (streamed
 *   where it can run, else portable);
 * - selection: how predicted neurons are picked: 'exact' top-k per predictor, or 'grouped' (the fused predictors'
 *   grouped top-k: each of G neuron groups its share of k; streamed path only);
 * - kvPolicy: 'selected' (skipped heads compute no K/V; their slots are masked when picked later) or 'all'.
 */
export interface CudaOptions {
  path: 'auto' | 'streamed' | 'portable';
  selection: 'exact' | 'grouped';
  kvPolicy: 'selected' | 'all';
}

export const CUDA_PATHS = ['auto', 'streamed', 'portable'] as const;
export const MLP_SELECTIONS = ['exact', 'grouped'] as const;
export const KV_POLICIES = ['all', 'selected'] as const;
// The exact modes by default; the faster ones (grouped top-k, KV of selected heads) are opt-in and cost perplexity.
export const DEFAULT_CUDA_OPTIONS: CudaOptions = { path: 'auto', selection: 'exact', kvPolicy: 'all' };

/** The C struct's field values: each option's index in its list above (engine.cu enums Path, Selection, KvPolicy). */
export function optionsStruct(o: Partial<CudaOptions> = {}): { path: number; selection: number; kv_policy: number } {
  const v = { ...DEFAULT_CUDA_OPTIONS, ...o };
  const index = <T extends string>(list: readonly T[], x: T, flag: string) => {
    const i = list.indexOf(x);
    if (i < 0) throw new DejavuError(`'${x}': expected one of ${list.join(', ')}`, flag);
    return i;
  };
  return {
    path: index(CUDA_PATHS, v.path, '--path'),
    selection: index(MLP_SELECTIONS, v.selection, '--mlp-select'),
    kv_policy: index(KV_POLICIES, v.kvPolicy, 'kv policy'),
  };
}

export interface CudaLib {
  /** The library file loaded. */
  file: string;
  deviceInfo(): { name: string; sms: number; memBytes: number };
  create(c: { vocab: number; d: number; layers: number; heads: number; ffn: number; maxPos: number; maxT: number; eps: number }, options?: Partial<CudaOptions>): unknown;
  /** New options, effective at the next build (the library refuses impossible ones, e.g. grouped on the portable path). */
  setOptions(h: unknown, options: Partial<CudaOptions>): void;
  /** The path the engine runs (auto resolved). */
  path(h: unknown): 'streamed' | 'portable';
  destroy(h: unknown): void;
  fillRandom(h: unknown, seed: number): void;
  upload(h: unknown, tensor: number, layer: number, data: Float32Array): void;
  /** One checkpoint tensor in its stored dtype (raw little-endian bytes of `n` elements), converted on the GPU. */
  uploadRaw(h: unknown, tensor: number, layer: number, bytes: Uint8Array, dtype: keyof typeof DTYPE, n: number): void;
  /** The model's form: pre- or post-LN blocks, final LayerNorm or not, embedding width, separate LM head. */
  setVariant(h: unknown, v: { preLn: boolean; finalLn: boolean; embedDim: number; untiedHead: boolean }): void;
  /** Free and total bytes of the current GPU. */
  memInfo(): { freeBytes: number; totalBytes: number };
  /**
   * Prefill sequences packed in `tokens` (lengths `lens`). nll: per row the NLL of its sequence's next token (0 on
   * each sequence's last row); logits: [rows][vocab] (tests). fillKv (one sequence): its K/V fill the decode cache
   * and decode continues at position len - 1.
   */
  prefill(h: unknown, tokens: Int32Array, lens: Int32Array, out: { nll?: Float32Array; logits?: Float32Array }, fillKv: boolean): void;
  /** Teacher-forced decode: `steps` steps of `mode` from the current position, the NLL of each forced next token. */
  decodeNll(h: unknown, mode: Mode, steps: number, nll: Float32Array): void;
  /**
   * Teacher-forced decode with the oracle's selections (the CPU runtime's mode 'oracle': heads by the L2 norm of their
   * attention output, neurons by their activation, k per layer from setK / setPredictor, the engine's KV policy):
   * `steps` steps from the current position, the NLL of each forced next token. Eager kernels, no build needed.
   */
  oracleNll(h: unknown, steps: number, nll: Float32Array): void;
  /** The oracle's picks of its last step in `layer` (kH heads, kM neurons, ascending). */
  oracleSelection(h: unknown, layer: number, heads: Int32Array, neurons: Int32Array): void;
  /**
   * Collect's taps, pipelined (engine.cu dj_taps_*): `tapsOpen` fixes the collected layers and the longest sequence
   * and pins two host slots; `tapsBegin` queues one sequence into a slot and returns at once; `tapsWait` resolves,
   * without blocking the event loop, to views of the slot's rows: att_in / mlp_in ([nl][n][d] fp16 bits), head norms
   * ([nl][n][H] fp16 bits), MLP activity bitmask ([nl][n][ceil(ffn/8)]); docs/shards.md. The views stay valid until
   * the next tapsBegin into that slot.
   */
  tapsOpen(h: unknown, layers: Int32Array, maxTokens: number): void;
  tapsBegin(h: unknown, slot: 0 | 1, ids: Int32Array): void;
  tapsWait(h: unknown, slot: 0 | 1, shape: TapsShape): Promise<TapRows>;
  /** Milliseconds of one fp16 cuBLAS GEMM [M][K] x [N][K]^T -> fp32 (median of reps): the prefill's reference rate. */
  gemmMs(h: unknown, m: number, n: number, k: number, reps: number): number;
  setK(h: unknown, layer: number, kH: number, kM: number): void;
  setSelection(h: unknown, layer: number, heads: Int32Array, neurons: Int32Array): void;
  getSelection(h: unknown, layer: number, heads: Int32Array, neurons: Int32Array): void;
  /** Neuron groups of a layer's MLP selection (the grouped top-k's G; 1 = one top-k over all). After build. */
  mlpGroups(h: unknown, layer: number): number;
  /** w1/w2 null = random predictor weights (shape benchmarks). */
  setPredictor(h: unknown, layer: number, target: 0 | 1, tap: number, srcLayer: number, w1: Float32Array | null, w2: Float32Array | null, rank: number, k: number, norm: boolean): void;
  build(h: unknown): void;
  graphKernels(h: unknown, mode: Mode): number;
  setPrompt(h: unknown, ids: Int32Array): void;
  setPos(h: unknown, pos: number): void;
  getState(h: unknown, tokens: Int32Array): number;
  getLogits(h: unknown, out: Float32Array): void;
  /** Replay `steps` decode steps; returns device milliseconds (CUDA events). */
  run(h: unknown, mode: Mode, steps: number): number;
  copyBandwidth(bytes: number, reps: number): number;
  /** Eager steps with an event after every launch: device ms per kernel kind, summed over the steps. */
  profile(h: unknown, mode: Mode, steps: number): Record<string, number>;
}

/** What a taps slot's views need to know: collected layers, model width, heads, MLP width. */
export interface TapsShape {
  layers: number;
  d: number;
  heads: number;
  ffn: number;
}

/** One sequence's taps (n tokens), every collected layer: [nl][n][...] as docs/shards.md stores them. */
export interface TapRows {
  n: number;
  attIn: Uint16Array;
  mlpIn: Uint16Array;
  headNorm: Uint16Array;
  mlpActive: Uint8Array;
}

export const PROFILE_KINDS = ['embed', 'qkv', 'attention', 'out_proj', 'fc1', 'fc2', 'lm_head', 'pred_w1', 'topk_attn', 'topk_mlp', 'mlp_fused'] as const;

/**
 * The package root of this module: runtime/cuda in the source tree, dist/runtime/cuda once compiled, and
 * .devnm/dist/runtime/cuda in the pruned copy scripts/cuda-check.sh carries to the GPU machine.
 */
export function packageRootOf(here: string): string {
  let r = dirname(dirname(here));  // out of runtime/cuda
  if (basename(r) === 'dist') r = dirname(r);
  if (basename(r) === '.devnm') r = dirname(r);
  return r;
}

/** Where `npm run build:cuda` (scripts/build-cuda.mjs) puts the library: <package>/runtime/cuda/build/. */
export function builtLibPath(here = dirname(fileURLToPath(import.meta.url))): string {
  return join(packageRootOf(here), 'runtime', 'cuda', 'build', 'libdejavu_cuda.so');
}

/** DEJAVU_CUDA_LIB (a library elsewhere), else the built one. */
export function defaultLibPath(env: NodeJS.ProcessEnv = process.env): string {
  return env.DEJAVU_CUDA_LIB || builtLibPath();
}

// koffi type names are global: the struct is declared once, whatever the number of libraries loaded.
let djOptionsType: unknown;
let djTapsType: unknown;

const cache = new Map<string, CudaLib>();

export async function loadCudaLib(path = defaultLibPath()): Promise<CudaLib> {
  const hit = cache.get(path);
  if (hit) return hit;
  if (!existsSync(path))
    throw new DejavuError(
      'CUDA library not built; run `npm run build:cuda` (an installed package: `dejavu build-cuda`) on a machine with ' +
        `nvcc (CUDA 12+)${path === builtLibPath() ? '' : `: it writes ${builtLibPath()} (DEJAVU_CUDA_LIB names a copy elsewhere)`}`,
      path,
    );
  const koffi = (await import('koffi')).default;
  djOptionsType ??= koffi.struct('DjOptions', { path: 'int', selection: 'int', kv_policy: 'int' });
  djTapsType ??= koffi.struct('DjTaps', { att_in: 'void*', mlp_in: 'void*', head_norm: 'void*', mlp_active: 'void*', n: 'int' });
  let lib: { func(def: string): Fn };
  try {
    lib = koffi.load(path) as unknown as { func(def: string): Fn };
  } catch (e) {
    throw new DejavuError(`${path}: cannot load the CUDA library (${(e as Error).message}); is the NVIDIA driver installed?`);
  }
  // A library built from older sources lacks newer entry points: say so and how to fix it, not a koffi stack trace.
  const f = (def: string) => {
    try {
      return lib.func(def);
    } catch (e) {
      const name = /(dj_\w+)\(/.exec(def)?.[1] ?? def;
      throw new DejavuError(`${path}: the CUDA library lacks ${name} (${(e as Error).message}); it was built from older sources: rebuild it with \`npm run build:cuda\` (an installed package: \`dejavu build-cuda\`)`);
    }
  };
  const lastError = f('const char* dj_last_error()');
  const ok = (what: string, rc: unknown) => {
    if (rc !== 0) throw new DejavuError(`${path}: ${what} failed: ${lastError() as string}`);
  };
  const c = {
    deviceInfo: f('int dj_device_info(_Out_ uint8_t* name, int n, _Out_ int* sms, _Out_ int64_t* mem)'),
    create: f('void* dj_create(int vocab, int d, int L, int H, int ffn, int maxpos, int maxT, float eps, const DjOptions* opt)'),
    setOptions: f('int dj_set_options(void* e, const DjOptions* opt)'),
    path: f('int dj_path(void* e)'),
    destroy: f('int dj_destroy(void* e)'),
    fillRandom: f('int dj_fill_random(void* e, uint32_t seed)'),
    upload: f('int dj_upload(void* e, int tensor, int layer, const float* data, int64_t n)'),
    uploadRaw: f('int dj_upload_raw(void* e, int tensor, int layer, const uint8_t* data, int dtype, int64_t n)'),
    setVariant: f('int dj_set_variant(void* e, int pre_ln, int final_ln, int e_dim, int untied)'),
    memInfo: f('int dj_mem_info(_Out_ int64_t* free, _Out_ int64_t* total)'),
    prefill: f('int dj_prefill(void* e, const int* tokens, const int* lens, int nseq, float* nll, float* logits, int fill_kv)'),
    decodeNll: f('int dj_decode_nll(void* e, int mode, int steps, float* nll)'),
    oracleNll: f('int dj_oracle_nll(void* e, int steps, float* nll)'),
    oracleSelection: f('int dj_oracle_selection(void* e, int layer, int* heads, int* neurons)'),
    gemmMs: f('int dj_gemm_ms(void* e, int M, int N, int K, int reps, _Out_ float* ms)'),
    tapsOpen: f('int dj_taps_open(void* e, const int* layers, int nl, int max_tokens)'),
    tapsBegin: f('int dj_taps_begin(void* e, int slot, const int* tokens, int n)'),
    tapsWait: f('int dj_taps_wait(void* e, int slot, _Out_ DjTaps* out)'),
    setK: f('int dj_set_k(void* e, int layer, int kH, int kM)'),
    setSelection: f('int dj_set_selection(void* e, int layer, const int* heads, int kH, const int* neurons, int kM)'),
    getSelection: f('int dj_get_selection(void* e, int layer, int* heads, int* neurons)'),
    mlpGroups: f('int dj_mlp_groups(void* e, int layer)'),
    setPredictor: f('int dj_set_predictor(void* e, int layer, int target, int tap, int src, const float* w1, const float* w2, int rank, int k, int norm)'),
    build: f('int dj_build(void* e)'),
    graphKernels: f('int dj_graph_kernels(void* e, int mode, _Out_ int* count)'),
    setPrompt: f('int dj_set_prompt(void* e, const int* ids, int n)'),
    setPos: f('int dj_set_pos(void* e, int pos)'),
    getState: f('int dj_get_state(void* e, _Out_ int* pos, int* tokens, int n)'),
    getLogits: f('int dj_get_logits(void* e, float* out)'),
    run: f('int dj_run(void* e, int mode, int steps, float* ms)'),
    copyBandwidth: f('int dj_copy_bandwidth(int64_t bytes, int reps, _Out_ double* gbps)'),
    profile: f('int dj_profile(void* e, int mode, int steps, float* ms, _Out_ float* total)'),
  };
  const api: CudaLib = {
    file: path,
    deviceInfo() {
      const name = Buffer.alloc(256);
      const sms = [0];
      const mem = [0];
      // The first CUDA call is where a machine without a usable GPU shows up: say that plainly.
      if (c.deviceInfo(name, 256, sms, mem) !== 0) {
        const why = lastError() as string;
        const noGpu = /driver version is insufficient|no CUDA-capable device|cudaErrorNoDevice|initialization error/i.test(why);
        throw new DejavuError(
          noGpu
            ? `no usable CUDA GPU on this machine (${why.replace(/^.*?: /, '')}); dejavu bench --device cuda needs an NVIDIA GPU and driver`
            : `dj_device_info failed: ${why}`,
          path,
        );
      }
      return { name: name.toString('utf8').replace(/\0.*$/s, ''), sms: Number(sms[0]), memBytes: Number(mem[0]) };
    },
    create(cfg, options = {}) {
      const h = c.create(cfg.vocab, cfg.d, cfg.layers, cfg.heads, cfg.ffn, cfg.maxPos, cfg.maxT, cfg.eps, optionsStruct(options));
      if (!h) throw new DejavuError(`${path}: dj_create failed: ${lastError() as string}`);
      return h;
    },
    setOptions: (h, options) => ok('dj_set_options', c.setOptions(h, optionsStruct(options))),
    path(h) {
      const p = c.path(h) as number;
      if (p !== 1 && p !== 2) throw new DejavuError(`${path}: dj_path returned ${p} (expected 1 streamed or 2 portable)`);
      return CUDA_PATHS[p] as 'streamed' | 'portable';
    },
    destroy: (h) => void c.destroy(h),
    fillRandom: (h, seed) => ok('dj_fill_random', c.fillRandom(h, seed)),
    upload: (h, tensor, layer, data) => ok(`dj_upload(tensor ${tensor}, layer ${layer})`, c.upload(h, tensor, layer, data, data.length)),
    uploadRaw: (h, tensor, layer, bytes, dtype, n) =>
      ok(`dj_upload_raw(tensor ${tensor}, layer ${layer})`, c.uploadRaw(h, tensor, layer, bytes, DTYPE[dtype], n)),
    setVariant: (h, v) =>
      ok('dj_set_variant', c.setVariant(h, v.preLn ? 1 : 0, v.finalLn ? 1 : 0, v.embedDim, v.untiedHead ? 1 : 0)),
    memInfo() {
      const free = [0];
      const total = [0];
      ok('dj_mem_info', c.memInfo(free, total));
      return { freeBytes: Number(free[0]), totalBytes: Number(total[0]) };
    },
    prefill(h, tokens, lens, out, fillKv) {
      const rows = lens.reduce((a, b) => a + b, 0);
      if (rows !== tokens.length) throw new DejavuError(`prefill: ${tokens.length} tokens but the lengths sum to ${rows}`);
      if (out.nll && out.nll.length < rows) throw new DejavuError(`prefill: nll holds ${out.nll.length} of ${rows} rows`);
      ok('dj_prefill', c.prefill(h, tokens, lens, lens.length, out.nll ?? null, out.logits ?? null, fillKv ? 1 : 0));
    },
    decodeNll: (h, mode, steps, nll) => ok(`dj_decode_nll(${mode})`, c.decodeNll(h, MODE[mode], steps, nll)),
    oracleNll: (h, steps, nll) => ok('dj_oracle_nll', c.oracleNll(h, steps, nll)),
    oracleSelection: (h, layer, heads, neurons) => ok('dj_oracle_selection', c.oracleSelection(h, layer, heads, neurons)),
    tapsOpen: (h, layers, maxTokens) => ok('dj_taps_open', c.tapsOpen(h, layers, layers.length, maxTokens)),
    tapsBegin: (h, slot, ids) => ok(`dj_taps_begin(slot ${slot})`, c.tapsBegin(h, slot, ids, ids.length)),
    async tapsWait(h, slot, shape) {
      // The wait runs on koffi's worker thread so the event loop keeps writing shards; the call again on this thread
      // then returns at once with the rows, or the error (dj_last_error is per thread).
      await new Promise<void>((resolve) => (c.tapsWait as unknown as { async: (...a: unknown[]) => void }).async(h, slot, null, () => resolve()));
      const o = {} as { att_in: unknown; mlp_in: unknown; head_norm: unknown; mlp_active: unknown; n: number };
      ok(`dj_taps_wait(slot ${slot})`, c.tapsWait(h, slot, o));
      const rows = shape.layers * o.n;
      return {
        n: o.n,
        attIn: new Uint16Array(koffi.view(o.att_in, rows * shape.d * 2)),
        mlpIn: new Uint16Array(koffi.view(o.mlp_in, rows * shape.d * 2)),
        headNorm: new Uint16Array(koffi.view(o.head_norm, rows * shape.heads * 2)),
        mlpActive: new Uint8Array(koffi.view(o.mlp_active, rows * Math.ceil(shape.ffn / 8))),
      };
    },
    gemmMs(h, m, n, k, reps) {
      const ms = [0];
      ok('dj_gemm_ms', c.gemmMs(h, m, n, k, reps, ms));
      return ms[0];
    },
    setK: (h, layer, kH, kM) => ok('dj_set_k', c.setK(h, layer, kH, kM)),
    setSelection: (h, layer, heads, neurons) =>
      ok('dj_set_selection', c.setSelection(h, layer, heads, heads.length, neurons, neurons.length)),
    getSelection: (h, layer, heads, neurons) => ok('dj_get_selection', c.getSelection(h, layer, heads, neurons)),
    mlpGroups: (h, layer) => {
      const g = c.mlpGroups(h, layer) as number;  // -1 on error (dj_last_error), else G >= 1
      ok('dj_mlp_groups', g < 1 ? g : 0);
      return g;
    },
    setPredictor: (h, layer, target, tap, src, w1, w2, rank, k, norm) =>
      ok('dj_set_predictor', c.setPredictor(h, layer, target, tap, src, w1, w2, rank, k, norm ? 1 : 0)),
    build: (h) => ok('dj_build', c.build(h)),
    graphKernels(h, mode) {
      const n = [0];
      ok('dj_graph_kernels', c.graphKernels(h, MODE[mode], n));
      return n[0];
    },
    setPrompt: (h, ids) => ok('dj_set_prompt', c.setPrompt(h, ids, ids.length)),
    setPos: (h, pos) => ok('dj_set_pos', c.setPos(h, pos)),
    getState(h, tokens) {
      const pos = [0];
      ok('dj_get_state', c.getState(h, pos, tokens, tokens.length));
      return pos[0];
    },
    getLogits: (h, out) => ok('dj_get_logits', c.getLogits(h, out)),
    run(h, mode, steps) {
      const ms = new Float32Array(1);
      ok(`dj_run(${mode})`, c.run(h, MODE[mode], steps, ms));
      return ms[0];
    },
    profile(h, mode, steps) {
      const ms = new Float32Array(PROFILE_KINDS.length);
      const total = [0];
      ok('dj_profile', c.profile(h, MODE[mode], steps, ms, total));
      const out: Record<string, number> = { total: total[0] };
      PROFILE_KINDS.forEach((k, i) => (out[k] = ms[i]));
      return out;
    },
    copyBandwidth(bytes, reps) {
      const g = [0];
      ok('dj_copy_bandwidth', c.copyBandwidth(bytes, reps, g));
      return g[0];
    },
  };
  cache.set(path, api);
  return api;
}
