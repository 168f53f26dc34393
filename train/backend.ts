/**
 * tfjs backend selection at run time. `auto` tries, in order: tfjs-node-gpu, tfjs-node (optionalDependencies, only
 * when installed and loadable), WebGPU (Dawn for Node, when a hardware adapter exists), wasm, cpu. Every backend module
 * is imported dynamically, so a missing optional package is just "not available".
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, sep } from 'node:path';
import { isMainThread } from 'node:worker_threads';
import { DejavuError } from '../common/errors.js';
import type { Tf } from './model.js';

export type BackendName = 'auto' | 'node-gpu' | 'node' | 'webgpu' | 'wasm' | 'cpu';
export const BACKENDS: BackendName[] = ['auto', 'node-gpu', 'node', 'webgpu', 'wasm', 'cpu'];

export interface BackendInfo {
  tf: Tf;
  /** The backend that was chosen (never 'auto'). */
  name: Exclude<BackendName, 'auto'>;
  /** Human-readable, e.g. "webgpu (NVIDIA H100 80GB HBM3, vulkan)". */
  description: string;
  /** Why each earlier candidate was skipped (auto only). */
  skipped: string[];
}

/**
 * tfjs-backend-wasm's BatchMatMul is 12-50x slower when an input is transposed (XNNPACK gets a strided operand):
 * re-register it to transpose explicitly first (a cheap memory pass) and multiply untransposed operands.
 */
export function patchWasmBatchMatMul(tf: Tf): void {
  const orig = tf.getKernel('BatchMatMul', 'wasm');
  const transposeK = tf.getKernel('Transpose', 'wasm');
  if (!orig || !transposeK || (orig as { patched?: boolean }).patched) return;
  tf.unregisterKernel('BatchMatMul', 'wasm');
  const kernelFunc: TF_KernelFunc = ({ inputs, backend, attrs }) => {
    const { transposeA, transposeB } = attrs as { transposeA: boolean; transposeB: boolean };
    if (!transposeA && !transposeB) return orig.kernelFunc({ inputs, backend, attrs });
    const temps: { dataId: object }[] = [];
    const tr = (t: TF_TensorInfo): TF_TensorInfo => {
      const rank = t.shape.length;
      const perm = [...Array(rank - 2).keys(), rank - 1, rank - 2];
      const o = transposeK.kernelFunc({ inputs: { x: t }, backend, attrs: { perm } }) as TF_TensorInfo;
      temps.push(o);
      return o;
    };
    let { a, b } = inputs as { a: TF_TensorInfo; b: TF_TensorInfo };
    if (transposeA) a = tr(a);
    if (transposeB) b = tr(b);
    const out = orig.kernelFunc({ inputs: { a, b }, backend, attrs: { ...attrs, transposeA: false, transposeB: false } });
    for (const t of temps) (backend as { disposeData(id: object): void }).disposeData(t.dataId);
    return out;
  };
  // `stock` keeps the original so a benchmark can compare.
  tf.registerKernel({ ...orig, kernelFunc, patched: true, stock: orig } as Parameters<Tf['registerKernel']>[0]);
}
type TF_TensorInfo = import('@tensorflow/tfjs-core').TensorInfo;
type TF_KernelFunc = Parameters<Tf['registerKernel']>[0]['kernelFunc'];

async function loadCore(): Promise<Tf> {
  return (await import('@tensorflow/tfjs-core')) as Tf;
}

async function tryNode(pkg: string, tf: Tf): Promise<string> {
  // tfjs-node registers the 'tensorflow' backend on import; it must share our tfjs-core instance.
  await import(pkg);
  if (!(await tf.setBackend('tensorflow'))) throw new Error(`${pkg} loaded but the tensorflow backend did not initialise`);
  return pkg;
}

/** The library directories the Linux dynamic loader searches: LD_LIBRARY_PATH, /etc/ld.so.conf(.d), the defaults. */
export function linuxLibraryDirs(env: NodeJS.ProcessEnv = process.env, confRoot = '/etc'): string[] {
  const dirs = (env.LD_LIBRARY_PATH ?? '').split(':').filter(Boolean);
  const readConf = (file: string, depth: number): void => {
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch {
      return;
    }
    for (const raw of text.split('\n')) {
      const line = raw.replace(/#.*/, '').trim();
      if (!line) continue;
      const inc = /^include\s+(.+)$/.exec(line);
      if (!inc) dirs.push(line);
      else if (depth < 4) {
        // Only the `dir/*.conf` form that distributions use.
        const dir = dirname(inc[1].startsWith('/') ? inc[1] : join(confRoot, inc[1]));
        let names: string[] = [];
        try {
          names = readdirSync(dir).filter((n) => n.endsWith('.conf')).sort();
        } catch {
          /* no such folder */
        }
        for (const n of names) readConf(join(dir, n), depth + 1);
      }
    }
  };
  readConf(join(confRoot, 'ld.so.conf'), 0);
  dirs.push('/lib', '/usr/lib', '/lib64', '/usr/lib64', '/usr/local/lib', '/lib/x86_64-linux-gnu', '/usr/lib/x86_64-linux-gnu', '/lib/aarch64-linux-gnu', '/usr/lib/aarch64-linux-gnu');
  return [...new Set(dirs)];
}

/** The `*.json` files of a folder ([] when it cannot be read). */
function jsonFiles(dir: string): string[] {
  try {
    return readdirSync(dir).filter((n) => n.endsWith('.json')).sort().map((n) => join(dir, n));
  } catch {
    return [];
  }
}

/**
 * The Vulkan driver manifests (ICD .json files, each naming a GPU driver's Vulkan library) where the Linux Vulkan
 * loader looks: VK_DRIVER_FILES (or its old name VK_ICD_FILENAMES) alone when set, else the XDG config and data
 * folders' `vulkan/icd.d` (/etc/xdg, /etc, /usr/local/share, /usr/share, the user's), plus VK_ADD_DRIVER_FILES.
 * Entries of the variables may be files or folders.
 */
export function vulkanDriverManifests(env: NodeJS.ProcessEnv = process.env, list: (dir: string) => string[] = jsonFiles, exists: (p: string) => boolean = existsSync): string[] {
  const entries = (v: string | undefined) => (v ?? '').split(':').filter(Boolean);
  const resolve = (xs: string[]) => xs.flatMap((p) => (p.endsWith('.json') ? (exists(p) ? [p] : []) : list(p)));
  const only = entries(env.VK_DRIVER_FILES || env.VK_ICD_FILENAMES);
  if (only.length) return resolve(only);
  const home = env.HOME ?? '';
  const dirs = [
    env.XDG_CONFIG_HOME || join(home, '.config'),
    ...entries(env.XDG_CONFIG_DIRS || '/etc/xdg'),
    '/usr/local/etc',
    '/etc',
    env.XDG_DATA_HOME || join(home, '.local', 'share'),
    ...entries(env.XDG_DATA_DIRS || '/usr/local/share:/usr/share'),
  ];
  return [...resolve(dirs.map((d) => join(d, 'vulkan', 'icd.d'))), ...resolve(entries(env.VK_ADD_DRIVER_FILES))];
}

/** Where NVIDIA's container runtime puts the driver's Vulkan manifest: outside the loader's folders. */
export const NVIDIA_CONTAINER_ICD = '/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json';

/**
 * Points the Vulkan loader at NVIDIA's container manifest when neither VK_DRIVER_FILES nor VK_ICD_FILENAMES is set and
 * that manifest exists: the container runtime mounts it to match the running driver, while the image may also carry
 * a /usr/share one that the loader cannot use (seen on an H100 machine: it names libGLX_nvidia.so.0, "Could not get
 * 'vkCreateInstance'", then "Found no drivers!"). The value set, or null. Must run on the main thread before Dawn
 * starts: a worker thread's process.env is a copy that native code does not read.
 */
export function preferContainerVulkanDriver(
  env: NodeJS.ProcessEnv = process.env,
  exists: (p: string) => boolean = existsSync,
  platform: NodeJS.Platform = process.platform,
): string | null {
  if (platform !== 'linux' || env.VK_DRIVER_FILES || env.VK_ICD_FILENAMES || !exists(NVIDIA_CONTAINER_ICD)) return null;
  env.VK_DRIVER_FILES = NVIDIA_CONTAINER_ICD;
  return NVIDIA_CONTAINER_ICD;
}

/**
 * Why Dawn cannot use a GPU here, or null when it may. On Linux Dawn drives the GPU through Vulkan: without the Vulkan
 * loader it prints "Couldn't load Vulkan" from native code (to fd 2, once per tfjs instance), and without a driver
 * manifest "vkCreateInstance: Found no drivers!", and finds no adapter. Looking for libvulkan.so.1 and a manifest first
 * keeps those warnings from ever appearing.
 */
export function webGpuBlocker(
  platform: NodeJS.Platform = process.platform,
  dirs: () => string[] = linuxLibraryDirs,
  exists: (p: string) => boolean = existsSync,
  manifests: () => string[] = vulkanDriverManifests,
): string | null {
  if (platform !== 'linux') return null; // Metal / D3D12 come with the OS
  if (!dirs().some((d) => exists(join(d, 'libvulkan.so.1')))) {
    return 'the Vulkan loader libvulkan.so.1 is not installed (Dawn needs it on Linux; docs/training.md, "Backends")';
  }
  if (manifests().length) return null;
  return exists(NVIDIA_CONTAINER_ICD)
    ? `no Vulkan driver manifest where the Vulkan loader looks; NVIDIA's is outside its folders: export VK_DRIVER_FILES=${NVIDIA_CONTAINER_ICD}`
    : 'no Vulkan driver manifest (icd.d/*.json: the GPU driver\'s Vulkan part) where the Vulkan loader looks (docs/training.md, "Backends")';
}

export interface DawnProbe {
  ok: boolean;
  /** Why there is no adapter: Dawn's and the Vulkan loader's own messages, in one line. */
  reason?: string;
}

/** Reads the probe child's output: its JSON line on stdout, and what Dawn and the Vulkan loader printed on stderr. */
export function readDawnProbe(stdout: string, stderr: string, status: number | null): DawnProbe {
  let r: { ok?: boolean; error?: string } = {};
  try {
    r = JSON.parse(stdout.trim().split('\n').pop() ?? '');
  } catch {
    /* no answer: the child died (a crash in native code) */
  }
  if (r.ok) return { ok: true };
  // Messages first ("Warning: vkCreateInstance: Found no drivers!", a thrown error's line), not a stack trace's code
  // echo or Dawn's source locations.
  const lines = stderr.split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('at '));
  const messages = lines.filter((l) => /^Warning:|Error\b|error\b/.test(l));
  const said = (messages.length ? messages : lines).map((l) => l.replace(/^Warning:\s*/, ''));
  const why = r.error ? `request failed: ${r.error}` : status === 0 ? 'Dawn found no GPU adapter' : `the Dawn probe exited with ${status ?? 'a signal'}`;
  if (said.length) return { ok: false, reason: `${why} (${said.slice(0, 3).join('; ')})` };
  return { ok: false, reason: r.error ? why : `${why} (is a Vulkan driver for the GPU installed?)` };
}

/**
 * Asks Dawn for an adapter in a child process first: where there is none, Dawn and the Vulkan loader
 * print their warnings from native code straight to fd 2 (four lines on a machine whose driver manifest is unusable),
 * which a Node process cannot hold back. The child's are captured instead and train says why in its one backend line.
 * `module`: the path of npm `webgpu`'s entry.
 */
export function probeDawnAdapter(module: string, timeoutMs = 60_000): DawnProbe {
  // npm webgpu is an ES module: imported, not required.
  const script = `import(require('node:url').pathToFileURL(process.argv[1]).href).then((m) => {
  const { create, globals } = m.create ? m : m.default;
  Object.assign(globalThis, globals);
  return create([]).requestAdapter({ powerPreference: 'high-performance' });
}).then(
  (a) => { process.stdout.write(JSON.stringify({ ok: !!a }) + '\\n'); process.exit(0); },
  (e) => { process.stdout.write(JSON.stringify({ ok: false, error: String(e && e.message) }) + '\\n'); process.exit(0); });`;
  const r = spawnSync(process.execPath, ['-e', script, module], { encoding: 'utf8', timeout: timeoutMs, env: process.env });
  if (r.error) return { ok: false, reason: `the Dawn probe could not run (${r.error.message})` };
  return readDawnProbe(r.stdout ?? '', r.stderr ?? '', r.status);
}

/** Sets up `navigator.gpu` from Dawn (npm `webgpu`) before tfjs-backend-webgpu loads (it checks at import time). */
async function tryWebGpu(tf: Tf, allowFallbackAdapter: boolean): Promise<string> {
  const g = globalThis as unknown as { navigator?: { gpu?: unknown } };
  if (!g.navigator?.gpu) {
    if (isMainThread) preferContainerVulkanDriver();
    const blocker = webGpuBlocker();
    if (blocker) throw new Error(blocker);
    const probe = probeDawnAdapter(createRequire(import.meta.url).resolve('webgpu'));
    if (!probe.ok) throw new Error(probe.reason);
    const { create, globals } = (await import('webgpu')) as unknown as { create: (o: string[]) => unknown; globals: Record<string, unknown> };
    Object.assign(globalThis, globals);
    const gpu = create([]);
    if (g.navigator) Object.defineProperty(g.navigator, 'gpu', { value: gpu, configurable: true });
    else Object.defineProperty(globalThis, 'navigator', { value: { gpu }, configurable: true, writable: true });
  }
  const gpu = g.navigator!.gpu as { requestAdapter(o: object): Promise<null | { info?: Record<string, string>; isFallbackAdapter?: boolean }> };
  const adapter = await gpu.requestAdapter({ powerPreference: 'high-performance' });
  if (!adapter) throw new Error('Dawn found no GPU adapter (is a Vulkan driver for the GPU installed?)');
  const info = adapter.info ?? {};
  const software = adapter.isFallbackAdapter || /swiftshader|llvmpipe|lavapipe/i.test(`${info.vendor} ${info.architecture} ${info.device} ${info.description}`);
  if (software && !allowFallbackAdapter) throw new Error(`only a software adapter (${info.description || info.device || 'fallback'})`);
  await import('@tensorflow/tfjs-backend-webgpu');
  // Small tensors would otherwise round-trip to the CPU backend (a sync each time).
  tf.env().set('WEBGPU_CPU_FORWARD', false);
  if (!(await tf.setBackend('webgpu'))) throw new Error('tfjs webgpu backend did not initialise');
  const name = [info.vendor, info.architecture, info.device].filter(Boolean).join(' ');
  return `${name || 'adapter'}${info.description ? `, ${info.description}` : ''}${info.backendType ? `, ${info.backendType}` : ''}`;
}

async function tryWasm(tf: Tf): Promise<string> {
  const wasm = await import('@tensorflow/tfjs-backend-wasm');
  const require = createRequire(import.meta.url);
  wasm.setWasmPaths(dirname(require.resolve('@tensorflow/tfjs-backend-wasm/dist/tfjs-backend-wasm-simd.wasm')) + sep);
  if (!(await tf.setBackend('wasm'))) throw new Error('wasm backend did not initialise');
  patchWasmBatchMatMul(tf);
  const simd = tf.env().getBool('WASM_HAS_SIMD_SUPPORT');
  const mt = tf.env().getBool('WASM_HAS_MULTITHREAD_SUPPORT');
  return `${simd ? 'simd' : 'no simd'}, ${mt ? `${wasm.getThreadsCount()} threads` : '1 thread'}, BatchMatMul transpose fix`;
}

async function tryCpu(tf: Tf): Promise<string> {
  await import('@tensorflow/tfjs-backend-cpu');
  if (!(await tf.setBackend('cpu'))) throw new Error('cpu backend did not initialise');
  return 'pure JS';
}

/**
 * The one line `train` prints about its backend: the one in use and, when auto passed over WebGPU, why (the tfjs-node
 * packages are optional and usually absent, so their skips are not news).
 */
export function backendLine(b: Pick<BackendInfo, 'description' | 'skipped'>): string {
  const webgpu = b.skipped.find((s) => s.startsWith('webgpu: '));
  return webgpu ? `backend: ${b.description}; WebGPU not used: ${webgpu.slice('webgpu: '.length)}` : `backend: ${b.description}`;
}

/**
 * The smallest training step `auto` takes WebGPU for: GFLOP of one optimizer step of the largest predictor (forward
 * and backward, 6 x batch x its parameters). Dawn adds a fixed cost to every step (uploads, dispatches, the loss read
 * back; ~20 ms on an H100), which a small step never earns back. Measured on an H100 machine: opt-mini's demo
 * predictors (0.19 GFLOP a step at rank 128, batch 128) took ~5 s an epoch each on WebGPU (22 ms a step), the whole
 * training 42 s on 11 wasm workers (cuda-demo-opt-mini-h100.json); OPT-6.7B's layer shape (126 GFLOP a step at
 * rank 1000, batch 1024) runs 58 ms a step on WebGPU (train-shape-opt-6.7b-h100.json), where one wasm thread at
 * ~30 GFLOPS would take seconds. A wasm worker does ~0.6 GFLOP in WebGPU's 20 ms, so the line sits at 1.
 */
export const WEBGPU_MIN_STEP_GFLOP = 1;

/** GFLOP of one training step of the largest predictor: 6 x batch x rank x (in + out). */
export function stepGflop(shapes: readonly { inDim: number; outDim: number }[], rank: number, batch: number): number {
  return Math.max(0, ...shapes.map((j) => (6 * batch * rank * (j.inDim + j.outDim)) / 1e9));
}

/** Why `auto` passes over WebGPU for steps of this size, or undefined where WebGPU may pay. */
export function webGpuTooSmall(gflop: number): string | undefined {
  return gflop < WEBGPU_MIN_STEP_GFLOP
    ? `a training step is ${gflop.toFixed(2)} GFLOP (largest predictor), below the ${WEBGPU_MIN_STEP_GFLOP} GFLOP at which the GPU's per-step cost pays (docs/training.md)`
    : undefined;
}

/**
 * Chooses and initialises a backend. A named backend that fails is an error; `auto` falls through the list.
 * `skipWebGpu`: why `auto` leaves WebGPU out (webGpuTooSmall); Dawn is then not started, and the reason given is
 * the machine's own (no Vulkan loader or driver manifest) where it has one, else this.
 */
export async function selectBackend(name: BackendName, o: { skipWebGpu?: string } = {}): Promise<BackendInfo> {
  const tf = await loadCore();
  const order: Exclude<BackendName, 'auto'>[] = name === 'auto' ? ['node-gpu', 'node', 'webgpu', 'wasm', 'cpu'] : [name];
  const skipped: string[] = [];
  for (const b of order) {
    if (b === 'webgpu' && name === 'auto' && o.skipWebGpu) {
      // A machine that cannot run WebGPU at all says that first (the cheap checks; Dawn is not started either way).
      if (isMainThread) preferContainerVulkanDriver();
      skipped.push(`webgpu: ${webGpuBlocker() ?? o.skipWebGpu}`);
      continue;
    }
    try {
      let detail: string;
      if (b === 'node-gpu') detail = await tryNode('@tensorflow/tfjs-node-gpu', tf);
      else if (b === 'node') detail = await tryNode('@tensorflow/tfjs-node', tf);
      else if (b === 'webgpu') detail = await tryWebGpu(tf, name === 'webgpu');
      else if (b === 'wasm') detail = await tryWasm(tf);
      else detail = await tryCpu(tf);
      await tf.ready();
      return { tf, name: b, description: `${b} (${detail})`, skipped };
    } catch (e) {
      const msg = (e as Error).message.split('\n')[0];
      if (name !== 'auto') throw new DejavuError(`backend ${b} is not available: ${msg}`, '--backend');
      skipped.push(`${b}: ${msg}`);
    }
  }
  throw new DejavuError(`no tfjs backend could be initialised (${skipped.join('; ')})`, '--backend');
}
