import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Parameter } from '../src/engine/index.js';
import { Adam, AdamW, clipGradNorm, decayGroups, type ParamGroup } from '../src/train/optim.js';
import { makeSchedule } from '../src/train/schedule.js';

// Quadratic loss L(θ) = ½ Σ a_i (θ_i − c_i)², gradient a ⊙ (θ − c).
const A = [1, 4, 0.25, 2];
const C = [0.5, -1, 3, 0];
const THETA0 = [1, 1, -2, 0.1];

function quadGrad(theta: ArrayLike<number>): Float32Array {
  return Float32Array.from(A, (a, i) => a * (theta[i]! - C[i]!));
}

function param(name: string, values: number[], shape = [values.length]): Parameter {
  return new Parameter(name, shape, Float32Array.from(values), true);
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

function runOptimizer(opt: Adam | AdamW, theta: Parameter, steps: number, lrScale = 1): void {
  for (let s = 0; s < steps; s++) opt.step(new Map([[theta.name, quadGrad(theta.data)]]), lrScale);
}

function assertClose(actual: ArrayLike<number>, expected: number[], tol: number, what: string): void {
  assert.equal(actual.length, expected.length, what);
  for (let i = 0; i < expected.length; i++) {
    const d = Math.abs(actual[i]! - expected[i]!);
    assert.ok(d <= tol * Math.max(1, Math.abs(expected[i]!)), `${what}[${i}]: ${actual[i]} vs ${expected[i]} (|diff| ${d})`);
  }
}

test('Adam, first step by hand: θ − lr·g/(|g| + ε) (bias-corrected m̂ = g, v̂ = g²)', () => {
  const theta = param('theta', THETA0);
  const opt = new Adam([{ params: new Map([['theta', theta]]), lr: 0.1 }]);
  runOptimizer(opt, theta, 1);
  // g = [0.5, 8, -1.25, 0.2]
  const expected = [1 - 0.1 * 0.5 / (0.5 + 1e-8), 1 - 0.1 * 8 / (8 + 1e-8), -2 + 0.1 * 1.25 / (1.25 + 1e-8), 0.1 - 0.1 * 0.2 / (0.2 + 1e-8)];
  assertClose(theta.data, expected, 1e-6, 'θ1');
  opt.dispose();
});

test('several parameters update independently', () => {
  const a = param('a', THETA0);
  const b = param('b', THETA0.map((x) => -x));
  const opt = new Adam([{ params: new Map([['a', a], ['b', b]]), lr: 0.05 }]);
  for (let i = 0; i < 3; i++) {
    const gb = quadGrad(b.data.map((x) => -x)).map((g) => -g);
    opt.step(new Map([['a', quadGrad(a.data)], ['b', gb]]));
  }
  const want = torchAdam('adam', 3, 0.05, 0);
  assertClose(a.data, want, 2e-6, 'a');
  assertClose(b.data, want.map((x) => -x), 2e-6, 'b (mirror of a)');
  opt.dispose();
});

test('Adam and AdamW match the torch update rules over 3 steps (with and without weight decay)', () => {
  for (const kind of ['adam', 'adamw'] as const) {
    for (const wd of [0, 0.1]) {
      const theta = param('theta', THETA0);
      const groups = [{ params: new Map([['theta', theta]]), lr: 0.05, weightDecay: wd }];
      const opt = kind === 'adam' ? new Adam(groups) : new AdamW(groups);
      runOptimizer(opt, theta, 3);
      assertClose(theta.data, torchAdam(kind, 3, 0.05, wd), 2e-6, `${kind} wd=${wd}`);
      opt.dispose();
    }
  }
  // L2 and decoupled decay really differ
  assert.ok(Math.abs(torchAdam('adam', 3, 0.05, 0.1)[2]! - torchAdam('adamw', 3, 0.05, 0.1)[2]!) > 1e-4);
});

test('custom betas/eps, lrScale and the torch default weight decay of AdamW (0.01)', () => {
  const theta = param('theta', THETA0);
  const opt = new AdamW([{ params: new Map([['theta', theta]]), lr: 0.2 }], { betas: [0.8, 0.99], eps: 1e-3 });
  runOptimizer(opt, theta, 3, 0.5);
  assertClose(theta.data, torchAdam('adamw', 3, 0.1, 0.01, 0.8, 0.99, 1e-3), 2e-6, 'θ3');
  opt.dispose();
});

test('parameter groups keep their own lr and weight decay; parameters without a gradient are skipped', () => {
  const lm = param('lm', THETA0);
  const prompt = param('prompt', THETA0);
  const idle = param('idle', [1, 2]);
  const opt = new AdamW([
    { params: new Map([['lm', lm], ['idle', idle]]), lr: 1e-5, weightDecay: 0.1, name: 'lm' },
    { params: new Map([['prompt', prompt]]), lr: 1e-4, weightDecay: 0, name: 'prompt' },
  ]);
  for (let s = 0; s < 3; s++) opt.step(new Map([['lm', quadGrad(lm.data)], ['prompt', quadGrad(prompt.data)]]));
  assertClose(lm.data, torchAdam('adamw', 3, 1e-5, 0.1), 1e-6, 'lm');
  assertClose(prompt.data, torchAdam('adamw', 3, 1e-4, 0), 1e-6, 'prompt');
  assert.deepEqual(Array.from(idle.data), [1, 2], 'no gradient, no decay');
  const st = opt.state();
  assert.equal(st.params.get('lm')!.step, 3);
  assert.equal(st.params.has('idle'), false);
  opt.dispose();
});

test('state/loadState resumes bit-exactly', () => {
  const straight = param('theta', THETA0);
  const o1 = new AdamW([{ params: new Map([['theta', straight]]), lr: 0.05, weightDecay: 0.1 }]);
  runOptimizer(o1, straight, 5);

  const first = param('theta', THETA0);
  const o2 = new AdamW([{ params: new Map([['theta', first]]), lr: 0.05, weightDecay: 0.1 }]);
  runOptimizer(o2, first, 2);
  const saved = o2.state();
  const savedTheta = Float32Array.from(first.data);
  // state() is a copy: later steps of o2 do not change it
  const m0 = Float32Array.from(saved.params.get('theta')!.m);
  runOptimizer(o2, first, 1);
  assert.deepEqual(saved.params.get('theta')!.m, m0);
  o2.dispose();

  const resumed = new Parameter('theta', [4], savedTheta, true);
  const o3 = new AdamW([{ params: new Map([['theta', resumed]]), lr: 0.05, weightDecay: 0.1 }]);
  o3.loadState(saved);
  assert.equal(o3.state().params.get('theta')!.step, 2);
  runOptimizer(o3, resumed, 3);
  assert.deepEqual(Array.from(resumed.data), Array.from(straight.data));

  assert.throws(() => new Adam([{ params: new Map([['theta', resumed]]), lr: 1 }]).loadState(saved), /saved by adamw, loading into adam/);
  const bad = { kind: 'adamw' as const, params: new Map([['theta', { step: 1, m: new Float32Array(3), v: new Float32Array(3) }]]) };
  assert.throws(() => o3.loadState(bad), /'theta' moments have 3\/3 values, parameter has 4/);
  const unknown = { kind: 'adamw' as const, params: new Map([['other', { step: 1, m: new Float32Array(4), v: new Float32Array(4) }]]) };
  assert.throws(() => o3.loadState(unknown), /unknown parameter 'other'/);
  // a rejected state changes nothing
  assert.equal(o3.state().params.get('theta')!.step, 5);
  for (const o of [o1, o3]) o.dispose();
});

test('step rejects unknown names and wrong shapes; groups reject duplicates', () => {
  const theta = param('theta', THETA0);
  const opt = new Adam([{ params: new Map([['theta', theta]]), lr: 0.1 }]);
  const g = new Float32Array(3);
  assert.throws(() => opt.step(new Map([['nope', g]])), /unknown parameter 'nope'/);
  assert.throws(() => opt.step(new Map([['theta', g]])), /gradient of 'theta' has 3 values, parameter has \[4\]/);
  assert.deepEqual(Array.from(theta.data), Array.from(Float32Array.from(THETA0)), 'a rejected step changes nothing');
  assert.throws(
    () => new Adam([{ params: new Map([['theta', theta]]), lr: 1 }, { params: new Map([['theta', theta]]), lr: 1 }]),
    /'theta' is in more than one group/,
  );
  assert.throws(() => new AdamW([{ params: new Map(), lr: -1, name: 'prompt' }]), /prompt: lr must be >= 0/);
  opt.dispose();
});

test('decayGroups: weight decay on matrices only by default', () => {
  const w = new Parameter('dense.weight', [2, 2], new Float32Array(4), true);
  const b = new Parameter('dense.bias', [2], new Float32Array(2), true);
  const gamma = new Parameter('LayerNorm.weight', [2], new Float32Array(2).fill(1), true);
  const groups: ParamGroup[] = decayGroups(new Map([['dense.weight', w], ['dense.bias', b], ['LayerNorm.weight', gamma]]), { lr: 1e-5, weightDecay: 0.1 });
  assert.deepEqual(groups.map((g) => [[...g.params.keys()], g.weightDecay, g.lr]), [
    [['dense.weight'], 0.1, 1e-5],
    [['dense.bias', 'LayerNorm.weight'], 0, 1e-5],
  ]);
  const byName = decayGroups(new Map([['dense.weight', w]]), { lr: 1, weightDecay: 0.1, noDecay: (n) => n.startsWith('dense') });
  assert.equal(byName.length, 1);
  assert.equal(byName[0]!.weightDecay, 0);
});

test('clipGradNorm: global L2 norm, scale max/(norm+1e-6) in place only when above the limit', () => {
  const a = Float32Array.from([3, 0]);
  const b = Float32Array.from([0, 4, 0, 12]);
  const grads = new Map([['a', a], ['b', b]]);
  const norm = clipGradNorm(grads, 6.5);
  assert.ok(Math.abs(norm - 13) < 1e-5, `norm ${norm}`);
  const coef = 6.5 / (13 + 1e-6);
  assert.equal(grads.get('a'), a, 'scaled in place, same arrays');
  assertClose(a, [3 * coef, 0], 1e-6, 'a');
  assertClose(b, [0, 4 * coef, 0, 12 * coef], 1e-6, 'b');
  const before = Float32Array.from(a);
  assert.ok(Math.abs(clipGradNorm(grads, 100) - 6.5) < 1e-4);
  assert.equal(grads.get('a'), a);
  assert.deepEqual(a, before, 'below the limit nothing changes');
  assert.equal(clipGradNorm(new Map(), 1), 0);
  assert.throws(() => clipGradNorm(grads, 0), /maxNorm must be > 0/);
  // several tensors clipped together equal one tensor holding all their values
  const values = [[3, -4, 0.5], [12, 0]];
  const split = new Map(values.map((v, i) => [`g${i}`, Float32Array.from(v)]));
  const joined = new Map([['all', Float32Array.from(values.flat())]]);
  const n1 = clipGradNorm(split, 2);
  const n2 = clipGradNorm(joined, 2);
  assert.ok(Math.abs(n1 - Math.sqrt(9 + 16 + 0.25 + 144)) < 1e-5);
  assert.equal(n1, n2);
  assert.deepEqual([...split.values()].flatMap((g) => Array.from(g)), Array.from(joined.get('all')!));
});

test('optimizer steps update the parameters\' arrays in place and keep moments as host arrays', () => {
  const w = new Parameter('w', [8, 4], Float32Array.from({ length: 32 }, (_, i) => Math.sin(i)), true);
  const b = new Parameter('b', [4], new Float32Array(4), true);
  const initial = Float32Array.from(w.data);
  const opt = new AdamW(decayGroups(new Map([['w', w], ['b', b]]), { lr: 1e-3, weightDecay: 0.1 }));
  // with the WebAssembly kernel the arrays moved once into its memory, values kept; from then on they stay put
  assert.deepEqual(w.data, initial);
  const wData = w.data;
  const bData = b.data;
  // gradient of Σ (x w + b)² for x = ones [2, 8]
  const step = () => {
    const y = new Float32Array(4);
    for (let j = 0; j < 4; j++) {
      let s = b.data[j]!;
      for (let i = 0; i < 8; i++) s += w.data[i * 4 + j]!;
      y[j] = s;
    }
    const gw = Float32Array.from({ length: 32 }, (_, k) => 2 * 2 * y[k % 4]!);
    const gb = Float32Array.from(y, (v) => 2 * 2 * v);
    const named = new Map([['w', gw], ['b', gb]]);
    clipGradNorm(named, 0.5);
    opt.step(named, 0.9);
  };
  const start = Float32Array.from(w.data);
  for (let i = 0; i < 6; i++) step();
  assert.equal(w.data, wData, 'θ updated in place: programs read the same array');
  assert.equal(b.data, bData);
  assert.notDeepEqual(w.data, start);
  const st = opt.state();
  assert.ok(st.params.get('w')!.m instanceof Float32Array && st.params.get('w')!.v.length === 32);
  assert.equal(st.params.get('b')!.step, 6);
  opt.dispose();
  assert.equal(opt.state().params.size, 0, 'dispose drops the moments');
});

test('the WebAssembly SIMD kernel and the JavaScript loop give the same updates (float32 against float64 arithmetic)', () => {
  // more values than one chunk of the arena's gradient window, and not a multiple of its four lanes
  const n = 40_003;
  const make = () => new Parameter('w', [n], Float32Array.from({ length: n }, (_, i) => Math.sin(i) * 0.1), true);
  const [a, b] = [make(), make()];
  const fast = new AdamW([{ params: new Map([['w', a]]), lr: 1e-2, weightDecay: 0.01 }]);
  const slow = new AdamW([{ params: new Map([['w', b]]), lr: 1e-2, weightDecay: 0.01 }], { kernel: false });
  for (let step = 0; step < 20; step++) {
    const g = Float32Array.from({ length: n }, (_, i) => Math.cos(i * (step + 1)) * (i % 7) * 0.3);
    fast.step(new Map([['w', g]]), 0.8);
    slow.step(new Map([['w', g]]), 0.8);
  }
  let diff = 0;
  for (let i = 0; i < n; i++) diff = Math.max(diff, Math.abs(a.data[i]! - b.data[i]!));
  assert.ok(diff < 1e-6, `max difference ${diff}`);
  const m = fast.state().params.get('w')!.m;
  let mdiff = 0;
  slow.state().params.get('w')!.m.forEach((x, i) => (mdiff = Math.max(mdiff, Math.abs(x - m[i]!))));
  assert.ok(mdiff < 1e-6, `first moments differ by ${mdiff}`);
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

test('host-array gradients: AdamW steps from Float32Arrays match the float64 torch rule; the caller keeps them', () => {
  const a = param('p', THETA0);
  const oa = new AdamW([{ params: new Map([['p', a]]), lr: 0.05, weightDecay: 0.1 }]);
  for (let s = 0; s < 3; s++) {
    const g = quadGrad(a.data);
    const copy = Float32Array.from(g);
    oa.step(new Map([['p', g]]));
    assert.deepEqual(g, copy, 'the gradient is not modified by the step');
  }
  assertClose(a.data, torchAdam('adamw', 3, 0.05, 0.1), 2e-6, 'host-gradient AdamW');
  assert.throws(() => oa.step(new Map([['p', new Float32Array(3)]])), /gradient of 'p' has 3 values, parameter has \[4\]/);
  oa.dispose();
});
