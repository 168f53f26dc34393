/**
 * Text that is not UTF-8 is kept with U+FFFD and counted (datasets/): the commands that read text say so on stderr
 * through describeSkips, beside the malformed lines they skipped. The CLI as a process (dist/cli/main.js).
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../helpers/fixtures.js';

const cli = join(REPO_ROOT, 'dist', 'cli', 'main.js');
const MODEL = join(REPO_ROOT, 'examples', 'opt-mini');
const BUNDLE = join(REPO_ROOT, 'examples', 'opt-mini-bundle');

let tmp: string;
let text: string;
const run = (args: string[]) => spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', env: { ...process.env, DEJAVU_CACHE_DIR: join(tmp, 'cache') } });

beforeAll(() => {
  tmp = mkdtempSync(join(tmpdir(), 'dejavu-replaced-'));
  text = join(tmp, 'latin1.jsonl');
  // Line 2 holds a Latin-1 byte (kept as U+FFFD), line 3 is not JSON (skipped).
  writeFileSync(
    text,
    Buffer.concat([
      Buffer.from('{"text": "The weather is fine today and tomorrow."}\n{"text": "caf'),
      Buffer.from([0xe9]),
      Buffer.from(' au lait, the usual order of the morning."}\nnot json\n'),
    ]),
  );
});
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

const replacedLine = () => new RegExp(`kept 1 line/rows with characters replaced by U\\+FFFD \\(not UTF-8\\):\\n  ${text}:line 2: bytes that are not UTF-8`);
const skippedLine = () => new RegExp(`skipped 1 malformed line/rows:\\n  ${text}:line 3: invalid JSON`);

describe('commands report lines kept with U+FFFD, not only skipped lines', () => {
  it('eval ppl (dense)', () => {
    const r = run(['eval', 'ppl', '--model', MODEL, '--data', text, '--max-len', '16', '--workers', '1', '--json']);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stderr).toMatch(replacedLine());
    expect(r.stderr).toMatch(skippedLine());
  });

  it('eval ppl --bundle (runtime/sparse/eval.ts)', () => {
    const r = run(['eval', 'ppl', '--model', MODEL, '--bundle', BUNDLE, '--data', text, '--max-len', '16', '--workers', '1', '--modes', 'dense', '--json']);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stderr).toMatch(replacedLine());
    expect(r.stderr).toMatch(skippedLine());
  });

  it("collect's summary, its --json and its manifest", () => {
    const out = join(tmp, 'shards');
    const r = run(['collect', '--model', MODEL, '--data', text, '--out', out, '--max-len', '16', '--layers', '0', '--workers', '1', '--json']);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stderr).toMatch(replacedLine());
    expect(r.stderr).toMatch(skippedLine());
    expect(JSON.parse(r.stdout)).toMatchObject({ skipped_lines: 1, replaced_lines: 1 });
    const m = JSON.parse(readFileSync(join(out, 'manifest.json'), 'utf8'));
    expect(m).toMatchObject({ skipped_lines: 1, replaced_lines: 1, replaced_examples: [`${text}:line 2: bytes that are not UTF-8, replaced by U+FFFD`] });
  });
});
