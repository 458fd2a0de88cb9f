/**
 * LM step timings at P-tuning's shapes: batch 16 × seq 32, 9 pseudo-token positions per row.
 *
 *   npm run bench:lm -- [--models mini,base] [--steps N] [--backend wasm|cpu]
 *   (or BENCH_MODELS / BENCH_STEPS / PTUNE_BACKEND in the environment)
 *
 * Prints one JSON object: per model, seconds per step (median of --steps after one warm-up) for
 *   forward   embed + LM forward + logits over the full vocabulary at the answer position;
 *   gradient  the same with 9 rows per batch row taken from a [9, H] tf.variable, loss = mean logit of the gold
 *             token among 2 candidates, gradient w.r.t. that variable only (LM frozen);
 * plus peak RSS and the backend.
 *
 * PyTorch comparison on the same machine (same shapes; `ptune` also includes the prompt encoder and Adam):
 *   apt-get install -y python3-torch libopenblas0-pthread
 *   /usr/bin/python3 ../shared/bench/torch_ptuning_step.py --model ../shared/models/bert-mini-lama --modes fwd,ptune
 *   /usr/bin/python3 ../shared/bench/torch_ptuning_step.py --arch bert --layers 12 --hidden 768 --heads 12 --modes fwd,ptune
 */
import path from 'node:path';
import { tf, initEngine, backendName, type BackendName } from '../src/engine/index.js';
import { createRandomModel, loadModel } from '../src/models/load.js';
import type { LanguageModel } from '../src/models/lm.js';
import { promptedEmbeds, type PromptBatch } from '../src/prompt/ptuning.js';
import { benchBatch } from './batch.js';

const BATCH = 16;
const SEQ = 32;
const PSEUDO = 9;

type ModelKey = 'mini' | 'base';

function arg(name: string, envName: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  if (i >= 0) return process.argv[i + 1];
  const eq = process.argv.find((a) => a.startsWith(`--${name}=`));
  return eq ? eq.slice(name.length + 3) : process.env[envName];
}

async function buildModel(key: ModelKey): Promise<LanguageModel> {
  if (key === 'mini') return loadModel(path.resolve(process.cwd(), '../shared/models/bert-mini-lama'));
  return createRandomModel('bert', { numLayers: 12, hiddenSize: 768, numHeads: 12, intermediateSize: 3072, vocabSize: 30522 }, 1);
}

function forwardStep(lm: LanguageModel, batch: PromptBatch): void {
  tf.tidy(() => {
    const hidden = lm.run({
      embeds: promptedEmbeds(lm, batch, null),
      attentionMask: tf.tensor2d(batch.attentionMask.flat(), [BATCH, SEQ], 'int32'),
    });
    lm.logitsAt(hidden, tf.tensor1d(batch.answerPositions, 'int32')).dataSync();
  });
}

/** Returns the gradient's L2 norm (read back, so the step is fully computed). */
function gradientStep(lm: LanguageModel, batch: PromptBatch, prompts: tf.Variable, candidates: tf.Tensor): number {
  return tf.tidy(() => {
    const { value, grads } = tf.variableGrads(() => {
      const hidden = lm.run({
        embeds: promptedEmbeds(lm, batch, prompts),
        attentionMask: tf.tensor2d(batch.attentionMask.flat(), [BATCH, SEQ], 'int32'),
      });
      const logits = lm.logitsAt(hidden, tf.tensor1d(batch.answerPositions, 'int32'), candidates);
      return tf.mean(tf.slice(logits, [0, 0], [BATCH, 1])) as tf.Scalar;
    }, [prompts]);
    value.dataSync();
    return tf.norm(grads[prompts.name]!).dataSync()[0]!;
  });
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

type Timing = { median: number; all: number[] } | { error: string };

/** A failing step (e.g. the wasm heap's 4 GiB limit) is reported in the JSON instead of ending the run. */
function timeSteps(steps: number, fn: () => void): Timing {
  try {
    fn(); // warm-up: kernel compilation, first allocations
    const all: number[] = [];
    for (let i = 0; i < steps; i++) {
      const t0 = process.hrtime.bigint();
      fn();
      all.push(Number(process.hrtime.bigint() - t0) / 1e9);
    }
    return { median: round(median(all)), all: all.map(round) };
  } catch (err) {
    return { error: (err instanceof Error ? err.message : String(err)).split('\n')[0]! };
  }
}

const round = (x: number) => Math.round(x * 1e4) / 1e4;

async function benchModel(key: ModelKey, steps: number) {
  const t0 = Date.now();
  const lm = await buildModel(key);
  const loadSeconds = (Date.now() - t0) / 1000;
  const batch = benchBatch(lm, BATCH, SEQ, PSEUDO);
  const prompts = tf.variable(tf.randomNormal([PSEUDO, lm.info.hiddenSize], 0, 0.02, 'float32', 7), true, `bench_prompts_${key}`);
  const candidates = tf.tensor1d([2605, 3000].map((id) => id % lm.info.vocabSize), 'int32');
  const tensorsBefore = tf.memory().numTensors;
  const forward = timeSteps(steps, () => forwardStep(lm, batch));
  let gradNorm = 0;
  const gradient = timeSteps(steps, () => {
    gradNorm = gradientStep(lm, batch, prompts, candidates);
  });
  const leaked = tf.memory().numTensors - tensorsBefore;
  const result = {
    model: key === 'mini' ? 'bert-mini-lama' : 'random BERT-base (L12 H768 A12, vocab 30522)',
    parameters: lm.info.parameterCount,
    loadSeconds,
    forwardSecondsPerStep: 'median' in forward ? forward.median : null,
    gradientSecondsPerStep: 'median' in gradient ? gradient.median : null,
    forward,
    gradient,
    promptGradNorm: 'median' in gradient ? round(gradNorm) : null,
    leakedTensors: leaked,
  };
  try {
    prompts.dispose();
    candidates.dispose();
    lm.dispose();
  } catch {
    // the backend may be unusable after an abort; the timings are already taken
  }
  return result;
}

async function main(): Promise<void> {
  const models = (arg('models', 'BENCH_MODELS') ?? 'mini,base').split(',').map((s) => s.trim()).filter(Boolean);
  for (const m of models) if (m !== 'mini' && m !== 'base') throw new Error(`--models: unknown model "${m}" (expected mini, base)`);
  const steps = Number(arg('steps', 'BENCH_STEPS') ?? 5);
  if (!Number.isInteger(steps) || steps < 1) throw new Error(`--steps: expected a positive integer, got ${steps}`);
  const backend = arg('backend', 'PTUNE_BACKEND') as BackendName | undefined;
  if (backend !== undefined && backend !== 'wasm' && backend !== 'cpu') throw new Error(`--backend: expected wasm or cpu, got "${backend}"`);
  await initEngine(backend);

  const results = [];
  for (const m of models) results.push(await benchModel(m as ModelKey, steps));
  const report = {
    backend: backendName(),
    batch: BATCH,
    seq: SEQ,
    pseudoTokens: PSEUDO,
    steps,
    node: process.version,
    results,
    peakRssMiB: Math.round(process.resourceUsage().maxRSS / 1024),
  };
  console.log(JSON.stringify(report, null, 2));
}

main().catch((err: unknown) => {
  process.stderr.write(`bench:lm: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exitCode = 1;
});
