import { ConfigFields } from './common.js';
import {
  decoderFunctions,
  decoderHfFields,
  decoderWeights,
  defaultInvFreq,
  describeDecoder,
  randomDecoderConfig,
  readDecoderConfig,
  type DecoderConfig,
} from './llama.js';
import type { ModelFamily } from './lm.js';

/**
 * MistralForCausalLM: the Llama decoder without biases, with sliding-window attention on every layer
 * (`sliding_window`, class default 4096; null: full attention).
 */

function parseConfig(json: Record<string, unknown>, file: string): DecoderConfig {
  const f = new ConfigFields(json, file);
  if (json.model_type !== 'mistral') throw new Error(`${file}: model_type ${JSON.stringify(json.model_type)} is not mistral`);
  f.refuse('hidden_act', (v) => v === 'silu', 'only silu');
  const c = readDecoderConfig(f, { maxPositions: 4096 * 32, rmsNormEps: 1e-6, ropeTheta: 10000, tieWordEmbeddings: false });
  // MistralConfig's default window is 4096; a null written in config.json turns it off
  const window = json.sliding_window === undefined ? 4096 : json.sliding_window === null ? undefined : f.int('sliding_window');
  return { ...c, ...(window !== undefined && { slidingWindow: window }) };
}

function toHfConfig(c: DecoderConfig): Record<string, unknown> {
  return { architectures: ['MistralForCausalLM'], model_type: 'mistral', ...decoderHfFields(c), sliding_window: c.slidingWindow ?? null };
}

/** Mistral-7B-v0.1's shape: the default for random Mistral-shaped models. */
export const MISTRAL_7B: DecoderConfig = {
  vocabSize: 32000,
  hiddenSize: 4096,
  intermediateSize: 14336,
  numLayers: 32,
  numHeads: 32,
  numKvHeads: 8,
  headDim: 128,
  maxPositions: 32768,
  rmsNormEps: 1e-5,
  ropeTheta: 10000,
  ropeScaling: null,
  ropeInvFreq: defaultInvFreq(10000, 128),
  ropeAttentionScale: 1,
  tieWordEmbeddings: false,
  attentionBias: false,
  ropeStyle: 'half',
  slidingWindow: 4096,
  special: { bos: 1, eos: 2 },
};

export const mistralFamily: ModelFamily<DecoderConfig> = {
  name: 'mistral',
  modelTypes: ['mistral'],
  kind: 'causal',
  parseConfig,
  toHfConfig,
  describe: describeDecoder,
  weights: decoderWeights,
  functions: (c) => decoderFunctions(c),
  specialIds: (c) => c.special,
  randomConfig: (overrides, vocabSize) => randomDecoderConfig(MISTRAL_7B, overrides, vocabSize),
};
