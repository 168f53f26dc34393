// Reduction experiment (not part of the library): what the fused MLP's cross-block reduction costs. Each of G blocks
// holds a partial of a d = 5120 output (320 threads x 2 segments x 8 floats, the 13B sparse MLP's layout) and adds it
// into y with float4 atomics, as k_mlp_tma does at its end. Variants:
//   red    G blocks, all into one y (each address gets G atomics)
//   copyP  block b adds into copy b % P of y (G / P atomics per address, same total)
//   rot    every block starts its atomics at a different column (same total, spread in time)
//   clC    clusters of C blocks: the partials are summed through distributed shared memory first, then each block
//          of the cluster adds 1/C of the columns (G / C atomics per address, total / C)
//   store  plain stores of each partial to its own buffer (no reduction; the traffic without atomics)
//   empty  the launch alone
// Time per launch: events around 200 back-to-back launches on one stream (each waits for the previous to complete,
// atomics drained), minus nothing: compare rows.
// Build: nvcc -O3 -arch=sm_90 -std=c++17 -o reduce bench/cuda/reduce.cu
#include <cuda_runtime.h>
#include <cooperative_groups.h>
#include <cstdio>
#include <vector>
#include <algorithm>
namespace cg = cooperative_groups;

#define CK(x)                                                                                                 \
  do {                                                                                                        \
    cudaError_t e_ = (x);                                                                                     \
    if (e_ != cudaSuccess) { printf("%s:%d %s\n", __FILE__, __LINE__, cudaGetErrorString(e_)); exit(1); } \
  } while (0)

constexpr int D = 5120, NT = 320, SEG = 2, SEGEL = D / SEG;

__device__ __forceinline__ void partial(float (&acc)[SEG][8]) {
#pragma unroll
  for (int s = 0; s < SEG; s++)
#pragma unroll
    for (int i = 0; i < 8; i++) acc[s][i] = 1e-3f * (blockIdx.x + threadIdx.x + i);
}

__global__ void __launch_bounds__(NT) k_red(float* y, int P, int rot, int mode) {
  float acc[SEG][8];
  partial(acc);
  if (mode == 2) return;  // empty
  if (mode == 1) {        // store
    float* yb = y + (size_t)blockIdx.x * D;
#pragma unroll
    for (int s = 0; s < SEG; s++) {
      float4* y4 = reinterpret_cast<float4*>(yb + s * SEGEL + threadIdx.x * 8);
      y4[0] = make_float4(acc[s][0], acc[s][1], acc[s][2], acc[s][3]);
      y4[1] = make_float4(acc[s][4], acc[s][5], acc[s][6], acc[s][7]);
    }
    return;
  }
  float* yc = y + (size_t)(blockIdx.x % P) * D;
  const int t = rot ? (threadIdx.x + blockIdx.x * 37) % NT : threadIdx.x;  // (values stay per thread: timing only)
#pragma unroll
  for (int s = 0; s < SEG; s++) {
    float4* y4 = reinterpret_cast<float4*>(yc + s * SEGEL + t * 8);
    atomicAdd(y4, make_float4(acc[s][0], acc[s][1], acc[s][2], acc[s][3]));
    atomicAdd(y4 + 1, make_float4(acc[s][4], acc[s][5], acc[s][6], acc[s][7]));
  }
}

// Clusters of C: every block writes its partial to its own shared memory, cluster barrier, then block r sums the
// C partials of its columns (vector v with v % C == r) from distributed shared memory and adds them with atomics,
// cluster barrier (no block may exit while another reads its shared memory).
template <int C>
__global__ void __launch_bounds__(NT) k_red_cluster(float* y) {
  __shared__ float4 part[SEG * NT * 2];
  float acc[SEG][8];
  partial(acc);
  cg::cluster_group cl = cg::this_cluster();
#pragma unroll
  for (int s = 0; s < SEG; s++) {
    part[(s * NT + threadIdx.x) * 2] = make_float4(acc[s][0], acc[s][1], acc[s][2], acc[s][3]);
    part[(s * NT + threadIdx.x) * 2 + 1] = make_float4(acc[s][4], acc[s][5], acc[s][6], acc[s][7]);
  }
  cl.sync();
  const int r = (int)cl.block_rank();
  for (int v = threadIdx.x; v < SEG * NT * 2; v += NT) {
    if ((v >> 1) % C != r) continue;
    float4 sum = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
    for (int q = 0; q < C; q++) {
      const float4* p = cl.map_shared_rank(part, q);
      const float4 a = p[v];
      sum.x += a.x; sum.y += a.y; sum.z += a.z; sum.w += a.w;
    }
    const int s = v / (NT * 2), w = v % (NT * 2);
    atomicAdd(reinterpret_cast<float4*>(y + s * SEGEL) + w, sum);
  }
  cl.sync();
}

template <class F>
static float time_launches(F launch, int reps = 200) {
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  std::vector<float> t;
  for (int trial = 0; trial < 5; trial++) {
    launch();
    CK(cudaDeviceSynchronize());
    cudaEventRecord(a);
    for (int i = 0; i < reps; i++) launch();
    cudaEventRecord(b);
    CK(cudaEventSynchronize(b));
    float ms;
    cudaEventElapsedTime(&ms, a, b);
    t.push_back(ms * 1000.f / reps);
  }
  CK(cudaGetLastError());
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

template <int C>
static float run_cluster(float* y, int G) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(G / C * C);
  cfg.blockDim = dim3(NT);
  cudaLaunchAttribute at[1];
  at[0].id = cudaLaunchAttributeClusterDimension;
  at[0].val.clusterDim.x = C; at[0].val.clusterDim.y = 1; at[0].val.clusterDim.z = 1;
  cfg.attrs = at;
  cfg.numAttrs = 1;
  return time_launches([&] { CK(cudaLaunchKernelEx(&cfg, k_red_cluster<C>, y)); });
}

int main() {
  cudaDeviceProp p;
  CK(cudaGetDeviceProperties(&p, 0));
  printf("device %s, %d SMs; per launch (us), 200 back-to-back launches, median of 5\n", p.name, p.multiProcessorCount);
  float* y;
  CK(cudaMalloc(&y, (size_t)264 * D * 4));
  CK(cudaMemset(y, 0, (size_t)264 * D * 4));
  for (int G : {32, 66, 128, 132}) {
    auto k = [&](int P, int rot, int mode) { return time_launches([&] { k_red<<<G, NT>>>(y, P, rot, mode); }); };
    printf("G %3d  empty %6.2f  store %6.2f  red %6.2f  rot %6.2f  copy2 %6.2f  copy4 %6.2f  copy8 %6.2f  cl2 %6.2f  cl4 %6.2f\n", G,
           k(1, 0, 2), k(1, 0, 1), k(1, 0, 0), k(1, 1, 0), k(2, 0, 0), k(4, 0, 0), k(8, 0, 0), run_cluster<2>(y, G),
           run_cluster<4>(y, G));
  }
  return 0;
}
