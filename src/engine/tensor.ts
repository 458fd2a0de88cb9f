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

  constructor(
    readonly name: string,
    readonly shape: number[],
    public data: Float32Array,
    public trainable = false,
  ) {
    if (data.length !== sizeOf(shape)) {
      throw new Error(`parameter "${name}": ${data.length} values do not fill shape [${shape}]`);
    }
  }

  get size(): number {
    return this.data.length;
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

/** Parameters by name, in a fixed order. */
export type ParamMap = Map<string, Parameter>;

/** `params` renamed with `prefix` (the same Parameter objects). */
export function prefixed(params: ParamMap, prefix: string): ParamMap {
  return new Map([...params].map(([k, v]) => [prefix + k, v]));
}
