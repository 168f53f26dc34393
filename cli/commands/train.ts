/**
 * `dejavu train`: argument parsing only; the work is in train/. tfjs and the backends load inside the action.
 */
import { Command, Option } from 'commander';
import { DejavuError } from '../../common/errors.js';
import { MLP_INPUTS } from '../../train/jobs.js';

function num(flag: string, opts: { int?: boolean; min?: number; max?: number } = {}) {
  return (v: string): number => {
    const x = Number(v);
    const ok = Number.isFinite(x) && (!opts.int || Number.isInteger(x)) && (opts.min === undefined || x >= opts.min) && (opts.max === undefined || x <= opts.max);
    if (!ok) {
      const range = `${opts.min ?? '-inf'}..${opts.max ?? 'inf'}`;
      throw new DejavuError(`expected ${opts.int ? 'an integer' : 'a number'} in ${range}, got ${JSON.stringify(v)}`, flag);
    }
    return x;
  };
}

export function register(program: Command): void {
  program
    .command('train')
    .description('Train per-layer low-rank sparsity predictors (DejaVu) from collect shards with TensorFlow.js')
    .requiredOption('--shards <dir>', 'shard folder written by `dejavu collect`')
    .requiredOption('--out <dir>', 'output folder: layer_XX.{mlp|attn}.safetensors, metrics.json, checkpoints/')
    .addOption(new Option('--target <t>', 'which predictors').choices(['mlp', 'attn', 'both']).default('both'))
    .option('--layers <spec>', 'layers to train: all, 1-5, 0,2,4', 'all')
    .option('--rank <r>', 'low-rank width r', num('--rank', { int: true, min: 1 }), 1000)
    .option('--epochs <n>', 'maximum epochs', num('--epochs', { int: true, min: 1 }), 20)
    .option('--batch <n>', 'batch size (tokens)', num('--batch', { int: true, min: 1 }), 1024)
    .option('--lr <x>', 'AdamW learning rate', num('--lr', { min: 0 }), 1e-3)
    .option('--weight-decay <x>', 'AdamW decoupled weight decay', num('--weight-decay', { min: 0 }), 0.01)
    .option('--head-frac <x>', 'attention label: top round(head_frac*H) heads by head_norm (at least 1)', num('--head-frac', { min: 0, max: 1 }), 0.3)
    .addOption(new Option('--mlp-input <col>', 'MLP predictor input').choices([...MLP_INPUTS]).default('mlp_in'))
    .addOption(new Option('--input-norm <n>', 'predictor input preprocessing (recorded for export)').choices(['layernorm', 'none']).default('layernorm'))
    .addOption(new Option('--backend <b>', 'tfjs backend').choices(['auto', 'node-gpu', 'node', 'webgpu', 'wasm', 'cpu']).default('auto'))
    .option('--val-frac <x>', 'fraction of documents held out for validation (split by document, seeded)', num('--val-frac', { min: 0, max: 1 }), 0.1)
    .option('--buffer-rows <n>', 'shuffle buffer size in tokens (bounded memory; default: 65536 or 256 MiB of rows, whichever is smaller)', num('--buffer-rows', { int: true, min: 1 }), 0)
    .option('--select-beta <b>', 'checkpoint selection: F-beta on validation (beta > 1 favours recall)', num('--select-beta', { min: 0 }), 2)
    .option('--patience <n>', 'early stopping: epochs without a better F-beta', num('--patience', { int: true, min: 1 }), 3)
    .option('--workers <n>', 'predictors trained in parallel worker threads (wasm/cpu; default: 1)', num('--workers', { int: true, min: 1 }), 1)
    .option('--seed <s>', 'seed (split, init, shuffles)', num('--seed', { int: true, min: 0 }), 0)
    .option('--resume', 'continue from OUT/checkpoints (same settings)', false)
    .option('--json', 'print one JSON object (metrics.json contents) on stdout', false)
    .option('--quiet', 'no progress or per-epoch logs', false)
    .action(async (a) => {
      const { runTrain } = await import('../../train/run.js');
      await runTrain({
        shards: a.shards,
        out: a.out,
        target: a.target,
        layers: a.layers,
        rank: a.rank,
        epochs: a.epochs,
        batch: a.batch,
        lr: a.lr,
        weightDecay: a.weightDecay,
        headFrac: a.headFrac,
        mlpInput: a.mlpInput,
        inputNorm: a.inputNorm,
        seed: a.seed,
        valFrac: a.valFrac,
        bufferRows: a.bufferRows,
        selectBeta: a.selectBeta,
        patience: a.patience,
        resume: a.resume,
        quiet: a.quiet,
        backend: a.backend,
        workers: a.workers,
        json: a.json,
      });
    });
}
