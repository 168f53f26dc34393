/**
 * export's calibration on the GPU (`--device auto|cpu|cuda`, runtime/cuda/calib-ppl.ts), on the CPU through a
 * stand-in CUDA library: its decode NLL is a known function of the k the engine's graphs were last built with, so
 * every measurement the search records shows whether per-layer k reached the engine (set, then rebuilt) before it
 * ran. Also: the device record in the manifest, the engine freed on success and failure, the GPU's G for the grouped
 * selection, how auto picks, and the CLI's refusals. The real GPU run is scripts/cuda-budget.sh.
 */
import { Command } from 'commander';
import { mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { register as registerExport } from '../../cli/commands/export.js';
import { loadOptCheckpoint } from '../../checkpoints/opt-checkpoint.js';
import { parseOptConfig } from '../../checkpoints/opt-config.js';
import { writeSafetensors } from '../../checkpoints/safetensors.js';
import type { OptCheckpoint } from '../../checkpoints/types.js';
import { exportMeasured, exportToBudget, type CalibrationOptions } from '../../export/budget.js';
import { loadBundle, readManifest } from '../../export/bundle.js';
import { predictorFile } from '../../export/export.js';
import { describeRecordedQuality, type QualityRecord } from '../../export/quality.js';
import { layerKOnEngine } from '../../runtime/cuda/calib-ppl.js';
import type { CudaLib } from '../../runtime/cuda/lib.js';
import { pickDevice } from '../../runtime/cuda/pick-device.js';
import { REPO_ROOT } from '../helpers/fixtures.js';

const MODEL = join(REPO_ROOT, 'examples', 'opt-mini');
const BUNDLE = join(REPO_ROOT, 'examples', 'opt-mini-bundle-att-in');
const TRAIN_TEXT = join(REPO_ROOT, 'examples', 'c4mini', 'c4mini-train-first400.json.gz');
const H = 12;
const FFN = 1536;
const L = 6;

const root = mkdtempSync(join(tmpdir(), 'dejavu-budget-gpu-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));
let ckpt: OptCheckpoint;
const pred = join(root, 'pred');

/** The NLL per token the stand-in reports for the k its graphs were built with (dense: 4). */
function fakeNll(kH: number[], kM: number[]): number {
  let n = 4;
  for (let l = 0; l < kH.length; l++) n += 0.05 * (1 - kM[l] / FFN) ** 3 + 0.05 * (1 - kH[l] / H) ** 2;
  return n;
}

/** A stand-in CudaLib: k set per layer takes effect at build(); decode NLL from fakeNll of the built k. */
function fakeLib(o: { groups?: number; noGpu?: boolean } = {}) {
  const st = { create: 0, destroy: 0, builds: 0, options: [] as unknown[], kH: new Array(L).fill(H), kM: new Array(L).fill(FFN), built: [] as string[] };
  let builtK = { kH: [...st.kH], kM: [...st.kM] };
  let selection = 'exact';
  const lib = {
    file: 'fake',
    deviceInfo: () => {
      if (o.noGpu) throw new Error('no usable CUDA GPU on this machine (stand-in)');
      return { name: 'Stand-in GPU', sms: 132, memBytes: 80e9 };
    },
    memInfo: () => ({ freeBytes: 64e9, totalBytes: 80e9 }),
    create: (_c: unknown, options: { selection?: string }) => {
      st.create++;
      st.options.push(options);
      selection = options.selection ?? 'exact';
      return { h: 1 };
    },
    destroy: () => void st.destroy++,
    setVariant: () => {},
    uploadRaw: () => {},
    setPredictor: (_h: unknown, layer: number, target: number, _tap: number, _src: number, _w1: unknown, _w2: unknown, _rank: number, k: number) => {
      if (target === 0) st.kH[layer] = k;
      else st.kM[layer] = k;
    },
    setK: (_h: unknown, layer: number, kH: number, kM: number) => {
      st.kH[layer] = kH;
      st.kM[layer] = kM;
    },
    build: () => {
      st.builds++;
      builtK = { kH: [...st.kH], kM: [...st.kM] };
      st.built.push(`${builtK.kH}|${builtK.kM}`);
    },
    path: () => 'streamed',
    mlpGroups: () => (selection === 'grouped' ? (o.groups ?? 126) : 1),
    prefill: (_h: unknown, _tokens: Int32Array, lens: Int32Array, out: { nll?: Float32Array }) => {
      let r = 0;
      for (const n of lens) {
        for (let i = 0; i < n; i++) out.nll![r + i] = i === n - 1 ? 0 : 4;
        r += n;
      }
    },
    setPrompt: () => {},
    decodeNll: (_h: unknown, mode: string, steps: number, nll: Float32Array) => {
      expect(mode).toBe('sparse');
      nll.fill(fakeNll(builtK.kH, builtK.kM), 0, steps);
    },
  } as unknown as CudaLib;
  return { lib, st };
}

/** A train output folder holding the example bundle's predictors (fp32), its shards manifest naming 3 train docs. */
function predictorsFromBundle(): void {
  const b = loadBundle(BUNDLE, ckpt);
  const shards = join(root, 'shards');
  mkdirSync(shards, { recursive: true });
  mkdirSync(pred, { recursive: true });
  writeFileSync(join(shards, 'manifest.json'), JSON.stringify({ complete: true, args: { data: [{ path: TRAIN_TEXT, bytes: statSync(TRAIN_TEXT).size }], docs: 3, sample: null, seed: null } }));
  const layers: Record<string, unknown>[] = [];
  for (const p of [...b.mlp, ...b.attn]) {
    if (!p) continue;
    writeSafetensors(
      predictorFile(pred, p.layer, p.target),
      { w1: { dtype: 'F32', shape: [p.rank, 384], data: p.w1f }, w2: { dtype: 'F32', shape: [p.out, p.rank], data: p.w2f } },
      { target: p.target, layer: String(p.layer), input: p.input, lookahead: String(p.lookahead), rank: String(p.rank), model_fingerprint: ckpt.fingerprint, input_norm: p.input_norm },
    );
    layers.push({ layer: p.layer, target: p.target, ...p.metrics });
  }
  writeFileSync(join(pred, 'metrics.json'), JSON.stringify({ model_fingerprint: ckpt.fingerprint, args: { shards }, complete: true, layers }));
}

const calib = (lib: CudaLib, o: Partial<CalibrationOptions> = {}): CalibrationOptions => ({
  model: MODEL, data: [TRAIN_TEXT], docs: 2, maxLen: 32, quiet: true, device: { type: 'cuda', lib }, ...o,
});

describe('export --ppl-budget measured on the GPU engine (stand-in library)', () => {
  beforeAll(async () => {
    ckpt = await loadOptCheckpoint(MODEL, { quiet: true });
    predictorsFromBundle();
  });

  it('every measurement runs with its per-layer k set on the engine and the graphs rebuilt; the manifest names the GPU', async () => {
    const { lib, st } = fakeLib();
    const out = join(root, 'b3');
    const s = await exportToBudget({ predictors: pred, out, layers: '4-5' }, 0.03, calib(lib), ckpt);
    const q = readManifest(out).quality as unknown as QualityRecord;
    expect(q).toEqual(s.quality);
    expect(q.device).toEqual({ type: 'cuda', name: 'Stand-in GPU', path: 'streamed' });
    expect(st.options).toEqual([{ path: 'auto', selection: 'exact', kvPolicy: 'all' }]);
    expect(q.dense_ppl).toBeCloseTo(Math.exp(4), 3);
    // Each configuration measured on every calibration doc: exactly the stand-in's NLL at its k.
    const units = q.search!.units;
    for (const m of q.search!.measurements) {
      const kH = new Array(L).fill(H);
      const kM = new Array(L).fill(FFN);
      units.forEach((u, i) => ((u.target === 'mlp' ? kM : kH)[u.layer] = m.ks[i]));
      expect(m.measured).toBeCloseTo(Math.expm1(fakeNll(kH, kM) - 4), 4);
      expect(st.built).toContain(`${kH}|${kM}`);
    }
    // The sensitivities too: each unit's level alone.
    units.forEach((u) => u.levels.forEach((k, j) => {
      const kH = new Array(L).fill(H);
      const kM = new Array(L).fill(FFN);
      (u.target === 'mlp' ? kM : kH)[u.layer] = k;
      expect(u.cost[j]).toBeCloseTo(fakeNll(kH, kM) - 4, 4);
    }));
    expect(q.met).toBe(true);
    expect(q.delta).toBeLessThanOrEqual(0.03);
    expect(q.search!.evaluations).toBe(q.search!.measurements.length);
    expect(st.destroy).toBe(st.create);
    expect(describeRecordedQuality(readManifest(out))).toMatch(/, measured on cuda \(Stand-in GPU\)$/);
  }, 120_000);

  it('--recall with --calib-data: the bundle\'s own k on the engine, KV selected; the engine freed', async () => {
    const { lib, st } = fakeLib();
    const s = await exportMeasured({ predictors: pred, out: join(root, 'k99'), layers: '5' }, calib(lib, { docs: 1, kvPolicy: 'selected' }), ckpt);
    expect(s.quality.layers[5]).toEqual({ layer: 5, mlp_k: 286, heads_k: 8 });
    const kH = [H, H, H, H, H, 8];
    const kM = [FFN, FFN, FFN, FFN, FFN, 286];
    expect(s.quality.delta).toBeCloseTo(Math.expm1(fakeNll(kH, kM) - 4), 4);
    expect(st.options).toEqual([{ path: 'auto', selection: 'exact', kvPolicy: 'selected' }]);
    expect(s.quality.device?.type).toBe('cuda');
    expect(st.destroy).toBe(1);
  }, 60_000);

  it('grouped: the GPU\'s G is recorded; a different --mlp-groups is refused naming it, and the engine is freed', async () => {
    const a = fakeLib({ groups: 126 });
    const s = await exportMeasured({ predictors: pred, out: join(root, 'g'), layers: '5' }, calib(a.lib, { docs: 1, mlpSelection: 'grouped' }), ckpt);
    expect(s.quality).toMatchObject({ mlp_selection: 'grouped', mlp_groups: 126 });
    expect(s.quality.device?.mlp_groups_per_layer).toEqual([1, 1, 1, 1, 1, 126]);
    const b = fakeLib({ groups: 126 });
    await expect(exportMeasured({ predictors: pred, out: join(root, 'g2'), layers: '5' }, calib(b.lib, { docs: 1, mlpSelection: 'grouped', mlpGroups: 100 }), ckpt))
      .rejects.toThrow(/--mlp-groups: the GPU's grouped selection uses G = 126 on this model; drop --mlp-groups or give 126/);
    expect(b.st.destroy).toBe(b.st.create);
  }, 60_000);

  it('the CPU measurer records the CPU and its threads', async () => {
    const s = await exportMeasured({ predictors: pred, out: join(root, 'cpu'), layers: '5' }, { model: MODEL, data: [TRAIN_TEXT], docs: 1, maxLen: 16, quiet: true, threads: 1 }, ckpt);
    expect(s.quality.device).toMatchObject({ type: 'cpu', threads: 1 });
  }, 60_000);
});

describe('layerKOnEngine', () => {
  it('null is dense, undefined keeps the bundle\'s k', () => {
    const plan = { kH: [12, 8], kM: [1536, 200] };
    expect(layerKOnEngine(plan, { heads: 12, ffn: 1536 }, undefined)).toEqual(plan);
    expect(layerKOnEngine(plan, { heads: 12, ffn: 1536 }, { mlp: [null, 99], attn: [null, null] })).toEqual({ kH: [12, 12], kM: [1536, 99] });
  });
});

describe('--device auto|cpu|cuda', () => {
  const config = parseOptConfig(join(MODEL, 'config.json'));
  it('auto takes the GPU when the library loads and a GPU answers, else the CPU with the reason; cuda insists', async () => {
    const ok = fakeLib().lib;
    expect(await pickDevice(undefined, config, async () => ok)).toMatchObject({ type: 'cuda', name: 'Stand-in GPU' });
    expect(await pickDevice('cpu', config, async () => ok)).toEqual({ type: 'cpu' });
    const missing = async (): Promise<CudaLib> => {
      throw new Error('CUDA library not built');
    };
    expect(await pickDevice('auto', config, missing)).toEqual({ type: 'cpu', why: 'CUDA library not built' });
    expect(await pickDevice('auto', config, async () => fakeLib({ noGpu: true }).lib)).toMatchObject({ type: 'cpu', why: expect.stringMatching(/no usable CUDA GPU/) });
    await expect(pickDevice('cuda', config, missing)).rejects.toThrow(/CUDA library not built/);
    await expect(pickDevice('tpu', config, missing)).rejects.toThrow(/--device: expected auto, cpu, cuda, got 'tpu'/);
  });

  it('a post-LN model runs on the GPU with the exact top-k; for the grouped one auto measures on the CPU, cuda refuses', async () => {
    const post = { ...config, doLayerNormBefore: false, hasFinalLayerNorm: false };
    expect(await pickDevice('auto', post, async () => fakeLib().lib)).toMatchObject({ type: 'cuda' });
    expect(await pickDevice('auto', post, async () => fakeLib().lib, { grouped: true })).toMatchObject({ type: 'cpu', why: expect.stringMatching(/grouped top-k.*post-LayerNorm/) });
    await expect(pickDevice('cuda', post, async () => fakeLib().lib, { grouped: true })).rejects.toThrow(/post-LayerNorm/);
  });

  it('the CLI refuses --device without --calib-data, an unknown device, and --workers with --device cuda', async () => {
    const run = async (args: string[]) => {
      const program = new Command().exitOverride();
      registerExport(program);
      await program.parseAsync(['node', 'dejavu', 'export', '--predictors', pred, '--model', MODEL, '--out', join(root, 'x'), ...args]);
    };
    await expect(run(['--device', 'cuda'])).rejects.toThrow(/--device: only applies with --calib-data/);
    await expect(run(['--calib-data', TRAIN_TEXT, '--device', 'tpu'])).rejects.toThrow(/expected auto, cpu, cuda, got 'tpu'/);
    await expect(run(['--calib-data', TRAIN_TEXT, '--device', 'cuda', '--workers', '2'])).rejects.toThrow(/--workers: not with --device cuda/);
  });
});
