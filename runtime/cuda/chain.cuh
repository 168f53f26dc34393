// The whole predictor chain of one tap group as ONE kernel, for the green-context partition (engine.cu
// Engine::green): the tap's input, the stacked w1 rows, every member's w2 scores and an exact top-k, separated by
// grid barriers instead of kernel boundaries. Why: on a partition of 16 SMs the three-kernel chain (k_pred_hidden,
// k_pred_scores, k_topk_select) took ~46 us per tap group (13B, H200), far longer than the ~22 us between a tap and
// the MLP that needs its selection; its time went to launches, waves and dependent L2 round trips (a global
// histogram with one atomic per score, then a candidate list ranked by one block), not to its 7.9 MB of bytes.
// Here every block keeps its share of the scores in shared memory, and the threshold is found by three histogram
// rounds (key bits 31..20, 19..8, 7..0), each one block-local histogram merged into a global one, then read back
// whole by every block: no block waits on another block's serial work.
//
// Grid: at most the blocks that are resident at once (the partition's SMs, one block each), since blocks wait for
// each other. Members with n <= PC_SMALL (attention heads) are ranked whole by one block, with no barrier.
//
// Status (eighth session, bench/results/cuda-13b-green-contexts-h200-2026-11-21-s8.txt): correct (cuda-check: every
// selection an exact top-k of its own scores) but NOT fast enough to be the default: 28.7 us per 13B tap group on
// 16 idle SMs, ~48 us beside the main stream's HBM traffic, against a ~22 us window; the three histogram rounds and
// their barriers are about half of it. Off unless DEJAVU_CUDA_GREEN is set.
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

struct ChainState {
  unsigned bar;                       // grid barrier counter (monotone; reset when the graphs are built)
  unsigned n_sel[PC_MAXM], taken_eq[PC_MAXM];
  unsigned h1[PC_MAXM][4096], h2[PC_MAXM][4096], h3[PC_MAXM][256];
};

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

// This block's slice of a 4096-bin global histogram, zeroed for the next launch.
__device__ __forceinline__ void pc_clear(unsigned* h) {
  const int lo = blockIdx.x * 4096 / gridDim.x, hi = (blockIdx.x + 1) * 4096 / gridDim.x;
  for (int i = lo + threadIdx.x; i < hi; i += PC_THREADS) h[i] = 0u;
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
  __shared__ unsigned hs[4096];
  __shared__ uint32_t keys[PC_SMALL];
  __shared__ int tmp[33], s_bin, s_rem, s_base;
  __shared__ float red[32];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, NW = PC_THREADS / 32, G = gridDim.x;
  const int d = a.d, n4 = d >> 2, nvec = d >> 3;
  float* xs = sm;
  float* ts = sm + d;
  ChainState* S = a.s;

  // Phase 0: the tap's input x = X[r-1] + D[r] (and the parameter-free LayerNorm), then this block's w1 rows.
  pc_stamp(a, 0);
  float4* x4 = reinterpret_cast<float4*>(xs);
  float s = 0.f, s2 = 0.f;
  for (int i = tid; i < n4; i += PC_THREADS) {
    float4 v = __ldcg(reinterpret_cast<const float4*>(a.in.base) + i);
    if (a.in.delta) {
      const float4 c = __ldcg(reinterpret_cast<const float4*>(a.in.delta) + i);
      v.x += c.x; v.y += c.y; v.z += c.z; v.w += c.w;
    }
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

  // Phase 1: t into shared memory; block 0 clears what phases 3-4 accumulate into (their last readers were the
  // previous launch); scores: small members whole in one block (ranked right here), big ones a share per block.
  if (blockIdx.x == 0 && tid < PC_MAXM) { S->n_sel[tid] = 0u; S->taken_eq[tid] = 0u; }
  if (blockIdx.x == 0)
    for (int i = tid; i < PC_MAXM * 256; i += PC_THREADS) (&S->h3[0][0])[i] = 0u;
  for (int i = tid; i < a.rows; i += PC_THREADS) ts[i] = __ldcg(a.t + i);
  __syncthreads();
  pc_stamp(a, 9);
  float* sc = ts + a.rows;  // big members' shares, one after the other
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
      for (int i = tid; i < 4096; i += PC_THREADS) hs[i] = 0u;
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
          m.scores[j] = acc;
          if (small) keys[j] = f2key(acc);
          else {
            sc[j - lo] = acc;
            if (!(a.opts & 2)) atomicAdd(&hs[f2key(acc) >> 20], 1u);
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
      pc_merge(hs, S->h1[mi], 4096);
      pc_stamp(a, 11);
      sc += chunk;
    }
    __syncthreads();
  }
  bool any_big = false;
  for (int mi = 0; mi < a.nm; mi++) any_big |= a.m[mi].n > PC_SMALL;
  pc_stamp(a, 4);
  if (!any_big) return;
  pc_barrier(&S->bar);
  pc_stamp(a, 5);

  // Phases 2-4, per big member: the bin of the k-th largest key at bits 31..20, then 19..8, then 7..0, each from a
  // global histogram every block reads whole; then every block appends its keys above the threshold key and takes
  // keys equal to it while the count allows (arrival order, as the three-kernel chain does).
  uint32_t pre[PC_MAXM];
  int rem[PC_MAXM];
  for (int phase = 2; phase <= 4; phase++) {
    sc = ts + a.rows;
    for (int mi = 0; mi < a.nm; mi++) {
      const ChainMember& m = a.m[mi];
      if (m.n <= PC_SMALL) continue;
      const int chunk = pc_chunk(m.n, G), lo = blockIdx.x * chunk, cnt = max(0, min(m.n, lo + chunk) - lo);
      if (phase == 2) {
        pre[mi] = (uint32_t)pc_find_bin(S->h1[mi], 4096, m.k, tmp, &s_bin, &s_rem) << 20;
        rem[mi] = s_rem;
        for (int i = tid; i < 4096; i += PC_THREADS) hs[i] = 0u;
        __syncthreads();
        for (int i = tid; i < cnt; i += PC_THREADS) {
          const uint32_t kk = f2key(sc[i]);
          if ((kk & 0xfff00000u) == pre[mi]) atomicAdd(&hs[(kk >> 8) & 4095], 1u);
        }
        pc_merge(hs, S->h2[mi], 4096);
      } else if (phase == 3) {
        pre[mi] |= (uint32_t)pc_find_bin(S->h2[mi], 4096, rem[mi], tmp, &s_bin, &s_rem) << 8;
        rem[mi] = s_rem;
        pc_clear(S->h1[mi]);  // (read in phase 2)
        for (int i = tid; i < 256; i += PC_THREADS) hs[i] = 0u;
        __syncthreads();
        for (int i = tid; i < cnt; i += PC_THREADS) {
          const uint32_t kk = f2key(sc[i]);
          if ((kk & 0xffffff00u) == pre[mi]) atomicAdd(&hs[kk & 255], 1u);
        }
        pc_merge(hs, S->h3[mi], 256);
      } else {
        pre[mi] |= (uint32_t)pc_find_bin(S->h3[mi], 256, rem[mi], tmp, &s_bin, &s_rem);
        const int take_eq = s_rem;
        pc_clear(S->h2[mi]);  // (read in phase 3)
        for (int i0 = 0; i0 < cnt; i0 += PC_THREADS) {
          const int i = i0 + tid;
          bool take = false;
          if (i < cnt) {
            const uint32_t kk = f2key(sc[i]);
            take = kk > pre[mi] || (kk == pre[mi] && (int)atomicAdd(&S->taken_eq[mi], 1u) < take_eq);
          }
          warp_append(take, lo + i, &S->n_sel[mi], m.sel);
        }
      }
      sc += chunk;
    }
    if (phase < 4) pc_barrier(&S->bar);
    pc_stamp(a, 4 + phase);  // 6, 7: after the barriers of phases 2, 3; 8: the end
  }
}

}  // namespace dj
