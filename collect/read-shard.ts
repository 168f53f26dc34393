/**
 * Reads a whole shard file back into flat typed arrays (tests, verification, small tools). Training streams shards
 * batch by batch itself; this loads one file at once.
 */
import { readFileSync } from 'node:fs';
import { tableFromIPC, type Data, type Field, type Table } from 'apache-arrow';
import { DejavuError } from '../common/errors.js';
import { SHARD_FORMAT, SHARD_META } from '../common/contracts.js';

export interface ShardContents {
  metadata: Map<string, string>;
  rows: number;
  batches: number;
  /** Flat row-major columns: fixed-size lists are concatenated ([rows][width]). fp16 columns are raw bits. */
  columns: Map<string, { width: number; values: Int32Array | Uint16Array | Uint8Array }>;
}

export function readShard(path: string): ShardContents {
  let table;
  try {
    table = tableFromIPC(readFileSync(path));
  } catch (e) {
    throw new DejavuError(`not a readable Arrow IPC file (corrupted footer or schema?): ${(e as Error).message}`, path);
  }
  const metadata = table.schema.metadata;
  if (metadata.get(SHARD_META.format) !== SHARD_FORMAT) {
    throw new DejavuError(`not a ${SHARD_FORMAT} shard (dejavu.format = ${metadata.get(SHARD_META.format)})`, path);
  }
  const rows = table.numRows;
  const columns: ShardContents['columns'] = new Map();
  for (const field of table.schema.fields) {
    try {
      columns.set(field.name, readColumn(table, field, rows));
    } catch (e) {
      // A footer whose batch index or buffer layout was damaged parses, then fails here with a bare TypeError.
      throw new DejavuError(`corrupted shard: column ${field.name} cannot be read (${(e as Error).message})`, path);
    }
  }
  return { metadata, rows, batches: table.batches.length, columns };
}

function readColumn(table: Table, field: Field, rows: number): { width: number; values: Int32Array | Uint16Array | Uint8Array } {
  const col = table.getChild(field.name)!;
  const isList = field.type.children?.length === 1;
  const width = isList ? (field.type as { listSize: number }).listSize : 1;
  const parts = col.data.map((d: Data) => {
    const leaf = isList ? d.children[0] : d;
    // Batches read from a file are unsliced; a sliced list's child carries its own offset.
    const start = isList ? leaf.offset : d.offset;
    return (leaf.values as Int32Array | Uint16Array | Uint8Array).subarray(start, start + d.length * width);
  });
  const Ctor = parts[0]?.constructor as new (n: number) => Int32Array | Uint16Array | Uint8Array;
  const values = new Ctor(rows * width);
  let off = 0;
  for (const p of parts) {
    values.set(p as never, off);
    off += p.length;
  }
  return { width, values };
}
