// Predictors fused into the main kernels (engine.cu, env DEJAVU_CUDA_PFUSE=1; 2 = the small ones only). OFF by
// default: correct (runtime/cuda/check.cu checks it), but slower on the 13B shape (H200: 2.21-2.27 ms against
// 1.93-2.01 with the side-stream chain; docs/cuda.md v15): the top-k's dependent global round trips, issued from SMs
// with ~100 KB of bulk copies in flight, end ~8 us after the attention they should hide behind, and the MLP cannot
// start before this kernel ends. With DEJAVU_CUDA_PF_LOCAL=1 the big member's selection is a grouped top-k instead
// (pf_local below, v24): faster than the side-stream chain (H200 1.762 vs 1.868 ms), but it picks differently from
// the exact top-k, so also off by default.
// Why it was tried: on side streams the predictor chain of a tap costs the sparse step its PDL (early-launched main
// kernels hold the SMs the chain needs), 16 SMs, and a graph edge before every consumer: 13B sparse 1.93 ms against
// 1.57 with fixed selections (docs/cuda.md v13b). A chain run on 16 SMs by one persistent kernel was slower still (v14:
// the predictor bytes need the whole GPU's bandwidth). Here the predictor work rides in the kernels that already stream
// weights on every SM, and the consumers wait on flags instead of graph edges:
//   tap att_in(l)  -> k_rows_tma<QKV> of layer l also streams the tap's stacked w1 rows (t = w1 . x, x from the
//                     same shared-memory planes as q/k/v: the planes hold ln1_g * x, so w1 is stored divided by
//                     ln1_g, and the parameter-free LayerNorm uses the row epilogue's statistics, c1 = sum w1);
//   k_attn_out(l)  -> its slice of the w2 rows copied at block entry (weights); the consumer warps score them
//                     right after their grid dependency (pf_scores), then one extra warp per block runs an exact
//                     top-k spread over the blocks (below) while the others run the attention and out_proj;
//                     small predictors (heads) are selected whole by one block's extra warp;
//   consumers      -> the MLP of layer l and the QKV / attention of later layers wait on a per-selection flag
//                     (step serial + 1) before reading the selection; it is set long before in practice.
// Only predictors whose tap is att_in(l) and whose selection is used at the MLP of l or later can ride so; others
// (e.g. heads of layer 0 read from att_in(0), or MLP predictors on mlp_in) keep the side-stream chain.
//
// Exact top-k of the big predictor over G blocks (k of n; one warp per block, ~n/G scores each):
//   A  every block: its scores -> keys (order-preserving), histograms of the top 8 and top 16 key bits (global,
//      zero at rest); the last block to arrive finds the 16-bit bin T holding the k-th largest key and `rem`, how
//      many to take from it, and releases flag A.
//   B  every block: its keys above T appended to the selection, its keys in T appended to a candidate list, its
//      histogram bins cleared (all additions are done by then); the last block ranks the candidates (typically a
//      few dozen: a bin is 2^-7 of the value wide) by (key, index) and appends the first `rem`, then releases the
//      selection's flag. More than PF_CAND_SM candidates (degenerate scores) are taken in arrival order.
#pragma once
#include "kernels.cuh"
#include "tma.cuh"

namespace dj {

constexpr int PF_SMALL_MAX = 128;  // members with n <= this are selected whole by one warp (attention heads)
constexpr int PF_MAX_SMALL = 2;
constexpr int PF_CAND_SM = 1024;   // candidates ranked exactly in shared memory
constexpr int PF_FINE = 65536;     // 16-bit key bins

// Per big member; zero at allocation, and each step leaves it zero (the last blocks reset what they used).
struct PfState {
  unsigned cntA, cntB, n_sel, n_cand, T1, rem, flagA;
};
struct PfMember {
  const __half* W2;  // [n][r]
  int n, r, k, toff;  // toff: where its t starts in the stacked t
  int* sel;           // [k]
  unsigned* done;     // set to serial + 1 once sel is complete
};
struct PredFuse {
  int on;
  const float* t;  // the stacked t written by this layer's QKV kernel
  int trows;
  const int* st;   // st[2]: the step serial (advanced by the LM head's last block)
  int nbig;
  PfMember big;
  PfState* s;
  unsigned* coarse;  // [256]
  unsigned* fine;    // [PF_FINE]
  uint32_t* cand_key;  // [n]
  int* cand_idx;
  int nsmall;
  PfMember small[PF_MAX_SMALL];
  int per;           // big rows per block
  unsigned smem_off; // the warp's area in the kernel's dynamic shared memory
  int skip;          // TIMING EXPERIMENT ONLY (engine pf_skip): 2 no top-k after the histograms, 8 no work at all;
                     // grouped mode: 32 no selection (first rows), 64 no key dot products
  int local;         // grouped top-k (pf_local, DEJAVU_CUDA_PF_LOCAL): each block selects its own rows' share;
                     // 2 by warp-max rounds (default), 1 by a bitwise search (DEJAVU_CUDA_PF_SEL=0)
  unsigned* gdone;   // grouped mode: [gridDim.x] per-group flags (serial + 1 once the group's share is in sel)
  int pw;            // grouped mode: predictor warps per block (DEJAVU_CUDA_PF_WARPS, 2..8; PF_LOCAL_WARPS)
};
constexpr int PF_LOCAL_WARPS = 4;  // predictor warps per block in the grouped mode (scores off the consumers' path)

// Shared-memory area of the predictor warp (host and device agree through this).
struct PfLayout {
  unsigned w2, keys, skeys, ts, ck, ci, hc, bytes;
};
__host__ __device__ inline PfLayout pf_layout(const PredFuse& p) {
  auto al = [](unsigned v) { return (v + 15u) & ~15u; };
  PfLayout o{};
  unsigned w2 = p.nbig ? (unsigned)p.per * p.big.r * 2u : 0u;
  for (int m = 0; m < p.nsmall; m++) w2 += (unsigned)p.small[m].n * p.small[m].r * 2u;
  o.w2 = 0;
  o.keys = al(w2);
  o.skeys = al(o.keys + (p.nbig ? (unsigned)p.per * 4u : 0u));
  o.ts = al(o.skeys + PF_MAX_SMALL * PF_SMALL_MAX * 4u);
  o.ck = al(o.ts + (unsigned)p.trows * 4u);
  o.ci = o.ck + (p.nbig ? PF_CAND_SM * 4u : 0u);
  o.hc = al(o.ci + (p.nbig ? PF_CAND_SM * 4u : 0u));
  o.bytes = al(o.hc + 256u * 4u);
  return o;
}
// The block that selects small member m.
__host__ __device__ inline int pf_small_owner(int m, int nblk) { return nblk - 1 - m >= 0 ? nblk - 1 - m : 0; }

__device__ __forceinline__ unsigned ld_acquire(const unsigned* p) {
  unsigned v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ void st_release(unsigned* p, unsigned v) {
  asm volatile("st.release.gpu.global.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}
__device__ __forceinline__ unsigned step_serial(const int* st) { return (unsigned)__ldcg(st + 2); }
// Wait until *f reaches target (flags only grow: they hold a step serial + 1). A lost flag would hang the GPU:
// trap after ~4 s instead, so the host sees an error.
__device__ __forceinline__ void pf_wait(const unsigned* f, unsigned target) {
  long long t0 = clock64();
  while ((int)(ld_acquire(f) - target) < 0) {
    __nanosleep(64);
    if (clock64() - t0 > 8000000000ll) __trap();
  }
}
// The consumers' side: wait for a selection's flag of this step (one thread; the caller synchronises).
__device__ __forceinline__ void pf_wait_sel(const unsigned* flag, const int* st) {
  if (flag) pf_wait(flag, step_serial(st) + 1u);
}

// dot(row of r fp16 in shared memory, t) by one lane; lanes start at different 16-byte vectors (no bank
// conflicts between the lanes' rows, which are 2r bytes apart).
__device__ __forceinline__ float pf_dot(const unsigned char* row, const float* ts, int r, int lane) {
  const int nvec = r >> 3, v = lane % nvec;
  const uint4* w = reinterpret_cast<const uint4*>(row);
  float acc[4] = {0.f, 0.f, 0.f, 0.f};  // 4 independent chains: the shared-memory loads overlap
#pragma unroll 4
  for (int c = 0; c < nvec; c++) {
    int u = v + c;
    if (u >= nvec) u -= nvec;
    acc[c & 3] += dot8(w[u], ts + 8 * u);
  }
  return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

// Warp scan over 256 bins read by `bin(i)` (i = 0 highest): the bin holding the k-th largest (1-based) and how
// many keys lie in higher bins. Lane l owns bins 8l..8l+7 (in descending key order).
template <class Bin>
__device__ __forceinline__ void pf_find_bin(Bin bin, unsigned k, int& which, unsigned& above_out) {
  const int lane = threadIdx.x & 31;
  unsigned c[8], tot = 0;
#pragma unroll
  for (int u = 0; u < 8; u++) { c[u] = bin(8 * lane + u); tot += c[u]; }
  unsigned incl = tot;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    unsigned v = __shfl_up_sync(0xffffffffu, incl, o);
    if (lane >= o) incl += v;
  }
  unsigned above = incl - tot;
  int w = -1;
  unsigned ab = 0;
  if (above < k && incl >= k) {
#pragma unroll
    for (int u = 0; u < 8; u++) {
      if (w < 0 && above + c[u] >= k) { w = 8 * lane + u; ab = above; }
      above += c[u];
    }
  }
  const unsigned m = __ballot_sync(0xffffffffu, w >= 0);
  const int src = m ? __ffs(m) - 1 : 0;
  which = __shfl_sync(0xffffffffu, w, src);
  above_out = __shfl_sync(0xffffffffu, ab, src);
}

// A small member, whole, by one warp from its keys (pf_scores): rank by counting (ties: lower index first),
// selection in index order, flag released.
__device__ __forceinline__ void pf_small(const PfMember& m, const uint32_t* skeys, unsigned target) {
  const int lane = threadIdx.x & 31;
  int cnt = 0;
  for (int base = 0; base < m.n; base += 32) {
    const int i = base + lane;
    bool keep = false;
    if (i < m.n) {
      const uint32_t me = skeys[i];
      int rank = 0;
      for (int j = 0; j < m.n; j++) { const uint32_t o = skeys[j]; rank += (o > me) | ((o == me) & (j < i)); }
      keep = rank < m.k;
    }
    const unsigned b = __ballot_sync(0xffffffffu, keep);
    if (keep) m.sel[cnt + __popc(b & ((1u << lane) - 1u))] = i;
    cnt += __popc(b);
  }
  __threadfence();
  __syncwarp();
  if (lane == 0) st_release(m.done, target);
}

// This block's share: rows [r0, r0 + nr) of the big member, and the small members it selects (their w2 after the
// big rows in the shared-memory area).
struct PfBlk {
  int r0, nr;
  unsigned soff[PF_MAX_SMALL];
  bool mine[PF_MAX_SMALL];
};
__device__ __forceinline__ PfBlk pf_blk(const PredFuse& p) {
  PfBlk b;
  b.r0 = blockIdx.x * p.per;
  b.nr = p.nbig ? max(0, min(p.big.n, b.r0 + p.per) - b.r0) : 0;
  unsigned o = (unsigned)p.per * (p.nbig ? p.big.r : 0) * 2u;
  for (int m = 0; m < PF_MAX_SMALL; m++) {
    b.mine[m] = m < p.nsmall && pf_small_owner(m, gridDim.x) == (int)blockIdx.x;
    b.soff[m] = o;
    if (m < p.nsmall) o += (unsigned)p.small[m].n * p.small[m].r * 2u;
  }
  return b;
}

// The keys (order-preserving f2key of w2 . t) of the block's big-member rows (big: false skips them, timing only)
// and of the small members it selects, a row per thread: threads tid of nt. Used by the consumer warps (pf_scores)
// and by the grouped mode's predictor warps (pf_local).
__device__ __forceinline__ void pf_keys(const PredFuse& p, const PfLayout& L, const PfBlk& b, unsigned char* area,
                                        const float* ts, int tid, int nt, int lane, bool big) {
  uint32_t* keys = reinterpret_cast<uint32_t*>(area + L.keys);
  if (big)
    for (int i = tid; i < b.nr; i += nt)
      keys[i] = f2key(pf_dot(area + L.w2 + (size_t)i * p.big.r * 2, ts + p.big.toff, p.big.r, lane));
  for (int m = 0; m < p.nsmall; m++) {
    if (!b.mine[m]) continue;
    uint32_t* sk = reinterpret_cast<uint32_t*>(area + L.skeys) + m * PF_SMALL_MAX;
    for (int i = tid; i < p.small[m].n; i += nt)
      sk[i] = f2key(pf_dot(area + b.soff[m] + (size_t)i * p.small[m].r * 2, ts + p.small[m].toff, p.small[m].r, lane));
  }
}

// The consumer warps of k_attn_out, right after their grid dependency and before the attention: t into shared
// memory, then the keys of the block's w2 rows (a row per thread: ~0.3 us), and `ready` for the predictor warp.
// Why here and not in that warp: one warp took ~7 us a layer for them (measured), longer than the attention.
template <int NW, class Bar>
__device__ __forceinline__ void pf_scores(const PredFuse& p, unsigned char* area, uint64_t* bar, uint64_t* ready,
                                          Bar cbar_nw) {
  constexpr int TC = NW * 32;
  const int tid = threadIdx.x, lane = tid & 31;
  const PfLayout L = pf_layout(p);
  const PfBlk b = pf_blk(p);
  float* ts = reinterpret_cast<float*>(area + L.ts);
  for (int i = tid; i < p.trows; i += TC) ts[i] = __ldcg(p.t + i);
  mbar_wait(bar, 0);  // this block's w2 rows have landed
  cbar_nw();
  pf_keys(p, L, b, area, ts, tid, TC, lane, true);
  cbar_nw();
  if (tid == 0) mbar_arrive(ready);
}

// The predictor warp of k_attn_out (see the header): the w2 copies at block entry, then, once the consumers have
// the keys (`ready`), the top-k. `area`: its shared memory; `bar`: the copies' barrier; both count 1.
__device__ void pf_warp(const PredFuse& p, unsigned char* area, uint64_t* bar, uint64_t* ready, int tr) {
  const int lane = threadIdx.x & 31, blk = blockIdx.x, nblk = gridDim.x;
  const PfLayout L = pf_layout(p);
  const PfBlk B = pf_blk(p);
  const int rb = p.big.r, r0 = B.r0, nr = B.nr;
  auto smalls = [&](unsigned target) {
    for (int m = 0; m < p.nsmall; m++)
      if (B.mine[m]) pf_small(p.small[m], reinterpret_cast<const uint32_t*>(area + L.skeys) + m * PF_SMALL_MAX, target);
  };
  if (p.skip & 8) {  // (timing only: no work at all, flags set)
    if (lane == 0) {
      const unsigned tg = step_serial(p.st) + 1u;
      for (int m = 0; m < p.nsmall; m++) if (B.mine[m]) st_release(p.small[m].done, tg);
      if (p.nbig && blk == 0) st_release(p.big.done, tg);
    }
    return;
  }
  if (lane == 0) {  // weights: never written in a step, so copied before the grid dependency
    unsigned bytes = (unsigned)nr * rb * 2u;
    for (int m = 0; m < p.nsmall; m++) if (B.mine[m]) bytes += (unsigned)p.small[m].n * p.small[m].r * 2u;
    mbar_expect_tx(bar, bytes);
    const uint64_t pol = policy_evict_first();
    if (nr) bulk_g2s(area + L.w2, p.big.W2 + (size_t)r0 * rb, (unsigned)nr * rb * 2u, bar, pol);
    for (int m = 0; m < p.nsmall; m++)
      if (B.mine[m]) bulk_g2s(area + B.soff[m], p.small[m].W2, (unsigned)p.small[m].n * p.small[m].r * 2u, bar, pol);
  }
  mbar_wait(ready, 0);  // the consumers' keys (after their grid dependency: t is this step's)
  const unsigned target = step_serial(p.st) + 1u;
  if (!p.nbig) {
    smalls(target);
    return;
  }
  // ---- A: histograms of the keys, counts merged per warp (fine bins) and per block (coarse bins) before the
  // global atomics. (Merging measured no faster than an atomic per key, docs/cuda.md v15b: the round trips are the
  // cost, not contention; kept as the fewer-atomics form.) ----
  PfState* S = p.s;
  uint32_t* keys = reinterpret_cast<uint32_t*>(area + L.keys);
  unsigned* hc = reinterpret_cast<unsigned*>(area + L.hc);
  for (int i = lane; i < 256; i += 32) hc[i] = 0u;
  __syncwarp();
  for (int base = 0; base < nr; base += 32) {
    const int i = base + lane;
    uint32_t key = 0u;
    if (i < nr) {
      key = keys[i];
      atomicAdd(hc + (key >> 24), 1u);
    }
    const unsigned fb = i < nr ? key >> 16 : 0xffffffffu;
    const unsigned same = __match_any_sync(0xffffffffu, fb);  // lanes with the same fine bin: one atomic
    if (i < nr && __ffs(same) - 1 == lane) atomicAdd(p.fine + fb, (unsigned)__popc(same));
  }
  __syncwarp();
  for (int i = lane; i < 256; i += 32) {
    const unsigned c = hc[i];
    if (c) atomicAdd(p.coarse + i, c);
  }
  if (p.skip) {  // (timing only: no selection, flags set)
    smalls(target);
    __syncwarp();
    if (blk == 0 && lane == 0) st_release(p.big.done, target);
    return;
  }
  __threadfence();
  __syncwarp();
  unsigned last = 0;
  if (lane == 0) last = atomicAdd(&S->cntA, 1u) == (unsigned)nblk - 1u;
  last = __shfl_sync(0xffffffffu, last, 0);
  // small members while the other blocks finish step A (the last block does its threshold first)
  if (!last) smalls(target);
  unsigned T1 = 0, rem = 0;
  if (last) {
    __threadfence();
    const unsigned k = (unsigned)p.big.k;
    int C, F;
    unsigned abC, abF;
    pf_find_bin([&](int i) { return __ldcg(p.coarse + 255 - i); }, k, C, abC);
    C = 255 - C;
    pf_find_bin([&](int i) { return __ldcg(p.fine + C * 256 + 255 - i); }, k - abC, F, abF);
    T1 = (unsigned)(C * 256 + 255 - F);
    rem = k - abC - abF;
    for (int i = lane; i < 256; i += 32) p.coarse[i] = 0u;  // every addition is in (cntA): clear for the next step
    __syncwarp();
    if (lane == 0) {
      S->T1 = T1; S->rem = rem; S->cntA = 0u;
      __threadfence();
      st_release(&S->flagA, target);
    }
    smalls(target);
  } else {
    if (lane == 0) { pf_wait(&S->flagA, target); T1 = __ldcg(&S->T1); rem = __ldcg(&S->rem); }
    T1 = __shfl_sync(0xffffffffu, T1, 0);
    rem = __shfl_sync(0xffffffffu, rem, 0);
  }
  if (lane == 0) tr_mark(tr, 4);
  // ---- B: above the bin -> selection, in the bin -> candidates (one atomic each per block: they are round
  // trips on the MLP's critical path); clear the histograms ----
  unsigned na = 0, nc_l = 0;
  for (int i = lane; i < nr; i += 32) {
    const unsigned hi = keys[i] >> 16;
    na += hi > T1;
    nc_l += hi == T1;
  }
  unsigned ia = na, ic = nc_l;  // inclusive warp scans
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const unsigned va = __shfl_up_sync(0xffffffffu, ia, o), vc = __shfl_up_sync(0xffffffffu, ic, o);
    if (lane >= o) { ia += va; ic += vc; }
  }
  const unsigned ta = __shfl_sync(0xffffffffu, ia, 31), tc = __shfl_sync(0xffffffffu, ic, 31);
  unsigned base_a = 0, base_c = 0;
  if (lane == 0 && ta) base_a = atomicAdd(&S->n_sel, ta);
  if (lane == 1 && tc) base_c = atomicAdd(&S->n_cand, tc);
  base_a = __shfl_sync(0xffffffffu, base_a, 0) + ia - na;
  base_c = __shfl_sync(0xffffffffu, base_c, 1) + ic - nc_l;
  for (int i = lane; i < nr; i += 32) {
    const uint32_t key = keys[i];
    const unsigned hi = key >> 16;
    if (hi > T1) p.big.sel[base_a++] = r0 + i;
    else if (hi == T1) { p.cand_key[base_c] = key; p.cand_idx[base_c++] = r0 + i; }
  }
  for (int base = 0; base < nr; base += 32) {  // every block added before flag A: no addition is in flight
    const int i = base + lane;
    const unsigned fb = i < nr ? keys[i] >> 16 : 0xffffffffu;
    const unsigned same = __match_any_sync(0xffffffffu, fb);
    if (i < nr && __ffs(same) - 1 == lane) p.fine[fb] = 0u;
  }
  __threadfence();
  __syncwarp();
  if (lane == 0) last = atomicAdd(&S->cntB, 1u) == (unsigned)nblk - 1u;
  last = __shfl_sync(0xffffffffu, last, 0);
  if (lane == 0) tr_mark(tr, 5);
  if (!last) return;
  __threadfence();
  const int nc = (int)__ldcg(&S->n_cand);
  if (nc <= PF_CAND_SM) {
    uint32_t* ck = reinterpret_cast<uint32_t*>(area + L.ck);
    int* ci = reinterpret_cast<int*>(area + L.ci);
    for (int j = lane; j < nc; j += 32) { ck[j] = __ldcg(p.cand_key + j); ci[j] = __ldcg(p.cand_idx + j); }
    __syncwarp();
    for (int base = 0; base < nc; base += 32) {
      const int i = base + lane;
      bool take = false;
      if (i < nc) {
        const uint32_t me = ck[i];
        const int mi = ci[i];
        unsigned rank = 0;
        for (int j = 0; j < nc; j++) { const uint32_t o = ck[j]; rank += (o > me) | ((o == me) & (ci[j] < mi)); }
        take = rank < rem;
      }
      warp_append(take, i < nc ? ci[i] : 0, &S->n_sel, p.big.sel);
    }
  } else {
    for (int base = 0; base < (int)rem; base += 32) {
      const int i = base + lane;
      warp_append(i < (int)rem, i < (int)rem ? __ldcg(p.cand_idx + i) : 0, &S->n_sel, p.big.sel);
    }
  }
  __threadfence();
  __syncwarp();
  if (lane == 0) {
    S->cntB = 0u; S->n_sel = 0u; S->n_cand = 0u;
    __threadfence();
    st_release(p.big.done, target);
    tr_mark(tr, 5);
  }
}

// ---- Grouped top-k (PredFuse::local, DEJAVU_CUDA_PF_LOCAL=1; docs/cuda.md v24) ----
// Block b owns the big member's rows [r0, r0 + nr) (r0 = b * per) and selects the top
// floor(k*(r0+nr)/n) - floor(k*r0/n) of them into sel at floor(k*r0/n): the same rule as runtime/sparse/kernels.ts
// groupedTopK with groups = gridDim.x. Why: the exact top-k over all n needs global histogram rounds whose round trips,
// issued from SMs with ~100 KB of copies in flight, end after the attention they should hide behind (v15); a
// block's own share needs no global pass, and each group releases a flag of its own. The cost is in what it picks (a
// group cannot take more than its share), measured on opt-mini (bench/results/grouped-topk-study-opt-mini-*).
// Run by p.pw warps of k_attn_out (PF_LOCAL_WARPS unless DEJAVU_CUDA_PF_WARPS) after their grid dependency; the consumer warps do none of it, so the
// attention does not wait for the w2 copy.
__device__ __forceinline__ void pbar_local(int threads) { asm volatile("bar.sync 2, %0;" ::"r"(threads) : "memory"); }
// One warp: the top c of keys[0..nr) (ties to the lower index) -> out[0..c) + r0, ascending. The c-th largest key
// by a 32-step bitwise search (count of keys >= candidate, one warp reduction a step; nr is a few hundred).
constexpr int PF_SEL_REG = 10;  // keys a lane holds in registers for the selection (groups up to 320 rows: 66B has 293)
__device__ __forceinline__ void pf_emit_above(const uint32_t* keys, int nr, int c, int r0, uint32_t T, int* out);
__device__ __forceinline__ void pf_group_select(const uint32_t* keys, int nr, int c, int r0, int* out) {
  const int lane = threadIdx.x & 31;
  if (c <= 0) return;
  uint32_t T = 0;
  if (nr <= 32 * PF_SEL_REG) {  // registers: no shared-memory round trip in the 32 dependent steps
    uint32_t kr[PF_SEL_REG];
#pragma unroll
    for (int u = 0; u < PF_SEL_REG; u++) kr[u] = lane + 32 * u < nr ? keys[lane + 32 * u] : 0u;
    for (int bit = 31; bit >= 0; bit--) {
      const uint32_t cand = T | (1u << bit);
      unsigned cnt = 0;
#pragma unroll
      for (int u = 0; u < PF_SEL_REG; u++) cnt += (lane + 32 * u < nr) & (kr[u] >= cand);
      if (__reduce_add_sync(0xffffffffu, cnt) >= (unsigned)c) T = cand;
    }
  } else {
    for (int bit = 31; bit >= 0; bit--) {
      const uint32_t cand = T | (1u << bit);
      unsigned cnt = 0;
      for (int i = lane; i < nr; i += 32) cnt += keys[i] >= cand;
      if (__reduce_add_sync(0xffffffffu, cnt) >= (unsigned)c) T = cand;
    }
  }
  pf_emit_above(keys, nr, c, r0, T, out);
}
// Warp-max rounds (PredFuse::local == 2, the default): c rounds, each one warp max of the keys left (redux) and the lowest index
// holding it (a second redux), so ties go to the lower index as in the bitwise search. Why: c is 7-8 at 13B (groups
// of 160 picking 8), so c rounds of two reductions replace 32 dependent steps (the trace put the search at ~8 us of
// the predictor warps' ~14, s13 call 1; H200 13B sparse 1.776 -> 1.663 ms, call 2). Needs nr <= 32 * PF_SEL_REG and
// c <= 32 (else the bitwise search runs); out ascending, as pf_group_select.
__device__ __forceinline__ void pf_group_select_max(const uint32_t* keys, int nr, int c, int r0, int* out) {
  const int lane = threadIdx.x & 31;
  uint32_t kr[PF_SEL_REG];
  unsigned live = 0;
#pragma unroll
  for (int u = 0; u < PF_SEL_REG; u++) {
    const bool in = lane + 32 * u < nr;
    kr[u] = in ? keys[lane + 32 * u] : 0u;
    live |= (unsigned)in << u;
  }
  unsigned taken = 0;
  for (int j = 0; j < c; j++) {
    uint32_t lm = 0;
    int lu = -1;
#pragma unroll
    for (int u = 0; u < PF_SEL_REG; u++)  // the lane's largest live key, the lowest u among equals
      if (((live >> u) & 1u) && (lu < 0 || kr[u] > lm)) { lm = kr[u]; lu = u; }
    const uint32_t gm = __reduce_max_sync(0xffffffffu, lu >= 0 ? lm : 0u);  // c <= live keys: some lane holds gm
    const unsigned gi = __reduce_min_sync(0xffffffffu, lu >= 0 && lm == gm ? (unsigned)(32 * lu + lane) : ~0u);
    if ((int)(gi & 31u) == lane) { live &= ~(1u << (gi >> 5)); taken |= 1u << (gi >> 5); }
  }
  const unsigned lt = (1u << lane) - 1u;
  int pos = 0;
#pragma unroll
  for (int u = 0; u < PF_SEL_REG; u++) {
    const bool take = (taken >> u) & 1u;
    const unsigned tb = __ballot_sync(0xffffffffu, take);
    if (take) out[pos + __popc(tb & lt)] = r0 + lane + 32 * u;
    pos += __popc(tb);
  }
}
// The grouped mode's selection: warp-max rounds where they apply (rounds: PredFuse::local == 2), else the search.
__device__ __forceinline__ void pf_group_pick(bool rounds, const uint32_t* keys, int nr, int c, int r0, int* out) {
  if (rounds && nr <= 32 * PF_SEL_REG && c <= 32) pf_group_select_max(keys, nr, c, r0, out);
  else pf_group_select(keys, nr, c, r0, out);
}
// The keys above T and the first (c - their count) equal to T, in index order, to out[0..c) + r0.
__device__ __forceinline__ void pf_emit_above(const uint32_t* keys, int nr, int c, int r0, uint32_t T, int* out) {
  const int lane = threadIdx.x & 31;
  unsigned above = 0;
  for (int i = lane; i < nr; i += 32) above += keys[i] > T;
  unsigned eq_left = (unsigned)c - __reduce_add_sync(0xffffffffu, above);
  const unsigned lt = (1u << lane) - 1u;
  int pos = 0;
  for (int base = 0; base < nr; base += 32) {
    const int i = base + lane;
    const uint32_t key = i < nr ? keys[i] : 0u;
    const bool gt = i < nr && key > T, eq = i < nr && key == T;
    const unsigned eqb = __ballot_sync(0xffffffffu, eq);
    const bool take_eq = eq && (unsigned)__popc(eqb & lt) < eq_left;
    const unsigned teb = __ballot_sync(0xffffffffu, take_eq);
    eq_left -= (unsigned)__popc(teb);
    const bool take = gt || take_eq;
    const unsigned tb = __ballot_sync(0xffffffffu, take);
    if (take) out[pos + __popc(tb & lt)] = r0 + i;
    pos += __popc(tb);
  }
}
// The block's w2 rows (its group and the small members it selects) into shared memory: weights, never written in a
// step, so copied at block entry by the kernel's prologue thread, ahead of the out_proj copies (queued behind
// them, the rows landed ~6 us after the grid dependency: trace, s12 call 4).
__device__ __forceinline__ void pf_local_copy(const PredFuse& p, unsigned char* area, uint64_t* bar) {
  const PfLayout L = pf_layout(p);
  const PfBlk B = pf_blk(p);
  unsigned bytes = (unsigned)B.nr * p.big.r * 2u;
  for (int m = 0; m < p.nsmall; m++) if (B.mine[m]) bytes += (unsigned)p.small[m].n * p.small[m].r * 2u;
  mbar_expect_tx(bar, bytes);
  const uint64_t pol = policy_evict_first();
  if (B.nr) bulk_g2s(area + L.w2, p.big.W2 + (size_t)B.r0 * p.big.r, (unsigned)B.nr * p.big.r * 2u, bar, pol);
  for (int m = 0; m < p.nsmall; m++)
    if (B.mine[m]) bulk_g2s(area + B.soff[m], p.small[m].W2, (unsigned)p.small[m].n * p.small[m].r * 2u, bar, pol);
}
// The predictor warps of k_attn_out in the grouped mode, after the grid dependency: t, the keys of the block's rows
// and of the small members it selects, the small selections (warp 1) and the block's group (warp 0), which then
// releases the group's flag. pt: the thread's index among the predictor warps (0 .. p.pw * 32 - 1).
__device__ void pf_local(const PredFuse& p, unsigned char* area, uint64_t* bar, int tr, int pt) {
  const int pw = pt >> 5, lane = pt & 31, PT = p.pw * 32;
  const PfLayout L = pf_layout(p);
  const PfBlk B = pf_blk(p);
  pdl_wait();  // t (this layer's QKV kernel) and the step serial are this step's
  if (pt == 0) tr_mark(tr, 10);
  float* ts = reinterpret_cast<float*>(area + L.ts);
  for (int i = pt; i < p.trows; i += PT) ts[i] = __ldcg(p.t + i);
  const unsigned target = step_serial(p.st) + 1u;
  mbar_wait(bar, 0);
  pbar_local(PT);
  if (pt == 0) tr_mark(tr, 11);
  pf_keys(p, L, B, area, ts, pt, PT, lane, !(p.skip & 64));  // (64: timing only, no dot products of the group)
  uint32_t* keys = reinterpret_cast<uint32_t*>(area + L.keys);
  pbar_local(PT);
  if (pt == 0) tr_mark(tr, 4);  // keys ready (bench/cuda/trace.cu: "threshold known")
  if (pw == 1)
    for (int m = 0; m < p.nsmall; m++)
      if (B.mine[m]) pf_small(p.small[m], reinterpret_cast<const uint32_t*>(area + L.skeys) + m * PF_SMALL_MAX, target);
  if (pw != 0 || !p.nbig) return;
  const long long n = p.big.n, k = p.big.k;
  const int o0 = (int)(k * B.r0 / n), o1 = B.nr ? (int)(k * (B.r0 + B.nr) / n) : o0;
  const int c = o1 - o0;
  if (p.skip & 32) {  // (timing only: the group's first rows)
    for (int i = lane; i < c; i += 32) p.big.sel[o0 + i] = B.r0 + i;
  } else {
    pf_group_pick(p.local == 2, keys, B.nr, c, B.r0, p.big.sel + o0);
  }
  __syncwarp();  // the lanes' stores, then lane 0's release (cumulative over them, as CUTLASS's semaphore relies on)
  if (lane == 0) {  // a flag per group, no counter: same-address atomics from every block serialise in L2 (~4 us)
    st_release(p.gdone + blockIdx.x, target);
    tr_mark(tr, 5);
  }
}
// The MLP's producer warp: wait until every group of this step's selection is in (flags hold serial + 1).
// Relaxed loads, all of a lane's in flight at once, then one acquire fence (an ld.acquire each would be one round
// trip after another).
__device__ __forceinline__ void pf_wait_groups(const unsigned* g, int ng, const int* st) {
  const int lane = threadIdx.x & 31;
  const unsigned target = step_serial(st) + 1u;
  const long long t0 = clock64();
  for (;;) {
    bool ok = true;
    for (int i = lane; i < ng; i += 32) {
      unsigned v;
      asm volatile("ld.relaxed.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(g + i) : "memory");
      ok &= (int)(v - target) >= 0;
    }
    if (__all_sync(0xffffffffu, ok)) break;
    __nanosleep(64);
    if (clock64() - t0 > 8000000000ll) __trap();  // a lost flag: an error for the host, not a hung GPU
  }
  asm volatile("fence.acq_rel.gpu;" ::: "memory");
  __syncwarp();
}

// Fused predictor first layers: w1p = w1 / g (g = the tap kernel's LayerNorm gain, which its planes carry),
// c1 = sum of w1 (the parameter-free LayerNorm's mean term); bad counts entries that do not fit fp16.
__global__ void __launch_bounds__(256) k_pf_prep(const __half* __restrict__ w1, int rows, int d,
                                                 const float* __restrict__ g, __half* __restrict__ w1p,
                                                 float* __restrict__ c1, unsigned* __restrict__ bad) {
  const int row = (int)((blockIdx.x * (size_t)blockDim.x + threadIdx.x) >> 5), lane = threadIdx.x & 31;
  if (row >= rows) return;
  float s = 0.f;
  unsigned nb = 0;
  for (int i = lane; i < d; i += 32) {
    const float w = __half2float(w1[(size_t)row * d + i]), q = w / g[i];
    s += w;
    nb += !(fabsf(q) <= 65504.f);
    w1p[(size_t)row * d + i] = __float2half(q);
  }
  s = warp_sum(s);
  for (int o = 16; o > 0; o >>= 1) nb += __shfl_xor_sync(0xffffffffu, nb, o);
  if (lane == 0) { c1[row] = s; if (nb) atomicAdd(bad, nb); }
}

}  // namespace dj
