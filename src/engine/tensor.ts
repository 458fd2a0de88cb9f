/**
 * Host-side tensors: plain typed arrays with a shape. Every weight, gradient, optimizer moment and program input
 * lives in one of these; ONNX Runtime reads them in place (a typed array fed to a session is not copied).
 */

export type TensorData = Float32Array | Int32Array | BigInt64Array | Uint8Array | Uint16Array;

export interface HostTensor<D extends TensorData = TensorData> {
  data: D;
  shape: number[];
}

export type FloatTensor = HostTensor<Float32Array>;

export function sizeOf(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/**
 * A named float32 array that training may update: a model weight, a prompt encoder's matrix, a head. Programs
 * read parameters as inputs fed from `data` on every run, so an update is seen by every program at once.
 * `grad` holds the parameter's gradient after a training run: the runtime's output array itself, handed over
 * without a copy and freed when the next run that computes it starts (no buffer as large as the weights is kept
 * between steps); zeros when no run has written it.
 */
export class Parameter {
  private gradData: Float32Array | null = null;
  private adopted = false;

  /**
   * `storedShape`: the shape checkpoints hold it in when the host holds it wider (`shape`, each axis ≥, the
   * values at the start of every axis and zeros after them); the same as `shape` otherwise.
   */
  constructor(
    readonly name: string,
    readonly shape: number[],
    public data: Float32Array,
    public trainable = false,
    readonly storedShape: number[] = shape,
  ) {
    if (data.length !== sizeOf(shape)) {
      throw new Error(`parameter "${name}": ${data.length} values do not fill shape [${shape}]`);
    }
    if (storedShape.length !== shape.length || storedShape.some((n, i) => n > shape[i]!)) {
      throw new Error(`parameter "${name}": stored shape [${storedShape}] does not fit in [${shape}]`);
    }
  }

  get size(): number {
    return this.data.length;
  }

  /** The number of values checkpoints hold (the host's zero padding not counted). */
  get storedSize(): number {
    return sizeOf(this.storedShape);
  }

  /** `values` (the parameter's size: its values, gradient or moments) in the stored layout; the same array when the layouts agree. */
  toStored(values: Float32Array = this.data): Float32Array {
    if (values.length !== this.size) throw new Error(`parameter "${this.name}": ${values.length} values for shape [${this.shape}]`);
    return this.storedSize === this.size ? values : cropTo(values, this.shape, this.storedShape);
  }

  /** Values in the stored layout, or already in the host's, as the host holds them (zeros in the padding). */
  fromStored(values: Float32Array): Float32Array {
    if (values.length === this.size) return values;
    if (values.length !== this.storedSize) {
      throw new Error(`parameter "${this.name}": ${values.length} values for shape [${this.storedShape}]`);
    }
    return padTo(values, this.storedShape, this.shape);
  }

  /** The gradient (zeros when none was written). */
  get grad(): Float32Array {
    return (this.gradData ??= new Float32Array(this.data.length));
  }

  /** Makes `g` (a runtime's output, the parameter's size) the gradient, without copying it. */
  adoptGrad(g: Float32Array): void {
    if (g.length !== this.data.length) throw new Error(`parameter "${this.name}": gradient of ${g.length} values for shape [${this.shape}]`);
    this.gradData = g;
    this.adopted = true;
  }

  /** Takes back an adopted gradient (for the caller to free); null when the gradient is not a runtime's array. */
  takeAdoptedGrad(): Float32Array | null {
    if (!this.adopted) return null;
    const g = this.gradData;
    this.gradData = null;
    this.adopted = false;
    return g;
  }

  /** Drops the gradient (inference only from now on). */
  dropGrad(): void {
    this.gradData = null;
    this.adopted = false;
  }

  /** Overwrites the values (same size). */
  set(values: Float32Array): void {
    if (values.length !== this.data.length) {
      throw new Error(`parameter "${this.name}": ${values.length} values for shape [${this.shape}]`);
    }
    this.data.set(values);
  }
}

/** `src` (row-major, shape `from`) at the start of every axis of a zero array of shape `to` (each axis ≥). */
export function padTo(src: Float32Array, from: readonly number[], to: readonly number[]): Float32Array {
  const out = new Float32Array(sizeOf(to));
  const run = from[from.length - 1] ?? 1;
  runStarts(from, to).forEach((at, r) => out.set(src.subarray(r * run, r * run + run), at));
  return out;
}

/** The inverse of padTo: the `to`-shaped start of every axis of `src` (shape `from`). */
export function cropTo(src: Float32Array, from: readonly number[], to: readonly number[]): Float32Array {
  const out = new Float32Array(sizeOf(to));
  const run = to[to.length - 1] ?? 1;
  runStarts(to, from).forEach((at, r) => out.set(src.subarray(at, at + run), r * run));
  return out;
}

/**
 * padTo within one array: `buf` (shape `to`) holds a `from`-shaped tensor in its first values; each innermost
 * run moves to its padded place, the last first (a run never lands on one not yet moved), and the gaps are zeroed.
 */
export function padInPlace(buf: Float32Array, from: readonly number[], to: readonly number[]): void {
  if (buf.length !== sizeOf(to)) throw new Error(`padInPlace: ${buf.length} values for shape [${to}]`);
  const run = from[from.length - 1] ?? 1;
  const starts = runStarts(from, to);
  let end = buf.length;
  for (let r = starts.length - 1; r >= 0; r--) {
    const at = starts[r]!;
    buf.copyWithin(at, r * run, r * run + run);
    buf.fill(0, at + run, end);
    end = at;
  }
}

/**
 * Where each innermost run of an `inner`-shaped tensor starts in an `outer`-shaped array that holds it at the
 * start of every axis (each axis ≥), in row-major order.
 */
function runStarts(inner: readonly number[], outer: readonly number[]): number[] {
  let starts = [0];
  for (let axis = 0; axis < inner.length - 1; axis++) {
    const stride = sizeOf(outer.slice(axis + 1));
    starts = starts.flatMap((s) => Array.from({ length: inner[axis]! }, (_, i) => s + i * stride));
  }
  return starts;
}

/** Parameters by name, in a fixed order. */
export type ParamMap = Map<string, Parameter>;

/** `params` renamed with `prefix` (the same Parameter objects). */
export function prefixed(params: ParamMap, prefix: string): ParamMap {
  return new Map([...params].map(([k, v]) => [prefix + k, v]));
}
