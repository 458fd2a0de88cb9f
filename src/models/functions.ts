import type { Ops } from '../engine/ops.js';
import { BertLM, bertHidden, bertLogitsAt, bertWeights } from './bert.js';
import { Gpt2LM, gpt2Hidden, gpt2LogitsAt, gpt2Weights } from './gpt2.js';
import { LlamaLM, attentionBias, llamaForward, llamaLogitsAt, positionsFromMask, ropeAt, ropeTables } from './llama.js';
import type { LanguageModel } from './lm.js';

/** A model weight by Hugging Face name, as the engine at hand represents it. */
export type WeightOf<T> = (name: string) => T;

export interface HiddenInputs<T> {
  embeds: T;
  attentionMask: T;
  positionIds?: T;
  tokenTypeIds?: T;
}

/**
 * A model's computation as functions over any `Ops<T>`: what a graph engine compiles, together with code
 * around the model (prompt encoder, loss), into one program. The tfjs model classes call the same functions.
 */
export interface LmFunctions {
  /** ids [B, S] int32 → word embeddings [B, S, H] */
  embed<T>(o: Ops<T>, w: WeightOf<T>, ids: T): T;
  /** word embeddings → final hidden states [B, S, H] */
  hidden<T>(o: Ops<T>, w: WeightOf<T>, inp: HiddenInputs<T>): T;
  /** hidden [B, S, H], positions [B] → logits [B, V] (or [B, C] over candidates [C]) */
  logitsAt<T>(o: Ops<T>, w: WeightOf<T>, hidden: T, positions: T, candidates?: T): T;
}

export function lmFunctions(base: LanguageModel): LmFunctions {
  if (base instanceof BertLM) {
    const c = base.config;
    return {
      embed: (o, w, ids) => o.gather(bertWeights(c, w).wordEmb, ids),
      hidden: (o, w, inp) => bertHidden(o, bertWeights(c, w), c, inp),
      logitsAt: (o, w, h, p, cand) => bertLogitsAt(o, bertWeights(c, w), c, h, p, cand),
    };
  }
  if (base instanceof Gpt2LM) {
    const c = base.config;
    return {
      embed: (o, w, ids) => o.gather(gpt2Weights(c, w).wte, ids),
      hidden: (o, w, inp) => gpt2Hidden(o, gpt2Weights(c, w), c, inp),
      logitsAt: (o, w, h, p, cand) => gpt2LogitsAt(o, gpt2Weights(c, w), h, p, cand),
    };
  }
  if (base instanceof LlamaLM) {
    const c = base.config;
    const { cos, sin } = ropeTables(c);
    const half = c.hiddenSize / c.numHeads / 2;
    return {
      embed: (o, w, ids) => o.gather(w('model.embed_tokens.weight'), ids),
      hidden: (o, w, inp) => {
        const s = o.shape(inp.embeds)[1]!;
        const positions = inp.positionIds ?? positionsFromMask(o, inp.attentionMask);
        const rope = ropeAt(o, o.constFloat(cos, [c.maxPositions, half]), o.constFloat(sin, [c.maxPositions, half]), positions);
        return llamaForward(o, w, c, inp.embeds, rope, attentionBias(o, s, 0, inp.attentionMask)).hidden;
      },
      logitsAt: (o, w, h, p, cand) => llamaLogitsAt(o, w, c, h, p, cand),
    };
  }
  throw new Error(`${base.info.source} (${base.info.family}) is not a BertLM, Gpt2LM or LlamaLM: no graph functions`);
}
