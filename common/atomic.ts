import { closeSync, fsyncSync, openSync, renameSync, rmSync, writeSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';

/** The temporary name a file is written under before it is renamed into place; readers ignore `*.tmp`. */
export function tempPathFor(finalPath: string): string {
  return join(dirname(finalPath), `.${basename(finalPath)}.${process.pid}.tmp`);
}

/** Write `data` to `finalPath` atomically: temp file, fsync, rename. A crash leaves either the old file or none. */
export function writeFileAtomic(finalPath: string, data: string | Uint8Array): void {
  const tmp = tempPathFor(finalPath);
  const fd = openSync(tmp, 'w');
  try {
    const buf = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
    let off = 0;
    while (off < buf.byteLength) off += writeSync(fd, buf, off, buf.byteLength - off);
    fsyncSync(fd);
  } catch (e) {
    closeSync(fd);
    rmSync(tmp, { force: true });
    throw e;
  }
  closeSync(fd);
  renameSync(tmp, finalPath);
}

/** Atomic JSON write with stable two-space formatting. */
export function writeJsonAtomic(finalPath: string, value: unknown): void {
  writeFileAtomic(finalPath, JSON.stringify(value, null, 2) + '\n');
}
