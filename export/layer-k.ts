/**
 * Per-layer k overrides of a loaded bundle, for measuring a configuration without writing a bundle for it (the
 * quality-budget search, export/budget.ts): each layer's MLP / attention predictor keeps `k` entries, or is left out
 * (null: the block runs dense and its predictor is not run, as a manifest `dense: true` entry).
 */
import type { Bundle } from './bundle.js';

export interface LayerK {
  mlp: (number | null)[];
  attn: (number | null)[];
}

/** The bundle with each predictor's k replaced (null: dense). Predictor weights are shared, not copied. */
export function applyLayerK(bundle: Bundle, ks: LayerK): Bundle {
  const n = bundle.manifest.model.n_layers;
  if (ks.mlp.length !== n || ks.attn.length !== n) throw new Error(`applyLayerK: ${n} layers expected`);
  const pick = (list: Bundle['mlp'], k: (number | null)[]) =>
    list.map((p, l) => (p && k[l] !== null ? { ...p, k: k[l] as number } : null));
  return { ...bundle, mlp: pick(bundle.mlp, ks.mlp), attn: pick(bundle.attn, ks.attn) };
}
