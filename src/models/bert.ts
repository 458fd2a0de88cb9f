import type { Ops } from '../engine/ops.js';
import {
  ConfigFields,
  atRows,
  attend,
  biasAt,
  attentionBias,
  dense,
  keyMaskOf,
  mergeHeads,
  positionsFrom,
  projectRows,
  splitHeads,
  withPast,
  type LayerKv,
  type WeightSpec,
} from './common.js';
import type { HiddenInputs, HiddenOutputs, LmFunctions, ModelFamily, WeightOf } from './lm.js';

/** BertForMaskedLM / RobertaForMaskedLM: post-LN encoder with a tied masked-LM head. */
export interface BertConfig {
  modelType: 'bert' | 'roberta';
  vocabSize: number;
  hiddenSize: number;
  numLayers: number;
  numHeads: number;
  intermediateSize: number;
  maxPositions: number;
  typeVocabSize: number;
  layerNormEps: number;
  padTokenId: number;
  hiddenAct: 'gelu' | 'gelu_new' | 'relu';
  /** dropout rates when the LM trains: hidden states (embeddings, sublayer outputs), attention probabilities */
  hiddenDropout: number;
  attentionDropout: number;
}

export const BERT_BASE: BertConfig = {
  modelType: 'bert',
  vocabSize: 30522,
  hiddenSize: 768,
  numLayers: 12,
  numHeads: 12,
  intermediateSize: 3072,
  maxPositions: 512,
  typeVocabSize: 2,
  layerNormEps: 1e-12,
  padTokenId: 0,
  hiddenAct: 'gelu',
  hiddenDropout: 0.1,
  attentionDropout: 0.1,
};

const ACTIVATIONS: Record<string, BertConfig['hiddenAct']> = { gelu: 'gelu', gelu_new: 'gelu_new', gelu_pytorch_tanh: 'gelu_new', relu: 'relu' };

function parseConfig(json: Record<string, unknown>, file: string): BertConfig {
  const f = new ConfigFields(json, file);
  const modelType = json.model_type;
  if (modelType !== 'bert' && modelType !== 'roberta') throw new Error(`${file}: model_type ${JSON.stringify(modelType)} is not bert or roberta`);
  const act = ACTIVATIONS[f.str('hidden_act', 'gelu')];
  if (!act) throw new Error(`${file}: unsupported hidden_act ${JSON.stringify(json.hidden_act)}`);
  f.refuse('position_embedding_type', (v) => v === 'absolute', 'only "absolute"');
  const cfg: BertConfig = {
    modelType,
    vocabSize: f.int('vocab_size'),
    hiddenSize: f.int('hidden_size'),
    numLayers: f.int('num_hidden_layers'),
    numHeads: f.int('num_attention_heads'),
    intermediateSize: f.int('intermediate_size'),
    maxPositions: f.int('max_position_embeddings'),
    typeVocabSize: f.int('type_vocab_size', 2),
    layerNormEps: f.num('layer_norm_eps', 1e-12),
    padTokenId: f.id('pad_token_id') ?? (modelType === 'roberta' ? 1 : 0),
    hiddenAct: act,
    hiddenDropout: f.num('hidden_dropout_prob', 0.1),
    attentionDropout: f.num('attention_probs_dropout_prob', 0.1),
  };
  if (cfg.hiddenSize % cfg.numHeads !== 0) throw new Error(`${file}: hidden_size ${cfg.hiddenSize} is not divisible by num_attention_heads ${cfg.numHeads}`);
  return cfg;
}

function toHfConfig(cfg: BertConfig): Record<string, unknown> {
  return {
    architectures: [cfg.modelType === 'roberta' ? 'RobertaForMaskedLM' : 'BertForMaskedLM'],
    model_type: cfg.modelType,
    vocab_size: cfg.vocabSize,
    hidden_size: cfg.hiddenSize,
    num_hidden_layers: cfg.numLayers,
    num_attention_heads: cfg.numHeads,
    intermediate_size: cfg.intermediateSize,
    max_position_embeddings: cfg.maxPositions,
    type_vocab_size: cfg.typeVocabSize,
    layer_norm_eps: cfg.layerNormEps,
    pad_token_id: cfg.padTokenId,
    hidden_act: cfg.hiddenAct,
    hidden_dropout_prob: cfg.hiddenDropout,
    attention_probs_dropout_prob: cfg.attentionDropout,
    position_embedding_type: 'absolute',
    tie_word_embeddings: true,
    torch_dtype: 'float32',
  };
}

/** RoBERTa numbers real tokens from padding_idx + 1; BERT from 0. */
function positionOffset(cfg: BertConfig): number {
  return cfg.modelType === 'roberta' ? cfg.padTokenId + 1 : 0;
}

function names(cfg: BertConfig) {
  return cfg.modelType === 'roberta'
    ? { base: 'roberta', dense: 'lm_head.dense', norm: 'lm_head.layer_norm', bias: 'lm_head.bias' }
    : { base: 'bert', dense: 'cls.predictions.transform.dense', norm: 'cls.predictions.transform.LayerNorm', bias: 'cls.predictions.bias' };
}

/** Older BERT checkpoints name LayerNorm parameters gamma/beta. */
function layerNormAliases(name: string): string[] {
  if (name.endsWith('LayerNorm.weight')) return [name.replace(/weight$/, 'gamma')];
  if (name.endsWith('LayerNorm.bias')) return [name.replace(/bias$/, 'beta')];
  return [];
}

function weights(cfg: BertConfig): WeightSpec[] {
  const n = names(cfg);
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
  specs.push({ name: `${n.base}.embeddings.word_embeddings.weight`, shape: [cfg.vocabSize, h], init: 'normal' });
  specs.push({ name: `${n.base}.embeddings.position_embeddings.weight`, shape: [cfg.maxPositions, h], init: 'normal' });
  specs.push({ name: `${n.base}.embeddings.token_type_embeddings.weight`, shape: [cfg.typeVocabSize, h], init: 'normal' });
  norm(`${n.base}.embeddings.LayerNorm`);
  for (let i = 0; i < cfg.numLayers; i++) {
    const p = `${n.base}.encoder.layer.${i}`;
    linear(`${p}.attention.self.query`, h, h);
    linear(`${p}.attention.self.key`, h, h);
    linear(`${p}.attention.self.value`, h, h);
    linear(`${p}.attention.output.dense`, h, h);
    norm(`${p}.attention.output.LayerNorm`);
    linear(`${p}.intermediate.dense`, cfg.intermediateSize, h, 'out');
    linear(`${p}.output.dense`, h, cfg.intermediateSize, 'in');
    norm(`${p}.output.LayerNorm`);
  }
  linear(n.dense, h, h);
  norm(n.norm);
  specs.push({ name: n.bias, shape: [cfg.vocabSize], init: 'zeros', aliases: ['cls.predictions.decoder.bias'] });
  for (const s of specs) s.aliases = [...(s.aliases ?? []), ...layerNormAliases(s.name)];
  return specs;
}

function activation<T>(o: Ops<T>, cfg: BertConfig, x: T): T {
  if (cfg.hiddenAct === 'gelu') return o.gelu(x);
  if (cfg.hiddenAct === 'gelu_new') return o.geluTanh(x);
  return o.relu(x);
}

function functions(cfg: BertConfig): LmFunctions {
  const n = names(cfg);
  const eps = cfg.layerNormEps;
  const wordEmb = `${n.base}.embeddings.word_embeddings.weight`;
  const norm = <T>(o: Ops<T>, w: WeightOf<T>, x: T, p: string) => o.layerNorm(x, w(`${p}.weight`), w(`${p}.bias`), eps);
  const lin = <T>(o: Ops<T>, w: WeightOf<T>, x: T, p: string) => dense(o, x, w(`${p}.weight`), w(`${p}.bias`));

  /** word + position + token-type embeddings, then LayerNorm */
  const embeddings = <T>(o: Ops<T>, w: WeightOf<T>, inp: HiddenInputs<T>): T => {
    let positions = inp.positionIds ?? positionsFrom(o, inp.attentionMask, inp.past?.mask);
    const offset = positionOffset(cfg);
    if (offset) positions = o.add(positions, o.constInt([offset], []));
    const typeEmb = w(`${n.base}.embeddings.token_type_embeddings.weight`);
    const types = inp.tokenTypeIds ? o.gather(typeEmb, inp.tokenTypeIds) : o.slice(typeEmb, [0, 0], [1, cfg.hiddenSize]);
    const x = o.add(o.add(inp.embeds, o.gather(w(`${n.base}.embeddings.position_embeddings.weight`), positions)), types);
    return o.dropout(norm(o, w, x, `${n.base}.embeddings.LayerNorm`), cfg.hiddenDropout);
  };

  /** One post-LN layer: x = LN(x + attn(x)); x = LN(x + ffn(x)); with `at`, for the rows at `at` only. */
  const layer = <T>(o: Ops<T>, w: WeightOf<T>, i: number, x: T, bias: T, past?: LayerKv<T>, at?: T): { x: T; kv: LayerKv<T> } => {
    const p = `${n.base}.encoder.layer.${i}`;
    const heads = cfg.numHeads;
    const xq = at ? atRows(o, x, at) : x;
    const q = splitHeads(o, lin(o, w, xq, `${p}.attention.self.query`), heads);
    const kv = { k: splitHeads(o, lin(o, w, x, `${p}.attention.self.key`), heads), v: splitHeads(o, lin(o, w, x, `${p}.attention.self.value`), heads) };
    const all = withPast(o, kv, past);
    const context = mergeHeads(o, attend(o, q, all.k, all.v, at ? biasAt(o, bias, at) : bias, { dropout: cfg.attentionDropout }));
    const attn = o.dropout(lin(o, w, context, `${p}.attention.output.dense`), cfg.hiddenDropout);
    x = norm(o, w, o.add(xq, attn), `${p}.attention.output.LayerNorm`);
    const ffn = o.dropout(lin(o, w, activation(o, cfg, lin(o, w, x, `${p}.intermediate.dense`)), `${p}.output.dense`), cfg.hiddenDropout);
    return { x: norm(o, w, o.add(x, ffn), `${p}.output.LayerNorm`), kv };
  };

  return {
    embed: (o, w, ids) => o.gather(w(wordEmb), ids),
    hidden<T>(o: Ops<T>, w: WeightOf<T>, inp: HiddenInputs<T>): HiddenOutputs<T> {
      const s = o.shape(inp.embeds)[1]!;
      const pastLen = inp.past ? o.shape(inp.past.mask)[1]! : 0;
      const bias = attentionBias(o, keyMaskOf(o, inp.attentionMask, inp.past?.mask), { queryLen: s, pastLen, causal: false });
      let x = embeddings(o, w, inp);
      const present: LayerKv<T>[] = [];
      for (let i = 0; i < cfg.numLayers; i++) {
        x = o.checkpoint(x);
        // the last layer computes only the rows asked for: nothing after it reads the others
        const r = layer(o, w, i, x, bias, inp.past?.layers[i], i === cfg.numLayers - 1 ? inp.at : undefined);
        x = r.x;
        present.push(r.kv);
      }
      x = o.checkpoint(x);
      return { hidden: x, present, ...(inp.at && { rows: o.reshape(x, [o.shape(x)[0]!, cfg.hiddenSize]) }) };
    },
    /** MLM head: dense + act + LN, then the tied word embeddings (+ bias), over all or the candidate rows */
    logits(o, w, rows, candidates) {
      const t = norm(o, w, activation(o, cfg, lin(o, w, rows, n.dense)), n.norm);
      return projectRows(o, t, w(wordEmb), w(n.bias), candidates);
    },
  };
}

export const bertFamily: ModelFamily<BertConfig> = {
  name: 'bert',
  modelTypes: ['bert', 'roberta'],
  kind: 'masked',
  parseConfig,
  toHfConfig,
  describe: (cfg) => ({
    vocabSize: cfg.vocabSize,
    hiddenSize: cfg.hiddenSize,
    numLayers: cfg.numLayers,
    numHeads: cfg.numHeads,
    numKvHeads: cfg.numHeads,
    headDim: cfg.hiddenSize / cfg.numHeads,
    intermediateSize: cfg.intermediateSize,
    maxPositions: cfg.maxPositions - positionOffset(cfg),
    paddingSide: 'right',
    tokenTypes: true,
  }),
  weights,
  functions,
  specialIds: (cfg) => ({ pad: cfg.padTokenId }),
  randomConfig: (overrides, vocabSize, modelType) => ({ ...BERT_BASE, modelType: modelType as BertConfig['modelType'], ...(overrides as Partial<BertConfig>), vocabSize }),
};
