/**
 * --quiet / --verbose on every command, added in one place after the commands register (so a new command gets them
 * too), and applied before its action runs (common/progress.ts holds the level; worker threads inherit it).
 */
import type { Command } from 'commander';
import { debug, setVerbosity, verbosityFromFlags } from '../common/progress.js';

const QUIET = 'no progress and no informational logs on stderr (warnings, errors and results still print)';
const VERBOSE = 'more on stderr: the options in effect, a closing line for every progress, time and peak memory';

/** Commands that run an action (a group such as `eval` only holds subcommands). */
export function leafCommands(program: Command): Command[] {
  const walk = (c: Command): Command[] => (c.commands.length ? c.commands.flatMap(walk) : [c]);
  return program.commands.flatMap(walk);
}

export function addVerbosityFlags(program: Command): void {
  for (const c of leafCommands(program)) {
    // A command that already defines one (train's --quiet) keeps its own wording.
    if (!c.options.some((o) => o.long === '--quiet')) c.option('--quiet', QUIET);
    if (!c.options.some((o) => o.long === '--verbose')) c.option('--verbose', VERBOSE);
  }
  let t0 = 0;
  program.hook('preAction', (_root, action) => {
    setVerbosity(verbosityFromFlags(action.opts()));
    t0 = performance.now();
    debug(`dejavu ${commandPath(action)}: ${JSON.stringify(action.opts())}`);
  });
  program.hook('postAction', (_root, action) => {
    const mib = (process.resourceUsage().maxRSS / 1024).toFixed(0);
    debug(`dejavu ${commandPath(action)}: ${((performance.now() - t0) / 1000).toFixed(1)} s, peak RSS ${mib} MiB`);
  });
}

function commandPath(c: Command): string {
  const names: string[] = [];
  for (let x: Command | null = c; x && x.parent; x = x.parent) names.unshift(x.name());
  return names.join(' ');
}
