import type { tf } from '../engine/index.js';
import type { TextTokenizer } from '../tokenizers/tokenizer.js';

type Tensor = tf.Tensor;

export type ModelFamily = 'bert' | 'gpt2' | 'llama';
/** masked: the answer is read at a [MASK] position; causal: the answer is the next token after a prefix. */
export type LmKind = 'masked' | 'causal';

export interface SpecialIds {
  pad: number;
  unk?: number;
  bos?: number;
  eos?: number;
  cls?: number;
  sep?: number;
  mask?: number;
}

export interface ModelInfo {
  family: ModelFamily;
  kind: LmKind;
  /** directory or file the model was loaded from */
  source: string;
  vocabSize: number;
  hiddenSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  intermediateSize: number;
  maxPositions: number;
  parameterCount: number;
  special: SpecialIds;
  /** where padding goes when batching: causal LMs pad left so the next-token position is the last one */
  paddingSide: 'left' | 'right';
}

export interface LmBatch {
  /** [B, S, H] float32 input embeddings: word embeddings only; the model adds positions and token types. */
  embeds: Tensor;
  /** [B, S] int32: 1 for real tokens, 0 for padding. */
  attentionMask: Tensor;
  /** [B, S] int32; default: number of real tokens before each position (correct under left padding). */
  positionIds?: Tensor;
  /** [B, S] int32 segment ids (BERT); default zeros. */
  tokenTypeIds?: Tensor;
}

/** Key/value cache of a causal LM for incremental decoding; opaque to callers. */
export interface KvCache {
  /** number of positions already in the cache */
  readonly length: number;
  dispose(): void;
}

/**
 * The interface all P-tuning, training and task code uses to talk to a language model.
 *
 * - `embed` maps token ids to input embeddings; P-tuning replaces the rows at pseudo-token positions with
 *   prompt-encoder outputs before calling `run`.
 * - `run` takes input embeddings and returns the final hidden states. Everything is differentiable with
 *   respect to `embeds` through tfjs's tape; LM weights are tf.Variables whose gradients are computed only
 *   when they are in the list passed to `tf.variableGrads` (frozen LM: they are not).
 * - `logitsAt` applies the LM head at one position per row, over the whole vocabulary or only over
 *   `candidates` (then the head's output projection is restricted to those rows: scoring 2 label words never
 *   computes 30k logits).
 * All methods return new tensors and must be called inside `tf.tidy` (or their results disposed).
 */
export interface LanguageModel {
  readonly info: ModelInfo;
  readonly tokenizer: TextTokenizer;
  /** ids [B, S] int32 → [B, S, H] */
  embed(ids: Tensor): Tensor;
  /** → final hidden states [B, S, H] (after the last layer norm for pre-LN models) */
  run(batch: LmBatch): Tensor;
  /**
   * hidden [B, S, H], positions [B] int32 → logits [B, V], or [B, C] for candidates [C] int32 (the same
   * candidate list for every row).
   */
  logitsAt(hidden: Tensor, positions: Tensor, candidates?: Tensor): Tensor;
  /** All weights by Hugging Face name. */
  parameters(): Map<string, tf.Variable>;
  /** Causal LMs only: run `ids` [1, n] after the cached positions and return next-token logits [1, V]. */
  decodeStep?(ids: Tensor, cache: KvCache | null): { logits: Tensor; cache: KvCache };
  dispose(): void;
}
