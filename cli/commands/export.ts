/** `dejavu export`: argument parsing and the summary table; the work is in export/export.ts (export/budget.ts with
 *  --ppl-budget or --calib-data). */
import type { Command } from 'commander';
import { DejavuError } from '../../common/errors.js';
import { parseIntFlag, parseNumberFlag } from '../args.js';

interface Flags {
  predictors: string;
  model: string;
  out: string;
  recall?: string;
  mlpK?: string;
  headsK?: string;
  layers?: string;
  partial?: boolean;
  pplBudget?: string;
  calibData?: string[];
  calibDocs: string;
  calibMaxLen: string;
  kvPolicy?: string;
  mlpSelect?: string;
  mlpGroups?: string;
  workers?: string;
  device?: string;
  json?: boolean;
}

const int = (v: string | undefined, flag: string): number | undefined => (v === undefined ? undefined : parseIntFlag(v, flag));

/** `--ppl-budget`: `1%` or a fraction (`0.01`); a bare number of 1 or more is refused (1 would be 100%). */
export function parseBudget(v: string): number {
  const s = v.trim();
  if (s.endsWith('%')) return parseNumberFlag(s.slice(0, -1), '--ppl-budget', { min: 0 }) / 100;
  const x = parseNumberFlag(s, '--ppl-budget', { min: 0 });
  if (x >= 1) throw new DejavuError(`'${v}' is ambiguous: write a percentage (${x}%) or a fraction below 1 (0.01 = 1%)`, '--ppl-budget');
  return x;
}

/** Flags that only mean something with a calibration set. */
const CALIB_FLAGS = [
  ['kvPolicy', '--kv-policy'],
  ['mlpSelect', '--mlp-select'],
  ['mlpGroups', '--mlp-groups'],
  ['workers', '--workers'],
  ['device', '--device'],
] as const;

export function register(program: Command): void {
  program
    .command('export')
    .description('package trained predictors into a bundle (manifest.json + predictors.safetensors) bound to the model')
    .requiredOption('--predictors <dir>', 'train output folder (metrics.json + layer_XX.{mlp|attn}.safetensors)')
    .requiredOption('--model <dir>', 'the Hugging Face OPT folder the predictors were trained for')
    .requiredOption('--out <dir>', 'bundle folder to write')
    .option('--recall <q>', 'pick each k to reach this validation recall: 0.99 (k99) or 0.95 (k95)')
    .option('--mlp-k <n>', 'fixed number of MLP neurons per layer (instead of --recall)')
    .option('--heads-k <n>', 'fixed number of attention heads per layer (instead of --recall)')
    .option('--layers <spec>', "layers to sparsify: 'all' or e.g. 1-5, 0,2,4 (the others are marked dense)", 'all')
    .option('--partial', 'export the predictors of a train run that did not finish; the ones it lacks stay dense (listed on stderr)')
    .option('--ppl-budget <p>', 'choose each layer\'s k so that the predicted perplexity on --calib-data stays within P of dense (e.g. 1% or 0.01) with the fewest decode bytes')
    .option('--calib-data <paths...>', 'calibration text (C4 files, folders or globs): with --ppl-budget the search measures on it; with --recall the bundle\'s cost is measured and recorded')
    .option('--calib-docs <n>', 'the first N calibration documents', '24')
    .option('--calib-max-len <n>', 'tokens per calibration document, BOS included', '256')
    .option('--kv-policy <p>', 'with --calib-data: KV policy measured, all (default) or selected')
    .option('--mlp-select <how>', 'with --calib-data: MLP selection measured, exact (default) or grouped (needs --mlp-groups G)')
    .option('--mlp-groups <g>', 'with --calib-data: neuron groups of the grouped MLP top-k')
    .option('--workers <n>', 'with --calib-data: worker threads of the CPU measurements (default: the cores)')
    .option('--device <d>', 'with --calib-data: where the measurements run: auto (default: cuda when the CUDA library loads and a GPU is present, else cpu), cpu, or cuda (the GPU engine bench times)')
    .option('--json', 'print one JSON object on stdout')
    .action(async (f: Flags) => {
      const recall = f.recall === undefined ? undefined : Number(f.recall);
      if (f.recall !== undefined && !Number.isFinite(recall)) throw new DejavuError(`'${f.recall}' is not a number`, '--recall');
      const budget = f.pplBudget === undefined ? undefined : parseBudget(f.pplBudget);
      if (budget !== undefined && !f.calibData) throw new DejavuError('needs --calib-data FILES (the documents the budget is measured on)', '--ppl-budget');
      if (budget !== undefined) {
        const fixed = [f.recall && '--recall', f.mlpK && '--mlp-k', f.headsK && '--heads-k'].filter(Boolean);
        if (fixed.length) throw new DejavuError(`--ppl-budget chooses every k itself; drop ${fixed.join(', ')}`, '--ppl-budget');
      }
      if (!f.calibData) {
        const given = CALIB_FLAGS.filter(([key]) => f[key] !== undefined).map(([, flag]) => flag);
        if (given.length === 1) throw new DejavuError('only applies with --calib-data (what the calibration measures)', given[0]);
        if (given.length > 1) throw new DejavuError(`${given.join(', ')} only apply with --calib-data (what the calibration measures)`);
      }
      const { DEVICES } = await import('../../runtime/cuda/pick-device.js');
      if (f.device !== undefined && !(DEVICES as readonly string[]).includes(f.device)) throw new DejavuError(`expected ${DEVICES.join(', ')}, got '${f.device}'`, '--device');
      if (f.device === 'cuda' && f.workers !== undefined) throw new DejavuError('not with --device cuda: the GPU runs one engine', '--workers');
      const { loadOptCheckpoint } = await import('../../checkpoints/opt-checkpoint.js');
      const { exportBundle } = await import('../../export/export.js');
      const { log, warn } = await import('../../common/progress.js');
      const ckpt = await loadOptCheckpoint(f.model, { quiet: !!f.json });
      const opts = { predictors: f.predictors, out: f.out, recall, mlpK: int(f.mlpK, '--mlp-k'), headsK: int(f.headsK, '--heads-k'), layers: f.layers, partial: !!f.partial };
      let s: import('../../export/export.js').ExportSummary & { quality?: import('../../export/quality.js').QualityRecord };
      if (f.calibData) {
        const { parseKvPolicy, resolveMlpSelection } = await import('../../runtime/sparse/eval.js');
        const { availableParallelism } = await import('node:os');
        const { exportMeasured, exportToBudget } = await import('../../export/budget.js');
        const { pickDevice } = await import('../../runtime/cuda/pick-device.js');
        const { loadCudaLib } = await import('../../runtime/cuda/lib.js');
        const dev = await pickDevice(f.device, ckpt.config, () => loadCudaLib(), { grouped: f.mlpSelect === 'grouped' });
        if (dev.type === 'cpu' && dev.why) log(`--device auto: measuring on the CPU (${dev.why})`);
        if (dev.type === 'cuda' && f.workers !== undefined) warn('--workers applies to CPU measurements; the GPU runs one engine');
        // The GPU picks G from its kernel grid (a G given must equal it); the CPU needs one.
        const mlp = dev.type === 'cuda' && f.mlpSelect === 'grouped' && f.mlpGroups === undefined
          ? { selection: 'grouped' as const, groups: undefined }
          : resolveMlpSelection(f.mlpSelect, f.mlpGroups);
        const calib = {
          model: f.model,
          data: f.calibData,
          docs: parseIntFlag(f.calibDocs, '--calib-docs'),
          maxLen: parseIntFlag(f.calibMaxLen, '--calib-max-len', 2),
          kvPolicy: parseKvPolicy(f.kvPolicy),
          mlpGroups: mlp.groups,
          mlpSelection: mlp.selection,
          threads: f.workers !== undefined ? parseIntFlag(f.workers, '--workers') : availableParallelism(),
          device: dev.type === 'cuda' ? { type: 'cuda' as const, lib: dev.lib } : { type: 'cpu' as const },
        };
        s = budget !== undefined ? await exportToBudget(opts, budget, calib, ckpt) : await exportMeasured(opts, calib, ckpt);
      } else {
        s = exportBundle(opts, ckpt);
        const heads = s.layers.filter((L) => !('dense' in L.attn)).map((L) => L.layer);
        if (heads.length) {
          warn(
            `heads are predicted (layer${heads.length > 1 ? 's' : ''} ${heads.join(', ')}) and no quality was measured: their perplexity cost can be large; ` +
              'measure it with --calib-data FILES, or export to a quality budget with --ppl-budget P --calib-data FILES',
          );
        }
      }
      if (s.unfinished.length) warn(`--partial: the train run did not finish; ${s.unfinished.join(', ')} left dense in ${f.out}`);
      if (f.json) {
        process.stdout.write(JSON.stringify(s) + '\n');
        return;
      }
      const cell = (e: (typeof s.layers)[number]['mlp'], n: number) =>
        'dense' in e ? 'dense' : `k=${e.k}/${n} (${(100 * e.density).toFixed(1)}%) ${e.k_rule} r${e.rank} ${e.input}${e.lookahead ? `@l-${e.lookahead}` : ''}`;
      const c = ckpt.config;
      const lines = [`bundle ${s.bundle} (model ${s.model_fingerprint.slice(0, 12)}…)`, 'layer  mlp                                         attn'];
      for (const L of s.layers) lines.push(`${String(L.layer).padStart(5)}  ${cell(L.mlp, c.ffnDim).padEnd(44)}${cell(L.attn, c.numHeads)}`);
      lines.push(`mean density: mlp ${(100 * s.mlp_density).toFixed(1)}%, heads ${(100 * s.head_density).toFixed(1)}%`);
      if (s.quality) {
        const { describeQuality } = await import('../../export/quality.js');
        lines.push(...describeQuality(s.quality));
      }
      process.stdout.write(lines.join('\n') + '\n');
    });
}
