import { Graph, OnnxOps, gradients, type DropoutMask, type DType, type Sym } from './onnx/index.js';
import type { QuantizedTensors, WeightLayout } from './ops.js';
import { quantizedShapes, type QuantBits } from './quant.js';
import { getRuntime, processEnv, releaseNow, type RuntimeSession } from './runtime.js';
import type { HostTensor, Parameter } from './tensor.js';

/** Bytes of a file: where a constant's values are stored. */
export interface FileSlice {
  offset: number;
  bytes: number;
}

/**
 * A quantized weight stored in a file (src/models/quantize.ts writes them): Ŵ [n, k] in MatMulNBits' layout,
 * and optionally Ŵᵀ quantized on its own for the gradient to the inputs.
 */
export interface StoredQuantized {
  n: number;
  k: number;
  bits: QuantBits;
  blockSize: number;
  data: FileSlice;
  scales: FileSlice;
  zeroPoints?: FileSlice;
  transposed?: StoredQuantized;
  /** per channel: `data` holds int8 [n, k], `columns` the same integers as [k, n] */
  signed?: boolean;
  columns?: FileSlice;
}

/** How a program reads a stored quantized weight. */
export interface QuantizedUse {
  layout: WeightLayout;
  /** see QuantizedTensors.activations */
  activations: 'int8' | 'float32';
}

/** The file holding quantized weights: ONNX Runtime reads it (external data, by folder and file name), or `read` does. */
export interface QuantizedSource {
  folder: string;
  fileName: string;
  read(slice: FileSlice): Uint8Array;
}

const PARAM = 'param:';
const GRAD = 'grad:';
const WRT = 'd:';

/**
 * Builds one program's graph. Data inputs are fed by the caller on every run; parameters are fed from their
 * host arrays (`Parameter.data`) by name, and those declared with `grad` receive the gradient of the loss.
 */
export class ProgramBuilder {
  readonly g = new Graph();
  readonly o = new OnnxOps(this.g);
  /** parameters read by the graph, by name */
  readonly params = new Map<string, { sym: Sym; grad: boolean }>();
  /** constants whose values ONNX Runtime reads from files (external data), by constant name */
  readonly external = new Map<string, { source: QuantizedSource } & FileSlice>();
  private readonly quantizedWeights = new Map<string, Sym>();

  /** whether the graph reads quantized weights */
  get quantized(): boolean {
    return this.quantizedWeights.size > 0;
  }

  input(name: string, shape: number[], dtype: DType = 'float32'): Sym {
    return this.g.input(name, shape, dtype);
  }

  /** A parameter input; with `grad`, a training run writes d loss / d parameter into the parameter's `grad`. */
  param(name: string, shape: number[], grad = false): Sym {
    const hit = this.params.get(name);
    if (hit) {
      if (hit.grad !== grad) throw new Error(`program: parameter "${name}" declared with and without a gradient`);
      return hit.sym;
    }
    const sym = this.g.input(PARAM + name, shape, 'float32');
    this.params.set(name, { sym, grad });
    return sym;
  }

  /**
   * A frozen quantized weight stored in `file`: its tensors become constants of the program (ONNX Runtime
   * prepacks them for its quantized kernels, which needs them constant), read from the file by the runtime,
   * and the returned value stands for the weight in `layout` (see `Ops.quantized`).
   */
  quantizedWeight(name: string, q: StoredQuantized, source: QuantizedSource, use: QuantizedUse): Sym {
    const hit = this.quantizedWeights.get(name);
    if (hit) return hit;
    const sym = this.o.quantized(this.quantizedTensors(`q:${name}`, q, source, use.activations), use.layout);
    this.quantizedWeights.set(name, sym);
    return sym;
  }

  private quantizedTensors(prefix: string, q: StoredQuantized, source: QuantizedSource, activations: 'int8' | 'float32'): QuantizedTensors<Sym> {
    const shape = quantizedShapes(q);
    const constant = (suffix: string, s: FileSlice, shape: number[], dtype: DType) => {
      const name = `${prefix}.${suffix}`;
      this.external.set(name, { source, ...s });
      const read = () => {
        const raw = source.read(s);
        return dtype === 'float32' ? new Float32Array(raw.buffer, 0, raw.length / 4) : raw;
      };
      return this.g.constant(read, shape, dtype, name);
    };
    return {
      n: q.n,
      k: q.k,
      bits: q.bits,
      blockSize: q.blockSize,
      data: constant('data', q.data, shape.data, q.signed ? 'int8' : 'uint8'),
      scales: constant('scales', q.scales, shape.scales, 'float32'),
      ...(q.zeroPoints && { zeroPoints: constant('zero_points', q.zeroPoints, shape.zeroPoints, 'uint8') }),
      ...(q.signed && { signed: true, ...(q.columns && { columns: constant('columns', q.columns, [q.k, q.n], 'int8') }) }),
      activations,
      ...(q.transposed && { transposed: this.quantizedTensors(`${prefix}.T`, q.transposed, source, activations) }),
    };
  }
}

export interface ProgramGraph {
  outputs: Record<string, Sym>;
  /** scalar loss: the program then returns the gradients of every `grad` parameter and of every `wrt` entry */
  loss?: Sym;
  /** values (inputs or computed) whose gradients the run returns as `wrt[key]` */
  wrt?: Record<string, Sym>;
}

/** A computation compiled once into an ONNX Runtime session and run many times. */
export interface Program {
  /** identifies the graph: every shape and option `build` depends on (sessions are cached by it) */
  key: string;
  build(b: ProgramBuilder): ProgramGraph;
}

export interface ProgramResult {
  outputs: Record<string, HostTensor>;
  /** d loss / d wrt[key] (training programs with `wrt`) */
  wrt: Record<string, HostTensor>;
  /** parameters whose gradient was written into their `grad` buffer */
  graded: Parameter[];
}

interface Compiled {
  session: RuntimeSession;
  /** bytes of the constants the session holds (quantized weights; ONNX Runtime keeps them prepacked) */
  constantBytes: number;
  /** frozen parameters bound into the session (Runtime.bakeFrozenWeights): name, parameter, the array bound */
  baked: [string, Parameter, Float32Array][];
  inputs: Set<string>;
  outputs: string[];
  /** parameters the compiled graph reads */
  paramInputs: string[];
  /** parameters it returns gradients of */
  paramGrads: string[];
  /** the dropout masks it reads (inputs each run draws) */
  masks: DropoutMask[];
}

/** Options of one run. */
export interface RunOptions {
  /** draws a program's dropout masks (`OnnxOps.dropout`): `size` values, 0 with probability `rate`, else 1 / (1 − rate) */
  dropout?: (size: number, rate: number) => Float32Array;
}

/** Resolves a parameter by the name the program declared it with. */
export type ParamLookup = (name: string) => Parameter | undefined;

const GIB = 1024 ** 3;

/** PTUNE_SESSION_CONSTANT_GB: how many GB of constants (quantized weights) the cached sessions may hold together. */
function constantBudget(): number {
  const v = Number(processEnv()?.PTUNE_SESSION_CONSTANT_GB);
  return Number.isFinite(v) && v > 0 ? v * GIB : 3 * GIB;
}

/**
 * Compiled programs, kept least-recently-used up to a bound on their number (each holds ONNX Runtime's
 * memory arena for its activations) and on the constant bytes they hold together (programs over quantized
 * weights hold their own prepacked copy of them). Programs compile on first use; identical keys share one session.
 */
export class ProgramCache {
  private readonly entries = new Map<string, Promise<Compiled>>();
  private readonly constantBytes = new Map<string, number>();

  constructor(
    public maxSessions = 24,
    public maxConstantBytes = constantBudget(),
  ) {}

  get size(): number {
    return this.entries.size;
  }

  /** Runs `program`; feeds holds the data inputs (extra ones are ignored), `lookup` the parameters. */
  async run(program: Program, feeds: Record<string, HostTensor>, lookup: ParamLookup, opts: RunOptions = {}): Promise<ProgramResult> {
    const rt = await getRuntime();
    if (rt.gradientCheckpointing) program = { ...program, key: `${program.key}|recompute` };
    else if (rt.savedActivations !== 'auto') program = { ...program, key: `${program.key}|saved ${rt.savedActivations}` };
    let compiled = await this.compiled(program, lookup);
    if (compiled.baked.some(([name, p, data]) => lookup(name) !== p || p.data !== data)) {
      // another model (or new arrays) behind the same key: the bound weights are not these
      this.entries.delete(program.key);
      void compiled.session.release().catch(() => undefined);
      compiled = await this.compiled(program, lookup);
    }
    const all: Record<string, HostTensor> = {};
    for (const [name, t] of Object.entries(feeds)) if (compiled.inputs.has(name)) all[name] = t;
    const graded: Parameter[] = [];
    const param = (name: string) => {
      const p = lookup(name);
      if (!p) throw new Error(`program ${program.key}: no parameter "${name}"`);
      return p;
    };
    for (const name of compiled.paramInputs) {
      const p = param(name);
      all[PARAM + name] = { data: p.data, shape: p.shape };
    }
    for (const name of compiled.paramGrads) graded.push(param(name));
    for (const m of compiled.masks) {
      if (!opts.dropout) throw new Error(`program ${program.key}: dropout masks but no stream to draw them from`);
      all[m.name] = { data: opts.dropout(m.shape.reduce((a, b) => a * b, 1), m.rate), shape: m.shape };
    }
    for (const n of compiled.inputs) if (!all[n]) throw new Error(`program ${program.key}: input "${n}" was not fed`);
    // the last run's gradients go back to the runtime before this run allocates new ones: a gradient as large as
    // the model must not wait for a garbage collection
    for (const p of graded) {
      const old = p.takeAdoptedGrad();
      if (old) releaseNow(old);
    }
    const r = await compiled.session.run(all, compiled.outputs);
    graded.forEach((p, i) => p.adoptGrad(r[GRAD + compiled.paramGrads[i]!]!.data as Float32Array));
    const result: ProgramResult = { outputs: {}, wrt: {}, graded };
    for (const name of compiled.outputs) {
      if (name.startsWith(WRT)) result.wrt[name.slice(WRT.length)] = r[name]!;
      else if (!name.startsWith(GRAD)) result.outputs[name] = r[name]!;
    }
    return result;
  }

  private compiled(program: Program, lookup: ParamLookup): Promise<Compiled> {
    const hit = this.entries.get(program.key);
    if (hit) {
      this.entries.delete(program.key);
      this.entries.set(program.key, hit);
      return hit;
    }
    const made = compile(program, lookup);
    this.entries.set(program.key, made);
    made.then(
      (c) => {
        if (this.entries.get(program.key) !== made) return;
        this.constantBytes.set(program.key, c.constantBytes);
        this.evict(program.key);
      },
      () => this.entries.delete(program.key),
    );
    this.evict(program.key);
    return made;
  }

  /** Drops the least recently used sessions beyond the bounds (never `keep`, the one just asked for). */
  private evict(keep: string): void {
    const held = () => [...this.constantBytes.values()].reduce((a, b) => a + b, 0);
    while (this.entries.size > this.maxSessions || (held() > this.maxConstantBytes && this.entries.size > 1)) {
      const key = [...this.entries.keys()].find((k) => k !== keep);
      if (key === undefined) return;
      const oldest = this.entries.get(key)!;
      this.entries.delete(key);
      this.constantBytes.delete(key);
      void oldest.then((c) => c.session.release()).catch(() => undefined);
    }
  }

  /** Releases every session. */
  async clear(): Promise<void> {
    const all = [...this.entries.values()];
    this.entries.clear();
    this.constantBytes.clear();
    await Promise.all(all.map((c) => c.then((x) => x.session.release()).catch(() => undefined)));
  }
}

async function compile(program: Program, lookup: ParamLookup): Promise<Compiled> {
  const rt = await getRuntime();
  const b = new ProgramBuilder();
  const { outputs, loss, wrt = {} } = program.build(b);
  const baked: Compiled['baked'] = [];
  if (rt.bakeFrozenWeights) {
    for (const [name, p] of b.params) {
      const param = lookup(name);
      if (p.grad || !param || param.trainable) continue;
      const data = param.data;
      b.g.bindInput(p.sym, () => data);
      baked.push([name, param, data]);
    }
  }
  const all: Record<string, Sym> = { ...outputs };
  if (loss) {
    if (loss.size !== 1) throw new Error(`program ${program.key}: the loss must be a scalar, got [${loss.shape}]`);
    const graded = [...b.params].filter(([, p]) => p.grad);
    const keys = Object.keys(wrt);
    const targets = [...keys.map((k) => wrt[k]!), ...graded.map(([, p]) => p.sym)];
    const saved = rt.savedActivations === 'auto' ? (b.quantized ? 'float16' : 'float32') : rt.savedActivations;
    const weights = new Set([...b.params.values()].map((p) => p.sym.name));
    const grads = gradients(b.o, loss, b.o.constFloat([1], loss.shape), targets, { recompute: rt.gradientCheckpointing, savedActivations: saved, weights });
    keys.forEach((k, i) => (all[WRT + k] = grads[i]!));
    graded.forEach(([name], i) => (all[GRAD + name] = grads[keys.length + i]!));
  } else if (Object.keys(wrt).length) {
    throw new Error(`program ${program.key}: gradients need a loss`);
  }
  // onnxruntime-node reads file-backed constants itself (mapped, then prepacked); onnxruntime-web gets them inside
  // the serialised model
  const folders = new Set([...b.external.values()].map((e) => e.source.folder));
  if (folders.size > 1) throw new Error(`program ${program.key}: constants from more than one folder (${[...folders].join(', ')})`);
  const external = rt.name === 'onnxruntime-node' && folders.size === 1;
  const model = b.g.toModel(all, [], external ? (name) => {
    const e = b.external.get(name);
    return e && { location: e.source.fileName, offset: e.offset };
  } : undefined);
  const inputs = new Set(model.inputNames);
  const paramInputs = [...b.params.keys()].filter((name) => inputs.has(PARAM + name));
  const paramGrads = [...b.params.keys()].filter((name) => (GRAD + name) in all);
  const masks = (b.o.dropoutMasks ?? []).filter((m) => inputs.has(m.name));
  const session = await rt.createSession(model.bytes, {
    ...(external && { externalFolder: [...folders][0]! }),
    ...(b.external.size > 0 && { constantFolding: false }),
    memArena: wantsArena(b, !!loss, rt.gradientCheckpointing),
    // A float training run's block is as large as everything its backward pass reads, and a block that size is
    // mapped fresh by the allocator on every run: its page faults were 15–25 % of a base-size step's time. Tensor
    // by tensor, the allocator reuses freed memory from run to run instead (below its mmap threshold, which the
    // ptune command raises: src/cli/process-env.ts). BERT-base, 2026-12-02: P-tuning step 0.91 against 1.01 s,
    // 863 against 880 MB; full fine-tuning's gradient 1.53 against 1.97 s, 2,466 against 2,393 MB. Over quantized
    // weights the block stays: tensor by tensor, the int8 P-tuning step took 0.59 against 0.39 s and 1,034
    // against 940 MB.
    memPattern: !loss || b.quantized,
  });
  const dataInputs = new Set([...inputs].filter((n) => !n.startsWith(PARAM) && !masks.some((m) => m.name === n)));
  return { session, constantBytes: model.constantBytes, baked, inputs: dataInputs, outputs: Object.keys(all), paramInputs, paramGrads, masks };
}

/** Parameter bytes up to which a program runs in ONNX Runtime's CPU memory arena. */
const ARENA_MAX_PARAM_BYTES = 64 * 2 ** 20;

/**
 * A training program over small weights reuses its buffers from run to run in ONNX Runtime's arena (bert-mini's
 * full fine-tuning step: 53–70 against 75–78 ms without it, with the ptune command's 32 MiB mmap threshold; 43–48
 * against 80–85 ms with a 128 KiB one; a two-relation `ptune lama` run peaks at 436 against 343 MB). Inference
 * programs run without it: the heap reuses their buffers as well (bert-mini forward 11–14 ms either way), and
 * `ptune serve`, compiling a program per shape, held 556–639 MB with an arena per session against 280–295 MB
 * without. Over larger weights the arena's growth costs more memory than it saves time (BERT-base full
 * fine-tuning: 2.91 against 2.41 GB for 15 % of the step). Not with gradient checkpointing, the mode for memory.
 */
function wantsArena(b: ProgramBuilder, training: boolean, recompute: boolean): boolean {
  if (!training || recompute) return false;
  let bytes = 0;
  for (const { sym } of b.params.values()) bytes += sym.size * 4;
  return bytes <= ARENA_MAX_PARAM_BYTES;
}

/** The process-wide cache all models' programs compile into. */
export const programs = new ProgramCache();
