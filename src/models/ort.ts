import { tf } from '../engine/index.js';
import { Graph, OnnxOps, OrtSession, gradients, savedForBackward, type HostTensor, type Sym } from '../engine/onnx/index.js';
import { BertLM, bertHidden, bertWeights } from './bert.js';
import { Gpt2LM, gpt2Hidden, gpt2Weights } from './gpt2.js';
import { LlamaLM, attentionBias, llamaForward, positionsFromMask, ropeAt, ropeTables } from './llama.js';
import type { KvCache, LanguageModel, LmBatch } from './lm.js';

type Tensor = tf.Tensor;

export interface OrtOptions {
  /** ONNX Runtime intra-op threads; default: the number of CPU cores */
  threads?: number;
  /** sequence lengths are padded up to a multiple of this, so nearby lengths share a session; default 8 */
  seqBucket?: number;
  /** let idle ORT threads spin-wait between ops (see SessionOptions.spin); default false */
  spin?: boolean;
  /** compiled sessions kept per model (each holds a copy of the frozen weights); default 8 */
  maxSessions?: number;
}

interface HiddenInputs {
  embeds: Sym;
  attentionMask: Sym;
  positionIds?: Sym;
  tokenTypeIds?: Sym;
}

type HiddenFn = (o: OnnxOps, weight: (name: string) => Sym, inp: HiddenInputs) => Sym;

/** The tfjs model's own forward function, run on symbolic tensors. */
function hiddenFunction(base: LanguageModel): HiddenFn {
  if (base instanceof BertLM) return (o, w, inp) => bertHidden(o, bertWeights(base.config, w), base.config, inp);
  if (base instanceof Gpt2LM) return (o, w, inp) => gpt2Hidden(o, gpt2Weights(base.config, w), base.config, inp);
  if (base instanceof LlamaLM) {
    const c = base.config;
    const { cos, sin } = ropeTables(c);
    const half = c.hiddenSize / c.numHeads / 2;
    return (o, w, inp) => {
      const s = inp.embeds.shape[1]!;
      const positions = inp.positionIds ?? positionsFromMask(o, inp.attentionMask);
      const rope = ropeAt(o, o.constFloat(cos, [c.maxPositions, half]), o.constFloat(sin, [c.maxPositions, half]), positions);
      return llamaForward(o, w, c, inp.embeds, rope, attentionBias(o, s, 0, inp.attentionMask)).hidden;
    };
  }
  throw new Error(`ort engine: ${base.info.source} (${base.info.family}) is not a BertLM, Gpt2LM or LlamaLM`);
}

/**
 * Inference: `forward` only. Training: `forward` also outputs the activations the gradient reads (`saved`,
 * as `save:<name>`), and `backward` takes them back with d_hidden, so the forward is never recomputed.
 */
interface Compiled {
  forward: OrtSession;
  saved: string[];
  backward?: OrtSession;
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

/** Which optional inputs a batch carries; part of the session key. */
interface Shape {
  b: number;
  s: number;
  positions: boolean;
  types: boolean;
}

const WEIGHT_PREFIX = 'param:';
const GRAD_PREFIX = 'grad:';
const SAVE_PREFIX = 'save:';

/**
 * A LanguageModel whose `run` (input embeddings → hidden states) executes as an ONNX Runtime graph compiled
 * from the same model code, and whose gradient runs a reverse-mode graph derived from it. `embed`, `logitsAt`,
 * `decodeStep` and the weights stay with the tfjs model, which remains the reference.
 *
 * Frozen weights are baked into each session as initializers (read once at compile time: change them and
 * sessions must be dropped with `resetSessions`); trainable weights (tf.Variable.trainable) are fed on every
 * call and receive gradients through tfjs's tape.
 */
export class OrtLM implements LanguageModel {
  readonly info: LanguageModel['info'];
  readonly tokenizer: LanguageModel['tokenizer'];
  readonly decodeStep?: (ids: Tensor, cache: KvCache | null) => { logits: Tensor; cache: KvCache };
  private readonly hidden: HiddenFn;
  private readonly sessions = new Map<string, Compiled>();
  private usedWeights: Set<string> | null = null;
  private readonly opts: Required<OrtOptions>;

  readonly base: LanguageModel;

  /** `base`: the tfjs model (an OrtLM is unwrapped to its tfjs model). */
  constructor(base: LanguageModel, opts: OrtOptions = {}) {
    this.base = base instanceof OrtLM ? base.base : base;
    base = this.base;
    this.info = base.info;
    this.tokenizer = base.tokenizer;
    this.hidden = hiddenFunction(base);
    if (base.decodeStep) this.decodeStep = base.decodeStep.bind(base);
    this.opts = { threads: opts.threads ?? 0, seqBucket: opts.seqBucket ?? 8, maxSessions: opts.maxSessions ?? 8, spin: opts.spin ?? false };
  }

  embed(ids: Tensor): Tensor {
    return this.base.embed(ids);
  }

  logitsAt(hidden: Tensor, positions: Tensor, candidates?: Tensor): Tensor {
    return this.base.logitsAt(hidden, positions, candidates);
  }

  parameters(): Map<string, tf.Variable> {
    return this.base.parameters();
  }

  run(batch: LmBatch): Tensor {
    const [b, s, h] = batch.embeds.shape as [number, number, number];
    if (s > this.info.maxPositions) {
      throw new Error(`${this.info.family}: sequence of ${s} tokens exceeds the ${this.info.maxPositions} positions of ${this.info.source}`);
    }
    const sp = Math.min(Math.ceil(s / this.opts.seqBucket) * this.opts.seqBucket, this.info.maxPositions);
    const shape: Shape = { b, s: sp, positions: !!batch.positionIds, types: !!batch.tokenTypeIds };
    const feeds: Record<string, HostTensor> = {
      embeds: { data: padRows(batch.embeds.dataSync() as Float32Array, b, s, sp, h), dims: [b, sp, h] },
      attention_mask: { data: padRows(toInt32(batch.attentionMask), b, s, sp, 1), dims: [b, sp] },
    };
    if (batch.positionIds) feeds.position_ids = { data: padRows(toInt32(batch.positionIds), b, s, sp, 1), dims: [b, sp] };
    if (batch.tokenTypeIds) feeds.token_type_ids = { data: padRows(toInt32(batch.tokenTypeIds), b, s, sp, 1), dims: [b, sp] };
    const trainable = this.trainableWeights();
    const names = trainable.map(([n]) => n);
    const kind = gradientRecording() ? 'train' : 'infer';
    const forward = tf.customGrad((...args: unknown[]) => {
      const weights = args.slice(1, 1 + trainable.length) as Tensor[];
      weights.forEach((v, i) => (feeds[WEIGHT_PREFIX + names[i]!] = { data: v.dataSync() as Float32Array, dims: v.shape }));
      const compiled = this.session(kind, shape, names);
      const out = compiled.forward.run(feeds, ['hidden', ...compiled.saved.map((n) => SAVE_PREFIX + n)]);
      const value = tf.tensor(unpadRows(out.hidden!.data as Float32Array, b, sp, s, h), [b, s, h]);
      const gradFunc = (dy: Tensor): Tensor[] => {
        if (!compiled.backward) throw new Error('ort engine: gradient requested outside tf.grad / tf.variableGrads');
        const backFeeds: Record<string, HostTensor> = { ...feeds };
        for (const n of compiled.saved) backFeeds[n] = out[SAVE_PREFIX + n]!;
        backFeeds.d_hidden = { data: padRows(dy.dataSync() as Float32Array, b, s, sp, h), dims: [b, sp, h] };
        const outputs = ['d_embeds', ...names.map((n) => GRAD_PREFIX + n)];
        const r = compiled.backward.run(backFeeds, outputs);
        const dEmbeds = tf.tensor(unpadRows(r.d_embeds!.data as Float32Array, b, sp, s, h), [b, s, h]);
        return [dEmbeds, ...weights.map((v, i) => tf.tensor(r[outputs[i + 1]!]!.data as Float32Array, v.shape))];
      };
      return { value, gradFunc };
    });
    return (forward as (...t: Tensor[]) => Tensor)(batch.embeds, ...trainable.map(([, v]) => v));
  }

  /** Number of compiled ONNX Runtime sessions held. */
  get sessionCount(): number {
    return this.sessions.size;
  }

  /** Drops every compiled session (e.g. after frozen weights were overwritten). */
  resetSessions(): void {
    for (const c of this.sessions.values()) disposeCompiled(c);
    this.sessions.clear();
  }

  dispose(): void {
    this.resetSessions();
    this.base.dispose();
  }

  /** Trainable weights that the hidden states depend on (not, e.g., the output head), in a fixed order. */
  private trainableWeights(): [string, tf.Variable][] {
    const params = this.base.parameters();
    const trainable = [...params].filter(([, v]) => v.trainable);
    if (trainable.length === 0) return [];
    if (!this.usedWeights) {
      const g = new Graph();
      const o = new OnnxOps(g);
      const weight = (name: string) => g.input(WEIGHT_PREFIX + name, params.get(name)!.shape, 'float32');
      const hidden = this.hidden(o, weight, this.symbolicInputs(g, { b: 1, s: 1, positions: false, types: true }));
      const names = g.toModel({ hidden }).inputNames.filter((n) => n.startsWith(WEIGHT_PREFIX));
      this.usedWeights = new Set(names.map((n) => n.slice(WEIGHT_PREFIX.length)));
    }
    return trainable.filter(([name]) => this.usedWeights!.has(name));
  }

  private symbolicInputs(g: Graph, shape: Shape): HiddenInputs {
    const { b, s } = shape;
    return {
      embeds: g.input('embeds', [b, s, this.info.hiddenSize], 'float32'),
      attentionMask: g.input('attention_mask', [b, s], 'int32'),
      ...(shape.positions && { positionIds: g.input('position_ids', [b, s], 'int32') }),
      ...(shape.types && { tokenTypeIds: g.input('token_type_ids', [b, s], 'int32') }),
    };
  }

  private session(kind: 'infer' | 'train', shape: Shape, trainableNames: string[]): Compiled {
    const key = `${kind} ${shape.b}x${shape.s} p${+shape.positions} t${+shape.types} w${trainableNames.length}`;
    const hit = this.sessions.get(key);
    if (hit) {
      // most recently used last
      this.sessions.delete(key);
      this.sessions.set(key, hit);
      return hit;
    }
    const compiled = this.compile(kind, shape, trainableNames);
    this.sessions.set(key, compiled);
    while (this.sessions.size > this.opts.maxSessions) {
      const [oldest, c] = this.sessions.entries().next().value as [string, Compiled];
      disposeCompiled(c);
      this.sessions.delete(oldest);
    }
    return compiled;
  }

  private compile(kind: 'infer' | 'train', shape: Shape, trainableNames: string[]): Compiled {
    const g = new Graph();
    const o = new OnnxOps(g);
    const params = this.base.parameters();
    const trainable = new Set(trainableNames);
    const syms = new Map<string, Sym>();
    const weight = (name: string): Sym => {
      let sym = syms.get(name);
      if (sym) return sym;
      const v = params.get(name);
      if (!v) throw new Error(`ort engine: ${this.info.source} has no weight "${name}"`);
      sym = trainable.has(name)
        ? g.input(WEIGHT_PREFIX + name, v.shape, 'float32')
        : g.constant(() => v.dataSync() as Float32Array, v.shape, 'float32', name);
      syms.set(name, sym);
      return sym;
    };
    const inputs = this.symbolicInputs(g, shape);
    const hidden = this.hidden(o, weight, inputs);
    const sessionOpts = { threads: this.opts.threads || undefined, spin: this.opts.spin };
    if (kind === 'infer') return { forward: new OrtSession(g.toModel({ hidden }).bytes, sessionOpts), saved: [] };
    const forwardNodes = g.nodes.length;
    const dHidden = g.input('d_hidden', hidden.shape, 'float32');
    const grads = gradients(o, hidden, dHidden, [inputs.embeds, ...trainableNames.map(weight)]);
    const saved = savedForBackward(g, forwardNodes);
    const fwdOutputs: Record<string, Sym> = { hidden };
    for (const v of saved) fwdOutputs[SAVE_PREFIX + v.name] = v;
    const bwdOutputs: Record<string, Sym> = { d_embeds: grads[0]! };
    trainableNames.forEach((n, i) => (bwdOutputs[GRAD_PREFIX + n] = grads[i + 1]!));
    return {
      forward: new OrtSession(g.toModel(fwdOutputs).bytes, sessionOpts),
      saved: saved.map((v) => v.name),
      backward: new OrtSession(g.toModel(bwdOutputs, saved).bytes, sessionOpts),
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
