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
 * DistilBertForMaskedLM: BERT's post-LN encoder without token types, with its own weight names; LayerNorm eps
 * is 1e-12 everywhere (fixed in transformers, not a config field); MLM head vocab_transform → activation →
 * vocab_layer_norm → vocab_projector (weight tied to the word embeddings, own bias).
 */
export interface DistilBertConfig {
  vocabSize: number;
  /** `dim` */
  hiddenSize: number;
  /** `n_layers` */
  numLayers: number;
  /** `n_heads` */
  numHeads: number;
  /** `hidden_dim` */
  intermediateSize: number;
  maxPositions: number;
  /** the position table holds fixed sinusoids (stored in checkpoints like any other weight) */
  sinusoidalPositions: boolean;
  activation: 'gelu' | 'relu';
  padTokenId: number;
  /** vocab_projector.weight is the word embedding table (default); untied checkpoints store it */
  tieWordEmbeddings: boolean;
  /** dropout when the LM trains: `dropout` (embeddings, FFN output), `attention_dropout` (probabilities) */
  dropout: number;
  attentionDropout: number;
}

const EPS = 1e-12;

export const DISTILBERT_BASE: DistilBertConfig = {
  vocabSize: 30522,
  hiddenSize: 768,
  numLayers: 6,
  numHeads: 12,
  intermediateSize: 3072,
  maxPositions: 512,
  sinusoidalPositions: false,
  activation: 'gelu',
  padTokenId: 0,
  tieWordEmbeddings: true,
  dropout: 0.1,
  attentionDropout: 0.1,
};

function parseConfig(json: Record<string, unknown>, file: string): DistilBertConfig {
  const f = new ConfigFields(json, file);
  const activation = f.str('activation', 'gelu');
  if (activation !== 'gelu' && activation !== 'relu') throw new Error(`${file}: unsupported activation ${JSON.stringify(activation)} (gelu, relu)`);
  const cfg: DistilBertConfig = {
    vocabSize: f.int('vocab_size', 30522),
    hiddenSize: f.int('dim', 768),
    numLayers: f.int('n_layers', 6),
    numHeads: f.int('n_heads', 12),
    intermediateSize: f.int('hidden_dim', 3072),
    maxPositions: f.int('max_position_embeddings', 512),
    sinusoidalPositions: f.bool('sinusoidal_pos_embds', false),
    activation,
    padTokenId: f.id('pad_token_id') ?? 0,
    tieWordEmbeddings: f.bool('tie_word_embeddings', true),
    dropout: f.num('dropout', 0.1),
    attentionDropout: f.num('attention_dropout', 0.1),
  };
  if (cfg.hiddenSize % cfg.numHeads !== 0) throw new Error(`${file}: dim ${cfg.hiddenSize} is not divisible by n_heads ${cfg.numHeads}`);
  return cfg;
}

function toHfConfig(cfg: DistilBertConfig): Record<string, unknown> {
  return {
    architectures: ['DistilBertForMaskedLM'],
    model_type: 'distilbert',
    vocab_size: cfg.vocabSize,
    dim: cfg.hiddenSize,
    n_layers: cfg.numLayers,
    n_heads: cfg.numHeads,
    hidden_dim: cfg.intermediateSize,
    max_position_embeddings: cfg.maxPositions,
    sinusoidal_pos_embds: cfg.sinusoidalPositions,
    activation: cfg.activation,
    pad_token_id: cfg.padTokenId,
    dropout: cfg.dropout,
    attention_dropout: cfg.attentionDropout,
    tie_word_embeddings: cfg.tieWordEmbeddings,
    torch_dtype: 'float32',
  };
}

const WORD = 'distilbert.embeddings.word_embeddings.weight';
const POSITION = 'distilbert.embeddings.position_embeddings.weight';
const layerPrefix = (i: number) => `distilbert.transformer.layer.${i}`;

function weights(cfg: DistilBertConfig): WeightSpec[] {
  const h = cfg.hiddenSize;
  const specs: WeightSpec[] = [];
  const linear = (p: string, out: number, inp: number, inner?: 'out' | 'in') => {
    specs.push({ name: `${p}.weight`, shape: [out, inp], init: 'normal', ...(inner && { inner: inner === 'out' ? 0 : 1 }) });
    specs.push({ name: `${p}.bias`, shape: [out], init: 'zeros', ...(inner === 'out' && { inner: 0 }) });
  };
  const norm = (p: string) => {
    specs.push({ name: `${p}.weight`, shape: [h], init: 'ones' });
    specs.push({ name: `${p}.bias`, shape: [h], init: 'zeros' });
  };
  specs.push({ name: WORD, shape: [cfg.vocabSize, h], init: 'normal' });
  specs.push({ name: POSITION, shape: [cfg.maxPositions, h], init: 'normal' });
  norm('distilbert.embeddings.LayerNorm');
  for (let i = 0; i < cfg.numLayers; i++) {
    const p = layerPrefix(i);
    for (const lin of ['q_lin', 'k_lin', 'v_lin', 'out_lin']) linear(`${p}.attention.${lin}`, h, h);
    norm(`${p}.sa_layer_norm`);
    linear(`${p}.ffn.lin1`, cfg.intermediateSize, h, 'out');
    linear(`${p}.ffn.lin2`, h, cfg.intermediateSize, 'in');
    norm(`${p}.output_layer_norm`);
  }
  linear('vocab_transform', h, h);
  norm('vocab_layer_norm');
  if (!cfg.tieWordEmbeddings) specs.push({ name: 'vocab_projector.weight', shape: [cfg.vocabSize, h], init: 'normal' });
  specs.push({ name: 'vocab_projector.bias', shape: [cfg.vocabSize], init: 'zeros' });
  return specs;
}

function functions(cfg: DistilBertConfig): LmFunctions {
  const norm = <T>(o: Ops<T>, w: WeightOf<T>, x: T, p: string) => o.layerNorm(x, w(`${p}.weight`), w(`${p}.bias`), EPS);
  const lin = <T>(o: Ops<T>, w: WeightOf<T>, x: T, p: string) => dense(o, x, w(`${p}.weight`), w(`${p}.bias`));
  const act = <T>(o: Ops<T>, x: T) => (cfg.activation === 'gelu' ? o.gelu(x) : o.relu(x));

  /** post-LN block: sa_layer_norm(x + attn(x)), then output_layer_norm(x + ffn(x)) */
  const layer = <T>(o: Ops<T>, w: WeightOf<T>, i: number, x: T, bias: T, past?: LayerKv<T>): { x: T; kv: LayerKv<T> } => {
    const p = layerPrefix(i);
    const heads = cfg.numHeads;
    const q = splitHeads(o, lin(o, w, x, `${p}.attention.q_lin`), heads);
    const kv = { k: splitHeads(o, lin(o, w, x, `${p}.attention.k_lin`), heads), v: splitHeads(o, lin(o, w, x, `${p}.attention.v_lin`), heads) };
    const all = withPast(o, kv, past);
    const attn = lin(o, w, mergeHeads(o, attend(o, q, all.k, all.v, bias, { dropout: cfg.attentionDropout })), `${p}.attention.out_lin`);
    x = norm(o, w, o.add(attn, x), `${p}.sa_layer_norm`);
    const ffn = o.dropout(lin(o, w, act(o, lin(o, w, x, `${p}.ffn.lin1`)), `${p}.ffn.lin2`), cfg.dropout);
    return { x: norm(o, w, o.add(ffn, x), `${p}.output_layer_norm`), kv };
  };

  return {
    embed: (o, w, ids) => o.gather(w(WORD), ids),
    hidden<T>(o: Ops<T>, w: WeightOf<T>, inp: HiddenInputs<T>): HiddenOutputs<T> {
      const [b, s] = o.shape(inp.embeds) as [number, number];
      const pastLen = inp.past ? o.shape(inp.past.mask)[1]! : 0;
      // transformers numbers positions 0..S-1 by index in every row (padding does not shift them)
      const positions = inp.positionIds ?? o.constInt(Array.from({ length: b * s }, (_, k) => pastLen + (k % s)), [b, s]);
      let x = o.dropout(norm(o, w, o.add(inp.embeds, o.gather(w(POSITION), positions)), 'distilbert.embeddings.LayerNorm'), cfg.dropout);
      const bias = attentionBias(o, keyMaskOf(o, inp.attentionMask, inp.past?.mask), { queryLen: s, pastLen, causal: false });
      const present: LayerKv<T>[] = [];
      for (let i = 0; i < cfg.numLayers; i++) {
        x = o.checkpoint(x);
        const r = layer(o, w, i, x, bias, inp.past?.layers[i]);
        x = r.x;
        present.push(r.kv);
      }
      x = o.checkpoint(x);
      return { hidden: x, present };
    },
    logits(o, w, rows, candidates) {
      const t = norm(o, w, act(o, lin(o, w, rows, 'vocab_transform')), 'vocab_layer_norm');
      return projectRows(o, t, w(cfg.tieWordEmbeddings ? WORD : 'vocab_projector.weight'), w('vocab_projector.bias'), candidates);
    },
  };
}

export const distilbertFamily: ModelFamily<DistilBertConfig> = {
  name: 'distilbert',
  modelTypes: ['distilbert'],
  kind: 'masked',
  parseConfig,
  toHfConfig,
  describe: (cfg) => ({
    past: { ptune: true, transformers: false },
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
  randomConfig: (overrides, vocabSize) => ({ ...DISTILBERT_BASE, ...(overrides as Partial<DistilBertConfig>), vocabSize }),
};
