/**
 * The prompt template language.
 *
 *   [P*3] {sub_label} [P*3] [MASK] .      literal words, fields, pseudo tokens and the answer slot
 *
 * - literal text      discrete anchor words, tokenized as written
 * - `{field}`         a field of the input record (letters, digits, `_`, `-`)
 * - `[MASK]`          the answer slot; exactly one
 * - `[P]`, `[P*k]`    one / k continuous pseudo tokens (k = 1..1024)
 * - `[SEP]`, `[CLS]`… any other bracketed name is a literal special token, passed through as that token
 * - `\[ \] \{ \} \\`  escaped literal characters
 * - `"3,3,3"`         THUDM LAMA tuple shorthand (see `expandTuple`)
 *
 * Whitespace matters only as a word boundary: each part records whether whitespace precedes it in the
 * template (`spaceBefore`), and rendering tokenizes a text piece as `' ' + piece` when it does (the
 * mid-sentence form for byte-level BPE and SentencePiece; WordPiece ignores it).
 */
import type { LmKind } from '../models/lm.js';

export type TemplatePart =
  | { type: 'text'; text: string; spaceBefore: boolean; column: number }
  | { type: 'field'; name: string; spaceBefore: boolean; column: number }
  | { type: 'mask'; spaceBefore: boolean; column: number }
  | { type: 'pseudo'; count: number; spaceBefore: boolean; column: number }
  | { type: 'special'; token: string; spaceBefore: boolean; column: number };

export interface Template {
  /** the template as given (tuple shorthand kept) */
  readonly source: string;
  /** canonical form in the template language */
  readonly text: string;
  readonly parts: readonly TemplatePart[];
  /** set when the template came from the `a,b,c` tuple shorthand */
  readonly tuple?: readonly [number, number, number];
}

export interface ParseOptions {
  /** tuple shorthand: THUDM's old BERT order `[P*a] [MASK] [P*b] {subject} [P*c]` */
  legacyBertOrder?: boolean;
  /** field the tuple shorthand places as the subject (default `sub_label`) */
  subjectField?: string;
  /** when given, a `{field}` not in this list is an error */
  knownFields?: readonly string[];
}

const MAX_PSEUDO_GROUP = 1024;
const FIELD_NAME = /^[A-Za-z0-9_-]+$/;
const SPECIAL_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
const TUPLE = /^\s*\(?\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*\)?\s*$/;
/** numbers and commas only: meant as a tuple, whatever its counts */
const TUPLE_LIKE = /^[\s()+\-.,\d]*,[\s()+\-.,\d]*$/;

/** A template as messages quote it: control characters (a line break) escaped, so a message stays one line. */
export function shownTemplate(src: string): string {
  const named: Record<string, string> = { '\n': '\\n', '\r': '\\r', '\t': '\\t' };
  return src.replace(/[\x00-\x1f\x7f\u2028\u2029]/g, (c) => named[c] ?? `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

function fail(src: string, column: number, what: string): never {
  throw new Error(`template column ${column}: ${what} in "${shownTemplate(src)}"`);
}

/** columns of a tuple template refer to its expansion, so messages quote that */
function failIn(template: Template, column: number, what: string): never {
  if (!template.tuple) fail(template.source, column, what);
  throw new Error(`template column ${column}: ${what} in "${shownTemplate(template.text)}" (from "${shownTemplate(template.source)}")`);
}

/**
 * The tuple shorthand of THUDM P-tuning's LAMA `--template (a, b, c)`:
 * `[P*a] {sub_label} [P*b] [MASK] [P*c]` (zero groups omitted). With `legacyBertOrder`, the order THUDM's
 * code builds for BERT: `[P*a] [MASK] [P*b] {sub_label} [P*c]`, and, as there, a literal `.` in place of an
 * empty third group. For a causal LM the third count must be 0 (`3,3,0`): the answer slot ends the prompt.
 */
export function expandTuple(counts: readonly [number, number, number], opts: ParseOptions = {}): string {
  const subject = `{${opts.subjectField ?? 'sub_label'}}`;
  const group = (k: number) => (k > 1 ? [`[P*${k}]`] : k === 1 ? ['[P]'] : []);
  const [a, b, c] = counts;
  const parts = opts.legacyBertOrder
    ? [...group(a), '[MASK]', ...group(b), subject, ...(c > 0 ? group(c) : ['.'])]
    : [...group(a), subject, ...group(b), '[MASK]', ...group(c)];
  return parts.join(' ');
}

export function parseTemplate(src: string, opts: ParseOptions = {}): Template {
  const tuple = TUPLE.exec(src);
  if (tuple) {
    const counts = [Number(tuple[1]), Number(tuple[2]), Number(tuple[3])] as [number, number, number];
    const parsed = parseTemplate(expandTuple(counts, opts), { knownFields: opts.knownFields });
    return { ...parsed, source: src, tuple: counts };
  }
  if (TUPLE_LIKE.test(src)) {
    throw new Error(
      `template "${shownTemplate(src)}": a tuple template is three integers ≥ 0, a,b,c, read as [P*a] {sub_label} [P*b] [MASK] [P*c] (e.g. 3,3,3; 3,3,0 for a causal LM)`,
    );
  }
  const parts: TemplatePart[] = [];
  let text = '';
  let textColumn = 0;
  let pendingSpace = false;
  let maskCount = 0;

  const flushText = () => {
    const lead = text.length - text.trimStart().length;
    const body = text.trim();
    if (body) {
      parts.push({ type: 'text', text: body, spaceBefore: pendingSpace || lead > 0, column: textColumn + lead });
      pendingSpace = /\s$/.test(text);
    } else if (text) {
      pendingSpace = true;
    }
    text = '';
  };
  const addText = (s: string, column: number) => {
    if (!text) textColumn = column;
    text += s;
  };
  const closing = (from: number, open: string, close: string): number => {
    for (let j = from + 1; j < src.length; j++) {
      const ch = src[j];
      if (ch === close) return j;
      if ('[]{}'.includes(ch)) break;
    }
    fail(src, from + 1, `unbalanced "${open}"`);
  };

  for (let i = 0; i < src.length; i++) {
    const ch = src[i];
    const column = i + 1;
    if (ch === '\\' && i + 1 < src.length && '[]{}\\'.includes(src[i + 1])) {
      addText(src[i + 1], column);
      i++;
    } else if (ch === '}' || ch === ']') {
      fail(src, column, `unbalanced "${ch}"`);
    } else if (ch === '{') {
      const end = closing(i, '{', '}');
      const name = src.slice(i + 1, end).trim();
      if (!name) fail(src, column, 'empty field name "{}"');
      if (!FIELD_NAME.test(name)) fail(src, column, `bad field name "{${name}}" (letters, digits, _ and - only)`);
      if (opts.knownFields && !opts.knownFields.includes(name)) {
        fail(src, column, `unknown field "{${name}}" (known: ${opts.knownFields.join(', ') || 'none'})`);
      }
      flushText();
      parts.push({ type: 'field', name, spaceBefore: pendingSpace, column });
      pendingSpace = false;
      i = end;
    } else if (ch === '[') {
      const end = closing(i, '[', ']');
      const inner = src.slice(i + 1, end).trim();
      const raw = src.slice(i, end + 1);
      flushText();
      const spaceBefore = pendingSpace;
      pendingSpace = false;
      if (inner === 'MASK') {
        maskCount++;
        if (maskCount > 1) fail(src, column, 'second [MASK] (exactly one answer slot allowed)');
        parts.push({ type: 'mask', spaceBefore, column });
      } else if (inner === 'P') {
        parts.push({ type: 'pseudo', count: 1, spaceBefore, column });
      } else if (/^P\s*\*/.test(inner)) {
        const k = inner.slice(inner.indexOf('*') + 1).trim();
        if (!/^\d+$/.test(k) || Number(k) < 1 || Number(k) > MAX_PSEUDO_GROUP) {
          fail(src, column, `bad pseudo-token count "${raw}" (expected [P*k], k = 1..${MAX_PSEUDO_GROUP})`);
        }
        parts.push({ type: 'pseudo', count: Number(k), spaceBefore, column });
      } else if (inner === 'X' || inner === 'Y') {
        fail(src, column, `"${raw}" is a LAMA placeholder: write {sub_label} and [MASK] (see fromLamaTemplate)`);
      } else if (SPECIAL_NAME.test(inner)) {
        parts.push({ type: 'special', token: `[${inner}]`, spaceBefore, column });
      } else {
        fail(src, column, `bad bracketed token "${raw}"`);
      }
      i = end;
    } else {
      addText(ch, column);
    }
  }
  flushText();
  if (maskCount === 0) fail(src, 1, 'no [MASK] answer slot');
  return { source: src, text: formatParts(parts), parts };
}

const escapeText = (s: string) => s.replace(/[[\]{}\\]/g, (c) => `\\${c}`);

function formatPart(p: TemplatePart): string {
  switch (p.type) {
    case 'text':
      return escapeText(p.text);
    case 'field':
      return `{${p.name}}`;
    case 'mask':
      return '[MASK]';
    case 'pseudo':
      return p.count === 1 ? '[P]' : `[P*${p.count}]`;
    case 'special':
      return p.token;
  }
}

function formatParts(parts: readonly TemplatePart[]): string {
  return parts.map((p, i) => (i > 0 && p.spaceBefore ? ' ' : '') + formatPart(p)).join('');
}

/** Total number of pseudo tokens (the prompt encoder's sequence length). */
export function numPseudo(template: Template): number {
  return template.parts.reduce((n, p) => n + (p.type === 'pseudo' ? p.count : 0), 0);
}

/** Record fields the template reads, in order of first use. */
export function fields(template: Template): string[] {
  const names: string[] = [];
  for (const p of template.parts) if (p.type === 'field' && !names.includes(p.name)) names.push(p.name);
  return names;
}

/**
 * Checks the template against the kind of LM. Causal LMs predict the next token after a prefix, so the
 * answer slot must be the final part: nothing, not even punctuation, may follow `[MASK]`.
 */
export function validateFor(template: Template, kind: LmKind): void {
  if (kind !== 'causal') return;
  const at = template.parts.findIndex((p) => p.type === 'mask');
  const after = template.parts[at + 1];
  if (!after) return;
  const hint = template.tuple ? ' (for a causal LM use a tuple ending in 0, e.g. "3,3,0")' : '';
  failIn(
    template,
    after.column,
    `[MASK] must be the last part for a causal LM, found "${formatPart(after)}" after it${hint}`,
  );
}

/**
 * A LAMA manual template (`[X] was born in [Y] .`) in this template language (`{sub_label} was born in
 * [MASK] .`). With `kind: 'causal'` everything after `[Y]` is dropped, as LAMA probing of left-to-right LMs
 * does: the prompt must end at the answer.
 */
export function fromLamaTemplate(lama: string, opts: { subjectField?: string; kind?: LmKind } = {}): string {
  if (!lama.includes('[X]') || !lama.includes('[Y]')) {
    throw new Error(`LAMA template "${lama}" must contain [X] and [Y]`);
  }
  const cut = opts.kind === 'causal' ? lama.slice(0, lama.indexOf('[Y]') + 3) : lama;
  return cut
    .split(/(\[X\]|\[Y\])/)
    .map((piece) =>
      piece === '[X]' ? `{${opts.subjectField ?? 'sub_label'}}` : piece === '[Y]' ? '[MASK]' : escapeText(piece),
    )
    .join('')
    .trim();
}

/**
 * The "manual + P-tuning" template: the words of a manual template stay as anchors and groups of pseudo
 * tokens are added around them.
 *
 * Placement rule. The manual template is a sequence of slots (`{field}`s and `[MASK]`) with runs of anchor
 * words (and special tokens) between them: `A0 S1 A1 S2 … Sn An`. There are n+1 gaps; gap 0 gets its pseudo
 * group at the very start, and gap i (1..n) right after slot Si, before the anchor words Ai — so anchors stay
 * next to the slot that follows them (`… was born in [MASK]`). `pseudo` is one count for every gap or one count
 * per gap (length n+1); 0 leaves a gap without pseudo tokens. For a causal LM the prompt ends at `[MASK]`:
 * no group follows it.
 *
 *   "[X] was born in [Y] ."  →  "[P*3] {sub_label} [P*3] was born in [MASK] [P*3] ."   (masked)
 *                            →  "[P*3] {sub_label} [P*3] was born in [MASK]"           (causal)
 *
 * Accepts this template language or a LAMA template with [X]/[Y].
 */
export function withAnchorsAndPseudo(
  manual: string | Template,
  opts: { pseudo?: number | readonly number[]; kind?: LmKind; subjectField?: string } = {},
): Template {
  const src =
    typeof manual === 'string' && /\[X\]|\[Y\]/.test(manual)
      ? fromLamaTemplate(manual, { subjectField: opts.subjectField, kind: opts.kind })
      : manual;
  const base = typeof src === 'string' ? parseTemplate(src) : src;
  if (numPseudo(base) > 0) throw new Error(`manual template "${base.source}" already has pseudo tokens`);
  const slots = base.parts.filter((p) => p.type === 'field' || p.type === 'mask').length;
  const spec = opts.pseudo ?? 3;
  const counts = typeof spec === 'number' ? new Array<number>(slots + 1).fill(spec) : [...spec];
  if (counts.length !== slots + 1 || counts.some((k) => !Number.isInteger(k) || k < 0)) {
    throw new Error(
      `pseudo counts [${counts.join(', ')}] do not fit "${base.source}": expected ${slots + 1} counts ≥ 0 (one per gap around ${slots} slots)`,
    );
  }
  let out = '';
  const group = (k: number) => {
    if (k > 0) out += ` ${k === 1 ? '[P]' : `[P*${k}]`}`;
  };
  let gap = 0;
  group(counts[gap]);
  base.parts.forEach((p, i) => {
    out += (p.spaceBefore || i === 0 ? ' ' : '') + formatPart(p);
    if (p.type === 'field' || p.type === 'mask') {
      gap++;
      const causalEnd = opts.kind === 'causal' && p.type === 'mask' && i === base.parts.length - 1;
      if (!causalEnd) group(counts[gap]);
    }
  });
  const result = parseTemplate(out.trim());
  if (opts.kind) validateFor(result, opts.kind);
  return result;
}
