/**
 * Streaming reader for collect's shards (docs/ARCHITECTURE.md, "Shards"): `DIR/layer_XX/shard_NNNNN.arrow`, Arrow IPC
 * file format. A shard is read one record batch at a time through a file handle (the footer gives each batch's
 * offset), so memory holds one batch per open file, never a whole shard or layer.
 *
 * openShardSet() validates the folder up front: every file's schema metadata (format, model fingerprint, layer, dims)
 * and that every layer has the same shard names with the same row counts, so a bad folder fails before training
 * starts, with the file named.
 */
import { closeSync, existsSync, openSync, readFileSync, readSync, readdirSync, statSync } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { RecordBatchReader, type Data, type RecordBatch } from 'apache-arrow';
import { layerDirName, layerOfDirName, shardIndexOfFileName, SHARD_FORMAT, SHARD_MANIFEST_FILE, SHARD_META, type ShardDims } from '../common/contracts.js';
import { DejavuError } from '../common/errors.js';
import { sha256Files } from '../common/file-hash.js';
import { warn } from '../common/progress.js';

const ARROW_MAGIC = 'ARROW1';

export interface ShardSet {
  dir: string;
  fingerprint: string;
  dims: ShardDims;
  /** Layers present, ascending. */
  layers: number[];
  /** Shard file names (identical in every layer folder), ascending. */
  shards: string[];
  /** Rows of each shard (same in every layer). */
  rows: number[];
  path(layer: number, shard: number): string;
}

/** A column of one record batch as a flat typed view: [rows][width]. fp16 columns are raw bits (Uint16Array). */
export interface ColumnView {
  width: number;
  values: Int32Array | Uint16Array | Uint8Array;
}

/** Checks the Arrow file magic at both ends: a shard cut short by a crash or a partial copy fails here, by name. */
function checkMagic(path: string): void {
  const size = statSync(path).size;
  const fd = openSync(path, 'r');
  try {
    const head = Buffer.alloc(6);
    const tail = Buffer.alloc(6);
    if (size >= 12) {
      readSync(fd, head, 0, 6, 0);
      readSync(fd, tail, 0, 6, size - 6);
    }
    if (size < 12 || head.toString('latin1') !== ARROW_MAGIC) {
      throw new DejavuError(`not an Arrow IPC file (${size} bytes, no ARROW1 magic at the start)`, path);
    }
    if (tail.toString('latin1') !== ARROW_MAGIC) {
      throw new DejavuError(`truncated shard: no Arrow footer (ARROW1 magic missing at the end of ${size} bytes)`, path);
    }
  } finally {
    closeSync(fd);
  }
}

/** One open shard file, read batch by batch. */
export class ShardFile {
  private constructor(
    readonly path: string,
    private readonly fh: FileHandle,
    private readonly reader: RecordBatchReader,
    readonly metadata: Map<string, string>,
    readonly numBatches: number,
  ) {}

  static async open(path: string): Promise<ShardFile> {
    checkMagic(path);
    const fh = await open(path, 'r');
    try {
      const reader = (await RecordBatchReader.from(fh)) as RecordBatchReader;
      await reader.open();
      if (!reader.isFile()) throw new DejavuError('Arrow IPC stream, expected the IPC file format', path);
      const metadata = reader.schema.metadata;
      const fmt = metadata.get(SHARD_META.format);
      if (fmt !== SHARD_FORMAT) throw new DejavuError(`not a ${SHARD_FORMAT} shard (dejavu.format = ${fmt})`, path);
      return new ShardFile(path, fh, reader, metadata, reader.numRecordBatches);
    } catch (e) {
      await fh.close();
      if (e instanceof DejavuError) throw e;
      throw new DejavuError(`unreadable Arrow shard (corrupted footer or schema?): ${(e as Error).message}`, path);
    }
  }

  /** Total rows, from the footer's batch index (reads each batch header once). */
  async countRows(): Promise<number> {
    let n = 0;
    for (let i = 0; i < this.numBatches; i++) n += (await this.batch(i)).numRows;
    return n;
  }

  async batch(i: number): Promise<RecordBatch> {
    let b: RecordBatch | null;
    try {
      b = await this.reader.readRecordBatch(i);
    } catch (e) {
      throw new DejavuError(`cannot read record batch ${i}: ${(e as Error).message}`, this.path);
    }
    if (!b) throw new DejavuError(`record batch ${i} is missing (truncated shard?)`, this.path);
    return b;
  }

  async close(): Promise<void> {
    await this.fh.close();
  }
}

/** Flat typed views of the named columns of one batch (no copies for unsliced batches, which is what files give). */
export function batchColumns(batch: RecordBatch, names: string[], path: string): Map<string, ColumnView> {
  const out = new Map<string, ColumnView>();
  for (const name of names) {
    const col = batch.getChild(name);
    if (!col) throw new DejavuError(`missing column ${name}`, path);
    const d = col.data[0] as Data;
    const type = d.type as { listSize?: number };
    const isList = d.children.length === 1;
    const width = isList ? type.listSize! : 1;
    const leaf = isList ? d.children[0] : d;
    const start = isList ? leaf.offset + d.offset * width : d.offset;
    const values = (leaf.values as Int32Array | Uint16Array | Uint8Array).subarray(start, start + d.length * width);
    if (values.length !== d.length * width) throw new DejavuError(`column ${name} is shorter than its rows (truncated batch?)`, path);
    out.set(name, { width, values });
  }
  return out;
}

function metaInt(meta: Map<string, string>, key: string, path: string): number {
  const v = Number(meta.get(key));
  if (!Number.isInteger(v) || v < 0) throw new DejavuError(`schema metadata ${key} is ${JSON.stringify(meta.get(key))}, expected an integer`, path);
  return v;
}

export interface OpenShardSetOptions {
  /**
   * Check every shard file against the SHA-256 collect recorded in manifest.json, before its Arrow footer is parsed
   * (default true). Training's worker threads pass false: the main thread has checked the same files.
   */
  verify?: boolean;
  /** Receives the one-line warning about shards without a recorded checksum (default: common/progress warn). */
  warn?: (message: string) => void;
}

type ManifestShard = { file: string; rows: number; bytes?: unknown; sha256?: unknown };

/** The SHA-256 and size collect recorded for `layer`'s copy of shard `file`, when the manifest has them. */
function recorded(manifest: { layers?: unknown; shards?: ManifestShard[] }, layer: number, file: string): { sha256: string; bytes?: number } | null {
  const j = Array.isArray(manifest.layers) ? manifest.layers.indexOf(layer) : -1;
  const s = j >= 0 ? manifest.shards?.find((x) => x.file === file) : undefined;
  const sha = Array.isArray(s?.sha256) ? s.sha256[j] : undefined;
  if (typeof sha !== 'string' || !/^[0-9a-f]{64}$/.test(sha)) return null;
  const bytes = Array.isArray(s?.bytes) && Number.isInteger(s.bytes[j]) ? (s.bytes[j] as number) : undefined;
  return { sha256: sha, bytes };
}

/** Flipped bits or a bad copy: refused by name before a byte of it is parsed (a corrupt footer can hang the parser). */
async function verifyShards(list: { path: string; want: { sha256: string; bytes?: number } }[]): Promise<void> {
  const rebuild = `delete it and rerun the same dejavu collect command to rewrite it`;
  for (const { path, want } of list) {
    const size = statSync(path).size;
    if (want.bytes !== undefined && size !== want.bytes) {
      throw new DejavuError(`${size} bytes but ${SHARD_MANIFEST_FILE} records ${want.bytes} (truncated or replaced); ${rebuild}`, path);
    }
  }
  const got = await sha256Files(list.map((x) => x.path));
  list.forEach(({ path, want }, i) => {
    if (got[i] !== want.sha256) {
      throw new DejavuError(
        `checksum mismatch: SHA-256 ${got[i].slice(0, 16)}..., ${SHARD_MANIFEST_FILE} records ${want.sha256.slice(0, 16)}... ` +
          `(the file changed after collect wrote it); ${rebuild}`,
        path,
      );
    }
  });
}

/**
 * Lists and validates a shard folder. Every shard file is checked against its recorded SHA-256 and opened once
 * (footer + schema only), so a corrupted or truncated file, shards of another model, or a layer with a missing shard
 * is reported before any training.
 */
export async function openShardSet(dir: string, opts: OpenShardSetOptions = {}): Promise<ShardSet> {
  const verify = opts.verify ?? true;
  let unverified = 0;
  let files = 0;
  if (!existsSync(dir) || !statSync(dir).isDirectory()) throw new DejavuError('shard folder not found', dir);
  // collect writes manifest.json last, as its "done" marker (docs/shards.md): a folder without it is a collection
  // still running or killed before its end, whose last shard may be missing in some layers.
  const manifestPath = join(dir, SHARD_MANIFEST_FILE);
  if (!existsSync(manifestPath)) {
    throw new DejavuError(`no ${SHARD_MANIFEST_FILE}: the collection is not complete (rerun dejavu collect with the same arguments to finish it)`, dir);
  }
  let manifest: { complete?: boolean; model_fingerprint?: string; layers?: unknown; shards?: ManifestShard[] };
  try {
    manifest = JSON.parse(readFileSync(manifestPath, 'utf8'));
  } catch (e) {
    throw new DejavuError(`not valid JSON (${(e as Error).message})`, manifestPath);
  }
  if (manifest.complete !== true) throw new DejavuError('the collection is not complete ("complete" is not true)', manifestPath);
  const layerDirs = readdirSync(dir)
    .map(layerOfDirName)
    .filter((l): l is number => l !== null)
    .sort((a, b) => a - b);
  if (layerDirs.length === 0) throw new DejavuError('no layer_XX folders (not a shard folder?)', dir);
  const shardNamesOf = (ldir: string) =>
    readdirSync(ldir)
      .filter((n) => shardIndexOfFileName(n) !== null)
      .sort();

  // Every file against its recorded checksum first, all files at once (common/file-hash.ts), before any is parsed.
  if (verify) {
    const list: { path: string; want: { sha256: string; bytes?: number } }[] = [];
    for (const layer of layerDirs) {
      const ldir = join(dir, layerDirName(layer));
      for (const name of shardNamesOf(ldir)) {
        files++;
        const want = recorded(manifest, layer, name);
        if (want) list.push({ path: join(ldir, name), want });
        else unverified++;
      }
    }
    await verifyShards(list);
  }

  let shards: string[] | undefined;
  let rows: number[] = [];
  let fingerprint: string | undefined;
  let fpSource = '';
  let dims: ShardDims | undefined;
  for (const layer of layerDirs) {
    const ldir = join(dir, layerDirName(layer));
    const names = shardNamesOf(ldir);
    if (names.length === 0) throw new DejavuError('no shard_NNNNN.arrow files', ldir);
    if (!shards) shards = names;
    else if (names.join() !== shards.join()) {
      throw new DejavuError(`has shards [${names.join(', ')}] but ${layerDirName(layerDirs[0])} has [${shards.join(', ')}]`, ldir);
    }
    const layerRows: number[] = [];
    for (const name of names) {
      const path = join(ldir, name);
      const f = await ShardFile.open(path);
      try {
        const m = f.metadata;
        const fp = m.get(SHARD_META.modelFingerprint) ?? '';
        if (fingerprint === undefined) {
          fingerprint = fp;
          fpSource = path;
        } else if (fp !== fingerprint) {
          throw new DejavuError(
            `shards from two different models: model_fingerprint ${fp.slice(0, 16)}... here, ${fingerprint.slice(0, 16)}... in ${fpSource}`,
            path,
          );
        }
        const ml = metaInt(m, SHARD_META.layer, path);
        if (ml !== layer) throw new DejavuError(`schema says layer ${ml} but the file is under ${layerDirName(layer)}`, path);
        const d: ShardDims = {
          dModel: metaInt(m, SHARD_META.dModel, path),
          nHeads: metaInt(m, SHARD_META.nHeads, path),
          ffnDim: metaInt(m, SHARD_META.ffnDim, path),
          topK: metaInt(m, SHARD_META.topK, path),
        };
        if (!dims) dims = d;
        else if (d.dModel !== dims.dModel || d.nHeads !== dims.nHeads || d.ffnDim !== dims.ffnDim || d.topK !== dims.topK) {
          throw new DejavuError(`dims ${JSON.stringify(d)} differ from ${JSON.stringify(dims)} in ${fpSource}`, path);
        }
        layerRows.push(await f.countRows());
      } finally {
        await f.close();
      }
    }
    if (layer === layerDirs[0]) rows = layerRows;
    else {
      for (let s = 0; s < names.length; s++) {
        if (layerRows[s] !== rows[s]) {
          throw new DejavuError(
            `${layerRows[s]} rows but ${layerDirName(layerDirs[0])}/${names[s]} has ${rows[s]}: shards of one index must hold the same tokens in every layer`,
            join(ldir, names[s]),
          );
        }
      }
    }
  }
  const shardNames = shards!;
  if (manifest.model_fingerprint !== undefined && manifest.model_fingerprint !== fingerprint) {
    throw new DejavuError(`shards from two different models: the manifest says ${manifest.model_fingerprint.slice(0, 16)}..., the shards ${fingerprint!.slice(0, 16)}...`, manifestPath);
  }
  if (manifest.shards) {
    const listed = manifest.shards.map((s) => `${s.file}:${s.rows}`).join(', ');
    const found = shardNames.map((n, i) => `${n}:${rows[i]}`).join(', ');
    if (listed !== found) throw new DejavuError(`lists shards [${listed}] but the layer folders hold [${found}]`, manifestPath);
  }
  if (unverified > 0) {
    (opts.warn ?? warn)(
      `${manifestPath}: ${unverified} of ${files} shard files have no recorded checksum (collected before checksums) and are ` +
        'read unverified; rerun the same dejavu collect command to add them (--force to rebuild)',
    );
  }
  return {
    dir,
    fingerprint: fingerprint!,
    dims: dims!,
    layers: layerDirs,
    shards: shardNames,
    rows,
    path: (layer, shard) => join(dir, layerDirName(layer), shardNames[shard]),
  };
}

/** A block of rows read from one shard file: `doc` plus the requested columns. */
export interface RowBlock {
  rows: number;
  doc: Int32Array;
  cols: Map<string, ColumnView>;
}

/**
 * Reads the same shard index from several layers at once, yielding aligned row blocks: block i of every layer covers
 * the same rows (batches may be cut differently per file, so blocks are cut at the union of batch boundaries). Checks
 * that the `doc` column agrees across layers, which is the row-pairing contract lookahead relies on.
 */
export async function* readAligned(
  set: ShardSet,
  shard: number,
  wants: { layer: number; columns: string[] }[],
): AsyncGenerator<RowBlock[]> {
  const files = await Promise.all(wants.map((w) => ShardFile.open(set.path(w.layer, shard))));
  try {
    const state = files.map(() => ({ batch: -1, offset: 0, rows: 0, doc: new Int32Array(0) as Int32Array<ArrayBufferLike>, cols: new Map<string, ColumnView>() }));
    const advance = async (k: number) => {
      const s = state[k];
      while (s.offset >= s.rows) {
        s.batch++;
        if (s.batch >= files[k].numBatches) return false;
        const b = await files[k].batch(s.batch);
        const cols = batchColumns(b, ['doc', ...wants[k].columns], files[k].path);
        s.doc = cols.get('doc')!.values as Int32Array;
        s.cols = cols;
        s.rows = b.numRows;
        s.offset = 0;
      }
      return true;
    };
    for (;;) {
      const more = await Promise.all(files.map((_, k) => advance(k)));
      if (more.every((m) => !m)) return;
      const short = more.findIndex((m) => !m);
      if (short >= 0) throw new DejavuError('fewer rows than the same shard of another layer (truncated?)', files[short].path);
      const n = Math.min(...state.map((s) => s.rows - s.offset));
      const blocks: RowBlock[] = state.map((s) => {
        const cols = new Map<string, ColumnView>();
        for (const [name, c] of s.cols) cols.set(name, { width: c.width, values: c.values.subarray(s.offset * c.width, (s.offset + n) * c.width) });
        return { rows: n, doc: s.doc.subarray(s.offset, s.offset + n), cols };
      });
      for (let k = 1; k < blocks.length; k++) {
        const a = blocks[0].doc;
        const b = blocks[k].doc;
        for (let i = 0; i < n; i++) {
          if (a[i] !== b[i]) {
            throw new DejavuError(`row ${state[k].offset + i} is doc ${b[i]} but doc ${a[i]} in ${files[0].path}: rows do not pair across layers`, files[k].path);
          }
        }
      }
      for (const s of state) s.offset += n;
      yield blocks;
    }
  } finally {
    await Promise.all(files.map((f) => f.close()));
  }
}
