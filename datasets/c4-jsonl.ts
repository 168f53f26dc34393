import { isUtf8 } from 'node:buffer';
import { createReadStream } from 'node:fs';
import type { Readable } from 'node:stream';
import { createGunzip } from 'node:zlib';
import { DejavuError } from '../common/errors.js';

/** One record as a reader yields it: the text and where it is (1-based line, or 0-based parquet row). */
export interface RawDoc {
  text: string;
  where: string;
  /**
   * Set when characters of the text had to be replaced by U+FFFD: bytes that are not UTF-8, or a JSON escape of a lone
   * surrogate (which becomes U+FFFD when the text is encoded for the tokenizer). The text is kept; this says why.
   */
  replaced?: string;
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

const LONE_SURROGATE = /\p{Cs}/u;

/** The lines of a byte stream, split as readline does with crlfDelay Infinity: at \n, \r\n and a lone \r. */
async function* byteLines(source: AsyncIterable<Buffer>): AsyncGenerator<Buffer> {
  // Bytes are split before decoding so that each line is decoded (and checked) whole; UTF-8 never uses 0x0a or 0x0d
  // inside a multi-byte character.
  function* splitCr(line: Buffer): Generator<Buffer> {
    if (line.length > 0 && line[line.length - 1] === 0x0d) line = line.subarray(0, line.length - 1);
    let start = 0;
    for (let cr = line.indexOf(0x0d); cr >= 0; cr = line.indexOf(0x0d, start)) {
      yield line.subarray(start, cr);
      start = cr + 1;
    }
    yield line.subarray(start);
  }
  let parts: Buffer[] = [];
  for await (const chunk of source) {
    let start = 0;
    for (let nl = chunk.indexOf(0x0a); nl >= 0; nl = chunk.indexOf(0x0a, start)) {
      parts.push(chunk.subarray(start, nl));
      const line = parts.length === 1 ? parts[0] : Buffer.concat(parts);
      parts = [];
      yield* splitCr(line);
      start = nl + 1;
    }
    if (start < chunk.length) parts.push(chunk.subarray(start));
  }
  if (parts.length > 0) yield* splitCr(Buffer.concat(parts));
}

/**
 * Stream the documents of a JSON-lines file (`.jsonl`, `.json`, or gzip-compressed `.json.gz` / `.jsonl.gz`, including
 * multi-member gzip) line by line, in constant memory. Blank lines are ignored; malformed lines are reported through
 * `onSkip` and skipped. A line with bytes that are not UTF-8, or whose text escapes a lone surrogate, is kept (with
 * U+FFFD in their place) and marked `replaced`. A truncated or corrupt gzip stream is an error naming the
 * file (the rest of the file is lost, so silently stopping would hide missing data). Stopping early (`break` in the
 * consumer) closes the file.
 */
export async function* readJsonLines(path: string, gzip: boolean, onSkip: OnSkip): AsyncGenerator<RawDoc> {
  const file = createReadStream(path);
  let source: Readable = file;
  if (gzip) {
    const gunzip = createGunzip();
    // A read error of the file ends the gunzip stream with that error, so the loop below sees it.
    file.on('error', (e) => gunzip.destroy(e));
    source = file.pipe(gunzip);
  }
  let lineNo = 0;
  try {
    for await (const bytes of byteLines(source)) {
      lineNo++;
      const line = bytes.toString('utf8');
      if (line.trim() === '') continue;
      // A UTF-8 byte order mark some editors write would make the first line invalid JSON.
      const r = parseC4Line(lineNo === 1 && line.charCodeAt(0) === 0xfeff ? line.slice(1) : line);
      if (!('text' in r)) {
        onSkip(`line ${lineNo}`, r.reason);
        continue;
      }
      const doc: RawDoc = { text: r.text, where: `line ${lineNo}` };
      if (!isUtf8(bytes)) doc.replaced = 'bytes that are not UTF-8, replaced by U+FFFD';
      else if (LONE_SURROGATE.test(r.text)) doc.replaced = 'a lone surrogate escape, replaced by U+FFFD';
      yield doc;
    }
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    if (gzip && (err.code?.startsWith('Z_') || /unexpected end of file|incorrect header check|invalid/i.test(err.message))) {
      throw new DejavuError(`corrupt or truncated gzip data after line ${lineNo} (${err.message})`, path);
    }
    if (err instanceof DejavuError) throw err;
    throw new DejavuError(`cannot read: ${err.message}`, path);
  } finally {
    source.destroy();
    file.destroy();
  }
}
