/**
 * The masked-LM families beyond BERT (distilbert, albert, deberta-v2, modernbert) and roberta, on the tiny
 * random checkpoints in ../shared/models/tiny: every golden item within its tolerances, what `ptune info`
 * reports, a refused DeBERTa-v3 discriminator head, and short P-tuning runs (frozen LM, and the LM tuned
 * jointly) that lower the training loss.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { checkpointIndex, readSafetensors, writeSafetensors } from '../src/engine/safetensors.js';
import { familyFor } from '../src/models/families.js';
import { createRandomModel, loadModel } from '../src/models/load.js';
import { logBucket } from '../src/models/deberta-v2.js';
import type { LanguageModel } from '../src/models/model.js';
import { PTuningSession, DEFAULT_LOOP, DEFAULT_OPTIM, type RunConfig } from '../src/train/session.js';
import { checkEmbedsGrad, checkPadded, checkSingle, readGolden, tinyDir } from './golden.js';

/** checkpoint directory → the family that reads it */
const MASKED: Record<string, string> = {
  distilbert: 'distilbert',
  roberta: 'bert',
  albert: 'albert',
  'deberta-v2': 'deberta-v2',
  modernbert: 'modernbert',
};

const tmp = (): string => fs.mkdtempSync(path.join(os.tmpdir(), 'ptune-masked-'));

/** Elements of every tensor the checkpoint stores. */
function storedElements(dir: string): number {
  let n = 0;
  for (const t of checkpointIndex(dir).values()) n += t.shape.reduce((a, b) => a * b, 1);
  return n;
}

for (const [dir, family] of Object.entries(MASKED)) {
  test(`${dir}: golden logits, padded batch and input-embedding gradient; info`, async () => {
    const lm = await loadModel(tinyDir(dir));
    const g = readGolden(dir);
    assert.equal(g.model_type, JSON.parse(fs.readFileSync(path.join(tinyDir(dir), 'config.json'), 'utf8')).model_type);
    await checkSingle(lm, g);
    await checkPadded(lm, g);
    await checkEmbedsGrad(lm, g);
    assert.equal(lm.info.family, family);
    assert.equal(lm.info.kind, 'masked');
    assert.equal(lm.info.paddingSide, 'right');
    assert.equal(lm.info.parameterCount, storedElements(tinyDir(dir)));
    lm.dispose();
  });
}

test('configs read back from what toHfConfig writes; random configs match their weight lists', () => {
  for (const dir of Object.keys(MASKED)) {
    const file = path.join(tinyDir(dir), 'config.json');
    const json = JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, unknown>;
    const f = familyFor(json.model_type, file);
    const cfg = f.parseConfig(json, file);
    assert.deepEqual(f.parseConfig(f.toHfConfig(cfg), 'written'), cfg, dir);
  }
  const small = { hiddenSize: 16, numLayers: 3, numHeads: 2, intermediateSize: 32, maxPositions: 32, vocabSize: 40 };
  for (const type of ['distilbert', 'albert', 'deberta-v2', 'modernbert']) {
    const over = type === 'albert' ? { ...small, embeddingSize: 8 } : small;
    const lm = createRandomModel(type, over, 1);
    const f = familyFor(type, 'test');
    assert.equal(lm.params.size, f.weights(lm.config as never).length);
    assert.equal(lm.info.numLayers, 3);
    lm.dispose();
  }
});

test('albert: layers share the weights of their group; the prompt width is embedding_size', async () => {
  const lm = await loadModel(tinyDir('albert'));
  const names = [...lm.params.keys()].filter((n) => n.includes('albert_layer_groups'));
  assert.ok(names.length > 0 && names.every((n) => n.includes('albert_layer_groups.0.albert_layers.0.')));
  assert.equal(lm.info.embeddingSize, 32);
  assert.equal(lm.info.hiddenSize, 64);
  lm.dispose();
});

test('deberta-v2: log buckets follow transformers (identity up to half the buckets, then log-spaced)', () => {
  // position_buckets 16, max_relative_positions 128 (the tiny checkpoint)
  const got = [0, 1, 7, 8, 9, 10, 20, 38, 127, 128, 200].map((r) => logBucket(r, 16, 128));
  assert.deepEqual(got, [0, 1, 7, 8, 9, 9, 11, 12, 15, 16, 17]);
  assert.deepEqual([-9, -38].map((r) => logBucket(r, 16, 128)), [-9, -12]);
});

test('deberta-v2: a checkpoint without a usable MLM head (lm_predictions.*) is refused in one line', async () => {
  const src = tinyDir('deberta-v2');
  const dir = tmp();
  for (const f of fs.readdirSync(src)) if (f !== 'model.safetensors') fs.copyFileSync(path.join(src, f), path.join(dir, f));
  const renamed = new Map<string, { shape: number[]; data: Float32Array }>();
  for (const [name, t] of readSafetensors(path.join(src, 'model.safetensors')).tensors) {
    const to = name
      .replace(/^cls\.predictions\.transform\./, 'lm_predictions.lm_head.')
      .replace(/^cls\.predictions\.bias$/, 'lm_predictions.lm_head.bias');
    renamed.set(to, { shape: t.shape, data: t.data });
  }
  assert.ok(renamed.has('lm_predictions.lm_head.dense.weight') && ![...renamed.keys()].some((n) => n.startsWith('cls.')));
  writeSafetensors(path.join(dir, 'model.safetensors'), renamed, { format: 'pt' });
  await assert.rejects(loadModel(dir), (e: Error) => {
    assert.match(e.message, /no usable masked-LM head/);
    assert.match(e.message, /lm_predictions/);
    assert.match(e.message, /linear classification head/);
    assert.ok(!e.message.includes('\n'), 'one line');
    return true;
  });
  fs.rmSync(dir, { recursive: true, force: true });
});

/** Two answers that are single tokens of this tokenizer. */
function singleTokenWords(lm: LanguageModel): [string, string] {
  const words = ['cat', 'dog', 'river', 'capital', 'sun', 'city', 'water', 'house', 'the', 'of', 'and'];
  const ok = words.filter((w) => lm.tokenizer.encodeWord(lm.tokenizer.lowercase ? w.toLowerCase() : w).length === 1);
  assert.ok(ok.length >= 2, `no two single-token answers among ${words.join(', ')}`);
  return [ok[0]!, ok[1]!];
}

function runConfig(dir: string, tuneLm: boolean): RunConfig {
  return {
    version: 1,
    model: tinyDir(dir),
    template: '{text} [P*3] [MASK] .',
    head: { kind: 'answer', answerField: 'answer' },
    encoder: { type: 'lstm', seed: 7, hiddenSize: 16 },
    maxLength: 32,
    skipTooLong: false,
    loop: { ...DEFAULT_LOOP, epochs: 30, maxSteps: 30, batchSize: 6, evalEvery: 30, saveEvery: 0, logEvery: 1, seed: 5 },
    optim: { ...DEFAULT_OPTIM, lr: 1e-2, ...(tuneLm && { tuneLm: true, lmLr: 1e-3 }) },
  };
}

/** Trains on six synthetic records; the first and last logged training losses. */
async function ptune(lm: LanguageModel, dir: string, tuneLm: boolean): Promise<{ first: number; last: number }> {
  const [a, b] = singleTokenWords(lm);
  const texts = ['the cat sat on the mat', 'a dog ran in the park', 'the sun is hot', 'water is wet', 'the old house', 'many people visit'];
  const records = texts.map((text, i) => ({ text, answer: i % 2 ? b : a }));
  const s = await PTuningSession.create(runConfig(dir, tuneLm), lm);
  const runDir = tmp();
  await s.train({ runDir, train: records, dev: records });
  const losses = fs
    .readFileSync(path.join(runDir, 'metrics.jsonl'), 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as { type: string; loss: number })
    .filter((m) => m.type === 'train')
    .map((m) => m.loss);
  fs.rmSync(runDir, { recursive: true, force: true });
  assert.equal(losses.length, 30);
  return { first: losses[0]!, last: losses[losses.length - 1]! };
}

for (const dir of Object.keys(MASKED)) {
  test(`${dir}: P-tuning a frozen LM lowers the training loss and leaves the LM as it was`, async () => {
    const lm = await loadModel(tinyDir(dir));
    const before = new Map([...lm.params].map(([k, p]) => [k, p.data.slice()]));
    const { first, last } = await ptune(lm, dir, false);
    assert.ok(last < first, `loss ${first} → ${last}`);
    for (const [k, p] of lm.params) assert.deepEqual(p.data, before.get(k), k);
    lm.dispose();
  });
}

for (const dir of ['albert', 'deberta-v2', 'modernbert']) {
  test(`${dir}: P-tuning with the LM tuned jointly changes the LM weights and lowers the loss`, async () => {
    const lm = await loadModel(tinyDir(dir), { trainable: true });
    const before = new Map([...lm.params].map(([k, p]) => [k, p.data.slice()]));
    const { first, last } = await ptune(lm, dir, true);
    assert.ok(last < first, `loss ${first} → ${last}`);
    const changed = [...lm.params].filter(([k, p]) => p.data.some((v, i) => v !== before.get(k)![i]));
    assert.ok(changed.length > lm.params.size / 2, `${changed.length} of ${lm.params.size} LM weights changed`);
    lm.dispose();
  });
}
