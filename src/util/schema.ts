/**
 * Schemas (zod) for what users hand to ptune — command-line options and the JSON files of runs, adapters and
 * patterns — with one-line errors that name the option (`--batch-size: expected an integer ≥ 1, got "0"`) or
 * the file and the field (`runs/a/config.json: loop.batchSize: expected an integer ≥ 1, got 0`).
 */
import fs from 'node:fs';
import { z } from 'zod';
import { UserError } from './errors.js';
import { jsonErrorOffset } from '../data/parse.js';

export { z };

export interface NumberRule {
  integer?: boolean;
  /** inclusive bounds */
  min?: number;
  max?: number;
  /** exclusive bounds */
  gt?: number;
  lt?: number;
}

/** "an integer ≥ 1", "a number > 0", "a number from 0 to 1", "a number ≥ 0 and < 1" */
export function describeNumber(r: NumberRule): string {
  const what = r.integer ? 'an integer' : 'a number';
  const lo = r.min !== undefined ? { op: '≥', v: r.min } : r.gt !== undefined ? { op: '>', v: r.gt } : null;
  const hi = r.max !== undefined ? { op: '≤', v: r.max } : r.lt !== undefined ? { op: '<', v: r.lt } : null;
  if (lo && hi) return lo.op === '≥' && hi.op === '≤' ? `${what} from ${lo.v} to ${hi.v}` : `${what} ${lo.op} ${lo.v} and ${hi.op} ${hi.v}`;
  if (lo) return `${what} ${lo.op} ${lo.v}`;
  if (hi) return `${what} ${hi.op} ${hi.v}`;
  return what;
}

export function numberOk(n: number, r: NumberRule): boolean {
  if (!Number.isFinite(n)) return false;
  if (r.integer && !Number.isSafeInteger(n)) return false;
  if (r.min !== undefined && n < r.min) return false;
  if (r.max !== undefined && n > r.max) return false;
  if (r.gt !== undefined && n <= r.gt) return false;
  if (r.lt !== undefined && n >= r.lt) return false;
  return true;
}

/** A command-line option's text as a number: the whole text must be one (no "12abc", no empty string). */
function optionNumber(v: unknown): number {
  if (typeof v === 'number') return v;
  if (typeof v !== 'string' || v.trim() === '') return NaN;
  return Number(v.trim());
}

const shown = (v: unknown) => (v === undefined ? 'nothing' : JSON.stringify(v) ?? String(v));

/** A number in a file: only a JSON number passes. */
export function fileNumber(r: NumberRule) {
  return z.unknown().transform((v, ctx) => {
    if (typeof v !== 'number' || !numberOk(v, r)) {
      ctx.addIssue({ code: 'custom', message: `expected ${describeNumber(r)}, got ${shown(v)}` });
      return z.NEVER;
    }
    return v;
  });
}

/** Schemas of command-line option values (text from the command line, or a default). */
export const opt = {
  number(r: NumberRule) {
    return z.unknown().transform((v, ctx) => {
      const n = optionNumber(v);
      if (!numberOk(n, r)) {
        ctx.addIssue({ code: 'custom', message: `expected ${describeNumber(r)}, got ${shown(v)}` });
        return z.NEVER;
      }
      return n;
    });
  },
  int(min: number, max?: number) {
    return opt.number({ integer: true, min, max });
  },
  /** seeds: 0 .. 2^32 - 1 */
  seed() {
    return opt.int(0, 4294967295);
  },
  choice<const T extends readonly [string, ...string[]]>(values: T) {
    return z.unknown().transform((v, ctx): T[number] => {
      if (typeof v !== 'string' || !values.includes(v)) {
        ctx.addIssue({ code: 'custom', message: `expected one of ${values.join(', ')}, got ${shown(v)}` });
        return z.NEVER;
      }
      return v as T[number];
    });
  },
  text() {
    return z.unknown().transform((v, ctx) => {
      if (typeof v !== 'string' || v.length === 0) {
        ctx.addIssue({ code: 'custom', message: `expected a non-empty text, got ${shown(v)}` });
        return z.NEVER;
      }
      return v;
    });
  },
  flag() {
    return z.boolean().optional();
  },
};

const flagOf = (key: string) => `--${key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`;

/** `a.b[2].c` */
export function fieldPath(p: readonly PropertyKey[]): string {
  return p.map((k, i) => (typeof k === 'number' ? `[${k}]` : i === 0 ? String(k) : `.${String(k)}`)).join('');
}

function valueAt(data: unknown, p: readonly PropertyKey[]): unknown {
  let v = data;
  for (const k of p) {
    if (v === null || typeof v !== 'object') return undefined;
    v = (v as Record<PropertyKey, unknown>)[k];
  }
  return v;
}

function kindOf(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  if (typeof v === 'object') return 'an object';
  return `${typeof v} ${JSON.stringify(v)}`;
}

/** One issue as "where: what". */
function issueText(issue: z.core.$ZodIssue, data: unknown): { where: string; what: string } {
  const at = issue.path;
  const value = valueAt(data, at);
  switch (issue.code) {
    case 'unrecognized_keys':
      return { where: fieldPath([...at, issue.keys[0]!]), what: `unknown key${issue.keys.length > 1 ? ` (and ${issue.keys.slice(1).map((k) => `"${k}"`).join(', ')})` : ''}` };
    case 'invalid_type':
      return { where: fieldPath(at), what: value === undefined ? 'is missing' : `expected ${issue.expected === 'array' ? 'an array' : issue.expected === 'object' ? 'an object' : `a ${issue.expected}`}, got ${kindOf(value)}` };
    case 'invalid_value':
      return { where: fieldPath(at), what: `expected ${issue.values.length === 1 ? JSON.stringify(issue.values[0]) : `one of ${issue.values.map((x) => JSON.stringify(x)).join(', ')}`}, got ${value === undefined ? 'nothing' : JSON.stringify(value)}` };
    case 'invalid_union': {
      // a discriminated union whose tag is wrong or missing
      const tag = (issue as { discriminator?: string }).discriminator;
      if (tag) {
        const v = valueAt(data, [...at, tag]);
        return { where: fieldPath([...at, tag]), what: v === undefined ? 'is missing' : `unknown value ${JSON.stringify(v)}` };
      }
      // the branch that got furthest (the one matching the value's type) says what is wrong
      const firsts = issue.errors.map((e) => e[0]).filter((e): e is z.core.$ZodIssue => e !== undefined);
      const depth = (e: z.core.$ZodIssue) => e.path.length * 2 + (e.code === 'invalid_type' ? 0 : 1);
      const first = firsts.sort((a, b) => depth(b) - depth(a))[0];
      if (first && depth(first) > 0) return issueText({ ...first, path: [...at, ...first.path] } as z.core.$ZodIssue, data);
      return { where: fieldPath(at), what: 'matches none of the accepted forms' };
    }
    case 'too_small':
    case 'too_big':
      return { where: fieldPath(at), what: `${issue.message.replace(/^Too (small|big): /, '')}, got ${JSON.stringify(value)}` };
    default:
      return { where: fieldPath(at), what: issue.message };
  }
}

/**
 * Parses command-line options; the first problem is a UserError naming the option (`flags` maps keys to their
 * spelling when it is not the kebab-case of the key).
 */
export function parseOptions<S extends z.ZodType>(schema: S, raw: Record<string, unknown>, flags: Record<string, string> = {}): z.output<S> {
  const r = schema.safeParse(raw);
  if (r.success) return r.data;
  const issue = r.error.issues[0]!;
  const key = issue.path[0];
  if (typeof key !== 'string') throw new UserError(issueText(issue, raw).what);
  const { what } = issueText({ ...issue, path: issue.path.slice(1) } as z.core.$ZodIssue, raw[key]);
  throw new UserError(`${flags[key] ?? flagOf(key)}: ${what}`);
}

/** Validates parsed JSON of `file`; the first problem is a UserError naming the file and the field. */
export function parseFile<S extends z.ZodType>(schema: S, json: unknown, file: string): z.output<S> {
  const r = schema.safeParse(json);
  if (r.success) return r.data;
  const { where, what } = issueText(r.error.issues[0]!, json);
  throw new UserError(`${file}: ${where ? `${where}: ` : ''}${what}`);
}

/** 1-based line and column of `offset` in `text` */
function lineColumn(text: string, offset: number): string {
  const before = text.slice(0, Math.max(offset, 0)).split('\n');
  return `line ${before.length} column ${before[before.length - 1]!.length + 1}`;
}

/** Reads a JSON file: a missing file or invalid JSON is a UserError naming the file (and the line and column). */
export function readJson(file: string, what = 'file'): unknown {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new UserError(code === 'ENOENT' ? `${file}: no such ${what}` : `${file}: ${(e as Error).message}`);
  }
  return parseJsonText(text, file);
}

/** JSON text of `file`: invalid JSON is a UserError naming the file, the line and the column. */
export function parseJsonText(text: string, file: string): unknown {
  try {
    return JSON.parse(text.replace(/^\uFEFF/, ''));
  } catch (e) {
    const message = (e as Error).message.split('\n')[0]!;
    const at = jsonErrorOffset(text);
    throw new UserError(`${file}${at >= 0 ? ` ${lineColumn(text, at)}` : ''}: not valid JSON (${message})`);
  }
}

/** `readJson` then `parseFile`. */
export function readJsonFile<S extends z.ZodType>(schema: S, file: string, what?: string): z.output<S> {
  return parseFile(schema, readJson(file, what), file);
}
