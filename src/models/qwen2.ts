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
 * Qwen2ForCausalLM: the Llama decoder with biases on the q/k/v projections (not on o_proj), and optional
 * sliding-window attention on the layers from `max_window_layers` on (or as `layer_types` says).
 */

/** Which layers slide, as Qwen2Config (and Qwen3Config) derive it; null: none (no window in use). */
export function qwenSlidingLayers(f: ConfigFields, numLayers: number): { window: number; layers: boolean[] } | null {
  // Qwen2Config: sliding_window counts only with use_sliding_window (it defaults to 4096 otherwise)
  if (!f.bool('use_sliding_window', false)) return null;
  const window = f.int('sliding_window', 4096);
  const types = f.json.layer_types;
  let layers: boolean[];
  if (Array.isArray(types)) {
    if (types.length !== numLayers) throw new Error(`${f.file}: layer_types has ${types.length} entries for ${numLayers} layers`);
    layers = types.map((t, i) => {
      if (t !== 'sliding_attention' && t !== 'full_attention') throw new Error(`${f.file}: layer_types[${i}] ${JSON.stringify(t)} is not supported (full_attention, sliding_attention)`);
      return t === 'sliding_attention';
    });
  } else {
    const first = f.has('max_window_layers') ? f.num('max_window_layers') : 28;
    layers = Array.from({ length: numLayers }, (_, i) => i >= first);
  }
  return layers.some(Boolean) ? { window, layers } : null;
}

/** The sliding-window fields of a Qwen config.json. */
export function qwenWindowFields(c: DecoderConfig): Record<string, unknown> {
  const sliding = c.slidingWindow !== undefined && (c.slidingLayers ?? []).some(Boolean);
  return {
    use_sliding_window: sliding,
    sliding_window: sliding ? c.slidingWindow : null,
    max_window_layers: sliding ? c.slidingLayers!.indexOf(true) : c.numLayers,
    layer_types: Array.from({ length: c.numLayers }, (_, i) => (sliding && c.slidingLayers![i] ? 'sliding_attention' : 'full_attention')),
  };
}

function parseConfig(json: Record<string, unknown>, file: string): DecoderConfig {
  const f = new ConfigFields(json, file);
  if (json.model_type !== 'qwen2') throw new Error(`${file}: model_type ${JSON.stringify(json.model_type)} is not qwen2`);
  f.refuse('hidden_act', (v) => v === 'silu', 'only silu');
  const c = readDecoderConfig(f, { maxPositions: 32768, rmsNormEps: 1e-6, ropeTheta: 10000, tieWordEmbeddings: false });
  const sliding = qwenSlidingLayers(f, c.numLayers);
  return { ...c, attentionBias: true, ...(sliding && { slidingWindow: sliding.window, slidingLayers: sliding.layers }) };
}

function toHfConfig(c: DecoderConfig): Record<string, unknown> {
  return { architectures: ['Qwen2ForCausalLM'], model_type: 'qwen2', ...decoderHfFields(c), ...qwenWindowFields(c) };
}

/** Qwen2.5-0.5B's shape: the default for random Qwen2-shaped models. */
export const QWEN2_05B: DecoderConfig = {
  vocabSize: 151936,
  hiddenSize: 896,
  intermediateSize: 4864,
  numLayers: 24,
  numHeads: 14,
  numKvHeads: 2,
  headDim: 64,
  maxPositions: 32768,
  rmsNormEps: 1e-6,
  ropeTheta: 1000000,
  ropeScaling: null,
  ropeInvFreq: defaultInvFreq(1000000, 64),
  ropeAttentionScale: 1,
  tieWordEmbeddings: true,
  attentionBias: true,
  ropeStyle: 'half',
  special: { bos: 151643, eos: 151643 },
};

export const qwen2Family: ModelFamily<DecoderConfig> = {
  name: 'qwen2',
  modelTypes: ['qwen2'],
  kind: 'causal',
  parseConfig,
  toHfConfig,
  describe: describeDecoder,
  weights: decoderWeights,
  functions: (c) => decoderFunctions(c),
  specialIds: (c) => c.special,
  randomConfig: (overrides, vocabSize) => randomDecoderConfig(QWEN2_05B, overrides, vocabSize),
};
