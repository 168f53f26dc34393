import { readFileSync } from 'node:fs';

/**
 * The int64 tensor `key` of a safetensors file as numbers. Parsed inline (8-byte LE header length, JSON header, data)
 * so the datasets tests do not depend on the checkpoints/ reader.
 */
export function readInt64Tensor(path: string, key: string): number[] {
  const buf = readFileSync(path);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8')) as Record<
    string,
    { dtype: string; shape: number[]; data_offsets: [number, number] }
  >;
  const t = header[key];
  if (!t) throw new Error(`${path}: no tensor ${key}`);
  if (t.dtype !== 'I64') throw new Error(`${path}: ${key} is ${t.dtype}, expected I64`);
  const [a, b] = t.data_offsets;
  const out: number[] = [];
  for (let off = 8 + n + a; off < 8 + n + b; off += 8) out.push(Number(buf.readBigInt64LE(off)));
  return out;
}
