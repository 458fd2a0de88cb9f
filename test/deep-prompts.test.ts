/**
 * Deep prompts (prefix keys and values at every layer), prompt tuning and the linear head: gradients against
 * finite differences and the tfjs oracle, what a zero or masked-out prefix does, generation with the prefix in
 * the KV cache, and training runs through PTuningSession.
 */
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Parameter } from '../src/engine/tensor.js';
import { createRandomModel, loadModel } from '../src/models/load.js';
import { generate, argmax } from '../src/models/generate.js';
import type { LanguageModel } from '../src/models/model.js';
import { makeHead } from '../src/prompt/heads.js';
import { PrefixEncoder } from '../src/prompt/prefix.js';
import { PTuningPrograms } from '../src/prompt/programs.js';
import { collate, renderExample } from '../src/prompt/render.js';
import { parseTemplate } from '../src/prompt/template.js';
import { PTuningSession, DEFAULT_LOOP, DEFAULT_OPTIM, type RunConfig } from '../src/train/session.js';
import { initOracle, int2d, oracleWeights, tf, tfOps } from './oracle/index.js';
import { modelDir } from './fixtures.js';

const SMALL = { hiddenSize: 32, numLayers: 2, numHeads: 4, intermediateSize: 64, maxPositions: 64, vocabSize: 120 };
let bert: LanguageModel;
let gpt2: LanguageModel;
/** relative attention both ways (c2p, p2c), log buckets: the prefix meets only the content term */
let deberta: LanguageModel;
/** a global then a local layer (window 4): the prefix has no position, every query sees it */
let modernbert: LanguageModel;

before(async () => {
  await initOracle();
  bert = createRandomModel('bert', SMALL, 3);
  gpt2 = createRandomModel('gpt2', SMALL, 4);
  deberta = createRandomModel('deberta-v2', { ...SMALL, embeddingSize: 32, positionBuckets: 8, maxRelativePositions: 16, shareAttKey: false }, 5);
  modernbert = createRandomModel('modernbert', { ...SMALL, localAttention: 4 }, 6);
});

const template = (lm: LanguageModel) => parseTemplate(lm.info.kind === 'masked' ? '{x} [MASK] .' : '{x} [MASK]');
const RECORDS = [{ x: 'w10 w11 w12' }, { x: 'w20 w21' }, { x: 'w30 w31 w32 w33' }];

function batchOf(lm: LanguageModel) {
  const t = template(lm);
  return collate(RECORDS.map((r, i) => renderExample(t, r, lm.tokenizer, lm.info, { maxLength: 32, index: i })!), lm.info);
}

const answerHead = (lm: LanguageModel) => makeHead({ kind: 'answer', answerField: 'y' }, lm.tokenizer, lm.info.vocabSize);

/** The P-tuning loss with a prefix, computed by the oracle from the same functions (unpadded lengths). */
function oracleLoss(lm: LanguageModel, prefix: PrefixEncoder, targets: number[], table: tf.Tensor): tf.Scalar {
  const batch = batchOf(lm);
  const { w } = oracleWeights(lm);
  const o = tfOps;
  const rows = batch.ids.length;
  const past = prefix.pastOf(o, table, rows);
  const out = lm.fns.hidden(o, w, {
    embeds: lm.fns.embed(o, w, int2d(batch.ids)),
    attentionMask: int2d(batch.attentionMask),
    ...(lm.info.tokenTypes && { tokenTypeIds: int2d(batch.tokenTypeIds) }),
    past,
  });
  const [b, s, h] = out.hidden.shape as [number, number, number];
  const picked = tf.gather(tf.reshape(out.hidden, [b * s, h]), tf.tensor1d(batch.answerPositions.map((p, r) => r * s + p), 'int32'));
  const logp = tf.logSoftmax(lm.fns.logits(o, w, picked));
  const v = logp.shape[1]!;
  return tf.neg(tf.mean(tf.gather(tf.reshape(logp, [-1]), tf.tensor1d(targets.map((t, i) => i * v + t), 'int32')))) as tf.Scalar;
}

for (const name of ['bert', 'gpt2', 'deberta-v2', 'modernbert'] as const) {
  test(`${name}: prefix gradients equal the oracle's and central finite differences`, async () => {
    const lm = { bert, gpt2, 'deberta-v2': deberta, modernbert }[name];
    const prefix = new PrefixEncoder({ numVirtualTokens: 3, projection: false, seed: 5 }, lm.info);
    const programs = new PTuningPrograms(lm, null, answerHead(lm), prefix);
    const targets = [11, 22, 33];
    const { loss, graded } = await programs.lossAndGrads(batchOf(lm), targets);
    const table = prefix.params.get('embedding.weight')!;
    assert.deepEqual(graded, [table]);
    const expected = tf.tidy(() => {
      const t = tf.variable(tf.tensor(table.data, table.shape));
      const g = tf.variableGrads(() => oracleLoss(lm, prefix, targets, t), [t]);
      const out = { loss: g.value.dataSync()[0]!, grad: Object.values(g.grads)[0]!.dataSync() as Float32Array };
      t.dispose();
      return out;
    });
    assert.ok(Math.abs(loss - expected.loss) < 1e-5, `loss ${loss} vs ${expected.loss}`);
    let scale = 0;
    for (const x of expected.grad) scale = Math.max(scale, Math.abs(x));
    table.grad.forEach((g, i) => assert.ok(Math.abs(g - expected.grad[i]!) <= 1e-4 * scale + 1e-7, `grad ${i}: ${g} vs ${expected.grad[i]}`));
    // central differences of the program's own loss on a few entries (keys and values of both layers)
    const eps = 1e-2;
    for (const i of [0, 7, prefix.kvDim + 3, 2 * prefix.kvDim + 5, table.size - 1]) {
      const x = table.data[i]!;
      table.data[i] = x + eps;
      const up = (await programs.lossAndGrads(batchOf(lm), targets)).loss;
      table.data[i] = x - eps;
      const down = (await programs.lossAndGrads(batchOf(lm), targets)).loss;
      table.data[i] = x;
      const fd = (up - down) / (2 * eps);
      assert.ok(Math.abs(fd - expected.grad[i]!) < 2e-3 + 0.02 * Math.abs(fd), `entry ${i}: finite difference ${fd} vs ${expected.grad[i]}`);
    }
  });
}

test('prefix invariants: masked-out slots change nothing; zero keys and values are not neutral (each query gives them weight e⁰)', async () => {
  for (const lm of [bert, gpt2, deberta, modernbert]) {
    const head = answerHead(lm);
    const plain = await new PTuningPrograms(lm, null, head).scores(batchOf(lm));
    const prefix = new PrefixEncoder({ numVirtualTokens: 4, projection: false, seed: 1 }, lm.info);
    prefix.params.get('embedding.weight')!.data.fill(0);
    const zero = await new PTuningPrograms(lm, null, head, prefix).scores(batchOf(lm));
    let changed = 0;
    zero.data.forEach((x, i) => (changed = Math.max(changed, Math.abs(x - plain.data[i]!))));
    assert.ok(changed > 1e-4, `${lm.info.family}: a zero prefix changed the logits by only ${changed}`);
    // the same zero prefix through the oracle: the program computes exactly that
    const oracle = tf.tidy(() => {
      const batch = batchOf(lm);
      const { w } = oracleWeights(lm);
      const past = prefix.pastOf(tfOps, tf.zeros([4, prefix.width]), batch.ids.length);
      const out = lm.fns.hidden(tfOps, w, {
        embeds: lm.fns.embed(tfOps, w, int2d(batch.ids)), attentionMask: int2d(batch.attentionMask),
        ...(lm.info.tokenTypes && { tokenTypeIds: int2d(batch.tokenTypeIds) }), past,
      });
      const [b, s, h] = out.hidden.shape as [number, number, number];
      const picked = tf.gather(tf.reshape(out.hidden, [b * s, h]), tf.tensor1d(batch.answerPositions.map((p, r) => r * s + p), 'int32'));
      return lm.fns.logits(tfOps, w, picked).dataSync() as Float32Array;
    });
    oracle.forEach((x, i) => assert.ok(Math.abs(x - zero.data[i]!) < 1e-4, `${lm.info.family} logit ${i}`));
    // slots masked out: the attention never sees them and positions do not move
    const masked = tf.tidy(() => {
      const batch = batchOf(lm);
      const { w } = oracleWeights(lm);
      const past = prefix.pastOf(tfOps, tf.randomNormal([4, prefix.width]), batch.ids.length);
      const out = lm.fns.hidden(tfOps, w, {
        embeds: lm.fns.embed(tfOps, w, int2d(batch.ids)), attentionMask: int2d(batch.attentionMask),
        ...(lm.info.tokenTypes && { tokenTypeIds: int2d(batch.tokenTypeIds) }),
        past: { layers: past.layers, mask: tf.zeros([batch.ids.length, 4], 'int32') },
      });
      const [b, s, h] = out.hidden.shape as [number, number, number];
      const picked = tf.gather(tf.reshape(out.hidden, [b * s, h]), tf.tensor1d(batch.answerPositions.map((p, r) => r * s + p), 'int32'));
      return lm.fns.logits(tfOps, w, picked).dataSync() as Float32Array;
    });
    masked.forEach((x, i) => assert.ok(Math.abs(x - plain.data[i]!) < 1e-4, `${lm.info.family} masked logit ${i}: ${x} vs ${plain.data[i]}`));
  }
});

test('the projection MLP (PEFT prefix_projection) computes the table; its parameters all get gradients', async () => {
  const prefix = new PrefixEncoder({ numVirtualTokens: 2, projection: true, hiddenSize: 16, seed: 2 }, gpt2.info);
  assert.deepEqual([...prefix.params.keys()], ['embedding.weight', 'transform.0.weight', 'transform.0.bias', 'transform.2.weight', 'transform.2.bias']);
  assert.deepEqual(prefix.params.get('embedding.weight')!.shape, [2, 32]);
  const table = await prefix.table();
  assert.deepEqual(table.shape, [2, 2 * 2 * 32]);
  const { graded } = await new PTuningPrograms(gpt2, null, answerHead(gpt2), prefix).lossAndGrads(batchOf(gpt2), [1, 2, 3]);
  assert.equal(graded.length, 5);
  for (const p of graded) assert.ok(p.grad.some((g) => g !== 0), p.name);
});

test('generation with the prefix in the KV cache equals greedy recomputation with the prefix (stories260K, GQA)', async () => {
  const lm = await loadModel(modelDir('stories260K'));
  const prefix = new PrefixEncoder({ numVirtualTokens: 3, projection: false, seed: 7 }, lm.info);
  const table = await prefix.table();
  const prompt = [1, ...lm.tokenizer.encode('Once upon a time')];
  const cached = await generate(lm, prompt, { maxNewTokens: 6, stopAtEos: false, prefix: table });
  // recompute: the answer head's scores over the whole sequence so far, prefix in every run
  const head = answerHead(lm);
  const programs = new PTuningPrograms(lm, null, head, prefix);
  const seq = [...prompt];
  for (let i = 0; i < 6; i++) {
    const ex = { ids: seq.slice(), pseudoPositions: [], pseudoIndex: [], answerPosition: seq.length - 1 };
    const scores = await programs.scores(collate([ex], lm.info));
    seq.push(argmax(scores.data));
  }
  assert.deepEqual(cached, seq.slice(prompt.length));
});

function config(lm: string, over: Partial<RunConfig>): RunConfig {
  return {
    version: 1, model: lm, template: '{sentence} It was [MASK] .',
    head: { kind: 'label', labelField: 'label', labelWords: { '0': 'terrible', '1': 'great' } },
    encoder: { type: 'lstm', seed: 1 }, maxLength: 48, skipTooLong: false,
    loop: { ...DEFAULT_LOOP, epochs: 6, batchSize: 4, saveEvery: 0, logEvery: 1 }, optim: { ...DEFAULT_OPTIM, lr: 1e-2 },
    ...over,
  };
}

const SST = [
  { sentence: 'a gorgeous , witty , seductive movie', label: '1' }, { sentence: 'the acting is terrible and flat', label: '0' },
  { sentence: 'a wonderful and moving film', label: '1' }, { sentence: 'dull , boring and far too long', label: '0' },
  { sentence: 'one of the best films of the year', label: '1' }, { sentence: 'a mess of a movie', label: '0' },
  { sentence: 'charming and funny', label: '1' }, { sentence: 'painfully bad', label: '0' },
];

/** Mean cross-entropy over the records, without dropout (per-batch training losses are too noisy to compare). */
async function setLoss(s: PTuningSession, records: Record<string, unknown>[]): Promise<number> {
  const { items } = s.prepare(records, 'sst');
  const { data, shape } = await s.scores(items);
  const k = shape[1]!;
  return -items.reduce((sum, it, i) => sum + data[i * k + it.target]!, 0) / items.length;
}

test('PTuningSession trains deep prompts, prompt tuning (rows from words) and a linear head; checkpoints hold their parameters', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ptune-methods-'));
  const lm = await loadModel(modelDir('bert-mini-lama'));
  try {
    const cases: [string, Partial<RunConfig>, string[]][] = [
      ['prefix', { method: 'prefix', prefix: { numVirtualTokens: 4, projection: false } }, ['prefix.embedding.weight']],
      ['prefix-proj', { method: 'prefix', prefix: { numVirtualTokens: 4, projection: true, hiddenSize: 32, dropout: 0.1 } }, ['prefix.embedding.weight', 'prefix.transform.0.weight']],
      ['prompt-tuning', { method: 'prompt-tuning', promptTuning: { numVirtualTokens: 5, initFromWords: 'the review says' } }, ['encoder.embedding.weight']],
      ['linear', { template: '{sentence} [P*3] [MASK]', head: { kind: 'linear', labelField: 'label', labels: ['0', '1'], seed: 3 } }, ['head.weight', 'head.bias', 'encoder.embedding.weight']],
    ];
    for (const [name, over, names] of cases) {
      const cfg = config(modelDir('bert-mini-lama'), over);
      const s = await PTuningSession.create(cfg, lm);
      if (name === 'prompt-tuning') {
        // PEFT layout: the five rows come first, before [CLS], and start as the embeddings of the words
        const { items } = s.prepare(SST.slice(0, 1), 'sst');
        assert.deepEqual(items[0]!.ex.pseudoPositions, [0, 1, 2, 3, 4]);
        assert.equal(items[0]!.ex.ids[5], lm.info.special.cls);
        const emb = s.encoder!.params.get('embedding.weight')!;
        const theId = lm.tokenizer.encode('the')[0]!;
        const row = lm.params.get('bert.embeddings.word_embeddings.weight')!.data.subarray(theId * 128, theId * 128 + 128);
        assert.deepEqual(Array.from(emb.data.subarray(0, 128)), Array.from(row));
        assert.deepEqual(Array.from(emb.data.subarray(3 * 128, 4 * 128)), Array.from(row), 'the words repeat to fill the rows');
      }
      const runDir = path.join(dir, name);
      const before = await setLoss(s, SST);
      await s.train({ runDir, train: SST, dev: SST.slice(0, 4), restoreBest: false });
      const after = await setLoss(s, SST);
      assert.ok(after < before, `${name}: training-set loss ${before} → ${after}`);
      const stored = fs.readFileSync(path.join(runDir, 'last', 'params.safetensors'));
      for (const n of names) assert.ok(stored.includes(Buffer.from(n)), `${name}: last/ holds ${n}`);
      const reloaded = await PTuningSession.load(runDir, 'last', lm);
      const a = await s.predict(SST, 'sst', 2);
      const b = await reloaded.predict(SST, 'sst', 2);
      assert.deepEqual(b.map((p) => p.prediction), a.map((p) => p.prediction), `${name}: reloaded predictions`);
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('a prefix-only template in PEFT layout puts the virtual tokens before [CLS]; [P] with deep prompts is refused', async () => {
  const lm = await loadModel(modelDir('bert-mini-lama'));
  const s = await PTuningSession.create(config(modelDir('bert-mini-lama'), { template: '[P*3] {sentence} It was [MASK] .', peftLayout: true }), lm);
  const { items } = s.prepare(SST.slice(0, 1), 'sst');
  assert.deepEqual(items[0]!.ex.pseudoPositions, [0, 1, 2]);
  assert.equal(items[0]!.ex.ids[3], lm.info.special.cls);
  const plain = await PTuningSession.create(config(modelDir('bert-mini-lama'), { template: '[P*3] {sentence} It was [MASK] .' }), lm);
  assert.deepEqual(plain.prepare(SST.slice(0, 1), 'sst').items[0]!.ex.pseudoPositions, [1, 2, 3], 'without it: after [CLS], as before');
  await assert.rejects(
    PTuningSession.create(config(modelDir('bert-mini-lama'), { template: '{sentence} [P*2] [MASK]', method: 'prefix', prefix: { numVirtualTokens: 2, projection: false } }), lm),
    /method "prefix" learns its own prompt: the template must have no \[P\] tokens/,
  );
  void Parameter;
});

test('windowed decoders (Gemma 2, Mistral): a left-padded row sees its prefix as the row alone, unpadded, does (the window counts positions, not padding)', async () => {
  for (const name of ['gemma2', 'mistral']) {
    const lm = await loadModel(modelDir(`tiny/${name}`));
    const t = parseTemplate('{x} [MASK]');
    const prefix = new PrefixEncoder({ numVirtualTokens: 3, projection: false, seed: 2 }, lm.info);
    const table = prefix.params.get('embedding.weight')!;
    const records = [{ x: 'the cat sat on the mat by the door of the house' }, { x: 'a dog' }];
    const batch = collate(records.map((r, i) => renderExample(t, r, lm.tokenizer, lm.info, { maxLength: 32, index: i })!), lm.info);
    const scores = await new PTuningPrograms(lm, null, answerHead(lm), prefix).scores(batch);
    const k = scores.shape[1]!;
    for (let row = 0; row < records.length; row++) {
      const mask = batch.attentionMask[row]!;
      const pads = mask.indexOf(1);
      assert.ok(row === 0 || pads >= 4, `${name}: row ${row} is padded by ${pads} (the test needs more than the window)`);
      const ids = batch.ids[row]!.slice(pads);
      const alone = tf.tidy(() => {
        const { w } = oracleWeights(lm);
        const past = prefix.pastOf(tfOps, tf.tensor2d(table.data, table.shape as [number, number]), 1);
        const out = lm.fns.hidden(tfOps, w, { embeds: lm.fns.embed(tfOps, w, int2d([ids])), attentionMask: int2d([ids.map(() => 1)]), past });
        const s = ids.length;
        const picked = tf.gather(tf.reshape(out.hidden, [s, -1]), tf.tensor1d([batch.answerPositions[row]! - pads], 'int32'));
        return lm.fns.logits(tfOps, w, picked).dataSync() as Float32Array;
      });
      let diff = 0;
      alone.forEach((x, i) => (diff = Math.max(diff, Math.abs(x - scores.data[row * k + i]!))));
      assert.ok(diff < 1e-3, `${name} row ${row} (${pads} pads): logits differ from the unpadded row by ${diff}`);
    }
  }
});
