/**
 * The CLI as a process (dist/cli/main.js): filesystem faults as one line naming the path (an --out that is a file; a
 * full disk or a read-only folder injected by tests/cli/fault-fs.cjs, since tests run as root), existing output left
 * as it was, the --workers bound, and the small frictions (help text, flag parsing, flag names, stdout summaries).
 */
import { spawnSync, type SpawnSyncReturns } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync, copyFileSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadOptCheckpoint } from '../../checkpoints/opt-checkpoint.js';
import { writeSafetensors } from '../../checkpoints/safetensors.js';
import { REPO_ROOT } from '../helpers/fixtures.js';
import { writeSyntheticShards } from '../train/synthetic.js';
import { treeSnapshot } from '../helpers/tree.js';

const cli = join(REPO_ROOT, 'dist', 'cli', 'main.js');
const faultFs = join(REPO_ROOT, 'tests', 'cli', 'fault-fs.cjs');
const MODEL = join(REPO_ROOT, 'examples', 'opt-mini');
const TEXT = join(REPO_ROOT, 'examples', 'c4mini', 'c4mini-validation.00000-of-00001.json.gz');

let tmp: string;
let shards: string;
let predictors: string;

const run = (args: string[], fault?: string): SpawnSyncReturns<string> =>
  spawnSync(process.execPath, [...(fault ? ['--require', faultFs] : []), cli, ...args], {
    encoding: 'utf8',
    env: { ...process.env, DEJAVU_FAULT: fault ?? '' },
  });

/** Exit 1 with exactly one `error:` line on stderr and no stack trace; returns that line. */
function oneLineError(r: SpawnSyncReturns<string>): string {
  expect(r.status, r.stderr).toBe(1);
  expect(r.stderr).not.toMatch(/^\s+at /m);
  const errors = r.stderr.split('\n').filter((l) => l.startsWith('error:'));
  expect(errors, r.stderr).toHaveLength(1);
  return errors[0];
}


const trainArgs = (out: string, extra: string[] = []) => ['train', '--shards', shards, '--out', out, '--rank', '4', '--batch', '32', '--lr', '0.01', '--val-frac', '0.25', '--epochs', '1', '--target', 'mlp', '--layers', '1', '--backend', 'wasm', ...extra];

beforeAll(async () => {
  tmp = mkdtempSync(join(tmpdir(), 'dejavu-cli-'));
  shards = (await writeSyntheticShards({ dir: join(tmp, 'shards'), docs: 16, tokens: 12, docsPerShard: 8 })).dir;
  // A finished train folder for the example model: one MLP predictor for layer 1.
  const ckpt = await loadOptCheckpoint(MODEL, { quiet: true });
  const { hiddenSize: d, ffnDim: ffn } = ckpt.config;
  predictors = join(tmp, 'pred');
  mkdirSync(predictors);
  const rank = 4;
  writeSafetensors(
    join(predictors, 'layer_01.mlp.safetensors'),
    {
      w1: { dtype: 'F32', shape: [rank, d], data: Float32Array.from({ length: rank * d }, (_, i) => Math.sin(i) / 10) },
      w2: { dtype: 'F32', shape: [ffn, rank], data: Float32Array.from({ length: ffn * rank }, (_, i) => Math.cos(i) / 10) },
    },
    { target: 'mlp', layer: '1', input: 'mlp_in', lookahead: '0', rank: String(rank), model_fingerprint: ckpt.fingerprint, input_norm: 'layernorm' },
  );
  const entry = { layer: 1, target: 'mlp', recall: 0.9, precision: 0.5, f1: 0.6, true_active: 100, predicted_active: 150, k95: 120, k99: 140, tokens: 1000 };
  writeFileSync(
    join(predictors, 'metrics.json'),
    JSON.stringify({ model_fingerprint: ckpt.fingerprint, args: {}, backend: 'test', complete: true, planned: [{ layer: 1, target: 'mlp' }], layers: [entry], skipped: [], seconds: 0 }),
  );
});
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

describe.skipIf(!existsSync(cli))('filesystem errors: one line naming the path, exit 1, existing output untouched', () => {
  it('train and export: --out that is a file', () => {
    const file = join(tmp, 'out-is-a-file');
    writeFileSync(file, 'keep');
    expect(oneLineError(run(trainArgs(file)))).toBe(`error: ${file}: exists and is not a folder (--out names the output folder)`);
    expect(oneLineError(run(['export', '--predictors', predictors, '--model', MODEL, '--out', file]))).toBe(`error: ${file}: exists and is not a folder (EEXIST, mkdir)`);
    // A file where a folder is expected further up the path.
    expect(oneLineError(run(['export', '--predictors', predictors, '--model', MODEL, '--out', join(file, 'bundle')]))).toMatch(
      new RegExp(`^error: ${file}/bundle: a part of this path is a file where a folder is needed \\(ENOTDIR`),
    );
    expect(readFileSync(file, 'utf8')).toBe('keep');
  });

  it('collect: --out that is a file', () => {
    const file = join(tmp, 'collect-out-file');
    writeFileSync(file, 'keep');
    expect(oneLineError(run(['collect', '--model', MODEL, '--data', TEXT, '--docs', '1', '--max-len', '8', '--out', file]))).toMatch(new RegExp(`^error: ${file}: `));
    expect(readFileSync(file, 'utf8')).toBe('keep');
  });

  it('collect on a full disk (a shard written by a writer thread): one line naming the shard, no temp file; the rerun completes', () => {
    const out = join(tmp, 'collect-enospc');
    const args = ['collect', '--model', MODEL, '--data', TEXT, '--docs', '2', '--max-len', '16', '--out', out, '--quiet'];
    expect(oneLineError(run(args, 'ENOSPC:layer_03'))).toBe(`error: ${out}/layer_03/shard_00000.arrow: no space left on the device (ENOSPC, write)`);
    const left = readdirSync(out, { recursive: true }).map(String);
    expect(left.filter((f) => f.endsWith('.tmp'))).toEqual([]);
    expect(left).not.toContain('manifest.json');
    const again = run(args);
    expect(again.status, again.stderr).toBe(0);
    expect(readdirSync(join(out, 'layer_03'))).toEqual(['shard_00000.arrow']);
  });

  it('export over an existing bundle on a full disk or a read-only folder: the old bundle stays whole', () => {
    const bundle = join(tmp, 'bundle');
    const ok = run(['export', '--predictors', predictors, '--model', MODEL, '--out', bundle]);
    expect(ok.status, ok.stderr).toBe(0);
    const before = treeSnapshot(bundle);
    for (const fault of ['ENOSPC:predictors.safetensors', 'ENOSPC:manifest.json', `EROFS:${bundle}/`]) {
      const line = oneLineError(run(['export', '--predictors', predictors, '--model', MODEL, '--out', bundle, '--recall', '0.95'], fault));
      const what = fault.startsWith('ENOSPC') ? 'no space left on the device \\(ENOSPC, write\\)' : 'read-only file system \\(EROFS, open\\)';
      const file = fault.includes('manifest') ? 'manifest.json' : 'predictors.safetensors';
      expect(line, fault).toMatch(new RegExp(`^error: ${bundle}/${file}: ${what}$`));
      expect(treeSnapshot(bundle), fault).toEqual(before);
    }
  });

  it('train on a full disk or a read-only folder; a resumed run leaves metrics.json as it was', () => {
    const fresh = join(tmp, 'train-enospc');
    expect(oneLineError(run(trainArgs(fresh), 'ENOSPC:metrics.json'))).toBe(`error: ${join(fresh, 'metrics.json')}: no space left on the device (ENOSPC, write)`);
    expect(readdirSync(fresh)).toEqual([]);
    const ro = join(tmp, 'train-erofs');
    expect(oneLineError(run(trainArgs(ro), `EROFS:${ro}`))).toBe(`error: ${ro}: read-only file system (EROFS, mkdir)`);

    const done = join(tmp, 'train-done');
    expect(run(trainArgs(done, ['--quiet'])).status).toBe(0);
    const before = treeSnapshot(done);
    for (const fault of ['ENOSPC:metrics.json', `EROFS:${done}/`]) {
      const line = oneLineError(run(trainArgs(done, ['--resume', '--quiet']), fault));
      expect(line, fault).toMatch(new RegExp(`^error: ${done}/metrics.json: (no space left on the device|read-only file system)`));
      expect(treeSnapshot(done), fault).toEqual(before);
    }
  });
});

describe.skipIf(!existsSync(cli))('--workers upper bound', () => {
  it('train --workers 999 runs with the cores at most and says so', () => {
    const r = run(trainArgs(join(tmp, 'train-999'), ['--workers', '999', '--quiet', '--target', 'mlp', '--layers', '0-2']));
    expect(r.status, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/warning: --workers 999 is more than this machine can run \(.*\): using \d+/);
    const used = Number(/using (\d+)/.exec(r.stderr)![1]);
    expect(used).toBeLessThanOrEqual(availableParallelism());
  });

  it('eval ppl: --workers, and --threads as its deprecated alias, bounded the same way', () => {
    const base = ['eval', 'ppl', '--model', MODEL, '--data', TEXT, '--docs', '2', '--max-len', '16', '--json'];
    const a = run([...base, '--workers', '999']);
    expect(a.status, a.stderr).toBe(0);
    expect(a.stderr).toMatch(/warning: --workers 999 is more than this machine can run .*: using \d+/);
    const b = run([...base, '--threads', '1']);
    expect(b.status, b.stderr).toBe(0);
    expect(b.stderr).toMatch(/--threads is deprecated; use --workers/);
    expect(JSON.parse(b.stdout).ppl).toBeCloseTo(JSON.parse(a.stdout).ppl, 6);
    expect(oneLineError(run([...base, '--threads', '1', '--workers', '1']))).toMatch(/--threads: --threads is the old name of --workers/);
  });
});

describe.skipIf(!existsSync(cli))('small frictions', () => {
  it('dejavu --help lists the commands in pipeline order', () => {
    const help = run(['--help']).stdout;
    const names = [...help.slice(help.indexOf('Commands:')).matchAll(/^ {2}([a-z-]+)/gm)].map((m) => m[1]);
    const order = ['collect', 'train', 'export', 'eval', 'bench', 'demo'];
    expect(names.filter((n) => order.includes(n))).toEqual(order);
  });

  it('no --help prints a default twice', () => {
    for (const cmd of [['collect'], ['train'], ['export'], ['eval', 'ppl'], ['bench'], ['demo']]) {
      const text = run([...cmd, '--help']).stdout.replace(/\s+/g, ' ');
      expect(text, cmd.join(' ')).not.toMatch(/\(default: [^)]*\) \(default:/);
      expect(text, cmd.join(' ')).not.toMatch(/default: [^;)]*\) \(default:/);
    }
  });

  it('integers must be written as integers; the learning rate must be > 0', () => {
    expect(oneLineError(run(trainArgs(join(tmp, 'x'), ['--lr', '0'])))).toBe("error: --lr: expected a number > 0, got '0'");
    expect(oneLineError(run(trainArgs(join(tmp, 'x'), ['--rank', '1e2'])))).toMatch(/^error: --rank: expected an integer >= 1 written as digits, got '1e2'/);
    expect(oneLineError(run(['collect', '--model', MODEL, '--data', TEXT, '--out', join(tmp, 'c'), '--docs', '1e2']))).toMatch(/^error: --docs: .*got '1e2'/);
    expect(oneLineError(run(['eval', 'ppl', '--model', MODEL, '--data', TEXT, '--docs', '2.0']))).toMatch(/^error: --docs: /);
    expect(oneLineError(run(['export', '--predictors', predictors, '--model', MODEL, '--out', join(tmp, 'e'), '--mlp-k', '1e2']))).toMatch(/^error: --mlp-k: /);
  });

  it('eval ppl refuses --bundle-only flags without --bundle', () => {
    const base = ['eval', 'ppl', '--model', MODEL, '--data', TEXT, '--docs', '1'];
    expect(oneLineError(run([...base, '--heads-frac', '0.5']))).toBe('error: --heads-frac: only applies with --bundle (sparse perplexity); add --bundle B or drop it');
    expect(oneLineError(run([...base, '--mlp-k', '10', '--modes', 'dense']))).toMatch(/^error: --mlp-k, --modes only apply with --bundle/);
  });

  it('train prints its table on stdout (without --json)', () => {
    const out = join(tmp, 'train-stdout');
    const r = run(trainArgs(out, ['--quiet']));
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^layer +target +recall/);
    expect(r.stdout).toContain(`metrics: ${join(out, 'metrics.json')}`);
  });

  it('a tokenizer with ids beyond the model vocabulary is refused, naming the tokenizer file and config.json', () => {
    const model = join(tmp, 'small-vocab');
    mkdirSync(model);
    for (const f of ['tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json', 'vocab.json', 'merges.txt']) copyFileSync(join(MODEL, f), join(model, f));
    const config = JSON.parse(readFileSync(join(MODEL, 'config.json'), 'utf8'));
    writeFileSync(join(model, 'config.json'), JSON.stringify({ ...config, vocab_size: 1000 }));
    const line = oneLineError(run(['eval', 'ppl', '--model', model, '--data', TEXT, '--docs', '1', '--max-len', '8', '--workers', '1']));
    expect(line).toBe(`error: ${join(model, 'tokenizer.json')}: the tokenizer has ids up to 8191, but ${join(model, 'config.json')} has vocab_size 1000 (a tokenizer of another model?)`);
  });
});
