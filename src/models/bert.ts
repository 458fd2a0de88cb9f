import { tf, tfOps, type Ops } from '../engine/index.js';
import type { TextTokenizer } from '../tokenizers/tokenizer.js';
import {
  applyLinear,
  applyNorm,
  attentionBias,
  countParameters,
  mergeHeads,
  positionsFromMask,
  rowsAt,
  scaledDotAttention,
  splitHeads,
  tiedLogits,
  type Linear,
  type Norm,
  type ParamSpec,
  VariableLM,
} from './common.js';
import type { LanguageModel, LmBatch, ModelInfo, SpecialIds } from './lm.js';

type Tensor = tf.Tensor;

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
};

const ACTIVATIONS: Record<string, BertConfig['hiddenAct']> = {
  gelu: 'gelu',
  gelu_new: 'gelu_new',
  gelu_pytorch_tanh: 'gelu_new',
  relu: 'relu',
};

/** Reads a Hugging Face config.json object of model_type bert or roberta. */
export function bertConfigFromHf(json: Record<string, unknown>, file: string): BertConfig {
  const modelType = json.model_type;
  if (modelType !== 'bert' && modelType !== 'roberta') {
    throw new Error(`${file}: model_type ${JSON.stringify(modelType)} is not bert or roberta`);
  }
  const num = (key: string, fallback?: number): number => {
    const v = json[key] ?? fallback;
    if (typeof v !== 'number' || !Number.isFinite(v)) throw new Error(`${file}: field "${key}" missing or not a number`);
    return v;
  };
  const act = ACTIVATIONS[String(json.hidden_act ?? 'gelu')];
  if (!act) throw new Error(`${file}: unsupported hidden_act ${JSON.stringify(json.hidden_act)}`);
  const pet = json.position_embedding_type;
  if (pet !== undefined && pet !== 'absolute') {
    throw new Error(`${file}: unsupported position_embedding_type ${JSON.stringify(pet)} (only "absolute")`);
  }
  const cfg: BertConfig = {
    modelType,
    vocabSize: num('vocab_size'),
    hiddenSize: num('hidden_size'),
    numLayers: num('num_hidden_layers'),
    numHeads: num('num_attention_heads'),
    intermediateSize: num('intermediate_size'),
    maxPositions: num('max_position_embeddings'),
    typeVocabSize: num('type_vocab_size', 2),
    layerNormEps: num('layer_norm_eps', 1e-12),
    padTokenId: num('pad_token_id', modelType === 'roberta' ? 1 : 0),
    hiddenAct: act,
  };
  if (cfg.hiddenSize % cfg.numHeads !== 0) {
    throw new Error(`${file}: hidden_size ${cfg.hiddenSize} is not divisible by num_attention_heads ${cfg.numHeads}`);
  }
  return cfg;
}

/** The config.json object Hugging Face writes for `cfg`. */
export function bertConfigToHf(cfg: BertConfig): Record<string, unknown> {
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
    position_embedding_type: 'absolute',
    tie_word_embeddings: true,
    torch_dtype: 'float32',
  };
}

/** RoBERTa numbers real tokens from padding_idx + 1; BERT from 0. */
export function positionOffset(cfg: BertConfig): number {
  return cfg.modelType === 'roberta' ? cfg.padTokenId + 1 : 0;
}

// ---------------------------------------------------------------------------------------------------------
// Parameter names (Hugging Face) and the structured weights the forward pass reads.

interface BertNames {
  base: string;
  head: { dense: string; norm: string; bias: string };
}

function names(cfg: BertConfig): BertNames {
  return cfg.modelType === 'roberta'
    ? { base: 'roberta', head: { dense: 'lm_head.dense', norm: 'lm_head.layer_norm', bias: 'lm_head.bias' } }
    : {
        base: 'bert',
        head: { dense: 'cls.predictions.transform.dense', norm: 'cls.predictions.transform.LayerNorm', bias: 'cls.predictions.bias' },
      };
}

/** All parameters (the decoder weight is tied to the word embeddings and has no entry). */
export function bertParamSpecs(cfg: BertConfig): ParamSpec[] {
  const { base, head } = names(cfg);
  const h = cfg.hiddenSize;
  const specs: ParamSpec[] = [];
  const linear = (p: string, out: number, inp: number) => {
    specs.push({ name: `${p}.weight`, shape: [out, inp], transposed: true, init: 'normal' });
    specs.push({ name: `${p}.bias`, shape: [out], init: 'zeros' });
  };
  const norm = (p: string) => {
    specs.push({ name: `${p}.weight`, shape: [h], init: 'ones' });
    specs.push({ name: `${p}.bias`, shape: [h], init: 'zeros' });
  };
  specs.push({ name: `${base}.embeddings.word_embeddings.weight`, shape: [cfg.vocabSize, h], init: 'normal' });
  specs.push({ name: `${base}.embeddings.position_embeddings.weight`, shape: [cfg.maxPositions, h], init: 'normal' });
  specs.push({ name: `${base}.embeddings.token_type_embeddings.weight`, shape: [cfg.typeVocabSize, h], init: 'normal' });
  norm(`${base}.embeddings.LayerNorm`);
  for (let i = 0; i < cfg.numLayers; i++) {
    const p = `${base}.encoder.layer.${i}`;
    linear(`${p}.attention.self.query`, h, h);
    linear(`${p}.attention.self.key`, h, h);
    linear(`${p}.attention.self.value`, h, h);
    linear(`${p}.attention.output.dense`, h, h);
    norm(`${p}.attention.output.LayerNorm`);
    linear(`${p}.intermediate.dense`, cfg.intermediateSize, h);
    linear(`${p}.output.dense`, h, cfg.intermediateSize);
    norm(`${p}.output.LayerNorm`);
  }
  linear(head.dense, h, h);
  norm(head.norm);
  specs.push({ name: head.bias, shape: [cfg.vocabSize], init: 'zeros' });
  return specs;
}

/** Older BERT checkpoints name LayerNorm parameters gamma/beta. */
export function bertAliases(name: string): string[] {
  if (name.endsWith('LayerNorm.weight')) return [name.replace(/weight$/, 'gamma')];
  if (name.endsWith('LayerNorm.bias')) return [name.replace(/bias$/, 'beta')];
  return [];
}

export interface BertLayerWeights<T> {
  query: Linear<T>;
  key: Linear<T>;
  value: Linear<T>;
  attnOut: Linear<T>;
  attnNorm: Norm<T>;
  ffnIn: Linear<T>;
  ffnOut: Linear<T>;
  ffnNorm: Norm<T>;
}

export interface BertWeights<T> {
  wordEmb: T;
  posEmb: T;
  typeEmb: T;
  embNorm: Norm<T>;
  layers: BertLayerWeights<T>[];
  head: { dense: Linear<T>; norm: Norm<T>; bias: T };
}

/** Structured weights from a lookup by Hugging Face name. */
export function bertWeights<T>(cfg: BertConfig, get: (name: string) => T): BertWeights<T> {
  const { base, head } = names(cfg);
  const lin = (p: string): Linear<T> => ({ w: get(`${p}.weight`), b: get(`${p}.bias`) });
  const nrm = (p: string): Norm<T> => ({ gamma: get(`${p}.weight`), beta: get(`${p}.bias`) });
  const layers = Array.from({ length: cfg.numLayers }, (_, i): BertLayerWeights<T> => {
    const p = `${base}.encoder.layer.${i}`;
    return {
      query: lin(`${p}.attention.self.query`),
      key: lin(`${p}.attention.self.key`),
      value: lin(`${p}.attention.self.value`),
      attnOut: lin(`${p}.attention.output.dense`),
      attnNorm: nrm(`${p}.attention.output.LayerNorm`),
      ffnIn: lin(`${p}.intermediate.dense`),
      ffnOut: lin(`${p}.output.dense`),
      ffnNorm: nrm(`${p}.output.LayerNorm`),
    };
  });
  return {
    wordEmb: get(`${base}.embeddings.word_embeddings.weight`),
    posEmb: get(`${base}.embeddings.position_embeddings.weight`),
    typeEmb: get(`${base}.embeddings.token_type_embeddings.weight`),
    embNorm: nrm(`${base}.embeddings.LayerNorm`),
    layers,
    head: { dense: lin(head.dense), norm: nrm(head.norm), bias: get(head.bias) },
  };
}

// ---------------------------------------------------------------------------------------------------------
// The forward pass.

export interface BertInputs<T> {
  /** [B, S, H] word embeddings */
  embeds: T;
  /** [B, S] int32, 1 = real token */
  attentionMask: T;
  /** 0-based positions (default: real tokens before each position); RoBERTa's offset is added here */
  positionIds?: T;
  tokenTypeIds?: T;
}

function activation<T>(o: Ops<T>, cfg: BertConfig, x: T): T {
  if (cfg.hiddenAct === 'gelu') return o.gelu(x);
  if (cfg.hiddenAct === 'gelu_new') return o.geluTanh(x);
  return o.relu(x);
}

/** word + position + token-type embeddings, then LayerNorm. */
export function bertEmbeddings<T>(o: Ops<T>, w: BertWeights<T>, cfg: BertConfig, inp: BertInputs<T>): T {
  const offset = positionOffset(cfg);
  let positions = inp.positionIds ?? positionsFromMask(o, inp.attentionMask);
  if (offset) positions = o.add(positions, o.constInt([offset], []));
  const h = cfg.hiddenSize;
  const types = inp.tokenTypeIds ? o.gather(w.typeEmb, inp.tokenTypeIds) : o.slice(w.typeEmb, [0, 0], [1, h]);
  const x = o.add(o.add(inp.embeds, o.gather(w.posEmb, positions)), types);
  return applyNorm(o, x, w.embNorm, cfg.layerNormEps);
}

/** One post-LN encoder layer: x = LN(x + attn(x)); x = LN(x + ffn(x)). */
export function bertLayer<T>(o: Ops<T>, l: BertLayerWeights<T>, cfg: BertConfig, x: T, bias: T): T {
  const heads = cfg.numHeads;
  const q = splitHeads(o, applyLinear(o, x, l.query), heads);
  const k = splitHeads(o, applyLinear(o, x, l.key), heads);
  const v = splitHeads(o, applyLinear(o, x, l.value), heads);
  const attn = applyLinear(o, mergeHeads(o, scaledDotAttention(o, q, k, v, bias)), l.attnOut);
  x = applyNorm(o, o.add(x, attn), l.attnNorm, cfg.layerNormEps);
  const ffn = applyLinear(o, activation(o, cfg, applyLinear(o, x, l.ffnIn)), l.ffnOut);
  return applyNorm(o, o.add(x, ffn), l.ffnNorm, cfg.layerNormEps);
}

/** Final hidden states [B, S, H]. */
export function bertHidden<T>(o: Ops<T>, w: BertWeights<T>, cfg: BertConfig, inp: BertInputs<T>): T {
  const bias = attentionBias(o, { keyMask: inp.attentionMask });
  let x = bertEmbeddings(o, w, cfg, inp);
  for (const layer of w.layers) x = bertLayer(o, layer, cfg, x, bias);
  return x;
}

/**
 * MLM logits at one position per row: gather the rows first, then transform (dense + act + LN) and project
 * onto the tied word embeddings (+ bias), over the whole vocabulary or only the candidate rows.
 */
export function bertLogitsAt<T>(
  o: Ops<T>, w: BertWeights<T>, cfg: BertConfig, hidden: T, positions: T, candidates?: T,
): T {
  const rows = rowsAt(o, hidden, positions);
  const t = applyNorm(o, activation(o, cfg, applyLinear(o, rows, w.head.dense)), w.head.norm, cfg.layerNormEps);
  return tiedLogits(o, t, w.wordEmb, w.head.bias, candidates);
}

// ---------------------------------------------------------------------------------------------------------
// The LanguageModel on tfjs.

export class BertLM extends VariableLM implements LanguageModel {
  readonly info: ModelInfo;
  private readonly w: BertWeights<Tensor>;

  /** `values` keyed by Hugging Face name in ptune's layout (see common.takeCheckpointTensors / randomTensors). */
  constructor(
    readonly config: BertConfig,
    values: Map<string, Float32Array>,
    readonly tokenizer: TextTokenizer,
    opts: { source: string; special: SpecialIds; trainable?: boolean },
  ) {
    super(bertParamSpecs(config), values, tokenizer, { vocabSize: config.vocabSize, ...opts });
    this.w = bertWeights(config, (name) => this.vars.get(name)!);
    this.info = {
      family: 'bert',
      kind: 'masked',
      source: opts.source,
      vocabSize: config.vocabSize,
      hiddenSize: config.hiddenSize,
      numLayers: config.numLayers,
      numHeads: config.numHeads,
      numKvHeads: config.numHeads,
      intermediateSize: config.intermediateSize,
      maxPositions: config.maxPositions - positionOffset(config),
      parameterCount: countParameters(this.specs),
      special: opts.special,
      paddingSide: 'right',
    };
  }

  embed(ids: Tensor): Tensor {
    return tf.gather(this.w.wordEmb, ids);
  }

  run(batch: LmBatch): Tensor {
    const s = batch.embeds.shape[1]!;
    if (s > this.info.maxPositions) {
      throw new Error(`bert: sequence of ${s} tokens exceeds the ${this.info.maxPositions} positions of ${this.info.source}`);
    }
    return tf.tidy(() => bertHidden(tfOps, this.w, this.config, batch));
  }

  logitsAt(hidden: Tensor, positions: Tensor, candidates?: Tensor): Tensor {
    return tf.tidy(() => bertLogitsAt(tfOps, this.w, this.config, hidden, positions, candidates));
  }

}
