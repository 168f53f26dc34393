/**
 * One error type for bad input anywhere in the pipeline. The message always names the file (or flag) and the
 * problem, so the CLI can print it as-is and exit non-zero without a stack trace.
 */
export class DejavuError extends Error {
  constructor(
    message: string,
    /** The file, folder or flag the problem is in, when there is one. */
    readonly path?: string,
  ) {
    super(path ? `${path}: ${message}` : message);
    this.name = 'DejavuError';
  }
}

/** Throws a DejavuError naming `path` unless `cond` holds. */
export function check(cond: unknown, path: string | undefined, message: string): asserts cond {
  if (!cond) throw new DejavuError(message, path);
}
