/**
 * Writes torch.save-format state dicts for tests, opcode by opcode, following what torch (protocol 2) emits:
 * {name: _rebuild_tensor_v2(persistent_id(('storage', torch.HalfStorage, key, 'cpu', numel)), offset, size, stride,
 * False, OrderedDict())}. Independent of checkpoints/unpickle.ts, so the reader is tested against our own writer as
 * well as against the torch-written fixture.
 */
import { buildZip } from './zip-writer.js';

export class PickleBuilder {
  private chunks: number[] = [];
  op(...bytes: number[]): this {
    this.chunks.push(...bytes);
    return this;
  }
  proto(v = 2): this {
    return this.op(0x80, v);
  }
  mark(): this {
    return this.op(0x28);
  }
  int(v: number): this {
    if (v >= 0 && v < 256) return this.op(0x4b, v);
    if (v >= 0 && v < 65536) return this.op(0x4d, v & 0xff, v >> 8);
    if (v >= -(2 ** 31) && v < 2 ** 31) {
      const b = Buffer.alloc(4);
      b.writeInt32LE(v);
      return this.op(0x4a, ...b);
    }
    // LONG1 with 8 bytes, as pickle does for ints beyond 32 bits
    const b = Buffer.alloc(8);
    b.writeBigInt64LE(BigInt(v));
    return this.op(0x8a, 8, ...b);
  }
  str(s: string): this {
    const b = Buffer.from(s, 'utf8');
    const len = Buffer.alloc(4);
    len.writeUInt32LE(b.length);
    return this.op(0x58, ...len, ...b);
  }
  global(module: string, name: string): this {
    return this.op(0x63, ...Buffer.from(`${module}\n${name}\n`, 'latin1'));
  }
  tuple(items: number[]): this {
    this.mark();
    for (const i of items) this.int(i);
    return this.op(0x74);
  }
  bytes(): Uint8Array {
    return Uint8Array.from(this.chunks);
  }
}

export type TorchDtype = 'F16' | 'BF16' | 'F32';
const STORAGE: Record<TorchDtype, string> = { F16: 'HalfStorage', BF16: 'BFloat16Storage', F32: 'FloatStorage' };
const SIZE: Record<TorchDtype, number> = { F16: 2, BF16: 2, F32: 4 };

export interface BinTensor {
  dtype: TorchDtype;
  shape: number[];
  /** Raw little-endian element bytes of the whole storage. */
  storage: Uint8Array;
  /** Storage key; tensors given the same key share one storage (as tied weights do in torch). */
  key: string;
  offset?: number;
  stride?: number[];
}

function contiguousStride(shape: number[]): number[] {
  const s = new Array<number>(shape.length);
  let acc = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    s[i] = acc;
    acc *= shape[i];
  }
  return s;
}

/** The data.pkl bytes for a state dict. `orderedDict` mimics state_dict() (OrderedDict + BUILD of `_metadata`). */
export function statePickle(tensors: Record<string, BinTensor>, orderedDict = false): Uint8Array {
  const p = new PickleBuilder().proto(2);
  if (orderedDict) p.global('collections', 'OrderedDict').op(0x29, 0x52);
  else p.op(0x7d);
  p.mark();
  for (const [name, t] of Object.entries(tensors)) {
    p.str(name).global('torch._utils', '_rebuild_tensor_v2');
    p.mark();
    p.mark().str('storage').global('torch', STORAGE[t.dtype]).str(t.key).str('cpu').int(t.storage.length / SIZE[t.dtype]);
    p.op(0x74, 0x51); // TUPLE, BINPERSID
    p.int(t.offset ?? 0).tuple(t.shape).tuple(t.stride ?? contiguousStride(t.shape));
    p.op(0x89).global('collections', 'OrderedDict').op(0x29, 0x52); // False, OrderedDict()
    p.op(0x74, 0x52); // TUPLE, REDUCE
  }
  p.op(0x75); // SETITEMS
  if (orderedDict) {
    // state._metadata = {'': {'version': 1}}, as nn.Module.state_dict() attaches
    p.op(0x7d).str('_metadata').op(0x7d).str('').op(0x7d).str('version').int(1).op(0x73, 0x73, 0x73, 0x62);
  }
  return p.op(0x2e).bytes();
}

/** A full torch.save zip: archive/data.pkl, archive/byteorder, archive/data/<key> per distinct storage. */
export function buildTorchZip(tensors: Record<string, BinTensor>, opts: { orderedDict?: boolean; deflate?: boolean; pickle?: Uint8Array } = {}): Uint8Array {
  const storages = new Map<string, Uint8Array>();
  for (const t of Object.values(tensors)) storages.set(t.key, t.storage);
  return buildZip([
    { name: 'archive/data.pkl', data: opts.pickle ?? statePickle(tensors, opts.orderedDict) },
    { name: 'archive/byteorder', data: Buffer.from('little') },
    ...[...storages].map(([key, data]) => ({ name: `archive/data/${key}`, data, deflate: opts.deflate })),
    { name: 'archive/version', data: Buffer.from('3\n') },
  ]);
}
