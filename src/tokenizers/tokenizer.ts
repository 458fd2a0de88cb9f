/** What the rest of ptune needs from a tokenizer. Encoding never adds special tokens. */
export interface TextTokenizer {
  readonly vocabSize: number;
  /** text → ids, no special tokens */
  encode(text: string): number[];
  decode(ids: number[], opts?: { skipSpecial?: boolean }): string;
  idToToken(id: number): string | undefined;
  tokenToId(token: string): number | undefined;
  /**
   * Ids of `word` as it is tokenized in the middle of a sentence, after a space (for byte-level BPE: the
   * `Ġword` form; for SentencePiece: `▁word`; for WordPiece the word itself).
   */
  encodeWord(word: string): number[];
  /** true when the tokenizer lowercases its input (uncased WordPiece) */
  readonly lowercase: boolean;
  /**
   * The special tokens its post-processor puts around a single sequence (e.g. `[CLS]` / `[SEP]`, `<s>` / `</s>`,
   * BOS only), when the tokenizer says; undefined when it has no such rule.
   */
  readonly wrap?: { start: number[]; end: number[] };
}
