/**
 * common/progress.ts: plain progress lines off a terminal (injected clock and stream), the modes, and the verbosity
 * levels behind --quiet / --verbose.
 */
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { DejavuError } from '../common/errors.js';
import {
  debug,
  formatDuration,
  getVerbosity,
  log,
  progressBar,
  progressMode,
  setVerbosity,
  workerEnv,
  verbosityFromFlags,
  warn,
} from '../common/progress.js';

/** A non-TTY stream that keeps what is written, and a clock the test moves. */
function harness(isTTY = false) {
  const lines: string[] = [];
  const stream = { isTTY, write: (s: string) => (lines.push(s), true) };
  let t = 1_000;
  return { lines, stream, now: () => t, advance: (ms: number) => (t += ms) };
}

const savedEnv = { ...process.env };
beforeEach(() => {
  delete process.env.DEJAVU_PROGRESS;
  delete process.env.DEJAVU_PROGRESS_INTERVAL;
  setVerbosity('normal');
});
afterEach(() => {
  for (const k of ['DEJAVU_PROGRESS', 'DEJAVU_PROGRESS_INTERVAL', 'DEJAVU_VERBOSITY']) {
    if (savedEnv[k] === undefined) delete process.env[k];
    else process.env[k] = savedEnv[k];
  }
  setVerbosity('normal');
  vi.restoreAllMocks();
});

describe('progress off a terminal', () => {
  it('prints one plain line per interval with done/total, rate and ETA, and a closing line', () => {
    const h = harness();
    const p = progressBar('collect', 100, 'docs', { stream: h.stream, now: h.now, intervalMs: 10_000 });
    p.increment(5);
    h.advance(4_000);
    p.increment(5);
    expect(h.lines).toEqual([]); // not yet an interval
    h.advance(6_000); // 10 s: 10 docs done -> 1 doc/s, 90 left -> 1:30
    p.increment(10, { info: '| shard 0' });
    expect(h.lines).toEqual(['collect: 20/100 docs (20.0%), 2.00 docs/s, elapsed 0:10, ETA 0:40 | shard 0\n']);
    h.advance(1_000);
    p.increment(1); // within the next interval: nothing
    expect(h.lines).toHaveLength(1);
    h.advance(9_000);
    p.update(40);
    expect(h.lines[1]).toBe('collect: 40/100 docs (40.0%), 2.00 docs/s, elapsed 0:20, ETA 0:30 | shard 0\n');
    h.advance(5_000);
    p.update(100);
    p.stop();
    expect(h.lines[2]).toBe('collect: 100/100 docs (100.0%), 4.00 docs/s, done in 0:25 | shard 0\n');
    p.stop(); // idempotent
    expect(h.lines).toHaveLength(3);
  });

  it('an unknown total gives count and rate, no percentage or ETA; setTotal adds them', () => {
    const h = harness();
    const p = progressBar('eval ppl', 0, 'tok', { stream: h.stream, now: h.now, intervalMs: 1_000 });
    h.advance(2_000);
    p.update(3_000);
    expect(h.lines[0]).toBe('eval ppl: 3,000 tok, 1,500 tok/s, elapsed 0:02\n');
    p.setTotal(6_000);
    h.advance(1_000);
    p.update(4_500);
    expect(h.lines[1]).toBe('eval ppl: 4,500/6,000 tok (75.0%), 1,500 tok/s, elapsed 0:03, ETA 0:01\n');
  });

  it('a short job that never reached an interval stays silent, also at stop (unless --verbose)', () => {
    const h = harness();
    const p = progressBar('load', 10, 'tensors', { stream: h.stream, now: h.now, intervalMs: 15_000 });
    p.increment(10);
    p.stop();
    expect(h.lines).toEqual([]);
    setVerbosity('verbose');
    const q = progressBar('load', 10, 'tensors', { stream: h.stream, now: h.now, intervalMs: 15_000 });
    h.advance(500);
    q.increment(10);
    q.stop();
    expect(h.lines).toEqual(['load: 10/10 tensors (100.0%), 20.0 tensors/s, done in 0:01\n']);
  });

  it('takes the interval from DEJAVU_PROGRESS_INTERVAL (seconds)', () => {
    process.env.DEJAVU_PROGRESS_INTERVAL = '2';
    const h = harness();
    const p = progressBar('train', 10, 'tok', { stream: h.stream, now: h.now });
    h.advance(1_500);
    p.update(1);
    expect(h.lines).toHaveLength(0);
    h.advance(600);
    p.update(2);
    expect(h.lines).toHaveLength(1);
  });

  it('reports from its timer while no update comes (a job inside one long item)', async () => {
    const h = harness();
    const p = progressBar('bench cpu', 5, 'rounds', { stream: h.stream, now: h.now, intervalMs: 20 });
    p.update(1);
    h.advance(25);
    await new Promise((r) => setTimeout(r, 80));
    p.stop();
    expect(h.lines[0]).toMatch(/^bench cpu: 1\/5 rounds \(20\.0%\), /);
  });
});

describe('progress modes', () => {
  it('a terminal gets the bar, anything else plain lines; --quiet, the caller and DEJAVU_PROGRESS=0 turn it off', () => {
    expect(progressMode({ stream: { write: () => true, isTTY: true } })).toBe('bar');
    expect(progressMode({ stream: { write: () => true, isTTY: false } })).toBe('lines');
    expect(progressMode({ stream: { write: () => true } })).toBe('lines');
    expect(progressMode({ quiet: true, stream: { write: () => true } })).toBe('off');
    process.env.DEJAVU_PROGRESS = 'lines';
    expect(progressMode({ stream: { write: () => true, isTTY: true } })).toBe('lines');
    process.env.DEJAVU_PROGRESS = '0';
    expect(progressMode({ stream: { write: () => true, isTTY: true } })).toBe('off');
    delete process.env.DEJAVU_PROGRESS;
    setVerbosity('quiet');
    expect(progressMode({ stream: { write: () => true } })).toBe('off');
  });

  it('an off progress writes nothing', () => {
    const h = harness();
    const p = progressBar('x', 10, 'docs', { quiet: true, stream: h.stream, now: h.now, intervalMs: 1 });
    h.advance(100);
    p.update(5);
    p.stop();
    expect(h.lines).toEqual([]);
  });

  it('formats durations as m:ss or h:mm:ss', () => {
    expect(formatDuration(0)).toBe('0:00');
    expect(formatDuration(89.6)).toBe('1:30');
    expect(formatDuration(3600 + 62)).toBe('1:01:02');
    expect(formatDuration(Infinity)).toBe('-');
  });
});

describe('verbosity', () => {
  const stderr = () => {
    const out: string[] = [];
    vi.spyOn(process.stderr, 'write').mockImplementation((s: string | Uint8Array) => (out.push(String(s)), true));
    return out;
  };

  it('--quiet silences log() but not warn(); debug() needs --verbose', () => {
    const out = stderr();
    log('info');
    debug('detail');
    setVerbosity('quiet');
    log('hidden');
    warn('careful');
    setVerbosity('verbose');
    debug('detail 2');
    expect(out).toEqual(['info\n', 'warning: careful\n', 'detail 2\n']);
  });

  it('reaches worker threads through workerEnv(), without writing process.env', async () => {
    setVerbosity('quiet');
    expect(process.env.DEJAVU_VERBOSITY).toBeUndefined();
    expect(workerEnv().DEJAVU_VERBOSITY).toBe('quiet');
    const { Worker } = await import('node:worker_threads');
    const w = new Worker(
      "const { parentPort } = require('node:worker_threads'); parentPort.postMessage(process.env.DEJAVU_VERBOSITY);",
      { eval: true, env: workerEnv() },
    );
    const seen = await new Promise((resolve) => w.once('message', resolve));
    await w.terminate();
    expect(seen).toBe('quiet');
  });

  it('comes from the flags; both at once is refused naming them', () => {
    expect(verbosityFromFlags({})).toBe('normal');
    expect(verbosityFromFlags({ quiet: true })).toBe('quiet');
    expect(verbosityFromFlags({ verbose: true })).toBe('verbose');
    expect(() => verbosityFromFlags({ quiet: true, verbose: true })).toThrow(DejavuError);
    expect(() => verbosityFromFlags({ quiet: true, verbose: true })).toThrow(/--quiet or --verbose/);
  });
});
