import cliProgress from 'cli-progress';
import { DejavuError } from './errors.js';

/**
 * Progress and logs, all on stderr (stdout stays clean for --json).
 *
 * Progress has three modes: a redrawn bar on a terminal; off a terminal (nohup, a scheduler, a pipe) one plain line
 * every DEJAVU_PROGRESS_INTERVAL seconds (default 15) with done/total, rate and ETA, so logs show a long job moving
 * without filling with redraws; off with --quiet or DEJAVU_PROGRESS=0.
 *
 * Verbosity (--quiet / --verbose on every command, set once by the CLI): quiet drops progress and log(); warn() and
 * errors always print; debug() prints only when verbose. Worker threads get their own copy of this module: they are
 * started with workerEnv(), whose DEJAVU_VERBOSITY carries the level to them.
 */
export interface Progress {
  update(done: number, extra?: Record<string, string | number>): void;
  increment(by?: number, extra?: Record<string, string | number>): void;
  setTotal(total: number): void;
  stop(): void;
}

export type Verbosity = 'quiet' | 'normal' | 'verbose';
export type ProgressMode = 'bar' | 'lines' | 'off';

const VERBOSITY_ENV = 'DEJAVU_VERBOSITY';
const VERBOSITIES: readonly Verbosity[] = ['quiet', 'normal', 'verbose'];
let verbosity: Verbosity | undefined;

export function setVerbosity(v: Verbosity): void {
  verbosity = v;
}

/** The environment to start a worker thread with (`new Worker(file, { env: workerEnv() })`): this level in it. */
export function workerEnv(): NodeJS.ProcessEnv {
  return { ...process.env, [VERBOSITY_ENV]: getVerbosity() };
}

export function getVerbosity(): Verbosity {
  if (verbosity) return verbosity;
  const env = process.env[VERBOSITY_ENV] as Verbosity | undefined;
  return env && VERBOSITIES.includes(env) ? env : 'normal';
}

/** The level chosen by --quiet / --verbose (both at once is a contradiction, refused). */
export function verbosityFromFlags(f: { quiet?: unknown; verbose?: unknown }): Verbosity {
  if (f.quiet && f.verbose) throw new DejavuError('use --quiet or --verbose, not both', '--quiet');
  return f.quiet ? 'quiet' : f.verbose ? 'verbose' : 'normal';
}

/** Seconds between plain progress lines off a terminal. */
export const DEFAULT_INTERVAL_S = 15;

function intervalMsFromEnv(): number {
  const s = Number(process.env.DEJAVU_PROGRESS_INTERVAL);
  return Number.isFinite(s) && s > 0 ? s * 1000 : DEFAULT_INTERVAL_S * 1000;
}

type Stream = { write(s: string): unknown; isTTY?: boolean };

export interface ProgressOptions {
  /** No progress at all (the caller's own quiet flag; --quiet and DEJAVU_PROGRESS=0 also turn it off). */
  quiet?: boolean;
  /** Where to draw (default process.stderr). Its isTTY picks the bar or plain lines. */
  stream?: Stream;
  /** Milliseconds clock (default performance.now); tests inject one. */
  now?: () => number;
  /** Milliseconds between plain lines (default DEJAVU_PROGRESS_INTERVAL seconds, else 15 s). */
  intervalMs?: number;
}

/** Which kind of progress a job started now would show. */
export function progressMode(opts: Pick<ProgressOptions, 'quiet' | 'stream'> = {}): ProgressMode {
  const env = process.env.DEJAVU_PROGRESS;
  if (opts.quiet || getVerbosity() === 'quiet' || env === '0' || env === 'off') return 'off';
  const stream = opts.stream ?? process.stderr;
  return stream.isTTY && env !== 'lines' ? 'bar' : 'lines';
}

/** Whether progress is shown at all (e.g. whether a pre-pass that only feeds the ETA is worth it). */
export function progressEnabled(quiet?: boolean): boolean {
  return progressMode({ quiet }) !== 'off';
}

/** h:mm:ss, or m:ss under an hour. */
export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return '-';
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const ss = String(s % 60).padStart(2, '0');
  return h > 0 ? `${h}:${String(m).padStart(2, '0')}:${ss}` : `${m}:${ss}`;
}

const fmtInt = (v: number) => Math.round(v).toLocaleString('en-US');
const fmtRate = (v: number) => (v >= 100 ? fmtInt(v) : v >= 10 ? v.toFixed(1) : v.toFixed(2));

/**
 * A progress reporter for one job: a bar on a terminal, a plain line every interval elsewhere (see the module
 * comment). The 4th argument is the caller's quiet flag, or options.
 */
export function progressBar(label: string, total: number, unit = 'tok', quietOrOpts: boolean | ProgressOptions = false): Progress {
  const opts: ProgressOptions = typeof quietOrOpts === 'boolean' ? { quiet: quietOrOpts } : quietOrOpts;
  const mode = progressMode(opts);
  if (mode === 'off') return { update() {}, increment() {}, setTotal() {}, stop() {} };
  if (mode === 'lines') return lineProgress(label, total, unit, opts);
  const stream = opts.stream ?? process.stderr;
  const bar = new cliProgress.SingleBar(
    {
      stream: stream as NodeJS.WritableStream,
      format: `${label} [{bar}] {percentage}% | {value}/{total} ${unit} | {rate} ${unit}/s | ETA {eta_formatted} {info}`,
      hideCursor: true,
      clearOnComplete: false,
      etaBuffer: 50,
    },
    cliProgress.Presets.shades_classic,
  );
  const now = opts.now ?? (() => performance.now());
  const t0 = now();
  let value = 0;
  const rate = () => {
    const s = (now() - t0) / 1000;
    return s > 0 ? Math.round(value / s).toLocaleString('en-US') : '0';
  };
  bar.start(total, 0, { rate: '0', info: '' });
  return {
    update(done, extra) {
      value = done;
      bar.update(done, { rate: rate(), ...(extra ?? {}) });
    },
    increment(by = 1, extra) {
      value += by;
      bar.update(value, { rate: rate(), ...(extra ?? {}) });
    },
    setTotal(t) {
      bar.setTotal(t);
    },
    stop() {
      bar.stop();
    },
  };
}

/**
 * Plain lines: `label: 1,200/5,000 docs (24.0%), 12.3 docs/s, elapsed 1:37, ETA 5:09 | info`, at most one per
 * interval, checked on every update and by an unref'd timer (so a job stuck inside one long item still reports).
 * stop() adds a closing line when earlier lines were printed (or when verbose), so a log shows where the job ended.
 */
function lineProgress(label: string, total: number, unit: string, opts: ProgressOptions): Progress {
  const stream = opts.stream ?? process.stderr;
  const now = opts.now ?? (() => performance.now());
  const intervalMs = opts.intervalMs ?? intervalMsFromEnv();
  const t0 = now();
  let last = t0;
  let value = 0;
  let info = '';
  let printed = 0;
  let stopped = false;
  const line = (final: boolean) => {
    const s = (now() - t0) / 1000;
    const rate = s > 0 ? value / s : 0;
    const known = total > 0;
    const parts = [known ? `${fmtInt(value)}/${fmtInt(total)} ${unit} (${((100 * value) / total).toFixed(1)}%)` : `${fmtInt(value)} ${unit}`];
    parts.push(`${fmtRate(rate)} ${unit}/s`);
    if (final) parts.push(`done in ${formatDuration(s)}`);
    else {
      parts.push(`elapsed ${formatDuration(s)}`);
      if (known && rate > 0 && value <= total) parts.push(`ETA ${formatDuration((total - value) / rate)}`);
    }
    stream.write(`${label}: ${parts.join(', ')}${info ? ` ${info}` : ''}\n`);
    printed++;
  };
  const tick = () => {
    if (stopped) return;
    const t = now();
    if (t - last >= intervalMs) {
      last = t;
      line(false);
    }
  };
  const timer = setInterval(tick, intervalMs);
  timer.unref?.();
  const setInfo = (extra?: Record<string, string | number>) => {
    if (extra && extra.info !== undefined) info = String(extra.info);
  };
  return {
    update(done, extra) {
      value = done;
      setInfo(extra);
      tick();
    },
    increment(by = 1, extra) {
      value += by;
      setInfo(extra);
      tick();
    },
    setTotal(t) {
      total = t;
    },
    stop() {
      if (stopped) return;
      stopped = true;
      clearInterval(timer);
      if (printed > 0 || getVerbosity() === 'verbose') line(true);
    },
  };
}

/** Informational log to stderr (stdout is reserved for --json output); silent under --quiet. */
export function log(...args: unknown[]): void {
  if (getVerbosity() === 'quiet') return;
  process.stderr.write(args.map(String).join(' ') + '\n');
}

/** A warning: printed even under --quiet. */
export function warn(...args: unknown[]): void {
  process.stderr.write('warning: ' + args.map(String).join(' ') + '\n');
}

/** Detail for --verbose only. */
export function debug(...args: unknown[]): void {
  if (getVerbosity() !== 'verbose') return;
  process.stderr.write(args.map(String).join(' ') + '\n');
}
