// cuBLAS for the prefill's GEMMs, opened at run time (dlopen) rather than linked: the library then builds with nvcc
// alone (no cuBLAS headers or import library needed), decode never needs cuBLAS, and a machine without it gets one
// clear error from the first prefill. Only the handful of entry points used are declared; their ABI (cublas_v2.h)
// and enum values have been stable since CUDA 11.
//
// Row-major helpers: cuBLAS is column-major, so a row-major C[M][N] = A[M][K] . B is computed as C^T = B^T . A^T.
#pragma once
#include <cuda_runtime.h>
#include <library_types.h>
#include <dlfcn.h>
#include <string>

namespace dj {

struct Blas {
  typedef int (*Create)(void**);
  typedef int (*Destroy)(void*);
  typedef int (*SetStream)(void*, cudaStream_t);
  typedef int (*GemmEx)(void*, int, int, int, int, int, const void*, const void*, cudaDataType, int, const void*,
                        cudaDataType, int, const void*, void*, cudaDataType, int, int, int);
  typedef int (*GemmBatched)(void*, int, int, int, int, int, const void*, const void*, cudaDataType, int, long long,
                             const void*, cudaDataType, int, long long, const void*, void*, cudaDataType, int,
                             long long, int, int, int);
  void* so = nullptr;
  void* h = nullptr;
  Create create = nullptr;
  Destroy destroy = nullptr;
  SetStream set_stream = nullptr;
  GemmEx gemm_ex = nullptr;
  GemmBatched gemm_batched = nullptr;
  enum { OP_N = 0, OP_T = 1, COMPUTE_32F = 68, ALGO_DEFAULT = -1 };
};

// Open cuBLAS and create a handle bound to `stream`; "" on success, else the reason.
inline std::string blas_open(Blas& b, cudaStream_t stream) {
  if (b.h) return "";
  const char* names[] = {"libcublas.so", "libcublas.so.13", "libcublas.so.12", "libcublas.so.11"};
  std::string tried;
  for (const char* n : names) {
    b.so = dlopen(n, RTLD_NOW | RTLD_LOCAL);
    if (b.so) break;
    tried += std::string(tried.empty() ? "" : ", ") + n;
  }
  if (!b.so)
    return "the CUDA prefill needs cuBLAS from the CUDA toolkit (tried " + tried +
           "; add its folder, e.g. /usr/local/cuda/lib64, to LD_LIBRARY_PATH)";
  b.create = (Blas::Create)dlsym(b.so, "cublasCreate_v2");
  b.destroy = (Blas::Destroy)dlsym(b.so, "cublasDestroy_v2");
  b.set_stream = (Blas::SetStream)dlsym(b.so, "cublasSetStream_v2");
  b.gemm_ex = (Blas::GemmEx)dlsym(b.so, "cublasGemmEx");
  b.gemm_batched = (Blas::GemmBatched)dlsym(b.so, "cublasGemmStridedBatchedEx");
  if (!b.create || !b.destroy || !b.set_stream || !b.gemm_ex || !b.gemm_batched) return "cuBLAS lacks cublasGemmEx / cublasGemmStridedBatchedEx";
  if (b.create(&b.h) != 0) { b.h = nullptr; return "cublasCreate failed"; }
  if (b.set_stream(b.h, stream) != 0) return "cublasSetStream failed";
  return "";
}

inline void blas_close(Blas& b) {
  if (b.h) b.destroy(b.h);
  b.h = nullptr;
}

// C[M][N] (row-major, ldc) = alpha * A[M][K] . op(W) + beta * C, fp16 inputs, fp32 accumulation.
// w_rows_out: W is [N][K] (nn.Linear layout, C = A W^T); else W is [K][N] (C = A W).
inline int blas_gemm(const Blas& b, int M, int N, int K, const __half* A, int lda, const __half* W, bool w_rows_out,
                     void* C, cudaDataType ctype, int ldc, float alpha = 1.f, float beta = 0.f) {
  return b.gemm_ex(b.h, w_rows_out ? Blas::OP_T : Blas::OP_N, Blas::OP_N, N, M, K, &alpha, W, CUDA_R_16F,
                   w_rows_out ? K : N, A, CUDA_R_16F, lda, &beta, C, ctype, ldc, Blas::COMPUTE_32F, Blas::ALGO_DEFAULT);
}

}  // namespace dj
