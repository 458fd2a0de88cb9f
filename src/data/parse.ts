/**
 * Input data parsers: records from the text of .jsonl, .json, .csv and .tsv files (read.ts reads the files).
 *
 * - .jsonl: one JSON object per line, blank lines ignored
 * - .json:  an array of objects
 * - .csv:   RFC 4180 with a header row: fields separated by `,`, records by LF or CRLF; a field in double
 *           quotes may hold commas, quotes (doubled: `""`) and line breaks
 * - .tsv:   a header row, fields split on tabs, no quoting (SST-2 / GLUE style)
 * CSV/TSV values stay strings. Blank lines are ignored. Errors name the file and the 1-based line.
 */
export type DataRecord = Record<string, unknown>;

/** Records from the text of a data file; `format` is its extension (`.jsonl`, `.json`, `.csv`, `.tsv`). */
export function parseRecords(text: string, format: string, file = `data${format}`): DataRecord[] {
  const parse = PARSERS[format.toLowerCase()];
  if (!parse) throw new Error(`${file}: unknown data format "${format}" (expected .jsonl, .json, .csv or .tsv)`);
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
      throw new Error(`${file} line ${i + 1}: ${oneLine((e as Error).message)}`);
    }
    if (!isObject(value)) throw new Error(`${file} line ${i + 1}: expected a JSON object, got ${describe(value)}`);
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
    throw new Error(`${file}${where}: ${oneLine((e as Error).message)}`);
  }
  if (!Array.isArray(value)) throw new Error(`${file}: expected a JSON array of objects, got ${describe(value)}`);
  value.forEach((item, i) => {
    if (!isObject(item)) throw new Error(`${file} item ${i + 1}: expected a JSON object, got ${describe(item)}`);
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

/** RFC 4180 rows with the 1-based line each starts on; lines that are entirely empty are skipped. */
export function csvRows(text: string, file = 'data.csv'): Row[] {
  const rows: Row[] = [];
  let line = 1;
  let i = 0;
  const n = text.length;
  while (i < n) {
    const startLine = line;
    const fields: string[] = [];
    if (text[i] === '\n' || (text[i] === '\r' && text[i + 1] === '\n')) {
      i += text[i] === '\r' ? 2 : 1;
      line++;
      continue;
    }
    for (;;) {
      let field = '';
      if (text[i] === '"') {
        const quoteLine = line;
        i++;
        for (;;) {
          if (i >= n) throw new Error(`${file} line ${quoteLine}: unterminated quoted field`);
          const ch = text[i];
          if (ch === '"') {
            if (text[i + 1] === '"') {
              field += '"';
              i += 2;
              continue;
            }
            i++;
            break;
          }
          if (ch === '\n') line++;
          field += ch;
          i++;
        }
        if (i < n && text[i] !== ',' && text[i] !== '\n' && !(text[i] === '\r' && text[i + 1] === '\n')) {
          throw new Error(`${file} line ${line}: unexpected ${JSON.stringify(text[i])} after a closing quote`);
        }
      } else {
        while (i < n && text[i] !== ',' && text[i] !== '\n' && !(text[i] === '\r' && text[i + 1] === '\n')) {
          if (text[i] === '"') throw new Error(`${file} line ${line}: stray '"' inside an unquoted field`);
          field += text[i];
          i++;
        }
      }
      fields.push(field);
      if (i < n && text[i] === ',') {
        i++;
        continue;
      }
      break;
    }
    if (i < n) {
      i += text[i] === '\r' ? 2 : 1;
      line++;
    }
    rows.push({ fields, line: startLine });
  }
  return rows;
}

export function parseCsv(text: string, file = 'data.csv'): DataRecord[] {
  return toRecords(csvRows(text, file), file);
}

export function parseTsv(text: string, file = 'data.tsv'): DataRecord[] {
  const rows: Row[] = [];
  text.split(/\r?\n/).forEach((line, i) => {
    if (line.trim() || line.includes('\t')) rows.push({ fields: line.split('\t'), line: i + 1 });
  });
  return toRecords(rows, file);
}

function toRecords(rows: Row[], file: string): DataRecord[] {
  if (rows.length === 0) throw new Error(`${file}: no header row`);
  const [header, ...body] = rows;
  const names = header.fields.map((f) => f.trim());
  names.forEach((name, i) => {
    if (!name) throw new Error(`${file} line ${header.line}: header column ${i + 1} has no name`);
    if (names.indexOf(name) !== i) throw new Error(`${file} line ${header.line}: duplicate header column "${name}"`);
  });
  return body.map(({ fields, line }) => {
    if (fields.length !== names.length) {
      throw new Error(`${file} line ${line}: ${fields.length} columns, the header has ${names.length}`);
    }
    const record: DataRecord = {};
    names.forEach((name, i) => (record[name] = fields[i]));
    return record;
  });
}
