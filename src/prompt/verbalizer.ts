/**
 * Verbalizers: the label words that stand for each class, and how their token scores at the answer position
 * become per-label scores.
 *
 * Scoring at a single answer position (the model reads one position, one distribution over the vocabulary):
 * the LM head is restricted to `candidateIds()` (every token of every label word, once), the caller turns
 * those logits into log-probabilities (over the candidates or the full vocabulary) and `labelScores` does
 * the rest:
 * 1. a word of tokens t1..tn scores, by `tokenRule` (OpenPrompt's multi-token handling):
 *    - 'first': s(t1) — only the first token counts (the usual choice; with single-token words all agree)
 *    - 'mean':  (s(t1) + … + s(tn)) / n
 *    - 'sum':   s(t1) + … + s(tn) — the log of the product of the tokens' probabilities, all read at the one
 *               answer position (an approximation, not the word's joint probability)
 *    - 'max':   max_i s(ti)
 * 2. a label with several words scores the max or the mean of its words' scores (`wordAggregation`).
 *
 * Exact multi-token scoring needs one position per token: render the prompt with n answer slots, score the
 * word's first token, write it into its slot, re-run and score the next, and so on (left to right for a
 * causal LM, where it is ordinary teacher forcing; for a masked LM left to right or most-confident first as in
 * PET), summing the token log-probabilities. That costs one forward pass per token and label and is built on
 * the model, outside this module: `wordTokens()` gives the token ids it needs.
 */
import { nodeFs } from '../util/node-fs.js';
import type { TextTokenizer } from '../tokenizers/tokenizer.js';

export const TOKEN_RULES: readonly TokenRule[] = ['first', 'mean', 'sum', 'max'];
export type TokenRule = 'first' | 'mean' | 'sum' | 'max';
export type WordAggregation = 'max' | 'mean';

export interface VerbalizerOptions {
  tokenRule?: TokenRule;
  wordAggregation?: WordAggregation;
  /** every label word must be a single token */
  requireSingleToken?: boolean;
  /** id of the unknown token; default: the tokenizer's `[UNK]`, `<unk>` or `<|unk|>` */
  unkId?: number;
}

/** label → label words */
export type LabelWords = Record<string, string | readonly string[]>;

function unknownId(tok: TextTokenizer, explicit?: number): number | undefined {
  return explicit ?? tok.tokenToId('[UNK]') ?? tok.tokenToId('<unk>') ?? tok.tokenToId('<|unk|>');
}

export class Verbalizer {
  readonly labels: readonly string[];
  readonly tokenRule: TokenRule;
  readonly wordAggregation: WordAggregation;
  /** [label][word] */
  readonly words: readonly (readonly string[])[];
  private readonly tokens: number[][][];
  private readonly candidates: number[];
  /** [label][word][token] → column in `candidateIds()` */
  readonly columns: readonly (readonly (readonly number[])[])[];

  constructor(labelWords: LabelWords, tok: TextTokenizer, opts: VerbalizerOptions = {}) {
    this.tokenRule = opts.tokenRule ?? 'first';
    this.wordAggregation = opts.wordAggregation ?? 'max';
    if (!TOKEN_RULES.includes(this.tokenRule)) throw new Error(`verbalizer: token rule must be one of ${TOKEN_RULES.join(', ')}, got ${JSON.stringify(this.tokenRule)}`);
    if (this.wordAggregation !== 'max' && this.wordAggregation !== 'mean') {
      throw new Error(`verbalizer: word aggregation must be max or mean, got ${JSON.stringify(this.wordAggregation)}`);
    }
    const unk = unknownId(tok, opts.unkId);
    const labels = Object.keys(labelWords);
    if (labels.length === 0) throw new Error('verbalizer: no labels');
    const owner = new Map<string, string>();
    this.words = labels.map((label) => {
      const spec = labelWords[label];
      const words = (typeof spec === 'string' ? [spec] : [...spec]).map((w) => String(w).trim());
      if (words.length === 0) throw new Error(`verbalizer label "${label}": no label words`);
      for (const word of words) {
        if (!word) throw new Error(`verbalizer label "${label}": empty label word`);
        const key = tok.lowercase ? word.toLowerCase() : word;
        const other = owner.get(key);
        if (other !== undefined) throw new Error(`verbalizer label "${label}": word "${word}" is also a word of label "${other}"`);
        owner.set(key, label);
      }
      return words;
    });
    this.tokens = labels.map((label, l) =>
      this.words[l].map((word) => {
        const ids = tok.encodeWord(word);
        if (ids.length === 0) throw new Error(`verbalizer label "${label}": word "${word}" encodes to no tokens`);
        if (unk !== undefined && ids.includes(unk)) {
          throw new Error(`verbalizer label "${label}": word "${word}" maps to the unknown token`);
        }
        if (opts.requireSingleToken && ids.length > 1) {
          const pieces = ids.map((id) => tok.idToToken(id) ?? String(id)).join(' ');
          throw new Error(`verbalizer label "${label}": word "${word}" is ${ids.length} tokens (${pieces}); single-token words required`);
        }
        return ids;
      }),
    );
    this.labels = labels;
    const column = new Map<number, number>();
    this.candidates = [];
    this.columns = this.tokens.map((words) =>
      words.map((ids) =>
        ids.map((id) => {
          let c = column.get(id);
          if (c === undefined) {
            c = this.candidates.length;
            column.set(id, c);
            this.candidates.push(id);
          }
          return c;
        }),
      ),
    );
  }

  /**
   * From a JSON file (`{"label": ["word", …]}` or `{"label": "word"}`), inline JSON, or inline
   * `label:word,label2:word2` (several words: `label:w1|w2`, or the label repeated).
   */
  static load(spec: string, tok: TextTokenizer, opts: VerbalizerOptions = {}): Verbalizer {
    return new Verbalizer(Verbalizer.parseSpec(spec), tok, opts);
  }

  /** Label words from a JSON file, inline JSON, or `neg:bad|awful,pos:good`. */
  static parseSpec(spec: string): LabelWords {
    const trimmed = spec.trim();
    if (trimmed.startsWith('{')) return parseJsonSpec(trimmed, 'inline verbalizer');
    const fs = nodeFs();
    if (/\.json$/i.test(trimmed) || (fs?.existsSync(trimmed) && fs.statSync(trimmed).isFile())) {
      let text: string;
      try {
        if (!fs) throw new Error('files can only be read in Node');
        text = fs.readFileSync(trimmed, 'utf8');
      } catch (e) {
        throw new Error(`verbalizer file ${trimmed}: ${(e as Error).message}`);
      }
      return parseJsonSpec(text, `verbalizer file ${trimmed}`);
    }
    return parseInlineSpec(trimmed);
  }

  /** Flat, unique token ids of all label words: the candidate rows to restrict the LM head to. */
  candidateIds(): number[] {
    return [...this.candidates];
  }

  /** Token ids of each label word, [label][word][token], for exact multi-token scoring. */
  wordTokens(): number[][][] {
    return this.tokens.map((words) => words.map((ids) => [...ids]));
  }

  /** Index of a record's label value (numbers and booleans compare by their text), or an error. */
  labelIndex(label: unknown): number {
    const i = this.labels.indexOf(String(label));
    if (i < 0) throw new Error(`label ${JSON.stringify(label)} is not in the verbalizer (labels: ${this.labels.join(', ')})`);
    return i;
  }

  /** Per-label scores, in `labels` order, from scores over `candidateIds()` (one row). */
  labelScores(candidateScores: ArrayLike<number>): number[] {
    if (candidateScores.length !== this.candidates.length) {
      throw new Error(`labelScores: got ${candidateScores.length} scores for ${this.candidates.length} candidates`);
    }
    return this.columns.map((words) => {
      const scores = words.map((cols) => wordScore(cols.map((c) => candidateScores[c]), this.tokenRule));
      return this.wordAggregation === 'max' ? Math.max(...scores) : mean(scores);
    });
  }

  /** `labelScores` for each row of a row-major [B, C] score matrix. */
  labelScoresBatch(scores: ArrayLike<number>, rows: number): number[][] {
    const width = this.candidates.length;
    if (scores.length !== rows * width) {
      throw new Error(`labelScoresBatch: ${scores.length} scores is not ${rows} rows × ${width} candidates`);
    }
    const out: number[][] = [];
    for (let r = 0; r < rows; r++) out.push(this.labelScores(Array.prototype.slice.call(scores, r * width, (r + 1) * width)));
    return out;
  }

  /** Index of the best-scoring label. */
  predict(candidateScores: ArrayLike<number>): number {
    const scores = this.labelScores(candidateScores);
    return scores.indexOf(Math.max(...scores));
  }
}

const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;

function wordScore(tokenScores: number[], rule: TokenRule): number {
  switch (rule) {
    case 'first':
      return tokenScores[0];
    case 'mean':
      return mean(tokenScores);
    case 'sum':
      return tokenScores.reduce((a, b) => a + b, 0);
    case 'max':
      return Math.max(...tokenScores);
  }
}

function parseJsonSpec(text: string, where: string): LabelWords {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw new Error(`${where}: ${(e as Error).message}`);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new Error(`${where}: expected an object {"label": ["word", ...]}`);
  }
  const out: Record<string, string[]> = {};
  for (const [label, words] of Object.entries(value)) {
    const list = typeof words === 'string' ? [words] : words;
    if (!Array.isArray(list) || !list.every((w) => typeof w === 'string')) {
      throw new Error(`${where}: label "${label}" must map to a word or a list of words`);
    }
    out[label] = list;
  }
  return out;
}

function parseInlineSpec(spec: string): LabelWords {
  const out: Record<string, string[]> = {};
  for (const item of spec.split(',')) {
    const colon = item.indexOf(':');
    const label = item.slice(0, colon).trim();
    const words = item.slice(colon + 1).split('|').map((w) => w.trim());
    if (colon < 0 || !label || words.some((w) => !w)) {
      throw new Error(`verbalizer "${spec}": bad entry "${item.trim()}" (expected label:word or label:word1|word2)`);
    }
    (out[label] ??= []).push(...words);
  }
  return out;
}

export interface AnswerVocabulary {
  /** candidate token ids, unique, in order of first appearance */
  ids: number[];
  /** the word (or token) of each id */
  words: string[];
  /** how many given words were dropped: not a single known token */
  dropped: number;
  droppedWords: string[];
  /** given words whose id was already taken (e.g. `Paris` and `paris` under lowercasing) */
  duplicates: number;
}

const SPECIAL_TOKEN = /^(\[[^\]]*\]|<[^>]*>)$/;

/**
 * Open-vocabulary answers (LAMA): the candidate token ids. Without `words`, the whole vocabulary except
 * special/control tokens (`[PAD]`, `[unused7]`, `<s>`, `<|endoftext|>` …). With `words` (e.g. LAMA's 29k common
 * vocabulary), each word lowercased when the tokenizer lowercases, kept when `encodeWord` maps it to one
 * known token; the others are dropped and counted. Words that land on an id already taken are counted apart.
 */
export function answerVocabulary(tok: TextTokenizer, words?: readonly string[], opts: { unkId?: number } = {}): AnswerVocabulary {
  const unk = unknownId(tok, opts.unkId);
  const out: AnswerVocabulary = { ids: [], words: [], dropped: 0, droppedWords: [], duplicates: 0 };
  if (!words) {
    for (let id = 0; id < tok.vocabSize; id++) {
      const token = tok.idToToken(id);
      if (token === undefined || id === unk || SPECIAL_TOKEN.test(token)) continue;
      out.ids.push(id);
      out.words.push(token);
    }
    return out;
  }
  const seen = new Set<number>();
  for (const raw of words) {
    const word = tok.lowercase ? raw.toLowerCase() : raw;
    const ids = word.trim() ? tok.encodeWord(word) : [];
    if (ids.length !== 1 || ids[0] === unk) {
      out.dropped++;
      out.droppedWords.push(raw);
      continue;
    }
    if (seen.has(ids[0])) {
      out.duplicates++;
      continue;
    }
    seen.add(ids[0]);
    out.ids.push(ids[0]);
    out.words.push(word);
  }
  return out;
}
