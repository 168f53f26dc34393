// Green contexts as an SM partition for the sparse graph (experiment): do kernels captured from green-context
// streams into one CUDA graph stay on their partition (also with a PDL edge and a cross-partition join), and how
// fast do a few SMs alone stream a predictor's bytes?
// nvcc -O3 -arch=sm_90 -std=c++17 -o /tmp/green bench/cuda/green.cu && /tmp/green [pred_sms=16]
#include <cuda.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <cstdio>
#include <cstdlib>
#include <algorithm>
#include <set>
#include <vector>

#define CK(x) do { cudaError_t r_ = (x); if (r_ != cudaSuccess) { printf("%s:%d %s\n", __FILE__, __LINE__, cudaGetErrorString(r_)); exit(1); } } while (0)
#define CU(x) do { CUresult r_ = (x); if (r_ != CUDA_SUCCESS) { printf("%s:%d CUresult %d\n", __FILE__, __LINE__, (int)r_); exit(1); } } while (0)

template <class F> static F entry(const char* name) {
  void* f = nullptr;
  cudaDriverEntryPointQueryResult q;
  CK(cudaGetDriverEntryPointByVersion(name, &f, 13000, cudaEnableDefault, &q));
  if (!f) { printf("no driver entry point %s\n", name); exit(1); }
  return (F)f;
}

__global__ void k_sm(int* out, int spin_ns) {
  unsigned sm;
  asm volatile("mov.u32 %0, %%smid;" : "=r"(sm));
  asm volatile("griddepcontrol.wait;");
  if (threadIdx.x == 0) out[blockIdx.x] = (int)sm;
  __nanosleep(spin_ns);
}

// A predictor-sized read: every block sums its share of n halves (16-byte loads, 8 in flight a thread).
__global__ void k_read(const uint4* w, size_t n16, float* out) {
  float acc = 0.f;
  size_t stride = (size_t)gridDim.x * blockDim.x;
  for (size_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n16; i += 8 * stride) {
    uint4 v[8];
#pragma unroll
    for (int u = 0; u < 8; u++) v[u] = i + u * stride < n16 ? __ldcs(w + i + u * stride) : make_uint4(0, 0, 0, 0);
#pragma unroll
    for (int u = 0; u < 8; u++) acc += __half2float(*(const __half*)&v[u].x) + __half2float(*(const __half*)&v[u].w);
  }
  if (acc == 12345.f) out[0] = acc;
}

static std::set<int> sms_of(const int* d, int n) {
  std::vector<int> h(n);
  CK(cudaMemcpy(h.data(), d, n * sizeof(int), cudaMemcpyDeviceToHost));
  return std::set<int>(h.begin(), h.end());
}

int main(int argc, char** argv) {
  int npred = argc > 1 ? atoi(argv[1]) : 16;
  CK(cudaSetDevice(0));
  CK(cudaFree(0));
  cudaDeviceProp p;
  CK(cudaGetDeviceProperties(&p, 0));
  printf("device %s, %d SMs, driver entry points via cudaGetDriverEntryPointByVersion\n", p.name, p.multiProcessorCount);
  auto getRes = entry<CUresult (*)(CUdevice, CUdevResource*, CUdevResourceType)>("cuDeviceGetDevResource");
  auto split = entry<CUresult (*)(CUdevResource*, unsigned*, const CUdevResource*, CUdevResource*, unsigned, unsigned)>("cuDevSmResourceSplitByCount");
  auto gen = entry<CUresult (*)(CUdevResourceDesc*, CUdevResource*, unsigned)>("cuDevResourceGenerateDesc");
  auto gcreate = entry<CUresult (*)(CUgreenCtx*, CUdevResourceDesc, CUdevice, unsigned)>("cuGreenCtxCreate");
  auto gstream = entry<CUresult (*)(CUstream*, CUgreenCtx, unsigned, int)>("cuGreenCtxStreamCreate");

  CUdevResource all, grp, rem;
  CU(getRes(0, &all, CU_DEV_RESOURCE_TYPE_SM));
  unsigned ng = 1;
  CU(split(&grp, &ng, &all, &rem, 0, npred));
  printf("split: all %u SMs (min partition %u, alignment %u) -> group %u + remainder %u\n", all.sm.smCount,
         all.sm.minSmPartitionSize, all.sm.smCoscheduledAlignment, grp.sm.smCount, rem.sm.smCount);
  CUdevResourceDesc dg, dr;
  CU(gen(&dg, &grp, 1));
  CU(gen(&dr, &rem, 1));
  CUgreenCtx gp, gm;
  CU(gcreate(&gp, dg, 0, CU_GREEN_CTX_DEFAULT_STREAM));
  CU(gcreate(&gm, dr, 0, CU_GREEN_CTX_DEFAULT_STREAM));
  CUstream cm, cp;
  CU(gstream(&cm, gm, CU_STREAM_NON_BLOCKING, 0));
  CU(gstream(&cp, gp, CU_STREAM_NON_BLOCKING, 0));
  cudaStream_t sm = (cudaStream_t)cm, sp = (cudaStream_t)cp, sf;
  CK(cudaStreamCreateWithFlags(&sf, cudaStreamNonBlocking));

  const int NB = 2 * p.multiProcessorCount;
  int *a, *b, *c;
  CK(cudaMalloc(&a, NB * sizeof(int)));
  CK(cudaMalloc(&b, NB * sizeof(int)));
  CK(cudaMalloc(&c, NB * sizeof(int)));
  // 1. eager launches
  k_sm<<<NB, 1024, 0, sm>>>(a, 20000);
  k_sm<<<NB, 1024, 0, sp>>>(b, 20000);
  CK(cudaDeviceSynchronize());
  auto A = sms_of(a, NB), B = sms_of(b, NB);
  int both = 0;
  for (int s : A) both += B.count(s);
  printf("eager: main stream on %zu SMs, pred stream on %zu SMs, shared %d\n", A.size(), B.size(), both);

  // 2. one captured graph: main kernel, fork to the pred stream, join, main kernel with a PDL edge after the join
  cudaEvent_t fork, join;
  CK(cudaEventCreateWithFlags(&fork, cudaEventDisableTiming));
  CK(cudaEventCreateWithFlags(&join, cudaEventDisableTiming));
  cudaGraph_t g;
  CK(cudaStreamBeginCapture(sm, cudaStreamCaptureModeThreadLocal));
  k_sm<<<NB, 1024, 0, sm>>>(a, 20000);
  CK(cudaEventRecord(fork, sm));
  CK(cudaStreamWaitEvent(sp, fork, 0));
  k_sm<<<NB, 1024, 0, sp>>>(b, 20000);
  CK(cudaEventRecord(join, sp));
  k_sm<<<NB, 1024, 0, sm>>>(c, 20000);  // beside the pred kernel
  CK(cudaStreamWaitEvent(sm, join, 0));
  {
    cudaLaunchConfig_t cfg = {};
    cudaLaunchAttribute at[1];
    cfg.gridDim = NB; cfg.blockDim = 1024; cfg.stream = sm;
    at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = at; cfg.numAttrs = 1;
    CK(cudaLaunchKernelEx(&cfg, k_sm, a, 20000));
  }
  cudaError_t ce = cudaStreamEndCapture(sm, &g);
  printf("capture across green contexts: %s\n", cudaGetErrorString(ce));
  if (ce == cudaSuccess) {
    cudaGraphExec_t ge;
    cudaError_t ie = cudaGraphInstantiate(&ge, g, 0);
    printf("instantiate: %s\n", cudaGetErrorString(ie));
    if (ie == cudaSuccess) {
      CK(cudaMemset(a, 0xff, NB * 4)); CK(cudaMemset(b, 0xff, NB * 4)); CK(cudaMemset(c, 0xff, NB * 4));
      CK(cudaGraphLaunch(ge, sf));
      CK(cudaStreamSynchronize(sf));
      auto A2 = sms_of(a, NB), B2 = sms_of(b, NB), C2 = sms_of(c, NB);
      int sh = 0, shc = 0;
      for (int s : A2) sh += B2.count(s);
      for (int s : C2) shc += B2.count(s);
      printf("graph: main kernels on %zu / %zu SMs, pred kernel on %zu SMs, shared %d / %d (main == eager main set: %s)\n",
             A2.size(), C2.size(), B2.size(), sh, shc, A2 == A ? "yes" : "no");
    }
  }

  // 3. a predictor's bytes (w1 2.6 MB + w2 5.2 MB at 13B, rank 128) read by the pred partition alone, and by the device
  const size_t bytes = 8u << 20;
  uint4* w;
  float* o;
  CK(cudaMalloc(&w, 1u << 30));  // rotate through 1 GiB so L2 holds none of it
  CK(cudaMalloc(&o, 4));
  CK(cudaMemset(w, 0, 1u << 30));
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  auto timeit = [&](cudaStream_t s, int grid, int threads) {
    std::vector<float> ms;
    for (int it = 0; it < 40; it++) {
      const uint4* src = w + (size_t)(it % 100) * (bytes / 16);
      CK(cudaEventRecord(e0, s));
      k_read<<<grid, threads, 0, s>>>(src, bytes / 16, o);
      CK(cudaEventRecord(e1, s));
      CK(cudaEventSynchronize(e1));
      float t; CK(cudaEventElapsedTime(&t, e0, e1));
      if (it >= 5) ms.push_back(t);
    }
    std::sort(ms.begin(), ms.end());
    return ms[ms.size() / 2] * 1000.f;
  };
  for (int per : {1, 2, 4}) {
    float tp = timeit(sp, per * grp.sm.smCount, 512), tf = timeit(sf, per * p.multiProcessorCount, 512);
    printf("8 MiB read, %d blocks of 512 an SM: pred partition (%u SMs) %.1f us = %.2f TB/s; whole device %.1f us = %.2f TB/s\n",
           per, grp.sm.smCount, tp, bytes / tp / 1e6, tf, bytes / tf / 1e6);
  }
  printf("green: done\n");
  return 0;
}
