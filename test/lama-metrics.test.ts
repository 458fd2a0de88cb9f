import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  countHits,
  macroP1,
  majorityHits,
  microP1,
  p1Of,
  restrictedArgmax,
  topK,
  topKAligned,
  topKRows,
} from '../src/tasks/lama/metrics.js';

test('restricted argmax ignores tokens outside the candidates', () => {
  const scores = new Float32Array([0.1, 5, 0.3, 2, 2, -1]);
  assert.equal(restrictedArgmax(scores), 1);
  assert.equal(restrictedArgmax(scores, [0, 2, 3, 5]), 3);
  assert.equal(restrictedArgmax(scores, [4, 3]), 3, 'ties go to the smaller id');
  assert.equal(restrictedArgmax(scores, []), -1);
  assert.throws(() => restrictedArgmax(scores, [6]), /candidate id 6/);
});

test('topK: order by score then id, NaN never ranks, k larger than the pool', () => {
  const scores = new Float32Array([1, 3, NaN, 3, 0.5, 7]);
  assert.deepEqual(
    topK(scores, 3).map((t) => t.id),
    [5, 1, 3],
  );
  assert.deepEqual(topK(scores, 2, [0, 2, 4]), [
    { id: 0, score: 1 },
    { id: 4, score: 0.5 },
  ]);
  assert.equal(topK(scores, 10).length, 5);
  assert.throws(() => topK(scores, 0), /k must be a positive integer/);
  // agrees with a full sort on random data
  const rnd = new Float32Array(1000).map((_, i) => Math.sin(i * 12.9898) * 43758.5453 % 1);
  const expected = [...rnd.keys()].sort((a, b) => rnd[b] - rnd[a] || a - b).slice(0, 10);
  assert.deepEqual(
    topK(rnd, 10).map((t) => t.id),
    expected,
  );
});

test('topKAligned and topKRows for candidate-restricted logits', () => {
  const cands = [7, 3, 9];
  assert.deepEqual(topKAligned([0.2, 0.9, 0.5], cands, 2), [
    { id: 3, score: 0.9 },
    { id: 9, score: 0.5 },
  ]);
  assert.throws(() => topKAligned([1, 2], cands, 1), /2 scores for 3 candidates/);
  const flat = new Float32Array([0.2, 0.9, 0.5, 4, 1, 2]);
  const rows = topKRows(flat, 2, 1, cands, true);
  assert.deepEqual(
    rows.map((r) => r[0].id),
    [3, 7],
  );
  const full = topKRows(flat, 2, 1, [0, 2]);
  assert.deepEqual(
    full.map((r) => r[0].id),
    [2, 0],
  );
  assert.throws(() => topKRows(flat, 4, 1), /do not split into 4 rows/);
});

test('macro vs micro P@1 on hand-made counts', () => {
  const scores = [
    { relation: 'P1', n: 10, hits: 9 }, // 0.9
    { relation: 'P2', n: 90, hits: 9 }, // 0.1
    { relation: 'P3', n: 0, hits: 0 }, // no facts: left out of both
  ];
  assert.equal(macroP1(scores), 0.5);
  assert.equal(microP1(scores), 18 / 100);
  assert.equal(p1Of(scores[2]), null);
  assert.equal(macroP1([]), null);
  assert.equal(microP1([]), null);
  assert.deepEqual(countHits([1, 2, 3, 4], [1, 0, 3, 0]), { n: 4, hits: 2 });
  assert.throws(() => countHits([1], [1, 2]), /1 predictions for 2 gold/);
});

test('majority baseline hits', () => {
  const f = (o: string) => ({ sub_label: 's', obj_label: o, predicate_id: 'P1' });
  assert.deepEqual(majorityHits('a', [f('a'), f('b'), f('a')]), { n: 3, hits: 2 });
  assert.deepEqual(majorityHits(undefined, [f('a')]), { n: 1, hits: 0 });
});
