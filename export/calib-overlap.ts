/**
 * Which calibration documents the predictors were trained on. The chain of records: the train folder's metrics.json
 * `args.shards` names the shard folder; its manifest.json `args` records the text files collect read (`data`: path
 * and size) and the selection (`docs` / `sample` + `seed`). Those documents are read again and compared with the
 * calibration documents by the SHA-256 of their text, so the same document is found whichever file or position it
 * comes from. When a record is missing (shards moved, text files changed) the check says what it could not read
 * instead of guessing.
 */
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { createReadStats, readDocuments } from '../datasets/read.js';
import type { DocumentSelection } from '../datasets/types.js';

export const textHash = (text: string): string => createHash('sha256').update(text, 'utf8').digest('hex');

export interface OverlapReport {
  /** false: the training documents could not be determined (`note` says why). */
  checked: boolean;
  /** Calibration documents that are among the predictors' training documents. */
  overlap: number;
  /** Calibration documents compared. */
  calibration_docs: number;
  /** Documents the predictors' shards were collected from. */
  training_docs: number | null;
  shards: string | null;
  note?: string;
}

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);

function readJson(path: string): unknown {
  try {
    return JSON.parse(readFileSync(path, 'utf8'));
  } catch {
    return undefined;
  }
}

/** The selection and files collect recorded in SHARDS/manifest.json, or why they cannot be used. */
export function trainingDocsRecord(predictors: string): { shards: string | null; files?: string[]; selection?: DocumentSelection; note?: string } {
  const metrics = readJson(join(predictors, 'metrics.json'));
  const shards = isObj(metrics) && isObj(metrics.args) && typeof metrics.args.shards === 'string' ? metrics.args.shards : null;
  if (!shards) return { shards: null, note: `${join(predictors, 'metrics.json')} does not name its shard folder (args.shards)` };
  const mpath = join(shards, 'manifest.json');
  const m = existsSync(mpath) ? readJson(mpath) : undefined;
  if (!isObj(m) || !isObj(m.args) || !Array.isArray(m.args.data)) return { shards, note: `${mpath} is missing or records no args.data` };
  const files: string[] = [];
  for (const d of m.args.data as unknown[]) {
    if (!isObj(d) || typeof d.path !== 'string') return { shards, note: `${mpath}: args.data entry without a path` };
    if (!existsSync(d.path)) return { shards, note: `${d.path} (the text the shards were collected from) is not there any more` };
    if (typeof d.bytes === 'number' && statSync(d.path).size !== d.bytes) {
      return { shards, note: `${d.path} changed since collect (${statSync(d.path).size} bytes, ${d.bytes} recorded)` };
    }
    files.push(d.path);
  }
  const a = m.args;
  const int = (v: unknown) => (Number.isSafeInteger(v) ? (v as number) : undefined);
  const selection: DocumentSelection =
    int(a.sample) !== undefined ? { sample: int(a.sample), seed: int(a.seed) ?? 0 } : int(a.docs) !== undefined ? { docs: int(a.docs) } : {};
  return { shards, files, selection };
}

/** Compare calibration document hashes (textHash) with the predictors' training documents. */
export async function trainingOverlap(predictors: string, calibration: string[]): Promise<OverlapReport> {
  const rec = trainingDocsRecord(predictors);
  const base = { calibration_docs: calibration.length, shards: rec.shards };
  if (!rec.files) return { ...base, checked: false, overlap: 0, training_docs: null, note: rec.note };
  const want = new Set(calibration);
  let overlap = 0;
  let n = 0;
  for await (const doc of readDocuments(rec.files, rec.selection, createReadStats())) {
    n++;
    const h = textHash(doc.text);
    if (want.has(h)) {
      overlap++;
      want.delete(h);
    }
  }
  return { ...base, checked: true, overlap, training_docs: n };
}
