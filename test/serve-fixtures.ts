import fs from 'node:fs';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { readRecords } from '../src/data/read.js';
import type { LanguageModel } from '../src/models/model.js';
import { DEFAULT_LOOP, DEFAULT_OPTIM, PTuningSession, type RunConfig } from '../src/train/session.js';
import type { HeadSpec } from '../src/prompt/heads.js';
import { modelDir, shared } from './fixtures.js';

const lama = (rel: string, split: string) => path.join(shared, 'data/lama/fact-retrieval/original', rel, `${split}.jsonl`);
const sst2 = (split: string) => path.join(shared, 'data/sst2', `${split}.tsv`);

export const P1412 = (split: 'train' | 'dev' | 'test', n: number): Record<string, unknown>[] => readRecords(lama('P1412', split)).slice(0, n);
export const SST2 = (split: 'train' | 'dev' | 'test', n: number): Record<string, unknown>[] => readRecords(sst2(split)).slice(0, n);

export const SST2_HEAD: HeadSpec = { kind: 'label', labelField: 'label', labelWords: { '0': 'terrible', '1': 'great' } };
export const SST2_TEMPLATE = '{sentence} [P*3] It was [MASK] .';

/** A tiny P-tuning run (a few dozen steps: the point is equality of answers, not accuracy), written to `out`. */
export async function tinyRun(
  lm: LanguageModel,
  model: string,
  out: string,
  opts: { template: string; head: HeadSpec; train: Record<string, unknown>[]; dev: Record<string, unknown>[]; maxLength?: number; seed?: number },
): Promise<string> {
  const config: RunConfig = {
    version: 1,
    model: modelDir(model),
    template: opts.template,
    head: opts.head,
    encoder: { type: 'lstm', seed: opts.seed ?? 1 },
    maxLength: opts.maxLength ?? 64,
    skipTooLong: false,
    loop: { ...DEFAULT_LOOP, epochs: 3, batchSize: 8, maxSteps: 24, saveEvery: 1000, logEvery: 1000, seed: opts.seed ?? 1 },
    optim: { ...DEFAULT_OPTIM, lr: 1e-2 },
  };
  const session = await PTuningSession.create(config, lm);
  await session.train({ runDir: out, train: opts.train, dev: opts.dev });
  session.dispose({ keepLm: true });
  return out;
}

export interface TinyRuns {
  /** bert-mini-lama, LAMA P1412 (open vocabulary answer) */
  p1412: string;
  /** bert-mini-lama, SST-2 (label words) */
  sst2: string;
  /** gpt2-mini-lama, LAMA P1412 (next token) */
  gpt: string;
}

/** The three runs the serving tests compare against `ptune predict`. */
export async function tinyRuns(root: string, bert: LanguageModel, gpt2: LanguageModel): Promise<TinyRuns> {
  return {
    p1412: await tinyRun(bert, 'bert-mini-lama', path.join(root, 'p1412'), { template: '3,3,3', head: { kind: 'answer', answerField: 'obj_label' }, train: P1412('train', 96), dev: P1412('dev', 16) }),
    sst2: await tinyRun(bert, 'bert-mini-lama', path.join(root, 'sst2'), { template: SST2_TEMPLATE, head: SST2_HEAD, train: SST2('train', 96), dev: SST2('dev', 16) }),
    gpt: await tinyRun(gpt2, 'gpt2-mini-lama', path.join(root, 'gpt'), { template: '3,3,0', head: { kind: 'answer', answerField: 'obj_label' }, train: P1412('train', 96), dev: P1412('dev', 16) }),
  };
}

export interface CliPrediction {
  index: number;
  prediction: string;
  scores: { label: string; score: number }[];
}

/** What `ptune predict --run RUN --data FILE --top K` prints (the CLI in a child process). */
export function ptunePredict(run: string, records: Record<string, unknown>[], top: number): CliPrediction[] {
  const file = path.join(run, `predict-input-${records.length}.jsonl`);
  fs.writeFileSync(file, records.map((r) => JSON.stringify(r)).join('\n') + '\n');
  const r = spawnSync(process.execPath, ['bin/ptune.js', 'predict', '--run', run, '--data', file, '--top', String(top)], { encoding: 'utf8', timeout: 120_000 });
  if (r.status !== 0) throw new Error(`ptune predict failed: ${r.stderr}`);
  return r.stdout.trim().split('\n').map((l) => JSON.parse(l) as CliPrediction);
}
