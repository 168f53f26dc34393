// Preloaded with `node --require` into a CLI process under test (and so into its worker threads too, which --import
// does not reach): injects one filesystem fault, since tests run as root (permissions cannot make a folder read-only
// for them) and a disk cannot be filled on demand.
//   DEJAVU_FAULT=ENOSPC:<substring>  writes to files whose path contains <substring> fail with ENOSPC (no path, as a
//                                    real write(2) on a file descriptor)
//   DEJAVU_FAULT=EROFS:<substring>   opening such a file for writing, or creating such a folder, fails with EROFS
const fs = require('node:fs');
const { syncBuiltinESMExports } = require('node:module');

const spec = process.env.DEJAVU_FAULT ?? '';
const colon = spec.indexOf(':');
const code = spec.slice(0, colon);
const match = spec.slice(colon + 1);
const hits = (p) => match !== '' && String(p).includes(match);
const fault = (syscall, path) => {
  const e = new Error(`${code}: injected fault, ${syscall}${path ? ` '${path}'` : ''}`);
  return Object.assign(e, { code, errno: code === 'ENOSPC' ? -28 : -30, syscall }, path ? { path } : {});
};
const writing = (flags) => typeof flags === 'string' && /[wa+]/.test(flags);

const faultyFds = new Set();
const { openSync, writeSync, closeSync, mkdirSync, writeFileSync } = fs;
fs.openSync = function (path, flags, ...rest) {
  if (code === 'EROFS' && hits(path) && writing(flags)) throw fault('open', String(path));
  const fd = openSync.call(this, path, flags, ...rest);
  if (code === 'ENOSPC' && hits(path) && writing(flags)) faultyFds.add(fd);
  return fd;
};
// A descriptor opened by another thread (collect's writer threads: this module is preloaded there too, with its own
// set) is matched by the path it is open on.
const faultyPath = (fd) => {
  try {
    return code === 'ENOSPC' && hits(fs.readlinkSync(`/proc/self/fd/${fd}`));
  } catch {
    return false;
  }
};
fs.writeSync = function (fd, ...rest) {
  if (faultyFds.has(fd) || faultyPath(fd)) throw fault('write');
  return writeSync.call(this, fd, ...rest);
};
fs.closeSync = function (fd) {
  faultyFds.delete(fd);
  return closeSync.call(this, fd);
};
fs.mkdirSync = function (path, ...rest) {
  if (code === 'EROFS' && hits(path) && !fs.existsSync(path)) throw fault('mkdir', String(path));
  return mkdirSync.call(this, path, ...rest);
};
fs.writeFileSync = function (path, ...rest) {
  if (hits(path)) throw fault(code === 'EROFS' ? 'open' : 'write', code === 'EROFS' ? String(path) : undefined);
  return writeFileSync.call(this, path, ...rest);
};
syncBuiltinESMExports();
