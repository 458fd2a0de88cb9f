import { tf } from '../engine/index.js';
import type { LanguageModel } from '../models/lm.js';
import type { CollatedBatch } from './render.js';

/** A padded batch of rendered prompts, as plain arrays (render.ts `collate`). */
export type PromptBatch = CollatedBatch;

/**
 * Input embeddings of a batch with the pseudo-token rows replaced by the prompt table.
 * `prompts` [n, H] is the encoder output, computed once per step (it does not depend on the batch) and
 * broadcast here with a gather, so its gradient flows back to the encoder.
 */
export function promptedEmbeds(lm: LanguageModel, batch: PromptBatch, prompts: tf.Tensor | null): tf.Tensor {
  const b = batch.ids.length;
  const s = batch.ids[0]!.length;
  const ids = tf.tensor2d(batch.ids.flat(), [b, s], 'int32');
  const words = lm.embed(ids);
  if (!prompts) return words;
  if (batch.pseudoIndex.length === 0) return words;
  const { index, isPseudo } = pseudoSlots(batch, s);
  const m = tf.tensor3d(isPseudo, [b, s, 1]);
  const pseudo = tf.gather(prompts, tf.tensor2d(index, [b, s], 'int32'));
  return tf.add(tf.mul(words, tf.sub(1, m)), tf.mul(pseudo, m));
}

/**
 * Where the prompt rows go, on a [B, width] grid (width ≥ the batch's length): the prompt index of each pseudo
 * position (0 elsewhere) and a 1/0 mask of pseudo positions.
 */
export function pseudoSlots(batch: PromptBatch, width: number): { index: Int32Array; isPseudo: Float32Array } {
  const b = batch.ids.length;
  const index = new Int32Array(b * width);
  const isPseudo = new Float32Array(b * width);
  batch.pseudoIndex.forEach((k, i) => {
    const at = batch.pseudoRows[i]! * width + batch.pseudoCols[i]!;
    index[at] = k;
    isPseudo[at] = 1;
  });
  return { index, isPseudo };
}

/** Final hidden states for a prompted batch. */
export function promptedHidden(lm: LanguageModel, batch: PromptBatch, prompts: tf.Tensor | null): tf.Tensor {
  const b = batch.ids.length;
  const s = batch.ids[0]!.length;
  return lm.run({
    embeds: promptedEmbeds(lm, batch, prompts),
    attentionMask: tf.tensor2d(batch.attentionMask.flat(), [b, s], 'int32'),
    tokenTypeIds: tf.tensor2d(batch.tokenTypeIds.flat(), [b, s], 'int32'),
  });
}

/**
 * Logits at each row's answer position: [B, V], or [B, C] over `candidates` (the LM head is then projected
 * onto those rows only).
 */
export function answerLogits(
  lm: LanguageModel,
  batch: PromptBatch,
  prompts: tf.Tensor | null,
  candidates?: tf.Tensor,
): tf.Tensor {
  const hidden = promptedHidden(lm, batch, prompts);
  return lm.logitsAt(hidden, tf.tensor1d(batch.answerPositions, 'int32'), candidates);
}
