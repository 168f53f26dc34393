// Timeline of one decode step on the streamed path, from inside the kernels: thread 0 of every block of every main
// kernel (QKV, attention+out_proj, MLP, LM head) stamps %globaltimer at entry, when the previous grid is done
// (pdl_wait), when its input is ready, and at its end (fused.cuh, tr_mark; this file builds the engine with
// -DDJ_TRACE). Replays the graph of each mode (random OPT shape, prompt filled by decode steps, random predictors
// like the bench), then prints per kernel kind the medians over layers of:
//   gap    previous kernel's last block end -> this kernel's first block entry
//   wait   first entry -> last pdl_wait release (what the early-launched blocks spent waiting)
//   in     input ready - pdl_wait (LayerNorm prologue / attention), median over blocks
//   in:load / in:stat  of `in`: x loaded (base + delta) / LayerNorm statistics reduced (streamed row kernels)
//   span   first entry -> last end; work = first input ready -> last end; tail = median end -> last end
// and writes the raw stamps (uint64 ns, [launch][block][TR_N]) to OUT/trace-<shape>-<mode>.bin.
// QKV launches also get per-stage stamps (fused.cuh tr_stage, SM cycles): copy issued / landed / released by warp 0
// for the first blocks, printed as medians and as layer 20's blocks 0-1 stage by stage. The step time printed
// is ONE replay (it moves by ~10% between calls, more for the sparse graph): compare phases within a call and take
// latencies from the bench (median of 3 x 128 steps).
// Build: nvcc -O3 -arch=sm_90 -std=c++17 -DDJ_TRACE -o trace bench/cuda/trace.cu   Run: ./trace opt-13b OUTDIR
#include "../../runtime/cuda/engine.cu"
#include <random>
#include <map>

#define OK(x) do { if ((x) != 0) { printf("error at %s:%d: %s\n", __FILE__, __LINE__, dj_last_error()); return 1; } } while (0)
#define CU(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { printf("CUDA %s at %d\n", cudaGetErrorString(e_), __LINE__); return 1; } } while (0)

struct Shape { const char* name; int d, L, H, ffn; };
static const Shape shapes[] = {{"opt-6.7b", 4096, 32, 32, 16384}, {"opt-13b", 5120, 40, 40, 20480},
                               {"opt-30b", 7168, 48, 56, 28672}, {"opt-66b", 9216, 64, 72, 36864}};

static double med(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

int main(int argc, char** argv) {
  const char* want = argc > 1 ? argv[1] : "opt-13b";
  const char* out = argc > 2 ? argv[2] : ".";
  const Shape* sh = nullptr;
  for (auto& s : shapes) if (!strcmp(s.name, want)) sh = &s;
  if (!sh) { printf("unknown shape %s\n", want); return 1; }
  const int prompt = 128, maxT = prompt + 64;
  void* ev = dj_create(50272, sh->d, sh->L, sh->H, sh->ffn, 2048, maxT, 1e-5f);
  if (!ev) { printf("create: %s\n", dj_last_error()); return 1; }
  Engine* e = (Engine*)ev;
  OK(dj_fill_random(ev, 1234));
  const int kH = std::max(1, (int)std::lround(0.2 * sh->H)), kM = (int)std::lround(0.05 * sh->ffn);
  const bool mlp_prev = getenv("TRACE_MLP_PREV") && getenv("TRACE_MLP_PREV")[0] == '1';  // as bench --mlp-input prev_att_in
  for (int l = 0; l < sh->L; l++) {
    OK(dj_set_predictor(ev, l, 0, TAP_ATT_IN, std::max(0, l - 1), nullptr, nullptr, 128, kH, 0));
    OK(dj_set_predictor(ev, l, 1, TAP_ATT_IN, mlp_prev ? std::max(0, l - 1) : l, nullptr, nullptr, 128, kM, 0));
  }
  std::vector<int> ids(prompt);
  std::mt19937 rng(7);
  for (auto& t : ids) t = rng() % 50272;
  OK(dj_set_prompt(ev, ids.data(), prompt));
  e->trace = true;
  OK(dj_build(ev));
  const int launches = 3 * sh->L + 1;
  unsigned long long* buf;
  const size_t n = (size_t)launches * TR_MAXB * TR_N;
  CU(cudaMalloc(&buf, n * 8));
  CU(cudaMemcpyToSymbol(g_trace, &buf, sizeof buf));
  unsigned long long* sbuf;  // per-stage stamps of k_rows_tma (fused.cuh tr_stage)
  const size_t ns = (size_t)launches * TS_B * TS_N * 3;
  CU(cudaMalloc(&sbuf, ns * 8));
  CU(cudaMemcpyToSymbol(g_stage, &sbuf, sizeof sbuf));
  std::vector<unsigned long long> hs(ns);
  OK(dj_run(ev, M_DENSE, prompt, nullptr));  // prefill by decode steps
  std::vector<unsigned long long> h(n);
  const char* names[] = {"dense", "sparse", "fixed"};
  const int modes[] = {M_DENSE, M_SPARSE, M_FIXED};
  printf("shape %s, %d SMs, prompt %d; per kind: medians over layers (us)\n", sh->name, e->sms, prompt);
  for (int mi = 0; mi < 3; mi++) {
    const int mode = modes[mi];
    OK(dj_set_pos(ev, prompt));
    OK(dj_run(ev, mode, 3, nullptr));  // warm-up (and, for fixed, selections from the sparse runs before)
    CU(cudaMemset(buf, 0, n * 8));
    CU(cudaMemset(sbuf, 0, ns * 8));
    float ms;
    OK(dj_run(ev, mode, 1, &ms));
    CU(cudaMemcpy(h.data(), buf, n * 8, cudaMemcpyDeviceToHost));
    CU(cudaMemcpy(hs.data(), sbuf, ns * 8, cudaMemcpyDeviceToHost));
    char path[512];
    snprintf(path, sizeof path, "%s/trace-%s-%s.bin", out, sh->name, names[mi]);
    if (FILE* f = fopen(path, "wb")) { fwrite(h.data(), 8, n, f); fclose(f); }
    // Per launch: blocks that stamped (entry != 0).
    struct K { double first_in, last_wait, first_ready, med_ready_gap, last_end, med_end, ld, stats, max4, max5; int blocks; };
    std::vector<K> ks(launches);
    unsigned long long t0 = ~0ull;
    for (size_t i = 0; i < n; i += TR_N) if (h[i]) t0 = std::min(t0, h[i]);
    for (int k = 0; k < launches; k++) {
      std::vector<double> in, wt, rd, en, ld, stt, a4{0.}, a5{0.};
      for (int b = 0; b < TR_MAXB; b++) {
        const unsigned long long* p = &h[((size_t)k * TR_MAXB + b) * TR_N];
        if (!p[0]) continue;
        in.push_back((p[0] - t0) / 1e3); wt.push_back((p[1] - t0) / 1e3); rd.push_back((p[2] - t0) / 1e3);
        en.push_back((p[3] - t0) / 1e3);
        if (p[4]) { ld.push_back((p[4] - p[1]) / 1e3); stt.push_back((p[5] - p[4]) / 1e3); }
        if (p[4]) a4.push_back((p[4] - t0) / 1e3);
        if (p[5]) a5.push_back((p[5] - t0) / 1e3);
      }
      K& q = ks[k];
      q.blocks = (int)in.size();
      if (!q.blocks) continue;
      std::vector<double> gap;
      for (size_t i = 0; i < in.size(); i++) gap.push_back(rd[i] - wt[i]);
      q.first_in = *std::min_element(in.begin(), in.end());
      q.last_wait = *std::max_element(wt.begin(), wt.end());
      q.first_ready = *std::min_element(rd.begin(), rd.end());
      q.med_ready_gap = med(gap);
      q.last_end = *std::max_element(en.begin(), en.end());
      q.med_end = med(en);
      q.ld = med(ld); q.stats = med(stt);
      q.max4 = *std::max_element(a4.begin(), a4.end());
      q.max5 = *std::max_element(a5.begin(), a5.end());
    }
    printf("\n== %s: step %.3f ms (event), traced span %.1f us\n", names[mi], ms, ks[launches - 1].last_end - ks[0].first_in);
    const char* kind[] = {"qkv", "attn_out", "mlp"};
    printf("%-9s %7s %7s %7s %7s %7s %7s %7s %7s %7s\n", "kind", "blocks", "gap", "wait", "in", "in:load", "in:stat", "span", "work", "tail");
    for (int c = 0; c < 4; c++) {
      std::vector<double> gap, wait, inn, span, work, tail, ld, stt;
      int blocks = 0;
      for (int k = 0; k < launches; k++) {
        if (c < 3 ? (k == launches - 1 || k % 3 != c) : k != launches - 1) continue;
        const K& q = ks[k];
        if (!q.blocks) continue;
        blocks = q.blocks;
        if (k > 0 && ks[k - 1].blocks) gap.push_back(q.first_in - ks[k - 1].last_end);
        wait.push_back(q.last_wait - q.first_in);
        inn.push_back(q.med_ready_gap);
        span.push_back(q.last_end - q.first_in);
        work.push_back(q.last_end - q.first_ready);
        tail.push_back(q.last_end - q.med_end);
        ld.push_back(q.ld); stt.push_back(q.stats);
      }
      printf("%-9s %7d %7.2f %7.2f %7.2f %7.2f %7.2f %7.2f %7.2f %7.2f\n", c < 3 ? kind[c] : "lm_head", blocks, med(gap),
             med(wait), med(inn), med(ld), med(stt), med(span), med(work), med(tail));
    }
    // Fused predictors (DEJAVU_CUDA_PFUSE=1): the attention kernel's predictor warps stamp 4 = threshold known,
    // 5 = their part done (fused.cuh / pfuse.cuh); per layer, from the kernel's last pdl release.
    {
      std::vector<double> thr, done, cons, over;
      for (int k = 1; k < launches - 1; k += 3) {
        const K& q = ks[k];
        if (!q.blocks || q.max5 <= 0) continue;
        thr.push_back(q.max4 - q.last_wait); done.push_back(q.max5 - q.last_wait);
        cons.push_back(q.last_end - q.last_wait); over.push_back(q.max5 - q.last_end);
      }
      if (!done.empty())
        printf("fused predictors (medians over layers, us from the attention's last release): threshold known %.2f, "
               "selection done %.2f, attention+out_proj done %.2f, selection after them %.2f\n",
               med(thr), med(done), med(cons), med(over));
    }
    // Grouped top-k (pfuse.cuh pf_local, stamps 10 / 11): per block, from the attention kernel's last pdl release,
    // when its predictor warps were past pdl_wait (10), had t and the w2 rows (11), the keys (4) and released the
    // group's flag (5); medians over layers of the median and the slowest block. Why: which phase sets the
    // selection's tail after the attention.
    {
      std::vector<double> v[4][2];
      const int pts[4] = {10, 11, 4, 5};
      for (int k = 1; k < launches - 1; k += 3) {
        const K& q = ks[k];
        if (!q.blocks) continue;
        for (int j = 0; j < 4; j++) {
          std::vector<double> b_;
          for (int b = 0; b < TR_MAXB; b++) {
            const unsigned long long* p = &h[((size_t)k * TR_MAXB + b) * TR_N];
            if (p[0] && p[pts[j]]) b_.push_back((p[pts[j]] - t0) / 1e3 - q.last_wait);
          }
          if (b_.empty()) continue;
          v[j][0].push_back(med(b_));
          v[j][1].push_back(*std::max_element(b_.begin(), b_.end()));
        }
      }
      if (!v[0][0].empty())
        printf("grouped top-k phases (us from the attention's last release; median block / slowest block): past pdl_wait "
               "%.2f / %.2f, t + w2 in %.2f / %.2f, keys %.2f / %.2f, flag %.2f / %.2f\n", med(v[0][0]), med(v[0][1]),
               med(v[1][0]), med(v[1][1]), med(v[2][0]), med(v[2][1]), med(v[3][0]), med(v[3][1]));
    }
    // Layer 20 in detail (relative to its QKV's first entry).
    const int L0 = std::min(20, sh->L - 1) * 3;
    printf("layer %d detail (us from its qkv entry): launch: first entry / last wait release / first ready / median end / last end\n", L0 / 3);
    for (int k = L0; k < L0 + 4 && k < launches; k++) {
      const K& q = ks[k];
      const double z = ks[L0].first_in;
      printf("  %-9s %8.2f %8.2f %8.2f %8.2f %8.2f\n", k == launches - 1 ? "lm_head" : kind[k % 3], q.first_in - z,
             q.last_wait - z, q.first_ready - z, q.med_end - z, q.last_end - z);
    }
    // QKV stages (k_rows_tma, blocks 0..TS_B-1 of every layer): when each stage's copy was issued, landed and was
    // released by consumer warp 0, against the block's pdl release and input ready. SM cycles at 1.98 GHz (the
    // H100/H200 maximum clock; the clock may run lower). Medians over (layer, block).
    {
      const double GHZ = 1.98;
      auto S3 = [&](int k, int b, int it, int c) { return hs[(((size_t)k * TS_B + b) * TS_N + it) * 3 + c] / (GHZ * 1e3); };
      std::vector<double> nst, pre_rel, pre_ready, lat_pre, lat_post, last_iss, last_land, cons, hold;
      for (int k = 0; k < launches - 1; k += 3)
        for (int b = 0; b < TS_B; b++) {
          if (!S3(k, b, 0, 0) || !S3(k, b, TS_N - 1, 1)) continue;
          const double rel = S3(k, b, TS_N - 1, 0), rdy = S3(k, b, TS_N - 1, 1);
          int n_ = 0, a = 0, c = 0;
          for (int it = 0; it < TS_N - 1 && S3(k, b, it, 0); it++, n_++) {
            const double is = S3(k, b, it, 0), la = S3(k, b, it, 1), re = S3(k, b, it, 2);
            a += is <= rel; c += is <= rdy;
            (is <= rdy ? lat_pre : lat_post).push_back(la - is);
            cons.push_back(re - std::max(la, rdy));
          }
          nst.push_back(n_); pre_rel.push_back(a); pre_ready.push_back(c);
          last_iss.push_back(S3(k, b, n_ - 1, 0) - rdy);
          last_land.push_back(S3(k, b, n_ - 1, 1) - rdy);
          hold.push_back(rdy - rel);
        }
      if (!nst.empty()) {
        printf("qkv stages (blocks 0-%d, all layers; medians; SM cycles at %.2f GHz): %.0f stages, %.0f issued before the "
               "pdl release, %.0f before input ready (release -> ready %.2f us); copy issue -> landed: %.2f us for those, "
               "%.2f us for the later ones; warp 0 landed/ready -> released %.2f us; last stage issued %.2f us and landed "
               "%.2f us after input ready\n", TS_B - 1, GHZ, med(nst), med(pre_rel), med(pre_ready), med(hold),
               med(lat_pre), med(lat_post), med(cons), med(last_iss), med(last_land));
        for (int b = 0; b < 2; b++) {  // layer 20, blocks 0 and 1: every stage
          const int k = L0;
          if (!S3(k, b, 0, 0) || !S3(k, b, TS_N - 1, 1)) continue;
          const double rdy = S3(k, b, TS_N - 1, 1);
          printf("  layer %d qkv block %d, us from input ready (release at %.2f): stage issued/landed/released:", L0 / 3, b,
                 S3(k, b, TS_N - 1, 0) - rdy);
          for (int it = 0; it < TS_N - 1 && S3(k, b, it, 0); it++)
            printf(" %d:%.2f/%.2f/%.2f", it, S3(k, b, it, 0) - rdy, S3(k, b, it, 1) - rdy, S3(k, b, it, 2) - rdy);
          printf("\n");
        }
      }
    }
  }
  if (e->pstep_ok) {  // the persistent sparse step (DEJAVU_CUDA_PSTEP=1): per layer, thread 0 of each block stamps
    // 0 QKV input ready, 1 QKV signalled, 2 ATT released, 3 ATT signalled, 4 MLP input ready, 5 MLP signalled
    OK(dj_set_pos(ev, prompt));
    OK(dj_run(ev, M_FIXED, 3, nullptr));
    CU(cudaMemset(buf, 0, n * 8));
    float ms;
    OK(dj_run(ev, M_FIXED, 1, &ms));
    CU(cudaMemcpy(h.data(), buf, n * 8, cudaMemcpyDeviceToHost));
    printf("\n== persistent sparse step (fixed selections): step %.3f ms (event)\n", ms);
    printf("per layer (medians over layers, us): layer = last MLP signal - previous layer's; release = first block "
           "released - last block signalled before; work = signal - release (median / max over blocks)\n");
    std::vector<double> lay, r_att, r_mlp, r_qkv, w_qkv, w_qkvx, w_att, w_attx, w_mlp, w_mlpx;
    double prev_end = 0;
    for (int l = 0; l < sh->L; l++) {
      std::vector<double> s[TR_N];
      for (int b = 0; b < TR_MAXB; b++) {
        const unsigned long long* p = &h[((size_t)l * TR_MAXB + b) * TR_N];
        for (int k = 0; k < TR_N; k++)
          if (p[k]) s[k].push_back(p[k] / 1e3);
      }
      if (s[0].empty() || s[5].empty()) continue;
      auto mn = [](const std::vector<double>& v) { return *std::min_element(v.begin(), v.end()); };
      auto mx = [](const std::vector<double>& v) { return *std::max_element(v.begin(), v.end()); };
      std::vector<double> wq, wa, wm;
      for (int b = 0, ia = 0; b < TR_MAXB; b++) {
        const unsigned long long* p = &h[((size_t)l * TR_MAXB + b) * TR_N];
        if (p[0] && p[1]) wq.push_back((p[1] - p[0]) / 1e3);
        if (p[2] && p[3]) wa.push_back((p[3] - p[2]) / 1e3), ia++;
        if (p[4] && p[5]) wm.push_back((p[5] - p[4]) / 1e3);
      }
      if (l > 0) { lay.push_back(mx(s[5]) - prev_end); r_qkv.push_back(mn(s[0]) - prev_end); }
      prev_end = mx(s[5]);
      if (!s[2].empty()) r_att.push_back(mn(s[2]) - mx(s[1]));
      r_mlp.push_back(mn(s[4]) - (s[3].empty() ? mx(s[1]) : mx(s[3])));
      w_qkv.push_back(med(wq)); w_qkvx.push_back(mx(wq));
      if (!wa.empty()) { w_att.push_back(med(wa)); w_attx.push_back(mx(wa)); }
      w_mlp.push_back(med(wm)); w_mlpx.push_back(mx(wm));
    }
    printf("  layer %.2f | qkv release %.2f work %.2f / %.2f | att release %.2f work %.2f / %.2f | mlp release %.2f "
           "work %.2f / %.2f\n", med(lay), med(r_qkv), med(w_qkv), med(w_qkvx), med(r_att), med(w_att), med(w_attx),
           med(r_mlp), med(w_mlp), med(w_mlpx));
  }
  dj_destroy(ev);
  return 0;
}
