/**
 * Tokenize only as much of a document as `maxLen` ids need (docs/datasets.md, "Bounded prefix").
 *
 * Pure functions over a string and an `encode` callback, so the rules can be tested without a tokenizer and the
 * characters handed to the tokenizer can be counted.
 *
 * Why a cut can be exact. OPT's tokenizer is GPT-2's byte-level BPE: added tokens (`</s>`, ...) are split out first,
 * then the ByteLevel pre-tokenizer splits the rest with
 *   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 * and BPE runs inside each piece (pre-token) on its own. If the whole text has a piece boundary at `i`, and the pieces
 * before `i` are found the same way in `text.slice(0, i)`, the prefix's ids are exactly the whole text's first ids.
 * That holds at `i` when the code point before `i` (a) and the one at `i` (b) are:
 *   1. a not whitespace, b whitespace: no piece continues from a non-space into a space;
 *   2. a letter, b neither letter nor whitespace: ` ?\p{L}+` and the contractions end at a;
 *   3. a digit, b neither digit nor whitespace: ` ?\p{N}+` ends at a;
 *   4. a other (punctuation, symbol, mark), not `'`, and b a letter or a digit: ` ?[^\s\p{L}\p{N}]+` ends at a (`'`
 *      is left out because `'s`, `'re`, ... would take the letters after it).
 * In each case the piece holding a ends at a in the whole text and in the prefix alike; the pieces before it are the
 * same because the only lookahead in the pattern, `(?!\S)`, ends a whitespace run, which lies before a's piece. The
 * classes are tested with the same JavaScript regular expressions (`u` flag) as the tokenizer's. A cut is never taken
 * between the two halves of a surrogate pair or inside an occurrence of an added token. Whitespace runs are only cut
 * where they start (rule 1): inside one, `\s+(?!\S)` would match differently at the end of the prefix.
 *
 * Text with no such boundary near the budget (a 20 MB run without spaces, CJK without punctuation) is one long piece.
 * BPE of a prefix of a piece can differ from BPE of the whole piece near the cut (a merge across the cut is missing,
 * which can change the merges just before it), so a forced cut must yield MARGIN ids more than needed, and only the
 * first maxLen are kept. Merges act between neighbours, so the difference stays within the last few ids of the
 * prefix: with opt-mini's tokenizer, at most 4 ids differed over 360 random cuts of long runs of letters, digits, CJK,
 * slashes and spaces, and tests/datasets/token-prefix.test.ts compares against the whole encoding on such runs (it fails
 * with no margin: a prefix of 16 slashes is one id, the whole run starts with a longer one). It is not a proof, which
 * is why cuts at piece boundaries are preferred.
 *
 * The bound. A token covers at most T bytes (T = the longest vocabulary entry, in bytes) and a UTF-16 code unit is at
 * least one byte, so P code units yield at least P / T tokens, whatever the text. The budget starts at
 * INITIAL_FACTOR * maxLen code units and doubles; the prefix is cut in [budget / 2 - T, budget] (a forced cut moves
 * left by less than T to leave a surrogate pair or an added token whole), so once
 * budget >= 2 * (maxLen + MARGIN + 1) * T the prefix has enough ids and the loop stops. The last budget is therefore
 * below max(INITIAL_FACTOR * maxLen, 4 * (maxLen + MARGIN + 1) * T), and the characters handed to the tokenizer over all
 * attempts (each at most its budget, budgets doubling) below twice that: maxCharsEncoded(). On ordinary text the
 * first attempt suffices (about 4-5 characters a token in English), so one call of at most 8 * maxLen characters.
 */

/** Ids a forced cut (inside a piece) must yield beyond maxLen before its first maxLen ids are taken. */
export const MARGIN = 32;
/** The first budget, in UTF-16 code units per id asked for. */
export const INITIAL_FACTOR = 8;

export interface PrefixRules {
  /** Contents of the tokenizer's added tokens: a cut never falls inside an occurrence of one. */
  addedTokens: readonly string[];
  /** The longest vocabulary entry or added token, in bytes (T above); >= 1. */
  maxTokenBytes: number;
  /** Ids the post-processor appends after the text's ids (an EOS); they do not count as text ids. */
  suffixIds: number;
}

const WS = /^\s$/u;
const LETTER = /^\p{L}$/u;
const DIGIT = /^\p{N}$/u;

type CharClass = 'W' | 'L' | 'N' | 'P';

function classOf(cp: number): CharClass {
  // ASCII fast path; the regexes below agree with it.
  if (cp < 0x80) {
    if (cp === 0x20 || (cp >= 0x09 && cp <= 0x0d)) return 'W';
    if ((cp >= 0x41 && cp <= 0x5a) || (cp >= 0x61 && cp <= 0x7a)) return 'L';
    if (cp >= 0x30 && cp <= 0x39) return 'N';
    return 'P';
  }
  const ch = String.fromCodePoint(cp);
  if (WS.test(ch)) return 'W';
  if (LETTER.test(ch)) return 'L';
  if (DIGIT.test(ch)) return 'N';
  return 'P';
}

const isHigh = (u: number) => u >= 0xd800 && u <= 0xdbff;
const isLow = (u: number) => u >= 0xdc00 && u <= 0xdfff;

/** The code point that ends just before index i (a surrogate pair counts as one). */
function codePointBefore(text: string, i: number): number {
  const u = text.charCodeAt(i - 1);
  if (isLow(u) && i >= 2 && isHigh(text.charCodeAt(i - 2))) return text.codePointAt(i - 2) as number;
  return u;
}

function insideAddedToken(text: string, i: number, added: readonly string[]): boolean {
  for (const t of added) {
    for (let s = Math.max(0, i - t.length + 1); s < i; s++) if (text.startsWith(t, s)) return true;
  }
  return false;
}

/** Whether the ids of text.slice(0, i) are exactly the first ids of the whole text's (rules 1-4 above). */
export function isSafeCut(text: string, i: number, added: readonly string[] = []): boolean {
  if (i <= 0 || i >= text.length) return false;
  // Between the halves of a surrogate pair, a and b are lone surrogates, class 'P': no rule below cuts there.
  const a = codePointBefore(text, i);
  const b = text.codePointAt(i) as number;
  const ca = classOf(a);
  const cb = classOf(b);
  let ok: boolean;
  if (cb === 'W') ok = ca !== 'W';
  else if (ca === 'L') ok = cb !== 'L';
  else if (ca === 'N') ok = cb !== 'N';
  else if (ca === 'P') ok = a !== 0x27 && (cb === 'L' || cb === 'N');
  else ok = false;
  return ok && !insideAddedToken(text, i, added);
}

/** The largest safe cut in [lo, hi], or -1. */
export function lastSafeCut(text: string, hi: number, lo: number, added: readonly string[] = []): number {
  for (let i = Math.min(hi, text.length - 1); i >= Math.max(lo, 1); i--) if (isSafeCut(text, i, added)) return i;
  return -1;
}

/** A cut at about `at` that splits neither a surrogate pair nor an added token (moved left if it would). */
export function forcedCut(text: string, at: number, added: readonly string[] = []): number {
  let i = Math.min(at, text.length);
  for (;;) {
    if (i > 0 && i < text.length && isHigh(text.charCodeAt(i - 1)) && isLow(text.charCodeAt(i))) i--;
    else if (i > 0 && i < text.length && insideAddedToken(text, i, added)) i--;
    else return i;
  }
}

/** An upper bound on the characters (UTF-16 code units) encodePrefix hands to `encode` over all its attempts. */
export function maxCharsEncoded(maxLen: number, maxTokenBytes: number): number {
  return 2 * Math.max(INITIAL_FACTOR * maxLen, 4 * (maxLen + MARGIN + 1) * Math.max(1, maxTokenBytes));
}

/**
 * The first `maxLen` ids of `encode(text)`, computed from prefixes of `text` (see the top of this file). `encode`
 * returns the ids of a string with the tokenizer's special tokens (the BOS first).
 */
export function encodePrefix(encode: (s: string) => number[], text: string, maxLen: number, rules: PrefixRules): number[] {
  for (let budget = INITIAL_FACTOR * maxLen; ; budget *= 2) {
    if (text.length <= budget) return encode(text).slice(0, maxLen);
    let cut = lastSafeCut(text, budget, budget >> 1, rules.addedTokens);
    const forced = cut < 0;
    if (forced) cut = forcedCut(text, budget, rules.addedTokens);
    const ids = encode(text.slice(0, cut));
    if (ids.length - rules.suffixIds >= maxLen + (forced ? MARGIN : 0)) return ids.slice(0, maxLen);
  }
}
