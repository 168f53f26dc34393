import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';

/**
 * Every file under `dir` (relative name -> bytes as base64, prefixed by the mtime when asked), to show that a refused
 * or failed run left its output as it was.
 */
export function treeSnapshot(dir: string, opts: { mtime?: boolean } = {}): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (d: string, rel: string) => {
    for (const f of readdirSync(d).sort()) {
      const p = join(d, f);
      const st = statSync(p);
      if (st.isDirectory()) walk(p, `${rel}${f}/`);
      else out[`${rel}${f}`] = `${opts.mtime ? `${st.mtimeMs} ` : ''}${readFileSync(p).toString('base64')}`;
    }
  };
  walk(dir, '');
  return out;
}
