import { tf, tfOps, type Ops } from '../engine/index.js';
import type { TextTokenizer } from '../tokenizers/tokenizer.js';
import {
  applyLinear,
  applyNorm,
  attentionBias,
  countParameters,
  LayerKvCache,
  mergeHeads,
  positionsFromMask,
  rowsAt,
  scaledDotAttention,
  splitHeads,
  tiedLogits,
  type LayerKv,
  type Linear,
  type Norm,
  type ParamSpec,
  VariableLM,
} from './common.js';
import type { KvCache, LanguageModel, LmBatch, ModelInfo, SpecialIds } from './lm.js';

type Tensor = tf.Tensor;

/** GPT2LMHeadModel: pre-LN decoder, learned positions, final ln_f, lm_head tied to wte (no bias). */
export interface Gpt2Config {
  vocabSize: number;
  hiddenSize: number;
  numLayers: number;
  numHeads: number;
  intermediateSize: number;
  maxPositions: number;
  layerNormEps: number;
}

export const GPT2_SMALL: Gpt2Config = {
  vocabSize: 50257,
  hiddenSize: 768,
  numLayers: 12,
  numHeads: 12,
  intermediateSize: 3072,
  maxPositions: 1024,
  layerNormEps: 1e-5,
};

/** Reads a Hugging Face config.json object of model_type gpt2. */
export function gpt2ConfigFromHf(json: Record<string, unknown>, file: string): Gpt2Config {
  if (json.model_type !== 'gpt2') throw new Error(`${file}: model_type ${JSON.stringify(json.model_type)} is not gpt2`);
  const num = (key: string, fallback?: number): number => {
    const v = json[key] ?? fallback;
    if (typeof v !== 'number' || !Number.isFinite(v)) throw new Error(`${file}: field "${key}" missing or not a number`);
    return v;
  };
  const act = json.activation_function ?? 'gelu_new';
  if (act !== 'gelu_new' && act !== 'gelu_pytorch_tanh') {
    throw new Error(`${file}: unsupported activation_function ${JSON.stringify(act)} (only gelu_new)`);
  }
  for (const flag of ['scale_attn_by_inverse_layer_idx', 'reorder_and_upcast_attn'] as const) {
    if (json[flag] === true) throw new Error(`${file}: ${flag}=true is not supported`);
  }
  if (json.scale_attn_weights === false) throw new Error(`${file}: scale_attn_weights=false is not supported`);
  const hiddenSize = num('n_embd');
  const cfg: Gpt2Config = {
    vocabSize: num('vocab_size'),
    hiddenSize,
    numLayers: num('n_layer'),
    numHeads: num('n_head'),
    intermediateSize: typeof json.n_inner === 'number' ? json.n_inner : 4 * hiddenSize,
    maxPositions: num('n_positions'),
    layerNormEps: num('layer_norm_epsilon', 1e-5),
  };
  if (cfg.hiddenSize % cfg.numHeads !== 0) {
    throw new Error(`${file}: n_embd ${cfg.hiddenSize} is not divisible by n_head ${cfg.numHeads}`);
  }
  return cfg;
}

/** The config.json object Hugging Face writes for `cfg` (special ids as given). */
export function gpt2ConfigToHf(cfg: Gpt2Config, special: { bos?: number; eos?: number; pad?: number } = {}): Record<string, unknown> {
  return {
    architectures: ['GPT2LMHeadModel'],
    model_type: 'gpt2',
    vocab_size: cfg.vocabSize,
    n_embd: cfg.hiddenSize,
    n_layer: cfg.numLayers,
    n_head: cfg.numHeads,
    n_inner: cfg.intermediateSize,
    n_positions: cfg.maxPositions,
    n_ctx: cfg.maxPositions,
    layer_norm_epsilon: cfg.layerNormEps,
    activation_function: 'gelu_new',
    bos_token_id: special.bos,
    eos_token_id: special.eos,
    pad_token_id: special.pad,
    tie_word_embeddings: true,
    torch_dtype: 'float32',
  };
}

// ---------------------------------------------------------------------------------------------------------
// Parameter names (Hugging Face) and the structured weights the forward pass reads.

/** All parameters. Conv1D weights are stored [in, out] already, so nothing is transposed. */
export function gpt2ParamSpecs(cfg: Gpt2Config): ParamSpec[] {
  const h = cfg.hiddenSize;
  const specs: ParamSpec[] = [];
  // GPT-2's init scales the residual projections by 1/sqrt(2 * layers)
  const residualStd = 0.02 / Math.sqrt(2 * cfg.numLayers);
  const conv = (p: string, inp: number, out: number, std = 0.02) => {
    specs.push({ name: `${p}.weight`, shape: [inp, out], init: 'normal', std });
    specs.push({ name: `${p}.bias`, shape: [out], init: 'zeros' });
  };
  const norm = (p: string) => {
    specs.push({ name: `${p}.weight`, shape: [h], init: 'ones' });
    specs.push({ name: `${p}.bias`, shape: [h], init: 'zeros' });
  };
  specs.push({ name: 'transformer.wte.weight', shape: [cfg.vocabSize, h], init: 'normal' });
  specs.push({ name: 'transformer.wpe.weight', shape: [cfg.maxPositions, h], init: 'normal', std: 0.01 });
  for (let i = 0; i < cfg.numLayers; i++) {
    const p = `transformer.h.${i}`;
    norm(`${p}.ln_1`);
    conv(`${p}.attn.c_attn`, h, 3 * h);
    conv(`${p}.attn.c_proj`, h, h, residualStd);
    norm(`${p}.ln_2`);
    conv(`${p}.mlp.c_fc`, h, cfg.intermediateSize);
    conv(`${p}.mlp.c_proj`, cfg.intermediateSize, h, residualStd);
  }
  norm('transformer.ln_f');
  return specs;
}

/** The original OpenAI checkpoints store names without the `transformer.` prefix. */
export function gpt2Aliases(name: string): string[] {
  return name.startsWith('transformer.') ? [name.slice('transformer.'.length)] : [];
}

export interface Gpt2BlockWeights<T> {
  ln1: Norm<T>;
  /** fused q|k|v projection [H, 3H] */
  qkv: Linear<T>;
  attnProj: Linear<T>;
  ln2: Norm<T>;
  fc: Linear<T>;
  mlpProj: Linear<T>;
}

export interface Gpt2Weights<T> {
  wte: T;
  wpe: T;
  blocks: Gpt2BlockWeights<T>[];
  lnF: Norm<T>;
}

export function gpt2Weights<T>(cfg: Gpt2Config, get: (name: string) => T): Gpt2Weights<T> {
  const lin = (p: string): Linear<T> => ({ w: get(`${p}.weight`), b: get(`${p}.bias`) });
  const nrm = (p: string): Norm<T> => ({ gamma: get(`${p}.weight`), beta: get(`${p}.bias`) });
  const blocks = Array.from({ length: cfg.numLayers }, (_, i): Gpt2BlockWeights<T> => {
    const p = `transformer.h.${i}`;
    return {
      ln1: nrm(`${p}.ln_1`),
      qkv: lin(`${p}.attn.c_attn`),
      attnProj: lin(`${p}.attn.c_proj`),
      ln2: nrm(`${p}.ln_2`),
      fc: lin(`${p}.mlp.c_fc`),
      mlpProj: lin(`${p}.mlp.c_proj`),
    };
  });
  return { wte: get('transformer.wte.weight'), wpe: get('transformer.wpe.weight'), blocks, lnF: nrm('transformer.ln_f') };
}

// ---------------------------------------------------------------------------------------------------------
// The forward pass.

/** keys and values [B, heads, K, headDim] (a type alias, so tf.tidy can return it) */

/** Causal self-attention; `past` holds the keys/values of earlier positions (incremental decoding). */
export function gpt2Attention<T>(
  o: Ops<T>, blk: Gpt2BlockWeights<T>, cfg: Gpt2Config, x: T, bias: T, past?: LayerKv<T>,
): { out: T; kv: LayerKv<T> } {
  const [b, s, h] = o.shape(x) as [number, number, number];
  const qkv = applyLinear(o, x, blk.qkv);
  const part = (i: number) => splitHeads(o, o.slice(qkv, [0, 0, i * h], [b, s, h]), cfg.numHeads);
  const q = part(0);
  let k = part(1);
  let v = part(2);
  if (past) {
    k = o.concat([past.k, k], 2);
    v = o.concat([past.v, v], 2);
  }
  const out = applyLinear(o, mergeHeads(o, scaledDotAttention(o, q, k, v, bias)), blk.attnProj);
  return { out, kv: { k, v } };
}

export function gpt2Mlp<T>(o: Ops<T>, blk: Gpt2BlockWeights<T>, x: T): T {
  return applyLinear(o, o.geluTanh(applyLinear(o, x, blk.fc)), blk.mlpProj);
}

/**
 * Pre-LN decoder over input embeddings [B, S, H] at `positions` [B, S] → final hidden states (after ln_f) and
 * each layer's keys/values.
 */
export function gpt2Forward<T>(
  o: Ops<T>, w: Gpt2Weights<T>, cfg: Gpt2Config, embeds: T, positions: T, bias: T, past?: LayerKv<T>[],
): { hidden: T; kv: LayerKv<T>[] } {
  let x = o.add(embeds, o.gather(w.wpe, positions));
  const kv: LayerKv<T>[] = [];
  w.blocks.forEach((blk, i) => {
    const attn = gpt2Attention(o, blk, cfg, applyNorm(o, x, blk.ln1, cfg.layerNormEps), bias, past?.[i]);
    x = o.add(x, attn.out);
    x = o.add(x, gpt2Mlp(o, blk, applyNorm(o, x, blk.ln2, cfg.layerNormEps)));
    kv.push(attn.kv);
  });
  return { hidden: applyNorm(o, x, w.lnF, cfg.layerNormEps), kv };
}

export interface Gpt2Inputs<T> {
  embeds: T;
  attentionMask: T;
  positionIds?: T;
}

/** Final hidden states [B, S, H] with the causal mask combined with the padding mask. */
export function gpt2Hidden<T>(o: Ops<T>, w: Gpt2Weights<T>, cfg: Gpt2Config, inp: Gpt2Inputs<T>): T {
  const s = o.shape(inp.embeds)[1]!;
  const positions = inp.positionIds ?? positionsFromMask(o, inp.attentionMask);
  const bias = attentionBias(o, { keyMask: inp.attentionMask, causal: { queryLen: s, pastLen: 0 } });
  return gpt2Forward(o, w, cfg, inp.embeds, positions, bias).hidden;
}

/** Next-token logits at one position per row, over the vocabulary or only the candidate rows of wte. */
export function gpt2LogitsAt<T>(o: Ops<T>, w: Gpt2Weights<T>, hidden: T, positions: T, candidates?: T): T {
  return tiedLogits(o, rowsAt(o, hidden, positions), w.wte, undefined, candidates);
}

// ---------------------------------------------------------------------------------------------------------
// The LanguageModel on tfjs.

export class Gpt2LM extends VariableLM implements LanguageModel {
  readonly info: ModelInfo;
  private readonly w: Gpt2Weights<Tensor>;

  /** `values` keyed by Hugging Face name in ptune's layout (see common.takeCheckpointTensors / randomTensors). */
  constructor(
    readonly config: Gpt2Config,
    values: Map<string, Float32Array>,
    readonly tokenizer: TextTokenizer,
    opts: { source: string; special: SpecialIds; trainable?: boolean },
  ) {
    super(gpt2ParamSpecs(config), values, tokenizer, { vocabSize: config.vocabSize, ...opts });
    this.w = gpt2Weights(config, (name) => this.vars.get(name)!);
    this.info = {
      family: 'gpt2',
      kind: 'causal',
      source: opts.source,
      vocabSize: config.vocabSize,
      hiddenSize: config.hiddenSize,
      numLayers: config.numLayers,
      numHeads: config.numHeads,
      numKvHeads: config.numHeads,
      intermediateSize: config.intermediateSize,
      maxPositions: config.maxPositions,
      parameterCount: countParameters(this.specs),
      special: opts.special,
      paddingSide: 'left',
    };
  }

  embed(ids: Tensor): Tensor {
    return tf.gather(this.w.wte, ids);
  }

  run(batch: LmBatch): Tensor {
    this.checkLength(batch.embeds.shape[1]!);
    return tf.tidy(() => gpt2Hidden(tfOps, this.w, this.config, batch));
  }

  logitsAt(hidden: Tensor, positions: Tensor, candidates?: Tensor): Tensor {
    return tf.tidy(() => gpt2LogitsAt(tfOps, this.w, hidden, positions, candidates));
  }

  /**
   * Runs ids [1, n] after the cached positions and returns the next-token logits [1, V]. The cache passed in is
   * advanced in place (its old tensors are released) and returned; dispose it when generation is done.
   */
  decodeStep(ids: Tensor, cache: KvCache | null): { logits: Tensor; cache: KvCache } {
    const past = LayerKvCache.check(cache, this, 'gpt2');
    const [b, n] = ids.shape as [number, number];
    if (b !== 1) throw new Error(`gpt2 decodeStep: ids must be [1, n], got [${ids.shape.join(', ')}]`);
    const pastLen = past?.length ?? 0;
    this.checkLength(pastLen + n);
    const result = tf.tidy(() => {
      const o = tfOps;
      const positions = o.constInt(Array.from({ length: n }, (_, i) => pastLen + i), [1, n]);
      const bias = attentionBias(o, { causal: { queryLen: n, pastLen } });
      const { hidden, kv } = gpt2Forward(o, this.w, this.config, this.embed(ids), positions, bias, past?.layers);
      return { logits: gpt2LogitsAt(o, this.w, hidden, o.constInt([n - 1], [1])), kv };
    });
    return { logits: result.logits, cache: LayerKvCache.advance(past, this, result.kv, pastLen + n) };
  }


  private checkLength(n: number): void {
    if (n > this.config.maxPositions) {
      throw new Error(`gpt2: sequence of ${n} positions exceeds n_positions ${this.config.maxPositions} of ${this.info.source}`);
    }
  }
}
