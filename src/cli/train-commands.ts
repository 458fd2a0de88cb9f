import fs from 'node:fs';
import path from 'node:path';
import type { Command } from 'commander';
import { initEngine } from '../engine/index.js';
import { readRecords } from '../data/read.js';
import { loadModel } from '../models/load.js';
import type { TextTokenizer } from '../tokenizers/tokenizer.js';
import { Verbalizer, type LabelWords } from '../prompt/verbalizer.js';
import type { HeadSpec } from '../prompt/heads.js';
import { DEFAULT_LOOP, DEFAULT_METHOD, DEFAULT_OPTIM, METHODS, primaryMetric, PTuningSession, type MethodName, type RunConfig } from '../train/session.js';
import { numPseudo, parseTemplate } from '../prompt/template.js';
import { DEEP_DEFAULTS, TUNE_LM_DEFAULTS } from '../train/defaults.js';
import { TrainingInterrupted } from '../train/trainer.js';
import { exportPeft, exportTable, importPeft } from '../train/export.js';
import { exportOnnx } from '../export/onnx.js';
import { readRunConfig } from '../train/files.js';
import { checkDistinct, checkOutputDir, claimOutputDir, EXPORT_OUTPUTS, presentOutputs, RUN_OUTPUTS, type ClaimedOutput } from '../train/rundir.js';
import { makeProgress } from '../util/progress.js';
import { UserError } from '../util/errors.js';
import {
  addQuantizeOptions, checkMaxLength, evalSchema, parseListOption, exportSchema, importSchema, parseOptions, predictSchema, quantizeFrom, trainSchema,
  type TrainOptions,
} from './options.js';
import { asText } from './options.js';

const notice = (line: string) => process.stderr.write(`ptune: ${line}\n`);

interface HeadOptions {
  labelField?: string;
  verbalizer?: string;
  tokenRule?: 'first' | 'mean' | 'sum' | 'max';
  answerField?: string;
  head?: 'verbalizer' | 'linear';
  labels?: string[];
}

function labelWords(spec: string): LabelWords {
  try {
    return Verbalizer.parseSpec(spec);
  } catch (e) {
    throw new UserError(`--verbalizer: ${(e as Error).message}`);
  }
}

/**
 * `--label-field F --verbalizer SPEC`, `--label-field F --head linear [--labels a,b]` or
 * `--answer-field F [--answer-vocab FILE]` → a head spec (`trainFile`: where a linear head finds its labels).
 */
function headFrom(o: HeadOptions, trainFile?: string, seed = 0): HeadSpec {
  if (o.answerField && o.labelField) throw new UserError('give either --label-field/--verbalizer or --answer-field, not both');
  if (o.answerField) {
    if (o.head === 'linear') throw new UserError('--head linear classifies by --label-field; --answer-field answers with one vocabulary token');
    if (o.verbalizer) throw new UserError('--verbalizer goes with --label-field, not with --answer-field');
    return { kind: 'answer', answerField: o.answerField };
  }
  if (o.head === 'linear') {
    if (!o.labelField) throw new UserError('--head linear needs --label-field');
    if (o.verbalizer) throw new UserError('--head linear has no label words: drop --verbalizer');
    return { kind: 'linear', labelField: o.labelField, labels: o.labels ?? labelsIn(trainFile, o.labelField), seed };
  }
  if (!o.labelField || !o.verbalizer) throw new UserError('give --label-field and --verbalizer (classification), --label-field and --head linear, or --answer-field (one-token answers)');
  return { kind: 'label', labelField: o.labelField, labelWords: labelWords(o.verbalizer), tokenRule: o.tokenRule };
}

/** The distinct values of a label field, sorted. */
function labelsIn(file: string | undefined, field: string): string[] {
  if (!file) throw new UserError('--head linear: give --labels (no training file to read them from)');
  const labels = new Set<string>();
  readRecords(file).forEach((r, i) => {
    const v = r[field];
    if (v === undefined || v === null) throw new UserError(`${file} record ${i + 1}: no field "${field}"`);
    labels.add(String(v));
  });
  if (labels.size < 2) throw new UserError(`${file}: field "${field}" has ${labels.size} distinct value(s); a classifier needs two`);
  return [...labels].sort();
}

function answerVocabIds(tok: TextTokenizer, file: string): number[] {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new UserError(`--answer-vocab: ${file}: ${(e as Error).message}`);
  }
  const words = text.split(/\r?\n/).map((w) => w.trim()).filter(Boolean);
  const ids = new Set<number>();
  for (const w of words) {
    const t = tok.encodeWord(tok.lowercase ? w.toLowerCase() : w);
    if (t.length === 1) ids.add(t[0]!);
  }
  if (ids.size === 0) throw new UserError(`--answer-vocab: ${file}: no word in it is a single token of the model's vocabulary`);
  return [...ids].sort((a, b) => a - b);
}

/** A model as a run records it: a local path made absolute, a Hub id as given. */
const modelSpec = (m: string) => (fs.existsSync(m) ? path.resolve(m) : m);

function writeJsonl(rows: unknown[]): void {
  for (const r of rows) process.stdout.write(JSON.stringify(r) + '\n');
}

/**
 * `--method` when none is given: P-tuning v1 for a template with `[P]` tokens (or with --tune-lm: the LM is
 * what trains), otherwise deep prompts — with the LM frozen and nothing but anchor words in the template, the
 * best of the methods measured in docs/methods.md.
 */
export function defaultMethod(template: string | undefined, tuneLm: boolean, legacyBertOrder = false): MethodName {
  if (tuneLm || template === undefined) return DEFAULT_METHOD;
  try {
    return numPseudo(parseTemplate(template, { legacyBertOrder })) > 0 ? DEFAULT_METHOD : 'prefix';
  } catch {
    return DEFAULT_METHOD; // the template's own error comes when the run is built
  }
}

function withMethod(o: TrainOptions): TrainOptions & { method: MethodName } {
  return { ...o, method: o.method ?? defaultMethod(o.template, o.tuneLm ?? false, o.legacyBertOrder ?? false) };
}

/** Whether option `key` was given on the command line (not a default). */
export type Given = (key: string) => boolean;

/** The options that apply only with others, given without them. */
function checkCombinations(o: TrainOptions & { method: MethodName }, given: Given): void {
  const only = (key: string, flag: string, ok: boolean, what: string) => {
    if (given(key) && !ok) throw new UserError(`${flag} applies ${what} only`);
  };
  only('lmLr', '--lm-lr', Boolean(o.tuneLm), 'with --tune-lm');
  only('lmWeightDecay', '--lm-weight-decay', Boolean(o.tuneLm), 'with --tune-lm');
  only('lmDropout', '--no-lm-dropout', Boolean(o.tuneLm), 'with --tune-lm');
  only('tokenRule', '--token-rule', Boolean(o.labelField), 'with --label-field/--verbalizer');
  only('answerVocab', '--answer-vocab', Boolean(o.answerField), 'with --answer-field');
  only('gamma', '--gamma', o.schedule === 'exponential', 'with --schedule exponential');
  only('warmup', '--warmup', o.schedule !== 'exponential', 'with --schedule constant or linear');
  only('encoderDropout', '--encoder-dropout', o.encoder === 'lstm', 'with --encoder lstm');
  only('encoderPreset', '--encoder-preset', o.encoder === 'lstm', 'with --encoder lstm');
  only('labels', '--labels', o.head === 'linear', 'with --head linear');
  only('virtualTokens', '--virtual-tokens', o.method !== 'ptuning', 'with --method prefix or prompt-tuning (ptuning: [P] tokens in the template)');
  for (const k of ['prefixProjection', 'prefixHidden', 'prefixDropout'] as const) only(k, flagOf(k), o.method === 'prefix', 'with --method prefix');
  only('prefixHidden', '--prefix-hidden', Boolean(o.prefixProjection), 'with --prefix-projection');
  only('initFromWords', '--init-from-words', o.method === 'prompt-tuning', 'with --method prompt-tuning');
  only('peftLayout', '--no-peft-layout', o.method === 'ptuning', 'with --method ptuning');
  if (quantizeFrom(o) && o.tuneLm) throw new UserError('--quantize cannot be combined with --tune-lm: quantized weights are frozen (tune the LM in fp32, or P-tune the prompt alone)');
  if (o.encoder === 'lstm' && o.encoderPreset === 'thudm' && o.encoderHidden !== undefined && o.encoderHidden % 2 !== 0) {
    throw new UserError(`--encoder-hidden: expected an even integer with --encoder-preset thudm (split over both LSTM directions), got ${o.encoderHidden}`);
  }
}

function freshConfig(o: TrainOptions & { method: MethodName }): RunConfig {
  for (const [key, flag] of [['model', '--model'], ['train', '--train'], ['dev', '--dev'], ['template', '--template']] as const) {
    if (o[key] === undefined) throw new UserError(`${flag} is required (or --resume to continue the run in --out)`);
  }
  return {
    version: 1,
    model: modelSpec(o.model!),
    template: o.template!,
    legacyBertOrder: o.legacyBertOrder ?? false,
    head: headFrom(o, o.train, o.seed),
    method: o.method,
    ...(o.method === 'prefix' && {
      prefix: { numVirtualTokens: o.virtualTokens, projection: o.prefixProjection ?? false, hiddenSize: o.prefixHidden, dropout: o.prefixDropout },
    }),
    ...(o.method === 'prompt-tuning' && { promptTuning: { numVirtualTokens: o.virtualTokens, initFromWords: o.initFromWords } }),
    ...(o.method === 'ptuning' && o.peftLayout && { peftLayout: true }),
    encoder: {
      type: o.encoder,
      hiddenSize: o.encoderHidden,
      preset: o.encoderPreset,
      dropout: o.encoderDropout,
      seed: o.seed,
    },
    maxLength: o.maxLength,
    skipTooLong: o.skipTooLong ?? false,
    data: { train: path.resolve(o.train!), dev: path.resolve(o.dev!) },
    loop: {
      ...DEFAULT_LOOP,
      epochs: o.epochs,
      maxSteps: o.maxSteps,
      batchSize: o.batchSize,
      gradAccum: o.gradAccum,
      maxGradNorm: o.maxGradNorm,
      evalEvery: o.evalEvery,
      patience: o.patience,
      saveEvery: o.saveEvery,
      seed: o.seed,
    },
    optim: {
      optimizer: o.optimizer ?? (o.tuneLm ? TUNE_LM_DEFAULTS.optimizer : DEFAULT_OPTIM.optimizer),
      lr: o.lr ?? (o.method !== 'ptuning' ? DEEP_DEFAULTS.lr : o.tuneLm ? TUNE_LM_DEFAULTS.lr : DEFAULT_OPTIM.lr),
      weightDecay: o.weightDecay,
      schedule: o.schedule ?? (o.tuneLm ? TUNE_LM_DEFAULTS.schedule : DEFAULT_OPTIM.schedule),
      warmupRatio: o.warmup,
      gamma: o.gamma,
      tuneLm: o.tuneLm ?? false,
      lmLr: o.lmLr ?? TUNE_LM_DEFAULTS.lmLr,
      lmWeightDecay: o.lmWeightDecay,
      ...(o.tuneLm && { lmDropout: o.lmDropout }),
    },
    ...quantizeOf(o),
  };
}

/** The run config's `quantize` from the options (absent for none). */
function quantizeOf(o: TrainOptions): Pick<RunConfig, 'quantize'> {
  const q = quantizeFrom(o);
  return q ? { quantize: q } : {};
}

/**
 * The run config `ptune train` builds from its options (commander's values: text, or the declared defaults), after
 * every check that needs no model; `given` says which options were on the command line.
 */
export function trainConfigFromOptions(raw: Record<string, unknown>, given: Given): RunConfig {
  const o = withMethod(parseOptions(trainSchema, raw));
  checkCombinations(o, given);
  return freshConfig(o);
}

/** An option as the run's config records it; `loop` ones may change on resume. */
interface Knob {
  key: keyof TrainOptions;
  have(c: RunConfig): unknown;
  want?(o: TrainOptions): unknown;
  /** may change on resume: the new value goes into the config */
  loop?: 'epochs' | 'maxSteps' | 'patience' | 'saveEvery';
}

const labelHead = (c: RunConfig) => (c.head.kind === 'label' ? c.head : undefined);
const answerHead = (c: RunConfig) => (c.head.kind === 'answer' ? c.head : undefined);

const KNOBS: Knob[] = [
  { key: 'model', have: (c) => c.model, want: (o) => modelSpec(o.model!) },
  { key: 'train', have: (c) => c.data?.train, want: (o) => path.resolve(o.train!) },
  { key: 'dev', have: (c) => c.data?.dev, want: (o) => path.resolve(o.dev!) },
  { key: 'template', have: (c) => c.template },
  { key: 'legacyBertOrder', have: (c) => c.legacyBertOrder ?? false },
  { key: 'labelField', have: (c) => labelHead(c)?.labelField },
  { key: 'verbalizer', have: (c) => labelHead(c)?.labelWords, want: (o) => labelWords(o.verbalizer!) },
  { key: 'tokenRule', have: (c) => (labelHead(c) ? (labelHead(c)!.tokenRule ?? 'first') : undefined) },
  { key: 'answerField', have: (c) => answerHead(c)?.answerField },
  { key: 'head', have: (c) => (c.head.kind === 'linear' ? 'linear' : c.head.kind === 'label' ? 'verbalizer' : undefined) },
  { key: 'labels', have: (c) => (c.head.kind === 'linear' ? c.head.labels : undefined) },
  { key: 'method', have: (c) => c.method ?? 'ptuning' },
  { key: 'virtualTokens', have: (c) => c.prefix?.numVirtualTokens ?? c.promptTuning?.numVirtualTokens },
  { key: 'prefixProjection', have: (c) => c.prefix?.projection ?? false },
  { key: 'prefixHidden', have: (c) => c.prefix?.hiddenSize },
  { key: 'prefixDropout', have: (c) => c.prefix?.dropout ?? 0 },
  { key: 'initFromWords', have: (c) => c.promptTuning?.initFromWords },
  { key: 'peftLayout', have: (c) => c.peftLayout ?? false },
  { key: 'encoder', have: (c) => c.encoder.type },
  { key: 'encoderHidden', have: (c) => c.encoder.hiddenSize },
  { key: 'encoderPreset', have: (c) => c.encoder.preset ?? 'thudm' },
  { key: 'encoderDropout', have: (c) => c.encoder.dropout ?? 0 },
  { key: 'lr', have: (c) => c.optim.lr },
  { key: 'weightDecay', have: (c) => c.optim.weightDecay },
  { key: 'optimizer', have: (c) => c.optim.optimizer },
  { key: 'schedule', have: (c) => c.optim.schedule },
  { key: 'warmup', have: (c) => c.optim.warmupRatio },
  { key: 'gamma', have: (c) => c.optim.gamma },
  { key: 'tuneLm', have: (c) => c.optim.tuneLm },
  { key: 'quantize', have: (c) => c.quantize ?? null, want: (o) => quantizeFrom(o) ?? null },
  { key: 'lmLr', have: (c) => c.optim.lmLr },
  { key: 'lmWeightDecay', have: (c) => c.optim.lmWeightDecay },
  { key: 'lmDropout', have: (c) => c.optim.lmDropout ?? false, want: (o) => Boolean(o.tuneLm) && o.lmDropout },
  { key: 'batchSize', have: (c) => c.loop.batchSize },
  { key: 'gradAccum', have: (c) => c.loop.gradAccum },
  { key: 'maxGradNorm', have: (c) => c.loop.maxGradNorm },
  { key: 'evalEvery', have: (c) => c.loop.evalEvery },
  { key: 'maxLength', have: (c) => c.maxLength },
  { key: 'skipTooLong', have: (c) => c.skipTooLong },
  { key: 'seed', have: (c) => c.loop.seed },
  { key: 'epochs', have: (c) => c.loop.epochs, loop: 'epochs' },
  { key: 'maxSteps', have: (c) => c.loop.maxSteps, loop: 'maxSteps' },
  { key: 'patience', have: (c) => c.loop.patience, loop: 'patience' },
  { key: 'saveEvery', have: (c) => c.loop.saveEvery, loop: 'saveEvery' },
];

const flagOf = (key: string) => `--${key.replace(/[A-Z]/g, (ch) => `-${ch.toLowerCase()}`)}`;
const shown = (v: unknown) => (v === undefined ? '(none)' : typeof v === 'number' || typeof v === 'boolean' ? String(v) : JSON.stringify(v));
const same = (a: unknown, b: unknown) => JSON.stringify(a) === JSON.stringify(b);

/**
 * `--resume` with options: those equal to the run's pass; --epochs, --max-steps, --patience and --save-every
 * change the run (said on stderr); any other difference is an error listing them all.
 */
function reconcile(config: RunConfig, o: TrainOptions, given: Given, cfgFile: string): { config: RunConfig; changes: string[] } {
  const conflicts: string[] = [];
  const changes: string[] = [];
  let loop = { ...config.loop };
  for (const k of KNOBS) {
    if (!given(k.key)) continue;
    const want = k.want ? k.want(o) : o[k.key];
    const have = k.have(config);
    if (same(want, have)) continue;
    const flag = flagOf(k.key);
    if (k.loop) {
      loop = { ...loop, [k.loop]: want as number };
      changes.push(`${flag} ${shown(want)} (was ${shown(have)})`);
    } else {
      conflicts.push(`${flag} ${shown(want)} (the run has ${shown(have)})`);
    }
  }
  if (conflicts.length > 0) {
    throw new UserError(
      `--resume: options differ from ${cfgFile}: ${conflicts.join(', ')}; on resume only --epochs, --max-steps, --patience and --save-every may change (--overwrite trains a new run)`,
    );
  }
  return { config: { ...config, loop }, changes };
}

const SIGNAL_EXIT: Record<string, number> = { SIGINT: 130, SIGTERM: 143 };

/**
 * SIGINT / SIGTERM while `body` runs: the first asks training to stop after the current step with a checkpoint,
 * the second exits at once (every file of a run is replaced atomically, so none is left half written).
 */
async function withStopSignals<T>(onSecond: (sig: NodeJS.Signals) => string, body: (stopped: () => NodeJS.Signals | null) => Promise<T>): Promise<T> {
  let stop: NodeJS.Signals | null = null;
  const handler = (sig: NodeJS.Signals) => {
    if (stop) {
      process.stderr.write(`\nptune: ${onSecond(sig)}\n`);
      process.exit(SIGNAL_EXIT[sig] ?? 1);
    }
    stop = sig;
    process.stderr.write(`\nptune: ${sig}: stopping after the current step with a checkpoint (${sig === 'SIGINT' ? 'Ctrl-C' : sig} again stops at once)\n`);
  };
  process.on('SIGINT', handler);
  process.on('SIGTERM', handler);
  try {
    return await body(() => stop);
  } finally {
    process.removeListener('SIGINT', handler);
    process.removeListener('SIGTERM', handler);
  }
}

export function registerTrainCommands(program: Command): void {
  const train = program
    .command('train')
    .description('P-tune a prompt for a task (frozen LM by default) and write a run directory')
    .option('--model <dir>', 'model directory, checkpoint or Hub id (required unless --resume)')
    .option('--train <file>', 'training data (.jsonl, .json, .csv, .tsv) (required unless --resume)')
    .option('--dev <file>', 'dev data for model selection (required unless --resume)')
    .option('--template <t>', 'template, e.g. "{sentence} [P*3] It was [MASK] ." or the LAMA tuple "3,3,3" (required unless --resume)')
    .requiredOption('--out <dir>', 'run directory')
    .option('--label-field <f>', 'record field holding the label')
    .option('--verbalizer <spec>', 'label words: JSON file, inline JSON, or "neg:bad,pos:good"')
    .option('--token-rule <r>', 'multi-token label words: first|mean|sum|max', 'first')
    .option('--answer-field <f>', 'record field holding a one-token answer (open vocabulary)')
    .option('--answer-vocab <file>', 'restrict answers to these words (one per line)')
    .option('--head <kind>', 'classification head: verbalizer (label words at [MASK]) or linear (a layer over [CLS] / the last token)')
    .option('--labels <list>', '--head linear: the classes (default: the label field\'s values in --train, sorted)', parseListOption)
    .option('--method <m>', `how the prompt is learned: ${METHODS.join('|')} (default: ptuning when the template has [P] tokens or with --tune-lm, else prefix)`)
    .option('--virtual-tokens <n>', 'prefix / prompt-tuning: virtual tokens', asText, DEEP_DEFAULTS.numVirtualTokens)
    .option('--prefix-projection', 'prefix: compute the keys and values with an MLP from smaller embeddings (PEFT prefix_projection)')
    .option('--prefix-hidden <n>', 'prefix: width of the projection MLP (default the key/value width)')
    .option('--prefix-dropout <x>', 'prefix: dropout on the keys and values while training, in [0, 1)', asText, 0)
    .option('--init-from-words <text>', 'prompt-tuning: start the rows as these words\' embeddings')
    .option('--no-peft-layout', 'ptuning: keep [CLS]/BOS first when all pseudo tokens lead the template (PEFT puts them before it)')
    .option('--no-baselines', 'skip the majority and zero-shot dev baselines')
    .option('--encoder <type>', 'prompt encoder: lstm|mlp|embedding', 'lstm')
    .option('--encoder-hidden <n>', 'encoder hidden size (default: the LM hidden size)')
    .option('--encoder-preset <p>', 'lstm shapes: thudm (hidden split over both directions) or peft (hidden per direction)', 'thudm')
    .option('--encoder-dropout <x>', 'dropout between LSTM layers, in [0, 1)', asText, 0)
    .option('--lr <x>', `learning rate of the prompt and head (> 0; default ${DEFAULT_OPTIM.lr}, with --tune-lm ${TUNE_LM_DEFAULTS.lr}, prefix / prompt-tuning ${DEEP_DEFAULTS.lr})`)
    .option('--weight-decay <x>', 'prompt encoder weight decay (≥ 0)', asText, DEFAULT_OPTIM.weightDecay)
    .option('--optimizer <name>', `adam|adamw (default ${DEFAULT_OPTIM.optimizer}; with --tune-lm ${TUNE_LM_DEFAULTS.optimizer})`)
    .option('--schedule <s>', `constant|linear|exponential (default ${DEFAULT_OPTIM.schedule}; with --tune-lm ${TUNE_LM_DEFAULTS.schedule})`)
    .option('--warmup <ratio>', 'warmup fraction of all steps, in [0, 1]', asText, DEFAULT_OPTIM.warmupRatio)
    .option('--gamma <x>', 'exponential schedule: multiplier per epoch, in (0, 1]', asText, DEFAULT_OPTIM.gamma)
    .option('--tune-lm', 'tune the LM jointly with the prompt')
    .option('--lm-lr <x>', 'LM learning rate with --tune-lm', asText, TUNE_LM_DEFAULTS.lmLr)
    .option('--lm-weight-decay <x>', 'LM weight decay with --tune-lm', asText, DEFAULT_OPTIM.lmWeightDecay)
    .option('--no-lm-dropout', "with --tune-lm: train the LM without the dropout rates of its config (default: with them, as Hugging Face trains)")
    .option('--batch-size <n>', 'batch size (≥ 1)', asText, DEFAULT_LOOP.batchSize)
    .option('--grad-accum <n>', 'micro-batches per optimizer step (≥ 1)', asText, DEFAULT_LOOP.gradAccum)
    .option('--max-grad-norm <x>', 'gradient clipping (0 = off)', asText, DEFAULT_LOOP.maxGradNorm)
    .option('--epochs <n>', 'epochs (≥ 1; may grow on --resume)', asText, DEFAULT_LOOP.epochs)
    .option('--max-steps <n>', 'stop after N optimizer steps (0 = no limit)', asText, 0)
    .option('--eval-every <n>', 'evaluate every N steps (0 = every epoch)', asText, 0)
    .option('--patience <n>', 'early stop after N evaluations without dev gain (0 = off)', asText, 0)
    .option('--save-every <n>', 'checkpoint last/ every N steps (0 = at evaluations only)', asText, DEFAULT_LOOP.saveEvery)
    .option('--max-length <n>', 'maximum tokens per example (at most the model\'s positions)', asText, 128)
    .option('--skip-too-long', 'skip (and count) records that cannot fit instead of failing')
    .option('--legacy-bert-order', 'tuple templates in THUDM\'s legacy BERT order [P] [MASK] [P] {sub_label} [P]')
    .option('--seed <n>', 'seed', asText, DEFAULT_LOOP.seed)
    .option('--resume', 'continue the run in --out from its last checkpoint')
    .option('--overwrite', 'replace the run in --out')
    .option('--quiet', 'no progress output');
  addQuantizeOptions(train).action(async (raw: Record<string, unknown>, cmd: Command) => {
      const o = withMethod(parseOptions(trainSchema, raw));
      const given: Given = (key) => cmd.getOptionValueSource(key) === 'cli';
      const out = path.resolve(o.out);
      checkOutputDir(out, RUN_OUTPUTS, { resume: o.resume, overwrite: o.overwrite });
      const cfgFile = path.join(out, 'config.json');
      let config: RunConfig;
      let changes: string[] = [];
      if (o.resume) {
        quantizeFrom(o); // the --quant-* options need --quantize here too
        ({ config, changes } = reconcile(readRunConfig(cfgFile), o, given, cfgFile));
      } else {
        checkCombinations(o, given);
        config = freshConfig(o);
      }

      await initEngine();
      const lm = await loadModel(config.model, { trainable: config.optim.tuneLm, quantize: config.quantize });
      let session: PTuningSession | undefined;
      let claim: ClaimedOutput | undefined;
      try {
        // the default length is at most the positions the model has left after a prefix
        const room = lm.info.maxPositions - (config.prefix?.numVirtualTokens ?? 0);
        if (!o.resume && !given('maxLength')) config = { ...config, maxLength: Math.min(config.maxLength, room) };
        checkMaxLength(config.maxLength, lm.info.maxPositions, lm.info.source, o.resume && !given('maxLength') ? `${cfgFile}: maxLength` : '--max-length');
        if (o.answerVocab) {
          const ids = answerVocabIds(lm.tokenizer, o.answerVocab);
          if (config.head.kind !== 'answer') throw new UserError('--answer-vocab applies with --answer-field only');
          if (o.resume && !same(config.head.answerVocab, ids)) throw new UserError(`--resume: --answer-vocab ${o.answerVocab} differs from the answer vocabulary of ${cfgFile}`);
          config = { ...config, head: { ...config.head, answerVocab: ids } };
        }
        session = await PTuningSession.create(config, lm);
        const progress = makeProgress({ quiet: o.quiet });
        const s = session;
        const resumeHint = `resume with: ptune train --out ${o.out} --resume`;
        const r = await withStopSignals(
          (sig) => `${sig} again: stopped at once; ${o.out} keeps its last complete checkpoint (${resumeHint})`,
          async (stopped) => {
            try {
              return await s.train({
                runDir: out,
                resume: o.resume ?? false,
                progress,
                baselines: o.baselines,
                stopRequested: () => stopped() !== null,
                beforeWrite: (resumedFrom) => {
                  claim = claimOutputDir(out, RUN_OUTPUTS, { resume: o.resume, overwrite: o.overwrite }, notice);
                  claim.clear();
                  if (changes.length > 0) notice(`resuming ${o.out} with ${changes.join(', ')}`);
                  if (o.resume && !resumedFrom) notice(`${path.join(out, 'last')} holds no checkpoint yet: training starts at step 0 with the run's config`);
                },
              });
            } catch (e) {
              const sig = stopped();
              if (e instanceof TrainingInterrupted && sig) {
                throw new UserError(`stopped by ${sig} at step ${e.step}: checkpoint in ${e.checkpoint}; ${resumeHint}`, SIGNAL_EXIT[sig]);
              }
              throw e;
            }
          },
        );
        console.log(
          JSON.stringify({
            ...(r.baselines && {
              majority: r.baselines.majority.metrics[primaryMetric(s.head)],
              zeroShot: r.baselines.zeroShot?.metrics[primaryMetric(s.head)],
            }),
            run: o.out,
            best: r.bestScore,
            bestStep: r.bestStep,
            bestEpoch: r.bestEpoch + 1,
            steps: r.step,
            stop: r.stopReason,
            seconds: Number(r.seconds.toFixed(1)),
            trainSkipped: r.trainSkipped,
            devSkipped: r.devSkipped,
          }),
        );
      } finally {
        (claim as ClaimedOutput | undefined)?.release();
        if (session) session.dispose();
        else lm.dispose();
      }
    });

  const evalCmd = program
    .command('eval')
    .description('evaluate a run (best checkpoint) on a data file')
    .requiredOption('--run <dir>', 'run directory')
    .requiredOption('--data <file>', 'data file with labels/answers')
    .option('--checkpoint <which>', 'best|last', 'best')
    .option('--json', 'print JSON');
  addQuantizeOptions(evalCmd, "the run's LM (default: as the run trained)").action(async (raw: Record<string, unknown>) => {
      const o = parseOptions(evalSchema, raw);
      const quantize = quantizeFrom(o);
      await initEngine();
      const session = await PTuningSession.load(o.run, o.checkpoint, undefined, { quantize });
      try {
        const r = await session.evaluateFile(o.data);
        if (o.json) console.log(JSON.stringify(r.metrics));
        else for (const [k, v] of Object.entries(r.metrics)) console.log(`${k.padEnd(10)} ${Number.isInteger(v) ? v : v.toFixed(4)}`);
      } finally {
        session.dispose();
      }
    });

  const predict = program
    .command('predict')
    .description('predict with a run: JSONL with the input index, prediction and top-k scores')
    .requiredOption('--run <dir>', 'run directory')
    .option('--data <file>', 'data file')
    .option('--text <json>', 'one record as JSON, e.g. \'{"sentence":"a fine film"}\'')
    .option('--top <k>', 'scores to list (≥ 1; at most the number of classes)', asText, 5)
    .option('--checkpoint <which>', 'best|last', 'best');
  addQuantizeOptions(predict, "the run's LM (default: as the run trained)").action(async (raw: Record<string, unknown>) => {
      const o = parseOptions(predictSchema, raw);
      const quantize = quantizeFrom(o);
      if (!o.data === !o.text) throw new UserError('give exactly one of --data FILE or --text JSON');
      let records: Record<string, unknown>[];
      if (o.text) {
        let value: unknown;
        try {
          value = JSON.parse(o.text);
        } catch (e) {
          throw new UserError(`--text is not valid JSON: ${(e as Error).message}`);
        }
        if (value === null || typeof value !== 'object' || Array.isArray(value)) throw new UserError('--text: expected a JSON object, e.g. \'{"sentence":"a fine film"}\'');
        records = [value as Record<string, unknown>];
      } else {
        records = readRecords(o.data!);
      }
      await initEngine();
      const session = await PTuningSession.load(o.run, o.checkpoint, undefined, { quantize });
      try {
        const classes = session.head.predictable?.length ?? session.head.numClasses;
        writeJsonl(await session.predict(records, o.data ?? '--text', Math.min(o.top, classes)));
      } finally {
        session.dispose();
      }
    });

  const exportCmd = program
    .command('export')
    .description('export a run: a PEFT adapter (P_TUNING, PREFIX_TUNING or PROMPT_TUNING), the bare prompt table, or a self-contained ONNX model')
    .requiredOption('--run <dir>', 'run directory')
    .requiredOption('--out <dir>', 'output directory')
    .option('--format <f>', 'peft|table|onnx (model.onnx + tokenizer.json + ptune.json: the LM with the prompt baked in)', 'peft')
    .option('--checkpoint <which>', 'best|last', 'best')
    .option('--batch <n>', 'onnx: rows of the exported graph (inputs are [batch, the run\'s max length])', asText, 1)
    .option('--top <k>', 'onnx, answer tasks: answers returned per row', asText, 5)
    .option('--external-data', 'onnx: weights in model.onnx.data beside the graph (default: only past 1 GiB)')
    .option('--overwrite', 'replace an export in --out');
  addQuantizeOptions(exportCmd, "the run's LM while exporting (default: as the run trained; onnx: none)").action(async (raw: Record<string, unknown>) => {
      const o = parseOptions(exportSchema, raw);
      const quantize = quantizeFrom(o);
      if (o.format === 'onnx' && quantize) {
        throw new UserError('--format onnx exports the float LM (standard ONNX ops): --quantize applies to the peft and table formats only');
      }
      const out = path.resolve(o.out);
      if (path.resolve(o.run) === out) throw new UserError(`--out ${o.out} is the run itself: export into another folder`);
      checkDistinct(out, o.run, '--run');
      if (presentOutputs(out, RUN_OUTPUTS).some((n) => n !== 'config.json')) {
        throw new UserError(`--out ${o.out} holds a training run: export into another folder`);
      }
      checkOutputDir(out, EXPORT_OUTPUTS, { overwrite: o.overwrite });
      await initEngine();
      // an ONNX export holds the float LM, whatever the run trained with
      const session = await PTuningSession.load(o.run, o.checkpoint, undefined, { quantize: o.format === 'onnx' ? null : quantize });
      let claim: ClaimedOutput | undefined;
      try {
        const beforeWrite = () => {
          claim = claimOutputDir(out, EXPORT_OUTPUTS, { overwrite: o.overwrite }, notice);
          claim.clear();
        };
        if (o.format === 'peft') {
          const compat = await exportPeft(session, out, { beforeWrite });
          console.log(`wrote a ${compat.peftType} adapter (task_type ${compat.taskType}) to ${o.out}`);
          if (!compat.reproducible) notice(`warning: PEFT alone will not reproduce this run (ptune import-peft does): ${compat.notes.join('; ')}`);
          else for (const n of compat.notes) console.log(`  ${n}`);
        } else if (o.format === 'table') {
          await exportTable(session, out, { beforeWrite });
          console.log(`wrote the prompt table to ${o.out}`);
        } else {
          const spec = await exportOnnx(session, out, { batch: o.batch, topK: o.top, externalData: o.externalData ? true : 'auto', beforeWrite });
          console.log(`wrote an ONNX model (${spec.files.externalData ? `${spec.files.model} + ${spec.files.externalData}` : spec.files.model}, ${spec.files.tokenizer}, ptune.json) to ${o.out}`);
        }
      } finally {
        (claim as ClaimedOutput | undefined)?.release();
        session.dispose();
      }
    });

  program
    .command('import-peft')
    .description('make a ptune run from a PEFT P_TUNING, PROMPT_TUNING or PREFIX_TUNING adapter (for eval/predict)')
    .requiredOption('--adapter <dir>', 'adapter directory (adapter_config.json + adapter_model.safetensors)')
    .requiredOption('--model <dir>', 'base model')
    .requiredOption('--out <dir>', 'run directory to create')
    .option('--template <t>', 'input template after the virtual tokens (adapters from PEFT)')
    .option('--label-field <f>', 'record field holding the label')
    .option('--verbalizer <spec>', 'label words')
    .option('--answer-field <f>', 'record field holding a one-token answer')
    .option('--max-length <n>', 'maximum tokens per example (default: the adapter\'s, else 128)')
    .option('--overwrite', 'replace the run in --out')
    .action(async (raw: Record<string, unknown>) => {
      const o = parseOptions(importSchema, raw);
      const out = path.resolve(o.out);
      checkDistinct(out, o.adapter, '--adapter');
      checkOutputDir(out, RUN_OUTPUTS, { overwrite: o.overwrite });
      const head = o.labelField || o.answerField ? headFrom(o) : undefined;
      if (head?.kind === 'linear') throw new UserError('import-peft: a linear head comes from the adapter\'s ptune_head.safetensors, not from options');
      await initEngine();
      const lm = await loadModel(o.model);
      let claim: ClaimedOutput | undefined;
      try {
        if (o.maxLength !== undefined) checkMaxLength(o.maxLength, lm.info.maxPositions, lm.info.source);
        const model = modelSpec(o.model);
        await importPeft(
          {
            adapterDir: o.adapter,
            model,
            runDir: out,
            template: o.template,
            head,
            maxLength: o.maxLength,
            beforeWrite: () => {
              claim = claimOutputDir(out, RUN_OUTPUTS, { overwrite: o.overwrite }, notice);
              claim.clear();
            },
          },
          lm,
        );
        const session = await PTuningSession.load(out, 'best', lm);
        const n = session.prefix?.config.numVirtualTokens ?? session.encoder?.config.numVirtualTokens ?? 0;
        console.log(`imported ${n} virtual tokens${session.prefix ? ' (deep prompts)' : ''} into ${o.out}`);
        session.dispose();
      } finally {
        (claim as ClaimedOutput | undefined)?.release();
        lm.dispose();
      }
    });
}
