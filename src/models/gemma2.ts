import type { Ops } from '../engine/ops.js';
import { ConfigFields, attend, dense, positionsFrom, projectRows, withPast, type LayerKv, type WeightSpec } from './common.js';
import {
  applyRope,
  decoderBias,
  decoderHfFields,
  decoderRope,
  defaultInvFreq,
  describeDecoder,
  layerWindow,
  randomDecoderConfig,
  readDecoderConfig,
  type DecoderConfig,
} from './llama.js';
import type { HiddenInputs, HiddenOutputs, LmFunctions, ModelFamily, WeightOf } from './lm.js';

/**
 * Gemma2ForCausalLM: token embeddings scaled by sqrt(hidden_size) (the scaled rows are the model's
 * inputs_embeds), RMSNorms that scale by (1 + weight), a norm before and after both the attention and the
 * feed-forward block, attention scaled by query_pre_attn_scalar^-0.5 with its scores soft-capped
 * (cap · tanh(s / cap)), sliding-window attention on every other layer (the first one slides), a GELU-tanh gated
 * MLP, and final logits soft-capped; the output head is tied to the embeddings by default.
 */
export interface Gemma2Config extends DecoderConfig {
  queryPreAttnScalar: number;
  /** null: no capping */
  attnLogitSoftcap: number | null;
  finalLogitSoftcap: number | null;
  /** hidden_activation of the gated MLP */
  activation: 'gelu_pytorch_tanh' | 'gelu';
}

const layerPrefix = (i: number) => `model.layers.${i}`;
const NORMS = ['input_layernorm', 'post_attention_layernorm', 'pre_feedforward_layernorm', 'post_feedforward_layernorm'] as const;
const ACTIVATIONS: Record<string, Gemma2Config['activation']> = { gelu_pytorch_tanh: 'gelu_pytorch_tanh', gelu_new: 'gelu_pytorch_tanh', gelu: 'gelu' };

function slidingLayersOf(f: ConfigFields, numLayers: number): boolean[] {
  const types = f.json.layer_types;
  if (!Array.isArray(types)) return Array.from({ length: numLayers }, (_, i) => i % 2 === 0);
  if (types.length !== numLayers) throw new Error(`${f.file}: layer_types has ${types.length} entries for ${numLayers} layers`);
  return types.map((t, i) => {
    if (t !== 'sliding_attention' && t !== 'full_attention') throw new Error(`${f.file}: layer_types[${i}] ${JSON.stringify(t)} is not supported (full_attention, sliding_attention)`);
    return t === 'sliding_attention';
  });
}

function parseConfig(json: Record<string, unknown>, file: string): Gemma2Config {
  const f = new ConfigFields(json, file);
  if (json.model_type !== 'gemma2') throw new Error(`${file}: model_type ${JSON.stringify(json.model_type)} is not gemma2`);
  // the MLP reads hidden_activation (hidden_act is the legacy field Gemma2 ignores)
  const act = json.hidden_activation ?? 'gelu_pytorch_tanh';
  const activation = typeof act === 'string' ? ACTIVATIONS[act] : undefined;
  if (!activation) throw new Error(`${file}: hidden_activation ${JSON.stringify(act)} is not supported (${Object.keys(ACTIVATIONS).join(', ')})`);
  const c = readDecoderConfig(f, { maxPositions: 8192, rmsNormEps: 1e-6, ropeTheta: 10000, tieWordEmbeddings: true, headDim: 256 });
  const cap = (key: string, fallback: number): number | null => (json[key] === null ? null : f.num(key, fallback));
  const bias = f.bool('attention_bias', false);
  return {
    ...c,
    attentionBias: bias,
    ...(bias && { outputBias: true }),
    ...(json.sliding_window !== null && { slidingWindow: f.int('sliding_window', 4096), slidingLayers: slidingLayersOf(f, c.numLayers) }),
    queryPreAttnScalar: f.num('query_pre_attn_scalar', 256),
    attnLogitSoftcap: cap('attn_logit_softcapping', 50),
    finalLogitSoftcap: cap('final_logit_softcapping', 30),
    activation,
    special: { pad: 0, eos: 1, bos: 2, ...c.special },
  };
}

function toHfConfig(c: Gemma2Config): Record<string, unknown> {
  return {
    architectures: ['Gemma2ForCausalLM'],
    model_type: 'gemma2',
    ...decoderHfFields(c),
    hidden_act: c.activation,
    hidden_activation: c.activation,
    attention_bias: c.attentionBias,
    query_pre_attn_scalar: c.queryPreAttnScalar,
    attn_logit_softcapping: c.attnLogitSoftcap,
    final_logit_softcapping: c.finalLogitSoftcap,
    sliding_window: c.slidingWindow ?? null,
    layer_types: Array.from({ length: c.numLayers }, (_, i) => (layerWindow(c, i) !== undefined ? 'sliding_attention' : 'full_attention')),
  };
}

function weights(c: Gemma2Config): WeightSpec[] {
  const h = c.hiddenSize;
  const q = c.numHeads * c.headDim;
  const kv = c.numKvHeads * c.headDim;
  // Gemma stores its norms as offsets from 1 (initialised to 0)
  const specs: WeightSpec[] = [{ name: 'model.embed_tokens.weight', shape: [c.vocabSize, h], init: 'normal' }];
  const linear = (name: string, out: number, inp: number, bias = false, inner?: 'out' | 'in') => {
    specs.push({ name: `${name}.weight`, shape: [out, inp], init: 'normal', ...(inner && { inner: inner === 'out' ? 0 : 1 }) });
    if (bias) specs.push({ name: `${name}.bias`, shape: [out], init: 'zeros', ...(inner === 'out' && { inner: 0 }) });
  };
  for (let i = 0; i < c.numLayers; i++) {
    const p = layerPrefix(i);
    for (const n of NORMS) specs.push({ name: `${p}.${n}.weight`, shape: [h], init: 'zeros' });
    linear(`${p}.self_attn.q_proj`, q, h, c.attentionBias);
    linear(`${p}.self_attn.k_proj`, kv, h, c.attentionBias);
    linear(`${p}.self_attn.v_proj`, kv, h, c.attentionBias);
    linear(`${p}.self_attn.o_proj`, h, q, c.outputBias);
    linear(`${p}.mlp.gate_proj`, c.intermediateSize, h, false, 'out');
    linear(`${p}.mlp.up_proj`, c.intermediateSize, h, false, 'out');
    linear(`${p}.mlp.down_proj`, h, c.intermediateSize, false, 'in');
  }
  specs.push({ name: 'model.norm.weight', shape: [h], init: 'zeros' });
  if (!c.tieWordEmbeddings) specs.push({ name: 'lm_head.weight', shape: [c.vocabSize, h], init: 'normal' });
  return specs;
}

/** cap · tanh(x / cap) */
function softcap<T>(o: Ops<T>, x: T, cap: number | null): T {
  return cap ? o.scale(o.tanh(o.scale(x, 1 / cap)), cap) : x;
}

function functions(c: Gemma2Config): LmFunctions {
  const hd = c.headDim;
  // Gemma2TextScaledWordEmbedding multiplies by sqrt(hidden_size) as a float32 tensor
  const embedScale = Math.fround(Math.sqrt(c.hiddenSize));
  const norm = <T>(o: Ops<T>, w: WeightOf<T>, x: T, name: string) => o.rmsNorm(x, o.add(w(`${name}.weight`), o.scalar(1)), c.rmsNormEps);
  const proj = <T>(o: Ops<T>, w: WeightOf<T>, x: T, name: string, bias = false) => dense(o, x, w(`${name}.weight`), bias ? w(`${name}.bias`) : undefined);
  const heads = <T>(o: Ops<T>, t: T, b: number, s: number, n: number) => o.transpose(o.reshape(t, [b, s, n, hd]), [0, 2, 1, 3]);

  const attention = <T>(o: Ops<T>, w: WeightOf<T>, i: number, x: T, rope: { cos: T; sin: T }, bias: T, past?: LayerKv<T>) => {
    const [b, s] = o.shape(x) as [number, number];
    const p = `${layerPrefix(i)}.self_attn`;
    const q = applyRope(o, heads(o, proj(o, w, x, `${p}.q_proj`, c.attentionBias), b, s, c.numHeads), rope.cos, rope.sin, 'half');
    const k = applyRope(o, heads(o, proj(o, w, x, `${p}.k_proj`, c.attentionBias), b, s, c.numKvHeads), rope.cos, rope.sin, 'half');
    const v = heads(o, proj(o, w, x, `${p}.v_proj`, c.attentionBias), b, s, c.numKvHeads);
    const kv = { k, v };
    const all = withPast(o, kv, past);
    const context = attend(o, q, all.k, all.v, bias, { scale: Math.pow(c.queryPreAttnScalar, -0.5), ...(c.attnLogitSoftcap && { softcap: c.attnLogitSoftcap }), dropout: c.attentionDropout ?? 0 });
    const merged = o.reshape(o.transpose(context, [0, 2, 1, 3]), [b, s, c.numHeads * hd]);
    return { out: proj(o, w, merged, `${p}.o_proj`, c.outputBias), kv };
  };

  const mlp = <T>(o: Ops<T>, w: WeightOf<T>, i: number, x: T) => {
    const p = `${layerPrefix(i)}.mlp`;
    const gate = proj(o, w, x, `${p}.gate_proj`);
    const act = c.activation === 'gelu' ? o.gelu(gate) : o.geluTanh(gate);
    return proj(o, w, o.mul(act, proj(o, w, x, `${p}.up_proj`)), `${p}.down_proj`);
  };

  return {
    embed: (o, w, ids) => o.scale(o.gather(w('model.embed_tokens.weight'), ids), embedScale),
    hidden<T>(o: Ops<T>, w: WeightOf<T>, inp: HiddenInputs<T>): HiddenOutputs<T> {
      const positions = inp.positionIds ?? positionsFrom(o, inp.attentionMask, inp.past?.mask);
      const rope = decoderRope(o, c, positions);
      const biases = new Map<number | undefined, T>();
      const biasFor = (window: number | undefined): T => {
        if (!biases.has(window)) biases.set(window, decoderBias(o, inp.attentionMask, { pastMask: inp.past?.mask, window }));
        return biases.get(window)!;
      };
      let x = inp.embeds;
      const present: LayerKv<T>[] = [];
      for (let i = 0; i < c.numLayers; i++) {
        x = o.checkpoint(x);
        const p = layerPrefix(i);
        const attn = attention(o, w, i, norm(o, w, x, `${p}.input_layernorm`), rope, biasFor(layerWindow(c, i)), inp.past?.layers[i]);
        x = o.add(x, norm(o, w, attn.out, `${p}.post_attention_layernorm`));
        x = o.add(x, norm(o, w, mlp(o, w, i, norm(o, w, x, `${p}.pre_feedforward_layernorm`)), `${p}.post_feedforward_layernorm`));
        present.push(attn.kv);
      }
      x = o.checkpoint(x);
      return { hidden: norm(o, w, x, 'model.norm'), present };
    },
    logits: (o, w, rows, candidates) =>
      softcap(o, projectRows(o, rows, w(c.tieWordEmbeddings ? 'model.embed_tokens.weight' : 'lm_head.weight'), undefined, candidates), c.finalLogitSoftcap),
  };
}

/** Gemma-2-2B's shape: the default for random Gemma-2-shaped models. */
export const GEMMA2_2B: Gemma2Config = {
  vocabSize: 256000,
  hiddenSize: 2304,
  intermediateSize: 9216,
  numLayers: 26,
  numHeads: 8,
  numKvHeads: 4,
  headDim: 256,
  maxPositions: 8192,
  rmsNormEps: 1e-6,
  ropeTheta: 10000,
  ropeScaling: null,
  ropeInvFreq: defaultInvFreq(10000, 256),
  ropeAttentionScale: 1,
  tieWordEmbeddings: true,
  attentionBias: false,
  ropeStyle: 'half',
  slidingWindow: 4096,
  slidingLayers: [true, false],
  queryPreAttnScalar: 256,
  attnLogitSoftcap: 50,
  finalLogitSoftcap: 30,
  activation: 'gelu_pytorch_tanh',
  special: { pad: 0, eos: 1, bos: 2 },
};

export const gemma2Family: ModelFamily<Gemma2Config> = {
  name: 'gemma2',
  modelTypes: ['gemma2'],
  kind: 'causal',
  parseConfig,
  toHfConfig,
  describe: (cfg) => ({
    ...describeDecoder(cfg),
    past: {
      ptune: true,
      transformers: true,
    },
  }),
  weights,
  functions,
  specialIds: (c) => c.special,
  randomConfig: (overrides, vocabSize) => randomDecoderConfig(GEMMA2_2B, overrides, vocabSize),
};
