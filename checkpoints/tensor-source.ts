/**
 * A uniform view over the tensors of a weights folder, whatever the file format (single or sharded safetensors,
 * pytorch_model.bin). The model assembler (opt-checkpoint.ts) only sees this interface, so the name mapping, shape
 * checks and fingerprint are computed the same way for every format.
 */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { DejavuError } from '../common/errors.js';
import { SafetensorsFile, type StDtype } from './safetensors.js';

export interface SourceTensor {
  /** The name as stored in the file. */
  name: string;
  dtype: StDtype;
  shape: number[];
  /** The file that holds it (for error messages). */
  file: string;
}

export interface TensorSource {
  /** 'safetensors', 'safetensors-sharded', 'pytorch-bin', 'pytorch-bin-sharded'. */
  format: string;
  /** The file (or index) the weights were found through, for error messages. */
  path: string;
  /** Every file the tensors are read from (the index and its shards): what the weights hash cache is keyed by. */
  files: string[];
  tensors(): SourceTensor[];
  /** Read one tensor as fp32 (each call reads only that tensor from disk). */
  readFloat32(name: string): Float32Array;
  /** Its bytes as stored (its dtype, little-endian), in row-major order whatever the file's layout: what is hashed. */
  readStored(name: string): Uint8Array;
  close(): void;
}

export function safetensorsSource(path: string): TensorSource {
  const f = SafetensorsFile.open(path);
  return {
    format: 'safetensors',
    path,
    files: [path],
    tensors: () => f.names().map((name) => ({ name, ...pick(f.info(name)), file: path })),
    readFloat32: (name) => f.readFloat32(name),
    readStored: (name) => f.readBytes(name),
    close: () => f.close(),
  };
}

function pick(i: { dtype: StDtype; shape: number[] }): { dtype: StDtype; shape: number[] } {
  return { dtype: i.dtype, shape: i.shape };
}

/** The `weight_map` of a Hugging Face shard index (`*.index.json`): tensor name -> shard file name. */
export function readShardIndex(indexPath: string): Map<string, string> {
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(indexPath, 'utf8'));
  } catch (e) {
    throw new DejavuError(`cannot read shard index (${(e as Error).message})`, indexPath);
  }
  const wm = (raw as { weight_map?: unknown } | null)?.weight_map;
  if (typeof wm !== 'object' || wm === null || Array.isArray(wm)) {
    throw new DejavuError('shard index has no "weight_map" object', indexPath);
  }
  const map = new Map<string, string>();
  for (const [name, file] of Object.entries(wm)) {
    // Shard names are plain file names beside the index; anything with a path separator could escape the folder.
    if (typeof file !== 'string' || file.includes('/') || file.includes('\\') || file === '..' || file === '.') {
      throw new DejavuError(`weight_map["${name}"] is not a plain shard file name: ${JSON.stringify(file)}`, indexPath);
    }
    map.set(name, file);
  }
  if (map.size === 0) throw new DejavuError('shard index weight_map is empty', indexPath);
  return map;
}

/**
 * Sharded weights: opens each shard named by the index with `openShard`, checks every mapped tensor is really in its
 * shard, and routes reads. Tensors present in a shard but not in the index are ignored (as transformers does).
 */
export function shardedSource(indexPath: string, format: string, openShard: (path: string) => TensorSource): TensorSource {
  const map = readShardIndex(indexPath);
  const dir = dirname(indexPath);
  const shards = new Map<string, TensorSource>();
  const closeAll = () => shards.forEach((s) => s.close());
  try {
    for (const file of new Set(map.values())) {
      const p = join(dir, file);
      if (!existsSync(p)) throw new DejavuError(`shard ${file} listed in the index does not exist`, indexPath);
      shards.set(file, openShard(p));
    }
    const list: SourceTensor[] = [];
    const byShard = new Map<string, Map<string, SourceTensor>>();
    for (const [file, s] of shards) byShard.set(file, new Map(s.tensors().map((t) => [t.name, t])));
    for (const [name, file] of map) {
      const t = byShard.get(file)!.get(name);
      if (!t) throw new DejavuError(`missing tensor ${name} (the index ${indexPath} says it is in this shard)`, join(dir, file));
      list.push(t);
    }
    const shardOf = (name: string): TensorSource => {
      const file = map.get(name);
      if (!file) throw new DejavuError(`missing tensor ${name}`, indexPath);
      return shards.get(file)!;
    };
    return {
      format,
      path: indexPath,
      files: [indexPath, ...[...shards.values()].flatMap((s) => s.files)],
      tensors: () => list,
      readFloat32: (name) => shardOf(name).readFloat32(name),
      readStored: (name) => shardOf(name).readStored(name),
      close: closeAll,
    };
  } catch (e) {
    closeAll();
    throw e;
  }
}
