import { describe, expect, it } from 'vitest';
import { unpickle, type PickleTensor } from '../../checkpoints/unpickle.js';
import { PickleBuilder, statePickle } from './helpers/pickle-writer.js';

const F = 'data.pkl';

describe('restricted unpickler', () => {
  it('reads a torch state dict (plain dict and OrderedDict with _metadata) into tensor references', () => {
    const t = { dtype: 'F16' as const, shape: [3, 2], storage: new Uint8Array(12), key: '0' };
    for (const od of [false, true]) {
      const root = unpickle(statePickle({ 'a.weight': t, 'b.bias': { ...t, shape: [6], key: '1', offset: 0 } }, od), F);
      expect(root).toBeInstanceOf(Map);
      const m = root as Map<string, PickleTensor>;
      expect([...m.keys()]).toEqual(['a.weight', 'b.bias']);
      expect(m.get('a.weight')).toMatchObject({ kind: 'tensor', offset: 0, shape: [3, 2], stride: [2, 1] });
      expect(m.get('a.weight')!.storage).toMatchObject({ kind: 'storage', dtype: 'F16', key: '0', location: 'cpu', numel: 6 });
    }
  });

  it('handles ints of every width, strings, lists, tuples, memo, floats', () => {
    const p = new PickleBuilder().proto(2).op(0x5d).mark(); // EMPTY_LIST MARK
    p.int(7).int(300).int(-5).int(2 ** 40).str('héllo').op(0x88, 0x89, 0x4e); // ints, str, True False None
    p.op(0x47, ...Buffer.from([0x3f, 0xf8, 0, 0, 0, 0, 0, 0])); // BINFLOAT 1.5 (big-endian)
    p.op(0x65, 0x71, 0, 0x68, 0, 0x86, 0x2e); // APPENDS, BINPUT 0, BINGET 0, TUPLE2, STOP
    const v = unpickle(p.bytes(), F) as unknown[];
    const list = [7, 300, -5, 2 ** 40, 'héllo', true, false, null, 1.5];
    expect(v).toEqual([list, list]);
    expect(v[0]).toBe(v[1]); // memo returns the same object
  });

  const evil = (module: string, name: string) =>
    new PickleBuilder().proto(2).global(module, name).mark().str('echo pwned').op(0x74, 0x52, 0x2e).bytes();

  it.each([
    ['os', 'system'],
    ['builtins', 'eval'],
    ['posix', 'system'],
    ['subprocess', 'Popen'],
    ['torch.storage', '_load_from_bytes'],
    ['torch', 'LongStorage'],
  ])('refuses the global %s.%s and names the file', (module, name) => {
    expect(() => unpickle(evil(module, name), 'evil/pytorch_model.bin')).toThrow(
      new RegExp(`evil/pytorch_model\\.bin: pickle: refusing global ${module.replace('.', '\\.')}\\.${name}`),
    );
  });

  it('refuses STACK_GLOBAL smuggling of a global, and code-building opcodes', () => {
    const sg = new PickleBuilder().proto(4).str('builtins').str('exec').op(0x93, 0x2e).bytes();
    expect(() => unpickle(sg, F)).toThrow(/data\.pkl: pickle: refusing global builtins\.exec/);
    // INST, OBJ, NEWOBJ, EXT1: other ways of building objects; none is accepted.
    for (const op of [0x69, 0x6f, 0x81, 0x82]) {
      expect(() => unpickle(new PickleBuilder().proto(2).op(op, 0, 0, 0).bytes(), F)).toThrow(
        new RegExp(`data\\.pkl: pickle: unsupported opcode 0x${op.toString(16)}`),
      );
    }
  });

  it('refuses REDUCE on a non-callable, truncated data, and hooks on tensors', () => {
    const r = new PickleBuilder().proto(2).str('x').op(0x29, 0x52, 0x2e).bytes();
    expect(() => unpickle(r, F)).toThrow(/REDUCE on something that is not an allowed callable/);
    const full = statePickle({ w: { dtype: 'F32', shape: [2], storage: new Uint8Array(8), key: '0' } });
    expect(() => unpickle(full.subarray(0, full.length - 20), F)).toThrow(/data\.pkl: pickle: (truncated|stack|no MARK)/);
    expect(() => unpickle(full.subarray(0, full.length - 1), F)).toThrow(/data\.pkl: pickle: truncated data/);
  });
});
