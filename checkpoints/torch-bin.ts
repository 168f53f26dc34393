/**
 * pytorch_model.bin as torch.save (>= 1.6) writes it: a zip with `<archive>/data.pkl` (the pickled state dict, whose
 * tensors point at storages by persistent id) and one entry `<archive>/data/<key>` of raw little-endian bytes per
 * storage. The pickle goes through the restricted unpickler (nothing is executed); tensor bytes are read per tensor by
 * offset from the zip, so the file is never held in memory whole.
 */
import { closeSync, openSync, readSync } from 'node:fs';
import { DejavuError } from '../common/errors.js';
import { bytesToFloat32, DTYPE_SIZE, numel } from './safetensors.js';
import type { SourceTensor, TensorSource } from './tensor-source.js';
import { unpickle, type PickleTensor } from './unpickle.js';
import { ZipReader } from './zip.js';

export interface TorchBinTensors {
  path: string;
  tensors: Map<string, PickleTensor>;
  /** Raw bytes of the elements a tensor can touch, from its first element to its last (strides applied). */
  readSpan(t: PickleTensor): Uint8Array;
  close(): void;
}

/** Open a torch.save zip and parse its state dict (tensor metadata only; no tensor data is read yet). */
export function openTorchBin(path: string): TorchBinTensors {
  const zip = openZipOrExplain(path);
  try {
    const pkls = zip.entries().filter((e) => /^[^/]+\/data\.pkl$/.test(e.name));
    if (pkls.length !== 1) throw new DejavuError(`expected one <archive>/data.pkl entry in the zip, found ${pkls.length}`, path);
    const prefix = pkls[0].name.slice(0, -'data.pkl'.length);
    const order = zip.entry(`${prefix}byteorder`);
    if (order) {
      const bo = new TextDecoder().decode(zip.read(order.name));
      if (bo !== 'little') throw new DejavuError(`byteorder is ${JSON.stringify(bo)}; only little-endian files are supported`, path);
    }
    const root = unpickle(zip.read(pkls[0].name), path);
    if (!(root instanceof Map)) throw new DejavuError('data.pkl is not a dict (expected a state dict of tensors)', path);
    const tensors = new Map<string, PickleTensor>();
    for (const [k, v] of root) {
      if (typeof k !== 'string') throw new DejavuError('state dict has a non-string key', path);
      if (!v || typeof v !== 'object' || (v as PickleTensor).kind !== 'tensor') {
        throw new DejavuError(`state dict entry ${k} is not a tensor`, path);
      }
      tensors.set(k, v as PickleTensor);
    }
    const readSpan = (t: PickleTensor): Uint8Array => {
      const es = DTYPE_SIZE[t.storage.dtype];
      const entry = `${prefix}data/${t.storage.key}`;
      const e = zip.entry(entry);
      if (!e) throw new DejavuError(`storage ${entry} referenced by the pickle is missing from the zip`, path);
      if (e.size !== t.storage.numel * es) {
        throw new DejavuError(`storage ${entry} has ${e.size} bytes, the pickle says ${t.storage.numel} x ${es}`, path);
      }
      const span = spanOf(t);
      if (t.offset + span > t.storage.numel) {
        throw new DejavuError(`a tensor of storage ${entry} reaches past the end of the storage`, path);
      }
      return zip.readRange(entry, t.offset * es, span * es);
    };
    return { path, tensors, readSpan, close: () => zip.close() };
  } catch (e) {
    zip.close();
    throw e;
  }
}

/** Elements from a view's first to its last element inclusive (0 for an empty tensor). */
function spanOf(t: PickleTensor): number {
  if (t.shape.some((s) => s === 0)) return 0;
  let last = 0;
  for (let i = 0; i < t.shape.length; i++) last += (t.shape[i] - 1) * t.stride[i];
  return last + 1;
}

function isContiguous(t: PickleTensor): boolean {
  let expect = 1;
  for (let i = t.shape.length - 1; i >= 0; i--) {
    // Size-1 dims may carry any stride (torch leaves them arbitrary).
    if (t.shape[i] !== 1 && t.stride[i] !== expect) return false;
    expect *= t.shape[i];
  }
  return true;
}

/** Copy a strided view (strides in elements, relative to `src[0]`) into row-major order. */
function gather(src: Float32Array, shape: number[], stride: number[]): Float32Array {
  const out = new Float32Array(numel(shape));
  const idx = new Array<number>(shape.length).fill(0);
  let s = 0;
  for (let o = 0; o < out.length; o++) {
    out[o] = src[s];
    for (let d = shape.length - 1; d >= 0; d--) {
      if (++idx[d] < shape[d]) {
        s += stride[d];
        break;
      }
      s -= (shape[d] - 1) * stride[d];
      idx[d] = 0;
    }
  }
  return out;
}

export function readTorchTensorF32(bin: TorchBinTensors, name: string): Float32Array {
  const t = bin.tensors.get(name);
  if (!t) throw new DejavuError(`missing tensor ${name}`, bin.path);
  const x = bytesToFloat32(bin.readSpan(t), t.storage.dtype, bin.path, name);
  return isContiguous(t) ? x : gather(x, t.shape, t.stride);
}

/** A tensor's stored bytes in row-major order (a strided view gathered element by element). */
export function readTorchTensorStored(bin: TorchBinTensors, name: string): Uint8Array {
  const t = bin.tensors.get(name);
  if (!t) throw new DejavuError(`missing tensor ${name}`, bin.path);
  const span = bin.readSpan(t);
  if (isContiguous(t)) return span;
  const es = DTYPE_SIZE[t.storage.dtype];
  const n = numel(t.shape);
  const out = new Uint8Array(n * es);
  const idx = new Array<number>(t.shape.length).fill(0);
  let s = 0;
  for (let o = 0; o < n; o++) {
    for (let k = 0, src = s * es, dst = o * es; k < es; k++) out[dst + k] = span[src + k];
    for (let d = t.shape.length - 1; d >= 0; d--) {
      if (++idx[d] < t.shape[d]) {
        s += t.stride[d];
        break;
      }
      s -= (t.shape[d] - 1) * t.stride[d];
      idx[d] = 0;
    }
  }
  return out;
}

export function torchBinSource(path: string): TensorSource {
  const bin = openTorchBin(path);
  const list: SourceTensor[] = [...bin.tensors].map(([name, t]) => ({ name, dtype: t.storage.dtype, shape: t.shape, file: path }));
  return {
    format: 'pytorch-bin',
    path,
    files: [path],
    tensors: () => list,
    readFloat32: (name) => readTorchTensorF32(bin, name),
    readStored: (name) => readTorchTensorStored(bin, name),
    close: () => bin.close(),
  };
}

/** A zip error on a .bin is often the pre-1.6 torch.save format (a bare pickle stream); say so plainly. */
function openZipOrExplain(path: string): ZipReader {
  try {
    return ZipReader.open(path);
  } catch (e) {
    if (e instanceof DejavuError && /not a zip/.test(e.message)) {
      const head = new Uint8Array(2);
      const fd = openSync(path, 'r');
      try {
        readSync(fd, head, 0, 2, 0);
      } finally {
        closeSync(fd);
      }
      if (head[0] === 0x80) {
        throw new DejavuError('legacy (pre-torch-1.6, non-zip) torch.save format is not supported; re-save it with a current torch', path);
      }
    }
    throw e;
  }
}
