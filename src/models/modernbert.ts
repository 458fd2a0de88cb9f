import type { Ops } from '../engine/ops.js';
import { ConfigFields, MASKED, attend, attentionBias, dense, keyMaskOf, mergeHeads, projectRows, splitHeads, withPast, type LayerKv, type WeightSpec } from './common.js';
import type { HiddenInputs, HiddenOutputs, LmFunctions, ModelFamily, WeightOf } from './lm.js';

/**
 * ModernBertForMaskedLM (eager / padded path): embedding LayerNorm, pre-norm layers (layer 0 without its
 * attention norm) with rotary attention — global layers over all keys with global_rope_theta, sliding
 * layers over |i - j| <= local_attention / 2 with local_rope_theta — and a GeGLU MLP, a final norm, and the
 * head dense → activation → norm → decoder (tied to the token embeddings, own bias). No biases by default
 * (attention_bias, mlp_bias, norm_bias, classifier_bias false).
 */
export interface ModernBertConfig {
  vocabSize: number;
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  maxPositions: number;
  normEps: number;
  normBias: boolean;
  attentionBias: boolean;
  mlpBias: boolean;
  classifierBias: boolean;
  decoderBias: boolean;
  hiddenActivation: Activation;
  classifierActivation: Activation;
  /** per layer: 'full_attention' (global) or 'sliding_attention' (local) */
  layerTypes: ('full_attention' | 'sliding_attention')[];
  /** local_attention: the window of sliding layers spans local_attention / 2 tokens either side */
  localAttention: number;
  globalRopeTheta: number;
  localRopeTheta: number;
  padTokenId: number;
  tieWordEmbeddings: boolean;
  /** dropout rates when the LM trains: embedding_dropout, attention_dropout (probabilities and Wo's output), mlp_dropout */
  embeddingDropout: number;
  attentionDropout: number;
  mlpDropout: number;
}

type Activation = 'gelu' | 'gelu_new' | 'relu' | 'silu';
const ACTIVATIONS: Record<string, Activation> = { gelu: 'gelu', gelu_new: 'gelu_new', gelu_pytorch_tanh: 'gelu_new', relu: 'relu', silu: 'silu' };

export const MODERNBERT_BASE: ModernBertConfig = {
  vocabSize: 50368,
  hiddenSize: 768,
  intermediateSize: 1152,
  numLayers: 22,
  numHeads: 12,
  maxPositions: 8192,
  normEps: 1e-5,
  normBias: false,
  attentionBias: false,
  mlpBias: false,
  classifierBias: false,
  decoderBias: true,
  hiddenActivation: 'gelu',
  classifierActivation: 'gelu',
  layerTypes: Array.from({ length: 22 }, (_, i) => (i % 3 ? 'sliding_attention' : 'full_attention')),
  localAttention: 128,
  globalRopeTheta: 160000,
  localRopeTheta: 10000,
  padTokenId: 50283,
  tieWordEmbeddings: true,
  embeddingDropout: 0,
  attentionDropout: 0,
  mlpDropout: 0,
};

/** rope_parameters (transformers v5 layout) of one attention type: its theta, refusing scaled variants. */
function ropeTheta(json: Record<string, unknown>, kind: 'full_attention' | 'sliding_attention', fallback: number, file: string): number {
  const params = json.rope_parameters as Record<string, Record<string, unknown> | undefined> | null | undefined;
  const p = params?.[kind];
  if (!p) return fallback;
  const f = new ConfigFields(p, `${file} rope_parameters.${kind}`);
  f.refuse('rope_type', (v) => v === 'default', 'only "default"');
  return f.num('rope_theta', fallback);
}

function parseConfig(json: Record<string, unknown>, file: string): ModernBertConfig {
  const f = new ConfigFields(json, file);
  const activation = (key: string) => {
    const a = ACTIVATIONS[f.str(key, 'gelu')];
    if (!a) throw new Error(`${file}: unsupported ${key} ${JSON.stringify(json[key])}`);
    return a;
  };
  f.refuse('rope_scaling', () => false, 'rotary scaling is not implemented');
  const numLayers = f.int('num_hidden_layers', 22);
  let layerTypes: ModernBertConfig['layerTypes'];
  if (Array.isArray(json.layer_types)) {
    layerTypes = json.layer_types as ModernBertConfig['layerTypes'];
    if (layerTypes.length !== numLayers || layerTypes.some((t) => t !== 'full_attention' && t !== 'sliding_attention')) {
      throw new Error(`${file}: layer_types must list "full_attention" / "sliding_attention" for each of the ${numLayers} layers`);
    }
  } else {
    const every = f.int('global_attn_every_n_layers', 3);
    layerTypes = Array.from({ length: numLayers }, (_, i) => (i % every ? 'sliding_attention' : 'full_attention'));
  }
  const globalTheta = f.num('global_rope_theta', 160000);
  // local_rope_theta null means the sliding layers use the global theta
  const localTheta = json.local_rope_theta === null ? globalTheta : f.num('local_rope_theta', 10000);
  const cfg: ModernBertConfig = {
    vocabSize: f.int('vocab_size', 50368),
    hiddenSize: f.int('hidden_size', 768),
    intermediateSize: f.int('intermediate_size', 1152),
    numLayers,
    numHeads: f.int('num_attention_heads', 12),
    maxPositions: f.int('max_position_embeddings', 8192),
    normEps: f.num('norm_eps', 1e-5),
    normBias: f.bool('norm_bias', false),
    attentionBias: f.bool('attention_bias', false),
    mlpBias: f.bool('mlp_bias', false),
    classifierBias: f.bool('classifier_bias', false),
    decoderBias: f.bool('decoder_bias', true),
    hiddenActivation: activation('hidden_activation'),
    classifierActivation: activation('classifier_activation'),
    layerTypes,
    localAttention: f.int('local_attention', 128),
    globalRopeTheta: ropeTheta(json, 'full_attention', globalTheta, file),
    localRopeTheta: ropeTheta(json, 'sliding_attention', localTheta, file),
    padTokenId: f.id('pad_token_id') ?? 50283,
    tieWordEmbeddings: f.bool('tie_word_embeddings', true),
    embeddingDropout: f.num('embedding_dropout', 0),
    attentionDropout: f.num('attention_dropout', 0),
    mlpDropout: f.num('mlp_dropout', 0),
  };
  if (cfg.hiddenSize % cfg.numHeads !== 0) throw new Error(`${file}: hidden_size ${cfg.hiddenSize} is not divisible by num_attention_heads ${cfg.numHeads}`);
  return cfg;
}

function toHfConfig(cfg: ModernBertConfig): Record<string, unknown> {
  // the 4.x field when a global layer every n layers describes the layout, else v5's layer_types
  const every = Array.from({ length: cfg.numLayers }, (_, n) => n + 1).find((n) => cfg.layerTypes.every((t, i) => (t === 'full_attention') === (i % n === 0)));
  return {
    architectures: ['ModernBertForMaskedLM'],
    model_type: 'modernbert',
    vocab_size: cfg.vocabSize,
    hidden_size: cfg.hiddenSize,
    intermediate_size: cfg.intermediateSize,
    num_hidden_layers: cfg.numLayers,
    num_attention_heads: cfg.numHeads,
    max_position_embeddings: cfg.maxPositions,
    norm_eps: cfg.normEps,
    norm_bias: cfg.normBias,
    attention_bias: cfg.attentionBias,
    mlp_bias: cfg.mlpBias,
    classifier_bias: cfg.classifierBias,
    decoder_bias: cfg.decoderBias,
    hidden_activation: cfg.hiddenActivation,
    classifier_activation: cfg.classifierActivation,
    ...(every ? { global_attn_every_n_layers: every } : { layer_types: cfg.layerTypes }),
    local_attention: cfg.localAttention,
    global_rope_theta: cfg.globalRopeTheta,
    local_rope_theta: cfg.localRopeTheta,
    pad_token_id: cfg.padTokenId,
    tie_word_embeddings: cfg.tieWordEmbeddings,
    embedding_dropout: cfg.embeddingDropout,
    attention_dropout: cfg.attentionDropout,
    mlp_dropout: cfg.mlpDropout,
    torch_dtype: 'float32',
  };
}

const WORD = 'model.embeddings.tok_embeddings.weight';
const layerPrefix = (i: number) => `model.layers.${i}`;

function weights(cfg: ModernBertConfig): WeightSpec[] {
  const h = cfg.hiddenSize;
  const specs: WeightSpec[] = [];
  const linear = (p: string, out: number, inp: number, bias: boolean) => {
    specs.push({ name: `${p}.weight`, shape: [out, inp], init: 'normal' });
    if (bias) specs.push({ name: `${p}.bias`, shape: [out], init: 'zeros' });
  };
  const norm = (p: string) => {
    specs.push({ name: `${p}.weight`, shape: [h], init: 'ones' });
    if (cfg.normBias) specs.push({ name: `${p}.bias`, shape: [h], init: 'zeros' });
  };
  specs.push({ name: WORD, shape: [cfg.vocabSize, h], init: 'normal' });
  norm('model.embeddings.norm');
  for (let i = 0; i < cfg.numLayers; i++) {
    const p = layerPrefix(i);
    if (i > 0) norm(`${p}.attn_norm`);
    linear(`${p}.attn.Wqkv`, 3 * h, h, cfg.attentionBias);
    linear(`${p}.attn.Wo`, h, h, cfg.attentionBias);
    norm(`${p}.mlp_norm`);
    linear(`${p}.mlp.Wi`, 2 * cfg.intermediateSize, h, cfg.mlpBias);
    linear(`${p}.mlp.Wo`, h, cfg.intermediateSize, cfg.mlpBias);
  }
  norm('model.final_norm');
  linear('head.dense', h, h, cfg.classifierBias);
  norm('head.norm');
  if (!cfg.tieWordEmbeddings) specs.push({ name: 'decoder.weight', shape: [cfg.vocabSize, h], init: 'normal' });
  if (cfg.decoderBias) specs.push({ name: 'decoder.bias', shape: [cfg.vocabSize], init: 'zeros' });
  return specs;
}

/** Rotary inverse frequencies in float32 as transformers computes them: 1 / theta^(2i / d). */
function invFreq(theta: number, headDim: number): Float32Array {
  const f = Math.fround;
  return Float32Array.from({ length: headDim / 2 }, (_, i) => f(1 / f(Math.pow(f(theta), f((2 * i) / headDim)))));
}

/** rotate_half rotary embedding of x [B, heads, S, d] with cos / sin [B, 1, S, d/2]. */
function rotate<T>(o: Ops<T>, x: T, cos: T, sin: T): T {
  const [b, h, s, d] = o.shape(x) as [number, number, number, number];
  const x1 = o.slice(x, [0, 0, 0, 0], [b, h, s, d / 2]);
  const x2 = o.slice(x, [0, 0, 0, d / 2], [b, h, s, d / 2]);
  return o.concat([o.sub(o.mul(x1, cos), o.mul(x2, sin)), o.add(o.mul(x1, sin), o.mul(x2, cos))], 3);
}

function activate<T>(o: Ops<T>, a: Activation, x: T): T {
  if (a === 'gelu') return o.gelu(x);
  if (a === 'gelu_new') return o.geluTanh(x);
  if (a === 'relu') return o.relu(x);
  return o.silu(x);
}

function functions(cfg: ModernBertConfig): LmFunctions {
  const h = cfg.hiddenSize;
  const heads = cfg.numHeads;
  const headDim = h / heads;
  const norm = <T>(o: Ops<T>, w: WeightOf<T>, x: T, p: string) =>
    o.layerNorm(x, w(`${p}.weight`), cfg.normBias ? w(`${p}.bias`) : o.constFloat(new Float32Array(h), [h]), cfg.normEps);
  const lin = <T>(o: Ops<T>, w: WeightOf<T>, x: T, p: string, bias: boolean) => dense(o, x, w(`${p}.weight`), bias ? w(`${p}.bias`) : undefined);
  const half = Math.floor(cfg.localAttention / 2);

  /**
   * One attention layer; keys and values before the tokens (deep prompts) have no position: no rotation, and
   * every query sees them, in local layers too.
   */
  const attention = <T>(o: Ops<T>, w: WeightOf<T>, p: string, x: T, rope: { cos: T; sin: T }, bias: T, past?: LayerKv<T>): { out: T; kv: LayerKv<T> } => {
    const [b, s] = o.shape(x) as [number, number];
    const qkv = lin(o, w, x, `${p}.Wqkv`, cfg.attentionBias);
    // Wqkv's output is [3, heads, headDim] per token: q, k, v are consecutive blocks of hidden_size columns
    const part = (k: number) => splitHeads(o, o.slice(qkv, [0, 0, k * h], [b, s, h]), heads);
    const q = rotate(o, part(0), rope.cos, rope.sin);
    const k = rotate(o, part(1), rope.cos, rope.sin);
    const v = part(2);
    const all = withPast(o, { k, v }, past);
    const context = mergeHeads(o, attend(o, q, all.k, all.v, bias, { scale: 1 / Math.sqrt(headDim), dropout: cfg.attentionDropout }));
    const out = o.dropout(lin(o, w, context, `${p}.Wo`, cfg.attentionBias), cfg.attentionDropout);
    return { out, kv: { k, v } };
  };

  return {
    embed: (o, w, ids) => o.gather(w(WORD), ids),
    hidden<T>(o: Ops<T>, w: WeightOf<T>, inp: HiddenInputs<T>): HiddenOutputs<T> {
      const [b, s] = o.shape(inp.embeds) as [number, number];
      // position_ids default to arange(S) in every row (the padded, non-flash path)
      const positions = inp.positionIds ?? o.constInt(Array.from({ length: b * s }, (_, k) => k % s), [b, s]);
      const angles = (theta: number) => o.mul(o.reshape(o.cast(positions, 'float32'), [b, 1, s, 1]), o.constFloat(invFreq(theta, headDim), [headDim / 2]));
      const ropes = new Map<number, { cos: T; sin: T }>();
      const ropeFor = (theta: number) => {
        if (!ropes.has(theta)) {
          const a = angles(theta);
          ropes.set(theta, { cos: o.cos(a), sin: o.sin(a) });
        }
        return ropes.get(theta)!;
      };
      const pastLen = inp.past ? o.shape(inp.past.mask)[1]! : 0;
      const keys = pastLen + s;
      const global = attentionBias(o, keyMaskOf(o, inp.attentionMask, inp.past?.mask), { queryLen: s, pastLen, causal: false });
      let local: T | undefined;
      const localBias = () => {
        if (!local) {
          const pattern = new Float32Array(s * keys);
          for (let i = 0; i < s; i++) for (let j = 0; j < s; j++) if (Math.abs(i - j) > half) pattern[i * keys + pastLen + j] = MASKED;
          local = o.add(global, o.constFloat(pattern, [1, 1, s, keys]));
        }
        return local;
      };
      let x = o.dropout(norm(o, w, inp.embeds, 'model.embeddings.norm'), cfg.embeddingDropout);
      const present: LayerKv<T>[] = [];
      for (let i = 0; i < cfg.numLayers; i++) {
        x = o.checkpoint(x);
        const p = layerPrefix(i);
        const sliding = cfg.layerTypes[i] === 'sliding_attention';
        const rope = ropeFor(sliding ? cfg.localRopeTheta : cfg.globalRopeTheta);
        const a = attention(o, w, `${p}.attn`, i === 0 ? x : norm(o, w, x, `${p}.attn_norm`), rope, sliding ? localBias() : global, inp.past?.layers[i]);
        present.push(a.kv);
        x = o.add(x, a.out);
        const wi = lin(o, w, norm(o, w, x, `${p}.mlp_norm`), `${p}.mlp.Wi`, cfg.mlpBias);
        const input = o.slice(wi, [0, 0, 0], [b, s, cfg.intermediateSize]);
        const gate = o.slice(wi, [0, 0, cfg.intermediateSize], [b, s, cfg.intermediateSize]);
        x = o.add(x, lin(o, w, o.dropout(o.mul(activate(o, cfg.hiddenActivation, input), gate), cfg.mlpDropout), `${p}.mlp.Wo`, cfg.mlpBias));
      }
      x = o.checkpoint(x);
      return { hidden: norm(o, w, x, 'model.final_norm'), present };
    },
    logits(o, w, rows, candidates) {
      const t = norm(o, w, activate(o, cfg.classifierActivation, lin(o, w, rows, 'head.dense', cfg.classifierBias)), 'head.norm');
      return projectRows(o, t, w(cfg.tieWordEmbeddings ? WORD : 'decoder.weight'), cfg.decoderBias ? w('decoder.bias') : undefined, candidates);
    },
  };
}

export const modernbertFamily: ModelFamily<ModernBertConfig> = {
  name: 'modernbert',
  modelTypes: ['modernbert'],
  kind: 'masked',
  parseConfig,
  toHfConfig,
  describe: (cfg) => ({
    past: { ptune: true, transformers: false, positioned: false },
    vocabSize: cfg.vocabSize,
    hiddenSize: cfg.hiddenSize,
    numLayers: cfg.numLayers,
    numHeads: cfg.numHeads,
    numKvHeads: cfg.numHeads,
    headDim: cfg.hiddenSize / cfg.numHeads,
    intermediateSize: cfg.intermediateSize,
    maxPositions: cfg.maxPositions,
    paddingSide: 'right',
    tokenTypes: false,
  }),
  weights,
  functions,
  specialIds: (cfg) => ({ pad: cfg.padTokenId }),
  randomConfig: (overrides, vocabSize) => {
    const cfg = { ...MODERNBERT_BASE, ...(overrides as Partial<ModernBertConfig>), vocabSize };
    if (cfg.layerTypes.length !== cfg.numLayers) cfg.layerTypes = Array.from({ length: cfg.numLayers }, (_, i) => (i % 3 ? 'sliding_attention' : 'full_attention'));
    return cfg;
  },
};
