/**
 * Dense prefill on every core: N worker threads, each with its own model and single-threaded tfjs-wasm instance,
 * working on different documents. The wasm backend cannot use threads in Node (no Web Workers for its pthreads
 * build), so whole-document parallelism is how prefill uses a 2-core CPU (see docs/runtime-cpu.md).
 *
 * When the compiled worker script is absent (code run from TypeScript sources, e.g. under vitest) the pool falls back
 * to one in-process model: same results, one core.
 */
import { existsSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { DejavuError } from '../../common/errors.js';
import { workerEnv } from '../../common/progress.js';
import { OptModel, type CpuBackend, type LogitsMode } from './model.js';
import { sequenceNll, type DocScore } from './perplexity.js';
import type { WorkerJob, WorkerReply, WorkerRequest } from './prefill-worker.js';

export interface PoolOptions {
  /** Worker threads; default = available cores. */
  workers?: number;
  backend?: CpuBackend;
}

type Task = { req: WorkerJob; resolve: (v: unknown) => void; reject: (e: Error) => void };

export class PrefillPool {
  private constructor(
    /** Documents processed at once. */
    readonly size: number,
    /** e.g. "2 x tfjs-wasm (simd, 1 thread) worker threads". */
    readonly backend: string,
    private readonly run: (req: WorkerJob) => Promise<unknown>,
    private readonly shutdown: () => Promise<void>,
  ) {}

  static async create(modelDir: string, opts: PoolOptions = {}): Promise<PrefillPool> {
    const n = Math.max(1, opts.workers ?? availableParallelism());
    const backend = opts.backend ?? 'auto';
    const script = fileURLToPath(new URL('./prefill-worker.js', import.meta.url));
    if (!existsSync(script)) return PrefillPool.inProcess(modelDir, backend);
    const workers = Array.from({ length: n }, () => new Worker(script, { workerData: { modelDir, backend }, env: workerEnv() }));
    let backendName = '';
    try {
      const names = await Promise.all(workers.map((w) => waitReady(w, modelDir)));
      backendName = names[0];
    } catch (e) {
      await Promise.all(workers.map((w) => w.terminate()));
      throw e;
    }
    const idle = [...workers];
    const queue: Task[] = [];
    const pending = new Map<number, Task>();
    let nextId = 0;
    // A worker that dies (crash, out of memory) fails every outstanding and later request instead of leaving it
    // waiting forever on a thread that will never answer.
    let broken: Error | undefined;
    let closing = false;
    const fail = (e: Error) => {
      broken ??= e;
      for (const t of pending.values()) t.reject(broken);
      pending.clear();
      for (const t of queue.splice(0)) t.reject(broken);
    };
    const pump = () => {
      while (idle.length && queue.length) {
        const w = idle.pop()!;
        const task = queue.shift()!;
        const id = nextId++;
        pending.set(id, task);
        w.postMessage({ ...task.req, id } as WorkerRequest);
      }
    };
    for (const w of workers) {
      w.on('message', (m: WorkerReply) => {
        if (m.type !== 'result' && m.type !== 'error') return;
        const task = pending.get(m.id);
        pending.delete(m.id);
        idle.push(w);
        if (m.type === 'result') task?.resolve(m.value);
        else task?.reject(m.dejavu ? new DejavuError(m.message) : new Error(m.message));
        pump();
      });
      w.on('error', (e) => fail(e));
      w.on('exit', (code) => {
        if (!closing) fail(new Error(`a prefill worker exited unexpectedly (code ${code})`));
      });
    }
    const run = (req: WorkerJob) =>
      new Promise<unknown>((resolve, reject) => {
        if (broken) return reject(broken);
        queue.push({ req, resolve, reject });
        pump();
      });
    return new PrefillPool(n, `${n} x ${backendName} worker thread${n > 1 ? 's' : ''}`, run, async () => {
      closing = true;
      await Promise.all(workers.map((w) => w.terminate()));
    });
  }

  private static async inProcess(modelDir: string, backend: CpuBackend): Promise<PrefillPool> {
    const { loadOptCheckpoint } = await import('../../checkpoints/opt-checkpoint.js');
    const model = await OptModel.load(await loadOptCheckpoint(modelDir, { quiet: true }), { backend });
    const V = model.config.vocabSize;
    const run = async (req: WorkerJob): Promise<unknown> => {
      if (req.op === 'score') return sequenceNll(model.prefill(req.ids), req.ids, V);
      const t0 = performance.now();
      model.prefill(req.ids, { logits: req.logits });
      return { ms: performance.now() - t0 };
    };
    return new PrefillPool(1, `${model.backend} in-process`, run, async () => model.dispose());
  }

  /** NLL of one document (ids with BOS): the DocScorer for dense perplexity. */
  score(ids: Int32Array): Promise<DocScore> {
    return this.run({ op: 'score', ids }) as Promise<DocScore>;
  }

  /** One prefill, for timing; resolves with the worker-side milliseconds. */
  prefill(ids: Int32Array, logits: LogitsMode = 'all'): Promise<{ ms: number }> {
    return this.run({ op: 'prefill', ids, logits }) as Promise<{ ms: number }>;
  }

  close(): Promise<void> {
    return this.shutdown();
  }
}

function waitReady(w: Worker, modelDir: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const onMsg = (m: WorkerReply) => {
      if (m.type === 'ready') resolve(m.backend);
      else if (m.type === 'fatal') reject(m.dejavu ? new DejavuError(m.message) : new Error(`${modelDir}: ${m.message}`));
      else return;
      w.off('message', onMsg);
    };
    w.on('message', onMsg);
    w.once('error', reject);
    w.once('exit', (code) => reject(new Error(`prefill worker exited with code ${code} while loading ${modelDir}`)));
  });
}
