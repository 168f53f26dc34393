/** `dejavu demo`: argument parsing and the closing table; the pipeline is cli/demo.ts. */
import type { Command } from 'commander';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DejavuError } from '../../common/errors.js';
import { intArg } from '../args.js';

const int = (flag: string) => intArg(flag);

export function register(program: Command): void {
  program
    .command('demo')
    .description('collect -> train -> export -> eval -> bench -> report: on the bundled example (opt-mini + c4mini, ~6 min on 2 cores), or --model DIR --data FILES')
    .option('--work <dir>', `work folder (shards, predictors, bundle, eval/bench JSON, report.html, summary.json); rerunning resumes (default: ${join(tmpdir(), 'dejavu-demo')})`)
    .option('--examples <dir>', 'examples folder (default: the one shipped with dejavu)')
    .option('--model <dir>', 'a Hugging Face OPT folder instead of the example (with --data)')
    .option('--data <paths...>', 'with --model: C4 files to collect from (the first --train-docs documents)')
    .option('--eval-data <paths...>', 'C4 files scored by eval (default: the example c4mini validation file)')
    .option('--device <d>', 'where collect, eval and bench run: cpu (default) or cuda (the GPU engine; train picks its backend as usual)', 'cpu')
    .option('--train-docs <n>', 'c4mini training documents to collect', int('--train-docs'))
    .option('--eval-docs <n>', 'c4mini validation documents for perplexity', int('--eval-docs'))
    .option('--max-len <n>', 'tokens per document, BOS included', int('--max-len'))
    .option('--rank <r>', "predictor rank (default: train's, auto)", int('--rank'))
    .option('--epochs <n>', "predictor training epochs (default: train's, 10)", int('--epochs'))
    .option('--batch <n>', "training batch in tokens (default: train's, auto: 128 to 1024 from the training tokens)", int('--batch'))
    .option('--workers <n>', 'worker threads (training, perplexity)', int('--workers'))
    .option('--mlp-density <f>', 'MLP density kept in layers 1-5 (default 0.15)', (v: string) => {
      const x = Number(v);
      if (!(x > 0 && x <= 1)) throw new DejavuError(`'${v}' must be in (0, 1]`, '--mlp-density');
      return x;
    })
    .option('--json', 'print the summary as one JSON object on stdout')
    .action(async (f: { work?: string; examples?: string; model?: string; data?: string[]; evalData?: string[]; device: string; trainDocs?: number; evalDocs?: number; maxLen?: number; rank?: number; epochs?: number; batch?: number; workers?: number; mlpDensity?: number; json?: boolean }) => {
      if (f.device !== 'cpu' && f.device !== 'cuda') throw new DejavuError(`expected cpu or cuda, got '${f.device}'`, '--device');
      const { runDemo, formatDemo, DEMO_DEFAULTS, defaultDemoWork } = await import('../demo.js');
      const s = await runDemo({
        work: f.work ?? defaultDemoWork(),
        examples: f.examples,
        model: f.model,
        data: f.data,
        evalData: f.evalData,
        device: f.device,
        trainDocs: f.trainDocs ?? DEMO_DEFAULTS.trainDocs,
        evalDocs: f.evalDocs ?? DEMO_DEFAULTS.evalDocs,
        maxLen: f.maxLen ?? DEMO_DEFAULTS.maxLen,
        rank: f.rank,
        epochs: f.epochs,
        batch: f.batch,
        workers: f.workers ?? DEMO_DEFAULTS.workers,
        mlpDensity: f.mlpDensity ?? DEMO_DEFAULTS.mlpDensity,
      });
      process.stdout.write((f.json ? JSON.stringify(s) : formatDemo(s)) + '\n');
    });
}
