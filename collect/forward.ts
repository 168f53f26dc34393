/**
 * Runs documents through the model for collect: in this thread, or on N worker threads (one model and one
 * single-threaded tfjs-wasm instance each: whole-document parallelism is how prefill uses several cores). Results
 * come back as LayerRows; collect consumes them in document order, so the output does not depend on which thread
 * computed what.
 *
 * Workers need the compiled worker script (dist/collect/forward-worker.js); code run from TypeScript sources (vitest)
 * uses the in-thread path.
 */
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import type { OptCheckpoint } from '../checkpoints/types.js';
import type { ShardDims } from '../common/contracts.js';
import { DejavuError } from '../common/errors.js';
import { workerEnv } from '../common/progress.js';
import { forwardRows, type LayerRows } from './doc-rows.js';
import type { CudaLib, TapRows } from '../runtime/cuda/lib.js';

export interface WorkerData {
  modelDir: string;
  layers: number[];
  dims: ShardDims;
}
export interface WorkerRequest {
  id: number;
  ids: Int32Array;
}
export type WorkerMessage =
  | { type: 'ready'; fingerprint: string; backend: string }
  | { type: 'fatal'; message: string; dejavu: boolean }
  | { type: 'rows'; id: number; rows: LayerRows[] }
  | { type: 'error'; id: number; message: string; dejavu: boolean };

export interface DocForward {
  /** How many documents it computes at once. */
  readonly parallel: number;
  /** e.g. "2 worker threads x tfjs-wasm (simd, 1 thread)". */
  readonly describe: string;
  /**
   * One document's rows per collected layer. They may be views into buffers the forward reuses (the GPU's pinned
   * slots): valid until the 2 x parallel-th later call, by which time collect has consumed them.
   */
  rows(ids: Int32Array): Promise<LayerRows[]>;
  close(): Promise<void>;
}

/** What the main thread keeps of the model when workers hold the weights. */
export type ModelInfo = Pick<OptCheckpoint, 'dir' | 'config' | 'fingerprint' | 'architectureFingerprint' | 'weightsSha256'>;

const WORKER_SCRIPT = fileURLToPath(new URL('./forward-worker.js', import.meta.url));

/** Worker threads are possible when the compiled worker script exists (not under vitest's TypeScript sources). */
export function workersAvailable(): boolean {
  return existsSync(WORKER_SCRIPT);
}

/** The model in this thread (it keeps `ckpt`'s weights). */
export async function inThreadForward(ckpt: OptCheckpoint, layers: number[], dims: ShardDims): Promise<DocForward> {
  const { OptModel } = await import('../runtime/cpu/model.js');
  const model = await OptModel.load(ckpt);
  return {
    parallel: 1,
    describe: `${model.backend}, in the main thread`,
    rows: async (ids) => forwardRows(model, ids, layers, dims),
    close: async () => model.dispose(),
  };
}

/** The GPU a cuda forward runs on, and the memory it holds once set up (cudaMemGetInfo: total - free). */
export interface GpuInfo {
  name: string;
  memory_used_bytes: number;
  memory_total_bytes: number;
}

/**
 * The GPU: the model streamed to it in fp16 (runtime/cuda/load.ts) and each document's taps computed during a CUDA
 * prefill, two documents in flight (runtime/cuda/taps.ts): the taps land in pinned host slots while the next document
 * computes, and the rows are views of a slot. Returns the forward and the model's identity (its fingerprint as the CPU
 * loader computes it), so the main thread never holds fp32 weights.
 */
export async function cudaForward(
  modelDir: string,
  layers: number[],
  dims: ShardDims,
  maxLen: number,
  given?: CudaLib,
): Promise<{ forward: DocForward; model: ModelInfo; gpu: GpuInfo }> {
  if (dims.topK > 0) throw new DejavuError('--mlp-topk is computed on the CPU path only; drop it or use --device cpu', '--mlp-topk');
  const { loadCudaLib } = await import('../runtime/cuda/lib.js');
  const { loadModelToGpu } = await import('../runtime/cuda/load.js');
  const { TapsPipeline } = await import('../runtime/cuda/taps.js');
  const lib = given ?? (await loadCudaLib());
  const info = lib.deviceInfo();
  const { engine, model } = await loadModelToGpu(lib, modelDir, { maxT: 1, prefillTokens: maxLen });
  let taps: InstanceType<typeof TapsPipeline>;
  try {
    taps = new TapsPipeline(engine, layers, maxLen);
  } catch (e) {
    engine.destroy();
    throw e;
  }
  const mem = lib.memInfo();
  const forward: DocForward = {
    parallel: 1,
    describe: `CUDA prefill on ${info.name} (fp16 weights, fp32 accumulation; taps to pinned memory, two documents in flight)`,
    rows: async (ids) => tapRowsByLayer(await taps.rows(ids), layers.length, dims),
    close: async () => engine.destroy(),
  };
  const gpu = { name: info.name, memory_used_bytes: mem.totalBytes - mem.freeBytes, memory_total_bytes: mem.totalBytes };
  return { forward, model, gpu };
}

/** One document's taps, [nl][n][...], as collect's per-layer rows (views, no copy). */
export function tapRowsByLayer(t: TapRows, nl: number, dims: ShardDims): LayerRows[] {
  const T = t.n;
  const { dModel: d, nHeads: H } = dims;
  const nb = Math.ceil(dims.ffnDim / 8);
  return Array.from({ length: nl }, (_, i) => ({
    attIn: t.attIn.subarray(i * T * d, (i + 1) * T * d),
    mlpIn: t.mlpIn.subarray(i * T * d, (i + 1) * T * d),
    headNorm: t.headNorm.subarray(i * T * H, (i + 1) * T * H),
    mlpActive: t.mlpActive.subarray(i * T * nb, (i + 1) * T * nb),
    topkVal: new Uint16Array(0),
    topkIdx: new Int32Array(0),
  }));
}

/** `n` worker threads, each loading the model folder itself. */
export async function workerForward(ckpt: ModelInfo, layers: number[], dims: ShardDims, n: number): Promise<DocForward> {
  const data: WorkerData = { modelDir: ckpt.dir, layers, dims };
  const workers = Array.from({ length: n }, () => new Worker(WORKER_SCRIPT, { workerData: data, env: workerEnv() }));
  let backend = '';
  try {
    const ready = await Promise.all(workers.map(waitReady));
    // Each worker read the folder again: it must be the model the main thread fingerprinted.
    for (const r of ready) {
      if (r.fingerprint !== ckpt.fingerprint) throw new DejavuError('the model files changed while collect started', ckpt.dir);
    }
    backend = ready[0].backend;
  } catch (e) {
    await Promise.all(workers.map((w) => w.terminate()));
    throw e;
  }
  type Task = { ids: Int32Array; resolve: (r: LayerRows[]) => void; reject: (e: Error) => void };
  const idle = [...workers];
  const queue: Task[] = [];
  const pending = new Map<number, Task>();
  let nextId = 0;
  let broken: Error | null = null;
  const pump = () => {
    while (idle.length && queue.length) {
      const w = idle.pop()!;
      const task = queue.shift()!;
      const id = nextId++;
      pending.set(id, task);
      w.postMessage({ id, ids: task.ids } satisfies WorkerRequest);
    }
  };
  for (const w of workers) {
    w.on('message', (m: WorkerMessage) => {
      if (m.type !== 'rows' && m.type !== 'error') return;
      const task = pending.get(m.id);
      pending.delete(m.id);
      idle.push(w);
      if (m.type === 'rows') task?.resolve(m.rows);
      else task?.reject(m.dejavu ? new DejavuError(m.message) : new Error(m.message));
      pump();
    });
    const die = (e: Error) => {
      broken = e;
      for (const t of [...pending.values(), ...queue]) t.reject(e);
      pending.clear();
      queue.length = 0;
    };
    w.on('error', die);
    w.on('exit', (code) => {
      if (code !== 0) die(new Error(`a collect worker exited with code ${code}`));
    });
  }
  return {
    parallel: n,
    describe: `${n} worker threads x ${backend}`,
    rows: (ids) =>
      new Promise<LayerRows[]>((resolve, reject) => {
        if (broken) return reject(broken);
        queue.push({ ids, resolve, reject });
        pump();
      }),
    close: async () => {
      for (const w of workers) w.removeAllListeners('exit');
      await Promise.all(workers.map((w) => w.terminate()));
    },
  };
}

function waitReady(w: Worker): Promise<{ fingerprint: string; backend: string }> {
  return new Promise((resolve, reject) => {
    const onMsg = (m: WorkerMessage) => {
      if (m.type === 'ready') resolve(m);
      else if (m.type === 'fatal') reject(m.dejavu ? new DejavuError(m.message) : new Error(m.message));
      else return;
      w.off('message', onMsg);
    };
    w.on('message', onMsg);
    w.once('error', reject);
  });
}
