import fs from 'node:fs';
import path from 'node:path';
import { loadModel } from '../../models/load.js';
import { parseQuantize, quantizeName, type QuantizeOptions } from '../../models/quantize.js';
import type { LanguageModel } from '../../models/model.js';
import { DEFAULT_LOOP, DEFAULT_OPTIM, PTuningSession, type RunConfig } from '../../train/session.js';
import type { TrainLoopConfig } from '../../train/trainer.js';
import type { Progress } from '../../util/progress.js';
import { UserError } from '../../util/errors.js';
import { writeFileAtomic } from '../../util/atomic.js';
import { ChoiceTask, CHOICE_TASKS } from './choice-tasks.js';
import { classifierFields, classifierTemplate } from './classifier.js';
import { fitBagOfWords, type BowExample } from '../bow.js';
import { DEEP_DEFAULTS } from '../../train/defaults.js';
import { loadTask } from './loaders.js';
import { evaluate, majorityBaseline } from './metrics.js';
import { loadPatterns, pseudoTokenCount, templateFor, type Pattern, type PatternFile } from './patterns.js';
import { seededRandom, shuffled } from './sampling.js';
import { loadSst2 } from './sst2.js';
import { taskInfo, type TaskExample, type TaskName } from './tasks.js';
import { writeReport } from './report.js';

export const FEWGLUE_MODES = ['manual', 'ptune', 'ptune-lm', 'prefix', 'prefix-linear', 'prompt-tuning', 'manual-lm', 'finetune', 'bow'] as const;
export type FewGlueMode = (typeof FEWGLUE_MODES)[number];

/** What each mode is, as the reports say it. */
export const MODE_DESCRIPTIONS: Record<FewGlueMode, string> = {
  manual: 'manual pattern, zero-shot (frozen LM, no training)',
  ptune: 'P-tuning v1: pattern with [P] tokens from a BiLSTM prompt encoder, frozen LM, verbalizer head',
  'ptune-lm': 'P-tuning v1 with the LM tuned jointly',
  prefix: 'deep prompts (P-tuning v2 / prefix tuning): trained keys and values at every layer, manual pattern, frozen LM, verbalizer head',
  'prefix-linear': 'deep prompts with a linear head on [CLS] / the last token (P-tuning v2 classification), frozen LM',
  'prompt-tuning': 'prompt tuning (Lester et al.): embedding rows before the input, manual pattern, frozen LM',
  'manual-lm': 'manual pattern + LM fine-tuning (one pattern, no ensemble or distillation: not PET)',
  finetune: 'fine-tuning with a linear head on [CLS] / the last token, no pattern',
  bow: 'bag-of-words logistic regression (unigrams + bigrams per field, L2 chosen on dev)',
};

/** the modes that train the LM's weights */
const TUNES_LM: readonly FewGlueMode[] = ['ptune-lm', 'manual-lm', 'finetune'];

/** The mode for a name, with the old `pet` name pointing at what it was. */
export function parseMode(name: string): FewGlueMode {
  const m = FEWGLUE_MODES.find((x) => x === name.toLowerCase());
  if (m) return m;
  if (name.toLowerCase() === 'pet') throw new UserError('--mode pet is now manual-lm: it was a manual pattern + LM fine-tuning, not PET (no pattern ensemble, no distillation)');
  throw new UserError(`--mode: unknown mode "${name}" (known: ${FEWGLUE_MODES.join(', ')}, all)`);
}
/** label tasks (verbalizer heads); the choice / span tasks (CHOICE_TASKS) run through choice-tasks.ts */
export const RUNNABLE_TASKS: readonly TaskName[] = ['sst2', 'rte', 'cb', 'boolq', 'wic', 'multirc'];
export const ALL_TASKS: readonly TaskName[] = ['sst2', 'rte', 'cb', 'boolq', 'wic', 'multirc', 'copa', 'wsc', 'record'];

/** Why a (task, mode) pair is not run, or null when it is. */
export function notApplicable(task: TaskName, mode: FewGlueMode): string | null {
  if ((mode === 'finetune' || mode === 'prefix-linear' || mode === 'bow') && CHOICE_TASKS.includes(task)) {
    return 'not applicable: a classifier has no fixed classes here (answers are candidate texts); the pattern modes score them';
  }
  if ((mode === 'prefix' || mode === 'prompt-tuning') && CHOICE_TASKS.includes(task)) {
    return 'not implemented: candidate scoring takes P-tuning v1 prompts only';
  }
  return null;
}

export interface FewGlueOptions {
  model: string;
  tasks: TaskName[];
  modes: FewGlueMode[];
  seeds: number[];
  out: string;
  /** root holding fewglue/ and sst2/ (default ../shared/data from the working directory) */
  dataDir?: string;
  /** default min(256, the model's max positions) */
  maxLength?: number;
  /** evaluation examples kept (a fixed seeded sample; MultiRC: whole questions); default 1000, 0 = all */
  evalCap?: number;
  /** cap the few-shot train / dev sets (tests); default 0 = all 32 */
  trainCap?: number;
  /** SST-2 training examples drawn from train.tsv (default 32; dev: 32, or a quarter of this when larger) */
  sst2Train?: number;
  /** deep prompts / prompt tuning: virtual tokens */
  numVirtualTokens?: number;
  /** deep prompts: the projection MLP (PEFT prefix_projection) */
  prefixProjection?: boolean;
  epochs?: number;
  batchSize?: number;
  /** evaluate on dev every N steps (0 = per epoch) */
  evalEvery?: number;
  patience?: number;
  /** prompt-encoder lr with a frozen LM (ptune) */
  promptLr?: number;
  /** prompt-encoder lr when the LM is tuned too (ptune-lm) */
  jointPromptLr?: number;
  /** LM lr for ptune-lm, manual-lm and finetune */
  lmLr?: number;
  lmWeightDecay?: number;
  /** finetune: classification head lr */
  headLr?: number;
  /** lr of deep prompts and prompt tuning (frozen LM) */
  deepLr?: number;
  warmupRatio?: number;
  /** the frozen LM's linear weights quantized (the frozen-LM modes; not ptune-lm, manual-lm or finetune, which tune it) */
  quantize?: QuantizeOptions;
  progress?: Progress;
  log?: (line: string) => void;
  /** called once the options and the model have been checked, before the first file is written */
  beforeWrite?: () => void;
}

export interface RunResult {
  task: TaskName;
  mode: FewGlueMode;
  seed: number;
  pattern: string;
  scores: Record<string, number>;
  baseline: Record<string, number> | null;
  baselineLabel: string | null;
  devScore: number | null;
  bestEpoch: number | null;
  steps: number;
  seconds: number;
  evalSplit: string;
  nEval: number;
  nTrain: number;
}

export interface Cell {
  task: TaskName;
  mode: FewGlueMode;
  metrics: Record<string, { mean: number; std: number; values: number[] }>;
  baseline: Record<string, number> | null;
  runs: number;
}

export interface FewGlueReport {
  model: string;
  modelKind: string;
  settings: Record<string, unknown>;
  runs: RunResult[];
  cells: Cell[];
  notRun: { task: string; mode: string; reason: string }[];
  seconds: number;
}

export function resolveOptions(o: FewGlueOptions) {
  return {
    dataDir: o.dataDir ?? path.resolve(process.cwd(), '../shared/data'),
    evalCap: o.evalCap ?? 1000,
    trainCap: o.trainCap ?? 0,
    epochs: o.epochs ?? 20,
    batchSize: o.batchSize ?? 8,
    evalEvery: o.evalEvery ?? 0,
    patience: o.patience ?? 6,
    promptLr: o.promptLr ?? 3e-3,
    jointPromptLr: o.jointPromptLr ?? 1e-3,
    lmLr: o.lmLr ?? 1e-4,
    lmWeightDecay: o.lmWeightDecay ?? 0.1,
    headLr: o.headLr ?? 1e-3,
    warmupRatio: o.warmupRatio ?? 0,
    sst2Train: o.sst2Train ?? 32,
    numVirtualTokens: o.numVirtualTokens ?? DEEP_DEFAULTS.numVirtualTokens,
    prefixProjection: o.prefixProjection ?? DEEP_DEFAULTS.projection,
    deepLr: o.deepLr ?? DEEP_DEFAULTS.lr,
  };
}

/** Keeps `cap` examples, a fixed seeded sample in the original order; MultiRC keeps whole questions. */
export function capEval(examples: TaskExample[], cap: number, seed = 1): TaskExample[] {
  if (cap <= 0 || examples.length <= cap) return examples;
  const groups = [...new Set(examples.map((x) => x.group ?? x.id))];
  const keep = new Set<string>();
  let n = 0;
  const size = new Map<string, number>();
  for (const x of examples) size.set(x.group ?? x.id, (size.get(x.group ?? x.id) ?? 0) + 1);
  for (const g of shuffled(groups, seededRandom(seed))) {
    if (n + size.get(g)! > cap && n > 0) break;
    keep.add(g);
    n += size.get(g)!;
  }
  return examples.filter((x) => keep.has(x.group ?? x.id));
}

export interface TaskData {
  train: TaskExample[];
  dev: TaskExample[];
  evalSet: TaskExample[];
  evalSplit: string;
}

/** Few-shot train / dev and the evaluation set of a task for one seed. */
export function loadTaskData(task: TaskName, seed: number, dataDir: string, evalCap: number, trainCap = 0, sst2Train = 32): TaskData {
  const cap = (xs: TaskExample[]) => (trainCap > 0 ? xs.slice(0, trainCap) : xs);
  if (task === 'sst2') {
    const dir = path.join(dataDir, 'sst2');
    const fewShot = { seed, n: sst2Train, devN: sst2Train <= 32 ? sst2Train : Math.max(32, Math.round(sst2Train / 4)) };
    return {
      train: cap(loadSst2(dir, 'train', { fewShot })),
      dev: cap(loadSst2(dir, 'dev', { fewShot })),
      evalSet: capEval(loadSst2(dir, 'test'), evalCap),
      evalSplit: 'test',
    };
  }
  const dir = path.join(dataDir, 'fewglue');
  if (task === 'record') {
    // ReCoRD has no val split in FewGLUE: dev32 is the evaluation set (and is not used for model selection)
    const dev = cap(loadTask(dir, task, 'dev32'));
    return { train: cap(loadTask(dir, task, 'train')), dev, evalSet: capEval(dev, evalCap), evalSplit: 'dev32' };
  }
  return {
    train: cap(loadTask(dir, task, 'train')),
    dev: cap(loadTask(dir, task, 'dev32')),
    evalSet: capEval(loadTask(dir, task, 'val'), evalCap),
    evalSplit: 'val',
  };
}

export function records(examples: readonly TaskExample[]): Record<string, unknown>[] {
  return examples.map((x) => ({ ...x.fields, label: x.label, id: x.id }));
}

export function patternFor(pf: PatternFile, mode: FewGlueMode): Pattern {
  const wantPseudo = mode === 'ptune' || mode === 'ptune-lm';
  if (mode === 'finetune' || mode === 'prefix-linear' || mode === 'bow') throw new Error(`${mode} uses no pattern`);
  const p = pf.patterns.find((q) => (pseudoTokenCount(q.template) > 0) === wantPseudo);
  if (!p) throw new Error(`${pf.file}: no ${wantPseudo ? 'P-tuning' : 'manual'} pattern`);
  return p;
}

function loopConfig(r: ReturnType<typeof resolveOptions>, seed: number, maxSteps = 0): TrainLoopConfig {
  return {
    ...DEFAULT_LOOP,
    epochs: r.epochs,
    maxSteps,
    batchSize: r.batchSize,
    evalEvery: r.evalEvery,
    patience: r.patience,
    saveEvery: 0,
    logEvery: 5,
    seed,
  };
}

/** Session config of a mode (every mode but bow). */
export function sessionConfig(model: string, lm: LanguageModel, pf: PatternFile, mode: FewGlueMode, seed: number, maxLength: number, r: ReturnType<typeof resolveOptions>, example: TaskExample, task: TaskName = pf.task): RunConfig {
  const tuneLm = TUNES_LM.includes(mode);
  const linear = mode === 'finetune' || mode === 'prefix-linear';
  const deep = mode === 'prefix' || mode === 'prefix-linear' || mode === 'prompt-tuning';
  const template = linear ? classifierTemplate(task, lm.info.kind) : templateFor(patternFor(pf, mode), example, lm.info.kind);
  const lr = mode === 'finetune' ? r.headLr : deep ? r.deepLr : tuneLm ? r.jointPromptLr : r.promptLr;
  return {
    version: 1,
    model,
    template,
    // choice / span tasks score candidate texts (choice-tasks.ts); the session's head is then unused
    head: linear
      ? { kind: 'linear', labelField: 'label', labels: [...taskInfo(task).labels], seed }
      : pf.verbalizer
        ? { kind: 'label', labelField: 'label', labelWords: pf.verbalizer, tokenRule: 'first' }
        : { kind: 'answer', answerField: 'label' },
    encoder: { type: 'lstm', seed },
    // deep prompts take the first positions: the input has the rest
    maxLength: mode === 'prefix' || mode === 'prefix-linear' ? Math.min(maxLength, lm.info.maxPositions - r.numVirtualTokens) : maxLength,
    skipTooLong: false,
    ...(mode === 'prefix' || mode === 'prefix-linear'
      ? { method: 'prefix' as const, prefix: { numVirtualTokens: r.numVirtualTokens, projection: r.prefixProjection } }
      : mode === 'prompt-tuning'
        ? { method: 'prompt-tuning' as const, promptTuning: { numVirtualTokens: r.numVirtualTokens } }
        : {}),
    loop: loopConfig(r, seed),
    optim: {
      ...DEFAULT_OPTIM,
      optimizer: tuneLm ? 'adamw' : 'adam',
      lr,
      weightDecay: 0,
      schedule: tuneLm ? 'linear' : 'constant',
      warmupRatio: r.warmupRatio,
      tuneLm,
      lmLr: r.lmLr,
      lmWeightDecay: r.lmWeightDecay,
    },
  };
}

/** The fields a classifier reads, as strings. */
function bowExamples(task: TaskName, xs: readonly TaskExample[]): BowExample[] {
  const fields = classifierFields(task);
  return xs.map((x) => ({ fields: Object.fromEntries(fields.map((f) => [f, String(x.fields[f] ?? '')])), label: x.label ?? '' }));
}

function writePredictions(file: string, examples: readonly TaskExample[], preds: readonly string[]): void {
  writeFileAtomic(file, examples.map((x, i) => JSON.stringify({ id: x.id, gold: x.label, prediction: preds[i] })).join('\n') + '\n');
}

/** One (task, mode, seed) run: train when the mode trains, pick the best dev checkpoint, evaluate. */
async function runOne(
  o: FewGlueOptions, r: ReturnType<typeof resolveOptions>, task: TaskName, mode: FewGlueMode, seed: number,
  frozenLm: LanguageModel, maxLength: number,
): Promise<RunResult> {
  const t0 = Date.now();
  const data = loadTaskData(task, seed, r.dataDir, r.evalCap, r.trainCap, r.sst2Train);
  const runDir = path.join(o.out, 'runs', `${task}-${mode}-seed${seed}`);
  fs.rmSync(runDir, { recursive: true, force: true });
  const base = majorityBaseline(task, data.train, data.evalSet);
  let preds: string[];
  let devScore: number | null = null, bestEpoch: number | null = null, steps = 0, pattern = '';

  if (mode === 'bow') {
    const fit = fitBagOfWords(taskInfo(task).labels, bowExamples(task, data.train), bowExamples(task, data.dev));
    devScore = fit.devAccuracy;
    preds = bowExamples(task, data.evalSet).map((x) => fit.model.predict(x));
    pattern = `(bag of words, L2 ${fit.l2})`;
  } else {
    const pf = loadPatterns(task);
    const tuneLm = TUNES_LM.includes(mode);
    const lm = tuneLm ? await loadModel(o.model, { trainable: true }) : frozenLm;
    const made = sessionConfig(o.model, lm, pf, mode, seed, maxLength, r, data.train[0]!, task);
    // a run directory says that its frozen LM was quantized
    const config = o.quantize && !tuneLm ? { ...made, quantize: o.quantize } : made;
    pattern = mode === 'finetune' || mode === 'prefix-linear' ? '(linear head)' : patternFor(pf, mode).name;
    const session = await PTuningSession.create(config, lm);
    try {
      if (CHOICE_TASKS.includes(task)) {
        const res = await new ChoiceTask(task, session, patternFor(pf, mode), config.maxLength, seed).run(data, runDir, mode !== 'manual', o.progress);
        preds = res.predictions;
        devScore = res.devScore; bestEpoch = res.bestEpoch; steps = res.steps;
        if (res.threshold !== undefined) pattern += ` (threshold ${res.threshold.toFixed(3)})`;
      } else {
        if (mode !== 'manual') {
          const res = await session.train({ runDir, progress: o.progress, train: records(data.train), dev: records(data.dev), restoreBest: true, baselines: false });
          devScore = res.bestScore; bestEpoch = res.bestEpoch + 1; steps = res.step;
        }
        const { items } = session.prepare(records(data.evalSet), `${task} ${data.evalSplit}`);
        const ev = await session.evaluateItems(items);
        preds = ev.predictions.map((k) => session.head.className(k));
      }
    } finally {
      session.dispose({ keepLm: !tuneLm });
    }
  }
  for (const d of ['best', 'last']) fs.rmSync(path.join(runDir, d), { recursive: true, force: true });
  writePredictions(path.join(o.out, 'predictions', `${task}-${mode}-seed${seed}.jsonl`), data.evalSet, preds);
  return {
    task, mode, seed, pattern,
    scores: evaluate(task, data.evalSet, preds),
    baseline: base?.scores ?? null,
    baselineLabel: base?.label ?? null,
    devScore, bestEpoch, steps,
    seconds: (Date.now() - t0) / 1000,
    evalSplit: data.evalSplit,
    nEval: data.evalSet.length,
    nTrain: data.train.length,
  };
}

export function meanStd(values: readonly number[]): { mean: number; std: number } {
  const mean = values.reduce((s, v) => s + v, 0) / values.length;
  const std = values.length > 1 ? Math.sqrt(values.reduce((s, v) => s + (v - mean) ** 2, 0) / (values.length - 1)) : 0;
  return { mean, std };
}

export function summarize(runs: readonly RunResult[]): Cell[] {
  const cells: Cell[] = [];
  for (const run of runs) {
    if (cells.some((c) => c.task === run.task && c.mode === run.mode)) continue;
    const mine = runs.filter((x) => x.task === run.task && x.mode === run.mode);
    const metrics: Cell['metrics'] = {};
    for (const m of Object.keys(run.scores)) {
      const values = mine.map((x) => x.scores[m]!);
      metrics[m] = { ...meanStd(values), values };
    }
    const baseline = run.baseline
      ? Object.fromEntries(Object.keys(run.baseline).map((m) => [m, meanStd(mine.map((x) => x.baseline![m]!)).mean]))
      : null;
    cells.push({ task: run.task, mode: run.mode, metrics, baseline, runs: mine.length });
  }
  return cells;
}

/**
 * Runs the few-shot experiment: every task × mode × seed, writing `report.json`, `report.md` and
 * `predictions/*.jsonl` to `out` (the report is rewritten after every run, so a partial one is readable).
 * `manual` is zero-shot and seed-independent (fixed evaluation sets), so it runs once.
 */
export async function runFewGlue(o: FewGlueOptions): Promise<FewGlueReport> {
  const t0 = Date.now();
  const r = resolveOptions(o);
  if (o.seeds.length === 0) throw new UserError('no seeds');
  for (const t of o.tasks) taskInfo(t);
  if (o.quantize) {
    const tuned = o.modes.filter((m) => TUNES_LM.includes(m));
    if (tuned.length) throw new UserError(`--quantize cannot be combined with the ${tuned.join(', ')} mode${tuned.length > 1 ? 's' : ''}: they tune the LM, and quantized weights are frozen`);
  }
  const frozenLm = await loadModel(o.model, { quantize: o.quantize });
  const maxLength = o.maxLength ?? Math.min(256, frozenLm.info.maxPositions);
  if (maxLength > frozenLm.info.maxPositions) {
    frozenLm.dispose();
    throw new UserError(`--max-length: expected an integer from 1 to ${frozenLm.info.maxPositions} (the positions of ${frozenLm.info.source}), got ${maxLength}`);
  }
  try {
    for (const task of o.tasks) if (RUNNABLE_TASKS.includes(task) || CHOICE_TASKS.includes(task)) loadPatterns(task);
    o.beforeWrite?.();
  } catch (e) {
    frozenLm.dispose();
    throw e;
  }
  fs.mkdirSync(o.out, { recursive: true });
  const report: FewGlueReport = {
    model: o.model, modelKind: `${frozenLm.info.family} (${frozenLm.info.kind})`,
    settings: {
      ...r, dataDir: undefined, maxLength, seeds: o.seeds, tasks: o.tasks, modes: o.modes, stdOf: 'sample std (n-1) over seeds',
      ...(o.quantize && { quantize: quantizeName(parseQuantize(o.quantize)!) }),
    },
    runs: [], cells: [], notRun: [], seconds: 0,
  };
  const save = () => {
    report.cells = summarize(report.runs);
    report.seconds = (Date.now() - t0) / 1000;
    writeReport(o.out, report);
  };
  try {
    for (const task of o.tasks) {
      if (!RUNNABLE_TASKS.includes(task) && !CHOICE_TASKS.includes(task)) {
        for (const mode of o.modes) report.notRun.push({ task, mode, reason: 'not supported by this driver' });
        save();
        continue;
      }
      for (const mode of o.modes) {
        const skip = notApplicable(task, mode);
        if (skip) {
          report.notRun.push({ task, mode, reason: skip });
          save();
          continue;
        }
        const seeds = mode === 'manual' ? o.seeds.slice(0, 1) : o.seeds;
        for (const seed of seeds) {
          const run = await runOne(o, r, task, mode, seed, frozenLm, maxLength);
          report.runs.push(run);
          const main = taskInfo(task).metrics[0]!;
          o.log?.(`${task} ${mode} seed ${seed}: ${main} ${run.scores[main]!.toFixed(4)} (majority ${run.baseline?.[main]?.toFixed(4) ?? '-'}) dev ${run.devScore?.toFixed(3) ?? '-'} ${run.seconds.toFixed(0)}s`);
          save();
        }
      }
    }
  } finally {
    frozenLm.dispose();
  }
  save();
  return report;
}
