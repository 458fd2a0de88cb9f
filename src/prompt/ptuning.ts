import { tf } from '../engine/index.js';
import type { LanguageModel } from '../models/lm.js';

/** A padded batch of rendered prompts, as plain arrays (see render.ts `collate`). */
export interface PromptBatch {
  /** [B][S] token ids; ids at pseudo positions are placeholders */
  ids: number[][];
  /** [B][S] 1 = token, 0 = padding */
  attentionMask: number[][];
  /** [B][S] index of the pseudo token at each position, -1 where the position is not a pseudo token */
  pseudoIndex: number[][];
  /** [B] where the answer is read: the [MASK] (masked LM) or the last prefix token (causal LM) */
  answerPositions: number[];
  tokenTypeIds?: number[][];
}

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
  const index = new Int32Array(b * s);
  const isPseudo = new Float32Array(b * s);
  let any = false;
  batch.pseudoIndex.forEach((row, r) =>
    row.forEach((k, c) => {
      if (k >= 0) {
        index[r * s + c] = k;
        isPseudo[r * s + c] = 1;
        any = true;
      }
    }),
  );
  if (!any) return words;
  const m = tf.tensor3d(isPseudo, [b, s, 1]);
  const pseudo = tf.gather(prompts, tf.tensor2d(index, [b, s], 'int32'));
  return tf.add(tf.mul(words, tf.sub(1, m)), tf.mul(pseudo, m));
}

/** Final hidden states for a prompted batch. */
export function promptedHidden(lm: LanguageModel, batch: PromptBatch, prompts: tf.Tensor | null): tf.Tensor {
  const b = batch.ids.length;
  const s = batch.ids[0]!.length;
  return lm.run({
    embeds: promptedEmbeds(lm, batch, prompts),
    attentionMask: tf.tensor2d(batch.attentionMask.flat(), [b, s], 'int32'),
    tokenTypeIds: batch.tokenTypeIds ? tf.tensor2d(batch.tokenTypeIds.flat(), [b, s], 'int32') : undefined,
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
