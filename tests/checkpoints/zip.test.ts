import { afterAll, describe, expect, it } from 'vitest';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ZipReader } from '../../checkpoints/zip.js';
import { tempDir, removeTempDirs } from './helpers/model-folder.js';
import { buildZip } from './helpers/zip-writer.js';

afterAll(removeTempDirs);

const data = Uint8Array.from({ length: 5000 }, (_, i) => (i * 7) % 251);
const entries = [
  { name: 'a/data.pkl', data: Uint8Array.of(1, 2, 3) },
  { name: 'a/data/0', data },
  { name: 'a/data/1', data, deflate: true },
];

function write(bytes: Uint8Array): string {
  const p = join(tempDir('zip'), 'x.bin');
  writeFileSync(p, bytes);
  return p;
}

describe('zip reader', () => {
  it.each([false, true])('reads stored and deflated entries, whole and by range (zip64 records: %s)', (zip64) => {
    const z = ZipReader.open(write(buildZip(entries, zip64)));
    try {
      expect(z.entries().map((e) => e.name)).toEqual(['a/data.pkl', 'a/data/0', 'a/data/1']);
      expect(z.entry('a/data/1')!.method).toBe(8);
      expect([...z.read('a/data.pkl')]).toEqual([1, 2, 3]);
      expect(Buffer.compare(z.read('a/data/0'), data)).toBe(0);
      expect(Buffer.compare(z.read('a/data/1'), data)).toBe(0);
      expect([...z.readRange('a/data/0', 1000, 5)]).toEqual([...data.subarray(1000, 1005)]);
      expect([...z.readRange('a/data/1', 4990, 10)]).toEqual([...data.subarray(4990)]);
      expect(() => z.readRange('a/data/0', 4999, 2)).toThrow(/x\.bin: zip entry a\/data\/0: range \[4999, 5001\) is outside its 5000 bytes/);
      expect(() => z.read('a/nope')).toThrow(/x\.bin: zip entry a\/nope not found/);
    } finally {
      z.close();
    }
  });

  it('detects corrupt entry data by CRC-32, and a file that is not a zip', () => {
    const bytes = buildZip(entries);
    const i = Buffer.from(bytes).indexOf(Buffer.from(data.subarray(0, 64)));
    bytes[i + 10] ^= 0xff;
    const z = ZipReader.open(write(bytes));
    expect(() => z.read('a/data/0')).toThrow(/x\.bin: zip entry a\/data\/0 fails its CRC-32 check/);
    z.close();
    expect(() => ZipReader.open(write(new Uint8Array(100)))).toThrow(/x\.bin: not a zip file or truncated/);
    expect(() => ZipReader.open('/nonexistent.bin')).toThrow('/nonexistent.bin: file not found');
  });
});
