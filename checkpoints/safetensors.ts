/**
 * safetensors reader and writer (https://github.com/huggingface/safetensors): an 8-byte little-endian header length N,
 * N bytes of JSON `{name: {dtype, shape, data_offsets: [begin, end]}, __metadata__?: {str: str}}`, then the data
 * section. The reader validates the whole header up front and then reads one tensor's byte range at a time from an
 * open fd, so loading a model never holds the file twice.
 */
import { closeSync, fstatSync, fsyncSync, openSync, readSync, renameSync, rmSync, writeSync } from 'node:fs';
import { endianness } from 'node:os';
import { tempPathFor } from '../common/atomic.js';
import { DejavuError } from '../common/errors.js';
import { bf16ToF32, f16ToF32, f32ToBf16, f32ToF16 } from './float16.js';

export type StDtype = 'F16' | 'BF16' | 'F32' | 'F64' | 'I64' | 'I32' | 'I16' | 'I8' | 'U8' | 'BOOL';

/** Offsets are into the data section (i.e. relative to 8 + header length). */
export interface TensorInfo {
  dtype: StDtype;
  shape: number[];
  begin: number;
  end: number;
}

export const DTYPE_SIZE: Record<StDtype, number> = {
  F16: 2,
  BF16: 2,
  F32: 4,
  F64: 8,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U8: 1,
  BOOL: 1,
};

export function isStDtype(s: unknown): s is StDtype {
  return typeof s === 'string' && Object.prototype.hasOwnProperty.call(DTYPE_SIZE, s);
}

// Typed-array views below reinterpret file bytes directly; a big-endian host would need byte swaps we do not do.
if (endianness() !== 'LE') throw new Error('dejavu-ts checkpoints/ assumes a little-endian host');

/** A sanity bound on the JSON header (the real format caps it at 100 MB). */
const MAX_HEADER = 100_000_000;

/** Number of elements of a shape (1 for a scalar []). */
export function numel(shape: readonly number[]): number {
  let n = 1;
  for (const s of shape) n *= s;
  return n;
}

/** Read exactly `length` bytes at `position`, in chunks (readSync caps one call near 2 GiB). */
export function readRange(fd: number, position: number, length: number, path: string): Uint8Array {
  const out = new Uint8Array(length);
  let done = 0;
  while (done < length) {
    const n = readSync(fd, out, done, Math.min(length - done, 1 << 30), position + done);
    if (n === 0) throw new DejavuError(`unexpected end of file reading ${length} bytes at offset ${position}`, path);
    done += n;
  }
  return out;
}

/** Open a regular file for reading, with errors that name it (missing file, a folder, no permission). */
export function openForRead(path: string): number {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new DejavuError(code === 'ENOENT' ? 'file not found' : `cannot open (${code ?? String(e)})`, path);
  }
  if (!fstatSync(fd).isFile()) {
    closeSync(fd);
    throw new DejavuError('not a regular file', path);
  }
  return fd;
}

/** Convert raw little-endian bytes of a float tensor to fp32. `bytes` must start at an aligned offset (ours do). */
export function bytesToFloat32(bytes: Uint8Array, dtype: StDtype, path: string, name: string): Float32Array {
  const n = bytes.byteLength / DTYPE_SIZE[dtype];
  switch (dtype) {
    case 'F32':
      return new Float32Array(bytes.buffer, bytes.byteOffset, n);
    case 'F16':
      return f16ToF32(new Uint16Array(bytes.buffer, bytes.byteOffset, n));
    case 'BF16':
      return bf16ToF32(new Uint16Array(bytes.buffer, bytes.byteOffset, n));
    case 'F64':
      return Float32Array.from(new Float64Array(bytes.buffer, bytes.byteOffset, n));
    default:
      throw new DejavuError(`tensor ${name} has dtype ${dtype}, expected a float dtype (F16, BF16, F32, F64)`, path);
  }
}

export class SafetensorsFile {
  readonly metadata: Record<string, string>;
  private readonly tensors: Map<string, TensorInfo>;
  private fd: number | undefined;
  /** Absolute file offset of the data section. */
  private readonly dataStart: number;

  private constructor(
    readonly path: string,
    fd: number,
    tensors: Map<string, TensorInfo>,
    metadata: Record<string, string>,
    dataStart: number,
  ) {
    this.fd = fd;
    this.tensors = tensors;
    this.metadata = metadata;
    this.dataStart = dataStart;
  }

  /** Open `path`, read and validate the header; the fd stays open for readBytes until close(). */
  static open(path: string): SafetensorsFile {
    const fd = openForRead(path);
    try {
      const { tensors, metadata, dataStart } = parseHeader(fd, path);
      return new SafetensorsFile(path, fd, tensors, metadata, dataStart);
    } catch (e) {
      closeSync(fd);
      throw e;
    }
  }

  /** Tensor names in header order. */
  names(): string[] {
    return [...this.tensors.keys()];
  }

  has(name: string): boolean {
    return this.tensors.has(name);
  }

  info(name: string): TensorInfo {
    const t = this.tensors.get(name);
    if (!t) throw new DejavuError(`missing tensor ${name}`, this.path);
    return t;
  }

  /** Raw little-endian bytes of one tensor, read from disk (only that range). */
  readBytes(name: string): Uint8Array {
    const t = this.info(name);
    if (this.fd === undefined) throw new DejavuError('file already closed', this.path);
    return readRange(this.fd, this.dataStart + t.begin, t.end - t.begin, this.path);
  }

  /** F16/BF16/F32/F64 tensor as fp32. */
  readFloat32(name: string): Float32Array {
    return bytesToFloat32(this.readBytes(name), this.info(name).dtype, this.path, name);
  }

  /** I64/I32 tensor as int32 (I64 values must fit in int32). */
  readInt32(name: string): Int32Array {
    const t = this.info(name);
    const bytes = this.readBytes(name);
    if (t.dtype === 'I32') return new Int32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
    if (t.dtype !== 'I64') throw new DejavuError(`tensor ${name} has dtype ${t.dtype}, expected I64 or I32`, this.path);
    const src = new BigInt64Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 8);
    const out = new Int32Array(src.length);
    for (let i = 0; i < src.length; i++) {
      const v = src[i];
      if (v > 2147483647n || v < -2147483648n) {
        throw new DejavuError(`tensor ${name}: I64 value ${v} at index ${i} does not fit in int32`, this.path);
      }
      out[i] = Number(v);
    }
    return out;
  }

  close(): void {
    if (this.fd !== undefined) closeSync(this.fd);
    this.fd = undefined;
  }
}

function parseHeader(
  fd: number,
  path: string,
): { tensors: Map<string, TensorInfo>; metadata: Record<string, string>; dataStart: number } {
  const size = fstatSync(fd).size;
  if (size < 8) throw new DejavuError(`truncated safetensors file (${size} bytes, need at least 8 for the header length)`, path);
  const lenBytes = readRange(fd, 0, 8, path);
  const n = new DataView(lenBytes.buffer).getBigUint64(0, true);
  if (n > BigInt(MAX_HEADER)) throw new DejavuError(`safetensors header length ${n} is implausible (not a safetensors file?)`, path);
  const headerLen = Number(n);
  if (8 + headerLen > size) {
    throw new DejavuError(`truncated safetensors file: header says ${headerLen} bytes of JSON but the file has ${size} bytes`, path);
  }
  let header: unknown;
  try {
    header = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(readRange(fd, 8, headerLen, path)));
  } catch (e) {
    throw new DejavuError(`safetensors header is not valid JSON (${(e as Error).message})`, path);
  }
  if (typeof header !== 'object' || header === null || Array.isArray(header)) {
    throw new DejavuError('safetensors header is not a JSON object', path);
  }
  const dataStart = 8 + headerLen;
  const dataSize = size - dataStart;
  const metadata: Record<string, string> = {};
  const tensors = new Map<string, TensorInfo>();
  for (const [name, raw] of Object.entries(header as Record<string, unknown>)) {
    if (name === '__metadata__') {
      if (typeof raw !== 'object' || raw === null) throw new DejavuError('__metadata__ is not an object', path);
      for (const [k, v] of Object.entries(raw)) {
        if (typeof v !== 'string') throw new DejavuError(`__metadata__.${k} is not a string`, path);
        metadata[k] = v;
      }
      continue;
    }
    tensors.set(name, validateEntry(name, raw, dataSize, path));
  }
  // Overlapping ranges mean a corrupt (or hostile) header; the format lays tensors out back to back.
  const sorted = [...tensors.entries()].sort((a, b) => a[1].begin - b[1].begin || a[1].end - b[1].end);
  for (let i = 1; i < sorted.length; i++) {
    const [pn, p] = sorted[i - 1];
    const [cn, c] = sorted[i];
    if (c.begin < p.end && c.end > c.begin) {
      throw new DejavuError(`tensors ${pn} and ${cn} overlap in the data section`, path);
    }
  }
  return { tensors, metadata, dataStart };
}

function validateEntry(name: string, raw: unknown, dataSize: number, path: string): TensorInfo {
  if (typeof raw !== 'object' || raw === null) throw new DejavuError(`tensor ${name}: header entry is not an object`, path);
  const e = raw as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
  if (!isStDtype(e.dtype)) throw new DejavuError(`tensor ${name}: unknown dtype ${JSON.stringify(e.dtype)}`, path);
  const shape = e.shape;
  if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
    throw new DejavuError(`tensor ${name}: bad shape ${JSON.stringify(shape)}`, path);
  }
  const off = e.data_offsets;
  if (!Array.isArray(off) || off.length !== 2 || !off.every((d) => Number.isSafeInteger(d) && d >= 0) || off[0] > off[1]) {
    throw new DejavuError(`tensor ${name}: bad data_offsets ${JSON.stringify(off)}`, path);
  }
  const [begin, end] = off as [number, number];
  if (end > dataSize) {
    throw new DejavuError(
      `tensor ${name}: data_offsets [${begin}, ${end}] run past the end of the file (data section is ${dataSize} bytes; truncated?)`,
      path,
    );
  }
  const expected = numel(shape) * DTYPE_SIZE[e.dtype];
  if (end - begin !== expected) {
    throw new DejavuError(
      `tensor ${name}: ${end - begin} bytes in the file but shape [${shape.join(', ')}] of ${e.dtype} needs ${expected}`,
      path,
    );
  }
  return { dtype: e.dtype, shape: [...shape], begin, end };
}

export interface TensorToWrite {
  dtype: StDtype;
  shape: number[];
  data: Float32Array | Uint16Array | Int32Array | BigInt64Array | Uint8Array;
}

/** The bytes a tensor is stored as, converting where the given array type differs from the stored dtype. */
function encode(name: string, t: TensorToWrite, path: string): Uint8Array {
  const n = numel(t.shape);
  const d = t.data;
  if (d.length !== n) {
    throw new DejavuError(`cannot write tensor ${name}: ${d.length} values for shape [${t.shape.join(', ')}]`, path);
  }
  const bad = () => new DejavuError(`cannot write tensor ${name}: ${d.constructor.name} data for dtype ${t.dtype}`, path);
  const bytes = (a: ArrayBufferView) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
  switch (t.dtype) {
    case 'F16':
    case 'BF16':
      if (d instanceof Uint16Array) return bytes(d);
      if (d instanceof Float32Array) return bytes(t.dtype === 'F16' ? f32ToF16(d) : f32ToBf16(d));
      throw bad();
    case 'F32':
      if (d instanceof Float32Array) return bytes(d);
      throw bad();
    case 'F64':
      if (d instanceof Float32Array) return bytes(Float64Array.from(d));
      throw bad();
    case 'I64':
      if (d instanceof BigInt64Array) return bytes(d);
      if (d instanceof Int32Array) return bytes(BigInt64Array.from(d, (v) => BigInt(v)));
      throw bad();
    case 'I32':
      if (d instanceof Int32Array) return bytes(d);
      throw bad();
    case 'I16':
      if (d instanceof Int32Array) return bytes(Int16Array.from(d));
      if (d instanceof Uint16Array) return bytes(d);
      throw bad();
    case 'I8':
    case 'U8':
    case 'BOOL':
      if (d instanceof Uint8Array) return d;
      throw bad();
  }
}

/**
 * Write a safetensors file atomically (temp file, fsync, rename). Tensors are laid out in name order (stable, so the
 * same tensors give the same bytes); the header is padded with spaces to a multiple of 8 so data stays aligned.
 * Tensors are encoded and written one at a time, so peak memory is one tensor's bytes beyond the inputs.
 */
export function writeSafetensors(path: string, tensors: Record<string, TensorToWrite>, metadata?: Record<string, string>): void {
  const names = Object.keys(tensors).sort();
  const header: Record<string, unknown> = {};
  if (metadata && Object.keys(metadata).length > 0) header.__metadata__ = metadata;
  let offset = 0;
  for (const name of names) {
    const t = tensors[name];
    if (!isStDtype(t.dtype)) throw new DejavuError(`cannot write tensor ${name}: unknown dtype ${String(t.dtype)}`, path);
    const len = numel(t.shape) * DTYPE_SIZE[t.dtype];
    header[name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + len] };
    offset += len;
  }
  let json = JSON.stringify(header);
  const jsonBytesLen = Buffer.byteLength(json, 'utf8');
  json += ' '.repeat((8 - (jsonBytesLen % 8)) % 8);
  const headerBytes = Buffer.from(json, 'utf8');

  const tmp = tempPathFor(path);
  const fd = openSync(tmp, 'w');
  try {
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(headerBytes.length));
    writeAll(fd, len);
    writeAll(fd, headerBytes);
    for (const name of names) writeAll(fd, encode(name, tensors[name], path));
    fsyncSync(fd);
  } catch (e) {
    closeSync(fd);
    rmSync(tmp, { force: true });
    throw e;
  }
  closeSync(fd);
  renameSync(tmp, path);
}

function writeAll(fd: number, buf: Uint8Array): void {
  let off = 0;
  while (off < buf.byteLength) off += writeSync(fd, buf, off, Math.min(buf.byteLength - off, 1 << 30));
}
