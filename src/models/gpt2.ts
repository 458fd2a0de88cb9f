import type { Ops } from '../engine/ops.js';
import {
  ConfigFields,
  atRows,
  attend,
  biasAt,
  attentionBias,
  keyMaskOf,
  mergeHeads,
  positionsFrom,
  projectRows,
  splitHeads,
  withPast,
  type LayerKv,
  type WeightSpec,
} from './common.js';
import type { HiddenInputs, HiddenOutputs, LmFunctions, ModelFamily, SpecialIds, WeightOf } from './lm.js';

/** GPT2LMHeadModel: pre-LN decoder, learned positions, final ln_f, lm_head tied to wte (no bias). */
export interface Gpt2Config {
  vocabSize: number;
  hiddenSize: number;
  numLayers: number;
  numHeads: number;
  intermediateSize: number;
  maxPositions: number;
  layerNormEps: number;
  special: Partial<SpecialIds>;
  /** dropout rates when the LM trains: embeddings, attention probabilities, sublayer outputs (residual branches) */
  embdDropout: number;
  attnDropout: number;
  residDropout: number;
}

export const GPT2_SMALL: Gpt2Config = {
  vocabSize: 50257,
  hiddenSize: 768,
  numLayers: 12,
  numHeads: 12,
  intermediateSize: 3072,
  maxPositions: 1024,
  layerNormEps: 1e-5,
  special: {},
  embdDropout: 0.1,
  attnDropout: 0.1,
  residDropout: 0.1,
};

function parseConfig(json: Record<string, unknown>, file: string): Gpt2Config {
  const f = new ConfigFields(json, file);
  if (json.model_type !== 'gpt2') throw new Error(`${file}: model_type ${JSON.stringify(json.model_type)} is not gpt2`);
  f.refuse('activation_function', (v) => v === 'gelu_new' || v === 'gelu_pytorch_tanh', 'only gelu_new');
  for (const flag of ['scale_attn_by_inverse_layer_idx', 'reorder_and_upcast_attn']) f.refuse(flag, (v) => v === false, 'only false');
  f.refuse('scale_attn_weights', (v) => v === true, 'only true');
  const hiddenSize = f.int('n_embd');
  const cfg: Gpt2Config = {
    vocabSize: f.int('vocab_size'),
    hiddenSize,
    numLayers: f.int('n_layer'),
    numHeads: f.int('n_head'),
    intermediateSize: f.has('n_inner') ? f.int('n_inner') : 4 * hiddenSize,
    maxPositions: f.int('n_positions'),
    layerNormEps: f.num('layer_norm_epsilon', 1e-5),
    special: definedIds({ bos: f.id('bos_token_id'), eos: f.id('eos_token_id'), pad: f.id('pad_token_id') }),
    embdDropout: f.num('embd_pdrop', 0.1),
    attnDropout: f.num('attn_pdrop', 0.1),
    residDropout: f.num('resid_pdrop', 0.1),
  };
  if (cfg.hiddenSize % cfg.numHeads !== 0) throw new Error(`${file}: n_embd ${cfg.hiddenSize} is not divisible by n_head ${cfg.numHeads}`);
  return cfg;
}

export function definedIds(ids: Partial<Record<keyof SpecialIds, number | undefined>>): Partial<SpecialIds> {
  return Object.fromEntries(Object.entries(ids).filter(([, v]) => v !== undefined)) as Partial<SpecialIds>;
}

function toHfConfig(cfg: Gpt2Config): Record<string, unknown> {
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
    bos_token_id: cfg.special.bos,
    eos_token_id: cfg.special.eos,
    pad_token_id: cfg.special.pad,
    embd_pdrop: cfg.embdDropout,
    attn_pdrop: cfg.attnDropout,
    resid_pdrop: cfg.residDropout,
    tie_word_embeddings: true,
    torch_dtype: 'float32',
  };
}

/** Conv1D weights are stored [in, out], so the matmuls read them as they are. */
function weights(cfg: Gpt2Config): WeightSpec[] {
  const h = cfg.hiddenSize;
  const specs: WeightSpec[] = [];
  // GPT-2's init scales the residual projections by 1/sqrt(2 * layers)
  const residualStd = 0.02 / Math.sqrt(2 * cfg.numLayers);
  // Conv1D weights are [in, out]
  const conv = (p: string, inp: number, out: number, std = 0.02, inner?: 'out' | 'in') => {
    specs.push({ name: `${p}.weight`, shape: [inp, out], init: 'normal', std, ...(inner && { inner: inner === 'out' ? 1 : 0 }) });
    specs.push({ name: `${p}.bias`, shape: [out], init: 'zeros', ...(inner === 'out' && { inner: 0 }) });
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
    conv(`${p}.mlp.c_fc`, h, cfg.intermediateSize, 0.02, 'out');
    conv(`${p}.mlp.c_proj`, cfg.intermediateSize, h, residualStd, 'in');
  }
  norm('transformer.ln_f');
  // the original OpenAI checkpoints store names without the `transformer.` prefix
  for (const s of specs) s.aliases = [s.name.slice('transformer.'.length)];
  return specs;
}

function functions(cfg: Gpt2Config): LmFunctions {
  const eps = cfg.layerNormEps;
  const norm = <T>(o: Ops<T>, w: WeightOf<T>, x: T, p: string) => o.layerNorm(x, w(`${p}.weight`), w(`${p}.bias`), eps);
  const conv = <T>(o: Ops<T>, w: WeightOf<T>, x: T, p: string) => o.linear(x, w(`${p}.weight`), w(`${p}.bias`));

  /** causal self-attention over the past keys/values and the current ones */
  /** causal self-attention; with `at`, only the queries at those positions (one per row): out is [B, 1, H] */
  const attention = <T>(o: Ops<T>, w: WeightOf<T>, p: string, x: T, bias: T, past?: LayerKv<T>, at?: T): { out: T; kv: LayerKv<T> } => {
    const [b, s, h] = o.shape(x) as [number, number, number];
    const qkv = conv(o, w, x, `${p}.attn.c_attn`);
    const part = (i: number) => o.slice(qkv, [0, 0, i * h], [b, s, h]);
    const kv = { k: splitHeads(o, part(1), cfg.numHeads), v: splitHeads(o, part(2), cfg.numHeads) };
    const q = splitHeads(o, at ? atRows(o, part(0), at) : part(0), cfg.numHeads);
    const all = withPast(o, kv, past);
    const heads = attend(o, q, all.k, all.v, at ? biasAt(o, bias, at) : bias, { dropout: cfg.attnDropout });
    const out = o.dropout(conv(o, w, mergeHeads(o, heads), `${p}.attn.c_proj`), cfg.residDropout);
    return { out, kv };
  };

  return {
    embed: (o, w, ids) => o.gather(w('transformer.wte.weight'), ids),
    hidden<T>(o: Ops<T>, w: WeightOf<T>, inp: HiddenInputs<T>): HiddenOutputs<T> {
      const s = o.shape(inp.embeds)[1]!;
      const pastLen = inp.past ? o.shape(inp.past.mask)[1]! : 0;
      const positions = inp.positionIds ?? positionsFrom(o, inp.attentionMask, inp.past?.mask);
      const bias = attentionBias(o, keyMaskOf(o, inp.attentionMask, inp.past?.mask), { queryLen: s, pastLen, causal: true });
      let x = o.dropout(o.add(inp.embeds, o.gather(w('transformer.wpe.weight'), positions)), cfg.embdDropout);
      const present: LayerKv<T>[] = [];
      for (let i = 0; i < cfg.numLayers; i++) {
        x = o.checkpoint(x);
        const p = `transformer.h.${i}`;
        // the last layer computes only the rows asked for: nothing after it reads the others
        const at = i === cfg.numLayers - 1 ? inp.at : undefined;
        const attn = attention(o, w, p, norm(o, w, x, `${p}.ln_1`), bias, inp.past?.layers[i], at);
        x = o.add(at ? atRows(o, x, at) : x, attn.out);
        const mlp = o.dropout(conv(o, w, o.geluTanh(conv(o, w, norm(o, w, x, `${p}.ln_2`), `${p}.mlp.c_fc`)), `${p}.mlp.c_proj`), cfg.residDropout);
        x = o.add(x, mlp);
        present.push(attn.kv);
      }
      x = o.checkpoint(x);
      const hidden = norm(o, w, x, 'transformer.ln_f');
      return { hidden, present, ...(inp.at && { rows: o.reshape(hidden, [o.shape(hidden)[0]!, cfg.hiddenSize]) }) };
    },
    logits: (o, w, rows, candidates) => projectRows(o, rows, w('transformer.wte.weight'), undefined, candidates),
  };
}

export const gpt2Family: ModelFamily<Gpt2Config> = {
  name: 'gpt2',
  modelTypes: ['gpt2'],
  kind: 'causal',
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
    maxPositions: cfg.maxPositions,
    paddingSide: 'left',
    tokenTypes: false,
  }),
  weights,
  functions,
  specialIds: (cfg) => cfg.special,
  randomConfig: (overrides, vocabSize) => ({ ...GPT2_SMALL, ...(overrides as Partial<Gpt2Config>), vocabSize }),
};
