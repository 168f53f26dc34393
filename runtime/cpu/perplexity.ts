/**
 * Perplexity over a stream of tokenized documents, independent of how a document is scored: the dense CPU model
 * (in-process or a worker pool), and later the sparse runtimes (`--bundle`), each provide a DocScorer.
 * ppl = exp(total NLL / predicted tokens); a document of T ids predicts T-1 tokens (the BOS is never predicted).
 */
import { logSumExp } from './ops.js';

/** Total negative log-likelihood (nats) of one document's predicted tokens, and how many there were. */
export interface DocScore {
  nll: number;
  predicted: number;
}

/** Scores one document (ids include the BOS). May be async (worker pools, GPU). */
export type DocScorer = (ids: Int32Array) => DocScore | Promise<DocScore>;

export interface PerplexityResult {
  ppl: number;
  /** Predicted tokens (the NLL denominator). */
  tokens: number;
  docs: number;
  seconds: number;
  tokens_per_s: number;
}

/** NLL of ids[1..T-1] under logits [T][V] (row t predicts token t+1), in float64. */
export function sequenceNll(logits: Float32Array, ids: ArrayLike<number>, vocabSize: number): DocScore {
  const T = ids.length;
  let nll = 0;
  for (let t = 0; t + 1 < T; t++) {
    const off = t * vocabSize;
    nll += logSumExp(logits, off, vocabSize) - logits[off + ids[t + 1]];
  }
  return { nll, predicted: Math.max(0, T - 1) };
}

export interface PerplexityOptions {
  /** Documents scored at once (a worker pool's size); results are summed in document order regardless. */
  concurrency?: number;
  /** Called after each scored document with running totals. */
  onDoc?: (p: { docs: number; tokens: number; seconds: number }) => void;
}

/**
 * Scores every document of `docs` with `scorer` and returns the corpus perplexity. Up to `concurrency` documents are
 * in flight; per-document NLLs are summed in input order so the result does not depend on which finished first.
 */
export async function perplexity(
  docs: AsyncIterable<Int32Array> | Iterable<Int32Array>,
  scorer: DocScorer,
  opts: PerplexityOptions = {},
): Promise<PerplexityResult> {
  const concurrency = Math.max(1, opts.concurrency ?? 1);
  const t0 = performance.now();
  const nlls: number[] = [];
  let tokens = 0;
  let done = 0;
  const inFlight = new Set<Promise<void>>();
  // A scorer can fail while the loop is still reading; remember the first failure and rethrow it at the next wait
  // (a rejected promise may have left the set before anyone awaited it).
  let failure: { error: unknown } | undefined;
  let index = 0;
  for await (const ids of docs) {
    const i = index++;
    const tracked: Promise<void> = Promise.resolve()
      .then(() => scorer(ids))
      .then((s) => {
        nlls[i] = s.nll;
        tokens += s.predicted;
        done++;
        opts.onDoc?.({ docs: done, tokens, seconds: (performance.now() - t0) / 1000 });
      })
      .catch((error) => void (failure ??= { error }))
      .finally(() => inFlight.delete(tracked));
    inFlight.add(tracked);
    if (inFlight.size >= concurrency) await Promise.race(inFlight);
    if (failure) break;
  }
  await Promise.all(inFlight);
  if (failure) throw failure.error;
  let total = 0;
  for (const n of nlls) total += n;
  const seconds = (performance.now() - t0) / 1000;
  return {
    ppl: tokens > 0 ? Math.exp(total / tokens) : NaN,
    tokens,
    docs: index,
    seconds,
    tokens_per_s: seconds > 0 ? tokens / seconds : 0,
  };
}

/** Documents -> token ids as eval scores them: tokenizer.encode(text, maxLen) (BOS included, counted in maxLen). */
export async function* encodeDocuments(
  docs: AsyncIterable<{ text: string }>,
  tokenizer: { encode(text: string, maxLen?: number): Int32Array },
  maxLen: number,
): AsyncGenerator<Int32Array> {
  for await (const d of docs) yield tokenizer.encode(d.text, maxLen);
}
