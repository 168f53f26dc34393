// DejaVu decode kernels for OPT: fp16 weights, fp32 activations and accumulation, batch 1.
// One kernel per op; the CPU reference for each lives beside its test in check.cu (llm.c style).
//
// Layouts (all row-major):
//   Wqkv [3d][d]   q rows, then k rows, then v rows (nn.Linear layout: head h owns rows h*hd..h*hd+hd-1 of each)
//   WoT  [d][d]    out_proj stored TRANSPOSED ([in][out]): a head's columns become hd contiguous rows
//   W1   [ffn][d]  fc1 (a neuron = one contiguous row)
//   W2T  [ffn][d]  fc2 stored TRANSPOSED: a neuron's output weights = one contiguous row
//   K/V cache [H][maxT][hd] fp16 per layer, valid [H][maxT] uint8 per layer (KV policy, see k_attention)
// Device state int32 st[0] = pos (position of the token being decoded), st[1] = prompt length; tokens[maxT].
#pragma once
#include <cuda_fp16.h>
#include <stdint.h>

namespace dj {

constexpr int WARPS = 8;  // warps per block of the row kernels
#define NEG_INF (-__int_as_float(0x7f800000))

// Streaming 16-byte load: weights are read once per token, keep them out of L1.
__device__ __forceinline__ uint4 ld_stream(const uint4* p) {
  uint4 r;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
               : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(p));
  return r;
}

// Programmatic dependent launch (no-ops unless the launch allowed it): a kernel may start while its predecessor
// in the stream finishes, prefetch its weights (which no kernel writes), then wait before reading activations.
__device__ __forceinline__ void pdl_wait() { asm volatile("griddepcontrol.wait;" ::: "memory"); }
__device__ __forceinline__ void pdl_trigger() { asm volatile("griddepcontrol.launch_dependents;" :::); }

__device__ __forceinline__ void prefetch_l2(const void* p) { asm volatile("prefetch.global.L2 [%0];" ::"l"(p)); }

__device__ __forceinline__ float dot8(const uint4& w, const float* x) {
  const __half2* h = reinterpret_cast<const __half2*>(&w);
  float acc = 0.f;
#pragma unroll
  for (int i = 0; i < 4; i++) {
    float2 f = __half22float2(h[i]);
    acc = fmaf(f.x, x[2 * i], acc);
    acc = fmaf(f.y, x[2 * i + 1], acc);
  }
  return acc;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Block-wide sum; `red` is >= 32 floats of shared memory. All threads get the result.
__device__ __forceinline__ float block_sum(float v, float* red) {
  int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) red[w] = v;
  __syncthreads();
  v = lane < nw ? red[lane] : 0.f;
  return warp_sum(v);
}
__device__ __forceinline__ float block_max(float v, float* red) {
  int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) red[w] = v;
  __syncthreads();
  v = lane < nw ? red[lane] : NEG_INF;
  return warp_max(v);
}

// Order-preserving float -> uint32 (larger float <=> larger key).
__device__ __forceinline__ uint32_t f2key(float f) {
  uint32_t u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
__device__ __forceinline__ float key2f(uint32_t k) {
  return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

// ---------------------------------------------------------------------------------------------------------------
// Embedding: x = E[tokens[pos]] + P[pos + 2] (OPT's learned positions carry an offset of 2).
__global__ void k_embed(const __half* __restrict__ E, const __half* __restrict__ P, const int* __restrict__ tokens,
                        const int* __restrict__ st, int d, float* __restrict__ x) {
  pdl_trigger();
  pdl_wait();
  int pos = st[0];
  int tok = tokens[pos];
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < d; i += gridDim.x * blockDim.x)
    x[i] = __half2float(E[(size_t)tok * d + i]) + __half2float(P[(size_t)(pos + 2) * d + i]);
}

// ---------------------------------------------------------------------------------------------------------------
// Row GEMV with an optional LayerNorm prologue and a fused epilogue:
//   y[j] = dot(W[row(j)], LN(x)) + b[row(j)]
// `row(j)` gathers: identity, a neuron list (fc1), or the q/k/v rows of a head list (sparse attention).
// Each block normalises x into shared memory once, then its warps stream whole weight rows with 16-byte loads
// (WPR warps split one long row when there are few rows; LPR lanes take one short row when rows are short).
enum { MAP_ID = 0, MAP_LIST = 1, MAP_QKV = 2, MAP_Q_KVALL = 3 };
enum { EPI_PLAIN = 0, EPI_RELU = 1, EPI_QKV = 2, EPI_ARGMAX = 3 };

struct RowsArgs {
  const __half* W;
  const float* b;  // may be null
  int K;           // input width (multiple of 8)
  int n_out;       // number of output rows
  const float* x;  // [K]
  const float* ln_g;
  const float* ln_b;  // LayerNorm when ln_g != null
  float ln_eps;
  int map;
  const int* sel;  // MAP_LIST: [n_out] rows; MAP_QKV: [kH] heads
  int kH, hd, d;   // MAP_QKV / EPI_QKV
  int wpr, lpr;    // warps per row (1,2,4,8), lanes per row (1..32, power of two; lpr < 32 only when wpr == 1)
  float* y;        // PLAIN/RELU: [n_out]; QKV: q [d] (absolute head positions); ARGMAX: logits [n_out]
  float q_scale;
  __half* kc;
  __half* vc;
  uint8_t* valid;
  int maxT;
  int* st;  // device state (pos, n_prompt)
  // ARGMAX
  unsigned long long* amax;
  unsigned int* counter;
  int* tokens;
};

__device__ __forceinline__ int rows_map(const RowsArgs& a, int j) {
  if (a.map == MAP_ID) return j;
  if (a.map == MAP_LIST) return a.sel[j];
  if (a.map == MAP_Q_KVALL) {  // q rows of the listed heads, then every k and v row (KV policy "all")
    int nq = a.kH * a.hd;
    if (j >= nq) return a.d + (j - nq);
    int hi = j / a.hd;
    return a.sel[hi] * a.hd + (j - hi * a.hd);
  }
  int per = a.kH * a.hd;  // MAP_QKV: j = part*per + hi*hd + i, part 0/1/2 = q/k/v
  int p = j / per, r = j - p * per;
  int hi = r / a.hd, i = r - hi * a.hd;
  return p * a.d + a.sel[hi] * a.hd + i;
}

template <int EPI>
__global__ void __launch_bounds__(WARPS * 32) k_rows(RowsArgs a) {
  extern __shared__ float xs[];  // [K]
  __shared__ float red[32];
  __shared__ unsigned long long best_s[WARPS];
  const int K = a.K, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;

  const int nvec = K >> 3;
  const int wpr = a.wpr, lpr = a.lpr;
  const int rows_per_warp = 32 / lpr;                 // > 1 only for short rows
  const int rows_per_block = (WARPS / wpr) * rows_per_warp;
  const int sub = lane / lpr, sl = lane % lpr;        // row slot within the warp, lane within the row
  const int grp = warp / wpr, wi = warp % wpr;        // row group within the block, warp within the group
  const int step = wpr * lpr;                         // vectors advanced per iteration by the row's lanes
  unsigned long long best = 0ull;
  __shared__ float part_s[WARPS][32];

  // Prefetch this lane's part of its first row into L2 before touching x: weights (and row selections, which are
  // produced on another stream and joined by a full dependency) never depend on the kernel before us, so their DRAM
  // latency overlaps the LayerNorm prologue and, with PDL, the previous kernel's tail. (L2, not registers: keeps
  // the main loop's register budget and occupancy.)
  pdl_trigger();
  {
    int j = blockIdx.x * rows_per_block + grp * rows_per_warp + sub;
    if (j < a.n_out) {
      const uint4* wr = reinterpret_cast<const uint4*>(a.W + (size_t)rows_map(a, j) * K);
      for (int c = wi * lpr + sl; c < nvec; c += step) prefetch_l2(wr + c);
    }
  }
  pdl_wait();

  // Prologue: x (optionally LayerNorm'd) into shared memory. Two-pass variance for stability.
  if (a.ln_g) {
    float s = 0.f;
    for (int i = tid; i < K; i += blockDim.x) { float v = a.x[i]; xs[i] = v; s += v; }
    float mean = block_sum(s, red) / K;
    float s2 = 0.f;
    for (int i = tid; i < K; i += blockDim.x) { float v = xs[i] - mean; s2 += v * v; }
    float rstd = rsqrtf(block_sum(s2, red) / K + a.ln_eps);
    for (int i = tid; i < K; i += blockDim.x) xs[i] = (xs[i] - mean) * rstd * a.ln_g[i] + a.ln_b[i];
  } else {
    for (int i = tid; i < K; i += blockDim.x) xs[i] = a.x[i];
  }
  __syncthreads();

  for (int base = blockIdx.x * rows_per_block; base < a.n_out; base += gridDim.x * rows_per_block) {
    int j = base + grp * rows_per_warp + sub;
    bool active = j < a.n_out;
    int row = active ? rows_map(a, j) : 0;
    float acc = 0.f;
    if (active) {
      const uint4* wr = reinterpret_cast<const uint4*>(a.W + (size_t)row * K);
      int c = wi * lpr + sl;
      // 4 independent 16-byte loads in flight per lane.
      for (; c + 3 * step < nvec; c += 4 * step) {
        uint4 w0 = ld_stream(wr + c), w1 = ld_stream(wr + c + step);
        uint4 w2 = ld_stream(wr + c + 2 * step), w3 = ld_stream(wr + c + 3 * step);
        acc += dot8(w0, xs + 8 * c) + dot8(w1, xs + 8 * (c + step));
        acc += dot8(w2, xs + 8 * (c + 2 * step)) + dot8(w3, xs + 8 * (c + 3 * step));
      }
      for (; c < nvec; c += step) acc += dot8(ld_stream(wr + c), xs + 8 * c);
    }
    // Reduce over the lpr lanes of this row (xor stays inside aligned groups of lpr lanes).
    for (int o = lpr >> 1; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    if (wpr > 1) {
      if (lane == 0) part_s[warp][0] = acc;
      __syncthreads();
      if (wi == 0 && lane == 0) {
        for (int w = 1; w < wpr; w++) acc += part_s[warp + w][0];
      }
      __syncthreads();
    }
    if (active && wi == 0 && sl == 0) {
      float v = acc + (a.b ? a.b[row] : 0.f);
      if constexpr (EPI == EPI_PLAIN) {
        a.y[j] = v;
      } else if constexpr (EPI == EPI_RELU) {
        a.y[j] = fmaxf(v, 0.f);
      } else if constexpr (EPI == EPI_QKV) {
        int pos = a.st[0];
        int part = row / a.d, r = row - part * a.d;  // q/k/v, and the row within it: h*hd + i
        int h = r / a.hd, i = r - h * a.hd;
        size_t ci = ((size_t)h * a.maxT + pos) * a.hd + i;
        if (part == 0) a.y[r] = v * a.q_scale;
        else if (part == 1) a.kc[ci] = __float2half(v);
        else {
          a.vc[ci] = __float2half(v);
          if (i == 0) a.valid[(size_t)h * a.maxT + pos] = 1;  // this head's K/V at pos now exist
        }
      } else {  // EPI_ARGMAX: logits + packed (value, smallest index on ties) running max
        a.y[j] = v;
        unsigned long long key = ((unsigned long long)f2key(v) << 32) | (0xffffffffu - (uint32_t)j);
        best = key > best ? key : best;
      }
    }
  }

  if constexpr (EPI == EPI_ARGMAX) {
    // Block max -> one atomic; the last block to finish turns it into the next token and advances the position.
    for (int o = 16; o > 0; o >>= 1) {
      unsigned long long other = __shfl_xor_sync(0xffffffffu, best, o);
      best = other > best ? other : best;
    }
    if (lane == 0) best_s[warp] = best;
    __syncthreads();
    __shared__ bool last;
    if (tid == 0) {
      unsigned long long m = 0;
      for (int w = 0; w < WARPS; w++) m = best_s[w] > m ? best_s[w] : m;
      atomicMax(a.amax, m);
      __threadfence();
      last = atomicAdd(a.counter, 1u) == gridDim.x - 1;
      if (last) {
        __threadfence();
        unsigned long long m2 = atomicAdd(a.amax, 0ull);
        int tok = (int)(0xffffffffu - (uint32_t)(m2 & 0xffffffffu));
        int pos = a.st[0];
        if (pos + 1 < a.maxT && pos + 1 >= a.st[1]) a.tokens[pos + 1] = tok;  // prompt tokens stay forced
        a.st[0] = pos + 1;
        *a.amax = 0ull;
        *a.counter = 0u;
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Column GEMV over a transposed weight with gathered rows, accumulated into the residual stream:
//   y[c] += sum_j a_j * WT[row(j)][c]   (+ bias[c], added once by the blocks of chunk 0)
// Rows: identity (dense), a neuron list (fc2: a_j = h[j], compact), or the hd rows of each listed head
// (out_proj: a_j = attn[row]). Each thread owns 8 consecutive output columns (one 16-byte vector per row);
// blockIdx.y takes a chunk of R selected rows; partial sums land with vector float4 atomics.
struct ColsArgs {
  const __half* WT;
  int n_cols;       // d (multiple of 8)
  int n_rows;       // number of selected rows (compact)
  int map;          // MAP_ID, MAP_LIST (neurons), MAP_QKV (heads; reused name: head blocks of hd rows)
  const int* sel;
  int hd;
  const float* in;  // MAP_ID/MAP_QKV: indexed by the weight row; MAP_LIST: compact [n_rows]
  const float* bias;
  float* y;
  int R;            // rows per chunk (multiple of 8)
};

constexpr int COLS_THREADS = 128;

__global__ void __launch_bounds__(COLS_THREADS) k_cols(ColsArgs a) {
  __shared__ int rows_s[256];
  __shared__ float in_s[256];
  pdl_trigger();
  const int r0 = blockIdx.y * a.R;
  const int nr = min(a.R, a.n_rows - r0);
  // Row indices first (selections come from another stream through a full dependency), then the first 8 weight
  // vectors, and only then wait for the kernel before us (which writes the input vector).
  for (int t = threadIdx.x; t < nr; t += blockDim.x) {
    int j = r0 + t;
    rows_s[t] = a.map == MAP_ID ? j : a.map == MAP_LIST ? a.sel[j] : a.sel[j / a.hd] * a.hd + (j % a.hd);
  }
  __syncthreads();
  const int cv = blockIdx.x * blockDim.x + threadIdx.x;
  const bool live = cv * 8 < a.n_cols;
  uint4 w[8];
  if (live) {
#pragma unroll
    for (int u = 0; u < 8; u++)
      if (u < nr) w[u] = ld_stream(reinterpret_cast<const uint4*>(a.WT + (size_t)rows_s[u] * a.n_cols) + cv);
  }
  pdl_wait();
  for (int t = threadIdx.x; t < nr; t += blockDim.x) in_s[t] = a.map == MAP_LIST ? a.in[r0 + t] : a.in[rows_s[t]];
  __syncthreads();
  if (!live) return;
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  auto fma8 = [&](const uint4& wv, float s) {
    const __half2* h = reinterpret_cast<const __half2*>(&wv);
#pragma unroll
    for (int i = 0; i < 4; i++) {
      float2 f = __half22float2(h[i]);
      acc[2 * i] = fmaf(f.x, s, acc[2 * i]);
      acc[2 * i + 1] = fmaf(f.y, s, acc[2 * i + 1]);
    }
  };
#pragma unroll
  for (int u = 0; u < 8; u++)
    if (u < nr) fma8(w[u], in_s[u]);
  int t = 8;
  for (; t + 8 <= nr; t += 8) {
#pragma unroll
    for (int u = 0; u < 8; u++) w[u] = ld_stream(reinterpret_cast<const uint4*>(a.WT + (size_t)rows_s[t + u] * a.n_cols) + cv);
#pragma unroll
    for (int u = 0; u < 8; u++) fma8(w[u], in_s[t + u]);
  }
  for (; t < nr; t++) fma8(ld_stream(reinterpret_cast<const uint4*>(a.WT + (size_t)rows_s[t] * a.n_cols) + cv), in_s[t]);
  if (blockIdx.y == 0 && a.bias) {
#pragma unroll
    for (int i = 0; i < 8; i++) acc[i] += a.bias[cv * 8 + i];
  }
  float4* y4 = reinterpret_cast<float4*>(a.y + cv * 8);
  atomicAdd(y4, make_float4(acc[0], acc[1], acc[2], acc[3]));
  atomicAdd(y4 + 1, make_float4(acc[4], acc[5], acc[6], acc[7]));
}

// ---------------------------------------------------------------------------------------------------------------
// Attention decode for one head per block over the K/V cache, positions 0..pos.
// KV policy for sparse attention, policy "selected" (default): a head skipped at step t computes no K/V at t; its
// slot stays marked invalid (valid[h][t] = 0) and is masked out whenever that head is selected later. Policy "all"
// (MAP_Q_KVALL, what runtime/sparse does): K/V rows of every head are projected each step, so every slot is valid.
// Dense steps write every head.
// 1024 threads, 4 keys (or V rows) in flight per lane: a head's whole history is requested in ~one memory round trip.
constexpr int ATT_THREADS = 1024;
constexpr int ATT_U = 4;
__host__ __device__ constexpr int att_smem_floats(int maxT) { return maxT + ATT_THREADS * 8; }

template <int HD>
__global__ void __launch_bounds__(ATT_THREADS) k_attention(const float* __restrict__ q, const __half* __restrict__ kc,
                                                   const __half* __restrict__ vc, const uint8_t* __restrict__ valid,
                                                   const int* __restrict__ sel, const int* __restrict__ st, int maxT,
                                                   float* __restrict__ out) {
  constexpr int LPK = HD / 8;        // lanes per key (16 bytes each)
  constexpr int KPW = 32 / LPK;      // keys per warp per load
  extern __shared__ float sc[];      // [maxT] scores, then [groups][HD] partial outputs
  __shared__ float red[32];
  pdl_trigger();
  pdl_wait();
  const int h = sel ? sel[blockIdx.x] : blockIdx.x;
  const int T = st[0] + 1;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, nwarps = blockDim.x >> 5;
  const int sl = lane % LPK, kw = lane / LPK;
  const __half* K = kc + (size_t)h * maxT * HD;
  const __half* V = vc + (size_t)h * maxT * HD;
  const uint8_t* ok = valid + (size_t)h * maxT;

  float qv[8];
#pragma unroll
  for (int i = 0; i < 8; i++) qv[i] = q[h * HD + sl * 8 + i];

  float mx = NEG_INF;
  for (int t0 = warp * KPW * ATT_U; t0 < T; t0 += nwarps * KPW * ATT_U) {
    uint4 kv[ATT_U];
#pragma unroll
    for (int u = 0; u < ATT_U; u++) {
      int t = t0 + u * KPW + kw;
      if (t < T) kv[u] = *reinterpret_cast<const uint4*>(K + (size_t)t * HD + sl * 8);
    }
#pragma unroll
    for (int u = 0; u < ATT_U; u++) {
      int t = t0 + u * KPW + kw;
      float s = t < T ? dot8(kv[u], qv) : 0.f;
      for (int o = LPK >> 1; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
      if (t < T && sl == 0) {
        s = ok[t] ? s : NEG_INF;
        sc[t] = s;
        mx = fmaxf(mx, s);
      }
    }
  }
  mx = block_max(mx, red);
  float sum = 0.f;
  for (int t = tid; t < T; t += blockDim.x) {
    float e = sc[t] == NEG_INF ? 0.f : __expf(sc[t] - mx);
    sc[t] = e;
    sum += e;
  }
  sum = block_sum(sum, red);  // ends with __syncthreads inside: sc[] complete
  const float inv = 1.f / sum;

  // out[i] = sum_t p_t V[t][i]: LPK lanes cover a row of V, groups of LPK lanes split the positions.
  const int groups = blockDim.x / LPK, g = tid / LPK;
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int t0 = g; t0 < T; t0 += groups * ATT_U) {
    uint4 w[ATT_U];
#pragma unroll
    for (int u = 0; u < ATT_U; u++) {
      int t = t0 + u * groups;
      if (t < T) w[u] = *reinterpret_cast<const uint4*>(V + (size_t)t * HD + sl * 8);
    }
#pragma unroll
    for (int u = 0; u < ATT_U; u++) {
      int t = t0 + u * groups;
      if (t >= T) break;
      float p = sc[t];
      const __half2* hv = reinterpret_cast<const __half2*>(&w[u]);
#pragma unroll
      for (int i = 0; i < 4; i++) {
        float2 f = __half22float2(hv[i]);
        acc[2 * i] = fmaf(p, f.x, acc[2 * i]);
        acc[2 * i + 1] = fmaf(p, f.y, acc[2 * i + 1]);
      }
    }
  }
  float* part = sc + maxT;  // [groups][HD]
#pragma unroll
  for (int i = 0; i < 8; i++) part[g * HD + sl * 8 + i] = acc[i];
  __syncthreads();
  // HD outputs, each a sum over `groups` partials: split each sum over 1024/HD threads, then shuffle-reduce.
  constexpr int SPLIT = ATT_THREADS / HD;  // 8 (HD=128) .. 32 (HD=32): consecutive lanes
  {
    const int i = tid / SPLIT, part_id = tid % SPLIT;
    float s = 0.f;
    for (int gg = part_id; gg < groups; gg += SPLIT) s += part[gg * HD + i];
    for (int o = SPLIT >> 1; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (part_id == 0) out[h * HD + i] = s * inv;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Predictor second layer + top-k in one launch: scores[j] = dot(W2[j], t) for j < n (t = W1 x, rank r), then the
// last block to finish selects the k largest scores exactly and writes their indices in ascending order to
// sel[0..k) (ties broken towards the smaller index). sigmoid is monotone, so top-k of the logits = top-k of
// DejaVu's sigmoid outputs.
//   n <= TOPK_THREADS: every score gets its rank by counting (one pass over n in shared memory).
//   larger n: while scoring, every block adds its scores to a global histogram of the top 12 bits of an
//   order-preserving key; the last block finds the bin holding the k-th largest, collects that bin's keys
//   (a few hundred for k = 5% of 20480), finishes the radix select on them, then writes the indices.
constexpr int TOPK_THREADS = 512;
constexpr int TOPK_BINS = 4096;   // top 12 bits of the key
constexpr int TOPK_CAND = 4096;   // candidates held in shared memory; more (degenerate scores) -> slower exact path

struct TopkArgs {
  const __half* W2;  // [n][r]
  const float* t;    // [r]
  int n, r, k;
  int lpr;           // lanes per row: min(32, r/8)
  float* scores;     // [n]
  int* sel;          // [k]
  unsigned int* counter;
  unsigned int* hist;  // [TOPK_BINS], zero between launches (the last block re-zeroes it)
};

__device__ __forceinline__ int block_excl_scan(int v, int* tmp, int* total) {
  // tmp: >= 33 ints
  int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
  int incl = v;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    int u = __shfl_up_sync(0xffffffffu, incl, o);
    if (lane >= o) incl += u;
  }
  __syncthreads();
  if (lane == 31) tmp[w] = incl;
  __syncthreads();
  if (w == 0) {
    int s = lane < nw ? tmp[lane] : 0;
    int si = s;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      int u = __shfl_up_sync(0xffffffffu, si, o);
      if (lane >= o) si += u;
    }
    if (lane < nw) tmp[lane] = si - s;
    if (lane == 31) tmp[32] = si;
  }
  __syncthreads();
  int r = tmp[w] + incl - v;
  *total = tmp[32];
  return r;
}

// Radix-select passes (8-bit digits at `shifts`) over keys matching (key & mask) == prefix; keys come from `get(i)`,
// i < n. Finds the threshold key and how many keys equal to it are taken (*rem on entry: how many still to take).
template <class Get>
__device__ void radix_passes(Get get, int n, const int* shifts, int nshift, uint32_t& prefix, uint32_t& mask,
                             int (*hist)[256], int* s_digit, int* s_rem) {
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, nwarps = blockDim.x >> 5;
  for (int si = 0; si < nshift; si++) {
    const int shift = shifts[si];
    for (int i = lane; i < 256; i += 32) hist[warp][i] = 0;
    __syncthreads();
    for (int i = tid; i < n; i += blockDim.x) {
      uint32_t kk = get(i);
      if ((kk & mask) == prefix) atomicAdd(&hist[warp][(kk >> shift) & 255], 1);
    }
    __syncthreads();
    if (tid < 256) {
      int s = 0;
      for (int w = 0; w < nwarps; w++) s += hist[w][tid];
      hist[0][tid] = s;  // each thread reads only column tid before writing it
    }
    __syncthreads();
    if (warp == 0) {
      // Lane l owns digits 255-8l .. 248-8l (descending); find the digit where the count from the top reaches rem.
      int c[8], tot = 0;
#pragma unroll
      for (int i = 0; i < 8; i++) { c[i] = hist[0][255 - 8 * lane - i]; tot += c[i]; }
      int incl = tot;
#pragma unroll
      for (int o = 1; o < 32; o <<= 1) {
        int u = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += u;
      }
      int rem = *s_rem, above = incl - tot;
      if (above < rem && incl >= rem) {
#pragma unroll
        for (int i = 0; i < 8; i++) {
          if (above < rem && above + c[i] >= rem) { *s_digit = 255 - 8 * lane - i; *s_rem = rem - above; }
          above += c[i];
        }
      }
    }
    __syncthreads();
    prefix = (prefix & ~(255u << shift)) | ((uint32_t)*s_digit << shift);
    mask |= 255u << shift;
    __syncthreads();
  }
}

__global__ void __launch_bounds__(TOPK_THREADS) k_pred_topk(TopkArgs a) {
  __shared__ float ts[1024];
  __shared__ int hist[TOPK_THREADS / 32][256];
  __shared__ uint32_t cand[TOPK_CAND];
  __shared__ int tmp[33];
  __shared__ int s_digit, s_rem, s_ncand;
  __shared__ bool last;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, nwarps = blockDim.x >> 5;
  const bool small = a.n <= TOPK_THREADS;
  for (int i = tid; i < a.r; i += blockDim.x) ts[i] = a.t[i];
  __syncthreads();

  // Scores: lpr lanes per row (+ global histogram of the top 12 key bits for large n).
  const int lpr = a.lpr, rpw = 32 / lpr, sub = lane / lpr, sl = lane % lpr, nvec = a.r >> 3;
  for (int base = (blockIdx.x * nwarps + warp) * rpw; base < a.n; base += gridDim.x * nwarps * rpw) {
    int j = base + sub;
    float acc = 0.f;
    if (j < a.n) {
      const uint4* wr = reinterpret_cast<const uint4*>(a.W2 + (size_t)j * a.r);
      for (int c = sl; c < nvec; c += lpr) acc += dot8(ld_stream(wr + c), ts + 8 * c);
    }
    for (int o = lpr >> 1; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    if (j < a.n && sl == 0) {
      a.scores[j] = acc;
      if (!small) atomicAdd(&a.hist[f2key(acc) >> 20], 1u);
    }
  }
  __threadfence();
  __syncthreads();
  if (tid == 0) last = atomicAdd(a.counter, 1u) == gridDim.x - 1;
  __syncthreads();
  if (!last) return;
  __threadfence();

  const int n = a.n, k = a.k;
  if (small) {
    // Rank by counting: rank(i) = #{j : key_j > key_i or (key_j == key_i and j < i)}; keep rank < k.
    uint32_t* keys = cand;
    for (int i = tid; i < n; i += blockDim.x) keys[i] = f2key(__ldcg(a.scores + i));
    __syncthreads();
    int keep = 0;
    if (tid < n) {
      uint32_t me = keys[tid];
      int rank = 0;
      for (int j = 0; j < n; j++) { uint32_t o = keys[j]; rank += (o > me) | ((o == me) & (j < tid)); }
      keep = rank < k;
    }
    int tot;
    int pos = block_excl_scan(keep, tmp, &tot);
    if (keep) a.sel[pos] = tid;
    if (tid == 0) *a.counter = 0u;
    return;
  }

  // 1. Threshold bin from the global histogram: thread t owns bins 4095-8t .. 4088-8t (descending).
  if (tid == 0) s_ncand = 0;
  int c[8], tot8 = 0;
#pragma unroll
  for (int i = 0; i < 8; i++) { c[i] = (int)__ldcg(a.hist + TOPK_BINS - 1 - 8 * tid - i); tot8 += c[i]; }
  int total;
  int above = block_excl_scan(tot8, tmp, &total);
  if (above < k && above + tot8 >= k) {
#pragma unroll
    for (int i = 0; i < 8; i++) {
      if (above < k && above + c[i] >= k) { s_digit = TOPK_BINS - 1 - 8 * tid - i; s_rem = k - above; }
      above += c[i];
    }
  }
  __syncthreads();
  const uint32_t bin = (uint32_t)s_digit;
  uint32_t prefix = bin << 20, mask = 0xfff00000u;
  // 2. Collect the keys of that bin (warp-aggregated appends).
  for (int i0 = 0; i0 < n; i0 += blockDim.x) {
    int i = i0 + tid;
    uint32_t kk = i < n ? f2key(__ldcg(a.scores + i)) : 0u;
    bool in = i < n && (kk >> 20) == bin;
    unsigned m = __ballot_sync(0xffffffffu, in);
    int basei = 0;
    if (lane == 0 && m) basei = atomicAdd(&s_ncand, __popc(m));
    basei = __shfl_sync(0xffffffffu, basei, 0);
    int slot = basei + __popc(m & ((1u << lane) - 1));
    if (in && slot < TOPK_CAND) cand[slot] = kk;
  }
  __syncthreads();
  const int ncand = s_ncand;
  // 3. Finish the radix select on the remaining 20 bits (bits 19..12, 11..4, 7..0).
  const int shifts_c[3] = {12, 4, 0};
  const int shifts_all[4] = {24, 16, 8, 0};
  if (ncand <= TOPK_CAND) {
    radix_passes([&](int i) { return cand[i]; }, ncand, shifts_c, 3, prefix, mask, hist, &s_digit, &s_rem);
  } else {  // degenerate score distribution: exact passes over all keys from L2
    prefix = 0; mask = 0;
    if (tid == 0) s_rem = k;
    __syncthreads();
    radix_passes([&](int i) { return f2key(__ldcg(a.scores + i)); }, n, shifts_all, 4, prefix, mask, hist, &s_digit, &s_rem);
  }
  // 4. prefix = threshold key T: take every key > T and the first s_rem keys == T (by index), in index order.
  const int take_eq = s_rem;
  const int per = (n + blockDim.x - 1) / blockDim.x;
  const int lo = tid * per, hi = min(n, lo + per);
  int gt = 0, eq = 0;
  for (int i = lo; i < hi; i++) { uint32_t kk = f2key(__ldcg(a.scores + i)); gt += kk > prefix; eq += kk == prefix; }
  int tt;
  int gt_before = block_excl_scan(gt, tmp, &tt);
  int eq_before = block_excl_scan(eq, tmp, &tt);
  for (int i = lo; i < hi; i++) {
    uint32_t kk = f2key(__ldcg(a.scores + i));
    if (kk > prefix) { a.sel[gt_before + min(eq_before, take_eq)] = i; gt_before++; }
    else if (kk == prefix) {
      if (eq_before < take_eq) a.sel[gt_before + eq_before] = i;
      eq_before++;
    }
  }
  // 5. Leave the histogram and the counter zeroed for the next launch.
  for (int i = tid; i < TOPK_BINS; i += blockDim.x) a.hist[i] = 0u;
  if (tid == 0) *a.counter = 0u;
}

// ---------------------------------------------------------------------------------------------------------------
// Deterministic hash fill (random weights for shapes without a checkpoint): value = offset + scale * U(-1, 1).
__device__ __forceinline__ uint32_t hash32(uint64_t x) {
  x ^= x >> 33; x *= 0xff51afd7ed558ccdULL; x ^= x >> 33; x *= 0xc4ceb9fe1a85ec53ULL; x ^= x >> 33;
  return (uint32_t)x;
}
__global__ void k_fill_half(__half* p, size_t n, uint64_t seed, float scale, float offset) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    float u = hash32(seed * 0x9E3779B97F4A7C15ULL + i) * (2.f / 4294967296.f) - 1.f;
    p[i] = __float2half(offset + scale * u);
  }
}
__global__ void k_fill_float(float* p, size_t n, uint64_t seed, float scale, float offset) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    float u = hash32(seed * 0x9E3779B97F4A7C15ULL + i) * (2.f / 4294967296.f) - 1.f;
    p[i] = offset + scale * u;
  }
}

}  // namespace dj
