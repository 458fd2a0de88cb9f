import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { tf, initEngine } from '../src/engine/index.js';
import { createRandomModel, loadModel } from '../src/models/load.js';
import { SyntheticTokenizer } from '../src/models/common.js';
import { PTuningSession, DEFAULT_LOOP, DEFAULT_OPTIM, type RunConfig } from '../src/train/session.js';
import { exportPeft, importPeft } from '../src/train/export.js';
import { readRecords } from '../src/data/read.js';
import { readSafetensors } from '../src/engine/safetensors.js';
import type { LanguageModel } from '../src/models/lm.js';

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

test('encoder gradient through the LM matches central finite differences', async () => {
  await initEngine('cpu');
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
  const vars = s.trainedParams();
  const { grads } = tf.variableGrads(() => s.loss(items), [...vars.values()]);
  const lossAt = () => tf.tidy(() => s.loss(items).dataSync()[0]!);
  let checked = 0;
  for (const [name, v] of vars) {
    const g = grads[v.name]!.dataSync();
    const base = v.dataSync().slice();
    for (const i of [0, Math.floor(base.length / 2), base.length - 1]) {
      const eps = 1e-3;
      const at = (d: number) => {
        const x = base.slice();
        x[i] = x[i]! + d;
        tf.tidy(() => v.assign(tf.tensor(x, v.shape)));
        return lossAt();
      };
      const fd = (at(eps) - at(-eps)) / (2 * eps);
      tf.tidy(() => v.assign(tf.tensor(base, v.shape)));
      const err = Math.abs(fd - g[i]!) / Math.max(1e-3, Math.abs(fd) + Math.abs(g[i]!));
      assert.ok(err < 2e-2, `${name}[${i}]: finite difference ${fd} vs gradient ${g[i]}`);
      checked++;
    }
  }
  assert.ok(checked >= 12);
  Object.values(grads).forEach((g) => g.dispose());
  s.dispose();
  await initEngine('wasm');
});

test('P-tuning a frozen bert-mini-lama on a LAMA relation beats the manual prompt, leaves the LM bit-identical, and is seeded', async () => {
  await initEngine('wasm');
  const lm = await loadModel(bertDir);
  const before = new Map([...lm.parameters()].map(([k, v]) => [k, v.dataSync().slice()]));
  const train = facts('train', 160);
  const dev = facts('dev', 100);

  const manual = await PTuningSession.create(lamaConfig('{sub_label} used to communicate in [MASK] .'), lm);
  const manualP1 = manual.evaluateItems(manual.prepare(dev, 'dev').items).metrics['p@1']!;
  manual.dispose({ keepLm: true });

  const run = async (dir: string) => {
    const s = await PTuningSession.create(lamaConfig('[P*3] {sub_label} [P*3] [MASK] [P*3]'), lm);
    const r = s.train({ runDir: dir, train, dev });
    const table = s.promptTable()!;
    s.dispose({ keepLm: true });
    return { r, table };
  };
  const a = await run(tmp());
  assert.ok(a.r.bestScore! > manualP1 + 0.1, `P-tuned dev P@1 ${a.r.bestScore} vs manual ${manualP1}`);
  for (const [k, v] of lm.parameters()) assert.deepEqual(v.dataSync(), before.get(k), `LM weight ${k} changed`);
  const b = await run(tmp());
  assert.equal(b.r.bestScore, a.r.bestScore);
  assert.deepEqual(b.table.data, a.table.data);
  lm.dispose();
});

test('PEFT export then import gives identical predictions', async () => {
  await initEngine('wasm');
  const lm: LanguageModel = await loadModel(bertDir);
  const runDir = tmp();
  const s = await PTuningSession.create(lamaConfig('[P*2] {sub_label} [P*2] [MASK] .', { epochs: 1 }), lm);
  s.train({ runDir, train: facts('train', 40), dev: facts('dev', 20) });
  s.dispose({ keepLm: true });
  const trained = await PTuningSession.load(runDir, 'best', lm);
  const adapter = tmp();
  exportPeft(trained, adapter);
  const cfg = JSON.parse(fs.readFileSync(path.join(adapter, 'adapter_config.json'), 'utf8'));
  assert.equal(cfg.peft_type, 'P_TUNING');
  assert.equal(cfg.num_virtual_tokens, 4);
  assert.equal(cfg.token_dim, 128);
  const imported = tmp();
  importPeft({ adapterDir: adapter, model: bertDir, runDir: imported });
  const back = await PTuningSession.load(imported, 'best', lm);
  assert.equal(back.encoder!.config.type, 'embedding');
  const dev = facts('dev', 30);
  const p1 = trained.predict(dev, 'dev', 3);
  const p2 = back.predict(dev, 'dev', 3);
  assert.deepEqual(p2.map((p) => p.prediction), p1.map((p) => p.prediction));
  // float32 rounding only: on the ORT engine the trained run computes its prompts inside the compiled program,
  // the import reads the table the tfjs encoder exported
  p1.forEach((p, i) => p.scores.forEach((s, j) => assert.ok(Math.abs(s.score - p2[i]!.scores[j]!.score) < 1e-5, `${s.score} vs ${p2[i]!.scores[j]!.score}`)));
  trained.dispose({ keepLm: true });
  back.dispose({ keepLm: true });

  // PEFT's own placement (no ptune_template.json): every virtual token before [CLS]
  fs.rmSync(path.join(adapter, 'ptune_template.json'));
  const prefixed = tmp();
  assert.throws(() => importPeft({ adapterDir: adapter, model: bertDir, runDir: prefixed }), /give --template/);
  importPeft({
    adapterDir: adapter,
    model: bertDir,
    runDir: prefixed,
    template: '{sub_label} [MASK] .',
    head: { kind: 'answer', answerField: 'obj_label' },
  });
  const peftSession = await PTuningSession.load(prefixed, 'best', lm);
  const { items } = peftSession.prepare(dev.slice(0, 1), 'dev');
  assert.deepEqual(items[0]!.ex.pseudoPositions, [0, 1, 2, 3]);
  assert.equal(items[0]!.ex.ids[4], 101);
  peftSession.dispose();
});

test('--tune-lm trains the LM weights too, with their own learning rate, and checkpoints them', async () => {
  await initEngine('wasm');
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
  const wte = [...lm.parameters()].find(([k]) => k.endsWith('wte.weight'))![1];
  const before = wte.dataSync().slice();
  const data = [{ x: 'w7 w8', y: 'a' }, { x: 'w9', y: 'b' }, { x: 'w12 w13', y: 'a' }, { x: 'w14', y: 'b' }];
  const dir = tmp();
  s.train({ runDir: dir, train: data, dev: data });
  assert.notDeepEqual(wte.dataSync(), before);
  const saved = readSafetensors(path.join(dir, 'last/params.safetensors')).tensors;
  assert.ok([...saved.keys()].some((k) => k.startsWith('lm.')));
  s.dispose();
});
