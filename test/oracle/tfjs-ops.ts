import { tf } from './backend.js';
import type { LstmWeights, Ops, QuantizedTensors } from '../../src/engine/ops.js';

type T = tf.Tensor;

const SQRT1_2 = Math.SQRT1_2;
const GELU_TANH_C = Math.sqrt(2 / Math.PI);

function norm(axis: number, rank: number): number {
  return axis < 0 ? rank + axis : axis;
}

/** tfjs's softmax kernels only reduce over the last axis: move `axis` there and back. */
function alongLastAxis(x: T, axis: number, f: (t: T) => T): T {
  const ax = norm(axis, x.rank);
  if (ax === x.rank - 1) return f(x);
  const perm = [...Array(x.rank).keys()];
  [perm[ax], perm[x.rank - 1]] = [x.rank - 1, ax];
  return tf.transpose(f(tf.transpose(x, perm)), perm);
}

function gelu(x: T): T {
  return tf.tidy(() => tf.mul(tf.mul(x, 0.5), tf.add(1, tf.erf(tf.mul(x, SQRT1_2)))));
}

function geluTanh(x: T): T {
  return tf.tidy(() => {
    const inner = tf.mul(tf.add(x, tf.mul(tf.pow(x, 3), 0.044715)), GELU_TANH_C);
    return tf.mul(tf.mul(x, 0.5), tf.add(1, tf.tanh(inner)));
  });
}

/**
 * a @ b, or a @ bᵀ, over the last two axes. tfjs's BatchMatMul gradient does not reduce a broadcast operand back
 * to its shape: a matrix b under batched rows a is applied to a's rows flattened into one matrix, other broadcast
 * batch axes are broadcast explicitly.
 */
function matmul(a: T, b: T, transposeB = false): T {
  if (b.rank === 2 && a.rank > 2) {
    const lead = a.shape.slice(0, -1) as number[];
    const y = tf.matMul(tf.reshape(a, [-1, a.shape[a.rank - 1]!]), b, false, transposeB);
    return tf.reshape(y, [...lead, y.shape[1]!]);
  }
  // other broadcast batch axes: made explicit, so that the gradient of the broadcast sums them back
  const r = Math.max(a.rank, b.rank);
  const batch = Array.from({ length: r - 2 }, (_, i) => Math.max(a.shape[a.rank - r + i] ?? 1, b.shape[b.rank - r + i] ?? 1));
  const full = (x: T) => (x.rank === r && x.shape.slice(0, -2).join() === batch.join() ? x : tf.broadcastTo(x, [...batch, ...x.shape.slice(-2)]));
  return tf.matMul(full(a), full(b), false, transposeB);
}

function linear(x: T, w: T, bias?: T): T {
  const inDim = x.shape[x.rank - 1]!;
  const outDim = w.shape[1]!;
  const lead = x.shape.slice(0, -1) as number[];
  const flat = x.rank === 2 ? x : tf.reshape(x, [-1, inDim]);
  let y = tf.matMul(flat, w);
  if (bias) y = tf.add(y, bias);
  return x.rank === 2 ? y : tf.reshape(y, [...lead, outDim]);
}

function layerNorm(x: T, gamma: T, beta: T, eps: number): T {
  const ax = x.rank - 1;
  const mu = tf.mean(x, ax, true);
  const xc = tf.sub(x, mu);
  const v = tf.mean(tf.square(xc), ax, true);
  return tf.add(tf.mul(tf.mul(xc, tf.rsqrt(tf.add(v, eps))), gamma), beta);
}

function rmsNorm(x: T, weight: T, eps: number): T {
  const ms = tf.mean(tf.square(x), x.rank - 1, true);
  return tf.mul(tf.mul(x, tf.rsqrt(tf.add(ms, eps))), weight);
}

/**
 * tf.gather with a gradient that scatter-adds on the host: tfjs's own (UnsortedSegmentSum on the cpu backend)
 * costs one pass per table row, which for a vocabulary-wide table or a flattened [B·V] log-probability vector
 * is minutes.
 */
function gather(table: T, ids: T, axis = 0): T {
  const ax = norm(axis, table.rank);
  if (table.dtype !== 'float32') return tf.gather(table, ids, ax);
  const shape = table.shape;
  const idx = Int32Array.from(ids.dataSync() as Int32Array);
  const f = tf.customGrad(((t: T) => ({
    value: tf.gather(t, ids, ax),
    gradFunc: (dy: T) => {
      const pre = shape.slice(0, ax).reduce((x, y) => x * y, 1);
      const n = shape[ax]!;
      const post = shape.slice(ax + 1).reduce((x, y) => x * y, 1);
      const g = dy.dataSync() as Float32Array;
      const k = idx.length;
      const out = new Float32Array(pre * n * post);
      for (let p = 0; p < pre; p++) {
        for (let j = 0; j < k; j++) {
          const to = (p * n + idx[j]!) * post;
          const from = (p * k + j) * post;
          for (let q = 0; q < post; q++) out[to + q] += g[from + q]!;
        }
      }
      return tf.tensor(out, shape, 'float32');
    },
  })) as unknown as Parameters<typeof tf.customGrad>[0]);
  return f(table);
}

/**
 * Ŵ [n, k] of a block-quantized weight (data and zero points as int32 tensors holding the uint8 bytes), computed
 * with tfjs ops: (q - zero point) · scale per block, 4-bit values two to a byte, low nibble first.
 */
export function dequantizeTf(w: QuantizedTensors<T>): T {
  return tf.tidy(() => {
    const { n, k, bits, blockSize } = w;
    if (w.signed) return tf.mul(tf.cast(w.data, 'float32'), tf.reshape(w.scales, [n, 1]));
    const blocks = Math.ceil(k / blockSize);
    const nibbles = (x: T, count: number) => {
      const xf = tf.cast(x, 'float32');
      const lo = tf.cast(tf.mod(xf, 16), 'float32');
      const hi = tf.cast(tf.floorDiv(xf, 16), 'float32');
      const both = tf.reshape(tf.stack([lo, hi], -1), [...x.shape.slice(0, -1), x.shape[x.rank - 1]! * 2]);
      return count === both.shape[both.rank - 1] ? both : tf.slice(both, both.shape.map(() => 0), [...both.shape.slice(0, -1), count]);
    };
    const q = tf.cast(bits === 8 ? w.data : nibbles(w.data, blockSize), 'float32');
    const zp = w.zeroPoints
      ? tf.reshape(tf.cast(bits === 8 ? w.zeroPoints : nibbles(w.zeroPoints, blocks), 'float32'), [n, blocks, 1])
      : tf.scalar(1 << (bits - 1));
    const values = tf.reshape(tf.mul(tf.sub(q, zp), tf.reshape(w.scales, [n, blocks, 1])), [n, blocks * blockSize]);
    return blocks * blockSize === k ? values : tf.slice(values, [0, 0], [n, k]);
  });
}

/** torch.nn.LSTM's equations unrolled, one direction at a time: x [n, in] → [n, 2h]. */
function bilstm(x: T, fwd: LstmWeights<T>, bwd: LstmWeights<T>): T {
  const n = x.shape[0]!;
  const direction = (p: LstmWeights<T>, reverse: boolean): T => {
    const hs = p.whh.shape[1]!;
    const gates = tf.add(tf.matMul(x, p.wih, false, true), tf.add(p.bih, p.bhh)); // [n, 4h]
    const out: T[] = new Array(n);
    let h: T | null = null;
    let c: T | null = null;
    for (let k = 0; k < n; k++) {
      const t = reverse ? n - 1 - k : k;
      let z = tf.slice(gates, [t, 0], [1, 4 * hs]);
      if (h) z = tf.add(z, tf.matMul(h, p.whh, false, true));
      const [i, f, g, o] = tf.split(z, 4, 1) as [T, T, T, T];
      const ig = tf.mul(tf.sigmoid(i), tf.tanh(g));
      c = c ? tf.add(tf.mul(tf.sigmoid(f), c), ig) : ig;
      h = tf.mul(tf.sigmoid(o), tf.tanh(c));
      out[t] = h;
    }
    return tf.concat(out, 0);
  };
  return tf.concat([direction(fwd, false), direction(bwd, true)], 1);
}

/** The op vocabulary on tfjs tensors (the test oracle): every op is differentiable through tfjs's tape. */
export const tfOps: Ops<T> = {
  shape: (x) => x.shape.slice(),
  scalar: (v) => tf.scalar(v),
  constInt: (values, shape) => tf.tensor(Int32Array.from(values), shape, 'int32'),
  constFloat: (values, shape) => tf.tensor(Float32Array.from(values), shape, 'float32'),

  add: (a, b) => tf.add(a, b),
  sub: (a, b) => tf.sub(a, b),
  mul: (a, b) => tf.mul(a, b),
  div: (a, b) => tf.div(a, b),
  scale: (x, s) => tf.mul(x, s),
  neg: (x) => tf.neg(x),
  exp: (x) => tf.exp(x),
  sqrt: (x) => tf.sqrt(x),
  tanh: (x) => tf.tanh(x),
  sigmoid: (x) => tf.sigmoid(x),
  relu: (x) => tf.relu(x),
  gelu,
  geluTanh,
  silu: (x) => tf.mul(x, tf.sigmoid(x)),
  cos: (x) => tf.cos(x),
  sin: (x) => tf.sin(x),

  matmul,
  linear,
  dense: (x, w, bias) => {
    const y = matmul(x, w, true);
    return bias ? tf.add(y, bias) : y;
  },
  // dequantize, then the float matmul: an independent statement of what the quantized kernel computes
  quantizedDense: (x, w, bias) => {
    const y = matmul(x, dequantizeTf(w), true);
    return bias ? tf.add(y, bias) : y;
  },
  quantized: (w, layout) => (layout === 'out-in' ? dequantizeTf(w) : tf.transpose(dequantizeTf(w))),

  sum: (x, axis, keepDims = false) => tf.sum(x, axis, keepDims),
  mean: (x, axis, keepDims = false) => tf.mean(x, axis, keepDims),
  max: (x, axis, keepDims = false) => tf.max(x, axis, keepDims),
  softmax: (x, axis = -1) => alongLastAxis(x, axis, (t) => tf.softmax(t)),
  logSoftmax: (x, axis = -1) => alongLastAxis(x, axis, (t) => tf.logSoftmax(t)),
  layerNorm,
  rmsNorm,
  bilstm,

  gather,
  concat: (xs, axis) => tf.concat(xs, axis),
  slice: (x, begin, size) => tf.slice(x, begin, size),
  transpose: (x, perm) => tf.transpose(x, perm),
  reshape: (x, shape) => tf.reshape(x, shape),
  expandDims: (x, axis) => tf.expandDims(x, axis),
  expand: (x, shape) => tf.broadcastTo(x, shape),
  cast: (x, dtype) => tf.cast(x, dtype),
  checkpoint: (x) => x,
  dropout: (x) => x,
};
