import { Sym } from './graph.js';
import type { Graph, GraphNode } from './graph.js';
import { lstmGrads } from './lstm.js';
import { GELU_TANH, OnnxOps } from './ops.js';

type Rule = (o: OnnxOps, n: GraphNode, g: Sym, needs: boolean[]) => (Sym | undefined)[];

/** gradients made by scattering rows into zeros (Gather's rule), with what was scattered */
const scatterParts = new WeakMap<Sym, { idx: Sym; updates: Sym }>();

const INV_SQRT_2PI = 1 / Math.sqrt(2 * Math.PI);

/**
 * Gradients of y = op(a) @ op(b) (op: optional transpose of the last two axes), reduced to the operands' shapes
 * (a 2-D weight folds the batch in).
 */
function matmulGrads(o: OnnxOps, a: Sym, b: Sym, g: Sym, needs: boolean[], transA: boolean, transB: boolean): (Sym | undefined)[] {
  if (transA) throw new Error('onnx autodiff: a matmul with transA is not differentiated');
  // y = a @ op(b): da = g @ op(b)ᵀ
  const ga = needs[0] ? o.sumTo(o.matmulTransposed(g, b, false, !transB), a.shape) : undefined;
  let gb: Sym | undefined;
  if (needs[1]) {
    // d op(b) = aᵀ @ g; for transB, db = gᵀ @ a
    if (b.rank === 2 && a.rank > 2) {
      const k = a.shape[a.rank - 1]!;
      const n = g.shape[g.rank - 1]!;
      const a2 = o.reshape(a, [-1, k]);
      const g2 = o.reshape(g, [-1, n]);
      gb = transB ? o.matmulTransposed(g2, a2, true, false) : o.matmulTransposed(a2, g2, true, false);
    } else {
      gb = o.sumTo(transB ? o.matmulTransposed(g, a, true, false) : o.matmulTransposed(a, g, true, false), b.shape);
    }
  }
  return [ga, gb];
}

const RULES: Record<string, Rule> = {
  Add: (o, n, g) => [o.sumTo(g, n.inputSyms[0]!.shape), o.sumTo(g, n.inputSyms[1]!.shape)],
  Sub: (o, n, g, needs) => [o.sumTo(g, n.inputSyms[0]!.shape), needs[1] ? o.sumTo(o.neg(g), n.inputSyms[1]!.shape) : undefined],
  Mul: (o, n, g, needs) => {
    const [a, b] = n.inputSyms as [Sym, Sym];
    return [needs[0] ? o.sumTo(o.mul(g, b), a.shape) : undefined, needs[1] ? o.sumTo(o.mul(g, a), b.shape) : undefined];
  },
  Div: (o, n, g, needs) => {
    const [a, b] = n.inputSyms as [Sym, Sym];
    const y = n.outputSyms[0]!;
    return [
      needs[0] ? o.sumTo(o.div(g, b), a.shape) : undefined,
      needs[1] ? o.sumTo(o.neg(o.div(o.mul(g, y), b)), b.shape) : undefined,
    ];
  },
  Neg: (o, _n, g) => [o.neg(g)],
  Exp: (o, n, g) => [o.mul(g, n.outputSyms[0]!)],
  Sqrt: (o, n, g) => [o.div(o.scale(g, 0.5), n.outputSyms[0]!)],
  Tanh: (o, n, g) => {
    const y = n.outputSyms[0]!;
    return [o.mul(g, o.sub(o.scalar(1), o.mul(y, y)))];
  },
  Sigmoid: (o, n, g) => {
    const y = n.outputSyms[0]!;
    return [o.mul(g, o.mul(y, o.sub(o.scalar(1), y)))];
  },
  Relu: (o, n, g) => {
    const positive = o.greater(n.outputSyms[0]!, o.scalar(0));
    return [o.graph.op1('Where', [positive, g, o.scalar(0)], g.shape, 'float32')];
  },
  Erf: (o, n, g) => {
    const x = n.inputSyms[0]!;
    return [o.mul(g, o.scale(o.exp(o.neg(o.mul(x, x))), 2 / Math.sqrt(Math.PI)))];
  },
  // d/dx x·Φ(x) = Φ(x) + x·φ(x)
  Gelu: (o, n, g) => {
    const x = n.inputSyms[0]!;
    const cdf = o.scale(o.add(o.scalar(1), o.erf(o.scale(x, Math.SQRT1_2))), 0.5);
    const pdf = o.scale(o.exp(o.scale(o.mul(x, x), -0.5)), INV_SQRT_2PI);
    return [o.mul(g, o.add(cdf, o.mul(x, pdf)))];
  },
  // y = 0.5x(1 + tanh(u)), u = c(x + a x³): dy/dx = 0.5(1 + t) + 0.5x(1 - t²)·c(1 + 3a x²)
  FastGelu: (o, n, g) => {
    const x = n.inputSyms[0]!;
    const x2 = o.mul(x, x);
    const u = o.scale(o.mul(x, o.add(o.scalar(1), o.scale(x2, GELU_TANH.cubic))), GELU_TANH.c);
    const t = o.tanh(u);
    const du = o.scale(o.add(o.scalar(1), o.scale(x2, 3 * GELU_TANH.cubic)), GELU_TANH.c);
    const dt = o.mul(o.sub(o.scalar(1), o.mul(t, t)), du);
    const dy = o.scale(o.add(o.add(o.scalar(1), t), o.mul(x, dt)), 0.5);
    return [o.mul(g, dy)];
  },
  MatMul: (o, n, g, needs) => matmulGrads(o, n.inputSyms[0]!, n.inputSyms[1]!, g, needs, false, false),
  // Y = A op(B) + C (A and Y matrices, no transA): the matmul rule, and C's gradient summed to its shape
  Gemm: (o, n, g, needs) => {
    if (n.attrs?.transA) throw new Error('onnx autodiff: Gemm with transA is not differentiated');
    const [ga, gb] = matmulGrads(o, n.inputSyms[0]!, n.inputSyms[1]!, g, needs, false, !!n.attrs?.transB);
    const c = n.inputSyms[2];
    return [ga, gb, c && needs[2] ? o.sumTo(g, c.shape) : undefined];
  },
  // Y = X Ŵᵀ + b for a frozen quantized Ŵ [n, k]: dX = dY Ŵ, as another quantized matmul when the weight carries
  // a quantized copy of Ŵᵀ, else dY times Ŵ dequantized; no gradient for the weight
  MatMulNBits: (o, n, g, needs) => {
    if (needs[1] || needs[2] || needs[3]) throw new Error('onnx autodiff: a quantized weight is frozen (no gradient)');
    const w = o.quantizedOf(n.inputSyms[1]!);
    if (!w) throw new Error(`onnx autodiff: MatMulNBits reads "${n.inputs[1]}", which is not a quantized weight of this graph`);
    let gx: Sym | undefined;
    if (needs[0]) gx = w.transposed ? o.quantizedDense(g, w.transposed) : o.matmul(g, o.dequantize(w, g));
    const bias = n.inputSyms[5];
    return [gx, undefined, undefined, undefined, undefined, bias && needs[5] ? o.sumTo(g, bias.shape) : undefined];
  },
  // Y = X Ŵᵀ + b for a frozen per-channel Ŵ = diag(s) q: dX = (dY ⊙ s) q through the same integer GEMM
  DynamicQuantizeMatMul: (o, n, g, needs) => {
    if (needs[1] || needs[2] || needs[3]) throw new Error('onnx autodiff: a quantized weight is frozen (no gradient)');
    const w = o.quantizedOf(n.inputSyms[1]!);
    if (!w) throw new Error(`onnx autodiff: DynamicQuantizeMatMul reads "${n.inputs[1]}", which is not a quantized weight of this graph`);
    const bias = n.inputSyms[4];
    return [needs[0] ? o.channelDenseBackward(g, w) : undefined, undefined, undefined, undefined, bias && needs[4] ? o.sumTo(g, bias.shape) : undefined];
  },
  Transpose: (o, n, g) => {
    const perm = n.attrs!.perm as number[];
    const inverse = perm.map((_, i) => perm.indexOf(i));
    return [o.transpose(g, inverse)];
  },
  Reshape: (o, n, g) => [o.reshape(g, n.inputSyms[0]!.shape)],
  Expand: (o, n, g) => [o.sumTo(g, n.inputSyms[0]!.shape)],
  Identity: (_o, _n, g) => [g],
  Cast: (o, n, g) => [n.inputSyms[0]!.dtype === 'float32' ? g : undefined],
  Concat: (o, n, g) => {
    const axis = n.attrs!.axis as number;
    let offset = 0;
    return n.inputSyms.map((x) => {
      const begin = g.shape.map((_, i) => (i === axis ? offset : 0));
      offset += x.shape[axis]!;
      return o.slice(g, begin, x.shape);
    });
  },
  Gather: (o, n, g, needs) => {
    if (!needs[0]) return [];
    const [table, ids] = n.inputSyms as [Sym, Sym];
    const axis = n.attrs!.axis as number;
    // a constant permutation of the rows (an LSTM's gate order): the inverse permutation, no scatter into zeros
    const inverse = axis === 0 ? inversePermutation(ids, table.shape[0]!) : null;
    if (inverse) return [o.gather(g, o.constInt(inverse, [inverse.length]))];
    const idx = o.reshape(o.cast(ids, 'int64'), [...ids.shape, 1]);
    const scatter = (shape: number[], updates: Sym) =>
      o.graph.op1('ScatterND', [o.zeros(shape), idx, updates], shape, 'float32', { reduction: 'add' });
    if (axis === 0) {
      const out = scatter(table.shape, g);
      scatterParts.set(out, { idx, updates: g });
      return [out];
    }
    // columns of a matrix (an untied output head restricted to candidates): scatter rows of the transpose
    if (axis !== 1 || table.rank !== 2 || ids.rank !== 1) throw new Error('onnx autodiff: Gather is differentiable along axis 0, or axis 1 of a matrix with 1-D ids');
    const [r, c] = table.shape as [number, number];
    return [o.transpose(scatter([c, r], o.transpose(g, [1, 0])), [1, 0])];
  },
  ReduceSum: (o, n, g) => [o.expandTo(o.reshape(g, keptShape(n)), n.inputSyms[0]!.shape)],
  ReduceMean: (o, n, g) => {
    const x = n.inputSyms[0]!;
    const count = x.size / n.outputSyms[0]!.size;
    return [o.expandTo(o.reshape(o.scale(g, 1 / count), keptShape(n)), x.shape)];
  },
  ReduceMax: (o, n, g) => {
    const x = n.inputSyms[0]!;
    const hit = o.cast(o.equal(x, o.reshape(n.outputSyms[0]!, keptShape(n))), 'float32');
    return [o.mul(o.expandTo(o.reshape(g, keptShape(n)), x.shape), hit)];
  },
  Softmax: (o, n, g) => {
    const y = n.outputSyms[0]!;
    const axis = n.attrs!.axis as number;
    return [o.mul(y, o.sub(g, o.sum(o.mul(g, y), axis, true)))];
  },
  LogSoftmax: (o, n, g) => {
    const y = n.outputSyms[0]!;
    return [o.sub(g, o.mul(o.exp(y), o.sum(g, n.attrs!.axis as number, true)))];
  },
  LSTM: lstmGrads,
  LayerNormalization: (o, n, g, needs) => {
    const [x, gamma, beta] = n.inputSyms as [Sym, Sym, Sym];
    const [, mean, invStd] = n.outputSyms as [Sym, Sym, Sym];
    const xhat = o.mul(o.sub(x, mean), invStd);
    let gx: Sym | undefined;
    if (needs[0]) {
      const gxhat = o.mul(g, gamma);
      const centered = o.sub(gxhat, o.mean(gxhat, -1, true));
      gx = o.mul(invStd, o.sub(centered, o.mul(xhat, o.mean(o.mul(gxhat, xhat), -1, true))));
    }
    return [gx, needs[1] ? o.sumTo(o.mul(g, xhat), gamma.shape) : undefined, needs[2] ? o.sumTo(g, beta.shape) : undefined];
  },
};

/** Where a Slice node's output starts in its input (steps of 1: as OnnxOps.slice makes them). */
function sliceBegin(n: GraphNode): number[] {
  const starts = readInts(n.inputSyms[1]!);
  const axes = readInts(n.inputSyms[3]!);
  const begin = n.inputSyms[0]!.shape.map(() => 0);
  axes.forEach((ax, i) => (begin[ax] = starts[i]!));
  return begin;
}

/** The gradient of a slice starting at `begin` of a value shaped `shape`: g zero-padded to that shape. */
function padSlice(o: OnnxOps, shape: number[], g: Sym, begin: number[]): Sym {
  return o.pad(g, begin, shape.map((d, i) => d - begin[i]! - g.shape[i]!));
}

/**
 * The summed gradients of slices of one value: their concatenation when they tile it along one axis, else the
 * sum of each zero-padded.
 */
function joinSlices(o: OnnxOps, shape: number[], pieces: { g: Sym; begin: number[] }[]): Sym {
  const differ = shape.map((d, i) => pieces.some((p) => p.begin[i] !== 0 || p.g.shape[i] !== d));
  const axis = differ.indexOf(true);
  if (axis >= 0 && differ.lastIndexOf(true) === axis) {
    const ordered = pieces.slice().sort((a, b) => a.begin[axis]! - b.begin[axis]!);
    let at = 0;
    for (const p of ordered) at = p.begin[axis] === at ? at + p.g.shape[axis]! : NaN;
    if (at === shape[axis]) return o.concat(ordered.map((p) => p.g), axis);
  }
  return pieces.map((p) => padSlice(o, shape, p.g, p.begin)).reduce((a, b) => o.add(a, b));
}

/** shape of a reduction's output with the reduced axes kept as 1 */
function keptShape(n: GraphNode): number[] {
  const x = n.inputSyms[0]!;
  const axes = n.op === 'ReduceSum' ? readInts(n.inputSyms[1]!) : (n.attrs!.axes as number[]);
  return x.shape.map((d, i) => (axes.includes(i) ? 1 : d));
}

/** For constant 1-D ids that hold each of 0..rows−1 once, the inverse permutation; else null. */
function inversePermutation(ids: Sym, rows: number): number[] | null {
  if (ids.rank !== 1 || ids.shape[0] !== rows) return null;
  const data = ids.graph.constantData(ids);
  if (!data) return null;
  const inverse = new Array<number>(rows).fill(-1);
  for (let k = 0; k < rows; k++) {
    const j = Number(data[k]);
    if (!(j >= 0 && j < rows) || inverse[j] !== -1) return null;
    inverse[j] = k;
  }
  return inverse;
}

function readInts(s: Sym): number[] {
  const data = s.graph.constantData(s);
  if (!data) throw new Error(`onnx autodiff: "${s.name}" is not a constant`);
  return Array.from(data as ArrayLike<number | bigint>, Number);
}

/**
 * Reverse-mode gradients of scalar-seeded `y` (seed `dy`, same shape) with respect to `wrt`: appends the
 * gradient nodes to y's graph. Only nodes on a path from some `wrt` to `y` get gradient nodes; a `wrt` that `y`
 * does not depend on gets zeros.
 */
export function gradients(o: OnnxOps, y: Sym, dy: Sym, wrt: Sym[], opts: GradientOptions = {}): Sym[] {
  const graph = o.graph;
  const nodes = graph.nodes.slice();
  if (opts.recompute) return backward(o, nodes, y, dy, wrt, new Recompute(o, nodes), null);
  if (!opts.savedActivations || opts.savedActivations === 'float32') return backward(o, nodes, y, dy, wrt, null, null);
  // which forward values the backward reads: from a first construction of it, then taken back
  backward(o, nodes, y, dy, wrt, null, null);
  const min = opts.halfMinSize ?? HALF_MIN_SIZE;
  // activations only: a value computed from weights and constants alone (an LSTM's stacked weights) stays float32
  const weights = opts.weights ?? new Set<string>();
  const activations = varyingValues(graph, nodes, graph.inputs.filter((s) => !weights.has(s.name)));
  const saved = savedForBackward(graph, nodes.length).filter((s) => s.dtype === 'float32' && s.size >= min && activations.has(s.name));
  graph.nodes.length = nodes.length;
  return backward(o, nodes, y, dy, wrt, null, new HalfSaved(o, nodes, new Set(saved.map((s) => s.name))));
}

export interface GradientOptions {
  /** gradient checkpointing: recompute each segment between `Ops.checkpoint`s in the backward pass */
  recompute?: boolean;
  /** 'float16': the forward values the backward reads are kept at 16 bits in between (not with recompute) */
  savedActivations?: 'float32' | 'float16';
  /** values smaller than this (elements) stay float32 (default 65,536) */
  halfMinSize?: number;
  /** the graph inputs that are weights (with savedActivations: values depending on them alone stay float32) */
  weights?: ReadonlySet<string>;
}

const HALF_MIN_SIZE = 1 << 16;

function backward(o: OnnxOps, nodes: GraphNode[], y: Sym, dy: Sym, wrt: Sym[], recompute: Recompute | null, half: HalfSaved | null): Sym[] {
  const active = new Set(wrt.map((s) => s.name));
  for (const n of nodes) {
    if (n.inputs.some((i) => active.has(i))) for (const s of n.outputSyms) if (s.dtype === 'float32') active.add(s.name);
  }
  const pending = new Map<string, Sym[]>([[y.name, [dy]]]);
  // the gradients of slices of a value, kept apart until the value's gradient is complete: slices that tile it
  // along one axis (a fused q | k | v projection split into three) are concatenated, one pass instead of a
  // zero-padded copy of each and their sum
  const sliced = new Map<string, { shape: number[]; pieces: { g: Sym; begin: number[] }[] }>();
  const total = (name: string): Sym | undefined => {
    const cut = sliced.get(name);
    if (cut) {
      sliced.delete(name);
      const list = pending.get(name) ?? [];
      list.push(joinSlices(o, cut.shape, cut.pieces));
      pending.set(name, list);
    }
    const parts = pending.get(name);
    if (!parts) return undefined;
    // a gathered table's gradient rows are scattered straight into the rest of its gradient (a tied embedding's
    // output-projection part) instead of into zeros that are then added: two passes over the table fewer
    const dense = parts.filter((p) => !scatterParts.has(p));
    const scattered = parts.filter((p) => scatterParts.has(p));
    let sum: Sym;
    if (dense.length === 0) sum = scattered.shift()!;
    else sum = dense.reduce((a, b) => o.add(a, b));
    for (const p of scattered) {
      const { idx, updates } = scatterParts.get(p)!;
      sum = o.graph.op1('ScatterND', [sum, idx, updates], sum.shape, 'float32', { reduction: 'add' });
    }
    pending.set(name, [sum]);
    return sum;
  };
  for (let i = nodes.length - 1; i >= 0; i--) {
    const n = nodes[i]!;
    // gradients flow through the first output only (LayerNormalization's statistics are not differentiated)
    const g = total(n.outputs[0]!);
    if (!g) continue;
    const needs = n.inputs.map((name) => active.has(half?.original(name) ?? name));
    if (!needs.some(Boolean)) continue;
    // inside a checkpointed segment the rule reads the recomputed node; its gradients go to the original inputs
    // (the segment's recomputation starts at the first of its nodes the backward meets, a slice too)
    const read = recompute?.node(i, g) ?? half?.node(n, g) ?? n;
    if (n.op === 'Slice' && !n.domain) {
      // a slice's gradient waits in `sliced` for the others of its value (joined in `total`)
      const x = n.inputSyms[0]!;
      const name = half?.original(x.name) ?? x.name;
      const cut = sliced.get(name) ?? { shape: x.shape, pieces: [] };
      cut.pieces.push({ g, begin: sliceBegin(n) });
      sliced.set(name, cut);
      continue;
    }
    const rule = RULES[n.domain === 'com.microsoft' || !n.domain ? n.op : ''];
    if (!rule) throw new Error(`onnx autodiff: no gradient rule for ${n.domain ? n.domain + '.' : ''}${n.op}`);
    const grads = rule(o, read, g, needs);
    n.inputSyms.forEach((s, k) => {
      const gk = grads[k];
      if (!needs[k] || !gk) return;
      const name = half?.original(s.name) ?? s.name;
      const list = pending.get(name) ?? [];
      // dense parts are summed as they arrive: a weight read many times (in each layer, at each step of a
      // recurrence) would otherwise keep one gradient per read alive until the end of the backward pass
      const dense = scatterParts.has(gk) ? -1 : list.findIndex((p) => !scatterParts.has(p));
      if (dense >= 0) list[dense] = o.add(list[dense]!, gk);
      else list.push(gk);
      pending.set(name, list);
    });
  }
  return wrt.map((s) => total(s.name) ?? o.zeros(s.shape));
}

/**
 * The forward values that gradient nodes (those after the first `forwardNodes` nodes) read and that depend on
 * a graph input: what a forward run must save so the backward graph need not recompute the forward. Values
 * computed from constants alone are left to the backward graph.
 */
export function savedForBackward(graph: Graph, forwardNodes: number): Sym[] {
  const forward = graph.nodes.slice(0, forwardNodes);
  const varying = varyingValues(graph, forward);
  const produced = new Set(forward.flatMap((n) => n.outputs));
  const saved = new Map<string, Sym>();
  for (const n of graph.nodes.slice(forwardNodes)) {
    n.inputSyms.forEach((s) => {
      if (produced.has(s.name) && varying.has(s.name)) saved.set(s.name, s);
    });
  }
  return [...saved.values()];
}

/** The graph's inputs (or those given) and the values of `nodes` that depend on one (the rest is computed from constants alone). */
function varyingValues(graph: Graph, nodes: GraphNode[], inputs: Sym[] = graph.inputs): Set<string> {
  const varying = new Set(inputs.map((s) => s.name));
  for (const n of nodes) if (n.inputs.some((i) => varying.has(i))) for (const o of n.outputs) varying.add(o);
  return varying;
}

/**
 * Gradient checkpointing between the graph's checkpoints (`Ops.checkpoint`, one per transformer layer): the
 * backward pass of a segment reads its forward values recomputed from the segment's inputs rather than the
 * forward run's, so the forward's activations die as soon as the forward has used them and only the segment
 * inputs stay alive until the backward (per layer: the hidden state, instead of every intermediate).
 *
 * The recomputation must run when the backward reaches the segment, not when its inputs exist: its activation
 * inputs are read through `o.after(x, g)`, g the gradient arriving at the segment. That also keeps ONNX Runtime's
 * common-subexpression elimination from merging the copies with the forward nodes.
 */
class Recompute {
  private readonly segments: { start: number; end: number }[] = [];
  /** graph inputs and the forward values depending on one (only those are recomputed) */
  private readonly varying: Set<string>;
  private readonly inputs: Set<string>;
  /** original node index → the node the backward reads */
  private readonly copies = new Map<number, GraphNode>();
  private readonly copied = new Set<{ start: number; end: number }>();

  constructor(
    private readonly o: OnnxOps,
    private readonly forward: GraphNode[],
  ) {
    const marks = o.graph.checkpoints.filter((m) => m <= forward.length);
    for (let k = 0; k + 1 < marks.length; k++) if (marks[k + 1]! > marks[k]!) this.segments.push({ start: marks[k]!, end: marks[k + 1]! });
    this.varying = varyingValues(o.graph, forward);
    this.inputs = new Set(o.graph.inputs.map((s) => s.name));
  }

  /** The node whose values the rule of forward node `i` reads, given the gradient `g` arriving there. */
  node(i: number, g: Sym): GraphNode | undefined {
    const seg = this.segments.find((s) => i >= s.start && i < s.end);
    if (!seg) return undefined;
    if (!this.copied.has(seg)) {
      // the first gradient met in a segment is at its last node the backward needs: the copy ends there
      this.copied.add(seg);
      this.copy(seg.start, i, g);
    }
    return this.copies.get(i);
  }

  /** Recomputes forward nodes start..last (those depending on a graph input), gated on `g`. */
  private copy(start: number, last: number, g: Sym): void {
    const o = this.o;
    const graph = o.graph;
    const produced = new Set(this.forward.slice(start, last + 1).flatMap((n) => n.outputs));
    const renamed = new Map<string, Sym>();
    const input = (s: Sym): Sym => {
      const r = renamed.get(s.name);
      if (r) return r;
      // an activation from before the segment (a float computed from an input): read once g exists
      if (!produced.has(s.name) && this.varying.has(s.name) && !this.inputs.has(s.name) && s.dtype === 'float32') {
        const gated = o.after(s, g);
        renamed.set(s.name, gated);
        return gated;
      }
      return s;
    };
    for (let i = start; i <= last; i++) {
      const n = this.forward[i]!;
      if (!n.inputs.some((x) => this.varying.has(x))) continue;
      const outs = graph.node(n.op, n.inputSyms.map(input), n.outputSyms.map((s) => ({ shape: s.shape, dtype: s.dtype })), n.attrs, n.domain);
      n.outputSyms.forEach((s, k) => renamed.set(s.name, outs[k]!));
      this.copies.set(i, graph.nodes[graph.nodes.length - 1]!);
    }
  }
}

/**
 * Activations the backward pass reads, kept at 16 bits between the forward and the backward: each large float32
 * forward value a gradient rule reads is cast to float16 as soon as it is computed (its forward consumers read it
 * only once the copy exists), and cast back when the backward reaches the rule (gated on the gradient there).
 */
class HalfSaved {
  private readonly restored = new Map<string, Sym>();
  /** a gated copy read by the forward's consumers → the value it copies */
  private readonly copies = new Map<string, Sym>();

  constructor(
    private readonly o: OnnxOps,
    private readonly forward: GraphNode[],
    /** the forward values to keep at 16 bits: those the backward reads */
    private readonly saved: Set<string>,
  ) {}

  /** The value whose gradient a name's gradient is (a gated copy's: the value it copies). */
  original(name: string): string | undefined {
    return this.copies.get(name)?.name;
  }

  node(n: GraphNode, g: Sym): GraphNode {
    const map = (s: Sym) => this.restore(s, g);
    return { ...n, inputSyms: n.inputSyms.map(map), outputSyms: n.outputSyms.map(map) };
  }

  private restore(s: Sym, g: Sym): Sym {
    s = this.copies.get(s.name) ?? s;
    if (!this.saved.has(s.name)) return s;
    let r = this.restored.get(s.name);
    if (!r) {
      const o = this.o;
      const nodes = o.graph.nodes;
      const from = nodes.length;
      const half = o.cast(s, 'float16');
      const gated = o.after(s, half);
      const added = nodes.splice(from);
      nodes.splice(nodes.findIndex((n) => n.outputs.includes(s.name)) + 1, 0, ...added);
      this.copies.set(gated.name, s);
      for (const c of this.forward) {
        c.inputs.forEach((name, k) => {
          if (name !== s.name) return;
          c.inputs[k] = gated.name;
          c.inputSyms[k] = gated;
        });
      }
      r = o.cast(o.after(half, g), 'float32');
      this.restored.set(s.name, r);
    }
    return r;
  }
}
