/** `dejavu report`: argument parsing and the closing line; the work is in report/report.ts. */
import type { Command } from 'commander';

interface Flags {
  out: string;
  predictors?: string;
  bundle?: string;
  eval?: string[];
  bench?: string[];
  title?: string;
  json?: boolean;
}

export function register(program: Command): void {
  program
    .command('report')
    .description('one self-contained HTML page of charts: predictor quality, density per layer, perplexity, latency')
    .requiredOption('--out <file>', 'HTML file to write (replaced atomically)')
    .option('--predictors <dir>', 'train output folder (its metrics.json): recall, precision, k99 vs true active per layer')
    .option('--bundle <dir>', 'bundle folder (its manifest.json): density per layer')
    .option('--eval <files...>', 'JSON of `dejavu eval ppl --json` (several files or a file with "runs": per density)')
    .option('--bench <files...>', 'JSON of `dejavu bench --json` (several, or a file with "runs": also the speed grid)')
    .option('--title <text>', 'page title', 'dejavu report')
    .option('--json', 'print one JSON object on stdout: {out, charts, sources}')
    .action(async (f: Flags) => {
      const { writeReport } = await import('../../report/report.js');
      const { log } = await import('../../common/progress.js');
      const s = writeReport({ out: f.out, predictors: f.predictors, bundle: f.bundle, evals: f.eval, benches: f.bench, title: f.title });
      if (f.json) process.stdout.write(JSON.stringify(s) + '\n');
      else {
        log(`${s.charts.length} charts: ${s.charts.join(', ')}`);
        process.stdout.write(`report: ${s.out}\n`);
      }
    });
}
