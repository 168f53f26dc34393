#!/usr/bin/env node
/**
 * dejavu: the command-line entry. Each stage registers its own command from cli/commands/; heavy modules (tfjs,
 * koffi) are imported inside the command actions so `dejavu --help` stays fast and the CUDA path never loads tfjs.
 */
import { Command, CommanderError } from 'commander';
import { DejavuError, fsErrorToDejavu } from '../common/errors.js';
// --- command registrations (one line per command module) ---
// (helpers: add `import { register as registerX } from './commands/x.js';` here and a call below)
import { register as registerTrain } from './commands/train.js';
import { register as registerCollect } from './commands/collect.js';
import { register as registerBench } from './commands/bench.js';
import { register as registerExport } from './commands/export.js';
import { register as registerDemo } from './commands/demo.js';
import { register as registerReport } from './commands/report.js';
import { register as registerEval } from './commands/eval.js';
import { addVerbosityFlags } from './verbosity.js';
import { register as registerBuildCuda } from './commands/build-cuda.js';

const program = new Command();
program
  .name('dejavu')
  .description('Contextual sparsity for Hugging Face OPT models: collect -> train -> export -> eval/bench.')
  .version('0.1.0')
  .showHelpAfterError();

// The one place --model becomes a folder: a local folder as given, or a Hugging Face id (facebook/opt-1.3b[@rev])
// resolved offline from the Hugging Face cache (checkpoints/hf-cache.ts), for every command that takes --model.
program.hook('preAction', async (_program, action) => {
  const model: unknown = action.getOptionValue('model');
  if (typeof model !== 'string') return;
  const { resolveModelDir } = await import('../checkpoints/hf-cache.js');
  action.setOptionValue('model', resolveModelDir(model));
});

// --- register calls (in pipeline order: `dejavu --help` lists commands in this order) ---
registerCollect(program);
registerTrain(program);
registerExport(program);
registerEval(program);
registerBench(program);
registerDemo(program);
registerReport(program);
registerBuildCuda(program);
// --quiet / --verbose on every command (after the registrations, so each one gets them).
addVerbosityFlags(program);

program.exitOverride();
try {
  await program.parseAsync(process.argv);
} catch (e) {
  if (e instanceof CommanderError) process.exit(e.exitCode);
  // Bad input and filesystem failures (a full disk, a read-only folder, an --out that is a file) are one line naming
  // the path; anything else is a bug and keeps its stack trace.
  const bad = e instanceof DejavuError ? e : fsErrorToDejavu(e);
  if (bad) {
    process.stderr.write(`error: ${bad.message}\n`);
    process.exit(1);
  }
  throw e;
}
