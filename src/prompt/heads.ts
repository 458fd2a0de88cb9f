import { tf } from '../engine/index.js';
import type { TextTokenizer } from '../tokenizers/tokenizer.js';
import { Verbalizer, type LabelWords, type TokenRule, type WordAggregation } from './verbalizer.js';

/**
 * A head turns the LM's logits at the answer position into a task prediction and a loss.
 * - `label`: classification through a verbalizer; the LM head is restricted to the label words' tokens.
 * - `answer`: an open-vocabulary single-token answer (LAMA): loss over the whole vocabulary (as THUDM's LAMA
 *   training), argmax restricted to an answer vocabulary when one is given.
 */
export type HeadSpec =
  | { kind: 'label'; labelField: string; labelWords: LabelWords; tokenRule?: TokenRule; wordAggregation?: WordAggregation }
  | { kind: 'answer'; answerField: string; answerVocab?: number[] };

export interface Head {
  readonly spec: HeadSpec;
  /** token ids the LM head is projected onto; null = the full vocabulary */
  readonly candidates: number[] | null;
  /** number of classes the scores range over */
  readonly numClasses: number;
  /** target class of a record (label index, or answer token id); throws naming the record when invalid */
  target(record: Record<string, unknown>, where: string): number;
  /** per-class scores [B, numClasses] from logits at the answer position ([B, C] over `candidates`) */
  scores(logits: tf.Tensor): tf.Tensor;
  /** class names for reports */
  className(k: number): string;
  /** indices into the score columns allowed for prediction (answer vocab); null = all */
  readonly predictable: number[] | null;
}

export function makeHead(spec: HeadSpec, tok: TextTokenizer): Head {
  return spec.kind === 'label' ? labelHead(spec, tok) : answerHead(spec, tok);
}

function labelHead(spec: Extract<HeadSpec, { kind: 'label' }>, tok: TextTokenizer): Head {
  const v = new Verbalizer(spec.labelWords, tok, { tokenRule: spec.tokenRule, wordAggregation: spec.wordAggregation });
  const candidates = v.candidateIds();
  return {
    spec,
    candidates,
    numClasses: v.labels.length,
    predictable: null,
    target(record, where) {
      const value = record[spec.labelField];
      if (value === undefined || value === null) throw new Error(`${where}: field "${spec.labelField}" is missing`);
      const k = v.labels.indexOf(String(value));
      if (k < 0) throw new Error(`${where}: label ${JSON.stringify(value)} is not one of ${v.labels.join(', ')}`);
      return k;
    },
    scores: (logits) => labelScores(tf.logSoftmax(logits), v),
    className: (k) => v.labels[k]!,
  };
}

/** Differentiable version of `Verbalizer.labelScores` over log-probabilities [B, C]. */
function labelScores(logProbs: tf.Tensor, v: Verbalizer): tf.Tensor {
  const perLabel = v.columns.map((words) => {
    const perWord = words.map((cols) => {
      const t = tf.gather(logProbs, tf.tensor1d(v.tokenRule === 'first' ? [cols[0]!] : [...cols], 'int32'), 1);
      switch (v.tokenRule) {
        case 'first':
          return tf.squeeze(t, [1]);
        case 'mean':
          return tf.mean(t, 1);
        case 'sum':
          return tf.sum(t, 1);
        case 'max':
          return tf.max(t, 1);
      }
    });
    if (perWord.length === 1) return perWord[0]!;
    const stacked = tf.stack(perWord, 1);
    return v.wordAggregation === 'max' ? tf.max(stacked, 1) : tf.mean(stacked, 1);
  });
  return tf.stack(perLabel, 1);
}

function answerHead(spec: Extract<HeadSpec, { kind: 'answer' }>, tok: TextTokenizer): Head {
  const allowed = spec.answerVocab ? new Set(spec.answerVocab) : null;
  return {
    spec,
    candidates: null,
    numClasses: tok.vocabSize,
    predictable: spec.answerVocab ?? null,
    target(record, where) {
      const value = record[spec.answerField];
      if (typeof value !== 'string' || value.length === 0) {
        throw new Error(`${where}: field "${spec.answerField}" is missing or not a string`);
      }
      const ids = tok.encodeWord(tok.lowercase ? value.toLowerCase() : value);
      if (ids.length !== 1) throw new Error(`${where}: answer ${JSON.stringify(value)} is ${ids.length} tokens, not one`);
      if (allowed && !allowed.has(ids[0]!)) throw new Error(`${where}: answer ${JSON.stringify(value)} is not in the answer vocabulary`);
      return ids[0]!;
    },
    scores: (logits) => logits,
    className: (k) => tok.idToToken(k) ?? `<${k}>`,
  };
}

/** Cross-entropy of `scores` [B, K] against class indices. */
export function crossEntropy(scores: tf.Tensor, targets: number[]): tf.Scalar {
  const logp = tf.logSoftmax(scores);
  const picked = tf.gather(tf.reshape(logp, [-1]), tf.tensor1d(targets.map((t, i) => i * scores.shape[1]! + t), 'int32'));
  return tf.neg(tf.mean(picked)) as tf.Scalar;
}
