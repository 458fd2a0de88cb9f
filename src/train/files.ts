/**
 * Schemas of the JSON files ptune reads back: a run's `config.json`, its loop state (`last/state.json`), a
 * PEFT adapter's `adapter_config.json` and ptune's placement note `ptune_template.json`. Every error names the
 * file and the field; a run config of a version this ptune does not know is refused.
 */
import { z, fileNumber, parseFile, readJson } from '../util/schema.js';
import { UserError } from '../util/errors.js';
import type { RunConfig } from './session.js';
import type { TrainState } from './trainer.js';
import type { HeadSpec } from '../prompt/heads.js';

/** run config versions this ptune reads */
export const RUN_CONFIG_VERSION = 1;

const int = (min: number, max?: number) => fileNumber({ integer: true, min, max });
const text = z.string().min(1);

const labelWords = z.record(z.string(), z.union([z.string(), z.array(z.string()).min(1)]));

export const headSchema = z.discriminatedUnion('kind', [
  z
    .object({
      kind: z.literal('label'),
      labelField: text,
      labelWords,
      tokenRule: z.enum(['first', 'mean', 'sum', 'max']).optional(),
      wordAggregation: z.enum(['max', 'mean']).optional(),
    })
    .strict(),
  z.object({ kind: z.literal('answer'), answerField: text, answerVocab: z.array(int(0)).optional() }).strict(),
  z.object({ kind: z.literal('linear'), labelField: text, labels: z.array(z.string()).min(2), seed: fileNumber({ integer: true, min: 0 }).optional() }).strict(),
]);

const methodSchema = z.enum(['ptuning', 'prefix', 'prompt-tuning']);
const prefixSchema = z
  .object({ numVirtualTokens: int(1), projection: z.boolean(), hiddenSize: int(1).optional(), dropout: fileNumber({ min: 0, lt: 1 }).optional() })
  .strict();
const promptTuningSchema = z.object({ numVirtualTokens: int(1), initFromWords: z.string().optional() }).strict();

/** QuantizeOptions (src/models/quantize-settings.ts) */
const quantizeSchema = z
  .object({
    bits: z.union([z.literal(4), z.literal(8)]),
    blockSize: z.union([z.literal(32), z.literal(64), z.literal(128), z.literal('channel')]).optional(),
    symmetric: z.boolean().optional(),
    backward: z.enum(['transposed', 'dequantize']).optional(),
    activations: z.enum(['int8', 'float32']).optional(),
    cacheDir: text.optional(),
  })
  .strict();

const encoderSchema = z
  .object({
    type: z.enum(['lstm', 'mlp', 'embedding']),
    hiddenSize: int(1).optional(),
    lstmLayers: int(1).optional(),
    dropout: fileNumber({ min: 0, lt: 1 }).optional(),
    preset: z.enum(['thudm', 'peft']).optional(),
    seed: fileNumber({}),
  })
  .strict();

export const loopSchema = z
  .object({
    epochs: int(1),
    maxSteps: int(0),
    batchSize: int(1),
    gradAccum: int(1),
    maxGradNorm: fileNumber({ min: 0 }),
    evalEvery: int(0),
    patience: int(0),
    saveEvery: int(0),
    logEvery: int(0),
    seed: fileNumber({ integer: true, min: 0 }),
  })
  .strict();

const optimSchema = z
  .object({
    optimizer: z.enum(['adam', 'adamw']),
    lr: fileNumber({ gt: 0 }),
    weightDecay: fileNumber({ min: 0 }),
    schedule: z.enum(['constant', 'linear', 'exponential']),
    warmupRatio: fileNumber({ min: 0, max: 1 }),
    gamma: fileNumber({ gt: 0, max: 1 }),
    tuneLm: z.boolean(),
    lmLr: fileNumber({ gt: 0 }),
    lmWeightDecay: fileNumber({ min: 0 }),
    lmDropout: z.boolean().optional(),
  })
  .strict();

export const runConfigSchema = z
  .object({
    version: z.literal(RUN_CONFIG_VERSION),
    model: text,
    template: text,
    legacyBertOrder: z.boolean().optional(),
    head: headSchema,
    encoder: encoderSchema,
    maxLength: int(1),
    skipTooLong: z.boolean(),
    peftPrefix: int(1).optional(),
    method: methodSchema.optional(),
    prefix: prefixSchema.optional(),
    promptTuning: promptTuningSchema.optional(),
    peftLayout: z.boolean().optional(),
    data: z.object({ train: text, dev: text }).strict().optional(),
    loop: loopSchema,
    optim: optimSchema,
    runtime: z.object({ name: z.string(), threads: z.number() }).strict().optional(),
    quantize: quantizeSchema.optional(),
  })
  .strict();

/** A `version` field: known ones pass, others are refused by name (before any other field is judged). */
function checkVersion(json: unknown, file: string): void {
  if (json === null || typeof json !== 'object' || Array.isArray(json)) throw new UserError(`${file}: expected a JSON object`);
  const v = (json as { version?: unknown }).version;
  if (v === undefined) throw new UserError(`${file}: version: is missing (this ptune reads run configs of version ${RUN_CONFIG_VERSION})`);
  if (v !== RUN_CONFIG_VERSION) {
    throw new UserError(`${file}: version ${JSON.stringify(v)} is not known to this ptune (it reads version ${RUN_CONFIG_VERSION}): written by another ptune?`);
  }
}

export function parseRunConfig(json: unknown, file: string): RunConfig {
  checkVersion(json, file);
  return parseFile(runConfigSchema, json, file) as RunConfig;
}

/** A run's config.json. */
export function readRunConfig(file: string): RunConfig {
  return parseRunConfig(readJson(file, 'run config'), file);
}

export const trainStateSchema = z
  .object({
    task: z.unknown().optional(),
    epoch: int(0),
    batchInEpoch: int(0),
    step: int(0),
    bestScore: z.number().nullable(),
    bestStep: fileNumber({ integer: true, min: -1 }),
    bestEpoch: fileNumber({ integer: true, min: -1 }),
    evalsWithoutGain: int(0),
    finished: z.boolean(),
    stopReason: z.string(),
    lossSum: z.number().optional(),
    lossCount: int(0).optional(),
  })
  .strict();

/** A checkpoint's state.json (the training loop's position). */
export function readTrainState(file: string): TrainState {
  return parseFile(trainStateSchema, readJson(file, 'checkpoint state'), file) as TrainState;
}

/** PEFT's adapter_config.json: the fields ptune reads are checked, the others are PEFT's own. */
export const adapterConfigSchema = z
  .object({
    peft_type: z.enum(['P_TUNING', 'PROMPT_TUNING', 'PREFIX_TUNING']),
    num_virtual_tokens: int(1).optional(),
    token_dim: int(1).optional(),
  })
  .passthrough();

export type AdapterConfig = z.output<typeof adapterConfigSchema>;

export function readAdapterConfig(file: string): AdapterConfig {
  return parseFile(adapterConfigSchema, readJson(file, 'adapter config'), file);
}

/** ptune's note inside an exported adapter: where the virtual tokens go. */
export const placementSchema = z
  .object({
    template: text,
    legacyBertOrder: z.boolean().optional(),
    head: headSchema,
    maxLength: int(1),
    method: methodSchema.optional(),
    peftLayout: z.boolean().optional(),
    peftPrefix: int(1).optional(),
    promptTuning: promptTuningSchema.optional(),
    /** what the export said about PEFT (written for people; not read back) */
    peft: z.unknown().optional(),
  })
  .strict();

export interface Placement {
  template: string;
  legacyBertOrder?: boolean;
  head: HeadSpec;
  maxLength: number;
  method?: 'ptuning' | 'prefix' | 'prompt-tuning';
  peftLayout?: boolean;
  peftPrefix?: number;
  promptTuning?: { numVirtualTokens: number; initFromWords?: string };
  peft?: unknown;
}

export function readPlacement(file: string): Placement {
  return parseFile(placementSchema, readJson(file, 'placement file'), file) as Placement;
}
