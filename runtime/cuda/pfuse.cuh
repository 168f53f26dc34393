// Predictors fused into the main kernels: the grouped selection (DjOptions::selection = SEL_GROUPED, `--mlp-select
// grouped`), streamed path only. Not the default: the fastest sparse step (H200 13B 1.51 vs 1.85 ms with the
// side-stream chain), checked by runtime/cuda/check.cu, but the grouped top-k picks differently from the exact
// top-k (+1% perplexity on opt-mini).
// Why: on side streams the predictor chain of a tap costs the sparse step its PDL (early-launched main kernels hold
// the SMs the chain needs), 16 SMs, and a graph edge before every consumer (docs/cuda.md v13b). Here the predictor
// work rides in the kernels that already stream weights on every SM, and the consumers wait on flags instead of
// graph edges:
//   tap att_in(l)  -> k_rows_tma<QKV> of layer l also streams the tap's stacked w1 rows (t = w1 . x, x from the
//                     same shared-memory planes as q/k/v: the planes hold ln1_g * x, so w1 is stored divided by
//                     ln1_g, and the parameter-free LayerNorm uses the row epilogue's statistics, c1 = sum w1);
//   k_attn_out(l)  -> its slice of the w2 rows copied at block entry (weights); PF_LOCAL_WARPS extra warps per block
//                     score them after the grid dependency and select the block's group (pf_local, below) while
//                     the consumer warps run the attention and out_proj; small predictors (heads) are selected
//                     whole by one block's predictor warps;
//   consumers      -> the MLP of layer l waits on its groups' flags, the QKV / attention of later layers on a
//                     per-selection flag (step serial + 1) before reading a selection; set long before in practice.
// Only predictors whose tap is att_in(l) and whose selection is used at the MLP of l or later can ride so; others
// (e.g. heads of layer 0 read from att_in(0), or MLP predictors on mlp_in) keep the side-stream chain, as does an
// MLP predictor whose top-k must be exact. (An exact top-k spread over the attention kernel's blocks through global
// histogram rounds was slower than the side chain; its code is in commit caf5dee and earlier.)
#pragma once
#include "kernels.cuh"
#include "tma.cuh"

namespace dj {

constexpr int PF_SMALL_MAX = 128;  // members with n <= this are selected whole by one warp (attention heads)
constexpr int PF_MAX_SMALL = 2;
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
  int nsmall;
  PfMember small[PF_MAX_SMALL];
  int per;           // big rows per block
  unsigned smem_off; // the warp's area in the kernel's dynamic shared memory
  unsigned* gdone;   // [gridDim.x] per-group flags (serial + 1 once the group's share is in sel)
};
// Predictor warps per block in the grouped mode (scores off the consumers' path). 3, not 4: fewer warps beside the
// 16 consumer warps, the same two rounds of rows (13B groups of 160): H200 13B 1.540-1.542 -> 1.532-1.535 ms, three
// interleaved pairs; 5 and 6 slower, 2 slower.
constexpr int PF_LOCAL_WARPS = 3;

// Shared-memory area of the predictor warp (host and device agree through this).
struct PfLayout {
  unsigned w2, keys, skeys, ts, bytes;
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
  o.bytes = al(o.ts + (unsigned)p.trows * 4u);
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

// A small member, whole, by one warp from its keys (pf_keys): rank by counting (ties: lower index first),
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

// The keys (order-preserving f2key of w2 . t) of the block's big-member rows and of the small members it selects,
// a row per thread: threads tid of nt (pf_local's predictor warps).
__device__ __forceinline__ void pf_keys(const PredFuse& p, const PfLayout& L, const PfBlk& b, unsigned char* area,
                                        const float* ts, int tid, int nt, int lane) {
  uint32_t* keys = reinterpret_cast<uint32_t*>(area + L.keys);
  for (int i = tid; i < b.nr; i += nt)
    keys[i] = f2key(pf_dot(area + L.w2 + (size_t)i * p.big.r * 2, ts + p.big.toff, p.big.r, lane));
  for (int m = 0; m < p.nsmall; m++) {
    if (!b.mine[m]) continue;
    uint32_t* sk = reinterpret_cast<uint32_t*>(area + L.skeys) + m * PF_SMALL_MAX;
    for (int i = tid; i < p.small[m].n; i += nt)
      sk[i] = f2key(pf_dot(area + b.soff[m] + (size_t)i * p.small[m].r * 2, ts + p.small[m].toff, p.small[m].r, lane));
  }
}

// ---- Grouped top-k (docs/cuda.md) ----
// Block b owns the big member's rows [r0, r0 + nr) (r0 = b * per) and selects the top
// floor(k*(r0+nr)/n) - floor(k*r0/n) of them into sel at floor(k*r0/n): the same rule as runtime/sparse/kernels.ts
// groupedTopK with groups = gridDim.x. Why: the exact top-k over all n needs global histogram rounds whose round trips,
// issued from SMs with ~100 KB of copies in flight, end after the attention they should hide behind; a
// block's own share needs no global pass, and each group releases a flag of its own. The cost is in what it picks (a
// group cannot take more than its share), measured on opt-mini (bench/results/grouped-topk-study-opt-mini.json).
// Run by PF_LOCAL_WARPS warps of k_attn_out after their grid dependency; the consumer warps do none of it, so the
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
// Warp-max rounds: c rounds, each one warp max of the keys left (redux) and the lowest index
// holding it (a second redux), so ties go to the lower index as in the bitwise search. Why: c is 7-8 at 13B (groups
// of 160 picking 8), so c rounds of two reductions replace 32 dependent steps (the trace put the search at ~8 us of
// the predictor warps' ~14; H200 13B sparse 1.776 -> 1.663 ms). Needs nr <= 32 * PF_SEL_REG and
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
// The grouped mode's selection: warp-max rounds where they apply, else the search.
__device__ __forceinline__ void pf_group_pick(const uint32_t* keys, int nr, int c, int r0, int* out) {
  if (nr <= 32 * PF_SEL_REG && c <= 32) pf_group_select_max(keys, nr, c, r0, out);
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
// them, the rows landed ~6 us after the grid dependency, measured by a trace).
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
// releases the group's flag. pt: the thread's index among the predictor warps (0 .. PF_LOCAL_WARPS * 32 - 1).
__device__ void pf_local(const PredFuse& p, unsigned char* area, uint64_t* bar, int pt) {
  const int pw = pt >> 5, lane = pt & 31, PT = PF_LOCAL_WARPS * 32;
  const PfLayout L = pf_layout(p);
  const PfBlk B = pf_blk(p);
  pdl_wait();  // t (this layer's QKV kernel) and the step serial are this step's
  float* ts = reinterpret_cast<float*>(area + L.ts);
  for (int i = pt; i < p.trows; i += PT) ts[i] = __ldcg(p.t + i);
  const unsigned target = step_serial(p.st) + 1u;
  mbar_wait(bar, 0);
  pbar_local(PT);
  pf_keys(p, L, B, area, ts, pt, PT, lane);
  uint32_t* keys = reinterpret_cast<uint32_t*>(area + L.keys);
  pbar_local(PT);
  if (pw == 1)
    for (int m = 0; m < p.nsmall; m++)
      if (B.mine[m]) pf_small(p.small[m], reinterpret_cast<const uint32_t*>(area + L.skeys) + m * PF_SMALL_MAX, target);
  if (pw != 0 || !p.nbig) return;
  const long long n = p.big.n, k = p.big.k;
  const int o0 = (int)(k * B.r0 / n), o1 = B.nr ? (int)(k * (B.r0 + B.nr) / n) : o0;
  const int c = o1 - o0;
  pf_group_pick(keys, B.nr, c, B.r0, p.big.sel + o0);
  __syncwarp();  // the lanes' stores, then lane 0's release (cumulative over them, as CUTLASS's semaphore relies on)
  if (lane == 0) {  // a flag per group, no counter: same-address atomics from every block serialise in L2 (~4 us)
    st_release(p.gdone + blockIdx.x, target);
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

// ---- Layer 0's heads without a side stream (engine head0) ----
// Layer 0's heads predictor reads att_in(0) = E[token] + P[pos + 2]. Without an input LayerNorm its scores are
// linear in that sum: w2 . w1 . E[token] + w2 . w1 . P[pos + 2], i.e. a row of a vocab x H table plus a row of a
// positions x H table, both built when the graph is (k_head0_table). With the parameter-free input LayerNorm the
// scores are rstd . w2 . w1 . (x - mean(x)): the centring is linear too (x - mean(x) = centred e + centred p), and
// rstd > 0 scales every head alike, so the tables hold the centred rows' scores and the top-k is the same.
// The sparse graph's step then picks layer 0's heads in one warp right after the embedding (k_head0_select) instead
// of a side-stream chain of three kernels with a fork and a join (which cost the grouped 13B step ~0.009 ms),
// and keeps no side stream at all.
// k_head0_table: out[row][h] = sum_j w2[h][j] * (w1[j] . (X[row] - mu)), mu = the row's mean when center, else 0;
// one warp per row, fp32 (H <= 128).
__global__ void __launch_bounds__(256) k_head0_table(const __half* __restrict__ X, int rows, int d,
                                                     const __half* __restrict__ w1, int r, const __half* __restrict__ w2,
                                                     int H, bool center, float* __restrict__ out) {
  const int row = (int)((blockIdx.x * (size_t)blockDim.x + threadIdx.x) >> 5), lane = threadIdx.x & 31;
  if (row >= rows) return;
  const __half* x = X + (size_t)row * d;
  float mu = 0.f;
  if (center) {
    for (int i = lane; i < d; i += 32) mu += __half2float(x[i]);
    mu = warp_sum(mu) / d;
  }
  float acc[PF_SMALL_MAX / 32] = {};
  for (int j = 0; j < r; j++) {
    float t = 0.f;
    for (int i = lane; i < d; i += 32) t += __half2float(w1[(size_t)j * d + i]) * (__half2float(x[i]) - mu);
    t = warp_sum(t);
#pragma unroll
    for (int u = 0; u < PF_SMALL_MAX / 32; u++) {
      const int h = lane + 32 * u;
      if (h < H) acc[u] += __half2float(w2[(size_t)h * r + j]) * t;
    }
  }
#pragma unroll
  for (int u = 0; u < PF_SMALL_MAX / 32; u++) {
    const int h = lane + 32 * u;
    if (h < H) out[(size_t)row * H + h] = acc[u];
  }
}
// k_head0_select: one warp; the step's token and position as k_embed_tma reads them (final before this graph
// launch: the previous step's LM head wrote them), the keys, then pf_small's selection and flag.
__global__ void __launch_bounds__(32) k_head0_select(const float* __restrict__ SE, const float* __restrict__ SP,
                                                     const int* __restrict__ tokens, const int* __restrict__ st, PfMember m) {
  __shared__ uint32_t keys[PF_SMALL_MAX];
  pdl_trigger();
  const int pos = st[0], tok = tokens[pos];
  for (int h = threadIdx.x; h < m.n; h += 32) keys[h] = f2key(SE[(size_t)tok * m.n + h] + SP[(size_t)(pos + 2) * m.n + h]);
  __syncwarp();
  pf_small(m, keys, step_serial(st) + 1u);
}

}  // namespace dj
