import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { tf, initEngine } from '../src/engine/index.js';
import { Adam } from '../src/train/optim.js';
import { makeSchedule } from '../src/train/schedule.js';
import { trainLoop, epochOrder, NonFiniteLossError, type TrainLoopConfig, type TrainTask } from '../src/train/trainer.js';
import { makeRng } from '../src/util/rng.js';
import { readSafetensors } from '../src/engine/safetensors.js';

interface Ex {
  x: number[];
  y: number;
}

/** A separable 2-class problem learned by logistic regression. */
function toyData(n: number, seed: number): Ex[] {
  const rng = makeRng(seed);
  return Array.from({ length: n }, () => {
    const x = [rng() * 2 - 1, rng() * 2 - 1, rng() * 2 - 1];
    return { x, y: x[0]! + 0.5 * x[1]! > 0 ? 1 : 0 };
  });
}

function setup(seed = 1, poison = false) {
  const w = tf.tidy(() => tf.variable(tf.zeros([3, 1]), true, `w${Math.random()}`));
  const b = tf.tidy(() => tf.variable(tf.zeros([1]), true, `b${Math.random()}`));
  const params = new Map([
    ['w', w],
    ['b', b],
  ]);
  const train = toyData(64, seed);
  const dev = toyData(32, seed + 1);
  let calls = 0;
  const logits = (xs: Ex[]) => tf.add(tf.matMul(tf.tensor2d(xs.map((e) => e.x)), w), b).reshape([-1]);
  const task: TrainTask<Ex> = {
    examples: train,
    loss: (batch) => {
      calls++;
      const y = tf.tensor1d(batch.map((e) => e.y));
      const l = tf.losses.sigmoidCrossEntropy(y, logits(batch)) as tf.Scalar;
      return poison && calls > 5 ? (tf.div(l, 0) as tf.Scalar) : l;
    },
    evaluate: () => {
      const p = tf.tidy(() => logits(dev).dataSync());
      const acc = dev.filter((e, i) => (p[i]! > 0 ? 1 : 0) === e.y).length / dev.length;
      return { score: acc, metrics: { accuracy: acc } };
    },
  };
  const optimizer = new Adam([{ params, lr: 0.1 }]);
  const dispose = () => {
    optimizer.dispose();
    w.dispose();
    b.dispose();
  };
  return { params, task, optimizer, dispose };
}

const config: TrainLoopConfig = {
  epochs: 4,
  maxSteps: 0,
  batchSize: 8,
  gradAccum: 1,
  maxGradNorm: 1,
  evalEvery: 0,
  patience: 0,
  saveEvery: 3,
  logEvery: 2,
  seed: 7,
};

function tmpDir(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'ptune-trainer-'));
}

function run(dir: string, cfg: TrainLoopConfig, resume = false) {
  const s = setup();
  const result = trainLoop({
    runDir: dir,
    config: cfg,
    task: s.task,
    params: s.params,
    optimizer: s.optimizer,
    lrScale: makeSchedule({ kind: 'linear', warmupSteps: 2, totalSteps: 32 }),
    resume,
  });
  const values = [...s.params.values()].map((v) => Array.from(v.dataSync()));
  s.dispose();
  return { result, values };
}

test('epoch order is a seeded permutation', () => {
  const a = epochOrder(10, 3, 0);
  assert.deepEqual([...a].sort((x, y) => x - y), [...Array(10).keys()]);
  assert.deepEqual(a, epochOrder(10, 3, 0));
  assert.notDeepEqual(a, epochOrder(10, 3, 1));
});

test('training learns, writes metrics and checkpoints, and is deterministic', async () => {
  await initEngine('wasm');
  const before = tf.memory().numTensors;
  const d1 = tmpDir();
  const r1 = run(d1, config);
  assert.equal(tf.memory().numTensors, before);
  assert.ok(r1.result.bestScore! >= 0.9, `dev accuracy ${r1.result.bestScore}`);
  assert.equal(r1.result.step, 32);
  const lines = fs.readFileSync(path.join(d1, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
  assert.equal(lines.filter((l) => l.type === 'eval').length, 4);
  assert.equal(lines.filter((l) => l.type === 'train').length, 16);
  for (const f of ['best/params.safetensors', 'best/state.json', 'last/params.safetensors', 'last/optimizer.safetensors']) {
    assert.ok(fs.existsSync(path.join(d1, f)), f);
  }
  const r2 = run(tmpDir(), config);
  assert.deepEqual(r2.values, r1.values);
});

test('resume from an interrupted run reaches the same weights and metrics', async () => {
  await initEngine('wasm');
  const full = run(tmpDir(), config);
  // a run killed during step 14: its last checkpoint is from step 12 (saveEvery 3), in the middle of epoch 2
  const d2 = tmpDir();
  const s = setup();
  let n = 0;
  const task = { ...s.task, loss: (batch: Ex[]) => {
    if (++n > 13) throw new Error('killed');
    return s.task.loss(batch);
  } };
  assert.throws(() =>
    trainLoop({ runDir: d2, config, task, params: s.params, optimizer: s.optimizer,
      lrScale: makeSchedule({ kind: 'linear', warmupSteps: 2, totalSteps: 32 }), resume: false }), /killed/);
  s.dispose();
  const saved = JSON.parse(fs.readFileSync(path.join(d2, 'last/state.json'), 'utf8'));
  assert.equal(saved.step, 12);
  assert.equal(saved.batchInEpoch, 4);
  const resumed = run(d2, config, true);
  assert.deepEqual(resumed.values, full.values);
  assert.equal(resumed.result.bestScore, full.result.bestScore);
});

test('a non-finite loss stops training and keeps the last good checkpoint', async () => {
  await initEngine('wasm');
  const d = tmpDir();
  const s = setup(1, true);
  assert.throws(
    () =>
      trainLoop({ runDir: d, config, task: s.task, params: s.params, optimizer: s.optimizer, lrScale: () => 1, resume: false }),
    (e: unknown) => e instanceof NonFiniteLossError && /loss became (NaN|Infinity) at step 6/.test(e.message),
  );
  s.dispose();
  const state = JSON.parse(fs.readFileSync(path.join(d, 'last/state.json'), 'utf8'));
  assert.equal(state.step, 3);
});

test('early stopping with patience', async () => {
  await initEngine('wasm');
  const s = setup();
  const task = { ...s.task, evaluate: () => ({ score: 0.5, metrics: {} }) };
  const r = trainLoop({ runDir: tmpDir(), config: { ...config, epochs: 10, patience: 2 }, task, params: s.params,
    optimizer: s.optimizer, lrScale: () => 1, resume: false });
  s.dispose();
  assert.equal(r.epoch, 3);
  assert.match(r.stopReason, /early stop/);
  assert.equal(r.bestEpoch, 0);
});

test('restoreBest ends with the weights of best/ loaded', async () => {
  await initEngine('wasm');
  const s = setup();
  // dev score falls after the first evaluation, so best/ holds the epoch-1 weights while training goes on
  let evals = 0;
  const task = { ...s.task, evaluate: () => ({ score: -evals++, metrics: {} }) };
  const dir = tmpDir();
  trainLoop({ runDir: dir, config: { ...config, epochs: 3 }, task, params: s.params, optimizer: s.optimizer,
    lrScale: () => 1, resume: false, restoreBest: true });
  const best = readSafetensors(path.join(dir, 'best/params.safetensors')).tensors;
  const last = readSafetensors(path.join(dir, 'last/params.safetensors')).tensors;
  assert.notDeepEqual(best.get('w')!.data, last.get('w')!.data);
  assert.deepEqual(s.params.get('w')!.dataSync(), best.get('w')!.data);
  s.dispose();
});
