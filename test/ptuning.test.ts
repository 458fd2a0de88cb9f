import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createRandomModel, loadModel } from '../src/models/load.js';
import { SyntheticTokenizer } from '../src/models/common.js';
import { PTuningSession, DEFAULT_LOOP, DEFAULT_OPTIM, type RunConfig } from '../src/train/session.js';
import { exportPeft, importPeft } from '../src/train/export.js';
import { readRecords } from '../src/data/read.js';
import { readSafetensors } from '../src/engine/safetensors.js';
import type { LanguageModel } from '../src/models/model.js';
import { checkCentralDifferences } from './fixtures.js';

const shared = path.resolve(process.cwd(), '../shared');
const bertDir = path.join(shared, 'models/bert-mini-lama');
const lamaRel = path.join(shared, 'data/lama/fact-retrieval/original/P1412');

function tmp(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'ptune-pt-'));
}

function lamaConfig(template: string, over: Partial<RunConfig['loop']> = {}): RunConfig {
  return {
    version: 1,
    model: bertDir,
    template,
    head: { kind: 'answer', answerField: 'obj_label' },
    encoder: { type: 'lstm', seed: 3 },
    maxLength: 32,
    skipTooLong: false,
    loop: { ...DEFAULT_LOOP, epochs: 2, batchSize: 8, saveEvery: 0, ...over },
    optim: { ...DEFAULT_OPTIM, lr: 3e-3 },
  };
}

const facts = (split: string, n: number) => readRecords(path.join(lamaRel, `${split}.jsonl`)).slice(0, n);

test('encoder gradient through the LM (the training program) matches central finite differences', async () => {
  const tok = new SyntheticTokenizer(40);
  const lm = createRandomModel('bert', { vocabSize: 40, hiddenSize: 8, numLayers: 1, numHeads: 2, intermediateSize: 16, maxPositions: 32 }, 5, tok);
  const cfg: RunConfig = {
    version: 1,
    model: 'random',
    template: '[P*2] {x} [P] [MASK] .',
    head: { kind: 'label', labelField: 'y', labelWords: { a: 'w10', b: 'w11' } },
    encoder: { type: 'mlp', seed: 1, hiddenSize: 8 },
    maxLength: 16,
    skipTooLong: false,
    loop: DEFAULT_LOOP,
    optim: DEFAULT_OPTIM,
  };
  const s = await PTuningSession.create(cfg, lm);
  const { items } = s.prepare([{ x: 'w7 w8', y: 'a' }, { x: 'w9', y: 'b' }], 'grad');
  const params = s.trainedParams();
  assert.deepEqual([...params.keys()].every((k) => k.startsWith('encoder.')), true, 'a frozen LM: only the encoder trains');
  const { graded } = await s.lossAndGrads(items);
  assert.equal(graded.length, params.size);
  const grads = new Map([...params].map(([k, p]) => [k, Float32Array.from(p.grad)]));
  const lossAt = async () => (await s.lossAndGrads(items)).loss;
  let checked = 0;
  for (const [name, p] of params) checked += await checkCentralDifferences(name, p, grads.get(name)!, lossAt);
  assert.ok(checked >= 12);
});

test('P-tuning a frozen bert-mini-lama on a LAMA relation beats the manual prompt, leaves the LM bit-identical, and is seeded', async () => {
  const lm = await loadModel(bertDir);
  const before = new Map([...lm.params].map(([k, v]) => [k, Float32Array.from(v.data)]));
  const train = facts('train', 160);
  const dev = facts('dev', 100);

  const manual = await PTuningSession.create(lamaConfig('{sub_label} used to communicate in [MASK] .'), lm);
  const manualP1 = (await manual.evaluateItems(manual.prepare(dev, 'dev').items)).metrics['p@1']!;

  const run = async (dir: string) => {
    const s = await PTuningSession.create(lamaConfig('[P*3] {sub_label} [P*3] [MASK] [P*3]'), lm);
    const r = await s.train({ runDir: dir, train, dev });
    const table = (await s.promptTable())!;
    return { r, table };
  };
  const a = await run(tmp());
  assert.ok(a.r.bestScore! > manualP1 + 0.1, `P-tuned dev P@1 ${a.r.bestScore} vs manual ${manualP1}`);
  for (const [k, v] of lm.params) {
    assert.deepEqual(v.data, before.get(k), `LM weight ${k} changed`);
    assert.equal(v.trainable, false, `${k} stays frozen`);
  }
  const b = await run(tmp());
  assert.equal(b.r.bestScore, a.r.bestScore);
  assert.deepEqual(b.table.data, a.table.data);
  lm.dispose();
});

test('PEFT export then import gives identical predictions', async () => {
  const lm: LanguageModel = await loadModel(bertDir);
  const runDir = tmp();
  const s = await PTuningSession.create(lamaConfig('[P*2] {sub_label} [P*2] [MASK] .', { epochs: 1 }), lm);
  await s.train({ runDir, train: facts('train', 40), dev: facts('dev', 20) });
  assert.ok(fs.existsSync(path.join(runDir, 'best/prompt_table.safetensors')));
  const trained = await PTuningSession.load(runDir, 'best', lm);
  const adapter = tmp();
  await exportPeft(trained, adapter);
  const cfg = JSON.parse(fs.readFileSync(path.join(adapter, 'adapter_config.json'), 'utf8'));
  assert.equal(cfg.peft_type, 'P_TUNING');
  assert.equal(cfg.num_virtual_tokens, 4);
  assert.equal(cfg.token_dim, 128);
  // the adapter's table is the encoder's output for the best weights, as best/ saved it
  const exported = readSafetensors(path.join(adapter, 'adapter_model.safetensors')).tensors.get('prompt_embeddings')!;
  assert.deepEqual(exported.data, readSafetensors(path.join(runDir, 'best/prompt_table.safetensors')).tensors.get('prompt_embeddings')!.data);
  const imported = tmp();
  await importPeft({ adapterDir: adapter, model: bertDir, runDir: imported }, lm);
  const back = await PTuningSession.load(imported, 'best', lm);
  assert.equal(back.encoder!.config.type, 'embedding');
  const dev = facts('dev', 30);
  const p1 = await trained.predict(dev, 'dev', 3);
  const p2 = await back.predict(dev, 'dev', 3);
  assert.deepEqual(p2.map((p) => p.prediction), p1.map((p) => p.prediction));
  // float32 rounding only: the trained run computes its prompts inside the ranking program, the import reads
  // the table the encoder's table program exported
  p1.forEach((p, i) => p.scores.forEach((s, j) => assert.ok(Math.abs(s.score - p2[i]!.scores[j]!.score) < 1e-5, `${s.score} vs ${p2[i]!.scores[j]!.score}`)));

  // PEFT's own placement (no ptune_template.json): every virtual token before [CLS]
  fs.rmSync(path.join(adapter, 'ptune_template.json'));
  const prefixed = tmp();
  await assert.rejects(importPeft({ adapterDir: adapter, model: bertDir, runDir: prefixed }, lm), /give --template/);
  await importPeft({
    adapterDir: adapter,
    model: bertDir,
    runDir: prefixed,
    template: '{sub_label} [MASK] .',
    head: { kind: 'answer', answerField: 'obj_label' },
  }, lm);
  const peftSession = await PTuningSession.load(prefixed, 'best', lm);
  const { items } = peftSession.prepare(dev.slice(0, 1), 'dev');
  assert.deepEqual(items[0]!.ex.pseudoPositions, [0, 1, 2, 3]);
  assert.equal(items[0]!.ex.ids[4], 101);
  const peftPreds = await peftSession.predict(dev.slice(0, 4), 'dev', 1);
  assert.equal(peftPreds.length, 4);
  lm.dispose();
});

test('--tune-lm trains the LM weights too, with their own learning rate, and checkpoints them', async () => {
  const tok = new SyntheticTokenizer(40);
  const lm = createRandomModel('gpt2', { vocabSize: 40, hiddenSize: 16, numLayers: 1, numHeads: 2, intermediateSize: 32, maxPositions: 32 }, 9, tok, { trainable: true });
  const cfg: RunConfig = {
    version: 1,
    model: 'random',
    template: '{x} [P*2] [MASK]',
    head: { kind: 'label', labelField: 'y', labelWords: { a: 'w10', b: 'w11' } },
    encoder: { type: 'lstm', seed: 2 },
    maxLength: 16,
    skipTooLong: false,
    loop: { ...DEFAULT_LOOP, epochs: 2, batchSize: 2, saveEvery: 0 },
    optim: { ...DEFAULT_OPTIM, tuneLm: true, lmLr: 1e-2, lmWeightDecay: 0.1 },
  };
  const s = await PTuningSession.create(cfg, lm);
  const names = [...s.trainedParams().keys()];
  assert.ok(names.some((n) => n.startsWith('lm.')) && names.some((n) => n.startsWith('encoder.')));
  assert.equal(names.filter((n) => n.startsWith('lm.')).length, lm.params.size);
  // the prompt group at lr, the LM's decay / no-decay groups at lmLr
  const opt = s.makeOptimizer();
  assert.deepEqual(opt.groups.map((g) => [g.name, g.lr, g.weightDecay]), [
    ['prompt', DEFAULT_OPTIM.lr, 0],
    ['lm decay', 1e-2, 0.1],
    ['lm no decay', 1e-2, 0],
  ]);
  opt.dispose();
  const wte = lm.params.get([...lm.params.keys()].find((k) => k.endsWith('wte.weight'))!)!;
  const before = Float32Array.from(wte.data);
  const data = [{ x: 'w7 w8', y: 'a' }, { x: 'w9', y: 'b' }, { x: 'w12 w13', y: 'a' }, { x: 'w14', y: 'b' }];
  const dir = tmp();
  await s.train({ runDir: dir, train: data, dev: data });
  assert.notDeepEqual(wte.data, before);
  const saved = readSafetensors(path.join(dir, 'last/params.safetensors')).tensors;
  const lmNames = [...saved.keys()].filter((k) => k.startsWith('lm.'));
  assert.equal(lmNames.length, lm.params.size);
  assert.deepEqual(saved.get(`lm.${wte.name}`)!.data, wte.data, 'the checkpoint holds the trained LM weights');
  // the LM moved by the LM rate: Adam's steps are about lmLr each, far below the prompt's rate of change
  let maxMove = 0;
  for (let i = 0; i < before.length; i++) maxMove = Math.max(maxMove, Math.abs(wte.data[i]! - before[i]!));
  assert.ok(maxMove > 1e-3 && maxMove < 4 * 4 * 1e-2, `largest LM weight change ${maxMove} after 4 steps at lr 1e-2`);
  s.dispose();
});
