// The predictor chain's first layer on the streamed path (engine.cu fire_tap). Why: the chain feeding a layer's MLP
// selection runs beside that layer's QKV and attention kernels and must end before its MLP starts; as a one-block
// snapshot of the tap's input plus a register GEMV it took ~28 us per tap (13B, rank 128), longer than the ~25 us
// window. Here every block of the w1 GEMV computes the tap's input itself (x = X[r-1] + D[r] from L2, 20-40 KB, and
// the parameter-free LayerNorm when asked): one kernel and one round trip fewer, and x stays fp32 (the CPU runtime's
// precision).
#pragma once
#include "fused.cuh"

namespace dj {

constexpr int PH_THREADS = 256;  // 8 warps, a row per warp at a time
constexpr int PH_BATCH = 8;      // 16-byte weight vectors per lane in flight

// t[j] = w1[j] . f(x), j < rows; x = in.base (+ in.delta), f = identity or (in.norm) LayerNorm without affine.
// Dynamic shared memory: d floats.
__global__ void __launch_bounds__(PH_THREADS) k_pred_hidden(XIn in, int d, const __half* __restrict__ w1, int rows,
                                                            float* __restrict__ t) {
  extern __shared__ __align__(16) float xs[];
  __shared__ float red[32];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, n4 = d >> 2;
  float4* x4 = reinterpret_cast<float4*>(xs);
  float s = 0.f, s2 = 0.f;
  for (int i = tid; i < n4; i += PH_THREADS) {
    const float4 a = x_at(in, i);
    x4[i] = a;
    s += a.x + a.y + a.z + a.w;
    s2 += a.x * a.x + a.y * a.y + a.z * a.z + a.w * a.w;
  }
  if (in.norm) {
    s = block_sum(s, red);  // (synchronises: x is in shared memory after it)
    s2 = block_sum(s2, red);
    const float mean = s / d, rstd = rsqrtf(fmaxf(s2 / d - mean * mean, 0.f) + in.eps);
    for (int i = tid; i < n4; i += PH_THREADS) {
      float4 a = x4[i];
      a.x = (a.x - mean) * rstd; a.y = (a.y - mean) * rstd; a.z = (a.z - mean) * rstd; a.w = (a.w - mean) * rstd;
      x4[i] = a;
    }
  }
  __syncthreads();
  pdl_trigger();  // the scores kernel may launch; it waits for this grid before reading t
  const int nvec = d >> 3;
  for (int j = blockIdx.x * (PH_THREADS / 32) + warp; j < rows; j += gridDim.x * (PH_THREADS / 32)) {
    const uint4* wr = reinterpret_cast<const uint4*>(w1 + (size_t)j * d);
    float acc = 0.f;
    for (int c0 = lane; c0 < nvec; c0 += 32 * PH_BATCH) {
      uint4 w[PH_BATCH];
#pragma unroll
      for (int u = 0; u < PH_BATCH; u++)
        if (c0 + 32 * u < nvec) w[u] = ld_stream(wr + c0 + 32 * u);
#pragma unroll
      for (int u = 0; u < PH_BATCH; u++)
        if (c0 + 32 * u < nvec) acc += dot8(w[u], xs + 8 * (c0 + 32 * u));
    }
    acc = warp_sum(acc);
    if (lane == 0) t[j] = acc;
  }
}

}  // namespace dj
