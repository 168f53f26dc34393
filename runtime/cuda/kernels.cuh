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
// Activations: the residual stream x is fp32 [d]; the GEMV inputs are fp16 copies made once per block boundary:
//   xn = the next GEMV's input (the next block's LN of x for pre-LN models; x itself for post-LN ones, whose block
//   LayerNorm rewrites x; LnOut), xr = x (raw, for predictors), xp = LayerNorm without affine (predictors trained on
//   normalised input). They are written by the kernel that finishes x (embed, or the last block of a column GEMV), so
//   no GEMV recomputes a LayerNorm.
#pragma once
#include <cuda_fp16.h>
#include <stdint.h>

// The portable path builds for sm_80 and newer; Hopper instructions are used where DJ_SM90 (host code and sm_90+
// device code). The streamed kernels (fused.cuh) need them and run only on sm_90+ (engine.cu apply_options).
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 900
#define DJ_SM90 1
#else
#define DJ_SM90 0
#endif

namespace dj {

constexpr int WARPS = 8;  // warps per block of the row kernels
#define NEG_INF (-__int_as_float(0x7f800000))

// Streaming 16-byte load: weights are read once per token; keep them out of L1 and first in line for eviction from
// L2, so activations, biases, selections and the KV cache stay cached across kernels.
__device__ __forceinline__ uint4 ld_stream(const uint4* p) {
  uint64_t pol;
  asm("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(pol));  // pure: hoisted/merged by the compiler
  uint4 r;
  asm volatile("ld.global.nc.L1::no_allocate.L2::cache_hint.v4.u32 {%0,%1,%2,%3}, [%4], %5;"
               : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(p), "l"(pol));
  return r;
}

// Programmatic dependent launch (no-ops unless the launch allowed it): a kernel may start while its predecessor
// in the stream finishes, prefetch its weights (which no kernel writes), then wait before reading activations.
// Every kernel triggers once its main memory work is issued (not at entry, so waiting dependents do not take
// resources the predecessor still needs); pdl_wait always waits for the predecessor's full completion.
// sm_80 has neither; the engine launches nothing with PDL there (engine.cu apply_options), so no-ops are exact.
#if DJ_SM90
__device__ __forceinline__ void pdl_wait() { asm volatile("griddepcontrol.wait;" ::: "memory"); }
__device__ __forceinline__ void pdl_trigger() { asm volatile("griddepcontrol.launch_dependents;" :::); }
#else
__device__ __forceinline__ void pdl_wait() {}
__device__ __forceinline__ void pdl_trigger() {}
#endif

__device__ __forceinline__ void prefetch_l2(const void* p) { asm volatile("prefetch.global.L2 [%0];" ::"l"(p)); }
// Hopper bulk prefetch of a contiguous range into L2 (one instruction, no registers, no completion to wait for);
// a hint, so nothing on sm_80.
__device__ __forceinline__ void prefetch_l2_bulk(const void* p, uint32_t bytes) {
#if DJ_SM90
  asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(p), "r"(bytes) : "memory");
#endif
}

// y[0..7] += v[0..7], y 16-byte aligned: two float4 atomics on sm_90, eight float atomics before it.
__device__ __forceinline__ void atomic_add8(float* y, const float (&v)[8]) {
#if DJ_SM90
  float4* y4 = reinterpret_cast<float4*>(y);
  atomicAdd(y4, make_float4(v[0], v[1], v[2], v[3]));
  atomicAdd(y4 + 1, make_float4(v[4], v[5], v[6], v[7]));
#else
#pragma unroll
  for (int i = 0; i < 8; i++) atomicAdd(y + i, v[i]);
#endif
}

// Cross-kernel prefetch: a latency-bound sparse kernel asks L2 for the rows the NEXT kernel will stream (selections
// are known by then), so that kernel reads L2 instead of HBM. Item i = base + sel[i / per_sel] * sel_stride +
// (i % per_sel) * part_stride elements, `bytes` long; block b issues item b.
struct L2Prefetch {
  const __half* base = nullptr;
  const int* sel = nullptr;
  int n = 0, per_sel = 1;
  long long sel_stride = 0, part_stride = 0;
  uint32_t bytes = 0;
};
__device__ __forceinline__ void issue_prefetch(const L2Prefetch& f) {
  if (threadIdx.x == 0 && (int)blockIdx.x < f.n) {
    int i = blockIdx.x, h = f.sel[i / f.per_sel];
    prefetch_l2_bulk(f.base + (size_t)h * f.sel_stride + (size_t)(i % f.per_sel) * f.part_stride, f.bytes);
  }
}

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
// LayerNorm of the finished residual stream into the fp16 GEMV inputs (one block; single pass sum/sum-of-squares).
// The model's form picks the mode (engine.cu ln_after_*): pre-LN blocks normalise a copy (xn = LN(x) * g + b, x kept);
// post-LN blocks normalise x itself (post: x = LN(x) * g + b in place, then xn = xr = x); where no LayerNorm comes
// before the next GEMV (a post-LN model's first layer, a pre-LN model without the final one) g is null and xn = x.
struct LnOut {
  const float* g;  // null: xn = x
  const float* b;
  float eps;
  __half* xn;  // the next GEMV's input
  __half* xr;  // x (raw, for predictors)
  __half* xp;  // LN(x) without affine, for predictors (may be null)
  int post;    // x = LN(x) * g + b in place first (post-LN); the outputs are then of the new x
};

// Each thread holds up to V float4 of x in registers per batch, all requested at once (one L2 round trip per batch;
// one batch covers d <= 4 * V * blockDim, the common case, and then x is read once).
template <int V>
__device__ void block_layernorm(float* x, int d, const LnOut& o) {
  __shared__ float red2[2][32];
  const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5, nw = (blockDim.x + 31) >> 5;
  const int n4 = d >> 2, per_batch = V * blockDim.x;
  const bool one_batch = n4 <= per_batch;
  float4* x4 = reinterpret_cast<float4*>(x);
  float4 v[V];
  auto load = [&](int b0) {
#pragma unroll
    for (int u = 0; u < V; u++) {
      int i = b0 + u * blockDim.x + tid;
      if (i < n4) v[u] = __ldcg(x4 + i);
    }
  };
  // mean and 1 / std from the block's partial sums
  auto stats = [&](float s, float s2, float& mean, float& rstd) {
    s = warp_sum(s);
    s2 = warp_sum(s2);
    __syncthreads();
    if (lane == 0) { red2[0][w] = s; red2[1][w] = s2; }
    __syncthreads();
    s = lane < nw ? red2[0][lane] : 0.f;
    s2 = lane < nw ? red2[1][lane] : 0.f;
    s = warp_sum(s);
    s2 = warp_sum(s2);
    mean = s / d;
    rstd = rsqrtf(fmaxf(s2 / d - mean * mean, 0.f) + o.eps);
  };
  float s = 0.f, s2 = 0.f, mean, rstd;
  for (int b0 = 0; b0 < n4; b0 += per_batch) {
    load(b0);
#pragma unroll
    for (int u = 0; u < V; u++) {
      int i = b0 + u * blockDim.x + tid;
      if (i < n4) {
        s += v[u].x + v[u].y + v[u].z + v[u].w;
        s2 += v[u].x * v[u].x + v[u].y * v[u].y + v[u].z * v[u].z + v[u].w * v[u].w;
      }
    }
  }
  stats(s, s2, mean, rstd);
  if (o.post) {  // x = LN(x) * g + b in place (each thread rewrites its own elements), and the new x's statistics
    s = s2 = 0.f;
    for (int b0 = 0; b0 < n4; b0 += per_batch) {
      if (!one_batch) load(b0);
#pragma unroll
      for (int u = 0; u < V; u++) {
        int i = b0 + u * blockDim.x + tid;
        if (i >= n4) continue;
        float4 g = reinterpret_cast<const float4*>(o.g)[i], bb = reinterpret_cast<const float4*>(o.b)[i];
        float4 z;
        z.x = (v[u].x - mean) * rstd * g.x + bb.x;
        z.y = (v[u].y - mean) * rstd * g.y + bb.y;
        z.z = (v[u].z - mean) * rstd * g.z + bb.z;
        z.w = (v[u].w - mean) * rstd * g.w + bb.w;
        v[u] = z;
        __stcg(x4 + i, z);
        s += z.x + z.y + z.z + z.w;
        s2 += z.x * z.x + z.y * z.y + z.z * z.z + z.w * z.w;
      }
    }
    stats(s, s2, mean, rstd);
  }
  const bool affine = o.g && !o.post;
  for (int b0 = 0; b0 < n4; b0 += per_batch) {
    if (!one_batch) load(b0);  // post: this thread's own writes above
#pragma unroll
    for (int u = 0; u < V; u++) {
      int i = b0 + u * blockDim.x + tid;
      if (i >= n4) continue;
      float xv[4] = {v[u].x, v[u].y, v[u].z, v[u].w};
      float gv[4] = {1.f, 1.f, 1.f, 1.f}, bv[4] = {0.f, 0.f, 0.f, 0.f};
      if (affine) {
        float4 g = reinterpret_cast<const float4*>(o.g)[i], bb = reinterpret_cast<const float4*>(o.b)[i];
        gv[0] = g.x; gv[1] = g.y; gv[2] = g.z; gv[3] = g.w;
        bv[0] = bb.x; bv[1] = bb.y; bv[2] = bb.z; bv[3] = bb.w;
      }
      __align__(8) __half hn[4], hr[4], hp[4];
#pragma unroll
      for (int c = 0; c < 4; c++) {
        float z = (xv[c] - mean) * rstd;
        hr[c] = __float2half(xv[c]);
        hn[c] = affine ? __float2half(z * gv[c] + bv[c]) : hr[c];
        hp[c] = __float2half(z);
      }
      reinterpret_cast<uint2*>(o.xr)[i] = *reinterpret_cast<uint2*>(hr);
      reinterpret_cast<uint2*>(o.xn)[i] = *reinterpret_cast<uint2*>(hn);
      if (o.xp) reinterpret_cast<uint2*>(o.xp)[i] = *reinterpret_cast<uint2*>(hp);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Embedding: x = E[tokens[pos]] + P[pos + 2] (OPT's learned positions carry an offset of 2), then layer 0's GEMV
// inputs. E null: x already holds the embedding through project_in (k_embed_row, then a row GEMV). One block.
__global__ void __launch_bounds__(1024) k_embed(const __half* __restrict__ E, const __half* __restrict__ P,
                                                const int* __restrict__ tokens, const int* __restrict__ st, int d,
                                                float* __restrict__ x, LnOut ln) {
  pdl_wait();
  int pos = st[0];
  int tok = tokens[pos];
  for (int i = threadIdx.x; i < d; i += blockDim.x)
    x[i] = (E ? __half2float(E[(size_t)tok * d + i]) : x[i]) + __half2float(P[(size_t)(pos + 2) * d + i]);
  pdl_trigger();
  __threadfence_block();
  __syncthreads();
  block_layernorm<4>(x, d, ln);
}

// project_in's input: the token's embedding row E[tokens[pos]] (n = word_embed_proj_dim values). One block.
__global__ void k_embed_row(const __half* __restrict__ E, const int* __restrict__ tokens, const int* __restrict__ st,
                            int n, __half* __restrict__ out) {
  pdl_wait();
  const int tok = tokens[st[0]];
  for (int i = threadIdx.x; i < n; i += blockDim.x) out[i] = E[(size_t)tok * n + i];
  pdl_trigger();
}

// project_out's result as the LM head's fp16 input. One block.
__global__ void k_to_half(const float* __restrict__ y, int n, __half* __restrict__ out) {
  pdl_wait();
  for (int i = threadIdx.x; i < n; i += blockDim.x) out[i] = __float2half(y[i]);
  pdl_trigger();
}

// ---------------------------------------------------------------------------------------------------------------
// Row GEMV with a fused epilogue: y[j] = dot(W[row(j)], xh) + b[row(j)], xh fp16 (already normalised).
// `row(j)` gathers: identity, a neuron list (fc1), or the q/k/v rows of a head list (sparse attention).
// Warps stream whole weight rows with 16-byte loads, the matching 16 bytes of xh coming from L1 (every warp of an SM
// reads the same xh); WPR warps split one long row when there are few rows, LPR lanes take one short row when rows
// are short. No shared-memory prologue, no barrier before the first weight load.
enum { MAP_ID = 0, MAP_LIST = 1, MAP_QKV = 2, MAP_Q_KVALL = 3 };
enum { EPI_PLAIN = 0, EPI_RELU = 1, EPI_QKV = 2, EPI_ARGMAX = 3 };

struct RowsArgs {
  const __half* W;
  const float* b;   // may be null
  int K;            // input width (multiple of 8)
  int n_out;        // number of output rows
  const __half* x;  // [K] fp16 input
  int map;
  const int* sel;   // MAP_LIST: [n_out] rows; MAP_QKV / MAP_Q_KVALL: [kH] heads
  int kH, hd, d;    // MAP_QKV / EPI_QKV
  int wpr, lpr;     // warps per row (1,2,4,8), lanes per row (1..32, power of two; lpr < 32 only when wpr == 1)
  int prefetch;     // prefetch the first rows into L2 before waiting on the previous kernel
  L2Prefetch next;  // rows of the next kernel to request into L2
  float* y;         // PLAIN/RELU: [n_out]; QKV: q [d] (absolute head positions); ARGMAX: logits [n_out]
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
  // Fused predictor rows (pfuse.cuh; k_rows_tma<EPI_QKV> only): pn rows of pW after the n_out mapped rows; output
  // t = pW[j] . planes, or with the parameter-free LayerNorm (pnm[j] = 1) rstd * (that - mean * pc1[j]).
  const __half* pW;
  int pn, pbase;     // pbase: rows of W (virtual row ids >= pbase are predictor rows)
  float* pt;
  const float* pc1;
  const float* pnm;
  const unsigned* sel_flag;  // head list written by a fused predictor of this step: wait for it (null: none)
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

__device__ __forceinline__ float dot8h(const uint4& w, const uint4& x) {
  const __half2* hw = reinterpret_cast<const __half2*>(&w);
  const __half2* hx = reinterpret_cast<const __half2*>(&x);
  float acc = 0.f;
#pragma unroll
  for (int i = 0; i < 4; i++) {
    float2 a = __half22float2(hw[i]), b = __half22float2(hx[i]);
    acc = fmaf(a.x, b.x, acc);
    acc = fmaf(a.y, b.y, acc);
  }
  return acc;
}

// The row kernels' epilogues (k_rows here, k_rows_tma in fused.cuh): output j = mapped weight row `row`, value v.
template <int EPI>
__device__ __forceinline__ void row_epilogue(const RowsArgs& a, int j, int row, float v, int pos, unsigned long long& best) {
  if constexpr (EPI == EPI_PLAIN) {
    a.y[j] = v;
  } else if constexpr (EPI == EPI_RELU) {
    a.y[j] = fmaxf(v, 0.f);
  } else if constexpr (EPI == EPI_QKV) {
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
// LM head, one thread per block with the block's max: one atomic; the last block to finish turns it into the next
// token (prompt tokens stay forced), advances the position and resets the accumulator for the next step.
__device__ __forceinline__ void argmax_finish(const RowsArgs& a, unsigned long long m) {
  atomicMax(a.amax, m);
  __threadfence();
  if (atomicAdd(a.counter, 1u) == gridDim.x - 1) {
    __threadfence();
    unsigned long long m2 = atomicAdd(a.amax, 0ull);
    int tok = (int)(0xffffffffu - (uint32_t)(m2 & 0xffffffffu));
    int pos = a.st[0];
    if (pos + 1 < a.maxT && pos + 1 >= a.st[1]) a.tokens[pos + 1] = tok;
    a.st[0] = pos + 1;
    a.st[2] = a.st[2] + 1;  // the step serial: fused-predictor flags hold serial + 1 (pfuse.cuh)
    *a.amax = 0ull;
    *a.counter = 0u;
  }
}

template <int EPI>
__global__ void __launch_bounds__(WARPS * 32) k_rows(RowsArgs a) {
  __shared__ unsigned long long best_s[WARPS];
  __shared__ float part_s[WARPS];
  const int K = a.K, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int nvec = K >> 3;
  const int wpr = a.wpr, lpr = a.lpr;
  const int rows_per_warp = 32 / lpr;                 // > 1 only for short rows
  const int rows_per_block = (WARPS / wpr) * rows_per_warp;
  const int sub = lane / lpr, sl = lane % lpr;        // row slot within the warp, lane within the row
  const int grp = warp / wpr, wi = warp % wpr;        // row group within the block, warp within the group
  const int step = wpr * lpr;                         // vectors advanced per iteration by the row's lanes
  unsigned long long best = 0ull;
  const uint4* xv = reinterpret_cast<const uint4*>(a.x);

  // Prefetch this lane's part of its first row into L2 before waiting on the previous kernel: weights (and row
  // selections, produced on another stream and joined by a full dependency) never depend on it.
  {  // small GEMVs: the lane's whole first row; large ones: only its first round of loads (the rest would be evicted)
    int j = blockIdx.x * rows_per_block + grp * rows_per_warp + sub;
    if (j < a.n_out) {
      const uint4* wr = reinterpret_cast<const uint4*>(a.W + (size_t)rows_map(a, j) * K);
      const int lim = a.prefetch ? nvec : min(nvec, wi * lpr + sl + 8 * step);
      for (int c = wi * lpr + sl; c < lim; c += step) prefetch_l2(wr + c);
    }
  }
  issue_prefetch(a.next);
  pdl_wait();
  const int pos = EPI == EPI_QKV ? a.st[0] : 0;

  for (int base = blockIdx.x * rows_per_block; base < a.n_out; base += gridDim.x * rows_per_block) {
    int j = base + grp * rows_per_warp + sub;
    bool active = j < a.n_out;
    int row = active ? rows_map(a, j) : 0;
    float acc = 0.f;
    // The bias is requested together with the weights, not after the reduction.
    const float bias = active && a.b && wi == 0 && sl == 0 ? __ldg(a.b + row) : 0.f;
    if (active) {
      const uint4* wr = reinterpret_cast<const uint4*>(a.W + (size_t)row * K);
      int c = wi * lpr + sl;
      // 8 independent 16-byte weight loads in flight per lane; the input's 16 bytes come from L1 afterwards.
      for (; c < nvec; c += 8 * step) {
        uint4 wv[8];
#pragma unroll
        for (int u = 0; u < 8; u++)
          if (c + u * step < nvec) wv[u] = ld_stream(wr + c + u * step);
#pragma unroll
        for (int u = 0; u < 8; u++)
          if (c + u * step < nvec) acc += dot8h(wv[u], __ldg(xv + c + u * step));
      }
    }
    // Reduce over the lpr lanes of this row (xor stays inside aligned groups of lpr lanes).
    for (int o = lpr >> 1; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    if (wpr > 1) {
      if (lane == 0) part_s[warp] = acc;
      __syncthreads();
      if (wi == 0 && lane == 0)
        for (int w = 1; w < wpr; w++) acc += part_s[warp + w];
      __syncthreads();
    }
    if (active && wi == 0 && sl == 0) row_epilogue<EPI>(a, j, row, acc + bias, pos, best);
  }

  pdl_trigger();  // this block's weight streaming is done: let the next kernel launch and prefetch
  if constexpr (EPI == EPI_ARGMAX) {
    // Block max -> one atomic; the last block to finish turns it into the next token and advances the position.
    for (int o = 16; o > 0; o >>= 1) {
      unsigned long long other = __shfl_xor_sync(0xffffffffu, best, o);
      best = other > best ? other : best;
    }
    if (lane == 0) best_s[warp] = best;
    __syncthreads();
    if (tid == 0) {
      unsigned long long m = 0;
      for (int w = 0; w < WARPS; w++) m = best_s[w] > m ? best_s[w] : m;
      argmax_finish(a, m);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Column GEMV over a transposed weight with gathered rows, accumulated into the residual stream:
//   y[c] += sum_j a_j * WT[row(j)][c]   (+ bias[c], added once by the blocks of chunk 0)
// Rows: identity (dense), a neuron list (fc2: a_j = h[j], compact), or the hd rows of each listed head
// (out_proj: a_j = attn[row]). Each thread owns 8 consecutive output columns (one 16-byte vector per row);
// blockIdx.y takes a chunk of R selected rows; partial sums land with vector float4 atomics. The last block to
// finish (counter) writes the LayerNorm'd fp16 inputs of the next GEMV (LnOut), so no GEMV recomputes them.
struct ColsArgs {
  const __half* WT;
  int n_cols;       // d (multiple of 8)
  int n_rows;       // number of selected rows (compact)
  int map;          // MAP_ID, MAP_LIST (neurons), MAP_QKV (heads: blocks of hd rows)
  const int* sel;
  int hd;
  const float* in;  // MAP_ID/MAP_QKV: indexed by the weight row; MAP_LIST: compact [n_rows]
  const float* bias;
  float* y;
  int R;            // rows per chunk (multiple of 8, <= 256)
  unsigned* counter;  // null: no LayerNorm epilogue
  LnOut ln;
};

// Blocks span whole rows (up to 1024 threads x 8 columns), so a block streams R contiguous rows (10 KB each at
// d = 5120) rather than 2 KB slices of them; blockDim is chosen at launch (cols_threads).
constexpr int COLS_MAX_THREADS = 1024;
__host__ __device__ inline int cols_threads(int n_cols) {
  int nv = n_cols / 8, tiles = (nv + COLS_MAX_THREADS - 1) / COLS_MAX_THREADS;
  int t = (nv + tiles - 1) / tiles;
  return (t + 31) / 32 * 32;
}

__global__ void __launch_bounds__(COLS_MAX_THREADS) k_cols(ColsArgs a) {
  __shared__ int rows_s[256];
  __shared__ float in_s[256];
  __shared__ bool last;
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
  float bias[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  if (live && blockIdx.y == 0 && a.bias) {
#pragma unroll
    for (int i = 0; i < 8; i++) bias[i] = __ldg(a.bias + cv * 8 + i);
  }
  pdl_wait();
  for (int t = threadIdx.x; t < nr; t += blockDim.x) in_s[t] = a.map == MAP_LIST ? a.in[r0 + t] : a.in[rows_s[t]];
  __syncthreads();
  if (live) {
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
#pragma unroll
    for (int i = 0; i < 8; i++) acc[i] += bias[i];
    atomic_add8(a.y + cv * 8, acc);
  }
  pdl_trigger();  // (dependents still wait for our completion, LayerNorm epilogue included, before reading)
  if (!a.counter) return;
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) last = atomicAdd(a.counter, 1u) == gridDim.x * gridDim.y - 1;
  __syncthreads();
  if (!last) return;
  __threadfence();
  block_layernorm<4>(a.y, a.n_cols, a.ln);
  if (threadIdx.x == 0) *a.counter = 0u;
}

// ---------------------------------------------------------------------------------------------------------------
// Sparse MLP in one launch: for the selected neurons j (MLP_NPB per block, MLP_WPN warps each)
//   h_j = ReLU(dot(W1[j], xn) + b1[j]);   y[c] += sum_j h_j * W2T[j][c]  (+ b2 once, by block 0)
// A neuron's fc2 contribution needs only its own h_j, so fc1 and fc2 need no grid-wide barrier between them:
// the block's W2T rows are prefetched into L2 while its warps compute the h_j. Partial sums land with float4
// atomics; the last block writes the next LayerNorm's fp16 inputs, as k_cols does.
constexpr int MLP_NPB = 8, MLP_WPN = 2, MLP_THREADS = MLP_NPB * MLP_WPN * 32;

struct MlpArgs {
  const __half* W1;   // [ffn][d]
  const float* b1;
  const __half* W2T;  // [ffn][d]
  const float* b2;
  const __half* x;    // [d] fp16 LN'd input
  const int* sel;     // [kM]
  int kM, d;
  float* y;           // residual stream [d]
  unsigned* counter;
  LnOut ln;
  L2Prefetch next;
};

__global__ void __launch_bounds__(MLP_THREADS) k_mlp_sparse(MlpArgs a) {
  __shared__ float h_s[MLP_NPB];
  __shared__ int idx_s[MLP_NPB];
  __shared__ float part_s[MLP_NPB * MLP_WPN];
  __shared__ bool last;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int nb = min(MLP_NPB, a.kM - (int)blockIdx.x * MLP_NPB);
  const int nvec = a.d >> 3;
  if (tid < MLP_NPB) idx_s[tid] = tid < nb ? a.sel[blockIdx.x * MLP_NPB + tid] : 0;
  issue_prefetch(a.next);
  __syncthreads();
  // Phase 2's rows into L2 now (they do not depend on h).
  for (int r = 0; r < nb; r++) {
    const uint4* w2 = reinterpret_cast<const uint4*>(a.W2T + (size_t)idx_s[r] * a.d);
    for (int c = tid; c < nvec; c += MLP_THREADS) prefetch_l2(w2 + c);
  }
  pdl_wait();
  // Phase 1: neuron n = warp / MLP_WPN, MLP_WPN warps split its row.
  {
    const int n = warp / MLP_WPN, wi = warp % MLP_WPN, step = MLP_WPN * 32;
    float acc = 0.f;
    if (n < nb) {
      const uint4* wr = reinterpret_cast<const uint4*>(a.W1 + (size_t)idx_s[n] * a.d);
      const uint4* xv = reinterpret_cast<const uint4*>(a.x);
      for (int c = wi * 32 + lane; c < nvec; c += 8 * step) {
        uint4 wv[8];
#pragma unroll
        for (int u = 0; u < 8; u++)
          if (c + u * step < nvec) wv[u] = ld_stream(wr + c + u * step);
#pragma unroll
        for (int u = 0; u < 8; u++)
          if (c + u * step < nvec) acc += dot8h(wv[u], __ldg(xv + c + u * step));
      }
    }
    acc = warp_sum(acc);
    if (lane == 0) part_s[warp] = acc;
    __syncthreads();
    if (tid < MLP_NPB) {
      float v = 0.f;
      if (tid < nb) {
        for (int w = 0; w < MLP_WPN; w++) v += part_s[tid * MLP_WPN + w];
        v = fmaxf(v + __ldg(a.b1 + idx_s[tid]), 0.f);
      }
      h_s[tid] = v;
    }
    __syncthreads();
  }
  // Phase 2: each thread owns 8-column vectors, sums the block's rows, one float4 pair of atomics per vector.
  for (int cv = tid; cv < nvec; cv += MLP_THREADS) {
    uint4 w[MLP_NPB];
#pragma unroll
    for (int r = 0; r < MLP_NPB; r++)
      if (r < nb) w[r] = ld_stream(reinterpret_cast<const uint4*>(a.W2T + (size_t)idx_s[r] * a.d) + cv);
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    if (blockIdx.x == 0 && a.b2) {
#pragma unroll
      for (int i = 0; i < 8; i++) acc[i] = __ldg(a.b2 + cv * 8 + i);
    }
#pragma unroll
    for (int r = 0; r < MLP_NPB; r++) {
      if (r >= nb) continue;
      const __half2* hh = reinterpret_cast<const __half2*>(&w[r]);
      float s = h_s[r];
#pragma unroll
      for (int i = 0; i < 4; i++) {
        float2 f = __half22float2(hh[i]);
        acc[2 * i] = fmaf(f.x, s, acc[2 * i]);
        acc[2 * i + 1] = fmaf(f.y, s, acc[2 * i + 1]);
      }
    }
    atomic_add8(a.y + cv * 8, acc);
  }
  pdl_trigger();
  __threadfence();
  __syncthreads();
  if (tid == 0) last = atomicAdd(a.counter, 1u) == gridDim.x - 1;
  __syncthreads();
  if (!last) return;
  __threadfence();
  block_layernorm<3>(a.y, a.d, a.ln);
  if (tid == 0) *a.counter = 0u;
}

// ---------------------------------------------------------------------------------------------------------------
// Attention decode for one head per block over the K/V cache, positions 0..pos (flash-decoding inside a block:
// each warp runs an online softmax over its own positions, K and V rows of a chunk requested together, so a
// head's history costs about one memory round trip; one barrier, then the warps' partial states are merged).
// KV policy for sparse attention, policy "selected" (default): a head skipped at step t computes no K/V at t; its
// slot stays marked invalid (valid[h][t] = 0) and is masked out whenever that head is selected later. Policy "all"
// (MAP_Q_KVALL, what runtime/sparse does): K/V rows of every head are projected each step, so every slot is valid.
// Dense steps write every head.
constexpr int ATT_THREADS = 1024;
constexpr int ATT_U = 4;  // keys per lane per round

// One head's attention over positions 0..T-1 with the first NW warps of the block: each warp an online softmax over
// its key slots, the NW partial states merged through `sm` (>= NW * (32 / (HD / 8)) * (HD + 2) floats); o[i] is
// written to out[i] (global or shared memory). `bar` is a barrier over those NW warps. Shared by k_attention and
// the streamed path's k_attn_out (fused.cuh).
__host__ __device__ constexpr int att_state_floats(int hd, int nw) { return nw * (32 / (hd / 8)) * (hd + 2); }

template <int HD, int NW, class Bar>
__device__ __forceinline__ void head_attention(const float* q, const __half* K, const __half* V, const uint8_t* ok,
                                               int T, float* sm, float* out, Bar bar) {
  constexpr int LPK = HD / 8;        // lanes per key (16 bytes each)
  constexpr int KPW = 32 / LPK;      // key slots per warp
  constexpr int NSLOT = NW * KPW;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int sl = lane % LPK, kw = lane / LPK, slot = warp * KPW + kw;
  float qv[8];
  {
    const float4 q0 = __ldcg(reinterpret_cast<const float4*>(q + sl * 8)), q1 = __ldcg(reinterpret_cast<const float4*>(q + sl * 8 + 4));
    qv[0] = q0.x; qv[1] = q0.y; qv[2] = q0.z; qv[3] = q0.w; qv[4] = q1.x; qv[5] = q1.y; qv[6] = q1.z; qv[7] = q1.w;
  }
  float m = -1e30f, l = 0.f;
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  // The loop bound is per warp (all lanes iterate together: the shuffles below need the whole warp).
  for (int w0 = warp * KPW; w0 < T; w0 += NSLOT * ATT_U) {
    const int t0 = w0 + kw;
    uint4 kv[ATT_U], vv[ATT_U];
    bool okv[ATT_U];
#pragma unroll
    for (int u = 0; u < ATT_U; u++) {  // K, V rows and valid flags of the round requested together: one round trip
      int t = t0 + u * NSLOT;          // (the flags loaded one key at a time cost ATT_U more round trips, ~3 us)
      okv[u] = false;
      if (t < T) {
        kv[u] = __ldcg(reinterpret_cast<const uint4*>(K + (size_t)t * HD + sl * 8));
        vv[u] = __ldcg(reinterpret_cast<const uint4*>(V + (size_t)t * HD + sl * 8));
        okv[u] = __ldcg(ok + t) != 0;
      }
    }
#pragma unroll
    for (int u = 0; u < ATT_U; u++) {
      int t = t0 + u * NSLOT;
      float s = t < T ? dot8(kv[u], qv) : 0.f;
      for (int o = LPK >> 1; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
      if (okv[u]) {
        float mn = fmaxf(m, s);
        float corr = __expf(m - mn), p = __expf(s - mn);
        l = l * corr + p;
        const __half2* hv = reinterpret_cast<const __half2*>(&vv[u]);
#pragma unroll
        for (int i = 0; i < 4; i++) {
          float2 f = __half22float2(hv[i]);
          acc[2 * i] = fmaf(p, f.x, acc[2 * i] * corr);
          acc[2 * i + 1] = fmaf(p, f.y, acc[2 * i + 1] * corr);
        }
        m = mn;
      }
    }
  }
  float* st_s = sm + slot * (HD + 2);
#pragma unroll
  for (int i = 0; i < 8; i++) st_s[sl * 8 + i] = acc[i];
  if (sl == 0) { st_s[HD] = m; st_s[HD + 1] = l; }
  bar();
  // Merge the NSLOT partial states: SPLIT threads per output dimension, then a shuffle reduction.
  constexpr int SPLIT = NW * 32 / HD;
  static_assert(SPLIT >= 1 && (SPLIT & (SPLIT - 1)) == 0 && SPLIT * HD == NW * 32, "merge: NW * 32 / HD a power of two");
  const int i = tid / SPLIT, pid = tid % SPLIT;
  float M = -1e30f;
  for (int s2 = pid; s2 < NSLOT; s2 += SPLIT) M = fmaxf(M, sm[s2 * (HD + 2) + HD]);
  for (int o = SPLIT >> 1; o > 0; o >>= 1) M = fmaxf(M, __shfl_xor_sync(0xffffffffu, M, o));
  float num = 0.f, den = 0.f;
  for (int s2 = pid; s2 < NSLOT; s2 += SPLIT) {
    const float* p = sm + s2 * (HD + 2);
    float c = __expf(p[HD] - M);
    num += p[i] * c;
    den += p[HD + 1] * c;
  }
  for (int o = SPLIT >> 1; o > 0; o >>= 1) {
    num += __shfl_xor_sync(0xffffffffu, num, o);
    den += __shfl_xor_sync(0xffffffffu, den, o);
  }
  if (pid == 0) out[i] = num / den;
}

template <int HD>
__global__ void __launch_bounds__(ATT_THREADS) k_attention(const float* __restrict__ q, const __half* __restrict__ kc,
                                                   const __half* __restrict__ vc, const uint8_t* __restrict__ valid,
                                                   const int* __restrict__ sel, const int* __restrict__ st, int maxT,
                                                   float* __restrict__ out) {
  extern __shared__ float sm[];
  // Before waiting on the QKV kernel: the head list (joined by a full dependency), the position (changed only by the
  // previous step's LM head) and an L2 prefetch of this lane's K/V rows.
  const int h = sel ? sel[blockIdx.x] : blockIdx.x;
  const int T = st[0] + 1;
  constexpr int LPK = HD / 8, KPW = 32 / LPK, NSLOT = (ATT_THREADS / 32) * KPW;
  const int lane = threadIdx.x & 31, slot = (threadIdx.x >> 5) * KPW + lane / LPK, sl = lane % LPK;
  const __half* K = kc + (size_t)h * maxT * HD;
  const __half* V = vc + (size_t)h * maxT * HD;
  for (int t = slot; t < T; t += NSLOT) {
    prefetch_l2(K + (size_t)t * HD + sl * 8);
    prefetch_l2(V + (size_t)t * HD + sl * 8);
  }
  pdl_wait();
  pdl_trigger();
  head_attention<HD, ATT_THREADS / 32>(q + h * HD, K, V, valid + (size_t)h * maxT, T, sm, out + h * HD,
                                       [] { __syncthreads(); });
}

// ---------------------------------------------------------------------------------------------------------------
// Predictor second layer + exact top-k, all on the GPU (sigmoid is monotone, so top-k of the logits = top-k of
// DejaVu's sigmoid outputs). Two launches:
//   k_pred_scores: scores[j] = dot(W2[j], t) (t = W1 x, rank r). For n > TOPK_THREADS every block also adds its
//     scores to a global histogram of the top 12 bits of an order-preserving key; the last block to finish finds
//     the bin holding the k-th largest score (state: bin, how many to take from it) and clears the histogram.
//     For n <= TOPK_THREADS the last block selects directly (rank by counting) and no second launch is needed.
//   k_topk_select: one thread per score: keys above the bin are selected at once (appended with warp-aggregated
//     atomics), keys in the bin become candidates (a few hundred for k = 5% of 20480); the last block finishes the
//     radix select on the candidates' low 20 bits and appends the rest. Exactly k indices, in no particular order;
//     equal scores at the threshold are taken in arrival order.
constexpr int TOPK_THREADS = 512;
constexpr int TOPK_BINS = 4096;   // top 12 bits of the key
constexpr int TOPK_CAND = 4096;   // candidates held for the last block; more (degenerate scores) -> slower exact path
constexpr int TOPK_CAND_SM = 1024;  // of those, copied to shared memory (more: read from L2)
constexpr int TOPK_HG = 4;          // shared histogram copies (warp w uses w % TOPK_HG)
constexpr int TOPK_UNROLL = 8;      // k_pred_scores<U>: U = 1, 2, 4 or this
// Shared memory of k_topk_select stays ~9 KB: with PDL the streamed kernels hold ~200 KB of an SM while they wait,
// and the predictor kernels must fit beside them.

struct TopkState {
  unsigned cnt_scores, cnt_select, n_sel, n_cand, bin, rem, taken_eq, pad;
  unsigned hist[TOPK_BINS];
  uint32_t cand_key[TOPK_CAND];
  int cand_idx[TOPK_CAND];
};

struct TopkArgs {
  const __half* W2;  // [n][r]
  const float* t;    // [r]
  int n, r, k;
  int lpr;           // lanes per row: power of two >= min(32, r/8)
  float* scores;     // [n]
  int* sel;          // [k]
  TopkState* s;      // zero-initialised once; every launch pair leaves it ready for the next
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
// i < n. Narrows prefix to the threshold key; *s_rem (how many still to take) ends as the number of keys equal to
// the threshold to take.
template <class Get>
__device__ void radix_passes(Get get, int n, const int* shifts, int nshift, uint32_t& prefix, uint32_t& mask,
                             int (*hist)[256], int* s_digit, int* s_rem) {
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  for (int si = 0; si < nshift; si++) {
    const int shift = shifts[si];
    for (int i = tid; i < TOPK_HG * 256; i += blockDim.x) hist[i >> 8][i & 255] = 0;
    __syncthreads();
    for (int i = tid; i < n; i += blockDim.x) {
      uint32_t kk = get(i);
      if ((kk & mask) == prefix) atomicAdd(&hist[warp % TOPK_HG][(kk >> shift) & 255], 1);
    }
    __syncthreads();
    if (tid < 256) {
      int s = 0;
      for (int w = 0; w < TOPK_HG; w++) s += hist[w][tid];
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

// Append `take` (per thread) to out[] through one atomic per warp; returns nothing, writes idx where take.
__device__ __forceinline__ void warp_append(bool take, int idx, unsigned* counter, int* out) {
  const int lane = threadIdx.x & 31;
  unsigned m = __ballot_sync(0xffffffffu, take);
  if (!m) return;
  unsigned base = 0;
  int leader = __ffs(m) - 1;
  if (lane == leader) base = atomicAdd(counter, (unsigned)__popc(m));
  base = __shfl_sync(0xffffffffu, base, leader);
  if (take) out[base + __popc(m & ((1u << lane) - 1))] = idx;
}

// U: rows per lane whose first weight vector is loaded before any is used (the loop was one load per row, each
// waited for before the next was issued).
template <int U>
__global__ void __launch_bounds__(TOPK_THREADS, 2) k_pred_scores(TopkArgs a) {
  __shared__ float ts[1024];
  __shared__ uint32_t keys[TOPK_THREADS];
  __shared__ int tmp[33];
  __shared__ bool last;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, nwarps = blockDim.x >> 5;
  const bool small = a.n <= TOPK_THREADS;
  TopkState* S = a.s;
  pdl_wait();  // t comes from the kernel before (a no-op unless launched with PDL)
  for (int i = tid; i < a.r; i += blockDim.x) ts[i] = a.t[i];
  __syncthreads();
  const int lpr = a.lpr, rpw = 32 / lpr, sub = lane / lpr, sl = lane % lpr, nvec = a.r >> 3;
  const int stride = gridDim.x * nwarps * rpw;
  for (int base = (blockIdx.x * nwarps + warp) * rpw; base < a.n; base += U * stride) {
    uint4 w[U];
#pragma unroll
    for (int u = 0; u < U; u++) {
      const int j = base + u * stride + sub;
      if (j < a.n && sl < nvec) w[u] = ld_stream(reinterpret_cast<const uint4*>(a.W2 + (size_t)j * a.r) + sl);
    }
#pragma unroll
    for (int u = 0; u < U; u++) {
      const int j = base + u * stride + sub;
      float acc = 0.f;
      if (j < a.n && sl < nvec) {
        const uint4* wr = reinterpret_cast<const uint4*>(a.W2 + (size_t)j * a.r);
        acc = dot8(w[u], ts + 8 * sl);
        for (int c = sl + lpr; c < nvec; c += lpr) acc += dot8(ld_stream(wr + c), ts + 8 * c);
      }
      for (int o = lpr >> 1; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
      if (j < a.n && sl == 0) {
        a.scores[j] = acc;
        if (!small) atomicAdd(&S->hist[f2key(acc) >> 20], 1u);
      }
    }
  }
  pdl_trigger();
  __threadfence();
  __syncthreads();
  if (tid == 0) last = atomicAdd(&S->cnt_scores, 1u) == gridDim.x - 1;
  __syncthreads();
  if (!last) return;
  __threadfence();
  const int n = a.n, k = a.k;
  if (small) {
    // Rank by counting: rank(i) = #{j : key_j > key_i or (key_j == key_i and j < i)}; keep rank < k (index order).
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
    if (tid == 0) S->cnt_scores = 0u;
    return;
  }
  // Threshold bin: thread t owns bins 4095-8t .. 4088-8t (descending); a block scan finds where k is reached.
  int c[8], tot8 = 0;
#pragma unroll
  for (int i = 0; i < 8; i++) { c[i] = (int)__ldcg(&S->hist[TOPK_BINS - 1 - 8 * tid - i]); tot8 += c[i]; }
  int total;
  int above = block_excl_scan(tot8, tmp, &total);
  if (above < k && above + tot8 >= k) {
#pragma unroll
    for (int i = 0; i < 8; i++) {
      if (above < k && above + c[i] >= k) { S->bin = TOPK_BINS - 1 - 8 * tid - i; S->rem = k - above; }
      above += c[i];
    }
  }
  __syncthreads();
  for (int i = tid; i < TOPK_BINS; i += blockDim.x) S->hist[i] = 0u;
  if (tid == 0) { S->cnt_scores = 0u; S->n_sel = 0u; S->n_cand = 0u; S->taken_eq = 0u; }
}

__global__ void __launch_bounds__(TOPK_THREADS) k_topk_select(TopkArgs a) {
  __shared__ int hist[TOPK_HG][256];
  __shared__ uint32_t ck[TOPK_CAND_SM];
  __shared__ int s_digit, s_rem;
  __shared__ bool last;
  TopkState* S = a.s;
  const int tid = threadIdx.x, i = blockIdx.x * blockDim.x + tid;
  pdl_wait();  // the scores and the bin come from k_pred_scores (a no-op unless launched with PDL)
  const uint32_t bin = __ldcg(&S->bin);
  uint32_t key = i < a.n ? f2key(__ldcg(a.scores + i)) : 0u;
  const bool in_bin = i < a.n && (key >> 20) == bin;
  warp_append(i < a.n && (key >> 20) > bin, i, &S->n_sel, a.sel);
  {
    // Candidates: keys and indices (the key array doubles as the append target through a cast-free second call).
    const int lane = tid & 31;
    unsigned m = __ballot_sync(0xffffffffu, in_bin);
    if (m) {
      int leader = __ffs(m) - 1;
      unsigned base = 0;
      if (lane == leader) base = atomicAdd(&S->n_cand, (unsigned)__popc(m));
      base = __shfl_sync(0xffffffffu, base, leader);
      unsigned slot = base + __popc(m & ((1u << lane) - 1));
      if (in_bin && slot < TOPK_CAND) { S->cand_key[slot] = key; S->cand_idx[slot] = i; }
    }
  }
  __threadfence();
  __syncthreads();
  if (tid == 0) last = atomicAdd(&S->cnt_select, 1u) == gridDim.x - 1;
  __syncthreads();
  if (!last) return;
  __threadfence();
  const int nc = (int)__ldcg(&S->n_cand);
  uint32_t prefix = bin << 20, mask = 0xfff00000u;
  if (tid == 0) s_rem = (int)__ldcg(&S->rem);
  const int shifts[3] = {12, 4, 0};
  if (nc <= TOPK_CAND) {
    const bool sm = nc <= TOPK_CAND_SM;
    if (sm)
      for (int j = tid; j < nc; j += blockDim.x) ck[j] = __ldcg(&S->cand_key[j]);
    __syncthreads();
    auto key = [&](int j) { return sm ? ck[j] : __ldcg(&S->cand_key[j]); };
    radix_passes(key, nc, shifts, 3, prefix, mask, hist, &s_digit, &s_rem);
    const int take_eq = s_rem;
    for (int j0 = 0; j0 < nc; j0 += blockDim.x) {
      int j = j0 + tid;
      bool take = false;
      if (j < nc) {
        uint32_t kk = key(j);
        take = kk > prefix || (kk == prefix && (int)atomicAdd(&S->taken_eq, 1u) < take_eq);
      }
      warp_append(take, j < nc ? __ldcg(&S->cand_idx[j]) : 0, &S->n_sel, a.sel);
    }
  } else {
    // Degenerate scores (thousands in one bin): the same passes straight over all keys of the bin, from L2.
    __syncthreads();
    auto get = [&](int j) { uint32_t kk = f2key(__ldcg(a.scores + j)); return (kk >> 20) == bin ? kk : 0u; };
    radix_passes(get, a.n, shifts, 3, prefix, mask, hist, &s_digit, &s_rem);
    const int take_eq = s_rem;
    for (int j0 = 0; j0 < a.n; j0 += blockDim.x) {
      int j = j0 + tid;
      bool take = false;
      if (j < a.n) {
        uint32_t kk = get(j);
        take = (kk >> 20) == bin && (kk > prefix || (kk == prefix && (int)atomicAdd(&S->taken_eq, 1u) < take_eq));
      }
      warp_append(take, j, &S->n_sel, a.sel);
    }
  }
  __syncthreads();
  if (tid == 0) { S->cnt_select = 0u; S->n_sel = 0u; S->n_cand = 0u; S->taken_eq = 0u; }
}

// ---------------------------------------------------------------------------------------------------------------
// The oracle's selections (engine.cu dj_oracle_nll; runtime/sparse/model.ts mode 'oracle'): the true top-k of a
// layer's heads by the L2 norm of their attention output, and of its neurons by their ReLU activation.

// norms[h] = ||att[h*hd .. h*hd + hd)||, one warp per head.
__global__ void k_head_norms(const float* __restrict__ att, int H, int hd, float* __restrict__ norms) {
  const int h = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5), lane = threadIdx.x & 31;
  if (h >= H) return;
  float s = 0.f;
  for (int i = lane; i < hd; i += 32) { const float v = att[h * hd + i]; s = fmaf(v, v, s); }
  s = warp_sum(s);
  if (lane == 0) norms[h] = sqrtf(s);
}

// Exact top-k of v[0..n) in one block with runtime/sparse/kernels.ts topK's rule, so the GPU oracle picks what the
// CPU oracle picks: the k largest, ties at the threshold to the lower index, NaN lowest (as -inf), -0 equal to +0.
// sel[0..k) in ascending index order; vals (optional) the picked values compacted, vals[j] = v[sel[j]] (the column
// GEMV's input over a neuron list); flags (optional) flags[i * flag_stride + st[0]] = picked (KV policy selected:
// only the kept heads' slots at this position stay valid). The threshold by radix passes over the keys (from L2),
// then one ordered pass with block scans.
constexpr int TOPK_BLOCK_THREADS = 1024;
struct TopkBlockArgs {
  const float* v;
  int n, k;
  int* sel;
  float* vals;
  uint8_t* flags;
  int flag_stride;
  const int* st;
};
__device__ __forceinline__ uint32_t oracle_key(float f) {
  if (f != f) f = NEG_INF;
  return f2key(f == 0.f ? 0.f : f);
}
__global__ void __launch_bounds__(TOPK_BLOCK_THREADS) k_topk_block(TopkBlockArgs a) {
  __shared__ int hist[TOPK_HG][256];
  __shared__ int tmp[33];
  __shared__ int s_digit, s_rem;
  const int tid = threadIdx.x;
  if (tid == 0) s_rem = a.k;
  uint32_t thr = 0, mask = 0;
  const int shifts[4] = {24, 16, 8, 0};
  auto key = [&](int i) { return oracle_key(__ldcg(a.v + i)); };
  radix_passes(key, a.n, shifts, 4, thr, mask, hist, &s_digit, &s_rem);
  const int take_eq = s_rem;  // keys equal to the threshold to take, lowest index first
  const int pos = a.flags ? a.st[0] : 0;
  int base = 0, eq_base = 0;
  for (int i0 = 0; i0 < a.n; i0 += blockDim.x) {
    const int i = i0 + tid;
    const uint32_t kk = i < a.n ? key(i) : 0u;
    const bool eq = i < a.n && kk == thr;
    int eq_tot, tot;
    const int eq_before = block_excl_scan(eq, tmp, &eq_tot);
    const bool take = i < a.n && (kk > thr || (eq && eq_base + eq_before < take_eq));
    const int at = block_excl_scan(take, tmp, &tot);
    if (take) {
      a.sel[base + at] = i;
      if (a.vals) a.vals[base + at] = a.v[i];
    }
    if (a.flags && i < a.n) a.flags[(size_t)i * a.flag_stride + pos] = take;
    base += tot;
    eq_base += eq_tot;
  }
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
