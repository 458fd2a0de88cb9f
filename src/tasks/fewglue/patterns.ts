import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { readText } from './records.js';
import { parseFile, parseJsonText, z } from '../../util/schema.js';
import { UserError } from '../../util/errors.js';
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
  const json = parseJsonText(readText(file), file);
  const parsed = parsePatternFile(json, file);
  if (parsed.task !== name) throw new UserError(`${file}: task: is "${parsed.task}" but the file is for ${name}`);
  return parsed;
}

/** a non-empty list of non-empty strings */
const stringList = z.unknown().transform((v, ctx) => {
  if (!Array.isArray(v) || v.length === 0 || !v.every((x) => typeof x === 'string' && x.trim() !== '')) {
    ctx.addIssue({ code: 'custom', message: v === undefined ? 'is missing' : 'must be a non-empty array of non-empty strings' });
    return z.NEVER;
  }
  return v as string[];
});

const caseTemplate = z.object({ by: z.string(), cases: z.record(z.string(), z.string()) }).strict();
const templateSchema = z.union([z.string(), caseTemplate]);

const patternSchema = z
  .object({
    name: z.string().min(1, { message: 'must be a non-empty string' }),
    template: templateSchema,
    causal: templateSchema.optional(),
    notes: z.string().optional(),
  })
  .strict();

/** The shape of a pattern file; what depends on the task (its fields, labels, answer type) is checked after. */
export const patternFileSchema = z
  .object({
    task: z.string(),
    answerType: z.string(),
    fields: stringList,
    verbalizer: z.record(z.string(), z.unknown()).optional(),
    patterns: z.unknown().transform((v, ctx) => {
      if (!Array.isArray(v) || v.length === 0) {
        ctx.addIssue({ code: 'custom', message: v === undefined ? 'is missing' : 'must be a non-empty array' });
        return z.NEVER;
      }
      return v as unknown[];
    }).pipe(z.array(patternSchema)),
    notes: z.string().optional(),
  })
  .strict();

/** Validates a pattern file's JSON; every error is one line naming the file and the field. */
export function parsePatternFile(json: unknown, file: string): PatternFile {
  const fail = (field: string, what: string): never => {
    throw new UserError(`${file}: ${field}: ${what}`);
  };
  if (typeof json !== 'object' || json === null || Array.isArray(json)) return fail('(top level)', 'must be a JSON object');
  const top = parseFile(patternFileSchema, json, file);

  let info;
  try {
    info = taskInfo(top.task);
  } catch (e) {
    return fail('task', (e as Error).message);
  }
  if (top.answerType !== info.answerType) fail('answerType', `is ${JSON.stringify(top.answerType)}, ${info.name} answers are "${info.answerType}"`);

  const fields = top.fields;
  for (const f of fields) if (!info.fields.includes(f)) fail('fields', `"${f}" is not a field of ${info.name} examples (${info.fields.join(', ')})`);

  let verbalizer: Record<string, string[]> | undefined;
  if (info.answerType === 'label') {
    if (top.verbalizer === undefined) fail('verbalizer', `is missing (${info.name} is a label task)`);
    const v = top.verbalizer!;
    for (const k of Object.keys(v)) if (!info.labels.includes(k)) fail(`verbalizer.${k}`, `unknown key (allowed: ${info.labels.join(', ')})`);
    for (const l of info.labels) if (v[l] === undefined) fail(`verbalizer.${l}`, 'is missing');
    verbalizer = Object.fromEntries(
      info.labels.map((l) => {
        const words = stringList.safeParse(v[l]);
        return [l, words.success ? words.data : fail(`verbalizer.${l}`, 'must be a non-empty array of non-empty strings')];
      }),
    );
  } else if (top.verbalizer !== undefined) {
    fail('verbalizer', `not used by "${info.answerType}" tasks (the answers are the example's choices)`);
  }

  const patterns = top.patterns.map((p, i) => checkPattern(p, `patterns[${i}]`, fields, fail));
  const names = patterns.map((p) => p.name);
  const dup = names.find((n, i) => names.indexOf(n) !== i);
  if (dup) fail('patterns', `name "${dup}" is used twice`);
  if (!patterns.some((p) => pseudoTokenCount(p.template) === 0)) fail('patterns', 'needs a manual pattern (one without [P])');
  if (!patterns.some((p) => pseudoTokenCount(p.template) > 0)) fail('patterns', 'needs a P-tuning pattern (one with [P])');

  return {
    task: info.name, answerType: info.answerType, fields, ...(verbalizer ? { verbalizer } : {}), patterns,
    ...(top.notes !== undefined ? { notes: top.notes } : {}), file,
  };
}

type Fail = (field: string, what: string) => never;

function checkPattern(p: z.output<typeof patternSchema>, at: string, fields: string[], fail: Fail): Pattern {
  const template = checkTemplate(p.template, `${at}.template`, fields, fail);
  const count = pseudoTokenCount(template);
  const notes = p.notes ? { notes: p.notes } : {};
  if (p.causal === undefined) {
    if (!variants(template).every(endsWithMask)) fail(`${at}.causal`, 'is missing, and the template does not end with [MASK] (causal LMs need it last)');
    return { name: p.name, template, ...notes };
  }
  const causal = checkTemplate(p.causal, `${at}.causal`, fields, fail);
  if (!variants(causal).every(endsWithMask)) fail(`${at}.causal`, 'must end with [MASK]');
  if (pseudoTokenCount(causal) !== count) fail(`${at}.causal`, `has ${pseudoTokenCount(causal)} pseudo tokens, the template has ${count}`);
  return { name: p.name, template, causal, ...notes };
}

function checkTemplate(t: Template, at: string, fields: string[], fail: Fail): Template {
  if (typeof t === 'string') {
    checkTemplateText(t, at, fields, fail);
    return t;
  }
  if (!fields.includes(t.by)) fail(`${at}.by`, `must name one of the fields (${fields.join(', ')})`);
  const entries = Object.entries(t.cases);
  if (entries.length === 0) fail(`${at}.cases`, 'is empty');
  for (const [value, text] of entries) checkTemplateText(text, `${at}.cases.${value}`, fields, fail);
  const counts = new Set(entries.map(([, text]) => pseudoTokenCount(text)));
  if (counts.size > 1) fail(`${at}.cases`, 'all cases must have the same number of pseudo tokens');
  return { by: t.by, cases: t.cases };
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
