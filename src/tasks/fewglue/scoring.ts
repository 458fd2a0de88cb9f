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
 * Training: cross-entropy over the candidates' summed scores (`choiceLoss`), or, for WSC, the mean token NLL of
 * the true span at its masks (`spanLoss`, trained on positive examples only, as PET). Both run under
 * tf.variableGrads: gradients reach the prompt encoder through `promptedHidden` and, with a tuned LM, the LM.
 */
import { tf } from '../../engine/index.js';
import type { LanguageModel } from '../../models/lm.js';
import { crossEntropy } from '../../prompt/heads.js';
import { promptedHidden } from '../../prompt/ptuning.js';
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

/**
 * Token log-probabilities of every candidate of `items` (inside tf.tidy): `sums` [C] and `counts` (tokens per
 * candidate), candidates in item order. `prompts` is the encoder output (null without pseudo tokens).
 */
export function candidateLogProbs(lm: LanguageModel, items: readonly ChoiceItem[], prompts: tf.Tensor | null): { sums: tf.Tensor; counts: number[] } {
  const seqs = items.flatMap((it) => it.seqs);
  const batch = collate(seqs, lm.info);
  const hidden = promptedHidden(lm, batch, prompts);
  const [b, s, h] = hidden.shape as [number, number, number];
  const flatPos: number[] = [];
  const targets: number[] = [];
  const owner: number[] = [];
  const counts: number[] = [];
  let rowBase = 0;
  for (const it of items) {
    for (const c of it.cands) {
      const row = rowBase + c.seq;
      c.tokens.forEach((t, j) => {
        flatPos.push(row * s + batch.answerPositions[row]! + j);
        targets.push(t);
        owner.push(counts.length);
      });
      counts.push(c.tokens.length);
    }
    rowBase += it.seqs.length;
  }
  const m = flatPos.length;
  const picked = tf.gather(tf.reshape(hidden, [b * s, h]), tf.tensor1d(flatPos, 'int32'));
  const logits = lm.logitsAt(tf.reshape(picked, [m, 1, h]), tf.zeros([m], 'int32'));
  const v = logits.shape[1]!;
  const logp = tf.gather(tf.reshape(tf.logSoftmax(logits), [-1]), tf.tensor1d(targets.map((t, i) => i * v + t), 'int32'));
  const select = new Float32Array(counts.length * m);
  owner.forEach((c, i) => (select[c * m + i] = 1));
  const sums = tf.reshape(tf.matMul(tf.tensor2d(select, [counts.length, m]), tf.reshape(logp, [m, 1])), [counts.length]);
  return { sums, counts };
}

/** Summed log-probs per item, padded to [B, Cmax] with -1e9 where an item has fewer candidates. */
function paddedScores(sums: tf.Tensor, items: readonly ChoiceItem[]): tf.Tensor {
  const width = Math.max(...items.map((it) => it.cands.length));
  const index = new Int32Array(items.length * width);
  const pad = new Float32Array(items.length * width);
  let c = 0;
  items.forEach((it, r) => {
    for (let k = 0; k < width; k++) {
      if (k < it.cands.length) index[r * width + k] = c + k;
      else pad[r * width + k] = -1e9;
    }
    c += it.cands.length;
  });
  const gathered = tf.gather(sums, tf.tensor2d(index, [items.length, width], 'int32'));
  return tf.add(gathered, tf.tensor2d(pad, [items.length, width]));
}

/** Mean cross-entropy over each item's candidates (scores = summed token log-probs); items need a target. */
export function choiceLoss(lm: LanguageModel, items: readonly ChoiceItem[], prompts: tf.Tensor | null): tf.Scalar {
  if (items.some((it) => it.target < 0)) throw new Error('choiceLoss: every item needs a target candidate');
  const { sums } = candidateLogProbs(lm, items, prompts);
  return crossEntropy(paddedScores(sums, items), items.map((it) => it.target));
}

/** Mean over items of the target candidate's mean token NLL (WSC: generate the referent at the masks). */
export function spanLoss(lm: LanguageModel, items: readonly ChoiceItem[], prompts: tf.Tensor | null): tf.Scalar {
  const only = items.map((it) => {
    if (it.target < 0) throw new Error('spanLoss: every item needs a target span');
    return { seqs: [it.seqs[it.cands[it.target]!.seq]!], cands: [{ seq: 0, tokens: it.cands[it.target]!.tokens }], target: 0 };
  });
  const { sums, counts } = candidateLogProbs(lm, only, prompts);
  return tf.neg(tf.mean(tf.div(sums, tf.tensor1d(counts)))) as tf.Scalar;
}

/** Per item, per candidate: summed and mean token log-probs (no gradients; batched by items). */
export function scoreCandidates(
  lm: LanguageModel, items: readonly ChoiceItem[], prompts: () => tf.Tensor | null, batchSize = 16,
): { sum: number[]; mean: number[] }[] {
  const out: { sum: number[]; mean: number[] }[] = [];
  for (let i = 0; i < items.length; i += batchSize) {
    const chunk = items.slice(i, i + batchSize);
    const { values, counts } = tf.tidy(() => {
      const r = candidateLogProbs(lm, chunk, prompts());
      return { values: r.sums.dataSync() as Float32Array, counts: r.counts };
    });
    let c = 0;
    for (const it of chunk) {
      const sum = [...values.slice(c, c + it.cands.length)];
      out.push({ sum, mean: sum.map((x, k) => x / counts[c + k]!) });
      c += it.cands.length;
    }
  }
  return out;
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
