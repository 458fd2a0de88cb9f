import assert from 'node:assert/strict';
import { before, after } from 'node:test';
import path from 'node:path';
import v8 from 'node:v8';
import vm from 'node:vm';
import { loadModel } from '../src/models/load.js';
import type { LanguageModel } from '../src/models/model.js';
import type { TokenBatch } from '../src/models/forward.js';
import { rowsAt } from '../src/models/common.js';
import { main } from '../src/cli/main.js';
import { getRuntime, type Runtime } from '../src/engine/runtime.js';
import { DEFAULT_LOOP, DEFAULT_OPTIM, type RunConfig } from '../src/train/session.js';

export const shared = path.resolve(process.cwd(), '../shared');
export const modelDir = (name: string): string => path.join(shared, 'models', name);

/** bert-mini-lama and gpt2-mini-lama, set by `useMiniModels` (live bindings). */
export let bert: LanguageModel;
export let gpt2: LanguageModel;

/** Loads the two mini models before the calling file's tests and frees them after. */
export function useMiniModels(): void {
  before(async () => {
    bert = await loadModel(modelDir('bert-mini-lama'));
    gpt2 = await loadModel(modelDir('gpt2-mini-lama'));
  });
  after(() => {
    bert.dispose();
    gpt2.dispose();
  });
}

/** Runs the `ptune` CLI with `args` (after "ptune"), capturing what it writes to stderr. */
export async function runCli(args: string[]): Promise<{ code: number; text: string }> {
  const written: string[] = [];
  const write = process.stderr.write;
  process.stderr.write = ((s: string) => {
    written.push(String(s));
    return true;
  }) as typeof process.stderr.write;
  try {
    const code = await main(['node', 'ptune', ...args]);
    return { code, text: written.join('') };
  } finally {
    process.stderr.write = write;
  }
}

/** A batch of `seqs` padded with `pad` on `side` to the longest row, with its attention mask. */
export function padBatch(seqs: number[][], pad: number, side: 'left' | 'right'): TokenBatch {
  const s = Math.max(...seqs.map((q) => q.length));
  const ids: number[][] = [];
  const attentionMask: number[][] = [];
  for (const q of seqs) {
    const fill = Array<number>(s - q.length).fill(pad);
    const ones = Array<number>(q.length).fill(1);
    const zeros = Array<number>(s - q.length).fill(0);
    ids.push(side === 'left' ? [...fill, ...q] : [...q, ...fill]);
    attentionMask.push(side === 'left' ? [...zeros, ...ones] : [...ones, ...zeros]);
  }
  return { ids, attentionMask };
}

let gc: (() => void) | undefined;

/** Full garbage collection (exposed at run time), so that RSS readings are not dominated by dead JS objects. */
export function collectGarbage(): void {
  if (!gc) {
    v8.setFlagsFromString('--expose-gc');
    gc = vm.runInNewContext('gc') as () => void;
  }
  gc();
}

/**
 * Process RSS after `early` and after `late` calls of `step`, with a full collection every 10 calls and before
 * each reading (so that RSS follows live memory, not how long dead buffers waited for a collection): a leak per
 * call shows as growth between the two readings.
 */
export async function rssAfter(early: number, late: number, step: (i: number) => unknown): Promise<{ early: number; late: number }> {
  let i = 0;
  const run = async (until: number) => {
    for (; i < until; i++) {
      await step(i);
      if (i % 10 === 9) collectGarbage();
    }
    collectGarbage();
    return process.memoryUsage().rss;
  };
  const a = await run(early);
  return { early: a, late: await run(late) };
}

/** Logits [B, C] over `candidates` at one position per row (the model's candidate path: only those rows of the output table are read). */
export async function candidateLogits(lm: LanguageModel, batch: TokenBatch, positions: number[], candidates: number[]): Promise<Float32Array> {
  const [b, s] = [batch.ids.length, batch.ids[0]!.length];
  const r = await lm.run(
    {
      key: `test candidates ${b}x${s} c${candidates.length}`,
      build: (pb) => {
        const { o } = pb;
        const w = lm.weights(pb);
        const ints = (name: string, shape: number[]) => pb.input(name, shape, 'int32');
        const { hidden } = lm.fns.hidden(o, w, { embeds: lm.fns.embed(o, w, ints('ids', [b, s])), attentionMask: ints('attention_mask', [b, s]) });
        const rows = rowsAt(o, hidden, ints('positions', [b]));
        return { outputs: { logits: lm.fns.logits(o, w, rows, ints('candidates', [candidates.length])) } };
      },
    },
    {
      ids: { data: Int32Array.from(batch.ids.flat()), shape: [b, s] },
      attention_mask: { data: Int32Array.from((batch.attentionMask ?? batch.ids.map((r) => r.map(() => 1))).flat()), shape: [b, s] },
      positions: { data: Int32Array.from(positions), shape: [b] },
      candidates: { data: Int32Array.from(candidates), shape: [candidates.length] },
    },
  );
  return r.outputs.logits!.data as Float32Array;
}

/** The cosine of the angle between two vectors of the same length. */
export function cosine(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let dot = 0, na = 0, nb = 0;
  for (let i = 0; i < a.length; i++) {
    dot += a[i]! * b[i]!;
    na += a[i]! ** 2;
    nb += b[i]! ** 2;
  }
  return dot / Math.sqrt(na * nb);
}

/** Deterministic values in [-scale, scale) (a linear congruential sequence from `seed`). */
export function rand(n: number, seed: number, scale = 1): Float32Array {
  let s = seed >>> 0;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    s = (s * 1664525 + 1013904223) >>> 0;
    out[i] = (s / 2 ** 32 - 0.5) * 2 * scale;
  }
  return out;
}

/** `fn` run with one of the runtime's training settings set to `value`, restored afterwards. */
export async function withRuntime<K extends 'gradientCheckpointing' | 'savedActivations', R>(key: K, value: Runtime[K], fn: () => Promise<R>): Promise<R> {
  const rt = await getRuntime();
  const before = rt[key];
  rt[key] = value;
  try {
    return await fn();
  } finally {
    rt[key] = before;
  }
}

/**
 * Asserts that `grad` (the program's gradient of parameter `p`) matches central finite differences of `lossAt` at
 * p's first, middle and last entries (a float32 loss of ~0.7, one ulp 6e-8, over 2·eps resolves ~1e-5); p.data is
 * left as it was. Returns how many entries were checked.
 */
export async function checkCentralDifferences(name: string, p: { data: Float32Array }, grad: Float32Array, lossAt: () => Promise<number>, eps = 4e-3): Promise<number> {
  const base = Float32Array.from(p.data);
  const at = async (i: number, d: number) => {
    p.data[i] = base[i]! + d;
    const v = await lossAt();
    p.data[i] = base[i]!;
    return v;
  };
  const entries = [0, Math.floor(base.length / 2), base.length - 1];
  for (const i of entries) {
    const fd = ((await at(i, eps)) - (await at(i, -eps))) / (2 * eps);
    const err = Math.abs(fd - grad[i]!) / Math.max(1e-3, Math.abs(fd) + Math.abs(grad[i]!));
    assert.ok(err < 2e-2, `${name}[${i}]: finite difference ${fd} vs gradient ${grad[i]}`);
  }
  assert.deepEqual(p.data, base);
  return entries.length;
}

/** A label-head run (labels a / b as w10 / w11, an MLP encoder) over a tuned LM, with or without the LM's dropout. */
export function tunedLmConfig(template: string, lmDropout: boolean): RunConfig {
  return {
    version: 1,
    model: 'random',
    template,
    head: { kind: 'label', labelField: 'y', labelWords: { a: 'w10', b: 'w11' } },
    encoder: { type: 'mlp', seed: 1, hiddenSize: 8 },
    maxLength: 16,
    skipTooLong: false,
    loop: DEFAULT_LOOP,
    optim: { ...DEFAULT_OPTIM, tuneLm: true, lmDropout },
  };
}

/** Resolves once `cond()` holds (checked every `everyMs`), rejects after `ms` naming `what`. */
export function waitFor(cond: () => boolean, ms: number, what: string, everyMs = 20): Promise<void> {
  return new Promise((resolve, reject) => {
    const t0 = Date.now();
    const poll = setInterval(() => {
      if (cond()) {
        clearInterval(poll);
        resolve();
      } else if (Date.now() - t0 > ms) {
        clearInterval(poll);
        reject(new Error(`timed out waiting for ${what}`));
      }
    }, everyMs);
  });
}
