import type { Ops } from '../engine/ops.js';
import { ConfigFields, attentionBias, dense, keyMaskOf, mergeHeads, projectRows, splitHeads, withPast, type LayerKv, type WeightSpec } from './common.js';
import type { HiddenInputs, HiddenOutputs, LmFunctions, ModelFamily, WeightOf } from './lm.js';

/**
 * DebertaV2ForMaskedLM (DeBERTa-v2 and -v3): post-LN layers with disentangled attention — content→content
 * scores plus content→position (c2p: queries against projected relative-position embeddings) and
 * position→content (p2c: keys against them), indexed by the (log-bucketed) relative distance and scaled by
 * 1/sqrt(head_dim · (1 + number of position terms)); relative embeddings shared by all layers (LayerNorm'd
 * with norm_rel_ebd "layer_norm"), projected by each layer's own query/key projections when share_att_key.
 * The MLM head is transformers' legacy one (cls.predictions.*): dense → activation → LayerNorm → the tied
 * word embeddings (+ cls.predictions.bias).
 */
export interface DebertaV2Config {
  vocabSize: number;
  hiddenSize: number;
  /** width of the word (and position / token-type) embeddings; embed_proj maps it to hiddenSize when it differs */
  embeddingSize: number;
  numLayers: number;
  numHeads: number;
  intermediateSize: number;
  maxPositions: number;
  typeVocabSize: number;
  layerNormEps: number;
  hiddenAct: 'gelu' | 'gelu_new' | 'relu';
  padTokenId: number;
  /** absolute position embeddings added to the input (false for DeBERTa-v2/v3) */
  positionBiasedInput: boolean;
  relativeAttention: boolean;
  /** -1 / 0: none; else relative distances are log-bucketed into this many buckets per side */
  positionBuckets: number;
  /** max_relative_positions as transformers resolves it (values below 1 mean max_position_embeddings) */
  maxRelativePositions: number;
  /** c2p / p2c terms */
  posAttType: ('c2p' | 'p2c')[];
  shareAttKey: boolean;
  /** norm_rel_ebd contains "layer_norm": the relative embeddings pass deberta.encoder.LayerNorm */
  normRelEmbeddings: boolean;
  /** dropout rates when the LM trains: hidden states (embeddings, sublayer outputs, each layer's relative embeddings), attention probabilities */
  hiddenDropout: number;
  attentionDropout: number;
}

export const DEBERTA_V3_BASE: DebertaV2Config = {
  vocabSize: 128100,
  hiddenSize: 768,
  embeddingSize: 768,
  numLayers: 12,
  numHeads: 12,
  intermediateSize: 3072,
  maxPositions: 512,
  typeVocabSize: 0,
  layerNormEps: 1e-7,
  hiddenAct: 'gelu',
  padTokenId: 0,
  positionBiasedInput: false,
  relativeAttention: true,
  positionBuckets: 256,
  maxRelativePositions: 512,
  posAttType: ['p2c', 'c2p'],
  shareAttKey: true,
  normRelEmbeddings: true,
  hiddenDropout: 0.1,
  attentionDropout: 0.1,
};

const ACTIVATIONS: Record<string, DebertaV2Config['hiddenAct']> = { gelu: 'gelu', gelu_new: 'gelu_new', gelu_pytorch_tanh: 'gelu_new', relu: 'relu' };

function parseConfig(json: Record<string, unknown>, file: string): DebertaV2Config {
  const f = new ConfigFields(json, file);
  const act = ACTIVATIONS[f.str('hidden_act', 'gelu')];
  if (!act) throw new Error(`${file}: unsupported hidden_act ${JSON.stringify(json.hidden_act)}`);
  f.refuse('legacy', (v) => v === true, 'the non-legacy head lm_predictions.lm_head.* is not one transformers loads as a masked-LM head');
  f.refuse('conv_kernel_size', (v) => v === 0, 'the convolution layer of DeBERTa-v2 xlarge/xxlarge is not implemented');
  const hiddenSize = f.int('hidden_size', 1536);
  const numHeads = f.int('num_attention_heads', 24);
  f.refuse('attention_head_size', (v) => v === hiddenSize / numHeads, 'only hidden_size / num_attention_heads');
  const rawTypes = json.pos_att_type ?? [];
  const list = typeof rawTypes === 'string' ? rawTypes.toLowerCase().split('|').map((t) => t.trim()) : rawTypes;
  if (!Array.isArray(list) || list.some((t) => t !== 'c2p' && t !== 'p2c')) {
    throw new Error(`${file}: pos_att_type ${JSON.stringify(rawTypes)} is not supported (a list of "c2p", "p2c")`);
  }
  const norms = f.str('norm_rel_ebd', 'none').toLowerCase().split('|').map((t) => t.trim());
  if (norms.some((t) => t !== 'none' && t !== 'layer_norm')) throw new Error(`${file}: norm_rel_ebd ${JSON.stringify(json.norm_rel_ebd)} is not supported ("none", "layer_norm")`);
  const maxPositions = f.int('max_position_embeddings', 512);
  const maxRel = f.num('max_relative_positions', -1);
  const typeVocabSize = f.num('type_vocab_size', 0);
  if (!Number.isInteger(typeVocabSize) || typeVocabSize < 0) throw new Error(`${file}: field "type_vocab_size" must be a non-negative integer, got ${typeVocabSize}`);
  const cfg: DebertaV2Config = {
    vocabSize: f.int('vocab_size', 128100),
    hiddenSize,
    embeddingSize: f.int('embedding_size', hiddenSize),
    numLayers: f.int('num_hidden_layers', 24),
    numHeads,
    intermediateSize: f.int('intermediate_size', 6144),
    maxPositions,
    typeVocabSize,
    layerNormEps: f.num('layer_norm_eps', 1e-7),
    hiddenAct: act,
    padTokenId: f.id('pad_token_id') ?? 0,
    hiddenDropout: f.num('hidden_dropout_prob', 0.1),
    attentionDropout: f.num('attention_probs_dropout_prob', 0.1),
    positionBiasedInput: f.bool('position_biased_input', true),
    relativeAttention: f.bool('relative_attention', false),
    positionBuckets: f.num('position_buckets', -1),
    maxRelativePositions: maxRel < 1 ? maxPositions : maxRel,
    posAttType: [...new Set(list as ('c2p' | 'p2c')[])],
    shareAttKey: f.bool('share_att_key', false),
    normRelEmbeddings: norms.includes('layer_norm'),
  };
  if (hiddenSize % numHeads !== 0) throw new Error(`${file}: hidden_size ${hiddenSize} is not divisible by num_attention_heads ${numHeads}`);
  return cfg;
}

function toHfConfig(cfg: DebertaV2Config): Record<string, unknown> {
  return {
    architectures: ['DebertaV2ForMaskedLM'],
    model_type: 'deberta-v2',
    vocab_size: cfg.vocabSize,
    hidden_size: cfg.hiddenSize,
    ...(cfg.embeddingSize !== cfg.hiddenSize && { embedding_size: cfg.embeddingSize }),
    num_hidden_layers: cfg.numLayers,
    num_attention_heads: cfg.numHeads,
    intermediate_size: cfg.intermediateSize,
    max_position_embeddings: cfg.maxPositions,
    type_vocab_size: cfg.typeVocabSize,
    layer_norm_eps: cfg.layerNormEps,
    hidden_act: cfg.hiddenAct,
    pad_token_id: cfg.padTokenId,
    hidden_dropout_prob: cfg.hiddenDropout,
    attention_probs_dropout_prob: cfg.attentionDropout,
    position_biased_input: cfg.positionBiasedInput,
    relative_attention: cfg.relativeAttention,
    position_buckets: cfg.positionBuckets,
    max_relative_positions: cfg.maxRelativePositions,
    pos_att_type: cfg.posAttType,
    share_att_key: cfg.shareAttKey,
    norm_rel_ebd: cfg.normRelEmbeddings ? 'layer_norm' : 'none',
    legacy: true,
    torch_dtype: 'float32',
  };
}

const EMB = 'deberta.embeddings';
const WORD = `${EMB}.word_embeddings.weight`;
const layerPrefix = (i: number) => `deberta.encoder.layer.${i}`;
const HEAD = 'cls.predictions';

/** Rows of the relative embedding table: 2 × the attention span (buckets, else max_relative_positions). */
function attSpan(cfg: DebertaV2Config): number {
  return cfg.positionBuckets > 0 ? cfg.positionBuckets : cfg.maxRelativePositions;
}

/** The head's tensors are absent (a DeBERTa-v3 discriminator checkpoint stores lm_predictions.* / mask_predictions.*). */
const NO_MLM_HEAD =
  `checkpoint has no usable masked-LM head: ${HEAD}.* is missing (DeBERTa-v3 checkpoints store ` +
  'lm_predictions.* / mask_predictions.*, which transformers does not load as an MLM head), and P-tuning against a random ' +
  'head would learn nothing; a linear classification head over the hidden states is the route for this model';

function weights(cfg: DebertaV2Config): WeightSpec[] {
  const { hiddenSize: h, embeddingSize: e } = cfg;
  const specs: WeightSpec[] = [];
  const linear = (p: string, out: number, inp: number, bias = true, inner?: 'out' | 'in') => {
    specs.push({ name: `${p}.weight`, shape: [out, inp], init: 'normal', ...(inner && { inner: inner === 'out' ? 0 : 1 }) });
    if (bias) specs.push({ name: `${p}.bias`, shape: [out], init: 'zeros', ...(inner === 'out' && { inner: 0 }) });
  };
  const norm = (p: string, n = h) => {
    specs.push({ name: `${p}.weight`, shape: [n], init: 'ones' });
    specs.push({ name: `${p}.bias`, shape: [n], init: 'zeros' });
  };
  specs.push({ name: WORD, shape: [cfg.vocabSize, e], init: 'normal' });
  if (cfg.positionBiasedInput) specs.push({ name: `${EMB}.position_embeddings.weight`, shape: [cfg.maxPositions, e], init: 'normal' });
  if (cfg.typeVocabSize > 0) specs.push({ name: `${EMB}.token_type_embeddings.weight`, shape: [cfg.typeVocabSize, e], init: 'normal' });
  if (e !== h) linear(`${EMB}.embed_proj`, h, e, false);
  norm(`${EMB}.LayerNorm`);
  for (let i = 0; i < cfg.numLayers; i++) {
    const p = layerPrefix(i);
    linear(`${p}.attention.self.query_proj`, h, h);
    linear(`${p}.attention.self.key_proj`, h, h);
    linear(`${p}.attention.self.value_proj`, h, h);
    if (cfg.relativeAttention && !cfg.shareAttKey) {
      if (cfg.posAttType.includes('c2p')) linear(`${p}.attention.self.pos_key_proj`, h, h);
      if (cfg.posAttType.includes('p2c')) linear(`${p}.attention.self.pos_query_proj`, h, h);
    }
    linear(`${p}.attention.output.dense`, h, h);
    norm(`${p}.attention.output.LayerNorm`);
    linear(`${p}.intermediate.dense`, cfg.intermediateSize, h, true, 'out');
    linear(`${p}.output.dense`, h, cfg.intermediateSize, true, 'in');
    norm(`${p}.output.LayerNorm`);
  }
  if (cfg.relativeAttention) specs.push({ name: 'deberta.encoder.rel_embeddings.weight', shape: [2 * attSpan(cfg), h], init: 'normal' });
  if (cfg.normRelEmbeddings) norm('deberta.encoder.LayerNorm');
  const head = specs.length;
  linear(`${HEAD}.transform.dense`, e, h);
  norm(`${HEAD}.transform.LayerNorm`, e);
  specs.push({ name: `${HEAD}.bias`, shape: [cfg.vocabSize], init: 'zeros', aliases: [`${HEAD}.decoder.bias`] });
  for (const s of specs.slice(head)) s.missing = NO_MLM_HEAD;
  return specs;
}

/**
 * transformers' make_log_bucket_position for one distance, in float32 as torch computes it: distances up to
 * half the buckets stay, longer ones are log-spaced up to max_position.
 */
export function logBucket(rel: number, bucketSize: number, maxPosition: number): number {
  const f = Math.fround;
  const mid = Math.floor(bucketSize / 2);
  const abs = rel < mid && rel > -mid ? mid - 1 : Math.abs(rel);
  if (abs <= mid) return rel;
  const ratio = f(f(Math.log(f(abs / mid))) / f(Math.log(f((maxPosition - 1) / mid))));
  return Math.sign(rel) * (Math.ceil(f(ratio * (mid - 1))) + mid);
}

/** Relative position of query i to key j (i - j), bucketed as configured. */
function relativePosition(cfg: DebertaV2Config, i: number, j: number): number {
  const rel = i - j;
  return cfg.positionBuckets > 0 && cfg.maxRelativePositions > 0 ? logBucket(rel, cfg.positionBuckets, cfg.maxRelativePositions) : rel;
}

/**
 * out[b, h, i, j] = x[b, h, r(i, j), index(i, j)] for x [B, heads, S, R]: transformers' torch.gather along the
 * last axis, as one row gather of x laid out [S·R, B·heads] (`rowOf(i, j)` picks the row of x's third axis).
 */
function gatherLast<T>(o: Ops<T>, x: T, index: (i: number, j: number) => number, rowOf: (i: number, j: number) => number): T {
  const [b, heads, s, r] = o.shape(x) as [number, number, number, number];
  const flat = o.reshape(o.transpose(x, [2, 3, 0, 1]), [s * r, b * heads]);
  const ids = new Int32Array(s * s);
  for (let i = 0; i < s; i++) for (let j = 0; j < s; j++) ids[i * s + j] = rowOf(i, j) * r + index(i, j);
  const picked = o.gather(flat, o.constInt(ids, [s, s]));
  return o.transpose(o.reshape(picked, [s, s, b, heads]), [2, 3, 0, 1]);
}

function functions(cfg: DebertaV2Config): LmFunctions {
  const eps = cfg.layerNormEps;
  const norm = <T>(o: Ops<T>, w: WeightOf<T>, x: T, p: string) => o.layerNorm(x, w(`${p}.weight`), w(`${p}.bias`), eps);
  const lin = <T>(o: Ops<T>, w: WeightOf<T>, x: T, p: string) => dense(o, x, w(`${p}.weight`), w(`${p}.bias`));
  const act = <T>(o: Ops<T>, x: T) => (cfg.hiddenAct === 'gelu' ? o.gelu(x) : cfg.hiddenAct === 'gelu_new' ? o.geluTanh(x) : o.relu(x));
  const heads = cfg.numHeads;
  const headDim = cfg.hiddenSize / heads;
  const c2p = cfg.relativeAttention && cfg.posAttType.includes('c2p');
  const p2c = cfg.relativeAttention && cfg.posAttType.includes('p2c');
  const scale = 1 / Math.sqrt(headDim * (1 + cfg.posAttType.length));
  const span = attSpan(cfg);
  const clampIndex = (v: number) => Math.min(Math.max(v, 0), 2 * span - 1);

  /**
   * Disentangled self-attention of one layer over x [B, S, H], with the shared relative embeddings [1, 2·span, H].
   * Keys and values before the tokens (deep prompts) take part in the content term only: they have no position,
   * so their relative-position terms are zero (P-tuning v2's DeBERTa).
   */
  const attention = <T>(o: Ops<T>, w: WeightOf<T>, p: string, x: T, bias: T, rel?: T, past?: LayerKv<T>): { out: T; kv: LayerKv<T> } => {
    if (rel) rel = o.dropout(rel, cfg.hiddenDropout);
    const q = splitHeads(o, lin(o, w, x, `${p}.query_proj`), heads);
    const k = splitHeads(o, lin(o, w, x, `${p}.key_proj`), heads);
    const v = splitHeads(o, lin(o, w, x, `${p}.value_proj`), heads);
    const all = withPast(o, { k, v }, past);
    let scores = o.scale(o.matmul(q, all.k, true), scale);
    let relScores: T | undefined;
    const addRel = (t: T) => (relScores = relScores === undefined ? t : o.add(relScores, t));
    if (rel && c2p) {
      // content → position: q_i · posKey[δ(i, j) + span]
      const posKey = splitHeads(o, lin(o, w, rel, cfg.shareAttKey ? `${p}.key_proj` : `${p}.pos_key_proj`), heads);
      const att = o.matmul(q, posKey, true);
      const picked = gatherLast(o, att, (i, j) => clampIndex(relativePosition(cfg, i, j) + span), (i) => i);
      addRel(o.scale(picked, scale));
    }
    if (rel && p2c) {
      // position → content: k_j · posQuery[-δ(j, i) + span], read at key j for query i (gather, then transpose)
      const posQuery = splitHeads(o, lin(o, w, rel, cfg.shareAttKey ? `${p}.query_proj` : `${p}.pos_query_proj`), heads);
      const att = o.matmul(k, posQuery, true);
      const picked = gatherLast(o, att, (i, j) => clampIndex(-relativePosition(cfg, j, i) + span), (_i, j) => j);
      addRel(o.scale(picked, scale));
    }
    if (relScores !== undefined) {
      if (past) {
        const [b, h, sq] = o.shape(relScores) as [number, number, number];
        const n = o.shape(past.k)[2]!;
        relScores = o.concat([o.constFloat(new Float32Array(b * h * sq * n), [b, h, sq, n]), relScores], 3);
      }
      scores = o.add(scores, relScores);
    }
    const probs = o.dropout(o.softmax(o.add(scores, bias), -1), cfg.attentionDropout);
    return { out: mergeHeads(o, o.matmul(probs, all.v)), kv: { k, v } };
  };

  return {
    embed: (o, w, ids) => o.gather(w(WORD), ids),
    hidden<T>(o: Ops<T>, w: WeightOf<T>, inp: HiddenInputs<T>): HiddenOutputs<T> {
      const [b, s] = o.shape(inp.embeds) as [number, number];
      let e = inp.embeds;
      if (cfg.positionBiasedInput) {
        // transformers numbers positions 0..S-1 by index in every row
        const positions = inp.positionIds ?? o.constInt(Array.from({ length: b * s }, (_, k) => k % s), [b, s]);
        e = o.add(e, o.gather(w(`${EMB}.position_embeddings.weight`), positions));
      }
      if (cfg.typeVocabSize > 0) {
        const typeEmb = w(`${EMB}.token_type_embeddings.weight`);
        e = o.add(e, inp.tokenTypeIds ? o.gather(typeEmb, inp.tokenTypeIds) : o.slice(typeEmb, [0, 0], [1, cfg.embeddingSize]));
      }
      if (cfg.embeddingSize !== cfg.hiddenSize) e = dense(o, e, w(`${EMB}.embed_proj.weight`));
      const mask = o.cast(inp.attentionMask, 'float32');
      let x = o.dropout(o.mul(norm(o, w, e, `${EMB}.LayerNorm`), o.reshape(mask, [b, s, 1])), cfg.hiddenDropout);
      let rel: T | undefined;
      if (cfg.relativeAttention) {
        const table = w('deberta.encoder.rel_embeddings.weight');
        rel = o.reshape(cfg.normRelEmbeddings ? norm(o, w, table, 'deberta.encoder.LayerNorm') : table, [1, 2 * span, cfg.hiddenSize]);
      }
      const pastLen = inp.past ? o.shape(inp.past.mask)[1]! : 0;
      const bias = attentionBias(o, keyMaskOf(o, inp.attentionMask, inp.past?.mask), { queryLen: s, pastLen, causal: false });
      const present: LayerKv<T>[] = [];
      for (let i = 0; i < cfg.numLayers; i++) {
        x = o.checkpoint(x);
        const p = layerPrefix(i);
        const a = attention(o, w, `${p}.attention.self`, x, bias, rel, inp.past?.layers[i]);
        present.push(a.kv);
        x = norm(o, w, o.add(o.dropout(lin(o, w, a.out, `${p}.attention.output.dense`), cfg.hiddenDropout), x), `${p}.attention.output.LayerNorm`);
        const ffn = o.dropout(lin(o, w, act(o, lin(o, w, x, `${p}.intermediate.dense`)), `${p}.output.dense`), cfg.hiddenDropout);
        x = norm(o, w, o.add(ffn, x), `${p}.output.LayerNorm`);
      }
      x = o.checkpoint(x);
      return { hidden: x, present };
    },
    logits(o, w, rows, candidates) {
      const t = norm(o, w, act(o, lin(o, w, rows, `${HEAD}.transform.dense`)), `${HEAD}.transform.LayerNorm`);
      return projectRows(o, t, w(WORD), w(`${HEAD}.bias`), candidates);
    },
  };
}

export const debertaV2Family: ModelFamily<DebertaV2Config> = {
  name: 'deberta-v2',
  modelTypes: ['deberta-v2'],
  kind: 'masked',
  parseConfig,
  toHfConfig,
  describe: (cfg) => ({
    past: { ptune: true, transformers: false, positioned: false },
    vocabSize: cfg.vocabSize,
    hiddenSize: cfg.hiddenSize,
    embeddingSize: cfg.embeddingSize,
    numLayers: cfg.numLayers,
    numHeads: cfg.numHeads,
    numKvHeads: cfg.numHeads,
    headDim: cfg.hiddenSize / cfg.numHeads,
    intermediateSize: cfg.intermediateSize,
    maxPositions: cfg.maxPositions,
    paddingSide: 'right',
    tokenTypes: cfg.typeVocabSize > 0,
  }),
  weights,
  functions,
  specialIds: (cfg) => ({ pad: cfg.padTokenId }),
  randomConfig: (overrides, vocabSize) => ({ ...DEBERTA_V3_BASE, ...(overrides as Partial<DebertaV2Config>), vocabSize }),
};
