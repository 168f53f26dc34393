/**
 * `dejavu eval ppl --bundle B`: read and tokenize documents, then dense / oracle / predicted perplexity side by side
 * (runtime/sparse/ppl.ts). cli/commands/eval.ts parses the flags and calls runBundlePpl.
 */
import { availableParallelism } from 'node:os';
import { loadOptCheckpoint } from '../../checkpoints/opt-checkpoint.js';
import type { OptCheckpoint } from '../../checkpoints/types.js';
import { parseIntFlag, parseNumberFlag } from '../../cli/args.js';
import { DejavuError } from '../../common/errors.js';
import { log } from '../../common/progress.js';
import { createReadStats, describeSkips, readDocuments } from '../../datasets/read.js';
import { loadTokenizer } from '../../datasets/tokenizer.js';
import type { DocumentSelection } from '../../datasets/types.js';
import { groupedSelectionProblem, loadBundle, readManifest, type Bundle } from '../../export/bundle.js';
import { recordedQualityJson } from '../../export/quality.js';
import { KV_POLICIES, MLP_SELECTIONS, type KvPolicy, type MlpSelection, type SparseMode } from './model.js';
import { bundlePerplexity } from './ppl.js';

export interface BundlePplOptions {
  model: string;
  bundle: string;
  data: string[];
  selection?: DocumentSelection;
  /** Tokens per document, BOS included. */
  maxLen: number;
  headsFrac?: number;
  mlpK?: number;
  headsK?: number;
  /** Predicted MLP top-k over this many neuron groups (SparseOptions.mlpGroups). */
  mlpGroups?: number;
  /** KV-cache policy of the sparse modes (default 'all'). */
  kvPolicy?: KvPolicy;
  /** Default: dense, oracle, predicted. */
  modes?: SparseMode[];
  quiet?: boolean;
  /** Worker threads for the sparse modes. */
  threads?: number;
  ckpt?: OptCheckpoint;
  loadedBundle?: Bundle;
}

/** Token ids of the selected documents, each `[BOS] + text` cut to maxLen (documents under 2 tokens dropped). */
export async function tokenizeDocs(model: string, data: string[], selection: DocumentSelection, maxLen: number): Promise<Int32Array[]> {
  if (!(Number.isInteger(maxLen) && maxLen >= 2)) throw new DejavuError(`${maxLen} must be an integer >= 2`, '--max-len');
  const tok = await loadTokenizer(model);
  const stats = createReadStats();
  const docs: Int32Array[] = [];
  for await (const doc of readDocuments(data, selection, stats)) {
    const ids = tok.encode(doc.text, maxLen);
    if (ids.length >= 2) docs.push(ids);
  }
  const skips = describeSkips(stats);
  if (skips) log(skips);
  return docs;
}

export async function runBundlePpl(o: BundlePplOptions): Promise<Record<string, unknown>> {
  const t0 = performance.now();
  const ckpt = o.ckpt ?? (await loadOptCheckpoint(o.model, { quiet: o.quiet }));
  if (o.maxLen > ckpt.config.maxPositionEmbeddings) {
    throw new DejavuError(`${o.maxLen} exceeds max_position_embeddings ${ckpt.config.maxPositionEmbeddings}`, '--max-len');
  }
  const bundle = o.loadedBundle ?? loadBundle(o.bundle, ckpt);
  const docs = await tokenizeDocs(o.model, o.data, o.selection ?? {}, o.maxLen);
  const res = await bundlePerplexity(ckpt, bundle, docs, {
    modes: o.modes ?? ['dense', 'oracle', 'predicted'],
    headsFrac: o.headsFrac,
    mlpK: o.mlpK,
    headsK: o.headsK,
    mlpGroups: o.mlpGroups,
    kvPolicy: o.kvPolicy,
    quiet: o.quiet,
    threads: o.threads,
  });
  // The quality the bundle recorded at export (calibration docs), beside this run's figures.
  const recorded = recordedQualityJson(bundle.manifest);
  return {
    ...res,
    max_len: o.maxLen,
    seconds: Math.round((performance.now() - t0) / 10) / 100,
    ...(recorded ? { recorded_quality: recorded } : {}),
  };
}

/** A short text table of a runBundlePpl result. */
export function formatBundlePpl(r: Record<string, unknown>): string {
  const lines = [`documents ${r.docs}, predicted tokens ${r.tokens}`];
  const groups = r.mlp_selection === 'grouped' ? ` (G = ${r.mlp_groups})` : '';
  lines.push(`KV policy ${r.kv_policy}, MLP selection ${r.mlp_selection}${groups}`);
  for (const mode of ['dense', 'oracle', 'predicted']) {
    const m = r[mode] as { ppl: number; delta_vs_dense?: number } | undefined;
    if (!m) continue;
    const delta = m.delta_vs_dense === undefined ? '' : ` (${m.delta_vs_dense >= 0 ? '+' : ''}${(100 * m.delta_vs_dense).toFixed(2)}% vs dense)`;
    lines.push(`${mode.padEnd(10)} ppl ${m.ppl.toFixed(3)}${delta}`);
  }
  const pct = (v: unknown) => (typeof v === 'number' ? `${(100 * v).toFixed(1)}%` : '-');
  if (r.mlp_density !== undefined) {
    lines.push(`mean density: mlp ${pct(r.mlp_density)}, heads ${pct(r.head_density)}`);
    const m = r.mlp_density_per_layer as number[];
    const h = r.head_density_per_layer as number[];
    lines.push('per layer (mlp / heads): ' + m.map((v, l) => `L${l} ${pct(v)}/${pct(h[l])}`).join('  '));
  }
  const rq = r.recorded_quality as { summary?: string } | undefined;
  if (rq?.summary) lines.push(`bundle's ${rq.summary}`);
  return lines.join('\n');
}

/** --kv-policy: 'all' (default) or 'selected'. */
export function parseKvPolicy(v: string | undefined): KvPolicy {
  if (v === undefined) return 'all';
  if (!(KV_POLICIES as readonly string[]).includes(v)) throw new DejavuError(`expected ${KV_POLICIES.join(' or ')}, got '${v}'`, '--kv-policy');
  return v as KvPolicy;
}

/**
 * --mlp-select and --mlp-groups on the CPU: 'exact' (default) is one top-k over all neurons; 'grouped' needs G
 * (--mlp-groups; the GPU derives its G per layer from its kernel's blocks, so the CPU has no G of its own to default
 * to). --mlp-groups alone means grouped, as it did before --mlp-select existed; with 'exact' it is refused.
 */
export function resolveMlpSelection(select: string | undefined, groups: string | undefined): { selection: MlpSelection; groups?: number } {
  if (select !== undefined && !(MLP_SELECTIONS as readonly string[]).includes(select)) {
    throw new DejavuError(`expected ${MLP_SELECTIONS.join(' or ')}, got '${select}'`, '--mlp-select');
  }
  const g = groups !== undefined ? parseIntFlag(groups, '--mlp-groups') : undefined;
  if (select === 'exact' && g !== undefined) throw new DejavuError('applies to --mlp-select grouped; drop it or choose grouped', '--mlp-groups');
  if (select === 'grouped' && g === undefined) {
    throw new DejavuError('grouped needs --mlp-groups G on the CPU (the MLP top-k split over G equal neuron groups)', '--mlp-select');
  }
  return g === undefined ? { selection: 'exact' } : { selection: 'grouped', groups: g };
}

/** The flags of `dejavu eval ppl` that the bundle path reads (as commander gives them: strings). */
export interface BundleCliFlags {
  model: string;
  data: string[];
  bundle?: string;
  headsFrac?: string;
  mlpK?: string;
  headsK?: string;
  mlpGroups?: string;
  mlpSelect?: string;
  kvPolicy?: string;
  modes?: string;
  json?: boolean;
}

/** The `dejavu eval ppl --bundle` action (flag parsing beyond the dense command's, then print). */
export async function runBundleCli(
  f: BundleCliFlags,
  common: { selection: DocumentSelection; maxLen: number; threads?: number },
): Promise<void> {
  // Integers must be written as digits (cli/args.ts), fractions as numbers > 0.
  const num = (v: string | undefined, flag: string, int: boolean): number | undefined => {
    if (v === undefined) return undefined;
    return int ? parseIntFlag(v, flag) : parseNumberFlag(v, flag, { above: 0, max: 1 });
  };
  const modes = (f.modes ?? 'dense,oracle,predicted').split(',').map((s) => s.trim());
  for (const m of modes) {
    if (m !== 'dense' && m !== 'oracle' && m !== 'predicted') throw new DejavuError(`unknown mode '${m}' (dense, oracle, predicted)`, '--modes');
  }
  const headsFrac = num(f.headsFrac, '--heads-frac', false);
  const mlp = resolveMlpSelection(f.mlpSelect, f.mlpGroups);
  // The CPU's grouped rule measures what the GPU's fused predictors pick; a bundle the GPU cannot run grouped has no
  // such figure to measure (export/bundle.ts groupedSelectionProblem).
  const why = mlp.selection === 'grouped' && f.bundle ? groupedSelectionProblem(readManifest(f.bundle)) : null;
  if (why) throw new DejavuError(why, f.bundle);
  const kvPolicy = parseKvPolicy(f.kvPolicy);
  const r = await runBundlePpl({
    model: f.model,
    bundle: f.bundle!,
    data: f.data,
    selection: common.selection,
    maxLen: common.maxLen,
    headsFrac,
    mlpK: num(f.mlpK, '--mlp-k', true),
    headsK: num(f.headsK, '--heads-k', true),
    mlpGroups: mlp.groups,
    kvPolicy,
    modes: modes as SparseMode[],
    threads: common.threads ?? availableParallelism(),
    // No quiet here: progress goes to stderr with --json too (plain lines off a terminal); --quiet turns it off.
  });
  process.stdout.write((f.json ? JSON.stringify(r) : formatBundlePpl(r)) + '\n');
}
