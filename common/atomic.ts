import { closeSync, fsyncSync, openSync, renameSync, rmSync, writeSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { rethrowFs } from './errors.js';

/** The temporary name a file is written under before it is renamed into place; readers ignore `*.tmp`. */
export function tempPathFor(finalPath: string): string {
  return join(dirname(finalPath), `.${basename(finalPath)}.${process.pid}.tmp`);
}

/**
 * Write `data` to `finalPath` atomically: temp file, fsync, rename. A crash or a failed write (full disk, read-only
 * folder) leaves the old file as it was and no temp file; filesystem errors become a DejavuError naming `reportAs`
 * (default `finalPath`; a caller staging a file under a temporary name passes the name the user knows).
 */
export function writeFileAtomic(finalPath: string, data: string | Uint8Array, reportAs = finalPath): void {
  const tmp = tempPathFor(finalPath);
  let fd: number;
  try {
    fd = openSync(tmp, 'w');
  } catch (e) {
    rethrowFs(e, reportAs);
  }
  try {
    const buf = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
    let off = 0;
    while (off < buf.byteLength) off += writeSync(fd, buf, off, buf.byteLength - off);
    fsyncSync(fd);
    closeSync(fd);
    renameSync(tmp, finalPath);
  } catch (e) {
    try {
      closeSync(fd);
    } catch {
      // already closed
    }
    rmSync(tmp, { force: true });
    rethrowFs(e, reportAs);
  }
}

/** Atomic JSON write with stable two-space formatting. */
export function writeJsonAtomic(finalPath: string, value: unknown, reportAs = finalPath): void {
  writeFileAtomic(finalPath, JSON.stringify(value, null, 2) + '\n', reportAs);
}
