import { encodeModel, type AttrValue, type ElemType, type NodeSpec, type TensorSpec } from './proto.js';

export type DType = ElemType;

/** A symbolic tensor: a named value of a Graph with a static shape. */
export class Sym {
  constructor(
    readonly graph: Graph,
    readonly name: string,
    readonly shape: number[],
    readonly dtype: DType,
  ) {}

  get rank(): number {
    return this.shape.length;
  }

  get size(): number {
    return this.shape.reduce((a, b) => a * b, 1);
  }
}

export interface GraphNode extends NodeSpec {
  inputSyms: Sym[];
  outputSyms: Sym[];
}

type ConstData = Float32Array | Int32Array | BigInt64Array | Uint8Array;

const OPSET = 17;
const BYTES: Record<DType, number> = { float32: 4, int32: 4, int64: 8, bool: 1, uint8: 1, int8: 1, float16: 2 };

/**
 * An ONNX graph under construction. Nodes are appended in topological order (every input exists before the
 * node that reads it), which the autodiff relies on. Shapes are static: one graph per input shape.
 */
export class Graph {
  readonly nodes: GraphNode[] = [];
  readonly inputs: Sym[] = [];
  /** node counts at each `Ops.checkpoint` (segment boundaries for gradient checkpointing) */
  readonly checkpoints: number[] = [];
  /** an optional input left out (ONNX's empty input name): pass it where a node skips an optional input */
  readonly absent: Sym = new Sym(this, '', [], 'float32');
  private readonly consts = new Map<string, { sym: Sym; data: ConstData | (() => ConstData) }>();
  private readonly constCache = new Map<string, Sym>();
  private counter = 0;

  private fresh(prefix: string): string {
    return `${prefix}_${this.counter++}`;
  }

  input(name: string, shape: number[], dtype: DType): Sym {
    if (this.inputs.some((s) => s.name === name)) throw new Error(`onnx graph: input "${name}" declared twice`);
    const s = new Sym(this, name, shape.slice(), dtype);
    this.inputs.push(s);
    return s;
  }

  /**
   * An initializer. Small constants are shared by value; `name` keeps a weight's own name. `data` may be a
   * function, called only if the serialised model needs the constant (weights the outputs never read).
   */
  constant(data: ConstData | (() => ConstData), shape: number[], dtype: DType, name?: string): Sym {
    const small = typeof data !== 'function' && data.length <= 16 && !name;
    const key = small ? `${dtype}:${shape.join(',')}:${Array.from(data as ArrayLike<number | bigint>).join(',')}` : '';
    if (small && this.constCache.has(key)) return this.constCache.get(key)!;
    const sym = new Sym(this, name ?? this.fresh('const'), shape.slice(), dtype);
    if (this.consts.has(sym.name)) throw new Error(`onnx graph: constant "${sym.name}" declared twice`);
    this.consts.set(sym.name, { sym, data });
    if (small) this.constCache.set(key, sym);
    return sym;
  }

  /** Turns graph input `s` into a constant holding `data` (read when the model is serialised). */
  bindInput(s: Sym, data: () => ConstData): void {
    const i = this.inputs.indexOf(s);
    if (i < 0) throw new Error(`onnx graph: "${s.name}" is not an input`);
    this.inputs.splice(i, 1);
    this.consts.set(s.name, { sym: s, data });
  }

  /** The values of a constant, or undefined when `s` is computed. */
  constantData(s: Sym): ConstData | undefined {
    const c = this.consts.get(s.name);
    return typeof c?.data === 'function' ? c.data() : c?.data;
  }

  /** int64 vector constant (shapes, axes, pads) */
  ints(values: number[]): Sym {
    return this.constant(BigInt64Array.from(values.map(BigInt)), [values.length], 'int64');
  }

  node(op: string, inputs: Sym[], outs: { shape: number[]; dtype: DType }[], attrs?: Record<string, AttrValue>, domain?: string): Sym[] {
    for (const i of inputs) if (i.graph !== this) throw new Error(`onnx graph: ${op} reads "${i.name}" from another graph`);
    const outputSyms = outs.map((o) => new Sym(this, this.fresh(op), o.shape.slice(), o.dtype));
    this.nodes.push({
      op, domain, attrs,
      inputs: inputs.map((s) => s.name),
      outputs: outputSyms.map((s) => s.name),
      inputSyms: inputs,
      outputSyms,
    });
    return outputSyms;
  }

  /** One-output node. */
  op1(op: string, inputs: Sym[], shape: number[], dtype: DType, attrs?: Record<string, AttrValue>, domain?: string): Sym {
    return this.node(op, inputs, [{ shape, dtype }], attrs, domain)[0]!;
  }

  /**
   * The serialised model computing `outputs` from the graph inputs; only the nodes and initializers they need
   * are kept, and only the inputs they depend on are declared. `cuts` are computed values fed as inputs
   * instead (activations saved by a forward run), unless a kept node computes them anyway. Constants for which
   * `external` gives a place are referenced there (ONNX external data) instead of being embedded; it is told
   * each constant's size and given its bytes, so it can write them where it places them.
   */
  toModel(
    outputs: Record<string, Sym>,
    cuts: Sym[] = [],
    external?: (name: string, byteLength: number, raw: () => Uint8Array) => { location: string; offset: number } | undefined,
  ): { bytes: Uint8Array; inputNames: string[]; constantBytes: number } {
    const cut = new Map(cuts.map((s) => [s.name, s]));
    const needed = new Set<string>();
    const renamed: NodeSpec[] = [];
    for (const s of Object.values(outputs)) needed.add(s.name);
    const kept: GraphNode[] = [];
    for (let i = this.nodes.length - 1; i >= 0; i--) {
      const n = this.nodes[i]!;
      if (!n.outputs.some((o) => needed.has(o) && !cut.has(o))) continue;
      for (const o of n.outputs) cut.delete(o);
      kept.push(n);
      for (const inp of n.inputs) if (inp) needed.add(inp);
    }
    kept.reverse();
    // an output computed by a kept node takes its requested name in place, so the runtime writes it where it is
    // wanted and frees nothing late (an Identity at the end would hold every gradient until the run ends); other
    // outputs (graph inputs, a value asked for twice) are copied out by Identity nodes
    const produced = new Set(kept.flatMap((n) => n.outputs));
    const alias = new Map<string, string>();
    for (const [name, s] of Object.entries(outputs)) {
      if (name === s.name) continue;
      if (produced.has(s.name) && !alias.has(s.name) && !cut.has(s.name)) alias.set(s.name, name);
      else renamed.push({ op: 'Identity', inputs: [s.name], outputs: [name] });
    }
    const rn = (x: string) => alias.get(x) ?? x;
    for (const r of renamed) r.inputs = r.inputs.map(rn);
    const inputs = [...this.inputs, ...cut.values()].filter((s) => needed.has(s.name));
    const initializers: TensorSpec[] = [];
    for (const [name, { sym, data: source }] of this.consts) {
      if (!needed.has(name)) continue;
      const expected = sym.shape.reduce((a, b) => a * b, 1);
      // weights are read from their source only while the serialised model is assembled, one at a time
      const raw = () => {
        const data = typeof source === 'function' ? source() : source;
        if (data.length !== expected) throw new Error(`onnx graph: constant "${name}" has ${data.length} values, shape [${sym.shape}] needs ${expected}`);
        return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
      };
      const byteLength = expected * BYTES[sym.dtype];
      initializers.push({ name, dtype: sym.dtype, dims: sym.shape, raw, byteLength, external: external?.(name, byteLength, raw) });
    }
    const bytes = encodeModel({
      nodes: [...kept.map((n) => ({ ...n, inputs: n.inputs.map(rn), outputs: n.outputs.map(rn) })), ...renamed].map(({ op, inputs: i, outputs: o, attrs, domain }) => ({ op, inputs: i, outputs: o, attrs, domain })),
      initializers,
      inputs: inputs.map((s) => ({ name: s.name, dtype: s.dtype, dims: s.shape })),
      outputs: Object.entries(outputs).map(([name, s]) => ({ name, dtype: s.dtype, dims: s.shape })),
      opsets: [{ domain: '', version: OPSET }, { domain: 'com.microsoft', version: 1 }],
    });
    const constantBytes = initializers.reduce((n, t) => n + t.byteLength, 0);
    return { bytes, inputNames: inputs.map((s) => s.name), constantBytes };
  }
}
