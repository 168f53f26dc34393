#!/usr/bin/env python3
"""Write a random-weight OPT checkpoint of a real model's shape as a Hugging Face model folder.

For GPU throughput work on shapes we cannot download: config.json, model.safetensors (or sharded
model-0000k-of-0000n.safetensors + model.safetensors.index.json) and the tokenizer files of --tokenizer-from.
numpy only (the GPU machine has no Node). Streaming: each shard's layout is planned up front, then every tensor is
generated and written in fixed-size chunks, so memory is bounded by one chunk, not one tensor or the model.

Determinism: every tensor has its own generator seeded from (seed, tensor name), drawn in fixed chunks of float32, so
the same seed gives the same values whatever the dtype, shard size or resume point; fp16 rounds to nearest, bf16 is the
top 16 bits of the float32 (truncation).

Resume: shards are written to a temp file and renamed; a shard already in place whose header matches the planned one
(which records shape, seed and dtype in __metadata__) is kept.
"""
import argparse
import hashlib
import json
import multiprocessing
import os
import shutil
import sys
import time

try:
    import numpy as np
except ImportError:
    sys.stderr.write('random-opt-checkpoint.py: needs numpy (pip install numpy)\n')
    sys.exit(1)

# (hidden_size, num_hidden_layers, num_attention_heads) of the released facebook/opt-* models; ffn_dim = 4 * d.
SHAPES = {
    'tiny': (64, 2, 4),
    'opt-125m': (768, 12, 12),
    'opt-350m': (1024, 24, 16),
    'opt-1.3b': (2048, 24, 32),
    'opt-2.7b': (2560, 32, 32),
    'opt-6.7b': (4096, 32, 32),
    'opt-13b': (5120, 40, 40),
    'opt-30b': (7168, 48, 56),
    'opt-66b': (9216, 64, 72),
}
VOCAB = 50272
MAX_POS = 2048
ST_DTYPE = {'float16': 'F16', 'bfloat16': 'BF16', 'float32': 'F32'}
ELEM_BYTES = {'float16': 2, 'bfloat16': 2, 'float32': 4}
CHUNK = 1 << 22  # elements drawn per generator call; fixed, so values do not depend on memory settings
TOKENIZER_FILES = ['tokenizer.json', 'tokenizer_config.json', 'vocab.json', 'merges.txt', 'special_tokens_map.json',
                   'generation_config.json']


class Fail(Exception):
    """Bad input or an I/O failure: printed as one line naming the file, exit 1."""

    def __init__(self, path, msg):
        super().__init__(f'{path}: {msg}')
        self.where = (path, msg)

    def __reduce__(self):  # crosses the process boundary from a --jobs worker
        return (Fail, self.where)


def build_config(a):
    d, layers, heads = SHAPES[a.shape]
    real_350m = a.shape == 'opt-350m'
    post_ln = a.post_ln or real_350m
    proj = a.project_in_out or real_350m
    wdim = 512 if real_350m else (d // 2 if proj else d)
    return {
        '_name_or_path': f'random-{a.shape}',
        '_remove_final_layer_norm': False,
        'activation_dropout': 0.0,
        'activation_function': 'relu',
        'architectures': ['OPTForCausalLM'],
        'attention_dropout': 0.0,
        'bos_token_id': 2,
        'do_layer_norm_before': not post_ln,
        'dropout': 0.1,
        'enable_bias': True,
        'eos_token_id': 2,
        'ffn_dim': 4 * d,
        'hidden_size': d,
        'init_std': 0.02,
        'layer_norm_elementwise_affine': True,
        'layerdrop': 0.0,
        'max_position_embeddings': MAX_POS,
        'model_type': 'opt',
        'num_attention_heads': heads,
        'num_hidden_layers': layers,
        'pad_token_id': 1,
        'prefix': '</s>',
        'tie_word_embeddings': not a.untied_head,
        'torch_dtype': a.dtype,
        'use_cache': True,
        'vocab_size': VOCAB,
        'word_embed_proj_dim': wdim,
        'dejavu_random_checkpoint': {'shape': a.shape, 'seed': a.seed},
    }


def plan_tensors(c):
    """(stored name, shape, kind) in HF's OPTForCausalLM naming; kind picks the distribution (see draw())."""
    d, f, w = c['hidden_size'], c['ffn_dim'], c['word_embed_proj_dim']
    out = [('model.decoder.embed_tokens.weight', [VOCAB, w], 'embed'),
           ('model.decoder.embed_positions.weight', [MAX_POS + 2, d], 'embed')]
    if c['do_layer_norm_before']:  # transformers builds final_layer_norm only for pre-LN models
        out += [('model.decoder.final_layer_norm.weight', [d], 'ln_w'),
                ('model.decoder.final_layer_norm.bias', [d], 'bias')]
    if w != d:
        out += [('model.decoder.project_out.weight', [w, d], 'linear'),
                ('model.decoder.project_in.weight', [d, w], 'linear')]
    for l in range(c['num_hidden_layers']):
        p = f'model.decoder.layers.{l}'
        for s in ('k_proj', 'v_proj', 'q_proj', 'out_proj'):
            out += [(f'{p}.self_attn.{s}.weight', [d, d], 'linear'), (f'{p}.self_attn.{s}.bias', [d], 'bias')]
        out += [(f'{p}.self_attn_layer_norm.weight', [d], 'ln_w'), (f'{p}.self_attn_layer_norm.bias', [d], 'bias'),
                (f'{p}.fc1.weight', [f, d], 'linear'), (f'{p}.fc1.bias', [f], 'bias'),
                (f'{p}.fc2.weight', [d, f], 'linear'), (f'{p}.fc2.bias', [d], 'bias'),
                (f'{p}.final_layer_norm.weight', [d], 'ln_w'), (f'{p}.final_layer_norm.bias', [d], 'bias')]
    if not c['tie_word_embeddings']:
        out.append(('lm_head.weight', [VOCAB, w], 'embed'))
    return out


def numel(shape):
    n = 1
    for s in shape:
        n *= s
    return n


def draw(seed, name, shape, kind):
    """Yield the tensor's float32 values in row-major chunks of CHUNK elements.

    Magnitudes of a trained OPT, so activations stay finite at any depth: Linear weights N(0, 1/sqrt(fan_in)) (unit
    gain), embeddings N(0, 1/sqrt(width)) (unit-norm rows, so tied-head logits are ~N(0, 1)), LayerNorm gains 1 + small
    noise, biases small."""
    h = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], 'little')
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, h])))
    std = {'linear': 1.0 / np.sqrt(shape[-1]), 'embed': 1.0 / np.sqrt(shape[-1]), 'ln_w': 0.05, 'bias': 0.01}[kind]
    mean = 1.0 if kind == 'ln_w' else 0.0
    left = numel(shape)
    while left > 0:
        n = min(CHUNK, left)
        x = rng.standard_normal(n, dtype=np.float32)
        x *= np.float32(std)
        if mean:
            x += np.float32(mean)
        yield x
        left -= n


def encode(x, dtype):
    if dtype == 'float32':
        return x.astype('<f4', copy=False)
    if dtype == 'float16':
        return x.astype('<f2')
    return (x.view(np.uint32) >> 16).astype('<u2')  # bf16: truncated float32 bits


def plan_shards(tensors, dtype, shard_bytes):
    """Greedy split in order, as transformers' save_pretrained: a new shard when the next tensor would overflow; a
    tensor larger than the limit gets a shard of its own."""
    shards, cur, size = [], [], 0
    for t in tensors:
        b = numel(t[1]) * ELEM_BYTES[dtype]
        if cur and size + b > shard_bytes:
            shards.append(cur)
            cur, size = [], 0
        cur.append(t)
        size += b
    if cur:
        shards.append(cur)
    return shards


def header_bytes(tensors, dtype, meta):
    h = {'__metadata__': meta}
    off = 0
    for name, shape, _ in tensors:
        b = numel(shape) * ELEM_BYTES[dtype]
        h[name] = {'dtype': ST_DTYPE[dtype], 'shape': shape, 'data_offsets': [off, off + b]}
        off += b
    raw = json.dumps(h, separators=(',', ':')).encode()
    raw += b' ' * (-len(raw) % 8)  # 8-byte aligned data, as the safetensors library writes it
    return len(raw).to_bytes(8, 'little') + raw, off


def shard_complete(path, head, data_len):
    try:
        if os.path.getsize(path) != len(head) + data_len:
            return False
        with open(path, 'rb') as fh:
            return fh.read(len(head)) == head
    except OSError:
        return False


def write_shard(path, tensors, a, meta, log):
    head, data_len = header_bytes(tensors, a.dtype, meta)
    if shard_complete(path, head, data_len):
        log(f'{os.path.basename(path)}: already complete, kept')
        return data_len
    def body(fh):
        fh.write(head)
        for name, shape, kind in tensors:
            for x in draw(a.seed, name, shape, kind):
                fh.write(encode(x, a.dtype).tobytes())

    write_atomic(path, 'wb', body)
    log(f'{os.path.basename(path)}: {len(tensors)} tensors, {data_len / 1e9:.3f} GB')
    return data_len


def write_shard_job(job):
    """One shard in a worker process: its byte count, or the Fail to raise in the parent."""
    try:
        return write_shard(*job, lambda m: sys.stderr.write(m + '\n'))
    except Fail as e:
        return e


def write_atomic(path, mode, body):
    """body(fh) writes the file under a temporary name; it replaces `path` only once complete and on disk."""
    tmp = path + '.tmp'
    try:
        with open(tmp, mode) as fh:
            body(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise Fail(path, f'cannot write ({e.strerror or e})')


def write_text_atomic(path, text):
    write_atomic(path, 'w', lambda fh: fh.write(text))


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--shape', required=True, choices=list(SHAPES))
    ap.add_argument('--out', required=True, help='model folder to write (created; complete shards in it are kept)')
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--shard-gb', type=float, default=5.0, help='max shard size in GB (1e9 bytes); default 5')
    ap.add_argument('--dtype', choices=list(ST_DTYPE), default='float16')
    ap.add_argument('--post-ln', action='store_true', help='do_layer_norm_before false (implied by opt-350m)')
    ap.add_argument('--project-in-out', action='store_true',
                    help='word_embed_proj_dim = d/2 with project_in/out (opt-350m: 512, implied)')
    ap.add_argument('--untied-head', action='store_true', help='tie_word_embeddings false, lm_head.weight stored')
    ap.add_argument('--tokenizer-from', default=None, help='folder whose tokenizer files are copied (default examples/opt-mini)')
    ap.add_argument('--jobs', type=int, default=os.cpu_count() or 1,
                    help='shards written in parallel (default: the CPU count); drawing the values is the slow part')
    ap.add_argument('--json', action='store_true', help='print one JSON summary object on stdout')
    a = ap.parse_args(argv)
    log = lambda m: sys.stderr.write(m + '\n')
    if a.seed < 0:
        raise Fail('--seed', f'must be >= 0, got {a.seed}')
    if a.jobs < 1:
        raise Fail('--jobs', f'must be >= 1, got {a.jobs}')
    if not a.shard_gb > 0:
        raise Fail('--shard-gb', f'must be > 0, got {a.shard_gb}')
    tok_dir = a.tokenizer_from or os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'examples', 'opt-mini')
    if not os.path.isdir(tok_dir):
        raise Fail(tok_dir, 'tokenizer folder not found')
    tok_files = [f for f in TOKENIZER_FILES if os.path.isfile(os.path.join(tok_dir, f))]
    if 'tokenizer.json' not in tok_files and not {'vocab.json', 'merges.txt'} <= set(tok_files):
        raise Fail(tok_dir, 'no tokenizer.json nor vocab.json + merges.txt in the tokenizer folder')
    if os.path.exists(a.out) and not os.path.isdir(a.out):
        raise Fail(a.out, 'exists and is not a folder')
    try:
        os.makedirs(a.out, exist_ok=True)
    except OSError as e:
        raise Fail(a.out, f'cannot create folder ({e.strerror or e})')

    t0 = time.time()
    config = build_config(a)
    tensors = plan_tensors(config)
    shards = plan_shards(tensors, a.dtype, int(a.shard_gb * 1e9))
    meta = {'format': 'pt', 'dejavu_random': json.dumps({'shape': a.shape, 'seed': a.seed, 'dtype': a.dtype,
                                                          'config': config}, sort_keys=True)}
    n = len(shards)
    names = ['model.safetensors'] if n == 1 else [f'model-{i + 1:05d}-of-{n:05d}.safetensors' for i in range(n)]
    # Another shard count left by an earlier run with other settings would confuse loaders: refuse to mix.
    for f in os.listdir(a.out):
        if (f.startswith('model') and f.endswith('.safetensors') and f not in names) or \
                (n == 1 and f == 'model.safetensors.index.json'):
            raise Fail(os.path.join(a.out, f), 'left by a run with other settings; use an empty --out')
    log(f'{a.shape} ({config["hidden_size"]}d x {config["num_hidden_layers"]} layers), {a.dtype}, seed {a.seed}: '
        f'{len(tensors)} tensors in {n} shard(s) -> {a.out}')
    # Every tensor's values depend only on (seed, name), so shards can be written in any order, in parallel.
    jobs = [(os.path.join(a.out, fname), sh, a, meta) for fname, sh in zip(names, shards)]
    if a.jobs > 1 and n > 1:
        with multiprocessing.Pool(min(a.jobs, n)) as pool:
            results = pool.map(write_shard_job, jobs)
    else:
        results = [write_shard_job(j) for j in jobs]
    for r in results:
        if isinstance(r, Fail):
            raise r
    total = sum(results)
    weight_map = {name: fname for fname, sh in zip(names, shards) for name, _, _ in sh}
    if n > 1:
        index = {'metadata': {'total_size': total}, 'weight_map': weight_map}
        write_text_atomic(os.path.join(a.out, 'model.safetensors.index.json'), json.dumps(index, indent=2) + '\n')
    for f in tok_files:
        src, dst = os.path.join(tok_dir, f), os.path.join(a.out, f)
        try:
            shutil.copyfile(src, dst + '.tmp')
            os.replace(dst + '.tmp', dst)
        except OSError as e:
            raise Fail(dst, f'cannot copy from {src} ({e.strerror or e})')
    # config.json last: a folder with a config is a finished one.
    write_text_atomic(os.path.join(a.out, 'config.json'), json.dumps(config, indent=2) + '\n')
    secs = time.time() - t0
    log(f'done: {total / 1e9:.3f} GB in {secs:.1f} s')
    if a.json:
        print(json.dumps({'out': a.out, 'shape': a.shape, 'dtype': a.dtype, 'seed': a.seed, 'shards': names,
                          'tensors': len(tensors), 'total_size': total, 'seconds': round(secs, 3)}))


if __name__ == '__main__':
    try:
        main(sys.argv[1:])
    except Fail as e:
        sys.stderr.write(f'{e}\n')
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
