import type { Ops } from '../engine/ops.js';
import type { HostTensor } from '../engine/tensor.js';
import type { ModelInfo } from '../models/lm.js';
import type { CollatedBatch } from './render.js';

/** A padded batch of rendered prompts, as plain arrays (render.ts `collate`). */
export type PromptBatch = CollatedBatch;

/**
 * Sequence length a batch of `s` positions is padded to, so nearby lengths share one compiled program: the next
 * multiple of `bucket` (8), but never past the model's positions unless `s` itself is.
 */
export function paddedLength(s: number, maxPositions: number, bucket = 8): number {
  return Math.min(Math.ceil(s / bucket) * bucket, Math.max(s, maxPositions));
}

/** Batch size an inference batch of `b` rows is padded to: the next power of two (padding rows are masked). */
export function paddedRows(b: number): number {
  return 2 ** Math.ceil(Math.log2(Math.max(1, b)));
}

/**
 * Where the prompt rows go, on a [B, width] grid (width ≥ the batch's length): the prompt index of each pseudo
 * position (0 elsewhere) and a 1/0 mask of pseudo positions.
 */
export function pseudoSlots(batch: PromptBatch, width: number, rows = batch.ids.length): { index: Int32Array; isPseudo: Float32Array } {
  const index = new Int32Array(rows * width);
  const isPseudo = new Float32Array(rows * width);
  batch.pseudoIndex.forEach((k, i) => {
    const at = batch.pseudoRows[i]! * width + batch.pseudoCols[i]!;
    index[at] = k;
    isPseudo[at] = 1;
  });
  return { index, isPseudo };
}

/**
 * The program feeds of a batch on a [rows, width] grid (rows ≥ B and width ≥ S; extra rows are padding with an
 * all-zero attention mask, extra columns padding too): `ids`, `attention_mask`, `token_type_ids`, `positions`
 * (each row's answer position), `pseudo_index` and `pseudo_mask`.
 */
export function batchFeeds(batch: PromptBatch, rows: number, width: number, info: Pick<ModelInfo, 'special' | 'paddingSide'>): Record<string, HostTensor> {
  const s = batch.ids[0]!.length;
  // left padding keeps the answer at the end: widen on the left too
  const shift = info.paddingSide === 'left' ? width - s : 0;
  const grid = (values: number[][], fill: number) => {
    const out = new Int32Array(rows * width).fill(fill);
    values.forEach((row, i) => out.set(row, i * width + shift));
    return { data: out, shape: [rows, width] };
  };
  const shifted = shift ? { ...batch, pseudoCols: batch.pseudoCols.map((c) => c + shift) } : batch;
  const { index, isPseudo } = pseudoSlots(shifted, width, rows);
  const positions = new Int32Array(rows);
  batch.answerPositions.forEach((p, i) => (positions[i] = p + shift));
  return {
    ids: grid(batch.ids, info.special.pad),
    attention_mask: grid(batch.attentionMask, 0),
    token_type_ids: grid(batch.tokenTypeIds, 0),
    positions: { data: positions, shape: [rows] },
    pseudo_index: { data: index, shape: [rows, width] },
    pseudo_mask: { data: isPseudo, shape: [rows, width, 1] },
  };
}

/** Input embeddings [B, S, H] with the pseudo-token rows replaced by rows of `prompts` [n, H]. */
export function spliceOn<T>(o: Ops<T>, embeds: T, prompts: T, index: T, mask: T): T {
  const pseudo = o.gather(prompts, index);
  return o.add(o.mul(embeds, o.sub(o.scalar(1), mask)), o.mul(pseudo, mask));
}
