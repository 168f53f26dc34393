/** The typed interface between datasets/ and the stages that read text (collect, eval). */

/** One C4 document. `index` is its position in file order across all inputs (document 0 = first line/row). */
export interface Document {
  index: number;
  text: string;
  /** The file it came from. */
  source: string;
}

/** `--docs N` = the first N documents in file order; `--sample N --seed S` = a seeded random sample (yielded in file
 *  order). Neither = every document. */
export interface DocumentSelection {
  docs?: number;
  sample?: number;
  seed?: number;
}

/** Counts a reader fills in while streaming; malformed lines/rows are skipped and counted, never fatal; text with
 *  characters that had to be replaced is kept and counted. */
export interface ReadStats {
  documents: number;
  skipped: number;
  /** A few examples of what was skipped: "file:line: reason". */
  skippedExamples: string[];
  /** Documents kept with replaced characters: bytes that are not UTF-8, lone surrogate escapes (now U+FFFD). */
  replaced: number;
  /** A few examples: "file:line 17: bytes that are not UTF-8, replaced by U+FFFD". */
  replacedExamples: string[];
  files: string[];
}

export interface Tokenizer {
  /** Token ids with the BOS prepended once when the model folder says so (`add_bos_token`); `maxLen` counts the BOS. */
  encode(text: string, maxLen?: number): Int32Array;
  /** Text of `ids`; special tokens (the BOS among them) are left out unless `skipSpecialTokens` is false. */
  decode(ids: ArrayLike<number>, opts?: { skipSpecialTokens?: boolean }): string;
  readonly bosId: number | null;
  readonly vocabSize: number;
  /** 'tokenizer.json' or 'vocab.json+merges.txt' */
  readonly source: string;
}
