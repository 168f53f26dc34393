/**
 * A direct reference for sparse attention heads under both KV policies, in float64, written independently of
 * runtime/sparse's kernels (the TS port of bench/oracle_heads_reference.py). Token by token, pre-LN OPT:
 *  - every head's Q/K/V are projected at every position (from the current, already-sparse hidden states);
 *  - the kept heads of (step t, layer l) are either given explicitly or, for the oracle, the top k by the L2 norm of
 *    each head's attention output over every head's full K/V history (ties to the lower head index);
 *  - a kept head's output: policy 'all', attention over every position s <= t; policy 'selected', attention with an
 *    explicit mask, s allowed only where that head was kept at step s (its own position t always is);
 *  - skipped heads output zero; the MLP is dense.
 */
import type { OptCheckpoint } from '../../checkpoints/types.js';

export type RefRule = { explicit: (t: number, l: number) => number[] | null } | { oracleK: (l: number) => number | null };

function matvec(W: Float32Array, rows: number, cols: number, x: Float64Array, b?: Float32Array): Float64Array {
  const y = new Float64Array(rows);
  for (let r = 0; r < rows; r++) {
    let s = b && b.length ? b[r] : 0;
    for (let c = 0; c < cols; c++) s += W[r * cols + c] * x[c];
    y[r] = s;
  }
  return y;
}

function layerNorm(x: Float64Array, g?: Float32Array, b?: Float32Array): Float64Array {
  const n = x.length;
  let mean = 0;
  for (const v of x) mean += v;
  mean /= n;
  let vr = 0;
  for (const v of x) vr += (v - mean) ** 2;
  const r = 1 / Math.sqrt(vr / n + 1e-5);
  return Float64Array.from(x, (v, i) => (v - mean) * r * (g ? g[i] : 1) + (b && b.length ? b[i] : 0));
}

/** Per position: the final hidden state (after the final LayerNorm) [T][d], and the kept heads per layer. */
export function referenceHeads(
  ckpt: Pick<OptCheckpoint, 'config' | 'weights'>,
  ids: ArrayLike<number>,
  rule: RefRule,
  policy: 'all' | 'selected',
): { hidden: Float64Array[]; kept: number[][][] } {
  const c = ckpt.config;
  const w = ckpt.weights;
  if (!c.doLayerNormBefore || w.projectIn || w.projectOut) throw new Error('reference: pre-LN without project_in/out only');
  const { hiddenSize: d, numHeads: H, headDim: hd, ffnDim: ffn, numLayers: nL } = c;
  const K: Float64Array[][] = Array.from({ length: nL }, () => []);
  const V: Float64Array[][] = Array.from({ length: nL }, () => []);
  const kept: number[][][] = []; // [t][l] -> heads
  const hidden: Float64Array[] = [];
  const scale = 1 / Math.sqrt(hd);
  const attend = (l: number, q: Float64Array, h: number, t: number, allow: (s: number) => boolean): Float64Array => {
    const sc: number[] = [];
    for (let s = 0; s <= t; s++) {
      let v = 0;
      for (let i = 0; i < hd; i++) v += q[h * hd + i] * K[l][s][h * hd + i];
      sc.push(allow(s) ? v * scale : -Infinity);
    }
    const m = Math.max(...sc);
    const e = sc.map((v) => Math.exp(v - m));
    const z = e.reduce((a, b) => a + b, 0);
    const o = new Float64Array(hd);
    for (let s = 0; s <= t; s++) for (let i = 0; i < hd; i++) o[i] += (e[s] / z) * V[l][s][h * hd + i];
    return o;
  };
  for (let t = 0; t < ids.length; t++) {
    const x = new Float64Array(d);
    for (let i = 0; i < d; i++) x[i] = w.embedTokens[ids[t] * d + i] + w.embedPositions[(t + 2) * d + i];
    kept.push([]);
    for (let l = 0; l < nL; l++) {
      const L = w.layers[l];
      const h = layerNorm(x, L.attnLnW, L.attnLnB);
      const q = matvec(L.qW, d, d, h, L.qB);
      K[l].push(matvec(L.kW, d, d, h, L.kB));
      V[l].push(matvec(L.vW, d, d, h, L.vB));
      const full = Array.from({ length: H }, (_, hh) => attend(l, q, hh, t, () => true));
      let sel: number[];
      if ('explicit' in rule) {
        sel = rule.explicit(t, l) ?? Array.from({ length: H }, (_, i) => i);
      } else {
        const k = rule.oracleK(l);
        const norms = full.map((o) => Math.sqrt(o.reduce((a, v) => a + v * v, 0)));
        const order = Array.from({ length: H }, (_, i) => i).sort((a, b) => norms[b] - norms[a] || a - b);
        sel = k === null ? order : order.slice(0, k);
      }
      kept[t].push([...sel].sort((a, b) => a - b));
      const o = new Float64Array(d);
      for (const hh of sel) {
        const oh = policy === 'all' ? full[hh] : attend(l, q, hh, t, (s) => s === t || kept[s][l].includes(hh));
        o.set(oh, hh * hd);
      }
      const a = matvec(L.oW, d, d, o, L.oB);
      for (let i = 0; i < d; i++) x[i] += a[i];
      const h2 = layerNorm(x, L.mlpLnW, L.mlpLnB);
      const f = matvec(L.fc1W, ffn, d, h2, L.fc1B).map((v) => (v > 0 ? v : 0));
      const m = matvec(L.fc2W, d, ffn, f, L.fc2B);
      for (let i = 0; i < d; i++) x[i] += m[i];
    }
    hidden.push(c.hasFinalLayerNorm ? layerNorm(x, w.finalLnW, w.finalLnB) : x);
  }
  return { hidden, kept };
}

/** Logits [V] of one final hidden state through the LM head. */
export function referenceLogits(ckpt: Pick<OptCheckpoint, 'config' | 'weights'>, hidden: Float64Array): Float64Array {
  return matvec(ckpt.weights.lmHead, ckpt.config.vocabSize, ckpt.config.wordEmbedProjDim, hidden);
}
