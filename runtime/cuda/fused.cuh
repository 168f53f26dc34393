// The streamed decode path (default; DEJAVU_CUDA_TMA=0 selects the per-op kernels of kernels.cuh): three kernels
// per layer, every weight byte brought in by the copy engine (tma.cuh) into a shared-memory ring.
//   k_rows_tma<QKV>   LN1 prologue, then q/k/v rows (all, a head list's, or a head list's q + every k/v)
//   k_attn_out<HD>    a block per (head, column slice): that head's attention (recomputed by each of its slices,
//                     K/V from L2), then its out_proj rows restricted to the slice -> atomics into the residual delta
//   k_mlp_tma         LN2 prologue, then per chunk of 16 neurons: fc1 rows -> h = ReLU(.) -> fc2^T rows scaled by h,
//                     accumulated in registers over the block's neurons -> one set of atomics
// plus k_embed_tma (x0, and the step's delta buffers zeroed) and k_rows_tma<ARGMAX / PLAIN> (LM head, predictors).
//
// Residual stream without in-place updates. Point r = 0 is att_in of layer 0, r = 2l+1 mlp_in of layer l, r = 2l+2
// att_in of layer l+1 (r = 2L: the final LayerNorm's input). x_r = X[r-1] + D[r]: D[r] is accumulated by the kernel
// that produces point r (float atomics into a buffer the embedding kernel zeroed), X[r] is x_r materialised by the
// kernel that consumes point r (each of its blocks writes a slice; it computes x_r anyway for its LayerNorm). No
// buffer is written twice in a step, so a kernel may read its input while its own blocks already add to the next
// delta, and predictors on side streams read (X[r-1], D[r]) at their tap with no write-after-read hazard.
// Why a LayerNorm prologue in every block, not an epilogue by the last block: the epilogue was a serial ~3.5 us
// per column GEMV; 20-40 KB of x from L2 per block costs ~1 us and overlaps the weight stream's ramp.
#pragma once
#include "kernels.cuh"
#include "tma.cuh"

namespace dj {

// NW consumer warps per block (a template parameter: 16, or 8 so that two blocks fit an SM and the next kernel's
// producer can start streaming beside the running one); + one producer warp.
constexpr int TWMAX = 16;
constexpr int T_MAX_STAGES = 8;
constexpr int T_DMAX = 10240;               // x held in registers by the prologue: d <= T_DMAX
constexpr int T_SEGMAX = 4;                 // row segments per row (segment <= segment bytes target)
constexpr int T_ROWIX = 512;                // a block's selected row indices held in shared memory (more: looked up)
__host__ __device__ constexpr int t_threads(int nw) { return nw * 32 + 32; }
// Register cap: a 544-thread block at <= 72 registers leaves ~25K registers of the SM to the predictor kernels on the
// side streams (k_rows / k_pred_scores / k_topk_select blocks), so they run beside a streamed block instead of
// waiting for an SM to empty (measured: with 96 registers the predictors added 33% to a 13B sparse step).
#define T_REGS __maxnreg__(72)

// Timeline trace (bench/cuda/trace.cu builds with -DDJ_TRACE): thread 0 of each block writes %globaltimer at a few
// points of each traced launch (id `tr` >= 0) into g_trace[tr][block][point]. Compiled out otherwise.
constexpr int TR_MAXB = 256, TR_N = 12;  // points: 0 entry, 1 previous grid done (pdl_wait), 2 input ready, 3 end,
                                        // 4 input loaded, 5 LayerNorm statistics ready, 6 producer issued its last
                                        // copy, 7 its last stage landed, 8 the SM id (a value, not a time),
                                        // 9 consumers done with the ring (before the atomics); grouped top-k
                                        // (pfuse.cuh pf_local): 10 past pdl_wait, 11 t and the w2 rows in
constexpr int TS_B = 8, TS_N = 64;  // stage trace (tr_stage): blocks, stages (the last slot: release, ready)
#ifdef DJ_TRACE
__device__ unsigned long long* g_trace;
__device__ __forceinline__ void tr_mark(int tr, int k) {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  if (g_trace && tr >= 0 && blockIdx.x < TR_MAXB) g_trace[((size_t)tr * TR_MAXB + blockIdx.x) * TR_N + k] = t;
}
// The producer thread after its last copy: stamps 6, then waits for the last stage (it = stages issued) to land, 7,
// and records the SM (8). Waiting there is harmless: the producer has nothing left to do.
__device__ __forceinline__ void tr_producer_done(int tr, uint64_t* full, int it, int S) {
  tr_mark(tr, 6);
  pdl_trigger();  // as the warp does right after this (the wait below must not delay the dependents)
  if (it > 0) {
    const int s = (it - 1) % S;
    while (true) {
      uint32_t ok;
      asm volatile("{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n selp.u32 %0, 1, 0, p;\n}\n"
                   : "=r"(ok) : "r"((uint32_t)__cvta_generic_to_shared(full + s)), "r"((unsigned)(((it - 1) / S) & 1)) : "memory");
      if (ok) break;
    }
  }
  tr_mark(tr, 7);
  unsigned smid;
  asm volatile("mov.u32 %0, %%smid;" : "=r"(smid));
  if (g_trace && tr >= 0 && blockIdx.x < TR_MAXB) g_trace[((size_t)tr * TR_MAXB + blockIdx.x) * TR_N + 8] = smid;
}
// Per-stage stamps of the streamed row kernel (k_rows_tma; first TS_B blocks, first TS_N - 1 stages of a launch):
// g_stage[tr][block][stage][0 copy issued (after its slot was free), 1 landed (seen by consumer warp 0), 2 released
// by warp 0]; slot TS_N - 1 holds [pdl release, input ready]. SM cycles (clock64), not %globaltimer: reading that
// in the loop slowed the traced step by ~30%. Why: to see what sets the pace of a block's last bytes after its
// input is ready.
__device__ unsigned long long* g_stage;
__device__ __forceinline__ void tr_stage(int tr, int it, int k) {
  if (g_stage && tr >= 0 && blockIdx.x < TS_B && it < TS_N)
    g_stage[(((size_t)tr * TS_B + blockIdx.x) * TS_N + it) * 3 + k] = clock64();
}
#else
__device__ __forceinline__ void tr_mark(int, int) {}
__device__ __forceinline__ void tr_producer_done(int, uint64_t*, int, int) {}
__device__ __forceinline__ void tr_stage(int, int, int) {}
#endif
template <int NW> __device__ __forceinline__ void cbar() { asm volatile("bar.sync 1, %0;" ::"n"(NW * 32) : "memory"); }
}  // namespace dj
#include "pfuse.cuh"  // (uses tr_mark)
namespace dj {

// Where a kernel's input vector comes from, and what it makes of it (see the header).
struct XIn {
  const float* base;   // X[r-1] (or x_0 itself when delta is null)
  const float* delta;  // D[r], may be null
  const float* delta2; // D[r]'s second copy (MLP outputs, Engine::dcopy: half of the MLP's blocks add there), may be null
  float* out;          // X[r]: this block writes its slice; may be null
  const float* g;      // LayerNorm affine (null: no affine)
  const float* b;
  float eps;
  int norm;            // 0: raw x, 1: LayerNorm
  const float* c1;     // deferred LayerNorm (t_load_input): per weight row W . g and W . b; null: LN in the prologue
  const float* c2;
  int tr;              // trace id (-1: none; DJ_TRACE builds only)
};
// x_r's float4 i: base + delta (+ delta2). D2 = false: the point has one copy (compiled without the second load).
template <bool D2 = true>
__device__ __forceinline__ float4 x_at(const XIn& in, int i) {
  float4 a = __ldcg(reinterpret_cast<const float4*>(in.base) + i);
  auto add = [&](const float* p) {
    const float4 c = __ldcg(reinterpret_cast<const float4*>(p) + i);
    a.x += c.x; a.y += c.y; a.z += c.z; a.w += c.w;
  };
  if (in.delta) add(in.delta);
  if (D2 && in.delta2) add(in.delta2);
  return a;
}

// Stream geometry of a row kernel: rows cut into `seg` segments; a stage holds one segment of each of `rows`
// (<= TW) rows, consumer warp w owning row w; S stages. Chosen per launch (engine.cu, make_geo) so that a block with
// few rows still fills its ring.
struct TGeo {
  int seg, S, rows;
  int lead;  // stages the producer may issue before the consumers' input is ready (-1: no limit); see t_produce_group
  int rowix; // bit 0 (row kernels) / bit 1 (MLP): the producer looks the block's selected rows up first (T_ROWIX);
             // bit 2 (MLP): no reduction (timing only); bit 3 (MLP): the reduction by bulk copies
};

// Consumer prologue: x = base + delta into registers, written to shared memory as two float4 planes (lo[c] =
// x[8c..8c+3], hi[c] = x[8c+4..8c+7]) so lane c's 32 bytes come without bank conflicts; this block's slice of X[r]
// written (nb blocks write X[r], this is block bi). Consumer threads only (named barrier 1). Two forms of the LayerNorm:
//   in.c1 null: the planes hold LN(x) (statistics, a barrier, then the affine: two round trips, two barriers).
//   in.c1 set (deferred): the planes hold g * x, and the row epilogue applies the rest (t_ln_row):
//     W . (g * (x - mean) * rstd + b) = rstd * (W . (g * x) - mean * c1) + c2,  c1 = W . g, c2 = W . b per row,
//   so the dots start after one round trip (x; g is loaded before pdl_wait) and one barrier. Why: the prologue is
//   on the critical path of every kernel (3.5-6 us measured with bench/cuda/trace.cu), the weight ring is full then.
template <int NW> __host__ __device__ constexpr int t_xv() { return (T_DMAX / 4 + NW * 32 - 1) / (NW * 32); }
struct LnStat {
  float mean, rstd;
};
template <int NW>
__device__ __forceinline__ void t_pre_input(const XIn& in, int d, float4 (&gv)[t_xv<NW>()]) {
  constexpr int TC = NW * 32;
  if (!in.c1) return;
#pragma unroll
  for (int u = 0; u < t_xv<NW>(); u++) {
    const int i = threadIdx.x + u * TC;
    if (i < (d >> 2)) gv[u] = __ldg(reinterpret_cast<const float4*>(in.g) + i);
  }
}
template <int NW, bool D2 = true>  // D2: the input may have a second delta copy (an MLP output; the MLP's own input never has)
__device__ __forceinline__ LnStat t_load_input(const XIn& in, int d, float4* xs, const float4 (&gv)[t_xv<NW>()], int nb, int bi) {
  constexpr int TC = NW * 32, T_XV = t_xv<NW>();
  __shared__ float red[2][NW];
  const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5, n4 = d >> 2;
  const bool defer = in.c1 != nullptr;
  float4 v[T_XV];
  float s = 0.f, s2 = 0.f;
#pragma unroll
  for (int u = 0; u < T_XV; u++) {
    int i = tid + u * TC;
    if (i < n4) {
      const float4 a = x_at<D2>(in, i);
      v[u] = a;
      s += a.x + a.y + a.z + a.w;
      s2 += a.x * a.x + a.y * a.y + a.z * a.z + a.w * a.w;
    }
  }
  if (tid == 0) tr_mark(in.tr, 4);
  if (in.out) {  // this block's slice of X[r]
    const int per = (n4 + nb - 1) / nb, i0 = bi * per, i1 = min(n4, i0 + per);
#pragma unroll
    for (int u = 0; u < T_XV; u++) {
      int i = tid + u * TC;
      if (i >= i0 && i < i1) reinterpret_cast<float4*>(in.out)[i] = v[u];
    }
  }
  LnStat st{0.f, 1.f};
  if (in.norm) {
    s = warp_sum(s);
    s2 = warp_sum(s2);
    if (lane == 0) { red[0][w] = s; red[1][w] = s2; }
  }
  if (defer) {  // planes = g * x now; the statistics after the one barrier below
#pragma unroll
    for (int u = 0; u < T_XV; u++) {
      int i = tid + u * TC;
      if (i >= n4) continue;
      const float4 a = v[u], g = gv[u];
      xs[(i & 1) ? (d >> 3) + (i >> 1) : (i >> 1)] = make_float4(a.x * g.x, a.y * g.y, a.z * g.z, a.w * g.w);
    }
  }
  if (in.norm) {
    cbar<NW>();
    s = 0.f; s2 = 0.f;
#pragma unroll
    for (int k = 0; k < NW; k++) { s += red[0][k]; s2 += red[1][k]; }
    st.mean = s / d;
    st.rstd = rsqrtf(fmaxf(s2 / d - st.mean * st.mean, 0.f) + in.eps);
  }
  if (tid == 0) tr_mark(in.tr, 5);
  if (defer) return st;
#pragma unroll
  for (int u = 0; u < T_XV; u++) {
    int i = tid + u * TC;
    if (i >= n4) continue;
    float4 a = v[u];
    if (in.norm) {
      const float mean = st.mean, rstd = st.rstd;
      a.x = (a.x - mean) * rstd; a.y = (a.y - mean) * rstd; a.z = (a.z - mean) * rstd; a.w = (a.w - mean) * rstd;
      if (in.g) {
        float4 g = __ldg(reinterpret_cast<const float4*>(in.g) + i), bb = __ldg(reinterpret_cast<const float4*>(in.b) + i);
        a.x = a.x * g.x + bb.x; a.y = a.y * g.y + bb.y; a.z = a.z * g.z + bb.z; a.w = a.w * g.w + bb.w;
      }
    }
    xs[(i & 1) ? (d >> 3) + (i >> 1) : (i >> 1)] = a;
  }
  cbar<NW>();
  return st;
}
// The deferred LayerNorm's row epilogue (see t_load_input); c1r, c2r = c1[row], c2[row], loaded ahead.
__device__ __forceinline__ float t_ln_row(const XIn& in, LnStat st, float dot, float c1r, float c2r) {
  return in.c1 ? st.rstd * (dot - st.mean * c1r) + c2r : dot;
}

// dot of 16 bytes of fp16 weights (vector c of the row) with x from the planes
__device__ __forceinline__ float t_dot(const uint4& w, const float4* xs, int d, int c) {
#ifdef DJ_NOX  // TIMING EXPERIMENT ONLY (wrong results; a separate build): no x from shared memory, to measure
               // what the consumers' x reads cost (bench/results/cuda-consumer-cost-*-s9.txt)
  const float x[8] = {1.f, 1.f, 1.f, 1.f, 1.f, 1.f, 1.f, 1.f};
#else
  const float4 a = xs[c], b = xs[(d >> 3) + c];
  const float x[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
#endif
  return dot8(w, x);
}

// The ring protocol of the row kernels. A group = `nr` rows, each cut into `seg` segments of segbytes; stage `it`
// (mod S) holds segment sg of every row of the group. Producer (one thread): wait until the consumers released the
// stage's previous use, announce its bytes, issue one bulk copy per row. `row(r)` = start of row r of the group.
// Lead: an SM's memory requests return roughly in order, so a ring's worth of weight copies issued at kernel entry
// (~200 KB, ~6 us of the SM's share of bandwidth) delays the loads the consumers need first (x, K/V) by as much.
// So the producer issues at most `lead` stages, then waits on `go` (consumers arrive once their input is ready).
__device__ __forceinline__ void t_lead_gate(int it, int lead, uint64_t* go) {
  if (it == lead) mbar_wait(go, 0);
}
// One stage (index it): wait until the consumers released its previous use, announce nr pieces of `bytes`, issue one
// bulk copy per piece (src(r) = where piece r starts).
template <class Src>
__device__ __forceinline__ void t_produce_stage(Ring<T_MAX_STAGES>& ring, unsigned char* stages, int stage_bytes, int S,
                                                int nr, int bytes, Src src, uint64_t pol, int it, int tr = -1) {
  const int s = it % S;
  if (it >= S) mbar_wait(&ring.empty[s], ((it / S) & 1) ^ 1);
  tr_stage(tr, it, 0);
  mbar_expect_tx(&ring.full[s], nr * bytes);
  for (int r = 0; r < nr; r++) bulk_g2s(stages + (size_t)s * stage_bytes + r * bytes, src(r), bytes, &ring.full[s], pol);
}
template <class Row>
__device__ __forceinline__ void t_produce_group(Ring<T_MAX_STAGES>& ring, unsigned char* stages, int stage_bytes,
                                                int segbytes, int segel, int seg, int S, int nr, Row row, uint64_t pol,
                                                int& it, int lead, uint64_t* go, int tr = -1) {
  for (int sg = 0; sg < seg; sg++, it++) {
    t_lead_gate(it, lead, go);
    t_produce_stage(ring, stages, stage_bytes, S, nr, segbytes, [&](int r) { return row(r) + sg * segel; }, pol, it, tr);
  }
}
// Consumer warp: the dot of its row of the group (warp index = row; `active` = the row exists) with x over the
// group's seg stages, summed over the warp; every warp releases every stage.
__device__ __forceinline__ float t_consume_row(Ring<T_MAX_STAGES>& ring, const unsigned char* stages, int stage_bytes,
                                               int segbytes, int segel, int seg, int S, const float4* xs, int K,
                                               bool active, int& it, int tr = -1) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, segvec = segbytes >> 4;
  float acc = 0.f;
  for (int sg = 0; sg < seg; sg++, it++) {
    const int s = it % S;
    mbar_wait(&ring.full[s], (it / S) & 1);
    if (warp == 0 && lane == 0) tr_stage(tr, it, 1);
    if (active) {
      const uint4* src = reinterpret_cast<const uint4*>(stages + (size_t)s * stage_bytes + warp * segbytes);
      const int c0 = sg * (segel >> 3);
#ifndef DJ_NODOT  // (TIMING EXPERIMENT ONLY, a separate build: consumers release stages unread)
      for (int c = lane; c < segvec; c += 32) acc += t_dot(src[c], xs, K, c0 + c);
#endif
    }
    __syncwarp();
    if (lane == 0) mbar_arrive(&ring.empty[s]);
    if (warp == 0 && lane == 0) tr_stage(tr, it, 2);
  }
  return warp_sum(acc);
}

// Producer warp: the block's selected row indices j0..j1 into rowix, all lanes at once (one round trip). Looked up
// one copy at a time instead, each selection load waits behind the previous copy's issue (a 13B sparse QKV block
// spent ~10 us so). Returns whether rowix holds them (want, and at most T_ROWIX rows).
template <class Row>
__device__ __forceinline__ bool t_lookup_rows(bool want, int j0, int j1, int* rowix, Row row) {
  const bool pre = want && j1 - j0 <= T_ROWIX;
  if (pre)
    for (int j = j0 + (threadIdx.x & 31); j < j1; j += 32) rowix[j - j0] = row(j);
  __syncwarp();
  return pre;
}

// The streamed row kernels' consumer prologue: let dependents launch, g before the previous grid is done, then the
// input (t_load_input); `go` releases a gated producer (t_lead_gate).
template <int NW, bool D2 = true>
__device__ __forceinline__ LnStat t_consumer_prologue(const XIn& in, int K, float4* xs, uint64_t* go) {
  pdl_trigger();
  float4 gv[t_xv<NW>()];
  t_pre_input<NW>(in, K, gv);
  pdl_wait();
  if (threadIdx.x == 0) { tr_mark(in.tr, 1); tr_stage(in.tr, TS_N - 1, 0); }
  const LnStat lst = t_load_input<NW, D2>(in, K, xs, gv, gridDim.x, blockIdx.x);
  if (threadIdx.x == 0) { mbar_arrive(go); tr_mark(in.tr, 2); tr_stage(in.tr, TS_N - 1, 1); }
  return lst;
}

// ---------------------------------------------------------------------------------------------------------------
// Row GEMV, streamed: block b takes rows [b*per, (b+1)*per) of the (mapped) output; the producer warp streams them
// in groups of TW rows, one segment per stage; consumer warp w owns row w of each group.
// PF: the launch carries fused-predictor rows or waits for a head list (pfuse.cuh). A separate instantiation: with
// those paths compiled in, the register allocation of the plain kernel changed and 30B dense lost 9-11% (measured).
template <int EPI, int NW, bool PF = false>
__global__ void T_REGS k_rows_tma(RowsArgs a, XIn in, TGeo geo) {
  constexpr int TW = NW;
  extern __shared__ __align__(128) unsigned char t_sm[];
  __shared__ Ring<T_MAX_STAGES> ring;
  __shared__ unsigned long long best_s[TW];
  __shared__ uint64_t go;
  __shared__ int rowix[T_ROWIX];
  const int K = a.K, seg = geo.seg, S = geo.S, segel = K / seg, segbytes = segel * 2, stage_bytes = geo.rows * segbytes, RS = geo.rows;
  float4* xs = reinterpret_cast<float4*>(t_sm);
  unsigned char* stages = t_sm + (size_t)K * 4;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  // rows: the n_out mapped rows of W, then (QKV of a layer carrying fused predictors) pn predictor rows of pW;
  // virtual row ids >= pbase name the latter
  const int N = PF ? a.n_out + a.pn : a.n_out;
  const int per = (N + gridDim.x - 1) / gridDim.x, j0 = blockIdx.x * per, j1 = min(N, j0 + per);
  auto vrow = [&](int j) { return !PF || j < a.n_out ? rows_map(a, j) : a.pbase + (j - a.n_out); };
  auto wrow = [&](int v) {
    return PF && a.pn && v >= a.pbase ? a.pW + (size_t)(v - a.pbase) * K : a.W + (size_t)v * K;
  };
  if (threadIdx.x == 0) { ring.init(TW); mbar_init(&go, 1); mbar_fence_init(); tr_mark(in.tr, 0); }
  __syncthreads();
  if (warp == TW) {  // producer: weights and row selections only (never written by the kernel before us)
    if constexpr (PF) {
      if (a.sel_flag) {  // the head list comes from a fused predictor of this step (set long before, in practice)
        if (lane == 0) pf_wait_sel(a.sel_flag, a.st);
        __syncwarp();
      }
    }
    const bool pre = t_lookup_rows((geo.rowix & 1) && a.map != MAP_ID, j0, j1, rowix, vrow);
    if (lane == 0) {
      const uint64_t pol = policy_evict_first();
      int it = 0;
      for (int g = j0; g < j1; g += RS)
        t_produce_group(ring, stages, stage_bytes, segbytes, segel, seg, S, min(RS, j1 - g),
                        [&](int r) { return wrow(pre ? rowix[g + r - j0] : vrow(g + r)); }, pol, it, geo.lead, &go, in.tr);
      tr_producer_done(in.tr, ring.full, it, S);
    }
    pdl_trigger();
    return;
  }
  const LnStat lst = t_consumer_prologue<NW>(in, K, xs, &go);
  const int pos = EPI == EPI_QKV ? a.st[0] : 0;
  unsigned long long best = 0ull;
  int it = 0;
  for (int g = j0; g < j1; g += RS) {
    const int nr = min(RS, j1 - g), j = g + warp;
    const bool active = warp < nr;
    const int row = active ? vrow(j) : 0;
    const bool ld = active && lane == 0;
    if constexpr (PF && EPI == EPI_QKV) {
      if (a.pn && row >= a.pbase) {  // fused predictor row: t = w1 . x (planes: g * x, w1 stored / g)
        const int pr = row - a.pbase;
        const float c1r = ld ? __ldg(a.pc1 + pr) : 0.f, nm = ld ? __ldg(a.pnm + pr) : 0.f;
        const float acc = t_consume_row(ring, stages, stage_bytes, segbytes, segel, seg, S, xs, K, active, it, in.tr);
        if (ld) a.pt[pr] = nm != 0.f ? lst.rstd * (acc - lst.mean * c1r) : acc;
        continue;
      }
    }
    const float bias = ld && a.b ? __ldg(a.b + row) : 0.f;
    const float c1r = ld && in.c1 ? __ldg(in.c1 + row) : 0.f, c2r = ld && in.c1 ? __ldg(in.c2 + row) : 0.f;
    const float acc = t_consume_row(ring, stages, stage_bytes, segbytes, segel, seg, S, xs, K, active, it, in.tr);
    if (ld) row_epilogue<EPI>(a, j, row, t_ln_row(in, lst, acc, c1r, c2r) + bias, pos, best);
  }
  if constexpr (EPI == EPI_ARGMAX) {
    if (lane == 0) best_s[warp] = best;
    cbar<NW>();
    if (threadIdx.x == 0) {
      unsigned long long m = 0;
      for (int w = 0; w < TW; w++) m = best_s[w] > m ? best_s[w] : m;
      argmax_finish(a, m);
    }
  }
  if (threadIdx.x == 0) tr_mark(in.tr, 3);
}

// ---------------------------------------------------------------------------------------------------------------
// Attention + out_proj, fused per head: block (hi, slice) computes head h = sel[hi] (or hi) over the K/V cache
// (what k_attention does, with TC threads), then y[c] += sum_i o[i] * WoT[h*hd + i][c] for the columns c of its
// slice, streamed by the producer (row pieces of the slice, R rows per stage) while the attention runs.
struct AttnOutArgs {
  const float* q;       // [d], scaled, absolute head positions
  const __half* kc;
  const __half* vc;
  const uint8_t* valid;
  const int* sel;       // head list (null: all heads)
  const int* st;
  int maxT, d, slices, R, S;
  int lead;             // stages issued before the attention is done (-1: no limit; t_produce_group)
  const __half* WoT;    // [d][d] (out_proj transposed)
  const float* bias;    // [d] added by the slices of list entry 0
  float* y;             // D[2l+1]
  int tr;               // trace id (-1: none)
  const unsigned* sel_flag;  // the head list comes from a fused predictor of this step: wait for it (null: none)
  PredFuse pf;          // predictors fused into this kernel (pfuse.cuh): one more warp per block when pf.on
};

// ---------------------------------------------------------------------------------------------------------------
// out_proj over one column slice of one head (k_attn_out, and the persistent sparse step in step.cuh): the slice's
// hd rows of WoT (nv 16-byte vectors each, rowbytes apart in global memory: row stride d), R rows per stage.
// Producer (one thread): nst = hd / R stages from `it` on.
__device__ __forceinline__ void t_produce_outproj(Ring<T_MAX_STAGES>& ring, unsigned char* stages, int stage_bytes, int S,
                                                  int R, int nst, int rowbytes, const __half* base, int d, uint64_t pol,
                                                  int& it, int lead, uint64_t* go) {
  for (int n = 0; n < nst; n++, it++) {
    t_lead_gate(n, lead, go);
    t_produce_stage(ring, stages, stage_bytes, S, R, rowbytes, [&](int r) { return base + (size_t)(n * R + r) * d; }, pol, it);
  }
}
// Consumers: y[c] += sum_i o_s[i] * WoT[h*hd + i][c] over the slice's columns (vectors v0..v0+nv-1), + bias once
// (bias non-null: the caller's slice owes it), float4 atomics. Thread -> (vector group of up to T_VPT vectors, row
// group); row groups reduced through red_sm (>= NW * 32 * 8 floats; a consumer barrier inside when G > 1).
template <int NW>
__device__ __forceinline__ void t_outproj_consume(Ring<T_MAX_STAGES>& ring, const unsigned char* stages, int stage_bytes,
                                                  int S, int R, int nst, int nv, int rowbytes, const float* o_s,
                                                  float* red_sm, int v0, const float* bias, float* y, int& it) {
  constexpr int TC = NW * 32, T_VPT = (T_DMAX / 8 + TC - 1) / TC;
  const int tid = threadIdx.x, lane = tid & 31;
  const int G = nv >= TC ? 1 : TC / nv;           // row groups
  const int vt = nv >= TC ? tid : tid % nv, grp = nv >= TC ? 0 : tid / nv;
  const bool live = grp < G && vt < nv;
  float acc[T_VPT][8];
#pragma unroll
  for (int u = 0; u < T_VPT; u++)
#pragma unroll
    for (int i = 0; i < 8; i++) acc[u][i] = 0.f;
  for (int n = 0; n < nst; n++, it++) {
    const int s = it % S;
    mbar_wait(&ring.full[s], (it / S) & 1);
    if (live) {
      const unsigned char* st = stages + (size_t)s * stage_bytes;
      for (int r = grp; r < R; r += G) {
        const float sc = o_s[n * R + r];
        const uint4* row = reinterpret_cast<const uint4*>(st + r * rowbytes);
#pragma unroll
        for (int u = 0; u < T_VPT; u++) {
          const int v = vt + u * TC;
          if (v < nv) {
            uint4 w = row[v];
            const __half2* hh = reinterpret_cast<const __half2*>(&w);
#pragma unroll
            for (int i = 0; i < 4; i++) {
              float2 f = __half22float2(hh[i]);
              acc[u][2 * i] = fmaf(f.x, sc, acc[u][2 * i]);
              acc[u][2 * i + 1] = fmaf(f.y, sc, acc[u][2 * i + 1]);
            }
          }
        }
      }
    }
    __syncwarp();
    if (lane == 0) mbar_arrive(&ring.empty[s]);
  }
  // Reduce the row groups through shared memory (the attention area is free again), then one atomic per vector.
  float* red = red_sm;  // [G][nv][8] <= TC * 8 floats
  if (G > 1) {
    if (live)
#pragma unroll
      for (int i = 0; i < 8; i++) red[((size_t)grp * nv + vt) * 8 + i] = acc[0][i];
    cbar<NW>();
    if (tid < nv) {
      for (int g2 = 1; g2 < G; g2++)
#pragma unroll
        for (int i = 0; i < 8; i++) acc[0][i] += red[((size_t)g2 * nv + tid) * 8 + i];
    }
  }
  // Owners: thread tid holds vector tid + u * TC (after the reduction when G > 1; when nv < TC only u = 0 exists).
#pragma unroll
  for (int u = 0; u < T_VPT; u++) {
    const int v = tid + u * TC;
    if (v >= nv) continue;
    const int col = (v0 + v) * 8;
    if (bias) {
#pragma unroll
      for (int i = 0; i < 8; i++) acc[u][i] += __ldg(bias + col + i);
    }
    float4* y4 = reinterpret_cast<float4*>(y + col);
    atomicAdd(y4, make_float4(acc[u][0], acc[u][1], acc[u][2], acc[u][3]));
    atomicAdd(y4 + 1, make_float4(acc[u][4], acc[u][5], acc[u][6], acc[u][7]));
  }
}

template <int HD, int NW, bool PF = false>  // PF: fused predictors / a flagged head list (own instantiation)
__global__ void T_REGS k_attn_out(AttnOutArgs a) {
  constexpr int TW = NW;
  extern __shared__ __align__(128) unsigned char t_sm[];
  __shared__ Ring<T_MAX_STAGES> ring;
  __shared__ float o_s[HD];
  __shared__ uint64_t go, pbar;
  __shared__ int h_s;
  const int hi = blockIdx.x / a.slices, sl_i = blockIdx.x % a.slices;
  int h = 0;
  if constexpr (!PF) h = a.sel ? a.sel[hi] : hi;
  const int nv_all = a.d >> 3, v0 = sl_i * nv_all / a.slices, v1 = (sl_i + 1) * nv_all / a.slices, nv = v1 - v0;
  const int rowbytes = nv * 16, stage_bytes = a.R * rowbytes, nst = HD / a.R;
  float* att_sm = reinterpret_cast<float*>(t_sm);                                    // attention merge / reduction
  unsigned char* stages = t_sm + (size_t)att_state_floats(HD, NW) * 4;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  if (tid == 0) {
    ring.init(TW); mbar_init(&go, 1);
    if constexpr (PF) {
      mbar_init(&pbar, 1);
      if (a.sel_flag) pf_wait_sel(a.sel_flag, a.st);
      h = a.sel ? a.sel[hi] : hi;
      h_s = h;
    }
    mbar_fence_init(); tr_mark(a.tr, 0);
    // This head's K/V history into L2 before the weight copies are queued: with the copies gated (a.lead), the
    // attention's loads are then L2 hits with nothing ahead of them. (st[0] is final here: k_embed_tma triggers
    // its dependents only after its pdl_wait, i.e. after the previous step's LM head moved the position.)
    const int past = a.st[0];
    if (past > 0) {
      prefetch_l2_bulk(a.kc + (size_t)h * a.maxT * HD, (uint32_t)(past * HD * 2));
      prefetch_l2_bulk(a.vc + (size_t)h * a.maxT * HD, (uint32_t)(past * HD * 2));
    }
    if constexpr (PF)
      if (a.pf.on) pf_local_copy(a.pf, t_sm + a.pf.smem_off, &pbar);
  }
  __syncthreads();
  if constexpr (PF) {
    h = h_s;
    if (warp > TW) {  // the fused predictors' a.pf.pw warps (pfuse.cuh pf_local)
      pdl_trigger();
      pf_local(a.pf, t_sm + a.pf.smem_off, &pbar, a.tr, tid - (TW + 1) * 32);
      return;
    }
  }
  if (warp == TW) {
    if (lane == 0) {
      int it = 0;
      t_produce_outproj(ring, stages, stage_bytes, a.S, a.R, nst, rowbytes, a.WoT + (size_t)h * HD * a.d + (size_t)v0 * 8,
                        a.d, policy_evict_first(), it, a.lead, &go);
      tr_producer_done(a.tr, ring.full, it, a.S);
    }
    pdl_trigger();
    return;
  }
  pdl_trigger();
  // ---- attention (kernels.cuh head_attention, with the consumer warps) ----
  pdl_wait();
  if (tid == 0) tr_mark(a.tr, 1);
  head_attention<HD, NW>(a.q + h * HD, a.kc + (size_t)h * a.maxT * HD, a.vc + (size_t)h * a.maxT * HD,
                         a.valid + (size_t)h * a.maxT, a.st[0] + 1, att_sm, o_s, [] { cbar<NW>(); });
  cbar<NW>();
  if (tid == 0) { mbar_arrive(&go); tr_mark(a.tr, 2); }
  int it = 0;
  t_outproj_consume<NW>(ring, stages, stage_bytes, a.S, a.R, nst, nv, rowbytes, o_s, att_sm, v0, hi == 0 ? a.bias : nullptr,
                        a.y, it);
  if (tid == 0) tr_mark(a.tr, 3);
}

// A consumer warp's row of group/chunk gi, looked up ahead (the persistent step loads them before its grid wait,
// so no dependent global load sits between two groups): weight row, bias, deferred-LN constants.
constexpr int T_MG = 4;  // groups per warp held (more: loaded in the loop)
struct RowMeta {
  int row;
  float bias, c1, c2;
};

// ---------------------------------------------------------------------------------------------------------------
// The fused MLP's stream (k_mlp_tma, and the persistent sparse step in step.cuh): neurons j0..j1-1 of a list (row(j) =
// the weight row of list entry j) in chunks of RS: the chunk's fc1 rows (seg segments), then its fc2^T rows.
template <class Row>
__device__ __forceinline__ void t_produce_mlp(Ring<T_MAX_STAGES>& ring, unsigned char* stages, int stage_bytes,
                                              int segbytes, int segel, int seg, int S, int RS, int j0, int j1,
                                              const __half* W1, const __half* W2T, int K, Row row, uint64_t pol, int& it,
                                              int lead, uint64_t* go) {
  for (int g = j0; g < j1; g += RS) {
    const int nr = min(RS, j1 - g);
    for (int m = 0; m < 2; m++) {
      const __half* W = m == 0 ? W1 : W2T;
      t_produce_group(ring, stages, stage_bytes, segbytes, segel, seg, S, nr, [&](int r) { return W + (size_t)row(g + r) * K; },
                      pol, it, lead, go);
    }
  }
}
// acc[0..7] += b[col..col+7] when b is set (the bias a block owes)
__device__ __forceinline__ void t_add8(float (&acc)[8], const float* b, int col) {
  if (!b) return;
#pragma unroll
  for (int i = 0; i < 8; i++) acc[i] += __ldg(b + col + i);
}
// A block's fc2 partial (+ the bias it owes) into shared memory in y's layout (consumer thread tid holds the 8 floats
// at sg * segel + tid * 8 of each segment), for the pairs' and the bulk reduction.
__device__ __forceinline__ void t_store_partial(float (&acc)[T_SEGMAX][8], float* part, int seg, int segel, int segvec,
                                                const float* b2) {
  const int tid = threadIdx.x;
  if (tid < segvec) {
#pragma unroll
    for (int sg = 0; sg < T_SEGMAX; sg++) {
      if (sg >= seg) break;
      const int col = sg * segel + tid * 8;
      t_add8(acc[sg], b2, col);
      float4* p4 = reinterpret_cast<float4*>(part + col);
      p4[0] = make_float4(acc[sg][0], acc[sg][1], acc[sg][2], acc[sg][3]);
      p4[1] = make_float4(acc[sg][4], acc[sg][5], acc[sg][6], acc[sg][7]);
    }
  }
}
// The MLP's cross-block reduction done by the copy engine (sixteenth session, DEJAVU_CUDA_MLP_BULK). Each block writes
// its partial (+ the bias it owes) into its x planes (free once every consumer warp passed its last fc1 dot, the last
// chunk barrier), then one thread hands them to the copy engine (cp.reduce.async.bulk .add.f32), which adds them in
// L2 a line at a time instead of 16 bytes per atomic. Why: all blocks add into the same d floats and same-address
// atomics are serialised in L2. bench/cuda/reduce.cu, 132 blocks x 20 KB on an H200: float4 atomics 7.9 us a launch,
// bulk 5.3, over two copies 3.8 (atomics 5.7; pairs through distributed shared memory 4.7), stores alone 3.3.
// CL = 2 (pairs, only when asked for: DEJAVU_CUDA_MLP_CLUSTER=2): the pair first adds its partials through
// distributed shared memory, block r keeps the contiguous half r (the peer reads only the other half of this block's
// partial, so the sum goes in place) and bulk-reduces that half; slower than single blocks (13B grouped 1.674 vs
// 1.591 ms, same call). Consumer threads only (named barrier 1); the producer warp takes part in the two cluster
// barriers as for the atomics (k_mlp_tma). A run-time branch (geo.rowix bit 3) in the existing instantiations: as
// instantiations of their own (a template flag) the single-block kernels ran 13B grouped at 1.662 ms against 1.586,
// and a form without the pairs' bulk path at 1.624 against 1.591, although its single-block PTX was identical to
// this one's (s16 calls 4-9: presumably code placement; not resolved).
template <int NW, int CL>
__device__ __forceinline__ void t_mlp_reduce_bulk(float (&acc)[T_SEGMAX][8], const float4* xs, int seg, int segel,
                                                  int segvec, int K, const float* b2, float* y, bool owes) {
  const int tid = threadIdx.x;
  float* part = const_cast<float*>(reinterpret_cast<const float*>(xs));
  t_store_partial(acc, part, seg, segel, segvec, b2);
  int off = 0, len = K;
  if constexpr (CL == 2) {
    cluster_sync_all();
    const unsigned rank = cluster_rank();
    len = K / 2;
    off = (int)rank * len;
    float4* mine = reinterpret_cast<float4*>(part + off);
    for (int v = tid; v < len / 4; v += NW * 32) {
      const float4 a = mine[v], b = ld_peer_f4(part + off + v * 4, rank ^ 1u);
      mine[v] = make_float4(a.x + b.x, a.y + b.y, a.z + b.z, a.w + b.w);
    }
  }
  asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
  cbar<NW>();
  if (tid == 0 && y && (owes || CL == 2)) {
    asm volatile("cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [%0], [%1], %2;"
                 ::"l"(y + off), "r"((unsigned)__cvta_generic_to_shared(part + off)), "r"((unsigned)len * 4)
                 : "memory");
    asm volatile("cp.async.bulk.commit_group;" ::: "memory");
    asm volatile("cp.async.bulk.wait_group 0;" ::: "memory");
  }
  if constexpr (CL == 2) cluster_sync_all();
}

// Consumers: warp w computes h_w = ReLU(W1[j_w] . x + b1) for its neuron of each chunk (LayerNorm deferred per `in`),
// (c1/c2: t_ln_row), then every consumer thread adds h_r * W2T[j_r][c] for its 16-byte vector c of each segment (registers, over all
// chunks); one set of float4 atomics into y at the end (+ b2 when non-null: the caller owes the bias). meta: the
// warps' rows of the first T_MG chunks looked up ahead (RowMeta), or null.
template <int NW, int CL = 1>
__device__ __forceinline__ void t_mlp_consume(Ring<T_MAX_STAGES>& ring, const unsigned char* stages, int stage_bytes,
                                              int segbytes, int segel, int seg, int S, int RS, int j0, int j1,
                                              const int* sel, const float* b1v, const float4* xs, int K, const float* c1,
                                              const float* c2, LnStat lst, float (*h_s)[NW], const float* b2, float* y,
                                              int& it, const RowMeta (*meta)[T_MG] = nullptr, int tr = -1,
                                              float* y2 = nullptr, bool bulk = false) {
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int segvec = segbytes >> 4;
  float acc[T_SEGMAX][8];
#pragma unroll
  for (int s = 0; s < T_SEGMAX; s++)
#pragma unroll
    for (int i = 0; i < 8; i++) acc[s][i] = 0.f;
  int chunk = 0;
  for (int g = j0; g < j1; g += RS, chunk++) {
    const int nr = min(RS, j1 - g);
    const bool active = warp < nr;
    int row = 0;
    float b1 = 0.f, c1r = 0.f, c2r = 0.f;
    if (active && meta && chunk < T_MG) {
      const RowMeta m = meta[warp][chunk];
      row = m.row; b1 = m.bias; c1r = m.c1; c2r = m.c2;
    } else if (active) {
      row = sel ? sel[g + warp] : g + warp;
      b1 = __ldg(b1v + row);
      if (c1) { c1r = __ldg(c1 + row); c2r = __ldg(c2 + row); }
    }
    const float dot = t_consume_row(ring, stages, stage_bytes, segbytes, segel, seg, S, xs, K, active, it);
    float* hs = h_s[chunk & 1];
    if (lane == 0) hs[warp] = active ? fmaxf((c1 ? lst.rstd * (dot - lst.mean * c1r) + c2r : dot) + b1, 0.f) : 0.f;
    cbar<NW>();  // h of the chunk complete (and the other buffer no longer read: every thread passed its chunk)
#pragma unroll
    for (int sg = 0; sg < T_SEGMAX; sg++) {
      if (sg >= seg) break;
      const int s = it % S;
      mbar_wait(&ring.full[s], (it / S) & 1);
      if (tid < segvec) {
        const unsigned char* st = stages + (size_t)s * stage_bytes;
        for (int r = 0; r < nr; r++) {
          const float sc = hs[r];
          uint4 w = reinterpret_cast<const uint4*>(st + r * segbytes)[tid];
          const __half2* hh = reinterpret_cast<const __half2*>(&w);
#pragma unroll
          for (int i = 0; i < 4; i++) {
            float2 f = __half22float2(hh[i]);
            acc[sg][2 * i] = fmaf(f.x, sc, acc[sg][2 * i]);
            acc[sg][2 * i + 1] = fmaf(f.y, sc, acc[sg][2 * i + 1]);
          }
        }
      }
      __syncwarp();
      if (lane == 0) mbar_arrive(&ring.empty[s]);
      it++;
    }
  }
  if (tid == 0) tr_mark(tr, 9);
  if (y && y2 && ((blockIdx.x / CL) & 1)) y = y2;  // the second copy of the output delta (Engine::dcopy)
  if (bulk) {
    t_mlp_reduce_bulk<NW, CL>(acc, xs, seg, segel, segvec, K, b2, y, j0 < j1 || b2);
    return;
  }
  if constexpr (CL == 2) {
    // Pairs of blocks (a cluster of 2 on neighbouring SMs) add their partials through distributed shared memory
    // first, so every column gets half as many atomics. Why: all blocks add into the same d floats, and atomics on
    // one address are serialised in L2; 132 per address took ~4.5 us to drain (bench/cuda/reduce.cu), on the
    // critical path of every layer. Each block writes its partial into its own x planes (free: every consumer
    // warp passed its last fc1 dot at the chunk barrier above), then, after a cluster barrier, adds the partner's
    // values to the vectors it owns (tid & 1 == rank); a second barrier keeps both blocks resident until the
    // partner has read. The producer warp takes part in both barriers (k_mlp_tma).
    float* part = const_cast<float*>(reinterpret_cast<const float*>(xs));
    t_store_partial(acc, part, seg, segel, segvec, b2);
    cluster_sync_all();
    const unsigned rank = cluster_rank();
    if (y && tid < segvec && (unsigned)(tid & 1) == rank) {
#pragma unroll
      for (int sg = 0; sg < T_SEGMAX; sg++) {
        if (sg >= seg) break;
        const int col = sg * segel + tid * 8;
        const float4 a = ld_peer_f4(part + col, rank ^ 1u), b = ld_peer_f4(part + col + 4, rank ^ 1u);
        float4* y4 = reinterpret_cast<float4*>(y + col);
        atomicAdd(y4, make_float4(acc[sg][0] + a.x, acc[sg][1] + a.y, acc[sg][2] + a.z, acc[sg][3] + a.w));
        atomicAdd(y4 + 1, make_float4(acc[sg][4] + b.x, acc[sg][5] + b.y, acc[sg][6] + b.z, acc[sg][7] + b.w));
      }
    }
    cluster_sync_all();
    return;
  }
  if (y && tid < segvec && j0 < j1) {
#pragma unroll
    for (int sg = 0; sg < T_SEGMAX; sg++) {
      if (sg >= seg) break;
      const int col = sg * segel + tid * 8;
      t_add8(acc[sg], b2, col);
      float4* y4 = reinterpret_cast<float4*>(y + col);
      atomicAdd(y4, make_float4(acc[sg][0], acc[sg][1], acc[sg][2], acc[sg][3]));
      atomicAdd(y4 + 1, make_float4(acc[sg][4], acc[sg][5], acc[sg][6], acc[sg][7]));
    }
  } else if (y && tid < segvec && b2) {  // block 0 without neurons still owes the bias
    for (int sg = 0; sg < seg; sg++) {
      const int col = sg * segel + tid * 8;
      float4* y4 = reinterpret_cast<float4*>(y + col);
      atomicAdd(y4, make_float4(b2[col], b2[col + 1], b2[col + 2], b2[col + 3]));
      atomicAdd(y4 + 1, make_float4(b2[col + 4], b2[col + 5], b2[col + 6], b2[col + 7]));
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// MLP, streamed and fused: block b takes neurons [b*per, (b+1)*per) of the list (or of all, dense). Per chunk of TW
// neurons the producer streams their fc1 rows (segments), then their fc2^T rows; consumer warp w computes
// h_w = ReLU(W1[j_w] . xn + b1) (segments of its row), then every consumer thread adds h_r * W2T[j_r][c] for its
// columns c of each segment (registers, over all the block's chunks); one set of atomics at the end.
struct MlpTmaArgs {
  const __half* W1;
  const float* b1;
  const __half* W2T;
  const float* b2;     // added by block 0
  const int* sel;      // null: identity
  int n, d;
  float* y;            // D[2l+2]
  const unsigned* sel_flag;  // the list comes from a fused predictor of this step: wait for it (null: none)
  const int* st;
  const unsigned* gflags;    // grouped top-k (pfuse.cuh pf_local): wait for these ngroups flags instead of sel_flag
  int ngroups;
  float* y2;           // D[2l+2]'s second copy (null: none): the odd blocks (pairs when CL = 2) add there
};

// CL = 2: launched in clusters of 2 blocks that pre-add their partials (t_mlp_consume). REGS: the register cap, 72
// (T_REGS) unless a graph has no side-stream predictor blocks to leave room for (engine.cu launch_mlp_tma).
template <int NW, bool PF = false, int CL = 1, int REGS = 72>  // PF: waits for a fused predictor's selection (see k_rows_tma)
__global__ void __maxnreg__(REGS) k_mlp_tma(MlpTmaArgs a, XIn in, TGeo geo) {
  constexpr int TW = NW;
  extern __shared__ __align__(128) unsigned char t_sm[];
  __shared__ Ring<T_MAX_STAGES> ring;
  __shared__ float h_s[2][TW];
  __shared__ uint64_t go;
  __shared__ int rowix[T_ROWIX];
  const int K = a.d, seg = geo.seg, S = geo.S, segel = K / seg, segbytes = segel * 2, stage_bytes = geo.rows * segbytes, RS = geo.rows;
  float4* xs = reinterpret_cast<float4*>(t_sm);
  unsigned char* stages = t_sm + (size_t)K * 4;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int per = (a.n + gridDim.x - 1) / gridDim.x, j0 = blockIdx.x * per, j1 = min(a.n, j0 + per);
  if (tid == 0) { ring.init(TW); mbar_init(&go, 1); mbar_fence_init(); tr_mark(in.tr, 0); }
  __syncthreads();
  if (warp == TW) {
    if constexpr (PF) {  // the selection is made by the previous kernel's predictor warps: wait for its flag only
      if (a.gflags) pf_wait_groups(a.gflags, a.ngroups, a.st);
      else if (lane == 0) pf_wait_sel(a.sel_flag, a.st);
      __syncwarp();
    }
    const bool pre = t_lookup_rows((geo.rowix & 2) && a.sel, j0, j1, rowix, [&](int j) { return a.sel[j]; });
    if (lane == 0) {
      int it = 0;
      t_produce_mlp(ring, stages, stage_bytes, segbytes, segel, seg, S, RS, j0, j1, a.W1, a.W2T, K,
                    [&](int j) { return pre ? rowix[j - j0] : a.sel ? a.sel[j] : j; }, policy_evict_first(), it, geo.lead, &go);
      tr_producer_done(in.tr, ring.full, it, S);
    }
    pdl_trigger();
    if constexpr (CL == 2) {  // the two cluster barriers of t_mlp_consume count every thread of both blocks
      __syncwarp();
      cluster_sync_all();
      cluster_sync_all();
    }
    return;
  }
  const LnStat lst = t_consumer_prologue<NW, false>(in, K, xs, &go);  // mlp_in: an attention output, one copy
  int it = 0;
  t_mlp_consume<NW, CL>(ring, stages, stage_bytes, segbytes, segel, seg, S, RS, j0, j1, a.sel, a.b1, xs, K, in.c1, in.c2, lst, h_s,
                    blockIdx.x == 0 ? a.b2 : nullptr, (geo.rowix & 4) ? nullptr : a.y, it, nullptr, in.tr, a.y2,
                    (geo.rowix & 8) != 0);
  if (tid == 0) tr_mark(in.tr, 3);
}

// ---------------------------------------------------------------------------------------------------------------
// The deferred LayerNorm's per-row constants (t_load_input): c1[r] = W[r] . g, c2[r] = W[r] . b; a warp per row, fp32
// over the fp16 weights the kernels stream. Run when a graph is built (weights and LN parameters are final then).
__global__ void __launch_bounds__(256) k_ln_fold(const __half* __restrict__ W, int rows, int K, const float* __restrict__ g,
                                                 const float* __restrict__ b, float* __restrict__ c1, float* __restrict__ c2) {
  const int row = (int)((blockIdx.x * (size_t)blockDim.x + threadIdx.x) >> 5), lane = threadIdx.x & 31;
  if (row >= rows) return;
  const uint4* w = reinterpret_cast<const uint4*>(W + (size_t)row * K);
  float s1 = 0.f, s2 = 0.f;
  for (int c = lane; c < K / 8; c += 32) {
    const uint4 v = w[c];
    const __half2* h = reinterpret_cast<const __half2*>(&v);
#pragma unroll
    for (int i = 0; i < 4; i++) {
      const float2 f = __half22float2(h[i]);
      const int k = 8 * c + 2 * i;
      s1 += f.x * g[k] + f.y * g[k + 1];
      s2 += f.x * b[k] + f.y * b[k + 1];
    }
  }
  s1 = warp_sum(s1);
  s2 = warp_sum(s2);
  if (lane == 0) { c1[row] = s1; c2[row] = s2; }
}

// ---------------------------------------------------------------------------------------------------------------
// Embedding into X[0], and the step's delta buffers D[1..2L] and counters (the persistent step's; may be null)
// zeroed (grid-stride; before any kernel adds to them).
__global__ void __launch_bounds__(256) k_embed_tma(const __half* __restrict__ E, const __half* __restrict__ P,
                                                   const int* __restrict__ tokens, const int* __restrict__ st, int d,
                                                   float* __restrict__ x0, float* __restrict__ deltas, size_t n_delta,
                                                   unsigned* __restrict__ counters, int n_counters) {
  pdl_wait();
  const int pos = st[0], tok = tokens[pos];
  const size_t stride = (size_t)gridDim.x * blockDim.x;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (size_t)d; i += stride)
    x0[i] = __half2float(E[(size_t)tok * d + i]) + __half2float(P[(size_t)(pos + 2) * d + i]);
  float4* d4 = reinterpret_cast<float4*>(deltas);
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n_delta / 4; i += stride)
    d4[i] = make_float4(0.f, 0.f, 0.f, 0.f);
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (size_t)n_counters; i += stride) counters[i] = 0u;
  pdl_trigger();
}

// A predictor tap's input as fp16 for the register-streaming k_rows (predictor w1 runs on a side stream beside the
// main kernels, so it keeps k_rows' small footprint instead of a shared-memory ring): raw x or LN(x) without affine.
__global__ void __launch_bounds__(256) k_snap_input(XIn in, int d, __half* __restrict__ out) {
  __shared__ float red[32];
  const int n4 = d >> 2;
  float s = 0.f, s2 = 0.f;
  for (int i = threadIdx.x; i < n4; i += blockDim.x) {
    float4 a = x_at(in, i);
    s += a.x + a.y + a.z + a.w;
    s2 += a.x * a.x + a.y * a.y + a.z * a.z + a.w * a.w;
  }
  s = block_sum(s, red);
  s2 = block_sum(s2, red);
  const float mean = in.norm ? s / d : 0.f;
  const float rstd = in.norm ? rsqrtf(fmaxf(s2 / d - mean * mean, 0.f) + in.eps) : 1.f;
  for (int i = threadIdx.x; i < n4; i += blockDim.x) {
    float4 a = x_at(in, i);
    __align__(8) __half hv[4] = {__float2half((a.x - mean) * rstd), __float2half((a.y - mean) * rstd),
                                 __float2half((a.z - mean) * rstd), __float2half((a.w - mean) * rstd)};
    reinterpret_cast<uint2*>(out)[i] = *reinterpret_cast<uint2*>(hv);
  }
}

}  // namespace dj
