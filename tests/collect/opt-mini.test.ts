/**
 * Acceptance on the real opt-mini checkpoint: `--docs 1 --max-len 64` on the c4mini validation file reproduces the
 * Hugging Face reference activations (reference.safetensors, sequence s0) in every layer after fp16 storage.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { f16BitsToF32 } from '../../checkpoints/float16.js';
import { SafetensorsFile } from '../../checkpoints/safetensors.js';
import { collect, type CollectResult } from '../../collect/collect.js';
import { unpackActive } from '../../collect/labels.js';
import { readShard } from '../../collect/read-shard.js';
import { C4_VALID_JSON, HAVE_FIXTURES, OPT_MINI } from '../helpers/fixtures.js';

function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let num = 0;
  let den = 0;
  for (let i = 0; i < b.length; i++) {
    num += (a[i] - b[i]) ** 2;
    den += b[i] ** 2;
  }
  return Math.sqrt(num / den);
}

const fp16 = (bits: Uint16Array) => Float32Array.from(bits, f16BitsToF32);

describe.skipIf(!HAVE_FIXTURES)('collect on opt-mini vs the Hugging Face reference', () => {
  let out: string;
  let r: CollectResult;
  let ref: SafetensorsFile;
  beforeAll(async () => {
    out = mkdtempSync(join(tmpdir(), 'dejavu-collect-ref-'));
    r = await collect({ model: OPT_MINI, data: [C4_VALID_JSON], out, docs: 1, maxLen: 64, quiet: true });
    ref = SafetensorsFile.open(join(OPT_MINI, 'reference.safetensors'));
  });
  afterAll(() => {
    ref?.close();
    rmSync(out, { recursive: true, force: true });
  });

  it('writes one shard per layer, a manifest and no temp files', () => {
    const m = r.manifest;
    expect(m.docs).toBe(1);
    expect(m.tokens).toBe(64);
    expect(m.layers).toEqual([0, 1, 2, 3, 4, 5]);
    expect(m.num_shards).toBe(1);
    expect(readdirSync(out).sort()).toEqual(['collect-state.json', 'layer_00', 'layer_01', 'layer_02', 'layer_03', 'layer_04', 'layer_05', 'manifest.json']);
    for (const l of m.layers) expect(readdirSync(join(out, `layer_0${l}`))).toEqual(['shard_00000.arrow']);
    const onDisk = JSON.parse(readFileSync(join(out, 'manifest.json'), 'utf8'));
    expect(onDisk.tokens).toBe(64);
    expect(onDisk.model_fingerprint).toMatch(/^[0-9a-f]{64}$/);
  });

  for (let l = 0; l < 6; l++) {
    it(`layer ${l}: att_in, mlp_in, head_norm within 1e-3; mlp_active = fc1_relu > 0`, () => {
      const s = readShard(join(out, `layer_0${l}`, 'shard_00000.arrow'));
      expect(s.rows).toBe(64);
      expect(s.metadata.get('dejavu.layer')).toBe(String(l));
      expect(s.metadata.get('dejavu.model_fingerprint')).toBe(r.manifest.model_fingerprint);
      expect(Array.from(s.columns.get('doc')!.values)).toEqual(new Array(64).fill(0));
      expect(Array.from(s.columns.get('pos')!.values)).toEqual(Array.from({ length: 64 }, (_, i) => i));
      const errs: Record<string, number> = {};
      for (const name of ['att_in', 'mlp_in', 'head_norm']) {
        const got = fp16(s.columns.get(name)!.values as Uint16Array);
        const want = ref.readFloat32(`s0.layer${l}.${name}`);
        expect(got.length).toBe(want.length);
        errs[name] = relErr(got, want);
        expect(errs[name]).toBeLessThanOrEqual(1e-3);
      }
      const act = ref.readFloat32(`s0.layer${l}.fc1_relu`);
      const bits = s.columns.get('mlp_active')!.values as Uint8Array;
      let mismatches = 0;
      let tolerated = 0;
      let active = 0;
      for (let t = 0; t < 64; t++) {
        const row = unpackActive(bits, 1536, t * 192);
        for (let n = 0; n < 1536; n++) {
          const a = act[t * 1536 + n];
          active += row[n];
          if (row[n] !== (a > 0 ? 1 : 0)) {
            // The tolerance: a tiny positive activation may round to <= 0 in our fp32 forward.
            if (a > 0 && a < 1e-3) tolerated++;
            else mismatches++;
          }
        }
      }
      expect(mismatches).toBe(0);
      // A figure for the report: relative errors and the share of active neurons.
      console.log(
        `layer ${l}: rel err att_in ${errs.att_in.toExponential(2)}, mlp_in ${errs.mlp_in.toExponential(2)}, ` +
          `head_norm ${errs.head_norm.toExponential(2)}; active ${(active / (64 * 1536)).toFixed(4)}, tolerated bit flips ${tolerated}`,
      );
    });
  }

  it('--mlp-topk 16 --layers 3: the stored top-16 are the reference top-16 activations', async () => {
    const out2 = mkdtempSync(join(tmpdir(), 'dejavu-collect-topk-'));
    try {
      const r2 = await collect({ model: OPT_MINI, data: [C4_VALID_JSON], out: out2, docs: 1, maxLen: 64, mlpTopk: 16, layers: '3', quiet: true });
      expect(r2.manifest.layers).toEqual([3]);
      const s = readShard(join(out2, 'layer_03', 'shard_00000.arrow'));
      const vals = fp16(s.columns.get('mlp_topk_val')!.values as Uint16Array);
      const idx = s.columns.get('mlp_topk_idx')!.values as Int32Array;
      const act = ref.readFloat32('s0.layer3.fc1_relu');
      const want = new Float32Array(64 * 16);
      const atIdx = new Float32Array(64 * 16);
      for (let t = 0; t < 64; t++) {
        const row = Array.from(act.subarray(t * 1536, (t + 1) * 1536)).sort((a, b) => b - a);
        for (let k = 0; k < 16; k++) {
          want[t * 16 + k] = row[k];
          atIdx[t * 16 + k] = act[t * 1536 + idx[t * 16 + k]];
          if (k) expect(vals[t * 16 + k]).toBeLessThanOrEqual(vals[t * 16 + k - 1]); // descending
        }
      }
      expect(relErr(vals, want)).toBeLessThanOrEqual(1e-3); // the right values...
      expect(relErr(atIdx, want)).toBeLessThanOrEqual(1e-3); // ...at the right neurons
    } finally {
      rmSync(out2, { recursive: true, force: true });
    }
  });

  it('bytes per token per layer stay under 2*d*2 + 2*H + ceil(ffn/8) + 16 once the fixed footer is amortised', async () => {
    const out3 = mkdtempSync(join(tmpdir(), 'dejavu-collect-size-'));
    try {
      const m = (await collect({ model: OPT_MINI, data: [C4_VALID_JSON], out: out3, docs: 10, maxLen: 512, layers: '5', quiet: true })).manifest;
      expect(m.tokens).toBeGreaterThan(3000);
      expect(m.bound_bytes_per_token_per_layer).toBe(2 * 384 * 2 + 2 * 12 + 1536 / 8 + 16);
      expect(m.bytes).toBe(statSync(join(out3, 'layer_05', 'shard_00000.arrow')).size);
      expect(m.bytes_per_token_per_layer).toBeCloseTo(m.bytes / m.tokens, 2);
      expect(m.bytes_per_token_per_layer).toBeGreaterThan(m.row_bytes);
      expect(m.bytes_per_token_per_layer).toBeLessThanOrEqual(m.bound_bytes_per_token_per_layer);
    } finally {
      rmSync(out3, { recursive: true, force: true });
    }
  });

  const havePyarrow = spawnSync('python3', ['-c', 'import pyarrow, numpy'], { encoding: 'utf8' }).status === 0;
  it.skipIf(!havePyarrow)('pyarrow reads every layer and gets the same agreement with the reference', () => {
    // numpy reads the reference safetensors directly (8-byte header length, JSON header, raw little-endian data).
    const script = `
import json, struct, sys, numpy as np, pyarrow as pa
out, ref = sys.argv[1], sys.argv[2]
raw = open(ref, 'rb').read(); n = struct.unpack('<Q', raw[:8])[0]; hdr = json.loads(raw[8:8 + n])
def tensor(k):
    a, b = hdr[k]['data_offsets']; return np.frombuffer(raw[8 + n + a:8 + n + b], dtype=np.float32).reshape(hdr[k]['shape'])
res = []
for l in range(6):
    with pa.ipc.open_file(f'{out}/layer_{l:02d}/shard_00000.arrow') as r:
        t = r.read_all(); md = {k.decode(): v.decode() for k, v in r.schema.metadata.items()}
    rows = t.num_rows
    err = {}
    for c in ['att_in', 'mlp_in', 'head_norm']:
        a = t.column(c).combine_chunks().flatten().to_numpy().astype(np.float32).reshape(rows, -1)
        b = tensor(f's0.layer{l}.{c}')
        err[c] = float(np.linalg.norm(a - b) / np.linalg.norm(b))
    bits = t.column('mlp_active').combine_chunks().flatten().to_numpy().reshape(rows, -1)
    active = np.unpackbits(bits, axis=1, bitorder='little')[:, :1536].astype(bool)
    act = tensor(f's0.layer{l}.fc1_relu')
    bad = int(((active != (act > 0)) & ~((act > 0) & (act < 1e-3))).sum())
    res.append({'layer': int(md['dejavu.layer']), 'rows': rows, 'err': err, 'bad': bad})
print(json.dumps(res))
`;
    const res = spawnSync('python3', ['-c', script, out, join(OPT_MINI, 'reference.safetensors')], { encoding: 'utf8' });
    expect(res.stderr).toBe('');
    const layers = JSON.parse(res.stdout) as { layer: number; rows: number; err: Record<string, number>; bad: number }[];
    expect(layers.map((x) => x.layer)).toEqual([0, 1, 2, 3, 4, 5]);
    for (const x of layers) {
      expect(x.rows).toBe(64);
      for (const e of Object.values(x.err)) expect(e).toBeLessThanOrEqual(1e-3);
      expect(x.bad).toBe(0);
    }
  });

  it('rows are the tokens of reference s0: document 0 of the validation file, BOS first, 64 tokens', async () => {
    const { loadTokenizer, readDocuments } = await import('../../datasets/index.js');
    const tok = await loadTokenizer(OPT_MINI);
    let text = '';
    for await (const d of readDocuments([C4_VALID_JSON], { docs: 1 })) text = d.text;
    expect(Array.from(tok.encode(text, 64))).toEqual(Array.from(ref.readInt32('s0.ids')));
  });
});
