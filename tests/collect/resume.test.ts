/**
 * Interrupt and resume: a collect killed mid-run (SIGKILL: no cleanup at all; SIGINT: the handler's cleanup) and
 * rerun with the same command ends with shards byte-identical to an uninterrupted run. Runs the built CLI
 * (dist/cli/main.js, which `npm ci` builds through `prepare`) as the child process to kill.
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { collect, type CollectOptions } from '../../collect/collect.js';
import { readShard } from '../../collect/read-shard.js';
import { C4_VALID_JSON, HAVE_FIXTURES, OPT_MINI, REPO_ROOT } from '../helpers/fixtures.js';

const CLI = join(REPO_ROOT, 'dist', 'cli', 'main.js');
// 16 documents of <= 64 tokens in shards of <= 200 tokens: five or six shards, a few seconds of forward passes.
const ARGS = { docs: 16, maxLen: 64, shardTokens: 200 };
const cliArgs = (out: string) => [
  CLI, 'collect', '--model', OPT_MINI, '--data', C4_VALID_JSON, '--out', out,
  '--docs', String(ARGS.docs), '--max-len', String(ARGS.maxLen), '--shard-tokens', String(ARGS.shardTokens),
];
const opts = (out: string): CollectOptions => ({ model: OPT_MINI, data: [C4_VALID_JSON], out, quiet: true, ...ARGS });

/** Every file under `out`, relative path -> bytes (hidden temp files included, so leftovers show up). */
function snapshot(out: string): Map<string, Buffer> {
  const files = new Map<string, Buffer>();
  for (const e of readdirSync(out, { recursive: true, withFileTypes: true })) {
    if (!e.isFile()) continue;
    const p = join(e.parentPath, e.name);
    files.set(p.slice(out.length + 1), readFileSync(p));
  }
  return files;
}
const shardsOf = (snap: Map<string, Buffer>) => [...snap.keys()].filter((k) => /layer_\d+\/shard_\d+\.arrow$/.test(k)).sort();

/** Start the CLI, wait until `ready(out)` holds, then send `signal`; resolves with the exit code/signal. */
function runAndKill(out: string, signal: NodeJS.Signals, ready: () => boolean): Promise<{ code: number | null; signal: string | null; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, cliArgs(out), { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (b) => (stderr += b));
    let sent = false;
    const timer = setInterval(() => {
      if (!sent && ready()) {
        sent = true;
        child.kill(signal);
      }
    }, 5);
    child.on('error', reject);
    child.on('exit', (code, sig) => {
      clearInterval(timer);
      resolve({ code, signal: sig, stderr });
    });
  });
}

describe.skipIf(!HAVE_FIXTURES || !existsSync(CLI))('collect: interrupt + rerun = uninterrupted run, byte for byte', () => {
  let root: string;
  let reference: Map<string, Buffer>;
  beforeAll(async () => {
    root = mkdtempSync(join(tmpdir(), 'dejavu-collect-resume-'));
    await collect(opts(join(root, 'ref')));
    reference = snapshot(join(root, 'ref'));
  });
  afterAll(() => rmSync(root, { recursive: true, force: true }));

  it('the uninterrupted run has several shards of whole documents', () => {
    const m = JSON.parse(reference.get('manifest.json')!.toString());
    expect(m.num_shards).toBeGreaterThanOrEqual(4);
    expect(shardsOf(reference)).toHaveLength(6 * m.num_shards);
    for (const s of m.shards) expect(s.rows).toBeLessThanOrEqual(200);
    // Shards hold whole documents: consecutive shards never share a document.
    for (let i = 1; i < m.shards.length; i++) expect(m.shards[i].first_doc).toBe(m.shards[i - 1].last_doc + 1);
  });

  it('SIGKILL after shard 2 of the last layer, then the same command: identical shards', async () => {
    const out = join(root, 'kill');
    const lastLayerShard2 = join(out, 'layer_05', 'shard_00002.arrow');
    const r = await runAndKill(out, 'SIGKILL', () => existsSync(lastLayerShard2));
    expect(r.signal).toBe('SIGKILL');
    expect(existsSync(join(out, 'manifest.json'))).toBe(false); // killed before the end
    // What a reader sees (shard_*.arrow) is only complete files; a half-written one is a hidden .tmp.
    const killed = snapshot(out);
    for (const k of shardsOf(killed)) expect(readShard(join(out, k)).rows).toBeGreaterThan(0);
    const res = await collect(opts(out));
    expect(res.shardsResumed).toBeGreaterThanOrEqual(2);
    expect(res.shardsWritten).toBe(res.manifest.num_shards - res.shardsResumed);
    const after = snapshot(out);
    expect(shardsOf(after)).toEqual(shardsOf(reference));
    for (const k of shardsOf(reference)) expect(after.get(k)!.equals(reference.get(k)!), k).toBe(true);
    expect([...after.keys()].filter((k) => k.endsWith('.tmp'))).toEqual([]); // the rerun removed the leftovers
    const m = JSON.parse(after.get('manifest.json')!.toString());
    const mr = JSON.parse(reference.get('manifest.json')!.toString());
    expect({ ...m, seconds: 0 }).toEqual({ ...mr, seconds: 0 });
  });

  it('SIGINT mid-shard: exits 130 leaving no temp file; the rerun completes identically', async () => {
    const out = join(root, 'int');
    const firstShard = join(out, 'layer_00', 'shard_00001.arrow');
    const r = await runAndKill(out, 'SIGINT', () => existsSync(firstShard));
    expect(r.code).toBe(130);
    expect(r.stderr).toMatch(/interrupted \(SIGINT\); rerun the same command to resume/);
    const interrupted = snapshot(out);
    expect([...interrupted.keys()].filter((k) => k.endsWith('.tmp') || k.endsWith('.lock'))).toEqual([]);
    await collect(opts(out));
    const after = snapshot(out);
    for (const k of shardsOf(reference)) expect(after.get(k)!.equals(reference.get(k)!), k).toBe(true);
  });

  it('a complete folder is left as is; a deleted shard is redone identically', async () => {
    const out = join(root, 'kill');
    const again = await collect(opts(out));
    expect(again.shardsWritten).toBe(0);
    unlinkSync(join(out, 'layer_03', 'shard_00003.arrow'));
    const redo = await collect(opts(out));
    expect(redo.shardsResumed).toBe(3);
    const after = snapshot(out);
    for (const k of shardsOf(reference)) expect(after.get(k)!.equals(reference.get(k)!), k).toBe(true);
  });
});

/**
 * A collect stopped before its first shard is finished (with the default --shard-tokens every small collect is one
 * shard, so any interrupt lands here): the state file exists before any layer folder, so the same command resumes.
 */
describe.skipIf(!HAVE_FIXTURES)('collect: interrupted before the first shard, then the same command', () => {
  let root: string;
  let reference: Map<string, Buffer>;
  // 40 documents of <= 64 tokens: one shard with the default --shard-tokens.
  const ONE = { docs: 40, maxLen: 64 };
  const one = (out: string, over: Partial<CollectOptions> = {}): CollectOptions => ({ model: OPT_MINI, data: [C4_VALID_JSON], out, quiet: true, ...ONE, ...over });
  const sameAsReference = (out: string) => {
    const after = snapshot(out);
    expect(shardsOf(after)).toEqual(shardsOf(reference));
    for (const k of shardsOf(reference)) expect(after.get(k)!.equals(reference.get(k)!), k).toBe(true);
    expect([...after.keys()].filter((k) => k.endsWith('.tmp') || k.endsWith('.lock'))).toEqual([]);
    const m = JSON.parse(after.get('manifest.json')!.toString());
    const mr = JSON.parse(reference.get('manifest.json')!.toString());
    expect({ ...m, seconds: 0 }).toEqual({ ...mr, seconds: 0 });
  };
  beforeAll(async () => {
    root = mkdtempSync(join(tmpdir(), 'dejavu-collect-first-'));
    await collect(one(join(root, 'ref')));
    reference = snapshot(join(root, 'ref'));
    expect(JSON.parse(reference.get('manifest.json')!.toString()).num_shards).toBe(1);
  });
  afterAll(() => rmSync(root, { recursive: true, force: true }));

  it('an error after the layer folders exist (as Ctrl-C or a full disk would stop it): the rerun resumes', async () => {
    const out = join(root, 'thrown');
    let seen = 0;
    const stop = () => {
      if (++seen === 3) throw new Error('stopped after 3 documents');
    };
    await expect(collect(one(out, { onDocument: stop }))).rejects.toThrow(/stopped after 3 documents/);
    expect(existsSync(join(out, 'layer_00'))).toBe(true);
    expect(shardsOf(snapshot(out))).toEqual([]);
    const res = await collect(one(out));
    expect(res.shardsResumed).toBe(0);
    expect(res.shardsWritten).toBe(1);
    sameAsReference(out);
  });

  it.skipIf(!existsSync(CLI))('SIGKILL while the first shard is written: the same command completes identically', async () => {
    const out = join(root, 'killed');
    const writing = () => existsSync(join(out, 'layer_05')) && readdirSync(join(out, 'layer_05')).some((n) => n.endsWith('.tmp'));
    const args = [CLI, 'collect', '--model', OPT_MINI, '--data', C4_VALID_JSON, '--out', out, '--docs', String(ONE.docs), '--max-len', String(ONE.maxLen)];
    const r = await new Promise<{ signal: string | null }>((resolve, reject) => {
      const child = spawn(process.execPath, args, { stdio: 'ignore' });
      const timer = setInterval(() => writing() && child.kill('SIGKILL'), 2);
      child.on('error', reject);
      child.on('exit', (_code, signal) => {
        clearInterval(timer);
        resolve({ signal });
      });
    });
    expect(r.signal).toBe('SIGKILL');
    const killed = snapshot(out);
    expect(shardsOf(killed)).toEqual([]);
    expect([...killed.keys()].some((k) => k.endsWith('.tmp'))).toBe(true); // SIGKILL leaves the temp files
    await collect(one(out));
    sameAsReference(out);
  });

  it('layer folders without a state that hold only temp files (left by versions that wrote the state later) are cleared', async () => {
    const out = join(root, 'legacy');
    mkdirSync(join(out, 'layer_00'), { recursive: true });
    mkdirSync(join(out, 'layer_04'));
    writeFileSync(join(out, 'layer_00', '.shard_00000.arrow.12345.tmp'), 'partial');
    await collect(one(out));
    sameAsReference(out);
  });
});
