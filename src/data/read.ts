/** Input data readers: records from .jsonl, .json, .csv and .tsv files (the formats: parse.ts). */
import fs from 'node:fs';
import path from 'node:path';
import { parseRecords, type DataRecord } from './parse.js';
import { UserError } from '../util/errors.js';

export { csvRows, jsonErrorOffset, parseCsv, parseJsonArray, parseJsonl, parseRecords, parseTsv, type DataRecord } from './parse.js';

export function readRecords(file: string): DataRecord[] {
  const ext = path.extname(file).toLowerCase();
  if (!['.jsonl', '.json', '.csv', '.tsv'].includes(ext)) throw new UserError(`${file}: unknown data format "${ext}" (expected .jsonl, .json, .csv or .tsv)`);
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new UserError(`${file}: ${(e as Error).message}`);
  }
  return parseRecords(text, ext, file);
}
