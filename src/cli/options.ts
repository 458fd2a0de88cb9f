/**
 * The options of every command as schemas: each value is checked (integer-ness, ranges, sets) before any
 * work, and a bad one is a one-line error naming the option and what it accepts. Commander hands the values
 * over as text (or the declared default); the schemas turn them into numbers.
 */
import type { Command } from 'commander';
import { opt, parseOptions, z } from '../util/schema.js';
import { UserError } from '../util/errors.js';
import type { QuantizeOptions } from '../models/quantize-settings.js';

export { parseOptions };

export function parseListOption(value: string): string[] {
  return value.split(',').map((s) => s.trim()).filter((s) => s.length > 0);
}

export const TOKEN_RULES = ['first', 'mean', 'sum', 'max'] as const;
export const ENCODERS = ['lstm', 'mlp', 'embedding'] as const;
export const SCHEDULES = ['constant', 'linear', 'exponential'] as const;
export const OPTIMIZERS = ['adam', 'adamw'] as const;
export const CHECKPOINTS = ['best', 'last'] as const;
/** the training methods (train/session.ts METHODS) */
export const METHOD_NAMES = ['ptuning', 'prefix', 'prompt-tuning'] as const;

export const globalSchema = z.object({
  verbose: opt.flag(),
  threads: opt.int(1).optional(),
  runtime: opt.choice(['node', 'web']).optional(),
  gradientCheckpointing: opt.flag(),
  savedActivations: opt.choice(['float32', 'float16', 'auto']).optional(),
});

/**
 * --quantize and its settings, in the schema of every command that loads an LM (train, eval, predict, export, lama,
 * fewglue, info, fill, generate, serve, table); quantizeFrom turns them into QuantizeOptions.
 */
export const quantizeFields = {
  quantize: opt.choice(['int8', 'int4', 'none', 'fp32']).optional(),
  quantBlock: z.string().optional(),
  quantZeroPoints: opt.flag(),
  quantSymmetric: opt.flag(),
  quantBackward: opt.choice(['transposed', 'dequantize']).optional(),
  quantActivations: opt.choice(['int8', 'float32']).optional(),
};

/** --quantize and its settings, on a command that loads an LM (its schema spreads `quantizeFields`). */
export function addQuantizeOptions(cmd: Command, what = 'the frozen LM'): Command {
  return cmd
    .option('--quantize <q>', `quantize ${what}'s linear weights at load: int8, int4 or none`)
    .option('--quant-block <n>', 'quantization block size: 32, 64 or 128, or channel (int8 only: one scale per output feature, integer GEMM); default channel for int8, 32 for int4', asText)
    .option('--quant-zero-points', 'blocks with zero points (default for int4)')
    .option('--quant-symmetric', 'symmetric blocks (default for int8)')
    .option('--quant-backward <b>', "gradient to a layer's input: transposed (a quantized copy of W transposed, default) or dequantize")
    .option('--quant-activations <a>', 'int8 (activations quantized per block, integer products; default) or float32');
}

export interface QuantizeCliOptions {
  quantize?: 'int8' | 'int4' | 'none' | 'fp32';
  quantBlock?: string | number;
  quantZeroPoints?: boolean;
  quantSymmetric?: boolean;
  quantBackward?: 'transposed' | 'dequantize';
  quantActivations?: 'int8' | 'float32';
}

/** The options given, as QuantizeOptions; null for --quantize none; undefined when --quantize is absent. */
export function quantizeFrom(o: QuantizeCliOptions): QuantizeOptions | null | undefined {
  const extra = o.quantBlock !== undefined || o.quantZeroPoints || o.quantSymmetric || o.quantBackward !== undefined || o.quantActivations !== undefined;
  if (o.quantize === undefined) {
    if (extra) throw new UserError('--quant-block, --quant-zero-points, --quant-symmetric, --quant-backward and --quant-activations need --quantize int8|int4');
    return undefined;
  }
  if (o.quantize === 'none' || o.quantize === 'fp32') {
    if (extra) throw new UserError(`--quant-block, --quant-zero-points, --quant-symmetric, --quant-backward and --quant-activations need --quantize int8|int4, not ${o.quantize}`);
    return null;
  }
  // the schemas check these already; callers without them (the bench) get the same messages
  if (o.quantize !== 'int8' && o.quantize !== 'int4') throw new UserError(`--quantize: expected int8, int4 or none, got ${JSON.stringify(o.quantize)}`);
  const block = o.quantBlock === undefined ? undefined : String(o.quantBlock) === 'channel' ? 'channel' : Number(o.quantBlock);
  if (block !== undefined && block !== 'channel' && ![32, 64, 128].includes(block)) throw new UserError(`--quant-block: expected 32, 64, 128 or channel, got ${o.quantBlock}`);
  if (block === 'channel' && (o.quantize !== 'int8' || o.quantZeroPoints || o.quantBackward === 'dequantize' || o.quantActivations === 'float32')) {
    throw new UserError('--quant-block channel: int8 with symmetric scales, integer products in both directions (not with --quant-zero-points, --quant-backward dequantize or --quant-activations float32)');
  }
  if (o.quantZeroPoints && o.quantSymmetric) throw new UserError('give --quant-zero-points or --quant-symmetric, not both');
  if (o.quantBackward !== undefined && o.quantBackward !== 'transposed' && o.quantBackward !== 'dequantize') {
    throw new UserError(`--quant-backward: expected transposed or dequantize, got ${JSON.stringify(o.quantBackward)}`);
  }
  if (o.quantActivations !== undefined && o.quantActivations !== 'int8' && o.quantActivations !== 'float32') {
    throw new UserError(`--quant-activations: expected int8 or float32, got ${JSON.stringify(o.quantActivations)}`);
  }
  return {
    bits: o.quantize === 'int8' ? 8 : 4,
    ...(block !== undefined && { blockSize: block as 32 | 64 | 128 | 'channel' }),
    ...(o.quantZeroPoints && { symmetric: false }),
    ...(o.quantSymmetric && { symmetric: true }),
    ...(o.quantBackward !== undefined && { backward: o.quantBackward }),
    ...(o.quantActivations !== undefined && { activations: o.quantActivations }),
  };
}

export const trainSchema = z.object({
  model: opt.text().optional(),
  train: opt.text().optional(),
  dev: opt.text().optional(),
  template: opt.text().optional(),
  out: opt.text(),
  labelField: opt.text().optional(),
  verbalizer: opt.text().optional(),
  tokenRule: opt.choice(TOKEN_RULES),
  answerField: opt.text().optional(),
  answerVocab: opt.text().optional(),
  head: opt.choice(['verbalizer', 'linear']).optional(),
  labels: z.array(z.string()).min(2).optional(),
  method: opt.choice(METHOD_NAMES).optional(),
  virtualTokens: opt.int(1),
  prefixProjection: opt.flag(),
  prefixHidden: opt.int(1).optional(),
  prefixDropout: opt.number({ min: 0, lt: 1 }),
  initFromWords: opt.text().optional(),
  peftLayout: z.boolean(),
  baselines: z.boolean(),
  encoder: opt.choice(ENCODERS),
  encoderHidden: opt.int(1).optional(),
  encoderPreset: opt.choice(['thudm', 'peft']),
  encoderDropout: opt.number({ min: 0, lt: 1 }),
  lr: opt.number({ gt: 0 }).optional(),
  weightDecay: opt.number({ min: 0 }),
  optimizer: opt.choice(OPTIMIZERS).optional(),
  schedule: opt.choice(SCHEDULES).optional(),
  warmup: opt.number({ min: 0, max: 1 }),
  gamma: opt.number({ gt: 0, max: 1 }),
  tuneLm: opt.flag(),
  lmLr: opt.number({ gt: 0 }),
  lmWeightDecay: opt.number({ min: 0 }),
  lmDropout: z.boolean(),
  batchSize: opt.int(1),
  gradAccum: opt.int(1),
  maxGradNorm: opt.number({ min: 0 }),
  epochs: opt.int(1),
  maxSteps: opt.int(0),
  evalEvery: opt.int(0),
  patience: opt.int(0),
  saveEvery: opt.int(0),
  maxLength: opt.int(1),
  skipTooLong: opt.flag(),
  legacyBertOrder: opt.flag(),
  seed: opt.seed(),
  resume: opt.flag(),
  overwrite: opt.flag(),
  quiet: opt.flag(),
  ...quantizeFields,
});
export type TrainOptions = z.output<typeof trainSchema>;

export const evalSchema = z.object({
  run: opt.text(),
  data: opt.text(),
  checkpoint: opt.choice(CHECKPOINTS),
  json: opt.flag(),
  ...quantizeFields,
});

export const predictSchema = z.object({
  run: opt.text(),
  data: opt.text().optional(),
  text: opt.text().optional(),
  top: opt.int(1),
  checkpoint: opt.choice(CHECKPOINTS),
  ...quantizeFields,
});

export const exportSchema = z.object({
  run: opt.text(),
  out: opt.text(),
  format: opt.choice(['peft', 'table', 'onnx']),
  checkpoint: opt.choice(CHECKPOINTS),
  batch: opt.int(1),
  top: opt.int(1),
  externalData: opt.flag(),
  overwrite: opt.flag(),
  ...quantizeFields,
});

export const importSchema = z.object({
  adapter: opt.text(),
  model: opt.text(),
  out: opt.text(),
  template: opt.text().optional(),
  labelField: opt.text().optional(),
  verbalizer: opt.text().optional(),
  answerField: opt.text().optional(),
  maxLength: opt.int(1).optional(),
  overwrite: opt.flag(),
});

export const infoSchema = z.object({ json: opt.flag(), ...quantizeFields });

export const fillSchema = z.object({ top: opt.int(1), json: opt.flag(), ...quantizeFields });

export const generateSchema = z.object({
  prompt: z.string(),
  maxNewTokens: opt.int(0),
  temperature: opt.number({ min: 0 }),
  topP: opt.number({ gt: 0, max: 1 }),
  seed: opt.seed(),
  run: opt.text().optional(),
  text: opt.text().optional(),
  stop: z.array(z.string()),
  json: opt.flag(),
  ...quantizeFields,
});
export type GenerateOptions = z.output<typeof generateSchema>;

export const lamaSchema = z.object({
  model: opt.text(),
  data: opt.text(),
  out: opt.text(),
  relations: opt.text(),
  split: opt.choice(['original', 'trex']),
  vocab: opt.choice(['29k', '34k', 'full']),
  mode: z.array(z.string()),
  jobs: opt.int(1).optional(),
  seed: opt.seed(),
  template: opt.text().optional(),
  pseudo: opt.int(0),
  preset: opt.choice(['mini', 'thudm']),
  lr: opt.number({ gt: 0 }).optional(),
  weightDecay: opt.number({ min: 0 }).optional(),
  schedule: opt.choice(SCHEDULES).optional(),
  gamma: opt.number({ gt: 0, max: 1 }).optional(),
  epochs: opt.int(1).optional(),
  patience: opt.int(0).optional(),
  batchSize: opt.int(1).optional(),
  ftLr: opt.number({ gt: 0 }).optional(),
  ftWeightDecay: opt.number({ min: 0 }).optional(),
  ftEpochs: opt.int(1).optional(),
  ftPatience: opt.int(0).optional(),
  ftBatchSize: opt.int(1).optional(),
  maxTrain: opt.int(1).optional(),
  maxDev: opt.int(1).optional(),
  maxTest: opt.int(1).optional(),
  topK: opt.int(1),
  keepCheckpoints: opt.flag(),
  resume: opt.flag(),
  overwrite: opt.flag(),
  quiet: opt.flag(),
  ...quantizeFields,
});

export const fewglueSchema = z.object({
  model: opt.text(),
  task: z.array(z.string()).min(1),
  out: opt.text(),
  mode: z.array(z.string()).min(1),
  seeds: opt.int(1),
  seedList: z.array(opt.seed()).min(1).optional(),
  data: opt.text().optional(),
  epochs: opt.int(1),
  batchSize: opt.int(1),
  evalEvery: opt.int(0),
  patience: opt.int(0),
  evalCap: opt.int(0),
  maxLength: opt.int(1).optional(),
  promptLr: opt.number({ gt: 0 }),
  jointPromptLr: opt.number({ gt: 0 }),
  lmLr: opt.number({ gt: 0 }),
  lmWeightDecay: opt.number({ min: 0 }),
  headLr: opt.number({ gt: 0 }),
  deepLr: opt.number({ gt: 0 }),
  virtualTokens: opt.int(1),
  prefixProjection: opt.flag(),
  sst2Train: opt.int(1),
  overwrite: opt.flag(),
  quiet: opt.flag(),
  ...quantizeFields,
});

export const serveSchema = z.object({
  model: opt.text().optional(),
  run: z.array(z.string()),
  table: opt.text().optional(),
  host: opt.text(),
  port: opt.int(0, 65535),
  maxBatch: opt.int(1),
  maxWaitMs: opt.int(0),
  maxQueue: opt.int(1),
  timeoutMs: opt.int(1),
  bodyLimit: opt.int(1),
  ...quantizeFields,
});

/** `--max-length` against the model's positions. */
export function checkMaxLength(maxLength: number, maxPositions: number, model: string, flag = '--max-length'): void {
  if (maxLength > maxPositions) {
    throw new UserError(`${flag}: expected an integer from 1 to ${maxPositions} (the positions of ${model}), got ${maxLength}`);
  }
}

/** Commander's value parser for options the schemas read: the text stays text, a default keeps its type. */
export const asText = (v: string): unknown => v;
