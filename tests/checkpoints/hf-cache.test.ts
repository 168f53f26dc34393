/**
 * `--model facebook/opt-1.3b`: Hugging Face ids resolved offline from a cache laid out as huggingface_hub writes it
 * (blobs named by hash, snapshots/<commit>/ of relative symlinks, refs/<revision> holding the commit), built in a temp
 * folder. The loaders and the CLI (dist/cli/main.js) read the resolved snapshot.
 */
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { hubCacheDir, parseRepoId, resolveModelDir } from '../../checkpoints/hf-cache.js';
import { loadOptCheckpoint } from '../../checkpoints/opt-checkpoint.js';
import { DejavuError } from '../../common/errors.js';
import { loadTokenizer } from '../../datasets/tokenizer.js';
import { REPO_ROOT } from '../helpers/fixtures.js';

const tmp = mkdtempSync(join(tmpdir(), 'dejavu-hf-cache-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

const COMMIT_A = 'a'.repeat(40);
const COMMIT_B = '0123456789abcdef0123456789abcdef01234567';

/**
 * A cache entry as huggingface_hub writes it: each file's bytes once under blobs/<sha256>, each snapshot a folder of
 * relative symlinks to them, each ref a file holding a commit.
 */
function cacheEntry(cache: string, id: string, snapshots: Record<string, Record<string, Buffer | string>>, refs: Record<string, string>): string {
  const repo = join(cache, `models--${id.replace('/', '--')}`);
  for (const [commit, files] of Object.entries(snapshots)) {
    for (const [name, content] of Object.entries(files)) {
      const bytes = Buffer.from(content);
      const blob = join(repo, 'blobs', createHash('sha256').update(bytes).digest('hex'));
      mkdirSync(dirname(blob), { recursive: true });
      if (!existsSync(blob)) writeFileSync(blob, bytes);
      const link = join(repo, 'snapshots', commit, name);
      mkdirSync(dirname(link), { recursive: true });
      symlinkSync(relative(dirname(link), blob), link);
    }
  }
  for (const [ref, commit] of Object.entries(refs)) {
    mkdirSync(dirname(join(repo, 'refs', ref)), { recursive: true });
    writeFileSync(join(repo, 'refs', ref), commit);
  }
  return repo;
}

describe('the cache folder and ids', () => {
  it("follows huggingface_hub's order: HF_HUB_CACHE, HUGGINGFACE_HUB_CACHE, HF_HOME/hub, XDG_CACHE_HOME, ~/.cache", () => {
    const all = { HF_HUB_CACHE: '/a', HUGGINGFACE_HUB_CACHE: '/b', HF_HOME: '/c', XDG_CACHE_HOME: '/d' };
    expect(hubCacheDir(all, '/home/u')).toEqual({ dir: '/a', from: 'HF_HUB_CACHE' });
    expect(hubCacheDir({ ...all, HF_HUB_CACHE: '' }, '/home/u').dir).toBe('/b');
    expect(hubCacheDir({ HF_HOME: '/c', XDG_CACHE_HOME: '/d' }, '/home/u').dir).toBe('/c/hub');
    expect(hubCacheDir({ XDG_CACHE_HOME: '/d' }, '/home/u').dir).toBe('/d/huggingface/hub');
    expect(hubCacheDir({}, '/home/u').dir).toBe('/home/u/.cache/huggingface/hub');
  });

  it('ids are org/name[@revision]; paths are not ids', () => {
    expect(parseRepoId('facebook/opt-1.3b')).toEqual({ org: 'facebook', name: 'opt-1.3b', revision: 'main' });
    expect(parseRepoId(`facebook/opt-1.3b@${COMMIT_B}`)?.revision).toBe(COMMIT_B);
    expect(parseRepoId('facebook/opt-1.3b@refs/pr/1')?.revision).toBe('refs/pr/1');
    for (const s of ['./facebook/opt', '/abs/opt', 'a/b/c', 'opt-1.3b', 'a/..', 'a/b@../x', '../b', 'a/b@']) expect(parseRepoId(s), s).toBeNull();
  });
});

describe('resolveModelDir with a fake cache', () => {
  const cache = join(tmp, 'hub');
  const config = JSON.stringify({ model_type: 'opt', note: 'main' });
  const repo = cacheEntry(
    cache,
    'facebook/opt-tiny',
    {
      [COMMIT_A]: { 'config.json': config, 'tokenizer.json': '{}' },
      [COMMIT_B]: { 'config.json': JSON.stringify({ model_type: 'opt', note: 'v1' }) },
    },
    { main: COMMIT_A, v1: COMMIT_B, 'refs/pr/1': COMMIT_B },
  );
  const env = { HF_HUB_CACHE: cache };

  it('org/name -> snapshots/<refs/main>, read through the blob symlinks; @tag, @refs/pr/N and @commit too', () => {
    const dir = resolveModelDir('facebook/opt-tiny', env);
    expect(dir).toBe(join(repo, 'snapshots', COMMIT_A));
    expect(readFileSync(join(dir, 'config.json'), 'utf8')).toBe(config);
    expect(resolveModelDir('facebook/opt-tiny@main', env)).toBe(dir);
    expect(resolveModelDir('facebook/opt-tiny@v1', env)).toBe(join(repo, 'snapshots', COMMIT_B));
    expect(resolveModelDir('facebook/opt-tiny@refs/pr/1', env)).toBe(join(repo, 'snapshots', COMMIT_B));
    expect(resolveModelDir(`facebook/opt-tiny@${COMMIT_B}`, env)).toBe(join(repo, 'snapshots', COMMIT_B));
  });

  it('HF_HOME/hub and ~/.cache/huggingface/hub are used when HF_HUB_CACHE is not set', () => {
    const home = join(tmp, 'home');
    cacheEntry(join(home, '.cache', 'huggingface', 'hub'), 'org/m', { [COMMIT_A]: { 'config.json': '{}' } }, { main: COMMIT_A });
    expect(resolveModelDir('org/m', {}, home)).toBe(join(home, '.cache', 'huggingface', 'hub', 'models--org--m', 'snapshots', COMMIT_A));
    const hfHome = join(tmp, 'hf-home');
    cacheEntry(join(hfHome, 'hub'), 'org/m', { [COMMIT_B]: { 'config.json': '{}' } }, { main: COMMIT_B });
    expect(resolveModelDir('org/m', { HF_HOME: hfHome }, home)).toBe(join(hfHome, 'hub', 'models--org--m', 'snapshots', COMMIT_B));
  });

  it('an existing local folder wins over the cache, even when it looks like an id', () => {
    const cwd = process.cwd();
    const work = join(tmp, 'work');
    mkdirSync(join(work, 'facebook', 'opt-tiny'), { recursive: true });
    writeFileSync(join(work, 'facebook', 'opt-tiny', 'config.json'), '{}');
    process.chdir(work);
    try {
      expect(resolveModelDir('facebook/opt-tiny', env)).toBe('facebook/opt-tiny');
    } finally {
      process.chdir(cwd);
    }
    expect(resolveModelDir(join(repo, 'snapshots', COMMIT_A), env)).toBe(join(repo, 'snapshots', COMMIT_A));
  });

  it('absent: one error naming the id, the folder it looked for and the setting that chose the cache', () => {
    const err = (() => {
      try {
        resolveModelDir('facebook/opt-absent', env);
      } catch (e) {
        return e as Error;
      }
      return null;
    })();
    expect(err).toBeInstanceOf(DejavuError);
    expect(err?.message).toBe(
      `facebook/opt-absent: no such folder, and facebook/opt-absent is not in the Hugging Face cache (looked for ` +
        `${join(cache, 'models--facebook--opt-absent')}; cache ${cache}, from HF_HUB_CACHE). Download it first ` +
        `(huggingface-cli download facebook/opt-absent), set HF_HUB_CACHE or HF_HOME, or pass a model folder`,
    );
    expect(() => resolveModelDir('facebook/opt-tiny@nope', env)).toThrow(`has no revision 'nope' (looked for ${join(repo, 'refs', 'nope')}`);
    expect(() => resolveModelDir(`facebook/opt-tiny@${'c'.repeat(40)}`, env)).toThrow(`no snapshot ${join(repo, 'snapshots', 'c'.repeat(40))}`);
    // Not an id and not there: left to the loaders, which name it.
    expect(resolveModelDir(join(tmp, 'nowhere'), env)).toBe(join(tmp, 'nowhere'));
  });

  it('an incomplete download (a dangling blob link, no refs) is an error saying so', () => {
    const c = join(tmp, 'partial');
    const r = cacheEntry(c, 'org/partial', { [COMMIT_A]: { 'config.json': '{}' } }, { main: COMMIT_A });
    for (const b of readdirSync(join(r, 'blobs'))) rmSync(join(r, 'blobs', b));
    expect(() => resolveModelDir('org/partial', { HF_HUB_CACHE: c })).toThrow(/has no config\.json \(an incomplete download\?\)/);
    rmSync(join(r, 'refs'), { recursive: true });
    expect(() => resolveModelDir('org/partial', { HF_HUB_CACHE: c })).toThrow(/has no revision 'main'/);
  });

  it('the cache folder, a models--org--name folder or its snapshots folder as --model: refused with what to pass', () => {
    expect(() => resolveModelDir(cache, env)).toThrow(
      `${cache}: the Hugging Face cache folder, not a model folder: pass --model ORG/NAME (it holds facebook/opt-tiny)`,
    );
    expect(() => resolveModelDir(repo, env)).toThrow(
      `${repo}: a Hugging Face cache entry, not a model folder: pass --model facebook/opt-tiny or its snapshot folder ${join(repo, 'snapshots', COMMIT_A)}`,
    );
    expect(() => resolveModelDir(join(repo, 'snapshots') + '/', env)).toThrow(/the snapshots folder of a Hugging Face cache entry/);
    // Any other folder without config.json is left to the loaders.
    mkdirSync(join(tmp, 'plain'), { recursive: true });
    expect(resolveModelDir(join(tmp, 'plain'), env)).toBe(join(tmp, 'plain'));
  });
});

describe('the example model from a fake cache', () => {
  const MODEL = join(REPO_ROOT, 'examples', 'opt-mini');
  const TEXT = join(REPO_ROOT, 'examples', 'c4mini', 'c4mini-validation.00000-of-00001.json.gz');
  const cache = join(tmp, 'opt-mini-hub');
  const files: Record<string, Buffer> = {};
  for (const f of readdirSync(MODEL)) files[f] = readFileSync(join(MODEL, f));
  cacheEntry(cache, 'facebook/opt-mini', { [COMMIT_A]: files }, { main: COMMIT_A });

  it('loads through the snapshot symlinks: same weights fingerprint and tokens as the folder', async () => {
    const dir = resolveModelDir('facebook/opt-mini', { HF_HUB_CACHE: cache });
    const [a, b] = await Promise.all([loadOptCheckpoint(dir, { quiet: true }), loadOptCheckpoint(MODEL, { quiet: true })]);
    expect(a.fingerprint).toBe(b.fingerprint);
    const [ta, tb] = await Promise.all([loadTokenizer(dir), loadTokenizer(MODEL)]);
    expect(Array.from(ta.encode('Hello cache', 8))).toEqual(Array.from(tb.encode('Hello cache', 8)));
  });

  const cli = join(REPO_ROOT, 'dist', 'cli', 'main.js');
  const run = (args: string[]) =>
    spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', env: { ...process.env, HF_HUB_CACHE: cache, HF_HOME: '' } });

  it.skipIf(!existsSync(cli))('the CLI takes --model ORG/NAME (eval ppl gives the folder\'s result); absent ids and the cache folder are one-line errors', () => {
    const ppl = (model: string) => ['eval', 'ppl', '--model', model, '--data', TEXT, '--docs', '2', '--max-len', '16', '--threads', '1', '--backend', 'js', '--json'];
    const viaId = run(ppl('facebook/opt-mini'));
    expect(viaId.status, viaId.stderr).toBe(0);
    const viaDir = run(ppl(MODEL));
    expect(viaDir.status, viaDir.stderr).toBe(0);
    expect(JSON.parse(viaId.stdout).ppl).toBe(JSON.parse(viaDir.stdout).ppl);

    for (const [model, message] of [
      ['facebook/opt-absent', `error: facebook/opt-absent: no such folder, and facebook/opt-absent is not in the Hugging Face cache (looked for ${join(cache, 'models--facebook--opt-absent')}`],
      [cache, `error: ${cache}: the Hugging Face cache folder, not a model folder: pass --model ORG/NAME (it holds facebook/opt-mini)`],
    ]) {
      const r = run(ppl(model));
      expect(r.status, r.stderr).toBe(1);
      expect(r.stderr).not.toMatch(/^\s+at /m);
      const errors = r.stderr.split('\n').filter((l) => l.startsWith('error:'));
      expect(errors).toHaveLength(1);
      expect(errors[0].startsWith(message), errors[0]).toBe(true);
    }
  });
});
