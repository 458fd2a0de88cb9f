/**
 * The method comparison of docs/methods.md: every prompt method and baseline on both mini models, on SST-2
 * (32 and 2,000 training sentences), LAMA (the six demo relations and all 28) and FewGLUE RTE / CB / BoolQ.
 *
 *   npm run methods -- run   [--out DIR] [--only NAME,...]   # runs the missing blocks (hours on 2 cores)
 *   npm run methods -- table [--out DIR]                     # the markdown table from what has been run
 *
 * Each block is one `ptune fewglue` or `ptune lama` command writing DIR/<block>/report.json; a block whose
 * report exists is not run again.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { PTUNE_PROCESS_ENV } from '../src/cli/process-env.js';

const M = '../shared/models';
const MODELS = ['bert-mini-lama', 'gpt2-mini-lama'] as const;
const DEMO = 'P1412,P103,P176,P449,P178,P20';
const SEEDS = [1, 2, 3];
const LAMA28_SEEDS = [14, 15];
const LAMA28_MODES = ['ptune', 'ptune-lm', 'prefix', 'prompt-tuning', 'finetune'];

function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1]! : fallback;
}

interface Block {
  name: string;
  args: string[];
}

function blocks(out: string): Block[] {
  const b: Block[] = [];
  for (const model of MODELS) {
    const short = model.split('-')[0]!;
    const fg = (name: string, extra: string[]) => b.push({ name: `${name}-${short}`, args: ['fewglue', '--model', `${M}/${model}`, ...extra, '--out', path.join(out, `${name}-${short}`), '--quiet'] });
    fg('sst32', ['--task', 'sst2', '--mode', 'all', '--seeds', '3']);
    fg('sst2k', ['--task', 'sst2', '--sst2-train', '2000', '--mode', 'all', '--seeds', '3', '--epochs', '4', '--patience', '2']);
    fg('glue', ['--task', 'rte,cb,boolq', '--mode', 'all', '--seeds', '3', '--epochs', '10', '--eval-cap', '300']);
    for (const seed of SEEDS) {
      b.push({
        name: `lama6-${short}-s${seed}`,
        args: ['lama', '--model', `${M}/${model}`, '--data', '../shared/data/lama', '--relations', DEMO,
          '--mode', 'majority', 'manual', 'ptune', 'ptune-lm', 'prefix', 'prompt-tuning', 'finetune',
          '--seed', String(seed), '--jobs', '1', '--out', path.join(out, `lama6-${short}-s${seed}`), '--quiet'],
      });
    }
    // all 28 relations, at most 200 training facts each: seed 13 (the default; manual, v1 and manual + fine-tuning
    // come from docs/lama.md's run), then 14 and 15 with every trained method
    const lama28 = (name: string, modes: string[], extra: string[]) => b.push({
      name, args: ['lama', '--model', `${M}/${model}`, '--data', '../shared/data/lama', '--relations', 'all', '--mode', ...modes,
        '--max-train', '200', ...extra, '--out', path.join(out, name), '--quiet'],
    });
    lama28(`lama28-${short}`, ['prefix', 'prompt-tuning'], ['--jobs', '1']);
    lama28(`lama28lm-${short}`, ['ptune-lm'], ['--jobs', '2']);
    for (const seed of LAMA28_SEEDS) lama28(`lama28-${short}-s${seed}`, LAMA28_MODES, ['--seed', String(seed), '--jobs', '2']);
  }
  return b;
}

function run(out: string, only: string[] | null): void {
  for (const blk of blocks(out)) {
    if (only && !only.some((o) => blk.name.startsWith(o))) continue;
    const report = path.join(out, blk.name, 'report.json');
    if (fs.existsSync(report)) continue;
    const t0 = Date.now();
    const r = spawnSync(process.execPath, ['bin/ptune.js', ...blk.args], { stdio: 'inherit', env: { ...process.env, ...PTUNE_PROCESS_ENV } });
    console.log(JSON.stringify({ block: blk.name, status: r.status, seconds: Math.round((Date.now() - t0) / 1000) }));
  }
}

type Cell = { mean: number; std: number; n: number };

/** mean ± sample std of per-seed values */
function stats(values: number[]): Cell {
  const n = values.length;
  const mean = values.reduce((a, b) => a + b, 0) / n;
  const std = n > 1 ? Math.sqrt(values.reduce((a, v) => a + (v - mean) ** 2, 0) / (n - 1)) : 0;
  return { mean, std, n };
}

const fmt = (c: Cell | undefined) => (c ? `${(c.mean * 100).toFixed(1)}${c.n > 1 ? ` ± ${(c.std * 100).toFixed(1)}` : ''}${c.n < 3 ? ` (n=${c.n})` : ''}` : '–');

interface FewGlueRun {
  task: string;
  mode: string;
  seed: number;
  scores: Record<string, number>;
  baseline: Record<string, number> | null;
}

/** the runs of every `DIR/<block>*\/report.json`, then (`earlier`) runs of modes none of those has */
function fewglueRuns(out: string, block: string, earlier: FewGlueRun[] = []): FewGlueRun[] {
  const runs: FewGlueRun[] = [];
  const dirs = fs.existsSync(out) ? fs.readdirSync(out).filter((d) => d === block || d.startsWith(`${block}-`)).sort() : [];
  for (const d of dirs) {
    const f = path.join(out, d, 'report.json');
    if (fs.existsSync(f)) runs.push(...(JSON.parse(fs.readFileSync(f, 'utf8')) as { runs: FewGlueRun[] }).runs);
  }
  // a (task, mode, seed) measured in two blocks counts once: the first block's
  const once = new Map<string, FewGlueRun>();
  for (const r of runs) if (!once.has(`${r.task}/${r.mode}/${r.seed}`)) once.set(`${r.task}/${r.mode}/${r.seed}`, r);
  const have = new Set([...once.values()].map((r) => `${r.task}/${r.mode}`));
  return [...once.values(), ...earlier.filter((r) => !have.has(`${r.task}/${r.mode}`))];
}

/**
 * FewGLUE runs of docs/fewglue/report.json (measured before the deep-prompt methods; mode "pet" is today's
 * manual-lm; its finetune used another classifier and is left out)
 */
function publishedRuns(dir: string): FewGlueRun[] {
  const file = 'docs/fewglue/report.json';
  if (!fs.existsSync(file)) return [];
  const r = JSON.parse(fs.readFileSync(file, 'utf8')) as { experiments: { dir: string; runs: FewGlueRun[] }[] };
  return r.experiments.filter((e) => e.dir.includes(`/${dir}`)).flatMap((e) => e.runs)
    .filter((x) => x.mode !== 'finetune').map((x) => (x.mode === 'pet' ? { ...x, mode: 'manual-lm' } : x));
}

function fewglueCells(runs: FewGlueRun[]): Map<string, Cell> {
  const cells = new Map<string, Cell>();
  const by = new Map<string, number[]>();
  const add = (k: string, v: number) => by.set(k, [...(by.get(k) ?? []), v]);
  for (const run of runs) {
    add(`${run.task}/${run.mode}`, run.scores.acc ?? Object.values(run.scores)[0]!);
    if (run.baseline) add(`${run.task}/majority`, run.baseline.acc ?? Object.values(run.baseline)[0]!);
  }
  for (const [k, v] of by) cells.set(k, k.endsWith('/majority') || k.endsWith('/manual') ? stats([v[0]!]) : stats(v));
  return cells;
}

interface LamaReport {
  summary: Record<string, { macro_p1: number | null; majority_macro_p1?: number | null }>;
}

function lamaCells(files: string[]): Map<string, Cell> {
  const by = new Map<string, number[]>();
  for (const f of files) {
    if (!fs.existsSync(f)) continue;
    const r = JSON.parse(fs.readFileSync(f, 'utf8')) as LamaReport;
    for (const [mode, s] of Object.entries(r.summary)) {
      if (s.macro_p1 !== null) by.set(mode, [...(by.get(mode) ?? []), s.macro_p1]);
      // every mode's summary carries the majority baseline of its split
      if (s.majority_macro_p1 != null && mode !== 'majority') by.set('majority', [...(by.get('majority') ?? []), s.majority_macro_p1]);
    }
  }
  const cells = new Map<string, Cell>();
  for (const [k, v] of by) cells.set(k, ['majority', 'manual'].includes(k) ? stats([v[0]!]) : stats(v));
  return cells;
}

/** Rows: method → the FewGLUE mode and the LAMA mode that run it. */
const ROWS: [string, string, string | null][] = [
  ['majority class', 'majority', 'majority'],
  ['manual prompt, zero-shot', 'manual', 'manual'],
  ['P-tuning v1, frozen LM', 'ptune', 'ptune'],
  ['P-tuning v1 + LM', 'ptune-lm', 'ptune-lm'],
  ['deep prompts (prefix), frozen, verbalizer', 'prefix', 'prefix'],
  ['deep prompts (prefix), frozen, linear head', 'prefix-linear', null],
  ['prompt tuning, frozen', 'prompt-tuning', 'prompt-tuning'],
  // LAMA's finetune is the manual template with every LM weight trained, answered at [MASK] / the next token
  ['manual prompt + LM fine-tuning', 'manual-lm', 'finetune'],
  ['fine-tuning, linear head', 'finetune', null],
  ['bag of words (logistic regression)', 'bow', null],
];

function table(out: string): string {
  const lines: string[] = [];
  for (const model of MODELS) {
    const short = model.split('-')[0]!;
    const s32 = fewglueCells(fewglueRuns(out, `sst32-${short}`));
    const s2k = fewglueCells(fewglueRuns(out, `sst2k-${short}`));
    const glue = fewglueCells(fewglueRuns(out, `glue-${short}`, publishedRuns(`${short}-glue`)));
    const lama = lamaCells(SEEDS.map((s) => path.join(out, `lama6-${short}-s${s}`, 'report.json')));
    const lama28 = lamaCells([`docs/lama/${model}`, path.join(out, `lama28-${short}`), path.join(out, `lama28lm-${short}`), ...LAMA28_SEEDS.map((s) => path.join(out, `lama28-${short}-s${s}`))].map((d) => path.join(d, 'report.json')));
    lines.push(`#### ${model}`, '', '| method | SST-2, 32 | SST-2, 2,000 | LAMA, 6 relations (P@1) | LAMA, 28 relations (P@1) | RTE | CB | BoolQ |', '|---|---:|---:|---:|---:|---:|---:|---:|');
    for (const [label, mode, lamaMode] of ROWS) {
      const cell = (m: Map<string, Cell>, task: string) => fmt(m.get(`${task}/${mode}`));
      const lamaCell = (m: Map<string, Cell>) => (lamaMode ? fmt(m.get(lamaMode)) : 'n/a');
      lines.push(`| ${label} | ${cell(s32, 'sst2')} | ${cell(s2k, 'sst2')} | ${lamaCell(lama)} | ${lamaCell(lama28)} | ${cell(glue, 'rte')} | ${cell(glue, 'cb')} | ${cell(glue, 'boolq')} |`);
    }
    lines.push('');
  }
  return lines.join('\n');
}

const out = path.resolve(arg('out', 'out/methods'));
const cmd = process.argv[2];
if (cmd === 'run') run(out, process.argv.includes('--only') ? arg('only', '').split(',') : null);
else if (cmd === 'table') console.log(table(out));
else {
  console.error('usage: methods run|table [--out DIR] [--only NAME,...]');
  process.exit(2);
}
