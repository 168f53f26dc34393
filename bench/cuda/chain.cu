// k_pred_chain (runtime/cuda/chain.cuh) alone, 13B tap group (d 5120, heads 40 + neurons 20480, rank 128): time per
// launch (events, median) on the green predictor partition and on the whole GPU, idle and beside a kernel streaming
// HBM on the other SMs, and where the time goes (block 0..G-1 stamps at phase ends, medians over blocks).
// nvcc -O3 -arch=sm_90 -std=c++17 -o /tmp/chain bench/cuda/chain.cu && /tmp/chain
#include "../../runtime/cuda/engine.cu"
#include <random>

#define CU(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { printf("CUDA %s at %d\n", cudaGetErrorString(e_), __LINE__); exit(1); } } while (0)

// Keeps HBM busy on the SMs it gets (the main partition) until *stop is set.
__global__ void k_hog(const uint4* w, size_t n16, volatile int* stop, float* out) {
  float acc = 0.f;
  const size_t stride = (size_t)gridDim.x * blockDim.x;
  while (!*stop)
    for (size_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n16 && !*stop; i += 4 * stride) {
      uint4 v[4];
#pragma unroll
      for (int u = 0; u < 4; u++) v[u] = i + u * stride < n16 ? __ldcs(w + i + u * stride) : make_uint4(0, 0, 0, 0);
#pragma unroll
      for (int u = 0; u < 4; u++) acc += __uint_as_float(v[u].x);
    }
  if (acc == 1.2345f) out[0] = acc;
}

int main() {
  setvbuf(stdout, nullptr, _IOLBF, 0);  // (lines reach a pipe as they are printed, also if a run hangs: run it under timeout)
  const int d = 5120, H = 40, F = 20480, r = 128, rows = 2 * r, COPIES = 24;
  Engine g;
  g.green = 16;
  if (setup_green(&g)) { printf("green: %s\n", dj_last_error()); return 1; }
  std::mt19937 rng(1);
  std::normal_distribution<float> nd(0.f, 1.f);
  auto randh = [&](size_t n, float sd) { std::vector<__half> v(n); for (auto& x : v) x = __float2half(nd(rng) * sd); return v; };
  const size_t per = (size_t)rows * d + (size_t)H * r + (size_t)F * r;  // halves per copy
  __half* W;
  CU(cudaMalloc(&W, per * COPIES * 2));
  { auto h = randh(per, 0.02f); for (int c = 0; c < COPIES; c++) CU(cudaMemcpy(W + per * c, h.data(), per * 2, cudaMemcpyHostToDevice)); }
  float *X, *Dl, *t, *sc0, *sc1, *hogout;
  int *sel0, *sel1, *stop;
  ChainState* S;
  unsigned long long* st;
  CU(cudaMalloc(&X, d * 4)); CU(cudaMalloc(&Dl, d * 4)); CU(cudaMalloc(&t, rows * 4));
  CU(cudaMalloc(&sc0, H * 4)); CU(cudaMalloc(&sc1, F * 4)); CU(cudaMalloc(&sel0, H * 4)); CU(cudaMalloc(&sel1, F * 4));
  CU(cudaMalloc(&S, sizeof(ChainState))); CU(cudaMalloc(&st, 132 * 16 * 8)); CU(cudaMalloc(&hogout, 4));
  CU(cudaMallocManaged(&stop, 4));
  { std::vector<float> x(d); for (auto& v : x) v = nd(rng); CU(cudaMemcpy(X, x.data(), d * 4, cudaMemcpyHostToDevice)); CU(cudaMemset(Dl, 0, d * 4)); }
  uint4* hogw;
  const size_t hog_bytes = 2ull << 30;
  CU(cudaMalloc(&hogw, hog_bytes));
  CU(cudaMemset(hogw, 0, hog_bytes));
  CU(cudaFuncSetAttribute(k_pred_chain, cudaFuncAttributeMaxDynamicSharedMemorySize, 160 * 1024));
  cudaStream_t sfull, shog;
  CU(cudaStreamCreateWithFlags(&sfull, cudaStreamNonBlocking));
  CU(cudaStreamCreateWithFlags(&shog, cudaStreamNonBlocking));
  cudaEvent_t e0, e1;
  CU(cudaEventCreate(&e0)); CU(cudaEventCreate(&e1));

  int opts = 0;
  auto args = [&](int c, bool stamps) {
    ChainArgs a{};
    a.opts = opts;
    a.in = XIn{};
    a.in.base = X; a.in.delta = Dl; a.in.eps = 1e-5f; a.in.norm = 1; a.in.tr = -1;
    a.d = d; a.rows = rows; a.w1 = W + per * c; a.t = t; a.nm = 2; a.s = S; a.stamps = stamps ? st : nullptr;
    a.m[0] = ChainMember{W + per * c + (size_t)rows * d, H, r, 8, 0, sc0, sel0};
    a.m[1] = ChainMember{W + per * c + (size_t)rows * d + (size_t)H * r, F, r, 1024, r, sc1, sel1};
    return a;
  };
  auto run = [&](const char* name, cudaStream_t s, int grid, bool hog) {
    CU(cudaMemset(S, 0, sizeof(ChainState)));
    if (hog) { *stop = 0; CU(cudaDeviceSynchronize()); k_hog<<<g.green_main * 2, 512, 0, g.gm>>>(hogw, hog_bytes / 16, stop, hogout); }
    std::vector<float> ms;
    for (int it = 0; it < 40; it++) {
      ChainArgs a = args(it % COPIES, it == 39);
      CU(cudaEventRecord(e0, s));
      k_pred_chain<<<grid, PC_THREADS, pc_smem(a, grid), s>>>(a);
      CU(cudaEventRecord(e1, s));
      CU(cudaEventSynchronize(e1));
      float v; CU(cudaEventElapsedTime(&v, e0, e1));
      if (it >= 5) ms.push_back(v * 1000.f);
    }
    if (hog) { *stop = 1; }
    CU(cudaDeviceSynchronize());
    std::sort(ms.begin(), ms.end());
    std::vector<unsigned long long> h(132 * 16);
    CU(cudaMemcpy(h.data(), st, h.size() * 8, cudaMemcpyDeviceToHost));
    unsigned long long t0 = ~0ull;
    for (int b = 0; b < grid; b++) t0 = std::min(t0, h[b * 16]);
    printf("%-34s grid %3d: %6.1f us/launch (event, median of 35)  phases (us from first entry, median over blocks):", name, grid, ms[ms.size() / 2]);
    const char* ph[] = {"entry", "x", "w1", "bar1", "t", "sc-loop", "merge", "scores", "bar2", "bins", "-", "end"};
    const int idx[] = {0, 1, 2, 3, 9, 10, 11, 4, 5, 6, 7, 8};
    for (int i = 0; i < 12; i++) {
      std::vector<double> v;
      for (int b = 0; b < grid; b++) if (h[b * 16 + idx[i]]) v.push_back((h[b * 16 + idx[i]] - t0) / 1e3);
      std::sort(v.begin(), v.end());
      printf(" %s %.1f", ph[i], v.empty() ? -1.0 : v[v.size() / 2]);
    }
    printf("\n");
  };
  // Check the selection once: exact top-k of its own scores.
  run("green 16 SMs, idle", (cudaStream_t)g.gp1, g.green, false);
  {
    std::vector<float> s(F);
    std::vector<int> sel(1024);
    CU(cudaMemcpy(s.data(), sc1, F * 4, cudaMemcpyDeviceToHost));
    CU(cudaMemcpy(sel.data(), sel1, 1024 * 4, cudaMemcpyDeviceToHost));
    std::vector<char> in(F, 0);
    float lo = INFINITY, hi = -INFINITY;
    int bad = 0;
    for (int v : sel) { if (v < 0 || v >= F || in[v]) bad++; else { in[v] = 1; lo = std::min(lo, s[v]); } }
    for (int j = 0; j < F; j++) if (!in[j]) hi = std::max(hi, s[j]);
    printf("selection: %d invalid, exact top-k of its scores: %s\n", bad, hi <= lo ? "yes" : "NO");
  }
  run("green 16 SMs, beside an HBM stream", (cudaStream_t)g.gp1, g.green, true);
  opts = 2;
  run("no histogram (timing): green 16, idle", (cudaStream_t)g.gp1, g.green, false);
  opts = 0;
  run("whole GPU, 32 blocks, idle", sfull, 32, false);
  run("whole GPU, 128 blocks, idle", sfull, 128, false);
  printf("chain: done\n");
  return 0;
}
