/**
 * The LAMA experiment driver: (mode × relation) tasks run by a pool of child processes (tfjs wasm is
 * single-threaded, so N processes use N cores), one combined progress display, resumable (with --resume, a task whose
 * result.json exists is not redone), and the report written at the end.
 */
import { fork, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { initEngine } from '../../engine/index.js';
import { parseQuantize, quantizeName, type QuantizeOptions } from '../../models/quantize.js';
import { UserError } from '../../util/errors.js';
import { DEEP_DEFAULTS } from '../../train/defaults.js';
import { completeRelations, listRelations, type FactSet, type LamaSplit, type VocabStrategy } from './data.js';
import { collectResults, relationDone, writeLamaReport, type LamaReport } from './report.js';
import { writeFileAtomic } from '../../util/atomic.js';
import { parseFile, readJson, z } from '../../util/schema.js';
import { parseTemplate } from '../../prompt/template.js';
import { LamaTaskRunner, type FromWorker, type LamaTaskResult, type ToWorker } from './worker.js';

export const LAMA_MODES = ['majority', 'manual', 'ptune', 'manual+ptune', 'ptune-lm', 'prefix', 'prompt-tuning', 'finetune'] as const;
export type LamaMode = (typeof LAMA_MODES)[number];

export interface LamaTrainSettings {
  /** Adam learning rate: of the prompt encoder (ptune modes) or of the LM (finetune) */
  lr: number;
  weightDecay: number;
  schedule: 'constant' | 'linear' | 'exponential';
  /** exponential schedule: lr multiplier per epoch */
  gamma: number;
  epochs: number;
  /** stop after this many epochs without a better dev P@1; 0 = never */
  patience: number;
  batchSize: number;
}

/** Defaults found for the H=128 mini models (docs/lama.md): P-tuning of the encoder, fine-tuning of the LM. */
export const PTUNE_DEFAULTS: LamaTrainSettings = {
  lr: 3e-3,
  weightDecay: 0,
  schedule: 'constant',
  gamma: 0.98,
  epochs: 10,
  patience: 3,
  batchSize: 8,
};
export const FINETUNE_DEFAULTS: LamaTrainSettings = {
  lr: 1e-4,
  weightDecay: 0.01,
  schedule: 'constant',
  gamma: 0.98,
  epochs: 4,
  patience: 2,
  batchSize: 8,
};
/** THUDM P-tuning's LAMA recipe: Adam 1e-5, weight decay 5e-4, ×0.98 per epoch, batch 8, 100 epochs, patience 20. */
export const THUDM_TRAIN: LamaTrainSettings = {
  lr: 1e-5,
  weightDecay: 5e-4,
  schedule: 'exponential',
  gamma: 0.98,
  epochs: 100,
  patience: 20,
  batchSize: 8,
};

/** Deep prompts and prompt tuning on LAMA: the ptune loop with the deep-prompt learning rate. */
export const DEEP_LAMA_DEFAULTS: LamaTrainSettings = { ...PTUNE_DEFAULTS, lr: DEEP_DEFAULTS.lr };

/** Everything a task needs; shipped to each worker. */
export interface LamaSettings {
  model: string;
  data: string;
  out: string;
  split: LamaSplit;
  vocab: VocabStrategy;
  seed: number;
  /** ptune template (tuple shorthand or template text); default 3,3,3 (masked LM) / 3,3,0 (causal LM) */
  template?: string;
  /** manual+ptune: pseudo tokens in each gap around the manual template's slots */
  pseudo: number;
  ptune: LamaTrainSettings;
  /** prefix and prompt-tuning */
  deep: LamaTrainSettings;
  /** virtual tokens of prefix and prompt-tuning */
  virtualTokens: number;
  /** the LM's settings in finetune and ptune-lm (whose prompt keeps ptune's lr) */
  finetune: LamaTrainSettings;
  /** cap on the facts per set after filtering (a seeded sample, fixed per relation and set); the majority baseline counts all train facts */
  maxFacts: Partial<Record<FactSet, number>>;
  /** answers per fact in the predictions files */
  topK: number;
  /** keep finetune's best/ LM checkpoint (a full LM per relation) */
  keepCheckpoints: boolean;
  /** the frozen LM's linear weights quantized (the frozen-LM modes; not ptune-lm or finetune, which tune it) */
  quantize?: QuantizeOptions;
}

export interface LamaRunOptions {
  model: string;
  data: string;
  out: string;
  /** 'all' (default): every relation of the split; 'complete': those with train, dev and test files; or ids */
  relations?: 'all' | 'complete' | readonly string[];
  split?: LamaSplit;
  vocab?: VocabStrategy;
  /** default ['manual'] */
  modes?: readonly LamaMode[];
  /** worker processes; default: number of cores. 1 runs in this process. */
  jobs?: number;
  seed?: number;
  template?: string;
  pseudo?: number;
  ptune?: Partial<LamaTrainSettings>;
  deep?: Partial<LamaTrainSettings>;
  virtualTokens?: number;
  finetune?: Partial<LamaTrainSettings>;
  maxFacts?: Partial<Record<FactSet, number>>;
  topK?: number;
  keepCheckpoints?: boolean;
  /** quantize the frozen LM's linear weights (not with the ptune-lm and finetune modes) */
  quantize?: QuantizeOptions;
  /** no progress display */
  quiet?: boolean;
  /** the command line, recorded in the report */
  command?: string;
  title?: string;
  /** called once the settings, modes and relations have been checked, before the first file is written */
  beforeWrite?: () => void;
}

export interface LamaRunResult {
  report: LamaReport;
  files: { json: string; md: string; svg: string };
  /** tasks computed now / found done */
  computed: number;
  reused: number;
  seconds: number;
}

/** Most expensive first, so the pool does not end waiting on one long task. */
const MODE_COST: Record<LamaMode, number> = { finetune: 4, 'ptune-lm': 4, 'manual+ptune': 3, ptune: 3, prefix: 3, 'prompt-tuning': 3, manual: 1, majority: 0 };

export function parseModes(values: readonly string[]): LamaMode[] {
  const modes = values.flatMap((v) => v.split(',')).map((v) => v.trim()).filter(Boolean);
  if (modes.length === 0) throw new UserError('--mode: no mode given');
  for (const m of modes) {
    if (!(LAMA_MODES as readonly string[]).includes(m)) throw new UserError(`--mode: unknown mode "${m}" (use ${LAMA_MODES.join(', ')})`);
  }
  return [...new Set(modes)] as LamaMode[];
}

/** The relation ids a --relations value selects, in relation-id order. */
export function resolveRelations(data: string, split: LamaSplit, spec: LamaRunOptions['relations'] = 'all'): string[] {
  let rels;
  try {
    rels = listRelations(data, split);
  } catch (e) {
    throw new UserError((e as Error).message);
  }
  if (spec === 'all') return rels.map((r) => r.id);
  if (spec === 'complete') return completeRelations(rels).map((r) => r.id);
  const ids = spec.map((s) => s.trim()).filter(Boolean);
  if (ids.length === 0) throw new UserError('--relations: no relation given (use all, complete or ids like P19,P20)');
  const known = new Set(rels.map((r) => r.id));
  for (const id of ids) {
    if (!known.has(id)) {
      throw new UserError(`--relations: unknown relation "${id}" in ${path.join(data, 'fact-retrieval', split)} (use all, complete or ids like P19,P20)`);
    }
  }
  return rels.map((r) => r.id).filter((id) => ids.includes(id));
}

function checkTrain(name: string, t: LamaTrainSettings): LamaTrainSettings {
  const bad = (field: string, want: string) => {
    throw new UserError(`${name} ${field} must be ${want}`);
  };
  if (!(t.lr > 0)) bad('lr', 'positive');
  if (!(t.weightDecay >= 0)) bad('weight decay', '≥ 0');
  if (!(t.gamma > 0 && t.gamma <= 1)) bad('gamma', 'in (0, 1]');
  if (!Number.isInteger(t.epochs) || t.epochs < 1) bad('epochs', 'a positive integer');
  if (!Number.isInteger(t.patience) || t.patience < 0) bad('patience', 'an integer ≥ 0');
  if (!Number.isInteger(t.batchSize) || t.batchSize < 1) bad('batch size', 'a positive integer');
  if (!['constant', 'linear', 'exponential'].includes(t.schedule)) bad('schedule', 'constant, linear or exponential');
  return t;
}

export function resolveSettings(o: LamaRunOptions): LamaSettings {
  for (const [set, n] of Object.entries(o.maxFacts ?? {})) {
    if (n !== undefined && (!Number.isInteger(n) || n < 1)) throw new UserError(`--max-${set} must be a positive integer, got ${n}`);
  }
  const topK = o.topK ?? 10;
  if (!Number.isInteger(topK) || topK < 1) throw new UserError(`--top-k must be a positive integer, got ${topK}`);
  const pseudo = o.pseudo ?? 3;
  if (!Number.isInteger(pseudo) || pseudo < 0) throw new UserError(`--pseudo must be an integer ≥ 0, got ${pseudo}`);
  if (!fs.existsSync(o.model)) throw new UserError(`--model: ${o.model}: no such file or directory`);
  const virtualTokens = o.virtualTokens ?? DEEP_DEFAULTS.numVirtualTokens;
  if (!Number.isInteger(virtualTokens) || virtualTokens < 1) throw new UserError(`--virtual-tokens must be a positive integer, got ${virtualTokens}`);
  return {
    model: path.resolve(o.model),
    data: path.resolve(o.data),
    out: path.resolve(o.out),
    split: o.split ?? 'original',
    vocab: o.vocab ?? '29k',
    seed: o.seed ?? 13,
    template: o.template,
    pseudo,
    ptune: checkTrain('ptune', { ...PTUNE_DEFAULTS, ...o.ptune }),
    deep: checkTrain('deep prompts', { ...DEEP_LAMA_DEFAULTS, ...o.deep }),
    virtualTokens,
    finetune: checkTrain('finetune', { ...FINETUNE_DEFAULTS, ...o.finetune }),
    maxFacts: { ...o.maxFacts },
    topK,
    keepCheckpoints: o.keepCheckpoints ?? false,
    ...(o.quantize && { quantize: o.quantize }),
  };
}

/** What a mode's results depend on; a folder holding results made otherwise is not reused. */
function modeKey(s: LamaSettings, mode: LamaMode): Record<string, unknown> {
  const key: Record<string, unknown> = { model: s.model, data: s.data, split: s.split, vocab: s.vocab, maxFacts: s.maxFacts };
  if (s.quantize) key.quantize = quantizeName(parseQuantize(s.quantize)!);
  if (mode === 'ptune') Object.assign(key, { seed: s.seed, template: s.template ?? null, train: s.ptune });
  if (mode === 'manual+ptune') Object.assign(key, { seed: s.seed, pseudo: s.pseudo, train: s.ptune });
  if (mode === 'finetune') Object.assign(key, { seed: s.seed, train: s.finetune });
  if (mode === 'ptune-lm') Object.assign(key, { seed: s.seed, template: s.template ?? null, train: s.ptune, lm: s.finetune });
  if (mode === 'prefix' || mode === 'prompt-tuning') Object.assign(key, { seed: s.seed, train: s.deep, virtualTokens: s.virtualTokens });
  return key;
}

/** Results already in `out` for `mode` must have been made with the same settings; `write` records them when new. */
function checkModeSettings(s: LamaSettings, mode: LamaMode, write: boolean): void {
  const file = path.join(s.out, mode, 'settings.json');
  const want = modeKey(s, mode);
  if (fs.existsSync(file)) {
    const have = parseFile(z.record(z.string(), z.unknown()), readJson(file, 'settings file'), file);
    for (const k of new Set([...Object.keys(have), ...Object.keys(want)])) {
      if (JSON.stringify(have[k] ?? null) !== JSON.stringify(want[k] ?? null)) {
        throw new UserError(
          `${file}: ${mode} results here were made with ${k} = ${JSON.stringify(have[k])}, not ${JSON.stringify(want[k])}; use another --out`,
        );
      }
    }
  } else if (write) {
    writeFileAtomic(file, JSON.stringify(want, null, 2) + '\n');
  }
}

export async function runLama(o: LamaRunOptions): Promise<LamaRunResult> {
  const t0 = Date.now();
  const settings = resolveSettings(o);
  const modes = parseModes(o.modes ?? ['manual']);
  const tuning = modes.filter((m) => m === 'ptune-lm' || m === 'finetune');
  if (settings.quantize && tuning.length) {
    throw new UserError(`--quantize cannot be combined with the ${tuning.join(', ')} mode${tuning.length > 1 ? 's' : ''}: they tune the LM, and quantized weights are frozen`);
  }
  const relations = resolveRelations(settings.data, settings.split, o.relations);
  const jobs = o.jobs ?? os.availableParallelism();
  if (!Number.isInteger(jobs) || jobs < 1) throw new UserError(`--jobs must be a positive integer, got ${jobs}`);
  if (settings.template !== undefined) {
    try {
      parseTemplate(settings.template);
    } catch (e) {
      throw new UserError(`--template: ${(e as Error).message}`);
    }
  }
  for (const mode of modes) checkModeSettings(settings, mode, false);
  o.beforeWrite?.();
  for (const mode of modes) checkModeSettings(settings, mode, true);

  const all = modes.flatMap((mode) => relations.map((relation) => ({ mode, relation })));
  const todo = all
    .filter((t) => !relationDone(settings.out, t.mode, t.relation))
    .sort((a, b) => MODE_COST[b.mode] - MODE_COST[a.mode]);
  const workers = Math.min(jobs, todo.length);
  const display = new LamaDisplay(all.length, all.length - todo.length, Math.max(workers, 1), o.quiet ?? false);
  try {
    if (workers === 1) await runInProcess(settings, todo, display);
    else if (workers > 1) await runPool(settings, todo, workers, display, (await initEngine()).threads);
  } finally {
    display.stop();
  }

  const wanted = new Set(all.map((t) => `${t.mode}/${t.relation}`));
  const results = collectResults(settings.out).filter((r) => wanted.has(`${r.mode}/${r.relation}`));
  const files = writeLamaReport(settings.out, results, {
    title: o.title ?? `LAMA ${settings.split} · ${path.basename(settings.model)} · ${settings.vocab} vocab`,
    command: o.command,
    config: reportConfig(settings, modes, relations.length),
  });
  return {
    report: files.report,
    files: { json: files.json, md: files.md, svg: files.svg },
    computed: todo.length,
    reused: all.length - todo.length,
    seconds: (Date.now() - t0) / 1000,
  };
}

function reportConfig(s: LamaSettings, modes: LamaMode[], relations: number): Record<string, unknown> {
  const c: Record<string, unknown> = {
    model: s.model,
    split: s.split,
    vocab: s.vocab,
    modes: modes.join(', '),
    relations,
    seed: s.seed,
  };
  if (s.quantize) c['frozen LM weights'] = quantizeName(parseQuantize(s.quantize)!);
  if (Object.keys(s.maxFacts).length > 0) c['fact caps (per relation, seeded sample)'] = s.maxFacts;
  if (modes.includes('ptune')) c['ptune template'] = s.template ?? '3,3,3 (masked) / 3,3,0 (causal)';
  if (modes.includes('manual+ptune')) c['manual+ptune pseudo tokens per gap'] = s.pseudo;
  if (modes.includes('ptune') || modes.includes('manual+ptune')) c['prompt encoder training'] = trainText(s.ptune);
  if (modes.includes('finetune')) c['LM fine-tuning'] = trainText(s.finetune);
  return c;
}

function trainText(t: LamaTrainSettings): string {
  const sched = t.schedule === 'exponential' ? `exponential ×${t.gamma}/epoch` : t.schedule;
  return `Adam lr ${t.lr}, weight decay ${t.weightDecay}, ${sched}, batch ${t.batchSize}, up to ${t.epochs} epochs, patience ${t.patience}`;
}

type Task = { mode: LamaMode; relation: string };

async function runInProcess(settings: LamaSettings, todo: Task[], display: LamaDisplay): Promise<void> {
  await initEngine();
  const runner = new LamaTaskRunner(settings);
  try {
    for (const t of todo) {
      display.status(0, `${t.mode} ${t.relation}`);
      const r = await runner.run(t.mode, t.relation, (text) => display.status(0, text));
      display.finished(r);
    }
  } finally {
    runner.dispose();
  }
}

const WORKER_FILE = fileURLToPath(new URL('./worker.js', import.meta.url));

function runPool(settings: LamaSettings, todo: Task[], n: number, display: LamaDisplay, threads: number): Promise<void> {
  const queue = [...todo];
  const children: ChildProcess[] = [];
  let failed = false;
  return new Promise<void>((resolve, reject) => {
    let alive = n;
    const fail = (err: Error) => {
      if (failed) return;
      failed = true;
      for (const c of children) if (c.exitCode === null) c.kill();
      reject(err);
    };
    const childDone = () => {
      alive--;
      if (alive === 0 && !failed) resolve();
    };
    for (let slot = 0; slot < n; slot++) {
      // the cores are divided among the workers
      const env = { ...process.env, PTUNE_THREADS: String(Math.max(1, Math.floor(threads / n))) };
      const child = fork(WORKER_FILE, [], { execArgv: [], env, stdio: ['ignore', 'ignore', 'inherit', 'ipc'] });
      children.push(child);
      let current: Task | null = null;
      let exiting = false;
      const next = () => {
        current = queue.shift() ?? null;
        if (current === null || failed) {
          exiting = true;
          display.status(slot, 'idle');
          child.send({ type: 'exit' } satisfies ToWorker);
          return;
        }
        display.status(slot, `${current.mode} ${current.relation}`);
        child.send({ type: 'task', ...current } satisfies ToWorker);
      };
      child.on('message', (m: FromWorker) => {
        if (m.type === 'ready') next();
        else if (m.type === 'status') display.status(slot, m.text);
        else if (m.type === 'done') {
          display.finished(m.result);
          next();
        } else {
          const what = current ? `${current.mode} ${current.relation}: ` : '';
          fail(new Error(`${what}${m.message}`));
        }
      });
      child.on('error', (e) => fail(new Error(`LAMA worker: ${e.message}`)));
      child.on('exit', (code, signal) => {
        if (!exiting && !failed) {
          const what = current ? ` while running ${current.mode} ${current.relation}` : '';
          fail(new Error(`LAMA worker exited (${signal ?? `code ${code}`})${what}`));
        }
        childDone();
      });
      child.send({ type: 'init', settings } satisfies ToWorker);
    }
  });
}

/**
 * One display for all jobs: tasks done / total with an ETA and each job's status; on a TTY the block is
 * redrawn in place, otherwise a summary line is printed every 30 s. Finished tasks print one line each.
 */
class LamaDisplay {
  private readonly stream = process.stderr;
  private readonly tty: boolean;
  private readonly statuses: string[];
  private drawn = 0;
  private lastDraw = 0;
  private done = 0;
  private readonly t0 = Date.now();

  constructor(
    private readonly total: number,
    private readonly reused: number,
    jobs: number,
    private readonly quiet: boolean,
  ) {
    this.tty = Boolean(this.stream.isTTY) && !quiet;
    this.statuses = new Array<string>(jobs).fill('starting');
    if (!quiet && reused > 0) this.log(`${reused} of ${total} tasks already done`);
  }

  status(job: number, text: string): void {
    this.statuses[job] = text;
    this.draw(false);
  }

  finished(r: LamaTaskResult): void {
    this.done++;
    const p1 = (v: number | null) => (v === null ? '–' : (v * 100).toFixed(2));
    const what =
      r.status === 'ok'
        ? `test P@1 ${p1(r.test_p1)} (n ${r.n_test}, majority ${p1(r.majority_p1)}${r.dev_p1 !== null ? `, dev ${p1(r.dev_p1)}` : ''}${r.best_epoch ? `, best epoch ${r.best_epoch}/${r.epochs}` : ''})`
        : r.status;
    this.log(`[${this.reused + this.done}/${this.total}] ${r.mode} ${r.relation}: ${what}, ${r.seconds.toFixed(1)} s`);
    this.draw(true);
  }

  private summary(): string {
    const secs = (Date.now() - this.t0) / 1000;
    const left = this.total - this.reused - this.done;
    const eta = this.done > 0 ? ` ETA ~${fmtSecs((secs / this.done) * left)}` : '';
    return `lama ${this.reused + this.done}/${this.total} done, ${fmtSecs(secs)} elapsed${eta}`;
  }

  private draw(force: boolean): void {
    if (this.quiet) return;
    const now = Date.now();
    if (!this.tty) {
      if (now - this.lastDraw < 30_000) return;
      this.lastDraw = now;
      this.stream.write(`${this.summary()} | ${this.statuses.map((s, i) => `#${i + 1} ${s}`).join(' | ')}\n`);
      return;
    }
    if (!force && now - this.lastDraw < 200) return;
    this.lastDraw = now;
    const width = Math.max(20, (this.stream.columns ?? 100) - 1);
    const lines = [this.summary(), ...this.statuses.map((s, i) => `  #${i + 1} ${s}`)].map((l) => l.slice(0, width));
    this.clear();
    this.stream.write(lines.map((l) => l + '\n').join(''));
    this.drawn = lines.length;
  }

  private clear(): void {
    if (this.drawn > 0) this.stream.write(`\x1b[${this.drawn}A\x1b[0J`);
    this.drawn = 0;
  }

  log(line: string): void {
    if (this.quiet) return;
    if (this.tty) this.clear();
    this.stream.write(line + '\n');
  }

  stop(): void {
    if (this.tty) this.clear();
  }
}

function fmtSecs(s: number): string {
  if (s < 90) return `${Math.round(s)}s`;
  if (s < 5400) return `${Math.round(s / 60)}m`;
  return `${(s / 3600).toFixed(1)}h`;
}
