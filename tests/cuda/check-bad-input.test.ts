/**
 * check-mini's bad-input section (runtime/cuda/check-bad-input.ts) on the CPU: the bad folders it writes are refused
 * by the loader with the messages the check expects, before any engine exists (too big, gelu) or with the engine freed
 * (cut short), and the memory comparison catches a load that leaves memory behind. The CLI runs and the real
 * dj_mem_info figures come from the GPU (scripts/cuda-check.sh).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { runApi, writeBadModels } from '../../runtime/cuda/check-bad-input.js';
import type { CudaLib } from '../../runtime/cuda/lib.js';
import { REPO_ROOT } from '../helpers/fixtures.js';

const MINI = join(REPO_ROOT, 'examples', 'opt-mini');
const root = mkdtempSync(join(tmpdir(), 'dejavu-bad-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

/** A stand-in whose engine takes 40 MB of an 80 GB card; `leak`: destroy gives nothing back. */
function standIn(leak = false) {
  let free = 79e9;
  const st = { created: 0 };
  const lib = {
    memInfo: () => ({ freeBytes: free, totalBytes: 80e9 }),
    create: () => {
      st.created++;
      free -= 40e6;
      return {};
    },
    destroy: () => void (leak || (free += 40e6)),
    setVariant: () => {},
    uploadRaw: () => {},
  } as unknown as CudaLib;
  return { lib, st };
}

describe('check-mini bad input (stand-in library)', () => {
  const cases = writeBadModels(MINI, root);
  it('each folder is refused with the message its case expects; memory back where it was', async () => {
    expect(cases.map((c) => c.name)).toEqual(['too-big', 'gelu', 'truncated']);
    const { lib, st } = standIn();
    for (const c of cases) {
      const r = await runApi(lib, c);
      expect(r, c.name).toMatchObject({ leaked_bytes: 0, pass: true });
      expect(r.error).toMatch(c.expect);
    }
    expect(st.created).toBe(1);  // only the truncated checkpoint gets as far as an engine
  });

  it('a load that leaves its engine allocated fails the check', async () => {
    const r = await runApi(standIn(true).lib, cases[2]);
    expect(r).toMatchObject({ leaked_bytes: 40e6, pass: false });
  });
});
