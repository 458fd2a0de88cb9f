import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { tf } from '../src/engine/index.js';
import { createRandomModel, loadModel } from '../src/models/load.js';
import { OrtLM } from '../src/models/ort.js';
import type { LanguageModel } from '../src/models/lm.js';
import { PTuningSession, DEFAULT_LOOP, DEFAULT_OPTIM, type Item, type RunConfig } from '../src/train/session.js';
import { readRecords } from '../src/data/read.js';
import { bert, gpt2, modelDir, shared, useMiniModels } from './fixtures.js';

useMiniModels();

const lama = (n: number) => readRecords(path.join(shared, 'data/lama/fact-retrieval/original/P1412/train.jsonl')).slice(0, n);
const sst2 = (n: number) => readRecords(path.join(shared, 'data/sst2/train.tsv')).slice(0, n);

function config(over: Partial<RunConfig>): RunConfig {
  return {
    version: 1,
    model: 'in-memory',
    template: '[P*3] {sub_label} [P*3] [MASK] .',
    head: { kind: 'answer', answerField: 'obj_label' },
    encoder: { type: 'lstm', seed: 3 },
    maxLength: 40,
    skipTooLong: false,
    loop: DEFAULT_LOOP,
    optim: DEFAULT_OPTIM,
    ...over,
  };
}

/** Loss and gradients (host arrays) by checkpoint name: from the compiled program (ORT LM) or the tape (tfjs LM). */
function bothWays(s: PTuningSession, items: Item[]): { loss: number; grads: Map<string, Float32Array> } {
  const params = s.trainedParams();
  const direct = s.lossAndGrads(items);
  let loss: number;
  let byVar: Map<string, Float32Array>;
  if (direct) ({ loss, grads: byVar } = direct);
  else {
    const { value, grads } = tf.variableGrads(() => s.loss(items), [...params.values()]);
    loss = value.dataSync()[0]!;
    value.dispose();
    byVar = new Map(Object.entries(grads).map(([k, g]) => [k, Float32Array.from(g.dataSync() as Float32Array)]));
    tf.dispose(Object.values(grads));
  }
  assert.equal(byVar.size, params.size, 'one gradient per trained variable, no more');
  const grads = new Map([...params].map(([k, v]) => [k, byVar.get(v.name)!]));
  for (const [k, v] of params) assert.equal(grads.get(k)?.length, v.size, `${k}: gradient size`);
  return { loss, grads };
}

function assertSame(got: ReturnType<typeof bothWays>, want: ReturnType<typeof bothWays>, what: string): void {
  assert.ok(Math.abs(got.loss - want.loss) < 1e-4 * Math.max(1, Math.abs(want.loss)), `${what}: loss ${got.loss} vs ${want.loss}`);
  assert.equal(got.grads.size, want.grads.size);
  for (const [name, w] of want.grads) {
    const g = got.grads.get(name);
    assert.ok(g, `${what}: no gradient for ${name}`);
    let diff = 0;
    let scale = 1e-8;
    for (let i = 0; i < w.length; i++) {
      diff = Math.max(diff, Math.abs(g[i]! - w[i]!));
      scale = Math.max(scale, Math.abs(w[i]!));
    }
    assert.ok(diff / scale < 2e-4, `${what} ${name}: relative gradient error ${diff / scale}`);
  }
}

async function compare(lm: LanguageModel, cfg: RunConfig, records: Record<string, unknown>[], what: string): Promise<void> {
  const tape = await PTuningSession.create(cfg, lm);
  const ort = new OrtLM(lm);
  const compiled = await PTuningSession.create(cfg, ort);
  const items = tape.prepare(records, 'records').items;
  assert.equal(tape.lossAndGrads(items), null, 'the tfjs engine trains through the tape');
  assertSame(bothWays(compiled, compiled.prepare(records, 'records').items), bothWays(tape, items), what);
  // inference scores of the program equal the tape path's
  const want = tf.tidy(() => tape.scores(items).arraySync() as number[][]);
  const got = tf.tidy(() => compiled.scores(items).arraySync() as number[][]);
  let diff = 0;
  want.forEach((row, i) => row.forEach((v, j) => (diff = Math.max(diff, Math.abs(v - got[i]![j]!)))));
  assert.ok(diff < 1e-3, `${what}: scores differ by ${diff}`);
  // ranking (top-k inside the program on ORT, tfjs topk on the tape path) agrees
  const k = Math.min(3, want[0]!.length);
  const rw = tape.rank(items, k, 5);
  const rg = compiled.rank(items, k, 5);
  assert.deepEqual(rg.top, rw.top, `${what}: top-${k} classes`);
  rw.topScores.forEach((row, i) => row.forEach((v, j) => assert.ok(Math.abs(v - rg.topScores[i]![j]!) < 1e-3, `${what}: top score ${i},${j}`)));
  tape.dispose({ keepLm: true });
  compiled.dispose({ keepLm: true });
  ort.resetSessions();
}

test('compiled P-tuning step equals the tape: BERT, LSTM encoder, full-vocabulary answer head (LAMA)', async () => {
  await compare(bert, config({}), lama(12), 'bert lama');
});

test('compiled ranking restricted to an answer vocabulary equals the tape path', async () => {
  const records = lama(12);
  const answerVocab = [...new Set(records.map((r) => bert.tokenizer.encodeWord(String(r.obj_label))[0]!))].slice(0, 5);
  const kept = records.filter((r) => answerVocab.includes(bert.tokenizer.encodeWord(String(r.obj_label))[0]!));
  await compare(bert, config({ head: { kind: 'answer', answerField: 'obj_label', answerVocab } }), kept, 'bert lama, answer vocabulary');
});

test('compiled P-tuning step equals the tape: GPT-2 (left padding), MLP encoder, verbalizer head over label words', async () => {
  const cfg = config({
    template: '{sentence} [P*2] It was [P] [MASK]',
    head: { kind: 'label', labelField: 'label', labelWords: { '0': ['terrible', 'bad'], '1': ['great'] }, tokenRule: 'mean', wordAggregation: 'max' },
    encoder: { type: 'mlp', seed: 4 },
  });
  await compare(gpt2, cfg, sst2(10), 'gpt2 sst2');
});

test('compiled P-tuning step equals the tape: Llama (stories260K: GQA, interleaved RoPE, tied head), label head', async () => {
  const llama = await loadModel(modelDir('stories260K'), { engine: 'tfjs' });
  const cfg = config({
    template: '[P*2] {sentence} [P] It was [MASK]',
    head: { kind: 'label', labelField: 'label', labelWords: { '0': ['sad'], '1': ['happy'] }, tokenRule: 'mean' },
    encoder: { type: 'lstm', seed: 5 },
    maxLength: 48,
  });
  await compare(llama, cfg, sst2(6), 'llama sst2');
  llama.dispose();
});

test('compiled step with the LM tuned jointly: gradients for every LM weight equal the tape', async () => {
  const tok = bert.tokenizer;
  const dims = { vocabSize: tok.vocabSize, hiddenSize: 32, numLayers: 2, numHeads: 2, intermediateSize: 64, maxPositions: 64 };
  for (const family of ['bert', 'gpt2'] as const) {
    const lm = createRandomModel(family, dims, 7, tok, { trainable: true });
    const cfg = config({
      template: family === 'bert' ? '[P*2] {sub_label} [P] [MASK] .' : '[P*2] {sub_label} [P] [MASK]',
      optim: { ...DEFAULT_OPTIM, tuneLm: true },
    });
    await compare(lm, cfg, lama(6), `${family} tuned LM`);
    lm.dispose();
  }
});

test('compiled step with encoder dropout consumes the same masks as the tape', async () => {
  const cfg = config({ encoder: { type: 'lstm', seed: 3, dropout: 0.3 } });
  const records = lama(8);
  const tape = await PTuningSession.create(cfg, bert);
  const ort = new OrtLM(bert);
  const compiled = await PTuningSession.create(cfg, ort);
  for (let step = 0; step < 2; step++) {
    assertSame(bothWays(compiled, compiled.prepare(records, 'r').items), bothWays(tape, tape.prepare(records, 'r').items), `dropout step ${step}`);
  }
  tape.dispose({ keepLm: true });
  compiled.dispose({ keepLm: true });
  ort.resetSessions();
});

test('compiled steps keep the tensor count flat and share sessions across runs with the same shapes', async () => {
  const ort = new OrtLM(bert);
  const a = await PTuningSession.create(config({}), ort);
  const b = await PTuningSession.create(config({ encoder: { type: 'lstm', seed: 9 } }), ort);
  const items = a.prepare(lama(8), 'r').items;
  const step = (s: PTuningSession) => {
    assert.ok(s.lossAndGrads(items)!.grads.size > 0);
    tf.tidy(() => void s.scores(items));
  };
  step(a);
  const sessions = ort.sessionCount;
  const before = tf.memory().numTensors;
  for (let i = 0; i < 5; i++) step(a);
  step(b);
  assert.equal(tf.memory().numTensors, before);
  assert.equal(ort.sessionCount, sessions, 'a second run with the same template shape reuses the compiled programs');
  a.dispose({ keepLm: true });
  b.dispose({ keepLm: true });
  ort.resetSessions();
});
