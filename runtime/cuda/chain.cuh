// The whole predictor chain of one tap group as ONE kernel, for the green-context partition (engine.cu
// Engine::green): the tap's input, the stacked w1 rows, a grid barrier, every member's w2 scores, then an exact
// top-k done by the last block to finish its scores. Why: on a partition of 16 SMs the three-kernel chain
// (k_pred_hidden, k_pred_scores, k_topk_select) took ~46 us per tap group (13B, H200), far longer than the ~22 us
// between a tap and the MLP that needs its selection; its time went to launches, waves and dependent L2 round
// trips, not to its 7.9 MB of bytes. Under the main stream's HBM traffic every grid-wide round trip costs 2-7 us,
// so there is one barrier (t is needed whole by every block) and the selection needs none: the other blocks
// leave after merging their histograms (ninth session; the eighth's three grid-wide histogram rounds took ~24 us).
// With `prefetch` (engine: DEJAVU_CUDA_GREEN_EARLY) the kernel is launched ahead of its tap and first asks L2
// for its weights, so the chain after the tap reads L2, not HBM.
//
// Grid: at most the blocks that are resident at once (the partition's SMs, one block each), since blocks wait for
// each other. Members with n <= PC_SMALL (attention heads) are ranked whole by one block, with no barrier.
//
// Status: off unless DEJAVU_CUDA_GREEN is set; measurements in docs/cuda.md (v18, v19).
#pragma once
#include "kernels.cuh"
#include "fused.cuh"
#include "tma.cuh"

namespace dj {

constexpr int PC_THREADS = 512;
constexpr int PC_MAXM = 4;      // members of a group
constexpr int PC_SMALL = 1024;  // members with at most this many outputs: one block ranks them
constexpr int PC_BATCH = 20;    // w1: 16-byte vectors a lane has in flight (13B: a whole 10 KB row a warp)
constexpr int PC_U = 8;         // scores: rows a lane has in flight (2 vectors each)
constexpr int PC_MAXR = 128;    // ranks the scores layout covers (8 lanes x 2 vectors x 8 halves)
constexpr int PC_SMEM_MAX = 200 * 1024;  // dynamic shared memory (beside ~21 KB static, under the 227 KB a block)

struct ChainState {
  unsigned bar, done;         // grid barrier, blocks done with their scores (both monotone, +G a launch; zeroed once)
  unsigned h1[PC_MAXM][4096];  // top-12-bit key histograms (zeroed by their reader, the last block)
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
  int prefetch;  // 1: ask L2 for this block's w2 rows at entry, before waiting for the tap (pdl_wait)
  int w1s;       // 1: this block's w1 rows copied into shared memory at entry (pc_w1s)
};

// Dynamic shared memory of k_pred_chain: x (d floats), t (rows floats), then one buffer used twice: this block's
// w1 rows (copied in at entry, when they fit: w1s) and later, in the last block, the largest big member's keys.
__host__ __device__ inline int pc_chunk(int n, int grid) { return (n + grid - 1) / grid; }
__host__ __device__ inline int pc_buf_off(int d, int rows) { return (d + rows + 3) & ~3; }  // floats, 16-byte aligned
__host__ __device__ inline int pc_w1_rows(int rows, int grid) {  // rows a block owns (warp w: rows b*NW+w+k*G*NW)
  const int nw = PC_THREADS / 32;
  return pc_chunk(rows, grid * nw) * nw;
}
inline size_t pc_smem_n(int d, int rows, int nmax, int grid, bool w1s) {
  const size_t w1 = w1s ? (size_t)pc_w1_rows(rows, grid) * d / 2 : 0;  // floats
  return ((size_t)pc_buf_off(d, rows) + std::max(w1, (size_t)nmax)) * 4;
}
inline int pc_nmax(const ChainArgs& a) {
  int nmax = 0;
  for (int i = 0; i < a.nm; i++)
    if (a.m[i].n > PC_SMALL) nmax = std::max(nmax, a.m[i].n);
  return nmax;
}
// Whether this block's w1 rows fit shared memory beside the rest (then they are copied in at entry).
inline bool pc_w1s(const ChainArgs& a, int grid) { return pc_smem_n(a.d, a.rows, pc_nmax(a), grid, true) <= PC_SMEM_MAX; }
inline size_t pc_smem(const ChainArgs& a, int grid) { return pc_smem_n(a.d, a.rows, pc_nmax(a), grid, a.w1s); }

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

// Which bin of a 4096- (or 256-) bin histogram holds the k-th largest: every thread owns up to 8 consecutive bins
// from the top; returns the bin, and sets *s_rem to how many to take from it. GLOBAL: h is in global memory, filled
// by other blocks' atomics (read through L2).
template <bool GLOBAL>
__device__ int pc_find_bin(const unsigned* h, int nbins, int k, int* tmp, int* s_bin, int* s_rem) {
  const int per = nbins / PC_THREADS > 0 ? nbins / PC_THREADS : 1, tid = threadIdx.x;
  int c[8], tot = 0;
#pragma unroll
  for (int i = 0; i < 8; i++) {
    const int b = nbins - 1 - per * tid - i;
    c[i] = i < per && b >= 0 && tid * per < nbins ? (int)(GLOBAL ? __ldcg(h + b) : h[b]) : 0;
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

__device__ __forceinline__ void pc_stamp(const ChainArgs& a, int i) {
  if (a.stamps && threadIdx.x == 0) {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    a.stamps[blockIdx.x * 16 + i] = t;
  }
}

// The exact top-k of one big member, by the last block alone: its scores (all blocks') into shared memory as keys,
// the bin of the k-th largest at bits 31..20 from the global histogram every block merged into, then bits 19..8 and
// 7..0 from block-local histograms of that bin's keys; keys above the threshold are taken, equal ones while the
// count allows. Clears the global histogram for the next launch (this block is its only reader).
__device__ void pc_select(const ChainMember& m, unsigned* hg, uint32_t* ks, unsigned* hs, int* tmp, int* s_bin,
                          int* s_rem, unsigned* s_cnt) {
  const int tid = threadIdx.x;
  // All scores in one round trip (16 float4 a thread in flight): a plain loop issued them one by one, ~23 us.
  constexpr int LB = 16;
  const int n4 = m.n >> 2;
  for (int i0 = tid; i0 < n4; i0 += PC_THREADS * LB) {
    float4 v[LB];
#pragma unroll
    for (int u = 0; u < LB; u++)
      if (i0 + u * PC_THREADS < n4) v[u] = __ldcg(reinterpret_cast<const float4*>(m.scores) + i0 + u * PC_THREADS);
#pragma unroll
    for (int u = 0; u < LB; u++)
      if (i0 + u * PC_THREADS < n4)
        reinterpret_cast<uint4*>(ks)[i0 + u * PC_THREADS] = make_uint4(f2key(v[u].x), f2key(v[u].y), f2key(v[u].z), f2key(v[u].w));
  }
  for (int i = 4 * n4 + tid; i < m.n; i += PC_THREADS) ks[i] = f2key(__ldcg(m.scores + i));
  uint32_t pre = (uint32_t)pc_find_bin<true>(hg, 4096, m.k, tmp, s_bin, s_rem) << 20;
  int rem = *s_rem;
  for (int i = tid; i < 4096; i += PC_THREADS) { hg[i] = 0u; hs[i] = 0u; }
  if (tid < 2) s_cnt[tid] = 0u;
  __syncthreads();
  for (int i = tid; i < m.n; i += PC_THREADS)
    if ((ks[i] & 0xfff00000u) == pre) atomicAdd(&hs[(ks[i] >> 8) & 4095], 1u);
  __syncthreads();
  pre |= (uint32_t)pc_find_bin<false>(hs, 4096, rem, tmp, s_bin, s_rem) << 8;
  rem = *s_rem;
  for (int i = tid; i < 256; i += PC_THREADS) hs[i] = 0u;
  __syncthreads();
  for (int i = tid; i < m.n; i += PC_THREADS)
    if ((ks[i] & 0xffffff00u) == pre) atomicAdd(&hs[ks[i] & 255], 1u);
  __syncthreads();
  pre |= (uint32_t)pc_find_bin<false>(hs, 256, rem, tmp, s_bin, s_rem);
  const int take_eq = *s_rem;
  for (int i0 = 0; i0 < m.n; i0 += PC_THREADS) {
    const int i = i0 + tid;
    bool take = false;
    if (i < m.n) take = ks[i] > pre || (ks[i] == pre && (int)atomicAdd(&s_cnt[1], 1u) < take_eq);
    warp_append(take, i, &s_cnt[0], m.sel);
  }
  __syncthreads();
}

__global__ void __launch_bounds__(PC_THREADS, 1) k_pred_chain(ChainArgs a) {
  extern __shared__ __align__(16) float sm[];
  __shared__ unsigned hs[4096];
  __shared__ uint32_t keys[PC_SMALL];
  __shared__ int tmp[33], s_bin, s_rem, s_base;
  __shared__ unsigned s_cnt[2], s_last;
  __shared__ __align__(8) uint64_t wbar;
  __shared__ float red[32];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, NW = PC_THREADS / 32, G = gridDim.x;
  const int d = a.d, n4 = d >> 2, nvec = d >> 3;
  float* xs = sm;
  float* ts = sm + d;
  __half* w1b = reinterpret_cast<__half*>(sm + pc_buf_off(d, a.rows));
  ChainState* S = a.s;

  pc_stamp(a, 0);
  // This block's w1 rows (which no kernel writes) into shared memory by the copy engine, issued before anything
  // waits: ~160 KB a block in flight at once, where register loads keep far fewer bytes in flight per SM.
  if (a.w1s && tid == 0) {
    mbar_init(&wbar, 1);
    mbar_fence_init();
    int nr = 0;
    for (int j = blockIdx.x * NW; j < a.rows; j += G * NW) nr += min(NW, a.rows - j);
    mbar_expect_tx(&wbar, (unsigned)nr * d * 2);
    const uint64_t pol = policy_evict_first();
    for (int j0 = blockIdx.x * NW, k = 0; j0 < a.rows; j0 += G * NW, k++)
      for (int w = 0; w < NW && j0 + w < a.rows; w++)
        bulk_g2s(w1b + (size_t)(k * NW + w) * d, a.w1 + (size_t)(j0 + w) * d, (uint32_t)d * 2, &wbar, pol);
  }
  // Launched ahead of the tap (engine: a programmatic edge from the kernel that writes it), the blocks first ask
  // L2 for the weights they will read, which do not depend on the tap, then wait for it. (pdl_wait is a no-op
  // without such an edge.)
  if (a.prefetch) {
    for (int mi = 0; mi < a.nm; mi++) {
      const ChainMember& m = a.m[mi];
      if (m.n <= PC_SMALL) continue;
      const int chunk = pc_chunk(m.n, G), lo = blockIdx.x * chunk, hi = min(m.n, lo + chunk);
      const size_t bytes = hi > lo ? (size_t)(hi - lo) * m.r * 2 : 0;
      const char* p = reinterpret_cast<const char*>(m.w2 + (size_t)lo * m.r);
      for (size_t o = (size_t)tid * 16384; o < bytes; o += (size_t)PC_THREADS * 16384)
        prefetch_l2_bulk(p + o, (uint32_t)min((size_t)16384, bytes - o));
    }
  }
  pdl_wait();
  pc_stamp(a, 12);

  // Phase 0: the tap's input x = X[r-1] + D[r] (and the parameter-free LayerNorm), then this block's w1 rows.
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
  if (a.w1s) mbar_wait(&wbar, 0);
  for (int j = blockIdx.x * NW + warp, k = 0; j < a.rows; j += G * NW, k++) {
    float acc = 0.f;
    if (a.w1s) {
      const uint4* wr = reinterpret_cast<const uint4*>(w1b + (size_t)(k * NW + warp) * d);
      for (int c = lane; c < nvec; c += 32) acc += dot8(wr[c], xs + 8 * c);
      acc = warp_sum(acc);
      if (lane == 0) a.t[j] = acc;
      continue;
    }
    const uint4* wr = reinterpret_cast<const uint4*>(a.w1 + (size_t)j * d);
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
  // per block, written out and counted into a block-local histogram of their top 12 key bits, merged into the
  // global one.
  for (int i = tid; i < a.rows; i += PC_THREADS) ts[i] = __ldcg(a.t + i);
  __syncthreads();
  pc_stamp(a, 9);
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
          else if (!(a.opts & 2)) atomicAdd(&hs[f2key(acc) >> 20], 1u);
        }
      }
    }
    __syncthreads();
    if (small) {
      // Rank by counting: rank(i) = #{j : key_j > key_i or (key_j == key_i and j < i)}; keep rank < k.
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
      for (int i = tid; i < 4096; i += PC_THREADS)  // only bins with counts: scores crowd into few bins
        if (hs[i]) atomicAdd(&S->h1[mi][i], hs[i]);
      pc_stamp(a, 11);
    }
    __syncthreads();
  }
  pc_stamp(a, 4);
  bool any_big = false;
  for (int mi = 0; mi < a.nm; mi++) any_big |= a.m[mi].n > PC_SMALL;
  if (!any_big) return;

  // The last block to finish its scores selects (no grid barrier: the others leave). The counter is monotone and
  // every launch adds G, so "last" is the arrival that completes a multiple of G.
  if (tid == 0) {
    __threadfence();
    s_last = (atomicAdd(&S->done, 1u) + 1u) % (unsigned)G == 0u;
    __threadfence();
  }
  __syncthreads();
  if (!s_last) return;
  pc_stamp(a, 5);
  uint32_t* ks = reinterpret_cast<uint32_t*>(w1b);
  for (int mi = 0; mi < a.nm; mi++)
    if (a.m[mi].n > PC_SMALL) pc_select(a.m[mi], S->h1[mi], ks, hs, tmp, &s_bin, &s_rem, s_cnt);
  pc_stamp(a, 8);
}

}  // namespace dj
