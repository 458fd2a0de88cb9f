/** LAMA metrics: answer ranking restricted to a candidate vocabulary, P@1 per relation, macro and micro P@1. */
import type { LamaFact } from './data.js';

export interface ScoredToken {
  id: number;
  score: number;
}

/** Keeps the k best (score desc, then id asc) in `best`, which is sorted that way. */
function offer(best: ScoredToken[], k: number, id: number, score: number): void {
  if (Number.isNaN(score)) return;
  const n = best.length;
  if (n === k) {
    const last = best[n - 1];
    if (score < last.score || (score === last.score && id > last.id)) return;
  }
  let i = n < k ? n : n - 1;
  while (i > 0 && (best[i - 1].score < score || (best[i - 1].score === score && best[i - 1].id > id))) {
    best[i] = best[i - 1];
    i--;
  }
  best[i] = { id, score };
}

function checkK(k: number): void {
  if (!Number.isInteger(k) || k < 1) throw new Error(`topK: k must be a positive integer, got ${k}`);
}

/**
 * The k highest-scoring token ids of `scores` (indexed by token id, e.g. full-vocabulary logits), looking only at
 * `candidates` when given. Ties go to the smaller id; NaN scores never rank.
 */
export function topK(scores: ArrayLike<number>, k: number, candidates?: ArrayLike<number>): ScoredToken[] {
  checkK(k);
  const best: ScoredToken[] = [];
  if (candidates === undefined) {
    for (let id = 0; id < scores.length; id++) offer(best, k, id, scores[id]);
    return best;
  }
  for (let j = 0; j < candidates.length; j++) {
    const id = candidates[j];
    if (id < 0 || id >= scores.length) {
      throw new Error(`topK: candidate id ${id} outside the score array of length ${scores.length}`);
    }
    offer(best, k, id, scores[id]);
  }
  return best;
}

/** As topK, for scores computed only over the candidates: `scores[j]` is the score of token `candidates[j]`. */
export function topKAligned(scores: ArrayLike<number>, candidates: ArrayLike<number>, k: number): ScoredToken[] {
  checkK(k);
  if (scores.length !== candidates.length) {
    throw new Error(`topKAligned: ${scores.length} scores for ${candidates.length} candidates`);
  }
  const best: ScoredToken[] = [];
  for (let j = 0; j < candidates.length; j++) offer(best, k, candidates[j], scores[j]);
  return best;
}

/**
 * topK over each row of a flat row-major [rows, width] array (what `tensor.dataSync()` gives for a [B, V] or
 * [B, C] logits tensor). `aligned`: the columns are the candidates (width = candidates.length).
 */
export function topKRows(
  flat: Float32Array,
  rows: number,
  k: number,
  candidates?: ArrayLike<number>,
  aligned = false,
): ScoredToken[][] {
  if (rows <= 0 || flat.length % rows !== 0) {
    throw new Error(`topKRows: ${flat.length} values do not split into ${rows} rows`);
  }
  if (aligned && candidates === undefined) throw new Error('topKRows: aligned scores need the candidate list');
  const width = flat.length / rows;
  const out: ScoredToken[][] = [];
  for (let r = 0; r < rows; r++) {
    const row = flat.subarray(r * width, (r + 1) * width);
    out.push(aligned ? topKAligned(row, candidates!, k) : topK(row, k, candidates));
  }
  return out;
}

/** The best-scoring id (restricted to candidates when given); -1 when nothing can rank. */
export function restrictedArgmax(scores: ArrayLike<number>, candidates?: ArrayLike<number>): number {
  const [best] = topK(scores, 1, candidates);
  return best === undefined ? -1 : best.id;
}

export interface HitCount {
  /** number of facts scored */
  n: number;
  /** facts whose top-1 answer was the gold token */
  hits: number;
}

export interface RelationScore extends HitCount {
  relation: string;
}

/** P@1 as a fraction in [0, 1]; null when there is nothing to score. */
export function p1Of(c: HitCount): number | null {
  return c.n > 0 ? c.hits / c.n : null;
}

export function countHits(predicted: ArrayLike<number>, gold: ArrayLike<number>): HitCount {
  if (predicted.length !== gold.length) {
    throw new Error(`countHits: ${predicted.length} predictions for ${gold.length} gold answers`);
  }
  let hits = 0;
  for (let i = 0; i < gold.length; i++) if (predicted[i] === gold[i]) hits++;
  return { n: gold.length, hits };
}

/** Mean of the per-relation P@1 over relations with at least one fact; null when there are none. */
export function macroP1(scores: readonly HitCount[]): number | null {
  const p = scores.map(p1Of).filter((x): x is number => x !== null);
  return p.length > 0 ? p.reduce((a, b) => a + b, 0) / p.length : null;
}

/** P@1 over all facts pooled; null when there are none. */
export function microP1(scores: readonly HitCount[]): number | null {
  let n = 0;
  let hits = 0;
  for (const s of scores) {
    n += s.n;
    hits += s.hits;
  }
  return p1Of({ n, hits });
}

/** How often always answering `majority` is right on `facts` (labels compared as written). */
export function majorityHits(majority: string | undefined, facts: readonly LamaFact[]): HitCount {
  let hits = 0;
  if (majority !== undefined) for (const f of facts) if (f.obj_label === majority) hits++;
  return { n: facts.length, hits };
}
