import { readdirSync, statSync } from 'node:fs';
import { join, sep } from 'node:path';
import { DejavuError } from '../common/errors.js';

/** The file kinds the C4 readers understand, by name. */
export type InputFormat = 'jsonl' | 'jsonl.gz' | 'parquet';

/** `.json.gz`/`.jsonl.gz` = gzip JSON lines (C4's own shards); `.jsonl`/`.json` = JSON lines; `.parquet`. */
export function formatOf(path: string): InputFormat | null {
  const p = path.toLowerCase();
  if (p.endsWith('.json.gz') || p.endsWith('.jsonl.gz')) return 'jsonl.gz';
  if (p.endsWith('.jsonl') || p.endsWith('.json')) return 'jsonl';
  if (p.endsWith('.parquet')) return 'parquet';
  return null;
}

/** Hidden files and our own temporary files (`*.tmp`) are never data. */
function isCandidate(name: string): boolean {
  return !name.startsWith('.') && !name.endsWith('.tmp') && formatOf(name) !== null;
}

export function hasGlobChars(s: string): boolean {
  return /[*?]/.test(s);
}

/**
 * A glob pattern (with `/` separators) as a RegExp over `/`-separated relative paths: `*` = any run of characters
 * but `/`, `?` = one such character, `**` as a whole segment = zero or more segments. Everything else is literal.
 */
export function globToRegExp(pattern: string): RegExp {
  const segs = pattern.split('/');
  let re = '';
  for (let i = 0; i < segs.length; i++) {
    const seg = segs[i];
    const last = i === segs.length - 1;
    if (seg === '**') {
      // "a/**/b" matches a/b, a/x/b, a/x/y/b; a trailing "**" matches everything below.
      re += last ? '.*' : '(?:[^/]+/)*';
      continue;
    }
    for (const ch of seg) {
      if (ch === '*') re += '[^/]*';
      else if (ch === '?') re += '[^/]';
      else re += ch.replace(/[.+^${}()|[\]\\]/g, '\\$&');
    }
    if (!last) re += '/';
  }
  return new RegExp(`^${re}$`);
}

/** Every file under `dir` (relative paths with `/`), sorted, not following into hidden folders. */
function walk(dir: string, rel: string, out: string[], maxDepth: number): void {
  let entries;
  try {
    entries = readdirSync(join(dir, rel), { withFileTypes: true });
  } catch {
    return;
  }
  entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  for (const e of entries) {
    if (e.name.startsWith('.')) continue;
    const r = rel ? `${rel}/${e.name}` : e.name;
    let isDir = e.isDirectory();
    let isFile = e.isFile();
    if (e.isSymbolicLink()) {
      try {
        const st = statSync(join(dir, r));
        isDir = st.isDirectory();
        isFile = st.isFile();
      } catch {
        continue;
      }
    }
    if (isFile) out.push(r);
    else if (isDir && maxDepth > 0) walk(dir, r, out, maxDepth - 1);
  }
}

/** Files matching a glob, sorted by path; only readable C4 formats. */
export function expandGlob(pattern: string): string[] {
  const norm = pattern.split(sep).join('/');
  const segs = norm.split('/');
  // The literal leading folders are where the walk starts.
  let k = 0;
  while (k < segs.length - 1 && !hasGlobChars(segs[k])) k++;
  const baseSegs = segs.slice(0, k);
  const base = baseSegs.length === 0 ? '.' : baseSegs.join('/') === '' ? '/' : baseSegs.join('/');
  const rest = segs.slice(k);
  const re = globToRegExp(rest.join('/'));
  const depth = rest.includes('**') ? 64 : rest.length - 1;
  const files: string[] = [];
  walk(base, '', files, depth);
  return files
    .filter((r) => re.test(r) && isCandidate(r.slice(r.lastIndexOf('/') + 1)))
    .sort()
    .map((r) => join(base, r));
}

/**
 * Turn the command line's inputs into the ordered list of files to read: a file is taken as given; a folder means its
 * shards (readable files directly inside, sorted by name); a glob means its matches (sorted). Missing paths, globs
 * that match nothing and folders without shards are errors naming them, and so is an empty result.
 */
export function resolveInputs(inputs: string[]): string[] {
  if (inputs.length === 0) throw new DejavuError('no input files given (expected C4 .json.gz, .jsonl or .parquet files, folders or globs)');
  const files: string[] = [];
  for (const input of inputs) {
    let st;
    try {
      st = statSync(input);
    } catch {
      st = null;
    }
    if (st?.isDirectory()) {
      const names = readdirSync(input).filter(isCandidate).sort();
      const shardFiles = names.map((n) => join(input, n)).filter((p) => statSync(p).isFile());
      if (shardFiles.length === 0) throw new DejavuError('folder holds no .json.gz, .jsonl, .json or .parquet files', input);
      files.push(...shardFiles);
    } else if (st?.isFile()) {
      if (formatOf(input) === null) {
        throw new DejavuError('unsupported file type (expected .json.gz, .jsonl.gz, .jsonl, .json or .parquet)', input);
      }
      files.push(input);
    } else if (hasGlobChars(input)) {
      const matches = expandGlob(input);
      if (matches.length === 0) throw new DejavuError('pattern matches no .json.gz, .jsonl, .json or .parquet file', input);
      files.push(...matches);
    } else {
      throw new DejavuError('no such file or folder', input);
    }
  }
  return files;
}
