import { DejavuError } from '../common/errors.js';
import { progressBar } from '../common/progress.js';
import { readJsonLines, type OnSkip, type RawDoc } from './c4-jsonl.js';
import { readParquetTexts } from './c4-parquet.js';
import { formatOf, resolveInputs } from './inputs.js';
import { sampleIndices, selectionKind } from './select.js';
import type { Document, DocumentSelection, ReadStats } from './types.js';

/** How many "file:line: reason" examples of skipped lines a ReadStats keeps. */
export const MAX_SKIP_EXAMPLES = 5;

export function createReadStats(): ReadStats {
  return { documents: 0, skipped: 0, skippedExamples: [], replaced: 0, replacedExamples: [], files: [] };
}

/**
 * What commands print on stderr about skipped lines/rows and about documents kept with replaced characters (not
 * UTF-8), or null when there is nothing to say.
 */
export function describeSkips(stats: ReadStats): string | null {
  const parts: string[] = [];
  const more = (n: number, shown: number) => (n > shown ? `\n  ... and ${n - shown} more` : '');
  if (stats.skipped > 0) {
    parts.push(
      `skipped ${stats.skipped} malformed line${stats.skipped === 1 ? '' : 's'}/rows:\n  ${stats.skippedExamples.join('\n  ')}` +
        more(stats.skipped, stats.skippedExamples.length),
    );
  }
  if (stats.replaced > 0) {
    parts.push(
      `kept ${stats.replaced} line${stats.replaced === 1 ? '' : 's'}/rows with characters replaced by U+FFFD (not UTF-8):\n  ` +
        stats.replacedExamples.join('\n  ') +
        more(stats.replaced, stats.replacedExamples.length),
    );
  }
  return parts.length > 0 ? parts.join('\n') : null;
}

/** The raw records of one file, whatever its format. */
function readFile(path: string, onSkip: OnSkip): AsyncGenerator<RawDoc> {
  const fmt = formatOf(path);
  if (fmt === 'parquet') return readParquetTexts(path, onSkip);
  if (fmt === 'jsonl' || fmt === 'jsonl.gz') return readJsonLines(path, fmt === 'jsonl.gz', onSkip);
  throw new DejavuError('unsupported file type (expected .json.gz, .jsonl.gz, .jsonl, .json or .parquet)', path);
}

/** A document and, when characters of its text were replaced by U+FFFD, where and why ("file:line 3: reason"). */
interface ReadDoc {
  doc: Document;
  replaced?: string;
}

/** Counts a document that is handed to the caller. */
function countYielded(stats: ReadStats, r: ReadDoc): Document {
  stats.documents++;
  if (r.replaced !== undefined) {
    stats.replaced++;
    if (stats.replacedExamples.length < MAX_SKIP_EXAMPLES) stats.replacedExamples.push(r.replaced);
  }
  return r.doc;
}

/**
 * Every document of `files` in file order, numbered from 0. Skipped lines/rows get no number (document indices are
 * contiguous) and are counted in `stats` when `countSkips` (the sampling pass that only counts does not count them
 * twice).
 */
async function* allDocuments(files: string[], stats: ReadStats, countSkips: boolean): AsyncGenerator<ReadDoc> {
  let index = 0;
  for (const path of files) {
    if (!stats.files.includes(path)) stats.files.push(path);
    const onSkip: OnSkip = (where, reason) => {
      if (!countSkips) return;
      stats.skipped++;
      if (stats.skippedExamples.length < MAX_SKIP_EXAMPLES) stats.skippedExamples.push(`${path}:${where}: ${reason}`);
    };
    for await (const raw of readFile(path, onSkip)) {
      const doc = { index: index++, text: raw.text, source: path };
      yield raw.replaced === undefined ? { doc } : { doc, replaced: `${path}:${raw.where}: ${raw.replaced}` };
    }
  }
}

function emptyError(files: string[], stats: ReadStats): DejavuError {
  const skipped = stats.skipped ? ` (${stats.skipped} malformed lines/rows skipped, e.g. ${stats.skippedExamples[0]})` : '';
  return new DejavuError(`no documents in ${files.length === 1 ? files[0] : `${files.length} files: ${files.join(', ')}`}${skipped}`);
}

/**
 * Stream C4 documents from files, folders or globs (see resolveInputs) in file order with constant memory.
 * - no selection: every document; `docs: N`: the first N (reading stops there);
 * - `sample: N, seed: S` (seed default 0): N documents drawn uniformly without replacement with a seeded PRNG, yielded
 *   in file order. Two passes: the first counts the documents, the second yields the chosen ones. A sample larger
 *   than the data set yields every document.
 * `Document.index` is the position in file order across all inputs (document 0 = first document of the first file).
 * Malformed lines/rows are skipped and counted in `stats`; documents yielded with characters replaced by U+FFFD (bytes
 * that are not UTF-8) are counted in `stats.replaced`; a data set without any document is an error.
 */
export async function* readDocuments(
  inputs: string[],
  selection: DocumentSelection = {},
  stats: ReadStats = createReadStats(),
): AsyncGenerator<Document> {
  const kind = selectionKind(selection);
  const files = resolveInputs(inputs);

  if (kind !== 'sample') {
    const limit = kind === 'first' ? (selection.docs as number) : Infinity;
    let seen = 0;
    for await (const r of allDocuments(files, stats, true)) {
      seen++;
      yield countYielded(stats, r);
      if (seen >= limit) return;
    }
    if (seen === 0) throw emptyError(files, stats);
    return;
  }

  // Pass 1: count. A long loop over big shards, so it gets a progress bar (per file).
  const bar = progressBar('counting documents', files.length, 'files');
  let total = 0;
  let lastSource = '';
  for await (const { doc } of allDocuments(files, stats, true)) {
    total++;
    if (doc.source !== lastSource) {
      if (lastSource) bar.increment();
      lastSource = doc.source;
    }
  }
  bar.update(files.length);
  bar.stop();
  if (total === 0) throw emptyError(files, stats);

  // Pass 2: yield the chosen indices (sorted), stopping after the last one.
  const chosen = sampleIndices(total, selection.sample as number, selection.seed ?? 0);
  let next = 0;
  for await (const r of allDocuments(files, stats, false)) {
    if (r.doc.index !== chosen[next]) continue;
    yield countYielded(stats, r);
    if (++next === chosen.length) return;
  }
  throw new DejavuError(`the inputs changed while they were read: ${total} documents counted, fewer found on the second pass`);
}
