/**
 * A lock file that says which process writes a folder. Taken by exclusive creation: the owner's record is written to
 * a private temp file, then hard-linked to the lock's name, which fails when the name exists; so exactly one of any
 * number of concurrent takers wins, and nobody ever reads a half-written record.
 *
 * The record names the owner by host, pid and process start (boot id + start time from /proc/<pid>/stat), because a
 * pid alone is recycled: a lock is stale when its host is this one and its pid no longer runs, is a zombie, or is a
 * different process than the one that took it. A stale lock is replaced under a short-lived guard lock, which makes
 * "check that it is still the stale one, then remove it" one step for every other taker. A lock from another host is
 * never judged (its processes are not visible here): it is refused with the path to delete.
 */
import { closeSync, fsyncSync, linkSync, openSync, readFileSync, rmSync, writeSync } from 'node:fs';
import { hostname } from 'node:os';
import { DejavuError, rethrowFs } from './errors.js';

export interface LockOwner {
  pid: number;
  /** `<boot id>:<start time in clock ticks>`; null where /proc is not available, or in the pid-only records of older versions. */
  start: string | null;
  /** null in the pid-only records of older versions (taken as this host). */
  host: string | null;
}

let bootId: string | null | undefined;
function readBootId(): string | null {
  if (bootId === undefined) {
    try {
      bootId = readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
    } catch {
      bootId = null;
    }
  }
  return bootId;
}

/** State letter and start time (field 22) of a running pid from /proc/<pid>/stat; null without /proc or such pid. */
function procStat(pid: number): { state: string; start: string } | null {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return null;
  }
  // Field 2 (the command) is in parentheses and may itself hold spaces and parentheses: split after the last ')'.
  const rest = text.slice(text.lastIndexOf(')') + 2).split(' ');
  return rest.length > 19 ? { state: rest[0], start: rest[19] } : null;
}

/** The start token of a running process, or null where it cannot be read (no /proc, no such pid). */
export function processStart(pid: number): string | null {
  const s = procStat(pid);
  return s ? `${readBootId() ?? '-'}:${s.start}` : null;
}

export function thisOwner(): LockOwner {
  return { pid: process.pid, start: processStart(process.pid), host: hostname() };
}

/** A lock's record: JSON {pid, start, host}, or the bare pid older versions wrote. Unreadable records give null. */
export function parseOwner(text: string): LockOwner | null {
  const t = text.trim();
  if (/^\d+$/.test(t)) return { pid: Number(t), start: null, host: null };
  try {
    const o = JSON.parse(t) as Partial<LockOwner>;
    if (!Number.isInteger(o.pid) || (o.pid as number) <= 0) return null;
    return { pid: o.pid as number, start: typeof o.start === 'string' ? o.start : null, host: typeof o.host === 'string' ? o.host : null };
  } catch {
    return null;
  }
}

/**
 * Whether the process a lock names still runs: 'alive', 'dead' (no such pid, a zombie, or another process under a
 * recycled pid) or 'elsewhere' (another host: cannot be judged from here).
 */
export function ownerStatus(o: LockOwner): 'alive' | 'dead' | 'elsewhere' {
  if (o.host !== null && o.host !== hostname()) return 'elsewhere';
  if (o.pid === process.pid && o.host === null) return 'dead'; // a pid-only record naming us: left by an earlier process
  try {
    process.kill(o.pid, 0);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EPERM') return 'dead'; // ESRCH: no such process
  }
  const s = procStat(o.pid);
  if (!s) return 'alive'; // no /proc: the signal check is all there is
  if (s.state === 'Z' || s.state === 'X') return 'dead'; // exited, not yet reaped: holds nothing, writes nothing
  if (o.start !== null && o.start !== processStart(o.pid)) return 'dead'; // the pid was recycled
  return 'alive';
}

const describe = (o: LockOwner) => `pid ${o.pid}${o.host !== null && o.host !== hostname() ? ` on host ${o.host}` : ''}`;

let counter = 0;

/**
 * Creates `path` holding `record` only if it does not exist: true when created, false when it exists. Writes a private
 * temp file and hard-links it to `path`; where hard links are not supported, falls back to an exclusive open.
 */
function createExclusive(path: string, record: string): boolean {
  for (let retry = 0; ; retry++) {
    const tmp = `${path}.${process.pid}.${counter++}.tmp`;
    const fd = openSync(tmp, 'w');
    try {
      writeSync(fd, record);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    try {
      linkSync(tmp, path);
      return true;
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'EEXIST') return false;
      // The owner's cleanup of stray temp files may remove ours between write and link: write it again.
      if (code === 'ENOENT' && retry < 10) continue;
      if (code !== 'EPERM' && code !== 'ENOTSUP' && code !== 'EOPNOTSUPP' && code !== 'ENOSYS') throw e;
      break;
    } finally {
      rmSync(tmp, { force: true });
    }
  }
  // No hard links on this filesystem: 'wx' is exclusive too; a reader may then see the file empty for an instant,
  // which acquireLock waits out rather than judging.
  let fd: number;
  try {
    fd = openSync(path, 'wx');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw e;
  }
  try {
    writeSync(fd, record);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  return true;
}

/** The raw record at `path`, or null when there is no file. */
function readRaw(path: string): string | null {
  try {
    return readFileSync(path, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw e;
  }
}

function sleepMs(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

export interface LockOptions {
  /** Who is refused, for the message: `another ${what} (pid N) is writing here`. */
  what: string;
  /** The folder named in the refusal. */
  folder: string;
}

/**
 * Takes the lock at `path` or throws a DejavuError naming `folder` and the owner. Returns the release function, which
 * removes the lock only while it is still this process's record.
 */
export function acquireLock(path: string, opts: LockOptions): () => void {
  const record = JSON.stringify(thisOwner()) + '\n';
  const refuse = (o: LockOwner) =>
    new DejavuError(
      `another ${opts.what} (${describe(o)}) is writing here` +
        (ownerStatus(o) === 'elsewhere' ? `; if it is no longer running, delete ${path}` : ''),
      opts.folder,
    );
  try {
    // Each pass either creates the lock, refuses a live owner, or removes a stale record and tries again. An empty
    // record (being written through the no-hard-link fallback) and a guard held by a live taker are waited out.
    for (let attempt = 0; attempt < 400; attempt++) {
      if (createExclusive(path, record)) {
        return () => {
          if (readRaw(path) === record) rmSync(path, { force: true });
        };
      }
      const raw = readRaw(path);
      if (raw === null) continue; // released in between
      const owner = parseOwner(raw);
      if (owner === null && raw.trim() === '' && attempt < 100) {
        sleepMs(5);
        continue;
      }
      if (owner !== null && ownerStatus(owner) !== 'dead') throw refuse(owner);
      if (!removeIfStill(path, raw)) sleepMs(5);
    }
  } catch (e) {
    rethrowFs(e, path); // a DejavuError passes through as is
  }
  throw new DejavuError(`could not take the lock ${path} (other processes keep taking it over)`, opts.folder);
}

/**
 * Removes the stale record `raw` at `path`, under the guard `path.guard`, only if it is still that record: two
 * takers that both judged the same record stale cannot both remove it (the second would remove the first's new lock).
 * False when the guard is held by a live taker (the caller waits and looks again).
 */
function removeIfStill(path: string, raw: string): boolean {
  const guard = `${path}.guard`;
  if (!createExclusive(guard, JSON.stringify(thisOwner()) + '\n')) {
    const g = readRaw(guard);
    const gOwner = g === null ? null : parseOwner(g);
    // A guard is held for microseconds; one whose owner died (or that cannot be read after its owner is gone) is
    // removed. Two takers removing the same dead guard at once is the one race left: it needs a crash inside it.
    if (g !== null && (gOwner === null ? g.trim() !== '' : ownerStatus(gOwner) === 'dead')) {
      if (readRaw(guard) === g) rmSync(guard, { force: true });
    }
    return false;
  }
  try {
    if (readRaw(path) === raw) rmSync(path, { force: true });
  } finally {
    rmSync(guard, { force: true });
  }
  return true;
}
