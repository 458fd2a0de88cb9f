import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { tf, initEngine } from '../src/engine/index.js';
import { createRandomModel, loadModel, resolveEngine } from '../src/models/load.js';
import { BertLM } from '../src/models/bert.js';
import { OrtLM } from '../src/models/ort.js';
import { Graph, OnnxOps, OrtSession, WeightFile } from '../src/engine/onnx/index.js';
import { SyntheticTokenizer } from '../src/models/common.js';
import type { LanguageModel, LmBatch } from '../src/models/lm.js';
import { PTuningSession, DEFAULT_LOOP, DEFAULT_OPTIM, type RunConfig } from '../src/train/session.js';
import { readRecords } from '../src/data/read.js';
import { bert, gpt2, modelDir, shared, useMiniModels } from './fixtures.js';

useMiniModels();

/** A padded batch of pseudo-random ids: row r has `lengths[r]` real tokens, padded on the model's side. */
function batchOf(lm: LanguageModel, lengths: number[], opts: { types?: boolean; positions?: boolean } = {}) {
  const s = Math.max(...lengths);
  const ids: number[] = [];
  const mask: number[] = [];
  lengths.forEach((n, r) => {
    for (let j = 0; j < s; j++) {
      const real = lm.info.paddingSide === 'right' ? j < n : j >= s - n;
      ids.push(real ? 5 + ((r * 7919 + j * 104729) % Math.min(20000, lm.info.vocabSize - 5)) : lm.info.special.pad);
      mask.push(real ? 1 : 0);
    }
  });
  const b = lengths.length;
  const idT = tf.tensor2d(ids, [b, s], 'int32');
  const batch: LmBatch = { embeds: lm.embed(idT), attentionMask: tf.tensor2d(mask, [b, s], 'int32') };
  if (opts.types) batch.tokenTypeIds = tf.tensor2d(ids.map((_, i) => (i % s > s / 2 ? 1 : 0)), [b, s], 'int32');
  if (opts.positions) batch.positionIds = tf.tensor2d(ids.map((_, i) => i % s), [b, s], 'int32');
  return batch;
}

function maxAbsDiff(a: tf.Tensor, b: tf.Tensor): number {
  return tf.tidy(() => tf.max(tf.abs(tf.sub(a, b))).dataSync()[0]!);
}

function maxAbs(a: tf.Tensor): number {
  return tf.tidy(() => tf.max(tf.abs(a)).dataSync()[0]!);
}

test('ORT hidden states equal the tfjs model on padded batches (BERT right padding + token types, GPT-2 left padding + positions)', () => {
  const before = tf.memory().numTensors;
  for (const [lm, opts] of [[bert, { types: true }], [gpt2, {}], [gpt2, { positions: true }]] as const) {
    const ort = new OrtLM(lm);
    tf.tidy(() => {
      const batch = batchOf(lm, [13, 9, 11], opts);
      const want = lm.run(batch);
      const got = ort.run(batch);
      assert.deepEqual(got.shape, want.shape);
      const d = maxAbsDiff(got, want);
      assert.ok(d < 1e-4, `${lm.info.family}: max |ORT - tfjs| = ${d}`);
    });
    ort.resetSessions();
  }
  assert.equal(tf.memory().numTensors, before);
});

interface GoldenItem {
  input_ids: number[];
  positions: Record<string, { top10_ids: number[]; logits_first8: number[] }>;
}

test('ORT logits match golden.json (bert-mini-lama, gpt2-mini-lama) through loadModel with engine "ort"', async () => {
  for (const name of ['bert-mini-lama', 'gpt2-mini-lama']) {
    const lm = await loadModel(modelDir(name), { engine: 'ort' });
    assert.ok(lm instanceof OrtLM);
    const items = (JSON.parse(fs.readFileSync(path.join(modelDir(name), 'golden.json'), 'utf8')) as { items: GoldenItem[] }).items;
    let checked = 0;
    for (const item of items) {
      const ids = item.input_ids;
      for (const [pos, want] of Object.entries(item.positions)) {
        const logits: Float32Array = tf.tidy(() => {
          const idT = tf.tensor2d([ids], [1, ids.length], 'int32');
          const hidden = lm.run({ embeds: lm.embed(idT), attentionMask: tf.onesLike(idT) });
          return lm.logitsAt(hidden, tf.tensor1d([Number(pos)], 'int32')).dataSync() as Float32Array;
        });
        want.logits_first8.forEach((v, i) => assert.ok(Math.abs(logits[i]! - v) < 1e-4, `${name} pos ${pos} logit ${i}: ${logits[i]} vs ${v}`));
        const top: number[] = [...logits.keys()].sort((a, b) => logits[b]! - logits[a]!).slice(0, 10);
        assert.deepEqual(top.slice(0, 5), want.top10_ids.slice(0, 5), `${name} pos ${pos} top ids`);
        checked++;
      }
    }
    assert.ok(checked >= 5);
    lm.dispose();
  }
});

test('ORT Llama (stories260K, GQA + interleaved RoPE) hidden states and logits equal tfjs', async () => {
  const lm = await loadModel(modelDir('stories260K'), { engine: 'tfjs' });
  const ort = new OrtLM(lm);
  tf.tidy(() => {
    const ids = tf.tensor2d([[1, 30, 40, 50, 60, 70], [0, 0, 1, 80, 90, 100]], [2, 6], 'int32');
    const batch = { embeds: lm.embed(ids), attentionMask: tf.tensor2d([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]], [2, 6], 'int32') };
    const [hOrt, hTf] = [ort.run(batch), lm.run(batch)];
    const d = maxAbsDiff(hOrt, hTf);
    assert.ok(d < 1e-4, `llama: max |ORT - tfjs| = ${d}`);
    const at = tf.tensor1d([5, 5], 'int32');
    const cand = tf.tensor1d([3, 17, 200], 'int32');
    const dl = maxAbsDiff(ort.logitsAt(hOrt, at), lm.logitsAt(hTf, at));
    const dc = maxAbsDiff(ort.logitsAt(hOrt, at, cand), lm.logitsAt(hTf, at, cand));
    assert.ok(dl < 1e-4 && dc < 1e-4, `llama logits: max |ORT - tfjs| = ${dl} (full), ${dc} (candidates)`);
  });
  ort.dispose();
});

/** Gradient of sum(hidden * w) with respect to the input embeddings. */
function embedsGrad(lm: LanguageModel, batch: LmBatch, w: tf.Tensor): tf.Tensor {
  return tf.grad((e: tf.Tensor) => tf.sum(tf.mul(lm.run({ ...batch, embeds: e }), w)))(batch.embeds);
}

test('ORT gradients with respect to the input embeddings equal tfjs gradients', () => {
  const before = tf.memory().numTensors;
  for (const lm of [bert, gpt2]) {
    const ort = new OrtLM(lm);
    tf.tidy(() => {
      const batch = batchOf(lm, [12, 7], { types: lm === bert });
      const w = tf.randomNormal(batch.embeds.shape, 0, 1, 'float32', 3);
      const want = embedsGrad(lm, batch, w);
      const got = embedsGrad(ort, batch, w);
      const rel = maxAbsDiff(got, want) / maxAbs(want);
      assert.ok(rel < 1e-5, `${lm.info.family}: relative gradient error ${rel}`);
    });
    ort.resetSessions();
  }
  assert.equal(tf.memory().numTensors, before);
});

test('ORT embedding gradients match central finite differences on tiny random BERT and GPT-2', async () => {
  await initEngine('cpu');
  const tok = new SyntheticTokenizer(40);
  const cfg = { vocabSize: 40, hiddenSize: 8, numLayers: 2, numHeads: 2, intermediateSize: 16, maxPositions: 16 };
  for (const family of ['bert', 'gpt2'] as const) {
    const ort = new OrtLM(createRandomModel(family, cfg, 7, tok));
    const ids = tf.tensor2d([[2, 7, 8, 9, 4, 3], [2, 10, 11, 4, 3, 0]], [2, 6], 'int32');
    const mask = tf.tensor2d([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0]], [2, 6], 'int32');
    const embeds = ort.embed(ids);
    const w = tf.randomNormal(embeds.shape, 0, 1, 'float32', 11);
    const loss = (e: tf.Tensor) => tf.tidy(() => tf.sum(tf.mul(ort.run({ embeds: e, attentionMask: mask }), w)).dataSync()[0]!);
    const g = tf.tidy(() => embedsGrad(ort, { embeds, attentionMask: mask }, w)).dataSync();
    const base = embeds.dataSync();
    for (const i of [0, 9, 27, 50, 77, 95]) {
      const eps = 1e-3;
      const at = (d: number) => {
        const x = Float32Array.from(base);
        x[i] = x[i]! + d;
        const t = tf.tensor(x, embeds.shape);
        const v = loss(t);
        t.dispose();
        return v;
      };
      const fd = (at(eps) - at(-eps)) / (2 * eps);
      const err = Math.abs(fd - g[i]!) / Math.max(1e-2, Math.abs(fd) + Math.abs(g[i]!));
      assert.ok(err < 2e-2, `${family} embeds[${i}]: finite difference ${fd} vs gradient ${g[i]}`);
    }
    tf.dispose([ids, mask, embeds, w]);
    ort.dispose();
  }
  await initEngine('wasm');
});

test('ORT weight gradients (full fine-tuning, body and output head) equal tfjs gradients for every weight', () => {
  const cfg = { vocabSize: 60, hiddenSize: 16, numLayers: 2, numHeads: 2, intermediateSize: 32, maxPositions: 24 };
  const tok = new SyntheticTokenizer(60);
  for (const family of ['bert', 'gpt2'] as const) {
    const tfModel = createRandomModel(family, cfg, 5, tok, { trainable: true });
    const ort = new OrtLM(createRandomModel(family, cfg, 5, tok, { trainable: true }));
    const grads = (lm: LanguageModel) => {
      const vars = [...lm.parameters().values()];
      const { value, grads: g } = tf.variableGrads(() =>
        tf.tidy(() => {
          const batch = batchOf(lm, [9, 6]);
          const hidden = lm.run(batch);
          const logits = lm.logitsAt(hidden, tf.tensor1d([4, 3], 'int32'));
          return tf.mean(tf.mul(logits, tf.linspace(-1, 1, logits.shape[1]!))) as tf.Scalar;
        }), vars);
      value.dispose();
      const names = [...lm.parameters().keys()];
      const out = new Map(names.map((n, i) => [n, g[vars[i]!.name]!]));
      return out;
    };
    const want = grads(tfModel);
    const got = grads(ort);
    assert.equal(got.size, want.size);
    for (const [name, w] of want) {
      const g = got.get(name)!;
      const scale = Math.max(maxAbs(w), 1e-6);
      const rel = maxAbsDiff(g, w) / scale;
      assert.ok(rel < 1e-4, `${family} ${name}: relative gradient error ${rel}`);
    }
    tf.dispose([...want.values(), ...got.values()]);
    tfModel.dispose();
    ort.dispose();
  }
});

test('sessions are cached per shape bucket: lengths 9..16 share one forward session', () => {
  const ort = new OrtLM(bert, { seqBucket: 8 });
  for (const n of [9, 12, 16]) tf.tidy(() => ort.run(batchOf(bert, [n, n - 1])));
  assert.equal(ort.sessionCount, 1);
  tf.tidy(() => ort.run(batchOf(bert, [5])));
  assert.equal(ort.sessionCount, 2);
  ort.resetSessions();
  assert.equal(ort.sessionCount, 0);
});

test('a byte budget evicts least recently used sessions; a gradient whose session was evicted still comes out right', () => {
  const ort = new OrtLM(bert, { maxSessionBytes: 1 });
  tf.tidy(() => {
    const batch = batchOf(bert, [10, 8]);
    const at = tf.tensor1d([3, 5], 'int32');
    const loss = (lm: LanguageModel) => (e: tf.Tensor) => tf.sum(lm.logitsAt(lm.run({ ...batch, embeds: e }), at));
    const want = tf.grad(loss(bert))(batch.embeds);
    const got = tf.grad(loss(ort))(batch.embeds);
    const rel = maxAbsDiff(got, want) / maxAbs(want);
    assert.ok(rel < 1e-4, `relative gradient error ${rel}`);
  });
  assert.equal(ort.sessionCount, 1);
  ort.resetSessions();
});

test('the engine option: explicit choice, PTUNE_ENGINE, and a one-line error for an unknown engine', async () => {
  assert.equal(resolveEngine({ engine: 'tfjs' }), 'tfjs');
  assert.equal(resolveEngine({}), 'ort');
  process.env.PTUNE_ENGINE = 'tfjs';
  try {
    assert.equal(resolveEngine({}), 'tfjs');
    const lm = await loadModel(modelDir('bert-mini-lama'));
    assert.ok(lm instanceof BertLM);
    lm.dispose();
    process.env.PTUNE_ENGINE = 'tpu';
    assert.throws(() => resolveEngine({}), /^Error: engine: expected "tfjs" or "ort", got "tpu"$/);
  } finally {
    delete process.env.PTUNE_ENGINE;
  }
});

test('a short P-tuning run on ORT follows the tfjs loss and dev P@1 curve', async () => {
  const rel = path.join(shared, 'data/lama/fact-retrieval/original/P1412');
  const train = readRecords(path.join(rel, 'train.jsonl')).slice(0, 48);
  const dev = readRecords(path.join(rel, 'dev.jsonl')).slice(0, 32);
  const config: RunConfig = {
    version: 1,
    model: modelDir('bert-mini-lama'),
    template: '[P*3] {sub_label} [P*3] [MASK] .',
    head: { kind: 'answer', answerField: 'obj_label' },
    encoder: { type: 'lstm', seed: 3 },
    maxLength: 32,
    skipTooLong: false,
    loop: { ...DEFAULT_LOOP, epochs: 2, batchSize: 8, evalEvery: 3, logEvery: 1, saveEvery: 0 },
    optim: { ...DEFAULT_OPTIM, lr: 3e-3 },
  };
  const curve = async (lm: LanguageModel) => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ptune-ort-'));
    const s = await PTuningSession.create(config, lm);
    s.train({ runDir: dir, train, dev });
    s.dispose({ keepLm: true });
    return fs.readFileSync(path.join(dir, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
  };
  const want = await curve(bert);
  const ort = new OrtLM(bert);
  const got = await curve(ort);
  ort.resetSessions();
  assert.equal(got.length, want.length);
  let losses = 0;
  let evals = 0;
  want.forEach((w, i) => {
    const g = got[i]!;
    for (const [k, v] of Object.entries(w)) {
      if (typeof v !== 'number' || /time|sec/i.test(k)) continue;
      assert.ok(Math.abs((g[k] as number) - v) <= 1e-3 * Math.max(1, Math.abs(v)), `record ${i} ${k}: ORT ${g[k]} vs tfjs ${v}`);
      if (k === 'loss') losses++;
      if (/p@1/.test(k)) evals++;
    }
  });
  assert.ok(losses >= 6 && evals >= 2, `compared ${losses} losses and ${evals} dev scores`);
});

test('frozen weights sit in one external-data file per model: shared by its sessions, removed with them, swept when its process died', () => {
  const stale = path.join(os.tmpdir(), `ptune-weights-${2 ** 22 + 7}-test`); // above Linux's pid_max: a dead process
  fs.mkdirSync(stale, { recursive: true });
  const mine = () => fs.readdirSync(os.tmpdir()).filter((n) => n.startsWith(`ptune-weights-${process.pid}-`));
  const before = mine();
  const ort = new OrtLM(bert);
  tf.tidy(() => ort.run(batchOf(bert, [5])));
  tf.tidy(() => ort.run(batchOf(bert, [12])));
  assert.equal(ort.sessionCount, 2);
  const added = mine().filter((n) => !before.includes(n));
  assert.equal(added.length, 1, 'one weight file for both sessions');
  assert.equal(fs.existsSync(stale), false, 'the dead process\'s file is swept');
  assert.ok(fs.statSync(path.join(os.tmpdir(), added[0]!, 'weights.bin')).size >= bert.info.parameterCount * 4);
  ort.resetSessions();
  assert.deepEqual(mine(), before);
});

test('serialised graphs: a weight embedded in the model and the same weight as external data give the same result', () => {
  const w = Float32Array.from({ length: 1200 }, (_, i) => Math.sin(i) / 2);
  const build = () => {
    const g = new Graph();
    const o = new OnnxOps(g);
    const x = g.input('x', [2, 3], 'float32');
    const weight = g.constant(w, [3, 400], 'float32', 'dense.weight');
    const gamma = o.constFloat(Float32Array.from({ length: 400 }, (_, i) => 1 + i / 400), [400]);
    const y = o.layerNorm(o.matmul(x, weight), gamma, o.constFloat(new Float32Array(400).fill(0.1), [400]), 1e-5);
    return { g, out: o.transpose(o.relu(y), [1, 0]) };
  };
  const feeds = { x: { data: Float32Array.of(1, 2, 3, -1, 0.5, 2), dims: [2, 3] } };
  const embedded = build();
  const inline = embedded.g.toModel({ out: embedded.out });
  assert.ok(inline.bytes.length > w.byteLength);
  const a = new OrtSession(inline.bytes).run(feeds, ['out']).out!;
  const file = new WeightFile([['dense.weight', () => w]]);
  const external = build();
  const model = external.g.toModel({ out: external.out }, [], (name) => file.place(name));
  assert.ok(model.bytes.length < inline.bytes.length - w.byteLength + 200, `the external model leaves the weight out (${model.bytes.length} bytes)`);
  const b = file.session(model.bytes, {}).run(feeds, ['out']).out!;
  file.dispose();
  assert.deepEqual(b.dims, [400, 2]);
  assert.deepEqual(Array.from(b.data), Array.from(a.data));
  assert.ok(Array.from(a.data).some((v) => v > 0));
});
