/**
 * Lazy initialisation of tfjs with the WebAssembly backend (XNNPACK, SIMD). Only imported dynamically: the CUDA bench
 * path shares runtime/cpu on a machine without tfjs, so nothing here may be reached by a static import chain.
 */
import { createRequire } from 'node:module';
import { dirname, sep } from 'node:path';
import type * as TF from '@tensorflow/tfjs-core';

export type Tf = typeof TF;

let ready: Promise<Tf> | undefined;

/** Loads tfjs-core + the wasm backend once and makes 'wasm' the active backend. */
export function initWasmBackend(): Promise<Tf> {
  ready ??= (async () => {
    const tf = await import('@tensorflow/tfjs-core');
    const wasm = await import('@tensorflow/tfjs-backend-wasm');
    // Node has no fetch-from-URL for the .wasm files: point tfjs at the package's dist folder on disk.
    const require = createRequire(import.meta.url);
    const distDir = dirname(require.resolve('@tensorflow/tfjs-backend-wasm/dist/tfjs-backend-wasm-simd.wasm'));
    wasm.setWasmPaths(distDir + sep);
    const ok = await tf.setBackend('wasm');
    if (!ok || tf.getBackend() !== 'wasm') throw new Error('tfjs wasm backend failed to initialise');
    await tf.ready();
    return tf;
  })();
  return ready;
}

/** A description of the active backend for logs and benchmark JSON, e.g. "tfjs-wasm (simd, 1 thread)". */
export function describeWasm(tf: Tf): string {
  const simd = tf.env().getBool('WASM_HAS_SIMD_SUPPORT');
  const threads = tf.env().getBool('WASM_HAS_MULTITHREAD_SUPPORT');
  return `tfjs-wasm (${simd ? 'simd' : 'no simd'}, ${threads ? 'multithread' : '1 thread'})`;
}
