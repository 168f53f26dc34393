import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { sha256Files } from '../../common/file-hash.js';

const tmp = mkdtempSync(join(tmpdir(), 'dejavu-hash-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

describe('sha256Files', () => {
  const files = [0, 1, 4096, 5 * 2 ** 20 + 3, 777].map((n, i) => {
    const p = join(tmp, `f${i}`);
    const data = randomBytes(n);
    writeFileSync(p, data);
    return { p, hex: createHash('sha256').update(data).digest('hex') };
  });

  it('gives each file its own digest, in the order asked, on one thread and on worker threads', async () => {
    const want = files.map((f) => f.hex);
    expect(await sha256Files(files.map((f) => f.p), { threads: 1 })).toEqual(want);
    expect(await sha256Files(files.map((f) => f.p), { threads: 3, minBytes: 0 })).toEqual(want);
  });

  it('rejects with the read error of the first failing file', async () => {
    const dirA = join(tmp, 'a-dir');
    const dirB = join(tmp, 'b-dir');
    mkdirSync(dirA);
    mkdirSync(dirB);
    const paths = [files[3].p, dirB, files[2].p, dirA];
    await expect(sha256Files(paths, { threads: 2, minBytes: 0 })).rejects.toMatchObject({ code: 'EISDIR', path: dirB });
    await expect(sha256Files(paths, { threads: 1 })).rejects.toMatchObject({ code: 'EISDIR' });
  });
});
