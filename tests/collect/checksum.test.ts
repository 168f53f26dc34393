/**
 * Per-shard checksums: collect records each file's SHA-256 in manifest.json (computed while writing), train's shard
 * reader checks every file against it before parsing it, and names the file when a byte changed (a flipped bit in a
 * data buffer used to train silently; a damaged footer used to fail inside the Arrow parser, or hang it). Shards
 * without recorded checksums (collected before them) are read with one warning. Also the figures collect reports on
 * a folder that was already complete, and its summary on stdout.
 */
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { appendFileSync, cpSync, existsSync, mkdtempSync, readFileSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { collect, type CollectOptions } from '../../collect/collect.js';
import { readShard } from '../../collect/read-shard.js';
import { DejavuError } from '../../common/errors.js';
import { openShardSet } from '../../train/shard-reader.js';
import { C4_VALID_JSON, HAVE_FIXTURES, OPT_MINI, REPO_ROOT } from '../helpers/fixtures.js';

const sha256 = (path: string) => createHash('sha256').update(readFileSync(path)).digest('hex');
const readJson = (path: string) => JSON.parse(readFileSync(path, 'utf8'));

describe.skipIf(!HAVE_FIXTURES)('shard checksums', () => {
  let root: string;
  let good: string;
  const opts = (out: string): CollectOptions => ({
    model: OPT_MINI,
    data: [C4_VALID_JSON],
    out,
    docs: 6,
    maxLen: 32,
    shardTokens: 64,
    layers: '0-1',
    workers: 1,
    quiet: true,
  });
  /** A copy of the good folder to damage. */
  const copy = (name: string) => {
    const dir = join(root, name);
    cpSync(good, dir, { recursive: true });
    return dir;
  };
  const open = async (dir: string) => {
    const warnings: string[] = [];
    const set = await openShardSet(dir, { warn: (m) => warnings.push(m) });
    return { set, warnings };
  };
  /** The manifest and the state as collect wrote them before checksums existed. */
  const dropChecksums = (dir: string) => {
    for (const file of ['manifest.json', 'collect-state.json']) {
      const j = readJson(join(dir, file));
      for (const s of j.shards) delete s.sha256;
      writeFileSync(join(dir, file), JSON.stringify(j, null, 2) + '\n');
    }
  };

  beforeAll(async () => {
    root = mkdtempSync(join(tmpdir(), 'dejavu-checksum-'));
    good = join(root, 'good');
    await collect(opts(good));
  });
  afterAll(() => rmSync(root, { recursive: true, force: true }));

  it('the manifest and the state record every file\'s SHA-256, in `layers` order', () => {
    const m = readJson(join(good, 'manifest.json'));
    expect(m.num_shards).toBeGreaterThanOrEqual(2);
    const state = readJson(join(good, 'collect-state.json'));
    for (const [i, s] of m.shards.entries()) {
      expect(s.sha256).toEqual(m.layers.map((l: number) => sha256(join(good, `layer_0${l}`, s.file))));
      expect(state.shards[i].sha256).toEqual(s.sha256);
    }
  });

  it('a byte flipped inside a data buffer: refused before training, naming the shard', async () => {
    expect((await open(good)).warnings).toEqual([]);
    const dir = copy('flipped');
    const f = join(dir, 'layer_01', 'shard_00001.arrow');
    const bytes = readFileSync(f);
    bytes[bytes.length >> 1] ^= 0x10; // an fp16 activation: the Arrow structure stays valid
    writeFileSync(f, bytes);
    const err = await openShardSet(dir).catch((e) => e);
    expect(err).toBeInstanceOf(DejavuError);
    expect(err.message).toMatch(
      new RegExp(`^${f}: checksum mismatch: SHA-256 [0-9a-f]{16}\\.\\.\\., manifest\\.json records [0-9a-f]{16}\\.\\.\\. \\(the file changed after collect wrote it\\); delete it and rerun the same dejavu collect command to rewrite it$`),
    );
    // Following the hint rewrites that shard (and the ones after it) as they were.
    unlinkSync(f);
    await collect(opts(dir));
    expect(sha256(f)).toBe(sha256(join(good, 'layer_01', 'shard_00001.arrow')));
    expect((await open(dir)).warnings).toEqual([]);
  });

  it('a damaged Arrow footer: the checksum names the shard; without checksums both readers name it too', async () => {
    const dir = copy('footer');
    const f = join(dir, 'layer_00', 'shard_00000.arrow');
    const bytes = readFileSync(f);
    const n = bytes.length;
    bytes.fill(0, n - 10 - bytes.readInt32LE(n - 10), n - 10); // the footer flatbuffer (its length and magic kept)
    writeFileSync(f, bytes);
    await expect(openShardSet(dir)).rejects.toThrow(`${f}: checksum mismatch`);
    dropChecksums(dir);
    await expect(openShardSet(dir, { warn: () => {} })).rejects.toThrow(new RegExp(`^${f}: unreadable Arrow shard \\(corrupted footer or schema\\?\\)`));
    expect(() => readShard(f)).toThrow(new RegExp(`^${f}: not a readable Arrow IPC file \\(corrupted footer or schema\\?\\)`));
  });

  it('a shard of another size than recorded: refused naming both sizes', async () => {
    const dir = copy('grown');
    const f = join(dir, 'layer_00', 'shard_00001.arrow');
    const size = readFileSync(f).length;
    appendFileSync(f, 'x');
    await expect(openShardSet(dir)).rejects.toThrow(`${f}: ${size + 1} bytes but manifest.json records ${size} (truncated or replaced)`);
  });

  it('shards collected before checksums: read with one warning; rerunning the same collect adds the checksums', async () => {
    const dir = copy('legacy');
    dropChecksums(dir);
    const files = readJson(join(dir, 'manifest.json')).num_shards * 2;
    const { warnings } = await open(dir);
    expect(warnings).toEqual([
      `${join(dir, 'manifest.json')}: ${files} of ${files} shard files have no recorded checksum (collected before checksums) and are read unverified; rerun the same dejavu collect command to add them (--force to rebuild)`,
    ]);
    const r = await collect(opts(dir));
    expect(r.alreadyComplete).toBe(true);
    expect(r.manifest.shards.map((s) => s.sha256)).toEqual(readJson(join(good, 'manifest.json')).shards.map((s: { sha256: string[] }) => s.sha256));
    expect((await open(dir)).warnings).toEqual([]);
  });

  it('an already complete folder reports the tokens per second of the run that produced it, not 0', async () => {
    const r = await collect(opts(good));
    expect(r.alreadyComplete).toBe(true);
    expect(r.tokensThisRun).toBe(0);
    const m = r.manifest;
    expect(m.seconds).toBeGreaterThan(0);
    expect(r.tokensPerSecond).toBe(Math.round((m.tokens / m.seconds) * 10) / 10);
  });

  const CLI = join(REPO_ROOT, 'dist', 'cli', 'main.js');
  it.skipIf(!existsSync(CLI))('the CLI prints its summary on stdout, or one JSON object with --json', () => {
    const dir = join(root, 'cli');
    const args = [CLI, 'collect', '--model', OPT_MINI, '--data', C4_VALID_JSON, '--out', dir, '--docs', '2', '--max-len', '16', '--workers', '1'];
    const first = spawnSync(process.execPath, args, { encoding: 'utf8' });
    expect(first.status, first.stderr).toBe(0);
    expect(first.stdout).toMatch(/^collected 2 docs, 32 tokens, 6 layers x 1 shards, .* in [\d.]+ s; this run \d+ tok\/s\n/);
    expect(first.stdout).toMatch(/\nbytes per token per layer: [\d.]+ \(row data 1760, bound 1768\)\n/);
    expect(first.stdout.endsWith(`-> ${dir}/manifest.json\n`)).toBe(true);
    const again = spawnSync(process.execPath, [...args, '--json'], { encoding: 'utf8' });
    expect(again.status, again.stderr).toBe(0);
    expect(again.stdout.trim().split('\n')).toHaveLength(1);
    const j = JSON.parse(again.stdout);
    expect(j.already_complete).toBe(true);
    expect(j.tokens_per_second).toBeGreaterThan(0);
    expect(j.tokens_per_second).toBe(Math.round((j.tokens / j.seconds) * 10) / 10);
    expect(again.stderr).toMatch(/already complete, nothing collected now; \d+ tok\/s when collected/);
  });
});
