// The whole predictor chain of one tap group as ONE kernel, for the green-context partition (engine.cu
// Engine::green): the tap's input, the stacked w1 rows, every member's w2 scores and an exact top-k, separated by
// grid barriers instead of kernel boundaries. Why: on a partition of 16 SMs the three-kernel chain (k_pred_hidden,
// k_pred_scores, k_topk_select) took ~46 us per tap group (13B, H200), far longer than the ~22 us between a tap and
// the MLP that needs its selection; its time went to launches, waves and dependent L2 round trips (a global
// histogram with one atomic per score, then a candidate list ranked by one block), not to its 7.9 MB of bytes.
// Here every block keeps its share of the scores in shared memory (as 16-bit keys), and the threshold is found with
// ONE histogram round: every score's key (its fp16 rounding, order-preserving) is counted into a global 65536-bin
// histogram and a block-local 256-bin one (merged into a global coarse histogram); after one grid barrier every block
// reads the 256 coarse bins, then the 256 fine bins under the coarse bin holding the k-th largest, and appends its
// keys above the threshold (and ties while the count allows). The scores the checks read are the fp16-rounded values,
// so every selection is an exact top-k of its own scores; against fp32 scores it can differ only within fp16
// rounding of the threshold (near-ties, as the issue allows).
//
// Grid: at most the blocks that are resident at once (the partition's SMs, one block each), since blocks wait for
// each other. Members with n <= PC_SMALL (attention heads) are ranked whole by one block, with no barrier.
//
// History: the eighth session's version found the threshold of fp32 keys in three histogram rounds (bits 31..20,
// 19..8, 7..0) with a grid barrier after each: 28.7 us per 13B tap group on 16 idle SMs, ~48 us beside the main
// stream's HBM traffic, of which the rounds and their barriers were ~24 us (bench/results/
// cuda-13b-green-contexts-h200-2026-11-21-s8.txt; code in git history before the eleventh session). Off unless
// DEJAVU_CUDA_GREEN is set.
//
// State across launches (ChainState): the histograms and counters are double-buffered by launch parity. Launch N
// uses set N % 2 and clears set (N + 1) % 2, which launch N - 1 used and nobody reads any more; N comes from the
// monotone barrier counter (each launch of a group passes the same number of barriers; reset when graphs are built).
#pragma once
#include "kernels.cuh"
#include "fused.cuh"

namespace dj {

constexpr int PC_THREADS = 512;
constexpr int PC_MAXM = 4;      // members of a group
constexpr int PC_SMALL = 1024;  // members with at most this many outputs: one block ranks them
constexpr int PC_BATCH = 20;    // w1: 16-byte vectors a lane has in flight (13B: a whole 10 KB row a warp)
constexpr int PC_U = 8;         // scores: rows a lane has in flight (2 vectors each)
constexpr int PC_MAXR = 128;    // ranks the scores layout covers (8 lanes x 2 vectors x 8 halves)

constexpr int PC_FINE = 65536;  // 16-bit keys

struct ChainState {
  unsigned hf[2][PC_MAXM][PC_FINE];                  // fine histogram: key (first: cleared with 16-byte stores)
  unsigned hc[2][PC_MAXM][256];                      // coarse histogram: key >> 8
  unsigned n_sel[2][PC_MAXM], taken_eq[2][PC_MAXM];  // [launch parity][member]
  unsigned bar;  // grid barrier counter (monotone; reset when the graphs are built)
};

// Order-preserving 16-bit key of a score's fp16 rounding (saturating to +-inf), and that rounding as a float.
__device__ __forceinline__ uint32_t h16key(float f) {
  const unsigned h = __half_as_ushort(__float2half_rn(f));
  return (h & 0x8000u) ? (~h & 0xffffu) : (h | 0x8000u);
}
__device__ __forceinline__ float h16round(float f) { return __half2float(__float2half_rn(f)); }

struct ChainMember {
  const __half* w2;  // [n][r]
  int n, r, k, toff;  // toff: this member's rows in the stacked t
  float* scores;      // [n] (kept for the checks)
  int* sel;           // [k]
};

struct ChainArgs {
  XIn in;
  int d, rows;
  const __half* w1;  // [rows][d], stacked
  float* t;          // [rows]
  int nm;
  ChainMember m[PC_MAXM];
  ChainState* s;
  unsigned long long* stamps;  // (bench/cuda/chain.cu only: %globaltimer per block at phase ends, [block][16]; null)
  int opts;  // bit 1 (TIMING ONLY, wrong selections; bench/cuda/chain.cu): no histogram counts; the engine passes 0
};

// Dynamic shared memory of k_pred_chain: x (d floats), t (rows floats), and each big member's share of the scores.
__host__ __device__ inline int pc_chunk(int n, int grid) { return (n + grid - 1) / grid; }
inline size_t pc_smem(const ChainArgs& a, int grid) {
  size_t f = (size_t)a.d + a.rows;
  for (int i = 0; i < a.nm; i++)
    if (a.m[i].n > PC_SMALL) f += pc_chunk(a.m[i].n, grid);
  return f * 4;
}

// Grid barrier (all blocks resident). A 2 s guard traps instead of hanging when they are not.
__device__ __forceinline__ void pc_barrier(unsigned* bar) {
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();
    const unsigned arrived = atomicAdd(bar, 1u), target = (arrived / gridDim.x + 1) * gridDim.x;
    unsigned long long t0, t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
    for (;;) {
      unsigned v;
      asm volatile("ld.acquire.gpu.u32 %0, [%1];" : "=r"(v) : "l"(bar) : "memory");
      if ((int)(v - target) >= 0) break;
      asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
      if (t - t0 > 2000000000ull) __trap();
    }
  }
  __syncthreads();
}

// Which bin of a 4096- (or 256-) bin histogram, read from global memory, holds the k-th largest: every thread
// owns 8 consecutive bins from the top; returns the bin, and sets *rem to how many to take from it.
__device__ int pc_find_bin(const unsigned* h, int nbins, int k, int* tmp, int* s_bin, int* s_rem) {
  const int per = nbins / PC_THREADS > 0 ? nbins / PC_THREADS : 1, tid = threadIdx.x;
  int c[8], tot = 0;
#pragma unroll
  for (int i = 0; i < 8; i++) {
    const int b = nbins - 1 - per * tid - i;
    c[i] = i < per && b >= 0 && tid * per < nbins ? (int)__ldcg(h + b) : 0;
    tot += c[i];
  }
  int total;
  int above = block_excl_scan(tot, tmp, &total);
  if (above < k && above + tot >= k) {
#pragma unroll
    for (int i = 0; i < 8; i++) {
      if (i < per && above < k && above + c[i] >= k) { *s_bin = nbins - 1 - per * tid - i; *s_rem = k - above; }
      above += c[i];
    }
  }
  __syncthreads();
  const int b = *s_bin;
  __syncthreads();
  return b;
}

// Merge a block-local histogram into the global one (only bins with counts: scores crowd into few bins).
__device__ __forceinline__ void pc_merge(unsigned* hs, unsigned* hg, int nbins) {
  __syncthreads();
  for (int i = threadIdx.x; i < nbins; i += PC_THREADS)
    if (hs[i]) atomicAdd(hg + i, hs[i]);
}

__device__ __forceinline__ void pc_stamp(const ChainArgs& a, int i) {
  if (a.stamps && threadIdx.x == 0) {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    a.stamps[blockIdx.x * 16 + i] = t;
  }
}

__global__ void __launch_bounds__(PC_THREADS, 1) k_pred_chain(ChainArgs a) {
  extern __shared__ __align__(16) float sm[];
  __shared__ unsigned hs[256];
  __shared__ uint32_t keys[PC_SMALL];
  __shared__ int tmp[33], s_bin, s_rem, s_base;
  __shared__ float red[32];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, NW = PC_THREADS / 32, G = gridDim.x;
  const int d = a.d, n4 = d >> 2, nvec = d >> 3;
  float* xs = sm;
  float* ts = sm + d;
  ChainState* S = a.s;
  bool any_big = false;
  for (int mi = 0; mi < a.nm; mi++) any_big |= a.m[mi].n > PC_SMALL;
  // Launch parity (see ChainState): no block of this launch can pass its first barrier before this one arrives, so
  // the counter (2 barriers a launch) is in [2*G*N, 2*G*N + G) here.
  unsigned par = 0;
  if (any_big) {
    unsigned v;
    asm volatile("ld.relaxed.gpu.u32 %0, [%1];" : "=r"(v) : "l"(&S->bar) : "memory");
    par = (v / (2u * G)) & 1u;
    const unsigned q = par ^ 1u;  // the other set: clear it for the next launch
    const int lo = blockIdx.x * PC_FINE / G, hi = (blockIdx.x + 1) * PC_FINE / G;
    for (int mi = 0; mi < a.nm; mi++) {
      if (a.m[mi].n <= PC_SMALL) continue;
      uint4* f = reinterpret_cast<uint4*>(S->hf[q][mi]);
      for (int i = lo / 4 + tid; i < hi / 4; i += PC_THREADS) f[i] = make_uint4(0u, 0u, 0u, 0u);
      if (blockIdx.x == 0) {
        for (int i = tid; i < 256; i += PC_THREADS) S->hc[q][mi][i] = 0u;
        if (tid == 0) { S->n_sel[q][mi] = 0u; S->taken_eq[q][mi] = 0u; }
      }
    }
  }

  // Phase 0: the tap's input x = X[r-1] + D[r] (and the parameter-free LayerNorm), then this block's w1 rows.
  pc_stamp(a, 0);
  float4* x4 = reinterpret_cast<float4*>(xs);
  float s = 0.f, s2 = 0.f;
  for (int i = tid; i < n4; i += PC_THREADS) {
    const float4 v = x_at(a.in, i);
    x4[i] = v;
    s += v.x + v.y + v.z + v.w;
    s2 += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
  }
  if (a.in.norm) {
    s = block_sum(s, red);
    s2 = block_sum(s2, red);
    const float mean = s / d, rstd = rsqrtf(fmaxf(s2 / d - mean * mean, 0.f) + a.in.eps);
    for (int i = tid; i < n4; i += PC_THREADS) {
      float4 v = x4[i];
      v.x = (v.x - mean) * rstd; v.y = (v.y - mean) * rstd; v.z = (v.z - mean) * rstd; v.w = (v.w - mean) * rstd;
      x4[i] = v;
    }
  }
  __syncthreads();
  pc_stamp(a, 1);
  // (The loop of predict.cuh's k_pred_hidden, repeated: a shared helper changed that default-path kernel's
  // generated code, which was not re-measured on the GPU.)
  for (int j = blockIdx.x * NW + warp; j < a.rows; j += G * NW) {
    const uint4* wr = reinterpret_cast<const uint4*>(a.w1 + (size_t)j * d);
    float acc = 0.f;
    for (int c0 = lane; c0 < nvec; c0 += 32 * PC_BATCH) {
      uint4 w[PC_BATCH];
#pragma unroll
      for (int u = 0; u < PC_BATCH; u++)
        if (c0 + 32 * u < nvec) w[u] = ld_stream(wr + c0 + 32 * u);
#pragma unroll
      for (int u = 0; u < PC_BATCH; u++)
        if (c0 + 32 * u < nvec) acc += dot8(w[u], xs + 8 * (c0 + 32 * u));
    }
    acc = warp_sum(acc);
    if (lane == 0) a.t[j] = acc;
  }
  pc_stamp(a, 2);
  pc_barrier(&S->bar);
  pc_stamp(a, 3);

  // Phase 1: t into shared memory; scores: small members whole in one block (ranked right here), big ones a share
  // per block, counted into the histograms of this launch's parity.
  for (int i = tid; i < a.rows; i += PC_THREADS) ts[i] = __ldcg(a.t + i);
  __syncthreads();
  pc_stamp(a, 9);
  uint32_t* sc = reinterpret_cast<uint32_t*>(ts + a.rows);  // big members' shares (16-bit keys), one after the other
  for (int mi = 0; mi < a.nm; mi++) {
    const ChainMember& m = a.m[mi];
    const bool small = m.n <= PC_SMALL;
    if (small && blockIdx.x != mi % G) continue;
    const int chunk = small ? m.n : pc_chunk(m.n, G), lo = small ? 0 : blockIdx.x * chunk;
    const int hi = min(m.n, lo + chunk);
    // 8 lanes a row, each 2 of its 16-byte vectors (r <= 128, chain_fits), t in registers, 8 rows a lane in flight.
    // Why: 16 lanes a row (the three-kernel chain's layout) was issue-bound, ~16 ns a row per SM (a shuffle
    // reduction, branches and stores per pair of rows); a row per lane was bound by L1 wavefronts (32 lines per
    // load instruction): 19 and 16 us of the chain on 16 SMs (bench/cuda/chain.cu). Here a load instruction covers
    // 4 whole 128-byte lines and a reduction 4 rows.
    const float* tm = ts + m.toff;
    const int sub = lane >> 3, s8 = lane & 7, mv = m.r >> 3, step = NW * 4;
    float tr[16];
#pragma unroll
    for (int q = 0; q < 8; q++) {
      tr[q] = s8 < mv ? tm[8 * s8 + q] : 0.f;
      tr[8 + q] = s8 + 8 < mv ? tm[8 * (s8 + 8) + q] : 0.f;
    }
    if (!small)
      for (int i = tid; i < 256; i += PC_THREADS) hs[i] = 0u;
    __syncthreads();
    for (int base = lo + warp * 4; base < hi; base += PC_U * step) {
      uint4 w[PC_U][2];
#pragma unroll
      for (int u = 0; u < PC_U; u++) {
        const int j = base + u * step + sub;
        const uint4* wr = reinterpret_cast<const uint4*>(m.w2 + (size_t)j * m.r);
        w[u][0] = j < hi && s8 < mv ? ld_stream(wr + s8) : make_uint4(0u, 0u, 0u, 0u);
        w[u][1] = j < hi && s8 + 8 < mv ? ld_stream(wr + s8 + 8) : make_uint4(0u, 0u, 0u, 0u);
      }
#pragma unroll
      for (int u = 0; u < PC_U; u++) {
        const int j = base + u * step + sub;
        float acc = dot8(w[u][0], tr) + dot8(w[u][1], tr + 8);
        acc += __shfl_xor_sync(0xffffffffu, acc, 4);
        acc += __shfl_xor_sync(0xffffffffu, acc, 2);
        acc += __shfl_xor_sync(0xffffffffu, acc, 1);
        if (j < hi && s8 == 0) {
          if (small) {
            m.scores[j] = acc;
            keys[j] = f2key(acc);
          } else {
            const uint32_t kk = h16key(acc);
            m.scores[j] = h16round(acc);
            sc[j - lo] = kk;
            if (!(a.opts & 2)) {
              atomicAdd(&S->hf[par][mi][kk], 1u);  // (result unused: a fire-and-forget reduction)
              atomicAdd(&hs[kk >> 8], 1u);
            }
          }
        }
      }
    }
    if (small) {
      // Rank by counting: rank(i) = #{j : key_j > key_i or (key_j == key_i and j < i)}; keep rank < k.
      __syncthreads();
      for (int i0 = 0; i0 < m.n; i0 += PC_THREADS) {
        const int i = i0 + tid;
        int keep = 0;
        if (i < m.n) {
          const uint32_t me = keys[i];
          int rank = 0;
          for (int j = 0; j < m.n; j++) { const uint32_t o = keys[j]; rank += (o > me) | ((o == me) & (j < i)); }
          keep = rank < m.k;
        }
        int tot;
        const int pos = block_excl_scan(keep, tmp, &tot);
        if (keep) m.sel[pos + (i0 == 0 ? 0 : s_base)] = i;
        __syncthreads();
        if (tid == 0) s_base = (i0 == 0 ? 0 : s_base) + tot;
        __syncthreads();
      }
    } else {
      pc_stamp(a, 10);
      pc_merge(hs, S->hc[par][mi], 256);
      pc_stamp(a, 11);
      sc += chunk;
    }
    __syncthreads();
  }
  pc_stamp(a, 4);
  if (!any_big) return;
  pc_barrier(&S->bar);
  pc_stamp(a, 5);

  // Phase 2, per big member: the coarse bin holding the k-th largest key, then the fine bin (the threshold key)
  // under it; then every block appends its keys above the threshold and takes keys equal to it while the count
  // allows (arrival order).
  sc = reinterpret_cast<uint32_t*>(ts + a.rows);
  for (int mi = 0; mi < a.nm; mi++) {
    const ChainMember& m = a.m[mi];
    if (m.n <= PC_SMALL) continue;
    const int chunk = pc_chunk(m.n, G), lo = blockIdx.x * chunk, cnt = max(0, min(m.n, lo + chunk) - lo);
    const int bc = pc_find_bin(S->hc[par][mi], 256, m.k, tmp, &s_bin, &s_rem);
    const int bf = pc_find_bin(S->hf[par][mi] + bc * 256, 256, s_rem, tmp, &s_bin, &s_rem);
    const uint32_t thr = (uint32_t)(bc * 256 + bf);
    const int take_eq = s_rem;
    pc_stamp(a, 6);
    for (int i0 = 0; i0 < cnt; i0 += PC_THREADS) {
      const int i = i0 + tid;
      bool take = false;
      if (i < cnt) {
        const uint32_t kk = sc[i];
        take = kk > thr || (kk == thr && (int)atomicAdd(&S->taken_eq[par][mi], 1u) < take_eq);
      }
      warp_append(take, lo + i, &S->n_sel[par][mi], m.sel);
    }
    sc += chunk;
  }
  pc_stamp(a, 8);
}

}  // namespace dj
