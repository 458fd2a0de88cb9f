import { after, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { programs, type HostTensor } from '../src/engine/index.js';
import { readSafetensors, writeSafetensors } from '../src/engine/safetensors.js';
import { createRandomModel, loadModel } from '../src/models/load.js';
import type { LanguageModel } from '../src/models/model.js';
import { rowsAt } from '../src/models/common.js';
import { batchFeeds, paddedLength } from '../src/prompt/ptuning.js';
import { collate } from '../src/prompt/render.js';
import { loadParams } from '../src/train/checkpoint.js';
import { PTuningSession, DEFAULT_LOOP, DEFAULT_OPTIM, type Item, type RunConfig } from '../src/train/session.js';
import { readRecords } from '../src/data/read.js';
import { bert, gpt2, modelDir, rssAfter, shared, useMiniModels } from './fixtures.js';
import { initOracle, oracleWeights, tf, tfOps } from './oracle/index.js';
import { logSoftmaxRow, oracleScores, oracleStep, oracleTopK, type OracleStep } from './oracle/ptuning.js';

await initOracle();
useMiniModels();

const made: string[] = [];
const tmp = () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ptune-programs-'));
  made.push(dir);
  return dir;
};
after(() => made.forEach((d) => fs.rmSync(d, { recursive: true, force: true })));

const relation = (rel: string, n: number, split = 'train') => readRecords(path.join(shared, `data/lama/fact-retrieval/original/${rel}/${split}.jsonl`)).slice(0, n);
const lama = (n: number) => relation('P1412', n);
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

/** The program's training step: its loss, and the gradient it wrote into each trained parameter's `grad`. */
async function programStep(s: PTuningSession, items: Item[]): Promise<OracleStep> {
  const params = s.trainedParams();
  const { loss, graded } = await s.lossAndGrads(items);
  assert.equal(graded.length, params.size, 'one gradient per trained parameter, no more');
  const gradedSet = new Set(graded);
  for (const [k, p] of params) assert.ok(gradedSet.has(p), `${k}: no gradient written`);
  const grads = new Map([...params].map(([k, p]) => [k, Float32Array.from(p.grad)]));
  for (const [k, p] of params) assert.equal(grads.get(k)!.length, p.size, `${k}: gradient size`);
  return { loss, grads };
}

/** Checks loss and gradients; returns the largest relative gradient difference. */
function assertSame(got: OracleStep, want: OracleStep, what: string): number {
  assert.ok(Math.abs(got.loss - want.loss) < 1e-4 * Math.max(1, Math.abs(want.loss)), `${what}: loss ${got.loss} vs ${want.loss}`);
  assert.equal(got.grads.size, want.grads.size);
  let nonZero = 0;
  let worst = 0;
  for (const [name, w] of want.grads) {
    const g = got.grads.get(name);
    assert.ok(g, `${what}: no gradient for ${name}`);
    let diff = 0;
    let scale = 0;
    for (let i = 0; i < w.length; i++) {
      diff = Math.max(diff, Math.abs(g[i]! - w[i]!));
      scale = Math.max(scale, Math.abs(w[i]!));
    }
    if (scale > 1e-8) nonZero++;
    // gradients that are zero in exact arithmetic (attention key biases) come out as float32 noise of ~1e-12
    scale = Math.max(scale, 1e-6);
    worst = Math.max(worst, diff / scale);
    assert.ok(diff / scale < 2e-4, `${what} ${name}: relative gradient error ${diff / scale}`);
  }
  assert.ok(nonZero > 0, `${what}: every gradient is zero`);
  return worst;
}

/**
 * The session's programs against the oracle on `records`: the training step (loss and every gradient), the
 * inference scores, and the top-k ranking (restricted to the head's predictable classes).
 */
async function compare(t: TestContext, lm: LanguageModel, cfg: RunConfig, records: Record<string, unknown>[], what: string): Promise<number[][]> {
  const s = await PTuningSession.create(cfg, lm);
  const items = s.prepare(records, 'records').items;
  const worst = assertSame(await programStep(s, items), oracleStep(s, items), what);
  // inference scores of the program equal the oracle's
  const want = oracleScores(s, items);
  const got = await s.scores(items);
  assert.deepEqual(got.shape, [items.length, s.head.numClasses]);
  let diff = 0;
  want.forEach((row, i) => row.forEach((v, j) => (diff = Math.max(diff, Math.abs(v - got.data[i * row.length + j]!)))));
  assert.ok(diff < 1e-3, `${what}: scores differ by ${diff}`);
  t.diagnostic(`${what}: largest relative gradient difference ${worst.toExponential(2)}, scores ${diff.toExponential(2)}`);
  // ranking: top-k inside the program (batches of 5, padded to 8 rows) against a sort of the oracle's log-probs
  const k = Math.min(3, want[0]!.length);
  const rw = oracleTopK(want, k, s.head.predictable);
  const rg = await s.rank(items, k, 5);
  rw.indices.forEach((row, i) => {
    const logp = logSoftmaxRow(want[i]!);
    row.forEach((id, j) => {
      const picked = rg.top[i]![j]!;
      // a near-tie may order differently in float32: the class picked must then be as good as the oracle's
      assert.ok(picked === id || Math.abs(logp[picked]! - rw.values[i]![j]!) < 1e-4, `${what}: top-${k} of row ${i}: ${rg.top[i]} vs ${row}`);
      assert.ok(Math.abs(rw.values[i]![j]! - rg.topScores[i]![j]!) < 1e-3, `${what}: top score ${i},${j}: ${rg.topScores[i]![j]} vs ${rw.values[i]![j]}`);
    });
  });
  if (s.head.predictable) for (const row of rg.top) for (const id of row) assert.ok(s.head.predictable.includes(id), `${what}: ${id} is not predictable`);
  return want;
}

test('P-tuning program equals the oracle: BERT, LSTM encoder, full-vocabulary answer head (LAMA)', async (t) => {
  await compare(t, bert, config({}), lama(7), 'bert lama');
});

test('ranking restricted to an answer vocabulary equals the oracle', async (t) => {
  const records = lama(12);
  const answerVocab = [...new Set(records.map((r) => bert.tokenizer.encodeWord(String(r.obj_label))[0]!))].slice(0, 5);
  const kept = records.filter((r) => answerVocab.includes(bert.tokenizer.encodeWord(String(r.obj_label))[0]!)).slice(0, 6);
  assert.ok(kept.length >= 5);
  const scores = await compare(t, bert, config({ head: { kind: 'answer', answerField: 'obj_label', answerVocab } }), kept, 'bert lama, answer vocabulary');
  // without the restriction the best class is sometimes outside the vocabulary: the restriction is exercised
  const open = oracleTopK(scores, 1, null).indices.map((r) => r[0]!);
  assert.ok(open.some((id) => !answerVocab.includes(id)), `an unrestricted argmax leaves the answer vocabulary (${open})`);
});

test('P-tuning program equals the oracle: GPT-2 (left padding), MLP encoder, multi-token verbalizer (mean / max)', async (t) => {
  const cfg = config({
    template: '{sentence} [P*2] It was [P] [MASK]',
    head: { kind: 'label', labelField: 'label', labelWords: { '0': ['terrible', 'mediocre'], '1': ['great'] }, tokenRule: 'mean', wordAggregation: 'max' },
    encoder: { type: 'mlp', seed: 4 },
  });
  const s = await PTuningSession.create(cfg, gpt2);
  const items = s.prepare(sst2(7), 'r').items;
  assert.equal(gpt2.info.paddingSide, 'left');
  assert.ok(new Set(items.map((i) => i.ex.ids.length)).size > 1, 'rows of different lengths: left padding exercised');
  assert.equal(gpt2.tokenizer.encodeWord('mediocre').length, 3, 'a label word of several tokens');
  assert.equal(s.head.candidates!.length, 5);
  await compare(t, gpt2, cfg, sst2(7), 'gpt2 sst2');
});

test('P-tuning program equals the oracle: Llama (stories260K: GQA, interleaved RoPE, tied head), label head', async (t) => {
  const llama = await loadModel(modelDir('stories260K'));
  assert.ok(llama.info.numKvHeads < llama.info.numHeads, 'grouped-query attention');
  const cfg = config({
    template: '[P*2] {sentence} [P] It was [MASK]',
    head: { kind: 'label', labelField: 'label', labelWords: { '0': ['sad'], '1': ['happy'] }, tokenRule: 'mean' },
    encoder: { type: 'lstm', seed: 5 },
    maxLength: 48,
  });
  await compare(t, llama, cfg, sst2(6), 'llama sst2');
  llama.dispose();
});

test('program with the LM tuned jointly: gradients for every LM weight equal the oracle', async (t) => {
  const tok = bert.tokenizer;
  const dims = { vocabSize: tok.vocabSize, hiddenSize: 32, numLayers: 2, numHeads: 2, intermediateSize: 64, maxPositions: 64 };
  for (const family of ['bert', 'gpt2'] as const) {
    const lm = createRandomModel(family, dims, 7, tok, { trainable: true });
    const cfg = config({
      template: family === 'bert' ? '[P*2] {sub_label} [P] [MASK] .' : '[P*2] {sub_label} [P] [MASK]',
      optim: { ...DEFAULT_OPTIM, tuneLm: true },
    });
    const s = await PTuningSession.create(cfg, lm);
    const names = [...s.trainedParams().keys()];
    assert.equal(names.filter((n) => n.startsWith('lm.')).length, lm.params.size, `${family}: every LM weight trains`);
    await compare(t, lm, cfg, lama(6), `${family} tuned LM`);
    lm.dispose();
  }
});

test('program with encoder dropout consumes the same masks as the oracle (from encoder.dropoutMasks)', async (t) => {
  const cfg = config({ encoder: { type: 'lstm', seed: 3, dropout: 0.3 } });
  const s = await PTuningSession.create(cfg, bert);
  const enc = s.encoder!;
  assert.ok(enc.hasDropout);
  const items = s.prepare(lama(4), 'r').items;
  const steps: OracleStep[] = [];
  for (let step = 0; step < 2; step++) {
    // the masks the program's step will draw: read them, then rewind the stream
    const at = enc.dropoutState;
    const masks = enc.dropoutMasks(true)!;
    enc.dropoutState = at;
    const got = await programStep(s, items);
    assert.notDeepEqual(enc.dropoutState, at, 'the step advanced the dropout stream');
    const worst = assertSame(got, oracleStep(s, items, masks), `dropout step ${step}`);
    t.diagnostic(`dropout step ${step}: largest relative gradient difference ${worst.toExponential(2)}`);
    steps.push(got);
  }
  assert.notEqual(steps[0]!.loss, steps[1]!.loss, 'fresh masks each step');
  // and without masks the loss differs: dropout really acts
  const plain = oracleScores(s, items).map((row, i) => -logSoftmaxRow(row)[items[i]!.target]!);
  const plainLoss = plain.reduce((a, b) => a + b, 0) / plain.length;
  assert.ok(Math.abs(plainLoss - steps[0]!.loss) > 1e-4, `loss without dropout ${plainLoss} vs ${steps[0]!.loss}`);
});

test('training steps keep memory bounded, and runs with the same shapes share compiled sessions', async (t) => {
  const template = '[P*3] {sub_label} [P*3] [MASK] .';
  const a = await PTuningSession.create(config({ template }), bert);
  // a second LAMA relation with the same template shape: another encoder, other facts
  const b = await PTuningSession.create(config({ template, encoder: { type: 'lstm', seed: 9 } }), bert);
  const itemsA = a.prepare(lama(8), 'r').items;
  const itemsB = b.prepare(relation('P103', 8), 'r').items;
  const width = (items: Item[]) => paddedLength(Math.max(...items.map((i) => i.ex.ids.length)), bert.info.maxPositions);
  assert.equal(width(itemsB), width(itemsA), 'the two relations pad to one shape');
  const step = async (s: PTuningSession, items: Item[]) => {
    const { loss, graded } = await s.lossAndGrads(items);
    assert.ok(Number.isFinite(loss) && graded.length > 0);
    await s.scores(items);
    await s.rank(items, 3);
  };
  await step(a, itemsA);
  const sessions = programs.size;
  const rss = await rssAfter(5, 45, () => step(a, itemsA));
  const grown = (rss.late - rss.early) / 2 ** 20;
  t.diagnostic(`RSS change over 40 steps: ${grown.toFixed(1)} MiB`);
  assert.ok(grown < 48, `RSS grew by ${grown.toFixed(1)} MiB over 40 training + scoring + ranking steps`);
  await step(b, itemsB);
  assert.equal(programs.size, sessions, 'a second run with the same template shape reuses the compiled programs');
});

// ---- a model whose vocabulary (config.json's vocab_size) is wider than its tokenizer's ----

const PADDED_VOCAB = 30592;

/** bert-mini-lama with its word embeddings and cls.predictions.bias padded to 30,592 rows (vocab_size 30592). */
function paddedBertCopy(): string {
  const src = modelDir('bert-mini-lama');
  const dir = tmp();
  for (const f of fs.readdirSync(src)) if (f !== 'model.safetensors' && f !== 'config.json') fs.copyFileSync(path.join(src, f), path.join(dir, f));
  const cfg = JSON.parse(fs.readFileSync(path.join(src, 'config.json'), 'utf8')) as Record<string, unknown>;
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ ...cfg, vocab_size: PADDED_VOCAB }, null, 2));
  const tensors = readSafetensors(path.join(src, 'model.safetensors')).tensors;
  const out = new Map<string, { shape: number[]; data: Float32Array }>();
  for (const [name, t] of tensors) {
    if (name === 'bert.embeddings.word_embeddings.weight') {
      const h = t.shape[1]!;
      const data = new Float32Array(PADDED_VOCAB * h);
      data.set(t.data);
      // the padding rows copy the embedding of a real token (what a resize does in spirit: plausible rows)
      for (let r = t.shape[0]!; r < PADDED_VOCAB; r++) data.set(t.data.subarray(1000 * h, 1001 * h), r * h);
      out.set(name, { shape: [PADDED_VOCAB, h], data });
    } else if (name === 'cls.predictions.bias') {
      const data = new Float32Array(PADDED_VOCAB);
      data.set(t.data);
      // make the padding rows win an unrestricted argmax, so that predictions must exclude them
      data.fill(60, t.shape[0]!);
      out.set(name, { shape: [PADDED_VOCAB], data });
    } else {
      out.set(name, { shape: t.shape, data: t.data as Float32Array });
    }
  }
  writeSafetensors(path.join(dir, 'model.safetensors'), out);
  return dir;
}

test('vocab_size wider than the tokenizer: the answer-head loss is the full-vocabulary cross-entropy of every row, and predictions stay in the tokenizer', async () => {
  const lm = await loadModel(paddedBertCopy());
  assert.equal(lm.info.vocabSize, PADDED_VOCAB);
  assert.equal(lm.tokenizer.vocabSize, 30522);
  const s = await PTuningSession.create(config({}), lm);
  assert.equal(s.head.numClasses, PADDED_VOCAB);
  const items = s.prepare(lama(8), 'r').items;
  assert.ok(new Set(items.map((i) => i.target)).size > 2, 'rows with different targets');
  const { loss } = await s.lossAndGrads(items);

  // the oracle's logits over all 30,592 ids, and each row's NLL of its own target, by hand
  const batch = collate(items.map((i) => i.ex), lm.info);
  const feeds = batchFeeds(batch, items.length, batch.ids[0]!.length, lm.info);
  const ow = oracleWeights(lm);
  const o = tfOps;
  const table = await s.encoder!.table();
  const logits = tf.tidy(() => {
    const t = (h: HostTensor, d: 'int32' | 'float32') => tf.tensor(h.data as Float32Array, h.shape, d);
    const embeds = lm.fns.embed(o, ow.w, t(feeds.ids!, 'int32'));
    const pseudo = tf.gather(tf.tensor(table.data, table.shape), t(feeds.pseudo_index!, 'int32'));
    const mask = t(feeds.pseudo_mask!, 'float32');
    const spliced = tf.add(tf.mul(embeds, tf.sub(1, mask)), tf.mul(pseudo, mask));
    const { hidden } = lm.fns.hidden(o, ow.w, { embeds: spliced, attentionMask: t(feeds.attention_mask!, 'int32'), tokenTypeIds: t(feeds.token_type_ids!, 'int32') });
    return lm.fns.logits(o, ow.w, rowsAt(o, hidden, t(feeds.positions!, 'int32'))).arraySync() as number[][];
  });
  ow.dispose();
  assert.equal(logits[0]!.length, PADDED_VOCAB);
  const nll = logits.map((row, i) => -logSoftmaxRow(row)[items[i]!.target]!);
  const want = nll.reduce((a, b) => a + b, 0) / nll.length;
  assert.ok(Math.abs(loss - want) < 1e-4 * Math.max(1, want), `program loss ${loss} vs oracle cross-entropy ${want}`);
  // single-row batches: each row's own loss, so a wrong target offset in any row would show
  for (let i = 1; i < items.length; i += 3) {
    const one = await s.lossAndGrads([items[i]!]);
    assert.ok(Math.abs(one.loss - nll[i]!) < 2e-3 * Math.max(1, nll[i]!), `row ${i}: ${one.loss} vs ${nll[i]}`);
  }

  // the padding rows win every unrestricted argmax, yet no prediction picks them
  assert.ok(logits.every((row) => row.indexOf(Math.max(...row)) >= 30522), 'unrestricted argmax is a padding id');
  const { top } = await s.rank(items, 10);
  for (const row of top) for (const id of row) assert.ok(id < 30522, `predicted id ${id} is past the tokenizer`);
  const restricted = logits.map((row) => row.slice(0, 30522).indexOf(Math.max(...row.slice(0, 30522))));
  assert.deepEqual(top.map((r) => r[0]), restricted, 'the best real token');
  const predictions = await s.predict(lama(8), 'r', 3);
  for (const p of predictions) assert.ok(!/^<\d+>$/.test(p.prediction), `prediction ${p.prediction}`);
  lm.dispose();
});

// ---- weights loaded into a model whose programs already ran ----

test('loading a --tune-lm run into a shared model that already ran programs changes its next predictions', async () => {
  const dev = relation('P1412', 12, 'dev');
  const cfg = (over: Partial<RunConfig['optim']>) =>
    config({ model: modelDir('bert-mini-lama'), loop: { ...DEFAULT_LOOP, epochs: 1, batchSize: 8, saveEvery: 0 }, optim: { ...DEFAULT_OPTIM, ...over } });
  // the shared model (frozen) predicts with a P-tuning run first: its programs compile and run
  const sharedLm = await loadModel(modelDir('bert-mini-lama'));
  const before = await PTuningSession.create(cfg({}), sharedLm);
  const p0 = await before.predict(dev, 'dev', 3);

  // a joint run on its own copy of the model
  const runDir = tmp();
  const trainedLm = await loadModel(modelDir('bert-mini-lama'), { trainable: true });
  const joint = await PTuningSession.create(cfg({ tuneLm: true, lmLr: 1e-3 }), trainedLm);
  await joint.train({ runDir, train: lama(16), dev: relation('P1412', 8, 'dev') });
  const pTrained = await joint.predict(dev, 'dev', 3);

  const loaded = await PTuningSession.load(runDir, 'best', sharedLm);
  for (const [name, p] of sharedLm.params) assert.deepEqual(p.data, trainedLm.params.get(name)!.data, `${name} loaded`);
  const p1 = await loaded.predict(dev, 'dev', 3);
  const scores = (ps: typeof p0) => ps.flatMap((p) => p.scores.map((x) => x.score));
  const moved = Math.max(...scores(p1).map((v, i) => Math.abs(v - scores(p0)[i]!)));
  assert.ok(moved > 1e-3, `predictions did not change (max score change ${moved})`);
  assert.deepEqual(p1.map((p) => p.prediction), pTrained.map((p) => p.prediction));
  scores(p1).forEach((v, i) => assert.ok(Math.abs(v - scores(pTrained)[i]!) < 1e-5, `score ${i}: ${v} vs ${scores(pTrained)[i]}`));
  // the trained prompt encoder over the original LM weights predicts otherwise: the LM weights are what changed
  const encoderOnly = await PTuningSession.create(cfg({}), bert);
  loadParams(path.join(runDir, 'best/params.safetensors'), encoderOnly.trainedParams());
  const pEncoder = scores(await encoderOnly.predict(dev, 'dev', 3));
  const lmEffect = Math.max(...pEncoder.map((v, i) => Math.abs(v - scores(pTrained)[i]!)));
  assert.ok(lmEffect > 1e-3, `the tuned LM weights change the scores by ${lmEffect} only`);
  sharedLm.dispose();
  trainedLm.dispose();
});
