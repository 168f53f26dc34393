/**
 * A RESTRICTED unpickler for torch.save state dicts. Python's pickle is a small stack machine whose GLOBAL + REDUCE
 * opcodes call arbitrary Python functions; loading an untrusted .bin with torch.load can therefore run code. Here
 * nothing is ever called: the only globals accepted are the five a state dict of tensors needs, each mapped to a
 * plain data constructor below, and any other global (os.system, builtins.eval, torch.storage._load_from_bytes, ...)
 * is refused with an error naming the file and the global.
 *
 * Opcodes: everything pickle protocol 2 uses for dicts, tuples, lists, ints, floats, strings, None/bools, memo and
 * persistent ids, plus the harmless framing/memo/string opcodes of protocols 3-4 (FRAME, MEMOIZE, SHORT_BINUNICODE,
 * BINBYTES, STACK_GLOBAL) so a file saved with a newer pickle_protocol still loads. Text-mode (protocol 0) opcodes,
 * INST/OBJ/NEWOBJ, extension registry and out-of-band buffers are refused.
 */
import { DejavuError } from '../common/errors.js';
import type { StDtype } from './safetensors.js';

/** A storage referenced by persistent id ('storage', torch.XStorage, key, location, numel): zip entry data/<key>. */
export interface PickleStorage {
  kind: 'storage';
  dtype: StDtype;
  key: string;
  location: string;
  numel: number;
}

/** The result of torch._utils._rebuild_tensor_v2: a strided view into a storage (offsets and strides in elements). */
export interface PickleTensor {
  kind: 'tensor';
  storage: PickleStorage;
  offset: number;
  shape: number[];
  stride: number[];
}

export type PickleValue =
  | null
  | boolean
  | number
  | string
  | Uint8Array
  | PickleValue[]
  | Map<PickleValue, PickleValue>
  | PickleStorage
  | PickleTensor
  | Callable
  | StorageType;

/** The allowed callables, as inert tags: REDUCE dispatches on the tag, it never calls into the file's choice. */
class Callable {
  constructor(readonly id: 'OrderedDict' | 'rebuild_tensor_v2') {}
}
class StorageType {
  constructor(readonly dtype: StDtype) {}
}

/** The allow-list: "module name" -> what the global stands for. */
export const ALLOWED_GLOBALS: Readonly<Record<string, Callable | StorageType>> = {
  'collections OrderedDict': new Callable('OrderedDict'),
  'torch._utils _rebuild_tensor_v2': new Callable('rebuild_tensor_v2'),
  'torch FloatStorage': new StorageType('F32'),
  'torch HalfStorage': new StorageType('F16'),
  'torch BFloat16Storage': new StorageType('BF16'),
};

const MARK = Symbol('mark');
type Slot = PickleValue | typeof MARK;

export function unpickle(data: Uint8Array, path: string): PickleValue {
  const dv = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const stack: Slot[] = [];
  const memo = new Map<number, PickleValue>();
  let pos = 0;
  const fail = (msg: string): never => {
    throw new DejavuError(`pickle: ${msg} (at byte ${pos})`, path);
  };
  const need = (n: number) => {
    if (pos + n > data.length) fail('truncated data');
  };
  const u8 = () => (need(1), data[pos++]);
  const u16 = () => (need(2), (pos += 2), dv.getUint16(pos - 2, true));
  const u32 = () => (need(4), (pos += 4), dv.getUint32(pos - 4, true));
  const i32 = () => (need(4), (pos += 4), dv.getInt32(pos - 4, true));
  const u64 = () => {
    need(8);
    const v = dv.getBigUint64(pos, true);
    pos += 8;
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) fail('length too large');
    return Number(v);
  };
  const bytes = (n: number) => (need(n), (pos += n), data.subarray(pos - n, pos));
  const utf8 = (n: number) => new TextDecoder('utf-8', { fatal: true }).decode(bytes(n));
  const latin1 = (n: number) => {
    let s = '';
    for (const b of bytes(n)) s += String.fromCharCode(b);
    return s;
  };
  const line = () => {
    const end = data.indexOf(0x0a, pos);
    if (end < 0) fail('truncated GLOBAL');
    const s = latin1(end - pos);
    pos++; // the newline
    return s;
  };
  const pop = (): PickleValue => {
    const v = stack.pop();
    if (v === undefined) fail('stack underflow');
    if (v === MARK) fail('unexpected MARK');
    return v as PickleValue;
  };
  const top = (): PickleValue => {
    const v = stack[stack.length - 1];
    if (v === undefined || v === MARK) fail('stack underflow');
    return v as PickleValue;
  };
  const popMark = (): PickleValue[] => {
    const i = stack.lastIndexOf(MARK);
    if (i < 0) fail('no MARK on the stack');
    const items = stack.splice(i) as PickleValue[];
    items.shift();
    return items;
  };
  const tuple = (items: PickleValue[]) => Object.freeze(items) as PickleValue[];
  const list = (v: PickleValue): PickleValue[] => {
    if (!Array.isArray(v) || Object.isFrozen(v)) fail('APPEND target is not a list');
    return v as PickleValue[];
  };
  const dict = (v: PickleValue): Map<PickleValue, PickleValue> => {
    if (!(v instanceof Map)) fail('SETITEM target is not a dict');
    return v as Map<PickleValue, PickleValue>;
  };
  const global = (module: string, name: string): PickleValue => {
    const g = ALLOWED_GLOBALS[`${module} ${name}`];
    if (!g) {
      fail(
        `refusing global ${module}.${name}: a state dict of tensors only needs ${Object.keys(ALLOWED_GLOBALS)
          .map((k) => k.replace(' ', '.'))
          .join(', ')}`,
      );
    }
    return g;
  };
  const memoGet = (i: number): PickleValue => {
    if (!memo.has(i)) fail(`memo key ${i} not found`);
    return memo.get(i)!;
  };

  for (;;) {
    const at = pos;
    const op = u8();
    switch (op) {
      case 0x80: // PROTO
        if (u8() > 5) fail('unknown pickle protocol');
        break;
      case 0x95: // FRAME: a length prefix only, the opcodes follow inline
        u64();
        break;
      case 0x2e: // STOP
        if (stack.length !== 1) fail(`STOP with ${stack.length} items on the stack`);
        return pop();
      case 0x28: // MARK
        stack.push(MARK);
        break;
      case 0x30: // POP
        stack.pop();
        break;
      case 0x31: // POP_MARK
        popMark();
        break;
      case 0x32: // DUP
        stack.push(top());
        break;
      case 0x4a: // BININT
        stack.push(i32());
        break;
      case 0x4b: // BININT1
        stack.push(u8());
        break;
      case 0x4d: // BININT2
        stack.push(u16());
        break;
      case 0x8a: {
        // LONG1: little-endian two's complement of n bytes
        const b = bytes(u8());
        let v = 0n;
        for (let i = b.length - 1; i >= 0; i--) v = (v << 8n) | BigInt(b[i]);
        if (b.length && b[b.length - 1] & 0x80) v -= 1n << BigInt(8 * b.length);
        if (v > BigInt(Number.MAX_SAFE_INTEGER) || v < -BigInt(Number.MAX_SAFE_INTEGER)) fail('integer too large');
        stack.push(Number(v));
        break;
      }
      case 0x4e: // NONE
        stack.push(null);
        break;
      case 0x88: // NEWTRUE
        stack.push(true);
        break;
      case 0x89: // NEWFALSE
        stack.push(false);
        break;
      case 0x47: // BINFLOAT (big-endian double)
        need(8);
        stack.push(dv.getFloat64(pos, false));
        pos += 8;
        break;
      case 0x58: // BINUNICODE
        stack.push(utf8(u32()));
        break;
      case 0x8c: // SHORT_BINUNICODE
        stack.push(utf8(u8()));
        break;
      case 0x8d: // BINUNICODE8
        stack.push(utf8(u64()));
        break;
      case 0x54: // BINSTRING (py2 str)
        stack.push(latin1(i32()));
        break;
      case 0x55: // SHORT_BINSTRING
        stack.push(latin1(u8()));
        break;
      case 0x42: // BINBYTES
        stack.push(bytes(u32()).slice());
        break;
      case 0x43: // SHORT_BINBYTES
        stack.push(bytes(u8()).slice());
        break;
      case 0x29: // EMPTY_TUPLE
        stack.push(tuple([]));
        break;
      case 0x74: // TUPLE
        stack.push(tuple(popMark()));
        break;
      case 0x85: // TUPLE1
        stack.push(tuple([pop()]));
        break;
      case 0x86: {
        // TUPLE2
        const b = pop();
        stack.push(tuple([pop(), b]));
        break;
      }
      case 0x87: {
        // TUPLE3
        const c = pop();
        const b = pop();
        stack.push(tuple([pop(), b, c]));
        break;
      }
      case 0x5d: // EMPTY_LIST
        stack.push([]);
        break;
      case 0x6c: // LIST
        stack.push(popMark());
        break;
      case 0x61: {
        // APPEND
        const v = pop();
        list(top()).push(v);
        break;
      }
      case 0x65: {
        // APPENDS
        const items = popMark();
        list(top()).push(...items);
        break;
      }
      case 0x7d: // EMPTY_DICT
        stack.push(new Map());
        break;
      case 0x64: {
        // DICT
        const items = popMark();
        const m = new Map<PickleValue, PickleValue>();
        for (let i = 0; i + 1 < items.length; i += 2) m.set(items[i], items[i + 1]);
        stack.push(m);
        break;
      }
      case 0x73: {
        // SETITEM
        const v = pop();
        const k = pop();
        dict(top()).set(k, v);
        break;
      }
      case 0x75: {
        // SETITEMS
        const items = popMark();
        if (items.length % 2) fail('SETITEMS with an odd number of items');
        const m = dict(top());
        for (let i = 0; i < items.length; i += 2) m.set(items[i], items[i + 1]);
        break;
      }
      case 0x71: // BINPUT
        memo.set(u8(), top());
        break;
      case 0x72: // LONG_BINPUT
        memo.set(u32(), top());
        break;
      case 0x94: // MEMOIZE
        memo.set(memo.size, top());
        break;
      case 0x68: // BINGET
        stack.push(memoGet(u8()));
        break;
      case 0x6a: // LONG_BINGET
        stack.push(memoGet(u32()));
        break;
      case 0x63: {
        // GLOBAL "module\nname\n"
        const module = line();
        stack.push(global(module, line()));
        break;
      }
      case 0x93: {
        // STACK_GLOBAL
        const name = pop();
        const module = pop();
        if (typeof module !== 'string' || typeof name !== 'string') fail('STACK_GLOBAL needs two strings');
        stack.push(global(module as string, name as string));
        break;
      }
      case 0x51: // BINPERSID
        stack.push(persistentStorage(pop(), fail));
        break;
      case 0x52: {
        // REDUCE
        const args = pop();
        const fn = pop();
        if (!(fn instanceof Callable)) fail('REDUCE on something that is not an allowed callable');
        if (!Array.isArray(args)) fail('REDUCE arguments are not a tuple');
        stack.push(reduce(fn as Callable, args as PickleValue[], fail));
        break;
      }
      case 0x62: {
        // BUILD: torch's state_dict() OrderedDict carries `_metadata` (module versions) as instance state; drop it.
        pop();
        if (!(top() instanceof Map)) fail('BUILD on something other than a dict');
        break;
      }
      default:
        pos = at;
        fail(`unsupported opcode 0x${op.toString(16).padStart(2, '0')}`);
    }
  }
}

function reduce(fn: Callable, args: PickleValue[], fail: (m: string) => never): PickleValue {
  if (fn.id === 'OrderedDict') {
    if (args.length !== 0) fail('OrderedDict() with arguments');
    return new Map();
  }
  // _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
  if (args.length < 6 || args.length > 7) fail(`_rebuild_tensor_v2 with ${args.length} arguments`);
  const [storage, offset, size, stride, , hooks] = args;
  const ints = (v: PickleValue) => Array.isArray(v) && v.every((x) => Number.isSafeInteger(x) && (x as number) >= 0);
  if (!storage || typeof storage !== 'object' || (storage as PickleStorage).kind !== 'storage') {
    fail('_rebuild_tensor_v2: first argument is not a storage');
  }
  if (!Number.isSafeInteger(offset) || (offset as number) < 0) fail('_rebuild_tensor_v2: bad storage offset');
  if (!ints(size) || !ints(stride) || (size as number[]).length !== (stride as number[]).length) {
    fail('_rebuild_tensor_v2: bad size/stride');
  }
  if (!(hooks instanceof Map) || hooks.size !== 0) fail('_rebuild_tensor_v2: backward hooks are not supported');
  return {
    kind: 'tensor',
    storage: storage as PickleStorage,
    offset: offset as number,
    shape: [...(size as number[])],
    stride: [...(stride as number[])],
  };
}

function persistentStorage(pid: PickleValue, fail: (m: string) => never): PickleStorage {
  if (!Array.isArray(pid) || pid.length !== 5 || pid[0] !== 'storage') fail('persistent id is not a torch storage reference');
  const [, type, key, location, numel] = pid as PickleValue[];
  if (!(type instanceof StorageType)) fail('persistent id without an allowed storage type');
  if (typeof key !== 'string' || !/^[0-9A-Za-z_]+$/.test(key)) fail(`bad storage key ${JSON.stringify(key)}`);
  if (!Number.isSafeInteger(numel) || (numel as number) < 0) fail('bad storage size');
  return {
    kind: 'storage',
    dtype: (type as StorageType).dtype,
    key: key as string,
    location: String(location),
    numel: numel as number,
  };
}
