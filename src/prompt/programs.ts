import type { Sym } from '../engine/onnx/index.js';
import type { Program, ProgramBuilder, ProgramGraph } from '../engine/program.js';
import type { HostTensor, Parameter } from '../engine/tensor.js';
import { rowsAt, type PastKv } from '../models/common.js';
import type { LanguageModel } from '../models/model.js';
import type { PromptEncoder } from './encoder.js';
import type { PrefixEncoder } from './prefix.js';
import type { LmKind } from '../models/lm.js';
import type { Rng } from '../util/rng.js';
import { crossEntropyOn, type Head } from './heads.js';
import { batchFeeds, paddedLength, paddedRows, spliceOn, type PromptBatch } from './ptuning.js';

/** A linear head's parameters inside programs: `head.weight`, `head.bias`. */
export const HEAD = 'head.';

/** The linear head reads the first token of a masked LM ([CLS]); everything else reads the answer position. */
export function readsFirstToken(head: Head, kind: LmKind): boolean {
  return head.spec.kind === 'linear' && kind === 'masked';
}

/** What `answerScores` reads: [B, S] int32 ids, mask and segment ids, [B] answer positions, the prompt rows. */
export interface AnswerInputs {
  ids: Sym;
  attentionMask: Sym;
  tokenTypeIds?: Sym;
  positions: Sym;
  /** [n, tokenDim] prompt embeddings, spliced in where `pseudoMask` [B, S, 1] is 1, row `pseudoIndex` [B, S] */
  prompts?: Sym;
  pseudoIndex?: Sym;
  pseudoMask?: Sym;
  /** deep prompts: keys and values before the tokens at every layer */
  past?: PastKv<Sym>;
  /** the head's own parameters (a linear head) get gradients */
  train?: boolean;
}

/**
 * The P-tuning forward shared by training, evaluation and export: input embeddings with the prompt rows
 * spliced in → LM → the final hidden state at each row's answer position → head scores [B, classes] (through
 * the LM head, or a linear head's own weights).
 */
export function answerScores(b: ProgramBuilder, lm: LanguageModel, head: Head, x: AnswerInputs): Sym {
  const { o } = b;
  const w = lm.weights(b);
  let embeds = lm.fns.embed(o, w, x.ids);
  if (x.prompts) embeds = spliceOn(o, embeds, x.prompts, x.pseudoIndex!, x.pseudoMask!);
  const lmOut = lm.fns.hidden(o, w, {
    embeds,
    attentionMask: x.attentionMask,
    ...(x.tokenTypeIds && { tokenTypeIds: x.tokenTypeIds }),
    ...(x.past && { past: x.past }),
    at: x.positions,
  });
  const read = lmOut.rows ?? rowsAt(o, lmOut.hidden, x.positions);
  if (head.params) {
    const p = (name: string) => b.param(HEAD + name, head.params!.get(name)!.shape, x.train ?? false);
    return o.dense(read, p('weight'), p('bias'));
  }
  const cand = head.candidates ? o.constInt(head.candidates, [head.candidates.length]) : undefined;
  return head.scoresOn(o, lm.fns.logits(o, w, read, cand));
}

type Output = { kind: 'train'; dropout: boolean; lmDropout: boolean } | { kind: 'scores' } | { kind: 'topk'; k: number; masked: boolean };

/**
 * log-softmax over the classes, plus the fed `class_mask` (0 for allowed classes, -∞ for the others) when
 * `masked`, then ONNX TopK (best first).
 */
export function topK(b: ProgramBuilder, scores: Sym, k: number, masked: boolean): Record<string, Sym> {
  const { g, o } = b;
  const [rows, classes] = scores.shape as [number, number];
  let logp = o.logSoftmax(scores);
  if (masked) logp = o.add(logp, b.input('class_mask', [classes]));
  const kk = Math.min(k, classes);
  const [values, indices] = g.node('TopK', [logp, g.ints([kk])], [{ shape: [rows, kk], dtype: 'float32' }, { shape: [rows, kk], dtype: 'int64' }], { axis: 1, largest: 1, sorted: 1 });
  return { top_values: values!, top_indices: o.cast(indices!, 'int32') };
}

/**
 * The P-tuning computation — prompt encoder → pseudo-token rows spliced into the input embeddings → LM →
 * logits at the answer position → head scores → cross-entropy — as programs over one model: a training step
 * is one run returning the loss and writing the gradients of the encoder (and, when the LM trains, of its
 * weights) into their parameters' `grad`; evaluation runs the forward only, and ranking selects the top-k
 * inside the program so only k values per row come out.
 *
 * Programs are keyed by batch shape, encoder shape and head, so runs that share a model and a template shape
 * (LAMA's relations) share compiled sessions.
 */
export class PTuningPrograms {
  private readonly signature: string;
  /**
   * The LM's own dropout in training steps (the rates its config gives, as in Hugging Face's training mode), drawn
   * from this stream; null: none (the default, and what a frozen LM trains with)
   */
  lmDropout: Rng | null = null;

  /** `prefix`: deep prompts (keys and values at every layer), with or without an encoder for input rows */
  constructor(
    readonly lm: LanguageModel,
    readonly encoder: PromptEncoder | null,
    readonly head: Head,
    readonly prefix: PrefixEncoder | null = null,
  ) {
    const e = encoder?.config;
    const enc = e ? `${e.type}/${e.numVirtualTokens}/${e.hiddenSize}/${e.lstmLayers}/${e.preset}` : 'none';
    const p = prefix?.config;
    const pre = p ? ` prefix ${p.numVirtualTokens}/${p.projection}/${p.hiddenSize}` : '';
    const spec = head.spec;
    const h =
      spec.kind === 'answer' ? `answer${head.numClasses}` : spec.kind === 'linear' ? `linear${head.numClasses}` : JSON.stringify([spec.labelWords, spec.tokenRule, spec.wordAggregation]);
    this.signature = `enc ${enc}${pre} head ${h}`;
  }

  private lookup = (name: string): Parameter | undefined =>
    this.encoder?.lookup(name) ?? this.prefix?.lookup(name) ?? (name.startsWith(HEAD) ? this.head.params?.get(name.slice(HEAD.length)) : undefined);

  /** Dropout masks of one training step (encoder and prefix), or null. */
  private dropoutFeeds(): Record<string, HostTensor> | null {
    const feeds = { ...this.encoder?.dropoutFeeds(), ...this.prefix?.dropoutFeeds() };
    return Object.keys(feeds).length ? feeds : null;
  }

  private feedsFor(batch: PromptBatch, rows: number, sp: number): Record<string, HostTensor> {
    const feeds = batchFeeds(batch, rows, sp, this.lm.info);
    if (readsFirstToken(this.head, this.lm.info.kind)) feeds.positions = { data: new Int32Array(rows), shape: [rows] };
    return feeds;
  }

  /**
   * Mean cross-entropy of a batch against `targets` (class indices); the gradients land in the `grad` of the
   * encoder's parameters and, when the LM trains, of the LM's. Returns the loss and the parameters written.
   */
  async lossAndGrads(batch: PromptBatch, targets: number[]): Promise<{ loss: number; graded: Parameter[] }> {
    const b = batch.ids.length;
    const sp = paddedLength(batch.ids[0]!.length, this.lm.info.maxPositions);
    const dropout = this.dropoutFeeds();
    const feeds = { ...this.feedsFor(batch, b, sp), ...dropout, targets: { data: Int32Array.from(targets), shape: [b] } };
    const lmDropout = this.lmDropout;
    const r = await this.lm.run(this.program(b, sp, { kind: 'train', dropout: dropout !== null, lmDropout: lmDropout !== null }), feeds, this.lookup, {
      ...(lmDropout && { dropout: (size, rate) => lmDropout.dropoutMask(size, rate) }),
    });
    return { loss: r.outputs.loss!.data[0] as number, graded: r.graded };
  }

  /** Per-class scores [B, K] (inference: no dropout, no gradient). */
  async scores(batch: PromptBatch): Promise<HostTensor<Float32Array>> {
    const { feeds, b, rows, sp } = this.inferenceFeeds(batch);
    const r = await this.lm.run(this.program(rows, sp, { kind: 'scores' }), feeds, this.lookup);
    const s = r.outputs.scores!;
    const k = s.shape[1]!;
    return { data: (s.data as Float32Array).subarray(0, b * k), shape: [b, k] };
  }

  /**
   * The `k` best classes of each row by log-probability (log-softmax of the scores), restricted to `allowed`
   * classes when given, best first.
   */
  async topK(batch: PromptBatch, k: number, allowed: readonly number[] | null): Promise<{ indices: number[][]; values: number[][] }> {
    const { feeds, b, rows, sp } = this.inferenceFeeds(batch);
    if (allowed) {
      const mask = new Float32Array(this.head.numClasses).fill(-Infinity);
      for (const id of allowed) mask[id] = 0;
      feeds.class_mask = { data: mask, shape: [mask.length] };
    }
    const r = await this.lm.run(this.program(rows, sp, { kind: 'topk', k, masked: allowed !== null }), feeds, this.lookup);
    const kk = r.outputs.top_indices!.shape[1]!;
    const take = (d: ArrayLike<number>) => Array.from({ length: b }, (_, i) => Array.from(d).slice(i * kk, (i + 1) * kk));
    return { indices: take(r.outputs.top_indices!.data as Int32Array), values: take(r.outputs.top_values!.data as Float32Array) };
  }

  private inferenceFeeds(batch: PromptBatch) {
    const b = batch.ids.length;
    const rows = paddedRows(b);
    const sp = paddedLength(batch.ids[0]!.length, this.lm.info.maxPositions);
    return { feeds: this.feedsFor(batch, rows, sp), b, rows, sp };
  }

  private program(rows: number, sp: number, out: Output): Program {
    const { lm, encoder, head, prefix } = this;
    const train = out.kind === 'train';
    const dropout = out.kind === 'train' && out.dropout;
    const lmDropout = out.kind === 'train' && out.lmDropout;
    const what = out.kind === 'topk' ? `topk ${out.k}${out.masked ? ' masked' : ''}` : out.kind;
    return {
      key: `ptune ${rows}x${sp} ${what} ${this.signature}${dropout ? ' dropout' : ''}${lmDropout ? ' lm-dropout' : ''}`,
      build: (b): ProgramGraph => {
        if (lmDropout) b.o.dropoutMasks = [];
        const ints = (name: string, shape: number[]) => b.input(name, shape, 'int32');
        const ids = ints('ids', [rows, sp]);
        const prompts = encoder ? encoder.inProgram(b, train, dropout && encoder.hasDropout) : null;
        const scores = answerScores(b, lm, head, {
          ids,
          attentionMask: ints('attention_mask', [rows, sp]),
          ...(lm.info.tokenTypes && { tokenTypeIds: ints('token_type_ids', [rows, sp]) }),
          positions: ints('positions', [rows]),
          ...(prompts && { prompts, pseudoIndex: ints('pseudo_index', [rows, sp]), pseudoMask: b.input('pseudo_mask', [rows, sp, 1]) }),
          ...(prefix && { past: prefix.inProgram(b, train, dropout && prefix.hasDropout, rows) }),
          train,
        });
        if (out.kind === 'scores') return { outputs: { scores } };
        if (out.kind === 'topk') return { outputs: topK(b, scores, out.k, out.masked) };
        const loss = crossEntropyOn(b.o, scores, ints('targets', [rows]));
        return { outputs: { loss }, loss };
      },
    };
  }
}
