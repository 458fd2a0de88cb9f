import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import type { Ops, Program } from '../src/engine/index.js';
import { createRandomModel, loadModel } from '../src/models/load.js';
import { rowsAt, SyntheticTokenizer } from '../src/models/common.js';
import { hiddenStates, logitsAt, type TokenBatch } from '../src/models/forward.js';
import type { LanguageModel } from '../src/models/model.js';
import type { WeightOf } from '../src/models/lm.js';
import { tf, initOracle, tfOps, oracleWeights, oracleHidden, int2d, maxAbsDiff } from './oracle/index.js';
import { bert, candidateLogits, gpt2, modelDir, rand, useMiniModels } from './fixtures.js';

useMiniModels();

before(async () => {
  await initOracle();
});

const maxAbs = (a: ArrayLike<number>) => Array.from(a).reduce((m, v) => Math.max(m, Math.abs(v)), 0);

/** A padded batch of pseudo-random ids: row r has `lengths[r]` real tokens, padded on the model's side. */
function batchOf(lm: LanguageModel, lengths: number[], opts: { types?: boolean; positions?: boolean } = {}): TokenBatch {
  const s = Math.max(...lengths);
  const ids: number[][] = [];
  const attentionMask: number[][] = [];
  lengths.forEach((n, r) => {
    const row: number[] = [];
    const mask: number[] = [];
    for (let j = 0; j < s; j++) {
      const real = lm.info.paddingSide === 'right' ? j < n : j >= s - n;
      row.push(real ? 5 + ((r * 7919 + j * 104729) % Math.min(20000, lm.info.vocabSize - 5)) : lm.info.special.pad);
      mask.push(real ? 1 : 0);
    }
    ids.push(row);
    attentionMask.push(mask);
  });
  const batch: TokenBatch = { ids, attentionMask };
  if (opts.types) batch.tokenTypeIds = ids.map((row) => row.map((_, j) => (j > s / 2 ? 1 : 0)));
  if (opts.positions) batch.positionIds = ids.map((row) => row.map((_, j) => j));
  return batch;
}

test('program hidden states equal the oracle on padded batches (BERT right padding + token types, GPT-2 left padding, explicit positions)', async (t) => {
  for (const [lm, opts] of [[bert, { types: true }], [gpt2, {}], [gpt2, { positions: true }]] as const) {
    const batch = batchOf(lm, [13, 9, 11], opts);
    const got = await hiddenStates(lm, batch);
    const { w, dispose } = oracleWeights(lm);
    const want = tf.tidy(() => {
      const h = oracleHidden(lm, w, batch);
      assert.deepEqual(got.shape, h.shape);
      return h.dataSync().slice();
    });
    dispose();
    const d = maxAbsDiff(got.data, want);
    t.diagnostic(`${lm.info.family} ${JSON.stringify(opts)}: max |program - oracle| = ${d.toExponential(2)}`);
    assert.ok(d < 1e-4, `${lm.info.family} ${JSON.stringify(opts)}: max |program - oracle| = ${d}`);
  }
});

interface GoldenItem {
  input_ids: number[];
  positions: Record<string, { top10_ids: number[]; logits_first8: number[] }>;
}

test('the oracle itself reproduces golden.json (bert-mini-lama, gpt2-mini-lama)', async () => {
  for (const lm of [bert, gpt2]) {
    const name = lm === bert ? 'bert-mini-lama' : 'gpt2-mini-lama';
    const items = (JSON.parse(fs.readFileSync(path.join(modelDir(name), 'golden.json'), 'utf8')) as { items: GoldenItem[] }).items;
    const { w, dispose } = oracleWeights(lm);
    let checked = 0;
    for (const item of items.slice(0, 2)) {
      const positions = Object.keys(item.positions).map(Number);
      const logits = tf.tidy(() => {
        const hidden = oracleHidden(lm, w, { ids: [item.input_ids] });
        return lm.fns.logits(tfOps, w, rowsAt(tfOps, hidden, tf.tensor1d([positions[0]!], 'int32'))).dataSync().slice();
      });
      const want = item.positions[String(positions[0])]!;
      want.logits_first8.forEach((v, i) => assert.ok(Math.abs(logits[i]! - v) < 1e-4, `${name} logit ${i}: ${logits[i]} vs ${v}`));
      const top = [...logits.keys()].sort((a, b) => logits[b]! - logits[a]!).slice(0, 5);
      assert.deepEqual(top, want.top10_ids.slice(0, 5), `${name} top ids`);
      checked++;
    }
    dispose();
    assert.equal(checked, 2);
  }
});

test('Llama (stories260K: GQA, interleaved RoPE) hidden states and logits equal the oracle', async (t) => {
  const lm = await loadModel(modelDir('stories260K'));
  const batch: TokenBatch = { ids: [[1, 30, 40, 50, 60, 70], [0, 0, 1, 80, 90, 100]], attentionMask: [[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]] };
  const candidates = [3, 17, 200];
  const hidden = await hiddenStates(lm, batch);
  const logits = await logitsAt(lm, batch, [{ row: 0, position: 5 }, { row: 1, position: 5 }]);
  const picked = await candidateLogits(lm, batch, [5, 5], candidates);
  const { w, dispose } = oracleWeights(lm);
  const want = tf.tidy(() => {
    const h = oracleHidden(lm, w, batch);
    const rows = rowsAt(tfOps, h, tf.tensor1d([5, 5], 'int32'));
    return {
      hidden: h.dataSync().slice(),
      logits: lm.fns.logits(tfOps, w, rows).dataSync().slice(),
      picked: lm.fns.logits(tfOps, w, rows, tf.tensor1d(candidates, 'int32')).dataSync().slice(),
    };
  });
  dispose();
  const dh = maxAbsDiff(hidden.data, want.hidden);
  const dl = maxAbsDiff([...logits[0]!, ...logits[1]!], want.logits);
  const dc = maxAbsDiff(picked, want.picked);
  t.diagnostic(`max |program - oracle|: hidden ${dh.toExponential(2)}, logits ${dl.toExponential(2)}, candidate logits ${dc.toExponential(2)}`);
  assert.ok(dh < 1e-4, `llama hidden: max |program - oracle| = ${dh}`);
  assert.ok(dl < 1e-4 && dc < 1e-4, `llama logits: max |program - oracle| = ${dl} (full), ${dc} (candidates)`);
  lm.dispose();
});

/** sum(hidden(embeds) · weights): written once over the op vocabulary, for the program and for the oracle. */
function hiddenDot<T>(o: Ops<T>, lm: LanguageModel, w: WeightOf<T>, embeds: T, weights: T, batch: { mask: T; types?: T; positions?: T }): T {
  const { hidden } = lm.fns.hidden(o, w, {
    embeds,
    attentionMask: batch.mask,
    ...(batch.types && { tokenTypeIds: batch.types }),
    ...(batch.positions && { positionIds: batch.positions }),
  });
  const n = o.shape(hidden).reduce((a, b) => a * b, 1);
  return o.reshape(o.sum(o.reshape(o.mul(hidden, weights), [1, n]), 1), [1]);
}

/** The program's value and gradient of `hiddenDot` with respect to the input embeddings. */
async function programEmbedsGrad(lm: LanguageModel, batch: TokenBatch, embeds: Float32Array, weights: Float32Array): Promise<{ loss: number; grad: Float32Array }> {
  const [b, s, h] = [batch.ids.length, batch.ids[0]!.length, lm.info.hiddenSize];
  const grid = (rows: number[][]) => ({ data: Int32Array.from(rows.flat()), shape: [b, s] });
  const program: Program = {
    key: `test hidden-dot ${b}x${s} t${+!!batch.tokenTypeIds} p${+!!batch.positionIds}`,
    build: (pb) => {
      const ints = (name: string) => pb.input(name, [b, s], 'int32');
      const e = pb.input('embeds', [b, s, h]);
      const loss = hiddenDot(pb.o, lm, lm.weights(pb), e, pb.input('weights', [b, s, h]), {
        mask: ints('attention_mask'),
        ...(batch.tokenTypeIds && { types: ints('token_type_ids') }),
        ...(batch.positionIds && { positions: ints('position_ids') }),
      });
      return { outputs: { loss }, loss, wrt: { embeds: e } };
    },
  };
  const r = await lm.run(program, {
    embeds: { data: embeds, shape: [b, s, h] },
    weights: { data: weights, shape: [b, s, h] },
    attention_mask: grid(batch.attentionMask!),
    ...(batch.tokenTypeIds && { token_type_ids: grid(batch.tokenTypeIds) }),
    ...(batch.positionIds && { position_ids: grid(batch.positionIds) }),
  });
  return { loss: r.outputs.loss!.data[0] as number, grad: r.wrt.embeds!.data as Float32Array };
}

/** The oracle's input embeddings of a batch and gradient of `hiddenDot` with respect to them. */
function oracleEmbedsGrad(lm: LanguageModel, batch: TokenBatch, weights: Float32Array): { embeds: Float32Array; grad: Float32Array } {
  const { w, dispose } = oracleWeights(lm);
  const out = tf.tidy(() => {
    const embeds = lm.fns.embed(tfOps, w, int2d(batch.ids));
    const wt = tf.tensor(weights, embeds.shape, 'float32');
    const inputs = {
      mask: int2d(batch.attentionMask!),
      ...(batch.tokenTypeIds && { types: int2d(batch.tokenTypeIds) }),
      ...(batch.positionIds && { positions: int2d(batch.positionIds) }),
    };
    const grad = tf.grad((e: tf.Tensor) => hiddenDot(tfOps, lm, w, e, wt, inputs))(embeds);
    return { embeds: embeds.dataSync().slice() as Float32Array, grad: grad.dataSync().slice() as Float32Array };
  });
  dispose();
  return out;
}

test('program gradients with respect to the input embeddings equal the oracle (bert-mini-lama, gpt2-mini-lama)', async (t) => {
  for (const lm of [bert, gpt2]) {
    const batch = batchOf(lm, [12, 7], { types: lm === bert });
    const weights = rand(2 * 12 * lm.info.hiddenSize, 3);
    const want = oracleEmbedsGrad(lm, batch, weights);
    const { grad } = await programEmbedsGrad(lm, batch, want.embeds, weights);
    const rel = maxAbsDiff(grad, want.grad) / maxAbs(want.grad);
    t.diagnostic(`${lm.info.family}: relative gradient difference ${rel.toExponential(2)}`);
    assert.ok(rel < 1e-5, `${lm.info.family}: relative gradient difference ${rel}`);
  }
});

test('program embedding gradients match central finite differences on tiny random BERT, GPT-2 and Llama', async (t) => {
  const tok = new SyntheticTokenizer(40);
  const cfg = { vocabSize: 40, hiddenSize: 8, numLayers: 2, numHeads: 2, intermediateSize: 16, maxPositions: 16 };
  for (const family of ['bert', 'gpt2', 'llama'] as const) {
    const lm = createRandomModel(family, family === 'llama' ? { ...cfg, numHeads: 4, numKvHeads: 2 } : cfg, 7, tok);
    const batch: TokenBatch = { ids: [[2, 7, 8, 9, 4, 3], [2, 10, 11, 4, 3, 0]], attentionMask: [[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0]] };
    const weights = rand(2 * 6 * 8, 11);
    // embeddings of unit scale, so that the loss moves measurably with a step of 1e-3
    const embeds = rand(2 * 6 * 8, 5);
    const { grad: g } = await programEmbedsGrad(lm, batch, embeds, weights);
    let worst = 0;
    for (const i of [0, 9, 27, 50, 77, 95]) {
      const eps = 1e-3;
      const at = async (d: number) => {
        const x = Float32Array.from(embeds);
        x[i] = x[i]! + d;
        return (await programEmbedsGrad(lm, batch, x, weights)).loss;
      };
      const fd = ((await at(eps)) - (await at(-eps))) / (2 * eps);
      const err = Math.abs(fd - g[i]!) / Math.max(1e-2, Math.abs(fd) + Math.abs(g[i]!));
      worst = Math.max(worst, err);
      assert.ok(err < 2e-2, `${family} embeds[${i}]: finite difference ${fd} vs gradient ${g[i]}`);
    }
    t.diagnostic(`${family}: largest relative difference to finite differences ${worst.toExponential(2)}`);
    assert.ok(g.some((x) => Math.abs(x) > 1e-6), `${family}: gradient is all zero`);
    lm.dispose();
  }
});

/** mean(logits at (row, position) · a ramp over the vocabulary): a loss that reaches every weight. */
function rampLoss<T>(o: Ops<T>, lm: LanguageModel, w: WeightOf<T>, ids: T, mask: T, positions: number[]): T {
  const v = lm.info.vocabSize;
  const { hidden } = lm.fns.hidden(o, w, { embeds: lm.fns.embed(o, w, ids), attentionMask: mask });
  const logits = lm.fns.logits(o, w, rowsAt(o, hidden, o.constInt(positions, [positions.length])));
  const ramp = o.constFloat(Float32Array.from({ length: v }, (_, i) => -1 + (2 * i) / (v - 1)), [v]);
  return o.reshape(o.mean(o.reshape(o.mul(logits, ramp), [1, positions.length * v]), 1), [1]);
}

test('program weight gradients (the LM trains: body and output head) equal the oracle for every weight', async (t) => {
  const cfg = { vocabSize: 60, hiddenSize: 16, numLayers: 2, numHeads: 2, intermediateSize: 32, maxPositions: 24 };
  const tok = new SyntheticTokenizer(60);
  for (const family of ['bert', 'gpt2', 'llama'] as const) {
    const lm = createRandomModel(family, family === 'llama' ? { ...cfg, numHeads: 4, numKvHeads: 2 } : cfg, 5, tok, { trainable: true });
    const batch = batchOf(lm, [9, 6]);
    const [b, s] = [2, 9];
    const positions = lm.info.paddingSide === 'right' ? [4, 3] : [8, 8];
    const program: Program = {
      key: 'test ramp loss',
      build: (pb) => {
        const loss = rampLoss(pb.o, lm, lm.weights(pb), pb.input('ids', [b, s], 'int32'), pb.input('attention_mask', [b, s], 'int32'), positions);
        return { outputs: { loss }, loss };
      },
    };
    const r = await lm.run(program, {
      ids: { data: Int32Array.from(batch.ids.flat()), shape: [b, s] },
      attention_mask: { data: Int32Array.from(batch.attentionMask!.flat()), shape: [b, s] },
    });
    assert.equal(r.graded.length, lm.params.size, `${family}: every weight has a gradient`);

    const { w, vars, dispose } = oracleWeights(lm, true);
    const names = [...vars.keys()];
    const { value, grads } = tf.variableGrads(() => tf.sum(rampLoss(tfOps, lm, w, int2d(batch.ids), int2d(batch.attentionMask!), positions)) as tf.Scalar);
    const loss = value.dataSync()[0]!;
    assert.ok(Math.abs(loss - (r.outputs.loss!.data[0] as number)) < 1e-5 * Math.max(1, Math.abs(loss)), `${family} loss`);
    let worst = 0;
    for (const name of names) {
      const want = grads[vars.get(name)!.name]!.dataSync();
      const got = lm.params.get(name)!.grad;
      const rel = maxAbsDiff(got, want) / Math.max(maxAbs(want), 1e-6);
      worst = Math.max(worst, rel);
      assert.ok(rel < 1e-4, `${family} ${name}: relative gradient difference ${rel}`);
    }
    t.diagnostic(`${family}: ${names.length} weights, largest relative gradient difference ${worst.toExponential(2)}`);
    tf.dispose([value, ...Object.values(grads)]);
    dispose();
    lm.dispose();
  }
});
