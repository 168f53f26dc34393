import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { afterAll, describe, expect, it } from 'vitest';
import { DejavuError } from '../../common/errors.js';
import { createReadStats, describeSkips, readDocuments } from '../../datasets/read.js';
import type { Document, DocumentSelection, ReadStats } from '../../datasets/types.js';
import { C4_TRAIN_JSON, C4_VALID_JSON, C4_VALID_PARQUET, HAVE_FIXTURES, REPO_ROOT } from '../helpers/fixtures.js';

const LOCAL = join(REPO_ROOT, 'tests', 'datasets', 'fixtures');

async function collect(inputs: string[], sel: DocumentSelection = {}, stats?: ReadStats): Promise<Document[]> {
  const out: Document[] = [];
  for await (const d of readDocuments(inputs, sel, stats)) out.push(d);
  return out;
}

const tmp = mkdtempSync(join(tmpdir(), 'dejavu-read-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

describe('JSON lines (no shared fixtures needed)', () => {
  const lines = [
    JSON.stringify({ text: 'first document', url: 'u0' }),
    '{"text": "broken line", ',
    '',
    JSON.stringify({ url: 'no text here' }),
    JSON.stringify({ text: 42 }),
    '[1, 2, 3]',
    JSON.stringify({ text: 'second document\nwith a newline and ünïcödé ✓' }),
    '   ',
    JSON.stringify({ text: '' }),
  ];

  it('invalid lines are skipped, counted and reported as file:line: reason; documents keep contiguous indices', async () => {
    const p = join(tmp, 'mixed.jsonl');
    writeFileSync(p, lines.join('\n') + '\n');
    const stats = createReadStats();
    const docs = await collect([p], {}, stats);
    expect(docs.map((d) => [d.index, d.text, d.source])).toEqual([
      [0, 'first document', p],
      [1, 'second document\nwith a newline and ünïcödé ✓', p],
      [2, '', p],
    ]);
    expect(stats.documents).toBe(3);
    expect(stats.skipped).toBe(4);
    expect(stats.files).toEqual([p]);
    expect(stats.skippedExamples[0]).toMatch(new RegExp(`^${p.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}:line 2: invalid JSON`));
    expect(stats.skippedExamples.slice(1)).toEqual([
      `${p}:line 4: no "text" field`,
      `${p}:line 5: "text" is not a string`,
      `${p}:line 6: not a JSON object`,
    ]);
    expect(describeSkips(stats)).toBe(`skipped 4 malformed lines/rows:\n  ${stats.skippedExamples.join('\n  ')}`);
    expect(describeSkips(createReadStats())).toBeNull();
  });

  it('.json (plain lines), byte order mark, CRLF line ends, .jsonl.gz and multi-member gzip read the same', async () => {
    const plain = join(tmp, 'same.json');
    writeFileSync(plain, '\ufeff' + lines.join('\r\n'));
    const gz = join(tmp, 'same.jsonl.gz');
    const half = Math.floor(lines.length / 2);
    // Two gzip members back to back, as concatenated shards are.
    writeFileSync(gz, Buffer.concat([gzipSync(lines.slice(0, half).join('\n') + '\n'), gzipSync(lines.slice(half).join('\n'))]));
    const a = await collect([plain]);
    const b = await collect([gz]);
    expect(a.map((d) => d.text)).toEqual(['first document', 'second document\nwith a newline and ünïcödé ✓', '']);
    expect(b.map((d) => d.text)).toEqual(a.map((d) => d.text));
  });

  it('bytes that are not UTF-8 and lone surrogate escapes are replaced, counted and reported; the documents are kept', async () => {
    const body = Buffer.concat([
      Buffer.from('{"text": "fine"}\n{"text": "caf'),
      Buffer.from([0xe9]), // latin-1 é
      Buffer.from(' au lait"}\n{"text": "a real \ufffd is not counted"}\n{"text": "escaped \\ud800 surrogate"}\n{"text": "x'),
      Buffer.from([0xff, 0xfe]),
      Buffer.from('"}\n{"text": "broken json '),
      Buffer.from([0xff]),
      Buffer.from('\n'),
    ]);
    const p = join(tmp, 'latin1.jsonl');
    writeFileSync(p, body);
    const gz = join(tmp, 'latin1.jsonl.gz');
    writeFileSync(gz, gzipSync(body));
    for (const f of [p, gz]) {
      const stats = createReadStats();
      const docs = await collect([f], {}, stats);
      expect(docs.map((d) => d.text)).toEqual(['fine', 'caf\ufffd au lait', 'a real \ufffd is not counted', 'escaped \ud800 surrogate', 'x\ufffd\ufffd']);
      expect(stats.documents).toBe(5);
      expect(stats.skipped).toBe(1);
      expect(stats.replaced).toBe(3);
      expect(stats.replacedExamples).toEqual([
        `${f}:line 2: bytes that are not UTF-8, replaced by U+FFFD`,
        `${f}:line 4: a lone surrogate escape, replaced by U+FFFD`,
        `${f}:line 5: bytes that are not UTF-8, replaced by U+FFFD`,
      ]);
      expect(describeSkips(stats)).toBe(
        `skipped 1 malformed line/rows:\n  ${stats.skippedExamples[0]}\n` +
          `kept 3 lines/rows with characters replaced by U+FFFD (not UTF-8):\n  ${stats.replacedExamples.join('\n  ')}`,
      );
    }
    // Counted for the documents handed out only: the first 2, or a sample.
    const first = createReadStats();
    await collect([p], { docs: 2 }, first);
    expect(first.replaced).toBe(1);
    const sampled = createReadStats();
    const picked = await collect([p], { sample: 2, seed: 1 }, sampled);
    const replacedTexts = ['caf\ufffd au lait', 'escaped \ud800 surrogate', 'x\ufffd\ufffd'];
    expect(sampled.replaced).toBe(picked.filter((d) => replacedTexts.includes(d.text)).length);
  });

  it('lines split as readline splits them (\\n, \\r\\n, a lone \\r); characters across read chunks stay whole', async () => {
    const p = join(tmp, 'line-ends.jsonl');
    writeFileSync(p, '{"text":"a"}\r{"text":"b"}\r\n\r\n{"text":"c"}\n{"text":"d"}\r');
    const stats = createReadStats();
    expect((await collect([p], {}, stats)).map((d) => d.text)).toEqual(['a', 'b', 'c', 'd']);
    expect(stats.skipped + stats.replaced).toBe(0);
    // ~400 KB of multi-byte text: many 3- and 4-byte characters straddle the 64 KiB chunks the file is read in.
    const big = join(tmp, 'multibyte.jsonl');
    const texts = Array.from({ length: 3000 }, (_, i) => `${i} ü✓😀`.repeat(1 + (i % 17)));
    writeFileSync(big, texts.map((text) => JSON.stringify({ text })).join('\n'));
    const st = createReadStats();
    expect((await collect([big], {}, st)).map((d) => d.text)).toEqual(texts);
    expect(st.replaced).toBe(0);
  });

  it('a truncated gzip file is an error naming the file, after the documents before the damage', async () => {
    const big = Array.from({ length: 2000 }, (_, i) => JSON.stringify({ text: `document ${i} `.repeat(20) }));
    const gz = gzipSync(big.join('\n'));
    const p = join(tmp, 'truncated.json.gz');
    writeFileSync(p, gz.subarray(0, Math.floor(gz.length / 2)));
    const seen: number[] = [];
    const run = async () => {
      for await (const d of readDocuments([p], {})) seen.push(d.index);
    };
    await expect(run()).rejects.toThrow(DejavuError);
    await expect(collect([p])).rejects.toThrow(/truncated\.json\.gz: corrupt or truncated gzip data/);
    expect(seen.length).toBeGreaterThan(0);
    expect(seen.length).toBeLessThan(2000);
  });

  it('a data set without documents is an error; a missing path is an error naming it', async () => {
    const empty = join(tmp, 'empty.jsonl');
    writeFileSync(empty, '\n\n');
    await expect(collect([empty])).rejects.toThrow(/no documents in .*empty\.jsonl/);
    const allBad = join(tmp, 'allbad.jsonl');
    writeFileSync(allBad, 'nope\n{"x":1}\n');
    await expect(collect([allBad])).rejects.toThrow(/no documents in .*allbad\.jsonl \(2 malformed lines\/rows skipped, e\.g\. .*allbad\.jsonl:line 1: invalid JSON/);
    await expect(collect([allBad], { sample: 3 })).rejects.toThrow(/no documents/);
    const missing = join(tmp, 'missing', 'c4.json.gz');
    await expect(collect([missing])).rejects.toThrow(`${missing}: no such file or folder`);
    await expect(collect([empty], { docs: 1, sample: 1 })).rejects.toThrow(/exclude each other/);
  });
});

describe('parquet edge cases (committed fixtures, made by tests/datasets/fixtures/make_fixtures.py)', () => {
  it('a parquet file without a text column is an error naming the file and its columns', async () => {
    const p = join(LOCAL, 'no-text-column.parquet');
    await expect(collect([p])).rejects.toThrow(DejavuError);
    await expect(collect([p])).rejects.toThrow(`${p}: parquet file has no "text" column (columns: content, url)`);
  });

  it('a non-string text column is an error; null texts are skipped and counted (two row groups)', async () => {
    await expect(collect([join(LOCAL, 'int-text.parquet')])).rejects.toThrow(/int-text\.parquet: the "text" column is INT64/);
    const p = join(LOCAL, 'null-text.parquet');
    const stats = createReadStats();
    const docs = await collect([p], {}, stats);
    expect(docs.map((d) => [d.index, d.text])).toEqual([
      [0, 'alpha'],
      [1, 'beta'],
      [2, 'gamma'],
    ]);
    expect(stats.skipped).toBe(2);
    expect(stats.skippedExamples).toEqual([`${p}:row 1: text is null`, `${p}:row 4: text is null`]);
  });

  it('a string column with bytes that are not UTF-8: rows kept with U+FFFD, counted (a dictionary value shared by two rows)', async () => {
    const p = join(LOCAL, 'not-utf8.parquet');
    const stats = createReadStats();
    const docs = await collect([p], {}, stats);
    expect(docs.map((d) => d.text)).toEqual(['fine', 'caf\ufffd au lait', 'caf\ufffd au lait', '\ufffd\ufffd stray bytes', 'ok ✓', 'last']);
    expect(stats.replaced).toBe(3);
    expect(stats.replacedExamples).toEqual([1, 2, 3].map((r) => `${p}:row ${r}: bytes that are not UTF-8, replaced by U+FFFD`));
    expect(stats.skipped).toBe(0);
  });

  it('a file that is not parquet is an error naming it', async () => {
    const p = join(tmp, 'fake.parquet');
    writeFileSync(p, 'this is not parquet at all, just text');
    await expect(collect([p])).rejects.toThrow(/fake\.parquet: not a readable parquet file/);
  });
});

describe.skipIf(!HAVE_FIXTURES)('c4mini fixtures', () => {
  it('the 100 validation documents read identically from the json.gz and the three parquet variants', async () => {
    const ref = await collect([C4_VALID_JSON]);
    expect(ref.length).toBe(100);
    expect(ref.map((d) => d.index)).toEqual(Array.from({ length: 100 }, (_, i) => i));
    expect(ref[0].text.startsWith('On Mon, 16 Sep 2002, Justin Mason wrote:')).toBe(true);
    // Straight from the gzip text, not through our reader: the reader adds nothing and drops nothing.
    const raw = (await import('node:zlib')).gunzipSync(readFileSync(C4_VALID_JSON)).toString('utf8').split('\n').filter(Boolean);
    expect(ref.map((d) => d.text)).toEqual(raw.map((l) => JSON.parse(l).text));
    for (const p of C4_VALID_PARQUET) {
      const stats = createReadStats();
      const docs = await collect([p], {}, stats);
      expect(docs.map((d) => d.text), basename(p)).toEqual(ref.map((d) => d.text));
      expect(docs.map((d) => d.index)).toEqual(ref.map((d) => d.index));
      expect(stats).toEqual({ documents: 100, skipped: 0, skippedExamples: [], replaced: 0, replacedExamples: [], files: [p] });
    }
  });

  it('docs: N = the first N in file order across inputs, reading stops there', async () => {
    const all = await collect([C4_VALID_JSON]);
    const stats = createReadStats();
    const first = await collect([C4_VALID_JSON, C4_TRAIN_JSON], { docs: 7 }, stats);
    expect(first.map((d) => d.text)).toEqual(all.slice(0, 7).map((d) => d.text));
    expect(stats.files).toEqual([C4_VALID_JSON]); // the second file was never opened
    expect(stats.documents).toBe(7);

    const across = await collect([C4_VALID_PARQUET[1], C4_VALID_JSON], { docs: 130 });
    expect(across.map((d) => d.index)).toEqual(Array.from({ length: 130 }, (_, i) => i));
    expect(across[99].source).toBe(C4_VALID_PARQUET[1]);
    expect(across[100].source).toBe(C4_VALID_JSON);
    expect(across.map((d) => d.text)).toEqual([...all, ...all].slice(0, 130).map((d) => d.text));

    expect((await collect([C4_VALID_JSON], { docs: 1000 })).length).toBe(100);
  });

  it('sample: N + seed = a reproducible seeded sample, in file order, different across seeds', async () => {
    const inputs = [C4_VALID_JSON, C4_TRAIN_JSON, C4_VALID_PARQUET[2]]; // 100 + 2000 + 100 documents
    const all = await collect(inputs);
    expect(all.length).toBe(2200);
    const s1 = await collect(inputs, { sample: 40, seed: 1 });
    const s1again = await collect(inputs, { sample: 40, seed: 1 });
    const s2 = await collect(inputs, { sample: 40, seed: 2 });
    expect(s1.length).toBe(40);
    expect(s1again).toEqual(s1);
    expect(s2.map((d) => d.index)).not.toEqual(s1.map((d) => d.index));
    for (const s of [s1, s2]) {
      const idx = s.map((d) => d.index);
      expect([...idx].sort((a, b) => a - b)).toEqual(idx);
      expect(new Set(idx).size).toBe(40);
      for (const d of s) expect(d).toEqual(all[d.index]);
    }
    // Not just the first 40: the sample reaches into the big middle file.
    expect(s1.some((d) => d.source === C4_TRAIN_JSON)).toBe(true);
    // seed defaults to 0; a sample larger than the data set is all of it.
    expect(await collect(inputs.slice(0, 1), { sample: 5 })).toEqual(await collect(inputs.slice(0, 1), { sample: 5, seed: 0 }));
    const stats = createReadStats();
    expect((await collect([C4_VALID_JSON], { sample: 500, seed: 3 }, stats)).map((d) => d.index)).toEqual(all.slice(0, 100).map((d) => d.index));
    expect(stats.documents).toBe(100);
  });

  it('sample counts skipped lines once', async () => {
    const p = join(tmp, 'valid-with-junk.jsonl');
    const good = (await import('node:zlib')).gunzipSync(readFileSync(C4_VALID_JSON)).toString('utf8').split('\n').filter(Boolean);
    writeFileSync(p, [good[0], 'junk', ...good.slice(1, 10), '{"text": null}'].join('\n'));
    const stats = createReadStats();
    const s = await collect([p], { sample: 4, seed: 9 }, stats);
    expect(s.length).toBe(4);
    expect(stats.skipped).toBe(2);
    expect(stats.skippedExamples).toEqual([expect.stringMatching(/:line 2: invalid JSON/), `${p}:line 12: "text" is not a string`]);
  });

  it('folders (shards in name order) and globs', async () => {
    const dir = join(tmp, 'shards');
    mkdirSync(dir);
    copyFileSync(C4_VALID_JSON, join(dir, 'c4-validation.00001-of-00002.json.gz'));
    copyFileSync(C4_VALID_PARQUET[0], join(dir, 'c4-validation.00000-of-00002.parquet'));
    writeFileSync(join(dir, 'notes.txt'), 'not data');
    const viaDir = await collect([dir]);
    expect(viaDir.length).toBe(200);
    expect(viaDir[0].source).toBe(join(dir, 'c4-validation.00000-of-00002.parquet'));
    expect(viaDir[100].source).toBe(join(dir, 'c4-validation.00001-of-00002.json.gz'));
    expect(viaDir[150].text).toBe(viaDir[50].text);
    const viaGlob = await collect([join(dir, 'c4-validation.*-of-00002.*')]);
    expect(viaGlob).toEqual(viaDir);
    const stats = createReadStats();
    await collect([join(tmp, '**', '*.json.gz')], { docs: 3 }, stats);
    expect(stats.files).toEqual([join(dir, 'c4-validation.00001-of-00002.json.gz')]);
  });
});
