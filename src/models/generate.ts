import { tf } from '../engine/index.js';
import type { KvCache, LanguageModel } from './lm.js';
import { mulberry32 } from '../util/rng.js';

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
  /** called with each new token id as soon as it is chosen (streaming) */
  onToken?: (id: number) => void;
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
 * Autoregressive generation with the model's KV cache: the prompt is run once, then one token per step.
 * Returns the new token ids only. An empty prompt starts from BOS. Generation also stops when the model's
 * context (`info.maxPositions`) is full.
 */
export function generate(lm: LanguageModel, promptIds: number[], opts: GenerateOptions): number[] {
  if (!lm.decodeStep) throw new Error(`generate: ${lm.info.source} (${lm.info.family}) has no decodeStep; it is not a causal LM`);
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
  const budget = Math.min(opts.maxNewTokens, lm.info.maxPositions - input.length + 1);
  const rng = makeRng(opts.seed ?? 0);
  const out: number[] = [];
  let cache: KvCache | null = null;
  try {
    while (out.length < budget) {
      const ids = tf.tensor2d(input, [1, input.length], 'int32');
      const step: { logits: tf.Tensor; cache: KvCache } = lm.decodeStep(ids, cache);
      ids.dispose();
      if (cache && step.cache !== cache) cache.dispose();
      cache = step.cache;
      const logits = step.logits.dataSync();
      step.logits.dispose();
      const next = temperature === 0 ? argmax(logits) : sampleToken(logits, temperature, topP, rng);
      if ((next === eos || next === bos) && opts.stopAtEos !== false) break;
      out.push(next);
      opts.onToken?.(next);
      input = [next];
    }
  } finally {
    cache?.dispose();
  }
  return out;
}
