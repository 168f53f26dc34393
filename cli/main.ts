#!/usr/bin/env node
/**
 * dejavu: the command-line entry. Each stage registers its own command from cli/commands/; heavy modules (tfjs,
 * koffi) are imported inside the command actions so `dejavu --help` stays fast and the CUDA path never loads tfjs.
 */
import { Command, CommanderError } from 'commander';
import { DejavuError } from '../common/errors.js';
// --- command registrations (one line per command module) ---
// (helpers: add `import { register as registerX } from './commands/x.js';` here and a call below)
import { register as registerTrain } from './commands/train.js';
import { register as registerCollect } from './commands/collect.js';
import { register as registerBench } from './commands/bench.js';
import { register as registerExport } from './commands/export.js';
import { register as registerDemo } from './commands/demo.js';
import { register as registerEval } from './commands/eval.js';

const program = new Command();
program
  .name('dejavu')
  .description('Contextual sparsity for Hugging Face OPT models: collect -> train -> export -> eval/bench.')
  .version('0.1.0')
  .showHelpAfterError();

// --- register calls ---
registerTrain(program);
registerCollect(program);
registerBench(program);
registerExport(program);
registerDemo(program);
registerEval(program);

program.exitOverride();
try {
  await program.parseAsync(process.argv);
} catch (e) {
  if (e instanceof CommanderError) process.exit(e.exitCode);
  if (e instanceof DejavuError) {
    process.stderr.write(`error: ${e.message}\n`);
    process.exit(1);
  }
  throw e;
}
