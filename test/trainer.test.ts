import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Parameter } from '../src/engine/index.js';
import { Adam } from '../src/train/optim.js';
import { makeSchedule } from '../src/train/schedule.js';
import { trainLoop, epochOrder, NonFiniteLossError, type TrainLoopConfig, type TrainTask } from '../src/train/trainer.js';
import { recoverCheckpointDir, resolveCheckpointDir, writeCheckpointDir } from '../src/train/checkpoint.js';
import { makeRng } from '../src/util/rng.js';
import { readSafetensors } from '../src/engine/safetensors.js';
import { createRandomModel } from '../src/models/load.js';
import { SyntheticTokenizer } from '../src/models/common.js';
import { PTuningSession, DEFAULT_LOOP, DEFAULT_OPTIM, type RunConfig } from '../src/train/session.js';

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

/**
 * Logistic regression with host parameters w [3, 1], b [1]: the task's step returns the mean sigmoid
 * cross-entropy and writes its gradient into the parameters' `grad`, as a training program does.
 * `poisonAfter`: calls after that many return a NaN loss.
 */
function setup(opts: { poisonAfter?: number } = {}) {
  const w = new Parameter('w', [3, 1], new Float32Array(3), true);
  const b = new Parameter('b', [1], new Float32Array(1), true);
  const params = new Map([
    ['w', w],
    ['b', b],
  ]);
  const train = toyData(64, 1);
  const dev = toyData(32, 2);
  let calls = 0;
  const logit = (e: Ex) => e.x[0]! * w.data[0]! + e.x[1]! * w.data[1]! + e.x[2]! * w.data[2]! + b.data[0]!;
  const task: TrainTask<Ex> = {
    examples: train,
    lossAndGrads: async (batch) => {
      calls++;
      const gw = [0, 0, 0];
      let gb = 0;
      let loss = 0;
      for (const e of batch) {
        const z = logit(e);
        loss += Math.max(z, 0) - z * e.y + Math.log1p(Math.exp(-Math.abs(z)));
        const d = 1 / (1 + Math.exp(-z)) - e.y;
        for (let i = 0; i < 3; i++) gw[i] += d * e.x[i]!;
        gb += d;
      }
      const n = batch.length;
      w.grad.set(gw.map((g) => g / n));
      b.grad[0] = gb / n;
      if (opts.poisonAfter !== undefined && calls > opts.poisonAfter) loss = NaN;
      return { loss: loss / n, graded: [w, b] };
    },
    evaluate: async () => {
      const acc = dev.filter((e) => (logit(e) > 0 ? 1 : 0) === e.y).length / dev.length;
      return { score: acc, metrics: { accuracy: acc } };
    },
  };
  const optimizer = new Adam([{ params, lr: 0.1 }]);
  return { params, task, optimizer };
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

const schedule = () => makeSchedule({ kind: 'linear', warmupSteps: 2, totalSteps: 32 });

function tmpDir(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'ptune-trainer-'));
}

function metricLines(dir: string): Record<string, unknown>[] {
  return fs.readFileSync(path.join(dir, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
}

async function run(dir: string, cfg: TrainLoopConfig, resume = false) {
  const s = setup();
  const result = await trainLoop({ runDir: dir, config: cfg, task: s.task, params: s.params, optimizer: s.optimizer, lrScale: schedule(), resume });
  const values = [...s.params.values()].map((v) => Array.from(v.data));
  s.optimizer.dispose();
  return { result, values };
}

test('epoch order is a seeded permutation', () => {
  const a = epochOrder(10, 3, 0);
  assert.deepEqual([...a].sort((x, y) => x - y), [...Array(10).keys()]);
  assert.deepEqual(a, epochOrder(10, 3, 0));
  assert.notDeepEqual(a, epochOrder(10, 3, 1));
});

test('training learns, writes metrics and checkpoints, and is deterministic', async () => {
  const d1 = tmpDir();
  const r1 = await run(d1, config);
  assert.ok(r1.result.bestScore! >= 0.9, `dev accuracy ${r1.result.bestScore}`);
  assert.equal(r1.result.step, 32);
  assert.match(r1.result.stopReason, /completed 4 epochs/);
  const lines = metricLines(d1);
  assert.equal(lines.filter((l) => l.type === 'eval').length, 4);
  assert.equal(lines.filter((l) => l.type === 'train').length, 16);
  for (const f of ['best/params.safetensors', 'best/state.json', 'best/complete.json', 'last/params.safetensors', 'last/optimizer.safetensors', 'last/complete.json']) {
    assert.ok(fs.existsSync(path.join(d1, f)), f);
  }
  assert.ok(!fs.existsSync(path.join(d1, 'last.tmp')) && !fs.existsSync(path.join(d1, 'last.old')), 'no swap folders left');
  const r2 = await run(tmpDir(), config);
  assert.deepEqual(r2.values, r1.values);
});

test('gradient accumulation over equal micro-batches follows the full-batch run', async () => {
  const full = await run(tmpDir(), config);
  const acc = await run(tmpDir(), { ...config, batchSize: 4, gradAccum: 2 });
  assert.equal(acc.result.step, full.result.step);
  full.values.flat().forEach((v, i) => assert.ok(Math.abs(v - acc.values.flat()[i]!) < 1e-4, `weight ${i}: ${v} vs ${acc.values.flat()[i]}`));
});

test('resume from an interrupted run reaches the same weights and metrics, with no duplicate metric lines', async () => {
  const fullDir = tmpDir();
  const full = await run(fullDir, config);
  // a run killed during step 14: its last checkpoint is from step 12 (saveEvery 3), in the middle of epoch 2
  const d2 = tmpDir();
  const s = setup();
  let n = 0;
  const task = { ...s.task, lossAndGrads: (batch: Ex[]) => {
    if (++n > 13) throw new Error('killed');
    return s.task.lossAndGrads(batch);
  } };
  await assert.rejects(
    trainLoop({ runDir: d2, config, task, params: s.params, optimizer: s.optimizer, lrScale: schedule(), resume: false }),
    /killed/,
  );
  const saved = JSON.parse(fs.readFileSync(path.join(d2, 'last/state.json'), 'utf8'));
  assert.equal(saved.step, 12);
  assert.equal(saved.batchInEpoch, 4);
  const resumed = await run(d2, config, true);
  assert.deepEqual(resumed.values, full.values);
  assert.equal(resumed.result.bestScore, full.result.bestScore);
  const lines = metricLines(d2);
  const keys = lines.map((l) => `${l.type} ${l.step}`);
  assert.equal(new Set(keys).size, keys.length, `duplicate metric lines: ${keys.join(', ')}`);
  assert.deepEqual(lines, metricLines(fullDir), 'metrics.jsonl equals the uninterrupted run');
});

test('resume after a crash past the last checkpoint logs each step once, with the same running loss averages', async () => {
  // checkpoints every 3 steps, a train line every 2: the run dies during step 11, after logging step 10 but
  // with its last checkpoint at step 9, whose line-in-progress average (step 9) the resumed run must carry on
  const fullDir = tmpDir();
  await run(fullDir, config);
  const dir = tmpDir();
  const s = setup();
  let n = 0;
  const task = { ...s.task, lossAndGrads: (batch: Ex[]) => {
    if (++n > 10) throw new Error('killed');
    return s.task.lossAndGrads(batch);
  } };
  await assert.rejects(trainLoop({ runDir: dir, config, task, params: s.params, optimizer: s.optimizer, lrScale: schedule(), resume: false }), /killed/);
  assert.equal(JSON.parse(fs.readFileSync(path.join(dir, 'last/state.json'), 'utf8')).step, 9);
  assert.deepEqual(metricLines(dir).filter((l) => l.type === 'train').map((l) => l.step).slice(-1), [10]);
  await run(dir, config, true);
  const steps = metricLines(dir).filter((l) => l.type === 'train').map((l) => l.step);
  assert.deepEqual(steps, [...Array(16).keys()].map((i) => 2 * (i + 1)));
  assert.deepEqual(metricLines(dir), metricLines(fullDir));
});

test('a non-finite loss stops training, keeps the last good checkpoint and names it', async () => {
  const d = tmpDir();
  const s = setup({ poisonAfter: 5 });
  let message = '';
  await assert.rejects(
    trainLoop({ runDir: d, config, task: s.task, params: s.params, optimizer: s.optimizer, lrScale: () => 1, resume: false }),
    (e: unknown) => {
      message = (e as Error).message;
      return e instanceof NonFiniteLossError && /loss became NaN at step 6/.test(message);
    },
  );
  const state = JSON.parse(fs.readFileSync(path.join(d, 'last/state.json'), 'utf8'));
  assert.equal(state.step, 3);
  const named = /the last good checkpoint is in (\S+)$/.exec(message)?.[1];
  assert.ok(named, message);
  assert.equal(named, path.join(d, 'last'));
  assert.ok(fs.existsSync(path.join(named, 'params.safetensors')) && fs.existsSync(path.join(named, 'complete.json')), `${named} is a complete checkpoint`);
  const err = metricLines(d).find((l) => l.type === 'error');
  assert.equal(err?.step, 5);

  // NaN before any checkpoint: the message says none was written, and there is none
  const early = tmpDir();
  const e2 = setup({ poisonAfter: 1 });
  await assert.rejects(
    trainLoop({ runDir: early, config, task: e2.task, params: e2.params, optimizer: e2.optimizer, lrScale: () => 1, resume: false }),
    (e: unknown) => e instanceof NonFiniteLossError && /at step 2 .*no checkpoint was written yet/.test((e as Error).message),
  );
  assert.equal(resolveCheckpointDir(path.join(early, 'last')), null);
  assert.ok(!fs.existsSync(path.join(early, 'last')));
});

test('early stopping with patience', async () => {
  const s = setup();
  const task = { ...s.task, evaluate: async () => ({ score: 0.5, metrics: {} }) };
  const r = await trainLoop({ runDir: tmpDir(), config: { ...config, epochs: 10, patience: 2 }, task, params: s.params,
    optimizer: s.optimizer, lrScale: () => 1, resume: false });
  assert.equal(r.epoch, 3);
  assert.match(r.stopReason, /early stop/);
  assert.equal(r.bestEpoch, 0);
});

test('restoreBest ends with the weights of best/ loaded', async () => {
  const s = setup();
  // dev score falls after the first evaluation, so best/ holds the epoch-1 weights while training goes on
  let evals = 0;
  const task = { ...s.task, evaluate: async () => ({ score: -evals++, metrics: {} }) };
  const dir = tmpDir();
  await trainLoop({ runDir: dir, config: { ...config, epochs: 3 }, task, params: s.params, optimizer: s.optimizer,
    lrScale: () => 1, resume: false, restoreBest: true });
  const best = readSafetensors(path.join(dir, 'best/params.safetensors')).tensors;
  const last = readSafetensors(path.join(dir, 'last/params.safetensors')).tensors;
  assert.notDeepEqual(best.get('w')!.data, last.get('w')!.data);
  assert.deepEqual(s.params.get('w')!.data, best.get('w')!.data);
});

// ---- checkpoint folders: every crash window of writeCheckpointDir leaves a version to resume from ----

/** A checkpoint folder by hand: `state.json` holding `tag`, and with `complete` the completion marker `seq`. */
function plant(dir: string, tag: string, complete: number | null): void {
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'state.json'), JSON.stringify({ tag }));
  if (complete !== null) fs.writeFileSync(path.join(dir, 'complete.json'), JSON.stringify({ seq: complete }));
}

const tagIn = (dir: string) => (JSON.parse(fs.readFileSync(path.join(dir, 'state.json'), 'utf8')) as { tag: string }).tag;

test('checkpoint crash windows: the newest complete version is found and recovered into place', () => {
  const windows: { name: string; make: (d: string) => void; resolved: string; tag: string }[] = [
    {
      name: 'tmp half written',
      make: (d) => {
        plant(d, 'old', 4);
        fs.mkdirSync(`${d}.tmp`);
        fs.writeFileSync(path.join(`${d}.tmp`, 'params.safetensors'), 'partial');
      },
      resolved: '',
      tag: 'old',
    },
    {
      name: 'tmp complete, old removed, dir not yet moved',
      make: (d) => {
        plant(d, 'old', 4);
        plant(`${d}.tmp`, 'new', 5);
      },
      resolved: '.tmp',
      tag: 'new',
    },
    {
      name: 'dir moved to .old, tmp not yet moved',
      make: (d) => {
        plant(`${d}.old`, 'old', 4);
        plant(`${d}.tmp`, 'new', 5);
      },
      resolved: '.tmp',
      tag: 'new',
    },
    {
      name: 'tmp moved, .old not yet removed',
      make: (d) => {
        plant(`${d}.old`, 'old', 4);
        plant(d, 'new', 5);
      },
      resolved: '',
      tag: 'new',
    },
    {
      name: 'first write: tmp half written, nothing before it',
      make: (d) => {
        fs.mkdirSync(`${d}.tmp`, { recursive: true });
        fs.writeFileSync(path.join(`${d}.tmp`, 'state.json'), '{}');
      },
      resolved: 'none',
      tag: '',
    },
    {
      name: 'a folder written before completion markers existed',
      make: (d) => plant(d, 'legacy', null),
      resolved: '',
      tag: 'legacy',
    },
  ];
  for (const w of windows) {
    const d = path.join(tmpDir(), 'last');
    w.make(d);
    const found = resolveCheckpointDir(d);
    if (w.resolved === 'none') {
      assert.equal(found, null, w.name);
      assert.equal(recoverCheckpointDir(d), 0, w.name);
      assert.ok(!fs.existsSync(d), w.name);
      // the next write starts the sequence over the incomplete folder
      writeCheckpointDir(d, (tmp) => fs.writeFileSync(path.join(tmp, 'state.json'), JSON.stringify({ tag: 'first' })));
      assert.equal(tagIn(d), 'first');
      assert.ok(!fs.existsSync(`${d}.tmp`), `${w.name}: the incomplete folder is gone`);
      assert.equal((JSON.parse(fs.readFileSync(path.join(d, 'complete.json'), 'utf8')) as { seq: number }).seq, 1);
      continue;
    }
    assert.equal(found, d + w.resolved, `${w.name}: resolves to the newest complete version`);
    assert.equal(tagIn(found!), w.tag, w.name);
    const seq = recoverCheckpointDir(d);
    assert.equal(tagIn(d), w.tag, `${w.name}: recovered into place`);
    assert.ok(!fs.existsSync(`${d}.tmp`) && !fs.existsSync(`${d}.old`), `${w.name}: swap folders removed`);
    assert.equal(resolveCheckpointDir(d), d, w.name);
    // the next write continues the sequence and replaces the recovered version
    writeCheckpointDir(d, (tmp) => fs.writeFileSync(path.join(tmp, 'state.json'), JSON.stringify({ tag: 'next' })));
    assert.equal(tagIn(d), 'next');
    const marker = JSON.parse(fs.readFileSync(path.join(d, 'complete.json'), 'utf8')) as { seq: number };
    assert.equal(marker.seq, seq + 1, w.name);
  }
});

test('training resumes from a checkpoint caught between the two renames', async () => {
  const fullDir = tmpDir();
  const full = await run(fullDir, config);
  const dir = tmpDir();
  const s = setup();
  let n = 0;
  const task = { ...s.task, lossAndGrads: (batch: Ex[]) => {
    if (++n > 13) throw new Error('killed');
    return s.task.lossAndGrads(batch);
  } };
  await assert.rejects(trainLoop({ runDir: dir, config, task, params: s.params, optimizer: s.optimizer, lrScale: schedule(), resume: false }), /killed/);
  // as if the write of the step-12 checkpoint had stopped after moving last/ away: only last.tmp is complete
  const last = path.join(dir, 'last');
  fs.renameSync(last, `${last}.tmp`);
  const stale = path.join(tmpDir(), 'stale');
  plant(stale, 'stale', 1);
  fs.renameSync(stale, `${last}.old`);
  assert.equal(resolveCheckpointDir(last), `${last}.tmp`);
  const resumed = await run(dir, config, true);
  assert.deepEqual(resumed.values, full.values);
  assert.deepEqual(metricLines(dir), metricLines(fullDir));
});

// ---- exact resume of a P-tuning run with encoder dropout ----

function dropoutRun(): RunConfig {
  return {
    version: 1,
    model: 'random',
    template: '[P*2] {x} [P] [MASK] .',
    head: { kind: 'label', labelField: 'y', labelWords: { a: 'w10', b: 'w11' } },
    encoder: { type: 'lstm', seed: 4, hiddenSize: 8, dropout: 0.3 },
    maxLength: 16,
    skipTooLong: false,
    loop: { ...DEFAULT_LOOP, epochs: 3, batchSize: 2, saveEvery: 3, logEvery: 1, seed: 2 },
    optim: { ...DEFAULT_OPTIM, lr: 1e-2 },
  };
}

test('resume with encoder dropout > 0 is exact: same final weights and metrics as an uninterrupted run', async () => {
  const tok = new SyntheticTokenizer(40);
  const lm = createRandomModel('bert', { vocabSize: 40, hiddenSize: 16, numLayers: 1, numHeads: 2, intermediateSize: 32, maxPositions: 32 }, 3, tok);
  const data = [
    { x: 'w7 w8', y: 'a' }, { x: 'w9', y: 'b' }, { x: 'w12 w13', y: 'a' }, { x: 'w14', y: 'b' },
    { x: 'w15 w16 w17', y: 'a' }, { x: 'w18', y: 'b' }, { x: 'w19 w20', y: 'a' }, { x: 'w21', y: 'b' },
  ];
  const fullDir = tmpDir();
  const full = await PTuningSession.create(dropoutRun(), lm);
  assert.ok(full.encoder!.hasDropout);
  await full.train({ runDir: fullDir, train: data, dev: data });

  // crash right after step 7 (the last checkpoint is from step 6): the dropout stream has moved past it
  const cutDir = tmpDir();
  const cut = await PTuningSession.create(dropoutRun(), lm);
  let steps = 0;
  await assert.rejects(
    cut.train({ runDir: cutDir, train: data, dev: data, stopRequested: () => {
      if (++steps === 7) throw new Error('killed');
      return false;
    } }),
    /killed/,
  );
  const state = JSON.parse(fs.readFileSync(path.join(cutDir, 'last/state.json'), 'utf8'));
  assert.equal(state.step, 6);
  assert.equal(state.task.dropout.length, 4, 'the dropout stream position is in the checkpoint');
  const resumed = await PTuningSession.create(dropoutRun(), lm);
  const r = await resumed.train({ runDir: cutDir, train: data, dev: data, resume: true });
  assert.equal(r.step, 12);
  for (const f of ['last/params.safetensors', 'last/optimizer.safetensors', 'best/params.safetensors']) {
    assert.deepEqual(fs.readFileSync(path.join(cutDir, f)), fs.readFileSync(path.join(fullDir, f)), f);
  }
  assert.deepEqual(metricLines(cutDir), metricLines(fullDir));
  assert.deepEqual(
    JSON.parse(fs.readFileSync(path.join(cutDir, 'last/state.json'), 'utf8')).task,
    JSON.parse(fs.readFileSync(path.join(fullDir, 'last/state.json'), 'utf8')).task,
  );
  // without the restored stream the resumed run would differ: dropout really changes the steps
  const noDrop = await PTuningSession.create({ ...dropoutRun(), encoder: { type: 'lstm', seed: 4, hiddenSize: 8 } }, lm);
  const plainDir = tmpDir();
  await noDrop.train({ runDir: plainDir, train: data, dev: data });
  assert.notDeepEqual(fs.readFileSync(path.join(plainDir, 'last/params.safetensors')), fs.readFileSync(path.join(fullDir, 'last/params.safetensors')));
});
