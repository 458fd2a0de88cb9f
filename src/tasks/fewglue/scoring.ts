/**
 * Multi-token answer scoring for COPA, WSC and ReCoRD: each candidate answer text is scored as
 * log P(answer | prompt) = the SUM of its tokens' log-probabilities (PET's COPA scoring; sums favour short
 * answers, which is what the likelihood says).
 *
 * - Masked LM (PET's parallel approximation): the prompt is rendered once, then the single [MASK] is widened
 *   to n masks for an n-token answer (`expandMasks`: n-1 mask ids spliced in after the rendered one, later
 *   positions shifted). One forward pass per answer LENGTH: candidates of equal token length share the input;
 *   token j of an answer is read at mask j.
 * - Causal LM (teacher forcing): the prompt followed by the answer's first n-1 tokens (`appendAnswer`);
 *   answer token j is read at the position before it (the last prompt token for j = 0). One forward per
 *   candidate.
 * Both render with maxLength reduced by (longest candidate - 1), so every candidate of an example sees the
 * same (possibly truncated) context.
 *
 * Training: cross-entropy over the candidates' summed scores ('choice'), or, for WSC, the mean token NLL of the
 * true span at its masks ('span', trained on positive examples only, as PET). All three are one program each
 * (src/engine/program.ts): gradients reach the prompt encoder and, with a tuned LM, the LM.
 */
import type { Sym } from '../../engine/onnx/index.js';
import type { Program, ProgramGraph } from '../../engine/program.js';
import type { HostTensor, Parameter } from '../../engine/tensor.js';
import type { LanguageModel } from '../../models/model.js';
import type { PromptEncoder } from '../../prompt/encoder.js';
import { crossEntropyOn } from '../../prompt/heads.js';
import { batchFeeds, paddedLength, paddedRows, spliceOn } from '../../prompt/ptuning.js';
import { collate, renderExample, type RenderedExample } from '../../prompt/render.js';
import type { Template } from '../../prompt/template.js';

/** One example's candidates, rendered. */
export interface ChoiceItem {
  /** distinct input sequences (masked LM: one per answer length; causal LM: one per candidate) */
  seqs: RenderedExample[];
  /** per candidate: the sequence it is read from and its answer token ids */
  cands: { seq: number; tokens: number[] }[];
  /** index of the right candidate; -1 when unknown or none is right */
  target: number;
}

/** Answer token ids as they read in the answer slot (with the slot's leading space, as render.ts does). */
export function answerTokens(lm: LanguageModel, template: Template, text: string): number[] {
  const slot = template.parts.find((p) => p.type === 'mask')!;
  return lm.tokenizer.encode(slot.spaceBefore ? ` ${text}` : text);
}

/** The single rendered mask widened to `n` masks; everything after it moves right by n-1. */
export function expandMasks(ex: RenderedExample, n: number, maskId: number): RenderedExample {
  if (n < 1) throw new Error(`expandMasks: an answer needs at least one token (got ${n})`);
  const at = ex.answerPosition;
  if (ex.ids[at] !== maskId) throw new Error(`expandMasks: position ${at} holds ${ex.ids[at]}, not the mask id ${maskId}`);
  const extra = n - 1;
  const shift = (p: number) => (p > at ? p + extra : p);
  const splice = <T>(xs: T[], value: T) => [...xs.slice(0, at + 1), ...new Array<T>(extra).fill(value), ...xs.slice(at + 1)];
  return {
    ids: splice(ex.ids, maskId),
    pseudoPositions: ex.pseudoPositions.map(shift),
    pseudoIndex: [...ex.pseudoIndex],
    answerPosition: at,
    ...(ex.tokenTypeIds ? { tokenTypeIds: splice(ex.tokenTypeIds, ex.tokenTypeIds[at]!) } : {}),
  };
}

/** Causal teacher forcing: the prompt plus all but the last answer token (the last one is only predicted). */
export function appendAnswer(ex: RenderedExample, tokens: readonly number[]): RenderedExample {
  const fed = tokens.slice(0, -1);
  return {
    ...ex,
    ids: [...ex.ids, ...fed],
    ...(ex.tokenTypeIds ? { tokenTypeIds: [...ex.tokenTypeIds, ...fed.map(() => ex.tokenTypeIds!.at(-1)!)] } : {}),
  };
}

/** Renders `record` once and builds the candidate inputs for `candidates` (answer texts). */
export function renderChoices(
  lm: LanguageModel, template: Template, record: Record<string, unknown>, candidates: readonly string[],
  target: number, opts: { maxLength: number; index?: number; where?: string },
): ChoiceItem {
  if (candidates.length === 0) throw new Error(`${opts.where ?? 'example'}: no answer candidates`);
  const tokens = candidates.map((c, i) => {
    const ids = answerTokens(lm, template, c);
    if (ids.length === 0) throw new Error(`${opts.where ?? 'example'}: candidate ${i} ${JSON.stringify(c)} has no tokens`);
    return ids;
  });
  const longest = Math.max(...tokens.map((t) => t.length));
  const base = renderExample(template, record, lm.tokenizer, lm.info, { maxLength: opts.maxLength - (longest - 1), index: opts.index })!;
  const seqs: RenderedExample[] = [];
  if (lm.info.kind === 'masked') {
    const byLength = new Map<number, number>();
    const cands = tokens.map((t) => {
      if (!byLength.has(t.length)) {
        byLength.set(t.length, seqs.length);
        seqs.push(expandMasks(base, t.length, lm.info.special.mask!));
      }
      return { seq: byLength.get(t.length)!, tokens: t };
    });
    return { seqs, cands, target };
  }
  const cands = tokens.map((t) => {
    seqs.push(appendAnswer(base, t));
    return { seq: seqs.length - 1, tokens: t };
  });
  return { seqs, cands, target };
}

type ChoiceOutput = 'sums' | 'choice' | 'span';

/** One batch of items as program feeds: token positions, ids and the candidate each token belongs to. */
interface ChoiceBatch {
  feeds: Record<string, HostTensor>;
  rows: number;
  sp: number;
  /** answer tokens (padded) */
  m: number;
  /** candidates (padded) */
  c: number;
  /** items and the widest item's candidate count (training losses only) */
  n: number;
  width: number;
  counts: number[];
}

const pow2 = (n: number) => paddedRows(n);

function choiceBatch(lm: LanguageModel, items: readonly ChoiceItem[], train: boolean): ChoiceBatch {
  const seqs = items.flatMap((it) => it.seqs);
  const batch = collate(seqs, lm.info);
  const rows = train ? seqs.length : paddedRows(seqs.length);
  const sp = paddedLength(batch.ids[0]!.length, lm.info.maxPositions);
  const feeds = batchFeeds(batch, rows, sp, lm.info);
  const answers = feeds.positions!.data as Int32Array;
  const flatPos: number[] = [];
  const tokens: number[] = [];
  const owner: number[] = [];
  const counts: number[] = [];
  let rowBase = 0;
  for (const it of items) {
    for (const cand of it.cands) {
      const row = rowBase + cand.seq;
      cand.tokens.forEach((t, j) => {
        flatPos.push(row * sp + answers[row]! + j);
        tokens.push(t);
        owner.push(counts.length);
      });
      counts.push(cand.tokens.length);
    }
    rowBase += it.seqs.length;
  }
  const m = pow2(flatPos.length);
  const c = pow2(counts.length);
  const select = new Float32Array(c * m);
  owner.forEach((k, i) => (select[k * m + i] = 1));
  const pad = (xs: number[], n: number) => Int32Array.from({ length: n }, (_, i) => xs[i] ?? 0);
  feeds.token_pos = { data: pad(flatPos, m), shape: [m] };
  feeds.token_ids = { data: pad(tokens, m), shape: [m] };
  feeds.select = { data: select, shape: [c, m] };
  feeds.counts = { data: Float32Array.from({ length: c }, (_, i) => counts[i] ?? 1), shape: [c] };
  const width = Math.max(...items.map((it) => it.cands.length));
  const index = new Int32Array(items.length * width);
  const padScores = new Float32Array(items.length * width);
  let k = 0;
  items.forEach((it, r) => {
    for (let j = 0; j < width; j++) {
      if (j < it.cands.length) index[r * width + j] = k + j;
      else padScores[r * width + j] = -1e9;
    }
    k += it.cands.length;
  });
  feeds.cand_index = { data: index, shape: [items.length, width] };
  feeds.cand_pad = { data: padScores, shape: [items.length, width] };
  feeds.targets = { data: Int32Array.from(items, (it) => Math.max(it.target, 0)), shape: [items.length] };
  return { feeds, rows, sp, m, c, n: items.length, width, counts };
}

/**
 * The summed token log-probabilities of every candidate ([C]), and for training the task loss: 'choice' =
 * cross-entropy over each item's candidates (padded to the widest item with -1e9), 'span' = the mean over
 * items of the span's mean token NLL.
 */
function choiceProgram(lm: LanguageModel, encoder: PromptEncoder | null, shape: ChoiceBatch, out: ChoiceOutput): Program {
  const { rows, sp, m, c, n, width } = shape;
  const train = out !== 'sums';
  const dropout = train && (encoder?.hasDropout ?? false);
  const e = encoder?.config;
  const enc = e ? `${e.type}/${e.numVirtualTokens}/${e.hiddenSize}/${e.lstmLayers}/${e.preset}` : 'none';
  return {
    key: `choice ${out} ${rows}x${sp} m${m} c${c}${train ? ` n${n}x${width}` : ''} enc ${enc}${dropout ? ' dropout' : ''}`,
    build: (b): ProgramGraph => {
      const { o } = b;
      const w = lm.weights(b);
      const ints = (name: string, shape: number[]) => b.input(name, shape, 'int32');
      let embeds = lm.fns.embed(o, w, ints('ids', [rows, sp]));
      if (encoder) {
        const prompts = encoder.inProgram(b, train, dropout);
        embeds = spliceOn(o, embeds, prompts, ints('pseudo_index', [rows, sp]), b.input('pseudo_mask', [rows, sp, 1]));
      }
      const { hidden } = lm.fns.hidden(o, w, {
        embeds,
        attentionMask: ints('attention_mask', [rows, sp]),
        ...(lm.info.tokenTypes && { tokenTypeIds: ints('token_type_ids', [rows, sp]) }),
      });
      const h = lm.info.hiddenSize;
      const picked = o.gather(o.reshape(hidden, [rows * sp, h]), ints('token_pos', [m]));
      const logits = lm.fns.logits(o, w, picked);
      const v = o.shape(logits)[1]!;
      const flat = o.add(o.constInt(Array.from({ length: m }, (_, i) => i * v), [m]), ints('token_ids', [m]));
      const logp = o.gather(o.reshape(o.logSoftmax(logits), [-1]), flat);
      const sums = o.reshape(o.matmul(b.input('select', [c, m]), o.reshape(logp, [m, 1])), [c]);
      if (out === 'sums') return { outputs: { sums } };
      let loss: Sym;
      if (out === 'choice') {
        const scores = o.add(o.gather(sums, ints('cand_index', [n, width])), b.input('cand_pad', [n, width]));
        loss = crossEntropyOn(o, scores, ints('targets', [n]));
      } else {
        const means = o.slice(o.div(sums, b.input('counts', [c])), [0], [n]);
        loss = o.neg(o.mean(means, 0));
      }
      return { outputs: { loss }, loss };
    },
  };
}

/** Scores and losses of choice items for one LM and (optional) prompt encoder. */
export class ChoiceScorer {
  constructor(
    readonly lm: LanguageModel,
    readonly encoder: PromptEncoder | null,
  ) {}

  private lookup = (name: string): Parameter | undefined => this.encoder?.lookup(name);

  private async run(items: readonly ChoiceItem[], out: ChoiceOutput) {
    const batch = choiceBatch(this.lm, items, out !== 'sums');
    const dropout = out !== 'sums' ? this.encoder?.dropoutFeeds() : null;
    const r = await this.lm.run(choiceProgram(this.lm, this.encoder, batch, out), { ...batch.feeds, ...dropout }, this.lookup);
    return { r, batch };
  }

  /** Summed token log-probs per candidate, in item order, and each candidate's token count. */
  async logProbs(items: readonly ChoiceItem[]): Promise<{ sums: number[]; counts: number[] }> {
    const { r, batch } = await this.run(items, 'sums');
    return { sums: Array.from((r.outputs.sums!.data as Float32Array).subarray(0, batch.counts.length)), counts: batch.counts };
  }

  /** Mean cross-entropy over each item's candidates (scores = summed token log-probs); items need a target. */
  async choiceLoss(items: readonly ChoiceItem[]): Promise<{ loss: number; graded: Parameter[] }> {
    if (items.some((it) => it.target < 0)) throw new Error('choiceLoss: every item needs a target candidate');
    const { r } = await this.run(items, 'choice');
    return { loss: r.outputs.loss!.data[0] as number, graded: r.graded };
  }

  /** Mean over items of the target candidate's mean token NLL (WSC: generate the referent at the masks). */
  async spanLoss(items: readonly ChoiceItem[]): Promise<{ loss: number; graded: Parameter[] }> {
    const only = items.map((it) => {
      if (it.target < 0) throw new Error('spanLoss: every item needs a target span');
      return { seqs: [it.seqs[it.cands[it.target]!.seq]!], cands: [{ seq: 0, tokens: it.cands[it.target]!.tokens }], target: 0 };
    });
    const { r } = await this.run(only, 'span');
    return { loss: r.outputs.loss!.data[0] as number, graded: r.graded };
  }

  /** Per item, per candidate: summed and mean token log-probs (no gradients; batched by items). */
  async score(items: readonly ChoiceItem[], batchSize = 16): Promise<{ sum: number[]; mean: number[] }[]> {
    const out: { sum: number[]; mean: number[] }[] = [];
    for (let i = 0; i < items.length; i += batchSize) {
      const chunk = items.slice(i, i + batchSize);
      const { sums, counts } = await this.logProbs(chunk);
      let c = 0;
      for (const it of chunk) {
        const sum = sums.slice(c, c + it.cands.length);
        out.push({ sum, mean: sum.map((x, k) => x / counts[c + k]!) });
        c += it.cands.length;
      }
    }
    return out;
  }
}

/**
 * WSC's decision rule: 'True' when the candidate's mean token log-prob is at least `threshold`. The threshold
 * maximizing accuracy on labeled examples (midpoints between sorted scores; ties: the lower threshold).
 */
export function bestThreshold(scores: readonly number[], labels: readonly boolean[]): { threshold: number; accuracy: number } {
  if (scores.length === 0 || scores.length !== labels.length) throw new Error(`bestThreshold: ${scores.length} scores for ${labels.length} labels`);
  const sorted = [...new Set(scores)].sort((a, b) => a - b);
  const cuts = [sorted[0]! - 1, ...sorted.slice(1).map((x, i) => (x + sorted[i]!) / 2), sorted.at(-1)! + 1];
  let best = { threshold: cuts[0]!, accuracy: -1 };
  for (const t of cuts) {
    const acc = scores.filter((s, i) => (s >= t) === labels[i]).length / scores.length;
    if (acc > best.accuracy) best = { threshold: t, accuracy: acc };
  }
  return best;
}
