/**
 * loadOptCheckpoint on small synthetic models (no fixtures needed): every OPT variant the loader supports, the
 * name -> LayerWeights mapping checked against a hand-written table, and every bad input with its error message.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { loadOptCheckpoint } from '../../checkpoints/opt-checkpoint.js';
import { writeSafetensors } from '../../checkpoints/safetensors.js';
import { bf16ToF32 } from '../../checkpoints/float16.js';
import type { OptWeights } from '../../checkpoints/types.js';
import { firstBitDiff } from './helpers/compare.js';
import {
  encodeAs,
  tempDir,
  tinyConfigJson,
  tinyModel,
  writeConfig,
  writeSafetensorsFolder,
  writeTorchBinFolder,
  type ModelTensor,
  type TinyConfig,
  removeTempDirs,
} from './helpers/model-folder.js';
import { buildTorchZip, PickleBuilder, statePickle, type BinTensor } from './helpers/pickle-writer.js';

afterAll(removeTempDirs);

const PRE: TinyConfig = { vocab: 40, hidden: 16, proj: 16, heads: 2, layers: 2, ffn: 32, maxPos: 12, preLN: true, finalLN: true, lmHead: false };
const OPT350: TinyConfig = { ...PRE, proj: 8, preLN: false, finalLN: false };

/** Where each HF tensor must land, written independently of checkpoints/opt-names.ts. */
function field(w: OptWeights, name: string): Float32Array | undefined {
  const top: Record<string, Float32Array | undefined> = {
    'decoder.embed_tokens.weight': w.embedTokens,
    'decoder.embed_positions.weight': w.embedPositions,
    'decoder.project_in.weight': w.projectIn,
    'decoder.project_out.weight': w.projectOut,
    'decoder.final_layer_norm.weight': w.finalLnW,
    'decoder.final_layer_norm.bias': w.finalLnB,
    'lm_head.weight': w.lmHead,
  };
  if (name in top) return top[name];
  const m = /^decoder\.layers\.(\d+)\.(.+)$/.exec(name)!;
  const l = w.layers[Number(m[1])];
  const map: Record<string, Float32Array> = {
    'self_attn.q_proj.weight': l.qW, 'self_attn.q_proj.bias': l.qB,
    'self_attn.k_proj.weight': l.kW, 'self_attn.k_proj.bias': l.kB,
    'self_attn.v_proj.weight': l.vW, 'self_attn.v_proj.bias': l.vB,
    'self_attn.out_proj.weight': l.oW, 'self_attn.out_proj.bias': l.oB,
    'self_attn_layer_norm.weight': l.attnLnW, 'self_attn_layer_norm.bias': l.attnLnB,
    'final_layer_norm.weight': l.mlpLnW, 'final_layer_norm.bias': l.mlpLnB,
    'fc1.weight': l.fc1W, 'fc1.bias': l.fc1B, 'fc2.weight': l.fc2W, 'fc2.bias': l.fc2B,
  };
  return map[m[2]];
}

/** Names whose loaded array differs from what was written (values compared after the same dtype rounding). */
function misplaced(w: OptWeights, tensors: ModelTensor[]): string[] {
  return tensors.filter((t) => {
    const got = field(w, t.name);
    return !got || firstBitDiff(got, t.data) !== -1;
  }).map((t) => t.name);
}

function folder(label: string, cfg: Record<string, unknown>, write: (dir: string) => void): string {
  const dir = tempDir(label);
  writeConfig(dir, cfg);
  write(dir);
  return dir;
}

describe('loadOptCheckpoint: OPT variants', () => {
  it('pre-LN, tied, `model.` prefix: every tensor lands in its LayerWeights field', async () => {
    const t = tinyModel(PRE);
    const c = await loadOptCheckpoint(folder('pre', tinyConfigJson(PRE), (d) => writeSafetensorsFolder(d, t, 'F32')), { quiet: true });
    expect(misplaced(c.weights, t)).toEqual([]);
    expect(c.weights.lmHead).toBe(c.weights.embedTokens);
    expect(c.weights.projectIn).toBeUndefined();
  });

  it('opt-350m style: project_in/project_out, post-LN, no final LayerNorm, `decoder.` names only', async () => {
    const t = tinyModel(OPT350);
    expect(t.some((x) => x.name === 'decoder.project_in.weight')).toBe(true);
    const c = await loadOptCheckpoint(folder('350m', tinyConfigJson(OPT350), (d) => writeSafetensorsFolder(d, t, 'F32', '')), { quiet: true });
    expect(misplaced(c.weights, t)).toEqual([]);
    expect(c.config).toMatchObject({ doLayerNormBefore: false, hasFinalLayerNorm: false, wordEmbedProjDim: 8, hiddenSize: 16 });
    expect(c.weights.projectIn!.length).toBe(16 * 8); // Linear(8 -> 16): [16][8]
    expect(c.weights.projectOut!.length).toBe(8 * 16);
    expect(c.weights.finalLnW).toBeUndefined();
    expect(c.weights.embedTokens.length).toBe(40 * 8);
  });

  it('_remove_final_layer_norm on a pre-LN model: final LayerNorm absent even if the file has one', async () => {
    const t = tinyModel(PRE);
    const cfg = tinyConfigJson({ ...PRE, finalLN: false });
    const c = await loadOptCheckpoint(folder('rmfinal', cfg, (d) => writeSafetensorsFolder(d, t, 'F32')), { quiet: true });
    expect(c.config.hasFinalLayerNorm).toBe(false);
    expect(c.weights.finalLnW).toBeUndefined();
  });

  it('untied lm_head is its own array', async () => {
    const cfg: TinyConfig = { ...PRE, lmHead: true };
    const t = tinyModel(cfg);
    const c = await loadOptCheckpoint(folder('untied', tinyConfigJson(cfg), (d) => writeSafetensorsFolder(d, t, 'F32')), { quiet: true });
    expect(c.config.tieWordEmbeddings).toBe(false);
    expect(c.weights.lmHead).not.toBe(c.weights.embedTokens);
    expect(misplaced(c.weights, t)).toEqual([]);
  });

  it('enable_bias false / layer_norm_elementwise_affine false: zero biases and unit LayerNorm scales', async () => {
    const t = tinyModel(PRE).filter((x) => !x.name.endsWith('.bias') && !x.name.includes('layer_norm'));
    const cfg = tinyConfigJson(PRE, { enable_bias: false, layer_norm_elementwise_affine: false });
    const c = await loadOptCheckpoint(folder('nobias', cfg, (d) => writeSafetensorsFolder(d, t, 'F32')), { quiet: true });
    expect(misplaced(c.weights, t)).toEqual([]);
    const l = c.weights.layers[1];
    expect(l.fc1B.length).toBe(32);
    expect(l.fc1B.every((v) => v === 0) && l.qB.every((v) => v === 0)).toBe(true);
    expect(l.attnLnW.every((v) => v === 1) && l.mlpLnB.every((v) => v === 0)).toBe(true);
    expect(c.weights.finalLnW!.every((v) => v === 1)).toBe(true);
  });

  it('pytorch_model.bin: deflated entries, a transposed (non-contiguous) view, a storage offset, bf16', async () => {
    const t = tinyModel(PRE);
    const rec: Record<string, BinTensor> = {};
    t.forEach((x, i) => (rec[`model.${x.name}`] = { dtype: 'BF16', shape: x.shape, storage: encodeAs(x.data, 'BF16'), key: `s${i}` }));
    // fc1.weight [32][16] stored as its transpose [16][32] in a storage, viewed with strides [1, 32].
    const fc1 = t.find((x) => x.name === 'decoder.layers.0.fc1.weight')!;
    const tr = new Float32Array(fc1.data.length);
    for (let o = 0; o < 32; o++) for (let i = 0; i < 16; i++) tr[i * 32 + o] = fc1.data[o * 16 + i];
    rec['model.decoder.layers.0.fc1.weight'] = { dtype: 'BF16', shape: [32, 16], stride: [1, 32], storage: encodeAs(tr, 'BF16'), key: 'tr' };
    // q and k biases of layer 1 packed into one storage; k's view starts at element 16.
    const qb = t.find((x) => x.name === 'decoder.layers.1.self_attn.q_proj.bias')!;
    const kb = t.find((x) => x.name === 'decoder.layers.1.self_attn.k_proj.bias')!;
    const packed = encodeAs(Float32Array.from([...qb.data, ...kb.data]), 'BF16');
    rec['model.decoder.layers.1.self_attn.q_proj.bias'] = { dtype: 'BF16', shape: [16], storage: packed, key: 'qk' };
    rec['model.decoder.layers.1.self_attn.k_proj.bias'] = { dtype: 'BF16', shape: [16], storage: packed, key: 'qk', offset: 16 };
    const dir = folder('binviews', tinyConfigJson(PRE), (d) => writeFileSync(join(d, 'pytorch_model.bin'), buildTorchZip(rec, { deflate: true })));
    const c = await loadOptCheckpoint(dir, { quiet: true });
    const rounded = t.map((x) => ({ ...x, data: bf16ToF32(new Uint16Array(encodeAs(x.data, 'BF16').buffer)) }));
    expect(misplaced(c.weights, rounded)).toEqual([]);
  });

  it('sharded pytorch_model.bin via pytorch_model.bin.index.json gives the same weights and fingerprint as one file', async () => {
    const t = tinyModel(PRE);
    const one = await loadOptCheckpoint(folder('bin1', tinyConfigJson(PRE), (d) => writeTorchBinFolder(d, t, 'F16')), { quiet: true });
    const dir = folder('binsh', tinyConfigJson(PRE), (d) => {
      const half = Math.ceil(t.length / 2);
      const weightMap: Record<string, string> = {};
      [t.slice(0, half), t.slice(half)].forEach((part, s) => {
        const sub = tempDir('part');
        writeTorchBinFolder(sub, part, 'F16');
        const file = `pytorch_model-0000${s + 1}-of-00002.bin`;
        writeFileSync(join(d, file), readFileSync(join(sub, 'pytorch_model.bin')));
        rmSync(sub, { recursive: true });
        for (const x of part) weightMap[`model.${x.name}`] = file;
      });
      writeFileSync(join(d, 'pytorch_model.bin.index.json'), JSON.stringify({ metadata: {}, weight_map: weightMap }));
    });
    const c = await loadOptCheckpoint(dir, { quiet: true });
    expect(c.format).toBe('pytorch-bin-sharded');
    expect(c.fingerprint).toBe(one.fingerprint);
    for (const x of t) expect(firstBitDiff(field(c.weights, x.name)!, field(one.weights, x.name)!), x.name).toBe(-1);
  });
});

describe('loadOptCheckpoint: bad inputs (error names the file and the problem)', () => {
  const t = () => tinyModel(PRE);

  it('missing path', async () => {
    await expect(loadOptCheckpoint('/nonexistent/model')).rejects.toThrow('/nonexistent/model: model folder not found');
  });

  it('folder without weights', async () => {
    const dir = folder('noweights', tinyConfigJson(PRE), () => {});
    await expect(loadOptCheckpoint(dir, { quiet: true })).rejects.toThrow(/: no weights found \(looked for model\.safetensors, model\.safetensors\.index\.json, pytorch_model\.bin/);
  });

  it('config without hidden_size', async () => {
    const { hidden_size: _, ...cfg } = tinyConfigJson(PRE);
    const dir = folder('nohidden', cfg, (d) => writeSafetensorsFolder(d, t(), 'F32'));
    await expect(loadOptCheckpoint(dir, { quiet: true })).rejects.toThrow(/config\.json: missing required key "hidden_size"/);
  });

  it('missing tensor', async () => {
    const dir = folder('missing', tinyConfigJson(PRE), (d) => writeSafetensorsFolder(d, t().filter((x) => x.name !== 'decoder.layers.1.fc2.bias'), 'F32'));
    await expect(loadOptCheckpoint(dir, { quiet: true })).rejects.toThrow(
      /model\.safetensors: missing tensor decoder\.layers\.1\.fc2\.bias \(looked for model\.decoder\.layers\.1\.fc2\.bias and decoder\.layers\.1\.fc2\.bias\)/,
    );
  });

  it('tensor shape disagrees with config.json', async () => {
    const dir = folder('shape', tinyConfigJson({ ...PRE, ffn: 48 }), (d) => writeSafetensorsFolder(d, t(), 'F32'));
    await expect(loadOptCheckpoint(dir, { quiet: true })).rejects.toThrow(
      /model\.safetensors: tensor model\.decoder\.layers\.0\.fc1\.weight has shape \[32, 16\] but config\.json implies \[48, 16\]/,
    );
  });

  it('non-float weights, a tensor stored twice, a tied lm_head that differs from the embedding', async () => {
    const x = t();
    const ints = folder('int', tinyConfigJson(PRE), (d) => {
      const rec = Object.fromEntries(x.map((y) => [`model.${y.name}`, { dtype: 'F32' as const, shape: y.shape, data: y.data }]));
      writeSafetensors(join(d, 'model.safetensors'), { ...rec, 'model.decoder.layers.0.fc1.bias': { dtype: 'I32', shape: [32], data: new Int32Array(32) } });
    });
    await expect(loadOptCheckpoint(ints, { quiet: true })).rejects.toThrow(/model\.safetensors: tensor model\.decoder\.layers\.0\.fc1\.bias has dtype I32/);
    const twice = folder('twice', tinyConfigJson(PRE), (d) => {
      const rec = Object.fromEntries(x.map((y) => [`model.${y.name}`, { dtype: 'F32' as const, shape: y.shape, data: y.data }]));
      const e = x[0];
      writeSafetensors(join(d, 'model.safetensors'), { ...rec, [e.name]: { dtype: 'F32', shape: e.shape, data: e.data } });
    });
    await expect(loadOptCheckpoint(twice, { quiet: true })).rejects.toThrow(/model\.safetensors: tensor decoder\.embed_tokens\.weight is stored twice/);
    const lm = tinyModel({ ...PRE, lmHead: true });
    const tiedDiff = folder('tieddiff', tinyConfigJson(PRE), (d) => writeSafetensorsFolder(d, lm, 'F32'));
    await expect(loadOptCheckpoint(tiedDiff, { quiet: true })).rejects.toThrow(
      /model\.safetensors: tensor lm_head\.weight differs from decoder\.embed_tokens\.weight but config\.json sets tie_word_embeddings/,
    );
  });

  it('truncated safetensors weights', async () => {
    const dir = folder('trunc', tinyConfigJson(PRE), (d) => writeSafetensorsFolder(d, t(), 'F32'));
    const p = join(dir, 'model.safetensors');
    truncateSync(p, readFileSync(p).length - 100);
    await expect(loadOptCheckpoint(dir, { quiet: true })).rejects.toThrow(/model\.safetensors: tensor .* run past the end of the file/);
  });

  it('shard index naming a missing shard', async () => {
    const dir = folder('shardmiss', tinyConfigJson(PRE), (d) =>
      writeFileSync(join(d, 'model.safetensors.index.json'), JSON.stringify({ weight_map: { 'model.decoder.embed_tokens.weight': 'model-00001-of-00002.safetensors' } })),
    );
    await expect(loadOptCheckpoint(dir, { quiet: true })).rejects.toThrow(
      /model\.safetensors\.index\.json: shard model-00001-of-00002\.safetensors listed in the index does not exist/,
    );
  });

  it.each([
    ['os', 'system'],
    ['builtins', 'eval'],
  ])('pytorch_model.bin whose pickle calls %s.%s is refused, nothing runs', async (module, name) => {
    const marker = join(tempDir('pwn'), 'pwned');
    const pkl = new PickleBuilder().proto(2).global(module, name).mark().str(`touch ${marker}`).op(0x74, 0x52, 0x2e).bytes();
    const dir = folder('evil', tinyConfigJson(PRE), (d) => writeFileSync(join(d, 'pytorch_model.bin'), buildTorchZip({}, { pickle: pkl })));
    await expect(loadOptCheckpoint(dir, { quiet: true })).rejects.toThrow(
      new RegExp(`pytorch_model\\.bin: pickle: refusing global ${module}\\.${name}`),
    );
  });

  it('pytorch_model.bin: truncated zip, missing storage entry, legacy non-zip format', async () => {
    const x = t();
    const dir = folder('bintrunc', tinyConfigJson(PRE), (d) => writeTorchBinFolder(d, x, 'F16'));
    const p = join(dir, 'pytorch_model.bin');
    const full = readFileSync(p);
    truncateSync(p, full.length - 30);
    await expect(loadOptCheckpoint(dir, { quiet: true })).rejects.toThrow(/pytorch_model\.bin: not a zip file or truncated/);
    // A storage the pickle references but the zip lacks.
    const rec: Record<string, BinTensor> = Object.fromEntries(
      x.map((y, i) => [`model.${y.name}`, { dtype: 'F32' as const, shape: y.shape, storage: encodeAs(y.data, 'F32'), key: String(i) }]),
    );
    const broken = { ...rec, 'model.decoder.layers.0.fc1.bias': { ...rec['model.decoder.layers.0.fc1.bias'], key: '999' } };
    writeFileSync(p, buildTorchZip(rec, { pickle: statePickle(broken) }));
    await expect(loadOptCheckpoint(dir, { quiet: true })).rejects.toThrow(/pytorch_model\.bin: storage archive\/data\/999 referenced by the pickle is missing/);
    writeFileSync(p, Buffer.concat([Buffer.from([0x80, 0x02, 0x8a, 0x0a]), Buffer.alloc(64)]));
    await expect(loadOptCheckpoint(dir, { quiet: true })).rejects.toThrow(/pytorch_model\.bin: legacy \(pre-torch-1\.6, non-zip\) torch\.save format/);
  });
});
