import type { Ops } from '../engine/ops.js';
import type { LayerKv, PastKv, WeightSpec } from './common.js';

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

/** What the rest of ptune may know about a model: sizes and conventions, never its family by name. */
export interface ModelInfo {
  /** the family's name, for display */
  family: string;
  kind: LmKind;
  /** directory or file the model was loaded from */
  source: string;
  vocabSize: number;
  hiddenSize: number;
  /**
   * width of the input embeddings (what `embed` returns, hence of prompt tokens) where it differs from
   * hiddenSize (ALBERT's factorised embeddings); absent: hiddenSize
   */
  embeddingSize?: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  intermediateSize: number;
  maxPositions: number;
  parameterCount: number;
  special: SpecialIds;
  /** where padding goes when batching: causal LMs pad left so the next-token position is the last one */
  paddingSide: 'left' | 'right';
  /** the model reads segment ids (token_type_ids) */
  tokenTypes: boolean;
  /** present when the linear weights are quantized (LoadOptions.quantize) */
  quantization?: QuantizationInfo;
  /**
   * keys and values before the current tokens (a decoding cache, deep prompts): whether ptune's implementation
   * takes them, and whether transformers' does (what a PEFT PREFIX_TUNING adapter needs to act at all);
   * absent: both
   */
  past?: {
    ptune: boolean;
    transformers: boolean;
    /** false: past slots take no positions (the input's positions start at 0 whatever precedes them) */
    positioned?: boolean;
  };
}

export interface QuantizationInfo {
  /** int8, int4, int4-b64-zp, ... */
  name: string;
  bits: 4 | 8;
  /** values per block, or 'channel' (one scale per output feature) */
  blockSize: number | 'channel';
  symmetric: boolean;
  backward: 'transposed' | 'dequantize';
  activations: 'int8' | 'float32';
  /** weights quantized, and their values */
  weights: number;
  values: number;
  /** bytes of the store (the quantized weights, with the transposed copies) */
  bytes: number;
  /** where the store is, and whether this load found it there */
  store: string;
  reused: boolean;
}

/** A model weight by Hugging Face name, as the engine at hand represents it. */
export type WeightOf<T> = (name: string) => T;

export interface HiddenInputs<T> {
  /** [B, S, H] input embeddings as the model's `inputs_embeds` (what `embed` returns; prompts replace rows) */
  embeds: T;
  /** [B, S] int32: 1 for real tokens, 0 for padding */
  attentionMask: T;
  /** [B, S] int32; default: the number of real tokens (past slots included) before each position */
  positionIds?: T;
  /** [B, S] int32 segment ids; default zeros */
  tokenTypeIds?: T;
  /** keys and values before the current tokens (a decoding cache, or deep prompts) */
  past?: PastKv<T>;
  /**
   * [B] int32: the one position per row whose final hidden state is wanted. A family may then compute its last
   * layer for those rows only and return them as `rows`.
   */
  at?: T;
}

export interface HiddenOutputs<T> {
  /** final hidden states [B, S, H] (after the final norm of pre-norm models) */
  hidden: T;
  /** the current tokens' keys and values per layer, [B, kvHeads, S, headDim] */
  present: LayerKv<T>[];
  /** with `at`: the final hidden states [B, H] at those positions (`hidden` then holds them as [B, 1, H]) */
  rows?: T;
}

/**
 * A model's computation as functions over any `Ops<T>`: what the engine compiles, together with the code
 * around the model (prompt encoder, heads, loss), into one program.
 */
export interface LmFunctions {
  /** ids [B, S] int32 → input embeddings [B, S, H] (for Gemma 2 already scaled, as transformers feeds them) */
  embed<T>(o: Ops<T>, w: WeightOf<T>, ids: T): T;
  /** input embeddings → final hidden states and the current tokens' keys/values */
  hidden<T>(o: Ops<T>, w: WeightOf<T>, inp: HiddenInputs<T>): HiddenOutputs<T>;
  /** rows [N, H] of final hidden states → logits [N, V], or [N, C] over candidate ids [C] */
  logits<T>(o: Ops<T>, w: WeightOf<T>, rows: T, candidates?: T): T;
}

/** One architecture: how its config reads, which weights it has, and what it computes. */
export interface ModelFamily<C = unknown> {
  /** shown in `ptune info` */
  readonly name: string;
  /** config.json `model_type` values it reads */
  readonly modelTypes: readonly string[];
  readonly kind: LmKind;
  parseConfig(json: Record<string, unknown>, file: string): C;
  /** the config as Hugging Face writes config.json */
  toHfConfig(config: C): Record<string, unknown>;
  /** sizes and conventions (source, special ids and the parameter count are added by the loader) */
  describe(config: C): Omit<ModelInfo, 'source' | 'special' | 'parameterCount' | 'family' | 'kind'>;
  /** every weight, in Hugging Face names and stored shapes (tied weights that checkpoints omit are absent) */
  weights(config: C): WeightSpec[];
  functions(config: C): LmFunctions;
  /** special ids config.json names (pad/bos/eos), used where the tokenizer names none */
  specialIds?(config: C): Partial<SpecialIds>;
  /** a config for random weights (benchmarks, tests): `overrides` on the family's base size */
  randomConfig?(overrides: Record<string, number | boolean | string>, vocabSize: number, modelType: string): C;
}
