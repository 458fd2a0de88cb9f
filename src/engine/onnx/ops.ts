import type { LstmWeights, Ops, QuantizedTensors, WeightLayout } from '../ops.js';
import { blockCount, rowBytes } from '../quant.js';
import { Graph, Sym, type DType } from './graph.js';
import { lstmLayer } from './lstm.js';
import { ELEM } from './proto.js';

const GELU_TANH_C = Math.sqrt(2 / Math.PI);

function norm(axis: number, rank: number): number {
  const a = axis < 0 ? rank + axis : axis;
  if (a < 0 || a >= rank) throw new Error(`onnx ops: axis ${axis} out of range for rank ${rank}`);
  return a;
}

export function broadcastShape(a: number[], b: number[], what: string): number[] {
  const r = Math.max(a.length, b.length);
  const out: number[] = [];
  for (let i = 0; i < r; i++) {
    const x = a[a.length - r + i] ?? 1;
    const y = b[b.length - r + i] ?? 1;
    if (x !== y && x !== 1 && y !== 1) throw new Error(`onnx ${what}: shapes [${a}] and [${b}] do not broadcast`);
    out.push(x === 1 ? y : x);
  }
  return out;
}

/**
 * A dropout mask input: each run feeds `shape` values, 0 with probability `rate` and 1 / (1 − rate) otherwise
 * (from the caller's seeded stream, so that a resumed run draws the same masks).
 */
export interface DropoutMask {
  name: string;
  shape: number[];
  rate: number;
}

/**
 * The op vocabulary on symbolic tensors: every call appends ONNX nodes to `graph` and returns the result with
 * its inferred shape. Helpers beyond Ops<Sym> (sumTo, expandTo, pad, ...) serve the gradient rules.
 */
export class OnnxOps implements Ops<Sym> {
  /** quantized weights by the name of the value standing for them (`quantized`) */
  private readonly handles = new Map<string, { w: QuantizedTensors<Sym>; layout: WeightLayout }>();
  /** quantized weights by the name of their data tensor (what a MatMulNBits node reads; its gradient rule looks it up) */
  private readonly byData = new Map<string, QuantizedTensors<Sym>>();

  /**
   * The dropout masks the graph reads (one input each, fed per run: see DropoutMask) when it is built as a training
   * program with dropout on; null: `dropout` is the identity.
   */
  dropoutMasks: DropoutMask[] | null = null;

  constructor(readonly graph: Graph) {}

  shape(x: Sym): number[] {
    return x.shape.slice();
  }

  scalar(v: number): Sym {
    return this.graph.constant(Float32Array.of(v), [], 'float32');
  }

  constInt(values: Int32Array | number[], shape: number[]): Sym {
    return this.graph.constant(Int32Array.from(values), shape, 'int32');
  }

  constFloat(values: Float32Array | number[], shape: number[]): Sym {
    return this.graph.constant(Float32Array.from(values), shape, 'float32');
  }

  private binary(op: string, a: Sym, b: Sym): Sym {
    if (a.dtype !== b.dtype) throw new Error(`onnx ${op}: dtypes ${a.dtype} and ${b.dtype} differ`);
    return this.graph.op1(op, [a, b], broadcastShape(a.shape, b.shape, op), a.dtype);
  }

  private unary(op: string, x: Sym, attrs?: Record<string, number>, domain?: string): Sym {
    return this.graph.op1(op, [x], x.shape, x.dtype, attrs, domain);
  }

  add(a: Sym, b: Sym): Sym { return this.binary('Add', a, b); }
  sub(a: Sym, b: Sym): Sym { return this.binary('Sub', a, b); }
  mul(a: Sym, b: Sym): Sym { return this.binary('Mul', a, b); }
  div(a: Sym, b: Sym): Sym { return this.binary('Div', a, b); }
  scale(x: Sym, s: number): Sym { return this.mul(x, this.scalar(s)); }
  neg(x: Sym): Sym { return this.unary('Neg', x); }
  exp(x: Sym): Sym { return this.unary('Exp', x); }
  sqrt(x: Sym): Sym { return this.unary('Sqrt', x); }
  tanh(x: Sym): Sym { return this.unary('Tanh', x); }
  sigmoid(x: Sym): Sym { return this.unary('Sigmoid', x); }
  relu(x: Sym): Sym { return this.unary('Relu', x); }
  /** ONNX Runtime's fused contrib kernels (com.microsoft): exact erf GELU and the tanh approximation. */
  gelu(x: Sym): Sym { return this.unary('Gelu', x, undefined, 'com.microsoft'); }
  geluTanh(x: Sym): Sym { return this.unary('FastGelu', x, undefined, 'com.microsoft'); }
  silu(x: Sym): Sym { return this.mul(x, this.sigmoid(x)); }
  erf(x: Sym): Sym { return this.unary('Erf', x); }
  cos(x: Sym): Sym { return this.unary('Cos', x); }
  sin(x: Sym): Sym { return this.unary('Sin', x); }

  matmul(a: Sym, b: Sym, transposeB = false): Sym {
    // a quantized [V, H] output projection times rows [N, H]ᵀ: the rows through the quantized kernel, transposed
    const h = this.handles.get(a.name);
    if (h?.layout === 'out-in' && transposeB && b.rank === 2) return this.transpose(this.quantizedDense(b, h.w), [1, 0]);
    return this.matmulTransposed(a, b, false, transposeB);
  }

  /**
   * a @ b over the last two axes with either operand transposed. Matrices go through Gemm, which reads a
   * transposed operand in place (a Transpose of a weight would, under constant folding, become a second copy
   * of it), and so do batched rows times a matrix (the rows folded into one); other batched operands go through
   * Transpose + MatMul, which ONNX Runtime fuses into its FusedMatMul.
   */
  matmulTransposed(a: Sym, b: Sym, transA: boolean, transB: boolean): Sym {
    if (a.rank < 2 || b.rank < 2) throw new Error(`onnx MatMul: operands must have rank >= 2, got [${a.shape}] and [${b.shape}]`);
    const last2 = (x: Sym, t: boolean) => (t ? (x.shape.slice(-2).reverse() as [number, number]) : (x.shape.slice(-2) as [number, number]));
    const [m, k] = last2(a, transA);
    const [k2, n] = last2(b, transB);
    if (k !== k2) throw new Error(`onnx MatMul: inner dimensions differ: [${a.shape}]${transA ? 'ᵀ' : ''} x [${b.shape}]${transB ? 'ᵀ' : ''}`);
    const batch = broadcastShape(a.shape.slice(0, -2), b.shape.slice(0, -2), 'MatMul');
    if (!transA && !transB) return this.graph.op1('MatMul', [a, b], [...batch, m, n], a.dtype);
    if (a.rank === 2 && b.rank === 2) return this.graph.op1('Gemm', [a, b], [m, n], a.dtype, { transA: +transA, transB: +transB });
    if (!transA && b.rank === 2) {
      // transB here: the plain product returned above
      const rows = this.graph.op1('Gemm', [this.reshape(a, [-1, k]), b], [a.size / k, n], a.dtype, { transB: 1 });
      return this.reshape(rows, [...batch, m, n]);
    }
    const t = (x: Sym, on: boolean) => (on ? this.transpose(x, swapLast(x.rank)) : x);
    return this.graph.op1('MatMul', [t(a, transA), t(b, transB)], [...batch, m, n], a.dtype);
  }

  linear(x: Sym, w: Sym, bias?: Sym): Sym {
    const h = this.handles.get(w.name);
    if (h?.layout === 'in-out') return this.quantizedDense(x, h.w, bias);
    return this.gemm(x, w, bias, false);
  }

  dense(x: Sym, w: Sym, bias?: Sym): Sym {
    const h = this.handles.get(w.name);
    if (h?.layout === 'out-in') return this.quantizedDense(x, h.w, bias);
    return this.gemm(x, w, bias, true);
  }

  /**
   * x [..., k] times the quantized Ŵ [n, k] transposed, + bias [n]: ORT's com.microsoft.MatMulNBits for blocks,
   * DynamicQuantizeMatMul (x quantized to uint8 per run, int8 weights with a scale per column) per channel.
   */
  quantizedDense(x: Sym, w: QuantizedTensors<Sym>, bias?: Sym): Sym {
    if (x.shape[x.rank - 1] !== w.k) throw new Error(`onnx quantized matmul: [${x.shape}] times a quantized [${w.n}, ${w.k}]ᵀ: inner dimensions differ`);
    if (bias && (bias.rank !== 1 || bias.shape[0] !== w.n)) throw new Error(`onnx quantized matmul: bias [${bias.shape}] for ${w.n} outputs`);
    if (w.signed) {
      if (!w.columns) throw new Error('onnx DynamicQuantizeMatMul: a per-channel weight without its [k, n] integers');
      this.byData.set(w.columns.name, w);
      return this.integerMatMul(x, w.columns, w.scales, w.n, bias);
    }
    this.byData.set(w.data.name, w);
    const absent = this.graph.absent;
    const inputs = [x, w.data, w.scales, w.zeroPoints ?? absent, absent, bias ?? absent];
    while (inputs[inputs.length - 1] === absent) inputs.pop();
    // accuracy_level 4: the activations quantized to int8 per block, integer products (VNNI / AVX-512 where the CPU
    // has them); 0: float32 products of the dequantized weight
    const accuracy = w.activations === 'float32' ? 0 : 4;
    const attrs = { K: w.k, N: w.n, bits: w.bits, block_size: w.blockSize, accuracy_level: accuracy };
    return this.graph.op1('MatMulNBits', inputs, [...x.shape.slice(0, -1), w.n], 'float32', attrs, 'com.microsoft');
  }

  /** x [..., k] times int8 b [k, n] with scales (per column [n], or one), x quantized to uint8 on the way. */
  integerMatMul(x: Sym, b: Sym, scales: Sym, n: number, bias?: Sym): Sym {
    const inputs = [x, b, scales, ...(bias ? [this.graph.absent, bias] : [])];
    return this.graph.op1('DynamicQuantizeMatMul', inputs, [...x.shape.slice(0, -1), n], 'float32', undefined, 'com.microsoft');
  }

  /**
   * dY Ŵ for a per-channel Ŵ = diag(s) q: (dY ⊙ s) q, the scales folded into dY so the same int8 q [n, k]
   * is the GEMM's operand (the gradient to a quantized dense's input).
   */
  channelDenseBackward(g: Sym, w: QuantizedTensors<Sym>): Sym {
    return this.integerMatMul(this.mul(g, w.scales), w.data, this.scalar(1), w.k);
  }

  /** The quantized weight a MatMulNBits or DynamicQuantizeMatMul node reads, by its data tensor. */
  quantizedOf(data: Sym): QuantizedTensors<Sym> | undefined {
    return this.byData.get(data.name);
  }

  /**
   * The value standing for a quantized weight: its dequantized values in `layout` (nodes that the serialised
   * model keeps only if something other than the quantized kernels reads them).
   */
  quantized(w: QuantizedTensors<Sym>, layout: WeightLayout): Sym {
    const deq = this.dequantize(w);
    const value = layout === 'out-in' ? deq : this.transpose(deq, [1, 0]);
    const sym = this.graph.op1('Identity', [value], value.shape, 'float32');
    this.handles.set(sym.name, { w, layout });
    return sym;
  }

  /**
   * x, read no earlier than `dep` exists: x reshaped to its own shape, the shape computed from one element of dep
   * (its integer part times zero, so no value of dep changes it). ONNX has no control edges, and a value computed
   * from constants alone may otherwise run at the start of a run and stay alive until it is read. The Reshape
   * aliases x (no copy); a Where(false, ·, x) gate costs a pass over x (several ms a megabyte on ORT's CPU).
   */
  after(x: Sym, dep: Sym): Sym {
    const one = this.reshape(this.slice(dep, dep.shape.map(() => 0), dep.shape.map(() => 1)), [1]);
    if (x.rank === 0) {
      const never = this.graph.constant(Uint8Array.of(0), [], 'bool');
      return this.graph.op1('Where', [never, this.reshape(this.cast(one, x.dtype), []), x], x.shape, x.dtype);
    }
    const zero = this.graph.op1('Mul', [this.cast(one, 'int64'), this.graph.ints([0])], [1], 'int64');
    const shape = this.graph.op1('Add', [this.graph.ints(x.shape), zero], [x.rank], 'int64');
    return this.graph.op1('Reshape', [x, shape], x.shape, x.dtype);
  }

  /**
   * Ŵ [n, k] in float32: (q - zero point) · scale per block, from the uint8 data (4-bit: two values a byte, low
   * nibble first); with `notBefore`, computed only once that value exists (a backward pass's just-in-time copy).
   */
  dequantize(w: QuantizedTensors<Sym>, notBefore?: Sym): Sym {
    const { n, k, bits, blockSize } = w;
    const blocks = blockCount(k, blockSize);
    const gated = (x: Sym) => (notBefore ? this.after(x, notBefore) : x);
    if (w.signed) return this.mul(this.cast(gated(w.data), 'float32'), this.reshape(w.scales, [n, 1]));
    const ints = gated(this.cast(w.data, 'int32'));
    const nibbles = (x: Sym, count: number) => {
      // [.., m] bytes → [.., 2m] values: low nibble, then high nibble of each byte
      const sixteen = this.graph.constant(Int32Array.of(16), [], 'int32');
      const lo = this.graph.op1('Mod', [x, sixteen], x.shape, 'int32', { fmod: 0 });
      const hi = this.graph.op1('Div', [x, sixteen], x.shape, 'int32');
      const both = this.concat([this.expandDims(lo, -1), this.expandDims(hi, -1)], -1);
      const flat = this.reshape(both, [...x.shape.slice(0, -1), x.shape[x.rank - 1]! * 2]);
      return count === flat.shape[flat.rank - 1] ? flat : this.slice(flat, flat.shape.map(() => 0), [...flat.shape.slice(0, -1), count]);
    };
    const q = this.cast(bits === 8 ? ints : nibbles(ints, blockSize), 'float32'); // [n, blocks, blockSize]
    let zp: Sym;
    if (!w.zeroPoints) zp = this.scalar(1 << (bits - 1));
    else {
      const z = gated(this.cast(w.zeroPoints, 'int32'));
      zp = this.reshape(this.cast(bits === 8 ? z : nibbles(z, blocks), 'float32'), [n, blocks, 1]);
    }
    const values = this.mul(this.sub(q, zp), this.reshape(w.scales, [n, blocks, 1]));
    const flat = this.reshape(values, [n, blocks * blockSize]);
    return blocks * blockSize === k ? flat : this.slice(flat, [0, 0], [n, k]);
  }

  /**
   * x[..., in] @ op(w) + bias as one ONNX Gemm over the rows (the bias is added by the matmul kernel itself, not by a
   * pass of its own); `transB`: w is [out, in].
   */
  private gemm(x: Sym, w: Sym, bias: Sym | undefined, transB: boolean): Sym {
    if (w.rank !== 2) throw new Error(`onnx Gemm: weight must be a matrix, got [${w.shape}]`);
    const k = x.shape[x.rank - 1]!;
    const [wk, n] = transB ? [w.shape[1]!, w.shape[0]!] : [w.shape[0]!, w.shape[1]!];
    if (k !== wk) throw new Error(`onnx Gemm: [${x.shape}] times [${w.shape}]${transB ? 'ᵀ' : ''}: inner dimensions differ`);
    const lead = x.shape.slice(0, -1);
    const rows = lead.reduce((a, b) => a * b, 1);
    const x2 = x.rank === 2 ? x : this.reshape(x, [rows, k]);
    const y = this.graph.op1('Gemm', bias ? [x2, w, bias] : [x2, w], [rows, n], 'float32', { transB: +transB });
    return x.rank === 2 ? y : this.reshape(y, [...lead, n]);
  }

  bilstm(x: Sym, forward: LstmWeights<Sym>, backward: LstmWeights<Sym>): Sym {
    return lstmLayer(this, x, forward, backward);
  }

  sum(x: Sym, axis: number, keepDims = false): Sym {
    return this.reduce('ReduceSum', x, [norm(axis, x.rank)], keepDims);
  }

  mean(x: Sym, axis: number, keepDims = false): Sym {
    return this.reduce('ReduceMean', x, [norm(axis, x.rank)], keepDims);
  }

  max(x: Sym, axis: number, keepDims = false): Sym {
    return this.reduce('ReduceMax', x, [norm(axis, x.rank)], keepDims);
  }

  /** Opset 17: ReduceSum takes axes as an input, ReduceMean/ReduceMax as an attribute. */
  reduce(op: 'ReduceSum' | 'ReduceMean' | 'ReduceMax', x: Sym, axes: number[], keepDims: boolean): Sym {
    const shape = keepDims ? x.shape.map((d, i) => (axes.includes(i) ? 1 : d)) : x.shape.filter((_, i) => !axes.includes(i));
    const keepdims = keepDims ? 1 : 0;
    if (op === 'ReduceSum') return this.graph.op1(op, [x, this.graph.ints(axes)], shape, x.dtype, { keepdims });
    return this.graph.op1(op, [x], shape, x.dtype, { axes, keepdims });
  }

  softmax(x: Sym, axis = -1): Sym {
    return this.unary('Softmax', x, { axis: norm(axis, x.rank) });
  }

  logSoftmax(x: Sym, axis = -1): Sym {
    return this.unary('LogSoftmax', x, { axis: norm(axis, x.rank) });
  }

  /** LayerNormalization over the last axis; also outputs mean and 1/std, which its gradient reuses. */
  layerNorm(x: Sym, gamma: Sym, beta: Sym, eps: number): Sym {
    const stat = [...x.shape.slice(0, -1), 1];
    return this.graph.node(
      'LayerNormalization',
      [x, gamma, beta],
      [{ shape: x.shape, dtype: 'float32' }, { shape: stat, dtype: 'float32' }, { shape: stat, dtype: 'float32' }],
      { axis: -1, epsilon: { float: eps } },
    )[0]!;
  }

  rmsNorm(x: Sym, weight: Sym, eps: number): Sym {
    const ms = this.mean(this.mul(x, x), -1, true);
    return this.mul(this.div(x, this.sqrt(this.add(ms, this.scalar(eps)))), weight);
  }

  gather(table: Sym, ids: Sym, axis = 0): Sym {
    const h = this.handles.get(table.name);
    if (h?.layout === 'out-in' && norm(axis, table.rank) === 0) return this.gatherQuantized(h.w, ids);
    const ax = norm(axis, table.rank);
    const shape = [...table.shape.slice(0, ax), ...ids.shape, ...table.shape.slice(ax + 1)];
    return this.graph.op1('Gather', [table, ids], shape, table.dtype, { axis: ax });
  }

  /** Rows of a quantized Ŵ [n, k] at `ids`, dequantized (ORT's com.microsoft.GatherBlockQuantized): ids.shape + [k]. */
  gatherQuantized(w: QuantizedTensors<Sym>, ids: Sym): Sym {
    if (w.signed) return this.gather(this.dequantize(w), ids);
    const blocks = blockCount(w.k, w.blockSize);
    const data = this.reshape(w.data, [w.n, rowBytes(w.k, w).data]);
    const inputs = [data, ids, w.scales, ...(w.zeroPoints ? [w.zeroPoints] : [])];
    const attrs = { gather_axis: 0, quantize_axis: 1, block_size: w.blockSize, bits: w.bits };
    const rows = this.graph.op1('GatherBlockQuantized', inputs, [...ids.shape, blocks * w.blockSize], 'float32', attrs, 'com.microsoft');
    if (blocks * w.blockSize === w.k) return rows;
    return this.slice(rows, rows.shape.map(() => 0), [...ids.shape, w.k]);
  }

  concat(xs: Sym[], axis: number): Sym {
    if (xs.length === 1) return xs[0]!;
    const ax = norm(axis, xs[0]!.rank);
    const shape = xs[0]!.shape.slice();
    shape[ax] = xs.reduce((n, x) => n + x.shape[ax]!, 0);
    return this.graph.op1('Concat', xs, shape, xs[0]!.dtype, { axis: ax });
  }

  slice(x: Sym, begin: number[], size: number[]): Sym {
    const sizes = size.map((s, i) => (s < 0 ? x.shape[i]! - begin[i]! : s));
    const axes = [...begin.keys()];
    const ends = begin.map((b, i) => b + sizes[i]!);
    const g = this.graph;
    return g.op1('Slice', [x, g.ints(begin), g.ints(ends), g.ints(axes)], sizes, x.dtype);
  }

  transpose(x: Sym, perm: number[]): Sym {
    if (perm.every((p, i) => p === i)) return x;
    return this.graph.op1('Transpose', [x], perm.map((p) => x.shape[p]!), x.dtype, { perm });
  }

  reshape(x: Sym, shape: number[]): Sym {
    const known = shape.filter((d) => d !== -1).reduce((a, b) => a * b, 1);
    const resolved = shape.map((d) => (d === -1 ? x.size / known : d));
    if (resolved.reduce((a, b) => a * b, 1) !== x.size) {
      throw new Error(`onnx Reshape: cannot reshape [${x.shape}] to [${shape}]`);
    }
    if (resolved.join(',') === x.shape.join(',')) return x;
    return this.graph.op1('Reshape', [x, this.graph.ints(resolved)], resolved, x.dtype);
  }

  expandDims(x: Sym, axis: number): Sym {
    const ax = axis < 0 ? x.rank + 1 + axis : axis;
    const shape = [...x.shape.slice(0, ax), 1, ...x.shape.slice(ax)];
    return this.reshape(x, shape);
  }

  cast(x: Sym, dtype: DType): Sym {
    if (x.dtype === dtype) return x;
    return this.graph.op1('Cast', [x], x.shape, dtype, { to: ELEM[dtype] });
  }

  dropout(x: Sym, rate: number): Sym {
    if (!this.dropoutMasks || !(rate > 0)) return x;
    const name = `dropout.mask:${this.dropoutMasks.length}`;
    this.dropoutMasks.push({ name, shape: x.shape.slice(), rate });
    return this.mul(x, this.graph.input(name, x.shape, 'float32'));
  }

  checkpoint(x: Sym): Sym {
    const marks = this.graph.checkpoints;
    if (marks[marks.length - 1] !== this.graph.nodes.length) marks.push(this.graph.nodes.length);
    return x;
  }

  // -------------------------------------------------------------------------------------------------------
  // helpers for gradient rules

  /** Sums broadcast axes of g away so it has `shape`. */
  sumTo(g: Sym, shape: number[]): Sym {
    if (g.shape.join(',') === shape.join(',')) return g;
    const lead = g.rank - shape.length;
    const axes: number[] = [];
    for (let i = 0; i < g.rank; i++) if (i < lead || (shape[i - lead] === 1 && g.shape[i] !== 1)) axes.push(i);
    const reduced = axes.length ? this.reduce('ReduceSum', g, axes, true) : g;
    return this.reshape(reduced, shape);
  }

  expand(x: Sym, shape: number[]): Sym {
    return this.expandTo(x, broadcastShape(x.shape, shape, 'Expand'));
  }

  expandTo(x: Sym, shape: number[]): Sym {
    if (x.shape.join(',') === shape.join(',')) return x;
    return this.graph.op1('Expand', [x, this.graph.ints(shape)], shape, x.dtype);
  }

  /** x cut along `axis` into `parts` equal pieces, one Split node. */
  split(x: Sym, axis: number, parts: number): Sym[] {
    const ax = norm(axis, x.rank);
    if (parts === 1) return [x];
    const size = x.shape[ax]! / parts;
    if (!Number.isInteger(size)) throw new Error(`onnx Split: axis ${ax} of [${x.shape}] does not split into ${parts}`);
    const outs = Array.from({ length: parts }, () => ({ shape: x.shape.map((d, i) => (i === ax ? size : d)), dtype: x.dtype }));
    return this.graph.node('Split', [x, this.graph.ints(Array(parts).fill(size))], outs, { axis: ax });
  }

  /** Zero padding: `before[i]` and `after[i]` elements around axis i. */
  pad(x: Sym, before: number[], after: number[]): Sym {
    const shape = x.shape.map((d, i) => d + before[i]! + after[i]!);
    return this.graph.op1('Pad', [x, this.graph.ints([...before, ...after])], shape, x.dtype, { mode: 'constant' });
  }

  zeros(shape: number[]): Sym {
    const zero = this.graph.constant(Float32Array.of(0), [1], 'float32');
    return this.graph.op1('Expand', [zero, this.graph.ints(shape)], shape, 'float32');
  }

  greater(a: Sym, b: Sym): Sym {
    return this.graph.op1('Greater', [a, b], broadcastShape(a.shape, b.shape, 'Greater'), 'bool');
  }

  equal(a: Sym, b: Sym): Sym {
    return this.graph.op1('Equal', [a, b], broadcastShape(a.shape, b.shape, 'Equal'), 'bool');
  }
}

export function swapLast(rank: number): number[] {
  const perm = [...Array(rank).keys()];
  [perm[rank - 1], perm[rank - 2]] = [perm[rank - 2]!, perm[rank - 1]!];
  return perm;
}

export const GELU_TANH = { c: GELU_TANH_C, cubic: 0.044715 };
