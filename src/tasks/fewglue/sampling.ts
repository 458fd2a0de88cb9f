import type { TaskExample } from './tasks.js';
import { mulberry32 } from '../../util/rng.js';

/** The few-shot samples' PRNG (mulberry32): the same seed gives the same sample on every platform. */
export const seededRandom = mulberry32;

/** Fisher–Yates shuffle into a new array. */
export function shuffled<T>(items: readonly T[], rand: () => number): T[] {
  const out = [...items];
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [out[i], out[j]] = [out[j], out[i]];
  }
  return out;
}

export interface FewShotOptions {
  /** examples per set (default 32) */
  n?: number;
  /** dev examples, when not n */
  devN?: number;
  seed: number;
  /**
   * default true: every label gets n / #labels examples in each set (the first labels in sorted order take
   * the remainder), so a 32-example set of a binary task is 16 + 16 whatever the corpus's label skew.
   * false: a plain random sample that follows the corpus's label distribution.
   */
  stratified?: boolean;
}

/**
 * Draws two disjoint few-shot sets (train and dev) of n examples each from one labeled pool, reproducibly
 * from the seed. Each set comes back in shuffled order.
 */
export function fewShotSplit(pool: readonly TaskExample[], opts: FewShotOptions): { train: TaskExample[]; dev: TaskExample[] } {
  const n = opts.n ?? 32;
  const nd = opts.devN ?? n;
  if (!Number.isInteger(n) || n <= 0) throw new Error(`few-shot size must be a positive integer, got ${n}`);
  if (!Number.isInteger(nd) || nd <= 0) throw new Error(`dev size must be a positive integer, got ${nd}`);
  const rand = seededRandom(opts.seed);
  if (opts.stratified === false) {
    if (pool.length < n + nd) throw new Error(`few-shot sampling needs ${n + nd} examples, the pool has ${pool.length}`);
    const order = shuffled(pool, rand);
    return { train: order.slice(0, n), dev: order.slice(n, n + nd) };
  }
  const byLabel = new Map<string, TaskExample[]>();
  for (const ex of pool) {
    if (ex.label === undefined) throw new Error(`stratified sampling needs labels; example ${ex.id} has none`);
    const items = byLabel.get(ex.label);
    if (items) items.push(ex);
    else byLabel.set(ex.label, [ex]);
  }
  const labels = [...byLabel.keys()].sort();
  const train: TaskExample[] = [];
  const dev: TaskExample[] = [];
  const share = (total: number, i: number) => Math.floor(total / labels.length) + (i < total % labels.length ? 1 : 0);
  labels.forEach((label, i) => {
    const quota = share(n, i);
    const devQuota = share(nd, i);
    const items = byLabel.get(label)!;
    if (items.length < quota + devQuota) throw new Error(`few-shot sampling needs ${quota + devQuota} examples of label "${label}", the pool has ${items.length}`);
    const order = shuffled(items, rand);
    train.push(...order.slice(0, quota));
    dev.push(...order.slice(quota, quota + devQuota));
  });
  return { train: shuffled(train, rand), dev: shuffled(dev, rand) };
}
