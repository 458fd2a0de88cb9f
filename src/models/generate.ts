import type { Sym } from '../engine/onnx/index.js';
import type { Program, ProgramBuilder } from '../engine/program.js';
import type { HostTensor } from '../engine/tensor.js';
import { mulberry32 } from '../util/rng.js';
import { paddedLength, spliceOn } from '../prompt/ptuning.js';
import { rowsAt, type LayerKv } from './common.js';
import type { LanguageModel } from './model.js';

export interface GenerateOptions {
  maxNewTokens: number;
  /** 0 or unset: greedy (argmax) */
  temperature?: number;
  /** nucleus sampling: sample among the most likely tokens whose probability mass reaches topP (default 1) */
  topP?: number;
  /** seed of the sampling PRNG (default 0) */
  seed?: number;
  /**
   * stop when the model ends the text (default true): EOS, or BOS, which llama2.c models emit to start the next
   * document; that id is not returned
   */
  stopAtEos?: boolean;
  /** stop once the decoded continuation contains one of these strings (the tokens up to and including the one that completes it are returned) */
  stop?: string[];
  /** called with each new token id as soon as it is chosen (streaming) */
  onToken?: (id: number) => void;
  /** continuous prompt rows for pseudo-token positions of the prompt (P-tuned generation) */
  prompts?: PromptRows;
  /** deep prompts: the prefix table [N, layers · 2 · kvDim] (PEFT's PREFIX_TUNING layout), put in the cache first */
  prefix?: HostTensor<Float32Array>;
  /**
   * keep the keys and values of earlier positions (default true); false recomputes the whole sequence at every
   * step (the reference the cache is checked against)
   */
  cache?: boolean;
}

/** Prompt-table rows written over the input embeddings at the given prompt positions. */
export interface PromptRows {
  table: HostTensor<Float32Array>;
  /** prompt position → row of `table` */
  positions: number[];
  rows: number[];
}

/** The PRNG sampling draws from (mulberry32). */
export const makeRng = mulberry32;

export function argmax(values: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i]! > values[best]!) best = i;
  return best;
}

/** Samples from softmax(logits / temperature), restricted to the nucleus of mass `topP`. */
export function sampleToken(logits: ArrayLike<number>, temperature: number, topP: number, rng: () => number): number {
  const n = logits.length;
  let max = -Infinity;
  for (let i = 0; i < n; i++) max = Math.max(max, logits[i]!);
  const probs = new Float64Array(n);
  let total = 0;
  for (let i = 0; i < n; i++) total += probs[i] = Math.exp((logits[i]! - max) / temperature);
  let order = Array.from({ length: n }, (_, i) => i);
  if (topP < 1) {
    order.sort((a, b) => probs[b]! - probs[a]!);
    let mass = 0;
    let keep = 0;
    while (keep < n && mass < topP * total) mass += probs[order[keep++]!]!;
    order = order.slice(0, keep);
    total = mass;
  }
  let coin = rng() * total;
  for (const id of order) {
    coin -= probs[id]!;
    if (coin < 0) return id;
  }
  return order[order.length - 1]!;
}

/**
 * A causal LM's keys and values for one sequence, in host buffers of a fixed capacity ([1, kvHeads, capacity,
 * headDim] per layer) with a mask of the slots filled: decode programs read the whole buffer (masked), so one
 * compiled program serves every length up to the capacity, which doubles when it is reached.
 */
export class KvCache {
  capacity = 0;
  length = 0;
  layers: { k: Float32Array; v: Float32Array }[] = [];
  mask = new Int32Array(0);

  constructor(readonly lm: LanguageModel) {}

  private get slot(): number {
    return this.lm.info.headDim;
  }

  /** Room for `n` slots, keeping what is there. */
  reserve(n: number): void {
    if (n <= this.capacity) return;
    let cap = Math.max(64, this.capacity);
    while (cap < n) cap *= 2;
    const { numKvHeads: h, numLayers } = this.lm.info;
    const d = this.slot;
    const grow = (old: Float32Array | undefined) => {
      const out = new Float32Array(h * cap * d);
      if (old) for (let j = 0; j < h; j++) out.set(old.subarray(j * this.capacity * d, (j * this.capacity + this.length) * d), j * cap * d);
      return out;
    };
    this.layers = Array.from({ length: numLayers }, (_, i) => ({ k: grow(this.layers[i]?.k), v: grow(this.layers[i]?.v) }));
    const mask = new Int32Array(cap);
    mask.set(this.mask.subarray(0, this.length));
    this.mask = mask;
    this.capacity = cap;
  }

  /** Appends the first `n` positions of per-layer keys/values [1, kvHeads, S, headDim]. */
  append(present: Record<string, HostTensor>, n: number): void {
    this.reserve(this.length + n);
    const { numKvHeads: h } = this.lm.info;
    const d = this.slot;
    this.layers.forEach((layer, i) => {
      for (const which of ['k', 'v'] as const) {
        const src = present[`${which}${i}`]!;
        const s = src.shape[2]!;
        const data = src.data as Float32Array;
        for (let j = 0; j < h; j++) layer[which].set(data.subarray(j * s * d, (j * s + n) * d), (j * this.capacity + this.length) * d);
      }
    });
    this.mask.fill(1, this.length, this.length + n);
    this.length += n;
  }

  /**
   * Fills the first slots with a prefix table [N, layers · 2 · kvDim] (each row: layer 0's key, its value, layer
   * 1's key, ...), as deep prompts: the prompt's tokens then start at position N.
   */
  appendPrefix(table: HostTensor<Float32Array>): void {
    const { numKvHeads: h, numLayers, headDim: d } = this.lm.info;
    const [n, width] = table.shape as [number, number];
    if (width !== numLayers * 2 * h * d) throw new Error(`prefix table is ${width} wide, the model needs ${numLayers * 2 * h * d}`);
    const present: Record<string, HostTensor> = {};
    for (let l = 0; l < numLayers; l++) {
      for (const [which, part] of [['k', 0], ['v', 1]] as const) {
        const out = new Float32Array(h * n * d);
        for (let t = 0; t < n; t++) {
          for (let j = 0; j < h; j++) {
            const from = t * width + (2 * l + part) * h * d + j * d;
            out.set(table.data.subarray(from, from + d), (j * n + t) * d);
          }
        }
        present[`${which}${l}`] = { data: out, shape: [1, h, n, d] };
      }
    }
    this.append(present, n);
  }

  feeds(): Record<string, HostTensor> {
    const { numKvHeads: h } = this.lm.info;
    const shape = [1, h, this.capacity, this.slot];
    const out: Record<string, HostTensor> = { past_mask: { data: this.mask, shape: [1, this.capacity] } };
    this.layers.forEach((l, i) => {
      out[`past_k${i}`] = { data: l.k, shape };
      out[`past_v${i}`] = { data: l.v, shape };
    });
    return out;
  }
}

/**
 * One step over `s` new tokens after a cache of `capacity` slots (0: none): next-token logits at `last`, and
 * the new tokens' keys/values.
 */
function stepProgram(lm: LanguageModel, s: number, capacity: number, withPrompts: number): Program {
  const { numKvHeads: h, headDim: d, hiddenSize } = lm.info;
  return {
    key: `decode ${s} past ${capacity} prompts ${withPrompts}`,
    build: (b: ProgramBuilder) => {
      const { o } = b;
      const w = lm.weights(b);
      const ints = (name: string, shape: number[]) => b.input(name, shape, 'int32');
      let embeds = lm.fns.embed(o, w, ints('ids', [1, s]));
      if (withPrompts) {
        const table = b.input('prompt_table', [withPrompts, hiddenSize]);
        embeds = spliceOn(o, embeds, table, ints('pseudo_index', [1, s]), b.input('pseudo_mask', [1, s, 1]));
      }
      const past = capacity
        ? {
            mask: ints('past_mask', [1, capacity]),
            layers: Array.from({ length: lm.info.numLayers }, (_, i): LayerKv<Sym> => ({
              k: b.input(`past_k${i}`, [1, h, capacity, d]),
              v: b.input(`past_v${i}`, [1, h, capacity, d]),
            })),
          }
        : undefined;
      const last = ints('last', [1]);
      const { hidden, present, rows } = lm.fns.hidden(o, w, {
        embeds,
        attentionMask: ints('attention_mask', [1, s]),
        positionIds: ints('position_ids', [1, s]),
        past,
        at: last,
      });
      const outputs: Record<string, Sym> = { logits: lm.fns.logits(o, w, rows ?? rowsAt(o, hidden, last)) };
      present.forEach((kv, i) => {
        outputs[`k${i}`] = kv.k;
        outputs[`v${i}`] = kv.v;
      });
      return { outputs };
    },
  };
}

/**
 * Runs `ids` after the cache (appending their keys/values) and returns the next-token logits. The prompt's
 * length is padded to a multiple of 8 (padding is masked and not kept), so prompts share compiled programs.
 */
export async function decodeStep(lm: LanguageModel, cache: KvCache, ids: number[], prompts?: PromptRows): Promise<Float32Array> {
  const n = ids.length;
  if (cache.length + n > lm.info.maxPositions) {
    throw new Error(`${lm.info.source}: ${cache.length + n} positions exceed the model's ${lm.info.maxPositions}`);
  }
  const s = n === 1 ? 1 : paddedLength(n, Number.MAX_SAFE_INTEGER);
  const row = (fill: number, values: (i: number) => number) => Int32Array.from({ length: s }, (_, i) => (i < n ? values(i) : fill));
  const feeds: Record<string, HostTensor> = {
    ids: { data: row(lm.info.special.pad, (i) => ids[i]!), shape: [1, s] },
    attention_mask: { data: row(0, () => 1), shape: [1, s] },
    position_ids: { data: row(0, (i) => cache.length + i), shape: [1, s] },
    last: { data: Int32Array.of(n - 1), shape: [1] },
    ...(cache.capacity ? cache.feeds() : {}),
  };
  const nPrompts = prompts?.table.shape[0] ?? 0;
  if (prompts) {
    const index = new Int32Array(s);
    const mask = new Float32Array(s);
    prompts.positions.forEach((p, j) => {
      const at = p - cache.length;
      if (at >= 0 && at < n) {
        index[at] = prompts.rows[j]!;
        mask[at] = 1;
      }
    });
    Object.assign(feeds, { prompt_table: prompts.table, pseudo_index: { data: index, shape: [1, s] }, pseudo_mask: { data: mask, shape: [1, s, 1] } });
  }
  const r = await lm.run(stepProgram(lm, s, cache.capacity, nPrompts), feeds);
  cache.append(r.outputs, n);
  return r.outputs.logits!.data as Float32Array;
}

/**
 * Autoregressive generation with the model's KV cache: the prompt is run once, then one token per step.
 * Returns the new token ids only. An empty prompt starts from BOS. Generation also stops when the model's
 * context (`info.maxPositions`) is full.
 */
export async function generate(lm: LanguageModel, promptIds: number[], opts: GenerateOptions): Promise<number[]> {
  if (lm.info.kind !== 'causal') throw new Error(`generate: ${lm.info.source} (${lm.info.family}) is not a causal LM`);
  const temperature = opts.temperature ?? 0;
  const topP = opts.topP ?? 1;
  if (!(temperature >= 0)) throw new Error(`generate: temperature must be >= 0, got ${temperature}`);
  if (!(topP > 0 && topP <= 1)) throw new Error(`generate: topP must be in (0, 1], got ${topP}`);
  const { bos, eos } = lm.info.special;
  let input = promptIds;
  if (input.length === 0) {
    if (bos === undefined) throw new Error(`generate: empty prompt and ${lm.info.source} has no BOS token`);
    input = [bos];
  }
  if (input.length > lm.info.maxPositions) {
    throw new Error(`generate: the prompt has ${input.length} tokens, more than the ${lm.info.maxPositions} positions of ${lm.info.source}`);
  }
  const budget = Math.min(opts.maxNewTokens, lm.info.maxPositions - input.length - (opts.prefix?.shape[0] ?? 0) + 1);
  const rng = makeRng(opts.seed ?? 0);
  const out: number[] = [];
  const cached = opts.cache !== false;
  const fresh = () => {
    const c = new KvCache(lm);
    if (opts.prefix) c.appendPrefix(opts.prefix);
    return c;
  };
  let cache = fresh();
  if (input.length + cache.length > lm.info.maxPositions) {
    throw new Error(`generate: the prompt and the prefix take ${input.length + cache.length} positions, more than the ${lm.info.maxPositions} of ${lm.info.source}`);
  }
  let first = true;
  while (out.length < budget) {
    // without the cache every step starts from an empty one and runs the prompt and all generated tokens again
    if (!cached && !first) cache = fresh();
    const logits = await decodeStep(lm, cache, cached || first ? input : [...input, ...out], first || !cached ? opts.prompts : undefined);
    first = false;
    const next = temperature === 0 ? argmax(logits) : sampleToken(logits, temperature, topP, rng);
    if ((next === eos || next === bos) && opts.stopAtEos !== false) break;
    out.push(next);
    opts.onToken?.(next);
    if (opts.stop?.length) {
      const text = lm.tokenizer.decode(out, { skipSpecial: true });
      if (opts.stop.some((s) => text.includes(s))) break;
    }
    if (out.length >= budget || cache.length >= lm.info.maxPositions) break;
    if (cached) input = [next];
  }
  return out;
}
