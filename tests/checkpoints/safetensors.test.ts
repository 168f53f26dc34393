import { afterAll, describe, expect, it } from 'vitest';
import { readFileSync, readdirSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { SafetensorsFile, writeSafetensors } from '../../checkpoints/safetensors.js';
import { tempDir, removeTempDirs } from './helpers/model-folder.js';

afterAll(removeTempDirs);

/** Build a safetensors file by hand from a header object and a data section (for corrupt-file tests). */
function rawSafetensors(header: unknown, data: Uint8Array): Uint8Array {
  const json = Buffer.from(JSON.stringify(header));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  return Buffer.concat([len, json, data]);
}

describe('safetensors write + read', () => {
  it('round-trips every dtype, metadata, and reads tensors by name', () => {
    const dir = tempDir('st');
    const p = join(dir, 'a.safetensors');
    const f32 = Float32Array.from([1.5, -2, 3.25, 0, 1e-8, -7]);
    writeSafetensors(
      p,
      {
        f32: { dtype: 'F32', shape: [2, 3], data: f32 },
        f16_from_f32: { dtype: 'F16', shape: [6], data: f32 },
        f16_bits: { dtype: 'F16', shape: [2], data: Uint16Array.of(0x3c00, 0xc000) },
        bf16: { dtype: 'BF16', shape: [3, 2], data: f32 },
        f64: { dtype: 'F64', shape: [2], data: Float32Array.of(0.5, -4) },
        i64: { dtype: 'I64', shape: [3], data: BigInt64Array.of(5n, -1n, 2147483647n) },
        i64_from_i32: { dtype: 'I64', shape: [2], data: Int32Array.of(-3, 9) },
        i32: { dtype: 'I32', shape: [2], data: Int32Array.of(-7, 1 << 30) },
        u8: { dtype: 'U8', shape: [3], data: Uint8Array.of(1, 2, 255) },
        scalar: { dtype: 'F32', shape: [], data: Float32Array.of(42) },
        empty: { dtype: 'F32', shape: [0, 4], data: new Float32Array(0) },
      },
      { about: 'test', n: '1' },
    );
    // Only the final file remains (the temp file was renamed into place).
    expect(readdirSync(dir)).toEqual(['a.safetensors']);
    const buf = readFileSync(p);
    const hlen = Number(buf.readBigUInt64LE(0));
    expect(hlen % 8).toBe(0); // padded so the data section stays 8-byte aligned
    const f = SafetensorsFile.open(p);
    try {
      expect(f.metadata).toEqual({ about: 'test', n: '1' });
      expect(f.names().sort()).toEqual(
        ['bf16', 'empty', 'f16_bits', 'f16_from_f32', 'f32', 'f64', 'i32', 'i64', 'i64_from_i32', 'scalar', 'u8'].sort(),
      );
      expect(f.info('f32')).toMatchObject({ dtype: 'F32', shape: [2, 3] });
      expect(f.info('f32').end - f.info('f32').begin).toBe(24);
      expect([...f.readFloat32('f32')]).toEqual([...f32]);
      // 1e-8 is below half the smallest fp16 subnormal (2^-25), so it rounds to 0; the rest are exact in fp16
      expect([...f.readFloat32('f16_from_f32')]).toEqual([1.5, -2, 3.25, 0, 0, -7]);
      expect([...f.readFloat32('f16_bits')]).toEqual([1, -2]);
      expect([...f.readBytes('f16_bits')]).toEqual([0x00, 0x3c, 0x00, 0xc0]);
      expect(f.readFloat32('bf16')[2]).toBe(3.25);
      expect([...f.readFloat32('f64')]).toEqual([0.5, -4]);
      expect([...f.readInt32('i64')]).toEqual([5, -1, 2147483647]);
      expect([...f.readInt32('i64_from_i32')]).toEqual([-3, 9]);
      expect([...f.readInt32('i32')]).toEqual([-7, 1 << 30]);
      expect([...f.readBytes('u8')]).toEqual([1, 2, 255]);
      expect([...f.readFloat32('scalar')]).toEqual([42]);
      expect(f.readFloat32('empty').length).toBe(0);
      expect(f.has('nope')).toBe(false);
      expect(() => f.readInt32('f32')).toThrow(/a\.safetensors: tensor f32 has dtype F32, expected I64 or I32/);
      expect(() => f.readFloat32('u8')).toThrow(/tensor u8 has dtype U8, expected a float dtype/);
    } finally {
      f.close();
    }
  });

  it('refuses I64 values that do not fit in int32', () => {
    const p = join(tempDir('st'), 'big.safetensors');
    writeSafetensors(p, { ids: { dtype: 'I64', shape: [2], data: BigInt64Array.of(1n, 1n << 40n) } });
    const f = SafetensorsFile.open(p);
    expect(() => f.readInt32('ids')).toThrow(/big\.safetensors: tensor ids: I64 value 1099511627776 at index 1 does not fit in int32/);
    f.close();
  });

  it('refuses to write data that does not match its shape', () => {
    const p = join(tempDir('st'), 'bad.safetensors');
    expect(() => writeSafetensors(p, { x: { dtype: 'F32', shape: [3], data: new Float32Array(2) } })).toThrow(
      /bad\.safetensors: cannot write tensor x: 2 values for shape \[3\]/,
    );
    expect(() => writeSafetensors(p, { x: { dtype: 'I32', shape: [1], data: new Float32Array(1) } })).toThrow(/Float32Array data for dtype I32/);
  });
});

describe('safetensors bad inputs (error names the file and the problem)', () => {
  const good = () => {
    const p = join(tempDir('bad'), 'model.safetensors');
    writeSafetensors(p, { a: { dtype: 'F32', shape: [4], data: new Float32Array(4) }, b: { dtype: 'F16', shape: [2, 2], data: new Uint16Array(4) } });
    return p;
  };

  it('missing path', () => {
    expect(() => SafetensorsFile.open('/nonexistent/x.safetensors')).toThrow('/nonexistent/x.safetensors: file not found');
    const dir = tempDir('st');
    expect(() => SafetensorsFile.open(dir)).toThrow(`${dir}: not a regular file`);
  });

  it('truncated file: data section cut short', () => {
    const p = good();
    truncateSync(p, readFileSync(p).length - 3);
    expect(() => SafetensorsFile.open(p)).toThrow(/model\.safetensors: tensor \w: data_offsets \[\d+, \d+\] run past the end of the file .*truncated/);
  });

  it('truncated file: header cut short', () => {
    const p = good();
    truncateSync(p, 20);
    expect(() => SafetensorsFile.open(p)).toThrow(/model\.safetensors: truncated safetensors file: header says \d+ bytes of JSON but the file has 20 bytes/);
    truncateSync(p, 5);
    expect(() => SafetensorsFile.open(p)).toThrow(/model\.safetensors: truncated safetensors file \(5 bytes/);
  });

  it('header offsets past the end of the file', () => {
    const p = join(tempDir('bad'), 'offsets.safetensors');
    writeFileSync(p, rawSafetensors({ w: { dtype: 'F32', shape: [4], data_offsets: [16, 32] } }, new Uint8Array(16)));
    expect(() => SafetensorsFile.open(p)).toThrow(/offsets\.safetensors: tensor w: data_offsets \[16, 32\] run past the end of the file \(data section is 16 bytes/);
  });

  it('dtype/shape mismatch (byte length != shape x dtype size)', () => {
    const p = join(tempDir('bad'), 'mismatch.safetensors');
    writeFileSync(p, rawSafetensors({ w: { dtype: 'F32', shape: [3], data_offsets: [0, 8] } }, new Uint8Array(8)));
    expect(() => SafetensorsFile.open(p)).toThrow(/mismatch\.safetensors: tensor w: 8 bytes in the file but shape \[3\] of F32 needs 12/);
  });

  it('unknown dtype', () => {
    const p = join(tempDir('bad'), 'dtype.safetensors');
    writeFileSync(p, rawSafetensors({ w: { dtype: 'F8_E4M3', shape: [4], data_offsets: [0, 4] } }, new Uint8Array(4)));
    expect(() => SafetensorsFile.open(p)).toThrow(/dtype\.safetensors: tensor w: unknown dtype "F8_E4M3"/);
  });

  it('missing tensor', () => {
    const f = SafetensorsFile.open(good());
    expect(() => f.readFloat32('c')).toThrow(/model\.safetensors: missing tensor c/);
    f.close();
  });

  it('header that is not JSON, implausible header length, overlapping tensors', () => {
    const dir = tempDir('bad');
    const p = join(dir, 'junk.safetensors');
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(4n);
    writeFileSync(p, Buffer.concat([len, Buffer.from('{no}')]));
    expect(() => SafetensorsFile.open(p)).toThrow(/junk\.safetensors: safetensors header is not valid JSON/);
    writeFileSync(p, Buffer.from('PK\x03\x04 this is a zip, not safetensors'));
    expect(() => SafetensorsFile.open(p)).toThrow(/junk\.safetensors: safetensors header length \d+ is implausible/);
    writeFileSync(
      p,
      rawSafetensors(
        { a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] }, b: { dtype: 'F32', shape: [2], data_offsets: [4, 12] } },
        new Uint8Array(12),
      ),
    );
    expect(() => SafetensorsFile.open(p)).toThrow(/junk\.safetensors: tensors a and b overlap/);
  });
});
