import { test } from 'node:test';
import assert from 'node:assert/strict';
import { tf, initEngine, tfOps as o } from '../src/engine/index.js';
import { applyRope } from '../src/models/llama.js';

function rand(shape: number[], seed: number): Float32Array {
  let s = seed >>> 0;
  const n = shape.reduce((a, b) => a * b, 1);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    s = (s * 1664525 + 1013904223) >>> 0;
    out[i] = s / 2 ** 32 - 0.5;
  }
  return out;
}

async function onBackend<R>(name: 'wasm' | 'cpu', f: () => R): Promise<R> {
  await initEngine(name);
  return f();
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

test('gather gradient (UnsortedSegmentSum) on wasm equals the cpu backend', async () => {
  const table = rand([50, 8], 1);
  const ids = [3, 7, 3, 49, 0, 7, 7];
  const w = rand([7, 8], 2);
  const grad = () =>
    tf.tidy(() => {
      const t = tf.tensor(table, [50, 8]);
      const g = tf.grad((x: tf.Tensor) => tf.sum(tf.mul(o.gather(x, tf.tensor1d(ids, 'int32')), tf.tensor(w, [7, 8]))));
      return g(t).dataSync().slice();
    });
  const wasm = await onBackend('wasm', grad);
  const cpu = await onBackend('cpu', grad);
  assert.ok(maxAbsDiff(wasm, cpu) < 1e-6);
  // row 7 was picked three times: its gradient is the sum of three rows of w
  assert.ok(Math.abs(wasm[7 * 8]! - (w[1 * 8]! + w[5 * 8]! + w[6 * 8]!)) < 1e-6);
  await initEngine('wasm');
});

test('matmul gradients (transposed BatchMatMul) on wasm equal the cpu backend', async () => {
  const a = rand([2, 5, 6], 3);
  const b = rand([2, 6, 4], 4);
  const grads = () =>
    tf.tidy(() => {
      const g = tf.grads((x: tf.Tensor, y: tf.Tensor) => tf.sum(tf.square(tf.matMul(x, y))));
      const [ga, gb] = g([tf.tensor(a, [2, 5, 6]), tf.tensor(b, [2, 6, 4])]);
      const direct = tf.matMul(tf.tensor(a, [2, 5, 6]), tf.tensor(rand([2, 4, 6], 5), [2, 4, 6]), false, true);
      return [ga!.dataSync().slice(), gb!.dataSync().slice(), direct.dataSync().slice()];
    });
  const wasm = await onBackend('wasm', grads);
  const cpu = await onBackend('cpu', grads);
  for (let i = 0; i < 3; i++) assert.ok(maxAbsDiff(wasm[i]!, cpu[i]!) < 1e-5, `output ${i}`);
  await initEngine('wasm');
});

test('ops: layerNorm, gelu, rope and softmax agree with plain-JS formulas', async () => {
  await initEngine('wasm');
  const x = rand([1, 1, 3, 4], 6);
  tf.tidy(() => {
    const t = tf.tensor(x, [1, 1, 3, 4]);
    const ln = o.layerNorm(t, tf.ones([4]), tf.zeros([4]), 1e-5).dataSync();
    const row = Array.from(x.slice(0, 4));
    const mu = row.reduce((s, v) => s + v, 0) / 4;
    const va = row.reduce((s, v) => s + (v - mu) ** 2, 0) / 4;
    assert.ok(Math.abs(ln[0]! - (row[0]! - mu) / Math.sqrt(va + 1e-5)) < 1e-5);

    const g = o.gelu(tf.tensor1d([1.0])).dataSync()[0]!;
    assert.ok(Math.abs(g - 0.8413447) < 1e-5);
    const gt = o.geluTanh(tf.tensor1d([1.0])).dataSync()[0]!;
    assert.ok(Math.abs(gt - 0.8411920) < 1e-5);

    // rotate position 1 by angle th: pairs (x0,x1) and (x2,x3), cos/sin per pair
    const th = [0.3, 0.01];
    const cos = tf.tensor(th.map(Math.cos), [1, 1, 1, 2]);
    const sin = tf.tensor(th.map(Math.sin), [1, 1, 1, 2]);
    const v = tf.tensor([1, 2, 3, 4], [1, 1, 1, 4]);
    const ri = applyRope(o, v, cos, sin, 'interleaved').dataSync();
    assert.ok(Math.abs(ri[0]! - (1 * Math.cos(0.3) - 2 * Math.sin(0.3))) < 1e-6);
    assert.ok(Math.abs(ri[1]! - (1 * Math.sin(0.3) + 2 * Math.cos(0.3))) < 1e-6);
    const rh = applyRope(o, v, cos, sin, 'half').dataSync();
    assert.ok(Math.abs(rh[0]! - (1 * Math.cos(0.3) - 3 * Math.sin(0.3))) < 1e-6);
    assert.ok(Math.abs(rh[2]! - (1 * Math.sin(0.3) + 3 * Math.cos(0.3))) < 1e-6);

    const sm = o.softmax(tf.tensor2d([[1, 2], [3, 5]]), 0).dataSync();
    assert.ok(Math.abs(sm[0]! - 1 / (1 + Math.exp(2))) < 1e-6);
  });
});

test('tensor count stays flat across 100 gradient steps', async () => {
  await initEngine('wasm');
  const w = tf.variable(tf.tensor(rand([8, 8], 7), [8, 8]));
  const step = () =>
    tf.tidy(() => {
      const { grads } = tf.variableGrads(() =>
        tf.sum(o.geluTanh(o.linear(o.gather(w, tf.tensor1d([1, 2, 2], 'int32')), w))) as tf.Scalar,
      );
      w.assign(tf.sub(w, tf.mul(grads[w.name]!, 0.01)));
    });
  step();
  const before = tf.memory().numTensors;
  for (let i = 0; i < 100; i++) step();
  assert.equal(tf.memory().numTensors, before);
  w.dispose();
});

test('wasm Identity shares the buffer: a clone outlives its source and memory is not duplicated', async () => {
  await initEngine('wasm');
  const before = tf.memory().numDataBuffers;
  const a = tf.tensor1d([1, 2, 3]);
  const b = tf.clone(a);
  a.dispose();
  assert.deepEqual(Array.from(b.dataSync()), [1, 2, 3]);
  const c = tf.tidy(() => tf.add(b, 1));
  b.dispose();
  assert.deepEqual(Array.from(c.dataSync()), [2, 3, 4]);
  c.dispose();
  assert.equal(tf.memory().numDataBuffers, before);
  // a clone (what the tape keeps of each saved input) adds no new buffer
  const big = tf.randomNormal([1000, 1000]);
  const buffers = tf.memory().numDataBuffers;
  const copy = tf.clone(big);
  assert.equal(tf.memory().numDataBuffers, buffers);
  copy.dispose();
  big.dispose();
});
