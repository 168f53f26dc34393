/**
 * check-mini's bad-input section (run on the GPU): model folders the GPU path must refuse cleanly, built in a temp
 * folder from opt-mini:
 *   too-big     OPT-175B's shape in config.json, its model.safetensors only a header (no data): the free-memory
 *               check must refuse it before any weight is read;
 *   gelu        activation_function "gelu", a config the engine cannot compute;
 *   truncated   opt-mini's model.safetensors cut to half.
 * Each goes through the CLI as a user runs it (`eval ppl --device cuda`): exit 1, one `error:` line, no stack trace.
 * Then, in this process through the library API, each through loadModelToGpu: it must throw and leave the GPU's free
 * memory where it was (dj_mem_info before and after; the baseline taken after a first load warmed the context).
 */
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, symlinkSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseOptConfig } from '../../checkpoints/opt-config.js';
import { expectedTensors } from '../../checkpoints/opt-names.js';
import type { CudaLib } from './lib.js';
import { loadModelToGpu } from './load.js';

const TOKENIZER_FILES = ['tokenizer.json', 'vocab.json', 'merges.txt', 'tokenizer_config.json', 'special_tokens_map.json'];
/** Free memory may move by the driver's page granularity; a leaked engine holds far more (opt-mini: ~40 MB). */
const LEAK_TOLERANCE = 2 << 20;

export interface BadCase {
  name: string;
  dir: string;
  /** What the one error line must say. */
  expect: RegExp;
}

/** A safetensors file holding only the header of `config`'s tensors (fp16): its size says data, there is none. */
function headerOnly(path: string, config: ReturnType<typeof parseOptConfig>): void {
  const header: Record<string, unknown> = {};
  let off = 0;
  for (const t of expectedTensors(config)) {
    const n = 2 * t.shape.reduce((a, b) => a * b, 1);
    header[t.name === 'lm_head.weight' ? t.name : `model.${t.name}`] = { dtype: 'F16', shape: t.shape, data_offsets: [off, off + n] };
    off += n;
  }
  const json = Buffer.from(JSON.stringify(header));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  writeFileSync(path, Buffer.concat([len, json]));
}

/** The three bad folders (tokenizer files copied from `tokenizer`, so the CLI gets as far as the model). */
export function writeBadModels(mini: string, root: string, tokenizer = mini): BadCase[] {
  const cfg = JSON.parse(readFileSync(join(mini, 'config.json'), 'utf8')) as Record<string, unknown>;
  const folder = (name: string, config: Record<string, unknown>) => {
    const dir = join(root, name);
    mkdirSync(dir, { recursive: true });
    for (const f of TOKENIZER_FILES) if (existsSync(join(tokenizer, f))) copyFileSync(join(tokenizer, f), join(dir, f));
    writeFileSync(join(dir, 'config.json'), JSON.stringify(config, null, 2));
    return dir;
  };
  const huge = { ...cfg, hidden_size: 12288, word_embed_proj_dim: 12288, num_attention_heads: 96, num_hidden_layers: 96, ffn_dim: 49152, max_position_embeddings: 2048 };
  const tooBig = folder('too-big', huge);
  headerOnly(join(tooBig, 'model.safetensors'), parseOptConfig(join(tooBig, 'config.json')));
  const gelu = folder('gelu', { ...cfg, activation_function: 'gelu' });
  symlinkSync(resolve(mini, 'model.safetensors'), join(gelu, 'model.safetensors'));
  const cut = folder('truncated', cfg);
  copyFileSync(join(mini, 'model.safetensors'), join(cut, 'model.safetensors'));
  truncateSync(join(cut, 'model.safetensors'), Math.floor(statSync(join(mini, 'model.safetensors')).size / 2));
  return [
    { name: 'too-big', dir: tooBig, expect: /needs [\d.]+ GB of GPU memory .* free of [\d.]+ GB/ },
    { name: 'gelu', dir: gelu, expect: /activation_function "gelu"/ },
    { name: 'truncated', dir: cut, expect: /model\.safetensors|truncated|end of file/ },
  ];
}

export interface CliOutcome {
  exit: number | null;
  error_lines: string[];
  /** Other stderr lines (informational logs such as the device line). */
  other_lines: string[];
  stack_trace: boolean;
  pass: boolean;
}

/** `eval ppl --device cuda` on a bad folder, as a user runs it. */
export function runCli(cli: string, c: BadCase, data: string): CliOutcome {
  const r = spawnSync(process.execPath, [cli, 'eval', 'ppl', '--device', 'cuda', '--model', c.dir, '--data', data, '--docs', '2', '--max-len', '32'], {
    encoding: 'utf8',
    timeout: 120_000,
  });
  const lines = `${r.stderr ?? ''}`.split('\n').filter((l) => l.trim());
  const errors = lines.filter((l) => l.startsWith('error:'));
  const stack = /^\s+at /m.test(`${r.stderr}${r.stdout}`);
  return {
    exit: r.status,
    error_lines: errors,
    other_lines: lines.filter((l) => !l.startsWith('error:')),
    stack_trace: stack,
    pass: r.status === 1 && errors.length === 1 && !stack && c.expect.test(errors[0]),
  };
}

export interface ApiOutcome {
  error: string | null;
  free_before: number;
  free_after: number;
  /** free_before - free_after: what the failed load left allocated. */
  leaked_bytes: number;
  pass: boolean;
}

/** loadModelToGpu on a bad folder: it must throw and free what it took. */
export async function runApi(lib: CudaLib, c: BadCase): Promise<ApiOutcome> {
  const before = lib.memInfo().freeBytes;
  let error: string | null = null;
  try {
    const { engine } = await loadModelToGpu(lib, c.dir, { maxT: 32, prefillTokens: 64 });
    engine.destroy();
  } catch (e) {
    error = (e as Error).message;
  }
  const after = lib.memInfo().freeBytes;
  return { error, free_before: before, free_after: after, leaked_bytes: before - after, pass: error !== null && c.expect.test(error) && before - after <= LEAK_TOLERANCE };
}

/** The CLI next to this module (dist/cli/main.js, or .devnm/dist/cli/main.js on the GPU machine). */
export const defaultCli = () => join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'cli', 'main.js');

/** Every case through the CLI (when `cli` is given) and the API; one JSON line per case to `say`. */
export async function checkBadInput(
  lib: CudaLib,
  mini: string,
  say: (s: string) => void,
  o: { tokenizer?: string; cli?: string | null } = {},
): Promise<{ case: string; cli: CliOutcome | null; api: ApiOutcome; pass: boolean }[]> {
  const root = mkdtempSync(join(tmpdir(), 'dejavu-bad-gpu-'));
  try {
    const data = join(root, 'docs.jsonl');
    writeFileSync(data, ['The quick brown fox jumps over the lazy dog.', 'A second document, so that two are read.'].map((text) => JSON.stringify({ text })).join('\n') + '\n');
    // The baseline after a first load and free: the CUDA context and the library's own state exist from here on.
    const { engine } = await loadModelToGpu(lib, mini, { maxT: 32, prefillTokens: 64 });
    engine.destroy();
    const out = [];
    const cli = o.cli === undefined ? defaultCli() : o.cli;
    for (const c of writeBadModels(mini, root, o.tokenizer)) {
      const cliOut = cli ? runCli(cli, c, data) : null;
      const api = await runApi(lib, c);
      const r = { case: c.name, cli: cliOut, api, pass: (cliOut?.pass ?? true) && api.pass };
      say(JSON.stringify(r));
      out.push(r);
    }
    return out;
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
}
