import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { SafetensorsFile } from '../../checkpoints/safetensors.js';
import { DejavuError } from '../../common/errors.js';
import { readDocuments } from '../../datasets/read.js';
import { loadTokenizer } from '../../datasets/tokenizer.js';
import { C4_VALID_JSON, HAVE_FIXTURES, OPT_MINI } from '../helpers/fixtures.js';

const SOURCES = ['tokenizer.json', 'vocab+merges'] as const;

async function validationTexts(): Promise<string[]> {
  const texts: string[] = [];
  for await (const d of readDocuments([C4_VALID_JSON], {})) texts.push(d.text);
  return texts;
}

describe.skipIf(!HAVE_FIXTURES)('tokenizer (opt-mini)', () => {
  const tmp = mkdtempSync(join(tmpdir(), 'dejavu-tok-'));
  afterAll(() => rmSync(tmp, { recursive: true, force: true }));

  it.each(SOURCES)('ACCEPTANCE: first validation document, max-len 64, via %s = reference s0.ids (and document 1 = s1.ids)', async (prefer) => {
    const tok = await loadTokenizer(OPT_MINI, { prefer });
    expect(tok.source).toBe(prefer === 'tokenizer.json' ? 'tokenizer.json' : 'vocab.json+merges.txt');
    const ref = SafetensorsFile.open(join(OPT_MINI, 'reference.safetensors'));
    expect(ref.info('s0.ids').dtype).toBe('I64');
    const expected = [Array.from(ref.readInt32('s0.ids')), Array.from(ref.readInt32('s1.ids'))];
    ref.close();
    const docs: string[] = [];
    for await (const d of readDocuments([C4_VALID_JSON], { docs: 2 })) docs.push(d.text);
    for (let s = 0; s < 2; s++) {
      expect(expected[s].length).toBe(64);
      expect(expected[s][0]).toBe(2);
      const ids = tok.encode(docs[s], 64);
      expect(ids).toBeInstanceOf(Int32Array);
      expect(Array.from(ids), `s${s}.ids`).toEqual(expected[s]);
    }
  });

  it.each(SOURCES)('first 50 validation documents at max-len 512 = the predicted-token count of fixture_info.json (%s)', async (prefer) => {
    const info = JSON.parse(readFileSync(join(OPT_MINI, 'fixture_info.json'), 'utf8'));
    expect(info.ref_ppl.tokens).toBe(20241);
    const tok = await loadTokenizer(OPT_MINI, { prefer });
    let predicted = 0;
    for await (const d of readDocuments([C4_VALID_JSON], { docs: 50 })) predicted += tok.encode(d.text, 512).length - 1;
    expect(predicted).toBe(info.ref_ppl.tokens);
  });

  it('both sources agree on every validation document; BOS once; vocab size and special ids as in OPT', async () => {
    const [a, b] = await Promise.all(SOURCES.map((prefer) => loadTokenizer(OPT_MINI, { prefer })));
    const texts = await validationTexts();
    expect(texts.length).toBe(100);
    let tokens = 0;
    for (const t of texts) {
      const x = a.encode(t);
      expect(Array.from(b.encode(t))).toEqual(Array.from(x));
      expect(x[0]).toBe(2);
      expect(x[1]).not.toBe(2);
      tokens += x.length;
    }
    expect(tokens).toBeGreaterThan(20_000);
    for (const tok of [a, b]) {
      expect(tok.bosId).toBe(2);
      expect(tok.vocabSize).toBe(8192);
      expect(Array.from(tok.encode(''))).toEqual([2]);
    }
  });

  it.each(SOURCES)('encode(text, maxLen) = the first maxLen ids of the whole encoding (%s)', async (prefer) => {
    const tok = await loadTokenizer(OPT_MINI, { prefer });
    const texts = await validationTexts();
    for (const maxLen of [1, 2, 17, 64, 512, 5000]) {
      for (const t of texts) {
        const whole = tok.encode(t);
        const cut = tok.encode(t, maxLen);
        expect(cut.length).toBe(Math.min(maxLen, whole.length));
        expect(Array.from(cut)).toEqual(Array.from(whole.subarray(0, maxLen)));
      }
    }
    expect(() => tok.encode('x', 0)).toThrow(DejavuError);
  });

  it('decode gives the text back and leaves the BOS out', async () => {
    const tok = await loadTokenizer(OPT_MINI);
    const texts = await validationTexts();
    for (const t of texts.slice(0, 20)) expect(tok.decode(tok.encode(t))).toBe(t);
    const ids = tok.encode('Hello world');
    expect(tok.decode(ids, { skipSpecialTokens: false })).toBe('</s>Hello world');
    expect(tok.decode(ids)).toBe('Hello world');
  });

  /** A copy of opt-mini's tokenizer files with edits, in a temp folder. */
  function variant(name: string, edit: (tj: any, cfg: any) => void, files = ['tokenizer.json', 'tokenizer_config.json']): string {
    const dir = join(tmp, name);
    cpSync(OPT_MINI, dir, { recursive: true, filter: (src) => !src.endsWith('.safetensors') });
    const tj = JSON.parse(readFileSync(join(dir, 'tokenizer.json'), 'utf8'));
    const cfg = JSON.parse(readFileSync(join(dir, 'tokenizer_config.json'), 'utf8'));
    edit(tj, cfg);
    if (files.includes('tokenizer.json')) writeFileSync(join(dir, 'tokenizer.json'), JSON.stringify(tj));
    if (files.includes('tokenizer_config.json')) writeFileSync(join(dir, 'tokenizer_config.json'), JSON.stringify(cfg));
    return dir;
  }

  it('BOS is not added twice when the post-processor already adds it', async () => {
    const dir = variant('post-bos', (tj) => {
      tj.post_processor = {
        type: 'TemplateProcessing',
        single: [{ SpecialToken: { id: '</s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
        pair: [{ SpecialToken: { id: '</s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }, { Sequence: { id: 'B', type_id: 1 } }],
        special_tokens: { '</s>': { id: '</s>', ids: [2], tokens: ['</s>'] } },
      };
    });
    const tok = await loadTokenizer(dir, { prefer: 'tokenizer.json' });
    const ref = await loadTokenizer(OPT_MINI, { prefer: 'tokenizer.json' });
    const ids = tok.encode('Hello world, this is a test.', 4);
    expect(ids[0]).toBe(2);
    expect(ids[1]).not.toBe(2);
    expect(Array.from(ids)).toEqual(Array.from(ref.encode('Hello world, this is a test.', 4)));
  });

  it('no BOS when add_bos_token is false; add_prefix_space is honoured for vocab+merges', async () => {
    const noBos = variant('no-bos', (_tj, cfg) => (cfg.add_bos_token = false));
    const tok = await loadTokenizer(noBos);
    const ref = await loadTokenizer(OPT_MINI);
    expect(Array.from(tok.encode('Hello world'))).toEqual(Array.from(ref.encode('Hello world')).slice(1));

    const prefix = variant('prefix-space', (_tj, cfg) => (cfg.add_prefix_space = true), ['tokenizer_config.json']);
    const p = await loadTokenizer(prefix, { prefer: 'vocab+merges' });
    // With a prefix space, "Hello" is tokenized as " Hello" would be without one.
    expect(Array.from(p.encode('Hello'))).toEqual(Array.from(ref.encode(' Hello')));
  });

  it('a folder laid out like facebook/opt-125m (no tokenizer.json, AddedToken objects in the config) gives s0.ids', async () => {
    const dir = join(tmp, 'like-opt-125m');
    for (const f of ['vocab.json', 'merges.txt', 'special_tokens_map.json', 'config.json']) cpSync(join(OPT_MINI, f), join(dir, f));
    const added = (content: string) => ({ __type: 'AddedToken', content, lstrip: false, normalized: true, rstrip: false, single_word: false });
    writeFileSync(
      join(dir, 'tokenizer_config.json'),
      JSON.stringify({
        errors: 'replace',
        unk_token: added('</s>'),
        bos_token: added('</s>'),
        eos_token: added('</s>'),
        pad_token: added('<pad>'),
        add_prefix_space: false,
        add_bos_token: true,
        special_tokens_map_file: null,
      }),
    );
    const tok = await loadTokenizer(dir);
    expect(tok.source).toBe('vocab.json+merges.txt');
    const ref = SafetensorsFile.open(join(OPT_MINI, 'reference.safetensors'));
    const expected = Array.from(ref.readInt32('s0.ids'));
    ref.close();
    let first = '';
    for await (const d of readDocuments([C4_VALID_JSON], { docs: 1 })) first = d.text;
    expect(Array.from(tok.encode(first, 64))).toEqual(expected);
    expect(tok.bosId).toBe(2);
    // </s> in the text is the special token, not "<", "/", "s", ">"
    expect(Array.from(tok.encode('a</s>b'))).toEqual([2, ...tok.encode('a').subarray(1), 2, ...tok.encode('b').subarray(1)]);
  });

  it('missing folder or tokenizer files: a DejavuError naming the folder', async () => {
    await expect(loadTokenizer(join(tmp, 'nope'))).rejects.toThrow(/nope: model folder not found/);
    const empty = join(tmp, 'empty');
    cpSync(join(OPT_MINI, 'config.json'), join(empty, 'config.json'));
    await expect(loadTokenizer(empty)).rejects.toThrow(/empty: no tokenizer.json nor vocab.json \+ merges.txt/);
    await expect(loadTokenizer(empty, { prefer: 'tokenizer.json' })).rejects.toThrow(DejavuError);
    const badMerges = variant('bad-merges', () => {});
    writeFileSync(join(badMerges, 'merges.txt'), '#version: 0.2\nĠ t\nthis line is wrong\n');
    await expect(loadTokenizer(badMerges, { prefer: 'vocab+merges' })).rejects.toThrow(/merges.txt: line 3/);
  });
});
