// The CUDA decode engine behind runtime/cuda/lib.ts: device weights, KV cache, per-step device state, and one CUDA
// graph per decode mode (dense, sparse with predictors, sparse with fixed selections, predictors alone).
// Two paths, chosen per engine (DjOptions::path): the streamed kernels of fused.cuh (sm_90+: bulk copies into a
// shared-memory ring, three kernels per layer) and the portable per-op kernels of kernels.cuh (sm_80+).
// Plain C API (extern "C") for koffi; every call returns 0 on success or -1 with dj_last_error() set.
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
#include "predict.cuh"
#include "prefill.cuh"
#include "blas.cuh"

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
  bool fused = false;  // rides in the main kernels of the sparse graph (grouped selection; decided by build_groups)
};

// Predictors reading the same tap (layer, att_in/mlp_in, norm) share one first-layer GEMV over their stacked w1.
struct Group {
  int tap, layer;
  bool norm;
  int rows = 0;
  __half* w1 = nullptr;
  float* t = nullptr;
  std::vector<std::pair<int, int>> members;  // (layer, target)
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

// Options of an engine (dj_create, dj_set_options); runtime/cuda/lib.ts mirrors this struct field by field.
struct DjOptions {
  int path;       // PATH_AUTO: streamed on sm_90+ while d <= T_DMAX, else portable; PATH_STREAMED; PATH_PORTABLE
  int selection;  // SEL_EXACT: one top-k per predictor; SEL_GROUPED: the fused predictors' grouped top-k (streamed only)
  int kv_policy;  // KV_ALL: every head's K/V (exact); KV_SELECTED: skipped heads compute no K/V, their slots masked later
};
enum Path { PATH_AUTO = 0, PATH_STREAMED = 1, PATH_PORTABLE = 2 };
enum Selection { SEL_EXACT = 0, SEL_GROUPED = 1 };
enum KvPolicy { KV_ALL = 0, KV_SELECTED = 1 };  // zeroed options = the exact defaults

// Measured winners (13B shape unless said; docs/cuda.md has the table), constants rather than options:
constexpr int RING_BYTES = 200 * 1024;  // streamed ring per block: at most this, and what fits beside x
constexpr int SEG_BYTES = 5120;         // row segment target of the streamed kernels
constexpr int RESERVE_SMS = 16;         // SMs left to side-stream predictors: 0/8/16/24/32 -> 2.18/2.12/2.09/2.14/2.19 ms
constexpr int LEAD_ATT = 4;             // out_proj stages issued before the attention is done (best of -1..4)
constexpr int TOPK_U = 4;               // score rows per lane in flight (k_pred_scores; 1, 2, 8 slower)
// Streamed row kernels look their block's selected rows up first (fused.cuh T_ROWIX; bit 0): fixed selections
// 1.69 -> 1.57 ms, and 2.093 -> 2.077 beside predictors with RESERVE_SMS left to them; the MLP's (bit 1) gained nothing.
constexpr int ROWIX = 1;
constexpr size_t UPLOAD_STAGE = 64u << 20;  // checkpoint tensors cross to the GPU in chunks of whole rows up to this

struct Engine {
  int vocab, d, L, H, hd, ffn, maxpos, maxT;
  float eps = 1e-5f;
  int sms = 0, cc = 0;  // SMs, compute capability (major * 10 + minor)
  int arch = 0;         // the architecture the kernels run as here (compiled_arch)
  DjOptions opt{};
  bool tma = true;      // this engine runs the streamed path (fused.cuh); false: the portable per-op kernels
  std::vector<void*> allocs;
  __half *E = nullptr, *P = nullptr, *lm = nullptr;
  float *lnf_g = nullptr, *lnf_b = nullptr;
  std::vector<Layer> layers;
  // Portable path: the residual stream x updated in place, fp16 GEMV inputs LN(x), x, LN(x) without affine
  // (kernels.cuh header).
  float *x, *q, *att, *h, *logits;
  __half *xn, *xr, *xp;
  unsigned* cols_counter;  // last-block counter of the column GEMVs on the main stream
  int *st, *tokens;
  unsigned long long* amax;
  unsigned* lm_counter;
  cudaStream_t s0 = nullptr, s1 = nullptr, s2 = nullptr;
  bool pdl = true;      // programmatic dependent launch on the main stream (sm_90+): measured 2% faster on an H200
  bool pdl_now = true;  // what launchk uses while a graph is recorded: off beside side-stream predictors, whose
                        // kernels would otherwise wait for SMs that early-launched main kernels hold (2.34 vs 2.77 ms)
  // Streamed path: residual points X and deltas D (fused.cuh header). The MLP kernel's blocks add into two copies
  // of its output delta, alternating, and readers add both: half the float reductions on each address, which L2
  // serialises (bench/cuda/reduce.cu).
  float *X = nullptr, *D = nullptr;
  int smem_optin = 0;
  float *c1lm = nullptr, *c2lm = nullptr;  // the LM head's deferred-LayerNorm constants
  bool ln_folded = false;  // the constants match the weights (cleared by every upload / fill; fold_ln sets it)
  int sms_now = 0;  // SMs the streamed launches use while a graph is recorded (sms - RESERVE_SMS beside predictors)
  std::vector<Group> groups;  // every predictor (predictors-only graph; sparse graph when none is fused)
  bool groups_dirty = true;
  // Grouped selection (pfuse.cuh): the predictors reading att_in(l) ride in layer l's QKV and attention kernels;
  // groups_side: the sparse graph's side-stream groups beside them; side_early: those all read att_in(0) (they run
  // before layer 0 only, so the sparse graph keeps PDL and every SM).
  bool fused_any = false, side_early = false;
  std::vector<Group> groups_side;
  unsigned* pflags = nullptr;  // [2L] selection flags (layer, target): step serial + 1 once written
  unsigned* pf_bad = nullptr;
  bool head0 = false;  // this plan picks layer 0's heads from tables (k_head0_select); tables h0E, h0P
  float *h0E = nullptr, *h0P = nullptr;
  cudaGraphExec_t graphs[M_COUNT] = {};
  std::vector<cudaEvent_t> evs;
  cudaEvent_t t0, t1;
  // Model variant (dj_set_variant): post-LN blocks, no final LayerNorm, and project_in / project_out when the
  // embedding width e_dim differs from d. The prefill and the portable decode kernels run every form; the streamed
  // kernels take the standard one (standard_form).
  bool pre_ln = true, final_ln = true;
  int e_dim = 0;
  __half *Wpin = nullptr, *Wpout = nullptr;  // [d][e_dim], [e_dim][d] (nn.Linear layout)
  __half* xo = nullptr;                      // [e_dim] decode: project_in's input, then project_out's output
  void* stage = nullptr;                     // upload staging (UPLOAD_STAGE bytes)
  float* step_nll = nullptr;                 // [maxT] per-position NLL of teacher-forced decode steps
  // The oracle's decode (dj_oracle_nll), allocated at its first call: each layer's picks of the last step and scratch.
  struct Oracle {
    int *hsel = nullptr, *nsel = nullptr;     // [L][H], [L][ffn], ascending (identity in a dense layer)
    float *norms = nullptr, *vals = nullptr;  // [H] head norms; [ffn] the picked activations, compacted
    uint8_t* ones = nullptr;                  // [H][maxT] all set: heads are ranked over every head's whole history
  } orc;
  Blas blas;
  struct Prefill {
    int cap_T = 0, cap_n = 0, cap_R = 0;  // rows, longest sequence, LM-head rows per chunk
    std::vector<void*> allocs;
    float *x = nullptr, *y = nullptr, *S = nullptr, *logits = nullptr, *nll = nullptr;
    __half *a16 = nullptr, *q16 = nullptr, *k16 = nullptr, *v16 = nullptr, *o16 = nullptr, *h16 = nullptr,
           *p16 = nullptr;
    int *tok = nullptr, *pos = nullptr, *tgt = nullptr;
  } pf;
  // Collect's taps (dj_taps_*): the copy stream moves a tapped layer's taps to pinned host memory while the next layer
  // computes (two device tap sets, alternating), into one of two host slots, so the caller writes one sequence's
  // rows while the next one runs.
  struct Taps {
    std::vector<int> layers;  // collected layers, in output order
    int cap = 0;              // tokens per sequence at most
    __half *att[2] = {}, *mlp[2] = {}, *hn[2] = {};
    uint8_t* bits[2] = {};
    void* host[2] = {};       // pinned: att_in | mlp_in | head_norm | mlp_active, sections of [nl][cap][...]
    int n[2] = {};            // tokens of the sequence in each slot (0: none yet)
    cudaStream_t cs = nullptr;
    cudaEvent_t ready[2] = {}, freed[2] = {}, done[2] = {};
  } tp;
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

// Collect's taps buffers (dj_taps_open), after the work that uses them has finished.
static void taps_free(Engine* e) {
  auto& t = e->tp;
  if (t.cs) cudaStreamSynchronize(t.cs);
  for (int i = 0; i < 2; i++) {
    cudaFree(t.att[i]); cudaFree(t.mlp[i]); cudaFree(t.hn[i]); cudaFree(t.bits[i]);
    cudaFreeHost(t.host[i]);
    if (t.ready[i]) { cudaEventDestroy(t.ready[i]); cudaEventDestroy(t.freed[i]); cudaEventDestroy(t.done[i]); }
  }
  if (t.cs) cudaStreamDestroy(t.cs);
  t = Engine::Taps{};
}

extern "C" {

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

// The architecture this library's kernels were compiled for on this GPU (cudaFuncAttributes::ptxVersion, e.g. 90): a
// build for sm_80 alone runs on a Hopper card through its PTX, where the streamed kernels' sm_90 instructions are absent.
__global__ void k_arch_probe() {}
static int compiled_arch() {
  cudaFuncAttributes a{};
  return cudaFuncGetAttributes(&a, k_arch_probe) == cudaSuccess ? a.ptxVersion : 0;
}

// Pre-LN blocks, a final LayerNorm, no project_in/out: every released OPT but opt-350m. The streamed kernels fold
// the LayerNorms into their row epilogues and read the residual stream at fixed points, so they take this form only.
static bool standard_form(const Engine* e) { return e->pre_ln && e->final_ln && e->e_dim == e->d; }

// Which path serves this engine: the streamed kernels need sm_90 (bulk copies, mbarrier transactions) in the GPU and
// in the build, hold x in registers (d <= T_DMAX = 10240) and take the standard form; everything else, OPT-175B's
// d = 12288 and opt-350m's post-LN with projections included, runs the portable per-op kernels.
static int apply_options(Engine* e, const DjOptions* o) {
  DjOptions v = o ? *o : DjOptions{};
  if (v.path < PATH_AUTO || v.path > PATH_PORTABLE) return fail("options: path %d unknown (0 auto, 1 streamed, 2 portable)", v.path);
  if (v.selection != SEL_EXACT && v.selection != SEL_GROUPED) return fail("options: selection %d unknown (0 exact, 1 grouped)", v.selection);
  if (v.kv_policy != KV_SELECTED && v.kv_policy != KV_ALL) return fail("options: kv_policy %d unknown (0 all, 1 selected)", v.kv_policy);
  const bool can_stream = e->cc >= 90 && e->arch >= 90 && e->d <= T_DMAX && standard_form(e);
  if (v.path == PATH_STREAMED && !can_stream) {
    if (e->cc < 90) return fail("the streamed path needs compute capability 9.0 or newer (this GPU: %d.%d)", e->cc / 10, e->cc % 10);
    if (e->arch < 90)
      return fail("the streamed path needs a build for sm_90 (this library runs compute_%d code; DEJAVU_CUDA_ARCH=sm_80,sm_90)", e->arch);
    if (!standard_form(e))
      return fail("the streamed path takes pre-LN OPT with a final LayerNorm and no project_in/out (this model:%s%s%s); "
                  "use the portable path", e->pre_ln ? "" : " post-LN", e->final_ln ? "" : " no final LN",
                  e->e_dim != e->d ? " project_in/out" : "");
    return fail("the streamed path holds x in registers: d <= %d (d = %d); use the portable path", T_DMAX, e->d);
  }
  const bool tma = v.path == PATH_AUTO ? can_stream : v.path == PATH_STREAMED;
  if (v.selection == SEL_GROUPED && !tma)
    return fail("the grouped top-k runs inside the streamed kernels (sm_90+, d <= %d, pre-LN OPT with a final LayerNorm and no "
                "project_in/out); the portable path has the exact top-k only", T_DMAX);
  if (e->tma != tma || e->opt.selection != v.selection) e->groups_dirty = true;
  e->tma = tma;
  e->opt = v;
  e->pdl = e->cc >= 90 && e->arch >= 90;
  return 0;
}

void* dj_create(int vocab, int d, int L, int H, int ffn, int maxpos, int maxT, float eps, const DjOptions* opt) {
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
  e->cc = p.major * 10 + p.minor;
  e->arch = compiled_arch();
  e->smem_optin = (int)p.sharedMemPerBlockOptin;
  e->e_dim = d;
  if (apply_options(e, opt)) { delete e; return nullptr; }
  {  // Everything dj_create allocates, against the card's free memory, before the first allocation.
    const double wb = 2.0 * ((double)vocab * d + (double)(maxpos + 2) * d + (double)L * (4.0 * d * d + 2.0 * ffn * d)) +
                      4.0 * L * (9.0 * d + ffn);
    const double kv = (double)L * H * maxT * (2.0 * hd * 2 + 1);
    const double ws = 4.0 * ((double)vocab + 8.0 * d + ffn + 4.0 * L * d + maxT) + (double)UPLOAD_STAGE;
    size_t free_b = 0, total_b = 0;
    if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) { fail("cudaMemGetInfo failed"); delete e; return nullptr; }
    if (wb + kv + ws > (double)free_b) {
      fail("the model needs %.2f GB of GPU memory (fp16 weights %.2f GB, KV cache for %d tokens %.2f GB, workspace %.2f GB); "
           "%s has %.2f GB free of %.2f GB", (wb + kv + ws) / 1e9, wb / 1e9, maxT, kv / 1e9, ws / 1e9, p.name,
           free_b / 1e9, total_b / 1e9);
      delete e;
      return nullptr;
    }
  }
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
  if (dalloc(e, &e->xn, d) || dalloc(e, &e->xr, d) || dalloc(e, &e->xp, d) || dalloc(e, &e->cols_counter, 1))
    return bad();
  cudaMemset(e->cols_counter, 0, sizeof(unsigned));
  if (dalloc(e, &e->x, d) || dalloc(e, &e->q, d) || dalloc(e, &e->att, d) || dalloc(e, &e->h, ffn) ||
      dalloc(e, &e->logits, vocab) || dalloc(e, &e->st, 4) || dalloc(e, &e->tokens, maxT + 1) ||
      dalloc(e, &e->amax, 1) || dalloc(e, &e->lm_counter, 1))
    return bad();
  // D holds two copies of every point's delta ([2][2L+1][d]); the second is used for the MLP outputs.
  if (dalloc(e, &e->X, (size_t)(2 * L + 1) * d) || dalloc(e, &e->D, (size_t)2 * (2 * L + 1) * d) ||
      dalloc(e, &e->step_nll, maxT))
    return bad();
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
  if (cudaGetLastError() != cudaSuccess) { fail("initialisation failed"); return bad(); }
  return e;
}

// New options; they take effect at the next dj_build.
int dj_set_options(void* ev, const DjOptions* opt) { return apply_options((Engine*)ev, opt); }

// The path this engine runs: PATH_STREAMED or PATH_PORTABLE.
int dj_path(void* ev) { return ((Engine*)ev)->tma ? PATH_STREAMED : PATH_PORTABLE; }

int dj_destroy(void* ev) {
  Engine* e = (Engine*)ev;
  if (!e) return 0;
  for (auto g : e->graphs) if (g) cudaGraphExecDestroy(g);
  for (auto v : e->evs) cudaEventDestroy(v);
  for (void* v : e->allocs) cudaFree(v);
  for (void* v : e->pf.allocs) cudaFree(v);
  taps_free(e);
  cudaFree(e->stage);
  blas_close(e->blas);
  cudaStreamDestroy(e->s0);
  cudaStreamDestroy(e->s1);
  cudaStreamDestroy(e->s2);
  delete e;
  return 0;
}

// ---- weights ------------------------------------------------------------------------------------------------

// Random weights (hash fill on the GPU): magnitudes like a trained OPT so activations stay finite.
int dj_fill_random(void* ev, unsigned seed) {
  Engine* e = (Engine*)ev;
  e->ln_folded = false;
  if (e->opt.selection == SEL_GROUPED) e->groups_dirty = true;  // new LayerNorm gains: the fused-predictor plan is made again (plan_fused)
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
  T_EMBED = 0, T_POS = 1, T_LNF_W = 2, T_LNF_B = 3, T_LM_HEAD = 4, T_PROJ_IN = 5, T_PROJ_OUT = 6,
  T_LN1_W = 10, T_LN1_B, T_Q_W, T_Q_B, T_K_W, T_K_B, T_V_W, T_V_B, T_O_W, T_O_B, T_LN2_W, T_LN2_B, T_FC1_W,
  T_FC1_B, T_FC2_W, T_FC2_B
};
enum Dtype { DT_F32 = 0, DT_F16 = 1, DT_BF16 = 2 };

// Predictor weights (host fp32, small): converted on the host.
static int up_half(__half* dst, const float* src, size_t n) {
  std::vector<__half> tmp(n);
  for (size_t i = 0; i < n; i++) tmp[i] = __float2half(src[i]);
  CK(cudaMemcpy(dst, tmp.data(), n * sizeof(__half), cudaMemcpyHostToDevice));
  return 0;
}

// A checkpoint tensor of `rows` x `cols` (row-major, dtype) to fp16 dst16 or fp32 dst32, transposed when asked: the
// raw bytes cross in chunks of whole rows through the staging buffer and are converted there (k_convert), so the host
// never holds a converted copy.
static int up_raw(Engine* e, const void* src, int dtype, size_t rows, size_t cols, bool transpose, __half* dst16,
                  float* dst32) {
  const size_t es = dtype == DT_F32 ? 4 : 2;
  if (!e->stage) CK(cudaMalloc(&e->stage, UPLOAD_STAGE));
  const size_t per = std::max<size_t>(1, UPLOAD_STAGE / (cols * es));
  if (cols * es > UPLOAD_STAGE) return fail("tensor row of %zu bytes exceeds the upload stage", cols * es);
  for (size_t r0 = 0; r0 < rows; r0 += per) {
    const size_t nr = std::min(per, rows - r0);
    CK(cudaMemcpyAsync(e->stage, (const char*)src + r0 * cols * es, nr * cols * es, cudaMemcpyHostToDevice, e->s0));
    k_convert<<<1024, 256, 0, e->s0>>>(e->stage, dtype, nr, cols, r0, rows, transpose, dst16, dst32);
    CK(cudaGetLastError());
  }
  CK(cudaStreamSynchronize(e->s0));  // the caller may free `src` once this returns
  return 0;
}

// The model's form beyond its dimensions (before uploading weights): pre_ln = 0 for post-LayerNorm blocks
// (do_layer_norm_before false), final_ln = 0 without the final LayerNorm, e_dim = word_embed_proj_dim (project_in /
// project_out when it differs from d), untied = 1 for a separate lm_head.
int dj_set_variant(void* ev, int pre_ln, int final_ln, int e_dim, int untied) {
  Engine* e = (Engine*)ev;
  if (e_dim < 8 || e_dim > e->d || e_dim % 8) return fail("word_embed_proj_dim %d: need a multiple of 8 in [8, d = %d]", e_dim, e->d);
  if (e->Wpin && e_dim != e->e_dim) return fail("word_embed_proj_dim %d: the engine was given %d before", e_dim, e->e_dim);
  e->pre_ln = pre_ln != 0;
  e->final_ln = final_ln != 0;
  if (e_dim != e->d && !e->Wpin) {
    if (dalloc(e, &e->Wpin, (size_t)e->d * e_dim) || dalloc(e, &e->Wpout, (size_t)e_dim * e->d) || dalloc(e, &e->xo, e_dim))
      return -1;
  }
  e->e_dim = e_dim;
  if (untied && e->lm == e->E && dalloc(e, &e->lm, (size_t)e->vocab * e->d)) return -1;
  if (!untied) e->lm = e->E;
  e->ln_folded = false;
  return apply_options(e, &e->opt);  // a form the streamed kernels do not take moves an automatic choice to portable
}

// Upload one checkpoint tensor in its stored dtype (0 F32, 1 F16, 2 BF16; nn.Linear layout, n elements): converted
// to fp16 (weights) or fp32 (biases, LayerNorms) and re-laid-out on the GPU.
int dj_upload_raw(void* ev, int tensor, int layer, const void* data, int dtype, long long n) {
  Engine* e = (Engine*)ev;
  if (dtype < DT_F32 || dtype > DT_BF16) return fail("tensor %d: dtype %d unknown (0 F32, 1 F16, 2 BF16)", tensor, dtype);
  e->ln_folded = false;  // weights or LayerNorm parameters change: the deferred-LN constants are recomputed before use
  const size_t d = e->d, ffn = e->ffn, dd = d * d, ed = e->e_dim;
  auto want = [&](size_t m) { return (size_t)n == m ? 0 : fail("tensor %d layer %d: %lld values, expected %zu", tensor, layer, n, m); };
  auto half = [&](__half* dst, size_t rows, size_t cols, bool tr = false) {
    return want(rows * cols) || up_raw(e, data, dtype, rows, cols, tr, dst, nullptr);
  };
  auto flt = [&](float* dst, size_t m) { return want(m) || up_raw(e, data, dtype, 1, m, false, nullptr, dst); };
  if (tensor < 10) {
    switch (tensor) {
      case T_EMBED: if (e->opt.selection == SEL_GROUPED) e->groups_dirty = true;  // layer 0's heads tables (pfuse.cuh head0)
        return half(e->E, e->vocab, ed);
      case T_POS: if (e->opt.selection == SEL_GROUPED) e->groups_dirty = true;
        return half(e->P, e->maxpos + 2, d);
      case T_LNF_W: return flt(e->lnf_g, d);
      case T_LNF_B: return flt(e->lnf_b, d);
      case T_LM_HEAD:
        if (e->lm == e->E && dalloc(e, &e->lm, (size_t)e->vocab * d)) return -1;
        return half(e->lm, e->vocab, ed);
      case T_PROJ_IN: if (!e->Wpin) return fail("project_in given but word_embed_proj_dim = d (dj_set_variant)");
        return half(e->Wpin, d, ed);
      case T_PROJ_OUT: if (!e->Wpout) return fail("project_out given but word_embed_proj_dim = d (dj_set_variant)");
        return half(e->Wpout, ed, d);
    }
    return fail("unknown tensor %d", tensor);
  }
  if (layer < 0 || layer >= e->L) return fail("layer %d out of range", layer);
  Layer& l = e->layers[layer];
  switch (tensor) {
    case T_LN1_W: if (e->opt.selection == SEL_GROUPED) e->groups_dirty = true;  // fused predictors depend on it (plan_fused)
      return flt(l.ln1_g, d);
    case T_LN1_B: return flt(l.ln1_b, d);
    case T_Q_W: return half(l.Wqkv, d, d);
    case T_K_W: return half(l.Wqkv + dd, d, d);
    case T_V_W: return half(l.Wqkv + 2 * dd, d, d);
    case T_Q_B: return flt(l.bqkv, d);
    case T_K_B: return flt(l.bqkv + d, d);
    case T_V_B: return flt(l.bqkv + 2 * d, d);
    case T_O_W: return half(l.WoT, d, d, true);
    case T_O_B: return flt(l.bo, d);
    case T_LN2_W: return flt(l.ln2_g, d);
    case T_LN2_B: return flt(l.ln2_b, d);
    case T_FC1_W: return half(l.W1, ffn, d);
    case T_FC1_B: return flt(l.b1, ffn);
    case T_FC2_W: return half(l.W2T, d, ffn, true);  // fc2 W [d][ffn] -> W2T [ffn][d]
    case T_FC2_B: return flt(l.b2, d);
  }
  return fail("unknown tensor %d", tensor);
}

// Upload one fp32 tensor (dj_upload_raw with F32).
int dj_upload(void* ev, int tensor, int layer, const float* data, long long n) {
  return dj_upload_raw(ev, tensor, layer, data, DT_F32, n);
}

// Free and total memory of the current GPU (bytes).
int dj_mem_info(long long* free_b, long long* total_b) {
  size_t f = 0, t = 0;
  CK(cudaMemGetInfo(&f, &t));
  *free_b = (long long)f;
  *total_b = (long long)t;
  return 0;
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

// The neuron groups of layer's MLP selection: G under the grouped selection for a fused MLP
// predictor (the tap layer's attention grid), else 1 (one top-k over all neurons). Known once the graphs are built.
int dj_mlp_groups(void* ev, int layer) {
  Engine* e = (Engine*)ev;
  if (layer < 0 || layer >= e->L) { fail("layer %d out of range", layer); return -1; }
  const Layer& l = e->layers[layer];
  return e->opt.selection == SEL_GROUPED && l.pm.fused ? std::max(1, e->layers[l.pm.src_layer].fz.groups) : 1;
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
  else while (*wpr < 8 && (long long)n_out * *wpr * 2 <= resident_warps) *wpr <<= 1;
  int rpb = (WARPS / *wpr) * (32 / *lpr);
  int need = (n_out + rpb - 1) / rpb;
  int cap = e->sms * per_sm;
  int rounds = (need + cap - 1) / cap;
  return (need + rounds - 1) / rounds;
}

// Launch on a stream, with programmatic dependent launch when `pdl`.
template <typename... KArgs, typename... Args>
static void launch_ex(bool pdl, void (*k)(KArgs...), dim3 g, dim3 b, size_t smem, cudaStream_t s, Args... args) {
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = g;
  cfg.blockDim = b;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = s;
  cudaLaunchAttribute at[1];
  at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  at[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = pdl ? at : nullptr;
  cfg.numAttrs = pdl ? 1 : 0;
  cudaLaunchKernelEx(&cfg, k, args...);
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
  // One wave of blocks: rows per chunk so that chunks x tiles fill the resident slots.
  long long target = (long long)e->sms * std::max(per_sm, 1);
  int R = (int)(((long long)a.n_rows * tiles + target - 1) / target);
  R = std::min(256, std::max(8, (R + 7) / 8 * 8));
  a.R = R;
  dim3 grid(tiles, (a.n_rows + R - 1) / R);
  launchk(e, pdl, k_cols, grid, dim3(threads), 0, s, a);
}

// valid: the layer's K/V validity flags unless given (the oracle ranks heads over every position: all set).
static void launch_attention(Engine* e, cudaStream_t s, Layer& l, const int* sel, int nh, bool pdl = false,
                             const uint8_t* valid = nullptr) {
  size_t smem = (size_t)att_state_floats(e->hd, ATT_THREADS / 32) * sizeof(float);
  const float* q = e->q;
  const __half *kc = l.kc, *vc = l.vc;
  if (!valid) valid = l.valid;
  const int* st = e->st;
  float* att = e->att;
  int maxT = e->maxT;
  if (e->hd == 128) launchk(e, pdl, k_attention<128>, dim3(nh), dim3(ATT_THREADS), smem, s, q, kc, vc, valid, sel, st, maxT, att);
  else if (e->hd == 64) launchk(e, pdl, k_attention<64>, dim3(nh), dim3(ATT_THREADS), smem, s, q, kc, vc, valid, sel, st, maxT, att);
  else launchk(e, pdl, k_attention<32>, dim3(nh), dim3(ATT_THREADS), smem, s, q, kc, vc, valid, sel, st, maxT, att);
}

// A predictor group's first layer on the portable path, from the fp16 copies the last LayerNorm wrote.
static void launch_pred1(Engine* e, cudaStream_t s, const __half* w1, int rows, bool norm, float* t) {
  RowsArgs a{};
  a.W = w1; a.K = e->d; a.n_out = rows; a.x = norm ? e->xp : e->xr; a.map = MAP_ID; a.y = t;
  launch_rows<EPI_PLAIN>(e, s, a);
}

// Scores + top-k of one predictor on a side stream. No PDL there: measured slower (the chain's kernels are short).
static void launch_topk(Engine* e, cudaStream_t s, Pred& p, const float* t, int n, int k, int* sel) {
  TopkArgs a{};
  a.W2 = p.w2; a.t = t; a.n = n; a.r = p.rank; a.k = k;
  a.lpr = 1;  // lanes per row: a power of two (shuffle reduction), at most 32, at least the row's 16-byte vectors
  while (a.lpr < std::min(32, p.rank / 8)) a.lpr <<= 1;
  a.scores = p.scores; a.sel = sel; a.s = p.topk;
  int rpb = (TOPK_THREADS / 32) * (32 / a.lpr) * TOPK_U;
  int grid = std::min((n + rpb - 1) / rpb, e->sms * 2);  // at most 2 blocks an SM
  k_pred_scores<TOPK_U><<<grid, TOPK_THREADS, 0, s>>>(a);
  if (n > TOPK_THREADS) k_topk_select<<<(n + TOPK_THREADS - 1) / TOPK_THREADS, TOPK_THREADS, 0, s>>>(a);
}

// ---- streamed path (fused.cuh) ----------------------------------------------------------------------------------
// Geometry for a row kernel over rows of K elements, `per` rows per block: segments of at most SEG_BYTES (whole
// 16-byte vectors), stages of min(TW, per) row segments, as many stages as the ring holds (at most T_MAX_STAGES).
// k_mlp_tma's fc2 phase gives each consumer thread one 16-byte vector of a segment: segment <= 16 * 32 * TW bytes.
static TGeo make_geo(Engine* e, int K, int per) {
  const int target = std::min(SEG_BYTES, 16 * 32 * TW);
  int seg = std::max(1, (2 * K + target - 1) / target);
  while (seg < T_SEGMAX && K % (8 * seg)) seg++;
  seg = std::min(seg, T_SEGMAX);
  while (K % (8 * seg)) seg--;  // K % 8 == 0, so this ends at 1 at the latest
  const int segb = 2 * K / seg;
  const int ring = std::min(RING_BYTES, e->smem_optin - 4 * K - 8192);
  auto in_flight = [&](int r) { return std::min(T_MAX_STAGES, ring / (r * segb)) * r * segb; };
  int rows = std::max(1, std::min(TW, per));
  // Long streams: a stage of 3/4 TW..TW rows that puts >= 5% more bytes in the ring (13B: 13 rows of 5 KB x 3
  // stages = 195 KB in flight instead of 16 x 2 = 160 KB, dense 6.72 -> 6.57 ms).
  if (per > 2 * TW)
    for (int r = TW - 1; r >= 3 * TW / 4; r--)
      if (in_flight(r) > in_flight(rows) * 21 / 20) rows = r;
  return TGeo{seg, std::max(1, std::min(T_MAX_STAGES, ring / (rows * segb))), rows, ROWIX};
}
static size_t geo_smem(const TGeo& g, int K) { return (size_t)K * 4 + (size_t)g.S * g.rows * (2 * K / g.seg); }

template <int EPI>
static void launch_rows_tma(Engine* e, cudaStream_t s, RowsArgs a, XIn in, bool pdl) {
  const int grid = std::min(e->sms_now, a.n_out + a.pn);
  const TGeo g = make_geo(e, a.K, (a.n_out + a.pn + grid - 1) / grid);
  const size_t smem = geo_smem(g, a.K);
  const bool pf = EPI == EPI_QKV && (a.pn || a.sel_flag);  // fused predictors: their own instantiation
  if (pf) launchk(e, pdl, k_rows_tma<EPI, true>, dim3(grid), dim3(T_THREADS), smem, s, a, in, g);
  else launchk(e, pdl, k_rows_tma<EPI>, dim3(grid), dim3(T_THREADS), smem, s, a, in, g);
}
static void launch_mlp_tma(Engine* e, cudaStream_t s, MlpTmaArgs a, XIn in, bool pdl) {
  const int grid = std::min(e->sms_now, a.n);
  const TGeo g = make_geo(e, a.d, (a.n + grid - 1) / grid);
  const size_t smem = geo_smem(g, a.d);
  // A graph with no side-stream predictors (the grouped mode) needs no room left beside this kernel, so its MLP may
  // use 96 registers instead of 72 (no spills): 13B (rows of 2 segments) 1.532 -> 1.517 ms on an H200, but 30B
  // (4 segments) 3.037 -> 3.088, so only up to 2 segments.
  const bool wide = a.sel_flag && g.seg <= 2 && e->groups_side.empty();
  if (wide) launchk(e, pdl, k_mlp_tma<true, 96>, dim3(grid), dim3(T_THREADS), smem, s, a, in, g);
  else if (a.sel_flag) launchk(e, pdl, k_mlp_tma<true>, dim3(grid), dim3(T_THREADS), smem, s, a, in, g);
  else launchk(e, pdl, k_mlp_tma<false>, dim3(grid), dim3(T_THREADS), smem, s, a, in, g);
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
  const int att = att_state_floats(hd, TW) * 4;
  const dim3 grid(nheads * a.slices), block(T_THREADS + (a.pf.on ? 32 * PF_LOCAL_WARPS : 0));
  unsigned pfb = 0;  // the fused predictors' warps: their slice of the big member's w2 rows and their work space
  if (a.pf.on) {
    a.pf.per = a.pf.nbig ? (a.pf.big.n + (int)grid.x - 1) / (int)grid.x : 0;
    pfb = pf_layout(a.pf).bytes;
  }
  const int ring = std::min(RING_BYTES, e->smem_optin - att - 8192 - (int)pfb);
  while (R > 1 && R * rowbytes > ring) R /= 2;
  a.R = R;
  a.S = std::max(1, std::min({T_MAX_STAGES, hd / R, ring / (R * rowbytes)}));
  a.lead = LEAD_ATT;
  size_t smem = (size_t)att + (size_t)a.S * R * rowbytes;
  if (a.pf.on) {
    a.pf.smem_off = (unsigned)((smem + 127) & ~(size_t)127);
    smem = a.pf.smem_off + pfb;
  }
  auto go = [&](auto k) { launchk(e, pdl, k, grid, block, smem, s, a); };
  const bool pf = a.pf.on || a.sel_flag;  // fused predictors: their own instantiation (k_rows_tma says why)
  if (hd == 128) pf ? go(k_attn_out<128, true>) : go(k_attn_out<128>);
  else if (hd == 64) pf ? go(k_attn_out<64, true>) : go(k_attn_out<64>);
  else pf ? go(k_attn_out<32, true>) : go(k_attn_out<32>);
}
// The residual stream at point r (fused.cuh header): X[r-1] + D[r] (+ D2[r] for an MLP output; X[0] alone at r = 0).
static XIn point_in(Engine* e, int r, const float* g, const float* b, int norm, bool materialise) {
  const size_t d = e->d;
  XIn in{};
  in.base = r == 0 ? e->X : e->X + (r - 1) * d;
  in.delta = r == 0 ? nullptr : e->D + r * d;
  in.delta2 = r > 0 && r % 2 == 0 ? e->D + (2 * e->L + 1 + r) * d : nullptr;
  in.out = materialise && r > 0 ? e->X + r * d : nullptr;
  in.g = g; in.b = b; in.eps = e->eps; in.norm = norm;
  return in;
}
static int pf_prep(Engine* e);
// The deferred LayerNorm's constants of every streamed row kernel that normalises its input (QKV, fc1, LM head):
// the LayerNorm applied in the row epilogue instead of a prologue pass over x.
static int fold_ln(Engine* e) {
  if (!e->tma || e->ln_folded) return 0;
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
static XIn folded(XIn in, const float* c1, const float* c2) {
  in.c1 = c1;
  in.c2 = c2;
  return in;
}
static int set_tma_attrs(Engine* e) {
  if (!e->tma) return 0;
  auto raise = [&](const void* k) -> int {
    cudaFuncAttributes at;
    CK(cudaFuncGetAttributes(&at, k));
    CK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, e->smem_optin - (int)at.sharedSizeBytes));
    return 0;
  };
  if (raise((const void*)k_rows_tma<EPI_QKV>) || raise((const void*)k_rows_tma<EPI_ARGMAX>) ||
      raise((const void*)k_rows_tma<EPI_QKV, true>) || raise((const void*)k_mlp_tma<false>) ||
      raise((const void*)k_mlp_tma<true>) || raise((const void*)k_mlp_tma<true, 96>) ||
      raise((const void*)k_attn_out<128>) || raise((const void*)k_attn_out<64>) || raise((const void*)k_attn_out<32>) ||
      raise((const void*)k_attn_out<128, true>) || raise((const void*)k_attn_out<64, true>) ||
      raise((const void*)k_attn_out<32, true>))
    return -1;
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
                "zero); run dj_build again after changing weights, or use the exact selection", bad);
  return 0;
}
// The grouped selection's plan (pfuse.cuh): which predictors ride in the main kernels. Tap att_in(l), selection used
// at the MLP of l or later, at most one big (n > PF_SMALL_MAX, picked by the grouped top-k) and PF_MAX_SMALL small
// ones (exact top-k) per tap layer, and layer l's LayerNorm gain away from zero (the w1 rows are stored divided by
// it). The exact selection runs every predictor on the side streams.
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
  if (e->opt.selection != SEL_GROUPED || !e->tma) return 0;
  std::vector<int> nbig(e->L, 0), nsmall(e->L, 0), gain_ok(e->L, -1);
  for (int li = 0; li < e->L; li++)
    for (int tg = 1; tg >= 0; tg--) {  // MLP first: a layer's big member is its own MLP predictor
      Pred& p = tg == 0 ? e->layers[li].pa : e->layers[li].pm;
      const int l = p.src_layer;
      if (!p.on || p.tap != TAP_ATT_IN || (tg == 0 ? li < l + 1 : li < l)) continue;
      const int n = tg == 0 ? e->H : e->ffn;
      const bool big = n > PF_SMALL_MAX;
      if (big ? nbig[l] >= 1 : nsmall[l] >= PF_MAX_SMALL) continue;
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
  if (Pred& p0 = e->layers[0].pa; p0.on && p0.tap == TAP_ATT_IN && p0.src_layer == 0 && e->H <= PF_SMALL_MAX) {
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
  p.on = 1; p.t = f.t; p.trows = f.rows; p.st = e->st;
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

// Record the whole decode step for `mode` on s0 (predictors fork onto s1 / s2 and join back before their consumers).
// Profiling (dj_profile): launches go eagerly to one stream, with a timing event after each, tagged by kind.
enum ProfKind { P_EMBED, P_QKV, P_ATT, P_OUT, P_FC1, P_FC2, P_LM, P_PRED1, P_TOPK_ATTN, P_TOPK_MLP, P_MLP, P_COUNT };
struct Prof {
  std::vector<cudaEvent_t> evs;
  std::vector<int> kinds;
  size_t used = 0;
};

// ---- portable path: the model's form ---------------------------------------------------------------------------
// The GEMV inputs written where the residual stream is finished (kernels.cuh LnOut). Pre-LN: the next block's
// LayerNorm on a copy (the final one before the LM head, or none). Post-LN: the finished block's own LayerNorm on x
// itself, and the next GEMV reads x.
static LnOut ln_plain(Engine* e, const float* g = nullptr, const float* b = nullptr, int post = 0) {
  return LnOut{g, b, e->eps, e->xn, e->xr, e->xp, post};
}
static LnOut ln_after_embed(Engine* e) {
  return e->pre_ln ? ln_plain(e, e->layers[0].ln1_g, e->layers[0].ln1_b) : ln_plain(e);
}
static LnOut ln_after_attention(Engine* e, int li) {
  const Layer& l = e->layers[li];
  return e->pre_ln ? ln_plain(e, l.ln2_g, l.ln2_b) : ln_plain(e, l.ln1_g, l.ln1_b, 1);
}
static LnOut ln_after_mlp(Engine* e, int li) {
  if (!e->pre_ln) return ln_plain(e, e->layers[li].ln2_g, e->layers[li].ln2_b, 1);
  if (li + 1 < e->L) return ln_plain(e, e->layers[li + 1].ln1_g, e->layers[li + 1].ln1_b);
  return e->final_ln ? ln_plain(e, e->lnf_g, e->lnf_b) : ln_plain(e);
}
// x = E[token] (through project_in where word_embed_proj_dim < d) + P[pos + 2], then layer 0's GEMV inputs.
static void launch_embed(Engine* e, cudaStream_t s) {
  const __half* E = e->E;
  if (e->e_dim != e->d) {
    launchk(e, false, k_embed_row, dim3(1), dim3(256), 0, s, (const __half*)e->E, (const int*)e->tokens,
            (const int*)e->st, e->e_dim, e->xo);
    RowsArgs a{};
    a.W = e->Wpin; a.K = e->e_dim; a.n_out = e->d; a.x = e->xo; a.map = MAP_ID; a.y = e->x;
    launch_rows<EPI_PLAIN>(e, s, a, true);
    E = nullptr;
  }
  launchk(e, !E, k_embed, dim3(1), dim3(1024), 0, s, E, (const __half*)e->P, (const int*)e->tokens, (const int*)e->st,
          e->d, e->x, ln_after_embed(e));
}
// The LM head over xn (through project_out where word_embed_proj_dim < d): logits, the next token, the position.
static void launch_lm_head(Engine* e, cudaStream_t s, bool pdl) {
  const __half* in = e->xn;
  if (e->e_dim != e->d) {
    RowsArgs p{};
    p.W = e->Wpout; p.K = e->d; p.n_out = e->e_dim; p.x = e->xn; p.map = MAP_ID; p.y = e->h;  // h: free by now
    launch_rows<EPI_PLAIN>(e, s, p, pdl);
    launchk(e, true, k_to_half, dim3(1), dim3(256), 0, s, (const float*)e->h, e->e_dim, e->xo);
    in = e->xo;
    pdl = true;
  }
  RowsArgs a{};
  a.W = e->lm; a.K = e->e_dim; a.n_out = e->vocab; a.x = in; a.map = MAP_ID; a.y = e->logits; a.st = e->st;
  a.maxT = e->maxT; a.amax = e->amax; a.counter = e->lm_counter; a.tokens = e->tokens;
  launch_rows<EPI_ARGMAX>(e, s, a, pdl);
}

static int record_step(Engine* e, int mode, Prof* prof = nullptr) {
  const int d = e->d, H = e->H, hd = e->hd, ffn = e->ffn;
  const bool preds = mode == M_SPARSE || mode == M_PRED;
  const bool kv_all = e->opt.kv_policy == KV_ALL;
  // Grouped selection: the fused predictors ride in the main kernels; the side-stream chain keeps only the others,
  // and when those all run before layer 0 (side_early) the graph keeps PDL and every SM like the fixed one.
  const bool fuse = mode == M_SPARSE && e->fused_any && e->tma;
  std::vector<Group>& groups = fuse ? e->groups_side : e->groups;
  const bool side = preds && !(fuse && e->side_early);  // side-stream predictors beside the layers
  cudaStream_t s0 = e->s0, s1 = prof ? e->s0 : e->s1, s2 = prof ? e->s0 : e->s2;
  size_t evi = 0;
  auto ev = [&]() -> cudaEvent_t { return e->evs[evi++ % e->evs.size()]; };
  auto mark = [&](int kind) {
    if (!prof) return;
    if (prof->used == prof->evs.size()) { cudaEvent_t v; cudaEventCreate(&v); prof->evs.push_back(v); prof->kinds.push_back(0); }
    prof->kinds[prof->used] = kind;
    cudaEventRecord(prof->evs[prof->used++], s0);
  };
  mark(-1);
  e->pdl_now = !side;
  e->sms_now = std::max(1, e->sms - (side ? RESERVE_SMS : 0));
  const bool compute = mode != M_PRED;
  const bool sparse = mode == M_SPARSE || mode == M_FIXED;
  // Pending joins: (event, layer, target) the main stream must wait on before consuming a selection.
  struct Join { cudaEvent_t done; int layer, target; };
  std::vector<Join> joins;
  std::vector<cudaEvent_t> read_done;  // portable path: predictors that still read x, waited on before x changes

  // Launch the predictor groups whose source is (tap, layer): one stacked first-layer GEMV reads the tap now (on
  // s1), then each member's scores + top-k (alternating s1 / s2 so two run side by side).
  auto fire_tap = [&](int tap, int layer) {
    if (!preds) return;
    for (auto& g : groups) {
      if (g.tap != tap || g.layer != layer) continue;
      cudaEvent_t fork = ev();
      cudaEventRecord(fork, s0);
      cudaStreamWaitEvent(s1, fork, 0);
      Pred& p0 = g.members[0].second == 0 ? e->layers[g.members[0].first].pa : e->layers[g.members[0].first].pm;
      const bool stacked = g.members.size() > 1;
      const __half* w1 = stacked ? g.w1 : p0.w1;
      const int rows = stacked ? g.rows : p0.rank;
      float* t = stacked ? g.t : p0.t;
      if (e->tma) {  // the tap's input computed from the immutable (X[r-1], D[r]) inside the w1 GEMV (predict.cuh)
        const XIn tin = point_in(e, tap == TAP_ATT_IN ? 2 * layer : 2 * layer + 1, nullptr, nullptr, g.norm, false);
        const int wpb = PH_THREADS / 32;
        k_pred_hidden<<<(rows + wpb - 1) / wpb, PH_THREADS, (size_t)d * 4, s1>>>(tin, d, w1, rows, t);
      } else {
        launch_pred1(e, s1, w1, rows, g.norm, t);
      }
      mark(P_PRED1);
      cudaEvent_t w1_done = ev();
      cudaEventRecord(w1_done, s1);
      if (!e->tma) read_done.push_back(w1_done);
      int m = 0, off = 0;
      for (auto [li, tg] : g.members) {
        Layer& l = e->layers[li];
        Pred& p = tg == 0 ? l.pa : l.pm;
        const float* tm = stacked ? g.t + off : p.t;  // this member's w1 output
        off += p.rank;
        cudaStream_t ss = (m++ % 2 == 0) ? s1 : s2;
        if (ss != s1) cudaStreamWaitEvent(ss, w1_done, 0);
        if (tg == 0) launch_topk(e, ss, p, tm, H, l.kH, l.hsel);
        else launch_topk(e, ss, p, tm, ffn, l.kM, l.nsel);
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
  auto consume = [&](int layer, int target) {
    bool joined = false;
    for (size_t i = 0; i < joins.size();) {
      if (joins[i].layer == layer && joins[i].target == target) {
        cudaStreamWaitEvent(s0, joins[i].done, 0);
        joins.erase(joins.begin() + i);
        joined = true;
      } else i++;
    }
    return joined;
  };

  if (e->tma) {
    // Streamed path: 3 kernels per layer (fused.cuh), no in-place residual update, so no read-before-write waits.
    const float qs = 1.f / sqrtf((float)hd);
    launchk(e, false, k_embed_tma, dim3(e->sms), dim3(256), 0, s0, (const __half*)e->E, (const __half*)e->P,
            (const int*)e->tokens, (const int*)e->st, d, e->X, e->D + d,
            (size_t)(4 * e->L + 1) * d);  // D[1..2L] and the second copy, D2[0..2L]
    mark(P_EMBED);
    if (fuse && e->head0 && sparse && e->layers[0].kH < H) {  // layer 0's heads from the tables (pfuse.cuh head0)
      Layer& l0 = e->layers[0];
      PfMember m{};
      m.n = H; m.k = l0.kH; m.sel = l0.hsel; m.done = e->pflags;
      launchk(e, true, k_head0_select, dim3(1), dim3(32), 0, s0, (const float*)e->h0E, (const float*)e->h0P,
              (const int*)e->tokens, (const int*)e->st, m);
    }
    for (int li = 0; li < e->L; li++) {
      Layer& l = e->layers[li];
      const int kH = sparse ? l.kH : H, kM = sparse ? l.kM : ffn;
      const bool hs = kH < H, ns = kM < ffn;
      fire_tap(TAP_ATT_IN, li);
      const bool join_h = consume(li, 0);
      if (compute) {
        RowsArgs a{};
        a.W = l.Wqkv; a.b = l.bqkv; a.K = d; a.n_out = kv_all && hs ? kH * hd + 2 * d : 3 * kH * hd;
        a.map = !hs ? MAP_ID : kv_all ? MAP_Q_KVALL : MAP_QKV; a.sel = hs ? l.hsel : nullptr; a.kH = kH; a.hd = hd;
        a.d = d; a.y = e->q; a.q_scale = qs; a.kc = l.kc; a.vc = l.vc; a.valid = l.valid; a.maxT = e->maxT; a.st = e->st;
        const unsigned* hflag = fuse && hs && l.pa.fused ? e->pflags + 2 * li : nullptr;
        a.sel_flag = hflag;
        if (fuse && l.fz.on) {  // fused predictors reading this att_in: their w1 rows ride along
          a.pW = l.fz.w1p; a.pn = l.fz.rows; a.pbase = 3 * d; a.pt = l.fz.t; a.pc1 = l.fz.c1; a.pnm = l.fz.nm;
        }
        launch_rows_tma<EPI_QKV>(e, s0, a, folded(point_in(e, 2 * li, l.ln1_g, l.ln1_b, 1, true), l.c1q, l.c2q), !join_h);
        mark(P_QKV);
        AttnOutArgs o{};
        o.q = e->q; o.kc = l.kc; o.vc = l.vc; o.valid = l.valid; o.sel = hs ? l.hsel : nullptr; o.st = e->st;
        o.maxT = e->maxT; o.d = d; o.WoT = l.WoT; o.bias = l.bo; o.y = e->D + (size_t)(2 * li + 1) * d;
        o.sel_flag = hflag;
        if (fuse && l.fz.on) {
          o.pf = make_pf(e, l);
          l.fz.groups = kH * attn_slices(e, kH);  // the grouped top-k's groups (dj_mlp_groups reports them)
        }
        launch_attn_out(e, s0, o, kH, true);
        mark(P_ATT);
      }
      fire_tap(TAP_MLP_IN, li);
      const bool join_m = consume(li, 1);
      if (compute) {
        MlpTmaArgs m{};
        m.W1 = l.W1; m.b1 = l.b1; m.W2T = l.W2T; m.b2 = l.b2; m.sel = ns ? l.nsel : nullptr; m.n = kM; m.d = d;
        m.y = e->D + (size_t)(2 * li + 2) * d;
        m.y2 = e->D + (size_t)(2 * e->L + 1 + 2 * li + 2) * d;
        if (fuse && ns && l.pm.fused) {  // the grouped top-k: one flag per group of the tap layer's attention kernel
          const Fuse& fz = e->layers[l.pm.src_layer].fz;
          m.sel_flag = e->pflags + 2 * li + 1; m.st = e->st; m.gflags = fz.gdone; m.ngroups = fz.groups;
        }
        launch_mlp_tma(e, s0, m, folded(point_in(e, 2 * li + 1, l.ln2_g, l.ln2_b, 1, true), l.c1m, l.c2m), !join_m);
        mark(P_MLP);
      }
    }
    for (auto& j : joins) cudaStreamWaitEvent(s0, j.done, 0);
    if (compute) {
      RowsArgs a{};
      a.W = e->lm; a.K = d; a.n_out = e->vocab;
      a.map = MAP_ID; a.y = e->logits; a.st = e->st; a.maxT = e->maxT; a.amax = e->amax; a.counter = e->lm_counter;
      a.tokens = e->tokens;
      launch_rows_tma<EPI_ARGMAX>(e, s0, a, folded(point_in(e, 2 * e->L, e->lnf_g, e->lnf_b, 1, false), e->c1lm, e->c2lm),
                                  true);
      mark(P_LM);
    }
    return 0;
  }
  // Portable path: per-op kernels (kernels.cuh), the residual stream x updated in place.
  launch_embed(e, s0);
  mark(P_EMBED);
  for (int li = 0; li < e->L; li++) {
    Layer& l = e->layers[li];
    const int kH = sparse ? l.kH : H, kM = sparse ? l.kM : ffn;
    const bool hs = kH < H, ns = kM < ffn;
    // ---- attention block ----
    fire_tap(TAP_ATT_IN, li);
    consume(li, 0);
    if (compute) {
      RowsArgs a{};
      a.W = l.Wqkv; a.b = l.bqkv; a.K = d; a.n_out = kv_all && hs ? kH * hd + 2 * d : 3 * kH * hd; a.x = e->xn;
      a.map = !hs ? MAP_ID : kv_all ? MAP_Q_KVALL : MAP_QKV; a.sel = hs ? l.hsel : nullptr; a.kH = kH; a.hd = hd; a.d = d;
      if (hs) {  // out_proj^T rows of the selected heads into L2: hd contiguous rows each
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
      c.counter = e->cols_counter; c.ln = ln_after_attention(e, li);
      launch_cols(e, s0, c, true);
      mark(P_OUT);
    }
    // ---- MLP block ----
    fire_tap(TAP_MLP_IN, li);
    consume(li, 1);
    const LnOut next_ln = ln_after_mlp(e, li);
    if (compute && ns) {
      // Sparse MLP: gathered fc1 + ReLU + gathered fc2 in one launch (reads xn, adds into x).
      before_x_write();
      MlpArgs m{};
      m.W1 = l.W1; m.b1 = l.b1; m.W2T = l.W2T; m.b2 = l.b2; m.x = e->xn; m.sel = l.nsel; m.kM = kM; m.d = d; m.y = e->x;
      m.counter = e->cols_counter; m.ln = next_ln;
      if (li + 1 < e->L) {
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
      a.map = MAP_ID; a.sel = l.nsel; a.y = e->h;
      launch_rows<EPI_RELU>(e, s0, a, true);
      mark(P_FC1);
    }
    before_x_write();
    if (compute) {
      ColsArgs c{};
      c.WT = l.W2T; c.n_cols = d; c.n_rows = kM; c.map = MAP_ID; c.sel = l.nsel; c.hd = hd;
      c.in = e->h; c.bias = l.b2; c.y = e->x;
      c.counter = e->cols_counter;
      c.ln = next_ln;
      launch_cols(e, s0, c, true);
      mark(P_FC2);
    }
  }
  for (auto& j : joins) cudaStreamWaitEvent(s0, j.done, 0);
  before_x_write();
  if (compute) {
    launch_lm_head(e, s0, true);
    mark(P_LM);
  }
  return 0;
}

// k_attention's dynamic shared memory (the warps' merge state), allowed before its launches (graphs and the oracle).
static int attention_attrs() {
  CK(cudaFuncSetAttribute(k_attention<128>, cudaFuncAttributeMaxDynamicSharedMemorySize, att_state_floats(128, ATT_THREADS / 32) * 4));
  CK(cudaFuncSetAttribute(k_attention<64>, cudaFuncAttributeMaxDynamicSharedMemorySize, att_state_floats(64, ATT_THREADS / 32) * 4));
  CK(cudaFuncSetAttribute(k_attention<32>, cudaFuncAttributeMaxDynamicSharedMemorySize, att_state_floats(32, ATT_THREADS / 32) * 4));
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
  if (build_groups(e) || set_tma_attrs(e) || fold_ln(e)) return -1;
  if (attention_attrs()) return -1;
  for (int m = 0; m < M_COUNT; m++) {
    if (e->graphs[m]) { cudaGraphExecDestroy(e->graphs[m]); e->graphs[m] = nullptr; }
    cudaGraph_t g;
    CK(cudaStreamBeginCapture(e->s0, cudaStreamCaptureModeThreadLocal));
    const int rc = record_step(e, m);
    cudaError_t ce = cudaStreamEndCapture(e->s0, &g);
    if (rc) { if (ce == cudaSuccess) cudaGraphDestroy(g); return -1; }
    if (ce != cudaSuccess) return fail("capture of mode %d failed: %s", m, cudaGetErrorString(ce));
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
  if (build_groups(e) || set_tma_attrs(e) || fold_ln(e)) return -1;
  CK(cudaStreamBeginCapture(e->s0, cudaStreamCaptureModeThreadLocal));
  record_step(e, mode);
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
  if (build_groups(e) || set_tma_attrs(e) || fold_ln(e)) return -1;
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

}  // extern "C"

// ---- oracle ----------------------------------------------------------------------------------------------------
// Teacher-forced decode with the oracle's selections, the CPU runtime's mode 'oracle' (runtime/sparse/model.ts): in a
// layer with kH < H, every head's q, k, v are computed (and its K/V stored), every head attends over its whole history,
// the kH heads with the largest output L2 norm are kept and the others output zero; under KV policy selected only the
// kept heads' slots of this position stay valid and their attention is recomputed over their valid positions. In a
// layer with kM < ffn, fc1 runs dense and the kM largest activations go through fc2. Ties go to the lower index in
// both (k_topk_block). It measures what the true top-k costs in quality, not speed: the portable per-op kernels,
// launched eagerly on either path (the decode graphs never run it), reading the engine's weights and KV cache.
static int oracle_alloc(Engine* e) {
  auto& o = e->orc;
  if (o.hsel) return 0;
  const int L = e->L, H = e->H, ffn = e->ffn;
  if (dalloc(e, &o.hsel, (size_t)L * H) || dalloc(e, &o.nsel, (size_t)L * ffn) || dalloc(e, &o.norms, H) ||
      dalloc(e, &o.vals, ffn) || dalloc(e, &o.ones, (size_t)H * e->maxT))
    return -1;
  std::vector<int> id((size_t)L * ffn);
  for (int l = 0; l < L; l++)
    for (int i = 0; i < ffn; i++) id[(size_t)l * ffn + i] = i;
  CK(cudaMemcpy(o.nsel, id.data(), (size_t)L * ffn * sizeof(int), cudaMemcpyHostToDevice));
  for (int l = 0; l < L; l++) CK(cudaMemcpy(o.hsel + (size_t)l * H, id.data(), H * sizeof(int), cudaMemcpyHostToDevice));
  CK(cudaMemset(o.ones, 1, (size_t)H * e->maxT));
  return 0;
}

static int oracle_step(Engine* e) {
  const int d = e->d, H = e->H, hd = e->hd, ffn = e->ffn;
  const bool kv_sel = e->opt.kv_policy == KV_SELECTED;
  const cudaStream_t s = e->s0;
  auto& o = e->orc;
  launch_embed(e, s);
  for (int li = 0; li < e->L; li++) {
    Layer& l = e->layers[li];
    const bool hs = l.kH < H, ns = l.kM < ffn;
    int* hsel = o.hsel + (size_t)li * H;
    int* nsel = o.nsel + (size_t)li * ffn;
    // ---- attention block: every head's q, k, v (K/V of every head stored and marked valid at this position) ----
    RowsArgs a{};
    a.W = l.Wqkv; a.b = l.bqkv; a.K = d; a.n_out = 3 * d; a.x = e->xn; a.map = MAP_ID; a.kH = H; a.hd = hd; a.d = d;
    a.y = e->q; a.q_scale = 1.f / sqrtf((float)hd); a.kc = l.kc; a.vc = l.vc; a.valid = l.valid; a.maxT = e->maxT;
    a.st = e->st;
    launch_rows<EPI_QKV>(e, s, a);
    launch_attention(e, s, l, nullptr, H, false, hs ? o.ones : nullptr);
    if (hs) {
      k_head_norms<<<(H + 7) / 8, 256, 0, s>>>(e->att, H, hd, o.norms);
      TopkBlockArgs t{};
      t.v = o.norms; t.n = H; t.k = l.kH; t.sel = hsel; t.st = e->st;
      if (kv_sel) { t.flags = l.valid; t.flag_stride = e->maxT; }
      k_topk_block<<<1, TOPK_BLOCK_THREADS, 0, s>>>(t);
      if (kv_sel) launch_attention(e, s, l, hsel, l.kH);  // the kept heads over their own valid positions
    }
    ColsArgs c{};
    c.WT = l.WoT; c.n_cols = d; c.n_rows = (hs ? l.kH : H) * hd; c.map = hs ? MAP_QKV : MAP_ID; c.sel = hsel; c.hd = hd;
    c.in = e->att; c.bias = l.bo; c.y = e->x; c.counter = e->cols_counter; c.ln = ln_after_attention(e, li);
    launch_cols(e, s, c);
    // ---- MLP block: fc1 dense, then fc2 over the kM largest activations ----
    RowsArgs f{};
    f.W = l.W1; f.b = l.b1; f.K = d; f.n_out = ffn; f.x = e->xn; f.map = MAP_ID; f.y = e->h;
    launch_rows<EPI_RELU>(e, s, f);
    if (ns) {
      TopkBlockArgs t{};
      t.v = e->h; t.n = ffn; t.k = l.kM; t.sel = nsel; t.vals = o.vals;
      k_topk_block<<<1, TOPK_BLOCK_THREADS, 0, s>>>(t);
    }
    ColsArgs c2{};
    c2.WT = l.W2T; c2.n_cols = d; c2.n_rows = ns ? l.kM : ffn; c2.map = ns ? MAP_LIST : MAP_ID; c2.sel = nsel; c2.hd = hd;
    c2.in = ns ? o.vals : e->h; c2.bias = l.b2; c2.y = e->x; c2.counter = e->cols_counter;
    c2.ln = ln_after_mlp(e, li);
    launch_cols(e, s, c2);
  }
  launch_lm_head(e, s, false);  // advances the position (the next token stays the forced one)
  k_step_nll<<<1, PF_THREADS, 0, s>>>(e->logits, e->vocab, e->st, e->tokens, e->step_nll);
  CK(cudaGetLastError());
  return 0;
}

extern "C" {

// Teacher-forced decode with the oracle's selections (above): `steps` steps from the current position, k per layer
// from dj_set_k / dj_set_predictor (k = H / ffn: that block dense), the engine's KV policy; nll: host [steps], the NLL
// of each forced next token (the prompt must reach pos + steps). Needs no dj_build.
int dj_oracle_nll(void* ev, int steps, float* nll) {
  Engine* e = (Engine*)ev;
  int st[2];
  CK(cudaMemcpy(st, e->st, sizeof st, cudaMemcpyDeviceToHost));
  if (steps < 1 || st[0] + steps >= st[1])
    return fail("oracle_nll: %d steps from position %d pass the forced tokens (prompt length %d)", steps, st[0], st[1]);
  if (oracle_alloc(e) || attention_attrs()) return -1;
  for (int i = 0; i < steps; i++)
    if (oracle_step(e)) return -1;
  CK(cudaMemcpyAsync(nll, e->step_nll + st[0], steps * sizeof(float), cudaMemcpyDeviceToHost, e->s0));
  CK(cudaStreamSynchronize(e->s0));
  CK(cudaGetLastError());
  return 0;
}

// The oracle's picks of its last step in `layer`: kH heads and kM neurons (dj_set_k), ascending; 0..k-1 where that
// block is dense.
int dj_oracle_selection(void* ev, int layer, int* heads, int* neurons) {
  Engine* e = (Engine*)ev;
  if (layer < 0 || layer >= e->L) return fail("layer %d out of range", layer);
  if (oracle_alloc(e)) return -1;
  const Layer& l = e->layers[layer];
  CK(cudaMemcpy(heads, e->orc.hsel + (size_t)layer * e->H, l.kH * sizeof(int), cudaMemcpyDeviceToHost));
  CK(cudaMemcpy(neurons, e->orc.nsel + (size_t)layer * e->ffn, l.kM * sizeof(int), cudaMemcpyDeviceToHost));
  return 0;
}

}  // extern "C"

// ---- prefill ---------------------------------------------------------------------------------------------------
// Whole sequences through the model at once (prefill.cuh, GEMMs on cuBLAS): the rows of every sequence in one GEMM
// per weight, attention per sequence (scores S = Q K^T per head on tensor cores, causal softmax, P V), heads taken
// in groups so S and P stay under PF_ATT_BYTES. Workspace grows to the largest call and is kept.
constexpr double PF_ATT_BYTES = 1.0 * (1u << 30);
constexpr int PF_LM_ROWS = 1024;  // LM-head rows per chunk: logits [PF_LM_ROWS][vocab] fp32

static int pf_heads_per_group(const Engine* e, int n) {
  return std::max(1, std::min(e->H, (int)(PF_ATT_BYTES / (6.0 * n * n))));
}

static int pf_reserve(Engine* e, int T, int n) {
  auto& p = e->pf;
  if (T <= p.cap_T && n <= p.cap_n) return 0;
  T = std::max(T, p.cap_T);
  n = std::max(n, p.cap_n);
  CK(cudaDeviceSynchronize());  // queued taps sequences may still use the old workspace
  for (void* v : p.allocs) cudaFree(v);
  p.allocs.clear();
  p = Engine::Prefill{};
  const size_t d = e->d, ffn = e->ffn, V = e->vocab, hg = pf_heads_per_group(e, n), R = std::min(T, PF_LM_ROWS);
  const size_t wide = std::max({3 * d, ffn, (size_t)e->e_dim});
  const double need = 4.0 * T * d + 4.0 * T * wide + 2.0 * T * d * 5 + 2.0 * T * ffn + 6.0 * hg * n * n + 4.0 * R * V +
                      4.0 * T * 4;
  size_t free_b = 0, total_b = 0;
  CK(cudaMemGetInfo(&free_b, &total_b));
  if (need > (double)free_b)
    return fail("the prefill of %d tokens (longest sequence %d) needs %.2f GB of GPU workspace; %.2f GB free of %.2f GB "
                "(fewer tokens per batch or a shorter --max-len)", T, n, need / 1e9, free_b / 1e9, total_b / 1e9);
  auto al = [&](auto** ptr, size_t count) -> int {
    void* v = nullptr;
    CK(cudaMalloc(&v, std::max<size_t>(count, 1) * sizeof(**ptr)));
    p.allocs.push_back(v);
    *ptr = (std::remove_reference_t<decltype(*ptr)>)v;
    return 0;
  };
  if (al(&p.x, (size_t)T * d) || al(&p.y, (size_t)T * wide) || al(&p.a16, (size_t)T * d) || al(&p.q16, (size_t)T * d) ||
      al(&p.k16, (size_t)T * d) || al(&p.v16, (size_t)T * d) || al(&p.o16, (size_t)T * d) || al(&p.h16, (size_t)T * ffn) ||
      al(&p.S, hg * n * n) || al(&p.p16, hg * n * n) || al(&p.logits, R * V) || al(&p.nll, (size_t)T) ||
      al(&p.tok, (size_t)T) || al(&p.pos, (size_t)T) || al(&p.tgt, (size_t)T))
    return -1;
  p.cap_T = T; p.cap_n = n; p.cap_R = (int)R;
  return 0;
}

#define BK(call)                                                              \
  do {                                                                        \
    int s_ = (call);                                                          \
    if (s_ != 0) return fail("%s:%d cuBLAS status %d", __FILE__, __LINE__, s_); \
  } while (0)

// Host sections of a taps slot: att_in, mlp_in, head_norm, mlp_active, each [nl][cap][...] (a sequence of n tokens
// fills the first nl * n rows of each, [nl][n][...]).
static size_t taps_section(const Engine* e, int which) {
  const size_t rows = e->tp.layers.size() * (size_t)e->tp.cap, d = e->d, H = e->H;
  const size_t bytes[4] = {rows * d * 2, rows * d * 2, rows * H * 2, rows * ((e->ffn + 7) / 8)};
  size_t o = 0;
  for (int i = 0; i < which; i++) o += bytes[i];
  return o;
}

// tap_slot >= 0: one sequence whose taps go to that host slot (dj_taps_begin); returns once its work is queued.
static int pf_forward(Engine* e, int T, const int* lens, int nseq, bool fill_kv, float* nll_out, float* logits_out,
                      int tap_slot = -1) {
  auto& p = e->pf;
  const int d = e->d, H = e->H, hd = e->hd, ffn = e->ffn, V = e->vocab, ed = e->e_dim;
  const cudaStream_t s = e->s0;
  const Blas& b = e->blas;
  const int rowsT = T;
  auto ew_grid = [](size_t n) { return (unsigned)std::min<size_t>((n + 255) / 256, 4096); };
  const float* ln1g0 = e->pre_ln ? e->layers[0].ln1_g : nullptr;
  const float* ln1b0 = e->pre_ln ? e->layers[0].ln1_b : nullptr;
  // Embedding (+ project_in) and positions; a16 = the first GEMM's input.
  if (ed == d) {
    k_pf_embed<<<rowsT, PF_THREADS, 0, s>>>(e->E, e->P, p.tok, p.pos, ed, d, true, nullptr, p.x, ln1g0, ln1b0, e->eps, p.a16);
  } else {
    k_pf_embed<<<rowsT, PF_THREADS, 0, s>>>(e->E, e->P, p.tok, p.pos, ed, d, false, p.h16, nullptr, nullptr, nullptr, e->eps, nullptr);
    BK(blas_gemm(b, T, d, ed, p.h16, ed, e->Wpin, true, p.y, CUDA_R_32F, d));
    k_pf_add_pos<<<rowsT, PF_THREADS, 0, s>>>(p.y, e->P, p.pos, d, p.x, ln1g0, ln1b0, e->eps, p.a16);
  }
  CK(cudaGetLastError());
  const int nb = (ffn + 7) / 8;
  auto& tp = e->tp;
  const int nl = tap_slot >= 0 ? (int)tp.layers.size() : 0;
  int last_tap = -1;  // the model runs only as far as the last tapped layer when collecting
  for (int i = 0; i < nl; i++) last_tap = std::max(last_tap, tp.layers[i]);
  int set = 0;        // the device tap set of this layer (alternating, so a copy overlaps the next tapped layer)
  for (int li = 0; li < e->L; li++) {
    Layer& l = e->layers[li];
    int slot = -1;
    for (int i = 0; i < nl; i++) if (tp.layers[i] == li) slot = i;
    if (slot >= 0) {
      CK(cudaStreamWaitEvent(s, tp.freed[set], 0));  // the copy out of this set, two tapped layers ago, is done
      k_pf_to_half<<<ew_grid((size_t)T * d), 256, 0, s>>>(p.x, (size_t)T * d, tp.att[set]);
    }
    // Attention block.
    BK(blas_gemm(b, T, 3 * d, d, p.a16, d, l.Wqkv, true, p.y, CUDA_R_32F, 3 * d));
    k_pf_qkv<<<ew_grid((size_t)T * d), 256, 0, s>>>(p.y, l.bqkv, T, d, hd, 1.f / sqrtf((float)hd), p.q16, p.k16, p.v16,
                                                    fill_kv ? l.kc : nullptr, l.vc, l.valid, e->maxT);
    CK(cudaGetLastError());
    for (int q = 0, o = 0; q < nseq; o += lens[q++]) {
      const int n = lens[q];
      const int hg = pf_heads_per_group(e, n);
      for (int h0 = 0; h0 < H; h0 += hg) {
        const int nh = std::min(hg, H - h0);
        const size_t off = (size_t)o * d + (size_t)h0 * hd;
        const float one = 1.f, zero = 0.f;
        // S[h][i][j] = q_i . k_j (q pre-scaled): column-major S^T = K Q^T per head.
        BK(b.gemm_batched(b.h, Blas::OP_T, Blas::OP_N, n, n, hd, &one, p.k16 + off, CUDA_R_16F, d, hd, p.q16 + off,
                          CUDA_R_16F, d, hd, &zero, p.S, CUDA_R_32F, n, (long long)n * n, nh, Blas::COMPUTE_32F,
                          Blas::ALGO_DEFAULT));
        k_pf_softmax<<<(unsigned)(nh * n), PF_THREADS, 0, s>>>(p.S, n, p.p16);
        CK(cudaGetLastError());
        // O[i][h] = sum_j P[h][i][j] v_j: column-major O^T = V^T P^T per head, written into o16 [T][d].
        BK(b.gemm_batched(b.h, Blas::OP_N, Blas::OP_N, hd, n, n, &one, p.v16 + off, CUDA_R_16F, d, hd, p.p16,
                          CUDA_R_16F, n, (long long)n * n, &zero, p.o16 + off, CUDA_R_16F, d, hd, nh,
                          Blas::COMPUTE_32F, Blas::ALGO_DEFAULT));
      }
    }
    if (slot >= 0) k_pf_head_norm<<<(unsigned)(((size_t)T * H + 255) / 256), 256, 0, s>>>(p.o16, T, H, hd, tp.hn[set]);
    BK(blas_gemm(b, T, d, d, p.o16, d, l.WoT, false, p.y, CUDA_R_32F, d));
    k_pf_residual<<<rowsT, PF_THREADS, 0, s>>>(p.x, p.y, l.bo, d, e->pre_ln ? nullptr : l.ln1_g, l.ln1_b,
                                               e->pre_ln ? l.ln2_g : nullptr, l.ln2_b, e->eps, p.a16);
    if (slot >= 0) k_pf_to_half<<<ew_grid((size_t)T * d), 256, 0, s>>>(p.x, (size_t)T * d, tp.mlp[set]);
    // MLP block.
    BK(blas_gemm(b, T, ffn, d, p.a16, d, l.W1, true, p.y, CUDA_R_32F, ffn));
    if (slot >= 0) {
      k_pf_active_bits<<<(unsigned)(((size_t)T * nb + 255) / 256), 256, 0, s>>>(p.y, l.b1, T, ffn, tp.bits[set]);
      CK(cudaEventRecord(tp.ready[set], s));
      CK(cudaStreamWaitEvent(tp.cs, tp.ready[set], 0));
      char* host = (char*)tp.host[tap_slot];
      const size_t o = (size_t)slot * T;
      CK(cudaMemcpyAsync(host + taps_section(e, 0) + o * d * 2, tp.att[set], (size_t)T * d * 2, cudaMemcpyDeviceToHost, tp.cs));
      CK(cudaMemcpyAsync(host + taps_section(e, 1) + o * d * 2, tp.mlp[set], (size_t)T * d * 2, cudaMemcpyDeviceToHost, tp.cs));
      CK(cudaMemcpyAsync(host + taps_section(e, 2) + o * H * 2, tp.hn[set], (size_t)T * H * 2, cudaMemcpyDeviceToHost, tp.cs));
      CK(cudaMemcpyAsync(host + taps_section(e, 3) + o * nb, tp.bits[set], (size_t)T * nb, cudaMemcpyDeviceToHost, tp.cs));
      CK(cudaEventRecord(tp.freed[set], tp.cs));
      set ^= 1;
    }
    k_pf_bias_relu<<<ew_grid((size_t)T * ffn), 256, 0, s>>>(p.y, l.b1, T, ffn, p.h16);
    BK(blas_gemm(b, T, d, ffn, p.h16, ffn, l.W2T, false, p.y, CUDA_R_32F, d));
    const bool last = li + 1 == e->L;
    const float* og = !e->pre_ln ? nullptr : !last ? e->layers[li + 1].ln1_g : e->final_ln ? e->lnf_g : nullptr;
    const float* ob = !e->pre_ln ? nullptr : !last ? e->layers[li + 1].ln1_b : e->final_ln ? e->lnf_b : nullptr;
    k_pf_residual<<<rowsT, PF_THREADS, 0, s>>>(p.x, p.y, l.b2, d, e->pre_ln ? nullptr : l.ln2_g, l.ln2_b, og, ob, e->eps,
                                               p.a16);
    CK(cudaGetLastError());
    if (li == last_tap) {  // collect needs nothing past its last layer, not even the LM head
      CK(cudaEventRecord(tp.done[tap_slot], tp.cs));
      return 0;
    }
  }
  // project_out, then the LM head and the NLL in chunks of rows.
  const __half* head_in = p.a16;
  if (ed != d) {
    BK(blas_gemm(b, T, ed, d, p.a16, d, e->Wpout, true, p.y, CUDA_R_32F, ed));
    k_pf_to_half<<<ew_grid((size_t)T * ed), 256, 0, s>>>(p.y, (size_t)T * ed, p.h16);
    head_in = p.h16;
  }
  for (int r0 = 0; r0 < T; r0 += p.cap_R) {
    const int R = std::min(p.cap_R, T - r0);
    BK(blas_gemm(b, R, V, ed, head_in + (size_t)r0 * ed, ed, e->lm, true, p.logits, CUDA_R_32F, V));
    k_pf_nll<<<R, PF_THREADS, 0, s>>>(p.logits, V, p.tgt + r0, p.nll + r0);
    CK(cudaGetLastError());
    if (logits_out) CK(cudaMemcpyAsync(logits_out + (size_t)r0 * V, p.logits, (size_t)R * V * 4, cudaMemcpyDeviceToHost, s));
  }
  if (nll_out) CK(cudaMemcpyAsync(nll_out, p.nll, (size_t)T * 4, cudaMemcpyDeviceToHost, s));
  CK(cudaStreamSynchronize(s));
  return 0;
}

extern "C" {

// Prefill `nseq` sequences packed back to back in `tokens` (lengths `lens`, each <= max positions; each starts at
// position 0). nll (optional, host [sum lens]): per row, the NLL of the next token of its sequence (0 at each
// sequence's last row). logits (optional, host [sum lens][vocab]; tests). fill_kv = 1 (one sequence, <= maxT
// tokens): its K/V land in the decode cache and the decode state moves to position len - 1 (the next dense step
// recomputes that position and yields the following token).
int dj_prefill(void* ev, const int* tokens, const int* lens, int nseq, float* nll, float* logits, int fill_kv) {
  Engine* e = (Engine*)ev;
  if (nseq < 1) return fail("prefill: no sequences");
  if (fill_kv && nseq != 1) return fail("prefill: filling the KV cache takes one sequence (%d given)", nseq);
  int T = 0, n = 0;
  for (int i = 0; i < nseq; i++) {
    if (lens[i] < 1 || lens[i] > e->maxpos) return fail("prefill: sequence %d has %d tokens (1..%d)", i, lens[i], e->maxpos);
    T += lens[i];
    n = std::max(n, lens[i]);
  }
  if (fill_kv && T > e->maxT) return fail("prefill: %d tokens exceed the KV cache (%d)", T, e->maxT);
  for (int i = 0; i < T; i++) if (tokens[i] < 0 || tokens[i] >= e->vocab) return fail("prefill: token %d out of range", tokens[i]);
  const std::string why = blas_open(e->blas, e->s0);
  if (!why.empty()) return fail("%s", why.c_str());
  if (pf_reserve(e, T, n)) return -1;
  std::vector<int> pos(T), tgt(T);
  for (int q = 0, o = 0; q < nseq; o += lens[q++])
    for (int i = 0; i < lens[q]; i++) {
      pos[o + i] = i;
      tgt[o + i] = i + 1 < lens[q] ? tokens[o + i + 1] : -1;
    }
  auto& p = e->pf;
  CK(cudaMemcpyAsync(p.tok, tokens, T * sizeof(int), cudaMemcpyHostToDevice, e->s0));
  CK(cudaMemcpyAsync(p.pos, pos.data(), T * sizeof(int), cudaMemcpyHostToDevice, e->s0));
  CK(cudaMemcpyAsync(p.tgt, tgt.data(), T * sizeof(int), cudaMemcpyHostToDevice, e->s0));
  if (fill_kv) {
    for (auto& l : e->layers) CK(cudaMemsetAsync(l.valid, 0, (size_t)e->H * e->maxT, e->s0));
    int st[2] = {T - 1, T};
    CK(cudaMemcpyAsync(e->tokens, tokens, T * sizeof(int), cudaMemcpyHostToDevice, e->s0));
    CK(cudaMemcpyAsync(e->st, st, sizeof st, cudaMemcpyHostToDevice, e->s0));
  }
  return pf_forward(e, T, lens, nseq, fill_kv != 0, nll, logits);
}

// The fp16 GEMM rate the prefill's GEMMs can reach here: C[M][N] fp32 = A[M][K] . W[N][K]^T on cuBLAS (as the
// prefill calls it), random inputs, median of `reps` timed with events; *ms per GEMM.
int dj_gemm_ms(void* ev, int M, int N, int K, int reps, float* ms) {
  Engine* e = (Engine*)ev;
  if (M < 1 || N < 1 || K < 1 || reps < 1) return fail("gemm: M, N, K, reps must be >= 1");
  const std::string why = blas_open(e->blas, e->s0);
  if (!why.empty()) return fail("%s", why.c_str());
  __half *A = nullptr, *W = nullptr;
  float* C = nullptr;
  auto done = [&](int rc) { cudaFree(A); cudaFree(W); cudaFree(C); return rc; };
  if (cudaMalloc(&A, (size_t)M * K * 2) != cudaSuccess || cudaMalloc(&W, (size_t)N * K * 2) != cudaSuccess ||
      cudaMalloc(&C, (size_t)M * N * 4) != cudaSuccess)
    return done(fail("gemm: out of GPU memory for %d x %d x %d", M, N, K));
  k_fill_half<<<1024, 256, 0, e->s0>>>(A, (size_t)M * K, 11, 1.f, 0.f);
  k_fill_half<<<1024, 256, 0, e->s0>>>(W, (size_t)N * K, 12, 0.05f, 0.f);
  std::vector<float> ts;
  for (int i = 0; i < reps + 2; i++) {
    cudaEventRecord(e->t0, e->s0);
    if (blas_gemm(e->blas, M, N, K, A, K, W, true, C, CUDA_R_32F, N) != 0) return done(fail("gemm: cuBLAS failed"));
    cudaEventRecord(e->t1, e->s0);
    if (cudaEventSynchronize(e->t1) != cudaSuccess) return done(fail("gemm: %s", cudaGetErrorString(cudaGetLastError())));
    float t = 0;
    cudaEventElapsedTime(&t, e->t0, e->t1);
    if (i >= 2) ts.push_back(t);
  }
  std::sort(ts.begin(), ts.end());
  *ms = ts[ts.size() / 2];
  return done(0);
}

// Collect's taps, pipelined. dj_taps_open fixes the collected layers (any order) and the longest sequence, and
// allocates two pinned host slots. dj_taps_begin queues one sequence (`n` tokens from position 0) into a slot and
// returns at once: the prefill runs as far as the last collected layer, and each tapped layer's taps are copied to
// the slot on a copy stream while the next layer computes. dj_taps_wait waits for a slot and points `out` at its
// rows: att_in and mlp_in (fp16 bits, [nl][n][d]), each head's attention-output L2 norm (fp16 bits, [nl][n][H]) and
// the MLP activity bitmask ([nl][n][ceil(ffn/8)], LSB first), as docs/shards.md defines them. A slot's rows stay
// valid until the next dj_taps_begin into that slot: the caller writes one slot while the other computes.
struct DjTaps {
  const uint16_t *att_in, *mlp_in, *head_norm;
  const uint8_t* mlp_active;
  int n;
};

int dj_taps_open(void* ev, const int* layers, int nl, int max_tokens) {
  Engine* e = (Engine*)ev;
  if (nl < 1) return fail("taps: no layers");
  if (max_tokens < 1 || max_tokens > e->maxpos) return fail("taps: %d tokens per sequence (1..%d)", max_tokens, e->maxpos);
  for (int i = 0; i < nl; i++) if (layers[i] < 0 || layers[i] >= e->L) return fail("taps: layer %d out of range", layers[i]);
  taps_free(e);
  const std::string why = blas_open(e->blas, e->s0);
  if (!why.empty()) return fail("%s", why.c_str());
  if (pf_reserve(e, max_tokens, max_tokens)) return -1;  // reserved once: no workspace reallocation mid-pipeline
  auto& t = e->tp;
  t.layers.assign(layers, layers + nl);
  t.cap = max_tokens;
  const size_t T = max_tokens, d = e->d, H = e->H, nb = (e->ffn + 7) / 8;
  for (int i = 0; i < 2; i++) {
    if (cudaMalloc(&t.att[i], T * d * 2) != cudaSuccess || cudaMalloc(&t.mlp[i], T * d * 2) != cudaSuccess ||
        cudaMalloc(&t.hn[i], T * H * 2) != cudaSuccess || cudaMalloc(&t.bits[i], T * nb) != cudaSuccess) {
      taps_free(e);
      return fail("taps: out of GPU memory for the tap buffers of %d tokens", max_tokens);
    }
    if (cudaHostAlloc(&t.host[i], taps_section(e, 4), cudaHostAllocDefault) != cudaSuccess) {
      const double gb = taps_section(e, 4) / 1e9;
      taps_free(e);
      return fail("taps: cannot pin %.2f GB of host memory for a slot (%d layers x %d tokens)", gb, nl, max_tokens);
    }
    CK(cudaEventCreateWithFlags(&t.ready[i], cudaEventDisableTiming));
    CK(cudaEventCreateWithFlags(&t.freed[i], cudaEventDisableTiming));
    CK(cudaEventCreateWithFlags(&t.done[i], cudaEventDisableTiming));
  }
  CK(cudaStreamCreateWithFlags(&t.cs, cudaStreamNonBlocking));
  return 0;
}

int dj_taps_begin(void* ev, int slot, const int* tokens, int n) {
  Engine* e = (Engine*)ev;
  auto& t = e->tp;
  if (!t.cs) return fail("taps: dj_taps_open first");
  if (slot < 0 || slot > 1) return fail("taps: slot %d (0 or 1)", slot);
  if (n < 1 || n > t.cap) return fail("taps: %d tokens (1..%d, as opened)", n, t.cap);
  for (int i = 0; i < n; i++) if (tokens[i] < 0 || tokens[i] >= e->vocab) return fail("taps: token %d out of range", tokens[i]);
  std::vector<int> pos(n);
  for (int i = 0; i < n; i++) pos[i] = i;
  auto& p = e->pf;
  // Pageable sources: the copies are staged before these calls return, so the vectors may go.
  CK(cudaMemcpyAsync(p.tok, tokens, n * sizeof(int), cudaMemcpyHostToDevice, e->s0));
  CK(cudaMemcpyAsync(p.pos, pos.data(), n * sizeof(int), cudaMemcpyHostToDevice, e->s0));
  t.n[slot] = 0;
  const int lens[1] = {n};
  if (pf_forward(e, n, lens, 1, false, nullptr, nullptr, slot)) return -1;
  t.n[slot] = n;
  return 0;
}

// out may be null: only wait (the binding waits off the main thread first, then calls again for the rows, since
// dj_last_error is per thread).
int dj_taps_wait(void* ev, int slot, DjTaps* out) {
  Engine* e = (Engine*)ev;
  auto& t = e->tp;
  if (!t.cs || slot < 0 || slot > 1 || t.n[slot] == 0) return fail("taps: slot %d holds no sequence", slot);
  CK(cudaEventSynchronize(t.done[slot]));
  CK(cudaGetLastError());
  if (out) {
    const char* h = (const char*)t.host[slot];
    out->att_in = (const uint16_t*)(h + taps_section(e, 0));
    out->mlp_in = (const uint16_t*)(h + taps_section(e, 1));
    out->head_norm = (const uint16_t*)(h + taps_section(e, 2));
    out->mlp_active = (const uint8_t*)(h + taps_section(e, 3));
    out->n = t.n[slot];
  }
  return 0;
}

// Teacher-forced decode: `steps` replays of mode's graph from the current position, each followed by the NLL of the
// forced next token (the prompt must reach pos + steps). nll: host [steps].
int dj_decode_nll(void* ev, int mode, int steps, float* nll) {
  Engine* e = (Engine*)ev;
  if (mode < 0 || mode >= M_COUNT || mode == M_PRED || !e->graphs[mode]) return fail("mode %d not built", mode);
  int st[2];
  CK(cudaMemcpy(st, e->st, sizeof st, cudaMemcpyDeviceToHost));
  if (steps < 1 || st[0] + steps >= st[1])
    return fail("decode_nll: %d steps from position %d pass the forced tokens (prompt length %d)", steps, st[0], st[1]);
  if (fold_ln(e)) return -1;
  for (int i = 0; i < steps; i++) {
    CK(cudaGraphLaunch(e->graphs[mode], e->s0));
    k_step_nll<<<1, PF_THREADS, 0, e->s0>>>(e->logits, e->vocab, e->st, e->tokens, e->step_nll);
  }
  CK(cudaMemcpyAsync(nll, e->step_nll + st[0], steps * sizeof(float), cudaMemcpyDeviceToHost, e->s0));
  CK(cudaStreamSynchronize(e->s0));
  CK(cudaGetLastError());
  return 0;
}

}  // extern "C"

extern "C" {

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

