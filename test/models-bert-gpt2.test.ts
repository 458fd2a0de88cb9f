import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { initEngine, tf } from '../src/engine/index.js';
import { loadModel, createRandomModel } from '../src/models/load.js';
import type { KvCache, LanguageModel } from '../src/models/lm.js';

const shared = path.resolve(process.cwd(), '../shared/models');

interface GoldenPosition {
  top10_ids: number[];
  top10_values_float64_numpy: number[];
  logits_first8: number[];
  logits_sum_float64_numpy: number;
}
interface GoldenItem {
  text: string;
  input_ids: number[];
  mask_positions?: number[];
  label_ids?: number[];
  loss_float64_numpy: number;
  positions: Record<string, GoldenPosition>;
  logits_sum_all_positions: number;
}
function golden(model: string): GoldenItem[] {
  return (JSON.parse(fs.readFileSync(path.join(shared, model, 'golden.json'), 'utf8')) as { items: GoldenItem[] }).items;
}

let bert: LanguageModel;
let gpt2: LanguageModel;

before(async () => {
  await initEngine('wasm');
  bert = await loadModel(path.join(shared, 'bert-mini-lama'));
  gpt2 = await loadModel(path.join(shared, 'gpt2-mini-lama'));
});

after(() => {
  bert.dispose();
  gpt2.dispose();
});

/** ids of a padded batch: rows of `seqs` padded with `pad` on `side` to the longest row. */
function padBatch(seqs: number[][], pad: number, side: 'left' | 'right') {
  const s = Math.max(...seqs.map((q) => q.length));
  const ids: number[] = [];
  const mask: number[] = [];
  for (const q of seqs) {
    const fill = Array(s - q.length).fill(pad);
    const ones = Array(q.length).fill(1);
    const zeros = Array(s - q.length).fill(0);
    ids.push(...(side === 'left' ? [...fill, ...q] : [...q, ...fill]));
    mask.push(...(side === 'left' ? [...zeros, ...ones] : [...ones, ...zeros]));
  }
  return { ids: tf.tensor2d(ids, [seqs.length, s], 'int32'), mask: tf.tensor2d(mask, [seqs.length, s], 'int32'), s };
}

/** Full-vocab logits at every position of one unpadded sequence: [S][V]. */
function allLogits(lm: LanguageModel, ids: number[]): Float32Array[] {
  const flat = tf.tidy(() => {
    const idT = tf.tensor2d([ids], [1, ids.length], 'int32');
    const hidden = lm.run({ embeds: lm.embed(idT), attentionMask: tf.onesLike(idT) });
    // one row per position: [S, 1, H] with position 0 in each row
    const rows = tf.reshape(hidden, [ids.length, 1, lm.info.hiddenSize]);
    return lm.logitsAt(rows, tf.zeros([ids.length], 'int32')).dataSync() as Float32Array;
  });
  const v = lm.info.vocabSize;
  return ids.map((_, i) => flat.subarray(i * v, (i + 1) * v));
}

function logSoftmaxAt(row: Float32Array, id: number): number {
  let max = -Infinity;
  for (const x of row) max = Math.max(max, x);
  let sum = 0;
  for (const x of row) sum += Math.exp(x - max);
  return row[id]! - max - Math.log(sum);
}

function topK(row: Float32Array, k: number): number[] {
  return [...row.keys()].sort((a, b) => row[b]! - row[a]!).slice(0, k);
}

const sum = (row: Float32Array) => row.reduce((a, b) => a + b, 0);

function checkGolden(lm: LanguageModel, item: GoldenItem, loss: (logits: Float32Array[]) => number): void {
  const logits = allLogits(lm, item.input_ids);
  for (const [pos, want] of Object.entries(item.positions)) {
    const row = logits[Number(pos)]!;
    const where = `"${item.text}" position ${pos}`;
    assert.deepEqual(topK(row, 10), want.top10_ids, where);
    want.top10_ids.forEach((id, r) => {
      assert.ok(Math.abs(row[id]! - want.top10_values_float64_numpy[r]!) < 2e-4, `${where} top ${r}: ${row[id]} vs ${want.top10_values_float64_numpy[r]}`);
    });
    want.logits_first8.forEach((v, i) => assert.ok(Math.abs(row[i]! - v) < 2e-4, `${where} logit ${i}: ${row[i]} vs ${v}`));
    assert.ok(Math.abs(sum(row) - want.logits_sum_float64_numpy) < 0.25, `${where} sum ${sum(row)} vs ${want.logits_sum_float64_numpy}`);
  }
  const total = logits.reduce((a, row) => a + sum(row), 0);
  assert.ok(Math.abs(total - item.logits_sum_all_positions) < 0.25 * logits.length, `"${item.text}" all-position sum ${total}`);
  const l = loss(logits);
  assert.ok(Math.abs(l - item.loss_float64_numpy) < 1e-4, `"${item.text}" loss ${l} vs ${item.loss_float64_numpy}`);
}

test('bert-mini-lama: tokenizer ids, top-10, logits, sums and MLM loss match golden.json', () => {
  const items = golden('bert-mini-lama');
  const s = bert.info.special;
  for (const item of items) {
    assert.deepEqual([s.cls!, ...bert.tokenizer.encode(item.text), s.sep!], item.input_ids);
    // HF BertForMaskedLM loss: mean CE over the [MASK] positions
    checkGolden(bert, item, (logits) => {
      const ce = item.mask_positions!.map((p, i) => -logSoftmaxAt(logits[p]!, item.label_ids![i]!));
      return ce.reduce((a, b) => a + b, 0) / ce.length;
    });
  }
});

test('gpt2-mini-lama: tokenizer ids (BOS + text), top-10, logits, sums and LM loss match golden.json', () => {
  const items = golden('gpt2-mini-lama');
  for (const item of items) {
    assert.deepEqual([gpt2.info.special.bos!, ...gpt2.tokenizer.encode(item.text)], item.input_ids);
    // HF GPT2LMHeadModel(labels=input_ids): mean CE of token t+1 given tokens <= t
    checkGolden(gpt2, item, (logits) => {
      const ids = item.input_ids;
      let total = 0;
      for (let t = 0; t + 1 < ids.length; t++) total -= logSoftmaxAt(logits[t]!, ids[t + 1]!);
      return total / (ids.length - 1);
    });
  }
});

test('logitsAt with candidates equals the matching columns of the full logits', () => {
  for (const lm of [bert, gpt2]) {
    const item = golden(lm === bert ? 'bert-mini-lama' : 'gpt2-mini-lama')[0]!;
    const candidates = [2605, 3000, 7, 30521, 101];
    const { full, restricted } = tf.tidy(() => {
      const ids = tf.tensor2d([item.input_ids, item.input_ids], [2, item.input_ids.length], 'int32');
      const hidden = lm.run({ embeds: lm.embed(ids), attentionMask: tf.onesLike(ids) });
      const positions = tf.tensor1d([1, item.input_ids.length - 2], 'int32');
      const r = lm.logitsAt(hidden, positions, tf.tensor1d(candidates, 'int32'));
      assert.deepEqual(r.shape, [2, candidates.length]);
      return { full: lm.logitsAt(hidden, positions).arraySync() as number[][], restricted: r.arraySync() as number[][] };
    });
    for (let b = 0; b < 2; b++) {
      candidates.forEach((c, j) => assert.ok(Math.abs(full[b]![c]! - restricted[b]![j]!) < 1e-5, `${lm.info.family} row ${b} cand ${c}`));
    }
  }
});

test('right-padded BERT batch gives the same mask logits as each sentence alone', () => {
  const items = golden('bert-mini-lama');
  const seqs = items.map((it) => it.input_ids);
  const { ids, mask, s } = padBatch(seqs, bert.info.special.pad, 'right');
  const maskPos = items.map((it) => it.mask_positions![0]!);
  const batched = tf.tidy(() => {
    const hidden = bert.run({ embeds: bert.embed(ids), attentionMask: mask, tokenTypeIds: tf.zerosLike(ids) });
    return bert.logitsAt(hidden, tf.tensor1d(maskPos, 'int32')).arraySync() as number[][];
  });
  assert.ok(s > Math.min(...seqs.map((q) => q.length)));
  items.forEach((it, b) => {
    const alone = allLogits(bert, it.input_ids)[maskPos[b]!]!;
    let maxDiff = 0;
    alone.forEach((v, i) => (maxDiff = Math.max(maxDiff, Math.abs(v - batched[b]![i]!))));
    assert.ok(maxDiff < 1e-4, `row ${b}: max diff ${maxDiff}`);
  });
  tf.dispose([ids, mask]);
});

test('left-padded GPT-2 batch gives the same next-token logits as each prefix alone', () => {
  const items = golden('gpt2-mini-lama');
  const seqs = items.map((it) => it.input_ids);
  const { ids, mask, s } = padBatch(seqs, gpt2.info.special.pad, 'left');
  const batched = tf.tidy(() => {
    const hidden = gpt2.run({ embeds: gpt2.embed(ids), attentionMask: mask });
    return gpt2.logitsAt(hidden, tf.fill([seqs.length], s - 1, 'int32')).arraySync() as number[][];
  });
  items.forEach((it, b) => {
    const alone = allLogits(gpt2, it.input_ids)[it.input_ids.length - 1]!;
    let maxDiff = 0;
    alone.forEach((v, i) => (maxDiff = Math.max(maxDiff, Math.abs(v - batched[b]![i]!))));
    assert.ok(maxDiff < 1e-4, `row ${b}: max diff ${maxDiff}`);
  });
  tf.dispose([ids, mask]);
});

test('GPT-2 decodeStep with a KV cache reproduces the full forward, step by step', () => {
  const ids = golden('gpt2-mini-lama')[2]!.input_ids;
  const full = allLogits(gpt2, ids);
  const before = tf.memory().numTensors;
  let cache: KvCache | null = null;
  // a 3-token prompt, then one token at a time
  const chunks = [ids.slice(0, 3), ...ids.slice(3).map((id) => [id])];
  let seen = 0;
  for (const chunk of chunks) {
    const logits = tf.tidy(() => {
      const r = gpt2.decodeStep!(tf.tensor2d([chunk], [1, chunk.length], 'int32'), cache);
      cache = r.cache;
      return r.logits;
    });
    seen += chunk.length;
    assert.equal(cache!.length, seen);
    const got = logits.dataSync();
    logits.dispose();
    const want = full[seen - 1]!;
    let maxDiff = 0;
    want.forEach((v, i) => (maxDiff = Math.max(maxDiff, Math.abs(v - got[i]!))));
    assert.ok(maxDiff < 1e-4, `after ${seen} tokens: max diff ${maxDiff}`);
  }
  cache!.dispose();
  assert.equal(tf.memory().numTensors, before);
});

test('tensor count stays flat over 100 forwards (both models)', () => {
  for (const lm of [bert, gpt2]) {
    const ids = tf.tensor2d([[101, 3000, 2003, 1996, 103, 102]], [1, 6], 'int32');
    const mask = tf.onesLike(ids);
    const once = () => tf.tidy(() => lm.logitsAt(lm.run({ embeds: lm.embed(ids), attentionMask: mask }), tf.tensor1d([4], 'int32')));
    once().dispose();
    const start = tf.memory().numTensors;
    for (let i = 0; i < 100; i++) once().dispose();
    assert.equal(tf.memory().numTensors, start, lm.info.family);
    tf.dispose([ids, mask]);
  }
});

test('gradients flow to the input embeddings and match finite differences (tiny random models)', () => {
  for (const family of ['bert', 'gpt2'] as const) {
    const lm = createRandomModel(family, { vocabSize: 40, hiddenSize: 8, numLayers: 2, numHeads: 2, intermediateSize: 16, maxPositions: 16 }, 7);
    const ids = tf.tensor2d([[2, 9, 4, 17, 3]], [1, 5], 'int32');
    const mask = tf.onesLike(ids);
    // inputs of unit scale, so that a finite-difference step of 1e-2 stays in the linear regime
    const embeds = tf.tensor(Float32Array.from({ length: 5 * 8 }, (_, i) => Math.sin(1.7 * i + 0.3)), [1, 5, 8]);
    const loss = (e: tf.Tensor) =>
      tf.tidy(() => {
        const lg = lm.logitsAt(lm.run({ embeds: e, attentionMask: mask }), tf.tensor1d([2], 'int32'), tf.tensor1d([5, 11], 'int32'));
        return tf.sum(tf.mul(lg, tf.tensor1d([1, -0.5])));
      });
    const grad = tf.grad(loss)(embeds);
    const g = grad.dataSync();
    const base = embeds.dataSync();
    const eps = 1e-2;
    for (const i of [0, 3, 9, 17, 30, 39]) {
      const plus = Float32Array.from(base);
      const minus = Float32Array.from(base);
      plus[i]! += eps;
      minus[i]! -= eps;
      const lp = tf.tidy(() => loss(tf.tensor(plus, embeds.shape)).dataSync()[0]!);
      const lmn = tf.tidy(() => loss(tf.tensor(minus, embeds.shape)).dataSync()[0]!);
      const numeric = (lp - lmn) / (2 * eps);
      assert.ok(Math.abs(numeric - g[i]!) < 2e-3 + 0.02 * Math.abs(numeric), `${family} d/de[${i}]: ${g[i]} vs ${numeric}`);
    }
    assert.ok(g.some((x) => Math.abs(x) > 1e-6), `${family}: gradient is all zero`);
    tf.dispose([ids, mask, embeds, grad]);
    lm.dispose();
  }
});
