/**
 * streamTensors: every format yields the tensors loadOptCheckpoint loads (raw bytes -> fp32 here), bad input fails
 * with one line naming the file, and streaming a 200 MB file keeps anonymous memory far below the file size.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { closeSync, openSync, readFileSync, truncateSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { loadOptCheckpoint } from '../../checkpoints/opt-checkpoint.js';
import { parseOptConfig } from '../../checkpoints/opt-config.js';
import { assembleWeights } from '../../checkpoints/opt-names.js';
import { bytesToFloat32, SafetensorsFile, writeSafetensors, type TensorToWrite } from '../../checkpoints/safetensors.js';
import { streamTensors, type StreamedTensor } from '../../checkpoints/tensor-stream.js';
import { DejavuError } from '../../common/errors.js';
import { HAVE_FIXTURES, REPO_ROOT, TINY_BIN } from '../helpers/fixtures.js';
import { diffWeights } from './helpers/compare.js';
import { removeTempDirs, tempDir } from './helpers/model-folder.js';
import { buildTorchZip, type BinTensor } from './helpers/pickle-writer.js';

afterAll(removeTempDirs);

const OPT_MINI = join(REPO_ROOT, 'examples', 'opt-mini');

async function collect(dir: string): Promise<StreamedTensor[]> {
  const out: StreamedTensor[] = [];
  for await (const t of streamTensors(dir)) out.push(t);
  return out;
}

/** The streamed tensors, converted to fp32 and assembled as the loader does, must equal the loader's weights bit for bit. */
async function expectSameAsLoader(dir: string, configDir = dir): Promise<StreamedTensor[]> {
  const streamed = await collect(dir);
  const byName = new Map(streamed.map((t) => [t.name, t]));
  expect(byName.size).toBe(streamed.length);
  const used = new Set<string>();
  const weights = assembleWeights(parseOptConfig(join(configDir, 'config.json')), (name) => {
    const t = byName.get(name);
    if (!t) throw new Error(`not streamed: ${name}`);
    used.add(name);
    expect(t.bytes.byteOffset).toBe(0);
    return bytesToFloat32(t.bytes, t.dtype, t.file, t.name);
  });
  const loaded = await loadOptCheckpoint(dir, { quiet: true });
  expect(diffWeights(weights, loaded.weights)).toEqual([]);
  // Nothing streamed beyond what the model reads, except a stored tied lm_head.
  expect(streamed.map((t) => t.name).filter((n) => !used.has(n) && n !== 'lm_head.weight')).toEqual([]);
  return streamed;
}

async function expectError(dir: string, file: string, pattern: RegExp): Promise<void> {
  const err = await collect(dir).then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(DejavuError);
  const msg = (err as Error).message;
  expect(msg.startsWith(`${file}: `)).toBe(true);
  expect(msg).toMatch(pattern);
  expect(msg).not.toContain('\n');
}

/** opt-mini's stored tensors as raw bytes, keyed by stored name. */
function optMiniRaw(): Map<string, { dtype: 'F16'; shape: number[]; bytes: Uint8Array }> {
  const f = SafetensorsFile.open(join(OPT_MINI, 'model.safetensors'));
  const m = new Map(f.names().map((n) => [n, { dtype: 'F16' as const, shape: f.info(n).shape, bytes: f.readBytes(n) }]));
  f.close();
  return m;
}

const u16 = (b: Uint8Array) => new Uint16Array(b.buffer, b.byteOffset, b.byteLength / 2);

function copyConfig(dir: string): void {
  writeFileSync(join(dir, 'config.json'), readFileSync(join(OPT_MINI, 'config.json')));
}

describe('streamTensors', () => {
  it('examples/opt-mini (model.safetensors): raw F16, canonical names, equal to loadOptCheckpoint', async () => {
    const s = await expectSameAsLoader(OPT_MINI);
    expect(s.every((t) => t.dtype === 'F16' && !t.name.startsWith('model.'))).toBe(true);
  });

  it.skipIf(!HAVE_FIXTURES)('tiny-opt-bin-fp16 (pytorch_model.bin written by torch): equal to loadOptCheckpoint', async () => {
    const s = await expectSameAsLoader(TINY_BIN);
    expect(s.every((t) => t.file === join(TINY_BIN, 'pytorch_model.bin'))).toBe(true);
  });

  it('sharded safetensors (our writer, mixed prefixes, a tensor outside the index ignored) streams the same bytes', async () => {
    const raw = optMiniRaw();
    const dir = tempDir('stream-shards');
    copyConfig(dir);
    const shards: Record<string, TensorToWrite>[] = [{}, {}, {}];
    const weightMap: Record<string, string> = {};
    [...raw].forEach(([n, t], i) => {
      const stored = i % 2 ? n.replace(/^model\./, '') : n;
      shards[i % 3][stored] = { dtype: t.dtype, shape: t.shape, data: u16(t.bytes) };
      weightMap[stored] = `s${i % 3}.safetensors`;
    });
    shards[0]['model.decoder.not_in_index'] = { dtype: 'F32', shape: [1], data: new Float32Array(1) };
    shards.forEach((s, i) => writeSafetensors(join(dir, `s${i}.safetensors`), s));
    writeFileSync(join(dir, 'model.safetensors.index.json'), JSON.stringify({ weight_map: weightMap }));
    const streamed = await expectSameAsLoader(dir);
    const single = new Map((await collect(OPT_MINI)).map((t) => [t.name, t]));
    expect(streamed.length).toBe(single.size);
    for (const t of streamed) {
      const o = single.get(t.name)!;
      expect([t.dtype, t.shape]).toEqual([o.dtype, o.shape]);
      expect(Buffer.compare(t.bytes, o.bytes)).toBe(0);
    }
  });

  it('sharded pytorch_model.bin with a transposed (strided) view at a storage offset: gathered to row-major', async () => {
    const raw = optMiniRaw();
    const dir = tempDir('stream-bin');
    copyConfig(dir);
    const shards: Record<string, BinTensor>[] = [{}, {}];
    const weightMap: Record<string, string> = {};
    [...raw].forEach(([n, t], i) => {
      const bt: BinTensor = { dtype: 'F16', shape: t.shape, storage: t.bytes, key: String(i) };
      if (n.endsWith('layers.0.fc1.weight')) {
        // Store W^T contiguously after 3 padding elements; the tensor is the view W = (W^T).T.
        const [rows, cols] = t.shape;
        const src = u16(t.bytes);
        const st = new Uint16Array(3 + rows * cols);
        for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) st[3 + c * rows + r] = src[r * cols + c];
        Object.assign(bt, { storage: new Uint8Array(st.buffer), offset: 3, stride: [1, rows] });
      }
      shards[i % 2][n] = bt;
      weightMap[n] = `p${i % 2}.bin`;
    });
    shards.forEach((s, i) => writeFileSync(join(dir, `p${i}.bin`), buildTorchZip(s)));
    writeFileSync(join(dir, 'pytorch_model.bin.index.json'), JSON.stringify({ weight_map: weightMap }));
    const streamed = await expectSameAsLoader(dir);
    const fc1 = streamed.find((t) => t.name === 'decoder.layers.0.fc1.weight')!;
    expect(Buffer.compare(fc1.bytes, raw.get('model.decoder.layers.0.fc1.weight')!.bytes)).toBe(0);
  });

  describe('bad input: one line naming the file', () => {
    const folder = (label: string, tensors: Record<string, TensorToWrite>): [string, string] => {
      const dir = tempDir(label);
      const p = join(dir, 'model.safetensors');
      writeSafetensors(p, tensors);
      return [dir, p];
    };
    const t = (n: number): TensorToWrite => ({ dtype: 'F16', shape: [n], data: new Uint16Array(n) });

    it('truncated file (header offsets past the end)', async () => {
      const [dir, p] = folder('trunc', { 'decoder.a': t(64), 'decoder.b': t(64) });
      truncateSync(p, readFileSync(p).length - 10);
      await expectError(dir, p, /past the end of the file/);
    });

    it('a file that shrinks while streaming: the short read is an error, not a short tensor', async () => {
      const [dir, p] = folder('shrink', { 'decoder.a': t(64), 'decoder.b': t(64) });
      const gen = streamTensors(dir);
      expect((await gen.next()).value.name).toBe('decoder.a');
      truncateSync(p, readFileSync(p).length - 10);
      const err = await gen.next().then(() => undefined, (e: unknown) => e);
      expect(err).toBeInstanceOf(DejavuError);
      expect((err as Error).message).toMatch(new RegExp(`^${p}: unexpected end of file reading tensor decoder.b`));
    });

    it('unknown dtype in the header', async () => {
      const [dir, p] = folder('dtype', { 'decoder.a': t(4) });
      const buf = readFileSync(p);
      writeFileSync(p, Buffer.from(buf.toString('latin1').replace('"F16"', '"F17"'), 'latin1'));
      await expectError(dir, p, /tensor decoder.a: unknown dtype "F17"/);
    });

    it('a non-float decoder tensor (an I64 buffer outside the decoder is skipped)', async () => {
      const i64 = (): TensorToWrite => ({ dtype: 'I64', shape: [2], data: new BigInt64Array(2) });
      const [okDir] = folder('i64-other', { 'decoder.a': t(4), 'model.encoder.ids': i64() });
      expect((await collect(okDir)).map((x) => x.name)).toEqual(['decoder.a']);
      const [dir, p] = folder('i64', { 'decoder.a': t(4), 'model.decoder.ids': i64() });
      await expectError(dir, p, /tensor model.decoder.ids has dtype I64; only F16, BF16 and F32/);
    });

    it('a tensor stored with and without model.', async () => {
      const [dir, p] = folder('twice', { 'decoder.a': t(4), 'model.decoder.a': t(4) });
      await expectError(dir, p, /tensor decoder.a is stored twice/);
    });

    it('an index naming a missing shard, or a tensor its shard lacks', async () => {
      const dir = tempDir('index');
      writeSafetensors(join(dir, 's.safetensors'), { 'decoder.a': t(4) });
      const index = join(dir, 'model.safetensors.index.json');
      writeFileSync(index, JSON.stringify({ weight_map: { 'decoder.a': 's.safetensors', 'decoder.b': 'gone.safetensors' } }));
      await expectError(dir, index, /shard gone.safetensors listed in the index does not exist/);
      writeFileSync(index, JSON.stringify({ weight_map: { 'decoder.a': 's.safetensors', 'decoder.b': 's.safetensors' } }));
      await expectError(dir, join(dir, 's.safetensors'), /missing tensor decoder.b/);
    });

    it('no weights, not a folder', async () => {
      const dir = tempDir('empty');
      await expectError(dir, dir, /no weights found/);
      writeFileSync(join(dir, 'f'), 'x');
      await expectError(join(dir, 'f'), join(dir, 'f'), /not a folder/);
    });
  });

  it('streaming a 200 MB safetensors file keeps RssAnon growth far below the file size', async () => {
    const dir = tempDir('big');
    const p = join(dir, 'model.safetensors');
    const count = 50;
    const size = 4 << 20; // bytes per tensor (F16 [2048, 1024])
    const header: Record<string, unknown> = {};
    for (let i = 0; i < count; i++) {
      header[`model.decoder.t${i}.weight`] = { dtype: 'F16', shape: [2048, 1024], data_offsets: [i * size, (i + 1) * size] };
    }
    let json = JSON.stringify(header);
    json += ' '.repeat((8 - (json.length % 8)) % 8);
    const fd = openSync(p, 'w');
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(json.length));
    writeSync(fd, len);
    writeSync(fd, Buffer.from(json));
    const chunk = Buffer.alloc(size); // one buffer reused, so writing the file costs no memory either
    for (let i = 0; i < count; i++) writeSync(fd, chunk.fill(i + 1));
    closeSync(fd);

    const rssAnon = () => Number(/RssAnon:\s+(\d+) kB/.exec(readFileSync('/proc/self/status', 'utf8'))![1]) * 1024;
    const before = rssAnon();
    let peak = before;
    let i = 0;
    for await (const t of streamTensors(dir)) {
      expect([t.name, t.bytes.length, t.bytes[0], t.bytes[size - 1]]).toEqual([`decoder.t${i}.weight`, size, i + 1, i + 1]);
      i++;
      peak = Math.max(peak, rssAnon());
    }
    expect(i).toBe(count);
    // Measured ~40 MB: tensors the loop has dropped wait for V8's next GC. Holding the file (or every tensor) is 200+ MB.
    expect(peak - before).toBeLessThan(100 << 20);
  });
});
