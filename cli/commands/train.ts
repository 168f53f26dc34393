/**
 * `dejavu train`: argument parsing only; the work is in train/. tfjs and the backends load inside the action.
 */
import { Command, Option } from 'commander';
import { intArg, numArg, parseIntFlag } from '../args.js';
import { MLP_INPUTS } from '../../train/jobs.js';
import { SCHEDULE_DEFAULTS as DEFAULTS } from '../../train/auto.js';

/** `auto` or an integer >= 1 written as digits (the same error as any integer flag). */
const autoIntArg = (flag: string) => (v: string): number | 'auto' => (v.trim() === 'auto' ? 'auto' : parseIntFlag(v, flag));

export function register(program: Command): void {
  program
    .command('train')
    .description('train per-layer low-rank sparsity predictors (DejaVu) from collect shards with TensorFlow.js')
    .requiredOption('--shards <dir>', 'shard folder written by `dejavu collect`')
    .requiredOption('--out <dir>', 'output folder: layer_XX.{mlp|attn}.safetensors, metrics.json, checkpoints/')
    .addOption(new Option('--target <t>', 'which predictors').choices(['mlp', 'attn', 'both']).default('both'))
    .option('--layers <spec>', 'layers to train: all, 1-5, 0,2,4', 'all')
    .option('--rank <r>', 'low-rank width r, or auto: about d/3 (a multiple of 64 in 64..1000; 128 for opt-mini, 1000 from OPT-6.7B on)', autoIntArg('--rank'), DEFAULTS.rank)
    .option('--epochs <n>', 'maximum epochs', intArg('--epochs'), DEFAULTS.epochs)
    .option('--batch <n>', 'batch size (tokens), or auto: the largest power of two in 128..1024 giving an epoch >= 256 steps (1024 from 262,144 training tokens on)', autoIntArg('--batch'), DEFAULTS.batch)
    .option('--lr <x>', 'AdamW learning rate', numArg('--lr', { above: 0 }), DEFAULTS.lr)
    .option('--weight-decay <x>', 'AdamW decoupled weight decay', numArg('--weight-decay', { min: 0 }), 0.01)
    .option('--head-frac <x>', 'attention label: top round(head_frac*H) heads by head_norm (at least 1)', numArg('--head-frac', { min: 0, max: 1 }), 0.3)
    .addOption(new Option('--mlp-input <col>', 'MLP predictor input').choices([...MLP_INPUTS]).default('mlp_in'))
    .addOption(new Option('--input-norm <n>', 'predictor input preprocessing (recorded for export)').choices(['layernorm', 'none']).default('layernorm'))
    .addOption(new Option('--backend <b>', 'tfjs backend').choices(['auto', 'node-gpu', 'node', 'webgpu', 'wasm', 'cpu']).default('auto'))
    .option('--val-frac <x>', 'fraction of documents held out for validation (split by document, seeded)', numArg('--val-frac', { above: 0, max: 1 }), 0.1)
    .option('--buffer-rows <n>', 'shuffle buffer size in tokens (bounded memory; default: 65536 or 256 MiB of rows, whichever is smaller)', intArg('--buffer-rows'))
    .option('--select-beta <b>', 'checkpoint selection: F-beta on validation (beta > 1 favours recall)', numArg('--select-beta', { min: 0 }), 2)
    .option('--patience <n>', 'early stopping: epochs without a better F-beta', intArg('--patience'), DEFAULTS.patience)
    .option('--workers <n>', 'predictors trained at once in worker threads, each with its own tfjs (a wasm thread, or a Dawn device on the one GPU); at most the cores and what memory holds', intArg('--workers'), 1)
    .option('--seed <s>', 'seed (split, init, shuffles)', intArg('--seed', 0), 0)
    .option('--resume', 'continue the run in --out (same settings; checked before any training)')
    .option('--force', 'delete an earlier run\'s predictors, checkpoints and metrics.json in --out, then train')
    .option('--json', 'print one JSON object (metrics.json contents) on stdout')
    .option('--quiet', 'no progress or per-epoch logs')
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
        bufferRows: a.bufferRows ?? 0,
        selectBeta: a.selectBeta,
        patience: a.patience,
        resume: !!a.resume,
        force: !!a.force,
        quiet: !!a.quiet,
        backend: a.backend,
        workers: a.workers,
        json: !!a.json,
        table: 'stdout',
      });
    });
}
