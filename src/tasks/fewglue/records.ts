import { readFileSync } from 'node:fs';

/** A JSON object read from one line of a file, with typed getters whose errors name the file, line and field. */
export class Row {
  constructor(
    readonly value: Record<string, unknown>,
    readonly file: string,
    readonly line: number,
    private readonly prefix = '',
  ) {}

  get where(): string {
    return `${this.file}:${this.line}`;
  }

  fail(key: string, what: string): never {
    throw new Error(`${this.where}: field "${this.prefix}${key}" ${what}`);
  }

  has(key: string): boolean {
    return this.value[key] !== undefined && this.value[key] !== null;
  }

  str(key: string): string {
    const v = this.value[key];
    if (typeof v !== 'string') this.fail(key, v === undefined ? 'is missing' : 'must be a string');
    return v;
  }

  int(key: string): number {
    const v = this.value[key];
    if (typeof v !== 'number' || !Number.isInteger(v)) this.fail(key, v === undefined ? 'is missing' : 'must be an integer');
    return v;
  }

  bool(key: string): boolean {
    const v = this.value[key];
    if (typeof v !== 'boolean') this.fail(key, v === undefined ? 'is missing' : 'must be true or false');
    return v;
  }

  /** `idx` is an integer in SuperGLUE files; tolerate a string too */
  id(key = 'idx'): string {
    const v = this.value[key];
    if (typeof v === 'string' && v !== '') return v;
    return String(this.int(key));
  }

  obj(key: string): Row {
    const v = this.value[key];
    if (typeof v !== 'object' || v === null || Array.isArray(v)) this.fail(key, v === undefined ? 'is missing' : 'must be an object');
    return new Row(v as Record<string, unknown>, this.file, this.line, `${this.prefix}${key}.`);
  }

  rows(key: string): Row[] {
    const v = this.value[key];
    if (!Array.isArray(v)) this.fail(key, v === undefined ? 'is missing' : 'must be an array');
    return v.map((item, i) => {
      if (typeof item !== 'object' || item === null || Array.isArray(item)) this.fail(`${key}[${i}]`, 'must be an object');
      return new Row(item as Record<string, unknown>, this.file, this.line, `${this.prefix}${key}[${i}].`);
    });
  }
}

/** One JSON object per non-empty line. */
export function readJsonl(file: string): Row[] {
  const lines = readText(file).split('\n');
  const rows: Row[] = [];
  lines.forEach((text, i) => {
    if (text.trim() === '') return;
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch (e) {
      throw new Error(`${file}:${i + 1}: invalid JSON (${(e as Error).message})`);
    }
    if (typeof value !== 'object' || value === null || Array.isArray(value)) {
      throw new Error(`${file}:${i + 1}: expected a JSON object`);
    }
    rows.push(new Row(value as Record<string, unknown>, file, i + 1));
  });
  return rows;
}

export function readText(file: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch (e) {
    throw new Error(`cannot read ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
}
