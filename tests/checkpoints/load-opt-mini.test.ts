import { describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { loadOptCheckpoint } from '../../checkpoints/opt-checkpoint.js';
import { SafetensorsFile } from '../../checkpoints/safetensors.js';
import { f16ToF32 } from '../../checkpoints/float16.js';
import { HAVE_FIXTURES, OPT_MINI } from '../helpers/fixtures.js';
import { firstBitDiff } from './helpers/compare.js';

describe.skipIf(!HAVE_FIXTURES)('loadOptCheckpoint: opt-mini (fp16 model.safetensors)', () => {
  it('loads config, every tensor in fp32 and a stable fingerprint', async () => {
    const ckpt = await loadOptCheckpoint(OPT_MINI, { quiet: true });
    const c = ckpt.config;
    expect(ckpt.format).toBe('safetensors');
    expect([c.vocabSize, c.hiddenSize, c.numLayers, c.numHeads, c.headDim, c.ffnDim]).toEqual([8192, 384, 6, 12, 32, 1536]);
    expect(c.doLayerNormBefore && c.hasFinalLayerNorm && c.tieWordEmbeddings).toBe(true);
    expect(c.dtype).toBe('float16');
    const w = ckpt.weights;
    expect(w.layers).toHaveLength(6);
    expect(w.lmHead).toBe(w.embedTokens);
    expect(w.embedPositions.length).toBe(2050 * 384);
    expect(w.projectIn).toBeUndefined();
    expect(w.finalLnW!.length).toBe(384);
    // Every array must equal the file's fp16 bits widened: compare against an independent raw read.
    const st = SafetensorsFile.open(join(OPT_MINI, 'model.safetensors'));
    const raw = (n: string) => {
      const b = st.readBytes(n);
      return f16ToF32(new Uint16Array(b.buffer, b.byteOffset, b.byteLength / 2));
    };
    expect(firstBitDiff(w.layers[3].fc2W, raw('model.decoder.layers.3.fc2.weight'))).toBe(-1);
    expect(firstBitDiff(w.layers[5].kB, raw('model.decoder.layers.5.self_attn.k_proj.bias'))).toBe(-1);
    expect(firstBitDiff(w.layers[0].attnLnW, raw('model.decoder.layers.0.self_attn_layer_norm.weight'))).toBe(-1);
    expect(firstBitDiff(w.layers[0].mlpLnB, raw('model.decoder.layers.0.final_layer_norm.bias'))).toBe(-1);
    expect(firstBitDiff(w.embedTokens, raw('model.decoder.embed_tokens.weight'))).toBe(-1);
    st.close();
    expect(ckpt.fingerprint).toMatch(/^[0-9a-f]{64}$/);
    const again = await loadOptCheckpoint(OPT_MINI, { quiet: true });
    expect(again.fingerprint).toBe(ckpt.fingerprint);
  });
});
