/**
 * Rendering a template + record into token ids with pseudo-token slots and the answer position, and
 * batching rendered examples into padded plain arrays.
 *
 * Layout
 * - masked LM: `[CLS] … [SEP]` with the mask id at the answer slot; `answerPosition` is the mask's index.
 * - causal LM: `BOS` (when the model has one) + prefix; the answer slot is the final template part and is
 *   not a token: `answerPosition` is the index of the last prefix token, where the model predicts the next
 *   token. Training and evaluation both read the answer there.
 * Pseudo-token positions hold a placeholder id (unk, else pad); their embeddings are replaced downstream.
 *
 * Spacing: each text piece (anchor words, field values) is tokenized on its own, as `' ' + piece` when the
 * template has whitespace before it and as `piece` otherwise. WordPiece ignores the space; byte-level BPE
 * turns it into the `Ġ` word-start form and SentencePiece into `▁`, which is how the words read mid-sentence.
 */
import type { ModelInfo } from '../models/lm.js';
import type { TextTokenizer } from '../tokenizers/tokenizer.js';
import { shownTemplate, validateFor, type Template, type TemplatePart } from './template.js';

export interface RenderedExample {
  ids: number[];
  /** sequence positions of the pseudo tokens, ascending */
  pseudoPositions: number[];
  /** which pseudo token (0..numPseudo-1) sits at each of `pseudoPositions` */
  pseudoIndex: number[];
  answerPosition: number;
  /** BERT segment ids: 0, and 1 after a `[SEP]` written inside the template */
  tokenTypeIds?: number[];
}

export interface RenderOptions {
  /** maximum sequence length, special tokens included */
  maxLength: number;
  /** return null instead of throwing when the record cannot fit */
  skipTooLong?: boolean;
  /** the record's 0-based index in its data set; messages count from 1 (`record 1` is the first) */
  index?: number;
}

export type RenderInfo = Pick<ModelInfo, 'kind' | 'special' | 'tokenTypes'>;

/** `record 17 (uuid "…")` — the 1-based position (from a 0-based index) plus the first id-like field present */
export function describeRecord(record: Record<string, unknown>, index?: number): string {
  const idKey = ['id', 'uuid', 'idx', 'guid'].find((k) => record[k] !== undefined && record[k] !== null);
  const id = idKey ? `${idKey} ${JSON.stringify(record[idKey])}` : '';
  if (index === undefined) return id ? `record (${id})` : 'record';
  return id ? `record ${index + 1} (${id})` : `record ${index + 1}`;
}

/** The text of a field, or an error naming the field and the record. */
export function fieldText(record: Record<string, unknown>, name: string, index?: number): string {
  const value = record[name];
  if (value === undefined || value === null) {
    throw new Error(`${describeRecord(record, index)}: missing field "${name}" used by the template`);
  }
  if (typeof value === 'string') return value;
  if (typeof value === 'number' || typeof value === 'boolean') return String(value);
  throw new Error(`${describeRecord(record, index)}: field "${name}" is not text (${Array.isArray(value) ? 'array' : typeof value})`);
}

function encodePiece(tok: TextTokenizer, text: string, spaceBefore: boolean): number[] {
  return tok.encode(spaceBefore ? ` ${text}` : text);
}

interface Piece {
  part: TemplatePart;
  ids: number[];
}

function placeholderId(info: RenderInfo): number {
  return info.special.unk ?? info.special.pad;
}

function specialId(tok: TextTokenizer, template: Template, part: TemplatePart & { type: 'special' }): number {
  const id = tok.tokenToId(part.token);
  if (id === undefined) {
    throw new Error(`template column ${part.column}: ${part.token} is not a token of the tokenizer in "${shownTemplate(template.source)}"`);
  }
  return id;
}

/**
 * Shrinks field pieces, longest first and one token at a time (from its end), until the total fits; a field
 * keeps at least one token. Returns false when even that cannot fit.
 */
function shrinkFields(pieces: Piece[], excess: number): boolean {
  const fieldsIds = pieces.filter((p) => p.part.type === 'field').map((p) => p.ids);
  while (excess > 0) {
    let longest: number[] | null = null;
    for (const ids of fieldsIds) if (ids.length > 1 && (!longest || ids.length > longest.length)) longest = ids;
    if (!longest) return false;
    longest.pop();
    excess--;
  }
  return true;
}

/**
 * The special tokens around a rendered sequence: as the tokenizer's own post-processor adds them when it has
 * one (`[CLS] … [SEP]`, `<s> … </s>`, BOS only, or nothing), else a masked LM's cls/sep and a causal LM's bos.
 * A causal LM's sequence never ends with a special token: the answer is the token after it.
 */
export function sequenceWrap(tok: TextTokenizer, info: RenderInfo): { start: number[]; end: number[] } {
  const { special } = info;
  const wrap = tok.wrap;
  if (info.kind === 'causal') return { start: wrap ? wrap.start : special.bos !== undefined ? [special.bos] : [], end: [] };
  if (wrap && wrap.start.length + wrap.end.length > 0) return wrap;
  const start = special.cls ?? special.bos;
  const end = special.sep ?? special.eos;
  if (start === undefined || end === undefined) throw new Error(`a masked LM needs cls and sep token ids (have ${JSON.stringify(special)})`);
  return { start: [start], end: [end] };
}

export function renderExample(
  template: Template,
  record: Record<string, unknown>,
  tok: TextTokenizer,
  info: RenderInfo,
  opts: RenderOptions,
): RenderedExample | null {
  validateFor(template, info.kind);
  const masked = info.kind === 'masked';
  const { special } = info;
  const { start, end } = sequenceWrap(tok, info);
  if (masked && special.mask === undefined) throw new Error(`a masked LM needs a mask token id (have ${JSON.stringify(special)})`);

  const pieces: Piece[] = template.parts.map((part) => {
    switch (part.type) {
      case 'text':
        return { part, ids: encodePiece(tok, part.text, part.spaceBefore) };
      case 'field': {
        const ids = encodePiece(tok, fieldText(record, part.name, opts.index), part.spaceBefore);
        if (masked && ids.includes(special.mask as number)) {
          throw new Error(`${describeRecord(record, opts.index)}: field "${part.name}" contains the mask token`);
        }
        return { part, ids };
      }
      case 'special':
        return { part, ids: [specialId(tok, template, part)] };
      case 'pseudo':
        return { part, ids: new Array<number>(part.count).fill(placeholderId(info)) };
      case 'mask':
        return { part, ids: masked ? [special.mask as number] : [] };
    }
  });

  const extra = start.length + end.length;
  const total = extra + pieces.reduce((n, p) => n + p.ids.length, 0);
  if (total > opts.maxLength && !shrinkFields(pieces, total - opts.maxLength)) {
    if (opts.skipTooLong) return null;
    throw new Error(
      `${describeRecord(record, opts.index)} cannot fit in ${opts.maxLength} tokens: the template needs ${total} and its fields can only shrink to one token each`,
    );
  }

  const ids: number[] = [];
  const tokenTypeIds: number[] = [];
  const pseudoPositions: number[] = [];
  const pseudoIndex: number[] = [];
  let segment = 0;
  let answerPosition = -1;
  const push = (id: number) => {
    ids.push(id);
    tokenTypeIds.push(segment);
  };
  for (const id of start) push(id);
  for (const { part, ids: pieceIds } of pieces) {
    if (part.type === 'pseudo') {
      for (const id of pieceIds) {
        pseudoPositions.push(ids.length);
        pseudoIndex.push(pseudoIndex.length);
        push(id);
      }
      continue;
    }
    if (part.type === 'mask') answerPosition = masked ? ids.length : ids.length - 1;
    for (const id of pieceIds) push(id);
    if (part.type === 'special' && pieceIds[0] === special.sep) segment = 1;
  }
  for (const id of end) push(id);
  if (answerPosition < 0) {
    throw new Error(`${describeRecord(record, opts.index)}: the prompt before [MASK] is empty and the model has no BOS token`);
  }
  const out: RenderedExample = { ids, pseudoPositions, pseudoIndex, answerPosition };
  if (info.tokenTypes) out.tokenTypeIds = tokenTypeIds;
  return out;
}

export interface RenderedSet {
  examples: RenderedExample[];
  /** index in `records` of each rendered example */
  indices: number[];
  /** indices of records skipped as too long (only with `skipTooLong`) */
  skipped: number[];
}

/** Renders every record; with `skipTooLong`, records that cannot fit are counted in `skipped`. */
export function renderAll(
  template: Template,
  records: readonly Record<string, unknown>[],
  tok: TextTokenizer,
  info: RenderInfo,
  opts: Omit<RenderOptions, 'index'>,
): RenderedSet {
  const set: RenderedSet = { examples: [], indices: [], skipped: [] };
  records.forEach((record, index) => {
    const ex = renderExample(template, record, tok, info, { ...opts, index });
    if (ex) {
      set.examples.push(ex);
      set.indices.push(index);
    } else {
      set.skipped.push(index);
    }
  });
  return set;
}

export interface CollatedBatch {
  /** [B][S] token ids, padded with the pad id */
  ids: number[][];
  /** [B][S] 1 for real tokens, 0 for padding */
  attentionMask: number[][];
  /** [B][S] segment ids (zeros where the examples have none) */
  tokenTypeIds: number[][];
  /** pseudo tokens of the whole batch, flattened: row, sequence position and pseudo index of each */
  pseudoRows: number[];
  pseudoCols: number[];
  pseudoIndex: number[];
  /** [B] answer position of each row (after padding) */
  answerPositions: number[];
  /** [B] real (unpadded) length of each row */
  lengths: number[];
}

/**
 * Pads rendered examples to the longest. Left padding (causal LMs) shifts every position of a row by its
 * padding so the answer stays at the end; right padding leaves positions as rendered.
 */
export function collate(examples: readonly RenderedExample[], info: Pick<ModelInfo, 'paddingSide' | 'special'>): CollatedBatch {
  if (examples.length === 0) throw new Error('collate: no examples');
  const width = Math.max(...examples.map((e) => e.ids.length));
  const pad = info.special.pad;
  const batch: CollatedBatch = {
    ids: [],
    attentionMask: [],
    tokenTypeIds: [],
    pseudoRows: [],
    pseudoCols: [],
    pseudoIndex: [],
    answerPositions: [],
    lengths: [],
  };
  examples.forEach((ex, row) => {
    const n = ex.ids.length;
    const fill = width - n;
    const shift = info.paddingSide === 'left' ? fill : 0;
    const padRow = (values: number[], padValue: number) => {
      const padding = new Array<number>(fill).fill(padValue);
      return info.paddingSide === 'left' ? [...padding, ...values] : [...values, ...padding];
    };
    batch.ids.push(padRow(ex.ids, pad));
    batch.attentionMask.push(padRow(new Array<number>(n).fill(1), 0));
    batch.tokenTypeIds.push(padRow(ex.tokenTypeIds ?? new Array<number>(n).fill(0), 0));
    ex.pseudoPositions.forEach((pos, k) => {
      batch.pseudoRows.push(row);
      batch.pseudoCols.push(pos + shift);
      batch.pseudoIndex.push(ex.pseudoIndex[k]);
    });
    batch.answerPositions.push(ex.answerPosition + shift);
    batch.lengths.push(n);
  });
  return batch;
}

/**
 * Human-readable prompt: fields filled in (shown as `{name}` without a record), pseudo tokens as `[P]`,
 * the answer slot as `[MASK]`.
 */
export function renderText(template: Template, record?: Record<string, unknown>): string {
  return template.parts
    .map((p, i) => {
      const space = i > 0 && p.spaceBefore ? ' ' : '';
      switch (p.type) {
        case 'text':
          return space + p.text;
        case 'field':
          return space + (record ? fieldText(record, p.name) : `{${p.name}}`);
        case 'pseudo':
          return space + '[P]'.repeat(p.count);
        case 'mask':
          return `${space}[MASK]`;
        case 'special':
          return space + p.token;
      }
    })
    .join('');
}
