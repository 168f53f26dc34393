import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { DejavuError } from '../../common/errors.js';
import { backendLine, linuxLibraryDirs, NVIDIA_CONTAINER_ICD, preferContainerVulkanDriver, probeDawnAdapter, readDawnProbe, selectBackend, stepGflop, vulkanDriverManifests, webGpuBlocker, webGpuTooSmall, WEBGPU_MIN_STEP_GFLOP } from '../../train/backend.js';
import { REPO_ROOT } from '../helpers/fixtures.js';
import { writeSyntheticShards } from './synthetic.js';

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

  it('auto leaves WebGPU out, unprobed, for training steps too small to pay its per-step cost, and says so', async () => {
    // opt-mini's demo: rank 128, batch 128, MLP 384 -> 1536 (the largest predictor), attention 384 -> 12.
    const mini = stepGflop([{ inDim: 384, outDim: 12 }, { inDim: 384, outDim: 1536 }], 128, 128);
    expect(mini).toBeCloseTo((6 * 128 * 128 * (384 + 1536)) / 1e9, 12);
    expect(webGpuTooSmall(mini)).toBe(`a training step is 0.19 GFLOP (largest predictor), below the ${WEBGPU_MIN_STEP_GFLOP} GFLOP at which the GPU's per-step cost pays (docs/training.md)`);
    // OPT-6.7B's layer at train's defaults (rank 1000, batch 1024): 126 GFLOP, WebGPU allowed.
    expect(webGpuTooSmall(stepGflop([{ inDim: 4096, outDim: 16384 }], 1000, 1024))).toBeUndefined();
    const b = await selectBackend('auto', { skipWebGpu: webGpuTooSmall(mini) });
    expect(b.name).not.toBe('webgpu');
    // The machine's own reason first where it has one (no Vulkan here and in CI), else the step size.
    const why = webGpuBlocker() ?? webGpuTooSmall(mini);
    expect(b.skipped).toContain(`webgpu: ${why}`);
    expect(backendLine(b)).toBe(`backend: ${b.description}; WebGPU not used: ${why}`);
    // A named backend ignores it.
    expect((await selectBackend('wasm', { skipWebGpu: 'x' })).skipped).toEqual([]);
  });
});

describe('why WebGPU is not used', () => {
  it('linuxLibraryDirs reads LD_LIBRARY_PATH, ld.so.conf and its include of *.conf files', () => {
    const root = mkdtempSync(join(tmpdir(), 'dejavu-ldconf-'));
    try {
      mkdirSync(join(root, 'ld.so.conf.d'));
      writeFileSync(join(root, 'ld.so.conf'), '# comment\ninclude ld.so.conf.d/*.conf\n/opt/a\n');
      writeFileSync(join(root, 'ld.so.conf.d', 'x.conf'), '/opt/vk # the driver\n');
      writeFileSync(join(root, 'ld.so.conf.d', 'ignored.txt'), '/opt/no\n');
      const dirs = linuxLibraryDirs({ LD_LIBRARY_PATH: '/env/lib::/env/lib2' }, root);
      expect(dirs.slice(0, 4)).toEqual(['/env/lib', '/env/lib2', '/opt/vk', '/opt/a']);
      expect(dirs).toContain('/usr/lib/x86_64-linux-gnu');
      expect(dirs).not.toContain('/opt/no');
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });

  it('webGpuBlocker: on Linux, the Vulkan loader must be in a library folder and a driver manifest where it looks; other systems are not checked', () => {
    const dirs = () => ['/a', '/b'];
    const icd = () => ['/etc/vulkan/icd.d/nvidia_icd.json'];
    expect(webGpuBlocker('linux', dirs, () => false, icd)).toMatch(/libvulkan\.so\.1 is not installed/);
    expect(webGpuBlocker('linux', dirs, (p) => p === '/b/libvulkan.so.1', icd)).toBeNull();
    expect(webGpuBlocker('linux', dirs, (p) => p === '/b/libvulkan.so.1', () => [])).toMatch(/^no Vulkan driver manifest .*where the Vulkan loader looks/);
    expect(webGpuBlocker('linux', dirs, (p) => p === '/b/libvulkan.so.1' || p === NVIDIA_CONTAINER_ICD, () => [])).toBe(
      `no Vulkan driver manifest where the Vulkan loader looks; NVIDIA's is outside its folders: export VK_DRIVER_FILES=${NVIDIA_CONTAINER_ICD}`,
    );
    expect(webGpuBlocker('darwin', dirs, () => false, () => [])).toBeNull();
  });

  it('vulkanDriverManifests: VK_DRIVER_FILES (or VK_ICD_FILENAMES) alone when set, else the XDG folders, plus VK_ADD_DRIVER_FILES', () => {
    const listed: string[] = [];
    const list = (d: string) => (listed.push(d), d === '/usr/share/vulkan/icd.d' ? [`${d}/lvp_icd.json`] : d === '/opt/icd' ? ['/opt/icd/x.json'] : []);
    const exists = (p: string) => p === '/n/nvidia_icd.json';
    expect(vulkanDriverManifests({ VK_DRIVER_FILES: '/n/nvidia_icd.json:/n/absent.json:/opt/icd' }, list, exists)).toEqual(['/n/nvidia_icd.json', '/opt/icd/x.json']);
    expect(vulkanDriverManifests({ VK_ICD_FILENAMES: '/n/nvidia_icd.json' }, list, exists)).toEqual(['/n/nvidia_icd.json']);
    listed.length = 0;
    expect(vulkanDriverManifests({ HOME: '/h', VK_ADD_DRIVER_FILES: '/n/nvidia_icd.json' }, list, exists)).toEqual(['/usr/share/vulkan/icd.d/lvp_icd.json', '/n/nvidia_icd.json']);
    expect(listed).toEqual(['/h/.config', '/etc/xdg', '/usr/local/etc', '/etc', '/h/.local/share', '/usr/local/share', '/usr/share'].map((d) => `${d}/vulkan/icd.d`));
  });

  it("preferContainerVulkanDriver: NVIDIA's container manifest when it exists and no driver variable is set (Linux only)", () => {
    const there = (p: string) => p === NVIDIA_CONTAINER_ICD;
    const env: NodeJS.ProcessEnv = { HOME: '/h' };
    expect(preferContainerVulkanDriver(env, there, 'linux')).toBe(NVIDIA_CONTAINER_ICD);
    expect(env.VK_DRIVER_FILES).toBe(NVIDIA_CONTAINER_ICD);
    for (const set of [{ VK_DRIVER_FILES: '/mine.json' }, { VK_ICD_FILENAMES: '/mine.json' }]) {
      const e: NodeJS.ProcessEnv = { ...set };
      expect(preferContainerVulkanDriver(e, there, 'linux')).toBeNull();
      expect(e).toEqual(set); // the user's choice stands
    }
    const none: NodeJS.ProcessEnv = {};
    expect(preferContainerVulkanDriver(none, () => false, 'linux')).toBeNull();
    expect(preferContainerVulkanDriver(none, there, 'darwin')).toBeNull();
    expect(none).toEqual({});
  });

  it("readDawnProbe: Dawn's and the Vulkan loader's messages become the reason, in one line", () => {
    const stderr = [
      "Warning: loader_scanned_icd_add: Could not get 'vkCreateInstance' via 'vk_icdGetInstanceProcAddr' for ICD libGLX_nvidia.so.0",
      'Warning: vkCreateInstance: Found no drivers!',
      'Warning: vkCreateInstance failed with VK_ERROR_INCOMPATIBLE_DRIVER',
      '    at CheckVkSuccessImpl (/home/runner/work/node-webgpu/third_party/dawn/src/dawn/native/vulkan/VulkanError.cpp:106)',
      '',
    ].join('\n');
    expect(readDawnProbe('{"ok":true}\n', '', 0)).toEqual({ ok: true });
    expect(readDawnProbe('{"ok":false}\n', stderr, 0)).toEqual({
      ok: false,
      reason:
        "Dawn found no GPU adapter (loader_scanned_icd_add: Could not get 'vkCreateInstance' via 'vk_icdGetInstanceProcAddr' for ICD libGLX_nvidia.so.0; vkCreateInstance: Found no drivers!; vkCreateInstance failed with VK_ERROR_INCOMPATIBLE_DRIVER)",
    });
    expect(readDawnProbe('{"ok":false}\n', '', 0).reason).toBe('Dawn found no GPU adapter (is a Vulkan driver for the GPU installed?)');
    expect(readDawnProbe('{"ok":false,"error":"lost"}\n', '', 0).reason).toMatch(/^request failed: lost/);
    expect(readDawnProbe('', 'Segmentation fault', 139).reason).toBe('the Dawn probe exited with 139 (Segmentation fault)');
  });

  it('probeDawnAdapter asks in a child process: what native code prints there never reaches this process', () => {
    const dir = mkdtempSync(join(tmpdir(), 'dejavu-fake-webgpu-'));
    const fake = (adapter: string) => {
      const f = join(dir, `${adapter}.cjs`);
      // Writes to fd 2 as native code would (no Node stream in between).
      writeFileSync(f, `const fs = require('fs');
module.exports = { globals: {}, create: () => ({ requestAdapter: async () => {
  fs.writeSync(2, 'Warning: vkCreateInstance: Found no drivers!\\n');
  return ${adapter};
} }) };`);
      return f;
    };
    try {
      expect(probeDawnAdapter(fake('null'))).toEqual({ ok: false, reason: 'Dawn found no GPU adapter (vkCreateInstance: Found no drivers!)' });
      expect(probeDawnAdapter(fake('({})'))).toEqual({ ok: true });
      expect(probeDawnAdapter(join(dir, 'absent.cjs')).reason).toMatch(/^request failed: Cannot find module/);
      // npm webgpu itself (an ES module): the probe loads it and Dawn answers, adapter or not (here, usually no Vulkan).
      const real = probeDawnAdapter(createRequire(import.meta.url).resolve('webgpu'));
      if (!real.ok) expect(real.reason).toMatch(/^Dawn found no GPU adapter \(/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('backendLine names the backend in use and, only when auto passed over WebGPU, why', () => {
    const skipped = ["node-gpu: Cannot find package '@tensorflow/tfjs-node-gpu'", 'webgpu: no Vulkan'];
    expect(backendLine({ description: 'wasm (simd)', skipped })).toBe('backend: wasm (simd); WebGPU not used: no Vulkan');
    expect(backendLine({ description: 'webgpu (nvidia)', skipped: skipped.slice(0, 1) })).toBe('backend: webgpu (nvidia)');
  });

  const cli = join(REPO_ROOT, 'dist', 'cli', 'main.js');
  // Only where the check applies (no Vulkan loader, as in CI): elsewhere Dawn may legitimately find a GPU.
  it.skipIf(!existsSync(cli) || webGpuBlocker() === null)('dejavu train --backend auto without Vulkan: one line about WebGPU, no Dawn warning, with workers too', async () => {
    const tmp = mkdtempSync(join(tmpdir(), 'dejavu-train-auto-'));
    try {
      const shards = (await writeSyntheticShards({ dir: join(tmp, 's'), docs: 8, tokens: 10, docsPerShard: 4 })).dir;
      for (const workers of ['1', '2']) {
        const args = ['train', '--shards', shards, '--out', join(tmp, `o${workers}`), '--rank', '4', '--epochs', '1', '--target', 'mlp', '--layers', '0', '--val-frac', '0.25', '--backend', 'auto', '--workers', workers];
        const r = spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8' });
        expect(r.status, r.stderr).toBe(0);
        expect(r.stderr).not.toMatch(/Couldn't load Vulkan/);
        const about = r.stderr.split('\n').filter((l) => /webgpu/i.test(l));
        expect(about, r.stderr).toHaveLength(1);
        expect(about[0]).toMatch(/^backend: (wasm|cpu|node|node-gpu) .*; WebGPU not used: the Vulkan loader libvulkan\.so\.1 is not installed/);
      }
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
  }, 120_000);

  // A Vulkan loader but no driver manifest (a GPU machine whose driver's Vulkan part is not where the loader looks):
  // the same one line, naming the missing manifest, and Dawn never starts ("Found no drivers!" never prints).
  it.skipIf(!existsSync(cli) || process.platform !== 'linux' || vulkanDriverManifests().length > 0)('dejavu train --backend auto with a loader but no driver manifest: one line, no Dawn warning', async () => {
    const tmp = mkdtempSync(join(tmpdir(), 'dejavu-train-icd-'));
    try {
      const shards = (await writeSyntheticShards({ dir: join(tmp, 's'), docs: 8, tokens: 10, docsPerShard: 4 })).dir;
      mkdirSync(join(tmp, 'lib'));
      writeFileSync(join(tmp, 'lib', 'libvulkan.so.1'), ''); // found by the check; never loaded, since it stops there
      const args = ['train', '--shards', shards, '--out', join(tmp, 'o'), '--rank', '4', '--epochs', '1', '--target', 'mlp', '--layers', '0', '--val-frac', '0.25', '--backend', 'auto', '--workers', '2'];
      const r = spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', env: { ...process.env, LD_LIBRARY_PATH: join(tmp, 'lib') } });
      expect(r.status, r.stderr).toBe(0);
      expect(r.stderr).not.toMatch(/Found no drivers|Couldn't load Vulkan/);
      const about = r.stderr.split('\n').filter((l) => /webgpu/i.test(l));
      expect(about, r.stderr).toHaveLength(1);
      expect(about[0]).toMatch(/^backend: (wasm|cpu|node|node-gpu) .*; WebGPU not used: no Vulkan driver manifest/);
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
  }, 120_000);
});
