import type { LanguageModel } from '../src/models/model.js';
import { collate, type CollatedBatch, type RenderedExample } from '../src/prompt/render.js';

/**
 * The benchmarks' batch at P-tuning's shapes, made by the library's `collate`: each row is
 * [CLS] p1..pN words [MASK] [SEP] for a masked LM (answer just before [SEP]) or p1..pN words [MASK] for a causal
 * one (answer last); `rows` rows of `seq` tokens, every position real.
 */
export function benchBatch(lm: LanguageModel, rows: number, seq: number, pseudo: number): CollatedBatch {
  const s = lm.info.special;
  const masked = lm.info.kind === 'masked';
  const mask = s.mask ?? 0;
  const first = masked ? 1 : 0;
  const examples: RenderedExample[] = Array.from({ length: rows }, (_, r) => {
    const words = Array.from({ length: seq - pseudo - (masked ? 3 : 1) }, (_, j) => 1000 + ((r * 131 + j * 17) % (lm.info.vocabSize - 1000)));
    const prompt = new Array<number>(pseudo).fill(mask);
    const ids = masked ? [s.cls ?? s.bos ?? 0, ...prompt, ...words, mask, s.sep ?? s.eos ?? 0] : [...prompt, ...words, mask];
    return {
      ids,
      pseudoPositions: Array.from({ length: pseudo }, (_, k) => first + k),
      pseudoIndex: Array.from({ length: pseudo }, (_, k) => k),
      answerPosition: masked ? seq - 2 : seq - 1,
    };
  });
  return collate(examples, lm.info);
}
