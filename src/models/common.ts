import { tf, type Ops } from '../engine/index.js';
import { mulberry32 } from '../util/rng.js';
import type { StoredTensor } from '../engine/safetensors.js';
import type { TextTokenizer } from '../tokenizers/tokenizer.js';
import type { KvCache } from './lm.js';

// ---------------------------------------------------------------------------------------------------------
// Transformer pieces shared by BERT and GPT-2, written against Ops<T>.

export interface Linear<T> {
  /** [in, out] */
  w: T;
  b: T;
}
export interface Norm<T> {
  gamma: T;
  beta: T;
}

/** Large negative bias for masked attention scores: finite, so fully masked (padding) rows stay NaN-free. */
const MASKED = -1e9;

export function applyLinear<T>(o: Ops<T>, x: T, l: Linear<T>): T {
  return o.linear(x, l.w, l.b);
}

export function applyNorm<T>(o: Ops<T>, x: T, n: Norm<T>, eps: number): T {
  return o.layerNorm(x, n.gamma, n.beta, eps);
}

/** Default positions: the number of real tokens before each position (right for left and right padding). */
export function positionsFromMask<T>(o: Ops<T>, attentionMask: T): T {
  const s = o.shape(attentionMask)[1]!;
  const strictlyUpper = new Float32Array(s * s);
  for (let j = 0; j < s; j++) for (let i = j + 1; i < s; i++) strictlyUpper[j * s + i] = 1;
  const before = o.matmul(o.cast(attentionMask, 'float32'), o.constFloat(strictlyUpper, [s, s]));
  return o.cast(before, 'int32');
}

/**
 * Additive attention bias. Bidirectional: [B, 1, 1, K] from the key padding mask. Causal: [B|1, 1, Q, K] where
 * query i (at absolute position pastLen + i) sees keys 0..pastLen + i, combined with the padding mask if given.
 */
export function attentionBias<T>(
  o: Ops<T>,
  opts: { keyMask?: T; causal?: { queryLen: number; pastLen: number } },
): T {
  const { keyMask, causal } = opts;
  let padding: T | undefined;
  if (keyMask) {
    const [b, k] = o.shape(keyMask) as [number, number];
    padding = o.reshape(o.scale(o.sub(o.scalar(1), o.cast(keyMask, 'float32')), MASKED), [b, 1, 1, k]);
  }
  if (!causal) {
    if (!padding) throw new Error('attentionBias: needs a key mask or a causal shape');
    return padding;
  }
  const { queryLen, pastLen } = causal;
  const keys = pastLen + queryLen;
  const future = new Float32Array(queryLen * keys);
  for (let i = 0; i < queryLen; i++) for (let j = pastLen + i + 1; j < keys; j++) future[i * keys + j] = MASKED;
  const bias = o.constFloat(future, [1, 1, queryLen, keys]);
  return padding ? o.add(bias, padding) : bias;
}

/** [B, S, H] → [B, heads, S, d] */
export function splitHeads<T>(o: Ops<T>, x: T, heads: number): T {
  const [b, s, h] = o.shape(x) as [number, number, number];
  return o.transpose(o.reshape(x, [b, s, heads, h / heads]), [0, 2, 1, 3]);
}

/** [B, heads, S, d] → [B, S, H] */
export function mergeHeads<T>(o: Ops<T>, x: T): T {
  const [b, heads, s, d] = o.shape(x) as [number, number, number, number];
  return o.reshape(o.transpose(x, [0, 2, 1, 3]), [b, s, heads * d]);
}

/** softmax(q k^T / sqrt(d) + bias) v over heads: q [B, h, Q, d], k and v [B, h, K, d] → [B, h, Q, d]. */
export function scaledDotAttention<T>(o: Ops<T>, q: T, k: T, v: T, bias: T): T {
  const d = o.shape(q)[3]!;
  const scores = o.add(o.scale(o.matmul(q, k, true), 1 / Math.sqrt(d)), bias);
  return o.matmul(o.softmax(scores, -1), v);
}

/** hidden [B, S, H], positions [B] int32 → the row of each batch entry at its position, [B, H]. */
export function rowsAt<T>(o: Ops<T>, hidden: T, positions: T): T {
  const [b, s, h] = o.shape(hidden) as [number, number, number];
  const rowStarts = o.constInt(Array.from({ length: b }, (_, i) => i * s), [b]);
  return o.gather(o.reshape(hidden, [b * s, h]), o.add(rowStarts, positions));
}

/**
 * Tied output projection of rows [B, H] onto the embedding table [V, H] (+ bias [V]): over the whole vocabulary,
 * or only over `candidates` [C] (then only those rows of the table and entries of the bias are touched).
 */
export function tiedLogits<T>(o: Ops<T>, rows: T, table: T, bias: T | undefined, candidates?: T): T {
  const t = candidates ? o.gather(table, candidates) : table;
  // (table · rows^T)^T: transposes only the small [B, H] and [C, B] operands, never the [V, H] table
  const logits = o.transpose(o.matmul(t, rows, true), [1, 0]);
  if (!bias) return logits;
  return o.add(logits, candidates ? o.gather(bias, candidates) : bias);
}

// ---------------------------------------------------------------------------------------------------------
// Parameters: one spec list per architecture drives loading, random init and counting.

export interface ParamSpec {
  /** Hugging Face parameter name */
  name: string;
  /** shape as stored in Hugging Face checkpoints */
  shape: number[];
  /** torch nn.Linear weight: stored [out, in], kept [in, out] */
  transposed?: boolean;
  init: 'normal' | 'zeros' | 'ones';
  /** standard deviation for 'normal' */
  std?: number;
}

export function keptShape(spec: ParamSpec): number[] {
  return spec.transposed ? [spec.shape[1]!, spec.shape[0]!] : spec.shape;
}

export function transpose2d(src: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[c * rows + r] = src[r * cols + c]!;
  return out;
}

/**
 * Checkpoint tensors for `specs`, validated and in ptune's layout. `aliases(name)` lists other names the same
 * tensor may be stored under (e.g. without the `transformer.` prefix, or LayerNorm gamma/beta).
 */
export function takeCheckpointTensors(
  specs: ParamSpec[],
  stored: Map<string, StoredTensor>,
  source: string,
  aliases: (name: string) => string[] = () => [],
): Map<string, Float32Array> {
  const out = new Map<string, Float32Array>();
  for (const spec of specs) {
    const found = [spec.name, ...aliases(spec.name)].map((n) => [n, stored.get(n)] as const).find(([, t]) => t);
    if (!found) throw new Error(`${source}: missing tensor "${spec.name}" (expected shape [${spec.shape.join(',')}])`);
    const [name, t] = found as [string, StoredTensor];
    if (t.shape.join(',') !== spec.shape.join(',')) {
      throw new Error(
        `${t.file}: tensor "${name}": expected shape [${spec.shape.join(',')}], found [${t.shape.join(',')}]`,
      );
    }
    out.set(spec.name, spec.transposed ? transpose2d(t.data, spec.shape[0]!, spec.shape[1]!) : t.data);
  }
  return out;
}

/** Deterministic initial values for `specs` in ptune's layout (normal via mulberry32 + Box-Muller). */
export function randomTensors(specs: ParamSpec[], seed: number): Map<string, Float32Array> {
  const next = mulberry32(seed);
  const out = new Map<string, Float32Array>();
  for (const spec of specs) {
    const data = new Float32Array(spec.shape.reduce((a, b) => a * b, 1));
    if (spec.init === 'ones') data.fill(1);
    if (spec.init === 'normal') {
      const std = spec.std ?? 0.02;
      // values are i.i.d., so they are drawn directly in the kept layout; each Box-Muller pair fills two
      for (let i = 0; i < data.length; i += 2) {
        const r = std * Math.sqrt(-2 * Math.log(1 - next()));
        const a = 2 * Math.PI * next();
        data[i] = r * Math.cos(a);
        if (i + 1 < data.length) data[i + 1] = r * Math.sin(a);
      }
    }
    out.set(spec.name, data);
  }
  return out;
}


/** tf.Variables (kept layout) keyed by Hugging Face name. */
export function makeVariables(
  specs: ParamSpec[],
  values: Map<string, Float32Array>,
  trainable: boolean,
): Map<string, tf.Variable> {
  const vars = new Map<string, tf.Variable>();
  for (const spec of specs) {
    const data = values.get(spec.name);
    if (!data) throw new Error(`no value for parameter "${spec.name}"`);
    vars.set(spec.name, tf.tidy(() => tf.variable(tf.tensor(data, keptShape(spec), 'float32'), trainable)));
  }
  return vars;
}

/** Parameters of `vars` back in Hugging Face layout (nn.Linear weights [out, in]), e.g. for writeSafetensors. */
export function exportHfTensors(
  specs: ParamSpec[],
  vars: Map<string, tf.Variable>,
): Map<string, { shape: number[]; data: Float32Array }> {
  const out = new Map<string, { shape: number[]; data: Float32Array }>();
  for (const spec of specs) {
    const kept = vars.get(spec.name)!.dataSync() as Float32Array;
    const data = spec.transposed ? transpose2d(kept, spec.shape[1]!, spec.shape[0]!) : Float32Array.from(kept);
    out.set(spec.name, { shape: spec.shape, data });
  }
  return out;
}

export function countParameters(specs: ParamSpec[]): number {
  return specs.reduce((n, s) => n + s.shape.reduce((a, b) => a * b, 1), 0);
}

// ---------------------------------------------------------------------------------------------------------
// A stand-in tokenizer for randomly initialised models.

/**
 * Whitespace tokenizer over a synthetic vocabulary: `[PAD]` 0, `[UNK]` 1, `[CLS]` 2, `[SEP]` 3, `[MASK]` 4,
 * then `w5`, `w6`, ... up to vocabSize - 1.
 */
export class SyntheticTokenizer implements TextTokenizer {
  readonly lowercase = false;
  static readonly special = { pad: 0, unk: 1, cls: 2, sep: 3, mask: 4 };
  private static readonly names = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]'];

  constructor(readonly vocabSize: number) {
    if (vocabSize < 6) throw new Error(`synthetic tokenizer: vocabulary of ${vocabSize} is too small (need at least 6)`);
  }

  idToToken(id: number): string | undefined {
    if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize) return undefined;
    return SyntheticTokenizer.names[id] ?? `w${id}`;
  }

  tokenToId(token: string): number | undefined {
    const special = SyntheticTokenizer.names.indexOf(token);
    if (special >= 0) return special;
    const m = /^w(\d+)$/.exec(token);
    const id = m ? Number(m[1]) : NaN;
    return id >= SyntheticTokenizer.names.length && id < this.vocabSize ? id : undefined;
  }

  encode(text: string): number[] {
    return text.split(/\s+/).filter(Boolean).map((w) => this.tokenToId(w) ?? SyntheticTokenizer.special.unk);
  }

  encodeWord(word: string): number[] {
    return this.encode(word);
  }

  decode(ids: number[], opts: { skipSpecial?: boolean } = {}): string {
    const keep = opts.skipSpecial ? ids.filter((id) => id >= SyntheticTokenizer.names.length) : ids;
    return keep.map((id) => this.idToToken(id) ?? '[UNK]').join(' ');
  }
}

export type LayerKv<T> = { k: T; v: T };

/**
 * Key/value cache of a causal LM on tfjs: each layer's keys and values for every position so far. `decodeStep`
 * advances it in place (releasing the previous tensors) and returns it.
 */
export class LayerKvCache implements KvCache {
  private constructor(
    readonly owner: object,
    public layers: LayerKv<tf.Tensor>[],
    public length: number,
  ) {}

  /** The cache to continue from: null for a fresh start; an error if another model made it. */
  static check(cache: KvCache | null, owner: object, family: string): LayerKvCache | null {
    if (cache !== null && (!(cache instanceof LayerKvCache) || cache.owner !== owner)) {
      throw new Error(`${family} decodeStep: the cache was made by a different model`);
    }
    return cache;
  }

  /** Keeps `layers` (outside any tidy) as the new state of `cache`, or of a new cache when there is none. */
  static advance(cache: LayerKvCache | null, owner: object, layers: LayerKv<tf.Tensor>[], length: number): LayerKvCache {
    for (const { k, v } of layers) tf.keep(k), tf.keep(v);
    if (!cache) return new LayerKvCache(owner, layers, length);
    cache.dispose();
    cache.layers = layers;
    cache.length = length;
    return cache;
  }

  dispose(): void {
    for (const { k, v } of this.layers) tf.dispose([k, v]);
    this.layers = [];
    this.length = 0;
  }
}

/**
 * The part BERT and GPT-2 share on tfjs: their weights as tf.Variables keyed by Hugging Face name (in ptune's
 * layout), trainable only when asked (a frozen LM by default).
 */
export abstract class VariableLM {
  protected readonly vars: Map<string, tf.Variable>;

  protected constructor(
    protected readonly specs: ParamSpec[],
    values: Map<string, Float32Array>,
    tokenizer: TextTokenizer,
    opts: { vocabSize: number; source: string; trainable?: boolean },
  ) {
    if (tokenizer.vocabSize > opts.vocabSize) {
      throw new Error(`${opts.source}: tokenizer has ${tokenizer.vocabSize} tokens, model vocabulary only ${opts.vocabSize}`);
    }
    this.vars = makeVariables(specs, values, opts.trainable ?? false);
  }

  parameters(): Map<string, tf.Variable> {
    return new Map(this.vars);
  }

  /** Parameters in Hugging Face layout (nn.Linear weights [out, in]), ready for writeSafetensors. */
  exportTensors(): Map<string, { shape: number[]; data: Float32Array }> {
    return exportHfTensors(this.specs, this.vars);
  }

  dispose(): void {
    for (const v of this.vars.values()) v.dispose();
    this.vars.clear();
  }
}
