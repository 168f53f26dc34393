// The sparse decode step's layers as ONE persistent kernel (streamed path; env DEJAVU_CUDA_PSTEP, engine.cu).
// Why: with a kernel per phase (QKV, attention + out_proj, MLP) every boundary drains the copy ring and refills it
// (launch, ramp, tail: the 13B sparse step spent ~36 us per layer on ~16 us of bytes). Here each block's producer
// warp walks the block's whole list of weight rows for all layers (its QKV rows, its out_proj slice, its neurons,
// then the next layer's) and keeps the ring full across phases; the consumers wait on grid counters instead of
// kernel boundaries. Weights and selections never depend on the activations, so only the consumers wait.
//
// Phases of layer l for worker block b (of W), and what each waits for (counters in a.sync, zeroed each step by
// k_embed_tma; a signal is one atomic per block after a consumer barrier, a wait one thread spinning on an acquire
// load, then a consumer barrier):
//   QKV      rows [b*per, (b+1)*per) of the head list's q/k/v rows; input att_in(l) = X[2l-1] + D[2l]    waits MLP(l-1) = W
//   ATT      blocks b < kH * slices: head sel[b / slices] (attention over its K/V), then out_proj over column
//            slice b % slices -> atomics into D[2l+1]                                                 waits QKV(l) = W
//   MLP      neurons [b*per, ...) of the list: fc1 -> ReLU -> fc2^T -> atomics into D[2l+2]; input
//            mlp_in(l) = X[2l] + D[2l+1]                                                          waits ATT(l) = kH * slices
// X[r] slices are written by the phase that consumes point r (fused.cuh header), so the counters also order them.
// All blocks must be co-resident (cooperative launch, one block per SM).
#pragma once
#include "fused.cuh"

namespace dj {

// Consumer warps: 16 (+ the producer = 17 warps: at most 96 registers a thread, the phases spill ~1 KB; 12 warps,
// 128 registers, measured no faster, and head_attention's merge needs NW * 32 / hd to be a power of two).
constexpr int PSTEP_NW = 16;

// Per-layer arguments (device memory, written before capture).
struct SLayer {
  const __half *Wqkv, *WoT, *W1, *W2T;
  const float *bqkv, *bo, *b1, *b2, *ln1_g, *ln2_g;
  const float *c1q, *c2q, *c1m, *c2m;  // deferred LayerNorm constants (k_ln_fold); required
  __half *kc, *vc;
  uint8_t* valid;
  const int *hsel, *nsel;  // head / neuron lists (null: all)
  int kH, kM;
  int rq, rm;              // rows per stage: QKV, MLP (<= NW, <= stage_bytes / segment bytes)
  int slices, R;           // ATT: column slices per head (kH * slices <= W), WoT rows per stage
};
struct StepArgs {
  const SLayer* layers;
  int L, d, hd, maxT;
  float eps, q_scale;
  float *X, *D, *q;
  const int* st;
  unsigned* sync;  // [L][3]: QKV, ATT, MLP arrivals
  int W;           // worker blocks
  int seg, S, stage_bytes, area;  // row segments; ring stages and their bytes; shared bytes before the ring
  int nosync;      // TIMING EXPERIMENT ONLY (wrong results; env DEJAVU_CUDA_PSTEP_NOSYNC=1): phases skip their grid waits
  int tr;          // timeline trace (DJ_TRACE builds, bench/cuda/trace.cu): thread 0 stamps g_trace[layer][block][k],
                   // k = QKV input ready, QKV signalled, ATT released, ATT signalled, MLP input ready, MLP signalled
};

// (ld_acquire: pfuse.cuh)
// Consumer threads only: everyone's writes of the phase are done (barrier), then one release-add per block.
template <int NW>
__device__ __forceinline__ void grid_signal(unsigned* c) {
  cbar<NW>();
  if (threadIdx.x == 0) {
    __threadfence();
    atomicAdd(c, 1u);
  }
}
template <int NW>
__device__ __forceinline__ void grid_wait(const unsigned* c, unsigned target, int skip = 0) {
  if (threadIdx.x == 0 && !skip)
    while (ld_acquire(c) < target) {
    }
  cbar<NW>();
}

__device__ __forceinline__ RowsArgs step_qkv_args(const StepArgs& a, const SLayer& y) {
  RowsArgs r{};
  const bool hs = y.hsel != nullptr;
  r.W = y.Wqkv; r.b = y.bqkv; r.K = a.d; r.n_out = 3 * y.kH * a.hd; r.map = hs ? MAP_QKV : MAP_ID; r.sel = y.hsel;
  r.kH = y.kH; r.hd = a.hd; r.d = a.d; r.y = a.q; r.q_scale = a.q_scale; r.kc = y.kc; r.vc = y.vc; r.valid = y.valid;
  r.maxT = a.maxT; r.st = const_cast<int*>(a.st);
  return r;
}
__device__ __forceinline__ void block_range(int n, int nb, int b, int& j0, int& j1) {
  const int per = (n + nb - 1) / nb;
  j0 = min(n, b * per);
  j1 = min(n, j0 + per);
}
// Column slice `sl` of `slices` over nv_all 16-byte vectors.
__device__ __forceinline__ void slice_range(int nv_all, int slices, int sl, int& v0, int& nv) {
  v0 = sl * nv_all / slices;
  nv = (sl + 1) * nv_all / slices - v0;
}

// ---- consumer phases of layer l (k_step_sparse) ----
// Lane 0 of each consumer warp looks up its rows of the phase's first T_MG groups (row(j) for list entry j, and
// bias / c1 / c2 of that weight row) into meta[warp], all loads in flight together. Called before the phase's grid
// wait: selections and weights do not depend on it, and under a saturated memory system each dependent load costs
// 1-2 us (the trace showed 12 us of QKV work for 3 groups of rows).
template <class Row>
__device__ __forceinline__ void step_meta(int j0, int j1, int rows, Row row, const float* bias, const float* c1,
                                          const float* c2, RowMeta (*meta)[T_MG]) {
  const int warp = threadIdx.x >> 5;
  if ((threadIdx.x & 31) != 0) return;
  int r[T_MG];
#pragma unroll
  for (int gi = 0; gi < T_MG; gi++) {
    const int j = j0 + gi * rows + warp;
    r[gi] = warp < rows && j < j1 ? row(j) : -1;
  }
#pragma unroll
  for (int gi = 0; gi < T_MG; gi++)
    if (r[gi] >= 0) meta[warp][gi] = RowMeta{r[gi], __ldg(bias + r[gi]), __ldg(c1 + r[gi]), __ldg(c2 + r[gi])};
}

// QKV: att_in(l) = X[2l-1] + D[2l] (X[0] at l = 0), LayerNorm 1 deferred; q -> a.q, K/V -> the cache.
template <int NW>
__device__ __noinline__ void step_qkv(const StepArgs& a, int l, Ring<T_MAX_STAGES>& ring, const unsigned char* stages,
                                      float4* xs, RowMeta (*meta)[T_MG], int pos, int& it) {
  const SLayer& y = a.layers[l];
  const int d = a.d, b = blockIdx.x, W = a.W, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int segel = d / a.seg, segbytes = segel * 2;
  XIn in{};
  in.base = l == 0 ? a.X : a.X + (size_t)(2 * l - 1) * d;
  in.delta = l == 0 ? nullptr : a.D + (size_t)(2 * l) * d;
  in.out = l == 0 ? nullptr : a.X + (size_t)(2 * l) * d;
  in.g = y.ln1_g; in.eps = a.eps; in.norm = 1; in.c1 = y.c1q; in.c2 = y.c2q; in.tr = -1;
  const RowsArgs ra = step_qkv_args(a, y);
  int j0, j1;
  block_range(ra.n_out, W, b, j0, j1);
  step_meta(j0, j1, y.rq, [&](int j) { return rows_map(ra, j); }, y.bqkv, y.c1q, y.c2q, meta);
  float4 gv[t_xv<NW>()];
  t_pre_input<NW>(in, d, gv);
  if (l > 0) grid_wait<NW>(a.sync + 3 * l - 1, W, a.nosync);  // MLP(l-1) done
  const LnStat lst = t_load_input<NW>(in, d, xs, gv, W, b);
  if (threadIdx.x == 0) tr_mark(a.tr ? l : -1, 0);
  unsigned long long best = 0ull;
  for (int g = j0, gi = 0; g < j1; g += y.rq, gi++) {
    const int nr = min(y.rq, j1 - g), j = g + warp;
    const bool active = warp < nr, ld = active && lane == 0;
    RowMeta m{0, 0.f, 0.f, 0.f};
    if (ld) m = gi < T_MG ? meta[warp][gi] : RowMeta{rows_map(ra, j), 0.f, 0.f, 0.f};
    if (ld && gi >= T_MG) { m.bias = __ldg(y.bqkv + m.row); m.c1 = __ldg(y.c1q + m.row); m.c2 = __ldg(y.c2q + m.row); }
    const float acc = t_consume_row(ring, stages, a.stage_bytes, segbytes, segel, a.seg, a.S, xs, d, active, it);
    if (ld) row_epilogue<EPI_QKV>(ra, j, m.row, t_ln_row(in, lst, acc, m.c1, m.c2) + m.bias, pos, best);
  }
  grid_signal<NW>(a.sync + 3 * l);
  if (threadIdx.x == 0) tr_mark(a.tr ? l : -1, 1);
}
// ATT (blocks b < kH * slices): head sel[b / slices] over its K/V, then out_proj over column slice b % slices.
template <int HD, int NW>
__device__ __noinline__ void step_att(const StepArgs& a, int l, Ring<T_MAX_STAGES>& ring, const unsigned char* stages,
                                      float* att_sm, float* o_s, int pos, int& it) {
  const SLayer& y = a.layers[l];
  const int d = a.d, b = blockIdx.x;
  const int hi = b / y.slices, h = y.hsel ? y.hsel[hi] : hi;
  const __half* K = y.kc + (size_t)h * a.maxT * HD;
  const __half* V = y.vc + (size_t)h * a.maxT * HD;
  if (threadIdx.x == 0 && pos > 0) {  // the head's K/V history into L2 while the QKV rows finish
    prefetch_l2_bulk(K, (uint32_t)(pos * HD * 2));
    prefetch_l2_bulk(V, (uint32_t)(pos * HD * 2));
  }
  grid_wait<NW>(a.sync + 3 * l, a.W, a.nosync);
  if (threadIdx.x == 0) tr_mark(a.tr ? l : -1, 2);
  head_attention<HD, NW>(a.q + h * HD, K, V, y.valid + (size_t)h * a.maxT, pos + 1, att_sm, o_s, [] { cbar<NW>(); });
  cbar<NW>();
  int v0, nv;
  slice_range(d >> 3, y.slices, b % y.slices, v0, nv);
  t_outproj_consume<NW>(ring, stages, a.stage_bytes, a.S, y.R, HD / y.R, nv, nv * 16, o_s, att_sm, v0,
                        hi == 0 ? y.bo : nullptr, a.D + (size_t)(2 * l + 1) * d, it);
  grid_signal<NW>(a.sync + 3 * l + 1);
  if (threadIdx.x == 0) tr_mark(a.tr ? l : -1, 3);
}
// MLP: mlp_in(l) = X[2l] + D[2l+1], LayerNorm 2 deferred; fc1 -> ReLU -> fc2^T -> atomics into D[2l+2].
template <int NW>
__device__ __noinline__ void step_mlp(const StepArgs& a, int l, Ring<T_MAX_STAGES>& ring, const unsigned char* stages,
                                      float4* xs, float (*h_s)[NW], RowMeta (*meta)[T_MG], int& it) {
  const SLayer& y = a.layers[l];
  const int d = a.d, b = blockIdx.x, W = a.W;
  const int segel = d / a.seg, segbytes = segel * 2;
  XIn in{};
  in.base = a.X + (size_t)(2 * l) * d;
  in.delta = a.D + (size_t)(2 * l + 1) * d;
  in.out = a.X + (size_t)(2 * l + 1) * d;
  in.g = y.ln2_g; in.eps = a.eps; in.norm = 1; in.c1 = y.c1m; in.c2 = y.c2m; in.tr = -1;
  int j0, j1;
  block_range(y.kM, W, b, j0, j1);
  step_meta(j0, j1, y.rm, [&](int j) { return y.nsel ? y.nsel[j] : j; }, y.b1, y.c1m, y.c2m, meta);
  float4 gv[t_xv<NW>()];
  t_pre_input<NW>(in, d, gv);
  grid_wait<NW>(a.sync + 3 * l + 1, y.kH * y.slices, a.nosync);
  const LnStat lst = t_load_input<NW>(in, d, xs, gv, W, b);
  if (threadIdx.x == 0) tr_mark(a.tr ? l : -1, 4);
  t_mlp_consume<NW>(ring, stages, a.stage_bytes, segbytes, segel, a.seg, a.S, y.rm, j0, j1, y.nsel, y.b1, xs, d, y.c1m,
                    y.c2m, lst, h_s, b == 0 ? y.b2 : nullptr, a.D + (size_t)(2 * l + 2) * d, it, meta);
  grid_signal<NW>(a.sync + 3 * l + 2);
  if (threadIdx.x == 0) tr_mark(a.tr ? l : -1, 5);
}

// Producer warp (all lanes): block b's weight rows of layer l into rb, QKV rows first (nq of them), then the MLP's
// neurons; n = {nq, nm, head}. nq = -1 when they do not fit (the issue loop then looks rows up one by one).
__device__ __forceinline__ void step_lookup(const StepArgs& a, int l, int* rb, int* n) {
  const SLayer& y = a.layers[l];
  const int b = blockIdx.x, lane = threadIdx.x & 31;
  const RowsArgs ra = step_qkv_args(a, y);
  int q0, q1, m0, m1;
  block_range(ra.n_out, a.W, b, q0, q1);
  block_range(y.kM, a.W, b, m0, m1);
  const int nq = q1 - q0, nm = m1 - m0;
  const bool fit = nq + nm <= T_ROWIX / 2;
  if (fit) {
    for (int j = q0 + lane; j < q1; j += 32) rb[j - q0] = rows_map(ra, j);
    for (int j = m0 + lane; j < m1; j += 32) rb[nq + j - m0] = y.nsel ? y.nsel[j] : j;
  }
  if (lane == 0) {
    n[0] = fit ? nq : -1;
    n[1] = nm;
    n[2] = b < y.kH * y.slices ? (y.hsel ? y.hsel[b / y.slices] : b / y.slices) : 0;
  }
  __syncwarp();
}

template <int HD, int NW>
__global__ void __launch_bounds__(NW * 32 + 32, 1) k_step_sparse(StepArgs a) {
  constexpr int TW = NW;
  extern __shared__ __align__(128) unsigned char t_sm[];
  __shared__ Ring<T_MAX_STAGES> ring;
  __shared__ float o_s[HD];
  __shared__ float h_s[2][TW];
  __shared__ int rowbuf[2][T_ROWIX / 2];  // the producer's row lookups, double-buffered by layer (step_lookup)
  __shared__ int nbuf[2][3];
  __shared__ RowMeta meta[TW][T_MG];
  const int d = a.d, seg = a.seg, S = a.S, SB = a.stage_bytes, segel = d / seg, segbytes = segel * 2;
  float4* xs = reinterpret_cast<float4*>(t_sm);  // x planes; the attention state / out_proj reduction alias them
  float* att_sm = reinterpret_cast<float*>(t_sm);
  unsigned char* stages = t_sm + a.area;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, b = blockIdx.x, W = a.W;
  if (tid == 0) { ring.init(TW); mbar_fence_init(); }
  __syncthreads();
  if (b >= W) return;  // (predictor blocks: none yet)
  const int pos = a.st[0];

  if (warp == TW) {  // ---- producer: every weight row of the block, all layers, in consumption order ----
    // The rows of layer l+1 are looked up (all producer lanes, one round trip) while layer l's copies are issued:
    // looked up at each phase change instead, every phase began with ~3 us without a copy issued (the ring drained).
    const uint64_t pol = policy_evict_first();
    int it = 0;
    step_lookup(a, 0, rowbuf[0], &nbuf[0][0]);
    for (int l = 0; l < a.L; l++) {
      const SLayer& y = a.layers[l];
      const int* rb = rowbuf[l & 1];
      const int nq = nbuf[l & 1][0], h = nbuf[l & 1][2];
      if (l + 1 < a.L) step_lookup(a, l + 1, rowbuf[(l + 1) & 1], &nbuf[(l + 1) & 1][0]);
      if (lane == 0) {
        const RowsArgs ra = step_qkv_args(a, y);
        int j0, j1;
        block_range(ra.n_out, W, b, j0, j1);
        for (int g = j0; g < j1; g += y.rq)
          t_produce_group(ring, stages, SB, segbytes, segel, seg, S, min(y.rq, j1 - g),
                          [&](int r) { return y.Wqkv + (size_t)(nq >= 0 ? rb[g + r - j0] : rows_map(ra, g + r)) * d; }, pol,
                          it, -1, nullptr);
        if (b < y.kH * y.slices) {
          int v0, nv;
          slice_range(d >> 3, y.slices, b % y.slices, v0, nv);
          t_produce_outproj(ring, stages, SB, S, y.R, HD / y.R, nv * 16, y.WoT + (size_t)h * HD * d + (size_t)v0 * 8, d, pol,
                            it, -1, nullptr);
        }
        block_range(y.kM, W, b, j0, j1);
        t_produce_mlp(ring, stages, SB, segbytes, segel, seg, S, y.rm, j0, j1, y.W1, y.W2T, d,
                      [&](int j) { return nq >= 0 ? rb[nq + j - j0] : y.nsel ? y.nsel[j] : j; }, pol, it, -1, nullptr);
      }
      __syncwarp();
    }
    return;
  }

  // ---- consumers: one function per phase ----
  int it = 0;
  for (int l = 0; l < a.L; l++) {
    step_qkv<NW>(a, l, ring, stages, xs, meta, pos, it);
    if (b < a.layers[l].kH * a.layers[l].slices) step_att<HD, NW>(a, l, ring, stages, att_sm, o_s, pos, it);
    step_mlp<NW>(a, l, ring, stages, xs, h_s, meta, it);
  }
}

}  // namespace dj
