// The predictor chain's first layer on the streamed path (engine.cu fire_tap; env DEJAVU_CUDA_PCHAIN=0 selects the
// earlier snapshot kernel + k_rows). Why: the chain feeding a layer's MLP selection runs beside that layer's QKV and
// attention kernels and must end before its MLP starts; it was 4 kernels per tap (one-block snapshot of the tap's
// input as fp16, stacked w1 GEMV, scores + histogram, top-k select) at ~28 us per tap with the GPU to itself
// (13B, rank 128), longer than the ~25 us window, so the MLP waited. Here every block of the w1 GEMV computes
// the tap's input itself (x = X[r-1] + D[r] from L2, 20-40 KB, and the parameter-free LayerNorm when asked): one
// kernel and one round trip fewer, and x stays fp32 (the CPU runtime's precision).
#pragma once
#include "fused.cuh"

namespace dj {

constexpr int PH_THREADS = 256;  // 8 warps, a row per warp at a time
constexpr int PH_BATCH = 8;      // 16-byte weight vectors per lane in flight

// The tap's input into shared memory: xs = f(base + delta), all threads of the block (ends with a barrier).
__device__ __forceinline__ void ph_load_x(const XIn& in, int d, float* xs, float* red) {
  const int n4 = d >> 2;
  float4* x4 = reinterpret_cast<float4*>(xs);
  float s = 0.f, s2 = 0.f;
  for (int i = threadIdx.x; i < n4; i += blockDim.x) {
    float4 a = __ldcg(reinterpret_cast<const float4*>(in.base) + i);
    if (in.delta) {
      const float4 c = __ldcg(reinterpret_cast<const float4*>(in.delta) + i);
      a.x += c.x; a.y += c.y; a.z += c.z; a.w += c.w;
    }
    x4[i] = a;
    s += a.x + a.y + a.z + a.w;
    s2 += a.x * a.x + a.y * a.y + a.z * a.z + a.w * a.w;
  }
  if (in.norm) {
    s = block_sum(s, red);  // (synchronises: x is in shared memory after it)
    s2 = block_sum(s2, red);
    const float mean = s / d, rstd = rsqrtf(fmaxf(s2 / d - mean * mean, 0.f) + in.eps);
    for (int i = threadIdx.x; i < n4; i += blockDim.x) {
      float4 a = x4[i];
      a.x = (a.x - mean) * rstd; a.y = (a.y - mean) * rstd; a.z = (a.z - mean) * rstd; a.w = (a.w - mean) * rstd;
      x4[i] = a;
    }
  }
  __syncthreads();
}
// t[j] = w1[j] . xs for rows j = w, w + nw, ... (w: this warp's index among nw warps); B vectors a lane in flight.
template <int B>
__device__ __forceinline__ void ph_rows(const __half* __restrict__ w1, int rows, int d, const float* xs, float* t, int w, int nw) {
  const int lane = threadIdx.x & 31, nvec = d >> 3;
  for (int j = w; j < rows; j += nw) {
    const uint4* wr = reinterpret_cast<const uint4*>(w1 + (size_t)j * d);
    float acc = 0.f;
    for (int c0 = lane; c0 < nvec; c0 += 32 * B) {
      uint4 v[B];
#pragma unroll
      for (int u = 0; u < B; u++)
        if (c0 + 32 * u < nvec) v[u] = ld_stream(wr + c0 + 32 * u);
#pragma unroll
      for (int u = 0; u < B; u++)
        if (c0 + 32 * u < nvec) acc += dot8(v[u], xs + 8 * (c0 + 32 * u));
    }
    acc = warp_sum(acc);
    if (lane == 0) t[j] = acc;
  }
}

// t[j] = w1[j] . f(x), j < rows; x = in.base (+ in.delta), f = identity or (in.norm) LayerNorm without affine.
// Dynamic shared memory: d floats.
__global__ void __launch_bounds__(PH_THREADS) k_pred_hidden(XIn in, int d, const __half* __restrict__ w1, int rows,
                                                            float* __restrict__ t) {
  extern __shared__ __align__(16) float xs[];
  __shared__ float red[32];
  ph_load_x(in, d, xs, red);
  pdl_trigger();  // the scores kernel may launch; it waits for this grid before reading t
  ph_rows<PH_BATCH>(w1, rows, d, xs, t, blockIdx.x * (PH_THREADS / 32) + (threadIdx.x >> 5), gridDim.x * (PH_THREADS / 32));
}

// ---------------------------------------------------------------------------------------------------------------
// Persistent predictor (env DEJAVU_CUDA_PPERSIST=1; graphs with predictors on the streamed path). Why: as a chain of
// side-stream kernels joined by graph edges, the predictors cost the 13B sparse step ~0.36 ms: the chain needs SMs
// the main kernels leave free (16 reserved), and the join edges keep the main stream from PDL (with no predictor
// kernel at all, the same graph is 1.74-1.77 ms against 1.57-1.60 for fixed selections). Here one cooperative
// kernel of P blocks holds P SMs for the whole step (its shared memory keeps the main kernels' blocks off them) and
// walks the tap groups in order of their residual point: wait until the kernel producing the point has signalled
// every block (fused.cuh PSync), first layer (every block computes x itself), grid barrier, scores + histogram,
// grid barrier, then block m selects member m's top-k and raises its flag (step id + 1). Main kernels wait on the
// flags; the main stream keeps PDL and has no edges to this kernel until the LM head.
// Measured (13B, H200; docs/cuda.md v13): correct (cuda-check), but SLOWER than the side-stream chain: ~50 us per tap
// group on 16 SMs (1.99 ms for the 40 groups alone, against 0.86 ms for the chain on all SMs), so the sparse step is
// 2.9 ms against 1.93. With every phase skipped (waits, barriers and flags only) it is 1.607 ms against 1.577 for
// fixed selections: the structure costs ~0.03 ms where the chain's edges cost ~0.2 ms. Off by default.
constexpr int PP_THREADS = 512;
constexpr int PP_MAXM = 4;  // predictors per tap group (more: the engine uses the side-stream chain)
constexpr int PP_U = 12;    // loads a thread keeps in flight in the scores and the select (more spill at 128 registers)
constexpr int PP_B = 12;    // w1 vectors a lane keeps in flight

struct PMember {
  const __half* w2;  // [n][rank]
  const float* t;    // [rank], in the group's t
  float* scores;     // [n]
  int* sel;          // [k]
  TopkState* st;     // histogram; zero between uses (the select clears it)
  unsigned* flag;    // = step id + 1 once sel is in memory
  int n, k, rank, lpr;
};
struct PGroup {
  int r, norm, need;  // residual point x = X[r-1] + D[r]; LN without affine; arrivals that complete it (0: ready)
  const __half* w1;
  float* t;
  int rows, nm;
  PMember m[PP_MAXM];
};
struct PredStepArgs {
  const PGroup* g;
  int ng;
  const float *X, *D;
  int d;
  float eps;
  unsigned* ready;  // arrivals per point [npoints]; zeroed by this kernel at its end
  int npoints;
  unsigned* bar;    // grid barrier arrivals, blocks that left (both 0 between launches)
  unsigned* stepid;
  int nowait;       // predictors-only graph: nothing to wait for; advances the step id itself (no LM head)
  int skip;         // TIMING EXPERIMENT ONLY (wrong selections; env DEJAVU_CUDA_PP_SKIP): bit 0 w1, 1 scores + select,
                    // 2 select (flags still raised)
};

// Grid barrier number k of this launch: one arrival per block on a counter that starts at 0, wait for (k+1) * blocks.
// (One round trip less than a generation flip; the last block to leave the kernel puts the counter back to 0.)
__device__ __forceinline__ void pp_bar(unsigned* bar, unsigned& k) {
  __threadfence();  // every thread's writes (scores, t, histogram) before the arrival
  __syncthreads();
  if (threadIdx.x == 0) {
    atomicAdd(bar, 1u);
    spin_until(bar, (k + 1) * gridDim.x);
  }
  k++;
  __syncthreads();
}

// Scores of one predictor over rows j of warp w among nw (lpr lanes a row), histogram of the keys when n > TOPK_THREADS.
// (the histogram per block in shared memory first, then its non-zero bins added: see k_pred_scores)
__device__ __forceinline__ void pp_scores(const PMember& m, float* ts, unsigned* hs, int w, int nw) {
  const bool hist = m.n > TOPK_THREADS;
  for (int i = threadIdx.x; i < m.rank; i += blockDim.x) ts[i] = __ldcg(m.t + i);
  if (hist)
    for (int i = threadIdx.x; i < TOPK_BINS; i += blockDim.x) hs[i] = 0u;
  __syncthreads();
  const int lane = threadIdx.x & 31, lpr = m.lpr, rpw = 32 / lpr, sub = lane / lpr, sl = lane % lpr, nvec = m.rank >> 3;
  const int stride = nw * rpw;
  // PP_U rows a lane with their first vector loaded before any is used: 16 blocks hold 20480 rows at 13B, so a
  // load per iteration would be ~40 round trips in a row.
  for (int base = w * rpw; base < m.n; base += PP_U * stride) {
    uint4 v[PP_U];
#pragma unroll
    for (int u = 0; u < PP_U; u++) {
      const int j = base + u * stride + sub;
      if (j < m.n && sl < nvec) v[u] = ld_stream(reinterpret_cast<const uint4*>(m.w2 + (size_t)j * m.rank) + sl);
    }
#pragma unroll
    for (int u = 0; u < PP_U; u++) {
      const int j = base + u * stride + sub;
      float acc = 0.f;
      if (j < m.n && sl < nvec) {
        const uint4* wr = reinterpret_cast<const uint4*>(m.w2 + (size_t)j * m.rank);
        acc = dot8(v[u], ts + 8 * sl);
        for (int c = sl + lpr; c < nvec; c += lpr) acc += dot8(ld_stream(wr + c), ts + 8 * c);
      }
      for (int o = lpr >> 1; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
      if (j < m.n && sl == 0) {
        m.scores[j] = acc;
        if (hist) atomicAdd(&hs[f2key(acc) >> 20], 1u);
      }
    }
  }
  __syncthreads();
  if (hist)
    for (int i = threadIdx.x; i < TOPK_BINS; i += blockDim.x)
      if (hs[i]) atomicAdd(&m.st->hist[i], hs[i]);
}

// One block: exactly k indices of the largest scores into sel (order unspecified; ties at the threshold taken in
// arrival order), the histogram cleared; then the flag.
struct PPSelectSm {
  int hist[TOPK_HG][256];
  uint32_t ck[TOPK_CAND_SM];
  int ci[TOPK_CAND_SM];
  uint32_t keys[TOPK_THREADS];
  int tmp[33];
  int digit, rem, bin;
};
__device__ void pp_select(const PMember& m, PPSelectSm& sm, unsigned sid) {
  const int tid = threadIdx.x, n = m.n, k = m.k;
  if (n <= TOPK_THREADS) {  // rank by counting: rank(i) = #{j : key_j > key_i or (key_j == key_i and j < i)}
    for (int i = tid; i < n; i += blockDim.x) sm.keys[i] = f2key(__ldcg(m.scores + i));
    __syncthreads();
    int keep = 0;
    if (tid < n) {
      const uint32_t me = sm.keys[tid];
      int rank = 0;
      for (int j = 0; j < n; j++) { const uint32_t o = sm.keys[j]; rank += (o > me) | ((o == me) & (j < tid)); }
      keep = rank < k;
    }
    int tot;
    const int pos = block_excl_scan(keep, sm.tmp, &tot);
    if (keep) m.sel[pos] = tid;
  } else {
    // Threshold bin: thread t owns bins 4095-8t .. 4088-8t (descending); the histogram is cleared after.
    int c[8], tot8 = 0;
#pragma unroll
    for (int i = 0; i < 8; i++) { c[i] = (int)__ldcg(&m.st->hist[TOPK_BINS - 1 - 8 * tid - i]); tot8 += c[i]; }
    int total;
    int above = block_excl_scan(tot8, sm.tmp, &total);
    if (above < k && above + tot8 >= k) {
#pragma unroll
      for (int i = 0; i < 8; i++) {
        if (above < k && above + c[i] >= k) { sm.bin = TOPK_BINS - 1 - 8 * tid - i; sm.rem = k - above; }
        above += c[i];
      }
    }
#pragma unroll
    for (int i = 0; i < 8; i++) m.st->hist[TOPK_BINS - 1 - 8 * tid - i] = 0u;
    __syncthreads();
    const uint32_t bin = (uint32_t)sm.bin;
    // Thread t takes scores t, t + T, t + 2T, ... (T threads; coalesced): count keys above the bin and keys in it, one
    // block scan, then write both lists (an append counter in shared memory would serialise every append).
    const int T = blockDim.x, per = (n + T - 1) / T;
    int na = 0, nb = 0;
    for (int u0 = 0; u0 < per; u0 += PP_U) {
      float v[PP_U];
#pragma unroll
      for (int u = 0; u < PP_U; u++) {
        const int i = tid + (u0 + u) * T;
        v[u] = u0 + u < per && i < n ? __ldcg(m.scores + i) : 0.f;
      }
#pragma unroll
      for (int u = 0; u < PP_U; u++)
        if (u0 + u < per && tid + (u0 + u) * T < n) {
          const uint32_t top = f2key(v[u]) >> 20;
          na += top > bin;
          nb += top == bin;
        }
    }
    int tot;
    const int ex = block_excl_scan(na | (nb << 16), sm.tmp, &tot);
    int ia = ex & 0xffff, ib = ex >> 16;
    for (int u0 = 0; u0 < per; u0 += PP_U) {  // (loads first: the stores below could alias them)
      float v[PP_U];
#pragma unroll
      for (int u = 0; u < PP_U; u++) {
        const int i = tid + (u0 + u) * T;
        v[u] = u0 + u < per && i < n ? __ldcg(m.scores + i) : 0.f;
      }
#pragma unroll
      for (int u = 0; u < PP_U; u++) {
        const int i = tid + (u0 + u) * T;
        if (u0 + u >= per || i >= n) continue;
        const uint32_t key = f2key(v[u]);
        if ((key >> 20) > bin) m.sel[ia++] = i;
        else if ((key >> 20) == bin) {
          const int cs = ib++;
          if (cs < TOPK_CAND_SM) { sm.ck[cs] = key; sm.ci[cs] = i; }
          else if (cs < TOPK_CAND) { m.st->cand_key[cs] = key; m.st->cand_idx[cs] = i; }
        }
      }
    }
    __syncthreads();
    const int nc = tot >> 16, base = tot & 0xffff;
    uint32_t prefix = bin << 20, mask = 0xfff00000u;
    const int shifts[3] = {12, 4, 0};
    if (nc <= TOPK_CAND) {
      auto key = [&](int j) { return j < TOPK_CAND_SM ? sm.ck[j] : __ldcg(&m.st->cand_key[j]); };
      radix_passes(key, nc, shifts, 3, prefix, mask, sm.hist, &sm.digit, &sm.rem);
      take_candidates(key, [&](int j) { return j < TOPK_CAND_SM ? sm.ci[j] : __ldcg(&m.st->cand_idx[j]); },
                      [](int) { return true; }, nc, prefix, sm.rem, m.sel, base, sm.tmp);
    } else {  // degenerate scores (thousands in one bin): the passes straight over the bin's keys, from L2
      auto get = [&](int j) { const uint32_t kk = f2key(__ldcg(m.scores + j)); return (kk >> 20) == bin ? kk : 0u; };
      radix_passes(get, n, shifts, 3, prefix, mask, sm.hist, &sm.digit, &sm.rem);
      take_candidates(get, [](int j) { return j; }, [&](int j) { return (f2key(__ldcg(m.scores + j)) >> 20) == bin; }, n,
                      prefix, sm.rem, m.sel, base, sm.tmp);
    }
  }
  __threadfence();  // the selection before the flag
  __syncthreads();
  if (tid == 0) atomicExch(m.flag, sid + 1u);
}

__global__ void __launch_bounds__(PP_THREADS, 1) k_pred_step(PredStepArgs a) {
  extern __shared__ __align__(16) float xs[];  // d floats
  __shared__ float ts[1024];
  __shared__ float red[32];
  __shared__ PPSelectSm sel_sm;
  __shared__ unsigned hs[TOPK_BINS];
  const int warp = threadIdx.x >> 5, nwb = PP_THREADS / 32;
  const int gw = blockIdx.x * nwb + warp, nw = gridDim.x * nwb;
  unsigned nbar = 0;
  const unsigned sid = ld_acquire_u32(a.stepid);
  for (int gi = 0; gi < a.ng; gi++) {
    const PGroup& G = a.g[gi];
    if (!a.nowait && G.need > 0) {
      if (threadIdx.x == 0) spin_until(a.ready + G.r, (unsigned)G.need);
      __syncthreads();
    }
    XIn in{};
    in.base = G.r == 0 ? a.X : a.X + (size_t)(G.r - 1) * a.d;
    in.delta = G.r == 0 ? nullptr : a.D + (size_t)G.r * a.d;
    in.norm = G.norm; in.eps = a.eps; in.tr = -1;
    ph_load_x(in, a.d, xs, red);
    if (!(a.skip & 1)) ph_rows<PP_B>(G.w1, G.rows, a.d, xs, G.t, gw, nw);
    pp_bar(a.bar, nbar);
    if (!(a.skip & 2))
      for (int mi = 0; mi < G.nm; mi++) pp_scores(G.m[mi], ts, hs, gw, nw);
    pp_bar(a.bar, nbar);
    if ((int)blockIdx.x < G.nm) {
      if (!(a.skip & 6)) pp_select(G.m[blockIdx.x], sel_sm, sid);
      else if (threadIdx.x == 0) atomicExch(G.m[blockIdx.x].flag, sid + 1u);
    }
  }
  // The last block to leave (all waits over, no more arrivals this step) resets the counters for the next launch.
  __shared__ bool last;
  __syncthreads();
  if (threadIdx.x == 0) last = atomicAdd(a.bar + 1, 1u) == gridDim.x - 1;
  __syncthreads();
  if (last) {
    for (int i = threadIdx.x; i < a.npoints; i += blockDim.x) a.ready[i] = 0u;
    if (threadIdx.x == 0) {
      a.bar[0] = 0u;
      a.bar[1] = 0u;
      __threadfence();
      if (a.nowait) atomicAdd(a.stepid, 1u);
    }
  }
}

}  // namespace dj
