import { tf } from '../engine/index.js';
import type { Graph, HostTensor, OnnxOps, Sym } from '../engine/onnx/index.js';
import type { LmFunctions, WeightOf } from '../models/functions.js';
import type { LanguageModel } from '../models/lm.js';
import { OrtLM, type GraphProgram } from '../models/ort.js';
import type { PromptEncoder } from './encoder.js';
import { crossEntropyOn, flatTargets, type Head } from './heads.js';
import { pseudoSlots } from './ptuning.js';
import type { CollatedBatch } from './render.js';

const ENC = 'enc:';

type ProgramOutput = { kind: 'train'; dropout: boolean } | { kind: 'scores' } | { kind: 'topk'; k: number; masked: boolean };

/**
 * log-softmax over the classes, plus the fed `class_mask` (0 for allowed classes, -∞ for the others) when
 * `masked`, then ONNX TopK (best first).
 */
function topK(g: Graph, o: OnnxOps, scores: Sym, k: number, masked: boolean): Record<string, Sym> {
  const [b, classes] = scores.shape as [number, number];
  let logp = o.logSoftmax(scores);
  if (masked) logp = o.add(logp, g.input('class_mask', [classes], 'float32'));
  const kk = Math.min(k, classes);
  const [values, indices] = g.node('TopK', [logp, g.ints([kk])], [{ shape: [b, kk], dtype: 'float32' }, { shape: [b, kk], dtype: 'int64' }], { axis: 1, largest: 1, sorted: 1 });
  return { top_values: values!, top_indices: o.cast(indices!, 'int32') };
}

/**
 * The whole P-tuning computation — prompt encoder → pseudo-token rows spliced into the word embeddings → LM →
 * logits at the answer position → head scores → cross-entropy — as one program on the ONNX Runtime engine.
 * A training step is one session run that returns the loss and the gradients of the encoder (and, with a tuned
 * LM, of the LM's weights); evaluation runs the program without its backward. Numerically it is the tape path
 * (`promptedEmbeds` / `answerLogits` / `Head.scores` / `crossEntropy`): the same functions over `Ops<T>`.
 *
 * Sessions are cached in the OrtLM per (batch, padded length, encoder shape, head), so runs that share a
 * model and a template shape (LAMA's relations) share compiled programs.
 */
export class CompiledPTuning {
  private readonly signature: string;

  /** The compiled path for `lm`, or null when its engine runs no programs (tfjs: the tape path applies). */
  static for(lm: LanguageModel, encoder: PromptEncoder | null, head: Head): CompiledPTuning | null {
    return lm instanceof OrtLM ? new CompiledPTuning(lm, encoder, head) : null;
  }

  constructor(
    private readonly lm: OrtLM,
    private readonly encoder: PromptEncoder | null,
    private readonly head: Head,
  ) {
    const e = encoder?.config;
    const enc = e ? `${e.type}/${e.numVirtualTokens}/${e.hiddenSize}/${e.lstmLayers}/${e.preset}` : 'none';
    const spec = head.spec;
    const h = spec.kind === 'answer' ? 'answer' : JSON.stringify([spec.labelWords, spec.tokenRule, spec.wordAggregation]);
    this.signature = `enc ${enc} head ${h}`;
  }

  /**
   * Mean cross-entropy of a batch against `targets` (class indices) and its gradients as host arrays the caller
   * owns, keyed by tfjs variable name (as tf.variableGrads): the encoder's variables and the LM's trainable ones.
   */
  lossAndGrads(batch: CollatedBatch, targets: number[]): { loss: number; grads: Map<string, Float32Array> } {
    const masks = this.encoder?.dropoutMasks(true) ?? null;
    const { feeds, b, sp } = this.feeds(batch, masks);
    feeds.targets = { data: Int32Array.from(flatTargets(targets, this.head.numClasses)), dims: [b] };
    const r = this.lm.runProgram(this.program(b, sp, { kind: 'train', dropout: masks !== null }), feeds, true);
    const grads = new Map<string, Float32Array>();
    for (const [name, v] of this.encoder?.variables() ?? []) grads.set(v.name, r.grads[name]!.data as Float32Array);
    const params = this.lm.parameters();
    for (const [name, g] of r.weightGrads) grads.set(params.get(name)!.name, g.data as Float32Array);
    return { loss: r.outputs.loss!.data[0]!, grads };
  }

  /** Per-class scores [B, K] (inference: no dropout, no gradient). */
  scores(batch: CollatedBatch): tf.Tensor {
    const { feeds, b, sp } = this.feeds(batch, null);
    const r = this.lm.runProgram(this.program(b, sp, { kind: 'scores' }), feeds, false);
    const s = r.outputs.scores!;
    return tf.tensor(s.data, s.dims, 'float32');
  }

  /**
   * The `k` best classes of each row by log-probability (log-softmax of the scores), restricted to `allowed`
   * classes when given, best first: selection happens inside the program, so only k values per row come out.
   */
  topK(batch: CollatedBatch, k: number, allowed: readonly number[] | null): { indices: number[][]; values: number[][] } {
    const { feeds, b, sp } = this.feeds(batch, null);
    if (allowed) {
      const mask = new Float32Array(this.head.numClasses).fill(-Infinity);
      for (const id of allowed) mask[id] = 0;
      feeds.class_mask = { data: mask, dims: [mask.length] };
    }
    const r = this.lm.runProgram(this.program(b, sp, { kind: 'topk', k, masked: allowed !== null }), feeds, false);
    const kk = r.outputs.top_indices!.dims[1]!;
    const rows = (d: ArrayLike<number>) => {
      const all = Array.from(d);
      return Array.from({ length: b }, (_, i) => all.slice(i * kk, (i + 1) * kk));
    };
    return { indices: rows(r.outputs.top_indices!.data), values: rows(r.outputs.top_values!.data) };
  }

  private feeds(batch: CollatedBatch, masks: Float32Array[] | null): { feeds: Record<string, HostTensor>; b: number; sp: number } {
    const b = batch.ids.length;
    const s = batch.ids[0]!.length;
    const sp = this.lm.paddedLength(s);
    const grid = (rows: number[][], fill: number) => {
      const out = new Int32Array(b * sp).fill(fill);
      rows.forEach((row, i) => out.set(row, i * sp));
      return { data: out, dims: [b, sp] };
    };
    const pad = this.lm.info.special.pad;
    const { index, isPseudo } = pseudoSlots(batch, sp);
    const feeds: Record<string, HostTensor> = {
      ids: grid(batch.ids, pad),
      attention_mask: grid(batch.attentionMask, 0),
      token_type_ids: grid(batch.tokenTypeIds, 0),
      positions: { data: Int32Array.from(batch.answerPositions), dims: [b] },
      pseudo_index: { data: index, dims: [b, sp] },
      pseudo_mask: { data: isPseudo, dims: [b, sp, 1] },
    };
    for (const [name, v] of this.encoder?.variables() ?? []) feeds[ENC + name] = { data: v.dataSync() as Float32Array, dims: v.shape };
    masks?.forEach((m, l) => (feeds[`dropout:${l}`] = { data: m, dims: this.encoder!.dropoutShape() }));
    return { feeds, b, sp };
  }

  private program(b: number, sp: number, out: ProgramOutput): GraphProgram {
    const encoder = this.encoder;
    const head = this.head;
    const candidates = head.candidates;
    const dropout = out.kind === 'train' && out.dropout;
    const what = out.kind === 'topk' ? `topk ${out.k}${out.masked ? ' masked' : ''}` : out.kind;
    return {
      key: `ptune ${b}x${sp} ${what} ${this.signature}${dropout ? ' dropout' : ''}`,
      build: (g: Graph, o: OnnxOps, w: WeightOf<Sym>, fns: LmFunctions): ReturnType<GraphProgram['build']> => {
        const ints = (name: string, shape: number[]) => g.input(name, shape, 'int32');
        const ids = ints('ids', [b, sp]);
        let embeds = fns.embed(o, w, ids);
        const wrt: Record<string, Sym> = {};
        if (encoder) {
          for (const [name, v] of encoder.variables()) wrt[name] = g.input(ENC + name, v.shape, 'float32');
          const masks = dropout
            ? Array.from({ length: encoder.config.lstmLayers - 1 }, (_, l) => g.input(`dropout:${l}`, encoder.dropoutShape(), 'float32'))
            : undefined;
          const prompts = encoder.encode(o, (name) => wrt[name]!, masks);
          const m = g.input('pseudo_mask', [b, sp, 1], 'float32');
          const pseudo = o.gather(prompts, ints('pseudo_index', [b, sp]));
          embeds = o.add(o.mul(embeds, o.sub(o.scalar(1), m)), o.mul(pseudo, m));
        }
        const hidden = fns.hidden(o, w, {
          embeds,
          attentionMask: ints('attention_mask', [b, sp]),
          tokenTypeIds: ints('token_type_ids', [b, sp]),
        });
        const cand = candidates ? o.constInt(candidates, [candidates.length]) : undefined;
        const logits = fns.logitsAt(o, w, hidden, ints('positions', [b]), cand);
        const scores = head.scoresOn(o, logits);
        if (out.kind === 'scores') return { outputs: { scores } };
        if (out.kind === 'topk') return { outputs: topK(g, o, scores, out.k, out.masked) };
        const loss = crossEntropyOn(o, scores, ints('targets', [b]));
        return { outputs: { loss }, loss, wrt };
      },
    };
  }
}
