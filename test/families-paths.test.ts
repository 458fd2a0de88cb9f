/**
 * Every family on every path a user takes: `ptune info`, `fill`, `generate` (causal), a P-tuning run exported as a
 * PEFT adapter and imported back with the same predictions, and the FewGLUE driver (SST-2, manual pattern).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { fill, modelInputIds } from '../src/cli/model-commands.js';
import { generate } from '../src/models/generate.js';
import { loadModel } from '../src/models/load.js';
import { exportPeft, importPeft } from '../src/train/export.js';
import { PTuningSession, DEFAULT_LOOP, DEFAULT_OPTIM, type RunConfig } from '../src/train/session.js';
import { runFewGlue } from '../src/tasks/fewglue/run.js';
import { shared } from './fixtures.js';
import { tinyDir } from './golden.js';

const run = promisify(execFile);
const MASKED = ['distilbert', 'roberta', 'albert', 'deberta-v2', 'modernbert'];
const CAUSAL = ['qwen2', 'qwen3', 'mistral', 'llama', 'phi3', 'gemma2'];
const tmp = () => fs.mkdtempSync(path.join(os.tmpdir(), 'ptune-paths-'));

/** Records whose answer is one token of this tokenizer, for a quick P-tuning run. */
function records(words: string[]): Record<string, unknown>[] {
  return words.map((w, i) => ({ text: `item ${i} is`, label: i % 2 ? 'yes' : 'no', w }));
}

for (const family of [...MASKED, ...CAUSAL]) {
  const causal = CAUSAL.includes(family);
  test(`${family}: info, fill${causal ? ', generate' : ''}, PEFT export → import, FewGLUE SST-2`, async () => {
    const dir = tinyDir(family);
    const { stdout } = await run(process.execPath, [path.resolve('bin/ptune.js'), 'info', dir, '--json']);
    const info = JSON.parse(stdout) as { kind: string; parameterCount: number };
    assert.equal(info.kind, causal ? 'causal' : 'masked');
    const lm = await loadModel(dir);
    assert.equal(info.parameterCount, lm.info.parameterCount);

    const mask = causal ? '' : ` ${lm.tokenizer.idToToken(lm.info.special.mask!)}`;
    const filled = await fill(lm, `the cat sat on the${mask}`, 3);
    assert.equal(filled.length, 1);
    assert.equal(filled[0]!.top.length, 3);
    assert.ok(filled[0]!.top.every((t) => t.prob > 0 && t.prob <= 1));
    if (causal) {
      const prompt = modelInputIds(lm, 'the cat sat on the');
      const ids = await generate(lm, prompt, { maxNewTokens: 5, stopAtEos: false });
      assert.equal(ids.length, 5);
      assert.equal(ids[0], filled[0]!.top[0]!.id, 'the first generated token is the top next-token prediction');
    }

    // a P-tuning run on a label task, exported as a PEFT adapter and imported: the same predictions
    const out = tmp();
    try {
      const config: RunConfig = {
        version: 1, model: dir, template: causal ? '[P*2] {text} [MASK]' : '{text} [P*2] [MASK] .',
        head: { kind: 'label', labelField: 'label', labelWords: { no: 'no', yes: 'yes' } },
        encoder: { type: 'mlp', seed: 1, hiddenSize: 16 }, maxLength: 24, skipTooLong: false,
        loop: { ...DEFAULT_LOOP, epochs: 1, batchSize: 4, saveEvery: 0, logEvery: 1 }, optim: { ...DEFAULT_OPTIM, lr: 1e-2 },
      };
      const recs = records(['a', 'b', 'c', 'd', 'e', 'f', 'g', 'h']);
      const session = await PTuningSession.create(config, lm);
      await session.train({ runDir: path.join(out, 'run'), train: recs, dev: recs.slice(0, 4), restoreBest: true });
      const before = await session.predict(recs, 'records', 2);
      await exportPeft(session, path.join(out, 'peft'));
      await importPeft({ adapterDir: path.join(out, 'peft'), model: dir, runDir: path.join(out, 'imported') }, lm);
      const imported = await PTuningSession.load(path.join(out, 'imported'), 'best', lm);
      const after = await imported.predict(recs, 'records', 2);
      assert.deepEqual(after.map((p) => p.prediction), before.map((p) => p.prediction));
      after.forEach((p, i) => assert.ok(Math.abs(p.scores[0]!.score - before[i]!.scores[0]!.score) < 1e-5));

      // the FewGLUE driver with the manual SST-2 pattern (no training) over a few validation sentences
      const report = await runFewGlue({
        model: dir, tasks: ['sst2'], modes: ['manual'], seeds: [1], out: path.join(out, 'fewglue'),
        dataDir: path.join(shared, 'data'), evalCap: 8, maxLength: 48,
      });
      assert.equal(report.runs.length, 1);
      assert.equal(report.runs[0]!.nEval, 8);
    } finally {
      fs.rmSync(out, { recursive: true, force: true });
    }
  });
}
