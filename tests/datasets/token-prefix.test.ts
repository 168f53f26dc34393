import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Tokenizer as HfTokenizer } from '@huggingface/tokenizers';
import { afterAll, afterEach, describe, expect, it, vi } from 'vitest';
import { readDocuments } from '../../datasets/read.js';
import { mulberry32 } from '../../datasets/select.js';
import { forcedCut, isSafeCut, lastSafeCut, maxCharsEncoded, MARGIN } from '../../datasets/token-prefix.js';
import { loadTokenizer } from '../../datasets/tokenizer.js';
import type { Tokenizer } from '../../datasets/types.js';
import { C4_VALID_JSON, HAVE_FIXTURES, OPT_MINI } from '../helpers/fixtures.js';

describe('safe cuts (pure)', () => {
  const cuts = (t: string, added: string[] = []) => [...Array(t.length + 1).keys()].filter((i) => isSafeCut(t, i, added));

  it('at the start of a whitespace run, never inside one', () => {
    expect(cuts('ab cd')).toEqual([2]);
    expect(cuts('a  \t\n b')).toEqual([1]);
    expect(cuts('a\u00a0b\u3000c')).toEqual([1, 3]);
    expect(cuts('   ')).toEqual([]);
  });

  it('at letter / digit / punctuation changes, not after an apostrophe, not inside a word', () => {
    expect(cuts('abc.def')).toEqual([3, 4]);
    expect(cuts('x12y')).toEqual([1, 3]);
    expect(cuts("it's")).toEqual([2]);
    expect(cuts('word')).toEqual([]);
    expect(cuts('中文。日本')).toEqual([2, 3]);
    expect(cuts('e\u0301t')).toEqual([1, 2]);
  });

  it('never between the halves of a surrogate pair nor inside an added token', () => {
    expect(cuts('a😀b')).toEqual([1, 3]);
    expect(cuts('x</s>y', ['</s>'])).toEqual([1, 5]);
    expect(cuts('x</s>y')).toEqual([1, 3, 4, 5]);
    expect(lastSafeCut('x</s>y', 4, 0, ['</s>'])).toBe(1);
    expect(forcedCut('ab😀', 3)).toBe(2);
    expect(forcedCut('ab</s>', 4, ['</s>'])).toBe(2);
    expect(forcedCut('aaaa', 9)).toBe(4);
  });
});

describe.skipIf(!HAVE_FIXTURES)('bounded prefix (opt-mini tokenizer)', () => {
  const tmp = mkdtempSync(join(tmpdir(), 'dejavu-prefix-'));
  afterAll(() => rmSync(tmp, { recursive: true, force: true }));
  afterEach(() => vi.restoreAllMocks());

  /** The characters handed to the tokenizer library while `fn` runs. */
  function charsEncoded(fn: () => void): number {
    let chars = 0;
    const orig = HfTokenizer.prototype.encode;
    vi.spyOn(HfTokenizer.prototype, 'encode').mockImplementation(function (this: HfTokenizer, text: string, opts?: object) {
      chars += text.length;
      return orig.call(this, text, opts as never);
    });
    fn();
    vi.restoreAllMocks();
    return chars;
  }

  function expectPrefixOfWhole(tok: Tokenizer, text: string, maxLens: number[], what: string): void {
    const whole = Array.from(tok.encode(text));
    for (const L of maxLens) expect(Array.from(tok.encode(text, L)), `${what}, maxLen ${L}`).toEqual(whole.slice(0, L));
  }

  const maxTokenBytes = (() => {
    if (!HAVE_FIXTURES) return 0;
    const tj = JSON.parse(readFileSync(join(OPT_MINI, 'tokenizer.json'), 'utf8'));
    return Math.max(...Object.keys(tj.model.vocab).map((k) => k.length));
  })();

  it('space-free text: 20 MB and 2M CJK characters hand the tokenizer a bounded number of characters', async () => {
    const tok = await loadTokenizer(OPT_MINI);
    const rand = mulberry32(7);
    const block = Array.from({ length: 1000 }, () => 'abcXYZ0123456789+/=-._'[Math.floor(rand() * 22)]).join('');
    const cjk = Array.from({ length: 2_000_000 }, () => String.fromCharCode(0x4e00 + Math.floor(rand() * 20000))).join('');
    const texts: [string, string][] = [
      ['20 MB of one letter', 'a'.repeat(20_000_000)],
      ['20 MB of base64-like data', block.repeat(20_000)],
      ['2M CJK characters', cjk],
    ];
    for (const [what, text] of texts) {
      for (const L of [1, 64, 2048]) {
        let ids = new Int32Array();
        const chars = charsEncoded(() => (ids = tok.encode(text, L)));
        expect(ids.length, what).toBe(L);
        expect(ids[0]).toBe(2);
        expect(chars, `${what}, maxLen ${L}`).toBeLessThanOrEqual(maxCharsEncoded(L, maxTokenBytes));
        // What these texts need in practice: a few characters for each of the L + MARGIN ids a forced cut must yield.
        expect(chars, `${what}, maxLen ${L}`).toBeLessThanOrEqual(16 * (L + MARGIN));
      }
    }
  });

  it('ordinary text: c4mini documents hand the tokenizer about 8 characters an id, not the whole document', async () => {
    const tok = await loadTokenizer(OPT_MINI);
    const texts: string[] = [];
    for await (const d of readDocuments([C4_VALID_JSON], {})) texts.push(d.text);
    const long = texts.join('\n\n');
    expect(long.length).toBeGreaterThan(100_000);
    const chars = charsEncoded(() => tok.encode(long, 64));
    expect(chars).toBeLessThanOrEqual(8 * 64);
    expectPrefixOfWhole(tok, long, [1, 64, 512, 2048], 'all validation documents as one');
  });

  it('crafted cases: cuts inside words, multi-byte characters, whitespace runs, contractions, added tokens', async () => {
    const tok = await loadTokenizer(OPT_MINI);
    const crafted: [string, string][] = [
      ['long words', 'supercalifragilisticexpialidocious antidisestablishmentarianism pneumonoultramicroscopic '.repeat(12)],
      ['multi-byte', 'naïve café 日本語のテキスト😀😀 emoji👍🏽 Ελληνικά кириллица ﷽ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 '.repeat(20)],
      ['multi-byte, no spaces', 'naïve😀café日本語👍🏽Ελληνικά𝔘𝔫𝔦𝔠𝔬𝔡𝔢'.repeat(40)],
      ['whitespace runs', 'a  \t\n\n   b\u00a0\u00a0c\u3000d \r\n e\n\n\n\nf        g\t\t'.repeat(30)],
      ['contractions', "it's they're I'd we'll 'quoted' don't... (a)[b]{c} x.y,z; l'amour O'Neil's ".repeat(20)],
      ['added tokens', 'a</s>b </s> c<pad>d</s></s>e <s><unk>f '.repeat(30)],
      ['digits', '12345 6789a12b 3.14159 1,000,000 ٣٤٥ x2y3 '.repeat(30)],
    ];
    const lens = [...Array(40).keys()].map((i) => i + 1).concat([64, 100, 200]);
    for (const [what, text] of crafted) expectPrefixOfWhole(tok, text, lens, what);
  });

  const PIECES = ['a', 'bc', 'Z', 'é', 'e\u0301', '中', '文', '😀', '1', '23', '٣', '.', ',', "'", "'s", "'re", "'ll", '-', '/',
    ' ', '  ', '\t', '\n', '\r\n', '\u00a0', '\u3000', '</s>', '<pad>', '\ufeff', '\u0085', 'the', ' the', 'ing', '\ud800'];
  function randomText(rand: () => number, pieces: number): string {
    let text = '';
    for (let i = 0; i < pieces; i++) text += PIECES[Math.floor(rand() * PIECES.length)];
    return text;
  }

  it('every safe cut of random strings over tricky pieces leaves the whole encoding\'s first ids', async () => {
    const tok = await loadTokenizer(OPT_MINI);
    const added = JSON.parse(readFileSync(join(OPT_MINI, 'tokenizer.json'), 'utf8')).added_tokens.map((t: { content: string }) => t.content);
    const rand = mulberry32(5);
    let checked = 0;
    for (let n = 0; n < 150; n++) {
      const text = randomText(rand, 10 + Math.floor(rand() * 60));
      const whole = Array.from(tok.encode(text));
      for (let i = 1; i < text.length; i++) {
        if (!isSafeCut(text, i, added)) continue;
        const prefix = Array.from(tok.encode(text.slice(0, i)));
        expect(prefix, `${JSON.stringify(text)} cut at ${i}`).toEqual(whole.slice(0, prefix.length));
        checked++;
      }
    }
    expect(checked).toBeGreaterThan(1000);
  });

  it('random strings over tricky pieces: every maxLen gives the first ids of the whole encoding', async () => {
    const tok = await loadTokenizer(OPT_MINI);
    const rand = mulberry32(11);
    for (let n = 0; n < 300; n++) {
      const text = randomText(rand, 20 + Math.floor(rand() * 400));
      expectPrefixOfWhole(tok, text, [1 + Math.floor(rand() * 8), 1 + Math.floor(rand() * 40), 1 + Math.floor(rand() * 120)], `random ${n}`);
    }
  });

  it(`long space-free runs (forced cuts, ${MARGIN} ids of margin) give the whole encoding's first ids`, async () => {
    const tok = await loadTokenizer(OPT_MINI);
    const rand = mulberry32(3);
    const pick = (alphabet: string, n: number) => Array.from({ length: n }, () => alphabet[Math.floor(rand() * alphabet.length)]).join('');
    const runs: [string, string][] = [
      ['one letter', 'a'.repeat(20_000)],
      ['random letters', pick('abcdefghijklmnopqrstuvwxyz', 20_000)],
      ['two letters', pick('ab', 20_000)],
      ['digits', pick('0123456789', 20_000)],
      ['slashes', '/'.repeat(20_000)],
      ['punctuation', pick('-=/*#.', 20_000)],
      ['CJK', Array.from({ length: 8_000 }, () => String.fromCharCode(0x4e00 + Math.floor(rand() * 3000))).join('')],
      ['spaces', 'x' + ' '.repeat(20_000) + 'y'],
    ];
    for (const [what, text] of runs) expectPrefixOfWhole(tok, text, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 64, 300, 1000], what);
  });

  /** A copy of opt-mini's tokenizer with an edited tokenizer.json. */
  function variant(name: string, edit: (tj: any) => void): string {
    const dir = join(tmp, name);
    cpSync(OPT_MINI, dir, { recursive: true, filter: (src) => !src.endsWith('.safetensors') });
    const tj = JSON.parse(readFileSync(join(dir, 'tokenizer.json'), 'utf8'));
    edit(tj);
    writeFileSync(join(dir, 'tokenizer.json'), JSON.stringify(tj));
    return dir;
  }

  it('an EOS appended by the post-processor is not taken for a text id', async () => {
    const dir = variant('eos', (tj) => {
      tj.post_processor = {
        type: 'TemplateProcessing',
        single: [{ Sequence: { id: 'A', type_id: 0 } }, { SpecialToken: { id: '</s>', type_id: 0 } }],
        pair: [{ Sequence: { id: 'A', type_id: 0 } }, { Sequence: { id: 'B', type_id: 1 } }],
        special_tokens: { '</s>': { id: '</s>', ids: [2], tokens: ['</s>'] } },
      };
    });
    const tok = await loadTokenizer(dir, { prefer: 'tokenizer.json' });
    let first = '';
    for await (const d of readDocuments([C4_VALID_JSON], { docs: 1 })) first = d.text;
    const lens = [...Array(60).keys()].map((i) => i + 1);
    expectPrefixOfWhole(tok, first, lens, 'document 0 with an appended EOS');
    // 77 characters a token: the first prefix holds few ids, so one short of maxLen plus the EOS is a case that occurs.
    expectPrefixOfWhole(tok, ('/'.repeat(76) + ' ').repeat(200), lens, 'long tokens with an appended EOS');
  });

  it('a tokenizer the rules do not cover (a normalizer) gets the whole text', async () => {
    const dir = variant('nfc', (tj) => (tj.normalizer = { type: 'NFC' }));
    const tok = await loadTokenizer(dir, { prefer: 'tokenizer.json' });
    const text = 'word '.repeat(1000);
    const chars = charsEncoded(() => tok.encode(text, 8));
    expect(chars).toBe(text.length);
    expectPrefixOfWhole(tok, text, [8], 'normalized');
  });
});
