// Streaming experiment (not part of the library): how close to the copy bandwidth can a batch-1 fp16 GEMV get?
//   reg   the engine's k_rows (a warp per row, 8 x 16-byte loads in flight per lane)
//   tma   rows streamed by the copy engine (cp.async.bulk) into an S-stage shared-memory ring, CW consumer warps
//   read  the same ring with no arithmetic (the copy engine's own ceiling)
// plus cudaMemcpy device-to-device (bytes read + written) and the cluster sizes that fit one block per SM.
// Build: nvcc -O3 -arch=sm_90 -std=c++17 -o stream bench/cuda/stream.cu
#include <cuda_runtime.h>
#include <cstdio>
#include <vector>
#include <algorithm>
#include <cmath>
#include "../../runtime/cuda/kernels.cuh"
#include "../../runtime/cuda/tma.cuh"

using namespace dj;

#define CK(x)                                                                            \
  do {                                                                                   \
    cudaError_t e_ = (x);                                                                \
    if (e_ != cudaSuccess) { printf("%s:%d %s\n", __FILE__, __LINE__, cudaGetErrorString(e_)); exit(1); } \
  } while (0)

template <int S, int CW, bool COMPUTE>
__global__ void __launch_bounds__((CW + 1) * 32, 1) k_gemv_tma(const __half* __restrict__ W, const float* __restrict__ x,
                                                            float* __restrict__ y, int N, int K, int seg) {
  extern __shared__ __align__(128) unsigned char sm[];
  __shared__ Ring<S> ring;
  const int segel = K / seg, segbytes = segel * 2, stage_bytes = CW * segbytes;
  // x as two float4 planes (x[8c..8c+3], x[8c+4..8c+7]): lane c's 32 bytes of x come without bank conflicts.
  float4* xs = reinterpret_cast<float4*>(sm);
  unsigned char* stages = sm + (size_t)K * 4;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int per = (N + gridDim.x - 1) / gridDim.x, r0 = blockIdx.x * per, r1 = min(N, r0 + per);
  if (threadIdx.x == 0) { ring.init(CW); mbar_fence_init(); }
  for (int c = threadIdx.x; c < K / 8; c += blockDim.x) {
    xs[c] = reinterpret_cast<const float4*>(x)[2 * c];
    xs[K / 8 + c] = reinterpret_cast<const float4*>(x)[2 * c + 1];
  }
  __syncthreads();
  if (warp == CW) {
    if (lane == 0) {
      const uint64_t pol = policy_evict_first();
      int it = 0;
      for (int g = r0; g < r1; g += CW)
        for (int sg = 0; sg < seg; sg++, it++) {
          const int s = it % S;
          const unsigned ph = (it / S) & 1;
          if (it >= S) mbar_wait(&ring.empty[s], ph ^ 1);
          const int nr = min(CW, r1 - g);
          mbar_expect_tx(&ring.full[s], nr * segbytes);
          for (int r = 0; r < nr; r++)
            bulk_g2s(stages + (size_t)s * stage_bytes + r * segbytes, W + (size_t)(g + r) * K + sg * segel, segbytes,
                     &ring.full[s], pol);
        }
    }
    return;
  }
  int it = 0;
  const int segvec = segbytes / 16;
  for (int g = r0; g < r1; g += CW) {
    float acc = 0.f;
    const int nr = min(CW, r1 - g);
    for (int sg = 0; sg < seg; sg++, it++) {
      const int s = it % S;
      mbar_wait(&ring.full[s], (it / S) & 1);
      if (warp < nr) {
        const uint4* src = reinterpret_cast<const uint4*>(stages + (size_t)s * stage_bytes + warp * segbytes);
        const float4* xl = xs + sg * (segel / 8);
        const float4* xh = xl + K / 8;
        for (int c = lane; c < segvec; c += 32) {
          uint4 w = src[c];
          if (COMPUTE) {
            float4 a = xl[c], b = xh[c];
            float xx[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
            acc += dot8(w, xx);
          }
          else acc += __uint_as_float(w.x);
        }
      }
      __syncwarp();
      if (lane == 0) mbar_arrive(&ring.empty[s]);
    }
    acc = warp_sum(acc);
    if (lane == 0 && warp < nr) y[g + warp] = acc;
  }
}

template <int S, int CW, bool C>
static float run_tma(const std::vector<__half*>& Ws, const float* x, float* y, int N, int K, int seg, int grid, int reps) {
  auto k = k_gemv_tma<S, CW, C>;
  size_t smem = (size_t)K * 4 + (size_t)S * CW * (K / seg) * 2;
  CK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  std::vector<float> t;
  for (int r = 0; r < reps + 2; r++) {
    cudaEventRecord(a);
    k<<<grid, (CW + 1) * 32, smem>>>(Ws[r % Ws.size()], x, y, N, K, seg);
    cudaEventRecord(b);
    CK(cudaEventSynchronize(b));
    float ms;
    cudaEventElapsedTime(&ms, a, b);
    if (r >= 2) t.push_back(ms);
  }
  CK(cudaGetLastError());
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

static float run_reg(const std::vector<__half*>& Ws, const __half* xh, float* y, int N, int K, int sms, int reps) {
  int per_sm = 1;
  cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, k_rows<EPI_PLAIN>, WARPS * 32, 0);
  int need = (N + WARPS - 1) / WARPS, cap = sms * per_sm, rounds = (need + cap - 1) / cap, grid = (need + rounds - 1) / rounds;
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  std::vector<float> t;
  for (int r = 0; r < reps + 2; r++) {
    RowsArgs ra{};
    ra.W = Ws[r % Ws.size()]; ra.K = K; ra.n_out = N; ra.x = xh; ra.map = MAP_ID; ra.wpr = 1; ra.lpr = 32; ra.y = y;
    cudaEventRecord(a);
    k_rows<EPI_PLAIN><<<grid, WARPS * 32>>>(ra);
    cudaEventRecord(b);
    CK(cudaEventSynchronize(b));
    float ms;
    cudaEventElapsedTime(&ms, a, b);
    if (r >= 2) t.push_back(ms);
  }
  CK(cudaGetLastError());
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

__global__ void k_dummy_cluster(int* p) { if (p && threadIdx.x == 9999) p[0] = 1; }

int main() {
  cudaDeviceProp p;
  CK(cudaGetDeviceProperties(&p, 0));
  const int sms = p.multiProcessorCount;
  printf("device %s, %d SMs, L2 %d MB, smem/block optin %zu KB\n", p.name, sms, p.l2CacheSize >> 20, p.sharedMemPerBlockOptin >> 10);
  // copy bandwidth
  {
    size_t n = 1ull << 30;
    void *a, *b;
    CK(cudaMalloc(&a, n));
    CK(cudaMalloc(&b, n));
    cudaMemset(a, 1, n);
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    std::vector<float> t;
    for (int r = 0; r < 12; r++) {
      cudaEventRecord(e0);
      cudaMemcpyAsync(b, a, n, cudaMemcpyDeviceToDevice);
      cudaEventRecord(e1);
      cudaEventSynchronize(e1);
      float ms;
      cudaEventElapsedTime(&ms, e0, e1);
      if (r >= 2) t.push_back(ms);
    }
    std::sort(t.begin(), t.end());
    printf("copy D2D 1 GiB: %.1f GB/s (read+write)\n", 2.0 * n / (t[t.size() / 2] * 1e6));
    cudaFree(a);
    cudaFree(b);
  }
  struct Shape { const char* name; int N, K; };
  Shape shapes[] = {{"fc1 13b", 20480, 5120}, {"qkv 13b", 15360, 5120}, {"out 13b", 5120, 5120}, {"fc1 66b", 36864, 9216},
                    {"sparse qkv 13b", 3072, 5120}, {"sparse mlp 13b", 1024, 5120}};
  const int reps = 15;
  for (auto& sh : shapes) {
    const int N = sh.N, K = sh.K;
    const size_t nw = (size_t)N * K;
    int sets = std::max<int>(2, (int)std::min<size_t>(8, (size_t)800e6 / (nw * 2) + 1));
    std::vector<__half*> Ws(sets);
    for (auto& w : Ws) { CK(cudaMalloc(&w, nw * 2)); k_fill_half<<<1024, 256>>>(w, nw, (uint64_t)(size_t)w, 0.05f, 0.f); }
    float *x, *y0, *y1;
    __half* xh;
    CK(cudaMalloc(&x, K * 4)); CK(cudaMalloc(&xh, K * 2)); CK(cudaMalloc(&y0, N * 4)); CK(cudaMalloc(&y1, N * 4));
    k_fill_float<<<64, 256>>>(x, K, 99, 1.f, 0.f);
    CK(cudaDeviceSynchronize());
    std::vector<float> hx(K);
    CK(cudaMemcpy(hx.data(), x, K * 4, cudaMemcpyDeviceToHost));
    std::vector<__half> hxh(K);
    for (int i = 0; i < K; i++) { hxh[i] = __float2half(hx[i]); hx[i] = __half2float(hxh[i]); }
    CK(cudaMemcpy(xh, hxh.data(), K * 2, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(x, hx.data(), K * 4, cudaMemcpyHostToDevice));  // same (fp16-exact) input for both kernels
    const double gb = nw * 2 / 1e9;
    float tr = run_reg(Ws, xh, y0, N, K, sms, reps);
    printf("%-16s %6d x %5d  %.1f MB  reg: %7.2f us %6.0f GB/s\n", sh.name, N, K, gb * 1e3, tr * 1e3, gb / (tr * 1e-3));
    auto check = [&](const char* tag, float ms, float* y) {
      std::vector<float> a(N), b(N);
      cudaMemcpy(a.data(), y0, N * 4, cudaMemcpyDeviceToHost);
      cudaMemcpy(b.data(), y, N * 4, cudaMemcpyDeviceToHost);
      double num = 0, den = 0;
      for (int i = 0; i < N; i++) { num += (a[i] - b[i]) * (double)(a[i] - b[i]); den += (double)a[i] * a[i]; }
      printf("   %-26s %7.2f us %6.0f GB/s  rel vs reg %.1e\n", tag, ms * 1e3, gb / (ms * 1e-3), std::sqrt(num / den));
    };
    // run_reg's last rep used Ws[(reps+1) % sets]; recompute y0 on set 0 for the comparison
    {
      RowsArgs ra{};
      ra.W = Ws[0]; ra.K = K; ra.n_out = N; ra.x = xh; ra.map = MAP_ID; ra.wpr = 1; ra.lpr = 32; ra.y = y0;
      k_rows<EPI_PLAIN><<<(N + WARPS - 1) / WARPS, WARPS * 32>>>(ra);
    }
    std::vector<__half*> W0(1, Ws[0]);
    char tag[64];
#define TRY(S, CW, SEG, C, GRID)                                                                \
    if (K % (SEG * 8) == 0 && (size_t)K * 4 + (size_t)S * CW * (K / SEG) * 2 <= p.sharedMemPerBlockOptin - 1024) { \
      cudaMemset(y1, 0xff, N * 4);                                                              \
      run_tma<S, CW, C>(W0, x, y1, N, K, SEG, GRID, 1);                                         \
      float t = run_tma<S, CW, C>(Ws, x, y1, N, K, SEG, GRID, reps);                            \
      snprintf(tag, sizeof tag, "%s S%d CW%d seg%d g%d", C ? "tma" : "read", S, CW, SEG, GRID); \
      if (C) { run_tma<S, CW, C>(W0, x, y1, N, K, SEG, GRID, 1); check(tag, t, y1); }            \
      else printf("   %-26s %7.2f us %6.0f GB/s\n", tag, t * 1e3, gb / (t * 1e-3));           \
    }
    TRY(4, 16, 4, true, sms);
    TRY(5, 16, 4, true, sms);
    TRY(2, 16, 2, true, sms);
    TRY(8, 8, 4, true, sms);
    TRY(4, 8, 2, true, sms);
    TRY(10, 8, 4, true, sms);
    TRY(4, 16, 8, true, sms);
    TRY(8, 16, 8, true, sms);
    TRY(4, 16, 6, true, sms);
    TRY(3, 8, 4, true, 2 * sms);
    TRY(4, 16, 4, false, sms);
    TRY(8, 16, 8, false, sms);
    for (auto w : Ws) cudaFree(w);
    cudaFree(x); cudaFree(xh); cudaFree(y0); cudaFree(y1);
  }
  // Cluster sizes that can be co-resident with one 512-thread, 180 KB block per SM.
  CK(cudaFuncSetAttribute(k_dummy_cluster, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
  CK(cudaFuncSetAttribute(k_dummy_cluster, cudaFuncAttributeMaxDynamicSharedMemorySize, 180 * 1024));
  for (int c = 1; c <= 16; c++) {
    cudaLaunchConfig_t cfg{};
    cfg.gridDim = dim3(c * (sms / c));
    cfg.blockDim = dim3(544);
    cfg.dynamicSmemBytes = 180 * 1024;
    cudaLaunchAttribute at[1];
    at[0].id = cudaLaunchAttributeClusterDimension;
    at[0].val.clusterDim.x = c; at[0].val.clusterDim.y = 1; at[0].val.clusterDim.z = 1;
    cfg.attrs = at;
    cfg.numAttrs = 1;
    int n = -1;
    cudaError_t e = cudaOccupancyMaxActiveClusters(&n, k_dummy_cluster, &cfg);
    printf("cluster %2d: max active clusters %d (%d blocks)%s\n", c, n, n * c, e ? cudaGetErrorString(e) : "");
  }
  return 0;
}
