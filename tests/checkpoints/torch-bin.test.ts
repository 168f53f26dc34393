import { describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { loadOptCheckpoint } from '../../checkpoints/opt-checkpoint.js';
import { openTorchBin, readTorchTensorF32 } from '../../checkpoints/torch-bin.js';
import { HAVE_FIXTURES, TINY_BIN } from '../helpers/fixtures.js';

describe.skipIf(!HAVE_FIXTURES)('pytorch_model.bin written by torch itself (tiny-opt-bin-fp16)', () => {
  it('parses the state dict through the restricted unpickler', () => {
    const bin = openTorchBin(join(TINY_BIN, 'pytorch_model.bin'));
    try {
      expect(bin.tensors.size).toBe(36);
      const emb = bin.tensors.get('model.decoder.embed_tokens.weight')!;
      expect(emb.storage.dtype).toBe('F16');
      expect(emb.shape).toEqual([512, 64]);
      expect(emb.stride).toEqual([64, 1]);
      const x = readTorchTensorF32(bin, 'model.decoder.layers.1.fc1.weight');
      expect(x.length).toBe(256 * 64);
      expect(x.every(Number.isFinite)).toBe(true);
    } finally {
      bin.close();
    }
  });

  it('loads as an OptCheckpoint', async () => {
    const ckpt = await loadOptCheckpoint(TINY_BIN, { quiet: true });
    expect(ckpt.format).toBe('pytorch-bin');
    expect(ckpt.config.hiddenSize).toBe(64);
    expect(ckpt.weights.layers).toHaveLength(2);
    expect(ckpt.weights.lmHead).toBe(ckpt.weights.embedTokens);
  });
});
