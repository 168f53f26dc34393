// Prefill kernels: whole sequences at once, the GEMMs on tensor cores through cuBLAS (blas.cuh), these kernels for
// everything between them. Rows are tokens of one or more sequences packed back to back (row r of sequence s sits at
// position r - start(s)); attention stays inside each sequence. Activations: the residual stream x fp32 [T][d], GEMM
// inputs fp16, GEMM outputs fp32. Every OPT variant: pre- and post-LayerNorm blocks, project_in / project_out,
// with or without the final LayerNorm. CPU references: check.cu (test_prefill), against the decode engine and
// Hugging Face's logits in check-mini.ts.
#pragma once
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <stdint.h>
#include "kernels.cuh"

namespace dj {

constexpr int PF_THREADS = 256;

// Block-wide sum of one float per thread (PF_THREADS threads); every thread gets the total.
__device__ __forceinline__ float pf_block_sum(float v, float* red) {
  for (int o = 16; o; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int w = threadIdx.x >> 5, lane = threadIdx.x & 31;
  __syncthreads();  // red may still be read by a previous call
  if (lane == 0) red[w] = v;
  __syncthreads();
  float t = 0.f;
  for (int i = 0; i < PF_THREADS / 32; i++) t += red[i];
  return t;
}

// LayerNorm statistics of one row of d floats: two passes (mean, then centred variance) as torch does, the row
// re-read from L1/L2.
__device__ __forceinline__ void pf_row_stats(const float* __restrict__ v, int d, float eps, float* red, float* mean,
                                             float* rstd) {
  float s = 0.f;
  for (int i = threadIdx.x; i < d; i += PF_THREADS) s += v[i];
  const float m = pf_block_sum(s, red) / d;
  float q = 0.f;
  for (int i = threadIdx.x; i < d; i += PF_THREADS) { const float c = v[i] - m; q += c * c; }
  *mean = m;
  *rstd = rsqrtf(pf_block_sum(q, red) / d + eps);
}

// One row of d floats (in v, global) -> out16 = LayerNorm(v; g, b) or, with g == nullptr, v itself.
__device__ __forceinline__ void pf_row_out(const float* __restrict__ v, int d, const float* __restrict__ g,
                                           const float* __restrict__ b, float eps, __half* __restrict__ out16,
                                           float* red) {
  if (!g) {
    for (int i = threadIdx.x; i < d; i += PF_THREADS) out16[i] = __float2half(v[i]);
    return;
  }
  float mean, rstd;
  pf_row_stats(v, d, eps, red, &mean, &rstd);
  for (int i = threadIdx.x; i < d; i += PF_THREADS) out16[i] = __float2half((v[i] - mean) * rstd * g[i] + b[i]);
}

// Embedding rows: e16[r] = E[tok[r]] (width e); with add_pos (no project_in) x[r] = E[tok] + P[pos + 2] directly and
// out16 = LN(x) / x. Positions restart at 0 for each sequence (pos[r] given per row).
__global__ void __launch_bounds__(PF_THREADS) k_pf_embed(const __half* __restrict__ E, const __half* __restrict__ P,
                                                         const int* __restrict__ tok, const int* __restrict__ pos,
                                                         int e, int d, bool add_pos, __half* __restrict__ e16,
                                                         float* __restrict__ x, const float* __restrict__ g,
                                                         const float* __restrict__ b, float eps,
                                                         __half* __restrict__ out16) {
  __shared__ float red[PF_THREADS / 32];
  const size_t r = blockIdx.x;
  const __half* er = E + (size_t)tok[r] * e;
  if (!add_pos) {
    for (int i = threadIdx.x; i < e; i += PF_THREADS) e16[r * e + i] = er[i];
    return;
  }
  const __half* pr = P + (size_t)(pos[r] + 2) * d;
  float* xr = x + r * d;
  for (int i = threadIdx.x; i < d; i += PF_THREADS) xr[i] = __half2float(er[i]) + __half2float(pr[i]);
  __syncthreads();
  pf_row_out(xr, d, g, b, eps, out16 + r * d, red);
}

// After project_in: x[r] = y[r] + P[pos + 2]; out16 = LN(x) / x.
__global__ void __launch_bounds__(PF_THREADS) k_pf_add_pos(const float* __restrict__ y, const __half* __restrict__ P,
                                                           const int* __restrict__ pos, int d, float* __restrict__ x,
                                                           const float* __restrict__ g, const float* __restrict__ b,
                                                           float eps, __half* __restrict__ out16) {
  __shared__ float red[PF_THREADS / 32];
  const size_t r = blockIdx.x;
  const __half* pr = P + (size_t)(pos[r] + 2) * d;
  float* xr = x + r * d;
  for (int i = threadIdx.x; i < d; i += PF_THREADS) xr[i] = y[r * d + i] + __half2float(pr[i]);
  __syncthreads();
  pf_row_out(xr, d, g, b, eps, out16 + r * d, red);
}

// Block output into the residual stream: v = x + y + bias; post-LN blocks normalise it (x = LN(v; pg, pb)); then
// out16 = the next GEMM's input: LN(x; og, ob), or x itself when og == nullptr.
__global__ void __launch_bounds__(PF_THREADS) k_pf_residual(float* __restrict__ x, const float* __restrict__ y,
                                                            const float* __restrict__ bias, int d,
                                                            const float* __restrict__ pg, const float* __restrict__ pb,
                                                            const float* __restrict__ og, const float* __restrict__ ob,
                                                            float eps, __half* __restrict__ out16) {
  __shared__ float red[PF_THREADS / 32];
  const size_t r = blockIdx.x;
  float* xr = x + r * d;
  for (int i = threadIdx.x; i < d; i += PF_THREADS) xr[i] += y[r * d + i] + bias[i];
  __syncthreads();
  if (pg) {  // in place: each thread rewrites only its own elements, after both reductions
    float mean, rstd;
    pf_row_stats(xr, d, eps, red, &mean, &rstd);
    for (int i = threadIdx.x; i < d; i += PF_THREADS) xr[i] = (xr[i] - mean) * rstd * pg[i] + pb[i];
    __syncthreads();
  }
  pf_row_out(xr, d, og, ob, eps, out16 + r * d, red);
}

// QKV epilogue: y [T][3d] fp32 (q | k | v) + bias -> q16 (scaled by 1/sqrt(hd)), k16, v16 [T][d]; with kc != nullptr
// (one sequence) also the decode cache kc/vc [H][maxT][hd] and its validity at each row's position.
__global__ void k_pf_qkv(const float* __restrict__ y, const float* __restrict__ bias, int T, int d, int hd,
                         float q_scale, __half* __restrict__ q16, __half* __restrict__ k16, __half* __restrict__ v16,
                         __half* __restrict__ kc, __half* __restrict__ vc, uint8_t* __restrict__ valid, int maxT) {
  const size_t n = (size_t)T * d;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    const size_t r = i / d;
    const int c = (int)(i % d);
    const float* yr = y + r * 3 * d;
    const __half q = __float2half((yr[c] + bias[c]) * q_scale);
    const __half k = __float2half(yr[d + c] + bias[d + c]);
    const __half v = __float2half(yr[2 * d + c] + bias[2 * d + c]);
    q16[i] = q; k16[i] = k; v16[i] = v;
    if (kc) {
      const int h = c / hd, j = c % hd;
      const size_t o = ((size_t)h * maxT + r) * hd + j;
      kc[o] = k; vc[o] = v;
      if (j == 0) valid[(size_t)h * maxT + r] = 1;
    }
  }
}

// Causal softmax of scores S [H][n][n] (fp32, already scaled) -> P fp16, row i keeping columns 0..i (zeros after).
// One block per (head, row).
__global__ void __launch_bounds__(PF_THREADS) k_pf_softmax(const float* __restrict__ S, int n, __half* __restrict__ P) {
  __shared__ float red[PF_THREADS / 32];
  const size_t row = blockIdx.x;  // h * n + i
  const int i = (int)(row % n);
  const float* s = S + row * n;
  __half* p = P + row * n;
  float m = NEG_INF;
  for (int j = threadIdx.x; j <= i; j += PF_THREADS) m = fmaxf(m, s[j]);
  for (int o = 16; o; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
  __shared__ float mx[PF_THREADS / 32];
  if ((threadIdx.x & 31) == 0) mx[threadIdx.x >> 5] = m;
  __syncthreads();
  m = mx[0];
  for (int w = 1; w < PF_THREADS / 32; w++) m = fmaxf(m, mx[w]);
  float z = 0.f;
  for (int j = threadIdx.x; j <= i; j += PF_THREADS) z += __expf(s[j] - m);
  const float inv = 1.f / pf_block_sum(z, red);
  for (int j = threadIdx.x; j < n; j += PF_THREADS) p[j] = __float2half(j <= i ? __expf(s[j] - m) * inv : 0.f);
}

// fc1 epilogue: h16 = ReLU(y + b1), [T][ffn].
__global__ void k_pf_bias_relu(const float* __restrict__ y, const float* __restrict__ b, int T, int n,
                               __half* __restrict__ h16) {
  const size_t tot = (size_t)T * n;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < tot; i += (size_t)gridDim.x * blockDim.x)
    h16[i] = __float2half(fmaxf(y[i] + b[i % n], 0.f));
}

// fp32 -> fp16 (project_out's output feeds the LM head).
__global__ void k_pf_to_half(const float* __restrict__ y, size_t n, __half* __restrict__ out) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    out[i] = __float2half(y[i]);
}

// logsumexp of one row of V floats (PF_THREADS threads; every thread gets it).
__device__ __forceinline__ float pf_row_lse(const float* __restrict__ l, int V, float* red, float* mx) {
  float m = NEG_INF;
  for (int j = threadIdx.x; j < V; j += PF_THREADS) m = fmaxf(m, l[j]);
  for (int o = 16; o; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
  if ((threadIdx.x & 31) == 0) mx[threadIdx.x >> 5] = m;
  __syncthreads();
  m = mx[0];
  for (int w = 1; w < PF_THREADS / 32; w++) m = fmaxf(m, mx[w]);
  float z = 0.f;
  for (int j = threadIdx.x; j < V; j += PF_THREADS) z += __expf(l[j] - m);
  return m + logf(pf_block_sum(z, red));
}

// Negative log-likelihood per row of logits [R][V]: logsumexp(row) - row[target]; target < 0 scores nothing (0).
__global__ void __launch_bounds__(PF_THREADS) k_pf_nll(const float* __restrict__ logits, int V,
                                                       const int* __restrict__ target, float* __restrict__ nll) {
  __shared__ float red[PF_THREADS / 32];
  __shared__ float mx[PF_THREADS / 32];
  const size_t r = blockIdx.x;
  const float lse = pf_row_lse(logits + r * V, V, red, mx);
  if (threadIdx.x == 0) nll[r] = target[r] < 0 ? 0.f : lse - logits[r * V + target[r]];
}

// The decode step's NLL (teacher-forced evaluation through the decode graphs): after a step, st[0] = the position
// just decoded + 1 and tokens[st[0]] is the forced next token; nll[st[0] - 1] = logsumexp(logits) - logits[it].
__global__ void __launch_bounds__(PF_THREADS) k_step_nll(const float* __restrict__ logits, int V,
                                                         const int* __restrict__ st, const int* __restrict__ tokens,
                                                         float* __restrict__ nll) {
  __shared__ float red[PF_THREADS / 32];
  __shared__ float mx[PF_THREADS / 32];
  const float lse = pf_row_lse(logits, V, red, mx);
  const int p = st[0];
  if (threadIdx.x == 0) nll[p - 1] = lse - logits[tokens[p]];
}

// Collect taps (docs/shards.md): each head's L2 norm of its attention output (o16 [T][d], head h = columns h*hd..),
// stored fp16 [T][H]; one thread per (row, head).
__global__ void k_pf_head_norm(const __half* __restrict__ o16, int T, int H, int hd, __half* __restrict__ out) {
  const size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
  if (i >= (size_t)T * H) return;
  const __half* v = o16 + (i / H) * (size_t)H * hd + (i % H) * hd;
  float s = 0.f;
  for (int j = 0; j < hd; j++) { const float x = __half2float(v[j]); s += x * x; }
  out[i] = __float2half(sqrtf(s));
}

// MLP activity bitmask: bit j of byte b of row t = fc1 pre-activation (y + b1) of neuron 8b + j > 0, least
// significant bit first, padding bits 0; one thread per byte.
__global__ void k_pf_active_bits(const float* __restrict__ y, const float* __restrict__ b1, int T, int ffn,
                                 uint8_t* __restrict__ out) {
  const int nb = (ffn + 7) / 8;
  const size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
  if (i >= (size_t)T * nb) return;
  const size_t t = i / nb;
  const int b = (int)(i % nb);
  uint8_t m = 0;
  for (int j = 0; j < 8; j++) {
    const int n = 8 * b + j;
    if (n < ffn && y[t * ffn + n] + b1[n] > 0.f) m |= (uint8_t)(1u << j);
  }
  out[i] = m;
}

// Checkpoint tensors to device layout: `rows` x `cols` source elements (dtype 0 F32, 1 F16, 2 BF16, little-endian,
// row-major) starting at source row r0, converted to fp16 (dst16) or fp32 (dst32); transpose writes [cols][total_rows].
__global__ void k_convert(const void* __restrict__ src, int dtype, size_t rows, size_t cols, size_t r0,
                          size_t total_rows, bool transpose, __half* __restrict__ dst16, float* __restrict__ dst32) {
  const size_t n = rows * cols;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    float v;
    if (dtype == 0) v = ((const float*)src)[i];
    else if (dtype == 1) v = __half2float(((const __half*)src)[i]);
    else v = __bfloat162float(((const __nv_bfloat16*)src)[i]);
    const size_t r = r0 + i / cols, c = i % cols;
    const size_t o = transpose ? c * total_rows + r : r * cols + c;
    if (dst16) dst16[o] = __float2half(v);
    else dst32[o] = v;
  }
}

}  // namespace dj
