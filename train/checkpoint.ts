/**
 * Resume state of one job: `OUT/checkpoints/layer_XX.{mlp|attn}.safetensors`, rewritten atomically (temp + rename)
 * after every epoch: current weights, AdamW moments, the best weights so far, and a JSON `state` (epoch, step,
 * selection bookkeeping, history, and the settings key that a resumed run must match). A killed run leaves either the
 * previous epoch's file or the new one, never a torn file.
 */
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { SafetensorsFile, writeSafetensors, type TensorToWrite } from '../checkpoints/safetensors.js';
import type { EpochRecord, PredictorMetrics } from '../common/contracts.js';
import { DejavuError, rethrowFs } from '../common/errors.js';
import type { PredictorState } from './model.js';
import type { SplitCounts } from './data.js';

export interface JobState {
  /** Epochs completed (the next epoch to run is `epoch`). */
  epoch: number;
  step: number;
  bestEpoch: number;
  bestScore: number;
  bestMetrics: PredictorMetrics | null;
  badEpochs: number;
  history: EpochRecord[];
  /** True once the output file is written (a resumed run skips the job). */
  done: boolean;
  /** Settings a resumed run must share (JSON). */
  key: string;
  /** The split's rows and positives (data.ts countSplit); absent in checkpoints written before they were kept. */
  counts?: SplitCounts;
}

export interface Checkpoint {
  state: JobState;
  weights: PredictorState;
  best: { w1t: Float32Array; w2t: Float32Array };
}

export const checkpointPath = (out: string, name: string): string => join(out, 'checkpoints', `${name}.safetensors`);

export function saveCheckpoint(out: string, name: string, c: Checkpoint, shapes: { d: number; r: number; out: number }): void {
  try {
    mkdirSync(join(out, 'checkpoints'), { recursive: true });
  } catch (e) {
    rethrowFs(e, join(out, 'checkpoints'));
  }
  const { d, r } = shapes;
  const o = shapes.out;
  const t = (data: Float32Array, shape: number[]): TensorToWrite => ({ dtype: 'F32', shape, data });
  const path = checkpointPath(out, name);
  try {
    writeSafetensors(
      path,
      {
        w1t: t(c.weights.w1t, [d, r]),
        w2t: t(c.weights.w2t, [r, o]),
        m1: t(c.weights.m1, [d, r]),
        v1: t(c.weights.v1, [d, r]),
        m2: t(c.weights.m2, [r, o]),
        v2: t(c.weights.v2, [r, o]),
        best_w1t: t(c.best.w1t, [d, r]),
        best_w2t: t(c.best.w2t, [r, o]),
      },
      { format: 'dejavu-train-checkpoint/1', state: JSON.stringify({ ...c.state, step: c.weights.step }) },
    );
  } catch (e) {
    rethrowFs(e, path);
  }
}

/** The JSON state of a job's checkpoint (the header only, no weights), or undefined if there is none. */
export function readCheckpointState(out: string, name: string): JobState | undefined {
  const path = checkpointPath(out, name);
  if (!existsSync(path)) return undefined;
  const f = SafetensorsFile.open(path);
  try {
    return parseState(f, path);
  } finally {
    f.close();
  }
}

function parseState(f: SafetensorsFile, path: string): JobState {
  if (f.metadata.format !== 'dejavu-train-checkpoint/1') throw new DejavuError(`not a train checkpoint (format ${f.metadata.format})`, path);
  try {
    return JSON.parse(f.metadata.state) as JobState;
  } catch (e) {
    throw new DejavuError(`checkpoint state is not valid JSON (${(e as Error).message})`, path);
  }
}

/** The refusal of a checkpoint written with other settings than `key` (train checks every job's before any work). */
export function settingsMismatch(out: string, name: string, saved: string, key: string): DejavuError {
  return new DejavuError(
    `checkpoint was written with other settings; --resume needs the same ones (or use --force to start over).\n  checkpoint: ${saved}\n  this run:   ${key}`,
    checkpointPath(out, name),
  );
}

/** Loads a job's checkpoint, or undefined if there is none. Throws when it belongs to other settings. */
export function loadCheckpoint(out: string, name: string, key: string): Checkpoint | undefined {
  const path = checkpointPath(out, name);
  if (!existsSync(path)) return undefined;
  const f = SafetensorsFile.open(path);
  try {
    const state = parseState(f, path);
    if (state.key !== key) throw settingsMismatch(out, name, state.key, key);
    const r = (n: string) => f.readFloat32(n);
    return {
      state,
      weights: { w1t: r('w1t'), w2t: r('w2t'), m1: r('m1'), v1: r('v1'), m2: r('m2'), v2: r('v2'), step: state.step },
      best: { w1t: r('best_w1t'), w2t: r('best_w2t') },
    };
  } finally {
    f.close();
  }
}
