import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { programs, type Program, type ProgramBuilder, type ProgramGraph } from '../src/engine/program.js';
import type { QuantizedTensors } from '../src/engine/ops.js';
import type { Sym } from '../src/engine/onnx/index.js';
import {
  blockCount,
  dequantizeMatrix,
  dequantizeTransposed,
  quantizeMatrix,
  quantAt,
  quantizedShapes,
  rowBytes,
  transposeBytes,
  transposeMatrix,
  zeroPointAt,
  type QuantizedMatrix,
  type QuantSettings,
} from '../src/engine/quant.js';
import { tf, initOracle, tfOps, maxAbsDiff, tfQuantized } from './oracle/index.js';
import { cosine, rand } from './fixtures.js';

before(async () => {
  await initOracle();
});

/** Weights with the heavy-ish tails of trained ones: a few large entries per row. */
function weights(n: number, k: number, seed: number): Float32Array {
  const w = rand(n * k, seed, 0.05);
  for (let i = 0; i < w.length; i += 97) w[i]! *= 6;
  return w;
}

type BlockSettings = QuantSettings & { blockSize: 32 | 64 | 128 };

const SETTINGS: BlockSettings[] = [
  { bits: 8, blockSize: 32, symmetric: true },
  { bits: 8, blockSize: 64, symmetric: false },
  { bits: 4, blockSize: 32, symmetric: true },
  { bits: 4, blockSize: 64, symmetric: false },
  { bits: 4, blockSize: 128, symmetric: true },
  { bits: 8, blockSize: 128, symmetric: false },
];
const CHANNEL: QuantSettings = { bits: 8, blockSize: 'channel', symmetric: true };
const label = (s: QuantSettings) => `int${s.bits} block ${s.blockSize} ${s.symmetric ? 'symmetric' : 'zero points'}`;

/** Squared error of plain round-to-nearest over the block's whole range (what the scale search must not exceed). */
function plainBlockError(w: Float32Array, s: { bits: number; symmetric: boolean }): number {
  const levels = (1 << s.bits) - 1;
  const mid = 1 << (s.bits - 1);
  let lo = 0, hi = 0;
  for (const v of w) (lo = Math.min(lo, v)), (hi = Math.max(hi, v));
  const scale = Math.fround(s.symmetric ? Math.max(-lo, hi) / (mid - 1) : (hi - lo) / levels);
  if (scale === 0) return 0;
  const zp = s.symmetric ? mid : Math.min(levels, Math.max(0, Math.round(-lo / scale)));
  let e = 0;
  for (const v of w) {
    const q = Math.min(levels, Math.max(0, Math.round(v / scale) + zp));
    e += (v - (q - zp) * scale) ** 2;
  }
  return e;
}

test('quantize → dequantize: values inside a block\'s range within half a step, clipped ones at its ends, no block worse than plain rounding', () => {
  for (const s of SETTINGS) {
    // k = 200: not a multiple of any block size, so the last block of a row is partial
    for (const [n, k] of [[24, 256], [7, 200]] as const) {
      const w = weights(n, k, n + k + s.bits);
      w.fill(0, 0, k); // a zero row: zero scales, exact zeros back
      const q = quantizeMatrix(w, n, k, s);
      const back = dequantizeMatrix(q);
      const blocks = blockCount(k, s.blockSize);
      const levels = (1 << s.bits) - 1;
      assert.equal(q.data.length, n * rowBytes(k, s).data);
      assert.equal(q.scales.length, n * blocks);
      assert.equal(!!q.zeroPoints, !s.symmetric);
      for (let r = 0; r < n; r++) {
        for (let b = 0; b < blocks; b++) {
          const scale = q.scales[r * blocks + b]!;
          const zp = zeroPointAt(q, r, b);
          const [lo, hi] = [(0 - zp) * scale, (levels - zp) * scale];
          const from = r * k + b * s.blockSize;
          const to = r * k + Math.min((b + 1) * s.blockSize, k);
          let err = 0;
          for (let i = from; i < to; i++) {
            const [v, d] = [w[i]!, back[i]!];
            err += (v - d) ** 2;
            if (v < lo - scale / 2) assert.equal(d, Math.fround(lo), `${label(s)}: ${v} below the range clips to its end`);
            else if (v > hi + scale / 2) assert.equal(d, Math.fround(hi), `${label(s)}: ${v} above the range clips to its end`);
            else assert.ok(Math.abs(v - d) <= (scale / 2) * (1 + 1e-5) + 1e-12, `${label(s)} [${n},${k}] (${r},${i - r * k}): |${v} - ${d}| > ${scale / 2}`);
          }
          const plain = plainBlockError(w.subarray(from, to), s);
          assert.ok(err <= plain * (1 + 1e-4) + 1e-15, `${label(s)} block (${r},${b}): squared error ${err} > plain rounding's ${plain}`);
        }
      }
      for (let i = 0; i < k; i++) assert.equal(back[i], 0);
    }
  }
});

test('quantized layout: 4-bit values two to a byte (low nibble first), zero points packed alike, Ŵᵀ written transposed', () => {
  const s: BlockSettings = { bits: 4, blockSize: 32, symmetric: false };
  const [n, k] = [5, 96];
  const w = weights(n, k, 3);
  const q = quantizeMatrix(w, n, k, s);
  const back = dequantizeMatrix(q);
  // element (r, i) from the raw bytes, as ONNX Runtime's MatMulNBits reads them
  const per = rowBytes(k, s).data;
  for (const [r, i] of [[0, 0], [0, 1], [2, 33], [4, 95]] as const) {
    const byte = q.data[r * per + (i >> 1)]!;
    const value = i & 1 ? byte >> 4 : byte & 15;
    const zp = zeroPointAt(q, r, Math.floor(i / 32));
    const zpByte = q.zeroPoints![r * 2 + (Math.floor(i / 32) >> 1)]!;
    assert.equal(zp, Math.floor(i / 32) & 1 ? zpByte >> 4 : zpByte & 15);
    assert.equal(back[r * k + i], Math.fround((value - zp) * q.scales[r * 3 + Math.floor(i / 32)]!));
  }
  assert.deepEqual(Array.from(dequantizeTransposed(q)), Array.from(transposeMatrix(back, n, k)));
});

// ---------------------------------------------------------------------------------------------------------
// the quantized dense op: ONNX Runtime's MatMulNBits against the oracle's dequantize + matmul

function symTensors(b: ProgramBuilder, q: QuantizedMatrix, name: string, transposed?: QuantizedMatrix, activations: 'int8' | 'float32' = 'int8'): QuantizedTensors<Sym> {
  const shape = quantizedShapes(q);
  return {
    n: q.n,
    k: q.k,
    bits: q.bits,
    blockSize: q.blockSize,
    ...(q.signed && { signed: true, columns: b.g.constant(transposeBytes(q.data, q.n, q.k), [q.k, q.n], 'int8', `${name}.columns`) }),
    data: b.g.constant(q.data, shape.data, q.signed ? 'int8' : 'uint8', `${name}.data`),
    scales: b.g.constant(q.scales, shape.scales, 'float32', `${name}.scales`),
    ...(q.zeroPoints && { zeroPoints: b.g.constant(q.zeroPoints, shape.zeroPoints, 'uint8', `${name}.zp`) }),
    activations,
    ...(transposed && { transposed: symTensors(b, transposed, `${name}.T`, undefined, activations) }),
  };
}

const tfTensors = (q: QuantizedMatrix) => tfQuantized(q, q.data, q.scales, q.zeroPoints);

interface DenseCase {
  s: QuantSettings;
  xShape: number[];
  n: number;
  bias: boolean;
  accuracy: number;
  backward: 'transposed' | 'dequantize' | 'none';
}

let programId = 0;

/** loss = Σ quantizedDense(x, Ŵ, bias) · r, with the gradient to x. */
function denseProgram(c: DenseCase, q: QuantizedMatrix, t: QuantizedMatrix | undefined, bias: Float32Array | undefined, r: Float32Array): Program {
  return {
    key: `test quantized dense ${programId++}`,
    build: (b): ProgramGraph => {
      const x = b.input('x', c.xShape);
      const w = symTensors(b, q, 'w', t, c.accuracy === 0 ? 'float32' : 'int8');
      const y = b.o.quantizedDense(x, w, bias && b.o.constFloat(bias, [c.n]));
      const n = y.size;
      const loss = b.o.reshape(b.o.sum(b.o.reshape(b.o.mul(y, b.o.constFloat(r, y.shape)), [1, n]), 1), [1]);
      return c.backward === 'none' ? { outputs: { y } } : { outputs: { y, loss }, loss, wrt: { x } };
    },
  };
}

test('quantizedDense: MatMulNBits equals dequantize + matmul (the oracle) for 4/8 bits, zero points, padded blocks, bias, batched rows', async () => {
  const cases: DenseCase[] = [
    { s: SETTINGS[0]!, xShape: [6, 64], n: 48, bias: true, accuracy: 0, backward: 'none' },
    { s: SETTINGS[1]!, xShape: [2, 3, 200], n: 24, bias: false, accuracy: 0, backward: 'none' },
    { s: SETTINGS[2]!, xShape: [2, 5, 96], n: 40, bias: true, accuracy: 0, backward: 'none' },
    { s: SETTINGS[3]!, xShape: [9, 200], n: 16, bias: true, accuracy: 0, backward: 'none' },
    { s: SETTINGS[4]!, xShape: [4, 256], n: 32, bias: false, accuracy: 0, backward: 'none' },
  ];
  for (const c of cases) {
    const k = c.xShape[c.xShape.length - 1]!;
    const q = quantizeMatrix(weights(c.n, k, k + c.n), c.n, k, c.s);
    const x = rand(c.xShape.reduce((a, b) => a * b, 1), 5);
    const bias = c.bias ? rand(c.n, 8, 0.5) : undefined;
    const r = await programs.run(denseProgram(c, q, undefined, bias, new Float32Array(0)), { x: { data: x, shape: c.xShape } }, () => undefined);
    const expected = tf.tidy(() => {
      const y = tfOps.quantizedDense(tf.tensor(x, c.xShape), tfTensors(q), bias && tf.tensor(bias));
      return y.dataSync() as Float32Array;
    });
    const got = r.outputs.y!.data as Float32Array;
    assert.deepEqual(r.outputs.y!.shape, [...c.xShape.slice(0, -1), c.n]);
    const scale = Math.max(...Array.from(expected, Math.abs));
    assert.ok(maxAbsDiff(got, expected) <= 1e-5 * scale + 1e-6, `${label(c.s)}: max diff ${maxAbsDiff(got, expected)} (scale ${scale})`);
  }
});

test('quantizedDense with int8 activations (accuracy level 4): within 1% of the float product of the same quantized weight', async () => {
  for (const s of [SETTINGS[0]!, SETTINGS[2]!, SETTINGS[3]!]) {
    const c: DenseCase = { s, xShape: [16, 256], n: 64, bias: false, accuracy: 4, backward: 'none' };
    const q = quantizeMatrix(weights(64, 256, 11), 64, 256, s);
    const x = rand(16 * 256, 6);
    const r = await programs.run(denseProgram(c, q, undefined, undefined, new Float32Array(0)), { x: { data: x, shape: c.xShape } }, () => undefined);
    const expected = tf.tidy(() => tfOps.quantizedDense(tf.tensor(x, c.xShape), tfTensors(q)).dataSync() as Float32Array);
    const scale = Math.max(...Array.from(expected, Math.abs));
    const diff = maxAbsDiff(r.outputs.y!.data as Float32Array, expected);
    assert.ok(diff <= 0.01 * scale, `${label(s)}: ${diff} vs scale ${scale}`);
  }
});

/** Central finite differences of the program's loss along a few coordinates of x. */
async function finiteDifferences(p: () => Program, x: Float32Array, shape: number[], coords: number[], h: number): Promise<number[]> {
  const lossAt = async (v: Float32Array) => {
    const r = await programs.run(p(), { x: { data: v, shape } }, () => undefined);
    return r.outputs.loss!.data[0] as number;
  };
  const out: number[] = [];
  for (const i of coords) {
    const plus = x.slice();
    plus[i]! += h;
    const minus = x.slice();
    minus[i]! -= h;
    out.push(((await lossAt(plus)) - (await lossAt(minus))) / (2 * h));
  }
  return out;
}

test('quantizedDense input gradient: exact for the quantized forward (dequantized Ŵ), close with the transposed quantized copy', async () => {
  for (const s of [SETTINGS[0]!, SETTINGS[3]!]) {
    const [m, k, n] = [4, 96, 40];
    const q = quantizeMatrix(weights(n, k, 21), n, k, s);
    const t = quantizeMatrix(dequantizeTransposed(q), k, n, s);
    const x = rand(m * k, 9);
    const r = rand(m * n, 10);
    const bias = rand(n, 12, 0.3);
    const grad = async (backward: DenseCase['backward']) => {
      const c: DenseCase = { s, xShape: [m, k], n, bias: true, accuracy: 0, backward };
      const out = await programs.run(denseProgram(c, q, backward === 'transposed' ? t : undefined, bias, r), { x: { data: x, shape: [m, k] } }, () => undefined);
      return out.wrt.x!.data as Float32Array;
    };
    const exact = await grad('dequantize');
    // the oracle: d/dx Σ (x Ŵᵀ + b) · r = r Ŵ
    const deq = dequantizeMatrix(q);
    const oracle = tf.tidy(() => tf.matMul(tf.tensor(r, [m, n]), tf.tensor(deq, [n, k])).dataSync() as Float32Array);
    assert.ok(maxAbsDiff(exact, oracle) <= 1e-5, `${label(s)}: dequantize backward vs rŴ: ${maxAbsDiff(exact, oracle)}`);
    const coords = [0, 17, 95, 130, 383];
    const fd = await finiteDifferences(() => denseProgram({ s, xShape: [m, k], n, bias: true, accuracy: 0, backward: 'dequantize' }, q, undefined, bias, r), x, [m, k], coords, 1e-2);
    coords.forEach((i, j) => assert.ok(Math.abs(fd[j]! - exact[i]!) <= 2e-3 * (1 + Math.abs(exact[i]!)), `${label(s)} coord ${i}: fd ${fd[j]} vs ${exact[i]}`));
    // the transposed copy quantizes Ŵᵀ once more: its gradient is off by that second rounding only
    const viaCopy = await grad('transposed');
    const cos = cosine(exact, viaCopy);
    assert.ok(cos >= (s.bits === 8 ? 0.9999 : 0.99), `${label(s)}: cosine ${cos}`);
  }
});

test('dequantize and GatherBlockQuantized in a program: the same Ŵ as the host (per channel too)', async () => {
  for (const s of [SETTINGS[1]!, SETTINGS[2]!, SETTINGS[3]!, CHANNEL]) {
    const [n, k] = [12, 200];
    const q = quantizeMatrix(weights(n, k, 4), n, k, s);
    const ids = Int32Array.of(3, 0, 11, 3);
    const p: Program = {
      key: `test dequantize ${programId++}`,
      build: (b) => {
        const w = symTensors(b, q, 'w');
        return { outputs: { all: b.o.dequantize(w), rows: b.o.gatherQuantized(w, b.input('ids', [4], 'int32')) } };
      },
    };
    const r = await programs.run(p, { ids: { data: ids, shape: [4] } }, () => undefined);
    const deq = dequantizeMatrix(q);
    assert.deepEqual(Array.from(r.outputs.all!.data as Float32Array), Array.from(deq), label(s));
    assert.ok(deq.some((v) => v !== 0), label(s));
    const rows = Array.from(ids).flatMap((i) => Array.from(deq.subarray(i * k, (i + 1) * k)));
    assert.ok(maxAbsDiff(r.outputs.rows!.data as Float32Array, rows) <= 1e-7, `${label(s)}: gathered rows`);
  }
});

// ---------------------------------------------------------------------------------------------------------
// per channel: int8 weights with one scale per output feature, ONNX Runtime's integer GEMM

test('per channel: one scale per row, signed bytes, values within half a step (clipped ones at the ends), [k, n] integers the same ones transposed', () => {
  for (const [n, k] of [[24, 256], [7, 200]] as const) {
    const w = weights(n, k, 31 + n);
    w.fill(0, 0, k);
    const q = quantizeMatrix(w, n, k, CHANNEL);
    assert.equal(q.signed, true);
    assert.equal(q.blockSize, k);
    assert.equal(q.zeroPoints, undefined);
    assert.equal(q.data.length, n * k);
    assert.equal(q.scales.length, n);
    assert.deepEqual(quantizedShapes(q), { data: [n, k], scales: [n], zeroPoints: [] });
    const back = dequantizeMatrix(q);
    let nonzero = 0;
    for (let r = 0; r < n; r++) {
      const scale = q.scales[r]!;
      for (let i = 0; i < k; i++) {
        const [v, d, iq] = [w[r * k + i]!, back[r * k + i]!, quantAt(q, r, i)];
        assert.ok(Number.isInteger(iq) && iq >= -128 && iq <= 127, `(${r},${i}): ${iq}`);
        assert.equal(d, Math.fround(iq * scale));
        if (iq !== 0) nonzero++;
        if (v < -128 * scale - scale / 2) assert.equal(iq, -128);
        else if (v > 127 * scale + scale / 2) assert.equal(iq, 127);
        else assert.ok(Math.abs(v - d) <= (scale / 2) * (1 + 1e-5) + 1e-12, `[${n},${k}] (${r},${i}): |${v} - ${d}| > ${scale / 2}`);
      }
      if (r > 0) {
        // no row is worse than plain round-to-nearest over its whole range
        const row = w.subarray(r * k, (r + 1) * k);
        let err = 0;
        for (let i = 0; i < k; i++) err += (row[i]! - back[r * k + i]!) ** 2;
        assert.ok(err <= plainBlockError(row, CHANNEL) * (1 + 1e-4) + 1e-15, `row ${r}`);
      }
    }
    assert.ok(nonzero > n * k * 0.5);
    const t = transposeBytes(q.data, n, k);
    for (const [r, c] of [[0, 0], [1, 5], [n - 1, k - 1], [3, 100]] as const) assert.equal(t[c * n + r], q.data[r * k + c]);
  }
  assert.throws(() => quantizeMatrix(new Float32Array(64), 2, 32, { bits: 4, blockSize: 'channel', symmetric: true }), /per-channel scales are for symmetric int8 only/);
  assert.throws(() => quantizeMatrix(new Float32Array(64), 2, 32, { bits: 8, blockSize: 'channel', symmetric: false }), /per-channel scales are for symmetric int8 only/);
});

test('quantizedDense per channel: the integer GEMM within 1% of the float product of the same Ŵ (bias, batched rows, k not a power of two)', async () => {
  for (const [xShape, n, withBias] of [[[16, 256], 64, false], [[2, 3, 200], 24, true], [[5, 96], 40, true]] as const) {
    const k = xShape[xShape.length - 1]!;
    const q = quantizeMatrix(weights(n, k, k + n), n, k, CHANNEL);
    const x = rand(xShape.reduce((a: number, b: number) => a * b, 1), 6);
    const bias = withBias ? rand(n, 8, 0.5) : undefined;
    const p: Program = {
      key: `test channel dense ${programId++}`,
      build: (b) => ({ outputs: { y: b.o.quantizedDense(b.input('x', [...xShape]), symTensors(b, q, 'w'), bias && b.o.constFloat(bias, [n])) } }),
    };
    const r = await programs.run(p, { x: { data: x, shape: [...xShape] } }, () => undefined);
    assert.deepEqual(r.outputs.y!.shape, [...xShape.slice(0, -1), n]);
    const expected = tf.tidy(() => tfOps.quantizedDense(tf.tensor(x, [...xShape]), tfTensors(q), bias && tf.tensor(bias)).dataSync() as Float32Array);
    const scale = Math.max(...Array.from(expected, Math.abs));
    const diff = maxAbsDiff(r.outputs.y!.data as Float32Array, expected);
    assert.ok(diff <= 0.01 * scale, `[${xShape}] x [${n}, ${k}]ᵀ: ${diff} vs scale ${scale}`);
  }
});

test('per-channel input gradient: (dY ⊙ s) q through the integer GEMM, within 2% of r Ŵ (r quantized to 8 bits per tensor on the way), the derivative of x Ŵᵀ', async () => {
  const [m, k, n] = [8, 96, 40];
  const q = quantizeMatrix(weights(n, k, 21), n, k, CHANNEL);
  const x = rand(m * k, 9);
  const r = rand(m * n, 10);
  const bias = rand(n, 12, 0.3);
  const c: DenseCase = { s: CHANNEL, xShape: [m, k], n, bias: true, accuracy: 4, backward: 'transposed' };
  const out = await programs.run(denseProgram(c, q, undefined, bias, r), { x: { data: x, shape: [m, k] } }, () => undefined);
  const got = out.wrt.x!.data as Float32Array;
  const oracle = tf.tidy(() => tf.matMul(tf.tensor(r, [m, n]), tf.tensor(dequantizeMatrix(q), [n, k])).dataSync() as Float32Array);
  const scale = Math.max(...Array.from(oracle, Math.abs));
  assert.ok(maxAbsDiff(got, oracle) <= 0.02 * scale, `max diff ${maxAbsDiff(got, oracle)} vs scale ${scale}`);
  assert.ok(cosine(got, oracle) >= 0.9999, `cosine ${cosine(got, oracle)}`);
});

test('settings: int8 is per channel by default, int4 blocks of 32 with zero points; settings per channel cannot take give blocks of 32; names', async () => {
  const { parseQuantize, quantizeName } = await import('../src/models/quantize-settings.js');
  const named = (v: Parameters<typeof parseQuantize>[0]) => {
    const s = parseQuantize(v)!;
    return [s.blockSize, s.symmetric, quantizeName(s)];
  };
  assert.deepEqual(named('int8'), ['channel', true, 'int8']);
  assert.deepEqual(named({ bits: 8, blockSize: 32 }), [32, true, 'int8-b32']);
  assert.deepEqual(named({ bits: 8, symmetric: false }), [32, false, 'int8-zp']);
  assert.deepEqual(named({ bits: 8, activations: 'float32' }), [32, true, 'int8-f32act']);
  assert.deepEqual(named({ bits: 8, backward: 'dequantize', blockSize: 64 }), [64, true, 'int8-b64-deq']);
  assert.deepEqual(named('int4'), [32, false, 'int4']);
  assert.deepEqual(named({ bits: 4, blockSize: 128 }), [128, false, 'int4-b128']);
  assert.equal(parseQuantize('none'), null);
  assert.throws(() => parseQuantize({ bits: 4, blockSize: 'channel' }), /per-channel scales are for symmetric int8 only/);
  assert.throws(() => parseQuantize({ bits: 8, blockSize: 'channel', backward: 'dequantize' }), /per-channel int8 multiplies integers in both directions/);
});
