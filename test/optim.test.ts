import { test } from 'node:test';
import assert from 'node:assert/strict';
import { initEngine, tf } from '../src/engine/index.js';
import { Adam, AdamW, clipGradNorm, decayGroups, type ParamGroup } from '../src/train/optim.js';
import { makeSchedule } from '../src/train/schedule.js';

await initEngine();

// Quadratic loss L(θ) = ½ Σ a_i (θ_i − c_i)², gradient a ⊙ (θ − c).
const A = [1, 4, 0.25, 2];
const C = [0.5, -1, 3, 0];
const THETA0 = [1, 1, -2, 0.1];

function quadGrad(theta: ArrayLike<number>): number[] {
  return A.map((a, i) => a * (theta[i]! - C[i]!));
}

/** torch.optim.Adam / AdamW written out in float64, one parameter tensor, `steps` steps. */
function torchAdam(kind: 'adam' | 'adamw', steps: number, lr: number, wd: number, b1 = 0.9, b2 = 0.999, eps = 1e-8): number[] {
  const theta = THETA0.slice();
  const m = theta.map(() => 0);
  const v = theta.map(() => 0);
  for (let t = 1; t <= steps; t++) {
    const g = quadGrad(theta);
    for (let i = 0; i < theta.length; i++) {
      let gi = g[i]!;
      if (kind === 'adam') gi += wd * theta[i]!;
      else theta[i] = theta[i]! * (1 - lr * wd);
      m[i] = b1 * m[i]! + (1 - b1) * gi;
      v[i] = b2 * v[i]! + (1 - b2) * gi * gi;
      const denom = Math.sqrt(v[i]!) / Math.sqrt(1 - b2 ** t) + eps;
      theta[i] = theta[i]! - (lr / (1 - b1 ** t)) * (m[i]! / denom);
    }
  }
  return theta;
}

function runOptimizer(opt: Adam | AdamW, theta: tf.Variable, steps: number, lrScale = 1): void {
  for (let s = 0; s < steps; s++) {
    const g = tf.tensor1d(quadGrad(theta.dataSync()));
    opt.step(new Map([['theta', g]]), lrScale);
    g.dispose();
  }
}

function assertClose(actual: ArrayLike<number>, expected: number[], tol: number, what: string): void {
  assert.equal(actual.length, expected.length, what);
  for (let i = 0; i < expected.length; i++) {
    const d = Math.abs(actual[i]! - expected[i]!);
    assert.ok(d <= tol * Math.max(1, Math.abs(expected[i]!)), `${what}[${i}]: ${actual[i]} vs ${expected[i]} (|diff| ${d})`);
  }
}

test('Adam, first step by hand: θ − lr·g/(|g| + ε) (bias-corrected m̂ = g, v̂ = g²)', () => {
  const theta = tf.variable(tf.tensor1d(THETA0));
  const opt = new Adam([{ params: new Map([['theta', theta]]), lr: 0.1 }]);
  runOptimizer(opt, theta, 1);
  // g = [0.5, 8, -1.25, 0.2]
  const expected = [1 - 0.1 * 0.5 / (0.5 + 1e-8), 1 - 0.1 * 8 / (8 + 1e-8), -2 + 0.1 * 1.25 / (1.25 + 1e-8), 0.1 - 0.1 * 0.2 / (0.2 + 1e-8)];
  assertClose(theta.dataSync(), expected, 1e-6, 'θ1');
  opt.dispose();
  theta.dispose();
});

test('on the cpu backend (which keeps the arrays tensors are made from) several parameters update independently', async () => {
  const previous = tf.getBackend();
  await tf.setBackend('cpu');
  try {
    const a = tf.variable(tf.tensor1d(THETA0));
    const b = tf.variable(tf.tensor1d(THETA0.map((x) => -x)));
    const opt = new Adam([{ params: new Map([['a', a], ['b', b]]), lr: 0.05 }]);
    for (let i = 0; i < 3; i++) {
      const grads = new Map([['a', tf.tensor1d(quadGrad(a.dataSync()))], ['b', tf.tensor1d(quadGrad(b.dataSync().map((x) => -x)).map((g) => -g))]]);
      opt.step(grads);
      tf.dispose([...grads.values()]);
    }
    const want = torchAdam('adam', 3, 0.05, 0);
    assertClose(a.dataSync(), want, 2e-6, 'a');
    assertClose(b.dataSync(), want.map((x) => -x), 2e-6, 'b (mirror of a)');
    opt.dispose();
    tf.dispose([a, b]);
  } finally {
    await tf.setBackend(previous);
  }
});

test('Adam and AdamW match the torch update rules over 3 steps (with and without weight decay)', () => {
  for (const kind of ['adam', 'adamw'] as const) {
    for (const wd of [0, 0.1]) {
      const theta = tf.variable(tf.tensor1d(THETA0));
      const groups = [{ params: new Map([['theta', theta]]), lr: 0.05, weightDecay: wd }];
      const opt = kind === 'adam' ? new Adam(groups) : new AdamW(groups);
      runOptimizer(opt, theta, 3);
      assertClose(theta.dataSync(), torchAdam(kind, 3, 0.05, wd), 2e-6, `${kind} wd=${wd}`);
      opt.dispose();
      theta.dispose();
    }
  }
  // L2 and decoupled decay really differ
  assert.ok(Math.abs(torchAdam('adam', 3, 0.05, 0.1)[2]! - torchAdam('adamw', 3, 0.05, 0.1)[2]!) > 1e-4);
});

test('custom betas/eps, lrScale and the torch default weight decay of AdamW (0.01)', () => {
  const theta = tf.variable(tf.tensor1d(THETA0));
  const opt = new AdamW([{ params: new Map([['theta', theta]]), lr: 0.2 }], { betas: [0.8, 0.99], eps: 1e-3 });
  runOptimizer(opt, theta, 3, 0.5);
  assertClose(theta.dataSync(), torchAdam('adamw', 3, 0.1, 0.01, 0.8, 0.99, 1e-3), 2e-6, 'θ3');
  opt.dispose();
  theta.dispose();
});

test('parameter groups keep their own lr and weight decay; parameters without a gradient are skipped', () => {
  const lm = tf.variable(tf.tensor1d(THETA0));
  const prompt = tf.variable(tf.tensor1d(THETA0));
  const idle = tf.variable(tf.tensor1d([1, 2]));
  const opt = new AdamW([
    { params: new Map([['lm', lm], ['idle', idle]]), lr: 1e-5, weightDecay: 0.1, name: 'lm' },
    { params: new Map([['prompt', prompt]]), lr: 1e-4, weightDecay: 0, name: 'prompt' },
  ]);
  for (let s = 0; s < 3; s++) {
    const g1 = tf.tensor1d(quadGrad(lm.dataSync()));
    const g2 = tf.tensor1d(quadGrad(prompt.dataSync()));
    opt.step(new Map([['lm', g1], ['prompt', g2]]));
    g1.dispose();
    g2.dispose();
  }
  assertClose(lm.dataSync(), torchAdam('adamw', 3, 1e-5, 0.1), 1e-6, 'lm');
  assertClose(prompt.dataSync(), torchAdam('adamw', 3, 1e-4, 0), 1e-6, 'prompt');
  assert.deepEqual(Array.from(idle.dataSync()), [1, 2], 'no gradient, no decay');
  const st = opt.state();
  assert.equal(st.params.get('lm')!.step, 3);
  assert.equal(st.params.has('idle'), false);
  opt.dispose();
  for (const v of [lm, prompt, idle]) v.dispose();
});

test('state/loadState resumes bit-exactly', () => {
  const straight = tf.variable(tf.tensor1d(THETA0));
  const o1 = new AdamW([{ params: new Map([['theta', straight]]), lr: 0.05, weightDecay: 0.1 }]);
  runOptimizer(o1, straight, 5);

  const first = tf.variable(tf.tensor1d(THETA0));
  const o2 = new AdamW([{ params: new Map([['theta', first]]), lr: 0.05, weightDecay: 0.1 }]);
  runOptimizer(o2, first, 2);
  const saved = o2.state();
  const savedTheta = Float32Array.from(first.dataSync() as Float32Array);
  o2.dispose();
  first.dispose();

  const resumed = tf.variable(tf.tensor1d(savedTheta));
  const o3 = new AdamW([{ params: new Map([['theta', resumed]]), lr: 0.05, weightDecay: 0.1 }]);
  o3.loadState(saved);
  assert.equal(o3.state().params.get('theta')!.step, 2);
  runOptimizer(o3, resumed, 3);
  assert.deepEqual(Array.from(resumed.dataSync()), Array.from(straight.dataSync()));

  assert.throws(() => new Adam([{ params: new Map([['theta', resumed]]), lr: 1 }]).loadState(saved), /saved by adamw, loading into adam/);
  const bad = { kind: 'adamw' as const, params: new Map([['theta', { step: 1, m: new Float32Array(3), v: new Float32Array(3) }]]) };
  assert.throws(() => o3.loadState(bad), /'theta' moments have 3\/3 values, parameter has 4/);
  const unknown = { kind: 'adamw' as const, params: new Map([['other', { step: 1, m: new Float32Array(4), v: new Float32Array(4) }]]) };
  assert.throws(() => o3.loadState(unknown), /unknown parameter 'other'/);
  for (const o of [o1, o3]) o.dispose();
  straight.dispose();
  resumed.dispose();
});

test('step rejects unknown names and wrong shapes; groups reject duplicates', () => {
  const theta = tf.variable(tf.tensor1d(THETA0));
  const opt = new Adam([{ params: new Map([['theta', theta]]), lr: 0.1 }]);
  const g = tf.zeros([3]);
  assert.throws(() => opt.step(new Map([['nope', g]])), /unknown parameter 'nope'/);
  assert.throws(() => opt.step(new Map([['theta', g]])), /gradient of 'theta' has shape \[3\], parameter has \[4\]/);
  assert.throws(
    () => new Adam([{ params: new Map([['theta', theta]]), lr: 1 }, { params: new Map([['theta', theta]]), lr: 1 }]),
    /'theta' is in more than one group/,
  );
  assert.throws(() => new AdamW([{ params: new Map(), lr: -1, name: 'prompt' }]), /prompt: lr must be >= 0/);
  g.dispose();
  opt.dispose();
  theta.dispose();
});

test('decayGroups: weight decay on matrices only by default', () => {
  const w = tf.variable(tf.zeros([2, 2]));
  const b = tf.variable(tf.zeros([2]));
  const gamma = tf.variable(tf.ones([2]));
  const groups: ParamGroup[] = decayGroups(new Map([['dense.weight', w], ['dense.bias', b], ['LayerNorm.weight', gamma]]), { lr: 1e-5, weightDecay: 0.1 });
  assert.deepEqual(groups.map((g) => [[...g.params.keys()], g.weightDecay, g.lr]), [
    [['dense.weight'], 0.1, 1e-5],
    [['dense.bias', 'LayerNorm.weight'], 0, 1e-5],
  ]);
  const byName = decayGroups(new Map([['dense.weight', w]]), { lr: 1, weightDecay: 0.1, noDecay: (n) => n.startsWith('dense') });
  assert.equal(byName.length, 1);
  assert.equal(byName[0]!.weightDecay, 0);
  for (const v of [w, b, gamma]) v.dispose();
});

test('clipGradNorm: global L2 norm, scale max/(norm+1e-6) only when above the limit', () => {
  const grads = new Map<string, tf.Tensor>([
    ['a', tf.tensor1d([3, 0])],
    ['b', tf.tensor2d([[0, 4], [0, 12]])],
  ]);
  const before = tf.memory().numTensors;
  const norm = clipGradNorm(grads, 6.5);
  assert.ok(Math.abs(norm - 13) < 1e-5, `norm ${norm}`);
  const coef = 6.5 / (13 + 1e-6);
  assertClose(grads.get('a')!.dataSync(), [3 * coef, 0], 1e-6, 'a');
  assertClose(grads.get('b')!.dataSync(), [0, 4 * coef, 0, 12 * coef], 1e-6, 'b');
  assert.equal(tf.memory().numTensors, before, 'originals disposed, no temporaries left');
  const unchanged = grads.get('a')!;
  assert.ok(Math.abs(clipGradNorm(grads, 100) - 6.5) < 1e-4);
  assert.equal(grads.get('a'), unchanged, 'below the limit nothing is replaced');
  for (const g of grads.values()) g.dispose();
  assert.equal(clipGradNorm(new Map(), 1), 0);
});

test('optimizer steps leave the tensor count flat', () => {
  const w = tf.variable(tf.randomNormal([8, 4], 0, 1, 'float32', 1));
  const b = tf.variable(tf.zeros([4]));
  const opt = new AdamW(decayGroups(new Map([['w', w], ['b', b]]), { lr: 1e-3, weightDecay: 0.1 }));
  const x = tf.ones([2, 8]);
  const step = () => {
    const { value, grads } = tf.variableGrads(() => tf.sum(tf.square(tf.add(tf.matMul(x, w), b))) as tf.Scalar, [w, b]);
    const named = new Map<string, tf.Tensor>([['w', grads[w.name]!], ['b', grads[b.name]!]]);
    clipGradNorm(named, 0.5);
    opt.step(named, 0.9);
    value.dispose();
    for (const g of named.values()) g.dispose();
  };
  step();
  const before = tf.memory().numTensors;
  for (let i = 0; i < 5; i++) step();
  assert.equal(tf.memory().numTensors, before);
  opt.dispose();
  assert.equal(tf.memory().numTensors, before, 'the moments are host arrays, not backend tensors');
  for (const t of [w, b, x]) t.dispose();
});

test('schedules: constant, linear warmup/decay (transformers) and exponential per epoch', () => {
  const constant = makeSchedule({ kind: 'constant' });
  assert.equal(constant(0, 0), 1);
  assert.equal(constant(1e6, 50), 1);
  const warmConst = makeSchedule({ kind: 'constant', warmupSteps: 4 });
  assert.deepEqual([0, 1, 3, 4, 9].map((s) => warmConst(s, 0)), [0, 0.25, 0.75, 1, 1]);

  const lin = makeSchedule({ kind: 'linear', warmupSteps: 10, totalSteps: 110 });
  assert.equal(lin(0, 0), 0);
  assert.equal(lin(5, 0), 0.5);
  assert.equal(lin(9, 0), 0.9);
  assert.equal(lin(10, 0), 1);
  assert.equal(lin(60, 0), 0.5);
  assert.equal(lin(109, 0), 0.01);
  assert.equal(lin(110, 0), 0);
  assert.equal(lin(200, 0), 0);
  const noWarm = makeSchedule({ kind: 'linear', totalSteps: 4 });
  assert.deepEqual([0, 1, 2, 3, 4].map((s) => noWarm(s, 0)), [1, 0.75, 0.5, 0.25, 0]);

  const exp = makeSchedule({ kind: 'exponential' });
  assert.equal(exp(123, 0), 1);
  assert.equal(exp(0, 1), 0.98);
  assert.ok(Math.abs(exp(0, 10) - 0.98 ** 10) < 1e-15);
  assert.equal(makeSchedule({ kind: 'exponential', gamma: 0.5 })(0, 3), 0.125);

  assert.throws(() => makeSchedule({ kind: 'linear', warmupSteps: 5, totalSteps: 3 }), /totalSteps 3 is below warmupSteps 5/);
  assert.throws(() => makeSchedule({ kind: 'linear', totalSteps: 2.5 }), /totalSteps must be a non-negative integer/);
  assert.throws(() => makeSchedule({ kind: 'exponential', gamma: 0 }), /gamma must be in \(0, 1\]/);
  assert.throws(() => makeSchedule({ kind: 'cosine' } as never), /unknown kind 'cosine'/);
});

test('host-array gradients: clipping scales them in place like tensors, Adam steps from them like from tensors', () => {
  const values = [[3, -4, 0.5], [12, 0]];
  const host = new Map(values.map((v, i) => [`g${i}`, Float32Array.from(v)]));
  const tensors = new Map<string, tf.Tensor>(values.map((v, i) => [`g${i}`, tf.tensor1d(v)]));
  const normHost = clipGradNorm(host, 2);
  const normTensor = clipGradNorm(tensors, 2);
  assert.ok(Math.abs(normHost - Math.sqrt(9 + 16 + 0.25 + 144)) < 1e-5);
  assert.ok(Math.abs(normHost - normTensor) < 1e-4);
  for (const [k, t] of tensors) assertClose(host.get(k)!, Array.from(t.dataSync()), 1e-6, k);
  tf.dispose([...tensors.values()]);

  const a = tf.variable(tf.tensor1d(THETA0));
  const b = tf.variable(tf.tensor1d(THETA0));
  const oa = new AdamW([{ params: new Map([['p', a]]), lr: 0.05, weightDecay: 0.1 }]);
  const ob = new AdamW([{ params: new Map([['p', b]]), lr: 0.05, weightDecay: 0.1 }]);
  for (let s = 0; s < 3; s++) {
    oa.step(new Map([['p', Float32Array.from(quadGrad(a.dataSync()))]]));
    const g = tf.tensor1d(quadGrad(b.dataSync()));
    ob.step(new Map([['p', g]]));
    g.dispose();
  }
  assert.deepEqual(Array.from(a.dataSync()), Array.from(b.dataSync()));
  assertClose(a.dataSync(), torchAdam('adamw', 3, 0.05, 0.1), 2e-6, 'host-gradient AdamW');
  assert.throws(() => oa.step(new Map([['p', new Float32Array(3)]])), /gradient of 'p' has 3 values, parameter has \[4\]/);
  oa.dispose();
  ob.dispose();
  tf.dispose([a, b]);
});
