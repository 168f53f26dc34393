// Row consumers of a streamed stage, alone (docs/cuda.md "Not done" (1)): one block holds a stage of R rows x E
// halves in shared memory (row r at r x pitch bytes) and an fp32 x of E; it computes the R dots ITER times.
//   (a) today's consumer (fused.cuh t_consume_row): warp w = row w, each lane 16-byte weight vectors against x read
//       from two fp32 planes (2x the weight bytes of shared memory per warp), conversions + FMAs;
//   (b) a tensor-core consumer: mma.sync m16n8k16 (fp32 accumulate), the stage's rows as A (ldmatrix), x split into
//       an fp16 high part and the fp16 rest (x - hi) as columns 0 and 1 of B, so ~22 bits of x take part; warps
//       split over k; each warp's 16 row partials summed across warps in shared memory.
// Both against a CPU fp64 reference (relative error over the R outputs), then cycles per stage (clock64, mean over
// ITER), for R = 16 and 8 and a row pitch of E x 2 bytes (a multiple of 128: ldmatrix's 8 row addresses on the same
// banks) or E x 2 + 16.
// (c) the W-as-B form (rows as B columns, x as A rows 0 / 1; k steps batched BT at a time).
// Measured on an H200 (logs in git history, commit 4fb1d5c and earlier): padded rows, 16 rows 4080 cycles (a) vs
// 1674 (b) vs 1929 (c); unpadded, the mma forms are 1.5x slower than (a) (bank conflicts).
// nvcc -O3 -arch=sm_90 -std=c++17 -o /tmp/mmadot bench/cuda/mmadot.cu && /tmp/mmadot
#include <cuda_fp16.h>
#include <cstdio>
#include <cstdint>
#include <cmath>
#include <vector>
#include <random>

#define CU(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { printf("CUDA %s at %d\n", cudaGetErrorString(e_), __LINE__); return 1; } } while (0)

constexpr int NW = 16, E = 2560, ITER = 200;  // 16 consumer warps; a 5 KB segment of a 13B row (K 5120, 2 segments)

__device__ __forceinline__ float dot8(const uint4& w, const float* x) {
  const __half2* h = reinterpret_cast<const __half2*>(&w);
  float acc = 0.f;
#pragma unroll
  for (int i = 0; i < 4; i++) {
    const float2 f = __half22float2(h[i]);
    acc = fmaf(f.x, x[2 * i], acc);
    acc = fmaf(f.y, x[2 * i + 1], acc);
  }
  return acc;
}

__device__ __forceinline__ uint32_t smem_u32(const void* p) { return (uint32_t)__cvta_generic_to_shared(p); }

// Both consumers' set-up: x as fp16 high part + rest (xh, xl), and R rows of W into the stage at `pitch` bytes.
__device__ void stage_inputs(const __half* W, const float* x, int R, int pitch, __half* xh, __half* xl, unsigned char* stage) {
  for (int i = threadIdx.x; i < E; i += blockDim.x) {
    const __half h = __float2half_rn(x[i]);
    xh[i] = h;
    xl[i] = __float2half_rn(x[i] - __half2float(h));
  }
  for (int i = threadIdx.x; i < R * (E / 8); i += blockDim.x) {
    const int r = i / (E / 8), c = i % (E / 8);
    reinterpret_cast<uint4*>(stage + (size_t)r * pitch)[c] = reinterpret_cast<const uint4*>(W + (size_t)r * E)[c];
  }
  __syncthreads();
}

// Shared memory: stage (R rows at `pitch`), x as two fp32 planes (lo[c] = x[8c..8c+3], hi[c] = x[8c+4..8c+7], as the
// engine keeps it), x as fp16 high / rest parts, the cross-warp partials.
template <bool MMA>
__global__ void __launch_bounds__(NW * 32, 1) k_consume(const __half* W, const float* x, int R, int pitch, float* out,
                                                         unsigned long long* cycles) {
  extern __shared__ __align__(16) unsigned char sm[];
  float4* xs = reinterpret_cast<float4*>(sm);                    // 2 * E/8 float4
  __half* xh = reinterpret_cast<__half*>(sm + E * 4);            // E
  __half* xl = xh + E;                                           // E
  float* red = reinterpret_cast<float*>(sm + E * 4 + E * 4);     // NW x 16
  unsigned char* stage = sm + E * 4 + E * 4 + NW * 16 * 4;       // R x pitch (16-byte aligned: all offsets are)
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  for (int i = tid; i < E / 8; i += blockDim.x) {
    xs[i] = make_float4(x[8 * i], x[8 * i + 1], x[8 * i + 2], x[8 * i + 3]);
    xs[E / 8 + i] = make_float4(x[8 * i + 4], x[8 * i + 5], x[8 * i + 6], x[8 * i + 7]);
  }
  stage_inputs(W, x, R, pitch, xh, xl, stage);
  float result = 0.f;
  const unsigned long long t0 = clock64();
  for (int it = 0; it < ITER; it++) {
    if constexpr (!MMA) {
      float acc = 0.f;
      if (warp < R) {
        const uint4* src = reinterpret_cast<const uint4*>(stage + (size_t)warp * pitch);
        for (int c = lane; c < E / 8; c += 32) {
          const float4 a = xs[c], b = xs[E / 8 + c];
          const float xv[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
          acc += dot8(src[c], xv);
        }
      }
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
      result += acc;  // (kept live across iterations; lane 0 of warp r holds row r)
      __syncthreads();  // (a barrier: the compiler may not hoist the shared-memory reads out of the ITER loop)
    } else {
      const int g = lane >> 2, t = lane & 3;
      // ldmatrix.x4: lanes 0-7 address rows 0-7 at k0, 8-15 rows 8-15 at k0, 16-23 rows 0-7 at k0+8, 24-31 rows
      // 8-15 at k0+8 -> a0..a3 in mma.m16n8k16's A order. Rows beyond R read row 0 (their outputs are dropped).
      const int arow = (lane & 7) + ((lane >> 3) & 1) * 8, acol = (lane >> 4) * 8;
      const uint32_t abase = smem_u32(stage + (size_t)(arow < R ? arow : 0) * pitch + acol * 2);
      float c0 = 0.f, c1 = 0.f, c2 = 0.f, c3 = 0.f;
      const int kw = E / NW;  // this warp's k range: [warp * kw, (warp + 1) * kw)
      for (int k0 = warp * kw; k0 < (warp + 1) * kw; k0 += 16) {
        uint32_t a0, a1, a2, a3;
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                     : "=r"(a0), "=r"(a1), "=r"(a2), "=r"(a3) : "r"(abase + k0 * 2));
        // B (16 x 8, col): lane (g, t) holds B[2t, 2t+1][g] and B[2t+8, 2t+9][g]; column 0 = hi, 1 = rest, others 0.
        uint32_t b0 = 0u, b1 = 0u;
        if (g < 2) {
          const __half* xv = g == 0 ? xh : xl;
          b0 = *reinterpret_cast<const uint32_t*>(xv + k0 + 2 * t);
          b1 = *reinterpret_cast<const uint32_t*>(xv + k0 + 8 + 2 * t);
        }
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                     "{%0,%1,%2,%3};"
                     : "+f"(c0), "+f"(c1), "+f"(c2), "+f"(c3)
                     : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
      }
      // D[row][col]: lane (g, t) holds rows g, g+8 at columns 2t, 2t+1; t == 0: hi and rest of rows g and g+8.
      if (t == 0) { red[warp * 16 + g] = c0 + c1; red[warp * 16 + g + 8] = c2 + c3; }
      __syncthreads();
      if (tid < R) {
        float s = 0.f;
        for (int w = 0; w < NW; w++) s += red[w * 16 + tid];
        result += s;
      }
      __syncthreads();
    }
  }
  const unsigned long long t1 = clock64();
  if (!MMA && lane == 0 && warp < R) out[warp] = result / ITER;
  if (MMA && tid < R) out[tid] = result / ITER;
  if (tid == 0) *cycles = (t1 - t0) / ITER;
}


// (c) the tensor-core consumer as the engine would use it: W rows as B (ldmatrix, not transposed: a W row is a column
// of B), x as A (row 0 = fp16 high part, row 1 = the rest, other rows 0) -> D row 0 + row 1 = the dots. R = 8 rows
// per stage: one ldmatrix.x4 covers 8 rows x 32 k (two mmas); R = 16: 16 rows x 16 k (two mmas, rows 0-7 and 8-15).
// Warps take k steps round-robin; BT steps are loaded before their mmas (ILP); partials summed across warps.
template <int R, int BT>
__global__ void __launch_bounds__(NW * 32, 1) k_consume2(const __half* W, const float* x, int pitch, float* out,
                                                          unsigned long long* cycles) {
  extern __shared__ __align__(16) unsigned char sm[];
  __half* xh = reinterpret_cast<__half*>(sm);                    // E
  __half* xl = xh + E;                                           // E
  float* red = reinterpret_cast<float*>(sm + E * 4);             // NW x 16
  unsigned char* stage = sm + E * 4 + NW * 16 * 4;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
  stage_inputs(W, x, R, pitch, xh, xl, stage);
  constexpr int KS = R == 8 ? 32 : 16;  // k per ldmatrix.x4
  // lane -> the row its ldmatrix address names: matrix m = lane / 8 (R 8: k0 + 8m; R 16: rows 8(m/2).., k0 + 8(m&1))
  const int m = lane >> 3, lr = lane & 7;
  const int arow = R == 8 ? lr : lr + (m >> 1) * 8, acol = R == 8 ? m * 8 : (m & 1) * 8;
  const uint32_t abase = smem_u32(stage + (size_t)arow * pitch + acol * 2);
  const __half* xp = g == 0 ? xh : xl;
  const bool xl_ok = g < 2;
  float result = 0.f;
  const unsigned long long t0 = clock64();
  for (int it = 0; it < ITER; it++) {
    float c[4] = {0.f, 0.f, 0.f, 0.f}, e[4] = {0.f, 0.f, 0.f, 0.f};
    for (int s0 = warp; s0 < E / KS; s0 += NW * BT) {
      uint32_t b[BT][4], a[BT][4];
#pragma unroll
      for (int u = 0; u < BT; u++) {
        const int k0 = (s0 + u * NW) * KS;
        if (s0 + u * NW < E / KS) {
          asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                       : "=r"(b[u][0]), "=r"(b[u][1]), "=r"(b[u][2]), "=r"(b[u][3]) : "r"(abase + k0 * 2));
          a[u][0] = xl_ok ? *reinterpret_cast<const uint32_t*>(xp + k0 + 2 * t) : 0u;
          a[u][1] = xl_ok ? *reinterpret_cast<const uint32_t*>(xp + k0 + 8 + 2 * t) : 0u;
          a[u][2] = R == 8 && xl_ok ? *reinterpret_cast<const uint32_t*>(xp + k0 + 16 + 2 * t) : 0u;
          a[u][3] = R == 8 && xl_ok ? *reinterpret_cast<const uint32_t*>(xp + k0 + 24 + 2 * t) : 0u;
        } else {
          b[u][0] = b[u][1] = b[u][2] = b[u][3] = 0u;
          a[u][0] = a[u][1] = a[u][2] = a[u][3] = 0u;
        }
      }
#pragma unroll
      for (int u = 0; u < BT; u++) {
        // R 16: rows 0-7 (b0, b1) -> c, rows 8-15 (b2, b3) -> e, same x. R 8: k0 (b0, b1; x a0, a1) -> c,
        // k0 + 16 (b2, b3; x a2, a3) -> e.
        const uint32_t x0 = a[u][0], x1 = a[u][1], x2 = R == 8 ? a[u][2] : x0, x3 = R == 8 ? a[u][3] : x1;
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(x0), "r"(0u), "r"(x1), "r"(0u), "r"(b[u][0]), "r"(b[u][1]));
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                     : "+f"(e[0]), "+f"(e[1]), "+f"(e[2]), "+f"(e[3])
                     : "r"(x2), "r"(0u), "r"(x3), "r"(0u), "r"(b[u][2]), "r"(b[u][3]));
      }
    }
    // D row g (0: hi, 1: rest) at columns 2t, 2t+1 in c[0], c[1]; lanes t (g 0) + 4 + t (g 1)
    float v0 = c[0] + __shfl_xor_sync(0xffffffffu, c[0], 4), v1 = c[1] + __shfl_xor_sync(0xffffffffu, c[1], 4);
    float w0 = e[0] + __shfl_xor_sync(0xffffffffu, e[0], 4), w1 = e[1] + __shfl_xor_sync(0xffffffffu, e[1], 4);
    if (lane < 4) {
      if (R == 8) { red[warp * 16 + 2 * t] = v0 + w0; red[warp * 16 + 2 * t + 1] = v1 + w1; }
      else { red[warp * 16 + 2 * t] = v0; red[warp * 16 + 2 * t + 1] = v1; red[warp * 16 + 8 + 2 * t] = w0; red[warp * 16 + 9 + 2 * t] = w1; }
    }
    __syncthreads();
    // warp r (< R) sums row r over the warps, as the engine's epilogue wants it (lane 0 of warp r)
    if (warp < R) {
      float s = lane < NW ? red[lane * 16 + warp] : 0.f;
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
      result += s;
    }
    __syncthreads();
  }
  const unsigned long long t1 = clock64();
  if (lane == 0 && warp < R) out[warp] = result / ITER;
  if (tid == 0) *cycles = (t1 - t0) / ITER;
}

int main() {
  setvbuf(stdout, nullptr, _IOLBF, 0);
  std::mt19937 rng(11);
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<__half> W(16 * E);
  std::vector<float> x(E), Wf(16 * E);
  for (int i = 0; i < 16 * E; i++) { W[i] = __float2half(0.02f * nd(rng)); Wf[i] = __half2float(W[i]); }
  for (auto& v : x) v = 3.f + nd(rng);  // a mean well away from 0: fp16 x alone would lose ~3 decimal digits here
  __half* dW;
  float *dx, *dout;
  unsigned long long* dcy;
  CU(cudaMalloc(&dW, W.size() * 2)); CU(cudaMalloc(&dx, E * 4)); CU(cudaMalloc(&dout, 16 * 4)); CU(cudaMalloc(&dcy, 8));
  CU(cudaMemcpy(dW, W.data(), W.size() * 2, cudaMemcpyHostToDevice));
  CU(cudaMemcpy(dx, x.data(), E * 4, cudaMemcpyHostToDevice));
  const size_t smax = E * 4 + E * 4 + NW * 16 * 4 + 16 * (E * 2 + 16);  // (a) / (b) at their largest
  CU(cudaFuncSetAttribute(k_consume<false>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smax));
  CU(cudaFuncSetAttribute(k_consume<true>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smax));
  int failures = 0;
  // One measurement: launch(smem) runs a consumer on R rows at `pitch`; its R outputs against the fp64 reference.
  auto measure = [&](int R, int pitch, size_t smem, const char* label, auto launch) -> int {
    std::vector<double> ref(R);
    for (int r = 0; r < R; r++) { double s = 0; for (int k = 0; k < E; k++) s += (double)Wf[r * E + k] * x[k]; ref[r] = s; }
    CU(cudaMemset(dout, 0xff, 16 * 4));
    launch(smem);
    CU(cudaDeviceSynchronize());
    std::vector<float> got(R);
    unsigned long long cy;
    CU(cudaMemcpy(got.data(), dout, R * 4, cudaMemcpyDeviceToHost));
    CU(cudaMemcpy(&cy, dcy, 8, cudaMemcpyDeviceToHost));
    double num = 0, den = 0;
    bool finite = true;
    for (int r = 0; r < R; r++) { finite &= std::isfinite(got[r]); num += (got[r] - ref[r]) * (got[r] - ref[r]); den += ref[r] * ref[r]; }
    const double rel = std::sqrt(num / den);
    const bool ok = finite && rel <= 1e-4;
    failures += !ok;
    printf("R %2d pitch %5d %-13s %6llu cycles a stage (%5.0f B/clk of weights)  rel err %.2e %s\n", R, pitch, label, cy,
           (double)R * E * 2 / cy, rel, ok ? "ok" : "FAIL");
    return 0;
  };
  for (int R : {16, 8})
    for (int pad : {0, 16}) {
      const int pitch = E * 2 + pad;
      const size_t smem = E * 4 + E * 4 + NW * 16 * 4 + (size_t)R * pitch;
      if (measure(R, pitch, smem, "warp per row", [&](size_t sm) { k_consume<false><<<1, NW * 32, sm>>>(dW, dx, R, pitch, dout, dcy); }) ||
          measure(R, pitch, smem, "mma.sync", [&](size_t sm) { k_consume<true><<<1, NW * 32, sm>>>(dW, dx, R, pitch, dout, dcy); }))
        return 1;
    }
  // (c): B = W rows, A = x; R 8 / 16, batches of BT k steps
  auto run2 = [&](auto kern, int R, int BT, int pitch) -> int {
    const size_t smem = E * 4 + NW * 16 * 4 + (size_t)R * pitch;
    CU(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    char label[32];
    snprintf(label, sizeof label, "W-as-B BT %d", BT);
    return measure(R, pitch, smem, label, [&](size_t sm) { kern<<<1, NW * 32, sm>>>(dW, dx, pitch, dout, dcy); });
  };
  for (int pad : {0, 16}) {
    const int pitch = E * 2 + pad;
    if (run2(k_consume2<16, 1>, 16, 1, pitch) || run2(k_consume2<16, 2>, 16, 2, pitch) || run2(k_consume2<16, 4>, 16, 4, pitch) ||
        run2(k_consume2<8, 1>, 8, 1, pitch) || run2(k_consume2<8, 2>, 8, 2, pitch) || run2(k_consume2<8, 4>, 8, 4, pitch))
      return 1;
  }
  printf("mmadot: %s\n", failures ? "FAILED" : "passed");
  return failures ? 1 : 0;
}
