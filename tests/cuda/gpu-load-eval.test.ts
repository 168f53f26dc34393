/**
 * The CPU-side parts of the GPU engine's loading and evaluation (runtime/cuda/load.ts, eval-ppl.ts, eval ppl
 * --device cuda): tensor routing, the memory estimate and its refusal, streaming into a stand-in library (order,
 * dtypes, the fingerprint bundles bind to, GPU memory freed on every failure), document packing, and the CLI's
 * refusals before any GPU work. The GPU results themselves come from scripts/cuda-check.sh (check-mini) on a GPU.
 */
import { Command } from 'commander';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { register as registerEval } from '../../cli/commands/eval.js';
import { loadOptCheckpoint } from '../../checkpoints/opt-checkpoint.js';
import { parseOptConfig } from '../../checkpoints/opt-config.js';
import { packBatches } from '../../runtime/cuda/eval-ppl.js';
import { prefillFlopsPerToken } from '../../runtime/cuda/prefill-rate.js';
import type { CudaLib } from '../../runtime/cuda/lib.js';
import { TENSOR } from '../../runtime/cuda/lib.js';
import { deviceBytes, loadModelToGpu, tensorTarget } from '../../runtime/cuda/load.js';
import { C4_VALID_JSON, HAVE_FIXTURES, REPO_ROOT } from '../helpers/fixtures.js';

const MINI = join(REPO_ROOT, 'examples', 'opt-mini');
const tmp = mkdtempSync(join(tmpdir(), 'dejavu-gpu-load-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

/** A stand-in CudaLib recording what the loader does; `free` bytes of GPU memory. */
function fakeLib(free: number) {
  const calls = { create: 0, destroy: 0, variant: [] as unknown[], uploads: [] as { tensor: number; layer: number; dtype: string; n: number; bytes: number }[] };
  const lib = {
    file: 'fake',
    memInfo: () => ({ freeBytes: free, totalBytes: 80e9 }),
    create: () => {
      calls.create++;
      return { h: 1 };
    },
    destroy: () => void calls.destroy++,
    setVariant: (_h: unknown, v: unknown) => void calls.variant.push(v),
    uploadRaw: (_h: unknown, tensor: number, layer: number, bytes: Uint8Array, dtype: string, n: number) =>
      void calls.uploads.push({ tensor, layer, dtype, n, bytes: bytes.length }),
  } as unknown as CudaLib;
  return { lib, calls };
}

describe('tensor routing (checkpoint names -> engine tensors)', () => {
  const c = parseOptConfig(join(MINI, 'config.json'));
  it('maps decoder, layer and head tensors; a tied lm_head is not uploaded; others are not OPT', () => {
    expect(tensorTarget('decoder.embed_tokens.weight', c)).toEqual({ id: TENSOR.embed, layer: 0 });
    expect(tensorTarget('decoder.layers.3.fc2.weight', c)).toEqual({ id: TENSOR.fc2W, layer: 3 });
    expect(tensorTarget('decoder.layers.0.self_attn.out_proj.bias', c)).toEqual({ id: TENSOR.oB, layer: 0 });
    expect(tensorTarget('decoder.layers.5.final_layer_norm.weight', c)).toEqual({ id: TENSOR.ln2W, layer: 5 });
    expect(tensorTarget('decoder.final_layer_norm.bias', c)).toEqual({ id: TENSOR.lnfB, layer: 0 });
    expect(tensorTarget('decoder.project_out.weight', c)).toEqual({ id: TENSOR.projOut, layer: 0 });
    expect(tensorTarget('lm_head.weight', c)).toEqual({ id: -1, layer: -1 });
    expect(tensorTarget('lm_head.weight', { ...c, tieWordEmbeddings: false })).toEqual({ id: TENSOR.lmHead, layer: 0 });
    expect(tensorTarget('decoder.layers.1.self_attn.rotary.weight', c)).toBeUndefined();
  });
});

describe('GPU memory estimate', () => {
  it('OPT-6.7B: ~13.3 GB of fp16 weights, 1 GiB of KV per 2048 tokens x 32 layers x 32 heads x 128 x 2 x 2 bytes', () => {
    const c = { ...parseOptConfig(join(MINI, 'config.json')), vocabSize: 50272, hiddenSize: 4096, numLayers: 32, numHeads: 32, headDim: 128, ffnDim: 16384 };
    const b = deviceBytes(c, 2048, 0);
    expect(b.weights / 1e9).toBeGreaterThan(13.2);
    expect(b.weights / 1e9).toBeLessThan(13.5);
    expect(b.kv).toBe(32 * 32 * 2048 * (2 * 2 * 128 + 1));
    const untied = deviceBytes({ ...c, tieWordEmbeddings: false }, 2048, 0);
    expect(untied.weights - b.weights).toBe(2 * 50272 * 4096);
    expect(deviceBytes(c, 2048, 4096).workspace).toBeGreaterThan(b.workspace + 1e9);  // S/P of 32 heads x 2048^2
  });
});

describe('streamed loading into the engine (stand-in library)', () => {
  it('refuses a model larger than the free GPU memory before creating an engine, with both sizes in GB', async () => {
    const { lib, calls } = fakeLib(1e6);
    await expect(loadModelToGpu(lib, MINI, { maxT: 512 })).rejects.toThrow(/needs 0\.\d\d GB of GPU memory \(fp16 weights .* GB, KV cache .* GB, workspace .* GB\); the GPU has 0\.00 GB free of 80\.00 GB/);
    expect(calls.create).toBe(0);
  });

  it('uploads every tensor once, in its stored dtype, and binds to the same fingerprint as loadOptCheckpoint', async () => {
    const { lib, calls } = fakeLib(64e9);
    const r = await loadModelToGpu(lib, MINI, { maxT: 512 });
    const c = r.config;
    expect(calls.create).toBe(1);
    expect(calls.variant).toEqual([{ preLn: true, finalLn: true, embedDim: c.hiddenSize, untiedHead: false }]);
    expect(calls.uploads.length).toBe(4 + 16 * c.numLayers);
    expect(new Set(calls.uploads.map((u) => `${u.tensor}/${u.layer}`)).size).toBe(calls.uploads.length);
    expect(calls.uploads.every((u) => u.dtype === 'F16' && u.bytes === 2 * u.n)).toBe(true);
    expect(r.stats.tensors).toBe(calls.uploads.length);
    const ckpt = await loadOptCheckpoint(MINI, { quiet: true });
    expect(r.model.fingerprint).toBe(ckpt.fingerprint);
    expect(r.model.weightsSha256).toBe(ckpt.weightsSha256);
    r.engine.destroy();
    expect(calls.destroy).toBe(1);
  });

  it('a checkpoint cut short: one line naming the file, and the engine (GPU memory) freed', async () => {
    const dir = join(tmp, 'cut');
    mkdirSync(dir);
    for (const f of ['config.json', 'model.safetensors']) copyFileSync(join(MINI, f), join(dir, f));
    truncateSync(join(dir, 'model.safetensors'), 20_000_000);
    const { lib, calls } = fakeLib(64e9);
    await expect(loadModelToGpu(lib, dir, { maxT: 64 })).rejects.toThrow(/model\.safetensors|truncated|end of file/);
    expect(calls.destroy).toBe(calls.create);
  });

  it('a config the GPU cannot take is refused with its key before anything is allocated', async () => {
    const dir = join(tmp, 'gelu');
    mkdirSync(dir);
    const cfg = JSON.parse(readFileSync(join(MINI, 'config.json'), 'utf8'));
    writeFileSync(join(dir, 'config.json'), JSON.stringify({ ...cfg, activation_function: 'gelu' }));
    const { lib, calls } = fakeLib(64e9);
    await expect(loadModelToGpu(lib, dir, { maxT: 64 })).rejects.toThrow(/activation_function "gelu"/);
    expect(calls.create).toBe(0);
  });
});

describe('prefill FLOPs per token', () => {
  it('2 x matmul parameters (LM head included) + 2 x layers x d x T', () => {
    const c = { hiddenSize: 4096, ffnDim: 16384, numLayers: 32, vocabSize: 50272, wordEmbedProjDim: 4096 };
    const params = 32 * (4 * 4096 ** 2 + 2 * 16384 * 4096) + 50272 * 4096;
    expect(prefillFlopsPerToken(c, 2048)).toBe(2 * params + 2 * 32 * 4096 * 2048);
    expect(prefillFlopsPerToken({ ...c, wordEmbedProjDim: 512 }, 1) - prefillFlopsPerToken(c, 1)).toBe(2 * (50272 * (512 - 4096) + 2 * 4096 * 512));
  });
});

describe('prefill batches', () => {
  it('packs documents in order up to the batch size; a longer one goes alone', () => {
    expect(packBatches([3, 4, 2, 9, 1], 8)).toEqual([[0, 1], [2], [3], [4]]);
    expect(packBatches([5, 3, 8], 8)).toEqual([[0, 1], [2]]);
    expect(packBatches([], 8)).toEqual([]);
  });
});

describe.skipIf(!HAVE_FIXTURES)('eval ppl --device cuda: refusals before any GPU work', () => {
  const run = async (args: string[]) => {
    const program = new Command().exitOverride();
    registerEval(program);
    await program.parseAsync(['node', 'dejavu', 'eval', 'ppl', '--model', MINI, '--data', C4_VALID_JSON, '--docs', '2', ...args]);
  };
  const bundle = join(REPO_ROOT, 'examples', 'opt-mini-bundle');
  it('modes named; the GPU picks G itself; one engine, no workers; CPU-only flags named', async () => {
    await expect(run(['--device', 'cuda', '--bundle', bundle, '--modes', 'dense,sparse'])).rejects.toThrow(/unknown mode 'sparse' \(dense, oracle, predicted\)/);
    await expect(run(['--device', 'cuda', '--bundle', bundle, '--mlp-groups', '8'])).rejects.toThrow(/the GPU picks G/);
    await expect(run(['--device', 'cuda', '--workers', '2'])).rejects.toThrow(/one engine/);
    await expect(run(['--device', 'cuda', '--backend', 'wasm'])).rejects.toThrow(/CPU prefill backend/);
    await expect(run(['--device', 'tpu'])).rejects.toThrow(/expected cpu or cuda, got 'tpu'/);
    await expect(run(['--batch-tokens', '4096'])).rejects.toThrow(/only applies with --device cuda/);
  });
});
