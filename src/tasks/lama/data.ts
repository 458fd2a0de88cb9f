/**
 * LAMA T-REx fact retrieval data in the AutoPrompt layout:
 * `<dataDir>/fact-retrieval/<split>/<REL>/{train,dev,test}.jsonl`, manual templates in `<dataDir>/relations.jsonl`,
 * answer vocabularies `29k-vocab.json` / `34k-vocab.json` keyed by model name.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { TextTokenizer } from '../../tokenizers/tokenizer.js';

export type LamaSplit = 'original' | 'trex';
export type FactSet = 'train' | 'dev' | 'test';
export const FACT_SETS: readonly FactSet[] = ['train', 'dev', 'test'];

export interface LamaFact {
  sub_label: string;
  obj_label: string;
  predicate_id: string;
  uuid?: string;
}

/** A fact whose object is a single answer token; `obj_token_id` is that token. */
export interface AnswerableFact extends LamaFact {
  obj_token_id: number;
}

export interface RelationTemplate {
  relation: string;
  /** manual prompt with `[X]` (subject) and `[Y]` (object) slots */
  template: string;
  label: string;
  description?: string;
  type?: string;
}

export interface RelationInfo {
  id: string;
  /** which fact files exist */
  files: Record<FactSet, boolean>;
  /** from relations.jsonl; undefined when the relation has no entry there */
  template?: string;
  label?: string;
}

export interface RelationData {
  train: LamaFact[] | null;
  dev: LamaFact[] | null;
  test: LamaFact[] | null;
  /** the fact files that do not exist (their set is null above) */
  missing: FactSet[];
}

/** 'P19' < 'P101': numeric order of the Wikidata property number, then plain string order. */
export function compareRelationIds(a: string, b: string): number {
  const na = Number(a.replace(/^P/, ''));
  const nb = Number(b.replace(/^P/, ''));
  if (Number.isFinite(na) && Number.isFinite(nb) && na !== nb) return na - nb;
  return a < b ? -1 : a > b ? 1 : 0;
}

function parseJsonLine(file: string, lineNo: number, line: string): Record<string, unknown> {
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch (e) {
    throw new Error(`${file}:${lineNo}: malformed JSON (${(e as Error).message})`);
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new Error(`${file}:${lineNo}: expected a JSON object`);
  }
  return value as Record<string, unknown>;
}

function requireString(file: string, lineNo: number, obj: Record<string, unknown>, field: string): string {
  const v = obj[field];
  if (typeof v !== 'string') throw new Error(`${file}:${lineNo}: field "${field}" missing or not a string`);
  return v;
}

/** Non-blank lines of a JSONL file with their 1-based line numbers. */
function jsonlRecords(file: string): { lineNo: number; obj: Record<string, unknown> }[] {
  const lines = fs.readFileSync(file, 'utf8').split('\n');
  const out: { lineNo: number; obj: Record<string, unknown> }[] = [];
  lines.forEach((line, i) => {
    if (line.trim() === '') return;
    out.push({ lineNo: i + 1, obj: parseJsonLine(file, i + 1, line) });
  });
  return out;
}

export function readFactsFile(file: string): LamaFact[] {
  return jsonlRecords(file).map(({ lineNo, obj }) => {
    const fact: LamaFact = {
      sub_label: requireString(file, lineNo, obj, 'sub_label'),
      obj_label: requireString(file, lineNo, obj, 'obj_label'),
      predicate_id: requireString(file, lineNo, obj, 'predicate_id'),
    };
    if (typeof obj.uuid === 'string') fact.uuid = obj.uuid;
    return fact;
  });
}

export function loadRelationTemplates(dataDir: string): Map<string, RelationTemplate> {
  const file = path.join(dataDir, 'relations.jsonl');
  const out = new Map<string, RelationTemplate>();
  for (const { lineNo, obj } of jsonlRecords(file)) {
    const t: RelationTemplate = {
      relation: requireString(file, lineNo, obj, 'relation'),
      template: requireString(file, lineNo, obj, 'template'),
      label: requireString(file, lineNo, obj, 'label'),
    };
    if (!t.template.includes('[X]') || !t.template.includes('[Y]')) {
      throw new Error(`${file}:${lineNo}: template of ${t.relation} lacks [X] or [Y]`);
    }
    if (typeof obj.description === 'string') t.description = obj.description;
    if (typeof obj.type === 'string') t.type = obj.type;
    out.set(t.relation, t);
  }
  return out;
}

function splitDir(dataDir: string, split: LamaSplit): string {
  return path.join(dataDir, 'fact-retrieval', split);
}

/** Relations of a split (directories under fact-retrieval/<split>), in relation-id order. */
export function listRelations(dataDir: string, split: LamaSplit): RelationInfo[] {
  const dir = splitDir(dataDir, split);
  if (!fs.existsSync(dir)) throw new Error(`LAMA split directory not found: ${dir}`);
  const templates = loadRelationTemplates(dataDir);
  return fs
    .readdirSync(dir, { withFileTypes: true })
    .filter((d) => d.isDirectory())
    .map((d) => d.name)
    .sort(compareRelationIds)
    .map((id) => {
      const files = {} as Record<FactSet, boolean>;
      for (const set of FACT_SETS) files[set] = fs.existsSync(path.join(dir, id, `${set}.jsonl`));
      const t = templates.get(id);
      return { id, files, template: t?.template, label: t?.label };
    });
}

/** Relations that have train, dev and test files (28 in `original`). */
export function completeRelations(relations: RelationInfo[]): RelationInfo[] {
  return relations.filter((r) => FACT_SETS.every((s) => r.files[s]));
}

export function loadRelation(dataDir: string, split: LamaSplit, rel: string): RelationData {
  const dir = path.join(splitDir(dataDir, split), rel);
  if (!fs.existsSync(dir)) throw new Error(`LAMA relation directory not found: ${dir}`);
  const data: RelationData = { train: null, dev: null, test: null, missing: [] };
  for (const set of FACT_SETS) {
    const file = path.join(dir, `${set}.jsonl`);
    if (fs.existsSync(file)) data[set] = readFactsFile(file);
    else data.missing.push(set);
  }
  return data;
}

/** A status line for a relation lacking fact files: 'no test file', 'no train and test files', ... */
export function missingFilesStatus(missing: readonly FactSet[]): string {
  if (missing.length === 0) return 'ok';
  const names = FACT_SETS.filter((s) => missing.includes(s));
  if (names.length === 1) return `no ${names[0]} file`;
  return `no ${names.slice(0, -1).join(', ')} and ${names[names.length - 1]} files`;
}

// ---------------------------------------------------------------------------------------------------------------
// Answer vocabulary

export type VocabStrategy = '29k' | '34k' | 'full';

const VOCAB_FILES: Record<Exclude<VocabStrategy, 'full'>, string> = {
  '29k': '29k-vocab.json',
  '34k': '34k-vocab.json',
};

/**
 * The single token that stands for `word` as an answer, or undefined when it takes several tokens or does not
 * come back unchanged from its token (accents stripped, [UNK], ...). Uncased tokenizers compare lowercased.
 * Uses the word-initial form (`Ġword`, `▁word`) for BPE / SentencePiece vocabularies.
 */
export function answerTokenId(word: string, tok: TextTokenizer): number | undefined {
  const w = tok.lowercase ? word.toLowerCase() : word;
  if (w.trim() === '' || w !== w.trim()) return undefined;
  const ids = tok.encodeWord(w);
  if (ids.length !== 1) return undefined;
  if (tok.decode(ids).trim() !== w) return undefined;
  return ids[0];
}

/** true when the vocabulary marks word starts (byte-level BPE `Ġ`, SentencePiece `▁`) in many of its tokens. */
function marksWordStart(tok: TextTokenizer): boolean {
  const n = Math.min(tok.vocabSize, 5000);
  let marked = 0;
  for (let id = 0; id < n; id++) if (/^[Ġ▁ ]./.test(tok.idToToken(id) ?? '')) marked++;
  return marked > 0.05 * n;
}

/**
 * Which list of a 29k/34k vocab file applies. The lists are keyed by the models LAMA was built for; a model
 * named like one of them uses its list, others pick by tokenizer family: word-start-marking BPE vocabularies
 * use the `gpt2-xl` list, WordPiece vocabularies (cased or not) the `bert-base-cased` one.
 */
export function answerVocabKey(modelName: string, tok: TextTokenizer, keys: readonly string[]): string {
  const pick = (k: string): string => {
    if (!keys.includes(k)) throw new Error(`answer vocab has no list "${k}" (has: ${keys.join(', ')})`);
    return k;
  };
  const base = path.basename(modelName);
  if (keys.includes(base)) return base;
  if (/roberta/i.test(base)) return pick('roberta-large');
  if (marksWordStart(tok)) return pick('gpt2-xl');
  if (/bert-large/i.test(base)) return pick('bert-large-cased');
  return pick('bert-base-cased');
}

/** Ids of the non-special tokens of the vocabulary. */
export function fullVocabIds(tok: TextTokenizer): number[] {
  const ids: number[] = [];
  for (let id = 0; id < tok.vocabSize; id++) {
    if (tok.idToToken(id) === undefined) continue;
    if (tok.decode([id], { skipSpecial: true }) === '') continue;
    ids.push(id);
  }
  return ids;
}

/**
 * Candidate token ids (ascending, unique, single tokens only) the answer argmax is restricted to.
 * '29k' / '34k': the common LAMA vocabularies mapped through the tokenizer; 'full': every non-special token.
 */
export function loadAnswerVocab(
  dataDir: string,
  strategy: VocabStrategy,
  modelName: string,
  tok: TextTokenizer,
): number[] {
  if (strategy === 'full') return fullVocabIds(tok);
  const fileName = VOCAB_FILES[strategy];
  if (fileName === undefined) throw new Error(`unknown vocab strategy "${strategy}" (use 29k, 34k or full)`);
  const file = path.join(dataDir, fileName);
  let lists: unknown;
  try {
    lists = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    throw new Error(`${file}: cannot read answer vocab (${(e as Error).message})`);
  }
  if (lists === null || typeof lists !== 'object' || Array.isArray(lists)) {
    throw new Error(`${file}: expected an object of word lists keyed by model name`);
  }
  const byModel = lists as Record<string, unknown>;
  const key = answerVocabKey(modelName, tok, Object.keys(byModel));
  const words = byModel[key];
  if (!Array.isArray(words)) throw new Error(`${file}: "${key}" is not a list`);
  const ids = new Set<number>();
  for (const entry of words) {
    if (typeof entry !== 'string') throw new Error(`${file}: "${key}" holds a non-string entry`);
    const id = answerTokenId(entry.replace(/^Ġ/, ''), tok);
    if (id !== undefined) ids.add(id);
  }
  return [...ids].sort((a, b) => a - b);
}

// ---------------------------------------------------------------------------------------------------------------
// Filtering and baselines

export interface FilterResult {
  kept: AnswerableFact[];
  dropped: LamaFact[];
}

/** Keeps the facts whose object is a single token in `vocabIds`, recording that token on each kept fact. */
export function filterFacts(
  facts: readonly LamaFact[],
  vocabIds: ReadonlySet<number> | readonly number[],
  tok: TextTokenizer,
): FilterResult {
  const allowed: ReadonlySet<number> = vocabIds instanceof Set ? vocabIds : new Set(vocabIds as readonly number[]);
  const idOf = new Map<string, number | undefined>();
  const kept: AnswerableFact[] = [];
  const dropped: LamaFact[] = [];
  for (const fact of facts) {
    if (!idOf.has(fact.obj_label)) idOf.set(fact.obj_label, answerTokenId(fact.obj_label, tok));
    const id = idOf.get(fact.obj_label);
    if (id !== undefined && allowed.has(id)) kept.push({ ...fact, obj_token_id: id });
    else dropped.push(fact);
  }
  return { kept, dropped };
}

export interface FilteredRelation {
  train: AnswerableFact[] | null;
  dev: AnswerableFact[] | null;
  test: AnswerableFact[] | null;
  /** kept / dropped counts per set; null for a set whose file is missing */
  counts: Record<FactSet, { kept: number; dropped: number } | null>;
  missing: FactSet[];
}

export function filterRelation(
  data: RelationData,
  vocabIds: ReadonlySet<number> | readonly number[],
  tok: TextTokenizer,
): FilteredRelation {
  const allowed: ReadonlySet<number> = vocabIds instanceof Set ? vocabIds : new Set(vocabIds as readonly number[]);
  const out: FilteredRelation = {
    train: null,
    dev: null,
    test: null,
    counts: { train: null, dev: null, test: null },
    missing: [...data.missing],
  };
  for (const set of FACT_SETS) {
    const facts = data[set];
    if (facts === null) continue;
    const { kept, dropped } = filterFacts(facts, allowed, tok);
    out[set] = kept;
    out.counts[set] = { kept: kept.length, dropped: dropped.length };
  }
  return out;
}

/** Most frequent object label of the train facts; ties go to the lexicographically smallest label. */
export function majorityObject(train: readonly LamaFact[]): string | undefined {
  const counts = new Map<string, number>();
  for (const f of train) counts.set(f.obj_label, (counts.get(f.obj_label) ?? 0) + 1);
  let best: string | undefined;
  let bestCount = 0;
  for (const [label, n] of counts) {
    if (n > bestCount || (n === bestCount && best !== undefined && label < best)) {
      best = label;
      bestCount = n;
    }
  }
  return best;
}
