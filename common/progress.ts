import cliProgress from 'cli-progress';

/**
 * A progress bar on stderr (stdout stays clean for --json). Shows count, rate and ETA. Silent when `quiet` or when
 * stderr is not a terminal and DEJAVU_PROGRESS is not set, so CI logs do not fill with redraws.
 */
export interface Progress {
  update(done: number, extra?: Record<string, string | number>): void;
  increment(by?: number, extra?: Record<string, string | number>): void;
  setTotal(total: number): void;
  stop(): void;
}

export function progressBar(label: string, total: number, unit = 'tok', quiet = false): Progress {
  const enabled = !quiet && (process.stderr.isTTY || process.env.DEJAVU_PROGRESS === '1');
  if (!enabled) {
    return { update() {}, increment() {}, setTotal() {}, stop() {} };
  }
  const bar = new cliProgress.SingleBar(
    {
      stream: process.stderr,
      format: `${label} [{bar}] {percentage}% | {value}/{total} ${unit} | {rate} ${unit}/s | ETA {eta_formatted} {info}`,
      hideCursor: true,
      clearOnComplete: false,
      etaBuffer: 50,
    },
    cliProgress.Presets.shades_classic,
  );
  const t0 = performance.now();
  let value = 0;
  const rate = () => {
    const s = (performance.now() - t0) / 1000;
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

/** Log to stderr (stdout is reserved for --json output). */
export function log(...args: unknown[]): void {
  process.stderr.write(args.map(String).join(' ') + '\n');
}
