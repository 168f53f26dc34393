import { describe, expect, it } from 'vitest';
import { DejavuError } from '../../common/errors.js';
import { selectBackend } from '../../train/backend.js';

describe('backend selection', () => {
  it('a named backend that is not installed is a DejavuError naming --backend', async () => {
    // tfjs-node is an optionalDependency that cannot install offline: absent here and in CI.
    let installed = true;
    try {
      await import('@tensorflow/tfjs-node' as string);
    } catch {
      installed = false;
    }
    if (installed) return;
    const err = await selectBackend('node').catch((e) => e);
    expect(err).toBeInstanceOf(DejavuError);
    expect(err.message).toMatch(/^--backend: backend node is not available/);
  });

  it('auto falls through the unavailable backends, says why, and lands on a working one', async () => {
    const b = await selectBackend('auto');
    expect(['node-gpu', 'node', 'webgpu', 'wasm', 'cpu']).toContain(b.name);
    expect(b.description.startsWith(b.name)).toBe(true);
    const order = ['node-gpu', 'node', 'webgpu', 'wasm', 'cpu'];
    expect(b.skipped.map((s) => s.split(':')[0])).toEqual(order.slice(0, order.indexOf(b.name)));
    const t = b.tf.tensor1d([1, 2, 3]);
    expect(Array.from(await b.tf.sum(t).data())).toEqual([6]);
    t.dispose();
  });
});
