import type { Ops } from '../engine/ops.js';
import { padInPlace, Parameter, sizeOf } from '../engine/tensor.js';
import type { TextTokenizer } from '../tokenizers/tokenizer.js';
import { mulberry32 } from '../util/rng.js';

// ---------------------------------------------------------------------------------------------------------
// Transformer pieces the families share, written against Ops<T>. Weights are in Hugging Face's stored layout:
// torch nn.Linear weights [out, in] (read transposed in place by the matmul), GPT-2's Conv1D [in, out].

/** Large negative bias for masked attention scores: finite, so fully masked (padding) rows stay NaN-free. */
export const MASKED = -1e9;

/** torch nn.Linear: x [..., in] @ wᵀ (w [out, in]) + b. */
export function dense<T>(o: Ops<T>, x: T, w: T, b?: T): T {
  return o.dense(x, w, b);
}

/** Keys and values of one layer, [B, kvHeads, K, headDim] (keys after any rotary embedding). */
export interface LayerKv<T> {
  k: T;
  v: T;
}

/**
 * Keys and values that come before the current tokens: a generation cache, or deep prompts (prefix tuning).
 * `mask` [B, P] int32 marks the valid past slots; slot j has sequence index j (the current tokens follow at P).
 */
export interface PastKv<T> {
  layers: LayerKv<T>[];
  mask: T;
}

/**
 * Positions of the current tokens: the number of real tokens before each one, past slots included (right for
 * left and right padding, and for continuing after a cache or a prefix).
 */
export function positionsFrom<T>(o: Ops<T>, attentionMask: T, pastMask?: T): T {
  const s = o.shape(attentionMask)[1]!;
  const strictlyUpper = new Float32Array(s * s);
  for (let j = 0; j < s; j++) for (let i = j + 1; i < s; i++) strictlyUpper[j * s + i] = 1;
  let before = o.matmul(o.cast(attentionMask, 'float32'), o.constFloat(strictlyUpper, [s, s]));
  if (pastMask) before = o.add(before, o.sum(o.cast(pastMask, 'float32'), 1, true));
  return o.cast(before, 'int32');
}

/**
 * Additive attention bias [B, 1, S, P + S] for S current queries over P past slots and the S current keys:
 * padding keys (per `keyMask` [B, P + S]) masked out, and with `causal`, current query i sees only current
 * keys up to i. `window` (sliding-window attention) also hides keys more than `window - 1` indices back.
 */
export function attentionBias<T>(o: Ops<T>, keyMask: T, opts: { queryLen: number; pastLen?: number; causal: boolean; window?: number }): T {
  const [b, keys] = o.shape(keyMask) as [number, number];
  const { queryLen: s, causal, window } = opts;
  const past = opts.pastLen ?? 0;
  if (keys !== past + s) throw new Error(`attentionBias: key mask covers ${keys} keys, expected ${past} + ${s}`);
  const padding = o.reshape(o.scale(o.sub(o.scalar(1), o.cast(keyMask, 'float32')), MASKED), [b, 1, 1, keys]);
  if (!causal && window === undefined) return padding;
  const pattern = new Float32Array(s * keys);
  for (let i = 0; i < s; i++) {
    for (let j = 0; j < keys; j++) {
      const hidden = (causal && j > past + i) || (window !== undefined && past + i - j >= window);
      if (hidden) pattern[i * keys + j] = MASKED;
    }
  }
  return o.add(o.constFloat(pattern, [1, 1, s, keys]), padding);
}

/** [B, S, heads·d] → [B, heads, S, d] */
export function splitHeads<T>(o: Ops<T>, x: T, heads: number): T {
  const [b, s, h] = o.shape(x) as [number, number, number];
  return o.transpose(o.reshape(x, [b, s, heads, h / heads]), [0, 2, 1, 3]);
}

/** [B, heads, S, d] → [B, S, heads·d] */
export function mergeHeads<T>(o: Ops<T>, x: T): T {
  const [b, heads, s, d] = o.shape(x) as [number, number, number, number];
  return o.reshape(o.transpose(x, [0, 2, 1, 3]), [b, s, heads * d]);
}

/**
 * softmax(q kᵀ · scale + bias) v: q [B, heads, Q, d]; k, v [B, kvHeads, K, d] (grouped-query attention when
 * kvHeads < heads: the query heads that share a kv head are folded into the query axis, so k and v are used
 * as they are instead of being repeated); bias broadcasts to [B, heads, Q, K]. `softcap` (Gemma 2) applies
 * cap · tanh(scores / cap) before the bias. `dropout`: the rate on the attention probabilities when training.
 */
export function attend<T>(o: Ops<T>, q: T, k: T, v: T, bias: T, opts: { scale?: number; softcap?: number; dropout?: number } = {}): T {
  const [b, heads, s, d] = o.shape(q) as [number, number, number, number];
  const [, kvHeads, keys] = o.shape(k) as [number, number, number, number];
  const scale = opts.scale ?? 1 / Math.sqrt(d);
  const group = heads / kvHeads;
  const qg = group === 1 ? q : o.reshape(q, [b, kvHeads, group * s, d]);
  let scores = o.scale(o.matmul(qg, k, true), scale);
  if (group !== 1) scores = o.reshape(scores, [b, heads, s, keys]);
  if (opts.softcap) scores = o.scale(o.tanh(o.scale(scores, 1 / opts.softcap)), opts.softcap);
  let probs = o.dropout(o.softmax(o.add(scores, bias), -1), opts.dropout ?? 0);
  if (group !== 1) probs = o.reshape(probs, [b, kvHeads, group * s, keys]);
  const out = o.matmul(probs, v);
  return group === 1 ? out : o.reshape(out, [b, heads, s, o.shape(v)[3]!]);
}

/** Keys/values of this step appended to the past ones along the sequence axis. */
export function withPast<T>(o: Ops<T>, kv: LayerKv<T>, past?: LayerKv<T>): LayerKv<T> {
  if (!past) return kv;
  return { k: o.concat([past.k, kv.k], 2), v: o.concat([past.v, kv.v], 2) };
}

/** Key mask over past slots and current tokens, [B, P + S]. */
export function keyMaskOf<T>(o: Ops<T>, attentionMask: T, pastMask?: T): T {
  return pastMask ? o.concat([o.cast(pastMask, 'int32'), o.cast(attentionMask, 'int32')], 1) : attentionMask;
}

/** hidden [B, S, H], positions [B] int32 → the row of each batch entry at its position, [B, H]. */
export function rowsAt<T>(o: Ops<T>, hidden: T, positions: T): T {
  const [b, s, h] = o.shape(hidden) as [number, number, number];
  const rowStarts = o.constInt(Array.from({ length: b }, (_, i) => i * s), [b]);
  return o.gather(o.reshape(hidden, [b * s, h]), o.add(rowStarts, positions));
}

/** x [B, S, ...] at one position per row, `at` [B] int32 → [B, 1, ...] (the sequence axis kept, of length 1). */
export function atRows<T>(o: Ops<T>, x: T, at: T): T {
  const [b, s, ...rest] = o.shape(x) as number[];
  const width = rest.reduce((a, c) => a * c, 1);
  return o.reshape(rowsAt(o, o.reshape(x, [b!, s!, width]), at), [b!, 1, ...rest]);
}

/** Attention bias [B, 1, S, K] (or [B, 1, 1, K]) for the queries at `at` [B] only → [B, 1, 1, K]. */
export function biasAt<T>(o: Ops<T>, bias: T, at: T): T {
  const [b, , q, k] = o.shape(bias) as [number, number, number, number];
  if (q === 1) return bias;
  return o.reshape(rowsAt(o, o.reshape(bias, [b, q, k]), at), [b, 1, 1, k]);
}

/** Rotary cos/sin [B, 1, S, D] at the query positions `at` [B] → [B, 1, 1, D]. */
export function ropeRowsAt<T>(o: Ops<T>, rope: { cos: T; sin: T }, at: T): { cos: T; sin: T } {
  const pick = (t: T) => {
    const [b, , s, d] = o.shape(t) as [number, number, number, number];
    return o.reshape(rowsAt(o, o.reshape(t, [b, s, d]), at), [b, 1, 1, d]);
  };
  return { cos: pick(rope.cos), sin: pick(rope.sin) };
}

/**
 * Rows [B, H] projected onto a [V, H] table (+ bias [V]): over the whole vocabulary, or only over `candidates`
 * [C] (then only those rows of the table and entries of the bias are read).
 */
export function projectRows<T>(o: Ops<T>, rows: T, table: T, bias: T | undefined, candidates?: T): T {
  const t = candidates ? o.gather(table, candidates) : table;
  // (table · rowsᵀ)ᵀ: the [V, H] table is read as it is stored and only the small [N, H] rows are transposed
  // (rows · tableᵀ would make the matmul repack the whole table on every run)
  const logits = o.transpose(o.matmul(t, rows, true), [1, 0]);
  if (!bias) return logits;
  return o.add(logits, candidates ? o.gather(bias, candidates) : bias);
}

// ---------------------------------------------------------------------------------------------------------
// Weights: one spec list per architecture drives loading, random init and counting.

export interface WeightSpec {
  /** Hugging Face parameter name */
  name: string;
  /** shape as stored in Hugging Face checkpoints */
  shape: number[];
  init: 'normal' | 'zeros' | 'ones';
  /** standard deviation for 'normal' (default 0.02) */
  std?: number;
  /** other names checkpoints store the same tensor under */
  aliases?: string[];
  /** what a checkpoint without this tensor lacks, said in the loader's error instead of the tensor's name */
  missing?: string;
  /** the axis that is a feed-forward layer's inner width, which the host may hold wider (see `hostWidth`) */
  inner?: number;
}

/**
 * The width the host holds a feed-forward layer's inner dimension at: 32 more when it is a multiple of 1,024
 * (rows of 4 KiB), else the same. ONNX Runtime's CPU matrix product reads its left operand in place a block of
 * rows at a time, and rows a multiple of 4 KiB apart fall in the same L1 cache sets: [512, k] × [k, 768] ran at
 * 111–131 GFLOP/s for k = 1,024–4,096 against 174–189 for k + 32. The extra columns of the up-projection (and
 * gate) are zeros, and so are the down-projection's extra rows: the layer computes the same values, and
 * their gradients stay zero because every family's activation maps 0 to 0.
 */
export function hostWidth(n: number): number {
  return n % 1024 === 0 ? n + 32 : n;
}

/** Where a weight's values (stored layout) come from: read as an array, or written into one. */
export interface WeightSource {
  read(): Float32Array;
  readInto(out: Float32Array): void;
}

/**
 * A weight as the host holds it, its inner width widened with `pad`. A widened weight's values are written into
 * the start of the host's own array and padded in place, so that no stored-layout copy as large as the weight
 * is held beside it while a model loads; the others are the source's array as read.
 */
export function parameterFor(spec: WeightSpec, source: Float32Array | WeightSource, pad: boolean): Parameter {
  if (!pad || spec.inner === undefined || hostWidth(spec.shape[spec.inner]!) === spec.shape[spec.inner]) {
    return new Parameter(spec.name, spec.shape, source instanceof Float32Array ? source : source.read());
  }
  const host = spec.shape.slice();
  host[spec.inner] = hostWidth(host[spec.inner]!);
  const data = new Float32Array(sizeOf(host));
  const start = data.subarray(0, sizeOf(spec.shape));
  if (!(source instanceof Float32Array)) source.readInto(start);
  else if (source.length === start.length) start.set(source);
  else throw new Error(`weight "${spec.name}": ${source.length} values for shape [${spec.shape}]`);
  padInPlace(data, spec.shape, host);
  return new Parameter(spec.name, host, data, false, spec.shape);
}

/**
 * Deterministic values for `specs` (normal via mulberry32 + Box-Muller, i.i.d. in stored order), one tensor at a
 * time: each call returns the next spec's values (written into `into`, which holds exactly as many, when given),
 * or with `materialize` false only advances the generator past them (and returns null).
 */
export function randomStream(specs: readonly WeightSpec[], seed: number): (materialize: boolean, into?: Float32Array) => Float32Array | null {
  const next = mulberry32(seed);
  let at = 0;
  return (materialize, into) => {
    const spec = specs[at++];
    if (!spec) throw new Error('randomStream: no spec left');
    const size = spec.shape.reduce((a, b) => a * b, 1);
    if (!materialize) {
      if (spec.init === 'normal') for (let i = 0; i < size; i += 2) (next(), next());
      return null;
    }
    if (into && into.length !== size) throw new Error(`randomStream: ${size} values for "${spec.name}" into an array of ${into.length}`);
    const data = into ?? new Float32Array(size);
    if (spec.init === 'ones') data.fill(1);
    if (spec.init === 'zeros') data.fill(0);
    if (spec.init === 'normal') {
      const std = spec.std ?? 0.02;
      for (let i = 0; i < data.length; i += 2) {
        const r = std * Math.sqrt(-2 * Math.log(1 - next()));
        const a = 2 * Math.PI * next();
        data[i] = r * Math.cos(a);
        if (i + 1 < data.length) data[i + 1] = r * Math.sin(a);
      }
    }
    return data;
  };
}

export function transpose2d(src: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[c * rows + r] = src[r * cols + c]!;
  return out;
}

// ---------------------------------------------------------------------------------------------------------
// config.json fields, read with errors that name the file and the field.

export class ConfigFields {
  constructor(
    readonly json: Record<string, unknown>,
    readonly file: string,
  ) {}

  has(key: string): boolean {
    return this.json[key] !== undefined && this.json[key] !== null;
  }

  num(key: string, fallback?: number): number {
    const v = this.json[key] ?? fallback;
    if (typeof v !== 'number' || !Number.isFinite(v)) throw new Error(`${this.file}: field "${key}" missing or not a number (got ${JSON.stringify(v)})`);
    return v;
  }

  int(key: string, fallback?: number): number {
    const v = this.num(key, fallback);
    if (!Number.isInteger(v) || v <= 0) throw new Error(`${this.file}: field "${key}" must be a positive integer, got ${v}`);
    return v;
  }

  bool(key: string, fallback: boolean): boolean {
    const v = this.json[key] ?? fallback;
    if (typeof v !== 'boolean') throw new Error(`${this.file}: field "${key}" must be true or false, got ${JSON.stringify(v)}`);
    return v;
  }

  str(key: string, fallback?: string): string {
    const v = this.json[key] ?? fallback;
    if (typeof v !== 'string') throw new Error(`${this.file}: field "${key}" missing or not a string (got ${JSON.stringify(v)})`);
    return v;
  }

  /** A token id field, which configs write as a number, a list (first is used) or null. */
  id(key: string): number | undefined {
    const v = this.json[key];
    const id = Array.isArray(v) ? v[0] : v;
    return typeof id === 'number' ? id : undefined;
  }

  /** Refuses a field whose value changes the computation in a way the family does not implement. */
  refuse(key: string, unless: (v: unknown) => boolean, what: string): void {
    const v = this.json[key];
    if (v !== undefined && v !== null && !unless(v)) throw new Error(`${this.file}: ${key} ${JSON.stringify(v)} is not supported (${what})`);
  }
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
