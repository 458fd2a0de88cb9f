import type { Ops } from '../engine/ops.js';
import { Parameter, type ParamMap } from '../engine/tensor.js';
import { makeNormal, makeRng } from '../util/rng.js';
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
  | { kind: 'answer'; answerField: string; answerVocab?: number[] }
  | { kind: 'linear'; labelField: string; labels: string[]; seed?: number };

export interface Head {
  readonly spec: HeadSpec;
  /**
   * a linear classification head's own parameters (`weight` [K, H], `bias` [K]), trained with the prompt; it reads
   * the final hidden state of the first token (masked LMs: [CLS]) or of the last one (causal LMs), not the LM head
   */
  readonly params: ParamMap | null;
  /** token ids the LM head is projected onto; null = the full vocabulary */
  readonly candidates: number[] | null;
  /** number of classes the scores range over */
  readonly numClasses: number;
  /** target class of a record (label index, or answer token id); throws naming the record when invalid */
  target(record: Record<string, unknown>, where: string): number;
  /** per-class scores [B, numClasses] from logits at the answer position ([B, C] over `candidates`) */
  scoresOn<T>(o: Ops<T>, logits: T): T;
  /** class names for reports */
  className(k: number): string;
  /** indices into the score columns allowed for prediction (answer vocab); null = all */
  readonly predictable: number[] | null;
}

/** `vocabSize`: the width of the model's logits (config.json's vocab_size, which may exceed the tokenizer's). */
export function makeHead(spec: HeadSpec, tok: TextTokenizer, vocabSize: number, hiddenSize = 0): Head {
  if (spec.kind === 'linear') return linearHead(spec, hiddenSize);
  return spec.kind === 'label' ? labelHead(spec, tok) : answerHead(spec, tok, vocabSize);
}

/** Classes by the label field, scored by a linear layer over one hidden state (P-tuning v2's classification head). */
function linearHead(spec: Extract<HeadSpec, { kind: 'linear' }>, hiddenSize: number): Head {
  const k = spec.labels.length;
  if (k < 2) throw new Error(`linear head: needs at least two labels, got ${JSON.stringify(spec.labels)}`);
  if (new Set(spec.labels).size !== k) throw new Error(`linear head: labels repeat in ${JSON.stringify(spec.labels)}`);
  if (!(hiddenSize > 0)) throw new Error('linear head: the model\'s hidden size is needed');
  const normal = makeNormal(makeRng(spec.seed ?? 0));
  const params: ParamMap = new Map([
    ['weight', new Parameter('weight', [k, hiddenSize], Float32Array.from({ length: k * hiddenSize }, () => 0.02 * normal()), true)],
    ['bias', new Parameter('bias', [k], new Float32Array(k), true)],
  ]);
  return {
    spec,
    params,
    candidates: null,
    numClasses: k,
    predictable: null,
    target(record, where) {
      const value = record[spec.labelField];
      if (value === undefined || value === null) throw new Error(`${where}: field "${spec.labelField}" is missing`);
      const i = spec.labels.indexOf(String(value));
      if (i < 0) throw new Error(`${where}: label ${JSON.stringify(value)} is not one of ${spec.labels.join(', ')}`);
      return i;
    },
    scoresOn: () => {
      throw new Error('linear head: scores come from hidden states (PTuningPrograms), not from LM logits');
    },
    className: (i) => spec.labels[i]!,
  };
}

function labelHead(spec: Extract<HeadSpec, { kind: 'label' }>, tok: TextTokenizer): Head {
  const v = new Verbalizer(spec.labelWords, tok, { tokenRule: spec.tokenRule, wordAggregation: spec.wordAggregation });
  const candidates = v.candidateIds();
  return {
    spec,
    params: null,
    candidates,
    numClasses: v.labels.length,
    predictable: null,
    target(record, where) {
      const value = record[spec.labelField];
      if (value === undefined || value === null) throw new Error(`${where}: field "${spec.labelField}" is missing`);
      if (typeof value !== 'string' && typeof value !== 'number' && typeof value !== 'boolean') {
        throw new Error(`${where}: label field "${spec.labelField}" is ${Array.isArray(value) ? 'an array' : typeof value}, not a label (${v.labels.join(', ')})`);
      }
      const k = v.labels.indexOf(String(value));
      if (k < 0) throw new Error(`${where}: label ${JSON.stringify(value)} is not one of ${v.labels.join(', ')}`);
      return k;
    },
    scoresOn: (o, logits) => labelScores(o, o.logSoftmax(logits), v),
    className: (k) => v.labels[k]!,
  };
}

/** Differentiable version of `Verbalizer.labelScores` over log-probabilities [B, C]. */
function labelScores<T>(o: Ops<T>, logProbs: T, v: Verbalizer): T {
  const b = o.shape(logProbs)[0]!;
  const perLabel = v.columns.map((words) => {
    const perWord = words.map((cols) => {
      const ids = v.tokenRule === 'first' ? [cols[0]!] : [...cols];
      const t = o.gather(logProbs, o.constInt(ids, [ids.length]), 1);
      switch (v.tokenRule) {
        case 'first':
          return o.reshape(t, [b, 1]);
        case 'mean':
          return o.mean(t, 1, true);
        case 'sum':
          return o.sum(t, 1, true);
        case 'max':
          return o.max(t, 1, true);
      }
    });
    if (perWord.length === 1) return perWord[0]!;
    const stacked = o.concat(perWord, 1);
    return v.wordAggregation === 'max' ? o.max(stacked, 1, true) : o.mean(stacked, 1, true);
  });
  return o.concat(perLabel, 1);
}

function answerHead(spec: Extract<HeadSpec, { kind: 'answer' }>, tok: TextTokenizer, vocabSize: number): Head {
  const allowed = spec.answerVocab ? new Set(spec.answerVocab) : null;
  // rows past the tokenizer's vocabulary (padded embedding tables) are never an answer
  const realTokens = vocabSize > tok.vocabSize ? [...Array(tok.vocabSize).keys()] : null;
  return {
    spec,
    params: null,
    candidates: null,
    numClasses: vocabSize,
    predictable: spec.answerVocab ?? realTokens,
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
    scoresOn: (_o, logits) => logits,
    className: (k) => tok.idToToken(k) ?? `<${k}>`,
  };
}

/**
 * Mean cross-entropy of `scores` [B, K] against `targets` [B] int32 class indices: one gather from the
 * flattened log-probabilities at row·K + target, with K the scores' own width.
 */
export function crossEntropyOn<T>(o: Ops<T>, scores: T, targets: T): T {
  const [b, k] = o.shape(scores) as [number, number];
  const rowStarts = o.constInt(Array.from({ length: b }, (_, i) => i * k), [b]);
  const logp = o.reshape(o.logSoftmax(scores), [-1]);
  return o.neg(o.mean(o.gather(logp, o.add(rowStarts, targets)), 0));
}
