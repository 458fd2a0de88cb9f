/**
 * Input data parsers: records from the text of .jsonl, .json, .csv and .tsv files (read.ts reads the files).
 *
 * - .jsonl: one JSON object per line, blank lines ignored
 * - .json:  an array of objects
 * - .csv:   RFC 4180 with a header row: fields separated by `,`, records by LF or CRLF; a field in double
 *           quotes may hold commas, quotes (doubled: `""`) and line breaks (parsed by csv-parse)
 * - .tsv:   a header row, fields split on tabs, no quoting (SST-2 / GLUE style; csv-parse with quotes off)
 * CSV/TSV values stay strings. Blank lines are ignored. Errors are UserErrors naming the file and the 1-based line.
 *
 * Nothing here touches files: the browser entry parses with it too. csv-parse comes through the package's
 * `#csv-parse/sync` import, which bundlers for browsers resolve to csv-parse's own browser build (its Node build
 * calls Node's Buffer when it loads).
 */
import { CsvError, parse } from '#csv-parse/sync';
import { UserError } from '../util/errors.js';

export type DataRecord = Record<string, unknown>;

/** Records from the text of a data file; `format` is its extension (`.jsonl`, `.json`, `.csv`, `.tsv`). */
export function parseRecords(text: string, format: string, file = `data${format}`): DataRecord[] {
  const parse = PARSERS[format.toLowerCase()];
  if (!parse) throw new UserError(`${file}: unknown data format "${format}" (expected .jsonl, .json, .csv or .tsv)`);
  return parse(text.replace(/^\uFEFF/, ''), file);
}

const PARSERS: Record<string, (text: string, file: string) => DataRecord[]> = {
  '.jsonl': parseJsonl,
  '.json': parseJsonArray,
  '.csv': parseCsv,
  '.tsv': parseTsv,
};

const isObject = (v: unknown): v is DataRecord => typeof v === 'object' && v !== null && !Array.isArray(v);

export function parseJsonl(text: string, file = 'data.jsonl'): DataRecord[] {
  const records: DataRecord[] = [];
  text.split(/\r?\n/).forEach((line, i) => {
    if (!line.trim()) return;
    let value: unknown;
    try {
      value = JSON.parse(line);
    } catch (e) {
      throw new UserError(`${file} line ${i + 1}: ${oneLine((e as Error).message)}`);
    }
    if (!isObject(value)) throw new UserError(`${file} line ${i + 1}: expected a JSON object, got ${describe(value)}`);
    records.push(value);
  });
  return records;
}

export function parseJsonArray(text: string, file = 'data.json'): DataRecord[] {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    const at = jsonErrorOffset(text);
    const before = text.slice(0, Math.max(at, 0)).split('\n');
    const where = at >= 0 ? ` line ${before.length} column ${before[before.length - 1].length + 1}` : '';
    throw new UserError(`${file}${where}: ${oneLine((e as Error).message)}`);
  }
  if (!Array.isArray(value)) throw new UserError(`${file}: expected a JSON array of objects, got ${describe(value)}`);
  value.forEach((item, i) => {
    if (!isObject(item)) throw new UserError(`${file} item ${i + 1}: expected a JSON object, got ${describe(item)}`);
  });
  return value as DataRecord[];
}

const oneLine = (message: string) => message.replace(/\r?\n/g, '\\n');

/**
 * Offset of the first syntax error in JSON text, or -1: V8's JSON.parse does not always report a position
 * (Node 20: "Unexpected token '}', ...") and the line number is what the reader of the message needs.
 */
export function jsonErrorOffset(text: string): number {
  let i = 0;
  const n = text.length;
  const stop = Symbol('stop');
  const fail = (): never => {
    throw stop;
  };
  const ws = () => {
    while (i < n && ' \t\n\r'.includes(text[i])) i++;
  };
  const expect = (ch: string) => (text[i] === ch ? i++ : fail());
  const string = () => {
    expect('"');
    for (;;) {
      if (i >= n || text.charCodeAt(i) < 0x20) fail();
      const ch = text[i++];
      if (ch === '"') return;
      if (ch === '\\') {
        if (text[i] === 'u') {
          if (!/^[0-9a-fA-F]{4}$/.test(text.slice(i + 1, i + 5))) fail();
          i += 5;
        } else if ('"\\/bfnrt'.includes(text[i] ?? 'x')) i++;
        else fail();
      }
    }
  };
  const number = /-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?/y;
  const sequence = (close: string, item: () => void) => {
    i++;
    ws();
    if (text[i] === close) return void i++;
    for (;;) {
      item();
      ws();
      if (text[i] === ',') {
        i++;
        ws();
      } else return void expect(close);
    }
  };
  const value = (): void => {
    ws();
    const ch = text[i];
    if (ch === '{') {
      return sequence('}', () => {
        string();
        ws();
        expect(':');
        value();
      });
    }
    if (ch === '[') return sequence(']', value);
    if (ch === '"') return string();
    for (const word of ['true', 'false', 'null']) if (text.startsWith(word, i)) return void (i += word.length);
    number.lastIndex = i;
    if (number.test(text)) return void (i = number.lastIndex);
    fail();
  };
  try {
    value();
    ws();
    return i < n ? i : -1;
  } catch (e) {
    if (e === stop) return i;
    throw e;
  }
}

function describe(v: unknown): string {
  return v === null ? 'null' : Array.isArray(v) ? 'an array' : typeof v;
}

interface Row {
  fields: string[];
  line: number;
}

/** The 1-based line of `offset` in `text`. */
function lineAt(text: string, offset: number): number {
  let line = 1;
  for (let i = 0; i < offset && i < text.length; i++) if (text.charCodeAt(i) === 10) line++;
  return line;
}

/** Where the unterminated quoted field of `raw` (the record text csv-parse was reading) opens. */
function openQuoteOffset(raw: string): number {
  let open = -1;
  let quoted = false;
  for (let i = 0; i < raw.length; i++) {
    if (raw[i] !== '"') continue;
    quoted = !quoted;
    if (quoted) open = i;
  }
  return Math.max(open, 0);
}

/** csv-parse's error as today's one-line message naming the file and the line. */
function csvError(e: unknown, text: string, file: string): UserError {
  if (!(e instanceof CsvError)) return new UserError(`${file}: ${oneLine((e as Error).message)}`);
  const err = e as CsvError & { lines?: number; raw?: string };
  switch (err.code) {
    case 'CSV_QUOTE_NOT_CLOSED': {
      // the record being read runs to the end of the text: its quote opened at the line of that offset
      const raw = err.raw ?? '';
      const start = text.length - raw.length;
      return new UserError(`${file} line ${lineAt(text, start + openQuoteOffset(raw))}: unterminated quoted field`);
    }
    case 'CSV_INVALID_CLOSING_QUOTE': {
      const got = /got "(.*)" at line/.exec(err.message)?.[1] ?? '?';
      return new UserError(`${file} line ${err.lines}: unexpected ${JSON.stringify(got)} after a closing quote`);
    }
    case 'INVALID_OPENING_QUOTE':
      return new UserError(`${file} line ${err.lines}: stray '"' inside an unquoted field`);
    default:
      return new UserError(`${file} line ${err.lines ?? '?'}: ${oneLine(err.message)}`);
  }
}

/**
 * Rows of delimited text (csv-parse) with the 1-based line each starts on; lines that are entirely empty are
 * skipped. `quote: false` reads quotes as ordinary characters (TSV).
 */
function delimitedRows(text: string, file: string, delimiter: string, quote: boolean): Row[] {
  let parsed: { record: string[]; info: { lines: number }; raw: string }[];
  try {
    parsed = parse(text, {
      delimiter,
      quote: quote ? '"' : false,
      record_delimiter: ['\r\n', '\n'],
      relax_column_count: true,
      skip_empty_lines: true,
      info: true,
      raw: true,
    }) as unknown as typeof parsed;
  } catch (e) {
    throw csvError(e, text, file);
  }
  return parsed.map(({ record, info, raw }) => {
    // the record's raw text holds the empty lines skipped before it and its own line breaks: count back from its end
    const body = raw.replace(/^[\r\n]+/, '').replace(/\r?\n$|\r$/, '');
    let breaks = 0;
    for (let i = 0; i < body.length; i++) if (body.charCodeAt(i) === 10) breaks++;
    return { fields: record, line: info.lines - breaks };
  });
}

/** RFC 4180 rows with the 1-based line each starts on; lines that are entirely empty are skipped. */
export function csvRows(text: string, file = 'data.csv'): Row[] {
  return delimitedRows(text, file, ',', true);
}

export function parseCsv(text: string, file = 'data.csv'): DataRecord[] {
  return toRecords(csvRows(text, file), file);
}

export function parseTsv(text: string, file = 'data.tsv'): DataRecord[] {
  // a line of blanks alone is empty too (a line of tabs is a row of empty fields)
  const rows = delimitedRows(text, file, '\t', false).filter((r) => r.fields.length > 1 || r.fields[0]!.trim() !== '');
  return toRecords(rows, file);
}

function toRecords(rows: Row[], file: string): DataRecord[] {
  if (rows.length === 0) throw new UserError(`${file}: no header row`);
  const [header, ...body] = rows;
  const names = header.fields.map((f) => f.trim());
  names.forEach((name, i) => {
    if (!name) throw new UserError(`${file} line ${header.line}: header column ${i + 1} has no name`);
    if (names.indexOf(name) !== i) throw new UserError(`${file} line ${header.line}: duplicate header column "${name}"`);
  });
  return body.map(({ fields, line }) => {
    if (fields.length !== names.length) {
      throw new UserError(`${file} line ${line}: ${fields.length} columns, the header has ${names.length}`);
    }
    const record: DataRecord = {};
    names.forEach((name, i) => (record[name] = fields[i]));
    return record;
  });
}
