import fs from 'node:fs';
import path from 'node:path';
import { tf, tfOps, type Ops } from '../engine/index.js';
import { loadCheckpointTensors, writeSafetensors } from '../engine/safetensors.js';
import { HfTokenizer } from '../tokenizers/hf.js';
import { Llama2cTokenizer } from '../tokenizers/llama2c.js';
import type { TextTokenizer } from '../tokenizers/tokenizer.js';
import type { KvCache, LanguageModel, LmBatch, ModelInfo, SpecialIds } from './lm.js';
import { LayerKvCache, type LayerKv } from './common.js';

type Tensor = tf.Tensor;

export interface LlamaConfig {
  vocabSize: number;
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  maxPositions: number;
  rmsNormEps: number;
  ropeTheta: number;
  tieWordEmbeddings: boolean;
  /**
   * 'interleaved': q/k rows in Meta / llama2.c order, rotating pairs (2i, 2i+1); 'half': Hugging Face order,
   * whose conversion permuted the q/k rows so that rotate_half (i, i + headDim/2) applies.
   */
  ropeStyle: 'interleaved' | 'half';
  special: SpecialIds;
}

export interface LoadLlamaOptions {
  /** make the weights trainable tf.Variables (full fine-tuning); default false (frozen LM) */
  trainable?: boolean;
}

/** Large negative bias for masked attention scores: finite, so fully masked (padding) rows stay NaN-free. */
const MASKED = -1e9;

const layerPrefix = (i: number) => `model.layers.${i}`;

/** Every weight of the model with its shape in ptune's layout (Linear weights [in, out]). */
function weightShapes(c: LlamaConfig): Map<string, number[]> {
  const h = c.hiddenSize;
  const kv = (h / c.numHeads) * c.numKvHeads;
  const shapes = new Map<string, number[]>([['model.embed_tokens.weight', [c.vocabSize, h]]]);
  for (let i = 0; i < c.numLayers; i++) {
    const p = layerPrefix(i);
    shapes.set(`${p}.input_layernorm.weight`, [h]);
    shapes.set(`${p}.self_attn.q_proj.weight`, [h, h]);
    shapes.set(`${p}.self_attn.k_proj.weight`, [h, kv]);
    shapes.set(`${p}.self_attn.v_proj.weight`, [h, kv]);
    shapes.set(`${p}.self_attn.o_proj.weight`, [h, h]);
    shapes.set(`${p}.post_attention_layernorm.weight`, [h]);
    shapes.set(`${p}.mlp.gate_proj.weight`, [h, c.intermediateSize]);
    shapes.set(`${p}.mlp.up_proj.weight`, [h, c.intermediateSize]);
    shapes.set(`${p}.mlp.down_proj.weight`, [c.intermediateSize, h]);
  }
  shapes.set('model.norm.weight', [h]);
  if (!c.tieWordEmbeddings) shapes.set('lm_head.weight', [h, c.vocabSize]);
  return shapes;
}

const isLinear = (name: string) => name.includes('_proj.') || name === 'lm_head.weight';

// ---------------------------------------------------------------------------------------------------------
// The architecture, written against Ops<T>.

export type Weights<T> = (name: string) => T;

/** keys [B, kvHeads, T, headDim] have the rotary embedding already applied */
export type { LayerKv } from './common.js';

/** cos/sin tables [maxPositions, headDim/2] for RoPE frequencies theta^(-2i/headDim). */
export function ropeTables(c: LlamaConfig): { cos: Float32Array; sin: Float32Array } {
  const half = c.hiddenSize / c.numHeads / 2;
  const cos = new Float32Array(c.maxPositions * half);
  const sin = new Float32Array(c.maxPositions * half);
  for (let p = 0; p < c.maxPositions; p++) {
    for (let i = 0; i < half; i++) {
      const angle = p * Math.pow(c.ropeTheta, -i / half);
      cos[p * half + i] = Math.cos(angle);
      sin[p * half + i] = Math.sin(angle);
    }
  }
  return { cos, sin };
}

/** Rotary cos/sin for positions [B, S] → each [B, 1, S, headDim/2]. */
export function ropeAt<T>(o: Ops<T>, cosTable: T, sinTable: T, positions: T): { cos: T; sin: T } {
  const [b, s] = o.shape(positions);
  const half = o.shape(cosTable)[1]!;
  const pick = (table: T) => o.reshape(o.gather(table, positions), [b!, 1, s!, half]);
  return { cos: pick(cosTable), sin: pick(sinTable) };
}

/** Default positions under left padding: the number of real tokens before each position. */
export function positionsFromMask<T>(o: Ops<T>, attentionMask: T): T {
  const s = o.shape(attentionMask)[1]!;
  const upper = new Float32Array(s * s);
  for (let i = 0; i < s; i++) for (let j = i; j < s; j++) upper[i * s + j] = 1;
  const inclusiveCount = o.matmul(o.cast(attentionMask, 'float32'), o.constFloat(upper, [s, s]));
  return o.cast(o.relu(o.sub(inclusiveCount, o.scalar(1))), 'int32');
}

/**
 * Additive attention bias [B|1, 1, S, pastLen + S]: causal (query i sees keys up to pastLen + i) plus, when
 * `keyMask` [B, pastLen + S] is given, padding keys masked out.
 */
export function attentionBias<T>(o: Ops<T>, queryLen: number, pastLen: number, keyMask?: T): T {
  const keys = pastLen + queryLen;
  const causal = new Float32Array(queryLen * keys);
  for (let i = 0; i < queryLen; i++) for (let j = pastLen + i + 1; j < keys; j++) causal[i * keys + j] = MASKED;
  const bias = o.constFloat(causal, [1, 1, queryLen, keys]);
  if (!keyMask) return bias;
  const b = o.shape(keyMask)[0]!;
  const padding = o.scale(o.sub(o.scalar(1), o.cast(keyMask, 'float32')), MASKED);
  return o.add(bias, o.reshape(padding, [b, 1, 1, keys]));
}

/**
 * Grouped-query self-attention. The query heads sharing a kv head are folded into the sequence axis, so the
 * kv heads are used as they are instead of being repeated.
 */
/**
 * Rotary position embedding on x [B, heads, S, headDim]. `cos`/`sin` are [B or 1, 1, S, headDim/2] for the
 * positions of x. 'interleaved' rotates pairs (2i, 2i+1) (llama2.c, Meta's reference); 'half' rotates
 * (i, i + headDim/2) (Hugging Face's rotate_half).
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

export function llamaAttention<T>(
  o: Ops<T>, w: Weights<T>, c: LlamaConfig, layer: number, x: T,
  rope: { cos: T; sin: T }, bias: T, past?: LayerKv<T>,
): { out: T; kv: LayerKv<T> } {
  const [b, s] = o.shape(x) as [number, number];
  const hd = c.hiddenSize / c.numHeads;
  const group = c.numHeads / c.numKvHeads;
  const p = `${layerPrefix(layer)}.self_attn`;
  const heads = (t: T, n: number) => o.transpose(o.reshape(t, [b, s, n, hd]), [0, 2, 1, 3]);
  const q = applyRope(o, heads(o.linear(x, w(`${p}.q_proj.weight`)), c.numHeads), rope.cos, rope.sin, c.ropeStyle);
  let k = applyRope(o, heads(o.linear(x, w(`${p}.k_proj.weight`)), c.numKvHeads), rope.cos, rope.sin, c.ropeStyle);
  let v = heads(o.linear(x, w(`${p}.v_proj.weight`)), c.numKvHeads);
  if (past) {
    k = o.concat([past.k, k], 2);
    v = o.concat([past.v, v], 2);
  }
  const keys = o.shape(k)[2]!;
  const qGrouped = o.reshape(q, [b, c.numKvHeads, group * s, hd]);
  const scores = o.reshape(o.scale(o.matmul(qGrouped, k, true), 1 / Math.sqrt(hd)), [b, c.numHeads, s, keys]);
  const probs = o.reshape(o.softmax(o.add(scores, bias), -1), [b, c.numKvHeads, group * s, keys]);
  const context = o.reshape(o.matmul(probs, v), [b, c.numHeads, s, hd]);
  const merged = o.reshape(o.transpose(context, [0, 2, 1, 3]), [b, s, c.hiddenSize]);
  return { out: o.linear(merged, w(`${p}.o_proj.weight`)), kv: { k, v } };
}

/** SwiGLU: down(silu(gate(x)) * up(x)). */
export function llamaMlp<T>(o: Ops<T>, w: Weights<T>, layer: number, x: T): T {
  const p = `${layerPrefix(layer)}.mlp`;
  const gated = o.mul(o.silu(o.linear(x, w(`${p}.gate_proj.weight`))), o.linear(x, w(`${p}.up_proj.weight`)));
  return o.linear(gated, w(`${p}.down_proj.weight`));
}

/** Pre-norm decoder stack over input embeddings [B, S, H] → final-normed hidden states and each layer's k/v. */
export function llamaForward<T>(
  o: Ops<T>, w: Weights<T>, c: LlamaConfig, embeds: T,
  rope: { cos: T; sin: T }, bias: T, past?: LayerKv<T>[],
): { hidden: T; kv: LayerKv<T>[] } {
  let x = embeds;
  const kv: LayerKv<T>[] = [];
  for (let i = 0; i < c.numLayers; i++) {
    const p = layerPrefix(i);
    const attn = llamaAttention(o, w, c, i, o.rmsNorm(x, w(`${p}.input_layernorm.weight`), c.rmsNormEps), rope, bias, past?.[i]);
    x = o.add(x, attn.out);
    x = o.add(x, llamaMlp(o, w, i, o.rmsNorm(x, w(`${p}.post_attention_layernorm.weight`), c.rmsNormEps)));
    kv.push(attn.kv);
  }
  return { hidden: o.rmsNorm(x, w('model.norm.weight'), c.rmsNormEps), kv };
}

/** hidden [B, S, H] at positions [B] → logits [B, V], or [B, C] for candidate ids [C]. */
export function llamaLogitsAt<T>(o: Ops<T>, w: Weights<T>, c: LlamaConfig, hidden: T, positions: T, candidates?: T): T {
  const [b, s, h] = o.shape(hidden) as [number, number, number];
  const rowStarts = o.constInt(Array.from({ length: b }, (_, i) => i * s), [b]);
  const rows = o.gather(o.reshape(hidden, [b * s, h]), o.add(rowStarts, positions));
  if (c.tieWordEmbeddings) {
    const table = w('model.embed_tokens.weight');
    return o.matmul(rows, candidates ? o.gather(table, candidates) : table, true);
  }
  const head = w('lm_head.weight');
  return o.linear(rows, candidates ? o.gather(head, candidates, 1) : head);
}

// ---------------------------------------------------------------------------------------------------------
// The LanguageModel on tfjs.

export class LlamaLM implements LanguageModel {
  readonly info: ModelInfo;
  private readonly vars: Map<string, tf.Variable>;
  private readonly cosTable: Tensor;
  private readonly sinTable: Tensor;
  private readonly w: Weights<Tensor>;

  /**
   * `weights` in ptune's layout (Linear [in, out]), keyed by Hugging Face names; they become tf.Variables,
   * trainable only with `trainable` (full fine-tuning; default: a frozen LM).
   */
  constructor(
    readonly config: LlamaConfig,
    weights: Map<string, { shape: number[]; data: Float32Array }>,
    readonly tokenizer: TextTokenizer,
    source: string,
    opts: LoadLlamaOptions = {},
  ) {
    if (tokenizer.vocabSize > config.vocabSize) {
      throw new Error(`${source}: tokenizer has ${tokenizer.vocabSize} tokens, model vocabulary only ${config.vocabSize}`);
    }
    this.vars = new Map();
    let parameterCount = 0;
    for (const [name, shape] of weightShapes(config)) {
      const t = weights.get(name);
      if (!t) throw new Error(`${source}: missing weight ${name}`);
      if (t.shape.join(',') !== shape.join(',')) {
        throw new Error(`${source}: weight ${name} has shape [${t.shape}], expected [${shape}]`);
      }
      this.vars.set(name, tf.tidy(() => tf.variable(tf.tensor(t.data, shape, 'float32'), opts.trainable ?? false)));
      parameterCount += t.data.length;
    }
    const { cos, sin } = ropeTables(config);
    const half = config.hiddenSize / config.numHeads / 2;
    this.cosTable = tf.keep(tf.tensor(cos, [config.maxPositions, half]));
    this.sinTable = tf.keep(tf.tensor(sin, [config.maxPositions, half]));
    this.w = (name) => {
      const v = this.vars.get(name);
      if (!v) throw new Error(`llama: no weight named ${name}`);
      return v;
    };
    this.info = {
      family: 'llama',
      kind: 'causal',
      source,
      vocabSize: config.vocabSize,
      hiddenSize: config.hiddenSize,
      numLayers: config.numLayers,
      numHeads: config.numHeads,
      numKvHeads: config.numKvHeads,
      intermediateSize: config.intermediateSize,
      maxPositions: config.maxPositions,
      parameterCount,
      special: config.special,
      paddingSide: 'left',
    };
  }

  embed(ids: Tensor): Tensor {
    return tf.gather(this.w('model.embed_tokens.weight'), ids);
  }

  run(batch: LmBatch): Tensor {
    const s = batch.embeds.shape[1]!;
    this.checkLength(s);
    return tf.tidy(() => {
      const o = tfOps;
      const positions = batch.positionIds ?? positionsFromMask(o, batch.attentionMask);
      const rope = ropeAt(o, this.cosTable, this.sinTable, positions);
      const bias = attentionBias(o, s, 0, batch.attentionMask);
      return llamaForward(o, this.w, this.config, batch.embeds, rope, bias).hidden;
    });
  }

  logitsAt(hidden: Tensor, positions: Tensor, candidates?: Tensor): Tensor {
    return tf.tidy(() => llamaLogitsAt(tfOps, this.w, this.config, hidden, positions, candidates));
  }

  /**
   * Runs ids [1, n] after the cached positions. The cache passed in is advanced in place (its old tensors are
   * released) and returned; dispose it when generation is done.
   */
  decodeStep(ids: Tensor, cache: KvCache | null): { logits: Tensor; cache: KvCache } {
    const past = LayerKvCache.check(cache, this, 'llama');
    const [b, n] = ids.shape as [number, number];
    if (b !== 1) throw new Error(`llama decodeStep: ids must be [1, n], got [${ids.shape}]`);
    const pastLen = past?.length ?? 0;
    this.checkLength(pastLen + n);
    const result = tf.tidy(() => {
      const o = tfOps;
      const positions = o.constInt(Array.from({ length: n }, (_, i) => pastLen + i), [1, n]);
      const rope = ropeAt(o, this.cosTable, this.sinTable, positions);
      const bias = attentionBias(o, n, pastLen);
      const { hidden, kv } = llamaForward(o, this.w, this.config, this.embed(ids), rope, bias, past?.layers);
      const logits = llamaLogitsAt(o, this.w, this.config, hidden, o.constInt([n - 1], [1]));
      return { logits, ks: kv.map((l) => l.k), vs: kv.map((l) => l.v) };
    });
    const layers = result.ks.map((k, i) => ({ k, v: result.vs[i]! }));
    return { logits: result.logits, cache: LayerKvCache.advance(past, this, layers, pastLen + n) };
  }

  parameters(): Map<string, tf.Variable> {
    return new Map(this.vars);
  }

  dispose(): void {
    for (const v of this.vars.values()) v.dispose();
    this.vars.clear();
    tf.dispose([this.cosTable, this.sinTable]);
  }

  private checkLength(n: number): void {
    if (n > this.config.maxPositions) {
      throw new Error(`llama: sequence of ${n} positions exceeds max_position_embeddings ${this.config.maxPositions}`);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// Loading: Hugging Face directories and llama2.c legacy checkpoints.

/** torch Linear [out, in] → [in, out] (and back: the same operation with the dims swapped). */
function transpose2d(src: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[c * rows + r] = src[r * cols + c]!;
  return out;
}

/**
 * Reorders the rows of a torch-layout q/k weight [heads*headDim, in] within each head from interleaved pairs
 * (2i, 2i+1) to halves (i, i+headDim/2), as Hugging Face's Llama conversion does for rotate_half.
 */
function permuteForRotateHalf(w: Float32Array, heads: number, headDim: number, inDim: number): Float32Array {
  const out = new Float32Array(w.length);
  const half = headDim / 2;
  for (let h = 0; h < heads; h++) {
    for (let i = 0; i < half; i++) {
      for (let j = 0; j < 2; j++) {
        const from = (h * headDim + 2 * i + j) * inDim;
        const to = (h * headDim + j * half + i) * inDim;
        out.set(w.subarray(from, from + inDim), to);
      }
    }
  }
  return out;
}

const LEGACY_HEADER_BYTES = 7 * 4;
const isTokenizerBin = (f: string) => /^tok.*\.bin$/i.test(path.basename(f));

/** Reads a llama2.c legacy v0 checkpoint into ptune's layout. */
export function readLlama2cCheckpoint(file: string): { config: LlamaConfig; weights: Map<string, { shape: number[]; data: Float32Array }> } {
  const buf = fs.readFileSync(file);
  if (buf.length < LEGACY_HEADER_BYTES) {
    throw new Error(`${file}: llama2.c checkpoint too short: ${buf.length} bytes, the header alone is ${LEGACY_HEADER_BYTES}`);
  }
  const [dim, hidden, layers, heads, kvHeads, signedVocab, seqLen] = Array.from({ length: 7 }, (_, i) => buf.readInt32LE(4 * i)) as number[];
  const vocab = Math.abs(signedVocab!);
  const header = `dim ${dim}, hidden_dim ${hidden}, n_layers ${layers}, n_heads ${heads}, n_kv_heads ${kvHeads}, vocab_size ${signedVocab}, seq_len ${seqLen}`;
  const sane = [dim, hidden, layers, heads, kvHeads, vocab, seqLen].every((v) => v! > 0 && v! < 1 << 24);
  if (!sane || dim! % heads! !== 0 || heads! % kvHeads! !== 0 || (dim! / heads!) % 2 !== 0) {
    throw new Error(`${file}: not a llama2.c checkpoint: implausible header (${header})`);
  }
  const d = dim!, f = hidden!, L = layers!, hd = d / heads!, kvDim = hd * kvHeads!;
  const sizes: [string, number][] = [
    ['tok_embeddings', vocab * d], ['rms_att', L * d], ['wq', L * d * d], ['wk', L * kvDim * d], ['wv', L * kvDim * d],
    ['wo', L * d * d], ['rms_ffn', L * d], ['w1', L * f * d], ['w2', L * d * f], ['w3', L * f * d], ['rms_final', d],
    ['freq_cis', seqLen! * hd], ['classifier', signedVocab! < 0 ? vocab * d : 0],
  ];
  const expected = LEGACY_HEADER_BYTES + 4 * sizes.reduce((a, [, n]) => a + n, 0);
  if (buf.length !== expected) {
    throw new Error(`${file}: llama2.c checkpoint size mismatch: header (${header}) implies ${expected} bytes, file has ${buf.length}`);
  }
  const floats = new Float32Array(buf.buffer.slice(buf.byteOffset + LEGACY_HEADER_BYTES, buf.byteOffset + buf.length));
  const blocks = new Map<string, Float32Array>();
  let off = 0;
  for (const [name, n] of sizes) {
    blocks.set(name, floats.subarray(off, off + n));
    off += n;
  }
  const weights = new Map<string, { shape: number[]; data: Float32Array }>();
  const perLayer = (block: string, i: number, n: number) => blocks.get(block)!.subarray(i * n, (i + 1) * n);
  /** a torch-layout [out, in] matrix of layer i, stored as [in, out] */
  const linear = (block: string, i: number, out: number, inDim: number) => ({
    shape: [inDim, out], data: transpose2d(perLayer(block, i, out * inDim), out, inDim),
  });
  weights.set('model.embed_tokens.weight', { shape: [vocab, d], data: blocks.get('tok_embeddings')! });
  for (let i = 0; i < L; i++) {
    const p = layerPrefix(i);
    weights.set(`${p}.input_layernorm.weight`, { shape: [d], data: perLayer('rms_att', i, d) });
    weights.set(`${p}.self_attn.q_proj.weight`, linear('wq', i, d, d));
    weights.set(`${p}.self_attn.k_proj.weight`, linear('wk', i, kvDim, d));
    weights.set(`${p}.self_attn.v_proj.weight`, linear('wv', i, kvDim, d));
    weights.set(`${p}.self_attn.o_proj.weight`, linear('wo', i, d, d));
    weights.set(`${p}.post_attention_layernorm.weight`, { shape: [d], data: perLayer('rms_ffn', i, d) });
    weights.set(`${p}.mlp.gate_proj.weight`, linear('w1', i, f, d));
    weights.set(`${p}.mlp.down_proj.weight`, linear('w2', i, d, f));
    weights.set(`${p}.mlp.up_proj.weight`, linear('w3', i, f, d));
  }
  weights.set('model.norm.weight', { shape: [d], data: blocks.get('rms_final')! });
  if (signedVocab! < 0) weights.set('lm_head.weight', { shape: [d, vocab], data: transpose2d(blocks.get('classifier')!, vocab, d) });
  const config: LlamaConfig = {
    vocabSize: vocab, hiddenSize: d, intermediateSize: f, numLayers: L, numHeads: heads!, numKvHeads: kvHeads!,
    maxPositions: seqLen!, rmsNormEps: 1e-5, ropeTheta: 10000, tieWordEmbeddings: signedVocab! > 0,
    ropeStyle: 'interleaved', special: { pad: 0, unk: 0, bos: 1, eos: 2 },
  };
  return { config, weights };
}

function findTokenizerBin(dir: string, vocabSize: number): string | undefined {
  const candidates = fs.readdirSync(dir).filter(isTokenizerBin).sort();
  return candidates.find((f) => f === 'tokenizer.bin' || f === `tok${vocabSize}.bin`) ?? candidates[0];
}

async function loadLegacy(file: string, opts: LoadLlamaOptions): Promise<LlamaLM> {
  const { config, weights } = readLlama2cCheckpoint(file);
  const dir = path.dirname(file);
  const tokFile = findTokenizerBin(dir, config.vocabSize);
  if (!tokFile) throw new Error(`${dir}: no llama2.c tokenizer (tokenizer.bin or tok*.bin) beside ${path.basename(file)}`);
  const tokenizer = Llama2cTokenizer.fromFile(path.join(dir, tokFile), config.vocabSize);
  return new LlamaLM(config, weights, tokenizer, file, opts);
}

function hfConfig(dir: string, raw: Record<string, unknown>): LlamaConfig {
  const file = path.join(dir, 'config.json');
  const int = (key: string, fallback?: number): number => {
    const v = raw[key] ?? fallback;
    if (typeof v !== 'number' || !Number.isInteger(v) || v <= 0) throw new Error(`${file}: field ${key} must be a positive integer, got ${JSON.stringify(v)}`);
    return v;
  };
  const firstId = (key: string, fallback: number): number => {
    const v = raw[key];
    const id = Array.isArray(v) ? v[0] : v;
    return typeof id === 'number' ? id : fallback;
  };
  if (raw.rope_scaling != null) throw new Error(`${file}: rope_scaling ${JSON.stringify(raw.rope_scaling)} is not supported`);
  if (raw.attention_bias === true || raw.mlp_bias === true) throw new Error(`${file}: attention_bias / mlp_bias are not supported`);
  const hiddenSize = int('hidden_size');
  const numHeads = int('num_attention_heads');
  if (raw.head_dim != null && raw.head_dim !== hiddenSize / numHeads) {
    throw new Error(`${file}: head_dim ${raw.head_dim} differs from hidden_size / num_attention_heads; not supported`);
  }
  return {
    vocabSize: int('vocab_size'),
    hiddenSize,
    intermediateSize: int('intermediate_size'),
    numLayers: int('num_hidden_layers'),
    numHeads,
    numKvHeads: int('num_key_value_heads', numHeads),
    maxPositions: int('max_position_embeddings', 2048),
    rmsNormEps: typeof raw.rms_norm_eps === 'number' ? raw.rms_norm_eps : 1e-6,
    ropeTheta: typeof raw.rope_theta === 'number' ? raw.rope_theta : 10000,
    tieWordEmbeddings: raw.tie_word_embeddings === true,
    ropeStyle: 'half',
    special: { pad: firstId('pad_token_id', 0), unk: 0, bos: firstId('bos_token_id', 1), eos: firstId('eos_token_id', 2) },
  };
}

async function loadHf(dir: string, raw: Record<string, unknown>, opts: LoadLlamaOptions): Promise<LlamaLM> {
  const config = hfConfig(dir, raw);
  const stored = loadCheckpointTensors(dir);
  const get = (name: string) => stored.get(name) ?? stored.get(name.replace(/^model\./, ''));
  if (!config.tieWordEmbeddings && !get('lm_head.weight')) config.tieWordEmbeddings = true;
  const weights = new Map<string, { shape: number[]; data: Float32Array }>();
  for (const [name, shape] of weightShapes(config)) {
    const t = get(name);
    if (!t) throw new Error(`${dir}: checkpoint has no tensor ${name}`);
    const torchShape = isLinear(name) ? [shape[1]!, shape[0]!] : shape;
    if (t.shape.join(',') !== torchShape.join(',')) {
      throw new Error(`${t.file}: tensor ${name} has shape [${t.shape}], config.json implies [${torchShape}]`);
    }
    weights.set(name, { shape, data: isLinear(name) ? transpose2d(t.data, shape[1]!, shape[0]!) : t.data });
  }
  let tokenizer: TextTokenizer;
  if (fs.existsSync(path.join(dir, 'tokenizer.json'))) {
    tokenizer = await HfTokenizer.fromDir(dir);
  } else {
    const tokFile = findTokenizerBin(dir, config.vocabSize);
    if (!tokFile) throw new Error(`${dir}: no tokenizer.json, tokenizer.bin or tok*.bin`);
    tokenizer = Llama2cTokenizer.fromFile(path.join(dir, tokFile));
  }
  return new LlamaLM(config, weights, tokenizer, dir, opts);
}

/**
 * Loads a Llama model from a Hugging Face directory (config.json with model_type "llama", safetensors,
 * tokenizer.json or a llama2.c tokenizer), a llama2.c legacy `.bin` checkpoint, or a directory holding one
 * such checkpoint and its tok*.bin tokenizer.
 */
export async function loadLlama(dirOrFile: string, opts: LoadLlamaOptions = {}): Promise<LanguageModel> {
  if (!fs.existsSync(dirOrFile)) throw new Error(`${dirOrFile}: no such file or directory`);
  if (fs.statSync(dirOrFile).isFile()) {
    if (!dirOrFile.endsWith('.bin')) throw new Error(`${dirOrFile}: expected a llama2.c .bin checkpoint or a model directory`);
    return loadLegacy(dirOrFile, opts);
  }
  const configFile = path.join(dirOrFile, 'config.json');
  if (fs.existsSync(configFile)) {
    let raw: Record<string, unknown>;
    try {
      raw = JSON.parse(fs.readFileSync(configFile, 'utf8')) as Record<string, unknown>;
    } catch (err) {
      throw new Error(`${configFile}: invalid JSON (${(err as Error).message})`);
    }
    if (raw.model_type === 'llama') return loadHf(dirOrFile, raw, opts);
    if (raw.model_type !== undefined) throw new Error(`${configFile}: model_type ${JSON.stringify(raw.model_type)} is not llama`);
  }
  const checkpoints = fs.readdirSync(dirOrFile).filter((f) => f.endsWith('.bin') && !isTokenizerBin(f));
  if (checkpoints.length !== 1) {
    throw new Error(`${dirOrFile}: expected config.json with model_type "llama" or exactly one llama2.c .bin checkpoint, found ${checkpoints.length} .bin checkpoints`);
  }
  return loadLegacy(path.join(dirOrFile, checkpoints[0]!), opts);
}

/**
 * Writes a Llama model in Hugging Face layout: config.json, model.safetensors (torch [out, in] Linear weights,
 * q/k rows permuted for rotate_half when the model uses interleaved RoPE) and, for a llama2.c tokenizer,
 * tokenizer.bin.
 */
export function llamaToHf(model: LlamaLM, outDir: string): void {
  const c = model.config;
  const hd = c.hiddenSize / c.numHeads;
  fs.mkdirSync(outDir, { recursive: true });
  const tensors = new Map<string, { shape: number[]; data: Float32Array }>();
  for (const [name, v] of model.parameters()) {
    const data = v.dataSync() as Float32Array;
    if (!isLinear(name)) {
      tensors.set(name, { shape: v.shape.slice(), data: Float32Array.from(data) });
      continue;
    }
    const [inDim, out] = v.shape as [number, number];
    let torch = transpose2d(data, inDim, out);
    if (c.ropeStyle === 'interleaved' && /\.(q|k)_proj\./.test(name)) torch = permuteForRotateHalf(torch, out / hd, hd, inDim);
    tensors.set(name, { shape: [out, inDim], data: torch });
  }
  writeSafetensors(path.join(outDir, 'model.safetensors'), tensors, { format: 'pt' });
  const hfConfigJson = {
    architectures: ['LlamaForCausalLM'],
    model_type: 'llama',
    vocab_size: c.vocabSize,
    hidden_size: c.hiddenSize,
    intermediate_size: c.intermediateSize,
    num_hidden_layers: c.numLayers,
    num_attention_heads: c.numHeads,
    num_key_value_heads: c.numKvHeads,
    max_position_embeddings: c.maxPositions,
    rms_norm_eps: c.rmsNormEps,
    rope_theta: c.ropeTheta,
    tie_word_embeddings: c.tieWordEmbeddings,
    hidden_act: 'silu',
    bos_token_id: c.special.bos,
    eos_token_id: c.special.eos,
    pad_token_id: c.special.pad,
    torch_dtype: 'float32',
  };
  fs.writeFileSync(path.join(outDir, 'config.json'), JSON.stringify(hfConfigJson, null, 2) + '\n');
  if (model.tokenizer instanceof Llama2cTokenizer) fs.writeFileSync(path.join(outDir, 'tokenizer.bin'), model.tokenizer.toBuffer());
}

/** Converts a llama2.c model (loaded by loadLlama) to a Hugging Face directory. */
export function llama2cToHf(model: LanguageModel, outDir: string): void {
  if (!(model instanceof LlamaLM)) throw new Error(`llama2cToHf: ${model.info.source} is not a Llama model`);
  llamaToHf(model, outDir);
}
