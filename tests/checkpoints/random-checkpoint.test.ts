/**
 * scripts/random-opt-checkpoint.py writes random-weight OPT folders of real shapes (for GPU work on models we cannot
 * download); the `tiny` shape must load with loadOptCheckpoint, be deterministic per seed and give finite logits.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { bf16ToF32, f16ToF32, f32ToF16 } from '../../checkpoints/float16.js';
import { loadOptCheckpoint } from '../../checkpoints/opt-checkpoint.js';
import { OptModel } from '../../runtime/cpu/model.js';
import { REPO_ROOT } from '../helpers/fixtures.js';
import { removeTempDirs, tempDir } from './helpers/model-folder.js';

const SCRIPT = join(REPO_ROOT, 'scripts', 'random-opt-checkpoint.py');
const HAVE_NUMPY = spawnSync('python3', ['-c', 'import numpy'], { encoding: 'utf8' }).status === 0;

afterAll(removeTempDirs);

function generate(out: string, ...args: string[]) {
  return spawnSync('python3', [SCRIPT, '--shape', 'tiny', '--out', out, ...args], { encoding: 'utf8' });
}

function generateOk(label: string, ...args: string[]): string {
  const out = join(tempDir(label), 'model');
  const r = generate(out, '--shard-gb', '0.001', ...args);
  expect(r.stderr).toContain('done:');
  expect(r.status).toBe(0);
  return out;
}

async function logitsOf(dir: string): Promise<Float32Array> {
  const m = await OptModel.load(await loadOptCheckpoint(dir, { quiet: true }));
  try {
    return m.prefill([2, 100, 2000, 7000, 31, 5]);
  } finally {
    m.dispose();
  }
}

describe.skipIf(!HAVE_NUMPY)('scripts/random-opt-checkpoint.py', () => {
  it('tiny: sharded fp16 in HF layout, loads with the real vocabulary, deterministic per seed, finite logits', async () => {
    const a = generateOk('a', '--seed', '7');
    const index = JSON.parse(readFileSync(join(a, 'model.safetensors.index.json'), 'utf8'));
    const shards = new Set(Object.values(index.weight_map as Record<string, string>));
    expect(shards.size).toBeGreaterThanOrEqual(2);
    expect(index.weight_map['model.decoder.layers.1.self_attn.q_proj.weight']).toMatch(/^model-0000\d-of-0000\d\.safetensors$/);
    for (const f of ['tokenizer.json', 'vocab.json', 'merges.txt']) expect(existsSync(join(a, f))).toBe(true);
    const cfg = JSON.parse(readFileSync(join(a, 'config.json'), 'utf8'));
    expect(cfg.architectures).toEqual(['OPTForCausalLM']);
    expect(cfg.torch_dtype).toBe('float16');

    const ca = await loadOptCheckpoint(a, { quiet: true });
    expect(ca.format).toBe('safetensors-sharded');
    expect(ca.config).toMatchObject({
      vocabSize: 50272, hiddenSize: 64, numLayers: 2, numHeads: 4, ffnDim: 256, maxPositionEmbeddings: 2048,
      wordEmbedProjDim: 64, doLayerNormBefore: true, hasFinalLayerNorm: true, tieWordEmbeddings: true, dtype: 'float16',
    });
    const b = await loadOptCheckpoint(generateOk('b', '--seed', '7', '--shard-gb', '5'), { quiet: true });
    expect(b.format).toBe('safetensors'); // one shard: model.safetensors, same tensors
    expect(b.weightsSha256).toBe(ca.weightsSha256);
    expect(b.fingerprint).toBe(ca.fingerprint);
    const serial = await loadOptCheckpoint(generateOk('serial', '--seed', '7', '--jobs', '1'), { quiet: true });
    expect(serial.weightsSha256).toBe(ca.weightsSha256); // shards written in parallel (default) or one by one: same bytes
    const c = await loadOptCheckpoint(generateOk('c', '--seed', '8'), { quiet: true });
    expect(c.weightsSha256).not.toBe(ca.weightsSha256);

    // Trained-OPT-like magnitudes: Linear weights ~N(0, 1/sqrt(fan_in)), LayerNorm gains near 1.
    const q = ca.weights.layers[0].qW;
    const std = Math.sqrt(q.reduce((s, x) => s + x * x, 0) / q.length);
    expect(std).toBeGreaterThan(0.9 / 8);
    expect(std).toBeLessThan(1.1 / 8);
    const g = ca.weights.layers[0].attnLnW;
    expect(g.reduce((s, x) => s + x, 0) / g.length).toBeCloseTo(1, 1);

    const logits = await logitsOf(a);
    expect(logits.length).toBe(6 * 50272);
    expect(logits.every(Number.isFinite)).toBe(true);
  });

  it('tiny post-LN + project_in/out + untied head loads (no final LayerNorm, lm_head stored) with finite logits', async () => {
    const dir = generateOk('variant', '--post-ln', '--project-in-out', '--untied-head');
    const index = JSON.parse(readFileSync(join(dir, 'model.safetensors.index.json'), 'utf8'));
    expect(Object.keys(index.weight_map)).toContain('lm_head.weight');
    expect(Object.keys(index.weight_map)).not.toContain('model.decoder.final_layer_norm.weight');
    const ck = await loadOptCheckpoint(dir, { quiet: true });
    expect(ck.config).toMatchObject({
      hiddenSize: 64, wordEmbedProjDim: 32, doLayerNormBefore: false, hasFinalLayerNorm: false, tieWordEmbeddings: false,
    });
    expect(ck.weights.projectIn).toHaveLength(64 * 32);
    expect(ck.weights.lmHead).not.toBe(ck.weights.embedTokens);
    expect((await logitsOf(dir)).every(Number.isFinite)).toBe(true);
  });

  it('one value stream per seed: fp16 rounds and bf16 truncates the float32 values', async () => {
    const f32 = await loadOptCheckpoint(generateOk('f32', '--dtype', 'float32'), { quiet: true });
    const f16 = await loadOptCheckpoint(generateOk('f16'), { quiet: true });
    const bf = await loadOptCheckpoint(generateOk('bf16', '--dtype', 'bfloat16'), { quiet: true });
    const w = f32.weights.layers[1].fc1W;
    // f32ToF16 rounds to nearest, ties to even, as numpy's astype(float16)
    expect(Array.from(f16.weights.layers[1].fc1W)).toEqual(Array.from(f16ToF32(f32ToF16(w))));
    const trunc = new Uint16Array(w.length);
    const bits = new Uint32Array(w.buffer, w.byteOffset, w.length);
    for (let i = 0; i < w.length; i++) trunc[i] = bits[i] >>> 16;
    expect(Array.from(bf.weights.layers[1].fc1W)).toEqual(Array.from(bf16ToF32(trunc)));
  });

  it('bad input: one line naming the file, exit 1, existing output untouched; a rerun keeps complete shards', () => {
    const dir = tempDir('bad');
    const file = join(dir, 'a-file');
    writeFileSync(file, 'keep');
    const r = generate(file);
    expect(r.status).toBe(1);
    expect(r.stderr.trim()).toBe(`${file}: exists and is not a folder`);
    expect(readFileSync(file, 'utf8')).toBe('keep');

    const noTok = generate(join(dir, 'm'), '--tokenizer-from', join(dir, 'nope'));
    expect(noTok.status).toBe(1);
    expect(noTok.stderr.trim()).toBe(`${join(dir, 'nope')}: tokenizer folder not found`);

    // A shard that fails in a --jobs worker process: the same one line from the parent.
    const blocked = join(dir, 'blocked');
    mkdirSync(join(blocked, 'model-00002-of-00002.safetensors.tmp'), { recursive: true });
    const rb = generate(blocked, '--shard-gb', '0.001', '--jobs', '2');
    expect(rb.status).toBe(1);
    expect(rb.stderr.trim().split('\n').pop()).toBe(`${join(blocked, 'model-00002-of-00002.safetensors')}: cannot write (Is a directory)`);
    expect(existsSync(join(blocked, 'config.json'))).toBe(false);

    const out = generateOk('resume');
    const again = generate(out, '--shard-gb', '0.001');
    expect(again.status).toBe(0);
    expect(again.stderr).toContain('already complete, kept');
    const other = generate(out, '--shard-gb', '5');
    expect(other.status).toBe(1);
    expect(other.stderr.trim()).toMatch(/\/model(-00001-of-0000\d\.safetensors|\.safetensors\.index\.json): left by a run with other settings; use an empty --out$/);
  });
});
