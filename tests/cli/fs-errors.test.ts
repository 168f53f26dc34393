/** Filesystem errors as one-line DejavuErrors naming the path (common/errors.ts), and atomic writes that fail cleanly. */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { DejavuError, fsErrorToDejavu } from '../../common/errors.js';

const tmp = mkdtempSync(join(tmpdir(), 'dejavu-fserr-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

const sysErr = (code: string, syscall: string, path?: string) => Object.assign(new Error(`${code}: x, ${syscall}`), { code, syscall, ...(path ? { path } : {}) });

describe('fsErrorToDejavu', () => {
  it('names the path and the problem in one line', () => {
    expect(fsErrorToDejavu(sysErr('ENOSPC', 'write'), '/out/metrics.json')?.message).toBe('/out/metrics.json: no space left on the device (ENOSPC, write)');
    expect(fsErrorToDejavu(sysErr('EROFS', 'open', '/ro/x'))?.message).toBe('/ro/x: read-only file system (EROFS, open)');
    expect(fsErrorToDejavu(sysErr('EEXIST', 'mkdir', '/a/file'))?.message).toBe('/a/file: exists and is not a folder (EEXIST, mkdir)');
    expect(fsErrorToDejavu(sysErr('ENOTDIR', 'open', '/a/file/m.json'))?.message).toMatch(/^\/a\/file\/m\.json: a part of this path is a file/);
    expect(fsErrorToDejavu(sysErr('EACCES', 'open', '/p'))?.message).toMatch(/permission denied/);
    expect(fsErrorToDejavu(sysErr('EISDIR', 'open', '/d'))?.message).toMatch(/is a folder where a file is needed/);
  });

  it('leaves other errors alone', () => {
    expect(fsErrorToDejavu(new Error('bug'))).toBeUndefined();
    expect(fsErrorToDejavu(new DejavuError('bad', 'f'))).toBeUndefined();
    expect(fsErrorToDejavu(Object.assign(new Error('x'), { code: 'ERR_INVALID_ARG_TYPE' }))).toBeUndefined();
  });
});

describe('writeJsonAtomic under a full disk or a read-only folder (a child process with tests/cli/fault-fs.cjs)', () => {
  const script = (file: string) =>
    `import { writeJsonAtomic } from ${JSON.stringify(join(process.cwd(), 'dist', 'common', 'atomic.js'))};
     try { writeJsonAtomic(${JSON.stringify(file)}, { v: 2 }); console.log('ok'); } catch (e) { console.log(e.name + ' ' + e.message); }`;
  const run = (fault: string, file: string) =>
    execFileSync(process.execPath, ['--require', join(process.cwd(), 'tests', 'cli', 'fault-fs.cjs'), '--input-type=module', '-e', script(file)], {
      env: { ...process.env, DEJAVU_FAULT: fault },
      encoding: 'utf8',
    }).trim();

  for (const fault of ['ENOSPC', 'EROFS']) {
    it(`${fault}: the old file stays as it was, no temp file is left, the error names the file`, () => {
      const dir = mkdtempSync(join(tmp, fault));
      const file = join(dir, 'metrics.json');
      writeFileSync(file, '{"v": 1}\n');
      const out = run(`${fault}:metrics.json`, file);
      expect(out).toMatch(new RegExp(`^DejavuError ${file.replace(/[.]/g, '\\.')}: .*\\(${fault}, (write|open)\\)$`));
      expect(readFileSync(file, 'utf8')).toBe('{"v": 1}\n');
      expect(readdirSync(dir)).toEqual(['metrics.json']);
    });
  }
});
