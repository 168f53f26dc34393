import { createReadStream } from 'node:fs';
import { createInterface } from 'node:readline';
import type { Readable } from 'node:stream';
import { createGunzip } from 'node:zlib';
import { DejavuError } from '../common/errors.js';

/** One record as a reader yields it: the text and where it is (1-based line, or 0-based parquet row). */
export interface RawDoc {
  text: string;
  where: string;
}

/** Called for every line or row that is not a document; `where` is "line 17" / "row 3". */
export type OnSkip = (where: string, reason: string) => void;

/** The reason a JSON line is not a C4 document, or its text. */
export function parseC4Line(line: string): { text: string } | { reason: string } {
  let v: unknown;
  try {
    v = JSON.parse(line);
  } catch (e) {
    return { reason: `invalid JSON (${(e as Error).message.slice(0, 80)})` };
  }
  if (v === null || typeof v !== 'object' || Array.isArray(v)) return { reason: 'not a JSON object' };
  const text = (v as Record<string, unknown>).text;
  if (typeof text !== 'string') return { reason: text === undefined ? 'no "text" field' : '"text" is not a string' };
  return { text };
}

/**
 * Stream the documents of a JSON-lines file (`.jsonl`, `.json`, or gzip-compressed `.json.gz` / `.jsonl.gz`, including
 * multi-member gzip) line by line, in constant memory. Blank lines are ignored; malformed lines are reported through
 * `onSkip` and skipped. A truncated or corrupt gzip stream is an error naming the file (the rest of the file is lost,
 * so silently stopping would hide missing data). Stopping early (`break` in the consumer) closes the file.
 */
export async function* readJsonLines(path: string, gzip: boolean, onSkip: OnSkip): AsyncGenerator<RawDoc> {
  const file = createReadStream(path);
  let streamError: Error | null = null;
  let source: Readable = file;
  file.on('error', (e) => (streamError ??= e));
  if (gzip) {
    const gunzip = createGunzip();
    gunzip.on('error', (e) => (streamError ??= e));
    source = file.pipe(gunzip);
  }
  const rl = createInterface({ input: source, crlfDelay: Infinity });
  let lineNo = 0;
  try {
    for await (const line of rl) {
      lineNo++;
      if (line.trim() === '') continue;
      // A UTF-8 byte order mark some editors write would make the first line invalid JSON.
      const r = parseC4Line(lineNo === 1 && line.charCodeAt(0) === 0xfeff ? line.slice(1) : line);
      if ('text' in r) yield { text: r.text, where: `line ${lineNo}` };
      else onSkip(`line ${lineNo}`, r.reason);
    }
    // readline ends quietly when its input errors; the error is what we recorded.
    if (streamError) throw streamError;
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    if (gzip && (err.code?.startsWith('Z_') || /unexpected end of file|incorrect header check|invalid/i.test(err.message))) {
      throw new DejavuError(`corrupt or truncated gzip data after line ${lineNo} (${err.message})`, path);
    }
    if (err instanceof DejavuError) throw err;
    throw new DejavuError(`cannot read: ${err.message}`, path);
  } finally {
    rl.close();
    source.destroy();
    file.destroy();
  }
}
