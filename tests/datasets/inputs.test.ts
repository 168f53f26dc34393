import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { DejavuError } from '../../common/errors.js';
import { expandGlob, formatOf, globToRegExp, resolveInputs } from '../../datasets/inputs.js';

describe('input paths, folders and globs', () => {
  const root = mkdtempSync(join(tmpdir(), 'dejavu-inputs-'));
  afterAll(() => rmSync(root, { recursive: true, force: true }));
  const touch = (rel: string) => {
    const p = join(root, rel);
    mkdirSync(join(p, '..'), { recursive: true });
    writeFileSync(p, '{"text":"x"}\n');
    return p;
  };
  const files = [
    'shards/c4-train.00002-of-00003.json.gz',
    'shards/c4-train.00000-of-00003.json.gz',
    'shards/c4-train.00001-of-00003.json.gz',
    'shards/README.md',
    'shards/.hidden.jsonl',
    'shards/.c4-train.00003.json.gz.1234.tmp',
    'shards/sub/extra.parquet',
    'shards/sub/deeper/more.jsonl',
    'other/a.json',
    'empty/notes.txt',
  ].map(touch);

  it('formatOf knows C4 extensions', () => {
    expect(formatOf('x/c4.json.gz')).toBe('jsonl.gz');
    expect(formatOf('x/c4.JSONL.GZ')).toBe('jsonl.gz');
    expect(formatOf('x/c4.jsonl')).toBe('jsonl');
    expect(formatOf('x/c4.json')).toBe('jsonl');
    expect(formatOf('x/c4.parquet')).toBe('parquet');
    expect(formatOf('x/c4.txt')).toBeNull();
    expect(formatOf('x/c4.gz')).toBeNull();
  });

  it('globToRegExp: * and ? stay within a segment, ** spans segments', () => {
    expect(globToRegExp('*.json.gz').test('a.json.gz')).toBe(true);
    expect(globToRegExp('*.json.gz').test('d/a.json.gz')).toBe(false);
    expect(globToRegExp('c4-?.jsonl').test('c4-1.jsonl')).toBe(true);
    expect(globToRegExp('c4-?.jsonl').test('c4-12.jsonl')).toBe(false);
    expect(globToRegExp('**/*.parquet').test('x.parquet')).toBe(true);
    expect(globToRegExp('**/*.parquet').test('a/b/x.parquet')).toBe(true);
    expect(globToRegExp('a/**/x.jsonl').test('a/x.jsonl')).toBe(true);
    expect(globToRegExp('a/**/x.jsonl').test('a/b/c/x.jsonl')).toBe(true);
    expect(globToRegExp('a.b+(c)').test('a.b+(c)')).toBe(true);
    expect(globToRegExp('a.b').test('axb')).toBe(false);
  });

  it('a folder means its shards, sorted by name (hidden, .tmp and other files left out, not recursive)', () => {
    expect(resolveInputs([join(root, 'shards')])).toEqual([files[1], files[2], files[0]]);
  });

  it('globs: *, ? and ** (sorted), mixed with plain files in the given order', () => {
    expect(resolveInputs([join(root, 'shards', '*.json.gz')])).toEqual([files[1], files[2], files[0]]);
    expect(resolveInputs([join(root, 'shards', 'c4-train.0000?-of-00003.json.gz')])).toEqual([files[1], files[2], files[0]]);
    expect(resolveInputs([join(root, 'shards', '**', '*.parquet')])).toEqual([files[6]]);
    expect(resolveInputs([join(root, '**', '*.jsonl')])).toEqual([files[7]]);
    expect(resolveInputs([join(root, 's*', '*', '*.parquet')])).toEqual([files[6]]);
    expect(resolveInputs([files[8], join(root, 'shards', '*00001*')])).toEqual([files[8], files[2]]);
    expect(expandGlob(join(root, '**', '*'))).toEqual([files[8], files[1], files[2], files[0], files[7], files[6]]);
  });

  it('missing paths, empty folders, globs matching nothing, unsupported files, no inputs: DejavuError naming them', () => {
    const missing = join(root, 'nope', 'c4.json.gz');
    expect(() => resolveInputs([files[8], missing])).toThrow(DejavuError);
    expect(() => resolveInputs([missing])).toThrow(`${missing}: no such file or folder`);
    expect(() => resolveInputs([join(root, 'empty')])).toThrow(/empty: folder holds no .json.gz/);
    expect(() => resolveInputs([join(root, 'shards', '*.arrow')])).toThrow(/\*\.arrow: pattern matches no/);
    expect(() => resolveInputs([files[3]])).toThrow(/README.md: unsupported file type/);
    expect(() => resolveInputs([])).toThrow(/no input files given/);
  });
});
