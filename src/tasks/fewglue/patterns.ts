import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { readText } from './records.js';
import { taskInfo, type AnswerType, type TaskExample, type TaskName } from './tasks.js';

/**
 * A template in the prompt language: literal text = anchor words, `{field}` = a field of the example,
 * `[MASK]` = the answer slot, `[P]` = one pseudo token, `[P*3]` = three. A case template picks its text by
 * the value of one field (COPA: "because" for causes, "so" for effects).
 */
export type Template = string | { by: string; cases: Record<string, string> };

export interface Pattern {
  name: string;
  /** for masked LMs (the answer slot may sit anywhere) */
  template: Template;
  /** for causal LMs, ending with [MASK]; required when `template` does not end with [MASK] */
  causal?: Template;
  notes?: string;
}

export interface PatternFile {
  task: TaskName;
  answerType: AnswerType;
  /** the example fields these patterns read */
  fields: string[];
  /** label tasks only: label → label words (the first is the main one) */
  verbalizer?: Record<string, string[]>;
  patterns: Pattern[];
  notes?: string;
  /** the file it was read from */
  file: string;
}

const FILE_KEYS = ['task', 'answerType', 'fields', 'verbalizer', 'patterns', 'notes'];
const PATTERN_KEYS = ['name', 'template', 'causal', 'notes'];

/** `patterns/` at the package root (found from this module, so it works from src/ and from dist/). */
export function patternsDir(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (let up = 0; up < 6; up++) {
    if (existsSync(path.join(dir, 'patterns')) && existsSync(path.join(dir, 'package.json'))) return path.join(dir, 'patterns');
    dir = path.dirname(dir);
  }
  throw new Error('cannot find the patterns/ directory above ' + fileURLToPath(import.meta.url));
}

/** Reads and validates `patterns/<task>.json` (or `<dir>/<task>.json`). */
export function loadPatterns(task: TaskName | string, dir: string = patternsDir()): PatternFile {
  const name = taskInfo(task).name;
  const file = path.join(dir, `${name}.json`);
  let json: unknown;
  try {
    json = JSON.parse(readText(file));
  } catch (e) {
    throw new Error(e instanceof SyntaxError ? `${file}: invalid JSON (${e.message})` : (e as Error).message);
  }
  const parsed = parsePatternFile(json, file);
  if (parsed.task !== name) throw new Error(`${file}: task: is "${parsed.task}" but the file is for ${name}`);
  return parsed;
}

/** Validates a pattern file's JSON; every error is one line naming the file and the field. */
export function parsePatternFile(json: unknown, file: string): PatternFile {
  const fail = (field: string, what: string): never => {
    throw new Error(`${file}: ${field}: ${what}`);
  };
  const top = asObject(json, () => fail('(top level)', 'must be a JSON object'));
  checkKeys(top, FILE_KEYS, ['task', 'answerType', 'fields', 'patterns'], fail, '');

  if (typeof top.task !== 'string') return fail('task', 'must be a string');
  let info;
  try {
    info = taskInfo(top.task);
  } catch (e) {
    return fail('task', (e as Error).message);
  }
  if (top.answerType !== info.answerType) fail('answerType', `is ${JSON.stringify(top.answerType)}, ${info.name} answers are "${info.answerType}"`);

  const fields = stringList(top.fields, 'fields', fail);
  for (const f of fields) if (!info.fields.includes(f)) fail('fields', `"${f}" is not a field of ${info.name} examples (${info.fields.join(', ')})`);

  let verbalizer: Record<string, string[]> | undefined;
  if (info.answerType === 'label') {
    if (top.verbalizer === undefined) fail('verbalizer', `is missing (${info.name} is a label task)`);
    const v = asObject(top.verbalizer, () => fail('verbalizer', 'must be an object label → [words]'));
    checkKeys(v, [...info.labels], [...info.labels], fail, 'verbalizer.');
    verbalizer = Object.fromEntries(info.labels.map((l) => [l, stringList(v[l], `verbalizer.${l}`, fail)]));
  } else if (top.verbalizer !== undefined) {
    fail('verbalizer', `not used by "${info.answerType}" tasks (the answers are the example's choices)`);
  }

  if (!Array.isArray(top.patterns) || top.patterns.length === 0) return fail('patterns', 'must be a non-empty array');
  const patterns = top.patterns.map((p: unknown, i: number) => parsePattern(p, `patterns[${i}]`, fields, fail));
  const names = patterns.map((p) => p.name);
  const dup = names.find((n, i) => names.indexOf(n) !== i);
  if (dup) fail('patterns', `name "${dup}" is used twice`);
  if (!patterns.some((p) => pseudoTokenCount(p.template) === 0)) fail('patterns', 'needs a manual pattern (one without [P])');
  if (!patterns.some((p) => pseudoTokenCount(p.template) > 0)) fail('patterns', 'needs a P-tuning pattern (one with [P])');

  if (top.notes !== undefined && typeof top.notes !== 'string') fail('notes', 'must be a string');
  return {
    task: info.name, answerType: info.answerType, fields, ...(verbalizer ? { verbalizer } : {}), patterns,
    ...(typeof top.notes === 'string' ? { notes: top.notes } : {}), file,
  };
}

type Fail = (field: string, what: string) => never;

function parsePattern(json: unknown, at: string, fields: string[], fail: Fail): Pattern {
  const p = asObject(json, () => fail(at, 'must be an object'));
  checkKeys(p, PATTERN_KEYS, ['name', 'template'], fail, `${at}.`);
  if (typeof p.name !== 'string' || p.name === '') fail(`${at}.name`, 'must be a non-empty string');
  if (p.notes !== undefined && typeof p.notes !== 'string') fail(`${at}.notes`, 'must be a string');
  const template = parseTemplate(p.template, `${at}.template`, fields, fail);
  const count = pseudoTokenCount(template);
  if (p.causal === undefined) {
    if (!variants(template).every(endsWithMask)) fail(`${at}.causal`, 'is missing, and the template does not end with [MASK] (causal LMs need it last)');
    return { name: p.name as string, template, ...(p.notes ? { notes: p.notes as string } : {}) };
  }
  const causal = parseTemplate(p.causal, `${at}.causal`, fields, fail);
  if (!variants(causal).every(endsWithMask)) fail(`${at}.causal`, 'must end with [MASK]');
  if (pseudoTokenCount(causal) !== count) fail(`${at}.causal`, `has ${pseudoTokenCount(causal)} pseudo tokens, the template has ${count}`);
  return { name: p.name as string, template, causal, ...(p.notes ? { notes: p.notes as string } : {}) };
}

function parseTemplate(json: unknown, at: string, fields: string[], fail: Fail): Template {
  if (typeof json === 'string') {
    checkTemplateText(json, at, fields, fail);
    return json;
  }
  const t = asObject(json, () => fail(at, 'must be a template string or {"by": field, "cases": {value: template}}'));
  checkKeys(t, ['by', 'cases'], ['by', 'cases'], fail, `${at}.`);
  if (typeof t.by !== 'string' || !fields.includes(t.by)) fail(`${at}.by`, `must name one of the fields (${fields.join(', ')})`);
  const cases = asObject(t.cases, () => fail(`${at}.cases`, 'must be an object value → template'));
  const entries = Object.entries(cases);
  if (entries.length === 0) fail(`${at}.cases`, 'is empty');
  for (const [value, text] of entries) {
    if (typeof text !== 'string') fail(`${at}.cases.${value}`, 'must be a template string');
    checkTemplateText(text as string, `${at}.cases.${value}`, fields, fail);
  }
  const counts = new Set(entries.map(([, text]) => pseudoTokenCount(text as string)));
  if (counts.size > 1) fail(`${at}.cases`, 'all cases must have the same number of pseudo tokens');
  return { by: t.by as string, cases: cases as Record<string, string> };
}

interface Scan {
  fields: string[];
  pseudo: number;
  masks: number;
  /** the first problem found, if any */
  problem?: string;
}

/**
 * A light reading of the template language, enough to validate pattern files: backslash escapes (`\[`), `[MASK]`,
 * `[P]` / `[P*k]` (spaces allowed around `*`), other `[NAME]` special tokens (e.g. `[SEP]`), `{field}`.
 */
function scanTemplate(text: string): Scan {
  const scan: Scan = { fields: [], pseudo: 0, masks: 0 };
  const note = (problem: string) => (scan.problem ??= problem);
  for (const m of text.matchAll(/\\.|\[([^\][]*)\]|\{([^{}]*)\}|[[\]{}]/g)) {
    const [token, slot, field] = m;
    if (token.startsWith('\\')) continue;
    if (field !== undefined) {
      if (!/^[A-Za-z0-9_-]+$/.test(field)) note(`bad field name {${field}}`);
      else if (!scan.fields.includes(field)) scan.fields.push(field);
    } else if (slot !== undefined) {
      const p = /^P(?:\s*\*\s*(\d+))?$/.exec(slot.trim());
      if (slot === 'MASK') scan.masks++;
      else if (p) {
        const k = p[1] === undefined ? 1 : Number(p[1]);
        if (k < 1) note(`[${slot}] needs at least one pseudo token`);
        scan.pseudo += k;
      } else if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(slot)) note(`unknown slot [${slot}] (use [MASK], [P], [P*k] or a special token like [SEP])`);
    } else {
      note(`unmatched "${token}" (escape it as \\${token})`);
    }
  }
  return scan;
}

function checkTemplateText(text: string, at: string, fields: string[], fail: Fail): void {
  if (text.trim() === '') fail(at, 'is empty');
  const scan = scanTemplate(text);
  if (scan.problem) fail(at, scan.problem);
  for (const f of scan.fields) if (!fields.includes(f)) fail(at, `{${f}} is not among the file's fields (${fields.join(', ')})`);
  if (scan.masks !== 1) fail(at, `must contain [MASK] exactly once (found ${scan.masks})`);
}

/** The `{field}` names a template string mentions, in order of first use. */
export function templateFields(text: string): string[] {
  return scanTemplate(text).fields;
}

/** Pseudo tokens in a template ([P] counts 1, [P*k] counts k); for a case template, those of its first case. */
export function pseudoTokenCount(template: Template): number {
  return scanTemplate(variants(template)[0]).pseudo;
}

/**
 * The template text to use for an example: for `causal` LMs the causal variant when there is one, and for
 * a case template the case named by the example's field.
 */
export function templateFor(pattern: Pattern, example: TaskExample, lm: 'masked' | 'causal' = 'masked'): string {
  const t = lm === 'causal' && pattern.causal !== undefined ? pattern.causal : pattern.template;
  if (typeof t === 'string') return t;
  const value = example.fields[t.by];
  const text = value === undefined ? undefined : t.cases[value];
  if (text === undefined) throw new Error(`pattern "${pattern.name}": no case for ${t.by}="${value}" (example ${example.id})`);
  return text;
}

/** Every template text a pattern holds (cases included), e.g. to check them all. */
export function templateTexts(pattern: Pattern): string[] {
  return [...variants(pattern.template), ...(pattern.causal ? variants(pattern.causal) : [])];
}

function variants(t: Template): string[] {
  return typeof t === 'string' ? [t] : Object.values(t.cases);
}

function endsWithMask(text: string): boolean {
  return text.trimEnd().endsWith('[MASK]');
}

function asObject(v: unknown, onError: () => never): Record<string, unknown> {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return onError();
  return v as Record<string, unknown>;
}

function checkKeys(obj: Record<string, unknown>, allowed: string[], required: string[], fail: Fail, prefix: string): void {
  for (const k of Object.keys(obj)) if (!allowed.includes(k)) fail(`${prefix}${k}`, `unknown key (allowed: ${allowed.join(', ')})`);
  for (const k of required) if (obj[k] === undefined) fail(`${prefix}${k}`, 'is missing');
}

function stringList(v: unknown, at: string, fail: Fail): string[] {
  if (!Array.isArray(v) || v.length === 0 || !v.every((s) => typeof s === 'string' && s.trim() !== '')) {
    return fail(at, 'must be a non-empty array of non-empty strings');
  }
  return v as string[];
}
