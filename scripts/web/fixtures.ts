/**
 * The runs the demo page and its tests use: a small SST-2 classifier exported with `ptune export --format onnx`,
 * and the LAMA P1303 settings the page and Node both P-tune with.
 */
import fs from 'node:fs';
import path from 'node:path';
import { readRecords } from '../../src/data/read.js';
import { exportOnnx } from '../../src/export/onnx.js';
import type { LanguageModel } from '../../src/models/model.js';
import { DEFAULT_LOOP, DEFAULT_OPTIM, PTuningSession, type RunConfig } from '../../src/train/session.js';
import type { TuneSettings } from '../../src/web/tasks.js';

export const shared = path.resolve(process.cwd(), '../shared');
export const bertDir = path.join(shared, 'models/bert-mini-lama');

export const SST2_CONFIG: RunConfig = {
  version: 1,
  model: bertDir,
  template: '{sentence} [P*3] It was [MASK] .',
  head: { kind: 'label', labelField: 'label', labelWords: { '0': 'terrible', '1': 'great' } },
  encoder: { type: 'lstm', seed: 13 },
  maxLength: 64,
  skipTooLong: false,
  loop: { ...DEFAULT_LOOP, epochs: 1, maxSteps: 60, batchSize: 16, evalEvery: 30, saveEvery: 0 },
  optim: { ...DEFAULT_OPTIM, lr: 1e-2 },
};

/** The P1303 run of the page's default settings (test (b) of test:web runs it in Node and in the page). */
export const P1303_SETTINGS: Omit<TuneSettings, 'model'> = { template: '3,3,3', steps: 40, batchSize: 16, lr: 0.01, seed: 13, evalEvery: 10 };

/**
 * Trains the SST-2 run into `dir/run` (the first 960 training sentences, 400 dev sentences for model selection)
 * and exports it to `dir/sst2-onnx`, unless that export exists. Returns the export's folder.
 */
export async function sst2Export(dir: string, opts: { lm?: LanguageModel; log?: (line: string) => void } = {}): Promise<string> {
  const out = path.join(dir, 'sst2-onnx');
  if (fs.existsSync(path.join(out, 'ptune.json'))) return out;
  const run = path.join(dir, 'run');
  const t0 = Date.now();
  opts.log?.(`training a small SST-2 run into ${run} (${SST2_CONFIG.loop.maxSteps} steps) and exporting it to ${out} ...`);
  const session = await PTuningSession.create(SST2_CONFIG, opts.lm);
  const train = readRecords(path.join(shared, 'data/sst2/train.tsv')).slice(0, 960);
  const dev = readRecords(path.join(shared, 'data/sst2/dev.tsv')).slice(0, 400);
  const r = await session.train({ runDir: run, train, dev, restoreBest: true });
  await exportOnnx(session, out);
  session.dispose({ keepLm: opts.lm !== undefined });
  opts.log?.(`SST-2 run: dev accuracy ${(100 * (r.bestScore ?? 0)).toFixed(1)} % (step ${r.bestStep}); ${((Date.now() - t0) / 1000).toFixed(0)} s`);
  return out;
}
