// Reduction experiment (not part of the library): what the fused MLP's cross-block reduction costs. Each of G blocks
// holds a partial of a d = 5120 output (320 threads x 2 segments x 8 floats, the 13B sparse MLP's layout) and adds it
// into y with float4 atomics, as k_mlp_tma does at its end. Variants:
//   red    G blocks, all into one y (each address gets G atomics)
//   copyP  block b adds into copy b % P of y (G / P atomics per address, same total)
//   rot    every block starts its atomics at a different column (same total, spread in time)
//   clC    clusters of C blocks: the partials are summed through distributed shared memory first, then each block
//          of the cluster adds 1/C of the columns (G / C atomics per address, total / C)
//   store  plain stores of each partial to its own buffer (no reduction; the traffic without atomics)
//   bulkP  the partial staged in shared memory, then one cp.reduce.async.bulk .add.f32 into copy b % P of y: the
//          reduction done by the copy engine in L2, a whole line per operation instead of 16 bytes
//   cl2bP  clusters of 2 as clC, then each block bulk-reduces its owned (contiguous) half into copy (b / 2) % P
//   empty  the launch alone
// Time per launch: events around 200 back-to-back launches on one stream (each waits for the previous to complete,
// atomics drained), minus nothing: compare rows.
// Build: nvcc -O3 -arch=sm_90 -std=c++17 -o reduce bench/cuda/reduce.cu
#include <cuda_runtime.h>
#include <cooperative_groups.h>
#include <cstdio>
#include <vector>
#include <algorithm>
#include <cmath>
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


__device__ __forceinline__ void bulk_reduce(float* gdst, const float* ssrc, unsigned bytes) {
  asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
  __syncthreads();
  if (threadIdx.x == 0) {
    const unsigned s = (unsigned)__cvta_generic_to_shared(ssrc);
    asm volatile("cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [%0], [%1], %2;" ::"l"(gdst), "r"(s), "r"(bytes)
                 : "memory");
    asm volatile("cp.async.bulk.commit_group;" ::: "memory");
    asm volatile("cp.async.bulk.wait_group 0;" ::: "memory");
  }
}

// Each block: partial -> shared memory in y's layout -> one bulk reduction into copy b % P.
__global__ void __launch_bounds__(NT) k_red_bulk(float* y, int P) {
  __shared__ __align__(128) float part[D];
  float acc[SEG][8];
  partial(acc);
#pragma unroll
  for (int s = 0; s < SEG; s++) {
    float4* p4 = reinterpret_cast<float4*>(part + s * SEGEL + threadIdx.x * 8);
    p4[0] = make_float4(acc[s][0], acc[s][1], acc[s][2], acc[s][3]);
    p4[1] = make_float4(acc[s][4], acc[s][5], acc[s][6], acc[s][7]);
  }
  bulk_reduce(y + (size_t)(blockIdx.x % P) * D, part, D * 4);
}

// Clusters of 2: partials summed through distributed shared memory (block r owns the contiguous half r), then one
// bulk reduction of the owned half into copy (b / 2) % P.
__global__ void __launch_bounds__(NT) k_red_cl2_bulk(float* y, int P) {
  __shared__ __align__(128) float part[D];
  __shared__ __align__(128) float sum[D / 2];
  float acc[SEG][8];
  partial(acc);
  cg::cluster_group cl = cg::this_cluster();
#pragma unroll
  for (int s = 0; s < SEG; s++) {
    float4* p4 = reinterpret_cast<float4*>(part + s * SEGEL + threadIdx.x * 8);
    p4[0] = make_float4(acc[s][0], acc[s][1], acc[s][2], acc[s][3]);
    p4[1] = make_float4(acc[s][4], acc[s][5], acc[s][6], acc[s][7]);
  }
  cl.sync();
  const int r = (int)cl.block_rank();
  const float4* mine = reinterpret_cast<const float4*>(part) + r * (D / 8);
  const float4* other = cl.map_shared_rank(reinterpret_cast<const float4*>(part), r ^ 1) + r * (D / 8);
  for (int v = threadIdx.x; v < D / 8; v += NT) {
    const float4 a = mine[v], b = other[v];
    reinterpret_cast<float4*>(sum)[v] = make_float4(a.x + b.x, a.y + b.y, a.z + b.z, a.w + b.w);
  }
  cl.sync();
  bulk_reduce(y + (size_t)((blockIdx.x / 2) % P) * D + r * (D / 2), sum, D * 2);
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

static float run_cl2_bulk(float* y, int G, int P) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(G / 2 * 2);
  cfg.blockDim = dim3(NT);
  cudaLaunchAttribute at[1];
  at[0].id = cudaLaunchAttributeClusterDimension;
  at[0].val.clusterDim.x = 2; at[0].val.clusterDim.y = 1; at[0].val.clusterDim.z = 1;
  cfg.attrs = at;
  cfg.numAttrs = 1;
  return time_launches([&] { CK(cudaLaunchKernelEx(&cfg, k_red_cl2_bulk, y, P)); });
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
    auto b = [&](int P) { return time_launches([&] { k_red_bulk<<<G, NT>>>(y, P); }); };
    printf("G %3d  bulk1 %6.2f  bulk2 %6.2f  bulk4 %6.2f  cl2b1 %6.2f  cl2b2 %6.2f\n", G, b(1), b(2), b(4),
           run_cl2_bulk(y, G, 1), run_cl2_bulk(y, G, 2));
  }
  // Correctness of the bulk reductions (the values are exact in fp32 here: small multiples of 1e-3 summed once).
  {
    std::vector<float> h((size_t)D), ref((size_t)D, 0.f);
    for (int blk = 0; blk < 132; blk++)
      for (int t = 0; t < NT; t++)
        for (int s = 0; s < SEG; s++)
          for (int i = 0; i < 8; i++) ref[s * SEGEL + t * 8 + i] += 1e-3f * (blk + t + i);
    double worst = 0;
    for (int variant = 0; variant < 2; variant++) {
      CK(cudaMemset(y, 0, (size_t)D * 4));
      if (variant == 0) k_red_bulk<<<132, NT>>>(y, 1);
      if (variant == 1) {  // one launch (run_cl2_bulk times many)
        cudaLaunchConfig_t cfg = {};
        cfg.gridDim = dim3(132); cfg.blockDim = dim3(NT);
        cudaLaunchAttribute at[1];
        at[0].id = cudaLaunchAttributeClusterDimension;
        at[0].val.clusterDim.x = 2; at[0].val.clusterDim.y = 1; at[0].val.clusterDim.z = 1;
        cfg.attrs = at; cfg.numAttrs = 1;
        CK(cudaLaunchKernelEx(&cfg, k_red_cl2_bulk, y, 1));
      }
      CK(cudaMemcpy(h.data(), y, (size_t)D * 4, cudaMemcpyDeviceToHost));
      double n = 0, e = 0;
      for (int i = 0; i < D; i++) { n += (double)ref[i] * ref[i]; e += (double)(h[i] - ref[i]) * (h[i] - ref[i]); }
      worst = std::max(worst, std::sqrt(e / n));
      printf("check %s: relative error %.3e\n", variant == 0 ? "bulk1" : "cl2b1", std::sqrt(e / n));
    }
    if (worst > 1e-5) { printf("BULK REDUCTION CHECK FAILED\n"); return 1; }
  }
  return 0;
}
