/**
 * The opt-mini fixture re-saved in every supported layout with our own writers (sharded safetensors, bf16, fp32,
 * pytorch_model.bin) must load to the same weights, fingerprint and logits as the original fp16 model.safetensors.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { f32ToBf16 } from '../../checkpoints/float16.js';
import { loadOptCheckpoint } from '../../checkpoints/opt-checkpoint.js';
import { SafetensorsFile } from '../../checkpoints/safetensors.js';
import type { OptCheckpoint } from '../../checkpoints/types.js';
import { OptModel } from '../../runtime/cpu/model.js';
import { HAVE_FIXTURES, OPT_MINI, TINY_BIN } from '../helpers/fixtures.js';
import { diffWeights, maxRelDiff, relErr, weightArrays } from './helpers/compare.js';
import {
  tempDir,
  writeConfig,
  writeSafetensorsFolder,
  writeShardedFolder,
  writeTorchBinFolder,
  type ModelTensor,
  removeTempDirs,
} from './helpers/model-folder.js';

afterAll(removeTempDirs);

describe.skipIf(!HAVE_FIXTURES)('opt-mini in every supported layout', () => {
  let original: OptCheckpoint;
  let tensors: ModelTensor[];
  let config: Record<string, unknown>;
  let ids: Int32Array;
  let refLogits: Float32Array;
  let origLogits: Float32Array;

  const variant = (label: string, cfg: Record<string, unknown>, write: (dir: string) => void) => {
    const dir = tempDir(label);
    writeConfig(dir, cfg);
    write(dir);
    return dir;
  };
  const logitsOf = async (ckpt: OptCheckpoint) => {
    const m = await OptModel.load(ckpt);
    try {
      return m.prefill(ids).subarray(0, 16 * ckpt.config.vocabSize);
    } finally {
      m.dispose();
    }
  };

  beforeAll(async () => {
    original = await loadOptCheckpoint(OPT_MINI, { quiet: true });
    const st = SafetensorsFile.open(join(OPT_MINI, 'model.safetensors'));
    tensors = st.names().map((n) => ({ name: n.replace(/^model\./, ''), shape: st.info(n).shape, data: st.readFloat32(n) }));
    st.close();
    config = JSON.parse(readFileSync(join(OPT_MINI, 'config.json'), 'utf8'));
    const ref = SafetensorsFile.open(join(OPT_MINI, 'reference.safetensors'));
    ids = ref.readInt32('s0.ids');
    refLogits = ref.readFloat32('s0.logits16');
    ref.close();
    origLogits = await logitsOf(original);
  });

  it('the original matches the Hugging Face reference logits (sanity for the comparisons below)', () => {
    expect(relErr(origLogits, refLogits)).toBeLessThanOrEqual(1e-4);
  });

  it('sharded safetensors (3 shards + model.safetensors.index.json): identical weights, fingerprint and logits', async () => {
    const dir = variant('sharded', config, (d) => writeShardedFolder(d, tensors, 'F16', 3));
    const c = await loadOptCheckpoint(dir, { quiet: true });
    expect(c.format).toBe('safetensors-sharded');
    expect(diffWeights(c.weights, original.weights)).toEqual([]);
    expect(c.fingerprint).toBe(original.fingerprint);
    expect(relErr(await logitsOf(c), origLogits)).toBe(0);
  });

  it('fp32 safetensors with `decoder.` names (no `model.` prefix): identical weights and logits, fingerprint differs by dtype', async () => {
    const dir = variant('fp32', { ...config, dtype: 'float32' }, (d) => writeSafetensorsFolder(d, tensors, 'F32', ''));
    const c = await loadOptCheckpoint(dir, { quiet: true });
    expect(c.config.dtype).toBe('float32');
    expect(diffWeights(c.weights, original.weights)).toEqual([]);
    expect(c.fingerprint).not.toBe(original.fingerprint);
    expect(relErr(await logitsOf(c), origLogits)).toBe(0);
  });

  it('pytorch_model.bin (fp16, OrderedDict + _metadata, lm_head stored tied to the embedding storage): identical to the original', async () => {
    const dir = variant('bin', config, (d) => writeTorchBinFolder(d, tensors, 'F16', { orderedDict: true, tiedLmHead: true }));
    const c = await loadOptCheckpoint(dir, { quiet: true });
    expect(c.format).toBe('pytorch-bin');
    expect(diffWeights(c.weights, original.weights)).toEqual([]);
    expect(c.weights.lmHead).toBe(c.weights.embedTokens);
    // Same tensors and dtypes in another container: the fingerprint is format-independent.
    expect(c.fingerprint).toBe(original.fingerprint);
    expect(relErr(await logitsOf(c), origLogits)).toBe(0);
  });

  it('bf16 safetensors (torch_dtype key): every weight is the nearest bf16 of the original, logits within bf16 rounding', async () => {
    const { dtype: _, ...rest } = config;
    const dir = variant('bf16', { ...rest, torch_dtype: 'bfloat16' }, (d) => writeSafetensorsFolder(d, tensors, 'BF16'));
    const c = await loadOptCheckpoint(dir, { quiet: true });
    expect(c.config.dtype).toBe('bfloat16');
    expect(c.fingerprint).not.toBe(original.fingerprint);
    // Exact expectation per element: the bf16 round-to-nearest-even of the fp16 value, widened back.
    const bad: string[] = [];
    const orig = new Map(weightArrays(original.weights));
    for (const [k, v] of weightArrays(c.weights)) {
      const o = orig.get(k)!;
      const want = f32ToBf16(o);
      const got = new Uint32Array(v.buffer, v.byteOffset, v.length);
      for (let i = 0; i < v.length; i++) if (got[i] !== want[i] << 16 >>> 0) { bad.push(k); break; }
      // bf16 keeps 8 significant bits: half an ulp is at most 2^-8 of the value (values below 1e-30 excepted).
      if (maxRelDiff(v, o, 1e-30) > 2 ** -8) bad.push(`${k} (tolerance)`);
    }
    expect(bad).toEqual([]);
    // Weights carry <= 2^-8 (typically ~2^-10) relative error each; the logits of s0 move by 0.0015 relative
    // (measured). 0.01 leaves room without hiding a real loading bug (a wrong or transposed tensor gives ~1).
    const e = relErr(await logitsOf(c), origLogits);
    expect(e).toBeGreaterThan(0);
    expect(e).toBeLessThan(0.01);
  });
});

describe.skipIf(!HAVE_FIXTURES)('tiny-opt-bin-fp16 (written by torch.save)', () => {
  it('loads and matches its Hugging Face reference logits (relative error <= 1e-4)', async () => {
    const c = await loadOptCheckpoint(TINY_BIN, { quiet: true });
    expect(c.format).toBe('pytorch-bin');
    const ref = SafetensorsFile.open(join(TINY_BIN, 'reference.safetensors'));
    const ids = ref.readInt32('ids');
    const want = ref.readFloat32('logits');
    ref.close();
    for (const backend of ['js', 'auto'] as const) {
      const m = await OptModel.load(c, { backend });
      const got = m.prefill(ids);
      m.dispose();
      const e = relErr(got, want);
      expect(e, `${backend}: ${e}`).toBeLessThanOrEqual(1e-4);
    }
  });
});
