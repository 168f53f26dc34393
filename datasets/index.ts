/** datasets/: C4 readers, document selection and the tokenizer (docs/datasets.md). */
export type { Document, DocumentSelection, ReadStats, Tokenizer } from './types.js';
export { createReadStats, describeSkips, readDocuments } from './read.js';
export { resolveInputs } from './inputs.js';
export { loadTokenizer } from './tokenizer.js';
