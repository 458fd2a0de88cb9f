import path from 'node:path';
import { readText } from './records.js';
import { fewShotSplit, type FewShotOptions } from './sampling.js';
import type { Sst2Split, TaskExample } from './tasks.js';

const HEADER = 'sentence\tlabel';
const LABELS: Record<string, string> = { '0': 'negative', '1': 'positive' };

/** Reads one SST-2 tsv file (header `sentence\tlabel`, labels 0/1) into examples labeled negative/positive. */
export function readSst2File(file: string, idPrefix: string): TaskExample[] {
  const lines = readText(file).split('\n');
  if (lines[0].replace(/\r$/, '') !== HEADER) throw new Error(`${file}:1: expected the header "sentence<TAB>label"`);
  const out: TaskExample[] = [];
  for (let i = 1; i < lines.length; i++) {
    const line = lines[i].replace(/\r$/, '');
    if (line.trim() === '') continue;
    const cols = line.split('\t');
    if (cols.length !== 2) throw new Error(`${file}:${i + 1}: expected 2 tab-separated columns, got ${cols.length}`);
    const label = LABELS[cols[1].trim()];
    if (!label) throw new Error(`${file}:${i + 1}: label is "${cols[1]}", expected 0 or 1`);
    const sentence = cols[0].trim();
    if (sentence === '') throw new Error(`${file}:${i + 1}: empty sentence`);
    out.push({ id: `${idPrefix}-${i + 1}`, fields: { sentence }, label });
  }
  return out;
}

export interface Sst2Options {
  /** few-shot setting: train and dev are two disjoint samples of train.tsv; test stays test.tsv (GLUE dev) */
  fewShot?: FewShotOptions;
}

/**
 * SST-2 from `<dataDir>/{train,dev,test}.tsv` (dataDir e.g. ../shared/data/sst2). Without `fewShot` each split
 * is its file. With it, train and dev are drawn from train.tsv by fewShotSplit (stratified by default: 16
 * positive + 16 negative for n = 32), reproducibly from the seed. Example ids are `<file>-<line number>`.
 */
export function loadSst2(dataDir: string, split: Sst2Split, opts: Sst2Options = {}): TaskExample[] {
  if (split !== 'train' && split !== 'dev' && split !== 'test') throw new Error(`unknown SST-2 split "${split}" (train, dev, test)`);
  if (opts.fewShot && split !== 'test') {
    const pool = readSst2File(path.join(dataDir, 'train.tsv'), 'train');
    return fewShotSplit(pool, opts.fewShot)[split];
  }
  return readSst2File(path.join(dataDir, `${split}.tsv`), split);
}
