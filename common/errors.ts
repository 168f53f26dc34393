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

/** What a Node system error code means, in the words the one-line CLI error uses. */
const FS_PROBLEMS: Record<string, string> = {
  ENOSPC: 'no space left on the device',
  EDQUOT: 'disk quota exceeded',
  EROFS: 'read-only file system',
  EACCES: 'permission denied',
  EPERM: 'operation not permitted',
  EEXIST: 'already exists',
  ENOTDIR: 'a part of this path is a file where a folder is needed',
  EISDIR: 'is a folder where a file is needed',
  ENOENT: 'no such file or folder',
  EMFILE: 'too many open files',
  ENAMETOOLONG: 'name too long',
  EIO: 'input/output error',
};

interface SystemError {
  code: string;
  syscall?: string;
  path?: string;
  dest?: string;
}

function isSystemError(e: unknown): e is Error & SystemError {
  const code = (e as { code?: unknown } | null)?.code;
  return e instanceof Error && typeof code === 'string' && /^E[A-Z0-9]+$/.test(code);
}

/**
 * A Node filesystem error (ENOSPC, EROFS, EACCES, EEXIST, ENOTDIR, EISDIR, ...) as a DejavuError naming `path`, or
 * the error's own path when none is given (a write on a file descriptor carries none). Anything else: undefined.
 */
export function fsErrorToDejavu(e: unknown, path?: string): DejavuError | undefined {
  if (e instanceof DejavuError || !isSystemError(e)) return undefined;
  let problem = FS_PROBLEMS[e.code] ?? e.message.replace(/^E[A-Z0-9]+:\s*/, '').replace(/,.*$/, '');
  // mkdir -p over a file: the path exists but is not a folder.
  if (e.code === 'EEXIST' && e.syscall === 'mkdir') problem = 'exists and is not a folder';
  const where = path ?? e.path;
  const dest = e.dest && e.dest !== where ? ` (to ${e.dest})` : '';
  return new DejavuError(`${problem}${dest} (${e.code}${e.syscall ? `, ${e.syscall}` : ''})`, where);
}

/** Rethrows a filesystem error met while writing `path` (its temp file included) as a DejavuError naming `path`. */
export function rethrowFs(e: unknown, path: string): never {
  throw fsErrorToDejavu(e, path) ?? e;
}
