import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { getRuntime, initEngine, Parameter, programs, ProgramCache, type Ops, type Program } from '../src/engine/index.js';
import type { RuntimeSession } from '../src/engine/runtime.js';
import type { HostTensor } from '../src/engine/tensor.js';
import { applyRope, ropeAt } from '../src/models/llama.js';
import { createRandomModel } from '../src/models/load.js';
import { hiddenStates } from '../src/models/forward.js';
import { rowsAt } from '../src/models/common.js';
import { ProgramBuilder } from '../src/engine/program.js';
import { gradients } from '../src/engine/onnx/autodiff.js';
import { tf, initOracle, tfOps, maxAbsDiff } from './oracle/index.js';
import { rand as randValues, rssAfter } from './fixtures.js';

before(async () => {
  await initOracle();
});

const rand = (shape: number[], seed: number, scale = 1): Float32Array => randValues(shape.reduce((a, b) => a * b, 1), seed, scale);

const floats = (t: HostTensor) => Array.from(t.data as Float32Array);
const maxAbs = (a: ArrayLike<number>) => Array.from(a).reduce((m, v) => Math.max(m, Math.abs(v)), 0);

/** A function of float inputs written once over the op vocabulary (integer operands are constants inside). */
type OpFn = <T>(o: Ops<T>, xs: T[]) => T;

interface OpCase {
  name: string;
  shapes: number[][];
  f: OpFn;
  /** inputs' value range (default 1) */
  scale?: number;
}

/** sum(f(xs) · r) with fixed pseudo-random weights r: a scalar [1] whose gradient reaches every output entry. */
function weightedLoss<T>(o: Ops<T>, y: T): T {
  const shape = o.shape(y);
  const n = shape.reduce((a, b) => a * b, 1);
  const r = o.constFloat(rand(shape, 97), shape);
  return o.reshape(o.sum(o.reshape(o.mul(y, r), [1, n]), 1), [1]);
}

function lossProgram(c: OpCase): Program {
  return {
    key: `test op ${c.name}`,
    build: (b) => {
      const xs = c.shapes.map((shape, i) => b.input(`x${i}`, shape));
      const loss = weightedLoss(b.o, c.f(b.o, xs));
      return { outputs: { loss }, loss, wrt: Object.fromEntries(xs.map((x, i) => [`x${i}`, x])) };
    },
  };
}

const noParams = () => undefined;
const note = (t: { diagnostic(line: string): void }) => (line: string) => t.diagnostic(line);

/** The program's loss and gradients for `inputs`. */
async function programGrads(c: OpCase, inputs: Float32Array[]): Promise<{ loss: number; grads: Float32Array[] }> {
  const feeds: Record<string, HostTensor> = {};
  inputs.forEach((data, i) => (feeds[`x${i}`] = { data, shape: c.shapes[i]! }));
  const r = await programs.run(lossProgram(c), feeds, noParams);
  return { loss: r.outputs.loss!.data[0] as number, grads: inputs.map((_, i) => r.wrt[`x${i}`]!.data as Float32Array) };
}

/** The same function's gradients from the tfjs oracle. */
function oracleGrads(c: OpCase, inputs: Float32Array[]): Float32Array[] {
  return tf.tidy(() => {
    const xs = inputs.map((data, i) => tf.tensor(data, c.shapes[i]!, 'float32'));
    const grads = tf.grads((...args: tf.Tensor[]) => weightedLoss(tfOps, c.f(tfOps, args)))(xs);
    return grads.map((g) => g.dataSync() as Float32Array);
  });
}

/**
 * Checks the program's gradients of `c` against the tfjs oracle (all entries) and against central finite
 * differences of the program's own loss (a few entries of every input).
 */
async function checkGradients(c: OpCase, note?: (line: string) => void): Promise<void> {
  const inputs = c.shapes.map((shape, i) => rand(shape, 11 + 7 * i, c.scale ?? 1));
  const { grads } = await programGrads(c, inputs);
  const want = oracleGrads(c, inputs);
  let worstOracle = 0;
  let worstFd = 0;
  grads.forEach((g, i) => {
    assert.equal(g.length, want[i]!.length);
    const rel = maxAbsDiff(g, want[i]!) / Math.max(maxAbs(want[i]!), 1e-6);
    worstOracle = Math.max(worstOracle, rel);
    assert.ok(rel < 1e-4, `${c.name} input ${i}: relative difference to the oracle ${rel}`);
    assert.ok(maxAbs(g) > 0, `${c.name} input ${i}: the gradient is all zero`);
  });
  const eps = 1e-2;
  for (const [i, x] of inputs.entries()) {
    const n = x.length;
    for (const j of new Set([0, Math.floor(n / 3), Math.floor((2 * n) / 3), n - 1])) {
      const at = async (d: number) => {
        const moved = inputs.map((v) => Float32Array.from(v));
        moved[i]![j]! += d;
        return (await programGrads(c, moved)).loss;
      };
      const fd = (await at(eps)) - (await at(-eps));
      const numeric = fd / (2 * eps);
      const g = grads[i]![j]!;
      const err = Math.abs(numeric - g) / Math.max(2e-2, Math.abs(numeric) + Math.abs(g));
      worstFd = Math.max(worstFd, err);
      assert.ok(err < 2e-2, `${c.name} d/dx${i}[${j}]: gradient ${g} vs finite difference ${numeric}`);
    }
  }
  note?.(`${c.name}: relative difference to the oracle ${worstOracle.toExponential(1)}, to finite differences ${worstFd.toExponential(1)}`);
}

test('Gather gradient: rows picked several times accumulate, along axis 0 and along columns of a matrix', async (t) => {
  const ids = [3, 7, 3, 9, 0, 7, 7];
  const gather: OpCase = { name: 'gather', shapes: [[10, 8]], f: (o, [t]) => o.gather(t!, o.constInt(ids, [7])) };
  await checkGradients(gather, note(t));
  // row 7 was picked three times (entries 1, 5 and 6 of the output): its gradient is the sum of their weights
  const { grads } = await programGrads(gather, [rand([10, 8], 1)]);
  const r = rand([7, 8], 97);
  assert.ok(Math.abs(grads[0]![7 * 8]! - (r[1 * 8]! + r[5 * 8]! + r[6 * 8]!)) < 1e-6);
  assert.deepEqual(Array.from(grads[0]!.subarray(8, 16)), Array(8).fill(0), 'row 1 was never picked');
  await checkGradients({ name: 'gather 2-D ids', shapes: [[10, 4]], f: (o, [t]) => o.gather(t!, o.constInt([1, 2, 2, 9, 0, 1], [2, 3])) }, note(t));
  await checkGradients({ name: 'gather columns', shapes: [[6, 10]], f: (o, [t]) => o.gather(t!, o.constInt([4, 2, 4, 9], [4]), 1) }, note(t));
});

test('Slice gradients: slices tiling a value along one axis are concatenated; partial and overlapping ones are padded and summed', async (t) => {
  await checkGradients({ name: 'three tiles, out of order', shapes: [[2, 3, 12]], f: (o, [x]) => o.concat([8, 0, 4].map((at, i) => o.scale(o.slice(x!, [0, 0, at], [2, 3, 4]), i + 1)), 1) }, note(t));
  await checkGradients({ name: 'two of three tiles', shapes: [[2, 3, 12]], f: (o, [x]) => o.add(o.slice(x!, [0, 0, 0], [2, 3, 4]), o.slice(x!, [0, 0, 8], [2, 3, 4])) }, note(t));
  await checkGradients({ name: 'overlapping slices', shapes: [[2, 3, 12]], f: (o, [x]) => o.mul(o.slice(x!, [0, 0, 0], [2, 3, 8]), o.slice(x!, [0, 0, 4], [2, 3, 8])) }, note(t));
  await checkGradients({ name: 'tiles along two axes', shapes: [[4, 6]], f: (o, [x]) => { const [l, r] = [o.slice(x!, [2, 0], [2, 3]), o.slice(x!, [2, 3], [2, 3])]; return o.add(o.slice(x!, [0, 0], [2, 6]), o.concat([o.mul(l, r), o.mul(r, r)], 1)); } }, note(t));
  await checkGradients({ name: 'a permutation of rows', shapes: [[5, 3]], f: (o, [x]) => o.mul(o.gather(x!, o.constInt([3, 0, 4, 1, 2], [5])), o.gather(x!, o.constInt([1, 1, 0, 4, 2], [5]))) }, note(t));
  const b = new ProgramBuilder();
  const x = b.input('x', [2, 3, 12]);
  const parts = [0, 4, 8].map((at, i) => b.o.scale(b.o.tanh(b.o.slice(x, [0, 0, at], [2, 3, 4])), i + 1));
  const loss = b.o.sum(b.o.reshape(b.o.add(b.o.add(parts[0]!, parts[1]!), parts[2]!), [-1]), 0);
  const forward = b.g.nodes.length;
  gradients(b.o, loss, b.o.constFloat([1], loss.shape), [x]);
  const ops = b.g.nodes.slice(forward).map((n) => n.op);
  assert.ok(ops.includes('Concat') && !ops.includes('Pad'), `the backward of three tiles: ${ops.join(' ')}`);
});

test('matmul gradients: plain, batched, with a transposed operand, and a 2-D weight under batched rows', async (t) => {
  await checkGradients({ name: 'matmul', shapes: [[5, 6], [6, 4]], f: (o, [a, b]) => o.matmul(a!, b!) }, note(t));
  await checkGradients({ name: 'batched matmul', shapes: [[2, 5, 6], [2, 6, 4]], f: (o, [a, b]) => o.matmul(a!, b!) }, note(t));
  await checkGradients({ name: 'batched matmul bᵀ', shapes: [[2, 3, 5, 6], [2, 3, 4, 6]], f: (o, [a, b]) => o.matmul(a!, b!, true) }, note(t));
  await checkGradients({ name: 'rows @ weightᵀ', shapes: [[2, 5, 6], [4, 6]], f: (o, [a, w]) => o.matmul(a!, w!, true) }, note(t));
  await checkGradients({ name: 'linear', shapes: [[2, 5, 6], [6, 4], [4]], f: (o, [x, w, b]) => o.linear(x!, w!, b!) }, note(t));
  await checkGradients({ name: 'broadcast matmul', shapes: [[3, 5, 6], [1, 6, 4]], f: (o, [a, b]) => o.matmul(a!, b!) }, note(t));
});

test('LayerNorm, RMSNorm, softmax and log-softmax gradients', async (t) => {
  await checkGradients({ name: 'layerNorm', shapes: [[2, 3, 8], [8], [8]], f: (o, [x, g, b]) => o.layerNorm(x!, g!, b!, 1e-5), scale: 2 }, note(t));
  await checkGradients({ name: 'rmsNorm', shapes: [[2, 3, 8], [8]], f: (o, [x, g]) => o.rmsNorm(x!, g!, 1e-6), scale: 2 }, note(t));
  await checkGradients({ name: 'softmax', shapes: [[2, 3, 7]], f: (o, [x]) => o.softmax(x!, -1), scale: 3 }, note(t));
  await checkGradients({ name: 'softmax axis 0', shapes: [[4, 5]], f: (o, [x]) => o.softmax(x!, 0), scale: 3 }, note(t));
  await checkGradients({ name: 'logSoftmax', shapes: [[3, 9]], f: (o, [x]) => o.logSoftmax(x!), scale: 3 }, note(t));
});

test('RoPE gradients (cos/sin of the positions, interleaved and half rotation) and attention-shaped compositions', async (t) => {
  const positions = [[0, 1, 2, 5], [3, 4, 5, 6]];
  for (const style of ['interleaved', 'half'] as const) {
    await checkGradients({
      name: `rope ${style}`,
      shapes: [[2, 2, 4, 8]],
      f: (o, [x]) => {
        const { cos, sin } = ropeAt(o, [1, 0.1, 0.01, 0.001], o.constInt(positions.flat(), [2, 4]));
        return applyRope(o, x!, cos, sin, style);
      },
    }, note(t));
  }
  await checkGradients({
    name: 'attention',
    shapes: [[1, 2, 3, 4], [1, 2, 5, 4], [1, 2, 5, 4]],
    f: (o, [q, k, v]) => o.matmul(o.softmax(o.scale(o.matmul(q!, k!, true), 0.5), -1), v!),
  }, note(t));
  await checkGradients({
    name: 'heads',
    shapes: [[2, 3, 8]],
    f: (o, [x]) => o.reshape(o.transpose(o.concat([o.slice(x!, [0, 0, 4], [2, 3, 4]), o.slice(x!, [0, 0, 0], [2, 3, 4])], 1), [0, 2, 1]), [2, 4, 6]),
  }, note(t));
});

test('elementwise and reduction gradients (GELU, tanh GELU, SiLU, tanh, exp, sqrt, div, mean, max)', async (t) => {
  const unary: [string, OpFn][] = [
    ['gelu', (o, [x]) => o.gelu(x!)],
    ['geluTanh', (o, [x]) => o.geluTanh(x!)],
    ['silu', (o, [x]) => o.silu(x!)],
    ['tanh', (o, [x]) => o.tanh(x!)],
    ['exp', (o, [x]) => o.exp(x!)],
    ['sigmoid', (o, [x]) => o.sigmoid(x!)],
    ['neg + scale', (o, [x]) => o.scale(o.neg(x!), 3)],
  ];
  for (const [name, f] of unary) await checkGradients({ name, shapes: [[3, 7]], f, scale: 2 }, note(t));
  await checkGradients({ name: 'sqrt', shapes: [[3, 7]], f: (o, [x]) => o.sqrt(o.add(o.mul(x!, x!), o.scalar(0.5))) }, note(t));
  await checkGradients({ name: 'div sub', shapes: [[3, 7], [7]], f: (o, [a, b]) => o.div(o.sub(a!, b!), o.add(o.mul(b!, b!), o.scalar(1))) }, note(t));
  await checkGradients({ name: 'mean sum', shapes: [[3, 4, 5]], f: (o, [x]) => o.mul(o.mean(x!, 1, true), o.sum(x!, -1, true)) }, note(t));
  await checkGradients({ name: 'max', shapes: [[4, 6]], f: (o, [x]) => o.max(x!, 1) }, note(t));
});

/** Forward values of `f` on `inputs` through a program. */
async function evaluate(name: string, shapes: number[][], f: OpFn, inputs: Float32Array[]): Promise<Float32Array> {
  const r = await programs.run(
    { key: `test eval ${name}`, build: (b) => ({ outputs: { y: f(b.o, shapes.map((s, i) => b.input(`x${i}`, s))) } }) },
    Object.fromEntries(inputs.map((data, i) => [`x${i}`, { data, shape: shapes[i]! }])),
    noParams,
  );
  return r.outputs.y!.data as Float32Array;
}

test('programs: layerNorm, gelu, rope and softmax agree with plain-JS formulas', async (t) => {
  const x = rand([1, 1, 3, 4], 6);
  const ln = await evaluate('ln', [[1, 1, 3, 4]], (o, [t]) => o.layerNorm(t!, o.constFloat([1, 1, 1, 1], [4]), o.constFloat([0, 0, 0, 0], [4]), 1e-5), [x]);
  const row = Array.from(x.slice(0, 4));
  const mu = row.reduce((s, v) => s + v, 0) / 4;
  const va = row.reduce((s, v) => s + (v - mu) ** 2, 0) / 4;
  assert.ok(Math.abs(ln[0]! - (row[0]! - mu) / Math.sqrt(va + 1e-5)) < 1e-5);

  const one = Float32Array.of(1);
  assert.ok(Math.abs((await evaluate('gelu', [[1]], (o, [t]) => o.gelu(t!), [one]))[0]! - 0.8413447) < 1e-5);
  assert.ok(Math.abs((await evaluate('geluTanh', [[1]], (o, [t]) => o.geluTanh(t!), [one]))[0]! - 0.841192) < 1e-5);

  // rotate by angle th: pairs (x0,x1) and (x2,x3) (interleaved) or (x0,x2) and (x1,x3) (half), cos/sin per pair
  const th = [0.3, 0.01];
  const rope = (style: 'interleaved' | 'half') =>
    evaluate(`rope ${style}`, [[1, 1, 1, 4]], (o, [v]) => applyRope(o, v!, o.constFloat(th.map(Math.cos), [1, 1, 1, 2]), o.constFloat(th.map(Math.sin), [1, 1, 1, 2]), style), [
      Float32Array.of(1, 2, 3, 4),
    ]);
  const ri = await rope('interleaved');
  assert.ok(Math.abs(ri[0]! - (1 * Math.cos(0.3) - 2 * Math.sin(0.3))) < 1e-6);
  assert.ok(Math.abs(ri[1]! - (1 * Math.sin(0.3) + 2 * Math.cos(0.3))) < 1e-6);
  const rh = await rope('half');
  assert.ok(Math.abs(rh[0]! - (1 * Math.cos(0.3) - 3 * Math.sin(0.3))) < 1e-6);
  assert.ok(Math.abs(rh[2]! - (1 * Math.sin(0.3) + 3 * Math.cos(0.3))) < 1e-6);
  // the angles themselves: cos/sin of position · frequency
  const angles = await evaluate('rope angles', [[1, 1, 1, 1]], (o) => ropeAt(o, [0.5, 0.25], o.constInt([0, 3], [1, 2])).sin, [Float32Array.of(0)]);
  assert.deepEqual(Array.from(angles).map((v) => +v.toFixed(6)), [0, 0, Math.sin(1.5), Math.sin(0.75)].map((v) => +v.toFixed(6)));

  const sm = await evaluate('softmax0', [[2, 2]], (o, [t]) => o.softmax(t!, 0), [Float32Array.of(1, 2, 3, 5)]);
  assert.ok(Math.abs(sm[0]! - 1 / (1 + Math.exp(2))) < 1e-6);
});

/** Counts the sessions the runtime creates and releases while `f` runs. */
async function countingSessions<R>(f: (counts: { created: number; released: number }) => Promise<R>): Promise<R> {
  const rt = await getRuntime();
  const original = rt.createSession;
  const counts = { created: 0, released: 0 };
  rt.createSession = async (model: Uint8Array): Promise<RuntimeSession> => {
    const s = await original.call(rt, model);
    counts.created++;
    return { ...s, run: s.run, release: () => (counts.released++, s.release()) };
  };
  try {
    return await f(counts);
  } finally {
    rt.createSession = original;
  }
}

test('ProgramCache keeps at most maxSessions sessions, least recently used first out; an evicted program recompiles to the same result', async (t) => {
  await countingSessions(async (counts) => {
    const cache = new ProgramCache(2);
    const scaled = (k: number): Program => ({ key: `test lru ${k}`, build: (b) => ({ outputs: { y: b.o.scale(b.o.exp(b.input('x', [3])), k) } }) });
    const x = { x: { data: Float32Array.of(0.1, -0.2, 0.3), shape: [3] } };
    const y = async (k: number) => Array.from((await cache.run(scaled(k), x, noParams)).outputs.y!.data as Float32Array);
    const first = await y(1);
    await y(2);
    assert.equal(cache.size, 2);
    assert.equal(counts.created, 2);
    assert.deepEqual(await y(1), first, 'a hit');
    assert.equal(counts.created, 2, 'a hit compiles nothing');
    await y(3); // evicts program 2, the least recently used
    assert.equal(cache.size, 2);
    assert.equal(counts.created, 3);
    await y(1);
    assert.equal(counts.created, 3, 'program 1 was used more recently than program 2');
    const again = await y(2);
    assert.equal(counts.created, 4, 'program 2 was evicted: it compiles again');
    assert.deepEqual(again, first.map((v) => Math.fround(v * 2)));
    assert.equal(cache.size, 2);
    await new Promise((r) => setImmediate(r));
    assert.equal(counts.released, 2, 'evicted sessions are released');
    await cache.clear();
    assert.equal(cache.size, 0);
    assert.equal(counts.released, 4);
  });
});

test('parameters are fed on every run: a changed Parameter.data changes the next output without recompiling; gradients land in Parameter.grad (the runtime array, freed by the next run)', async (t) => {
  await countingSessions(async (counts) => {
    const cache = new ProgramCache();
    const w = new Parameter('w', [3], Float32Array.of(1, 2, 3), true);
    const program: Program = {
      key: 'test param',
      build: (b) => {
        const y = b.o.mul(b.input('x', [3]), b.param('w', [3], true));
        const loss = b.o.reshape(b.o.sum(b.o.reshape(b.o.mul(y, y), [1, 3]), 1), [1]);
        return { outputs: { y }, loss };
      },
    };
    const lookup = (name: string) => (name === 'w' ? w : undefined);
    const x = { x: { data: Float32Array.of(1, -1, 0.5), shape: [3] } };
    const run = () => cache.run(program, x, lookup);
    let r = await run();
    assert.deepEqual(floats(r.outputs.y!), [1, -2, 1.5]);
    assert.deepEqual(r.graded, [w]);
    const grad = w.grad;
    // d/dw Σ (x w)² = 2 x² w
    assert.deepEqual(Array.from(grad), [2, 4, 1.5]);
    w.data[1] = 5;
    r = await run();
    assert.deepEqual(floats(r.outputs.y!), [1, -5, 1.5]);
    assert.equal(grad.length, 0, "the last run's gradient array is freed when the next run starts");
    assert.deepEqual(Array.from(w.grad), [2, 10, 1.5]);
    w.set(Float32Array.of(0, 0, 2));
    assert.deepEqual(floats((await run()).outputs.y!), [0, -0, 1]);
    w.data = Float32Array.of(-1, -1, -1);
    assert.deepEqual(floats((await run()).outputs.y!), [-1, 1, -0.5]);
    assert.equal(counts.created, 1, 'one compilation for every run');
    await assert.rejects(cache.run(program, x, noParams), /program test param: no parameter "w"/);
    await assert.rejects(cache.run(program, {}, lookup), /program test param: input "x" was not fed/);
    await cache.clear();
  });
});

test('a model weight update (Parameter.data) is seen by the next forward of the model', async (t) => {
  const lm = createRandomModel('bert', { hiddenSize: 32, numLayers: 2, numHeads: 2, intermediateSize: 64, maxPositions: 64, vocabSize: 100 }, 1);
  const batch = { ids: [[2, 10, 11, 4, 3]] };
  const a = Float32Array.from((await hiddenStates(lm, batch)).data);
  const norm = lm.params.get('bert.encoder.layer.1.output.LayerNorm.bias')!;
  norm.data.fill(0.5);
  const b = (await hiddenStates(lm, batch)).data;
  assert.ok(Math.abs(b[0]! - a[0]! - 0.5) < 1e-5, `${b[0]} vs ${a[0]} + 0.5`);
  lm.dispose();
});

test('memory stays flat over repeated forward and training runs of a small model', async (t) => {
  // every run returns a gradient for each of the ~100k weights (0.4 MB): a leak of any per-run buffer would show
  const lm = createRandomModel('bert', { hiddenSize: 32, numLayers: 2, numHeads: 2, intermediateSize: 64, maxPositions: 64, vocabSize: 2000 }, 1, undefined, { trainable: true });
  const [b, s] = [2, 8];
  const train: Program = {
    key: 'test train rss',
    build: (pb) => {
      const { o } = pb;
      const w = lm.weights(pb);
      const ids = pb.input('ids', [b, s], 'int32');
      const { hidden } = lm.fns.hidden(o, w, { embeds: lm.fns.embed(o, w, ids), attentionMask: pb.input('attention_mask', [b, s], 'int32') });
      const logp = o.logSoftmax(lm.fns.logits(o, w, rowsAt(o, hidden, o.constInt([3, 5], [b]))));
      const loss = o.reshape(o.mean(o.reshape(o.slice(logp, [0, 7], [b, 1]), [1, b]), 1), [1]);
      return { outputs: { loss }, loss };
    },
  };
  const ids = { data: Int32Array.from({ length: b * s }, (_, i) => 5 + ((i * 7) % 1990)), shape: [b, s] };
  const mask = { data: new Int32Array(b * s).fill(1), shape: [b, s] };
  const batch = { ids: [[2, 10, 11, 4, 3, 9, 9, 9]] };
  const { early, late } = await rssAfter(20, 200, async (i) => {
    if (i % 2) await hiddenStates(lm, batch);
    else {
      const r = await lm.run(train, { ids, attention_mask: mask });
      assert.equal(r.graded.length, lm.params.size);
    }
  });
  const grown = (late - early) / 2 ** 20;
  t.diagnostic(`RSS ${(early / 2 ** 20).toFixed(0)} MiB after 20 runs, ${(late / 2 ** 20).toFixed(0)} MiB after 200`);
  assert.ok(grown < 12, `RSS grew by ${grown.toFixed(1)} MiB from run 20 to run 200`);
  lm.dispose();
});

test('a weight embedded in the graph as a constant and the same weight fed as a parameter give the same result', async (t) => {
  const values = Float32Array.from({ length: 1200 }, (_, i) => Math.sin(i) / 2);
  const weight = new Parameter('dense.weight', [3, 400], values);
  const build = (embedded: boolean): Program => ({
    key: `test weight ${embedded ? 'embedded' : 'fed'}`,
    build: (b) => {
      const { o } = b;
      const w = embedded ? b.g.constant(values, [3, 400], 'float32', 'dense.weight') : b.param('dense.weight', [3, 400]);
      const gamma = o.constFloat(Float32Array.from({ length: 400 }, (_, i) => 1 + i / 400), [400]);
      const y = o.layerNorm(o.matmul(b.input('x', [2, 3]), w), gamma, o.constFloat(new Float32Array(400).fill(0.1), [400]), 1e-5);
      return { outputs: { out: o.transpose(o.relu(y), [1, 0]) } };
    },
  });
  const x = { x: { data: Float32Array.of(1, 2, 3, -1, 0.5, 2), shape: [2, 3] } };
  const a = (await programs.run(build(true), x, noParams)).outputs.out!;
  const b = (await programs.run(build(false), x, (name) => (name === 'dense.weight' ? weight : undefined))).outputs.out!;
  assert.deepEqual(b.shape, [400, 2]);
  assert.deepEqual(floats(b), floats(a));
  assert.ok(floats(a).some((v) => v > 0));
});

test('initEngine sets the threads of sessions created from then on; a bad count is refused', async (t) => {
  const rt = await getRuntime();
  const before = rt.threads;
  try {
    assert.equal((await initEngine({ threads: 1 })).threads, 1);
    assert.equal(rt.threads, 1);
    const cache = new ProgramCache();
    const r = await cache.run({ key: 'test one thread', build: (b) => ({ outputs: { y: b.o.tanh(b.input('x', [2])) } }) }, { x: { data: Float32Array.of(0, 1), shape: [2] } }, noParams);
    assert.ok(Math.abs((r.outputs.y!.data as Float32Array)[1]! - Math.tanh(1)) < 1e-6);
    await cache.clear();
    await assert.rejects(initEngine({ threads: 0 }), /threads must be a positive integer, got 0/);
    assert.equal(rt.name, 'onnxruntime-node');
  } finally {
    rt.threads = before;
  }
});
