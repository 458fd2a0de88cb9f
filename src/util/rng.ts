/**
 * Seeded pseudo-random numbers, independent of any global state: the same seed always gives the same stream.
 * xoshiro128** (Blackman & Vigna) seeded through splitmix32, so nearby seeds give unrelated streams.
 */

function splitmix32(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x9e3779b9) >>> 0;
    let z = s;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
    return (z ^ (z >>> 16)) >>> 0;
  };
}

/** xoshiro128** with a state that can be saved and restored (checkpointed dropout streams). */
export class Rng {
  private s: [number, number, number, number];

  constructor(seed: number) {
    if (!Number.isFinite(seed)) throw new Error(`makeRng: seed must be a finite number, got ${seed}`);
    const init = splitmix32(Math.floor(seed) ^ Math.floor(seed / 0x100000000));
    this.s = [init(), init(), init(), init()];
  }

  /** The next 32 random bits, unsigned (one xoshiro128** step, in place). */
  private bits(): number {
    const s = this.s;
    const result = Math.imul(rotl(Math.imul(s[1], 5), 7), 9) >>> 0;
    const t = s[1] << 9;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 11);
    return result;
  }

  /** Uniform in [0, 1) with 32 random bits. */
  next(): number {
    return this.bits() / 0x100000000;
  }

  /** A dropout mask from the next `size` draws: 0 where a draw is below `rate`, 1 / (1 − rate) elsewhere. */
  dropoutMask(size: number, rate: number): Float32Array {
    const out = new Float32Array(size);
    const keep = 1 / (1 - rate);
    const threshold = rate * 0x100000000;
    for (let i = 0; i < size; i++) out[i] = this.bits() < threshold ? 0 : keep;
    return out;
  }

  state(): number[] {
    return [...this.s];
  }

  restore(state: readonly number[]): void {
    if (state.length !== 4 || !state.every((x) => Number.isInteger(x))) throw new Error(`rng state: expected 4 integers, got ${JSON.stringify(state)}`);
    this.s = [state[0]! | 0, state[1]! | 0, state[2]! | 0, state[3]! | 0];
  }
}

/** Uniform numbers in [0, 1) with 32 random bits each. */
export function makeRng(seed: number): () => number {
  const rng = new Rng(seed);
  return () => rng.next();
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}

/** Standard normal samples (Box–Muller) drawn from `rng`. */
export function makeNormal(rng: () => number): () => number {
  let spare: number | null = null;
  return () => {
    if (spare !== null) {
      const s = spare;
      spare = null;
      return s;
    }
    const u1 = 1 - rng(); // (0, 1]: log stays finite
    const u2 = rng();
    const r = Math.sqrt(-2 * Math.log(u1));
    spare = r * Math.sin(2 * Math.PI * u2);
    return r * Math.cos(2 * Math.PI * u2);
  };
}

/**
 * mulberry32: a tiny seeded PRNG returning floats in [0, 1); the same seed gives the same stream everywhere.
 * Used where a stream was fixed before `makeRng` existed (random model weights, sampling, few-shot splits).
 */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
