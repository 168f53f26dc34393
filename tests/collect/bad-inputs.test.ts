/** Bad inputs: each is a DejavuError naming the flag or folder, and none leaves partial output behind. */
import { spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { collect } from '../../collect/collect.js';
import { C4_VALID_JSON, HAVE_FIXTURES, OPT_MINI, REPO_ROOT, TINY_BIN } from '../helpers/fixtures.js';

describe.skipIf(!HAVE_FIXTURES)('collect refuses bad inputs', () => {
  let root: string;
  const base = { model: OPT_MINI, data: [C4_VALID_JSON], docs: 1, maxLen: 16, quiet: true };
  beforeAll(() => {
    root = mkdtempSync(join(tmpdir(), 'dejavu-collect-bad-'));
  });
  afterAll(() => rmSync(root, { recursive: true, force: true }));

  it('--layers out of range, before anything is written', async () => {
    const out = join(root, 'layers');
    await expect(collect({ ...base, out, layers: '0,6' })).rejects.toThrow(/--layers: layer 6 is out of range: the model has 6 layers/);
    expect(readdirSync(out)).toEqual([]);
  });

  it('an empty data set (no lines; only malformed lines)', async () => {
    const empty = join(root, 'empty.jsonl');
    writeFileSync(empty, '');
    const out = join(root, 'empty-out');
    await expect(collect({ ...base, data: [empty], out, docs: undefined })).rejects.toThrow(/no documents in .*empty\.jsonl/);
    const bad = join(root, 'bad.jsonl');
    writeFileSync(bad, '{"text": 1}\nnot json\n');
    await expect(collect({ ...base, data: [bad], out, docs: undefined })).rejects.toThrow(/no documents in .*bad\.jsonl.*2 malformed/);
    expect(readdirSync(out)).toEqual([]); // no shard folders, no state, no lock
  });

  it('an unwritable output folder (a path through a file)', async () => {
    const file = join(root, 'a-file');
    writeFileSync(file, 'x');
    await expect(collect({ ...base, out: join(file, 'out') })).rejects.toThrow(/a-file\/out: cannot write the output folder \(ENOTDIR\)/);
    await expect(collect({ ...base, out: file })).rejects.toThrow(/cannot write the output folder/);
  });

  // root ignores permission bits, so a read-only folder only fails for a normal user.
  it.skipIf(process.getuid?.() === 0)('an unwritable output folder (no write permission)', async () => {
    const ro = join(root, 'ro');
    mkdirSync(ro);
    chmodSync(ro, 0o555);
    try {
      await expect(collect({ ...base, out: join(ro, 'out') })).rejects.toThrow(/cannot write the output folder \(EACCES\)/);
    } finally {
      chmodSync(ro, 0o755);
    }
  });

  it('an output folder from another model; other arguments; unknown contents; then --force', async () => {
    const out = join(root, 'mixed');
    await collect({ ...base, out });
    const state = readFileSync(join(out, 'collect-state.json'), 'utf8');
    // tiny-opt-bin-fp16 is another model (and has no tokenizer: the refusal comes before the tokenizer is needed).
    await expect(collect({ ...base, model: TINY_BIN, out })).rejects.toThrow(
      /mixed\/collect-state\.json: shards for other weights: weights_sha256 [0-9a-f]{16}… recorded here \(model .*opt-mini\), [0-9a-f]{16}… in .*tiny-opt-bin-fp16; use --force/,
    );
    await expect(collect({ ...base, out, maxLen: 32 })).rejects.toThrow(/was collected with other arguments \(max_len: 16 there, 32 now\)/);
    await expect(collect({ ...base, out, layers: '1' })).rejects.toThrow(/other arguments \(layers: \[0,1,2,3,4,5\] there, \[1\] now\)/);
    expect(readFileSync(join(out, 'collect-state.json'), 'utf8')).toBe(state); // refusals change nothing
    const r = await collect({ ...base, out, maxLen: 32, layers: '1', force: true });
    expect(r.manifest.layers).toEqual([1]);
    expect(readdirSync(out).sort()).toEqual(['collect-state.json', 'layer_01', 'manifest.json']);

    // A layer folder holding a shard, without a state that says which run wrote it, is not taken as ours.
    const foreign = join(root, 'foreign');
    mkdirSync(join(foreign, 'layer_00'), { recursive: true });
    writeFileSync(join(foreign, 'layer_00', 'shard_00000.arrow'), 'x');
    await expect(collect({ ...base, out: foreign })).rejects.toThrow(/foreign: holds layer_00 but no collect-state\.json; use --force/);
    expect(readFileSync(join(foreign, 'layer_00', 'shard_00000.arrow'), 'utf8')).toBe('x');
  });

  it('a folder another live collect is writing to (its lock names a running pid); a dead pid is taken over', async () => {
    const out = join(root, 'locked');
    mkdirSync(out);
    writeFileSync(join(out, '.collect.lock'), String(process.ppid)); // a live process other than this one
    await expect(collect({ ...base, out })).rejects.toThrow(new RegExp(`locked: another collect \\(pid ${process.ppid}\\) is writing here`));
    writeFileSync(join(out, '.collect.lock'), '999999999'); // no such process: a leftover of a killed run
    const r = await collect({ ...base, out });
    expect(r.manifest.tokens).toBe(16);
    expect(existsSync(join(out, '.collect.lock'))).toBe(false);
  });

  it('a corrupt state file', async () => {
    const out = join(root, 'corrupt');
    mkdirSync(out);
    writeFileSync(join(out, 'collect-state.json'), '{"format": "dejavu-collect-state/1", "mod');
    await expect(collect({ ...base, out })).rejects.toThrow(/collect-state\.json: unreadable .*use --force/);
  });

  const cli = join(REPO_ROOT, 'dist', 'cli', 'main.js');
  it.skipIf(!existsSync(cli))('the CLI prints the message and exits 1 without a stack trace', () => {
    const res = spawnSync(process.execPath, [cli, 'collect', '--model', OPT_MINI, '--data', C4_VALID_JSON, '--out', join(root, 'cli'), '--layers', '9'], {
      encoding: 'utf8',
    });
    expect(res.status).toBe(1);
    expect(res.stderr).toMatch(/^error: --layers: layer 9 is out of range: the model has 6 layers \(0-5\)\n$/m);
    expect(res.stderr).not.toMatch(/at .*\.js:\d+/);
  });
});
