/**
 * Stream a model folder's weights one tensor at a time in their stored dtype (F16 / BF16 / F32, no fp32 conversion):
 * what a device loader uploads tensor by tensor, so the host holds one tensor's bytes at a time instead of the model.
 * Formats and their order are those of loadOptCheckpoint (model.safetensors, its shard index, pytorch_model.bin, its
 * shard index). Safetensors tensors are read by byte range through an async file handle, one file open at a time, in
 * file order; .bin tensors go through the restricted unpickler and the zip reader (strided views gathered into
 * row-major order). Every header / index / pickle is validated, and names and dtypes checked, before the first tensor
 * is yielded, so bad input fails before any upload starts.
 */
import { existsSync, statSync } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { DejavuError, fsErrorToDejavu } from '../common/errors.js';
import { canonicalName } from './opt-names.js';
import { SafetensorsFile, type StDtype } from './safetensors.js';
import { readShardIndex } from './tensor-source.js';
import { WEIGHT_FILE_NAMES } from './opt-checkpoint.js';
import { openTorchBin, readTorchTensorStored, type TorchBinTensors } from './torch-bin.js';

export type StreamDtype = 'F16' | 'BF16' | 'F32';

export interface StreamedTensor {
  /** Canonical name (without `model.`), as loadOptCheckpoint uses. */
  name: string;
  dtype: StreamDtype;
  shape: number[];
  /** Raw little-endian element bytes, row-major, in a fresh buffer at offset 0 (aligned for a typed-array view). */
  bytes: Uint8Array;
  /** The file it came from (for error messages). */
  file: string;
}

/** One tensor to yield: metadata known up front, bytes read on demand. */
interface Planned {
  name: string;
  stored: string;
  dtype: StreamDtype;
  shape: number[];
  file: string;
  /** Safetensors: offsets into the data section. */
  range?: [number, number];
  /** .bin: the opened archive. */
  bin?: TorchBinTensors;
}

const WEIGHT_FILES = WEIGHT_FILE_NAMES;
const STREAM_DTYPES = new Set<StDtype>(['F16', 'BF16', 'F32']);

/**
 * Yield every decoder / LM-head tensor of `modelDir` once, one at a time. Tensors outside the decoder are skipped (as
 * the loader does); a tied `lm_head.weight` that the file stores is yielded like any other tensor. Breaking out of
 * the loop closes the files.
 */
export async function* streamTensors(modelDir: string): AsyncGenerator<StreamedTensor> {
  if (!existsSync(modelDir)) throw new DejavuError('model folder not found', modelDir);
  if (!statSync(modelDir).isDirectory()) throw new DejavuError('not a folder (expected a Hugging Face model folder)', modelDir);
  const found = WEIGHT_FILES.find((f) => existsSync(join(modelDir, f)));
  if (!found) throw new DejavuError(`no weights found (looked for ${WEIGHT_FILES.join(', ')})`, modelDir);
  const path = join(modelDir, found);
  const bins: TorchBinTensors[] = [];
  try {
    let plan: Planned[];
    if (found === 'model.safetensors') plan = planSafetensors(path);
    else if (found === 'model.safetensors.index.json') plan = planSharded(path, planSafetensors);
    else plan = found === 'pytorch_model.bin' ? planBin(path, bins) : planSharded(path, (p) => planBin(p, bins));
    checkPlan(plan);
    let fh: FileHandle | undefined;
    let fhPath = '';
    let dataStart = 0;
    try {
      for (const t of plan) {
        let bytes: Uint8Array;
        if (t.bin) {
          bytes = readTorchTensorStored(t.bin, t.stored);
        } else {
          if (fhPath !== t.file) {
            // The plan groups each file's tensors together, so one handle is open at a time.
            await fh?.close();
            fh = undefined;
            fh = await openHandle(t.file);
            fhPath = t.file;
            const len = await readAt(fh, 0, 8, t.file, 'the header length');
            dataStart = 8 + Number(new DataView(len.buffer).getBigUint64(0, true));
          }
          const [begin, end] = t.range!;
          bytes = await readAt(fh!, dataStart + begin, end - begin, t.file, `tensor ${t.stored}`);
        }
        yield { name: t.name, dtype: t.dtype, shape: t.shape, bytes, file: t.file };
      }
    } finally {
      await fh?.close();
    }
  } finally {
    for (const b of bins) b.close();
  }
}

/** Header validated by the safetensors reader (dtypes, shapes, offsets inside the file, no overlaps); file order. */
function planSafetensors(path: string, only?: Set<string>): Planned[] {
  const f = SafetensorsFile.open(path);
  try {
    const out: (Planned & { range: [number, number] })[] = [];
    for (const stored of only ? [...only] : f.names()) {
      const i = f.info(stored); // a name the index maps here but the shard lacks: "missing tensor", naming the shard
      out.push({ ...named(stored, i.dtype, i.shape, path), range: [i.begin, i.end] });
    }
    return out.sort((a, b) => a.range[0] - b.range[0]);
  } finally {
    f.close();
  }
}

function planBin(path: string, bins: TorchBinTensors[], only?: Set<string>): Planned[] {
  const bin = openTorchBin(path);
  bins.push(bin);
  const names = only ? [...only] : [...bin.tensors.keys()];
  return names.map((stored) => {
    const t = bin.tensors.get(stored);
    if (!t) throw new DejavuError(`missing tensor ${stored}`, path);
    return { ...named(stored, t.storage.dtype, t.shape, path), bin };
  });
}

/** The index's shards in first-mention order, each with the tensors the index maps to it (others are ignored). */
function planSharded(indexPath: string, planShard: (path: string, only: Set<string>) => Planned[]): Planned[] {
  const byShard = new Map<string, Set<string>>();
  for (const [name, file] of readShardIndex(indexPath)) {
    if (!byShard.has(file)) byShard.set(file, new Set());
    byShard.get(file)!.add(name);
  }
  const out: Planned[] = [];
  for (const [file, names] of byShard) {
    const p = join(dirname(indexPath), file);
    if (!existsSync(p)) throw new DejavuError(`shard ${file} listed in the index does not exist`, indexPath);
    out.push(...planShard(p, names));
  }
  return out;
}

/** Metadata of one stored tensor; the dtype is checked later, and only for tensors that are yielded. */
function named(stored: string, dtype: StDtype, shape: number[], file: string): Planned {
  return { name: canonicalName(stored) ?? '', stored, dtype: dtype as StreamDtype, shape, file };
}

/** Drop non-decoder tensors in place; refuse a canonical name stored twice and a non-float weight (loader's rules). */
function checkPlan(plan: Planned[]): void {
  const seen = new Map<string, Planned>();
  let w = 0;
  for (const t of plan) {
    if (!t.name) continue;
    const prev = seen.get(t.name);
    if (prev) throw new DejavuError(`tensor ${t.name} is stored twice (as ${prev.stored} and ${t.stored})`, t.file);
    seen.set(t.name, t);
    if (!STREAM_DTYPES.has(t.dtype)) {
      throw new DejavuError(`tensor ${t.stored} has dtype ${t.dtype}; only F16, BF16 and F32 weights are supported`, t.file);
    }
    plan[w++] = t;
  }
  plan.length = w;
}

async function openHandle(path: string): Promise<FileHandle> {
  try {
    return await open(path, 'r');
  } catch (e) {
    throw fsErrorToDejavu(e, path) ?? e;
  }
}

/** Exactly `length` bytes at `position` (in <= 1 GiB reads); a short file is a one-line error, not a short tensor. */
async function readAt(fh: FileHandle, position: number, length: number, path: string, what: string): Promise<Uint8Array> {
  const out = new Uint8Array(length);
  let done = 0;
  while (done < length) {
    let n: number;
    try {
      ({ bytesRead: n } = await fh.read(out, done, Math.min(length - done, 1 << 30), position + done));
    } catch (e) {
      throw fsErrorToDejavu(e, path) ?? e;
    }
    if (n === 0) {
      throw new DejavuError(`unexpected end of file reading ${what} (${length} bytes at offset ${position}; truncated?)`, path);
    }
    done += n;
  }
  return out;
}
