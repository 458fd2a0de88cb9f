import type { Parameter } from '../engine/tensor.js';
import { AdamArena, padded } from './adam-kernel.js';

/** floats of a gradient copied into the arena at a time (64 KB: stays in cache while the kernel reads it) */
const CHUNK = 16384;

/**
 * Adam and AdamW with torch.optim semantics, parameter groups, exact resume, and torch's clip_grad_norm_.
 *
 * Per parameter, with g its gradient, lr = group lr · lrScale, t its own step count (a parameter without a
 * gradient in a step is skipped, as torch skips `grad is None`):
 *   Adam (L2):      g ← g + wd·θ
 *   AdamW:          θ ← θ·(1 − lr·wd)             (decoupled, before the update, as torch.optim.AdamW)
 *   m ← β1·m + (1−β1)·g;  v ← β2·v + (1−β2)·g²
 *   θ ← θ − (lr / (1−β1ᵗ)) · m / (√v / √(1−β2ᵗ) + ε)
 */

export interface ParamGroup {
  /** variables by name; names must be unique across groups */
  params: Map<string, Parameter>;
  lr: number;
  /** default: 0 for Adam, 0.01 for AdamW (torch's defaults) */
  weightDecay?: number;
  /** for messages and logs */
  name?: string;
}

export interface ParamOptimState {
  step: number;
  m: Float32Array;
  v: Float32Array;
}

export interface OptimizerState {
  kind: 'adam' | 'adamw';
  /** per parameter name */
  params: Map<string, ParamOptimState>;
}

interface Slot {
  param: Parameter;
  group: ParamGroup;
  step: number;
  m: Float32Array | null;
  v: Float32Array | null;
}

export interface AdamOptions {
  betas?: [number, number];
  eps?: number;
  /**
   * run the update as a WebAssembly SIMD kernel over an arena holding the parameters and the moments (the
   * parameters' arrays move into it; gradients pass through it in small chunks); default true where WebAssembly
   * SIMD is available
   */
  kernel?: boolean;
}

interface AdamCoefficients {
  l2: number; keep: number; stepSize: number; invRoot2: number; beta1: number; beta2: number; c1: number; c2: number; eps: number; n: number;
}

/** θ, m, v updated in place from g (kept monomorphic: one typed-array loop). */
function adamUpdate(theta: Float32Array, grad: Float32Array, m: Float32Array, v: Float32Array, c: AdamCoefficients): void {
  const { l2, keep, stepSize, invRoot2, beta1, beta2, c1, c2, eps, n } = c;
  for (let i = 0; i < n; i++) {
    const th = theta[i]!;
    const gi = grad[i]! + l2 * th;
    const mi = beta1 * m[i]! + c1 * gi;
    const vi = beta2 * v[i]! + c2 * gi * gi;
    m[i] = mi;
    v[i] = vi;
    theta[i] = th * keep - (stepSize * mi) / (Math.sqrt(vi) * invRoot2 + eps);
  }
}

class AdamBase {
  readonly groups: ParamGroup[];
  private readonly slots = new Map<string, Slot>();
  private readonly beta1: number;
  private readonly beta2: number;
  private readonly eps: number;
  private readonly arena: AdamArena | null;
  /** the arena's window gradients are copied through, CHUNK floats at a time */
  private readonly gradChunk: Float32Array | null = null;

  protected constructor(
    readonly kind: 'adam' | 'adamw',
    groups: ParamGroup[],
    opts: AdamOptions,
    defaultWeightDecay: number,
  ) {
    const where = kind === 'adam' ? 'Adam' : 'AdamW';
    [this.beta1, this.beta2] = opts.betas ?? [0.9, 0.999];
    this.eps = opts.eps ?? 1e-8;
    for (const b of [this.beta1, this.beta2]) {
      if (!(b >= 0 && b < 1)) throw new Error(`${where}: betas must be in [0, 1), got ${b}`);
    }
    if (!(this.eps >= 0)) throw new Error(`${where}: eps must be >= 0, got ${this.eps}`);
    this.groups = groups.map((g, i) => {
      const label = g.name ?? `group ${i}`;
      if (!(g.lr >= 0)) throw new Error(`${where}: ${label}: lr must be >= 0, got ${g.lr}`);
      const weightDecay = g.weightDecay ?? defaultWeightDecay;
      if (!(weightDecay >= 0)) throw new Error(`${where}: ${label}: weightDecay must be >= 0, got ${weightDecay}`);
      return { ...g, weightDecay };
    });
    for (const group of this.groups) {
      for (const [name, param] of group.params) {
        if (this.slots.has(name)) throw new Error(`${where}: parameter '${name}' is in more than one group`);
        this.slots.set(name, { param, group, step: 0, m: null, v: null });
      }
    }
    const sizes = [...this.slots.values()].flatMap((s) => Array(3).fill(s.param.size) as number[]);
    this.arena = opts.kernel === false ? null : AdamArena.create([...sizes, CHUNK]);
    if (this.arena) {
      // θ and both moments side by side in the kernel's memory (ONNX Runtime reads θ there); a gradient stays in
      // the runtime's array and passes through a chunk of the arena, so no second model-sized buffer is held
      for (const slot of this.slots.values()) {
        const p = slot.param;
        const theta = this.arena.alloc(p.size);
        theta.set(p.data);
        p.data = theta;
        slot.m = this.arena.alloc(p.size);
        slot.v = this.arena.alloc(p.size);
      }
      this.gradChunk = this.arena.alloc(CHUNK);
    }
  }

  /**
   * One update from `grads` (by parameter name; the caller keeps ownership of them). `lrScale` multiplies every
   * group's lr (a schedule's multiplier). Parameters without a gradient are left untouched.
   */
  step(grads: Map<string, Float32Array>, lrScale = 1): void {
    for (const [name, g] of grads) {
      const slot = this.slots.get(name);
      if (!slot) throw new Error(`optimizer step: gradient for unknown parameter '${name}'`);
      if (g.length !== slot.param.size) throw new Error(`optimizer step: gradient of '${name}' has ${g.length} values, parameter has [${slot.param.shape}]`);
    }
    const { beta1, beta2, eps } = this;
    // One fused pass per parameter over host arrays, updating θ in place: reads θ, g, m, v once and writes θ, m,
    // v once.
    for (const [name, g] of grads) {
      const slot = this.slots.get(name)!;
      const p = slot.param;
      const n = p.size;
      const m = (slot.m ??= new Float32Array(n));
      const v = (slot.v ??= new Float32Array(n));
      const t = ++slot.step;
      const lr = slot.group.lr * lrScale;
      const wd = slot.group.weightDecay!;
      const l2 = this.kind === 'adam' ? wd : 0;
      const keep = this.kind === 'adamw' ? 1 - lr * wd : 1;
      const stepSize = lr / (1 - beta1 ** t);
      const invRoot2 = 1 / Math.sqrt(1 - beta2 ** t);
      const c1 = 1 - beta1;
      const c2 = 1 - beta2;
      if (this.arena && this.gradChunk && this.arena.holds(p.data)) {
        const chunk = this.gradChunk;
        for (let at = 0; at < n; at += CHUNK) {
          const len = Math.min(CHUNK, n - at);
          chunk.set(g.subarray(at, at + len));
          if (len % 4) chunk.fill(0, len, padded(len)); // padding lanes of θ, m and v hold zeros and stay zero
          const off = at * 4;
          this.arena.kernel(p.data.byteOffset + off, chunk.byteOffset, m.byteOffset + off, v.byteOffset + off, padded(len) * 4, l2, keep, stepSize, invRoot2, beta1, beta2, c1, c2, eps);
        }
      } else {
        adamUpdate(p.data, g, m, v, { l2, keep, stepSize, invRoot2, beta1, beta2, c1, c2, eps, n });
      }
    }
  }

  /** Step counts and moments of every parameter that has taken a step (copies). */
  state(): OptimizerState {
    const params = new Map<string, ParamOptimState>();
    for (const [name, s] of this.slots) {
      if (!s.m || !s.v || s.step === 0) continue;
      // copies in the parameter's stored layout, as checkpoints hold the parameter itself
      const stored = (x: Float32Array) => {
        const y = s.param.toStored(x);
        return y === x ? Float32Array.from(x) : y;
      };
      params.set(name, { step: s.step, m: stored(s.m), v: stored(s.v) });
    }
    return { kind: this.kind, params };
  }

  /** Restores `state()`; parameters absent from it start fresh. Validates everything before changing anything. */
  loadState(state: OptimizerState): void {
    if (state.kind !== this.kind) throw new Error(`optimizer state: saved by ${state.kind}, loading into ${this.kind}`);
    for (const [name, s] of state.params) {
      const slot = this.slots.get(name);
      if (!slot) throw new Error(`optimizer state: unknown parameter '${name}'`);
      if (!Number.isInteger(s.step) || s.step < 1) throw new Error(`optimizer state: '${name}' has step ${s.step}`);
      const fits = (x: Float32Array) => x.length === slot.param.size || x.length === slot.param.storedSize;
      if (!fits(s.m) || !fits(s.v)) {
        throw new Error(`optimizer state: '${name}' moments have ${s.m.length}/${s.v.length} values, parameter has ${slot.param.storedSize}`);
      }
    }
    this.disposeMoments();
    for (const [name, s] of state.params) {
      const slot = this.slots.get(name)!;
      slot.step = s.step;
      const m = slot.param.fromStored(s.m);
      const v = slot.param.fromStored(s.v);
      if (slot.m && this.arena?.holds(slot.m)) {
        slot.m.set(m);
        slot.v!.set(v);
      } else {
        slot.m = m === s.m ? Float32Array.from(m) : m;
        slot.v = v === s.v ? Float32Array.from(v) : v;
      }
    }
  }

  dispose(): void {
    this.disposeMoments();
  }

  private disposeMoments(): void {
    for (const s of this.slots.values()) {
      // moments in the arena stay where they are (zeroed); the others are dropped
      if (s.m && this.arena?.holds(s.m)) {
        s.m.fill(0);
        s.v!.fill(0);
      } else s.m = s.v = null;
      s.step = 0;
    }
  }
}

/** torch.optim.Adam: weight decay is L2, added to the gradient. */
export class Adam extends AdamBase {
  constructor(groups: ParamGroup[], opts: AdamOptions = {}) {
    super('adam', groups, opts, 0);
  }
}

/** torch.optim.AdamW: decoupled weight decay. */
export class AdamW extends AdamBase {
  constructor(groups: ParamGroup[], opts: AdamOptions = {}) {
    super('adamw', groups, opts, 0.01);
  }
}

/**
 * Two groups in the usual fine-tuning split: weight decay on matrices, none on biases and norm gains
 * (`noDecay`; default: tensors of rank ≤ 1, which for BERT is exactly transformers' ['bias', 'LayerNorm.weight']).
 * Empty groups are dropped.
 */
export function decayGroups(
  params: Map<string, Parameter>,
  opts: { lr: number; weightDecay: number; noDecay?: (name: string, v: Parameter) => boolean; name?: string },
): ParamGroup[] {
  const noDecay = opts.noDecay ?? ((_n: string, v: Parameter) => v.shape.length <= 1);
  const decay = new Map<string, Parameter>();
  const plain = new Map<string, Parameter>();
  for (const [n, v] of params) (noDecay(n, v) ? plain : decay).set(n, v);
  const prefix = opts.name ? `${opts.name} ` : '';
  const groups: ParamGroup[] = [
    { params: decay, lr: opts.lr, weightDecay: opts.weightDecay, name: `${prefix}decay` },
    { params: plain, lr: opts.lr, weightDecay: 0, name: `${prefix}no decay` },
  ];
  return groups.filter((g) => g.params.size > 0);
}

/**
 * torch.nn.utils.clip_grad_norm_: scales all gradients (in place) by min(1, maxNorm / (‖g‖ + 1e-6)), where ‖g‖
 * is the L2 norm over all of them together. Returns the total norm before clipping.
 */
export function clipGradNorm(grads: Map<string, Float32Array>, maxNorm: number): number {
  if (!(maxNorm > 0)) throw new Error(`clipGradNorm: maxNorm must be > 0, got ${maxNorm}`);
  let sumSq = 0;
  for (const g of grads.values()) for (let i = 0; i < g.length; i++) sumSq += g[i]! * g[i]!;
  const norm = Math.sqrt(sumSq);
  const coef = maxNorm / (norm + 1e-6);
  if (coef < 1) for (const g of grads.values()) for (let i = 0; i < g.length; i++) g[i] = g[i]! * coef;
  return norm;
}
