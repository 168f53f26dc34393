/**
 * End-to-end CUDA check on opt-mini (run on the GPU by scripts/cuda-check.sh):
 *   1. CUDA dense logits vs Hugging Face's fp32 reference logits (reference.safetensors, first 16 positions);
 *   2. CUDA dense decode vs the CPU runtime (runtime/cpu OptModel.decodeStep) over the whole 64-token sequence;
 *   3. CUDA sparse (fixed selections, new random picks every step, KV policy "all" as runtime/sparse uses) vs the
 *      CPU sparse runtime given the same heads and neurons;
 *   4. with --bundle: CUDA sparse with the bundle's predictors and top-k on the GPU; the selections it made are read
 *      back and given to the CPU sparse runtime (logits compared), and compared with the CPU's own predicted picks.
 * Relative error = ||cuda - ref|| / ||ref|| over all compared logits; pass <= 1e-2. Prints one JSON object.
 * Usage: node dist/runtime/cuda/check-mini.js MODEL_DIR [--bundle B] [--ref reference.safetensors]
 */
import { join } from 'node:path';
import { existsSync } from 'node:fs';
import { SafetensorsFile } from '../../checkpoints/safetensors.js';
import { loadOptCheckpoint } from '../../checkpoints/opt-checkpoint.js';
import { OptModel } from '../cpu/model.js';
import { SparseOptModel } from '../sparse/model.js';
import { CudaEngine } from './engine.js';
import { loadCudaLib } from './lib.js';

class Rel {
  num = 0;
  den = 0;
  bad = 0;
  add(a: Float32Array, b: Float32Array): void {
    for (let i = 0; i < b.length; i++) {
      if (!Number.isFinite(a[i])) { this.bad++; continue; }
      this.num += (a[i] - b[i]) ** 2;
      this.den += b[i] ** 2;
    }
  }
  get value(): number {
    return this.bad ? Infinity : Math.sqrt(this.num / this.den);
  }
}

function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}
function pick(n: number, k: number, r: () => number): Int32Array {
  const all = Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(r() * (i + 1));
    [all[i], all[j]] = [all[j], all[i]];
  }
  return Int32Array.from(all.slice(0, k).sort((a, b) => a - b));
}

async function main(): Promise<void> {
  const dir = process.argv[2];
  const bi = process.argv.indexOf('--bundle');
  const bundleDir = bi > 0 ? process.argv[bi + 1] : undefined;
  const ri = process.argv.indexOf('--ref');
  const refPath = ri > 0 ? process.argv[ri + 1] : join(dir, 'reference.safetensors');
  const out: Record<string, unknown> = {};
  const lib = await loadCudaLib();
  out.device = lib.deviceInfo().name;
  const ckpt = await loadOptCheckpoint(dir, { quiet: true });
  const dims = CudaEngine.dimsOf(ckpt);
  const { heads: H, ffn, layers: L } = dims;
  const ref = SafetensorsFile.open(refPath);
  const idsBytes = ref.readBytes('s0.ids');
  const ids = Array.from(new BigInt64Array(idsBytes.buffer, idsBytes.byteOffset, idsBytes.byteLength / 8), Number);
  const hfBytes = ref.readBytes('s0.logits16');
  const hf = new Float32Array(hfBytes.buffer.slice(hfBytes.byteOffset, hfBytes.byteOffset + hfBytes.byteLength));
  const V = dims.vocab;
  const N = ids.length;
  const say = (s: string) => process.stderr.write(`${s}\n`);

  const eng = CudaEngine.create(lib, dims, N + 8);
  eng.uploadCheckpoint(ckpt);
  // Fixed k for the sparse comparison: half the heads, 10% of the neurons in every layer.
  const kH = Math.max(1, Math.round(H / 2));
  const kM = Math.round(ffn / 10);
  const r = rng(12345);
  for (let l = 0; l < L; l++) eng.setSelection(l, pick(H, kH, r), pick(ffn, kM, r));
  eng.setKvPolicy('all');
  eng.build();

  // 1 + 2: dense, whole sequence forced (prompt = all 64 ids).
  const cpu = await OptModel.load(ckpt, { backend: 'js' });
  const cache = cpu.newCache(N + 8);
  eng.setPrompt(ids);
  const relHf = new Rel();
  const relCpu = new Rel();
  const cudaDense: Float32Array[] = [];
  for (let p = 0; p < N; p++) {
    eng.run('dense', 1);
    const g = eng.logits();
    cudaDense.push(g);
    relCpu.add(g, cpu.decodeStep(ids[p], cache));
    if (p < 16) relHf.add(g, hf.subarray(p * V, (p + 1) * V));
  }
  out.dense_vs_hf_reference = relHf.value;
  out.dense_vs_cpu_runtime = relCpu.value;
  say(`dense vs HF fp32 reference (16 positions): rel ${relHf.value.toExponential(2)}`);
  say(`dense vs CPU runtime (${N} positions): rel ${relCpu.value.toExponential(2)}`);

  // 3: sparse with explicit selections after a dense prefill of 32 tokens.
  const P0 = 32;
  const sp = new SparseOptModel(ckpt, undefined, { mode: 'dense' });
  let sc = sp.newCache(N + 8);
  for (let p = 0; p < P0; p++) sp.decodeStep(ids[p], sc);
  eng.setPos(P0);
  const relSparse = new Rel();
  for (let p = P0; p < N; p++) {
    const heads: Int32Array[] = [];
    const neurons: Int32Array[] = [];
    for (let l = 0; l < L; l++) {
      heads.push(pick(H, kH, r));
      neurons.push(pick(ffn, kM, r));
      eng.setSelection(l, heads[l], neurons[l]);
    }
    eng.run('fixed', 1);
    relSparse.add(eng.logits(), sp.decodeStep(ids[p], sc, { heads, neurons }));
  }
  out.sparse_fixed_vs_cpu_sparse = relSparse.value;
  out.sparse_fixed_k = { heads: kH, neurons: kM, steps: N - P0, kv_policy: 'all' };
  say(`sparse (${kH}/${H} heads, ${kM}/${ffn} neurons, new picks each step) vs CPU sparse: rel ${relSparse.value.toExponential(2)}`);

  // 4: bundle predictors on the GPU.
  if (bundleDir && existsSync(bundleDir)) {
    const { loadBundle } = await import('../../export/bundle.js');
    const bundle = loadBundle(bundleDir, ckpt);
    const eng2 = CudaEngine.create(lib, dims, N + 8);
    eng2.uploadCheckpoint(ckpt);
    const plan = eng2.applyBundle(bundle);
    eng2.setKvPolicy('all');
    eng2.build();
    eng2.setPrompt(ids);
    eng2.run('dense', P0);
    // CPU: dense prefill (as the GPU did), then one model given the GPU's picks and one making its own.
    const spGiven = new SparseOptModel(ckpt, bundle, { mode: 'predicted' });
    const spPred = new SparseOptModel(ckpt, bundle, { mode: 'predicted' });
    const dense = new SparseOptModel(ckpt, undefined, { mode: 'dense' });
    sc = dense.newCache(N + 8);
    const sc2d = dense.newCache(N + 8);
    for (let p = 0; p < P0; p++) {
      dense.decodeStep(ids[p], sc);
      dense.decodeStep(ids[p], sc2d);
    }
    const relB = new Rel();
    let same = 0;
    let total = 0;
    for (let p = P0; p < N; p++) {
      eng2.run('sparse', 1);
      const g = eng2.logits();
      const heads: (Int32Array | null)[] = [];
      const neurons: (Int32Array | null)[] = [];
      for (let l = 0; l < L; l++) {
        const s = eng2.getSelection(l, plan.kH[l], plan.kM[l]);
        heads.push(plan.kH[l] < H ? s.heads : null);
        neurons.push(plan.kM[l] < ffn ? s.neurons : null);
      }
      relB.add(g, spGiven.decodeStep(ids[p], sc, { heads, neurons }));
      spPred.decodeStep(ids[p], sc2d);
      for (let l = 0; l < L; l++) {
        for (const [mine, theirs] of [
          [heads[l], spPred.lastHeads[l]],
          [neurons[l], spPred.lastNeurons[l]],
        ] as const) {
          if (!mine || !theirs) continue;
          const set = new Set(theirs);
          for (const i of mine) same += set.has(i) ? 1 : 0;
          total += mine.length;
        }
      }
    }
    out.bundle = bundleDir;
    out.bundle_sparse_vs_cpu_sparse_same_picks = relB.value;
    out.bundle_pick_agreement_with_cpu_predictor = total ? same / total : null;
    say(`bundle: CUDA predicted sparse vs CPU sparse on the GPU's picks: rel ${relB.value.toExponential(2)}; ` +
      `GPU picks agreeing with the CPU predictor's: ${total ? ((100 * same) / total).toFixed(2) : '-'}%`);
    eng2.destroy();
  } else {
    out.bundle = null;
    say('no bundle given: predicted-sparsity comparison skipped');
  }
  eng.destroy();
  const tol = 1e-2;
  const checks = Object.entries(out).filter(([k, v]) => typeof v === 'number' && /vs/.test(k)) as [string, number][];
  const pass = checks.every(([, v]) => v <= tol);
  out.pass = pass;
  console.log(JSON.stringify(out));
  process.exit(pass ? 0 : 1);
}

main().catch((e) => {
  process.stderr.write(`${(e as Error).stack}\n`);
  process.exit(1);
});
