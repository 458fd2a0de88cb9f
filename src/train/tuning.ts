import { getRuntime } from '../engine/runtime.js';
import { safetensorsBytes } from '../engine/safetensors-format.js';
import { prefixed, type Parameter } from '../engine/tensor.js';
import { inputEmbeddings } from '../models/forward.js';
import type { LanguageModel } from '../models/model.js';
import type { QuantizeOptions } from '../models/quantize-settings.js';
import { PromptEncoder, type PromptEncoderConfig } from '../prompt/encoder.js';
import { makeHead, type Head, type HeadSpec } from '../prompt/heads.js';
import { PTuningPrograms } from '../prompt/programs.js';
import { PrefixEncoder } from '../prompt/prefix.js';
import { collate, renderExample, type RenderedExample } from '../prompt/render.js';
import { numPseudo, parseTemplate, validateFor, type Template } from '../prompt/template.js';
import type { Progress } from '../util/progress.js';
import { UserError } from '../util/errors.js';
import { Rng } from '../util/rng.js';
import { Adam, AdamW, decayGroups, type ParamGroup } from './optim.js';
import { makeSchedule, type Schedule, type ScheduleConfig } from './schedule.js';
import { memoryStore, runLoop, TrainingInterrupted, type DevResult, type LoopOptions, type TrainLoopConfig, type TrainResult } from './loop.js';

export interface OptimConfig {
  optimizer: 'adam' | 'adamw';
  lr: number;
  weightDecay: number;
  schedule: 'constant' | 'linear' | 'exponential';
  /** linear/constant warmup as a fraction of all steps */
  warmupRatio: number;
  /** exponential: lr multiplier per epoch */
  gamma: number;
  /** joint tuning: the LM's weights train too, with their own rate and decay */
  tuneLm: boolean;
  lmLr: number;
  lmWeightDecay: number;
  /**
   * with tuneLm: the LM trains with the dropout rates of its config, as in Hugging Face's training mode (`ptune
   * train --tune-lm` sets it unless --no-lm-dropout); absent: without
   */
  lmDropout?: boolean;
}

export type MethodName = 'ptuning' | 'prefix' | 'prompt-tuning';
export const METHODS: readonly MethodName[] = ['ptuning', 'prefix', 'prompt-tuning'];
/** `ptune train`'s method when none is given (docs/methods.md) */
export const DEFAULT_METHOD: MethodName = 'ptuning';

/** Everything needed to rebuild a P-tuning run; saved as `<run>/config.json`. */
export interface RunConfig {
  version: 1;
  model: string;
  template: string;
  legacyBertOrder?: boolean;
  head: HeadSpec;
  encoder: Omit<PromptEncoderConfig, 'numVirtualTokens' | 'tokenDim'>;
  maxLength: number;
  skipTooLong: boolean;
  /** PEFT placement: this many virtual tokens before everything, special tokens included (imported adapters) */
  peftPrefix?: number;
  /**
   * how the prompt is learned: 'ptuning' (v1: [P] rows of the template from a prompt encoder), 'prefix' (deep
   * prompts: keys and values at every layer, P-tuning v2 / prefix tuning), 'prompt-tuning' (Lester et al.: plain
   * embedding rows before the input); default 'ptuning'
   */
  method?: MethodName;
  prefix?: { numVirtualTokens: number; projection: boolean; hiddenSize?: number; dropout?: number };
  promptTuning?: { numVirtualTokens: number; initFromWords?: string };
  /**
   * a template whose pseudo tokens all come first is rendered as PEFT places virtual tokens: before the special
   * start tokens ([P*3] {x} → P P P [CLS] x ...), so a PEFT P-tuning adapter reproduces it
   */
  peftLayout?: boolean;
  data?: { train: string; dev: string };
  loop: TrainLoopConfig;
  optim: OptimConfig;
  /** where the run trained (recorded, not required to match on resume) */
  runtime?: { name: string; threads: number };
  /** the frozen LM's linear weights quantized at load (not with optim.tuneLm) */
  quantize?: QuantizeOptions;
}

/**
 * Quantized weights are frozen: a run that tunes the LM (--tune-lm, fine-tuning, the LM-tuning modes) refuses
 * `quantize`, or an LM whose weights are quantized, by name.
 */
export function checkQuantize(config: Pick<RunConfig, 'quantize' | 'optim'>, lm?: LanguageModel): void {
  if (!config.optim.tuneLm) return;
  if (config.quantize) {
    throw new UserError('--quantize cannot be combined with --tune-lm: quantized weights are frozen (tune the LM in fp32, or P-tune the prompt alone)');
  }
  if (lm?.quantized) {
    throw new UserError(`--tune-lm: the LM's linear weights are quantized (${lm.info.quantization!.name}) and frozen; tune the LM in fp32`);
  }
}

export const DEFAULT_LOOP: TrainLoopConfig = {
  epochs: 10,
  maxSteps: 0,
  batchSize: 8,
  gradAccum: 1,
  maxGradNorm: 1,
  evalEvery: 0,
  patience: 0,
  saveEvery: 50,
  logEvery: 10,
  seed: 13,
};

export const DEFAULT_OPTIM: OptimConfig = {
  optimizer: 'adam',
  lr: 3e-3,
  weightDecay: 0,
  schedule: 'constant',
  warmupRatio: 0,
  gamma: 0.98,
  tuneLm: false,
  lmLr: 1e-4,
  lmWeightDecay: 0.1,
};

/** One rendered record with its target, ready to batch. */
export interface Item {
  ex: RenderedExample;
  target: number;
  index: number;
}

export interface EvalResult {
  metrics: Record<string, number>;
  /** predicted class per rendered record */
  predictions: number[];
  targets: number[];
  /** records skipped as too long */
  skipped: number;
}

export interface Prediction {
  index: number;
  /** the record's own id field (id, uuid, idx or guid), when it has one */
  id?: unknown;
  prediction: string;
  scores: { label: string; score: number }[];
}

/**
 * A P-tuning run without storage: a language model, a template with pseudo tokens, a prompt encoder and a head;
 * rendering, the training step, evaluation, prediction and training in memory. The LM is reached only through the
 * LanguageModel interface (embed, run from embeddings, logits at positions). PTuningSession (session.ts) adds
 * what reads and writes files: loading a model or a run from disk, run directories with checkpoints.
 */
export class PTuning {
  readonly config: RunConfig;
  readonly lm: LanguageModel;
  readonly template: Template;
  readonly encoder: PromptEncoder | null;
  /** deep prompts (method 'prefix') */
  readonly prefix: PrefixEncoder | null;
  readonly head: Head;
  /** the training step, scoring and ranking as programs over the LM */
  readonly programs: PTuningPrograms;
  /** the template as rendered (PEFT layout: without its leading pseudo tokens, which go before the input) */
  readonly rendered: Template;
  /** virtual tokens placed before the whole input, special tokens included */
  readonly placedFirst: number;

  /** A run over `lm`; `create` also initialises prompt-tuning rows from words when the config asks for it. */
  constructor(config: RunConfig, lm: LanguageModel) {
    checkQuantize(config, lm);
    this.config = config;
    this.lm = lm;
    // the template, the encoder settings and the label words are the user's: their errors are user errors
    const userInput = <T>(what: () => T): T => {
      try {
        return what();
      } catch (e) {
        throw e instanceof Error && e.constructor === Error ? new UserError(e.message) : e;
      }
    };
    if (config.maxLength > lm.info.maxPositions) {
      throw new UserError(`maxLength ${config.maxLength} is more than the ${lm.info.maxPositions} positions of ${lm.info.source}`);
    }
    this.template = userInput(() => parseTemplate(config.template, { legacyBertOrder: config.legacyBertOrder }));
    userInput(() => validateFor(this.template, lm.info.kind));
    const method = config.method ?? 'ptuning';
    if (!METHODS.includes(method)) throw new UserError(`method must be one of ${METHODS.join(', ')}, got ${JSON.stringify(method)}`);
    const pseudo = numPseudo(this.template);
    if (method !== 'ptuning' && pseudo > 0) {
      throw new UserError(`method "${method}" learns its own prompt: the template must have no [P] tokens (it has ${pseudo})`);
    }
    if (method === 'prompt-tuning' && !((config.promptTuning?.numVirtualTokens ?? 0) > 0)) throw new UserError('method "prompt-tuning" needs promptTuning.numVirtualTokens ≥ 1');
    ({ rendered: this.rendered, placedFirst: this.placedFirst } = inputPlacement(config, this.template));
    const n = numPseudo(this.rendered) + this.placedFirst;
    const tokenDim = lm.info.embeddingSize ?? lm.info.hiddenSize;
    const encoderConfig = method === 'prompt-tuning' ? { ...config.encoder, type: 'embedding' as const } : config.encoder;
    this.encoder = n > 0 ? userInput(() => new PromptEncoder({ ...encoderConfig, numVirtualTokens: n, tokenDim })) : null;
    if (method === 'prefix') {
      if (!config.prefix) throw new UserError('method "prefix" needs prefix settings (numVirtualTokens, projection)');
      if (lm.info.past?.ptune === false) throw new UserError(`method "prefix": ${lm.info.family} models take no keys and values before the input here, so deep prompts cannot reach them (use ptuning or prompt-tuning)`);
      this.prefix = userInput(() => new PrefixEncoder({ ...config.prefix!, seed: config.encoder.seed }, lm.info));
      // the input's positions follow the prefix's (as in transformers with past keys and values)
      const room = lm.info.maxPositions - (lm.info.past?.positioned === false ? 0 : config.prefix.numVirtualTokens);
      if (config.maxLength > room) {
        throw new UserError(`maxLength ${config.maxLength} and the ${config.prefix.numVirtualTokens} prefix positions are more than the ${lm.info.maxPositions} positions of ${lm.info.source}: give a maxLength of at most ${room}`);
      }
    } else this.prefix = null;
    this.head = userInput(() => makeHead(config.head, lm.tokenizer, lm.info.vocabSize, lm.info.hiddenSize));
    this.programs = new PTuningPrograms(lm, this.encoder, this.head, this.prefix);
    if (config.optim.tuneLm && config.optim.lmDropout) this.programs.lmDropout = new Rng(config.loop.seed ^ 0x1d_d50f);
  }

  /** A run over `lm`, its prompt-tuning rows initialised from words when the config asks for it. */
  static async create(config: RunConfig, lm: LanguageModel): Promise<PTuning> {
    const run = new PTuning(config, lm);
    await run.initialise();
    return run;
  }

  /** What a new run does before training: prompt tuning's text initialisation. */
  protected async initialise(): Promise<void> {
    const words = this.config.method === 'prompt-tuning' ? this.config.promptTuning?.initFromWords : undefined;
    if (words) await initFromWords(this.encoder!, this.lm, words);
  }

  /**
   * The parameters training updates: the encoder's ("encoder.*"), deep prompts' ("prefix.*"), a linear head's
   * ("head.*"), and with tuneLm the LM's ("lm.*").
   */
  trainedParams(): Map<string, Parameter> {
    const out = new Map<string, Parameter>();
    for (const [k, v] of this.encoder?.params ?? []) out.set(`encoder.${k}`, v);
    for (const [k, v] of this.prefix?.params ?? []) out.set(`prefix.${k}`, v);
    for (const [k, v] of this.head.params ?? []) out.set(`head.${k}`, v);
    if (this.config.optim.tuneLm) for (const [k, v] of this.lm.params) out.set(`lm.${k}`, v);
    return out;
  }

  /** Renders records; too-long records are skipped (counted) or an error, as configured. */
  prepare(records: readonly Record<string, unknown>[], source: string, withTargets = true): { items: Item[]; skipped: number } {
    const items: Item[] = [];
    let skipped = 0;
    const info = this.lm.info;
    records.forEach((record, index) => {
      const where = `${source} record ${index + 1}`;
      let ex: RenderedExample | null;
      try {
        ex = renderExample(this.rendered, record, this.lm.tokenizer, info, {
          maxLength: this.config.maxLength - this.placedFirst,
          skipTooLong: this.config.skipTooLong,
          index,
        });
      } catch (e) {
        throw new UserError(`${source}: ${(e as Error).message}`);
      }
      if (!ex) {
        skipped++;
        return;
      }
      if (this.placedFirst) ex = withPeftPrefix(ex, this.placedFirst, info.special.pad);
      let target = -1;
      if (withTargets) {
        try {
          target = this.head.target(record, where);
        } catch (e) {
          throw new UserError((e as Error).message);
        }
      }
      items.push({ ex, target, index });
    });
    return { items, skipped };
  }

  private batch(items: readonly Item[]) {
    return collate(items.map((i) => i.ex), this.lm.info);
  }

  /** Per-class scores [B, K] for a batch of items. */
  scores(items: readonly Item[]): Promise<{ data: Float32Array; shape: number[] }> {
    return this.programs.scores(this.batch(items));
  }

  /** Mean loss of a batch, its gradients written into the trained parameters' `grad`. */
  lossAndGrads(items: readonly Item[]): Promise<{ loss: number; graded: Parameter[] }> {
    return this.programs.lossAndGrads(this.batch(items), items.map((i) => i.target));
  }

  /** Argmax (restricted to the head's predictable classes) and top-k per item. */
  async rank(items: readonly Item[], topK: number, batchSize = 32): Promise<{ top: number[][]; topScores: number[][] }> {
    const top: number[][] = [];
    const topScores: number[][] = [];
    for (let i = 0; i < items.length; i += batchSize) {
      const r = await this.programs.topK(this.batch(items.slice(i, i + batchSize)), topK, this.head.predictable);
      top.push(...r.indices);
      topScores.push(...r.values);
    }
    return { top, topScores };
  }

  async evaluateItems(items: readonly Item[], skipped = 0): Promise<EvalResult> {
    const { top } = await this.rank(items, 1);
    const predictions = top.map((t) => t[0]!);
    const targets = items.map((i) => i.target);
    return { metrics: classificationMetrics(predictions, targets, this.head), predictions, targets, skipped };
  }

  async predict(records: readonly Record<string, unknown>[], source: string, topK: number): Promise<Prediction[]> {
    const { items } = this.prepare(records, source, false);
    const { top, topScores } = await this.rank(items, topK);
    return items.map((it, r) => ({
      index: it.index,
      ...recordId(records[it.index]!),
      prediction: this.head.className(top[r]![0]!),
      scores: top[r]!.map((k, j) => ({ label: this.head.className(k), score: Math.exp(topScores[r]![j]!) })),
    }));
  }

  /**
   * What the training loop needs for training on `train` with model selection on `dev` (rendered items):
   * the step, the evaluation, the parameters, an optimizer (dispose it afterwards) and the schedule.
   */
  loopOptions(
    tr: readonly Item[],
    dv: readonly Item[],
    opts: { progress?: Progress; restoreBest?: boolean; stopRequested?: () => boolean; afterStep?: () => Promise<void> } = {},
  ): LoopOptions<Item> & { optimizer: Adam | AdamW } {
    if (tr.length === 0) throw new UserError('no training examples left after rendering');
    const c = this.config;
    const optimizer = this.makeOptimizer();
    const encoder = this.encoder;
    const prefix = this.prefix;
    const lmDropout = this.programs.lmDropout;
    return {
      config: c.loop,
      task: {
        examples: [...tr],
        lossAndGrads: (batch) => this.lossAndGrads(batch),
        evaluate: async (): Promise<DevResult> => {
          const r = await this.evaluateItems(dv);
          return { score: r.metrics[primaryMetric(this.head)]!, metrics: r.metrics };
        },
        ...((encoder?.hasDropout || prefix?.hasDropout || lmDropout) && {
          saveState: () => ({ dropout: encoder?.dropoutState, prefixDropout: prefix?.dropoutState, lmDropout: lmDropout?.state() }),
          restoreState: (st: unknown) => {
            const saved = st as { dropout?: number[]; prefixDropout?: number[]; lmDropout?: number[] } | null;
            if (saved?.dropout && encoder) encoder.dropoutState = saved.dropout;
            if (saved?.prefixDropout && prefix) prefix.dropoutState = saved.prefixDropout;
            if (saved?.lmDropout && lmDropout) lmDropout.restore(saved.lmDropout);
          },
        }),
      },
      params: this.trainedParams(),
      optimizer,
      lrScale: this.lrSchedule(tr.length),
      progress: opts.progress,
      onSaveBest: async (): Promise<Record<string, Uint8Array>> => {
        const table = await this.promptTable();
        return table ? { 'prompt_table.safetensors': safetensorsBytes({ prompt_embeddings: table }) } : {};
      },
      restoreBest: opts.restoreBest,
      stopRequested: opts.stopRequested,
      afterStep: opts.afterStep,
    };
  }

  /**
   * Trains on records held in memory, with no run directory: the same loop, steps and evaluations as
   * PTuningSession.train, each metrics record (train / eval lines) handed to `onLog`; the best weights are kept
   * in memory (loaded at the end with `restoreBest`). `stopRequested` ends training after the current step.
   */
  async trainInMemory(opts: {
    train: readonly Record<string, unknown>[];
    dev: readonly Record<string, unknown>[];
    onLog?: (record: Record<string, unknown>) => void;
    progress?: Progress;
    restoreBest?: boolean;
    stopRequested?: () => boolean;
    afterStep?: () => Promise<void>;
  }): Promise<TrainResult & { trainSkipped: number; devSkipped: number }> {
    const tr = this.prepare(opts.train, 'train');
    const dv = this.prepare(opts.dev, 'dev');
    const o = this.loopOptions(tr.items, dv.items, opts);
    try {
      const result = await runLoop(o, memoryStore(opts.onLog));
      return { ...result, trainSkipped: tr.skipped, devSkipped: dv.skipped };
    } catch (err) {
      if (err instanceof TrainingInterrupted) throw new TrainingStopped(err.step);
      throw err;
    } finally {
      o.optimizer.dispose();
    }
  }

  /** Adam or AdamW over `trainedParams()`: the prompt group, and with tuneLm the LM's decay / no-decay groups. */
  makeOptimizer(): Adam | AdamW {
    const c = this.config;
    const groups: ParamGroup[] = [];
    const prompt = new Map([
      ...prefixed(this.encoder?.params ?? new Map(), 'encoder.'),
      ...prefixed(this.prefix?.params ?? new Map(), 'prefix.'),
      ...prefixed(this.head.params ?? new Map(), 'head.'),
    ]);
    if (prompt.size > 0) groups.push({ name: 'prompt', params: prompt, lr: c.optim.lr, weightDecay: c.optim.weightDecay });
    if (c.optim.tuneLm) {
      groups.push(...decayGroups(prefixed(this.lm.params, 'lm.'), { lr: c.optim.lmLr, weightDecay: c.optim.lmWeightDecay, name: 'lm' }));
    }
    if (groups.length === 0) throw new UserError('nothing to train: no pseudo tokens, deep prompts or linear head, and --tune-lm is off');
    return c.optim.optimizer === 'adamw' ? new AdamW(groups) : new Adam(groups);
  }

  /** The learning-rate multiplier of the configured schedule for a run over `numExamples` training examples. */
  lrSchedule(numExamples: number): Schedule {
    const c = this.config;
    const stepsPerEpoch = Math.ceil(Math.ceil(numExamples / c.loop.batchSize) / c.loop.gradAccum);
    const totalSteps = c.loop.maxSteps > 0 ? Math.min(c.loop.maxSteps, stepsPerEpoch * c.loop.epochs) : stepsPerEpoch * c.loop.epochs;
    const warmupSteps = Math.round(c.optim.warmupRatio * totalSteps);
    const schedule: ScheduleConfig =
      c.optim.schedule === 'linear'
        ? { kind: 'linear', warmupSteps, totalSteps }
        : c.optim.schedule === 'exponential'
          ? { kind: 'exponential', gamma: c.optim.gamma }
          : { kind: 'constant', warmupSteps };
    return makeSchedule(schedule);
  }

  /**
   * The frozen prompt table, all inference needs: the encoder's rows [N, H], or for deep prompts the prefix table
   * [N, layers · 2 · kvDim] (PEFT's PREFIX_TUNING layout).
   */
  promptTable(): Promise<{ shape: number[]; data: Float32Array } | null> {
    if (this.prefix) return this.prefix.table();
    return this.encoder ? this.encoder.table() : Promise.resolve(null);
  }

  /** Another run over the same LM (e.g. the zero-shot reading of this one's template). */
  variant(config: RunConfig): Promise<PTuning> {
    return PTuning.create(config, this.lm);
  }

  /** Frees the LM unless it is shared with other sessions (`keepLm`). */
  dispose(opts: { keepLm?: boolean } = {}): void {
    if (!opts.keepLm) this.lm.dispose();
  }
}

/**
 * Where a run's prompt rows meet its input: the template as rendered and the rows placed before everything —
 * PEFT's layout (a template whose pseudo tokens all lead, with `peftLayout`), prompt tuning's rows, an imported
 * adapter's `peftPrefix`.
 */
export function inputPlacement(config: RunConfig, template: Template): { rendered: Template; placedFirst: number } {
  const method = config.method ?? 'ptuning';
  const pseudo = numPseudo(template);
  const leading = leadingPseudo(template);
  const peftLayout = method === 'ptuning' && config.peftLayout === true && leading === pseudo && pseudo > 0;
  const rendered = peftLayout ? { ...template, parts: template.parts.slice(template.parts.findIndex((p) => p.type !== 'pseudo')) } : template;
  const tuned = method === 'prompt-tuning' ? (config.promptTuning?.numVirtualTokens ?? 0) : 0;
  return { rendered, placedFirst: (config.peftPrefix ?? 0) + (peftLayout ? leading : 0) + tuned };
}

/** Pseudo tokens before the template's first other part. */
export function leadingPseudo(t: Template): number {
  let n = 0;
  for (const p of t.parts) {
    if (p.type !== 'pseudo') break;
    n += p.count;
  }
  return n;
}

/**
 * Prompt tuning's text initialisation (PEFT's PromptTuningInit.TEXT): the rows start as the input embeddings of
 * the text's tokens (as the model embeds them), repeated or cut to the number of virtual tokens.
 */
async function initFromWords(encoder: PromptEncoder, lm: LanguageModel, text: string): Promise<void> {
  const ids = lm.tokenizer.encode(text);
  if (ids.length === 0) throw new UserError(`--init-from-words: ${JSON.stringify(text)} has no tokens`);
  const emb = encoder.params.get('embedding.weight')!;
  const [n, d] = emb.shape as [number, number];
  const rows = await inputEmbeddings(lm, Array.from({ length: n }, (_, i) => ids[i % ids.length]!));
  if (rows.length !== n * d) throw new UserError(`--init-from-words: input embeddings are ${rows.length / n} wide, prompt rows ${d}`);
  emb.set(rows);
}

/** PEFT's placement: the virtual tokens before the whole input. */
export function withPeftPrefix(ex: RenderedExample, n: number, pad: number): RenderedExample {
  return {
    ids: [...new Array<number>(n).fill(pad), ...ex.ids],
    pseudoPositions: [...Array(n).keys(), ...ex.pseudoPositions.map((p) => p + n)],
    pseudoIndex: [...Array(n).keys(), ...ex.pseudoIndex.map((k) => k + n)],
    answerPosition: ex.answerPosition + n,
    tokenTypeIds: ex.tokenTypeIds ? [...new Array<number>(n).fill(0), ...ex.tokenTypeIds] : undefined,
  };
}

export function recordId(record: Record<string, unknown>): { id?: unknown } {
  const key = ['id', 'uuid', 'idx', 'guid'].find((k) => record[k] !== undefined);
  return key ? { id: record[key] } : {};
}

export function primaryMetric(head: Head): string {
  return head.spec.kind === 'answer' ? 'p@1' : 'accuracy';
}

/** accuracy and macro-F1 (label heads), P@1 (answer heads). */
export function classificationMetrics(pred: number[], gold: number[], head: Head): Record<string, number> {
  const n = gold.length;
  const correct = pred.filter((p, i) => p === gold[i]).length;
  const acc = n ? correct / n : 0;
  if (head.spec.kind === 'answer') return { 'p@1': acc, n };
  let f1sum = 0;
  for (let k = 0; k < head.numClasses; k++) {
    const tp = pred.filter((p, i) => p === k && gold[i] === k).length;
    const fp = pred.filter((p, i) => p === k && gold[i] !== k).length;
    const fn = pred.filter((p, i) => p !== k && gold[i] === k).length;
    f1sum += tp === 0 ? 0 : (2 * tp) / (2 * tp + fp + fn);
  }
  return { accuracy: acc, 'macro-f1': f1sum / head.numClasses, n };
}

/** Training in memory ended on request (`stopRequested`) after `step` steps. */
export class TrainingStopped extends Error {
  constructor(readonly step: number) {
    super(`training stopped at step ${step}`);
  }
}

/** The runtime a run trains on, as recorded in its config. */
export async function runtimeRecord(): Promise<{ name: string; threads: number }> {
  const rt = await getRuntime();
  return { name: rt.name, threads: rt.threads };
}
