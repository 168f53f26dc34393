import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ThreadedFile, writerThreads } from '../../collect/writer-threads.js';

const dir = mkdtempSync(join(tmpdir(), 'dejavu-writer-threads-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function bytes(n: number, seed: number): Uint8Array {
  const b = new Uint8Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) b[i] = (s = (Math.imul(s, 1664525) + 1013904223) >>> 0) >>> 24;
  return b;
}

describe('writer threads (collect/writer-threads.ts)', () => {
  it('several files written side by side keep their bytes in order; result() gives the SHA-256 of each', () => {
    // Sizes around the 4 MiB staging buffer: small pieces gathered, one that fills it exactly, larger ones alone.
    const sizes = [1, 7, 4096, (4 << 20) - 4104, 4 << 20, (4 << 20) + 1, 9 << 20, 3, 0, 65536];
    const files = Array.from({ length: 6 }, (_, f) => {
      const path = join(dir, `f${f}.bin`);
      return { path, file: new ThreadedFile(openSync(path, 'w')), parts: [] as Uint8Array[] };
    });
    sizes.forEach((n, i) =>
      files.forEach((f, j) => {
        const b = bytes(n, i * 31 + j);
        f.file.write(b);
        b.fill(0); // the caller may reuse its buffer at once (the Arrow writer does)
        f.parts.push(bytes(n, i * 31 + j));
      }),
    );
    for (const f of files) f.file.end();
    for (const f of files) {
      const want = Buffer.concat(f.parts);
      const r = f.file.result();
      expect(r).toEqual({ sha256: createHash('sha256').update(want).digest('hex') });
      expect(f.file.bytes).toBe(want.length);
      expect(Buffer.compare(readFileSync(f.path), want)).toBe(0);
    }
    expect(writerThreads()).toBeGreaterThanOrEqual(1);
    expect(writerThreads()).toBeLessThanOrEqual(4);
  });

  it('a write that fails is reported by result(), with the system message, not thrown at the writer', () => {
    const path = join(dir, 'ro.bin');
    writeFileSync(path, '');
    const f = new ThreadedFile(openSync(path, 'r')); // write(2) on a read-only descriptor: EBADF
    f.write(bytes(100, 1));
    f.write(bytes(5 << 20, 2));
    f.end();
    const r = f.result();
    expect(r).toEqual({ error: { message: expect.stringMatching(/EBADF/), code: 'EBADF', syscall: 'write' } });
    expect(() => f.write(bytes(1, 3))).toThrow(/write after end/);
  });

  it('drop() gives the descriptor back without waiting; the file is the caller to remove', () => {
    const path = join(dir, 'dropped.bin');
    const f = new ThreadedFile(openSync(path, 'w'));
    f.write(bytes(1 << 20, 4));
    f.drop();
    f.drop(); // twice is harmless
    rmSync(path);
    expect(existsSync(path)).toBe(false);
    // The threads go on serving other files.
    const p2 = join(dir, 'after.bin');
    const g = new ThreadedFile(openSync(p2, 'w'));
    g.write(bytes(10, 5));
    g.end();
    expect(g.result()).toEqual({ sha256: createHash('sha256').update(bytes(10, 5)).digest('hex') });
  });
});
