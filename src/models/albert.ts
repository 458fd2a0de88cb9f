import type { Ops } from '../engine/ops.js';
import {
  ConfigFields,
  attend,
  attentionBias,
  dense,
  keyMaskOf,
  mergeHeads,
  projectRows,
  splitHeads,
  withPast,
  type LayerKv,
  type WeightSpec,
} from './common.js';
import type { HiddenInputs, HiddenOutputs, LmFunctions, ModelFamily, WeightOf } from './lm.js';

/**
 * AlbertForMaskedLM: factorised embeddings (word, position and token-type tables of width embedding_size,
 * LayerNorm, then embedding_hidden_mapping_in to hidden_size), post-LN layers whose weights are shared within
 * each of num_hidden_groups groups (layer i runs group floor(i / (layers / groups)), each group its
 * inner_group_num layers in order), and an MLM head dense(hidden → embedding) → activation → LayerNorm →
 * the tied word embeddings (+ predictions.bias).
 */
export interface AlbertConfig {
  vocabSize: number;
  embeddingSize: number;
  hiddenSize: number;
  numLayers: number;
  numHeads: number;
  numHiddenGroups: number;
  innerGroupNum: number;
  intermediateSize: number;
  maxPositions: number;
  typeVocabSize: number;
  layerNormEps: number;
  hiddenAct: 'gelu' | 'gelu_new' | 'relu';
  padTokenId: number;
  tieWordEmbeddings: boolean;
  /** dropout rates when the LM trains: hidden states (embeddings, sublayer outputs), attention probabilities */
  hiddenDropout: number;
  attentionDropout: number;
}

export const ALBERT_BASE: AlbertConfig = {
  vocabSize: 30000,
  embeddingSize: 128,
  hiddenSize: 768,
  numLayers: 12,
  numHeads: 12,
  numHiddenGroups: 1,
  innerGroupNum: 1,
  intermediateSize: 3072,
  maxPositions: 512,
  typeVocabSize: 2,
  layerNormEps: 1e-12,
  hiddenAct: 'gelu_new',
  padTokenId: 0,
  tieWordEmbeddings: true,
  hiddenDropout: 0,
  attentionDropout: 0,
};

const ACTIVATIONS: Record<string, AlbertConfig['hiddenAct']> = { gelu: 'gelu', gelu_new: 'gelu_new', gelu_pytorch_tanh: 'gelu_new', relu: 'relu' };

function parseConfig(json: Record<string, unknown>, file: string): AlbertConfig {
  const f = new ConfigFields(json, file);
  const act = ACTIVATIONS[f.str('hidden_act', 'gelu_new')];
  if (!act) throw new Error(`${file}: unsupported hidden_act ${JSON.stringify(json.hidden_act)}`);
  f.refuse('position_embedding_type', (v) => v === 'absolute', 'only "absolute"');
  const cfg: AlbertConfig = {
    vocabSize: f.int('vocab_size', 30000),
    embeddingSize: f.int('embedding_size', 128),
    hiddenSize: f.int('hidden_size', 4096),
    numLayers: f.int('num_hidden_layers', 12),
    numHeads: f.int('num_attention_heads', 64),
    numHiddenGroups: f.int('num_hidden_groups', 1),
    innerGroupNum: f.int('inner_group_num', 1),
    intermediateSize: f.int('intermediate_size', 16384),
    maxPositions: f.int('max_position_embeddings', 512),
    typeVocabSize: f.int('type_vocab_size', 2),
    layerNormEps: f.num('layer_norm_eps', 1e-12),
    hiddenAct: act,
    padTokenId: f.id('pad_token_id') ?? 0,
    tieWordEmbeddings: f.bool('tie_word_embeddings', true),
    hiddenDropout: f.num('hidden_dropout_prob', 0),
    attentionDropout: f.num('attention_probs_dropout_prob', 0),
  };
  if (cfg.hiddenSize % cfg.numHeads !== 0) throw new Error(`${file}: hidden_size ${cfg.hiddenSize} is not divisible by num_attention_heads ${cfg.numHeads}`);
  if (cfg.numHiddenGroups > cfg.numLayers) throw new Error(`${file}: num_hidden_groups ${cfg.numHiddenGroups} exceeds num_hidden_layers ${cfg.numLayers}`);
  return cfg;
}

function toHfConfig(cfg: AlbertConfig): Record<string, unknown> {
  return {
    architectures: ['AlbertForMaskedLM'],
    model_type: 'albert',
    vocab_size: cfg.vocabSize,
    embedding_size: cfg.embeddingSize,
    hidden_size: cfg.hiddenSize,
    num_hidden_layers: cfg.numLayers,
    num_attention_heads: cfg.numHeads,
    num_hidden_groups: cfg.numHiddenGroups,
    inner_group_num: cfg.innerGroupNum,
    intermediate_size: cfg.intermediateSize,
    max_position_embeddings: cfg.maxPositions,
    type_vocab_size: cfg.typeVocabSize,
    layer_norm_eps: cfg.layerNormEps,
    hidden_act: cfg.hiddenAct,
    pad_token_id: cfg.padTokenId,
    position_embedding_type: 'absolute',
    tie_word_embeddings: cfg.tieWordEmbeddings,
    hidden_dropout_prob: cfg.hiddenDropout,
    attention_probs_dropout_prob: cfg.attentionDropout,
    torch_dtype: 'float32',
  };
}

const EMB = 'albert.embeddings';
const WORD = `${EMB}.word_embeddings.weight`;
const innerPrefix = (g: number, j: number) => `albert.encoder.albert_layer_groups.${g}.albert_layers.${j}`;

/** The group layer i runs, as transformers computes it: int(i / (num_hidden_layers / num_hidden_groups)). */
export function albertGroupOf(cfg: AlbertConfig, i: number): number {
  return Math.floor(i / (cfg.numLayers / cfg.numHiddenGroups));
}

function weights(cfg: AlbertConfig): WeightSpec[] {
  const { hiddenSize: h, embeddingSize: e } = cfg;
  const specs: WeightSpec[] = [];
  const linear = (p: string, out: number, inp: number, inner?: 'out' | 'in') => {
    specs.push({ name: `${p}.weight`, shape: [out, inp], init: 'normal', ...(inner && { inner: inner === 'out' ? 0 : 1 }) });
    specs.push({ name: `${p}.bias`, shape: [out], init: 'zeros', ...(inner === 'out' && { inner: 0 }) });
  };
  const norm = (p: string, n: number) => {
    specs.push({ name: `${p}.weight`, shape: [n], init: 'ones' });
    specs.push({ name: `${p}.bias`, shape: [n], init: 'zeros' });
  };
  specs.push({ name: WORD, shape: [cfg.vocabSize, e], init: 'normal' });
  specs.push({ name: `${EMB}.position_embeddings.weight`, shape: [cfg.maxPositions, e], init: 'normal' });
  specs.push({ name: `${EMB}.token_type_embeddings.weight`, shape: [cfg.typeVocabSize, e], init: 'normal' });
  norm(`${EMB}.LayerNorm`, e);
  linear('albert.encoder.embedding_hidden_mapping_in', h, e);
  for (let g = 0; g < cfg.numHiddenGroups; g++) {
    for (let j = 0; j < cfg.innerGroupNum; j++) {
      const p = innerPrefix(g, j);
      linear(`${p}.attention.query`, h, h);
      linear(`${p}.attention.key`, h, h);
      linear(`${p}.attention.value`, h, h);
      linear(`${p}.attention.dense`, h, h);
      norm(`${p}.attention.LayerNorm`, h);
      linear(`${p}.ffn`, cfg.intermediateSize, h, 'out');
      linear(`${p}.ffn_output`, h, cfg.intermediateSize, 'in');
      norm(`${p}.full_layer_layer_norm`, h);
    }
  }
  linear('predictions.dense', e, h);
  norm('predictions.LayerNorm', e);
  if (!cfg.tieWordEmbeddings) specs.push({ name: 'predictions.decoder.weight', shape: [cfg.vocabSize, e], init: 'normal' });
  specs.push({ name: 'predictions.bias', shape: [cfg.vocabSize], init: 'zeros', aliases: ['predictions.decoder.bias'] });
  return specs;
}

function functions(cfg: AlbertConfig): LmFunctions {
  const eps = cfg.layerNormEps;
  const norm = <T>(o: Ops<T>, w: WeightOf<T>, x: T, p: string) => o.layerNorm(x, w(`${p}.weight`), w(`${p}.bias`), eps);
  const lin = <T>(o: Ops<T>, w: WeightOf<T>, x: T, p: string) => dense(o, x, w(`${p}.weight`), w(`${p}.bias`));
  const act = <T>(o: Ops<T>, x: T) => (cfg.hiddenAct === 'gelu' ? o.gelu(x) : cfg.hiddenAct === 'gelu_new' ? o.geluTanh(x) : o.relu(x));

  /** AlbertLayer: x = LN(x + dense(attn(x))); x = LN(x + ffn_output(act(ffn(x)))) */
  const layer = <T>(o: Ops<T>, w: WeightOf<T>, p: string, x: T, bias: T, past?: LayerKv<T>): { x: T; kv: LayerKv<T> } => {
    const heads = cfg.numHeads;
    const q = splitHeads(o, lin(o, w, x, `${p}.attention.query`), heads);
    const kv = { k: splitHeads(o, lin(o, w, x, `${p}.attention.key`), heads), v: splitHeads(o, lin(o, w, x, `${p}.attention.value`), heads) };
    const all = withPast(o, kv, past);
    const context = mergeHeads(o, attend(o, q, all.k, all.v, bias, { dropout: cfg.attentionDropout }));
    const attn = o.dropout(lin(o, w, context, `${p}.attention.dense`), cfg.hiddenDropout);
    x = norm(o, w, o.add(x, attn), `${p}.attention.LayerNorm`);
    const ffn = o.dropout(lin(o, w, act(o, lin(o, w, x, `${p}.ffn`)), `${p}.ffn_output`), cfg.hiddenDropout);
    return { x: norm(o, w, o.add(ffn, x), `${p}.full_layer_layer_norm`), kv };
  };

  return {
    /** the factorised lookup [B, S, embedding_size] (transformers' inputs_embeds) */
    embed: (o, w, ids) => o.gather(w(WORD), ids),
    hidden<T>(o: Ops<T>, w: WeightOf<T>, inp: HiddenInputs<T>): HiddenOutputs<T> {
      const [b, s] = o.shape(inp.embeds) as [number, number];
      const pastLen = inp.past ? o.shape(inp.past.mask)[1]! : 0;
      // transformers numbers positions 0..S-1 by index in every row (padding does not shift them)
      const positions = inp.positionIds ?? o.constInt(Array.from({ length: b * s }, (_, k) => pastLen + (k % s)), [b, s]);
      const typeEmb = w(`${EMB}.token_type_embeddings.weight`);
      const types = inp.tokenTypeIds ? o.gather(typeEmb, inp.tokenTypeIds) : o.slice(typeEmb, [0, 0], [1, cfg.embeddingSize]);
      const e = o.add(o.add(inp.embeds, types), o.gather(w(`${EMB}.position_embeddings.weight`), positions));
      let x = lin(o, w, o.dropout(norm(o, w, e, `${EMB}.LayerNorm`), cfg.hiddenDropout), 'albert.encoder.embedding_hidden_mapping_in');
      const bias = attentionBias(o, keyMaskOf(o, inp.attentionMask, inp.past?.mask), { queryLen: s, pastLen, causal: false });
      const present: LayerKv<T>[] = [];
      for (let i = 0; i < cfg.numLayers; i++) {
        const g = albertGroupOf(cfg, i);
        for (let j = 0; j < cfg.innerGroupNum; j++) {
          x = o.checkpoint(x);
          const r = layer(o, w, innerPrefix(g, j), x, bias, inp.past?.layers[present.length]);
          x = r.x;
          present.push(r.kv);
        }
      }
      x = o.checkpoint(x);
      return { hidden: x, present };
    },
    logits(o, w, rows, candidates) {
      const t = norm(o, w, act(o, lin(o, w, rows, 'predictions.dense')), 'predictions.LayerNorm');
      return projectRows(o, t, w(cfg.tieWordEmbeddings ? WORD : 'predictions.decoder.weight'), w('predictions.bias'), candidates);
    },
  };
}

export const albertFamily: ModelFamily<AlbertConfig> = {
  name: 'albert',
  modelTypes: ['albert'],
  kind: 'masked',
  parseConfig,
  toHfConfig,
  describe: (cfg) => ({
    past: { ptune: true, transformers: false },
    vocabSize: cfg.vocabSize,
    hiddenSize: cfg.hiddenSize,
    embeddingSize: cfg.embeddingSize,
    numLayers: cfg.numLayers * cfg.innerGroupNum,
    numHeads: cfg.numHeads,
    numKvHeads: cfg.numHeads,
    headDim: cfg.hiddenSize / cfg.numHeads,
    intermediateSize: cfg.intermediateSize,
    maxPositions: cfg.maxPositions,
    paddingSide: 'right',
    tokenTypes: true,
  }),
  weights,
  functions,
  specialIds: (cfg) => ({ pad: cfg.padTokenId }),
  randomConfig: (overrides, vocabSize) => ({ ...ALBERT_BASE, ...(overrides as Partial<AlbertConfig>), vocabSize }),
};
