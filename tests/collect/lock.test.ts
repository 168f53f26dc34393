/**
 * The collect lock (common/lock.ts): taken by exclusive creation, so of several processes racing for it exactly one
 * wins, also when they race to replace a stale lock; owners are judged by pid + process start, so a dead pid, a
 * zombie or a recycled pid is taken over and a live one is refused with one line.
 *
 * The racing takers are child processes running the module itself: common/lock.ts and common/errors.ts transpiled
 * into a temp folder, so the test needs no build.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import ts from 'typescript';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { collect } from '../../collect/collect.js';
import { acquireLock, ownerStatus, parseOwner, processStart, thisOwner } from '../../common/lock.js';
import { C4_VALID_JSON, HAVE_FIXTURES, OPT_MINI, REPO_ROOT } from '../helpers/fixtures.js';

const HAVE_PROC = existsSync(`/proc/${process.pid}/stat`);
let root: string;
let lib: string;

beforeAll(() => {
  root = mkdtempSync(join(tmpdir(), 'dejavu-lock-'));
  lib = join(root, 'lib');
  mkdirSync(join(lib, 'common'), { recursive: true });
  writeFileSync(join(lib, 'package.json'), '{"type": "module"}');
  for (const name of ['lock', 'errors']) {
    const src = readFileSync(join(REPO_ROOT, 'common', `${name}.ts`), 'utf8');
    const js = ts.transpileModule(src, { compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022 } }).outputText;
    writeFileSync(join(lib, 'common', `${name}.js`), js);
  }
  // A taker: loads the module, says ready, takes the lock on "go", reports, holds it until stdin closes.
  writeFileSync(
    join(lib, 'taker.mjs'),
    `import { acquireLock } from './common/lock.js';
import { createInterface } from 'node:readline';
const [path, folder] = process.argv.slice(2);
let release;
const rl = createInterface({ input: process.stdin });
process.stdout.write('ready\\n');
rl.on('line', () => {
  try {
    release = acquireLock(path, { what: 'collect', folder });
    process.stdout.write('won\\n');
  } catch (e) {
    process.stdout.write('refused ' + JSON.stringify(e.message) + '\\n');
  }
});
rl.on('close', () => { release?.(); });
`,
  );
});
afterAll(() => rmSync(root, { recursive: true, force: true }));

function startTaker(path: string, folder: string): { child: ChildProcess; lines: string[]; next: () => Promise<string> } {
  const child = spawn(process.execPath, [join(lib, 'taker.mjs'), path, folder], { stdio: ['pipe', 'pipe', 'inherit'] });
  const lines: string[] = [];
  const waiters: ((l: string) => void)[] = [];
  let buf = '';
  child.stdout!.on('data', (b) => {
    buf += b;
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      const l = buf.slice(0, i);
      buf = buf.slice(i + 1);
      const w = waiters.shift();
      if (w) w(l);
      else lines.push(l);
    }
  });
  const next = () => (lines.length ? Promise.resolve(lines.shift()!) : new Promise<string>((r) => waiters.push(r)));
  return { child, lines, next };
}

const exited = (c: ChildProcess) => new Promise<void>((r) => (c.exitCode !== null ? r() : c.on('exit', () => r())));

/** A pid that is not running (the highest pids are free on any ordinary machine). */
function deadPid(): number {
  for (let pid = 4_000_000; ; pid--) {
    try {
      process.kill(pid, 0);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ESRCH') return pid;
    }
  }
}

describe('collect lock: exclusive creation', () => {
  it('of 4 processes racing for the lock exactly one wins, 12 times over; half the races replace a stale lock', async () => {
    for (let trial = 0; trial < 12; trial++) {
      const folder = join(root, `race-${trial}`);
      mkdirSync(folder);
      const path = join(folder, '.collect.lock');
      const stale = trial % 2 === 1;
      if (stale) writeFileSync(path, JSON.stringify({ pid: deadPid(), start: null, host: hostname() }));
      const takers = Array.from({ length: 4 }, () => startTaker(path, folder));
      for (const t of takers) expect(await t.next()).toBe('ready');
      for (const t of takers) t.child.stdin!.write('go\n');
      const results = await Promise.all(takers.map((t) => t.next()));
      const winners = results.flatMap((r, i) => (r === 'won' ? [takers[i].child.pid] : []));
      expect(winners, `trial ${trial} (${stale ? 'stale lock' : 'no lock'}): ${results.join(' | ')}`).toHaveLength(1);
      for (const r of results.filter((x) => x !== 'won')) {
        expect(JSON.parse(r.slice('refused '.length))).toBe(`${folder}: another collect (pid ${winners[0]}) is writing here`);
      }
      expect(parseOwner(readFileSync(path, 'utf8'))?.pid).toBe(winners[0]);
      for (const t of takers) t.child.stdin!.end();
      await Promise.all(takers.map((t) => exited(t.child)));
      expect(readdirSync(folder)).toEqual([]); // the winner released it; no temp or guard file is left
    }
  }, 60_000);
});

describe('collect lock: judging the owner', () => {
  const fresh = (name: string) => {
    const folder = join(root, name);
    mkdirSync(folder);
    return { folder, path: join(folder, '.collect.lock') };
  };
  const take = (path: string, folder: string) => acquireLock(path, { what: 'collect', folder });

  it('a lock naming a pid that does not run is taken over; release removes only our own record', () => {
    const { folder, path } = fresh('dead');
    writeFileSync(path, JSON.stringify({ pid: deadPid(), start: null, host: hostname() }));
    const release = take(path, folder);
    expect(parseOwner(readFileSync(path, 'utf8'))).toEqual(thisOwner());
    release();
    expect(existsSync(path)).toBe(false);
    // A record an older version wrote (the bare pid) is understood too.
    writeFileSync(path, String(deadPid()));
    const release2 = take(path, folder);
    writeFileSync(path, JSON.stringify({ pid: deadPid(), start: null, host: hostname() })); // someone else's now
    release2();
    expect(existsSync(path)).toBe(true);
  });

  it('a lock naming a live pid is refused with one line; this process holding it refuses a second taker', () => {
    const { folder, path } = fresh('live');
    const owner = { pid: process.ppid, start: processStart(process.ppid), host: hostname() };
    writeFileSync(path, JSON.stringify(owner));
    const before = readFileSync(path, 'utf8');
    expect(() => take(path, folder)).toThrow(`${folder}: another collect (pid ${process.ppid}) is writing here`);
    expect(readFileSync(path, 'utf8')).toBe(before); // a refusal changes nothing
    rmSync(path);
    const release = take(path, folder);
    expect(() => take(path, folder)).toThrow(`${folder}: another collect (pid ${process.pid}) is writing here`);
    release();
    expect(existsSync(path)).toBe(false);
  });

  it('a lock from another host is refused, naming the host and the file to delete', () => {
    const { folder, path } = fresh('elsewhere');
    writeFileSync(path, JSON.stringify({ pid: 1, start: null, host: `not-${hostname()}` }));
    expect(() => take(path, folder)).toThrow(
      `${folder}: another collect (pid 1 on host not-${hostname()}) is writing here; if it is no longer running, delete ${path}`,
    );
  });

  it('an unreadable record is taken over', () => {
    const { folder, path } = fresh('garbage');
    writeFileSync(path, '{"pid": "x"');
    take(path, folder)();
    expect(existsSync(path)).toBe(false);
  });

  it.skipIf(!HAVE_PROC)('a recycled pid (same pid, another process start) is dead; the same start is alive', () => {
    const live = { pid: process.ppid, start: processStart(process.ppid), host: hostname() };
    expect(ownerStatus(live)).toBe('alive');
    expect(ownerStatus({ ...live, start: `${live.start}0` })).toBe('dead');
    const { folder, path } = fresh('recycled');
    writeFileSync(path, JSON.stringify({ ...live, start: `${live.start}0` }));
    take(path, folder)();
  });

  it.skipIf(!HAVE_PROC)('a lock naming a zombie (exited, not reaped) is taken over', async () => {
    // sh starts a child, then becomes `sleep`, which never reaps it: the child, exiting after the exec, stays a zombie.
    // (A child that exits before the exec can be reaped by sh itself: the pid is then gone.)
    const parent = spawn('sh', ['-c', 'sleep 0.5 & echo $!; exec sleep 30'], { stdio: ['ignore', 'pipe', 'inherit'] });
    try {
      const zombie = Number(await new Promise<string>((r) => parent.stdout!.once('data', (b) => r(String(b).trim()))));
      const state = () => readFileSync(`/proc/${zombie}/stat`, 'utf8').split(') ')[1][0];
      for (let i = 0; i < 1000 && state() !== 'Z'; i++) await new Promise((r) => setTimeout(r, 5));
      expect(state()).toBe('Z');
      expect(() => process.kill(zombie, 0)).not.toThrow(); // what the check-only-the-pid lock trusted
      const { folder, path } = fresh('zombie');
      writeFileSync(path, JSON.stringify({ pid: zombie, start: processStart(zombie), host: hostname() }));
      take(path, folder)();
      writeFileSync(path, String(zombie)); // the pid-only record of older versions
      take(path, folder)();
      expect(existsSync(path)).toBe(false);
    } finally {
      parent.kill('SIGKILL');
      await exited(parent);
    }
  });
});

describe.skipIf(!HAVE_FIXTURES)('collect lock: two collects on one folder in this process', () => {
  it('exactly one runs; the other is refused with one line and leaves the winner\'s output whole', async () => {
    const out = join(root, 'two-collects');
    const o = { model: OPT_MINI, data: [C4_VALID_JSON], docs: 2, maxLen: 16, quiet: true, workers: 1, out };
    const results = await Promise.allSettled([collect(o), collect(o)]);
    const won = results.filter((r) => r.status === 'fulfilled');
    const lost = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
    expect(won).toHaveLength(1);
    expect(lost).toHaveLength(1);
    expect(lost[0].reason.message).toBe(`${out}: another collect (pid ${process.pid}) is writing here`);
    expect(existsSync(join(out, 'manifest.json'))).toBe(true);
    expect(existsSync(join(out, '.collect.lock'))).toBe(false);
  });
});
