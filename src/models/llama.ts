import type { Ops } from '../engine/ops.js';
import {
  ConfigFields,
  attend,
  attentionBias,
  dense,
  keyMaskOf,
  positionsFrom,
  projectRows,
  withPast,
  type LayerKv,
  type WeightSpec,
} from './common.js';
import { definedIds } from './gpt2.js';
import type { HiddenInputs, HiddenOutputs, LmFunctions, ModelFamily, SpecialIds, WeightOf } from './lm.js';

/**
 * A Llama-style decoder: RMSNorm pre-norm blocks, rotary positions, grouped-query attention, SwiGLU MLP, an
 * untied or tied output head. Families that differ only in a few switches (biases on q/k/v, rope scaling, a
 * sliding window) configure this one.
 */
export interface DecoderConfig {
  vocabSize: number;
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  maxPositions: number;
  rmsNormEps: number;
  ropeTheta: number;
  /** config.json's rope_scaling, as written there (null: none) */
  ropeScaling: Record<string, unknown> | null;
  /** rotary inverse frequencies, one per pair of a head's dimensions (headDim / 2) */
  ropeInvFreq: number[];
  /** multiplies cos and sin (rope scaling variants that scale the attention) */
  ropeAttentionScale: number;
  tieWordEmbeddings: boolean;
  /** q/k/v projections with biases (Qwen2) */
  attentionBias: boolean;
  /**
   * 'half': Hugging Face's rotate_half (pairs (i, i + headDim/2)); 'interleaved': Meta / llama2.c order (pairs
   * (2i, 2i+1)), for checkpoints whose q/k rows were not permuted for rotate_half.
   */
  ropeStyle: 'half' | 'interleaved';
  /** sliding-window attention: keys at most this many indices back (Mistral) */
  slidingWindow?: number;
  special: Partial<SpecialIds>;
}

export type LlamaConfig = DecoderConfig;

const layerPrefix = (i: number) => `model.layers.${i}`;

/** theta^(-2i/d) for i < d/2 */
export function defaultInvFreq(theta: number, headDim: number): number[] {
  const half = headDim / 2;
  return Array.from({ length: half }, (_, i) => Math.pow(theta, -(2 * i) / headDim));
}

/** Llama 3's "llama3" rope scaling: long wavelengths divided by `factor`, a smooth blend in between. */
function llama3InvFreq(base: number[], s: Record<string, unknown>, file: string): number[] {
  const f = new ConfigFields(s, `${file} rope_scaling`);
  const factor = f.num('factor');
  const low = f.num('low_freq_factor');
  const high = f.num('high_freq_factor');
  const original = f.num('original_max_position_embeddings');
  const lowWavelen = original / low;
  const highWavelen = original / high;
  return base.map((freq) => {
    const wavelen = (2 * Math.PI) / freq;
    if (wavelen < highWavelen) return freq;
    if (wavelen > lowWavelen) return freq / factor;
    const smooth = (original / wavelen - low) / (high - low);
    return (1 - smooth) * (freq / factor) + smooth * freq;
  });
}

/** Rotary frequencies of a config.json: rope_theta and the rope_scaling types this implements. */
export function ropeFromHf(f: ConfigFields, headDim: number): { invFreq: number[]; attentionScale: number } {
  const base = defaultInvFreq(f.num('rope_theta', 10000), headDim);
  const s = f.json.rope_scaling as Record<string, unknown> | null | undefined;
  if (s === undefined || s === null) return { invFreq: base, attentionScale: 1 };
  const type = s.rope_type ?? s.type;
  if (type === 'default') return { invFreq: base, attentionScale: 1 };
  if (type === 'llama3') return { invFreq: llama3InvFreq(base, s, f.file), attentionScale: 1 };
  if (type === 'linear') return { invFreq: base.map((x) => x / new ConfigFields(s, `${f.file} rope_scaling`).num('factor')), attentionScale: 1 };
  throw new Error(`${f.file}: rope_scaling type ${JSON.stringify(type)} is not supported (default, linear, llama3)`);
}

function parseConfig(json: Record<string, unknown>, file: string): DecoderConfig {
  const f = new ConfigFields(json, file);
  if (json.model_type !== 'llama') throw new Error(`${file}: model_type ${JSON.stringify(json.model_type)} is not llama`);
  f.refuse('mlp_bias', (v) => v === false, 'only false');
  f.refuse('hidden_act', (v) => v === 'silu', 'only silu');
  const hiddenSize = f.int('hidden_size');
  const numHeads = f.int('num_attention_heads');
  const headDim = f.has('head_dim') ? f.int('head_dim') : hiddenSize / numHeads;
  const rope = ropeFromHf(f, headDim);
  return {
    vocabSize: f.int('vocab_size'),
    hiddenSize,
    intermediateSize: f.int('intermediate_size'),
    numLayers: f.int('num_hidden_layers'),
    numHeads,
    numKvHeads: f.int('num_key_value_heads', numHeads),
    headDim,
    maxPositions: f.int('max_position_embeddings', 2048),
    rmsNormEps: f.num('rms_norm_eps', 1e-6),
    ropeTheta: f.num('rope_theta', 10000),
    ropeScaling: (json.rope_scaling as Record<string, unknown> | undefined) ?? null,
    ropeInvFreq: rope.invFreq,
    ropeAttentionScale: rope.attentionScale,
    tieWordEmbeddings: f.bool('tie_word_embeddings', false),
    attentionBias: f.bool('attention_bias', false),
    ropeStyle: 'half',
    special: definedIds({ bos: f.id('bos_token_id'), eos: f.id('eos_token_id'), pad: f.id('pad_token_id') }),
  };
}

function toHfConfig(c: DecoderConfig): Record<string, unknown> {
  return {
    architectures: ['LlamaForCausalLM'],
    model_type: 'llama',
    vocab_size: c.vocabSize,
    hidden_size: c.hiddenSize,
    intermediate_size: c.intermediateSize,
    num_hidden_layers: c.numLayers,
    num_attention_heads: c.numHeads,
    num_key_value_heads: c.numKvHeads,
    head_dim: c.headDim,
    max_position_embeddings: c.maxPositions,
    rms_norm_eps: c.rmsNormEps,
    rope_theta: c.ropeTheta,
    rope_scaling: c.ropeScaling,
    tie_word_embeddings: c.tieWordEmbeddings,
    attention_bias: c.attentionBias,
    hidden_act: 'silu',
    bos_token_id: c.special.bos,
    eos_token_id: c.special.eos,
    pad_token_id: c.special.pad,
    torch_dtype: 'float32',
  };
}

/** Every weight in Hugging Face names and torch layout (nn.Linear [out, in]). */
export function decoderWeights(c: DecoderConfig): WeightSpec[] {
  const h = c.hiddenSize;
  const q = c.numHeads * c.headDim;
  const kv = c.numKvHeads * c.headDim;
  const specs: WeightSpec[] = [{ name: 'model.embed_tokens.weight', shape: [c.vocabSize, h], init: 'normal' }];
  const linear = (name: string, out: number, inp: number, bias = false) => {
    specs.push({ name: `${name}.weight`, shape: [out, inp], init: 'normal' });
    if (bias) specs.push({ name: `${name}.bias`, shape: [out], init: 'zeros' });
  };
  for (let i = 0; i < c.numLayers; i++) {
    const p = layerPrefix(i);
    specs.push({ name: `${p}.input_layernorm.weight`, shape: [h], init: 'ones' });
    linear(`${p}.self_attn.q_proj`, q, h, c.attentionBias);
    linear(`${p}.self_attn.k_proj`, kv, h, c.attentionBias);
    linear(`${p}.self_attn.v_proj`, kv, h, c.attentionBias);
    linear(`${p}.self_attn.o_proj`, h, q);
    specs.push({ name: `${p}.post_attention_layernorm.weight`, shape: [h], init: 'ones' });
    linear(`${p}.mlp.gate_proj`, c.intermediateSize, h);
    linear(`${p}.mlp.up_proj`, c.intermediateSize, h);
    linear(`${p}.mlp.down_proj`, h, c.intermediateSize);
  }
  specs.push({ name: 'model.norm.weight', shape: [h], init: 'ones' });
  if (!c.tieWordEmbeddings) specs.push({ name: 'lm_head.weight', shape: [c.vocabSize, h], init: 'normal' });
  return specs;
}

/** cos and sin of the rotary angles at `positions` [B, S], each [B, 1, S, headDim/2] (float32, as transformers). */
export function ropeAt<T>(o: Ops<T>, invFreq: number[], positions: T, attentionScale = 1): { cos: T; sin: T } {
  const [b, s] = o.shape(positions) as [number, number];
  const half = invFreq.length;
  const angles = o.mul(o.reshape(o.cast(positions, 'float32'), [b, 1, s, 1]), o.constFloat(invFreq, [half]));
  const scaled = (t: T) => (attentionScale === 1 ? t : o.scale(t, attentionScale));
  return { cos: scaled(o.cos(angles)), sin: scaled(o.sin(angles)) };
}

/**
 * Rotary position embedding on x [B, heads, S, headDim] with cos/sin [B, 1, S, headDim/2]. 'interleaved'
 * rotates pairs (2i, 2i+1) (llama2.c, Meta's reference); 'half' rotates (i, i + headDim/2) (rotate_half).
 */
export function applyRope<T>(o: Ops<T>, x: T, cos: T, sin: T, style: 'interleaved' | 'half'): T {
  const [b, h, s, d] = o.shape(x) as [number, number, number, number];
  const half = d / 2;
  let x1: T, x2: T;
  if (style === 'interleaved') {
    const pairs = o.reshape(x, [b, h, s, half, 2]);
    x1 = o.reshape(o.slice(pairs, [0, 0, 0, 0, 0], [b, h, s, half, 1]), [b, h, s, half]);
    x2 = o.reshape(o.slice(pairs, [0, 0, 0, 0, 1], [b, h, s, half, 1]), [b, h, s, half]);
  } else {
    x1 = o.slice(x, [0, 0, 0, 0], [b, h, s, half]);
    x2 = o.slice(x, [0, 0, 0, half], [b, h, s, half]);
  }
  const r1 = o.sub(o.mul(x1, cos), o.mul(x2, sin));
  const r2 = o.add(o.mul(x1, sin), o.mul(x2, cos));
  if (style === 'half') return o.concat([r1, r2], 3);
  return o.reshape(o.concat([o.expandDims(r1, 4), o.expandDims(r2, 4)], 4), [b, h, s, d]);
}

export interface DecoderHooks {
  /** extra transforms of q and k per head before the rotary embedding (Qwen3's q/k norms) */
  qkNorm?: <T>(o: Ops<T>, w: WeightOf<T>, layer: number, q: T, k: T) => { q: T; k: T };
}

/** The decoder's computation over any op vocabulary. */
export function decoderFunctions(c: DecoderConfig, hooks: DecoderHooks = {}): LmFunctions {
  const hd = c.headDim;
  const heads = <T>(o: Ops<T>, t: T, b: number, s: number, n: number) => o.transpose(o.reshape(t, [b, s, n, hd]), [0, 2, 1, 3]);
  const proj = <T>(o: Ops<T>, w: WeightOf<T>, x: T, name: string, bias: boolean) => dense(o, x, w(`${name}.weight`), bias ? w(`${name}.bias`) : undefined);

  const attention = <T>(o: Ops<T>, w: WeightOf<T>, i: number, x: T, rope: { cos: T; sin: T }, bias: T, past?: LayerKv<T>) => {
    const [b, s] = o.shape(x) as [number, number];
    const p = `${layerPrefix(i)}.self_attn`;
    let q = heads(o, proj(o, w, x, `${p}.q_proj`, c.attentionBias), b, s, c.numHeads);
    let k = heads(o, proj(o, w, x, `${p}.k_proj`, c.attentionBias), b, s, c.numKvHeads);
    const v = heads(o, proj(o, w, x, `${p}.v_proj`, c.attentionBias), b, s, c.numKvHeads);
    if (hooks.qkNorm) ({ q, k } = hooks.qkNorm(o, w, i, q, k));
    q = applyRope(o, q, rope.cos, rope.sin, c.ropeStyle);
    k = applyRope(o, k, rope.cos, rope.sin, c.ropeStyle);
    const kv = { k, v };
    const all = withPast(o, kv, past);
    const context = attend(o, q, all.k, all.v, bias);
    const merged = o.reshape(o.transpose(context, [0, 2, 1, 3]), [b, s, c.numHeads * hd]);
    return { out: dense(o, merged, w(`${p}.o_proj.weight`)), kv };
  };

  const mlp = <T>(o: Ops<T>, w: WeightOf<T>, i: number, x: T) => {
    const p = `${layerPrefix(i)}.mlp`;
    const gated = o.mul(o.silu(dense(o, x, w(`${p}.gate_proj.weight`))), dense(o, x, w(`${p}.up_proj.weight`)));
    return dense(o, gated, w(`${p}.down_proj.weight`));
  };

  return {
    embed: (o, w, ids) => o.gather(w('model.embed_tokens.weight'), ids),
    hidden<T>(o: Ops<T>, w: WeightOf<T>, inp: HiddenInputs<T>): HiddenOutputs<T> {
      const s = o.shape(inp.embeds)[1]!;
      const pastLen = inp.past ? o.shape(inp.past.mask)[1]! : 0;
      const positions = inp.positionIds ?? positionsFrom(o, inp.attentionMask, inp.past?.mask);
      const rope = ropeAt(o, c.ropeInvFreq, positions, c.ropeAttentionScale);
      const keyMask = keyMaskOf(o, inp.attentionMask, inp.past?.mask);
      const bias = attentionBias(o, keyMask, { queryLen: s, pastLen, causal: true, window: c.slidingWindow });
      let x = inp.embeds;
      const present: LayerKv<T>[] = [];
      for (let i = 0; i < c.numLayers; i++) {
        const p = layerPrefix(i);
        const attn = attention(o, w, i, o.rmsNorm(x, w(`${p}.input_layernorm.weight`), c.rmsNormEps), rope, bias, inp.past?.layers[i]);
        x = o.add(x, attn.out);
        x = o.add(x, mlp(o, w, i, o.rmsNorm(x, w(`${p}.post_attention_layernorm.weight`), c.rmsNormEps)));
        present.push(attn.kv);
      }
      return { hidden: o.rmsNorm(x, w('model.norm.weight'), c.rmsNormEps), present };
    },
    logits: (o, w, rows, candidates) =>
      projectRows(o, rows, w(c.tieWordEmbeddings ? 'model.embed_tokens.weight' : 'lm_head.weight'), undefined, candidates),
  };
}

export function describeDecoder(c: DecoderConfig): ReturnType<ModelFamily['describe']> {
  return {
    vocabSize: c.vocabSize,
    hiddenSize: c.hiddenSize,
    numLayers: c.numLayers,
    numHeads: c.numHeads,
    numKvHeads: c.numKvHeads,
    headDim: c.headDim,
    intermediateSize: c.intermediateSize,
    maxPositions: c.maxPositions,
    paddingSide: 'left',
    tokenTypes: false,
  };
}

/** TinyLlama 1.1B's shape: the default for random Llama-shaped models (benchmarks). */
export const TINYLLAMA: DecoderConfig = {
  vocabSize: 32000,
  hiddenSize: 2048,
  intermediateSize: 5632,
  numLayers: 22,
  numHeads: 32,
  numKvHeads: 4,
  headDim: 64,
  maxPositions: 2048,
  rmsNormEps: 1e-5,
  ropeTheta: 10000,
  ropeScaling: null,
  ropeInvFreq: defaultInvFreq(10000, 64),
  ropeAttentionScale: 1,
  tieWordEmbeddings: false,
  attentionBias: false,
  ropeStyle: 'half',
  special: { bos: 1, eos: 2 },
};

export const llamaFamily: ModelFamily<DecoderConfig> = {
  name: 'llama',
  modelTypes: ['llama'],
  kind: 'causal',
  parseConfig,
  toHfConfig,
  describe: describeDecoder,
  weights: decoderWeights,
  functions: (c) => decoderFunctions(c),
  specialIds: (c) => c.special,
  randomConfig: (overrides, vocabSize) => {
    const c: DecoderConfig = { ...TINYLLAMA, ...(overrides as Partial<DecoderConfig>), vocabSize };
    if (overrides.hiddenSize !== undefined || overrides.numHeads !== undefined) {
      c.headDim = typeof overrides.headDim === 'number' ? overrides.headDim : c.hiddenSize / c.numHeads;
    }
    c.ropeInvFreq = defaultInvFreq(c.ropeTheta, c.headDim);
    return c;
  },
};
