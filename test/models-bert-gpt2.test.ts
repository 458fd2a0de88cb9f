import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { createRandomModel } from '../src/models/load.js';
import type { LanguageModel } from '../src/models/model.js';
import { hiddenStates, logitsAt, sequenceLogits, type TokenBatch } from '../src/models/forward.js';
import { decodeStep, KvCache } from '../src/models/generate.js';
import { rowsAt } from '../src/models/common.js';
import type { ProgramBuilder } from '../src/engine/program.js';
import { bert, candidateLogits, gpt2, modelDir, padBatch, rssAfter, useMiniModels } from './fixtures.js';

useMiniModels();

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
  return (JSON.parse(fs.readFileSync(path.join(modelDir(model), 'golden.json'), 'utf8')) as { items: GoldenItem[] }).items;
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

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

async function checkGolden(lm: LanguageModel, item: GoldenItem, loss: (logits: Float32Array[]) => number): Promise<void> {
  const logits = await sequenceLogits(lm, item.input_ids);
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

test('bert-mini-lama: tokenizer ids, top-10, logits, sums and MLM loss match golden.json', async () => {
  const items = golden('bert-mini-lama');
  const s = bert.info.special;
  for (const item of items) {
    assert.deepEqual([s.cls!, ...bert.tokenizer.encode(item.text), s.sep!], item.input_ids);
    // HF BertForMaskedLM loss: mean CE over the [MASK] positions
    await checkGolden(bert, item, (logits) => {
      const ce = item.mask_positions!.map((p, i) => -logSoftmaxAt(logits[p]!, item.label_ids![i]!));
      return ce.reduce((a, b) => a + b, 0) / ce.length;
    });
  }
});

test('gpt2-mini-lama: tokenizer ids (BOS + text), top-10, logits, sums and LM loss match golden.json', async () => {
  const items = golden('gpt2-mini-lama');
  for (const item of items) {
    assert.deepEqual([gpt2.info.special.bos!, ...gpt2.tokenizer.encode(item.text)], item.input_ids);
    // HF GPT2LMHeadModel(labels=input_ids): mean CE of token t+1 given tokens <= t
    await checkGolden(gpt2, item, (logits) => {
      const ids = item.input_ids;
      let total = 0;
      for (let t = 0; t + 1 < ids.length; t++) total -= logSoftmaxAt(logits[t]!, ids[t + 1]!);
      return total / (ids.length - 1);
    });
  }
});

test('logits over candidates equal the matching columns of the full logits', async () => {
  for (const lm of [bert, gpt2]) {
    const item = golden(lm === bert ? 'bert-mini-lama' : 'gpt2-mini-lama')[0]!;
    const candidates = [2605, 3000, 7, 30521, 101];
    const batch = { ids: [item.input_ids, item.input_ids] };
    const positions = [1, item.input_ids.length - 2];
    const full = await logitsAt(lm, batch, positions.map((position, row) => ({ row, position })));
    const restricted = await candidateLogits(lm, batch, positions, candidates);
    assert.equal(restricted.length, 2 * candidates.length);
    for (let b = 0; b < 2; b++) {
      candidates.forEach((c, j) =>
        assert.ok(Math.abs(full[b]![c]! - restricted[b * candidates.length + j]!) < 1e-5, `${lm.info.family} row ${b} cand ${c}`),
      );
    }
  }
});

test('right-padded BERT batch gives the same mask logits as each sentence alone', async () => {
  const items = golden('bert-mini-lama');
  const seqs = items.map((it) => it.input_ids);
  const batch = padBatch(seqs, bert.info.special.pad, 'right');
  const s = batch.ids[0]!.length;
  batch.tokenTypeIds = batch.ids.map((r) => r.map(() => 0));
  const maskPos = items.map((it) => it.mask_positions![0]!);
  const batched = await logitsAt(bert, batch, maskPos.map((position, row) => ({ row, position })));
  assert.ok(s > Math.min(...seqs.map((q) => q.length)));
  for (const [b, it] of items.entries()) {
    const alone = (await sequenceLogits(bert, it.input_ids))[maskPos[b]!]!;
    const d = maxAbsDiff(alone, batched[b]!);
    assert.ok(d < 1e-4, `row ${b}: max diff ${d}`);
  }
});

test('left-padded GPT-2 batch gives the same next-token logits as each prefix alone', async () => {
  const items = golden('gpt2-mini-lama');
  const seqs = items.map((it) => it.input_ids);
  const batch = padBatch(seqs, gpt2.info.special.pad, 'left');
  const s = batch.ids[0]!.length;
  const batched = await logitsAt(gpt2, batch, seqs.map((_, row) => ({ row, position: s - 1 })));
  for (const [b, it] of items.entries()) {
    const alone = (await sequenceLogits(gpt2, it.input_ids))[it.input_ids.length - 1]!;
    const d = maxAbsDiff(alone, batched[b]!);
    assert.ok(d < 1e-4, `row ${b}: max diff ${d}`);
  }
});

test('GPT-2 decodeStep with a KV cache reproduces the full forward, step by step', async () => {
  const ids = golden('gpt2-mini-lama')[2]!.input_ids;
  const full = await sequenceLogits(gpt2, ids);
  const cache = new KvCache(gpt2);
  // a 3-token prompt, then one token at a time
  const chunks = [ids.slice(0, 3), ...ids.slice(3).map((id) => [id])];
  let seen = 0;
  for (const chunk of chunks) {
    const got = await decodeStep(gpt2, cache, chunk);
    seen += chunk.length;
    assert.equal(cache.length, seen);
    const d = maxAbsDiff(got, full[seen - 1]!);
    assert.ok(d < 1e-4, `after ${seen} tokens: max diff ${d}`);
  }
});

test('memory stays flat over repeated forwards (both models)', async (t) => {
  for (const lm of [bert, gpt2]) {
    const batch = { ids: [[101, 3000, 2003, 1996, 103, 102]] };
    const { early, late } = await rssAfter(20, 200, () => hiddenStates(lm, batch));
    t.diagnostic(`${lm.info.family}: RSS ${(early / 2 ** 20).toFixed(0)} MiB after 20 forwards, ${(late / 2 ** 20).toFixed(0)} MiB after 200`);
    assert.ok(late - early < 12 * 2 ** 20, `${lm.info.family}: RSS grew by ${((late - early) / 2 ** 20).toFixed(1)} MiB from run 20 to run 200`);
  }
});

test('gradients flow to the input embeddings and match finite differences (tiny random models)', async () => {
  for (const family of ['bert', 'gpt2'] as const) {
    const lm = createRandomModel(family, { vocabSize: 40, hiddenSize: 8, numLayers: 2, numHeads: 2, intermediateSize: 16, maxPositions: 16 }, 7);
    const [b, s, h] = [1, 5, 8];
    // loss = logits[2] · (1, -0.5) over candidates (5, 11), a function of the input embeddings
    const program = {
      key: 'test embeds fd',
      build: (pb: ProgramBuilder) => {
        const { o } = pb;
        const w = lm.weights(pb);
        const embeds = pb.input('embeds', [b, s, h]);
        const { hidden } = lm.fns.hidden(o, w, { embeds, attentionMask: o.constInt(Array(s).fill(1), [b, s]) });
        const logits = lm.fns.logits(o, w, rowsAt(o, hidden, o.constInt([2], [1])), o.constInt([5, 11], [2]));
        const loss = o.reshape(o.sum(o.mul(logits, o.constFloat([1, -0.5], [2])), 1), [1]);
        return { outputs: { loss }, loss, wrt: { embeds } };
      },
    };
    // inputs of unit scale, so that a finite-difference step of 1e-2 stays in the linear regime
    const base = Float32Array.from({ length: s * h }, (_, i) => Math.sin(1.7 * i + 0.3));
    const run = (e: Float32Array) => lm.run(program, { embeds: { data: e, shape: [b, s, h] } });
    const r = await run(base);
    const g = r.wrt.embeds!.data as Float32Array;
    const eps = 1e-2;
    for (const i of [0, 3, 9, 17, 30, 39]) {
      const plus = Float32Array.from(base);
      const minus = Float32Array.from(base);
      plus[i]! += eps;
      minus[i]! -= eps;
      const lp = (await run(plus)).outputs.loss!.data[0] as number;
      const lmn = (await run(minus)).outputs.loss!.data[0] as number;
      const numeric = (lp - lmn) / (2 * eps);
      assert.ok(Math.abs(numeric - g[i]!) < 2e-3 + 0.02 * Math.abs(numeric), `${family} d/de[${i}]: ${g[i]} vs ${numeric}`);
    }
    assert.ok(g.some((x) => Math.abs(x) > 1e-6), `${family}: gradient is all zero`);
    lm.dispose();
  }
});
