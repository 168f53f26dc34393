// Hopper bulk copies (cp.async.bulk, the copy engine) into a shared-memory ring, completing on mbarriers.
// Why: a register-streaming GEMV keeps at most (threads x loads in flight x 16 B) in flight per SM and stalls
// each warp on its own loads; the copy engine keeps a whole ring (100+ KB per SM) in flight with one issuing
// thread, and consumers read finished stages from shared memory. Used by the fused kernels (fused.cuh).
#pragma once
#include <cuda_fp16.h>
#include <stdint.h>
#include "kernels.cuh"  // DJ_SM90

namespace dj {

__device__ __forceinline__ uint32_t smem_u32(const void* p) { return (uint32_t)__cvta_generic_to_shared(p); }

#if DJ_SM90
__device__ __forceinline__ void mbar_init(uint64_t* bar, unsigned count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_u32(bar)), "r"(count) : "memory");
}
// Make initialised barriers visible to the copy engine (async proxy) and the rest of the cluster.
__device__ __forceinline__ void mbar_fence_init() { asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory"); }

__device__ __forceinline__ void mbar_expect_tx(uint64_t* bar, unsigned bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_u32(bar)), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(smem_u32(bar)) : "memory");
}
__device__ __forceinline__ bool mbar_try_wait(uint64_t* bar, unsigned parity) {
  uint32_t ok;
  asm volatile(
      "{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n selp.u32 %0, 1, 0, p;\n}\n"
      : "=r"(ok)
      : "r"(smem_u32(bar)), "r"(parity)
      : "memory");
  return ok != 0;
}
__device__ __forceinline__ void mbar_wait(uint64_t* bar, unsigned parity) {
  while (!mbar_try_wait(bar, parity)) {
  }
}

// Weights are read once per token: evict-first in L2, so activations and the KV cache stay cached.
__device__ __forceinline__ uint64_t policy_evict_first() {
  uint64_t pol;
  asm("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(pol));
  return pol;
}

// global -> shared bulk copy of `bytes` (multiple of 16, both addresses 16-byte aligned), completing on `bar`.
__device__ __forceinline__ void bulk_g2s(void* dst, const void* src, uint32_t bytes, uint64_t* bar, uint64_t pol) {
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes.L2::cache_hint [%0], [%1], %2, [%3], %4;" ::"r"(
          smem_u32(dst)),
      "l"(src), "r"(bytes), "r"(smem_u32(bar)), "l"(pol)
      : "memory");
}

#else
// Device code for sm_80..sm_89: these kernels are never launched there (the portable path runs instead); the stubs
// only let the same sources compile for every architecture of the build.
__device__ __forceinline__ void mbar_init(uint64_t*, unsigned) { __trap(); }
__device__ __forceinline__ void mbar_fence_init() { __trap(); }
__device__ __forceinline__ void mbar_expect_tx(uint64_t*, unsigned) { __trap(); }
__device__ __forceinline__ void mbar_arrive(uint64_t*) { __trap(); }
__device__ __forceinline__ bool mbar_try_wait(uint64_t*, unsigned) { __trap(); return true; }
__device__ __forceinline__ void mbar_wait(uint64_t*, unsigned) { __trap(); }
__device__ __forceinline__ uint64_t policy_evict_first() { return 0; }
__device__ __forceinline__ void bulk_g2s(void*, const void*, uint32_t, uint64_t*, uint64_t) { __trap(); }
#endif

// A ring of S stages in shared memory: full[s] completes when the stage's bytes have landed, empty[s] when all
// `consumers` (warps) have released it. Parities flip each time a stage index wraps around.
template <int S>
struct Ring {
  uint64_t full[S];
  uint64_t empty[S];
  __device__ __forceinline__ void init(unsigned consumers) {
    for (int s = 0; s < S; s++) {
      mbar_init(&full[s], 1);
      mbar_init(&empty[s], consumers);
    }
  }
};

}  // namespace dj
