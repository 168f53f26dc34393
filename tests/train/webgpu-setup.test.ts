/**
 * scripts/webgpu-setup.sh check: what WebGPU training needs on Linux (the Vulkan loader, a driver's ICD file), found or
 * named as missing with how to get it; exit 1 while anything is missing. (The adapter probe needs a GPU machine.)
 */
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../helpers/fixtures.js';

const script = join(REPO_ROOT, 'scripts', 'webgpu-setup.sh');
const tmp = mkdtempSync(join(tmpdir(), 'dejavu-vk-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));
const run = (args: string[], env: Record<string, string>) =>
  spawnSync('bash', [script, ...args], { encoding: 'utf8', env: { PATH: process.env.PATH ?? '', HOME: tmp, ...env } });

describe.skipIf(process.platform !== 'linux')('scripts/webgpu-setup.sh', () => {
  it('finds the loader on LD_LIBRARY_PATH, names a missing driver manifest, exits 1', () => {
    const lib = join(tmp, 'lib');
    mkdirSync(lib);
    writeFileSync(join(lib, 'libvulkan.so.1'), '');
    const r = run(['check'], { LD_LIBRARY_PATH: `/nonexistent:${lib}`, VK_DRIVER_FILES: join(tmp, 'none.json') });
    expect(r.stdout).toContain(`loader: libvulkan.so.1 in ${lib}`);
    if (!/drivers \(Vulkan ICD files\)/.test(r.stdout)) {
      expect(r.stdout).toMatch(/drivers: no Vulkan ICD file found/);
      expect(r.status).toBe(1);
    }
  });

  it('an unknown subcommand prints the usage and exits 2', () => {
    const r = run(['fix'], {});
    expect(r.status).toBe(2);
    expect(r.stdout).toMatch(/usage: .*check\|install/);
  });
});
