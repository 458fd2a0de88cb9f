import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { programs } from '../src/engine/index.js';
import { generate, makeRng, sampleToken } from '../src/models/generate.js';
import { createRandomModel, loadModel } from '../src/models/load.js';
import type { LanguageModel } from '../src/models/model.js';
import { rssAfter } from './fixtures.js';

const STORIES = path.resolve(process.cwd(), '../shared/models/stories260K');
const GREEDY_FROM_BOS =
  'Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big, red ball. She wanted to play with it, but it was too high.';

let lm: LanguageModel;

before(async () => {
  lm = await loadModel(STORIES);
});

test('stories260K greedy generation from BOS reproduces llama2.c', async () => {
  const streamed: number[] = [];
  const ids = await generate(lm, [], { maxNewTokens: 64, temperature: 0, onToken: (id) => streamed.push(id) });
  assert.equal(ids.length, 64);
  assert.deepEqual(streamed, ids);
  const text = lm.tokenizer.decode(ids, { skipSpecial: true });
  assert.ok(text.startsWith(GREEDY_FROM_BOS), JSON.stringify(text));
  assert.deepEqual(await generate(lm, [lm.info.special.bos!], { maxNewTokens: 64 }), ids, 'empty prompt = BOS prompt');
});

test('a prompt is continued after its last token', async () => {
  const prompt = [1, ...lm.tokenizer.encode('Once upon a time, there was a little girl named')];
  const text = lm.tokenizer.decode([...prompt, ...(await generate(lm, prompt, { maxNewTokens: 4 }))], { skipSpecial: true });
  assert.ok(text.startsWith('Once upon a time, there was a little girl named Lily. She'), text);
});

test('the story ends where the model starts the next one (BOS), and the text re-encodes to the same ids', async () => {
  const story = await generate(lm, [], { maxNewTokens: 400 });
  assert.ok(story.length > 100 && story.length < 400, `story of ${story.length} tokens`);
  assert.ok(!story.includes(1) && !story.includes(2));
  assert.deepEqual(lm.tokenizer.encode(lm.tokenizer.decode(story)), story);
  const unstopped = await generate(lm, [], { maxNewTokens: story.length + 3, stopAtEos: false });
  assert.equal(unstopped.length, story.length + 3);
  assert.equal(unstopped[story.length], 1);
});

test('seeded sampling is reproducible; a tiny nucleus is greedy', async () => {
  const opts = { maxNewTokens: 30, temperature: 1, topP: 0.9 };
  const a = await generate(lm, [], { ...opts, seed: 7 });
  const b = await generate(lm, [], { ...opts, seed: 7 });
  const c = await generate(lm, [], { ...opts, seed: 8 });
  assert.deepEqual(a, b);
  assert.notDeepEqual(a, c);
  const greedy = await generate(lm, [], { maxNewTokens: 30 });
  assert.deepEqual(await generate(lm, [], { maxNewTokens: 30, temperature: 1, topP: 1e-6, seed: 3 }), greedy);
});

test('sampleToken follows the distribution and respects the nucleus', () => {
  const rng = makeRng(1);
  const logits = [Math.log(0.6), Math.log(0.3), Math.log(0.1)];
  const counts = [0, 0, 0];
  for (let i = 0; i < 20000; i++) counts[sampleToken(logits, 1, 1, rng)]!++;
  assert.ok(Math.abs(counts[0]! / 20000 - 0.6) < 0.02 && Math.abs(counts[2]! / 20000 - 0.1) < 0.02, `${counts}`);
  const nucleus = [0, 0, 0];
  for (let i = 0; i < 2000; i++) nucleus[sampleToken(logits, 1, 0.8, rng)]!++;
  assert.equal(nucleus[2], 0);
  assert.ok(nucleus[1]! > 0);
});

test('the stop strings end the text; the sessions and memory of repeated generation stay bounded', async (t) => {
  const streamed: number[] = [];
  const ids = await generate(lm, [], { maxNewTokens: 64, stop: ['Lily'], onToken: (id) => streamed.push(id) });
  assert.deepEqual(streamed, ids);
  const text = lm.tokenizer.decode(ids, { skipSpecial: true });
  // generation ends with the token that completes the stop string
  assert.equal(text, 'Once upon a time, there was a little girl named Lily');

  // prompts of 2 to 13 tokens (two padded lengths): the first 12 generations compile every program the later ones run
  const { early, late } = await rssAfter(12, 60, async (i) => {
    await generate(lm, [1, 403, ...Array(i % 12).fill(410)], { maxNewTokens: 12, temperature: 0.8, seed: i });
  });
  t.diagnostic(`RSS ${(early / 2 ** 20).toFixed(0)} MiB after 12 generations, ${(late / 2 ** 20).toFixed(0)} MiB after 60`);
  assert.ok(late - early < 16 * 2 ** 20, `RSS grew by ${((late - early) / 2 ** 20).toFixed(1)} MiB over 48 generations`);
  assert.ok(programs.size <= programs.maxSessions, `${programs.size} cached sessions`);
});

test('generation stops when the context is full; bad options and non-causal models are rejected', async () => {
  const prompt = Array.from({ length: lm.info.maxPositions - 3 }, (_, i) => (i === 0 ? 1 : 403 + (i % 7)));
  assert.equal((await generate(lm, prompt, { maxNewTokens: 10, stopAtEos: false })).length, 4);
  await assert.rejects(generate(lm, [], { maxNewTokens: 1, temperature: -1 }), /temperature/);
  await assert.rejects(generate(lm, [], { maxNewTokens: 1, temperature: 1, topP: 0 }), /topP/);
  await assert.rejects(generate(lm, Array(lm.info.maxPositions + 1).fill(403), { maxNewTokens: 1 }), /the prompt has 513 tokens, more than the 512 positions/);
  const masked = createRandomModel('bert', { vocabSize: 40, hiddenSize: 8, numLayers: 1, numHeads: 2, intermediateSize: 16, maxPositions: 16 }, 1);
  await assert.rejects(generate(masked, [], { maxNewTokens: 1 }), /random bert \(seed 1\) \(bert\) is not a causal LM/);
});
