import { Tokenizer } from '@huggingface/tokenizers';
import { readJson as readSourceJson, where, type FileSource } from '../io/files.js';
import { requireNodeFs } from '../util/node-fs.js';
import type { TextTokenizer } from './tokenizer.js';

interface TokenizerJson {
  normalizer?: NormalizerJson | null;
  pre_tokenizer?: PreTokenizerJson | null;
  added_tokens?: { id: number; content: string; special?: boolean }[];
  model: { type?: string; vocab?: Record<string, number> | [string, number][] };
}
interface NormalizerJson {
  type: string;
  lowercase?: boolean;
  normalizers?: NormalizerJson[];
}
interface PreTokenizerJson {
  type: string;
  pretokenizers?: PreTokenizerJson[];
}

/** Special-token roles named in tokenizer_config.json / special_tokens_map.json. */
export type SpecialRole = 'pad' | 'unk' | 'bos' | 'eos' | 'cls' | 'sep' | 'mask';
const ROLES: SpecialRole[] = ['pad', 'unk', 'bos', 'eos', 'cls', 'sep', 'mask'];

/**
 * A Hugging Face `tokenizer.json` tokenizer (WordPiece, byte-level BPE, SentencePiece-style BPE/Unigram).
 *
 * `encodeWord(word)` returns the ids of `word` as it appears after a space inside a sentence:
 * - byte-level BPE (GPT-2 style, a `ByteLevel` pre-tokenizer): `encode(' ' + word)`, i.e. the `Ġword` form;
 * - everything else (WordPiece, and SentencePiece-style tokenizers that put `▁` before every word themselves):
 *   `encode(word)`.
 */
export class HfTokenizer implements TextTokenizer {
  readonly vocabSize: number;
  readonly lowercase: boolean;
  /** true for byte-level BPE, where a word after a space has its own `Ġ` form */
  readonly byteLevel: boolean;
  /** ids of the special tokens the tokenizer config names (absent roles are left out) */
  readonly special: Partial<Record<SpecialRole, number>>;
  readonly wrap: { start: number[]; end: number[] };
  private readonly inner: Tokenizer;
  private readonly idToTok: (string | undefined)[];
  private readonly tokToId: Map<string, number>;

  constructor(json: TokenizerJson, config: Record<string, unknown> = {}) {
    // the library insists on these keys; tokenizer.json files written by hand often omit the null ones
    const complete = { normalizer: null, pre_tokenizer: null, post_processor: null, decoder: null, ...json };
    this.inner = new Tokenizer(complete, config);
    this.tokToId = new Map();
    const vocab = json.model.vocab ?? {};
    if (Array.isArray(vocab)) vocab.forEach(([tok], id) => this.tokToId.set(tok, id));
    else for (const [tok, id] of Object.entries(vocab)) this.tokToId.set(tok, id);
    for (const t of json.added_tokens ?? []) this.tokToId.set(t.content, t.id);
    this.idToTok = [];
    for (const [tok, id] of this.tokToId) this.idToTok[id] = tok;
    this.vocabSize = this.idToTok.length;
    this.lowercase = normalizerLowercases(json.normalizer);
    this.byteLevel = preTokenizerTypes(json.pre_tokenizer).includes('ByteLevel');
    this.wrap = wrapOf(this.inner);
    this.special = {};
    for (const role of ROLES) {
      const tok = tokenString(config[`${role}_token`]);
      const id = tok === undefined ? undefined : this.tokToId.get(tok);
      if (id !== undefined) this.special[role] = id;
    }
  }

  /** Reads `tokenizer.json` and, when present, `tokenizer_config.json` and `special_tokens_map.json` (Node). */
  static fromDir(dir: string): HfTokenizer {
    const fs = requireNodeFs(`${dir}/tokenizer.json`);
    const read = (name: string): unknown => {
      const file = `${dir.replace(/\/+$/, '')}/${name}`;
      if (!fs.existsSync(file)) return null;
      try {
        return JSON.parse(fs.readFileSync(file, 'utf8'));
      } catch (err) {
        throw new Error(`${file}: cannot read JSON (${(err as Error).message.split('\n')[0]})`);
      }
    };
    const file = `${dir.replace(/\/+$/, '')}/tokenizer.json`;
    const json = read('tokenizer.json');
    if (json === null) throw new Error(`${file}: tokenizer file not found`);
    return HfTokenizer.fromJson(file, json, read('tokenizer_config.json'), read('special_tokens_map.json'));
  }

  /** The same files from any source (a URL, files picked in a page). */
  static async fromSource(source: FileSource): Promise<HfTokenizer> {
    const file = where(source, 'tokenizer.json');
    const json = await readSourceJson(source, 'tokenizer.json');
    if (json === null) throw new Error(`${file}: tokenizer file not found`);
    const [config, map] = await Promise.all([readSourceJson(source, 'tokenizer_config.json'), readSourceJson(source, 'special_tokens_map.json')]);
    return HfTokenizer.fromJson(file, json, config, map);
  }

  /**
   * From the parsed files (`file` names tokenizer.json in messages): as transformers loads them,
   * special_tokens_map.json overrides what tokenizer_config.json says.
   */
  static fromJson(file: string, json: unknown, tokenizerConfig?: unknown, specialTokensMap?: unknown): HfTokenizer {
    if (typeof json !== 'object' || json === null || typeof (json as TokenizerJson).model !== 'object') {
      throw new Error(`${file}: no "model" object (not a Hugging Face tokenizer.json)`);
    }
    const config = { ...((tokenizerConfig as object | null) ?? {}), ...((specialTokensMap as object | null) ?? {}) };
    try {
      return new HfTokenizer(json as TokenizerJson, config);
    } catch (err) {
      throw new Error(`${file}: ${(err as Error).message.split('\n')[0]}`);
    }
  }

  encode(text: string): number[] {
    return this.inner.encode(text, { add_special_tokens: false }).ids;
  }

  /** text → ids with the special tokens the tokenizer's post-processor adds (as transformers' tokenizer(text)) */
  encodeWithSpecials(text: string): number[] {
    return this.inner.encode(text, { add_special_tokens: true }).ids;
  }

  decode(ids: number[], opts: { skipSpecial?: boolean } = {}): string {
    return this.inner.decode(ids, { skip_special_tokens: opts.skipSpecial ?? false });
  }

  idToToken(id: number): string | undefined {
    return this.idToTok[id];
  }

  tokenToId(token: string): number | undefined {
    return this.tokToId.get(token);
  }

  encodeWord(word: string): number[] {
    return this.encode(this.byteLevel ? ` ${word}` : word);
  }
}

/** What the post-processor adds around a single sequence: found by encoding a probe with and without it. */
function wrapOf(t: Tokenizer): { start: number[]; end: number[] } {
  const probe = 'a';
  const plain = t.encode(probe, { add_special_tokens: false }).ids;
  const full = t.encode(probe, { add_special_tokens: true }).ids;
  for (let i = 0; i + plain.length <= full.length; i++) {
    if (plain.every((id: number, k: number) => full[i + k] === id)) return { start: full.slice(0, i), end: full.slice(i + plain.length) };
  }
  return { start: [], end: [] };
}

/** tokenizer_config.json spells special tokens as strings or as AddedToken objects `{ content }`. */
function tokenString(v: unknown): string | undefined {
  if (typeof v === 'string') return v;
  if (typeof v === 'object' && v !== null && typeof (v as { content?: unknown }).content === 'string') {
    return (v as { content: string }).content;
  }
  return undefined;
}

function normalizerLowercases(n: NormalizerJson | null | undefined): boolean {
  if (!n) return false;
  if (n.type === 'Lowercase') return true;
  if (n.type === 'BertNormalizer') return n.lowercase ?? true;
  if (n.type === 'Sequence') return (n.normalizers ?? []).some(normalizerLowercases);
  return false;
}

function preTokenizerTypes(p: PreTokenizerJson | null | undefined): string[] {
  if (!p) return [];
  if (p.type === 'Sequence') return (p.pretokenizers ?? []).flatMap(preTokenizerTypes);
  return [p.type];
}
