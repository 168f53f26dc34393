/**
 * `--device auto|cpu|cuda` for work that runs on either (export's calibration measurements): auto takes the GPU when
 * the CUDA library loads, a GPU answers and, for the grouped top-k, the streamed kernels take the model; else the
 * CPU, and says why.
 */
import type { OptConfig } from '../../checkpoints/types.js';
import { DejavuError } from '../../common/errors.js';
import type { CudaLib } from './lib.js';

export const DEVICES = ['auto', 'cpu', 'cuda'] as const;

export type DeviceChoice =
  | { type: 'cpu'; /** Why auto did not take the GPU. */ why?: string }
  | { type: 'cuda'; lib: CudaLib; name: string };

/** The device to run on; `load` opens the CUDA library (loadCudaLib; a stand-in in tests). */
export async function pickDevice(
  requested: string | undefined,
  config: OptConfig,
  load: () => Promise<CudaLib>,
  o: { flag?: string; grouped?: boolean } = {},
): Promise<DeviceChoice> {
  const flag = o.flag ?? '--device';
  const want = requested ?? 'auto';
  if (!(DEVICES as readonly string[]).includes(want)) throw new DejavuError(`expected ${DEVICES.join(', ')}, got '${want}'`, flag);
  if (want === 'cpu') return { type: 'cpu' };
  const { CudaEngine } = await import('./engine.js');
  try {
    const lib = await load();
    const name = lib.deviceInfo().name;  // the first CUDA call: a machine without a GPU fails here
    const why = o.grouped ? CudaEngine.streamedProblem(config) : undefined;
    if (why) throw new DejavuError(why);
    return { type: 'cuda', lib, name };
  } catch (e) {
    if (want === 'cuda') throw e;
    return { type: 'cpu', why: (e as Error).message };
  }
}
