/** `dejavu export`: argument parsing and the summary table; the work is in export/export.ts. */
import type { Command } from 'commander';
import { DejavuError } from '../../common/errors.js';
import { parseIntFlag } from '../args.js';

interface Flags {
  predictors: string;
  model: string;
  out: string;
  recall?: string;
  mlpK?: string;
  headsK?: string;
  layers?: string;
  partial?: boolean;
  json?: boolean;
}

const int = (v: string | undefined, flag: string): number | undefined => (v === undefined ? undefined : parseIntFlag(v, flag));

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
    .option('--json', 'print one JSON object on stdout')
    .action(async (f: Flags) => {
      const recall = f.recall === undefined ? undefined : Number(f.recall);
      if (f.recall !== undefined && !Number.isFinite(recall)) throw new DejavuError(`'${f.recall}' is not a number`, '--recall');
      const { loadOptCheckpoint } = await import('../../checkpoints/opt-checkpoint.js');
      const { exportBundle } = await import('../../export/export.js');
      const ckpt = await loadOptCheckpoint(f.model, { quiet: !!f.json });
      const s = exportBundle(
        { predictors: f.predictors, out: f.out, recall, mlpK: int(f.mlpK, '--mlp-k'), headsK: int(f.headsK, '--heads-k'), layers: f.layers, partial: !!f.partial },
        ckpt,
      );
      if (s.unfinished.length) {
        (await import('../../common/progress.js')).warn(`--partial: the train run did not finish; ${s.unfinished.join(', ')} left dense in ${f.out}`);
      }
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
      process.stdout.write(lines.join('\n') + '\n');
    });
}
