/**
 * `dejavu bench --device cpu|cuda ...`: decode latency dense vs sparse. The CPU path is runtime/sparse/bench-cpu.ts,
 * the CUDA path runtime/cuda/bench.ts. Both are imported inside the action: this module imports nothing heavy at top
 * level (the CUDA machine has neither tfjs nor apache-arrow).
 */
import { Option, type Command } from 'commander';
import { DejavuError } from '../../common/errors.js';
import { MLP_INPUTS, type MlpInput } from '../../common/mlp-input.js';
import { intArg } from '../args.js';
import { CUDA_PATHS, MLP_SELECTIONS, type CudaOptions } from '../../runtime/cuda/lib.js';
import type { CudaBenchOptions } from '../../runtime/cuda/bench.js';
import { QUALITY_COST, groupsText, kvPoliciesTable, sweepTables, type SweepPoint } from '../../runtime/cuda/bench-format.js';

export interface Density {
  mlp: number;
  heads: number;
}

/** "mlp=0.1,heads=1.0" (either key may be left out: 1.0 = dense). */
export function parseDensity(s: string): Density {
  const out: Density = { mlp: 1, heads: 1 };
  for (const part of s.split(',')) {
    const m = /^\s*(mlp|heads)\s*=\s*([0-9.eE+-]+)\s*$/.exec(part);
    const v = m ? Number(m[2]) : NaN;
    if (!m || !(v > 0 && v <= 1)) {
      throw new DejavuError(`cannot parse '${part}': expected mlp=F,heads=F with 0 < F <= 1`, '--density');
    }
    out[m[1] as keyof Density] = v;
  }
  return out;
}

/** An integer flag >= 1 (bench-main's --seed and --reps too). */
export const positiveInt = (flag: string) => intArg(flag);

/** The flags `dejavu bench --device cuda` reads (addCudaBenchOptions defines them). */
export interface CudaBenchFlags {
  model?: string;
  shape?: string;
  bundle?: string;
  density?: string;
  prompt: number;
  gen: number;
  mlpInput?: MlpInput;
  mlpSelect?: CudaOptions['selection'];
  path?: CudaOptions['path'];
  kvPolicy?: CudaOptions['kvPolicy'];
  sweep?: boolean;
  rank?: number;
  data?: string[];
  evalDocs?: number;
  maxLen?: number;
  prefillLen?: number;
  json?: boolean;
}

interface BenchFlags extends CudaBenchFlags {
  device: string;
  rounds?: number;
  mlpGroups?: string;
}

/**
 * The options of the CUDA bench, on `dejavu bench` and on runtime/cuda/bench-main.ts (the GPU machine's entry, which
 * has commander but not the rest of the CLI): one definition, one mapping (cudaBenchOptions).
 */
export function addCudaBenchOptions(cmd: Command): Command {
  return cmd
    .option('--model <dir>', 'Hugging Face OPT folder (cpu: required; cuda: real weights instead of --shape)')
    .option('--shape <name>', 'cuda only: random fp16 weights of opt-6.7b | opt-13b | opt-30b | opt-66b')
    .option('--bundle <dir>', 'predictor bundle (sparse selections from its predictors)')
    .option('--density <spec>', 'fixed densities, e.g. mlp=0.1,heads=1.0 (with --bundle: overrides its k)')
    .option('--prompt <n>', 'prompt tokens', positiveInt('--prompt'), 128)
    .option('--gen <n>', 'generated (timed) tokens', positiveInt('--gen'), 128)
    .addOption(
      new Option('--mlp-input <tap>', 'cuda, random predictors: where MLP predictors read (as train --mlp-input; default att_in)').choices([...MLP_INPUTS]),
    )
    .addOption(
      new Option('--mlp-select <how>', 'cuda: MLP neurons by exact top-k (default), or grouped (each of G neuron groups its share; faster, +1% ppl on opt-mini: docs/cuda.md v24; streamed path, MLP predictors reading att_in)').choices([...MLP_SELECTIONS]),
    )
    .addOption(
      new Option('--path <path>', 'cuda: the kernels: streamed (sm_90+, d <= 10240), portable (per-op, sm_80+), or auto (streamed where it runs; default)').choices([...CUDA_PATHS]),
    )
    .addOption(
      new Option(
        '--kv-policy <p>',
        "K/V of skipped heads: all (default: every head's K/V every step) or selected (a skipped head computes no K/V, its slots masked when picked later: faster, more perplexity); cuda: the other policy is timed beside it",
      ).choices(['all', 'selected']),
    )
    .option('--sweep', 'cuda: ms/token over heads 0.2/0.5/0.75/1 x neurons 0.05/0.1/0.2/0.5 x both KV policies (no --density)')
    .option('--rank <r>', 'cuda, random predictors: their rank (default 128; a multiple of 8)', positiveInt('--rank'))
    .option('--data <paths...>', 'cuda, with --model: C4 files; the timed configuration\'s dense and predicted perplexity go in the same JSON (quality)')
    .option('--eval-docs <n>', 'cuda, with --data: the first N documents scored (default 20)', positiveInt('--eval-docs'))
    .option('--max-len <n>', 'cuda, with --data: tokens per scored document, BOS included (default 512)', positiveInt('--max-len'))
    .option('--prefill-len <n>', 'cuda: also time the prefill of one sequence of N tokens against the fp16 GEMM rate (prefill)', positiveInt('--prefill-len'))
    .option('--json', 'print one JSON object on stdout');
}

/** Parsed CUDA flags -> runCudaBench's options. */
export function cudaBenchOptions(f: CudaBenchFlags): CudaBenchOptions {
  return {
    shape: f.shape,
    model: f.model,
    bundle: f.bundle,
    density: f.density ? parseDensity(f.density) : undefined,
    prompt: f.prompt,
    gen: f.gen,
    mlpInput: f.mlpInput,
    mlpSelect: f.mlpSelect,
    path: f.path,
    kvPolicy: f.kvPolicy,
    sweep: !!f.sweep,
    rank: f.rank,
    data: f.data,
    evalDocs: f.evalDocs,
    maxLen: f.maxLen,
    prefillLen: f.prefillLen,
    json: !!f.json,
  };
}

export function register(program: Command): void {
  const cmd = program
    .command('bench')
    .description('decode latency, dense vs sparse: per token, per block, tokens/s and the memory-traffic floor')
    .option('--device <device>', 'cpu or cuda', 'cpu');
  addCudaBenchOptions(cmd)
    .option('--rounds <n>', 'cpu: alternating dense/sparse rounds, median reported', positiveInt('--rounds'))
    .option('--mlp-groups <g>', 'cpu: G neuron groups of --mlp-select grouped (required with it; alone it implies grouped)')
    .action(async (f: BenchFlags) => {
      let result: Record<string, unknown>;
      if (f.device === 'cuda') {
        // The CUDA engine derives G per layer from its kernel's blocks (its JSON reports it: mlp_groups).
        if (f.mlpGroups) throw new DejavuError('the CUDA engine picks G per layer from its kernel\'s blocks; the flag is for --device cpu', '--mlp-groups');
        // Imported here, not at top level: the CPU bench's dependencies stay off the CUDA machine and vice versa.
        const mod = await import('../../runtime/cuda/bench.js');
        result = await mod.runCudaBench(cudaBenchOptions(f));
      } else if (f.device === 'cpu') {
        if (!f.model) throw new DejavuError('the CPU bench needs a model folder', '--model');
        if (f.shape) throw new DejavuError('--shape (random weights of a large model) is for --device cuda', '--shape');
        if (f.mlpInput) throw new DejavuError('--mlp-input places random predictors on the GPU; the CPU bench takes them from --bundle', '--mlp-input');
        if (f.path) throw new DejavuError('--path picks the CUDA kernels; the CPU bench has one path', '--path');
        if (f.rank) throw new DejavuError('--rank sizes random predictors on the GPU; the CPU bench takes them from --bundle', '--rank');
        if (f.sweep) throw new DejavuError('the density sweep is for --device cuda', '--sweep');
        for (const [k, flag] of [['data', '--data'], ['evalDocs', '--eval-docs'], ['maxLen', '--max-len'], ['prefillLen', '--prefill-len']] as const)
          if (f[k] !== undefined) throw new DejavuError('is for --device cuda (the CPU\'s quality: dejavu eval ppl --bundle)', flag);
        const { runCpuBench } = await import('../../runtime/sparse/bench-cpu.js');
        const { parseKvPolicy, resolveMlpSelection } = await import('../../runtime/sparse/eval.js');
        const mlp = resolveMlpSelection(f.mlpSelect, f.mlpGroups);
        result = await runCpuBench({
          model: f.model,
          bundle: f.bundle,
          density: f.density ? parseDensity(f.density) : undefined,
          prompt: f.prompt,
          gen: f.gen,
          rounds: f.rounds,
          kvPolicy: parseKvPolicy(f.kvPolicy),
          mlpGroups: mlp.groups,
          // No quiet here: progress goes to stderr with --json too (plain lines off a terminal); --quiet turns it off.
        });
      } else {
        throw new DejavuError(`unknown device '${f.device}' (expected cpu or cuda)`, '--device');
      }
      if (f.json) process.stdout.write(JSON.stringify(result) + '\n');
      else process.stdout.write(formatBench(result) + '\n');
    });
}

/** A human-readable table of a bench result (CPU or CUDA: the shared keys; a CUDA sweep as its tables). */
export function formatBench(r: Record<string, unknown>): string {
  const num = (v: unknown) => (typeof v === 'number' ? v.toFixed(3) : '-');
  const dense = (r.dense ?? {}) as Record<string, unknown>;
  const sparse = (r.sparse ?? {}) as Record<string, unknown>;
  const lines = [`device: ${String(r.device)}`];
  if (Array.isArray(r.sweep)) {
    const g = r.mlp_selection === 'grouped' ? ' (G per layer in the JSON: sweep[].mlp_groups)' : '';
    lines.push(`MLP selection ${String(r.mlp_selection ?? 'exact')}${g}`, '');
    lines.push(sweepTables(r.sweep as SweepPoint[], { denseMs: dense.ms_per_token as number, floorMs: r.floor_ms as number }));
    lines.push('', QUALITY_COST);
    return lines.join('\n');
  }
  if (r.mlp_density !== undefined) lines.push(`density: mlp ${num(r.mlp_density)}, heads ${num(r.head_density)}`);
  const dn = r.density as Record<string, unknown> | undefined; // the CUDA bench's kept fractions
  if (r.mlp_density === undefined && typeof dn === 'object' && dn) lines.push(`density: mlp ${num(dn.mlp)}, heads ${num(dn.heads)}`);
  lines.push('', 'ms/token           dense     sparse');
  lines.push(`total         ${num(dense.ms_per_token).padStart(10)} ${num(sparse.ms_per_token).padStart(10)}`);
  const db = (dense.blocks_ms_per_token ?? {}) as Record<string, unknown>;
  const sb = (sparse.blocks_ms_per_token ?? {}) as Record<string, unknown>;
  for (const k of Object.keys({ ...db, ...sb })) {
    lines.push(`  ${k.padEnd(12)}${num(db[k]).padStart(10)} ${num(sb[k]).padStart(10)}`);
  }
  lines.push(`tokens/s      ${num(dense.tokens_per_s).padStart(10)} ${num(sparse.tokens_per_s).padStart(10)}`);
  lines.push('', `speedup: ${num(r.speedup)}x`);
  if (r.mlp_block_speedup !== undefined) lines.push(`MLP block speedup: ${num(r.mlp_block_speedup)}x (incl. predictors ${num(r.mlp_block_speedup_incl_predictors)}x)`);
  const a = r.amdahl as Record<string, unknown> | undefined;
  if (a) {
    lines.push(`Amdahl, MLP only (dense MLP share ${num(a.dense_mlp_share)}): at most ${num(a.limit_mlp_free)}x (the MLP taking no time)`);
    lines.push(
      `  ${num(a.at_proportional_mlp_speedup)}x if the MLP time scaled with the neurons kept (MLP ${num(a.proportional_mlp_speedup)}x, an estimate); ` +
        `${num(a.at_measured_mlp_speedup)}x at the measured MLP ${num(a.measured_mlp_speedup)}x, ${num(a.at_measured_mlp_speedup_incl_predictors)}x with the predictors`,
    );
  }
  lines.push(`memory-traffic floor: dense ${num(r.floor_ms)} ms, sparse ${num(r.sparse_floor_ms)} ms`);
  if (typeof r.kv_policy === 'string') {
    const g = r.mlp_selection === 'grouped' && r.mlp_groups !== undefined ? ` (${groupsText(r.mlp_groups)})` : '';
    lines.push(`KV policy ${r.kv_policy}, MLP selection ${String(r.mlp_selection ?? 'exact')}${g}`);
  }
  const kvTable = kvPoliciesTable(r); // the CUDA bench: both KV policies side by side
  if (kvTable) lines.push('', kvTable, '', QUALITY_COST);
  // The CPU bench measures what policy 'all' costs over 'selected'; the CUDA bench times both (kv_policies).
  const kvSrc = r.kv_policy_cost ?? r.kv_policy; // kv_policy held the cost object in results before kv_policy_cost
  const kv = typeof kvSrc === 'object' && kvSrc ? (kvSrc as Record<string, unknown>) : undefined;
  if (kv) {
    const kept = typeof kv.heads_kept_fraction === 'number' ? `${(100 * kv.heads_kept_fraction).toFixed(0)}% of heads kept; ` : '';
    lines.push(`KV policy cost of all over selected (K/V rows of skipped heads): ${num(kv.extra_ms_per_token)} ms/token (${kept}K/V for all heads ${num(kv.kv_all_heads_ms_per_token)} ms)`);
  }
  return lines.join('\n');
}
