import type { Ops } from '../engine/ops.js';
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
import type { ModelFamily, WeightOf } from './lm.js';
import { qwenSlidingLayers, qwenWindowFields } from './qwen2.js';

/**
 * Qwen3ForCausalLM: the Llama decoder with an RMSNorm over each head's dimensions on q and k (q_norm, k_norm)
 * before the rotary embedding, an explicit head_dim (class default 128, not hidden / heads), attention_bias on
 * q/k/v/o, and Qwen2's optional sliding-window layers.
 */

const attn = (i: number) => `model.layers.${i}.self_attn`;

function parseConfig(json: Record<string, unknown>, file: string): DecoderConfig {
  const f = new ConfigFields(json, file);
  if (json.model_type !== 'qwen3') throw new Error(`${file}: model_type ${JSON.stringify(json.model_type)} is not qwen3`);
  f.refuse('hidden_act', (v) => v === 'silu', 'only silu');
  const c = readDecoderConfig(f, { maxPositions: 32768, rmsNormEps: 1e-6, ropeTheta: 10000, tieWordEmbeddings: false, headDim: 128 });
  const bias = f.bool('attention_bias', false);
  const sliding = qwenSlidingLayers(f, c.numLayers);
  return {
    ...c,
    attentionBias: bias,
    ...(bias && { outputBias: true }),
    ...(sliding && { slidingWindow: sliding.window, slidingLayers: sliding.layers }),
  };
}

function toHfConfig(c: DecoderConfig): Record<string, unknown> {
  return {
    architectures: ['Qwen3ForCausalLM'],
    model_type: 'qwen3',
    ...decoderHfFields(c),
    attention_bias: c.attentionBias,
    ...qwenWindowFields(c),
  };
}

function weights(c: DecoderConfig) {
  const specs = decoderWeights(c);
  for (let i = 0; i < c.numLayers; i++) {
    for (const n of ['q_norm', 'k_norm']) specs.push({ name: `${attn(i)}.${n}.weight`, shape: [c.headDim], init: 'ones' });
  }
  return specs;
}

/** Qwen3-0.6B's shape: the default for random Qwen3-shaped models. */
export const QWEN3_06B: DecoderConfig = {
  vocabSize: 151936,
  hiddenSize: 1024,
  intermediateSize: 3072,
  numLayers: 28,
  numHeads: 16,
  numKvHeads: 8,
  headDim: 128,
  maxPositions: 40960,
  rmsNormEps: 1e-6,
  ropeTheta: 1000000,
  ropeScaling: null,
  ropeInvFreq: defaultInvFreq(1000000, 128),
  ropeAttentionScale: 1,
  tieWordEmbeddings: true,
  attentionBias: false,
  ropeStyle: 'half',
  special: { bos: 151643, eos: 151645 },
};

export const qwen3Family: ModelFamily<DecoderConfig> = {
  name: 'qwen3',
  modelTypes: ['qwen3'],
  kind: 'causal',
  parseConfig,
  toHfConfig,
  describe: describeDecoder,
  weights,
  functions: (c) =>
    decoderFunctions(c, {
      qkNorm: <T>(o: Ops<T>, w: WeightOf<T>, i: number, q: T, k: T) => ({
        q: o.rmsNorm(q, w(`${attn(i)}.q_norm.weight`), c.rmsNormEps),
        k: o.rmsNorm(k, w(`${attn(i)}.k_norm.weight`), c.rmsNormEps),
      }),
    }),
  specialIds: (c) => c.special,
  randomConfig: (overrides, vocabSize) => randomDecoderConfig(QWEN3_06B, overrides, vocabSize),
};
