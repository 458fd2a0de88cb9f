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
 * Phi3ForCausalLM: the Llama decoder with fused projections (self_attn.qkv_proj = q | k | v rows,
 * mlp.gate_up_proj = gate | up rows), rotary embedding on the first head_dim · partial_rotary_factor dimensions
 * of each head, LongRoPE scaling (short / long factors, switched on the largest position), an optional sliding
 * window on every layer.
 */

export interface Phi3Config extends DecoderConfig {
  /** config.json's original_max_position_embeddings (LongRoPE's switch point and attention factor) */
  originalMaxPositions: number;
  partialRotaryFactor: number;
}

/** LongRoPE: 1 / (factor_i · theta^(2i/d)) for the short and the long factors, and the cos/sin scale. */
function longRope(f: ConfigFields, s: Record<string, unknown>, dim: number, theta: number, maxPositions: number, original: number) {
  const where = `${f.file} rope_scaling`;
  const factors = (key: string): number[] => {
    const v = s[key];
    if (!Array.isArray(v) || v.length !== dim / 2 || !v.every((x) => typeof x === 'number')) {
      throw new Error(`${where}: ${key} must be a list of ${dim / 2} numbers`);
    }
    return v as number[];
  };
  const base = defaultInvFreq(theta, dim);
  const short = factors('short_factor');
  const long = factors('long_factor');
  // modeling_rope_utils: with original_max_position_embeddings the factor is the ratio of the two lengths
  const factor = maxPositions / original;
  const given = s.attention_factor;
  const attentionScale =
    typeof given === 'number' ? given : factor <= 1 ? 1 : Math.sqrt(1 + Math.log(factor) / Math.log(original));
  return {
    invFreq: base.map((x, i) => x / short[i]!),
    long: { invFreq: base.map((x, i) => x / long[i]!), originalMaxPositions: original },
    attentionScale,
  };
}

function parseConfig(json: Record<string, unknown>, file: string): Phi3Config {
  const f = new ConfigFields(json, file);
  if (json.model_type !== 'phi3') throw new Error(`${file}: model_type ${JSON.stringify(json.model_type)} is not phi3`);
  f.refuse('hidden_act', (v) => v === 'silu', 'only silu');
  const scaling = json.rope_scaling as Record<string, unknown> | null | undefined;
  const type = scaling ? (scaling.type ?? scaling.rope_type) : null;
  // the default rope read first; LongRoPE replaces the frequencies below
  const c = readDecoderConfig(new ConfigFields({ ...json, rope_scaling: null }, file), {
    maxPositions: 4096,
    rmsNormEps: 1e-5,
    ropeTheta: 10000,
    tieWordEmbeddings: false,
  });
  const partialRotaryFactor = f.num('partial_rotary_factor', 1);
  const rotaryDim = Math.trunc(c.headDim * partialRotaryFactor);
  if (rotaryDim <= 0 || rotaryDim % 2 !== 0) throw new Error(`${file}: partial_rotary_factor ${partialRotaryFactor} gives ${rotaryDim} rotary dimensions of ${c.headDim} (need an even number)`);
  const originalMaxPositions = f.int('original_max_position_embeddings', 4096);
  const out: Phi3Config = {
    ...c,
    ropeScaling: scaling ?? null,
    ropeInvFreq: defaultInvFreq(c.ropeTheta, rotaryDim),
    fusedProjections: true,
    originalMaxPositions,
    partialRotaryFactor,
    ...(rotaryDim !== c.headDim && { rotaryDim }),
    ...(f.has('sliding_window') && { slidingWindow: f.int('sliding_window') }),
    embdDropout: f.num('embd_pdrop', 0),
    residDropout: f.num('resid_pdrop', 0),
  };
  if (scaling) {
    // Phi3Config renames the older "su" and "yarn" to "longrope"
    if (type !== 'longrope' && type !== 'su' && type !== 'yarn') throw new Error(`${file}: rope_scaling type ${JSON.stringify(type)} is not supported (longrope)`);
    const r = longRope(f, scaling, rotaryDim, c.ropeTheta, c.maxPositions, originalMaxPositions);
    out.ropeInvFreq = r.invFreq;
    out.ropeLong = r.long;
    out.ropeAttentionScale = r.attentionScale;
  }
  return out;
}

function toHfConfig(c: Phi3Config): Record<string, unknown> {
  return {
    architectures: ['Phi3ForCausalLM'],
    model_type: 'phi3',
    ...decoderHfFields(c),
    original_max_position_embeddings: c.originalMaxPositions,
    partial_rotary_factor: c.partialRotaryFactor,
    sliding_window: c.slidingWindow ?? null,
    embd_pdrop: c.embdDropout ?? 0,
    resid_pdrop: c.residDropout ?? 0,
  };
}

/** Phi-3-mini-4k-instruct's shape: the default for random Phi-3-shaped models. */
export const PHI3_MINI: Phi3Config = {
  vocabSize: 32064,
  hiddenSize: 3072,
  intermediateSize: 8192,
  numLayers: 32,
  numHeads: 32,
  numKvHeads: 32,
  headDim: 96,
  maxPositions: 4096,
  rmsNormEps: 1e-5,
  ropeTheta: 10000,
  ropeScaling: null,
  ropeInvFreq: defaultInvFreq(10000, 96),
  ropeAttentionScale: 1,
  tieWordEmbeddings: false,
  attentionBias: false,
  ropeStyle: 'half',
  fusedProjections: true,
  slidingWindow: 2047,
  originalMaxPositions: 4096,
  partialRotaryFactor: 1,
  special: { bos: 1, eos: 32000, pad: 32000 },
};

export const phi3Family: ModelFamily<Phi3Config> = {
  name: 'phi3',
  modelTypes: ['phi3'],
  kind: 'causal',
  parseConfig,
  toHfConfig,
  describe: describeDecoder,
  weights: decoderWeights,
  functions: (c) => decoderFunctions(c),
  specialIds: (c) => c.special,
  randomConfig: (overrides, vocabSize) => {
    const c = randomDecoderConfig(PHI3_MINI, overrides, vocabSize);
    const rotaryDim = Math.trunc(c.headDim * c.partialRotaryFactor);
    if (rotaryDim !== c.headDim) c.rotaryDim = rotaryDim;
    else delete c.rotaryDim;
    c.ropeInvFreq = defaultInvFreq(c.ropeTheta, rotaryDim);
    return c;
  },
};
