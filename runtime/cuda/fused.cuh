// The streamed decode path (the fast path on sm_90+; kernels.cuh holds the portable per-op kernels): three kernels
// per layer, every weight byte brought in by the copy engine (tma.cuh) into a shared-memory ring.
//   k_rows_tma<QKV>   LN1 prologue, then q/k/v rows (all, a head list's, or a head list's q + every k/v)
//   k_attn_out<HD>    a block per (head, column slice): that head's attention (recomputed by each of its slices,
//                     K/V from L2), then its out_proj rows restricted to the slice -> atomics into the residual delta
//   k_mlp_tma         LN2 prologue, then per chunk of 16 neurons: fc1 rows -> h = ReLU(.) -> fc2^T rows scaled by h,
//                     accumulated in registers over the block's neurons -> one bulk reduction (t_mlp_reduce_bulk)
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

// TW consumer warps per block + one producer warp (8 warps, two blocks an SM, measured slower). The device helpers
// take the consumer warps as a template parameter NW.
constexpr int TW = 16;
constexpr int T_MAX_STAGES = 8;
constexpr int T_DMAX = 10240;               // x held in registers by the prologue: d <= T_DMAX
constexpr int T_SEGMAX = 4;                 // row segments per row (segment <= segment bytes target)
constexpr int T_ROWIX = 512;                // a block's selected row indices held in shared memory (more: looked up)
__host__ __device__ constexpr int t_threads(int nw) { return nw * 32 + 32; }
constexpr int T_THREADS = t_threads(TW);
// Register cap: a 544-thread block at <= 72 registers leaves ~25K registers of the SM to the predictor kernels on the
// side streams (k_rows / k_pred_scores / k_topk_select blocks), so they run beside a streamed block instead of
// waiting for an SM to empty (measured: with 96 registers the predictors added 33% to a 13B sparse step).
#define T_REGS __maxnreg__(72)

template <int NW> __device__ __forceinline__ void cbar() { asm volatile("bar.sync 1, %0;" ::"n"(NW * 32) : "memory"); }
}  // namespace dj
#include "pfuse.cuh"
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
  int rowix; // bit 0 (row kernels) / bit 1 (MLP): the producer looks the block's selected rows up first (T_ROWIX)
};

// Consumer prologue: x = base + delta into registers, written to shared memory as two float4 planes (lo[c] =
// x[8c..8c+3], hi[c] = x[8c+4..8c+7]) so lane c's 32 bytes come without bank conflicts; this block's slice of X[r]
// written (nb blocks write X[r], this is block bi). Consumer threads only (named barrier 1). Two forms of the LayerNorm:
//   in.c1 null: the planes hold LN(x) (statistics, a barrier, then the affine: two round trips, two barriers).
//   in.c1 set (deferred): the planes hold g * x, and the row epilogue applies the rest (t_ln_row):
//     W . (g * (x - mean) * rstd + b) = rstd * (W . (g * x) - mean * c1) + c2,  c1 = W . g, c2 = W . b per row,
//   so the dots start after one round trip (x; g is loaded before pdl_wait) and one barrier. Why: the prologue is
//   on the critical path of every kernel (3.5-6 us measured by an in-kernel timeline trace), the weight ring is full then.
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
  const float4 a = xs[c], b = xs[(d >> 3) + c];
  const float x[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
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
                                                int nr, int bytes, Src src, uint64_t pol, int it) {
  const int s = it % S;
  if (it >= S) mbar_wait(&ring.empty[s], ((it / S) & 1) ^ 1);
  mbar_expect_tx(&ring.full[s], nr * bytes);
  for (int r = 0; r < nr; r++) bulk_g2s(stages + (size_t)s * stage_bytes + r * bytes, src(r), bytes, &ring.full[s], pol);
}
template <class Row>
__device__ __forceinline__ void t_produce_group(Ring<T_MAX_STAGES>& ring, unsigned char* stages, int stage_bytes,
                                                int segbytes, int segel, int seg, int S, int nr, Row row, uint64_t pol,
                                                int& it, int lead, uint64_t* go) {
  for (int sg = 0; sg < seg; sg++, it++) {
    t_lead_gate(it, lead, go);
    t_produce_stage(ring, stages, stage_bytes, S, nr, segbytes, [&](int r) { return row(r) + sg * segel; }, pol, it);
  }
}
// Consumer warp: the dot of its row of the group (warp index = row; `active` = the row exists) with x over the
// group's seg stages, summed over the warp; every warp releases every stage.
__device__ __forceinline__ float t_consume_row(Ring<T_MAX_STAGES>& ring, const unsigned char* stages, int stage_bytes,
                                               int segbytes, int segel, int seg, int S, const float4* xs, int K,
                                               bool active, int& it) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, segvec = segbytes >> 4;
  float acc = 0.f;
  for (int sg = 0; sg < seg; sg++, it++) {
    const int s = it % S;
    mbar_wait(&ring.full[s], (it / S) & 1);
    if (active) {
      const uint4* src = reinterpret_cast<const uint4*>(stages + (size_t)s * stage_bytes + warp * segbytes);
      const int c0 = sg * (segel >> 3);
      for (int c = lane; c < segvec; c += 32) acc += t_dot(src[c], xs, K, c0 + c);
    }
    __syncwarp();
    if (lane == 0) mbar_arrive(&ring.empty[s]);
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
  const LnStat lst = t_load_input<NW, D2>(in, K, xs, gv, gridDim.x, blockIdx.x);
  if (threadIdx.x == 0) mbar_arrive(go);
  return lst;
}

// ---------------------------------------------------------------------------------------------------------------
// Row GEMV, streamed: block b takes rows [b*per, (b+1)*per) of the (mapped) output; the producer warp streams them
// in groups of TW rows, one segment per stage; consumer warp w owns row w of each group.
// PF: the launch carries fused-predictor rows or waits for a head list (pfuse.cuh). A separate instantiation: with
// those paths compiled in, the register allocation of the plain kernel changed and 30B dense lost 9-11% (measured).
template <int EPI, bool PF = false>
__global__ void T_REGS k_rows_tma(RowsArgs a, XIn in, TGeo geo) {
  constexpr int NW = TW;
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
  if (threadIdx.x == 0) { ring.init(TW); mbar_init(&go, 1); mbar_fence_init(); }
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
                        [&](int r) { return wrow(pre ? rowix[g + r - j0] : vrow(g + r)); }, pol, it, -1, &go);
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
        const float acc = t_consume_row(ring, stages, stage_bytes, segbytes, segel, seg, S, xs, K, active, it);
        if (ld) a.pt[pr] = nm != 0.f ? lst.rstd * (acc - lst.mean * c1r) : acc;
        continue;
      }
    }
    const float bias = ld && a.b ? __ldg(a.b + row) : 0.f;
    const float c1r = ld && in.c1 ? __ldg(in.c1 + row) : 0.f, c2r = ld && in.c1 ? __ldg(in.c2 + row) : 0.f;
    const float acc = t_consume_row(ring, stages, stage_bytes, segbytes, segel, seg, S, xs, K, active, it);
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
  const unsigned* sel_flag;  // the head list comes from a fused predictor of this step: wait for it (null: none)
  PredFuse pf;          // predictors fused into this kernel (pfuse.cuh): one more warp per block when pf.on
};

// ---------------------------------------------------------------------------------------------------------------
// out_proj over one column slice of one head (k_attn_out): the slice's
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
    atomic_add8(y + col, acc[u]);
  }
}

template <int HD, bool PF = false>  // PF: fused predictors / a flagged head list (own instantiation)
__global__ void T_REGS k_attn_out(AttnOutArgs a) {
  constexpr int NW = TW;
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
    mbar_fence_init();
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
    if (warp > TW) {  // the fused predictors' PF_LOCAL_WARPS warps (pfuse.cuh pf_local)
      pdl_trigger();
      pf_local(a.pf, t_sm + a.pf.smem_off, &pbar, tid - (TW + 1) * 32);
      return;
    }
  }
  if (warp == TW) {
    if (lane == 0) {
      int it = 0;
      t_produce_outproj(ring, stages, stage_bytes, a.S, a.R, nst, rowbytes, a.WoT + (size_t)h * HD * a.d + (size_t)v0 * 8,
                        a.d, policy_evict_first(), it, a.lead, &go);
    }
    pdl_trigger();
    return;
  }
  pdl_trigger();
  // ---- attention (kernels.cuh head_attention, with the consumer warps) ----
  pdl_wait();
  head_attention<HD, NW>(a.q + h * HD, a.kc + (size_t)h * a.maxT * HD, a.vc + (size_t)h * a.maxT * HD,
                         a.valid + (size_t)h * a.maxT, a.st[0] + 1, att_sm, o_s, [] { cbar<NW>(); });
  cbar<NW>();
  if (tid == 0) mbar_arrive(&go);
  int it = 0;
  t_outproj_consume<NW>(ring, stages, stage_bytes, a.S, a.R, nst, nv, rowbytes, o_s, att_sm, v0, hi == 0 ? a.bias : nullptr,
                        a.y, it);
}

// ---------------------------------------------------------------------------------------------------------------
// The fused MLP's stream (k_mlp_tma): neurons j0..j1-1 of a list (row(j) =
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
// at sg * segel + tid * 8 of each segment), for the bulk reduction.
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
// The MLP's cross-block reduction done by the copy engine. Each block writes its partial (+ the bias it owes) into
// its x planes (free once every consumer warp passed its last fc1 dot, the last chunk barrier), then one thread hands
// them to the copy engine (cp.reduce.async.bulk .add.f32), which adds them in L2 a line at a time instead of 16 bytes
// per atomic. Why: all blocks add into the same d floats and same-address atomics are serialised in L2.
// bench/cuda/reduce.cu, 132 blocks x 20 KB on an H200: float4 atomics 7.9 us a launch, bulk 5.3, over two copies 3.8
// (atomics 5.7; pairs through distributed shared memory 4.7), stores alone 3.3. 13B grouped: 1.644 -> 1.590 ms.
template <int NW>
__device__ __forceinline__ void t_mlp_reduce_bulk(float (&acc)[T_SEGMAX][8], const float4* xs, int seg, int segel,
                                                  int segvec, int K, const float* b2, float* y, bool owes) {
  float* part = const_cast<float*>(reinterpret_cast<const float*>(xs));
  t_store_partial(acc, part, seg, segel, segvec, b2);
#if DJ_SM90
  asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
  cbar<NW>();
  if (threadIdx.x == 0 && owes) {
    asm volatile("cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [%0], [%1], %2;"
                 ::"l"(y), "r"((unsigned)__cvta_generic_to_shared(part)), "r"((unsigned)K * 4)
                 : "memory");
    asm volatile("cp.async.bulk.commit_group;" ::: "memory");
    asm volatile("cp.async.bulk.wait_group 0;" ::: "memory");
  }
#else
  __trap();  // never launched before sm_90 (tma.cuh)
#endif
}

// Consumers: warp w computes h_w = ReLU(W1[j_w] . x + b1) for its neuron of each chunk (LayerNorm deferred per `in`),
// (c1/c2: t_ln_row), then every consumer thread adds h_r * W2T[j_r][c] for its 16-byte vector c of each segment
// (registers, over all chunks); one bulk reduction into y at the end (+ b2 when non-null: the caller owes the bias),
// the odd blocks into y's second copy y2.
template <int NW>
__device__ __forceinline__ void t_mlp_consume(Ring<T_MAX_STAGES>& ring, const unsigned char* stages, int stage_bytes,
                                              int segbytes, int segel, int seg, int S, int RS, int j0, int j1,
                                              const int* sel, const float* b1v, const float4* xs, int K, const float* c1,
                                              const float* c2, LnStat lst, float (*h_s)[NW], const float* b2, float* y,
                                              int& it, float* y2) {
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
    if (active) {
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
  if ((blockIdx.x & 1) && y2) y = y2;  // the second copy of the output delta (engine.cu point_in)
  t_mlp_reduce_bulk<NW>(acc, xs, seg, segel, segvec, K, b2, y, j0 < j1 || b2);
}

// ---------------------------------------------------------------------------------------------------------------
// MLP, streamed and fused: block b takes neurons [b*per, (b+1)*per) of the list (or of all, dense). Per chunk of TW
// neurons the producer streams their fc1 rows (segments), then their fc2^T rows; consumer warp w computes
// h_w = ReLU(W1[j_w] . xn + b1) (segments of its row), then every consumer thread adds h_r * W2T[j_r][c] for its
// columns c of each segment (registers, over all the block's chunks); one bulk reduction at the end.
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
  float* y2;           // D[2l+2]'s second copy: the odd blocks add there
};

// REGS: the register cap, 72 (T_REGS) unless a graph has no side-stream predictor blocks to leave room for
// (engine.cu launch_mlp_tma).
template <bool PF = false, int REGS = 72>  // PF: waits for a fused predictor's selection (see k_rows_tma)
__global__ void __maxnreg__(REGS) k_mlp_tma(MlpTmaArgs a, XIn in, TGeo geo) {
  constexpr int NW = TW;
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
  if (tid == 0) { ring.init(TW); mbar_init(&go, 1); mbar_fence_init(); }
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
                    [&](int j) { return pre ? rowix[j - j0] : a.sel ? a.sel[j] : j; }, policy_evict_first(), it, -1, &go);
    }
    pdl_trigger();
    return;
  }
  const LnStat lst = t_consumer_prologue<NW, false>(in, K, xs, &go);  // mlp_in: an attention output, one copy
  int it = 0;
  t_mlp_consume<NW>(ring, stages, stage_bytes, segbytes, segel, seg, S, RS, j0, j1, a.sel, a.b1, xs, K, in.c1, in.c2, lst, h_s,
                    blockIdx.x == 0 ? a.b2 : nullptr, a.y, it, a.y2);
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
// Embedding into X[0], and the step's delta buffers zeroed (grid-stride; before any kernel adds to them).
__global__ void __launch_bounds__(256) k_embed_tma(const __half* __restrict__ E, const __half* __restrict__ P,
                                                   const int* __restrict__ tokens, const int* __restrict__ st, int d,
                                                   float* __restrict__ x0, float* __restrict__ deltas, size_t n_delta) {
  pdl_wait();
  const int pos = st[0], tok = tokens[pos];
  const size_t stride = (size_t)gridDim.x * blockDim.x;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (size_t)d; i += stride)
    x0[i] = __half2float(E[(size_t)tok * d + i]) + __half2float(P[(size_t)(pos + 2) * d + i]);
  float4* d4 = reinterpret_cast<float4*>(deltas);
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n_delta / 4; i += stride)
    d4[i] = make_float4(0.f, 0.f, 0.f, 0.f);
  pdl_trigger();
}

}  // namespace dj
