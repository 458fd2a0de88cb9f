import { tf } from '../engine/index.js';
import { Graph, OnnxOps, OrtSession, WeightFile, gradients, savedForBackward, type HostTensor, type SessionOptions, type Sym } from '../engine/onnx/index.js';
import { lmFunctions, type HiddenInputs, type LmFunctions, type WeightOf } from './functions.js';
import type { KvCache, LanguageModel, LmBatch } from './lm.js';

type Tensor = tf.Tensor;

export interface OrtOptions {
  /** ONNX Runtime intra-op threads; default: the number of CPU cores */
  threads?: number;
  /** sequence lengths are padded up to a multiple of this, so nearby lengths share a session; default 8 */
  seqBucket?: number;
  /** let idle ORT threads spin-wait between ops (see SessionOptions.spin); default false */
  spin?: boolean;
  /** compiled sessions kept per model; default 8 */
  maxSessions?: number;
  /**
   * frozen-weight bytes the kept sessions may read together (they map the model's shared weight file and add
   * their own prepacked copies); least recently used sessions are dropped beyond it, the newest is always
   * kept; default 2 GiB
   */
  maxSessionBytes?: number;
}

type Weight = WeightOf<Sym>;

/**
 * Inference: `forward` only. Training: `forward` also outputs the activations the gradient reads (`saved`,
 * as `save:<name>`), and `backward` takes them back with d_out, so the forward is never recomputed.
 */
interface Compiled {
  forward: OrtSession;
  saved: string[];
  backward?: OrtSession;
  /** frozen-weight bytes the sessions read (initializers, external or embedded) */
  bytes: number;
}

/** A program compiled into one session: the inputs it declares, the outputs it returns, the LM weights it is fed. */
interface CompiledProgram extends Compiled {
  inputNames: Set<string>;
  outputNames: string[];
  weightInputs: string[];
}

/**
 * Code around the model (a prompt encoder, a head, a loss) and the model itself, as one graph. `build` declares
 * the graph inputs with `g.input`, reads LM weights through `w` and the model's computation through `fns`,
 * and returns named outputs. Compiled for training, the program also returns the gradient of the scalar
 * `loss` w.r.t. each `wrt` entry and each trainable LM weight it reads, in the same session run.
 */
export interface GraphProgram {
  /** identifies the graph (shapes, options) in the session cache */
  key: string;
  build(g: Graph, o: OnnxOps, w: Weight, fns: LmFunctions): { outputs: Record<string, Sym>; loss?: Sym; wrt?: Record<string, Sym> };
}

export interface ProgramResult {
  outputs: Record<string, HostTensor>;
  /** d loss / d wrt[key], by key (training only) */
  grads: Record<string, HostTensor>;
  /** d loss / d weight for the trainable LM weights the program reads, by Hugging Face name (training only) */
  weightGrads: Map<string, HostTensor>;
}

function disposeCompiled(c: Compiled): void {
  c.forward.dispose();
  c.backward?.dispose();
}

/** Whether tfjs is recording a gradient tape (inside tf.grad, tf.variableGrads, ...). */
function gradientRecording(): boolean {
  const engine = tf.engine() as unknown as { state: { gradientDepth: number } };
  return engine.state.gradientDepth > 0;
}

type FnName = 'body' | 'head';

/**
 * One model function as a graph: `build` declares the graph inputs (the differentiable float input named
 * "x", integer side inputs by their feed names) and returns the output.
 */
interface FnCall {
  fn: FnName;
  /** shapes and optional inputs, for the session cache */
  key: string;
  build(g: Graph, o: OnnxOps, w: Weight): { x: Sym; out: Sym };
  /** every input, "x" included, already padded to the graph's shapes */
  feeds: Record<string, HostTensor>;
  /** the tfjs tensor "x" came from (gradients flow back to it) */
  x: Tensor;
  outShape: number[];
  /** graph output → outShape; tfjs gradient of the output → graph shape; graph gradient of x → x's shape */
  unpadOut(d: Float32Array): Float32Array;
  padDOut(d: Float32Array): Float32Array;
  unpadDx(d: Float32Array): Float32Array;
}

const WEIGHT_PREFIX = 'param:';
const GRAD_PREFIX = 'grad:';
const SAVE_PREFIX = 'save:';
const WRT_PREFIX = 'd:';

/**
 * A LanguageModel whose `run` (input embeddings → hidden states) and `logitsAt` execute as ONNX Runtime graphs
 * compiled from the same model code, with gradients from reverse-mode graphs derived from them and handed to
 * tfjs's tape through tf.customGrad. `embed`, `decodeStep` and the weights stay with the tfjs model, which
 * remains the reference.
 *
 * Frozen weights are written once to a weight file the sessions reference as external data (read at the
 * first compile: change them and drop the sessions and the file with `resetSessions`); trainable weights
 * (tf.Variable.trainable) are fed on every call and receive gradients through tfjs's tape. `runProgram`
 * compiles code around the model (a P-tuning step) together with it into one session.
 */
export class OrtLM implements LanguageModel {
  readonly info: LanguageModel['info'];
  readonly tokenizer: LanguageModel['tokenizer'];
  readonly decodeStep?: (ids: Tensor, cache: KvCache | null) => { logits: Tensor; cache: KvCache };
  readonly base: LanguageModel;
  private readonly fns: LmFunctions;
  private readonly sessions = new Map<string, Compiled>();
  private readonly usedWeights = new Map<FnName, Set<string>>();
  private readonly opts: Required<OrtOptions>;
  private weightFile: WeightFile | 'embedded' | null = null;

  /** `base`: the tfjs model (an OrtLM is unwrapped to its tfjs model). */
  constructor(base: LanguageModel, opts: OrtOptions = {}) {
    this.base = base instanceof OrtLM ? base.base : base;
    base = this.base;
    this.info = base.info;
    this.tokenizer = base.tokenizer;
    this.fns = lmFunctions(base);
    if (base.decodeStep) this.decodeStep = base.decodeStep.bind(base);
    this.opts = {
      threads: opts.threads ?? 0,
      seqBucket: opts.seqBucket ?? 8,
      maxSessions: opts.maxSessions ?? 8,
      maxSessionBytes: opts.maxSessionBytes ?? 2 ** 31,
      spin: opts.spin ?? false,
    };
  }

  embed(ids: Tensor): Tensor {
    return this.base.embed(ids);
  }

  parameters(): Map<string, tf.Variable> {
    return this.base.parameters();
  }

  run(batch: LmBatch): Tensor {
    const [b, s, h] = batch.embeds.shape as [number, number, number];
    if (s > this.info.maxPositions) {
      throw new Error(`${this.info.family}: sequence of ${s} tokens exceeds the ${this.info.maxPositions} positions of ${this.info.source}`);
    }
    const sp = this.paddedLength(s);
    const feeds: Record<string, HostTensor> = {
      x: { data: padRows(batch.embeds.dataSync() as Float32Array, b, s, sp, h), dims: [b, sp, h] },
      attention_mask: { data: padRows(toInt32(batch.attentionMask), b, s, sp, 1), dims: [b, sp] },
    };
    if (batch.positionIds) feeds.position_ids = { data: padRows(toInt32(batch.positionIds), b, s, sp, 1), dims: [b, sp] };
    if (batch.tokenTypeIds) feeds.token_type_ids = { data: padRows(toInt32(batch.tokenTypeIds), b, s, sp, 1), dims: [b, sp] };
    const positions = !!batch.positionIds;
    const types = !!batch.tokenTypeIds;
    return this.call({
      fn: 'body',
      key: `${b}x${sp} p${+positions} t${+types}`,
      build: (g, o, w) => {
        const x = g.input('x', [b, sp, h], 'float32');
        const inp: HiddenInputs<Sym> = {
          embeds: x,
          attentionMask: g.input('attention_mask', [b, sp], 'int32'),
          ...(positions && { positionIds: g.input('position_ids', [b, sp], 'int32') }),
          ...(types && { tokenTypeIds: g.input('token_type_ids', [b, sp], 'int32') }),
        };
        return { x, out: this.fns.hidden(o, w, inp) };
      },
      feeds,
      x: batch.embeds,
      outShape: [b, s, h],
      unpadOut: (d) => unpadRows(d, b, sp, s, h),
      padDOut: (d) => padRows(d, b, s, sp, h),
      unpadDx: (d) => unpadRows(d, b, sp, s, h),
    });
  }

  logitsAt(hidden: Tensor, positions: Tensor, candidates?: Tensor): Tensor {
    const [b, s, h] = hidden.shape as [number, number, number];
    const sp = this.paddedLength(s);
    const c = candidates?.shape[0];
    const feeds: Record<string, HostTensor> = {
      x: { data: padRows(hidden.dataSync() as Float32Array, b, s, sp, h), dims: [b, sp, h] },
      positions: { data: toInt32(positions), dims: [b] },
    };
    if (candidates) feeds.candidates = { data: toInt32(candidates), dims: [c!] };
    const width = c ?? this.info.vocabSize;
    const same = (d: Float32Array) => d;
    return this.call({
      fn: 'head',
      key: `${b}x${sp} c${c ?? 'all'}`,
      build: (g, o, w) => {
        const x = g.input('x', [b, sp, h], 'float32');
        const pos = g.input('positions', [b], 'int32');
        const cand = candidates ? g.input('candidates', [c!], 'int32') : undefined;
        return { x, out: this.fns.logitsAt(o, w, x, pos, cand) };
      },
      feeds,
      x: hidden,
      outShape: [b, width],
      unpadOut: same,
      padDOut: same,
      unpadDx: (d) => unpadRows(d, b, sp, s, h),
    });
  }

  /** Number of compiled ONNX Runtime sessions held (a training entry counts once for its two sessions). */
  get sessionCount(): number {
    return this.sessions.size;
  }

  /** Drops every compiled session (e.g. after frozen weights were overwritten). */
  resetSessions(): void {
    for (const c of this.sessions.values()) disposeCompiled(c);
    this.sessions.clear();
    if (this.weightFile instanceof WeightFile) this.weightFile.dispose();
    this.weightFile = null;
  }

  /** The external weight file, or null when it cannot be written (no temp space): weights are then embedded. */
  private weights(): { place?: (name: string) => { location: string; offset: number } | undefined; session(model: Uint8Array, opts: SessionOptions): OrtSession } {
    if (this.weightFile === null) {
      try {
        const frozen = [...this.base.parameters()].filter(([, v]) => !v.trainable);
        this.weightFile = new WeightFile(frozen.map(([name, v]) => [name, () => v.dataSync() as Float32Array]));
      } catch {
        this.weightFile = 'embedded';
      }
    }
    const file = this.weightFile;
    if (file === 'embedded') return { session: (model, opts) => new OrtSession(model, opts) };
    return { place: (name) => file.place(name), session: (model, opts) => file.session(model, opts) };
  }

  dispose(): void {
    this.resetSessions();
    this.base.dispose();
  }

  /**
   * Runs `program` as one ONNX Runtime session, compiled on first use per (key, train). With `train` the run
   * also returns the loss's gradients: forward and backward in one call, so no activation leaves the runtime.
   * `feeds` may hold inputs the compiled graph does not read (they are dropped).
   */
  runProgram(program: GraphProgram, feeds: Record<string, HostTensor>, train: boolean): ProgramResult {
    const params = this.base.parameters();
    let trainable = 0;
    for (const v of params.values()) if (v.trainable) trainable++;
    const key = `program ${program.key} ${train ? 'train' : 'infer'} w${trainable}`;
    let compiled = this.sessions.get(key) as CompiledProgram | undefined;
    if (compiled) this.touch(key);
    else {
      compiled = this.compileProgram(program, train);
      this.store(key, compiled);
    }
    const all: Record<string, HostTensor> = {};
    for (const [name, t] of Object.entries(feeds)) if (compiled.inputNames.has(name)) all[name] = t;
    for (const n of compiled.weightInputs) {
      const v = params.get(n)!;
      all[WEIGHT_PREFIX + n] = { data: v.dataSync() as Float32Array, dims: v.shape };
    }
    for (const n of compiled.inputNames) if (!all[n]) throw new Error(`ort program ${program.key}: input "${n}" was not fed`);
    const r = compiled.forward.run(all, compiled.outputNames);
    const result: ProgramResult = { outputs: {}, grads: {}, weightGrads: new Map() };
    for (const [name, t] of Object.entries(r)) {
      if (name.startsWith(WRT_PREFIX)) result.grads[name.slice(WRT_PREFIX.length)] = t;
      else if (name.startsWith(GRAD_PREFIX)) result.weightGrads.set(name.slice(GRAD_PREFIX.length), t);
      else result.outputs[name] = t;
    }
    return result;
  }

  private compileProgram(program: GraphProgram, train: boolean): CompiledProgram {
    const g = new Graph();
    const o = new OnnxOps(g);
    const { weight, inputs: weightInputs } = this.weightReader(g, (_name, v) => v.trainable);
    const { outputs, loss, wrt = {} } = program.build(g, o, weight, this.fns);
    const all: Record<string, Sym> = { ...outputs };
    if (train) {
      if (!loss) throw new Error(`ort program ${program.key}: training needs a loss`);
      if (loss.size !== 1) throw new Error(`ort program ${program.key}: the loss must be a scalar, got [${loss.shape}]`);
      const keys = Object.keys(wrt);
      const targets = [...keys.map((k) => wrt[k]!), ...weightInputs.map(weight)];
      const grads = gradients(o, loss, o.constFloat([1], loss.shape), targets);
      keys.forEach((k, i) => (all[WRT_PREFIX + k] = grads[i]!));
      weightInputs.forEach((n, i) => (all[GRAD_PREFIX + n] = grads[keys.length + i]!));
    }
    const file = this.weights();
    const model = g.toModel(all, [], file.place);
    const session = file.session(model.bytes, { threads: this.opts.threads || undefined, spin: this.opts.spin });
    return {
      forward: session,
      saved: [],
      bytes: model.constantBytes,
      inputNames: new Set(model.inputNames),
      outputNames: Object.keys(all),
      weightInputs,
    };
  }

  /** Sequence length a batch of `s` positions is padded to, so nearby lengths share compiled sessions. */
  paddedLength(s: number): number {
    return Math.min(Math.ceil(s / this.opts.seqBucket) * this.opts.seqBucket, Math.max(s, this.info.maxPositions));
  }

  private call(f: FnCall): Tensor {
    const trainable = this.trainableWeights(f);
    const names = trainable.map(([n]) => n);
    const kind = gradientRecording() ? 'train' : 'infer';
    const feeds = f.feeds;
    const forward = tf.customGrad((...args: unknown[]) => {
      const weights = args.slice(1, 1 + trainable.length) as Tensor[];
      weights.forEach((v, i) => (feeds[WEIGHT_PREFIX + names[i]!] = { data: v.dataSync() as Float32Array, dims: v.shape }));
      const compiled = this.session(f, kind, names);
      const out = compiled.forward.run(feeds, ['out', ...compiled.saved.map((n) => SAVE_PREFIX + n)]);
      const value = tf.tensor(f.unpadOut(out.out!.data as Float32Array), f.outShape);
      const gradFunc = (dy: Tensor): Tensor[] => {
        if (!compiled.backward) throw new Error('ort engine: gradient requested outside tf.grad / tf.variableGrads');
        // evicted since the forward ran: a recompile builds the same graph, so the saved names still match
        const backward = compiled.backward.disposed ? this.session(f, 'train', names).backward! : compiled.backward;
        const backFeeds: Record<string, HostTensor> = { ...feeds };
        for (const n of compiled.saved) backFeeds[n] = out[SAVE_PREFIX + n]!;
        backFeeds.d_out = { data: f.padDOut(dy.dataSync() as Float32Array), dims: out.out!.dims };
        const outputs = ['d_x', ...names.map((n) => GRAD_PREFIX + n)];
        const r = backward.run(backFeeds, outputs);
        const dx = tf.tensor(f.unpadDx(r.d_x!.data as Float32Array), f.x.shape);
        return [dx, ...weights.map((v, i) => tf.tensor(r[outputs[i + 1]!]!.data as Float32Array, v.shape))];
      };
      return { value, gradFunc };
    });
    return (forward as (...t: Tensor[]) => Tensor)(f.x, ...trainable.map(([, v]) => v));
  }

  /** Trainable weights that `f` reads (the body never reads the output head), in a fixed order. */
  private trainableWeights(f: FnCall): [string, tf.Variable][] {
    const params = this.base.parameters();
    const trainable = [...params].filter(([, v]) => v.trainable);
    if (trainable.length === 0) return [];
    let used = this.usedWeights.get(f.fn);
    if (!used) {
      const g = new Graph();
      const { out } = f.build(g, new OnnxOps(g), this.weightReader(g, () => true).weight);
      // the model's weight structs read every weight; the serialised graph keeps those the output depends on
      const names = g.toModel({ out }).inputNames.filter((n) => n.startsWith(WEIGHT_PREFIX));
      used = new Set(names.map((n) => n.slice(WEIGHT_PREFIX.length)));
      this.usedWeights.set(f.fn, used);
    }
    return trainable.filter(([name]) => used.has(name));
  }

  private session(f: FnCall, kind: 'infer' | 'train', trainableNames: string[]): Compiled {
    const key = `${f.fn} ${kind} ${f.key} w${trainableNames.length}`;
    const hit = this.sessions.get(key);
    if (hit) {
      this.touch(key);
      return hit;
    }
    const compiled = this.compile(f, kind, trainableNames);
    this.store(key, compiled);
    return compiled;
  }

  /** Marks a cached session most recently used (the cache evicts from the front). */
  private touch(key: string): void {
    const hit = this.sessions.get(key)!;
    this.sessions.delete(key);
    this.sessions.set(key, hit);
  }

  private store(key: string, compiled: Compiled): void {
    this.sessions.set(key, compiled);
    const total = () => [...this.sessions.values()].reduce((n, c) => n + c.bytes, 0);
    while (this.sessions.size > 1 && (this.sessions.size > this.opts.maxSessions || total() > this.opts.maxSessionBytes)) {
      const [oldest, c] = this.sessions.entries().next().value as [string, Compiled];
      disposeCompiled(c);
      this.sessions.delete(oldest);
    }
  }

  /**
   * Reads model weights into graph `g` on demand: those `isInput` picks become graph inputs ("param:<name>",
   * listed in `inputs` in the order read), the others constants read from the tfjs weights at serialisation.
   */
  private weightReader(g: Graph, isInput: (name: string, v: tf.Variable) => boolean): { weight: Weight; inputs: string[] } {
    const params = this.base.parameters();
    const syms = new Map<string, Sym>();
    const inputs: string[] = [];
    const weight = (name: string): Sym => {
      let sym = syms.get(name);
      if (sym) return sym;
      const v = params.get(name);
      if (!v) throw new Error(`ort engine: ${this.info.source} has no weight "${name}"`);
      if (isInput(name, v)) {
        sym = g.input(WEIGHT_PREFIX + name, v.shape, 'float32');
        inputs.push(name);
      } else sym = g.constant(() => v.dataSync() as Float32Array, v.shape, 'float32', name);
      syms.set(name, sym);
      return sym;
    };
    return { weight, inputs };
  }

  private compile(f: FnCall, kind: 'infer' | 'train', trainableNames: string[]): Compiled {
    const g = new Graph();
    const o = new OnnxOps(g);
    const trainable = new Set(trainableNames);
    const { weight } = this.weightReader(g, (name) => trainable.has(name));
    const { x, out } = f.build(g, o, weight);
    const sessionOpts = { threads: this.opts.threads || undefined, spin: this.opts.spin };
    const file = this.weights();
    const place = file.place;
    if (kind === 'infer') {
      const model = g.toModel({ out }, [], place);
      return { forward: file.session(model.bytes, sessionOpts), saved: [], bytes: model.constantBytes };
    }
    const forwardNodes = g.nodes.length;
    const dOut = g.input('d_out', out.shape, 'float32');
    const grads = gradients(o, out, dOut, [x, ...trainableNames.map(weight)]);
    const saved = savedForBackward(g, forwardNodes);
    const fwdOutputs: Record<string, Sym> = { out };
    for (const v of saved) fwdOutputs[SAVE_PREFIX + v.name] = v;
    const bwdOutputs: Record<string, Sym> = { d_x: grads[0]! };
    trainableNames.forEach((n, i) => (bwdOutputs[GRAD_PREFIX + n] = grads[i + 1]!));
    const fwdModel = g.toModel(fwdOutputs, [], place);
    const bwdModel = g.toModel(bwdOutputs, saved, place);
    return {
      forward: file.session(fwdModel.bytes, sessionOpts),
      saved: saved.map((v) => v.name),
      backward: file.session(bwdModel.bytes, sessionOpts),
      bytes: fwdModel.constantBytes + bwdModel.constantBytes,
    };
  }
}

function toInt32(t: Tensor): Int32Array {
  const d = t.dataSync();
  return d instanceof Int32Array ? d : Int32Array.from(d as ArrayLike<number>);
}

/** [b, s, w] → [b, sp, w] with zero rows appended to each sequence. */
function padRows<A extends Float32Array | Int32Array>(src: A, b: number, s: number, sp: number, w: number): A {
  if (sp === s) return src;
  const out = new (src.constructor as new (n: number) => A)(b * sp * w);
  for (let i = 0; i < b; i++) out.set(src.subarray(i * s * w, (i + 1) * s * w), i * sp * w);
  return out;
}

/** [b, sp, w] → [b, s, w] */
function unpadRows(src: Float32Array, b: number, sp: number, s: number, w: number): Float32Array {
  if (sp === s) return src;
  const out = new Float32Array(b * s * w);
  for (let i = 0; i < b; i++) out.set(src.subarray(i * sp * w, i * sp * w + s * w), i * s * w);
  return out;
}
