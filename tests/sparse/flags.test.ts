/**
 * --kv-policy and --mlp-select / --mlp-groups on the CPU (eval ppl --bundle, bench --device cpu): defaults all and
 * exact, --mlp-groups alone implies grouped, grouped needs G, exact refuses G; every JSON states the three.
 */
import { Command } from 'commander';
import { join } from 'node:path';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { describe, expect, it, vi } from 'vitest';
import { formatBench, register as registerBench } from '../../cli/commands/bench.js';
import { register as registerEval } from '../../cli/commands/eval.js';
import { groupedRandomSubset, mulberry32, runCpuBench } from '../../runtime/sparse/bench-cpu.js';
import { parseKvPolicy, resolveMlpSelection, runBundlePpl, tokenizeDocs } from '../../runtime/sparse/eval.js';
import { C4_VALID_JSON, HAVE_FIXTURES, OPT_MINI, REPO_ROOT } from '../helpers/fixtures.js';

const BUNDLE = join(REPO_ROOT, 'examples', 'opt-mini-bundle');

describe('flag resolution', () => {
  it('--kv-policy: all by default, all or selected, anything else refused naming the flag', () => {
    expect(parseKvPolicy(undefined)).toBe('all');
    expect(parseKvPolicy('selected')).toBe('selected');
    expect(() => parseKvPolicy('lazy')).toThrow(/--kv-policy.*expected all or selected, got 'lazy'|expected all or selected, got 'lazy'/);
  });

  it('--mlp-select / --mlp-groups: exact by default; groups alone imply grouped; grouped needs G; exact refuses G', () => {
    expect(resolveMlpSelection(undefined, undefined)).toEqual({ selection: 'exact' });
    expect(resolveMlpSelection('exact', undefined)).toEqual({ selection: 'exact' });
    expect(resolveMlpSelection(undefined, '8')).toEqual({ selection: 'grouped', groups: 8 });
    expect(resolveMlpSelection('grouped', '8')).toEqual({ selection: 'grouped', groups: 8 });
    expect(() => resolveMlpSelection('grouped', undefined)).toThrow(/grouped needs --mlp-groups G/);
    expect(() => resolveMlpSelection('exact', '8')).toThrow(/applies to --mlp-select grouped/);
    expect(() => resolveMlpSelection('fast', undefined)).toThrow(/expected exact or grouped, got 'fast'/);
    expect(() => resolveMlpSelection('grouped', '1e2')).toThrow(/--mlp-groups/);
  });

  it('groupedRandomSubset gives each group its quota (the grouped top-k\'s), distinct and ascending', () => {
    const s = groupedRandomSubset(1536, 77, 10, mulberry32(3));
    expect(s.length).toBe(77);
    expect(new Set(s).size).toBe(77);
    expect([...s].every((v, i) => i === 0 || v > s[i - 1])).toBe(true);
    const per = Math.ceil(1536 / 10);
    for (let g = 0; g < 10; g++) {
      const r0 = g * per, r1 = Math.min(1536, r0 + per);
      const quota = Math.floor((77 * r1) / 1536) - Math.floor((77 * r0) / 1536);
      expect([...s].filter((v) => v >= r0 && v < r1).length).toBe(quota);
    }
  });

  it('formatBench states the policy and the selection', () => {
    expect(formatBench({ device: 'cpu', kv_policy: 'selected', mlp_selection: 'grouped', mlp_groups: 8 })).toMatch(/KV policy selected, MLP selection grouped \(G = 8\)/);
  });
});

describe.skipIf(!HAVE_FIXTURES)('the JSON states kv_policy, mlp_selection and G', () => {
  it('eval ppl --bundle: defaults, and selected + grouped passed through', async () => {
    const base = { model: OPT_MINI, bundle: BUNDLE, data: [C4_VALID_JSON], selection: { docs: 1 }, maxLen: 24, modes: ['predicted' as const], quiet: true, threads: 1 };
    const def = await runBundlePpl(base);
    expect([def.kv_policy, def.mlp_selection, def.mlp_groups]).toEqual(['all', 'exact', 1]);
    const r = await runBundlePpl({ ...base, headsFrac: 0.5, kvPolicy: 'selected', mlpGroups: 4 });
    expect([r.kv_policy, r.mlp_selection, r.mlp_groups]).toEqual(['selected', 'grouped', 4]);
    // The policy reaches the decode: at half the heads the two policies score differently.
    const a = await runBundlePpl({ ...base, headsFrac: 0.5, mlpGroups: 4 });
    expect((r.predicted as { ppl: number }).ppl).not.toBe((a.predicted as { ppl: number }).ppl);
  });

  it('bench --device cpu: defaults, and selected + grouped; the sparse floor drops the skipped heads\' K/V rows', async () => {
    const base = { model: OPT_MINI, density: { mlp: 0.1, heads: 0.5 }, prompt: 8, gen: 2, rounds: 1, quiet: true };
    const def = (await runCpuBench(base)) as Record<string, any>;
    expect([def.kv_policy, def.mlp_selection, def.mlp_groups]).toEqual(['all', 'exact', 1]);
    expect(def.kv_policy_cost.paid_by_sparse_step).toBe(true);
    const r = (await runCpuBench({ ...base, kvPolicy: 'selected', mlpGroups: 8 })) as Record<string, any>;
    expect([r.kv_policy, r.mlp_selection, r.mlp_groups]).toEqual(['selected', 'grouped', 8]);
    expect(r.kv_policy_cost.paid_by_sparse_step).toBe(false);
    // 6 layers x half of the K and V rows (d/2 x d each), fp32.
    expect(def.floor.sparse_bytes_per_token - r.floor.sparse_bytes_per_token).toBe(6 * 2 * (384 / 2) * 384 * 4);
  });

  it('the commands refuse --kv-policy without --bundle, grouped without G, and CPU flags on the CUDA bench', async () => {
    const parse = async (register: (p: Command) => void, args: string[]) => {
      const program = new Command().exitOverride();
      register(program);
      await program.parseAsync(['node', 'dejavu', ...args]);
    };
    await expect(parse(registerEval, ['eval', 'ppl', '--model', OPT_MINI, '--data', C4_VALID_JSON, '--docs', '1', '--kv-policy', 'selected'])).rejects.toThrow(
      /^--kv-policy: only applies with --bundle/,
    );
    await expect(parse(registerBench, ['bench', '--device', 'cpu', '--model', OPT_MINI, '--density', 'mlp=0.1', '--mlp-select', 'grouped'])).rejects.toThrow(
      /^--mlp-select: grouped needs --mlp-groups G/,
    );
    await expect(parse(registerBench, ['bench', '--device', 'cuda', '--shape', 'opt-13b', '--mlp-groups', '4'])).rejects.toThrow(/^--mlp-groups: the CUDA engine picks G/);
  });

  it('eval ppl --dump-ids writes the scored token ids; a path under a file fails in one line, leaving it alone', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'dejavu-dump-ids-'));
    try {
      const run = async (out: string) => {
        const program = new Command().exitOverride();
        registerEval(program);
        const args = ['eval', 'ppl', '--model', OPT_MINI, '--data', C4_VALID_JSON, '--docs', '2', '--max-len', '16', '--workers', '1'];
        await program.parseAsync(['node', 'dejavu', ...args, '--bundle', BUNDLE, '--modes', 'dense', '--json', '--dump-ids', out]);
      };
      const write = vi.spyOn(process.stdout, 'write').mockImplementation(() => true);
      try {
        await run(join(dir, 'ids.json'));
        const dumped = JSON.parse(readFileSync(join(dir, 'ids.json'), 'utf8')) as { max_len: number; docs: number[][] };
        expect(dumped.max_len).toBe(16);
        expect(dumped.docs).toEqual((await tokenizeDocs(OPT_MINI, [C4_VALID_JSON], { docs: 2 }, 16)).map((d) => Array.from(d)));
        writeFileSync(join(dir, 'file'), 'x');
        await expect(run(join(dir, 'file', 'ids.json'))).rejects.toThrow(/file\/ids\.json: .*ENOTDIR/);
        expect(readFileSync(join(dir, 'file'), 'utf8')).toBe('x');
      } finally {
        write.mockRestore();
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
