import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { homedir } from 'node:os';
import { basename, dirname, join, resolve } from 'node:path';
import { DejavuError } from '../common/errors.js';

/**
 * `--model` as a local folder or a Hugging Face id (`facebook/opt-1.3b`, `facebook/opt-1.3b@<revision>`), resolved
 * offline from the Hugging Face cache as transformers does with `local_files_only=True` (docs/checkpoints.md).
 *
 * The cache layout (huggingface_hub): `<cache>/models--<org>--<name>/refs/<revision>` holds a commit hash,
 * `snapshots/<commit>/` holds the files (symlinks into `blobs/`).
 */

/** The hub cache folder and the setting that chose it, in huggingface_hub's order. */
export function hubCacheDir(env: NodeJS.ProcessEnv = process.env, home: string = homedir()): { dir: string; from: string } {
  if (env.HF_HUB_CACHE) return { dir: env.HF_HUB_CACHE, from: 'HF_HUB_CACHE' };
  if (env.HUGGINGFACE_HUB_CACHE) return { dir: env.HUGGINGFACE_HUB_CACHE, from: 'HUGGINGFACE_HUB_CACHE' };
  if (env.HF_HOME) return { dir: join(env.HF_HOME, 'hub'), from: 'HF_HOME/hub' };
  if (env.XDG_CACHE_HOME) return { dir: join(env.XDG_CACHE_HOME, 'huggingface', 'hub'), from: 'XDG_CACHE_HOME/huggingface/hub' };
  return { dir: join(home, '.cache', 'huggingface', 'hub'), from: 'the default ~/.cache/huggingface/hub' };
}

/** `org/name` or `org/name@revision` (a branch, tag or commit; `refs/pr/1` too). */
const REPO_ID = /^([A-Za-z0-9][\w.-]*)\/([\w.-]+)(?:@([\w.-]+(?:\/[\w.-]+)*))?$/;

export interface RepoId {
  org: string;
  name: string;
  revision: string;
}

/** The parts of a Hugging Face model id, or null when `spec` does not look like one. */
export function parseRepoId(spec: string): RepoId | null {
  const m = REPO_ID.exec(spec);
  if (!m || m[2] === '.' || m[2] === '..') return null;
  const revision = m[3] ?? 'main';
  if (revision.split('/').some((seg) => seg === '.' || seg === '..')) return null;
  return { org: m[1], name: m[2], revision };
}

function isDir(p: string): boolean {
  try {
    return statSync(p).isDirectory();
  } catch {
    return false;
  }
}

function readRef(path: string): string | null {
  try {
    return readFileSync(path, 'utf8').trim();
  } catch {
    return null;
  }
}

/** The models a cache folder holds, as ids (at most `max`). */
function cachedModels(cacheDir: string, max: number): string[] {
  let names: string[];
  try {
    names = readdirSync(cacheDir);
  } catch {
    return [];
  }
  return names
    .filter((n) => n.startsWith('models--') && n.split('--').length === 3)
    .sort()
    .slice(0, max)
    .map((n) => n.slice('models--'.length).replace('--', '/'));
}

/**
 * A folder that is the cache itself, a models--org--name folder in it or its snapshots folder: refused with what to
 * pass instead.
 */
function refuseCacheFolder(dir: string): void {
  const trimmed = dir.replace(/[/\\]+$/, '');
  if (basename(trimmed) === 'snapshots' && /^models--/.test(basename(dirname(resolve(trimmed))))) {
    throw new DejavuError('the snapshots folder of a Hugging Face cache entry: pass one snapshot in it, or --model ORG/NAME', dir);
  }
  const m = /^models--([^-].*?)--(.+)$/.exec(basename(trimmed));
  if (m && (isDir(join(dir, 'snapshots')) || isDir(join(dir, 'refs')))) {
    const commit = readRef(join(dir, 'refs', 'main'));
    const snapshot = commit ? ` or its snapshot folder ${join(dir, 'snapshots', commit)}` : '';
    throw new DejavuError(`a Hugging Face cache entry, not a model folder: pass --model ${m[1]}/${m[2]}${snapshot}`, dir);
  }
  const models = cachedModels(dir, 5);
  if (models.length > 0) {
    throw new DejavuError(
      `the Hugging Face cache folder, not a model folder: pass --model ORG/NAME (it holds ${models.join(', ')}` +
        `${cachedModels(dir, 6).length > 5 ? ', ...' : ''}); set HF_HUB_CACHE to use another cache`,
      dir,
    );
  }
}

/**
 * The folder `--model` names. An existing folder wins (a cache folder or a models--org--name folder is refused with a
 * hint). Otherwise an `org/name[@revision]` id is looked up in the cache: `refs/<revision>` gives the commit (or the
 * revision is a commit itself), `snapshots/<commit>` is the folder, and it must hold config.json. Anything else is
 * returned as given, for the loaders to report.
 */
export function resolveModelDir(spec: string, env: NodeJS.ProcessEnv = process.env, home: string = homedir()): string {
  if (isDir(spec)) {
    if (!existsSync(join(spec, 'config.json'))) refuseCacheFolder(spec);
    return spec;
  }
  const id = parseRepoId(spec);
  if (!id || existsSync(spec)) return spec;

  const cache = hubCacheDir(env, home);
  const repoDir = join(cache.dir, `models--${id.org}--${id.name}`);
  const where = `cache ${cache.dir}, from ${cache.from}`;
  if (!isDir(repoDir)) {
    throw new DejavuError(
      `no such folder, and ${id.org}/${id.name} is not in the Hugging Face cache (looked for ${repoDir}; ${where}). ` +
        `Download it first (huggingface-cli download ${id.org}/${id.name}), set HF_HUB_CACHE or HF_HOME, or pass a model folder`,
      spec,
    );
  }
  let commit = readRef(join(repoDir, 'refs', id.revision));
  if (commit === null) {
    if (!/^[0-9a-f]{40}$/.test(id.revision)) {
      throw new DejavuError(
        `${id.org}/${id.name} is in the Hugging Face cache but has no revision '${id.revision}' (looked for ${join(repoDir, 'refs', id.revision)}; ${where})`,
        spec,
      );
    }
    commit = id.revision;
  }
  const snapshot = join(repoDir, 'snapshots', commit);
  if (!isDir(snapshot)) {
    throw new DejavuError(`${id.org}/${id.name}@${id.revision}: no snapshot ${snapshot} in the Hugging Face cache (${where})`, spec);
  }
  if (!existsSync(join(snapshot, 'config.json'))) {
    throw new DejavuError(
      `${id.org}/${id.name}@${id.revision}: the cached snapshot ${snapshot} has no config.json (an incomplete download?)`,
      spec,
    );
  }
  return snapshot;
}
