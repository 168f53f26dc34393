import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Tokenizer as HfTokenizer } from '@huggingface/tokenizers';
import { DejavuError } from '../common/errors.js';
import { encodePrefix, type PrefixRules } from './token-prefix.js';
import type { Tokenizer } from './types.js';

/**
 * The tokenizer of a Hugging Face model folder, from `tokenizer.json` or from `vocab.json` + `merges.txt` (GPT-2
 * byte-level BPE, what facebook/opt-* ship). The BOS rule: when `tokenizer_config.json` says `add_bos_token`, the BOS
 * is prepended exactly once; if the tokenizer's own post-processor already adds it, we add nothing.
 */
export interface LoadTokenizerOptions {
  /** Default: tokenizer.json when the folder has one, else vocab.json + merges.txt. */
  prefer?: 'tokenizer.json' | 'vocab+merges';
}

type Json = Record<string, unknown>;

function readJson(path: string): Json {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new DejavuError(`cannot read: ${(e as Error).message}`, path);
  }
  try {
    const v = JSON.parse(text) as unknown;
    if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new Error('not a JSON object');
    return v as Json;
  } catch (e) {
    throw new DejavuError(`invalid JSON: ${(e as Error).message}`, path);
  }
}

function readJsonIfExists(path: string): Json {
  return existsSync(path) ? readJson(path) : {};
}

/** Special tokens in tokenizer_config / special_tokens_map are either strings or `{content, ...}` objects. */
function tokenContent(v: unknown): string | null {
  if (typeof v === 'string') return v;
  if (v && typeof v === 'object' && typeof (v as Json).content === 'string') return (v as Json).content as string;
  return null;
}

interface AddedTokenJson {
  id: number;
  content: string;
  single_word: boolean;
  lstrip: boolean;
  rstrip: boolean;
  normalized: boolean;
  special: boolean;
}

/**
 * Build the tokenizer.json object equivalent to a slow GPT2Tokenizer: byte-level BPE over vocab.json + merges.txt,
 * ByteLevel pre-tokenizer (add_prefix_space from tokenizer_config), ByteLevel decoder, no normalizer, no
 * post-processor (the BOS rule is applied by us), and the special tokens of the config as added tokens.
 */
export function tokenizerJsonFromVocabMerges(
  vocabPath: string,
  mergesPath: string,
  tokenizerConfig: Json,
  specialTokensMap: Json,
): Json {
  const vocabRaw = readJson(vocabPath);
  const vocab: Record<string, number> = {};
  let maxId = -1;
  for (const [tok, id] of Object.entries(vocabRaw)) {
    if (typeof id !== 'number' || !Number.isInteger(id) || id < 0) {
      throw new DejavuError(`token ${JSON.stringify(tok)} has id ${JSON.stringify(id)}, expected an integer >= 0`, vocabPath);
    }
    vocab[tok] = id;
    if (id > maxId) maxId = id;
  }
  let mergesText: string;
  try {
    mergesText = readFileSync(mergesPath, 'utf8');
  } catch (e) {
    throw new DejavuError(`cannot read: ${(e as Error).message}`, mergesPath);
  }
  const merges: [string, string][] = [];
  const lines = mergesText.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i].replace(/\r$/, '');
    // "#version: 0.2" header; byte-level tokens never contain a space (it is mapped to Ġ), so one space separates a pair.
    if (line === '' || (i === 0 && line.startsWith('#version'))) continue;
    const parts = line.split(' ');
    if (parts.length !== 2 || parts[0] === '' || parts[1] === '') {
      throw new DejavuError(`line ${i + 1}: expected "left right", got ${JSON.stringify(line.slice(0, 80))}`, mergesPath);
    }
    merges.push([parts[0], parts[1]]);
  }

  // Special tokens: the named ones (bos/eos/unk/pad/...), additional_special_tokens, and added_tokens_decoder entries.
  const specials = new Map<string, number | null>();
  for (const src of [specialTokensMap, tokenizerConfig]) {
    for (const key of ['bos_token', 'eos_token', 'unk_token', 'pad_token', 'sep_token', 'cls_token', 'mask_token']) {
      const c = tokenContent(src[key]);
      if (c !== null && !specials.has(c)) specials.set(c, null);
    }
    const extra = src.additional_special_tokens;
    if (Array.isArray(extra)) {
      for (const t of extra) {
        const c = tokenContent(t);
        if (c !== null && !specials.has(c)) specials.set(c, null);
      }
    }
  }
  const decoderMap = tokenizerConfig.added_tokens_decoder;
  if (decoderMap && typeof decoderMap === 'object') {
    for (const [id, t] of Object.entries(decoderMap as Json)) {
      const c = tokenContent(t);
      if (c !== null) specials.set(c, Number(id));
    }
  }
  const added: AddedTokenJson[] = [];
  for (const [content, fixedId] of specials) {
    // Tokens the vocabulary lacks get the next free id, as transformers' add_special_tokens does.
    let id = fixedId ?? vocab[content];
    if (id === undefined) id = ++maxId;
    added.push({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true });
  }
  added.sort((a, b) => a.id - b.id);

  const addPrefixSpace = tokenizerConfig.add_prefix_space === true;
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: added,
    normalizer: null,
    pre_tokenizer: { type: 'ByteLevel', add_prefix_space: addPrefixSpace, trim_offsets: true, use_regex: true },
    post_processor: null,
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: false,
      vocab,
      merges,
    },
  };
}

/**
 * The bounded-prefix rules (datasets/token-prefix.ts) when they are exact for this tokenizer: GPT-2's byte-level BPE
 * (the ByteLevel pre-tokenizer with its regex, what OPT ships), no normalizer, no whitespace or case rewriting in the
 * config. Null otherwise: such a tokenizer gets the whole text.
 */
function prefixRulesFor(tokenizerJson: Json, config: Json): Omit<PrefixRules, 'suffixIds'> | null {
  const pre = tokenizerJson.pre_tokenizer as Json | null | undefined;
  const model = tokenizerJson.model as Json | null | undefined;
  if (!pre || pre.type !== 'ByteLevel' || pre.use_regex === false) return null;
  if (tokenizerJson.normalizer) return null;
  if (!model || model.type !== 'BPE' || !model.vocab || typeof model.vocab !== 'object') return null;
  if (config.remove_space === true || config.do_lowercase_and_remove_accent === true) return null;
  // Byte-level vocabulary entries spell one byte per character.
  let maxTokenBytes = 1;
  for (const k of Object.keys(model.vocab as Json)) if (k.length > maxTokenBytes) maxTokenBytes = k.length;
  const addedTokens: string[] = [];
  for (const t of (tokenizerJson.added_tokens as Json[] | undefined) ?? []) {
    if (typeof t.content !== 'string' || t.content === '') continue;
    addedTokens.push(t.content);
    maxTokenBytes = Math.max(maxTokenBytes, Buffer.byteLength(t.content));
  }
  return { addedTokens, maxTokenBytes };
}

class HfBackedTokenizer implements Tokenizer {
  readonly bosId: number | null;
  readonly vocabSize: number;
  /** Whether encode() prepends the BOS itself (add_bos_token and the post-processor does not already add it). */
  readonly prependBos: boolean;

  /** Null when only the whole text gives exact ids (see prefixRulesFor). */
  private readonly prefixRules: PrefixRules | null;

  constructor(
    private readonly tok: HfTokenizer,
    readonly source: string,
    bosId: number | null,
    addBosToken: boolean,
    vocabSize: number,
    rules: Omit<PrefixRules, 'suffixIds'> | null,
  ) {
    this.bosId = bosId;
    this.vocabSize = vocabSize;
    const withSpecial = tok.encode('a').ids;
    const without = tok.encode('a', { add_special_tokens: false }).ids;
    const postAddsBos = bosId !== null && withSpecial[0] === bosId && without[0] !== bosId;
    this.prependBos = addBosToken && bosId !== null && !postAddsBos;
    // What the post-processor puts after the text (an EOS) is not text: a prefix must yield maxLen ids before it.
    let at = -1;
    for (let s = 0; s + without.length <= withSpecial.length && at < 0; s++) {
      if (without.every((id: number, j: number) => withSpecial[s + j] === id)) at = s;
    }
    this.prefixRules = rules && at >= 0 ? { ...rules, suffixIds: withSpecial.length - at - without.length } : null;
  }

  private encodeAll(text: string): number[] {
    const ids = this.tok.encode(text).ids;
    return this.prependBos ? [this.bosId as number, ...ids] : ids;
  }

  encode(text: string, maxLen?: number): Int32Array {
    if (maxLen === undefined) return Int32Array.from(this.encodeAll(text));
    if (!Number.isInteger(maxLen) || maxLen < 1) throw new DejavuError(`max length must be an integer >= 1, got ${maxLen}`);
    // Only a bounded prefix of the text is tokenized (a 20 MB line without spaces would take minutes and gigabytes).
    if (this.prefixRules) return Int32Array.from(encodePrefix((s) => this.encodeAll(s), text, maxLen, this.prefixRules));
    return Int32Array.from(this.encodeAll(text).slice(0, maxLen));
  }

  /** Special tokens (the BOS among them) are left out unless `skipSpecialTokens` is false. */
  decode(ids: ArrayLike<number>, opts?: { skipSpecialTokens?: boolean }): string {
    return this.tok.decode(Array.from(ids), { skip_special_tokens: opts?.skipSpecialTokens ?? true });
  }
}

/** Load the tokenizer of the model folder `modelDir`. */
export async function loadTokenizer(modelDir: string, opts: LoadTokenizerOptions = {}): Promise<Tokenizer> {
  if (!existsSync(modelDir)) throw new DejavuError('model folder not found', modelDir);
  const tjPath = join(modelDir, 'tokenizer.json');
  const vocabPath = join(modelDir, 'vocab.json');
  const mergesPath = join(modelDir, 'merges.txt');
  const haveTj = existsSync(tjPath);
  const haveVm = existsSync(vocabPath) && existsSync(mergesPath);
  const prefer = opts.prefer ?? (haveTj ? 'tokenizer.json' : 'vocab+merges');
  if (prefer === 'tokenizer.json' && !haveTj) throw new DejavuError('no tokenizer.json in the model folder', modelDir);
  if (prefer === 'vocab+merges' && !haveVm) {
    throw new DejavuError(
      haveTj ? 'no vocab.json + merges.txt in the model folder' : 'no tokenizer.json nor vocab.json + merges.txt in the model folder',
      modelDir,
    );
  }

  const config = readJsonIfExists(join(modelDir, 'tokenizer_config.json'));
  const specialMap = readJsonIfExists(join(modelDir, 'special_tokens_map.json'));
  const tokenizerJson =
    prefer === 'tokenizer.json' ? readJson(tjPath) : tokenizerJsonFromVocabMerges(vocabPath, mergesPath, config, specialMap);
  const source = prefer === 'tokenizer.json' ? 'tokenizer.json' : 'vocab.json+merges.txt';

  // Decoding should give back the text: no "clean up" of spaces before punctuation unless the config asks for it.
  const hfConfig: Json = { clean_up_tokenization_spaces: false, ...config };
  let tok: HfTokenizer;
  try {
    tok = new HfTokenizer(tokenizerJson, hfConfig);
  } catch (e) {
    throw new DejavuError(`cannot build the tokenizer: ${(e as Error).message}`, prefer === 'tokenizer.json' ? tjPath : vocabPath);
  }

  const bosContent = tokenContent(config.bos_token) ?? tokenContent(specialMap.bos_token);
  let bosId: number | null = null;
  if (bosContent !== null) {
    const id = tok.token_to_id(bosContent);
    if (id === undefined) throw new DejavuError(`bos_token ${JSON.stringify(bosContent)} is not in the vocabulary`, modelDir);
    bosId = id;
  } else {
    const modelConfig = readJsonIfExists(join(modelDir, 'config.json'));
    if (typeof modelConfig.bos_token_id === 'number') bosId = modelConfig.bos_token_id;
  }
  const addBos = config.add_bos_token === true;
  if (addBos && bosId === null) {
    throw new DejavuError('tokenizer_config.json sets add_bos_token but names no bos_token', join(modelDir, 'tokenizer_config.json'));
  }
  let vocabSize = 0;
  for (const id of tok.get_vocab(true).values()) if (id + 1 > vocabSize) vocabSize = id + 1;
  // An id the model cannot embed would fail mid-forward without naming a file; say which two files disagree.
  const configPath = join(modelDir, 'config.json');
  const modelVocab = readJsonIfExists(configPath).vocab_size;
  if (typeof modelVocab === 'number' && vocabSize > modelVocab) {
    throw new DejavuError(
      `the tokenizer has ids up to ${vocabSize - 1}, but ${configPath} has vocab_size ${modelVocab} (a tokenizer of another model?)`,
      prefer === 'tokenizer.json' ? tjPath : vocabPath,
    );
  }
  return new HfBackedTokenizer(tok, source, bosId, addBos, vocabSize, prefixRulesFor(tokenizerJson, hfConfig));
}
