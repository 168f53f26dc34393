// The CUDA decode engine behind runtime/cuda/lib.ts: device weights, KV cache, per-step device state, and one CUDA
// graph per decode mode (dense, sparse with predictors, sparse with fixed selections, predictors alone).
// Plain C API (extern "C") for koffi; every call returns 0 on success or -1 with dj_last_error() set.
#include <cuda.h>
#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cstdio>
#include <cstring>
#include <cstdarg>
#include <cmath>
#include <string>
#include <vector>
#include <algorithm>
#include "kernels.cuh"
#include "fused.cuh"
#include "step.cuh"
#include "predict.cuh"
#include "chain.cuh"

using namespace dj;

static thread_local std::string g_err;
static int fail(const char* fmt, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  g_err = buf;
  return -1;
}
#define CK(call)                                                                                  \
  do {                                                                                            \
    cudaError_t e_ = (call);                                                                      \
    if (e_ != cudaSuccess) return fail("%s:%d %s: %s", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); \
  } while (0)

enum Mode { M_DENSE = 0, M_SPARSE = 1, M_FIXED = 2, M_PRED = 3, M_COUNT = 4 };
enum Tap { TAP_ATT_IN = 0, TAP_MLP_IN = 1 };

struct Pred {
  bool on = false;
  bool norm = false;  // parameter-free LayerNorm of the input before w1 (bundle input_norm = "layernorm")
  int rank = 0, tap = 0, src_layer = 0;
  __half *w1 = nullptr, *w2 = nullptr;  // [rank][d], [n][rank]
  float *t = nullptr, *scores = nullptr;
  TopkState* topk = nullptr;
  bool fused = false;        // rides in the main kernels of the sparse graph (pfuse.cuh; decided by build_groups)
};

// Predictors reading the same tap (layer, att_in/mlp_in, norm) share one first-layer GEMV over their stacked w1.
struct Group {
  int tap, layer;
  bool norm;
  int rows = 0;
  __half* w1 = nullptr;
  float* t = nullptr;
  std::vector<std::pair<int, int>> members;  // (layer, target)
  __half* xh = nullptr;  // streamed path: the tap's input (raw or parameter-free LN) as fp16, written on the side stream
  ChainState* cs = nullptr;  // k_pred_chain's barrier and histograms (green partition)
};

// The predictors fused into layer l's QKV (w1 rows) and attention (w2, top-k) kernels: those reading att_in(l).
struct Fuse {
  bool on = false;
  int rows = 0;
  __half* w1p = nullptr;                     // stacked w1 / ln1_g of layer l
  float *c1 = nullptr, *nm = nullptr, *t = nullptr;
  std::vector<std::pair<int, int>> members;  // (layer, target), in stack order
  int groups = 0;  // blocks of the attention kernel that carries it (= groups of the grouped top-k, PredFuse::local)
  unsigned* gdone = nullptr;  // the grouped top-k's per-group flags [max(sms, H)]
};

struct Layer {
  float *ln1_g, *ln1_b, *bqkv, *bo, *ln2_g, *ln2_b, *b1, *b2;
  __half *Wqkv, *WoT, *W1, *W2T;
  __half *kc, *vc;
  uint8_t* valid;
  int kH, kM;
  int *hsel, *nsel;
  Pred pa, pm;
  Fuse fz;
  float *c1q = nullptr, *c2q = nullptr, *c1m = nullptr, *c2m = nullptr;  // deferred LayerNorm constants (k_ln_fold)
};

struct Engine {
  int vocab, d, L, H, hd, ffn, maxpos, maxT;
  float eps = 1e-5f;
  int sms = 0;
  bool kv_all = false;  // KV policy for sparse attention (kernels.cuh, k_attention)
  std::vector<void*> allocs;
  __half *E = nullptr, *P = nullptr, *lm = nullptr;
  float *lnf_g = nullptr, *lnf_b = nullptr;
  std::vector<Layer> layers;
  float *x, *q, *att, *h, *logits;
  __half *xn, *xr, *xp;    // fp16 GEMV inputs: LN(x), x, LN(x) without affine (kernels.cuh header)
  unsigned* cols_counter;  // last-block counter of the column GEMVs on the main stream
  int *st, *tokens;
  unsigned long long* amax;
  unsigned* lm_counter;
  cudaStream_t s0 = nullptr, s1 = nullptr, s2 = nullptr;
  int rows_waves = 1;  // row GEMV: split rows over more warps while n_out * wpr * 2 <= resident warps * this
  int cols_bps = 1;         // dense column GEMV: waves of resident blocks to aim for (sets the rows per chunk)
  int cols_bps_sparse = 1;  // gathered column GEMV: the same
  bool fused_mlp = true;    // sparse MLP as one kernel (k_mlp_sparse) instead of k_rows + k_cols
  bool l2_prefetch = true;  // sparse kernels request the next kernel's rows into L2 (L2Prefetch)
  bool skip_ln = false;     // TIMING EXPERIMENT ONLY (wrong results): column GEMVs skip the LayerNorm epilogue
  bool pdl = true;  // programmatic dependent launch on the main stream (env DEJAVU_CUDA_PDL=0 turns it off)
  // PDL in graphs whose predictors run on side streams (modes sparse, predictors). Off by default: early-launched
  // main kernels hold SMs while they wait, and the predictor kernels then wait for SMs (13B streamed path, H200:
  // sparse 2.34 ms without, 2.77 ms with; env DEJAVU_CUDA_PDL_SPARSE=1 turns it on).
  bool pdl_side = false;
  bool pdl_now = true;  // what launchk uses while a graph is recorded
  bool persist = false;  // dense step's layers as one persistent kernel (k_step_dense; env DEJAVU_CUDA_PERSIST=1)
  unsigned* grid_bar = nullptr;  // k_step_dense's grid barrier word
  LayerArgs* step_args = nullptr;  // k_step_dense's per-layer arguments (device)
  int persist_pf = 0;    // k_step_dense's L2 prefetch mode (LayerArgs::pf; env DEJAVU_CUDA_PERSIST_PF; 0 measured fastest)
  int persist_skip = 0;  // TIMING EXPERIMENT ONLY (wrong results): stages k_step_dense skips (DEJAVU_CUDA_PERSIST_SKIP)
  // Streamed path (fused.cuh; default): residual points X / deltas D, each [(2L+1)][d]; stream geometry.
  bool tma = true;        // env DEJAVU_CUDA_TMA=0: the per-op kernels above instead
  // The MLP kernel's blocks (pairs) add into two copies of its output delta, alternating, and readers add both: half
  // the float atomics on each address, which L2 serialises (bench/cuda/reduce.cu; v27). Env DEJAVU_CUDA_DCOPY=0: one.
  bool dcopy = true;
  float *X = nullptr, *D = nullptr;
  int ring_bytes = 200 * 1024, seg_bytes = 5120, smem_optin = 0;  // ring: at most this, and what fits beside x
  bool ln_defer = true;   // LayerNorm applied in the row epilogue (fused.cuh t_load_input; env DEJAVU_CUDA_LN_DEFER=0: off)
  float *c1lm = nullptr, *c2lm = nullptr;  // the LM head's constants for it
  bool ln_folded = false;  // the constants match the weights (cleared by every upload / fill; fold_ln sets it)
  // Streamed producers look the block's selected rows up first (fused.cuh T_ROWIX): bit 0 row kernels, bit 1 MLP.
  // rowix: graphs without side-stream predictors (env DEJAVU_CUDA_ROWIX); rowix_side: graphs with them (env
  // DEJAVU_CUDA_ROWIX_SIDE). Measured on the 13B shape (H200): bit 0 makes the fixed-selection step 1.69 -> 1.57 ms;
  // with predictors beside it on all SMs the faster QKV stream delays their loads (2.18 -> 2.33 ms), with 16 SMs
  // reserved for them (below) it helps (2.093 -> 2.077). Bit 1 changed nothing measurable.
  int rowix = 1, rowix_side = 1, rowix_now = 1;
  // 2: the MLP kernel in clusters of 2 that pre-add their partials; 1: single blocks; 0 (default): pairs for neuron
  // lists when the reduction is by atomics, single blocks with the bulk reduction (DEJAVU_CUDA_MLP_CLUSTER)
  int mlp_cluster = 0;
  // The MLP's cross-block reduction by cp.reduce.async.bulk (fused.cuh t_mlp_reduce_bulk; DEJAVU_CUDA_MLP_BULK=0:
  // float4 atomics). 13B grouped, H200, same call: 1.644 -> 1.590 ms (s16).
  bool mlp_bulk = true;
  bool mlp_nored = false;  // TIMING ONLY (wrong results): the MLP kernel skips its atomics (DEJAVU_CUDA_MLP_NORED=1)
  // SMs left to the side-stream predictors in graphs with them (env DEJAVU_CUDA_RESERVE_SMS): the streamed kernels
  // of those graphs use sms - reserve blocks, so the predictor chain's loads are not queued behind a 200 KB ring on
  // every SM. 13B, H200: reserve 0 / 8 / 16 / 24 / 32 -> 2.178 / 2.120 / 2.093 / 2.140 / 2.193 ms; with 16 the QKV
  // lookups first pay off beside the predictors too (2.077). sms_now: what the launches use while a graph is recorded.
  int reserve = 16, sms_now = 0;
  // Green contexts (env DEJAVU_CUDA_GREEN=N, experiment): graphs with side-stream predictors run their main kernels
  // in a green context of sms - N SMs and the predictor chain in one of N SMs, a hardware partition (CUDA graphs
  // keep it, bench/cuda/green.cu), so the main stream can keep PDL without its early-launched blocks taking the
  // predictors' SMs. green_pdl: PDL on the main stream then (DEJAVU_CUDA_GREEN_PDL, default 1); green_join: also on
  // kernels that join a selection, their join edges made full edges after capture (DEJAVU_CUDA_GREEN_JOIN).
  int green = 0, green_main = 0;
  bool green_pdl = true, green_join = false;
  bool green_chain = true;  // there, each tap group's chain as one kernel (chain.cuh; DEJAVU_CUDA_GREEN_CHAIN=0: 3 kernels)
  cudaStream_t gm = nullptr, gp1 = nullptr, gp2 = nullptr;
  CUgreenCtx gctx[2] = {nullptr, nullptr};  // predictors', main's (destroyed by dj_destroy)
  // (kernel node that joins a selection, the main-stream node before it): edges to fix after capture
  std::vector<std::pair<cudaGraphNode_t, cudaGraphNode_t>> join_fix;
  // Predictor chain of the streamed path (predict.cuh): pchain = the tap's input computed inside the w1 GEMV
  // (env DEJAVU_CUDA_PCHAIN=0: the earlier one-block snapshot + k_rows); pred_pdl = the chain's kernels on one side
  // stream launched with PDL (env DEJAVU_CUDA_PRED_PDL); pred_unroll = score rows per lane in flight
  // (DEJAVU_CUDA_PRED_UNROLL: 1, 2, 4, 8; 1 = the earlier loop); pred_avail = the score grid sized to the SMs the
  // streamed kernels leave free (DEJAVU_CUDA_PRED_AVAIL; measured slower).
  bool pchain = true, pred_pdl = false, pred_avail = false;
  int pred_unroll = 4;
  int pred_skip = 0;  // TIMING EXPERIMENT ONLY (wrong selections; env DEJAVU_CUDA_PRED_SKIP): bit 0 w1, 1 scores, 2 select
  int lead = -1;          // stages a streamed kernel issues before its input is ready (env DEJAVU_CUDA_LEAD; -1: all)
  int lead_att = 4;       // the same for attention + out_proj (env DEJAVU_CUDA_LEAD_ATT; 4 measured best on 13B, -1..4)
  // Row segments per stage: 0 = automatic (make_geo: for long streams the size that fills the ring best; 13B: 13
  // rows of 5 KB x 3 stages = 195 KB in flight instead of 16 x 2 = 160 KB, dense 6.72 -> 6.57 ms); env
  // DEJAVU_CUDA_TMA_ROWS=N caps it at N instead.
  int rows_cap = 0;
  int tw = 16;            // consumer warps per streamed block (env DEJAVU_CUDA_TMA_WARPS: 16 or 8)
  bool trace = false;     // number the streamed launches for the timeline trace (bench/cuda/trace.cu, DJ_TRACE builds)
  int tr_next = -1;       // next trace id while a step is recorded
  // Persistent sparse step (step.cuh; env DEJAVU_CUDA_PSTEP=1): the fixed-selection graph's layers as one
  // cooperative kernel whose producers stream across phase and layer boundaries. pstep_ok: prepared for this build.
  bool pstep = false, pstep_ok = false;
  int pstep_stages = 5;          // ring stages (env DEJAVU_CUDA_PSTEP_STAGES)
  bool pstep_nosync = false;     // TIMING EXPERIMENT ONLY (wrong results): no grid waits (DEJAVU_CUDA_PSTEP_NOSYNC=1)
  SLayer* pslayers = nullptr;    // [L] per-layer arguments (device)
  unsigned* psync = nullptr;     // [3L] grid counters, zeroed by k_embed_tma
  StepArgs pargs{};
  size_t psmem = 0;
  std::vector<Group> groups;  // every predictor (predictors-only graph; sparse graph when none is fused)
  bool groups_dirty = true;
  // Fused predictors (pfuse.cuh; env DEJAVU_CUDA_PFUSE=1; off by default: with DEJAVU_CUDA_PF_LOCAL=1 the grouped
  // top-k, which picks differently from the exact one; without it only the small (head) predictors ride).
  // groups_side: the sparse graph's side-stream groups beside them; side_early: those all read att_in(0) (they run
  // before layer 0 only, so the sparse graph keeps PDL and every SM).
  bool pfuse = false, fused_any = false, side_early = false;
  bool pfuse_small = false;  // env DEJAVU_CUDA_PFUSE=2: only the small (attention-head) predictors ride along, also
                             // with DEJAVU_CUDA_PF_LOCAL=1
  std::vector<Group> groups_side;
  unsigned* pflags = nullptr;  // [2L] selection flags (layer, target): step serial + 1 once written
  unsigned* pf_bad = nullptr;
  int pf_warps = PF_LOCAL_WARPS;  // env DEJAVU_CUDA_PF_WARPS (2..8): the grouped mode's predictor warps per block
  bool pf_local = false;  // env DEJAVU_CUDA_PF_LOCAL=1: the big fused predictor's grouped top-k (pfuse.cuh pf_local)
  bool head0_table = true;  // env DEJAVU_CUDA_HEAD0_TABLE=0: layer 0's heads on the side-stream chain (pfuse.cuh head0)
  bool head0 = false;        // this plan picks layer 0's heads from tables (k_head0_select); tables h0E, h0P
  float *h0E = nullptr, *h0P = nullptr;
  int pf_sel = 1;  // env DEJAVU_CUDA_PF_SEL: the grouped top-k's selection, 1 warp-max rounds (default: H200 1.663 vs
                   // 1.776 ms, s13 call 2), 0 the bitwise search
  int pf_skip = 0;  // TIMING EXPERIMENT ONLY (env DEJAVU_CUDA_PF_SKIP): bit 0 the MLP does not wait for its flags,
                    // bit 2 no w1 rows in the QKV kernel, bit 4 no head-list flag waits, bit 5 no selection (a group
                    // takes its first rows), bit 6 no key dot products
  cudaGraphExec_t graphs[M_COUNT] = {};
  std::vector<cudaEvent_t> evs;
  cudaEvent_t t0, t1;
};

static void fill_h(__half* p, size_t n, uint64_t seed, float scale, float off) {
  k_fill_half<<<1024, 256>>>(p, n, seed, scale, off);
}
static void fill_f(float* p, size_t n, uint64_t seed, float scale, float off) {
  k_fill_float<<<256, 256>>>(p, n, seed, scale, off);
}

template <class T>
static int dalloc(Engine* e, T** p, size_t n) {
  void* v = nullptr;
  CK(cudaMalloc(&v, std::max<size_t>(n, 1) * sizeof(T)));
  e->allocs.push_back(v);
  *p = (T*)v;
  return 0;
}

extern "C" {

// Green contexts for the sparse graph (Engine::green): driver entry points through the runtime, so the library
// needs no -lcuda.
static void* driver_entry(const char* name) {
  void* f = nullptr;
  cudaDriverEntryPointQueryResult q;
  return cudaGetDriverEntryPointByVersion(name, &f, 13000, cudaEnableDefault, &q) == cudaSuccess ? f : nullptr;
}
static int setup_green(Engine* e) {
  auto entry = driver_entry;
  auto get_res = (CUresult(*)(CUdevice, CUdevResource*, CUdevResourceType))entry("cuDeviceGetDevResource");
  auto split = (CUresult(*)(CUdevResource*, unsigned*, const CUdevResource*, CUdevResource*, unsigned, unsigned))
      entry("cuDevSmResourceSplitByCount");
  auto gen = (CUresult(*)(CUdevResourceDesc*, CUdevResource*, unsigned))entry("cuDevResourceGenerateDesc");
  auto create = (CUresult(*)(CUgreenCtx*, CUdevResourceDesc, CUdevice, unsigned))entry("cuGreenCtxCreate");
  auto stream = (CUresult(*)(CUstream*, CUgreenCtx, unsigned, int))entry("cuGreenCtxStreamCreate");
  if (!get_res || !split || !gen || !create || !stream) return fail("DEJAVU_CUDA_GREEN: the driver has no green contexts");
  int dev = 0;
  CK(cudaGetDevice(&dev));
  CUdevResource all, grp, rem;
  unsigned ng = 1;
  CUdevResourceDesc dg, dr;
  CUgreenCtx& gp = e->gctx[0];
  CUgreenCtx& gmc = e->gctx[1];
  CUstream a, b, c;
  if (get_res(dev, &all, CU_DEV_RESOURCE_TYPE_SM) || split(&grp, &ng, &all, &rem, 0, e->green) || ng != 1 ||
      gen(&dg, &grp, 1) || gen(&dr, &rem, 1) || create(&gp, dg, dev, CU_GREEN_CTX_DEFAULT_STREAM) ||
      create(&gmc, dr, dev, CU_GREEN_CTX_DEFAULT_STREAM) || stream(&a, gmc, CU_STREAM_NON_BLOCKING, 0) ||
      stream(&b, gp, CU_STREAM_NON_BLOCKING, 0) || stream(&c, gp, CU_STREAM_NON_BLOCKING, 0))
    return fail("DEJAVU_CUDA_GREEN=%d: no SM partition of that size on this device (%d SMs)", e->green, e->sms);
  e->gm = (cudaStream_t)a; e->gp1 = (cudaStream_t)b; e->gp2 = (cudaStream_t)c;
  e->green = (int)grp.sm.smCount;
  e->green_main = (int)rem.sm.smCount;
  fprintf(stderr, "dejavu-cuda: green contexts: main %d SMs, predictors %d SMs\n", e->green_main, e->green);
  return 0;
}

// Join edges of kernels launched with PDL in a green graph (Engine::green_join): stream capture gives every
// incoming edge of such a kernel the programmatic type; only the one from the previous main kernel may keep it, the
// ones from the predictor chain must be full edges (completion and memory visibility before the kernel starts).
static int fix_join_edges(Engine* e, cudaGraph_t g) {
  for (auto [node, prev] : e->join_fix) {
    size_t n = 0;
    CK(cudaGraphNodeGetDependencies(node, nullptr, nullptr, &n));
    std::vector<cudaGraphNode_t> deps(n);
    std::vector<cudaGraphEdgeData> ed(n);
    CK(cudaGraphNodeGetDependencies(node, deps.data(), ed.data(), &n));
    for (size_t i = 0; i < n; i++) {
      if (deps[i] == prev || (ed[i].type == cudaGraphDependencyTypeDefault && ed[i].from_port == 0)) continue;
      cudaGraphEdgeData full{};
      CK(cudaGraphRemoveDependencies(g, &deps[i], &node, &ed[i], 1));
      CK(cudaGraphAddDependencies(g, &deps[i], &node, &full, 1));
    }
  }
  e->join_fix.clear();
  return 0;
}

const char* dj_last_error() { return g_err.c_str(); }

int dj_device_info(char* name, int n, int* sms, long long* mem_total) {
  cudaDeviceProp p;
  int dev = 0;
  CK(cudaGetDevice(&dev));
  CK(cudaGetDeviceProperties(&p, dev));
  snprintf(name, n, "%s", p.name);
  *sms = p.multiProcessorCount;
  *mem_total = (long long)p.totalGlobalMem;
  return 0;
}

void* dj_create(int vocab, int d, int L, int H, int ffn, int maxpos, int maxT, float eps) {
  if (d % 8 || (d / H) % 8 || d % H) { fail("d=%d, H=%d: need d and d/H multiples of 8", d, H); return nullptr; }
  int hd = d / H;
  if (hd != 32 && hd != 64 && hd != 128) { fail("head dim %d not supported (32, 64, 128)", hd); return nullptr; }
  if (maxT > maxpos) { fail("maxT %d > max positions %d", maxT, maxpos); return nullptr; }
  Engine* e = new Engine();
  e->vocab = vocab; e->d = d; e->L = L; e->H = H; e->hd = hd; e->ffn = ffn; e->maxpos = maxpos; e->maxT = maxT;
  e->eps = eps;
  int dev = 0;
  cudaDeviceProp p;
  if (cudaGetDevice(&dev) != cudaSuccess || cudaGetDeviceProperties(&p, dev) != cudaSuccess) {
    fail("no CUDA device"); delete e; return nullptr;
  }
  e->sms = p.multiProcessorCount;
  e->sms_now = e->sms;
  const char* pdl = getenv("DEJAVU_CUDA_PDL");
  e->pdl = !(pdl && pdl[0] == '0');  // measured 2% faster on an H200 (docs/cuda.md)
  // Tuning knobs for experiments (bench/results record which values ran).
  if (const char* v = getenv("DEJAVU_CUDA_ROWS_WAVES")) e->rows_waves = std::max(1, atoi(v));
  if (const char* v = getenv("DEJAVU_CUDA_COLS_BPS")) e->cols_bps = std::max(1, atoi(v));
  if (const char* v = getenv("DEJAVU_CUDA_COLS_BPS_SPARSE")) e->cols_bps_sparse = std::max(1, atoi(v));
  if (const char* v = getenv("DEJAVU_CUDA_FUSED_MLP")) e->fused_mlp = v[0] != '0';
  if (const char* v = getenv("DEJAVU_CUDA_L2_PREFETCH")) e->l2_prefetch = v[0] != '0';
  if (const char* v = getenv("DEJAVU_CUDA_SKIP_LN_EXPERIMENT")) e->skip_ln = v[0] == '1';
  if (const char* v = getenv("DEJAVU_CUDA_PERSIST")) e->persist = v[0] == '1';
  if (const char* v = getenv("DEJAVU_CUDA_PERSIST_PF")) e->persist_pf = std::min(3, std::max(0, atoi(v)));
  if (const char* v = getenv("DEJAVU_CUDA_PERSIST_SKIP")) e->persist_skip = atoi(v);
  if (d > 4 * PL_V * PL_THREADS) e->persist = false;  // pl_layernorm holds x in PL_V float4 per thread
  if (const char* v = getenv("DEJAVU_CUDA_TMA")) e->tma = v[0] != '0';
  if (const char* v = getenv("DEJAVU_CUDA_RING_KB")) e->ring_bytes = std::max(16, atoi(v)) * 1024;
  if (const char* v = getenv("DEJAVU_CUDA_SEG_BYTES")) e->seg_bytes = std::max(256, atoi(v));
  if (const char* v = getenv("DEJAVU_CUDA_PDL_SPARSE")) e->pdl_side = v[0] == '1';
  if (const char* v = getenv("DEJAVU_CUDA_TMA_WARPS")) e->tw = atoi(v) == 8 ? 8 : 16;
  if (const char* v = getenv("DEJAVU_CUDA_LEAD")) e->lead = atoi(v);
  if (const char* v = getenv("DEJAVU_CUDA_LN_DEFER")) e->ln_defer = v[0] != '0';
  if (const char* v = getenv("DEJAVU_CUDA_ROWIX")) e->rowix = atoi(v) & 3;
  if (const char* v = getenv("DEJAVU_CUDA_ROWIX_SIDE")) e->rowix_side = atoi(v) & 3;
  if (const char* v = getenv("DEJAVU_CUDA_MLP_CLUSTER")) e->mlp_cluster = std::min(2, std::max(0, atoi(v)));
  if (const char* v = getenv("DEJAVU_CUDA_MLP_NORED")) e->mlp_nored = v[0] == '1';
  if (const char* v = getenv("DEJAVU_CUDA_MLP_BULK")) e->mlp_bulk = v[0] != '0';
  if (const char* v = getenv("DEJAVU_CUDA_RESERVE_SMS")) e->reserve = std::max(0, atoi(v));
  if (const char* v = getenv("DEJAVU_CUDA_GREEN")) e->green = std::max(0, atoi(v));
  if (const char* v = getenv("DEJAVU_CUDA_GREEN_PDL")) e->green_pdl = v[0] != '0';
  if (const char* v = getenv("DEJAVU_CUDA_GREEN_JOIN")) e->green_join = v[0] == '1';
  if (const char* v = getenv("DEJAVU_CUDA_GREEN_CHAIN")) e->green_chain = v[0] != '0';
  if (const char* v = getenv("DEJAVU_CUDA_TMA_ROWS")) e->rows_cap = std::max(0, atoi(v));
  if (const char* v = getenv("DEJAVU_CUDA_LEAD_ATT")) e->lead_att = atoi(v);
  if (const char* v = getenv("DEJAVU_CUDA_DCOPY")) e->dcopy = v[0] != '0';
  if (const char* v = getenv("DEJAVU_CUDA_PSTEP")) e->pstep = v[0] == '1';
  if (const char* v = getenv("DEJAVU_CUDA_PCHAIN")) e->pchain = v[0] != '0';
  if (const char* v = getenv("DEJAVU_CUDA_PFUSE")) { e->pfuse = v[0] != '0'; e->pfuse_small = v[0] == '2'; }
  if (const char* v = getenv("DEJAVU_CUDA_PF_SKIP")) e->pf_skip = atoi(v) & 127;
  if (const char* v = getenv("DEJAVU_CUDA_PF_LOCAL")) e->pf_local = v[0] == '1';
  if (const char* v = getenv("DEJAVU_CUDA_HEAD0_TABLE")) e->head0_table = v[0] != '0';
  if (const char* v = getenv("DEJAVU_CUDA_PF_SEL")) e->pf_sel = atoi(v) != 0;
  if (const char* v = getenv("DEJAVU_CUDA_PF_WARPS")) e->pf_warps = std::min(8, std::max(2, atoi(v)));
  if (const char* v = getenv("DEJAVU_CUDA_PRED_PDL")) e->pred_pdl = v[0] == '1';
  if (const char* v = getenv("DEJAVU_CUDA_PRED_UNROLL")) e->pred_unroll = std::max(1, std::min(TOPK_UNROLL, atoi(v)));
  if (const char* v = getenv("DEJAVU_CUDA_PRED_AVAIL")) e->pred_avail = v[0] == '1';
  if (const char* v = getenv("DEJAVU_CUDA_PRED_SKIP")) e->pred_skip = atoi(v) & 7;
  if (e->pred_skip & 2) e->pred_skip |= 4;  // the select reads the state the scores kernel leaves
  if (const char* v = getenv("DEJAVU_CUDA_PSTEP_NOSYNC")) e->pstep_nosync = v[0] == '1';
  if (const char* v = getenv("DEJAVU_CUDA_PSTEP_STAGES")) e->pstep_stages = std::max(2, std::min(T_MAX_STAGES, atoi(v)));
  e->smem_optin = (int)p.sharedMemPerBlockOptin;
  if (d > T_DMAX) e->tma = false;  // t_load_input holds x in registers
  auto bad = [&]() { for (void* v : e->allocs) cudaFree(v); delete e; return (void*)nullptr; };
  if (dalloc(e, &e->E, (size_t)vocab * d) || dalloc(e, &e->P, (size_t)(maxpos + 2) * d) ||
      dalloc(e, &e->lnf_g, d) || dalloc(e, &e->lnf_b, d))
    return bad();
  e->lm = e->E;  // tied unless an lm_head is uploaded
  e->layers.resize(L);
  for (auto& l : e->layers) {
    size_t dd = (size_t)d * d;
    if (dalloc(e, &l.ln1_g, d) || dalloc(e, &l.ln1_b, d) || dalloc(e, &l.bqkv, 3 * d) || dalloc(e, &l.bo, d) ||
        dalloc(e, &l.ln2_g, d) || dalloc(e, &l.ln2_b, d) || dalloc(e, &l.b1, ffn) || dalloc(e, &l.b2, d) ||
        dalloc(e, &l.Wqkv, 3 * dd) || dalloc(e, &l.WoT, dd) || dalloc(e, &l.W1, (size_t)ffn * d) ||
        dalloc(e, &l.W2T, (size_t)ffn * d) || dalloc(e, &l.kc, (size_t)H * maxT * hd) ||
        dalloc(e, &l.vc, (size_t)H * maxT * hd) || dalloc(e, &l.valid, (size_t)H * maxT) ||
        dalloc(e, &l.hsel, H) || dalloc(e, &l.nsel, ffn))
      return bad();
    l.kH = H; l.kM = ffn;
    std::vector<int> id(std::max(H, ffn));
    for (size_t i = 0; i < id.size(); i++) id[i] = (int)i;
    cudaMemcpy(l.hsel, id.data(), H * sizeof(int), cudaMemcpyHostToDevice);
    cudaMemcpy(l.nsel, id.data(), ffn * sizeof(int), cudaMemcpyHostToDevice);
    cudaMemset(l.valid, 0, (size_t)H * maxT);
  }
  if (dalloc(e, &e->xn, d) || dalloc(e, &e->xr, d) || dalloc(e, &e->xp, d) || dalloc(e, &e->cols_counter, 1) ||
      dalloc(e, &e->grid_bar, 1))
    return bad();
  cudaMemset(e->grid_bar, 0, sizeof(unsigned));
  cudaMemset(e->cols_counter, 0, sizeof(unsigned));
  if (dalloc(e, &e->x, d) || dalloc(e, &e->q, d) || dalloc(e, &e->att, d) || dalloc(e, &e->h, ffn) ||
      dalloc(e, &e->logits, vocab) || dalloc(e, &e->st, 4) || dalloc(e, &e->tokens, maxT + 1) ||
      dalloc(e, &e->amax, 1) || dalloc(e, &e->lm_counter, 1))
    return bad();
  // D holds two copies of every point's delta ([2][2L+1][d]); the second is used for the MLP outputs (dcopy).
  if (dalloc(e, &e->X, (size_t)(2 * L + 1) * d) || dalloc(e, &e->D, (size_t)2 * (2 * L + 1) * d)) return bad();
  cudaMemset(e->X, 0, (size_t)(2 * L + 1) * d * sizeof(float));
  cudaMemset(e->D, 0, (size_t)2 * (2 * L + 1) * d * sizeof(float));
  cudaMemset(e->st, 0, 4 * sizeof(int));
  cudaMemset(e->tokens, 0, (maxT + 1) * sizeof(int));
  cudaMemset(e->amax, 0, sizeof(unsigned long long));
  cudaMemset(e->lm_counter, 0, sizeof(unsigned));
  if (cudaStreamCreateWithFlags(&e->s0, cudaStreamNonBlocking) != cudaSuccess ||
      cudaStreamCreateWithFlags(&e->s1, cudaStreamNonBlocking) != cudaSuccess ||
      cudaStreamCreateWithFlags(&e->s2, cudaStreamNonBlocking) != cudaSuccess ||
      cudaEventCreate(&e->t0) != cudaSuccess || cudaEventCreate(&e->t1) != cudaSuccess) {
    fail("stream/event creation failed");
    return bad();
  }
  if (e->green && setup_green(e)) return bad();
  if (cudaGetLastError() != cudaSuccess) { fail("initialisation failed"); return bad(); }
  return e;
}

int dj_destroy(void* ev) {
  Engine* e = (Engine*)ev;
  if (!e) return 0;
  for (auto g : e->graphs) if (g) cudaGraphExecDestroy(g);
  for (auto v : e->evs) cudaEventDestroy(v);
  for (void* v : e->allocs) cudaFree(v);
  cudaStreamDestroy(e->s0);
  cudaStreamDestroy(e->s1);
  cudaStreamDestroy(e->s2);
  if (e->gm) { cudaStreamDestroy(e->gm); cudaStreamDestroy(e->gp1); cudaStreamDestroy(e->gp2); }
  if (auto destroy = (CUresult(*)(CUgreenCtx))driver_entry("cuGreenCtxDestroy"))
    for (CUgreenCtx g : e->gctx) if (g) destroy(g);
  delete e;
  return 0;
}

// ---- weights ------------------------------------------------------------------------------------------------

// Random weights (hash fill on the GPU): magnitudes like a trained OPT so activations stay finite.
int dj_fill_random(void* ev, unsigned seed) {
  Engine* e = (Engine*)ev;
  e->ln_folded = false;
  if (e->pfuse) e->groups_dirty = true;  // new LayerNorm gains: the fused-predictor plan is made again (plan_fused)
  uint64_t s = (uint64_t)seed << 20;
  int d = e->d, ffn = e->ffn;
  fill_h(e->E, (size_t)e->vocab * d, s++, 0.5f, 0.f);
  fill_h(e->P, (size_t)(e->maxpos + 2) * d, s++, 0.1f, 0.f);
  fill_f(e->lnf_g, d, s++, 0.1f, 1.f);
  fill_f(e->lnf_b, d, s++, 0.02f, 0.f);
  float sd = 1.f / sqrtf((float)d), sf = 1.f / sqrtf((float)ffn);
  for (auto& l : e->layers) {
    fill_f(l.ln1_g, d, s++, 0.1f, 1.f); fill_f(l.ln1_b, d, s++, 0.02f, 0.f);
    fill_f(l.ln2_g, d, s++, 0.1f, 1.f); fill_f(l.ln2_b, d, s++, 0.02f, 0.f);
    fill_f(l.bqkv, 3 * d, s++, 0.02f, 0.f); fill_f(l.bo, d, s++, 0.02f, 0.f);
    fill_f(l.b1, ffn, s++, 0.02f, 0.f); fill_f(l.b2, d, s++, 0.02f, 0.f);
    fill_h(l.Wqkv, 3 * (size_t)d * d, s++, sd, 0.f);
    fill_h(l.WoT, (size_t)d * d, s++, sd, 0.f);
    fill_h(l.W1, (size_t)ffn * d, s++, sd, 0.f);
    fill_h(l.W2T, (size_t)ffn * d, s++, sf, 0.f);
  }
  CK(cudaGetLastError());
  CK(cudaDeviceSynchronize());
  return 0;
}

enum Tensor {
  T_EMBED = 0, T_POS = 1, T_LNF_W = 2, T_LNF_B = 3, T_LM_HEAD = 4,
  T_LN1_W = 10, T_LN1_B, T_Q_W, T_Q_B, T_K_W, T_K_B, T_V_W, T_V_B, T_O_W, T_O_B, T_LN2_W, T_LN2_B, T_FC1_W,
  T_FC1_B, T_FC2_W, T_FC2_B
};

static int up_half(__half* dst, const float* src, size_t n, size_t rows = 0, size_t cols = 0) {
  std::vector<__half> tmp(n);
  if (rows) {  // transpose [rows][cols] -> [cols][rows]
    for (size_t r = 0; r < rows; r++)
      for (size_t c = 0; c < cols; c++) tmp[c * rows + r] = __float2half(src[r * cols + c]);
  } else {
    for (size_t i = 0; i < n; i++) tmp[i] = __float2half(src[i]);
  }
  CK(cudaMemcpy(dst, tmp.data(), n * sizeof(__half), cudaMemcpyHostToDevice));
  return 0;
}
static int up_float(float* dst, const float* src, size_t n) {
  CK(cudaMemcpy(dst, src, n * sizeof(float), cudaMemcpyHostToDevice));
  return 0;
}

// Upload one fp32 tensor of a checkpoint (nn.Linear layout); converted to fp16 and re-laid-out here.
int dj_upload(void* ev, int tensor, int layer, const float* data, long long n) {
  Engine* e = (Engine*)ev;
  e->ln_folded = false;  // weights or LayerNorm parameters change: the deferred-LN constants are recomputed before use
  size_t d = e->d, ffn = e->ffn, dd = d * d;
  auto want = [&](size_t m) { return (size_t)n == m ? 0 : fail("tensor %d layer %d: %lld values, expected %zu", tensor, layer, n, m); };
  if (tensor < 10) {
    switch (tensor) {
      case T_EMBED: if (e->pfuse) e->groups_dirty = true;  // layer 0's heads tables (pfuse.cuh head0)
        return want((size_t)e->vocab * d) || up_half(e->E, data, n);
      case T_POS: if (e->pfuse) e->groups_dirty = true;
        return want((size_t)(e->maxpos + 2) * d) || up_half(e->P, data, n);
      case T_LNF_W: return want(d) || up_float(e->lnf_g, data, n);
      case T_LNF_B: return want(d) || up_float(e->lnf_b, data, n);
      case T_LM_HEAD:
        if (want((size_t)e->vocab * d)) return -1;
        if (e->lm == e->E && dalloc(e, &e->lm, (size_t)e->vocab * d)) return -1;
        return up_half(e->lm, data, n);
    }
    return fail("unknown tensor %d", tensor);
  }
  if (layer < 0 || layer >= e->L) return fail("layer %d out of range", layer);
  Layer& l = e->layers[layer];
  switch (tensor) {
    case T_LN1_W: if (e->pfuse) e->groups_dirty = true;  // fused predictors depend on it (plan_fused)
      return want(d) || up_float(l.ln1_g, data, n);
    case T_LN1_B: return want(d) || up_float(l.ln1_b, data, n);
    case T_Q_W: return want(dd) || up_half(l.Wqkv, data, n);
    case T_K_W: return want(dd) || up_half(l.Wqkv + dd, data, n);
    case T_V_W: return want(dd) || up_half(l.Wqkv + 2 * dd, data, n);
    case T_Q_B: return want(d) || up_float(l.bqkv, data, n);
    case T_K_B: return want(d) || up_float(l.bqkv + d, data, n);
    case T_V_B: return want(d) || up_float(l.bqkv + 2 * d, data, n);
    case T_O_W: return want(dd) || up_half(l.WoT, data, n, d, d);
    case T_O_B: return want(d) || up_float(l.bo, data, n);
    case T_LN2_W: return want(d) || up_float(l.ln2_g, data, n);
    case T_LN2_B: return want(d) || up_float(l.ln2_b, data, n);
    case T_FC1_W: return want(ffn * d) || up_half(l.W1, data, n);
    case T_FC1_B: return want(ffn) || up_float(l.b1, data, n);
    case T_FC2_W: return want(ffn * d) || up_half(l.W2T, data, n, d, ffn);  // fc2 W [d][ffn] -> W2T [ffn][d]
    case T_FC2_B: return want(d) || up_float(l.b2, data, n);
  }
  return fail("unknown tensor %d", tensor);
}

// ---- sparsity ------------------------------------------------------------------------------------------------
// Fixed k per layer (what the graph is built for). k = H / ffn means dense.
int dj_set_k(void* ev, int layer, int kH, int kM) {
  Engine* e = (Engine*)ev;
  if (layer < 0 || layer >= e->L) return fail("layer %d out of range", layer);
  if (kH < 1 || kH > e->H || kM < 1 || kM > e->ffn) return fail("layer %d: k out of range (heads %d, neurons %d)", layer, kH, kM);
  e->layers[layer].kH = kH;
  e->layers[layer].kM = kM;
  return 0;
}

// Explicit selections (used by M_FIXED and by layers without a predictor). Indices must be distinct, in range.
int dj_set_selection(void* ev, int layer, const int* heads, int kH, const int* neurons, int kM) {
  Engine* e = (Engine*)ev;
  if (dj_set_k(ev, layer, kH, kM)) return -1;
  Layer& l = e->layers[layer];
  for (int i = 0; i < kH; i++) if (heads[i] < 0 || heads[i] >= e->H) return fail("layer %d: head %d out of range", layer, heads[i]);
  for (int i = 0; i < kM; i++) if (neurons[i] < 0 || neurons[i] >= e->ffn) return fail("layer %d: neuron %d out of range", layer, neurons[i]);
  CK(cudaMemcpy(l.hsel, heads, kH * sizeof(int), cudaMemcpyHostToDevice));
  CK(cudaMemcpy(l.nsel, neurons, kM * sizeof(int), cudaMemcpyHostToDevice));
  return 0;
}

int dj_get_selection(void* ev, int layer, int* heads, int* neurons) {
  Engine* e = (Engine*)ev;
  if (layer < 0 || layer >= e->L) return fail("layer %d out of range", layer);
  Layer& l = e->layers[layer];
  CK(cudaMemcpy(heads, l.hsel, l.kH * sizeof(int), cudaMemcpyDeviceToHost));
  CK(cudaMemcpy(neurons, l.nsel, l.kM * sizeof(int), cudaMemcpyDeviceToHost));
  return 0;
}

// The neuron groups of layer's MLP selection: G under the grouped top-k (DEJAVU_CUDA_PF_LOCAL=1) for a fused MLP
// predictor (the tap layer's attention grid), else 1 (one top-k over all neurons). Known once the graphs are built.
int dj_mlp_groups(void* ev, int layer) {
  Engine* e = (Engine*)ev;
  if (layer < 0 || layer >= e->L) { fail("layer %d out of range", layer); return -1; }
  const Layer& l = e->layers[layer];
  return e->pfuse && e->pf_local && l.pm.fused ? std::max(1, e->layers[l.pm.src_layer].fz.groups) : 1;
}

static int alloc_pred(Engine* e, Pred& p, int rank, int n, int tap, int src_layer) {
  if (rank < 8 || rank % 8 || rank > 1024) return fail("predictor rank %d: need a multiple of 8 in [8, 1024]", rank);
  if (src_layer < 0 || src_layer >= e->L) return fail("predictor source layer %d out of range", src_layer);
  if (!p.on || p.rank != rank) {
    if (dalloc(e, &p.w1, (size_t)rank * e->d) || dalloc(e, &p.w2, (size_t)n * rank) || dalloc(e, &p.t, rank) ||
        dalloc(e, &p.scores, n) || dalloc(e, &p.topk, 1))
      return -1;
    CK(cudaMemset(p.topk, 0, sizeof(TopkState)));
  }
  p.on = true; p.rank = rank; p.tap = tap; p.src_layer = src_layer;
  return 0;
}

// A low-rank predictor for (layer, target: 0 = attention heads, 1 = MLP neurons) reading the residual stream at
// (tap: 0 = att_in, 1 = mlp_in) of src_layer; w1 [rank][d], w2 [n][rank] fp32 (converted here), k = top-k;
// norm = 1: parameter-free LayerNorm of the input first. w1 = null: random weights (shape benchmarks).
int dj_set_predictor(void* ev, int layer, int target, int tap, int src_layer, const float* w1, const float* w2, int rank, int k,
                     int norm) {
  Engine* e = (Engine*)ev;
  if (layer < 0 || layer >= e->L) return fail("layer %d out of range", layer);
  if (src_layer > layer || (src_layer == layer && target == 0 && tap != TAP_ATT_IN))
    return fail("layer %d: predictor source (layer %d, tap %d) comes after its use", layer, src_layer, tap);
  Layer& l = e->layers[layer];
  Pred& p = target == 0 ? l.pa : l.pm;
  int n = target == 0 ? e->H : e->ffn;
  if (k < 1 || k > n) return fail("layer %d: k %d out of range", layer, k);
  if (alloc_pred(e, p, rank, n, tap, src_layer)) return -1;
  e->groups_dirty = true;
  p.norm = norm != 0;
  if (w1 && (up_half(p.w1, w1, (size_t)rank * e->d) || up_half(p.w2, w2, (size_t)n * rank))) return -1;
  if (!w1) {
    static uint64_t s = 777;
    fill_h(p.w1, (size_t)rank * e->d, s++ << 24, 1.f / sqrtf((float)e->d), 0.f);
    fill_h(p.w2, (size_t)n * rank, s++ << 24, 1.f / sqrtf((float)rank), 0.f);
    CK(cudaGetLastError());
  }
  if (target == 0) l.kH = k; else l.kM = k;
  return 0;
}

// KV policy for sparse attention: 0 = "selected" (skipped heads' slots masked later), 1 = "all" (K/V of every head
// projected each step). Takes effect at the next dj_build.
int dj_set_kv_policy(void* ev, int all) {
  ((Engine*)ev)->kv_all = all != 0;
  return 0;
}

// ---- state ---------------------------------------------------------------------------------------------------
int dj_set_prompt(void* ev, const int* ids, int n) {
  Engine* e = (Engine*)ev;
  if (n < 1 || n > e->maxT) return fail("prompt length %d out of range (1..%d)", n, e->maxT);
  for (int i = 0; i < n; i++) if (ids[i] < 0 || ids[i] >= e->vocab) return fail("token %d out of range", ids[i]);
  int st[2] = {0, n};  // st[2], the step serial, keeps counting (fused-predictor flags compare against it)
  CK(cudaMemcpy(e->tokens, ids, n * sizeof(int), cudaMemcpyHostToDevice));
  CK(cudaMemcpy(e->st, st, sizeof st, cudaMemcpyHostToDevice));
  for (auto& l : e->layers) CK(cudaMemset(l.valid, 0, (size_t)e->H * e->maxT));
  return 0;
}
// Rewind to `pos` (tokens[0..pos] kept): later steps overwrite the cache from there.
int dj_set_pos(void* ev, int pos) {
  Engine* e = (Engine*)ev;
  if (pos < 0 || pos >= e->maxT) return fail("pos %d out of range", pos);
  CK(cudaMemcpy(e->st, &pos, sizeof(int), cudaMemcpyHostToDevice));
  // Forget K/V validity from pos on, so a rewound sparse run never attends to another run's entries.
  for (auto& l : e->layers) CK(cudaMemset2D(l.valid + pos, e->maxT, 0, e->maxT - pos, e->H));
  return 0;
}
int dj_get_state(void* ev, int* pos, int* tokens, int n) {
  Engine* e = (Engine*)ev;
  CK(cudaMemcpy(pos, e->st, sizeof(int), cudaMemcpyDeviceToHost));
  if (n > 0) CK(cudaMemcpy(tokens, e->tokens, std::min(n, e->maxT + 1) * sizeof(int), cudaMemcpyDeviceToHost));
  return 0;
}
int dj_get_logits(void* ev, float* out) {
  Engine* e = (Engine*)ev;
  CK(cudaMemcpy(out, e->logits, e->vocab * sizeof(float), cudaMemcpyDeviceToHost));
  return 0;
}

}  // extern "C"

// ---- launches ------------------------------------------------------------------------------------------------
static int rows_blocks(Engine* e, const void* kern, int n_out, int K, int* wpr, int* lpr) {
  int nvec = K / 8;
  *lpr = 32;
  *wpr = 1;
  int per_sm = 1;
  cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kern, WARPS * 32, 0);
  per_sm = std::max(per_sm, 1);
  long long resident_warps = (long long)e->sms * per_sm * WARPS;
  if (nvec < 32) { int p = 1; while (p < nvec) p <<= 1; *lpr = p; }
  // Few rows: split each row over more warps (fewer dependent round trips per lane) while the grid still fits.
  else while (*wpr < 8 && (long long)n_out * *wpr * 2 <= resident_warps * e->rows_waves) *wpr <<= 1;
  int rpb = (WARPS / *wpr) * (32 / *lpr);
  int need = (n_out + rpb - 1) / rpb;
  int cap = e->sms * per_sm;
  int rounds = (need + cap - 1) / cap;
  return (need + rounds - 1) / rounds;
}

// Launch on a stream, with programmatic dependent launch when `pdl`, in clusters of `cl` blocks when cl > 1.
template <typename... KArgs, typename... Args>
static void launch_cl(bool pdl, int cl, void (*k)(KArgs...), dim3 g, dim3 b, size_t smem, cudaStream_t s, Args... args) {
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = g;
  cfg.blockDim = b;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = s;
  cudaLaunchAttribute at[2];
  int n = 0;
  if (pdl) {
    at[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at[n++].val.programmaticStreamSerializationAllowed = 1;
  }
  if (cl > 1) {
    at[n].id = cudaLaunchAttributeClusterDimension;
    at[n].val.clusterDim.x = cl; at[n].val.clusterDim.y = 1; at[n].val.clusterDim.z = 1;
    n++;
  }
  cfg.attrs = n ? at : nullptr;
  cfg.numAttrs = n;
  cudaLaunchKernelEx(&cfg, k, args...);
}
template <typename... KArgs, typename... Args>
static void launch_ex(bool pdl, void (*k)(KArgs...), dim3 g, dim3 b, size_t smem, cudaStream_t s, Args... args) {
  launch_cl(pdl, 1, k, g, b, smem, s, args...);
}
// Main-stream kernels after another kernel: PDL when asked and the graph being recorded allows it.
template <typename... KArgs, typename... Args>
static void launchk(Engine* e, bool pdl, void (*k)(KArgs...), dim3 g, dim3 b, size_t smem, cudaStream_t s, Args... args) {
  launch_ex(pdl && e->pdl && e->pdl_now, k, g, b, smem, s, args...);
}

template <int EPI>
static void launch_rows(Engine* e, cudaStream_t s, RowsArgs a, bool pdl = false) {
  int grid = rows_blocks(e, (const void*)k_rows<EPI>, a.n_out, a.K, &a.wpr, &a.lpr);
  a.prefetch = (double)a.n_out * a.K * 2 <= 24e6;  // the whole GEMV fits in L2 several times over
  launchk(e, pdl, k_rows<EPI>, dim3(grid), dim3(WARPS * 32), 0, s, a);
}

static void launch_cols(Engine* e, cudaStream_t s, ColsArgs a, bool pdl = false) {
  const int nv = a.n_cols / 8, threads = cols_threads(a.n_cols);
  const int tiles = (nv + threads - 1) / threads;
  int per_sm = 1;
  cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, k_cols, threads, 0);
  // One wave of blocks: rows per chunk so that chunks x tiles fill the resident slots (x the tuning factor).
  long long target = (long long)e->sms * std::max(per_sm, 1) * (a.map == MAP_ID ? e->cols_bps : e->cols_bps_sparse);
  int R = (int)(((long long)a.n_rows * tiles + target - 1) / target);
  R = std::min(256, std::max(8, (R + 7) / 8 * 8));
  a.R = R;
  dim3 grid(tiles, (a.n_rows + R - 1) / R);
  launchk(e, pdl, k_cols, grid, dim3(threads), 0, s, a);
}

static void launch_attention(Engine* e, cudaStream_t s, Layer& l, const int* sel, int nh, bool pdl = false) {
  size_t smem = (size_t)att_state_floats(e->hd, ATT_THREADS / 32) * sizeof(float);
  const float* q = e->q;
  const __half *kc = l.kc, *vc = l.vc;
  const uint8_t* valid = l.valid;
  const int* st = e->st;
  float* att = e->att;
  int maxT = e->maxT;
  if (e->hd == 128) launchk(e, pdl, k_attention<128>, dim3(nh), dim3(ATT_THREADS), smem, s, q, kc, vc, valid, sel, st, maxT, att);
  else if (e->hd == 64) launchk(e, pdl, k_attention<64>, dim3(nh), dim3(ATT_THREADS), smem, s, q, kc, vc, valid, sel, st, maxT, att);
  else launchk(e, pdl, k_attention<32>, dim3(nh), dim3(ATT_THREADS), smem, s, q, kc, vc, valid, sel, st, maxT, att);
}

static void launch_pred1(Engine* e, cudaStream_t s, const __half* w1, int rows, bool norm, float* t, const __half* xin) {
  RowsArgs a{};
  a.W = w1; a.K = e->d; a.n_out = rows; a.x = xin ? xin : norm ? e->xp : e->xr; a.map = MAP_ID; a.y = t;
  launch_rows<EPI_PLAIN>(e, s, a);
}
// Predictor kernels on a side stream; `pdl`: right after a kernel of the same chain on the same stream (e->pred_pdl).
template <typename... KArgs, typename... Args>
static void launch_side(Engine* e, bool pdl, void (*k)(KArgs...), dim3 g, dim3 b, size_t smem, cudaStream_t s, Args... args) {
  launch_ex(pdl && e->pred_pdl, k, g, b, smem, s, args...);
}
// Scores + top-k of one predictor; after_t: launched right after the kernel that wrote its t on this stream.
static void launch_topk(Engine* e, cudaStream_t s, Pred& p, const float* t, int n, int k, int* sel, bool after_t = false) {
  TopkArgs a{};
  a.W2 = p.w2; a.t = t; a.n = n; a.r = p.rank; a.k = k;
  a.lpr = 1;  // lanes per row: a power of two (shuffle reduction), at most 32, at least the row's 16-byte vectors
  while (a.lpr < std::min(32, p.rank / 8)) a.lpr <<= 1;
  a.scores = p.scores; a.sel = sel; a.s = p.topk;
  const int U = e->pred_unroll >= 8 ? 8 : e->pred_unroll >= 4 ? 4 : e->pred_unroll >= 2 ? 2 : 1;
  int rpb = (TOPK_THREADS / 32) * (32 / a.lpr) * U;
  // at most 2 blocks an SM on all SMs, or (pred_avail) on those the streamed kernels leave free
  const int avail = e->pred_avail && e->sms_now > 0 && e->sms_now < e->sms ? e->sms - e->sms_now : e->sms;
  int grid = std::min((n + rpb - 1) / rpb, avail * 2);
  auto ks = U == 8 ? k_pred_scores<8> : U == 4 ? k_pred_scores<4> : U == 2 ? k_pred_scores<2> : k_pred_scores<1>;
  if (!(e->pred_skip & 2)) launch_side(e, after_t, ks, dim3(grid), dim3(TOPK_THREADS), 0, s, a);
  if (n > TOPK_THREADS && !(e->pred_skip & 4))
    launch_side(e, true, k_topk_select, dim3((n + TOPK_THREADS - 1) / TOPK_THREADS), dim3(TOPK_THREADS), 0, s, a);
}

// ---- streamed path (fused.cuh) ----------------------------------------------------------------------------------
// Geometry for a row kernel over rows of K elements, `per` rows per block: segments of at most seg_bytes (whole
// 16-byte vectors), stages of min(TW, per) row segments, as many stages as the ring holds (at most T_MAX_STAGES).
// k_mlp_tma's fc2 phase gives each consumer thread one 16-byte vector of a segment: segment <= 16 * 32 * NW bytes.
static int tw_for(Engine* e, int K) { return e->tw == 8 && 2 * K / T_SEGMAX <= 16 * 32 * 8 ? 8 : 16; }
static TGeo make_geo(Engine* e, int K, int per) {
  const int tw = tw_for(e, K);
  const int target = std::min(e->seg_bytes, 16 * 32 * tw);
  int seg = std::max(1, (2 * K + target - 1) / target);
  while (seg < T_SEGMAX && K % (8 * seg)) seg++;
  seg = std::min(seg, T_SEGMAX);
  while (K % (8 * seg)) seg--;  // K % 8 == 0, so this ends at 1 at the latest
  const int segb = 2 * K / seg;
  const int ring = std::min(e->ring_bytes, e->smem_optin - 4 * K - 8192);
  auto in_flight = [&](int r) { return std::min(T_MAX_STAGES, ring / (r * segb)) * r * segb; };
  int rows = std::max(1, std::min(tw, per));
  if (e->rows_cap > 0) rows = std::min(rows, e->rows_cap);
  else if (per > 2 * tw)  // long streams: a stage of 3/4 tw..tw rows that puts >= 5% more bytes in the ring
    for (int r = tw - 1; r >= 3 * tw / 4; r--)
      if (in_flight(r) > in_flight(rows) * 21 / 20) rows = r;
  return TGeo{seg, std::max(1, std::min(T_MAX_STAGES, ring / (rows * segb))), rows, e->lead, e->rowix_now};
}
static size_t geo_smem(const TGeo& g, int K) { return (size_t)K * 4 + (size_t)g.S * g.rows * (2 * K / g.seg); }

template <int EPI>
static void launch_rows_tma(Engine* e, cudaStream_t s, RowsArgs a, XIn in, bool pdl) {
  const int grid = std::min(e->sms_now, a.n_out + a.pn);
  const TGeo g = make_geo(e, a.K, (a.n_out + a.pn + grid - 1) / grid);
  const size_t smem = geo_smem(g, a.K);
  const bool pf = EPI == EPI_QKV && (a.pn || a.sel_flag);  // fused predictors: their own instantiation
  if (pf && tw_for(e, a.K) == 8) launchk(e, pdl, k_rows_tma<EPI, 8, true>, dim3(grid), dim3(t_threads(8)), smem, s, a, in, g);
  else if (pf) launchk(e, pdl, k_rows_tma<EPI, 16, true>, dim3(grid), dim3(t_threads(16)), smem, s, a, in, g);
  else if (tw_for(e, a.K) == 8) launchk(e, pdl, k_rows_tma<EPI, 8>, dim3(grid), dim3(t_threads(8)), smem, s, a, in, g);
  else launchk(e, pdl, k_rows_tma<EPI, 16>, dim3(grid), dim3(t_threads(16)), smem, s, a, in, g);
}
static void launch_mlp_tma(Engine* e, cudaStream_t s, MlpTmaArgs a, XIn in, bool pdl) {
  int grid = std::min(e->sms_now, a.n);
  // The reduction by bulk copies (16 consumer warps; 16-byte copies of d / 2 floats need d % 8 == 0) in single blocks
  // unless pairs are asked for; with atomics pairs for neuron lists only (the dense MLP, ~95 us of streaming, measured
  // 0.2-0.4% slower with them).
  const bool bulk = e->mlp_bulk && tw_for(e, a.d) == 16 && a.d % 8 == 0;
  const bool pair = (e->mlp_cluster == 2 || (e->mlp_cluster == 0 && !bulk)) && a.sel && tw_for(e, a.d) == 16 && grid >= 2;
  if (pair) grid &= ~1;
  TGeo g = make_geo(e, a.d, (a.n + grid - 1) / grid);
  if (e->mlp_nored) g.rowix |= 4;
  if (bulk) g.rowix |= 8;
  const size_t smem = geo_smem(g, a.d);
  // The fused graph with no side-stream predictors (the grouped mode since v35) needs no room left beside this
  // kernel, so its MLP may use 96 registers instead of 72 (no spills): 13B (rows of 2 segments) 1.532-1.534 ->
  // 1.517-1.522 ms on an H200, but 30B (4 segments) 3.037 -> 3.088, so only up to 2 segments (s18 calls C, D).
  const bool wide = a.sel_flag && !pair && tw_for(e, a.d) == 16 && g.seg <= 2 && e->groups_side.empty();
  if (wide) launchk(e, pdl, k_mlp_tma<16, true, 1, 96>, dim3(grid), dim3(t_threads(16)), smem, s, a, in, g);
  else if (a.sel_flag && tw_for(e, a.d) == 8) launchk(e, pdl, k_mlp_tma<8, true>, dim3(grid), dim3(t_threads(8)), smem, s, a, in, g);
  else if (a.sel_flag && pair) launch_cl(pdl && e->pdl && e->pdl_now, 2, k_mlp_tma<16, true, 2>, dim3(grid), dim3(t_threads(16)), smem, s, a, in, g);
  else if (a.sel_flag) launchk(e, pdl, k_mlp_tma<16, true>, dim3(grid), dim3(t_threads(16)), smem, s, a, in, g);
  else if (tw_for(e, a.d) == 8) launchk(e, pdl, k_mlp_tma<8>, dim3(grid), dim3(t_threads(8)), smem, s, a, in, g);
  else if (pair) launch_cl(pdl && e->pdl && e->pdl_now, 2, k_mlp_tma<16, false, 2>, dim3(grid), dim3(t_threads(16)), smem, s, a, in, g);
  else launchk(e, pdl, k_mlp_tma<16>, dim3(grid), dim3(t_threads(16)), smem, s, a, in, g);
}
// Attention + out_proj: `slices` column slices per head so that heads x slices fill the SMs once; R rows of a slice
// per stage (<= 32 KB), as many stages as the ring holds.
static int attn_slices(const Engine* e, int nheads) { return std::max(1, std::min(e->d / 8, e->sms_now / nheads)); }
static void launch_attn_out(Engine* e, cudaStream_t s, AttnOutArgs a, int nheads, bool pdl) {
  const int hd = e->hd, nv = e->d / 8;
  a.slices = attn_slices(e, nheads);
  const int rowbytes = (nv + a.slices - 1) / a.slices * 16;
  int R = hd;
  while (R > 1 && R * rowbytes > 32768) R /= 2;
  const int tw = tw_for(e, e->d);
  const int att = att_state_floats(hd, tw) * 4;
  const dim3 grid(nheads * a.slices), block(t_threads(tw) + (a.pf.on ? 32 * a.pf.pw : 0));
  unsigned pfb = 0;  // the fused predictors' warp: its slice of the big member's w2 rows and its work space
  if (a.pf.on) {
    a.pf.per = a.pf.nbig ? (a.pf.big.n + (int)grid.x - 1) / (int)grid.x : 0;
    pfb = pf_layout(a.pf).bytes;
  }
  const int ring = std::min(e->ring_bytes, e->smem_optin - att - 8192 - (int)pfb);
  while (R > 1 && R * rowbytes > ring) R /= 2;
  a.R = R;
  a.S = std::max(1, std::min({T_MAX_STAGES, hd / R, ring / (R * rowbytes)}));
  a.lead = e->lead_att;
  size_t smem = (size_t)att + (size_t)a.S * R * rowbytes;
  if (a.pf.on) {
    a.pf.smem_off = (unsigned)((smem + 127) & ~(size_t)127);
    smem = a.pf.smem_off + pfb;
  }
  auto go = [&](auto k) { launchk(e, pdl, k, grid, block, smem, s, a); };
  const bool pf = a.pf.on || a.sel_flag;  // fused predictors: their own instantiation (k_rows_tma says why)
  if (tw == 8) {
    if (hd == 128) pf ? go(k_attn_out<128, 8, true>) : go(k_attn_out<128, 8>);
    else if (hd == 64) pf ? go(k_attn_out<64, 8, true>) : go(k_attn_out<64, 8>);
    else pf ? go(k_attn_out<32, 8, true>) : go(k_attn_out<32, 8>);
  } else {
    if (hd == 128) pf ? go(k_attn_out<128, 16, true>) : go(k_attn_out<128, 16>);
    else if (hd == 64) pf ? go(k_attn_out<64, 16, true>) : go(k_attn_out<64, 16>);
    else pf ? go(k_attn_out<32, 16, true>) : go(k_attn_out<32, 16>);
  }
}
// The residual stream at point r (fused.cuh header): X[r-1] + D[r] (X[0] alone at r = 0).
static XIn point_in(Engine* e, int r, const float* g, const float* b, int norm, bool materialise) {
  const size_t d = e->d;
  XIn in{};
  in.base = r == 0 ? e->X : e->X + (r - 1) * d;
  in.delta = r == 0 ? nullptr : e->D + r * d;
  in.delta2 = e->dcopy && r > 0 && r % 2 == 0 ? e->D + (2 * e->L + 1 + r) * d : nullptr;  // an MLP output (dcopy)
  in.out = materialise && r > 0 ? e->X + r * d : nullptr;
  in.g = g; in.b = b; in.eps = e->eps; in.norm = norm;
  in.tr = e->tr_next >= 0 ? e->tr_next++ : -1;
  return in;
}
static int pf_prep(Engine* e);
// The deferred LayerNorm's constants of every streamed row kernel that normalises its input (QKV, fc1, LM head).
static int fold_ln(Engine* e) {
  if (!e->tma || !e->ln_defer || e->ln_folded) return 0;
  auto fold = [&](const __half* W, int rows, const float* g, const float* b, float** c1, float** c2) -> int {
    if (!*c1 && (dalloc(e, c1, rows) || dalloc(e, c2, rows))) return -1;
    k_ln_fold<<<(rows + 7) / 8, 256>>>(W, rows, e->d, g, b, *c1, *c2);
    return 0;
  };
  for (auto& l : e->layers)
    if (fold(l.Wqkv, 3 * e->d, l.ln1_g, l.ln1_b, &l.c1q, &l.c2q) || fold(l.W1, e->ffn, l.ln2_g, l.ln2_b, &l.c1m, &l.c2m))
      return -1;
  if (fold(e->lm, e->vocab, e->lnf_g, e->lnf_b, &e->c1lm, &e->c2lm)) return -1;
  if (pf_prep(e)) return -1;  // the fused predictors' w1 carry 1 / ln1_g
  CK(cudaDeviceSynchronize());
  e->ln_folded = true;
  return 0;
}
// An input point with the deferred LayerNorm's constants (when on).
static XIn folded(Engine* e, XIn in, const float* c1, const float* c2) {
  if (e->ln_defer && c1) { in.c1 = c1; in.c2 = c2; }
  return in;
}
static int set_tma_attrs(Engine* e) {
  auto raise = [&](const void* k) -> int {
    cudaFuncAttributes at;
    CK(cudaFuncGetAttributes(&at, k));
    CK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, e->smem_optin - (int)at.sharedSizeBytes));
    return 0;
  };
  if (raise((const void*)k_rows_tma<EPI_QKV, 16>) || raise((const void*)k_rows_tma<EPI_ARGMAX, 16>) ||
      raise((const void*)k_mlp_tma<16>) || raise((const void*)k_mlp_tma<16, false, 2>) || raise((const void*)k_attn_out<128, 16>) ||
      raise((const void*)k_attn_out<64, 16>) || raise((const void*)k_attn_out<32, 16>) ||
      raise((const void*)k_rows_tma<EPI_QKV, 8>) || raise((const void*)k_rows_tma<EPI_ARGMAX, 8>) ||
      raise((const void*)k_mlp_tma<8>) || raise((const void*)k_attn_out<128, 8>) ||
      raise((const void*)k_attn_out<64, 8>) || raise((const void*)k_attn_out<32, 8>) ||
      raise((const void*)k_rows_tma<EPI_QKV, 16, true>) || raise((const void*)k_rows_tma<EPI_QKV, 8, true>) ||
      raise((const void*)k_mlp_tma<16, true>) || raise((const void*)k_mlp_tma<8, true>) || raise((const void*)k_mlp_tma<16, true, 2>) ||
      raise((const void*)k_mlp_tma<16, true, 1, 96>) ||
      raise((const void*)k_attn_out<128, 16, true>) || raise((const void*)k_attn_out<64, 16, true>) ||
      raise((const void*)k_attn_out<32, 16, true>) || raise((const void*)k_attn_out<128, 8, true>) ||
      raise((const void*)k_attn_out<64, 8, true>) || raise((const void*)k_attn_out<32, 8, true>))
    return -1;
  return 0;
}

// Persistent dense step: one block per resident slot (all co-resident: the grid barrier needs it). Returns the grid.
static int step_grid(Engine* e) {
  int per_sm = 0;
  size_t smem = pl_smem_bytes(e->hd, e->d);
  if (e->hd == 128) cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, k_step_dense<128>, PL_THREADS, smem);
  else if (e->hd == 64) cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, k_step_dense<64>, PL_THREADS, smem);
  else cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, k_step_dense<32>, PL_THREADS, smem);
  return e->sms * per_sm;
}
// The per-layer arguments of k_step_dense, in device memory (before any capture: a copy cannot be captured).
static int prep_step_args(Engine* e) {
  if (!e->persist) return 0;
  if (!e->step_args && dalloc(e, &e->step_args, e->L)) return -1;
  std::vector<LayerArgs> v(e->L);
  for (int li = 0; li < e->L; li++) {
    Layer& l = e->layers[li];
    LayerArgs& a = v[li];
    a.Wqkv = l.Wqkv; a.WoT = l.WoT; a.W1 = l.W1; a.W2T = l.W2T;
    a.bqkv = l.bqkv; a.bo = l.bo; a.b1 = l.b1; a.b2 = l.b2;
    a.ln1_g = l.ln1_g; a.ln1_b = l.ln1_b; a.ln2_g = l.ln2_g; a.ln2_b = l.ln2_b;
    a.kc = l.kc; a.vc = l.vc; a.valid = l.valid;
    a.d = e->d; a.H = e->H; a.ffn = e->ffn; a.maxT = e->maxT; a.eps = e->eps; a.q_scale = 1.f / sqrtf((float)e->hd);
    a.x = e->x; a.q = e->q; a.att = e->att; a.h = e->h; a.st = e->st; a.bar = e->grid_bar;
    a.pf = e->persist_pf; a.skip = e->persist_skip;
  }
  CK(cudaMemcpy(e->step_args, v.data(), v.size() * sizeof(LayerArgs), cudaMemcpyHostToDevice));
  return 0;
}
static void launch_step_dense(Engine* e, cudaStream_t s, int grid) {
  size_t smem = pl_smem_bytes(e->hd, e->d);
  const LayerArgs* la = e->step_args;
  int L = e->L;
  // No programmatic launch: every block must find a free slot, so the previous kernel must be gone.
  if (e->hd == 128) launchk(e, false, k_step_dense<128>, dim3(grid), dim3(PL_THREADS), smem, s, la, L);
  else if (e->hd == 64) launchk(e, false, k_step_dense<64>, dim3(grid), dim3(PL_THREADS), smem, s, la, L);
  else launchk(e, false, k_step_dense<32>, dim3(grid), dim3(PL_THREADS), smem, s, la, L);
}

// The persistent sparse step's arguments (step.cuh) for the current k per layer, in device memory (before any
// capture). Leaves pstep_ok false for what it does not cover (per-op path, LayerNorm in the prologue, KV policy
// "all", 8 consumer warps, more selected heads than SMs): those builds keep the 3-kernel graph.
template <int HD>
static int prep_pstep_hd(Engine* e) {
  const int W = e->sms, d = e->d, L = e->L;
  const void* kern = (const void*)k_step_sparse<HD, PSTEP_NW>;
  int seg = std::max(1, (2 * d + e->seg_bytes - 1) / e->seg_bytes);
  while (seg < T_SEGMAX && d % (8 * seg)) seg++;
  seg = std::min(seg, T_SEGMAX);
  while (d % (8 * seg)) seg--;
  const int segb = 2 * d / seg;
  if (segb > 16 * 32 * PSTEP_NW) return 0;  // t_mlp_consume: one 16-byte vector of a segment per consumer thread
  const int area = (std::max({d * 4, att_state_floats(HD, PSTEP_NW) * 4, PSTEP_NW * 32 * 8 * 4}) + 127) & ~127;
  cudaFuncAttributes at;
  CK(cudaFuncGetAttributes(&at, kern));
  const int ring = std::min(e->ring_bytes, e->smem_optin - (int)at.sharedSizeBytes - area);
  int S = e->pstep_stages, SB = (ring / S) & ~127;
  while (S > 2 && SB < segb) SB = (ring / --S) & ~127;
  if (SB < segb) {
    fprintf(stderr, "dejavu-cuda: persistent sparse step: ring %d B < 2 segments: 3-kernel graph used\n", ring);
    return 0;
  }
  const int rmax = std::min(PSTEP_NW, SB / segb);
  auto rows_for = [&](int per) {  // rows per stage: at most rmax, groups of equal size
    if (per <= 0) return 1;
    const int ng = (per + rmax - 1) / rmax;
    return (per + ng - 1) / ng;
  };
  std::vector<SLayer> v(L);
  for (int li = 0; li < L; li++) {
    Layer& l = e->layers[li];
    SLayer& y = v[li];
    if (l.kH > W || !l.c1q || !l.c1m) {
      fprintf(stderr, "dejavu-cuda: persistent sparse step: layer %d has %d heads for %d blocks: 3-kernel graph used\n",
              li, l.kH, W);
      return 0;
    }
    y.Wqkv = l.Wqkv; y.WoT = l.WoT; y.W1 = l.W1; y.W2T = l.W2T; y.bqkv = l.bqkv; y.bo = l.bo; y.b1 = l.b1; y.b2 = l.b2;
    y.ln1_g = l.ln1_g; y.ln2_g = l.ln2_g; y.c1q = l.c1q; y.c2q = l.c2q; y.c1m = l.c1m; y.c2m = l.c2m;
    y.kc = l.kc; y.vc = l.vc; y.valid = l.valid;
    y.hsel = l.kH < e->H ? l.hsel : nullptr; y.nsel = l.kM < e->ffn ? l.nsel : nullptr; y.kH = l.kH; y.kM = l.kM;
    y.rq = rows_for((3 * l.kH * HD + W - 1) / W);
    y.rm = rows_for((l.kM + W - 1) / W);
    y.slices = std::max(1, std::min(d / 8, W / l.kH));
    const int nvmax = (d / 8 + y.slices - 1) / y.slices;
    y.R = HD;
    while (y.R > 1 && y.R * nvmax * 16 > SB) y.R /= 2;
  }
  if (!e->pslayers && (dalloc(e, &e->pslayers, L) || dalloc(e, &e->psync, 3 * L))) return -1;
  CK(cudaMemcpy(e->pslayers, v.data(), L * sizeof(SLayer), cudaMemcpyHostToDevice));
  StepArgs& a = e->pargs;
  a = StepArgs{};
  a.layers = e->pslayers; a.L = L; a.d = d; a.hd = HD; a.maxT = e->maxT; a.eps = e->eps; a.q_scale = 1.f / sqrtf((float)HD);
  a.X = e->X; a.D = e->D; a.q = e->q; a.st = e->st; a.sync = e->psync; a.W = W;
  a.seg = seg; a.S = S; a.stage_bytes = SB; a.area = area; a.nosync = e->pstep_nosync;
  e->psmem = (size_t)area + (size_t)S * SB;
  CK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)e->psmem));
  int per_sm = 0;
  CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kern, t_threads(PSTEP_NW), e->psmem));
  e->pstep_ok = per_sm >= 1;
  if (!e->pstep_ok)
    fprintf(stderr, "dejavu-cuda: persistent sparse step not resident (%zu B shared, %d registers): 3-kernel graph used\n",
            e->psmem, at.numRegs);
  return 0;
}
static int prep_pstep(Engine* e) {
  e->pstep_ok = false;
  if (!e->pstep) return 0;
  if (!e->tma || !e->ln_defer || e->kv_all || e->tw != 16) {
    fprintf(stderr, "dejavu-cuda: persistent sparse step needs the streamed path, deferred LayerNorm, KV policy "
                    "\"selected\" and 16 consumer warps: 3-kernel graph used\n");
    return 0;
  }
  return e->hd == 128 ? prep_pstep_hd<128>(e) : e->hd == 64 ? prep_pstep_hd<64>(e) : prep_pstep_hd<32>(e);
}
// One cooperative launch: every block must be resident at once (the grid counters spin).
static int launch_pstep(Engine* e, cudaStream_t s) {
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3(e->pargs.W);
  cfg.blockDim = dim3(t_threads(PSTEP_NW));
  cfg.dynamicSmemBytes = e->psmem;
  cfg.stream = s;
  cudaLaunchAttribute at[1];
  at[0].id = cudaLaunchAttributeCooperative;
  at[0].val.cooperative = 1;
  cfg.attrs = at;
  cfg.numAttrs = 1;
  cudaError_t r = e->hd == 128 ? cudaLaunchKernelEx(&cfg, k_step_sparse<128, PSTEP_NW>, e->pargs)
                  : e->hd == 64 ? cudaLaunchKernelEx(&cfg, k_step_sparse<64, PSTEP_NW>, e->pargs)
                                : cudaLaunchKernelEx(&cfg, k_step_sparse<32, PSTEP_NW>, e->pargs);
  if (r != cudaSuccess) return fail("persistent sparse step launch (%d blocks, %zu B shared): %s", e->pargs.W, e->psmem, cudaGetErrorString(r));
  return 0;
}

// Stack the w1 of predictors that read the same tap (one GEMV for all of them); skip_fused: leave out those that
// ride in the main kernels (the sparse graph's side groups).
static int make_groups(Engine* e, std::vector<Group>& out, bool skip_fused) {
  out.clear();
  for (int li = 0; li < e->L; li++)
    for (int tg = 0; tg < 2; tg++) {
      Pred& p = tg == 0 ? e->layers[li].pa : e->layers[li].pm;
      if (!p.on || (skip_fused && p.fused)) continue;
      Group* g = nullptr;
      for (auto& gg : out)
        if (gg.tap == p.tap && gg.layer == p.src_layer && gg.norm == p.norm) g = &gg;
      if (!g) {
        out.push_back(Group{});
        g = &out.back();
        g->tap = p.tap; g->layer = p.src_layer; g->norm = p.norm;
      }
      g->members.push_back({li, tg});
      g->rows += p.rank;
    }
  for (auto& g : out) {
    if (dalloc(e, &g.xh, e->d)) return -1;
    if (e->gm && e->green_chain) {  // k_pred_chain's state (2 MiB: double-buffered 16-bit histograms), green only
      if (dalloc(e, &g.cs, 1)) return -1;
      CK(cudaMemset(g.cs, 0, sizeof(ChainState)));
    }
    if (g.members.size() == 1) continue;  // single predictor: its own w1 and t
    if (dalloc(e, &g.w1, (size_t)g.rows * e->d) || dalloc(e, &g.t, g.rows)) return -1;
    int off = 0;
    for (auto [li, tg] : g.members) {
      Pred& p = tg == 0 ? e->layers[li].pa : e->layers[li].pm;
      CK(cudaMemcpy(g.w1 + (size_t)off * e->d, p.w1, (size_t)p.rank * e->d * sizeof(__half), cudaMemcpyDeviceToDevice));
      off += p.rank;
    }
  }
  return 0;
}
// The fused predictors' first layers for the current weights: w1 / ln1_g and sum(w1) (k_pf_prep).
static int pf_prep(Engine* e) {
  if (!e->fused_any) return 0;
  if (e->head0) {  // layer 0's heads tables (pfuse.cuh head0), fp32: vocab x H and positions x H
    const Pred& p0 = e->layers[0].pa;
    const int np = e->maxpos + 2;
    if (!e->h0E && (dalloc(e, &e->h0E, (size_t)e->vocab * e->H) || dalloc(e, &e->h0P, (size_t)np * e->H))) return -1;
    k_head0_table<<<(e->vocab + 7) / 8, 256>>>(e->E, e->vocab, e->d, p0.w1, p0.rank, p0.w2, e->H, p0.norm, e->h0E);
    k_head0_table<<<(np + 7) / 8, 256>>>(e->P, np, e->d, p0.w1, p0.rank, p0.w2, e->H, p0.norm, e->h0P);
    CK(cudaGetLastError());
  }
  CK(cudaMemset(e->pf_bad, 0, sizeof(unsigned)));
  for (int l = 0; l < e->L; l++) {
    Fuse& f = e->layers[l].fz;
    if (!f.on) continue;
    int off = 0;
    for (auto [li, tg] : f.members) {
      Pred& p = tg == 0 ? e->layers[li].pa : e->layers[li].pm;
      k_pf_prep<<<(p.rank + 7) / 8, 256>>>(p.w1, p.rank, e->d, e->layers[l].ln1_g, f.w1p + (size_t)off * e->d, f.c1 + off,
                                          e->pf_bad);
      off += p.rank;
    }
  }
  unsigned bad = 0;
  CK(cudaMemcpy(&bad, e->pf_bad, sizeof bad, cudaMemcpyDeviceToHost));
  if (bad)
    return fail("fused predictors: %u first-layer weights divided by a LayerNorm gain leave the fp16 range (a gain near "
                "zero); run dj_build again after changing weights, or set DEJAVU_CUDA_PFUSE=0", bad);
  return 0;
}
// Decide which predictors ride in the main kernels (pfuse.cuh): tap att_in(l), selection used at the MLP of l or
// later, at most one big (n > PF_SMALL_MAX) and PF_MAX_SMALL small ones per tap layer, streamed path with the
// deferred LayerNorm, and layer l's LayerNorm gain away from zero (the w1 rows are stored divided by it).
static int plan_fused(Engine* e) {
  e->fused_any = false;
  std::vector<float> g(e->d);
  for (int l = 0; l < e->L; l++) {
    Layer& src = e->layers[l];
    src.fz.on = false;
    src.fz.members.clear();
    src.fz.rows = 0;
  }
  for (auto& l : e->layers) { l.pa.fused = false; l.pm.fused = false; }
  if (!e->pfuse || !e->tma || !e->ln_defer) return 0;
  std::vector<int> nbig(e->L, 0), nsmall(e->L, 0), gain_ok(e->L, -1);
  for (int li = 0; li < e->L; li++)
    for (int tg = 1; tg >= 0; tg--) {  // MLP first: a layer's big member is its own MLP predictor
      Pred& p = tg == 0 ? e->layers[li].pa : e->layers[li].pm;
      const int l = p.src_layer;
      if (!p.on || p.tap != TAP_ATT_IN || (tg == 0 ? li < l + 1 : li < l)) continue;
      const int n = tg == 0 ? e->H : e->ffn;
      const bool big = n > PF_SMALL_MAX;
      // A big member rides only with the grouped top-k (pf_local); its exact top-k runs on the side-stream chain.
      if (big ? nbig[l] >= 1 || e->pfuse_small || !e->pf_local : nsmall[l] >= PF_MAX_SMALL) continue;
      if (gain_ok[l] < 0) {
        CK(cudaMemcpy(g.data(), e->layers[l].ln1_g, e->d * sizeof(float), cudaMemcpyDeviceToHost));
        gain_ok[l] = 1;
        for (float v : g) if (!(std::fabs(v) >= 1e-3f)) gain_ok[l] = 0;
      }
      if (!gain_ok[l]) continue;
      (big ? nbig[l] : nsmall[l])++;
      p.fused = true;
      Fuse& f = e->layers[l].fz;
      f.on = true;
      f.members.push_back({li, tg});
      f.rows += p.rank;
      e->fused_any = true;
    }
  // Layer 0's heads from tables (pfuse.cuh head0): its tap is att_in(0), and its scores (up to a positive factor,
  // with the parameter-free input LayerNorm) are linear in E[token] + P[pos + 2].
  e->head0 = false;
  if (Pred& p0 = e->layers[0].pa; e->head0_table && p0.on && p0.tap == TAP_ATT_IN && p0.src_layer == 0 &&
                                  e->H <= PF_SMALL_MAX) {
    p0.fused = true;
    e->head0 = true;
    e->fused_any = true;
  }
  if (!e->pflags) {
    if (dalloc(e, &e->pflags, 2 * e->L) || dalloc(e, &e->pf_bad, 1)) return -1;
    CK(cudaMemset(e->pflags, 0, 2 * e->L * sizeof(unsigned)));
  }
  for (int l = 0; l < e->L; l++) {
    Fuse& f = e->layers[l].fz;
    if (!f.on) continue;
    std::vector<float> nm;
    for (auto [li, tg] : f.members) {
      Pred& p = tg == 0 ? e->layers[li].pa : e->layers[li].pm;
      nm.insert(nm.end(), p.rank, p.norm ? 1.f : 0.f);
      const int n = tg == 0 ? e->H : e->ffn;
      if (n > PF_SMALL_MAX) {  // the grouped top-k's per-group flags (zero at rest)
        // The attention kernel's grid: heads x slices <= max(SMs, heads) (one slice when the heads outnumber the SMs).
        const int ng = std::max(e->sms, e->H);
        if (dalloc(e, &f.gdone, ng)) return -1;
        CK(cudaMemset(f.gdone, 0, ng * sizeof(unsigned)));
      }
    }
    if (dalloc(e, &f.w1p, (size_t)f.rows * e->d) || dalloc(e, &f.c1, f.rows) || dalloc(e, &f.nm, f.rows) ||
        dalloc(e, &f.t, f.rows))
      return -1;
    CK(cudaMemcpy(f.nm, nm.data(), nm.size() * sizeof(float), cudaMemcpyHostToDevice));
  }
  return 0;
}
// The fused-predictor arguments of layer l's attention kernel (PredFuse::per is set at launch).
static PredFuse make_pf(Engine* e, Layer& src) {
  PredFuse p{};
  const Fuse& f = src.fz;
  p.on = 1; p.t = f.t; p.trows = f.rows; p.st = e->st; p.local = 1 + e->pf_sel; p.pw = e->pf_warps;
  int off = 0;
  for (auto [li, tg] : f.members) {
    Layer& l = e->layers[li];
    Pred& q = tg == 0 ? l.pa : l.pm;
    PfMember m{};
    m.W2 = q.w2; m.n = tg == 0 ? e->H : e->ffn; m.r = q.rank; m.k = tg == 0 ? l.kH : l.kM; m.toff = off;
    m.sel = tg == 0 ? l.hsel : l.nsel; m.done = e->pflags + 2 * li + tg;
    if (m.n > PF_SMALL_MAX) {
      p.nbig = 1; p.big = m; p.gdone = f.gdone;
    } else {
      p.small[p.nsmall++] = m;
    }
    off += q.rank;
  }
  return p;
}
static int build_groups(Engine* e) {
  if (!e->groups_dirty) return 0;
  e->groups_side.clear();  // (only the sparse graph with fused predictors uses it)
  if (plan_fused(e) || make_groups(e, e->groups, false) || (e->fused_any && make_groups(e, e->groups_side, true)) ||
      pf_prep(e))
    return -1;
  e->side_early = true;
  for (auto& g : e->groups_side) e->side_early &= g.tap == TAP_ATT_IN && g.layer == 0;
  e->groups_dirty = false;
  return 0;
}

// Whether a tap group's chain fits k_pred_chain (members, ranks, the partition's shared memory).
static bool chain_fits(Engine* e, const Group& g) {
  if (g.members.size() > (size_t)PC_MAXM) return false;
  size_t f = (size_t)e->d + g.rows;
  for (auto [li, tg] : g.members) {
    const Pred& p = tg == 0 ? e->layers[li].pa : e->layers[li].pm;
    const int n = tg == 0 ? e->H : e->ffn;
    if (p.rank % 8 || p.rank > PC_MAXR) return false;
    if (n > PC_SMALL) f += pc_chunk(n, e->green);
  }
  return f * 4 <= 160 * 1024;
}

// Record the whole decode step for `mode` on s0 (predictors fork onto s1 and join back before their consumers).
// Profiling (dj_profile): launches go eagerly to one stream, with a timing event after each, tagged by kind.
enum ProfKind { P_EMBED, P_QKV, P_ATT, P_OUT, P_FC1, P_FC2, P_LM, P_PRED1, P_TOPK_ATTN, P_TOPK_MLP, P_MLP, P_LAYER, P_FLN, P_COUNT };
struct Prof {
  std::vector<cudaEvent_t> evs;
  std::vector<int> kinds;
  size_t used = 0;
};

static int record_step(Engine* e, int mode, Prof* prof = nullptr) {
  const int d = e->d, H = e->H, hd = e->hd, ffn = e->ffn;
  const bool preds = mode == M_SPARSE || mode == M_PRED;
  // Fused predictors (pfuse.cuh) in the sparse graph: the side-stream chain keeps only the others; when those all
  // run before layer 0 (side_early), the graph keeps PDL and every SM like the fixed-selection graph.
  const bool fuse = mode == M_SPARSE && e->fused_any && e->tma;
  std::vector<Group>& groups = fuse ? e->groups_side : e->groups;
  const bool side = preds && !(fuse && e->side_early);  // side-stream predictors beside the layers
  const bool green = side && e->gm && !prof && e->tma;  // main kernels and predictors on their own SMs
  cudaStream_t s0 = green ? e->gm : e->s0, s1 = prof ? e->s0 : green ? e->gp1 : e->s1,
               s2 = prof ? e->s0 : green ? e->gp2 : e->s2;
  size_t evi = 0;
  auto ev = [&]() -> cudaEvent_t { return e->evs[evi++ % e->evs.size()]; };
  if (green) {  // capture begins on e->s0: fork the green main stream from it (joined back at the end)
    cudaEvent_t f = ev();
    cudaEventRecord(f, e->s0);
    cudaStreamWaitEvent(s0, f, 0);
  }
  auto mark = [&](int kind) {
    if (!prof) return;
    if (prof->used == prof->evs.size()) { cudaEvent_t v; cudaEventCreate(&v); prof->evs.push_back(v); prof->kinds.push_back(0); }
    prof->kinds[prof->used] = kind;
    cudaEventRecord(prof->evs[prof->used++], s0);
  };
  mark(-1);
  e->tr_next = e->trace ? 0 : -1;
  e->pdl_now = !side || e->pdl_side || (green && e->green_pdl);
  e->rowix_now = side ? e->rowix_side : e->rowix;
  e->sms_now = green ? e->green_main : std::max(1, e->sms - (side ? e->reserve : 0));
  const bool compute = mode != M_PRED;
  const bool sparse = mode == M_SPARSE || mode == M_FIXED;
  // Pending joins: (event, layer, target) the main stream must wait on before consuming a selection.
  struct Join { cudaEvent_t done; int layer, target; };
  std::vector<Join> joins;
  std::vector<cudaEvent_t> read_done;  // predictors that still read x: wait before x changes

  // Launch the predictor groups whose source is (tap, layer): one stacked first-layer GEMV reads x now (on s1),
  // then each member's scores + top-k (alternating s1 / s2 so two run side by side).
  auto fire_tap = [&](int tap, int layer) {
    if (!preds) return;
    for (auto& g : groups) {
      if (g.tap != tap || g.layer != layer) continue;
      cudaEvent_t fork = ev();
      cudaEventRecord(fork, s0);
      cudaStreamWaitEvent(s1, fork, 0);
      const __half* xin = nullptr;  // per-op path: the fp16 copies the last column GEMV wrote
      Pred& p0 = g.members[0].second == 0 ? e->layers[g.members[0].first].pa : e->layers[g.members[0].first].pm;
      const bool stacked = g.members.size() > 1;
      const __half* w1 = stacked ? g.w1 : p0.w1;
      const int rows = stacked ? g.rows : p0.rank;
      float* t = stacked ? g.t : p0.t;
      const bool w1_on = !(e->pred_skip & 1);  // (timing experiment: no first layer)
      if (green && e->green_chain && e->tma && g.cs && chain_fits(e, g)) {  // the whole chain as one kernel
        ChainArgs c{};
        c.in = point_in(e, tap == TAP_ATT_IN ? 2 * layer : 2 * layer + 1, nullptr, nullptr, g.norm, false);
        if (c.in.tr >= 0) { c.in.tr = -1; e->tr_next--; }
        c.d = d; c.rows = rows; c.w1 = w1; c.t = t; c.s = g.cs; c.nm = (int)g.members.size();
        int off = 0;
        for (int i = 0; i < c.nm; i++) {
          auto [li, tg] = g.members[i];
          Layer& l = e->layers[li];
          Pred& p = tg == 0 ? l.pa : l.pm;
          c.m[i] = ChainMember{p.w2, tg == 0 ? H : ffn, p.rank, tg == 0 ? l.kH : l.kM, off, p.scores,
                               tg == 0 ? l.hsel : l.nsel};
          off += p.rank;
        }
        k_pred_chain<<<e->green, PC_THREADS, pc_smem(c, e->green), s1>>>(c);
        cudaEvent_t done = ev();
        cudaEventRecord(done, s1);
        read_done.push_back(done);
        for (auto [li, tg] : g.members) joins.push_back({done, li, tg});
        continue;
      }
      if (e->tma) {  // streamed path: this tap's input, from the immutable (X[r-1], D[r])
        XIn tin = point_in(e, tap == TAP_ATT_IN ? 2 * layer : 2 * layer + 1, nullptr, nullptr, g.norm, false);
        if (tin.tr >= 0) { tin.tr = -1; e->tr_next--; }  // side kernels are not traced
        const int wpb = PH_THREADS / 32;
        if (e->pchain && w1_on)
          launch_side(e, false, k_pred_hidden, dim3((rows + wpb - 1) / wpb), dim3(PH_THREADS), (size_t)d * 4, s1, tin, d,
                      w1, rows, t);
        if (!e->pchain && w1_on) {
          k_snap_input<<<1, 256, 0, s1>>>(tin, d, g.xh);
          xin = g.xh;
        }
      }
      if (w1_on && !(e->tma && e->pchain)) launch_pred1(e, s1, w1, rows, g.norm, t, xin);
      mark(P_PRED1);
      cudaEvent_t rd = ev();
      cudaEventRecord(rd, s1);
      read_done.push_back(rd);
      int m = 0, off = 0;
      for (auto [li, tg] : g.members) {
        Layer& l = e->layers[li];
        Pred& p = tg == 0 ? l.pa : l.pm;
        const float* tm = stacked ? g.t + off : p.t;  // this member's w1 output
        off += p.rank;
        cudaStream_t ss = (m++ % 2 == 0) ? s1 : s2;
        if (ss != s1) cudaStreamWaitEvent(ss, rd, 0);
        const bool after_t = ss == s1 && m == 1 && !prof;  // first on s1: right behind the w1 kernel
        if (tg == 0) launch_topk(e, ss, p, tm, H, l.kH, l.hsel, after_t);
        else launch_topk(e, ss, p, tm, ffn, l.kM, l.nsel, after_t);
        mark(tg == 0 ? P_TOPK_ATTN : P_TOPK_MLP);
        cudaEvent_t done = ev();
        cudaEventRecord(done, ss);
        joins.push_back({done, li, tg});
      }
    }
  };
  auto before_x_write = [&]() {
    for (auto rd : read_done) cudaStreamWaitEvent(s0, rd, 0);
    read_done.clear();
  };
  // Returns whether the next kernel joins a side-stream selection: that kernel is launched without PDL, so it
  // cannot start (and read the selection before its grid dependency) ahead of the side stream's kernels.
  // With green_join the kernel keeps PDL: its main-stream predecessor is noted here and its join edges are made full
  // edges after capture (fix_join_edges), so the chain's selection is complete and visible before it starts.
  const bool join_pdl = green && e->green_pdl && e->green_join;
  cudaGraphNode_t join_prev = nullptr;
  auto consume = [&](int layer, int target) {
    bool joined = false;
    join_prev = nullptr;
    for (size_t i = 0; i < joins.size();) {
      if (joins[i].layer == layer && joins[i].target == target) {
        if (join_pdl && !joined) {
          cudaStreamCaptureStatus cs;
          const cudaGraphNode_t* deps = nullptr;
          size_t nd = 0;
          if (cudaStreamGetCaptureInfo(s0, &cs, nullptr, nullptr, &deps, nullptr, &nd) == cudaSuccess && nd == 1)
            join_prev = deps[0];
        }
        cudaStreamWaitEvent(s0, joins[i].done, 0);
        joins.erase(joins.begin() + i);
        joined = true;
      } else i++;
    }
    return joined && !join_prev;  // with a noted predecessor the kernel may keep PDL
  };
  auto joined_launch = [&]() {  // after a kernel launch that consumed a selection with PDL
    if (!join_prev) return;
    cudaStreamCaptureStatus cs;
    const cudaGraphNode_t* deps = nullptr;
    size_t nd = 0;
    if (cudaStreamGetCaptureInfo(s0, &cs, nullptr, nullptr, &deps, nullptr, &nd) == cudaSuccess && nd == 1)
      e->join_fix.push_back({deps[0], join_prev});
    join_prev = nullptr;
  };

  if (e->tma) {
    // Streamed path: 3 kernels per layer (fused.cuh), no in-place residual update, so no read-before-write waits.
    const float qs = 1.f / sqrtf((float)hd);
    const bool pstep = e->pstep_ok && mode == M_FIXED;
    launchk(e, false, k_embed_tma, dim3(e->sms), dim3(256), 0, s0, (const __half*)e->E, (const __half*)e->P,
            (const int*)e->tokens, (const int*)e->st, d, e->X, e->D + d,
            (size_t)(e->dcopy ? 4 * e->L + 1 : 2 * e->L) * d, e->psync,  // D[1..2L] (+ the second copy, D2[0..2L])
            pstep ? 3 * e->L : 0);
    mark(P_EMBED);
    if (fuse && e->head0 && sparse && e->layers[0].kH < H) {  // layer 0's heads from the tables (pfuse.cuh head0)
      Layer& l0 = e->layers[0];
      PfMember m{};
      m.n = H; m.k = l0.kH; m.sel = l0.hsel; m.done = e->pflags;
      launchk(e, true, k_head0_select, dim3(1), dim3(32), 0, s0, (const float*)e->h0E, (const float*)e->h0P,
              (const int*)e->tokens, (const int*)e->st, m);
    }
    if (pstep) {
      e->pargs.tr = e->tr_next >= 0;
      if (launch_pstep(e, s0)) return -1;
      if (e->tr_next >= 0) e->tr_next = 3 * e->L;  // trace ids 0..L-1 are the step's layers; the LM head's after
      mark(P_LAYER);
    }
    for (int li = 0; li < (pstep ? 0 : e->L); li++) {
      Layer& l = e->layers[li];
      const int kH = sparse ? l.kH : H, kM = sparse ? l.kM : ffn;
      const bool hs = kH < H, ns = kM < ffn;
      fire_tap(TAP_ATT_IN, li);
      const bool join_h = consume(li, 0);
      if (compute) {
        RowsArgs a{};
        a.W = l.Wqkv; a.b = l.bqkv; a.K = d; a.n_out = e->kv_all && hs ? kH * hd + 2 * d : 3 * kH * hd;
        a.map = !hs ? MAP_ID : e->kv_all ? MAP_Q_KVALL : MAP_QKV; a.sel = hs ? l.hsel : nullptr; a.kH = kH; a.hd = hd;
        a.d = d; a.y = e->q; a.q_scale = qs; a.kc = l.kc; a.vc = l.vc; a.valid = l.valid; a.maxT = e->maxT; a.st = e->st;
        const unsigned* hflag = fuse && hs && l.pa.fused && !(e->pf_skip & 16) ? e->pflags + 2 * li : nullptr;
        a.sel_flag = hflag;
        if (fuse && l.fz.on && !(e->pf_skip & 4)) {  // fused predictors reading this att_in: their w1 rows ride along
          a.pW = l.fz.w1p; a.pn = l.fz.rows; a.pbase = 3 * d; a.pt = l.fz.t; a.pc1 = l.fz.c1; a.pnm = l.fz.nm;
        }
        launch_rows_tma<EPI_QKV>(e, s0, a, folded(e, point_in(e, 2 * li, l.ln1_g, l.ln1_b, 1, true), l.c1q, l.c2q), !join_h);
        joined_launch();
        mark(P_QKV);
        AttnOutArgs o{};
        o.q = e->q; o.kc = l.kc; o.vc = l.vc; o.valid = l.valid; o.sel = hs ? l.hsel : nullptr; o.st = e->st;
        o.maxT = e->maxT; o.d = d; o.WoT = l.WoT; o.bias = l.bo; o.y = e->D + (size_t)(2 * li + 1) * d;
        o.tr = e->tr_next >= 0 ? e->tr_next++ : -1;
        o.sel_flag = hflag;
        if (fuse && l.fz.on) {
          o.pf = make_pf(e, l);
          l.fz.groups = kH * attn_slices(e, kH);  // the grouped top-k's groups (check.cu's reference needs them)
        }
        o.pf.skip = e->pf_skip & (32 | 64);
        launch_attn_out(e, s0, o, kH, true);
        mark(P_ATT);
      }
      fire_tap(TAP_MLP_IN, li);
      const bool join_m = consume(li, 1);
      if (compute) {
        MlpTmaArgs m{};
        m.W1 = l.W1; m.b1 = l.b1; m.W2T = l.W2T; m.b2 = l.b2; m.sel = ns ? l.nsel : nullptr; m.n = kM; m.d = d;
        m.y = e->D + (size_t)(2 * li + 2) * d;
        if (e->dcopy) m.y2 = e->D + (size_t)(2 * e->L + 1 + 2 * li + 2) * d;
        if (fuse && ns && l.pm.fused && !(e->pf_skip & 1)) {
          m.sel_flag = e->pflags + 2 * li + 1; m.st = e->st;
          if (e->pf_local) {  // the grouped top-k: one flag per group of the tap layer's attention kernel
            const Fuse& fz = e->layers[l.pm.src_layer].fz;
            m.gflags = fz.gdone; m.ngroups = fz.groups;
          }
        }
        launch_mlp_tma(e, s0, m, folded(e, point_in(e, 2 * li + 1, l.ln2_g, l.ln2_b, 1, true), l.c1m, l.c2m), !join_m);
        joined_launch();
        mark(P_MLP);
      }
    }
    for (auto& j : joins) cudaStreamWaitEvent(s0, j.done, 0);
    for (auto rd : read_done) cudaStreamWaitEvent(s0, rd, 0);
    if (compute) {
      RowsArgs a{};
      a.W = e->lm; a.K = d; a.n_out = e->vocab;
      a.map = MAP_ID; a.y = e->logits; a.st = e->st; a.maxT = e->maxT; a.amax = e->amax; a.counter = e->lm_counter;
      a.tokens = e->tokens;
      launch_rows_tma<EPI_ARGMAX>(e, s0, a, folded(e, point_in(e, 2 * e->L, e->lnf_g, e->lnf_b, 1, false), e->c1lm, e->c2lm),
                                  true);
      mark(P_LM);
    }
    if (green) {  // join the green main stream back into the capture's origin stream
      cudaEvent_t j = ev();
      cudaEventRecord(j, s0);
      cudaStreamWaitEvent(e->s0, j, 0);
    }
    return 0;
  }
  auto lnout = [&](const float* g, const float* b) { return LnOut{g, b, e->eps, e->xn, e->xr, e->xp}; };
  k_embed<<<1, 1024, 0, s0>>>(e->E, e->P, e->tokens, e->st, d, e->x, lnout(e->layers[0].ln1_g, e->layers[0].ln1_b));
  mark(P_EMBED);
  if (mode == M_DENSE && e->persist) {
    const int grid = step_grid(e);
    if (grid < 1) return fail("persistent dense step kernel: no resident slot (occupancy 0)");
    if (!e->step_args) return fail("persistent dense step kernel: arguments not prepared");
    launch_step_dense(e, s0, grid);
    mark(P_LAYER);
    k_layernorm<<<1, 1024, 0, s0>>>(e->x, d, lnout(e->lnf_g, e->lnf_b));
    mark(P_FLN);
    RowsArgs a{};
    a.W = e->lm; a.K = d; a.n_out = e->vocab; a.x = e->xn;
    a.map = MAP_ID; a.y = e->logits; a.st = e->st; a.maxT = e->maxT; a.amax = e->amax; a.counter = e->lm_counter;
    a.tokens = e->tokens;
    launch_rows<EPI_ARGMAX>(e, s0, a, true);
    mark(P_LM);
    return 0;
  }
  for (int li = 0; li < e->L; li++) {
    Layer& l = e->layers[li];
    const int kH = sparse ? l.kH : H, kM = sparse ? l.kM : ffn;
    const bool hs = kH < H, ns = kM < ffn;
    // ---- attention block ----
    fire_tap(TAP_ATT_IN, li);
    consume(li, 0);
    if (compute) {
      RowsArgs a{};
      a.W = l.Wqkv; a.b = l.bqkv; a.K = d; a.n_out = e->kv_all && hs ? kH * hd + 2 * d : 3 * kH * hd; a.x = e->xn;
      a.map = MAP_QKV; a.sel = hs ? l.hsel : nullptr; a.kH = kH; a.hd = hd; a.d = d;
      if (!hs) a.map = MAP_ID;
      else if (e->kv_all) a.map = MAP_Q_KVALL;
      if (hs && e->l2_prefetch) {  // out_proj^T rows of the selected heads: hd contiguous rows each
        a.next.base = l.WoT; a.next.sel = l.hsel; a.next.n = kH; a.next.per_sel = 1;
        a.next.sel_stride = (long long)hd * d; a.next.bytes = (uint32_t)((size_t)hd * d * 2);
      }
      a.y = e->q; a.q_scale = 1.f / sqrtf((float)hd); a.kc = l.kc; a.vc = l.vc; a.valid = l.valid; a.maxT = e->maxT;
      a.st = e->st;
      launch_rows<EPI_QKV>(e, s0, a, true);
      mark(P_QKV);
      launch_attention(e, s0, l, hs ? l.hsel : nullptr, kH, true);
      mark(P_ATT);
    }
    before_x_write();
    if (compute) {
      ColsArgs c{};
      c.WT = l.WoT; c.n_cols = d; c.n_rows = kH * hd; c.map = hs ? MAP_QKV : MAP_ID; c.sel = l.hsel; c.hd = hd;
      c.in = e->att; c.bias = l.bo; c.y = e->x;
      c.counter = e->skip_ln ? nullptr : e->cols_counter; c.ln = lnout(l.ln2_g, l.ln2_b);
      launch_cols(e, s0, c, true);
      mark(P_OUT);
    }
    // ---- MLP block ----
    fire_tap(TAP_MLP_IN, li);
    consume(li, 1);
    const LnOut next_ln = li + 1 < e->L ? lnout(e->layers[li + 1].ln1_g, e->layers[li + 1].ln1_b) : lnout(e->lnf_g, e->lnf_b);
    if (compute && ns && e->fused_mlp) {
      // Sparse MLP: gathered fc1 + ReLU + gathered fc2 in one launch (reads xn, adds into x).
      before_x_write();
      MlpArgs m{};
      m.W1 = l.W1; m.b1 = l.b1; m.W2T = l.W2T; m.b2 = l.b2; m.x = e->xn; m.sel = l.nsel; m.kM = kM; m.d = d; m.y = e->x;
      m.counter = e->cols_counter; m.ln = next_ln;
      if (li + 1 < e->L && e->l2_prefetch) {
        Layer& nl = e->layers[li + 1];
        const int nkH = sparse ? nl.kH : H;
        if (nkH < H) {  // next layer's q, k, v rows of its selected heads (its head selection must exist by now)
          consume(li + 1, 0);
          m.next.base = nl.Wqkv; m.next.sel = nl.hsel; m.next.n = 3 * nkH; m.next.per_sel = 3;
          m.next.sel_stride = (long long)hd * d; m.next.part_stride = (long long)d * d;
          m.next.bytes = (uint32_t)((size_t)hd * d * 2);
        }
      }
      launchk(e, true, k_mlp_sparse, dim3((kM + MLP_NPB - 1) / MLP_NPB), dim3(MLP_THREADS), 0, s0, m);
      mark(P_MLP);
      continue;
    }
    if (compute) {
      RowsArgs a{};
      a.W = l.W1; a.b = l.b1; a.K = d; a.n_out = kM; a.x = e->xn;
      a.map = ns ? MAP_LIST : MAP_ID; a.sel = l.nsel; a.y = e->h;
      launch_rows<EPI_RELU>(e, s0, a, true);
      mark(P_FC1);
    }
    before_x_write();
    if (compute) {
      ColsArgs c{};
      c.WT = l.W2T; c.n_cols = d; c.n_rows = kM; c.map = ns ? MAP_LIST : MAP_ID; c.sel = l.nsel; c.hd = hd;
      c.in = e->h; c.bias = l.b2; c.y = e->x;
      c.counter = e->skip_ln ? nullptr : e->cols_counter;
      c.ln = next_ln;
      launch_cols(e, s0, c, true);
      mark(P_FC2);
    }
  }
  for (auto& j : joins) cudaStreamWaitEvent(s0, j.done, 0);
  before_x_write();
  if (compute) {
    RowsArgs a{};
    a.W = e->lm; a.K = d; a.n_out = e->vocab; a.x = e->xn;
    a.map = MAP_ID; a.y = e->logits; a.st = e->st; a.maxT = e->maxT; a.amax = e->amax; a.counter = e->lm_counter;
    a.tokens = e->tokens;
    launch_rows<EPI_ARGMAX>(e, s0, a, true);
    mark(P_LM);
  }
  return 0;
}

extern "C" {

// Build (or rebuild) the graphs: call after weights, k and predictors are set.
int dj_build(void* ev) {
  Engine* e = (Engine*)ev;
  // Events for fork/join inside capture: 3 per predictor at most (created outside capture).
  while (e->evs.size() < (size_t)(6 * e->L + 8)) {
    cudaEvent_t v;
    CK(cudaEventCreateWithFlags(&v, cudaEventDisableTiming));
    e->evs.push_back(v);
  }
  if (build_groups(e) || prep_step_args(e) || set_tma_attrs(e) || fold_ln(e) || prep_pstep(e)) return -1;
  CK(cudaFuncSetAttribute(k_pred_chain, cudaFuncAttributeMaxDynamicSharedMemorySize, 160 * 1024));
  CK(cudaFuncSetAttribute(k_attention<128>, cudaFuncAttributeMaxDynamicSharedMemorySize, att_state_floats(128, ATT_THREADS / 32) * 4));
  CK(cudaFuncSetAttribute(k_attention<64>, cudaFuncAttributeMaxDynamicSharedMemorySize, att_state_floats(64, ATT_THREADS / 32) * 4));
  CK(cudaFuncSetAttribute(k_attention<32>, cudaFuncAttributeMaxDynamicSharedMemorySize, att_state_floats(32, ATT_THREADS / 32) * 4));
  for (int m = 0; m < M_COUNT; m++) {
    if (e->graphs[m]) { cudaGraphExecDestroy(e->graphs[m]); e->graphs[m] = nullptr; }
    cudaGraph_t g;
    CK(cudaStreamBeginCapture(e->s0, cudaStreamCaptureModeThreadLocal));
    e->join_fix.clear();
    const int rc = record_step(e, m);
    cudaError_t ce = cudaStreamEndCapture(e->s0, &g);
    if (rc) { if (ce == cudaSuccess) cudaGraphDestroy(g); return -1; }
    if (ce != cudaSuccess) return fail("capture of mode %d failed: %s", m, cudaGetErrorString(ce));
    if (fix_join_edges(e, g)) { cudaGraphDestroy(g); return -1; }
    CK(cudaGraphInstantiate(&e->graphs[m], g, 0));
    cudaGraphDestroy(g);
  }
  CK(cudaGetLastError());
  return 0;
}

// Count kernel nodes of a mode's graph (launches per step).
int dj_graph_kernels(void* ev, int mode, int* count) {
  Engine* e = (Engine*)ev;
  cudaGraph_t g;
  if (build_groups(e) || prep_step_args(e) || set_tma_attrs(e) || fold_ln(e) || prep_pstep(e)) return -1;
  CK(cudaStreamBeginCapture(e->s0, cudaStreamCaptureModeThreadLocal));
  record_step(e, mode);
  e->join_fix.clear();
  CK(cudaStreamEndCapture(e->s0, &g));
  size_t n = 0;
  CK(cudaGraphGetNodes(g, nullptr, &n));
  std::vector<cudaGraphNode_t> nodes(n);
  CK(cudaGraphGetNodes(g, nodes.data(), &n));
  int k = 0;
  for (auto nd : nodes) {
    cudaGraphNodeType t;
    cudaGraphNodeGetType(nd, &t);
    k += t == cudaGraphNodeTypeKernel;
  }
  cudaGraphDestroy(g);
  *count = k;
  return 0;
}

// Per-kernel-kind device time of `steps` eager decode steps of `mode` (one stream, an event after each launch):
// ms[P_COUNT] = {embed, qkv, attention, out_proj, fc1, fc2, lm_head, predictor w1, top-k attn, top-k mlp}, summed
// over the steps. Eager launches leave gaps between kernels that graph replays do not have; the sum is reported
// beside them (*total) so the two can be compared.
int dj_profile(void* ev, int mode, int steps, float* ms, float* total) {
  Engine* e = (Engine*)ev;
  if (build_groups(e) || prep_step_args(e) || set_tma_attrs(e) || fold_ln(e) || prep_pstep(e)) return -1;
  Prof prof;
  for (int i = 0; i < P_COUNT; i++) ms[i] = 0.f;
  *total = 0.f;
  bool pdl = e->pdl;
  e->pdl = false;
  for (int st = 0; st < steps; st++) {
    prof.used = 0;
    record_step(e, mode, &prof);
    CK(cudaStreamSynchronize(e->s0));
    CK(cudaGetLastError());
    for (size_t i = 1; i < prof.used; i++) {
      float t;
      CK(cudaEventElapsedTime(&t, prof.evs[i - 1], prof.evs[i]));
      ms[prof.kinds[i]] += t;
      *total += t;
    }
  }
  e->pdl = pdl;
  for (auto v : prof.evs) cudaEventDestroy(v);
  return 0;
}

// Replay a mode's graph `steps` times (one token each); *ms = elapsed device time (events) when ms != null.
int dj_run(void* ev, int mode, int steps, float* ms) {
  Engine* e = (Engine*)ev;
  if (mode < 0 || mode >= M_COUNT || !e->graphs[mode]) return fail("mode %d not built", mode);
  if (fold_ln(e)) return -1;  // weights uploaded since the build: refresh the deferred-LN constants (graphs keep pointers)
  CK(cudaEventRecord(e->t0, e->s0));
  for (int i = 0; i < steps; i++) CK(cudaGraphLaunch(e->graphs[mode], e->s0));
  CK(cudaEventRecord(e->t1, e->s0));
  CK(cudaStreamSynchronize(e->s0));
  CK(cudaGetLastError());
  if (ms) CK(cudaEventElapsedTime(ms, e->t0, e->t1));
  return 0;
}

// Device-to-device copy bandwidth over `bytes` (GB/s, counting bytes read + written), median of `reps`.
int dj_copy_bandwidth(long long bytes, int reps, double* gbps) {
  void *a = nullptr, *b = nullptr;
  CK(cudaMalloc(&a, bytes));
  CK(cudaMalloc(&b, bytes));
  CK(cudaMemset(a, 1, bytes));
  cudaEvent_t t0, t1;
  cudaEventCreate(&t0);
  cudaEventCreate(&t1);
  std::vector<float> ts;
  for (int i = 0; i < reps + 2; i++) {
    cudaEventRecord(t0);
    cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice);
    cudaEventRecord(t1);
    cudaEventSynchronize(t1);
    float ms;
    cudaEventElapsedTime(&ms, t0, t1);
    if (i >= 2) ts.push_back(ms);
  }
  std::sort(ts.begin(), ts.end());
  *gbps = 2.0 * bytes / (ts[ts.size() / 2] * 1e-3) / 1e9;
  cudaEventDestroy(t0);
  cudaEventDestroy(t1);
  cudaFree(a);
  cudaFree(b);
  CK(cudaGetLastError());
  return 0;
}

}  // extern "C"
