import { isUtf8 } from 'node:buffer';
import { asyncBufferFromFile, parquetMetadataAsync, parquetSchema, parquetScan } from 'hyparquet';
import type { FileMetaData } from 'hyparquet';
import { compressors } from 'hyparquet-compressors';
import { DejavuError } from '../common/errors.js';
import type { OnSkip, RawDoc } from './c4-jsonl.js';

/** A string column value whose bytes were not UTF-8: the text with U+FFFD in their place. */
class Replaced {
  constructor(readonly text: string) {}
}

/** hyparquet's string parser, told apart: bytes that are not UTF-8 come back as Replaced (dictionary pages included). */
function stringFromBytes(bytes: Uint8Array | undefined): string | Replaced | undefined {
  if (!bytes) return bytes;
  const text = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('utf8');
  return isUtf8(bytes) ? text : new Replaced(text);
}

/**
 * Stream the `text` column of a C4 parquet file, one row group at a time (memory = one row group's text, whatever the
 * file size). Only the `text` column is read and decompressed; other columns, their order and the codec (snappy, zstd,
 * gzip, ... via hyparquet-compressors) do not matter. Rows whose text is null are reported through `onSkip`; rows whose
 * bytes are not UTF-8 are kept (with U+FFFD in their place) and marked `replaced`.
 */
export async function* readParquetTexts(path: string, onSkip: OnSkip): AsyncGenerator<RawDoc> {
  let metadata: FileMetaData;
  const file = await asyncBufferFromFile(path).catch((e: Error) => {
    throw new DejavuError(`cannot read: ${e.message}`, path);
  });
  try {
    metadata = await parquetMetadataAsync(file);
  } catch (e) {
    throw new DejavuError(`not a readable parquet file (${(e as Error).message})`, path);
  }
  const columns = parquetSchema(metadata).children;
  const text = columns.find((c) => c.element.name === 'text');
  if (!text) {
    const names = columns.map((c) => c.element.name).join(', ');
    throw new DejavuError(`parquet file has no "text" column (columns: ${names || 'none'})`, path);
  }
  if (text.children.length > 0 || text.element.type !== 'BYTE_ARRAY') {
    throw new DejavuError(`the "text" column is ${text.element.type ?? 'a group'}, not a string column`, path);
  }

  let scan;
  try {
    scan = await parquetScan({ file, metadata, columns: ['text'], compressors, parsers: { stringFromBytes } });
  } catch (e) {
    throw new DejavuError(`cannot plan the parquet read (${(e as Error).message})`, path);
  }
  for (const range of scan.ranges) {
    let values: ArrayLike<unknown>;
    try {
      values = await scan.readColumn({ column: 'text', rowStart: range.rowStart, rowEnd: range.rowEnd });
    } catch (e) {
      throw new DejavuError(`corrupt data in rows ${range.rowStart}-${range.rowEnd - 1} (${(e as Error).message})`, path);
    }
    for (let i = 0; i < values.length; i++) {
      const v = values[i];
      const row = range.rowStart + i;
      if (typeof v === 'string') yield { text: v, where: `row ${row}` };
      else if (v instanceof Replaced) yield { text: v.text, where: `row ${row}`, replaced: 'bytes that are not UTF-8, replaced by U+FFFD' };
      else onSkip(`row ${row}`, v === null || v === undefined ? 'text is null' : `text is ${typeof v}, not a string`);
    }
  }
}
