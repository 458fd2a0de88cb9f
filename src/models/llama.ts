import type { Ops } from '../engine/ops.js';
import {
  ConfigFields,
  MASKED,
  atRows,
  attend,
  biasAt,
  attentionBias,
  dense,
  keyMaskOf,
  positionsFrom,
  projectRows,
  ropeRowsAt,
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
  /** sliding-window attention: a query sees the keys fewer than this many sequence indices back (Mistral) */
  slidingWindow?: number;
  /** which layers use `slidingWindow` (Qwen2's max_window_layers / layer_types); absent: every layer */
  slidingLayers?: boolean[];
  /** an o_proj bias (Llama's and Qwen3's attention_bias also covers o_proj; Qwen2's q/k/v biases do not) */
  outputBias?: boolean;
  /** dimensions of each head that rotate (partial_rotary_factor); default headDim; ropeInvFreq has rotaryDim / 2 entries */
  rotaryDim?: number;
  /** Phi-3's fused projections: self_attn.qkv_proj (q | k | v rows) and mlp.gate_up_proj (gate | up rows) */
  fusedProjections?: boolean;
  /** dropout when the LM trains: attention probabilities (attention_dropout); Phi-3's embd_pdrop / resid_pdrop */
  attentionDropout?: number;
  embdDropout?: number;
  residDropout?: number;
  /**
   * LongRoPE (Phi-3): `invFreq` replaces ropeInvFreq in a run whose largest position + 1 exceeds
   * `originalMaxPositions` (ropeAttentionScale applies to both)
   */
  ropeLong?: { invFreq: number[]; originalMaxPositions: number };
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

/**
 * Rotary frequencies of a config.json: rope_theta and the rope_scaling types this implements. `dim`: the
 * dimensions of a head that rotate (head_dim, or head_dim · partial_rotary_factor).
 */
export function ropeFromHf(f: ConfigFields, dim: number, defaultTheta = 10000): { invFreq: number[]; attentionScale: number } {
  const base = defaultInvFreq(f.num('rope_theta', defaultTheta), dim);
  const s = f.json.rope_scaling as Record<string, unknown> | null | undefined;
  if (s === undefined || s === null) return { invFreq: base, attentionScale: 1 };
  const type = s.rope_type ?? s.type;
  if (type === 'default') return { invFreq: base, attentionScale: 1 };
  if (type === 'llama3') return { invFreq: llama3InvFreq(base, s, f.file), attentionScale: 1 };
  if (type === 'linear') return { invFreq: base.map((x) => x / new ConfigFields(s, `${f.file} rope_scaling`).num('factor')), attentionScale: 1 };
  throw new Error(`${f.file}: rope_scaling type ${JSON.stringify(type)} is not supported (default, linear, llama3)`);
}

/** What a family's configuration class defaults the shared decoder fields to. */
export interface DecoderDefaults {
  maxPositions: number;
  rmsNormEps: number;
  ropeTheta: number;
  tieWordEmbeddings: boolean;
  /** head_dim when config.json has none (Qwen3's class default is 128); default hidden_size / num_attention_heads */
  headDim?: number;
}

/**
 * The fields Llama-style config.json files share, with the family's defaults: sizes, norm epsilon, rotary
 * frequencies (rope_theta, rope_scaling) and the special ids. Family switches start off.
 */
export function readDecoderConfig(f: ConfigFields, d: DecoderDefaults): DecoderConfig {
  const hiddenSize = f.int('hidden_size');
  const numHeads = f.int('num_attention_heads');
  const headDim = f.has('head_dim') ? f.int('head_dim') : (d.headDim ?? hiddenSize / numHeads);
  if (!Number.isInteger(headDim)) throw new Error(`${f.file}: hidden_size ${hiddenSize} is not divisible by num_attention_heads ${numHeads} (and no head_dim)`);
  const numKvHeads = f.int('num_key_value_heads', numHeads);
  if (numHeads % numKvHeads !== 0) throw new Error(`${f.file}: num_attention_heads ${numHeads} is not a multiple of num_key_value_heads ${numKvHeads}`);
  const rope = ropeFromHf(f, headDim, d.ropeTheta);
  return {
    vocabSize: f.int('vocab_size'),
    hiddenSize,
    intermediateSize: f.int('intermediate_size'),
    numLayers: f.int('num_hidden_layers'),
    numHeads,
    numKvHeads,
    headDim,
    maxPositions: f.int('max_position_embeddings', d.maxPositions),
    rmsNormEps: f.num('rms_norm_eps', d.rmsNormEps),
    ropeTheta: f.num('rope_theta', d.ropeTheta),
    ropeScaling: (f.json.rope_scaling as Record<string, unknown> | undefined) ?? null,
    ropeInvFreq: rope.invFreq,
    ropeAttentionScale: rope.attentionScale,
    tieWordEmbeddings: f.bool('tie_word_embeddings', d.tieWordEmbeddings),
    attentionBias: false,
    ropeStyle: 'half',
    special: definedIds({ bos: f.id('bos_token_id'), eos: f.id('eos_token_id'), pad: f.id('pad_token_id') }),
    attentionDropout: f.num('attention_dropout', 0),
  };
}

/** The config.json fields of `readDecoderConfig`, as Hugging Face writes them. */
export function decoderHfFields(c: DecoderConfig): Record<string, unknown> {
  return {
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
    attention_dropout: c.attentionDropout ?? 0,
    hidden_act: 'silu',
    bos_token_id: c.special.bos,
    eos_token_id: c.special.eos,
    pad_token_id: c.special.pad,
    torch_dtype: 'float32',
  };
}

/**
 * `base` with `overrides` for a random model: the head size follows hidden size / heads when either is
 * overridden (unless headDim is), and the rotary frequencies follow the head size.
 */
export function randomDecoderConfig<C extends DecoderConfig>(base: C, overrides: Record<string, number | boolean | string>, vocabSize: number): C {
  const c: C = { ...base, ...(overrides as Partial<C>), vocabSize };
  if (overrides.hiddenSize !== undefined || overrides.numHeads !== undefined) {
    c.headDim = typeof overrides.headDim === 'number' ? overrides.headDim : c.hiddenSize / c.numHeads;
  }
  if (base.rotaryDim !== undefined && overrides.rotaryDim === undefined) c.rotaryDim = Math.round((base.rotaryDim / base.headDim) * c.headDim);
  c.ropeInvFreq = defaultInvFreq(c.ropeTheta, c.rotaryDim ?? c.headDim);
  c.ropeScaling = null;
  c.ropeAttentionScale = 1;
  delete c.ropeLong;
  if (c.slidingLayers) c.slidingLayers = Array.from({ length: c.numLayers }, (_, i) => base.slidingLayers![i % base.slidingLayers!.length]!);
  return c;
}

function parseConfig(json: Record<string, unknown>, file: string): DecoderConfig {
  const f = new ConfigFields(json, file);
  if (json.model_type !== 'llama') throw new Error(`${file}: model_type ${JSON.stringify(json.model_type)} is not llama`);
  f.refuse('mlp_bias', (v) => v === false, 'only false');
  f.refuse('hidden_act', (v) => v === 'silu', 'only silu');
  const c = readDecoderConfig(f, { maxPositions: 2048, rmsNormEps: 1e-6, ropeTheta: 10000, tieWordEmbeddings: false });
  // LlamaAttention: attention_bias puts biases on q, k, v and o
  const bias = f.bool('attention_bias', false);
  return { ...c, attentionBias: bias, ...(bias && { outputBias: true }) };
}

function toHfConfig(c: DecoderConfig): Record<string, unknown> {
  return {
    architectures: ['LlamaForCausalLM'],
    model_type: 'llama',
    ...decoderHfFields(c),
    attention_bias: c.attentionBias,
  };
}

/** Every weight in Hugging Face names and torch layout (nn.Linear [out, in]). */
export function decoderWeights(c: DecoderConfig): WeightSpec[] {
  const h = c.hiddenSize;
  const q = c.numHeads * c.headDim;
  const kv = c.numKvHeads * c.headDim;
  const specs: WeightSpec[] = [{ name: 'model.embed_tokens.weight', shape: [c.vocabSize, h], init: 'normal' }];
  const linear = (name: string, out: number, inp: number, bias = false, inner?: 'out' | 'in') => {
    specs.push({ name: `${name}.weight`, shape: [out, inp], init: 'normal', ...(inner && { inner: inner === 'out' ? 0 : 1 }) });
    if (bias) specs.push({ name: `${name}.bias`, shape: [out], init: 'zeros', ...(inner === 'out' && { inner: 0 }) });
  };
  for (let i = 0; i < c.numLayers; i++) {
    const p = layerPrefix(i);
    specs.push({ name: `${p}.input_layernorm.weight`, shape: [h], init: 'ones' });
    if (c.fusedProjections) {
      linear(`${p}.self_attn.qkv_proj`, q + 2 * kv, h, c.attentionBias);
    } else {
      linear(`${p}.self_attn.q_proj`, q, h, c.attentionBias);
      linear(`${p}.self_attn.k_proj`, kv, h, c.attentionBias);
      linear(`${p}.self_attn.v_proj`, kv, h, c.attentionBias);
    }
    linear(`${p}.self_attn.o_proj`, h, q, c.outputBias);
    specs.push({ name: `${p}.post_attention_layernorm.weight`, shape: [h], init: 'ones' });
    // the fused gate | up rows are split at intermediate_size: that width stays as stored
    if (c.fusedProjections) {
      linear(`${p}.mlp.gate_up_proj`, 2 * c.intermediateSize, h);
    } else {
      linear(`${p}.mlp.gate_proj`, c.intermediateSize, h, false, 'out');
      linear(`${p}.mlp.up_proj`, c.intermediateSize, h, false, 'out');
    }
    linear(`${p}.mlp.down_proj`, h, c.intermediateSize, false, c.fusedProjections ? undefined : 'in');
  }
  specs.push({ name: 'model.norm.weight', shape: [h], init: 'ones' });
  if (!c.tieWordEmbeddings) specs.push({ name: 'lm_head.weight', shape: [c.vocabSize, h], init: 'normal' });
  return specs;
}

/** cos and sin of the rotary angles at `positions` [B, S], each [B, 1, S, headDim/2] (float32, as transformers). */
export function ropeAt<T>(o: Ops<T>, invFreq: number[], positions: T, attentionScale = 1): { cos: T; sin: T } {
  return ropeOf(o, o.constFloat(invFreq, [invFreq.length]), positions, attentionScale);
}

/** cos and sin at `positions` [B, S] for inverse frequencies `invFreq` [half] (a tensor), each [B, 1, S, half]. */
function ropeOf<T>(o: Ops<T>, invFreq: T, positions: T, attentionScale: number): { cos: T; sin: T } {
  const [b, s] = o.shape(positions) as [number, number];
  const angles = o.mul(o.reshape(o.cast(positions, 'float32'), [b, 1, s, 1]), invFreq);
  const scaled = (t: T) => (attentionScale === 1 ? t : o.scale(t, attentionScale));
  return { cos: scaled(o.cos(angles)), sin: scaled(o.sin(angles)) };
}

/** 1 where x ≥ 1, 0 where x ≤ 0, for integer-valued float x (relu(x) - relu(x - 1)). */
function stepOf<T>(o: Ops<T>, x: T): T {
  return o.sub(o.relu(x), o.relu(o.sub(x, o.scalar(1))));
}

/**
 * The rotary tables of a decoder config at `positions` [B, S]: its frequencies, or with LongRoPE the long
 * ones when the largest position + 1 exceeds the original context (transformers decides per forward call,
 * from the largest position id of the batch).
 */
export function decoderRope<T>(o: Ops<T>, c: DecoderConfig, positions: T): { cos: T; sin: T } {
  if (!c.ropeLong) return ropeAt(o, c.ropeInvFreq, positions, c.ropeAttentionScale);
  const half = c.ropeInvFreq.length;
  const largest = o.max(o.max(o.cast(positions, 'float32'), 1, true), 0, true);
  const long = stepOf(o, o.sub(largest, o.scalar(c.ropeLong.originalMaxPositions - 1)));
  const delta = c.ropeLong.invFreq.map((f, i) => f - c.ropeInvFreq[i]!);
  const invFreq = o.add(o.constFloat(c.ropeInvFreq, [half]), o.mul(o.reshape(long, [1]), o.constFloat(delta, [half])));
  return ropeOf(o, invFreq, positions, c.ropeAttentionScale);
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

/**
 * Rotary embedding on the first `rotaryDim` dimensions of each head of x [B, heads, S, headDim] (cos/sin
 * [B, 1, S, rotaryDim/2]); the other dimensions pass through (Phi-3's partial_rotary_factor).
 */
export function applyPartialRope<T>(o: Ops<T>, x: T, cos: T, sin: T, style: 'interleaved' | 'half', rotaryDim: number): T {
  const [b, h, s, d] = o.shape(x) as [number, number, number, number];
  if (rotaryDim === d) return applyRope(o, x, cos, sin, style);
  const rotated = applyRope(o, o.slice(x, [0, 0, 0, 0], [b, h, s, rotaryDim]), cos, sin, style);
  return o.concat([rotated, o.slice(x, [0, 0, 0, rotaryDim], [b, h, s, d - rotaryDim])], 3);
}

/**
 * Additive attention bias [B, 1, S, P + S] of a causal decoder for S current queries after P past slots: padding
 * keys and future keys hidden, and with `window` also keys `window` or more positions back. Past slot j has
 * position j and the current tokens follow the valid past slots (the past's mask counts them), so a cache buffer
 * with room to spare (valid slots first) puts the current tokens right after its filled slots; a query's distance
 * to a past slot counts the row's real tokens before it, not its padding (a left-padded row sees its prefix as the
 * same row unpadded does, as transformers does on a row without padding).
 */
export function decoderBias<T>(o: Ops<T>, attentionMask: T, opts: { pastMask?: T; window?: number }): T {
  const s = o.shape(attentionMask)[1]!;
  const pastLen = opts.pastMask ? o.shape(opts.pastMask)[1]! : 0;
  const keyMask = keyMaskOf(o, attentionMask, opts.pastMask);
  const { window } = opts;
  if (window === undefined || !opts.pastMask) return attentionBias(o, keyMask, { queryLen: s, pastLen, causal: true, window });
  const b = o.shape(attentionMask)[0]!;
  const keys = pastLen + s;
  // distance query - key = position(i) - j for past slot j (position: the valid past slots plus the row's real
  // tokens ahead of query i), or i - i' for current key i' (padding lies before a row's tokens or after them)
  const isPast = new Float32Array(keys);
  const offset = new Float32Array(s * keys);
  for (let j = 0; j < keys; j++) isPast[j] = j < pastLen ? 1 : 0;
  for (let i = 0; i < s; i++) for (let j = 0; j < keys; j++) offset[i * keys + j] = (j < pastLen ? -j : i - (j - pastLen)) - window + 1;
  const position = o.reshape(o.cast(positionsFrom(o, attentionMask, opts.pastMask), 'float32'), [b, 1, s, 1]);
  const beyond = o.add(o.mul(position, o.constFloat(isPast, [1, 1, 1, keys])), o.constFloat(offset, [1, 1, s, keys]));
  const windowBias = o.scale(stepOf(o, beyond), MASKED);
  return o.add(attentionBias(o, keyMask, { queryLen: s, pastLen, causal: true }), windowBias);
}

export interface DecoderHooks {
  /** extra transforms of q and k per head before the rotary embedding (Qwen3's q/k norms) */
  qkNorm?: <T>(o: Ops<T>, w: WeightOf<T>, layer: number, q: T, k: T) => { q: T; k: T };
}

/** The sliding window of layer `i` (undefined: full attention). */
export function layerWindow(c: Pick<DecoderConfig, 'slidingWindow' | 'slidingLayers'>, i: number): number | undefined {
  if (c.slidingWindow === undefined) return undefined;
  return !c.slidingLayers || c.slidingLayers[i] ? c.slidingWindow : undefined;
}

/** The decoder's computation over any op vocabulary. */
export function decoderFunctions(c: DecoderConfig, hooks: DecoderHooks = {}): LmFunctions {
  const hd = c.headDim;
  const rotaryDim = c.rotaryDim ?? hd;
  const heads = <T>(o: Ops<T>, t: T, b: number, s: number, n: number) => o.transpose(o.reshape(t, [b, s, n, hd]), [0, 2, 1, 3]);
  const proj = <T>(o: Ops<T>, w: WeightOf<T>, x: T, name: string, bias = false) => dense(o, x, w(`${name}.weight`), bias ? w(`${name}.bias`) : undefined);

  /** q [B, S, heads·hd], k and v [B, S, kvHeads·hd] */
  const qkv = <T>(o: Ops<T>, w: WeightOf<T>, p: string, x: T): [T, T, T] => {
    if (!c.fusedProjections) return (['q', 'k', 'v'] as const).map((n) => proj(o, w, x, `${p}.${n}_proj`, c.attentionBias)) as [T, T, T];
    const [b, s] = o.shape(x) as [number, number];
    const fused = proj(o, w, x, `${p}.qkv_proj`, c.attentionBias);
    const q = c.numHeads * hd;
    const kv = c.numKvHeads * hd;
    return [o.slice(fused, [0, 0, 0], [b, s, q]), o.slice(fused, [0, 0, q], [b, s, kv]), o.slice(fused, [0, 0, q + kv], [b, s, kv])];
  };

  /** self-attention; with `at`, only the queries at those positions (one per row): out is [B, 1, H] */
  const attention = <T>(o: Ops<T>, w: WeightOf<T>, i: number, x: T, rope: { cos: T; sin: T }, bias: T, past?: LayerKv<T>, at?: T) => {
    const [b, s] = o.shape(x) as [number, number];
    const sq = at ? 1 : s;
    const p = `${layerPrefix(i)}.self_attn`;
    const [qs, ks, vs] = qkv(o, w, p, x);
    let q = heads(o, at ? atRows(o, qs, at) : qs, b, sq, c.numHeads);
    let k = heads(o, ks, b, s, c.numKvHeads);
    const v = heads(o, vs, b, s, c.numKvHeads);
    if (hooks.qkNorm) ({ q, k } = hooks.qkNorm(o, w, i, q, k));
    const ropeQ = at ? ropeRowsAt(o, rope, at) : rope;
    q = applyPartialRope(o, q, ropeQ.cos, ropeQ.sin, c.ropeStyle, rotaryDim);
    k = applyPartialRope(o, k, rope.cos, rope.sin, c.ropeStyle, rotaryDim);
    const kv = { k, v };
    const all = withPast(o, kv, past);
    const context = attend(o, q, all.k, all.v, at ? biasAt(o, bias, at) : bias, { dropout: c.attentionDropout ?? 0 });
    const merged = o.reshape(o.transpose(context, [0, 2, 1, 3]), [b, sq, c.numHeads * hd]);
    return { out: o.dropout(proj(o, w, merged, `${p}.o_proj`, c.outputBias), c.residDropout ?? 0), kv };
  };

  const mlp = <T>(o: Ops<T>, w: WeightOf<T>, i: number, x: T) => {
    const p = `${layerPrefix(i)}.mlp`;
    let gate: T, up: T;
    if (c.fusedProjections) {
      const [b, s] = o.shape(x) as [number, number];
      const fused = proj(o, w, x, `${p}.gate_up_proj`);
      gate = o.slice(fused, [0, 0, 0], [b, s, c.intermediateSize]);
      up = o.slice(fused, [0, 0, c.intermediateSize], [b, s, c.intermediateSize]);
    } else {
      gate = proj(o, w, x, `${p}.gate_proj`);
      up = proj(o, w, x, `${p}.up_proj`);
    }
    return o.dropout(proj(o, w, o.mul(o.silu(gate), up), `${p}.down_proj`), c.residDropout ?? 0);
  };

  return {
    embed: (o, w, ids) => o.gather(w('model.embed_tokens.weight'), ids),
    hidden<T>(o: Ops<T>, w: WeightOf<T>, inp: HiddenInputs<T>): HiddenOutputs<T> {
      const positions = inp.positionIds ?? positionsFrom(o, inp.attentionMask, inp.past?.mask);
      const rope = decoderRope(o, c, positions);
      const biases = new Map<number | undefined, T>();
      const biasFor = (window: number | undefined): T => {
        if (!biases.has(window)) biases.set(window, decoderBias(o, inp.attentionMask, { pastMask: inp.past?.mask, window }));
        return biases.get(window)!;
      };
      let x = o.dropout(inp.embeds, c.embdDropout ?? 0);
      const present: LayerKv<T>[] = [];
      for (let i = 0; i < c.numLayers; i++) {
        x = o.checkpoint(x);
        const p = layerPrefix(i);
        const bias = biasFor(layerWindow(c, i));
        // the last layer computes only the rows asked for: nothing after it reads the others
        const at = i === c.numLayers - 1 ? inp.at : undefined;
        const attn = attention(o, w, i, o.rmsNorm(x, w(`${p}.input_layernorm.weight`), c.rmsNormEps), rope, bias, inp.past?.layers[i], at);
        x = o.add(at ? atRows(o, x, at) : x, attn.out);
        x = o.add(x, mlp(o, w, i, o.rmsNorm(x, w(`${p}.post_attention_layernorm.weight`), c.rmsNormEps)));
        present.push(attn.kv);
      }
      x = o.checkpoint(x);
      const hidden = o.rmsNorm(x, w('model.norm.weight'), c.rmsNormEps);
      return { hidden, present, ...(inp.at && { rows: o.reshape(hidden, [o.shape(hidden)[0]!, c.hiddenSize]) }) };
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
  randomConfig: (overrides, vocabSize) => randomDecoderConfig(TINYLLAMA, overrides, vocabSize),
};
