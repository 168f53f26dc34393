/**
 * A minimal read-only zip reader for torch.save archives: central directory (with zip64 records, which torch writes for
 * files over 4 GiB), stored entries (what torch writes) and deflated ones (zlib, in case a tool recompressed the file).
 * Entries are read by offset from an open fd, one at a time, so a multi-GB checkpoint is never loaded whole.
 */
import { closeSync, fstatSync } from 'node:fs';
import * as zlib from 'node:zlib';
import { DejavuError } from '../common/errors.js';
import { openForRead, readRange } from './safetensors.js';

export interface ZipEntry {
  name: string;
  /** 0 = stored, 8 = deflate. */
  method: number;
  compressedSize: number;
  size: number;
  crc32: number;
  localHeaderOffset: number;
}

const SIG_EOCD = 0x06054b50;
const SIG_EOCD64_LOCATOR = 0x07064b50;
const SIG_EOCD64 = 0x06064b50;
const SIG_CENTRAL = 0x02014b50;
const SIG_LOCAL = 0x04034b50;

// Node >= 20.15 has zlib.crc32; without it entries are read unchecked (the pickle and shape checks still apply).
const crc32 = (zlib as unknown as { crc32?: (data: Uint8Array) => number }).crc32;

export class ZipReader {
  private fd: number | undefined;
  private readonly byName = new Map<string, ZipEntry>();
  private readonly dataOffsets = new Map<string, number>();
  private readonly fileSize: number;

  private constructor(
    readonly path: string,
    fd: number,
  ) {
    this.fd = fd;
    this.fileSize = fstatSync(fd).size;
    for (const e of this.readCentralDirectory()) this.byName.set(e.name, e);
  }

  static open(path: string): ZipReader {
    const fd = openForRead(path);
    try {
      return new ZipReader(path, fd);
    } catch (e) {
      closeSync(fd);
      throw e;
    }
  }

  entries(): ZipEntry[] {
    return [...this.byName.values()];
  }

  entry(name: string): ZipEntry | undefined {
    return this.byName.get(name);
  }

  /** The whole (decompressed) entry, CRC-checked. */
  read(name: string): Uint8Array {
    const e = this.mustGet(name);
    const raw = this.bytes(this.dataOffset(e), e.compressedSize);
    const data = this.decompress(e, raw);
    if (crc32 && (crc32(data) >>> 0) !== e.crc32) throw new DejavuError(`zip entry ${name} fails its CRC-32 check (corrupt file)`, this.path);
    return data;
  }

  /** `length` bytes of an entry from byte `start`; for stored entries only that range is read from disk. */
  readRange(name: string, start: number, length: number): Uint8Array {
    const e = this.mustGet(name);
    if (start < 0 || length < 0 || start + length > e.size) {
      throw new DejavuError(`zip entry ${name}: range [${start}, ${start + length}) is outside its ${e.size} bytes`, this.path);
    }
    if (start === 0 && length === e.size) return this.read(name);
    if (e.method === 0) return this.bytes(this.dataOffset(e) + start, length);
    return this.read(name).subarray(start, start + length);
  }

  close(): void {
    if (this.fd !== undefined) closeSync(this.fd);
    this.fd = undefined;
  }

  private mustGet(name: string): ZipEntry {
    const e = this.byName.get(name);
    if (!e) throw new DejavuError(`zip entry ${name} not found`, this.path);
    return e;
  }

  private bytes(position: number, length: number): Uint8Array {
    if (this.fd === undefined) throw new DejavuError('file already closed', this.path);
    if (position + length > this.fileSize) {
      throw new DejavuError(`truncated zip: need bytes up to ${position + length}, file has ${this.fileSize}`, this.path);
    }
    return readRange(this.fd, position, length, this.path);
  }

  private decompress(e: ZipEntry, raw: Uint8Array): Uint8Array {
    if (e.method === 0) {
      if (e.compressedSize !== e.size) throw new DejavuError(`zip entry ${e.name}: stored sizes disagree`, this.path);
      return raw;
    }
    if (e.method === 8) {
      let out: Buffer;
      try {
        out = zlib.inflateRawSync(raw);
      } catch (err) {
        throw new DejavuError(`zip entry ${e.name}: deflate data is corrupt (${(err as Error).message})`, this.path);
      }
      if (out.byteLength !== e.size) throw new DejavuError(`zip entry ${e.name}: inflated to ${out.byteLength} bytes, expected ${e.size}`, this.path);
      // Copy into a fresh buffer at offset 0 so typed-array views over it are aligned.
      return new Uint8Array(out);
    }
    throw new DejavuError(`zip entry ${e.name} uses compression method ${e.method}; only stored and deflate are supported`, this.path);
  }

  /** The local header repeats name and extra lengths (possibly different from the central copy); data follows it. */
  private dataOffset(e: ZipEntry): number {
    const cached = this.dataOffsets.get(e.name);
    if (cached !== undefined) return cached;
    const h = view(this.bytes(e.localHeaderOffset, 30));
    if (h.getUint32(0, true) !== SIG_LOCAL) throw new DejavuError(`zip entry ${e.name}: bad local header signature`, this.path);
    const off = e.localHeaderOffset + 30 + h.getUint16(26, true) + h.getUint16(28, true);
    if (off + e.compressedSize > this.fileSize) {
      throw new DejavuError(`zip entry ${e.name} runs past the end of the file (truncated?)`, this.path);
    }
    this.dataOffsets.set(e.name, off);
    return off;
  }

  private readCentralDirectory(): ZipEntry[] {
    const size = this.fileSize;
    if (size < 22) throw new DejavuError(`not a zip file (${size} bytes)`, this.path);
    // The end-of-central-directory record sits in the last 22 + (up to 65535 comment) bytes.
    const tailLen = Math.min(size, 22 + 65535);
    const tail = this.bytes(size - tailLen, tailLen);
    const tv = view(tail);
    let eocd = -1;
    for (let i = tailLen - 22; i >= 0; i--) {
      if (tv.getUint32(i, true) === SIG_EOCD) {
        eocd = i;
        break;
      }
    }
    if (eocd < 0) throw new DejavuError('not a zip file or truncated (no end-of-central-directory record)', this.path);
    let count = tv.getUint16(eocd + 10, true);
    let cdSize = tv.getUint32(eocd + 12, true);
    let cdOffset = tv.getUint32(eocd + 16, true);
    if (count === 0xffff || cdSize === 0xffffffff || cdOffset === 0xffffffff) {
      const locPos = size - tailLen + eocd - 20;
      const loc = view(this.bytes(locPos, 20));
      if (loc.getUint32(0, true) !== SIG_EOCD64_LOCATOR) throw new DejavuError('zip64 locator missing', this.path);
      const rec = view(this.bytes(u64(loc, 8, this.path), 56));
      if (rec.getUint32(0, true) !== SIG_EOCD64) throw new DejavuError('zip64 end-of-central-directory record missing', this.path);
      count = u64(rec, 32, this.path);
      cdSize = u64(rec, 40, this.path);
      cdOffset = u64(rec, 48, this.path);
    }
    if (cdOffset + cdSize > size) throw new DejavuError('truncated zip: central directory runs past the end of the file', this.path);
    const cd = this.bytes(cdOffset, cdSize);
    const v = view(cd);
    const entries: ZipEntry[] = [];
    let p = 0;
    for (let i = 0; i < count; i++) {
      if (p + 46 > cdSize || v.getUint32(p, true) !== SIG_CENTRAL) throw new DejavuError('corrupt zip central directory', this.path);
      const nameLen = v.getUint16(p + 28, true);
      const extraLen = v.getUint16(p + 30, true);
      const commentLen = v.getUint16(p + 32, true);
      const e: ZipEntry = {
        name: new TextDecoder().decode(cd.subarray(p + 46, p + 46 + nameLen)),
        method: v.getUint16(p + 10, true),
        crc32: v.getUint32(p + 16, true),
        compressedSize: v.getUint32(p + 20, true),
        size: v.getUint32(p + 24, true),
        localHeaderOffset: v.getUint32(p + 42, true),
      };
      // zip64 extra field (id 1): 8-byte values, present only for the fields saturated at 0xffffffff, in this order.
      let x = p + 46 + nameLen;
      const xEnd = x + extraLen;
      while (x + 4 <= xEnd) {
        const id = v.getUint16(x, true);
        const len = v.getUint16(x + 2, true);
        if (id === 1) {
          let q = x + 4;
          if (e.size === 0xffffffff) (e.size = u64(v, q, this.path)), (q += 8);
          if (e.compressedSize === 0xffffffff) (e.compressedSize = u64(v, q, this.path)), (q += 8);
          if (e.localHeaderOffset === 0xffffffff) e.localHeaderOffset = u64(v, q, this.path);
        }
        x += 4 + len;
      }
      entries.push(e);
      p += 46 + nameLen + extraLen + commentLen;
    }
    return entries;
  }
}

function view(b: Uint8Array): DataView {
  return new DataView(b.buffer, b.byteOffset, b.byteLength);
}

function u64(v: DataView, at: number, path: string): number {
  const x = v.getBigUint64(at, true);
  if (x > BigInt(Number.MAX_SAFE_INTEGER)) throw new DejavuError('zip64 value too large', path);
  return Number(x);
}
