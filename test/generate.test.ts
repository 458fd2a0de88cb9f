import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { tf, initEngine } from '../src/engine/index.js';
import { generate, makeRng, sampleToken } from '../src/models/generate.js';
import { loadLlama } from '../src/models/llama.js';
import type { LanguageModel } from '../src/models/lm.js';

const STORIES = path.resolve(process.cwd(), '../shared/models/stories260K');
const GREEDY_FROM_BOS =
  'Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big, red ball. She wanted to play with it, but it was too high.';

let lm: LanguageModel;

before(async () => {
  await initEngine();
  lm = await loadLlama(STORIES);
});

test('stories260K greedy generation from BOS reproduces llama2.c', () => {
  const streamed: number[] = [];
  const ids = generate(lm, [], { maxNewTokens: 64, temperature: 0, onToken: (id) => streamed.push(id) });
  assert.equal(ids.length, 64);
  assert.deepEqual(streamed, ids);
  const text = lm.tokenizer.decode(ids, { skipSpecial: true });
  assert.ok(text.startsWith(GREEDY_FROM_BOS), JSON.stringify(text));
  assert.deepEqual(generate(lm, [lm.info.special.bos!], { maxNewTokens: 64 }), ids, 'empty prompt = BOS prompt');
});

test('a prompt is continued after its last token', () => {
  const prompt = [1, ...lm.tokenizer.encode('Once upon a time, there was a little girl named')];
  const text = lm.tokenizer.decode([...prompt, ...generate(lm, prompt, { maxNewTokens: 4 })], { skipSpecial: true });
  assert.ok(text.startsWith('Once upon a time, there was a little girl named Lily. She'), text);
});

test('the story ends where the model starts the next one (BOS), and the text re-encodes to the same ids', () => {
  const story = generate(lm, [], { maxNewTokens: 400 });
  assert.ok(story.length > 100 && story.length < 400, `story of ${story.length} tokens`);
  assert.ok(!story.includes(1) && !story.includes(2));
  assert.deepEqual(lm.tokenizer.encode(lm.tokenizer.decode(story)), story);
  const unstopped = generate(lm, [], { maxNewTokens: story.length + 3, stopAtEos: false });
  assert.equal(unstopped.length, story.length + 3);
  assert.equal(unstopped[story.length], 1);
});

test('seeded sampling is reproducible; a tiny nucleus is greedy', () => {
  const opts = { maxNewTokens: 30, temperature: 1, topP: 0.9 };
  const a = generate(lm, [], { ...opts, seed: 7 });
  const b = generate(lm, [], { ...opts, seed: 7 });
  const c = generate(lm, [], { ...opts, seed: 8 });
  assert.deepEqual(a, b);
  assert.notDeepEqual(a, c);
  const greedy = generate(lm, [], { maxNewTokens: 30 });
  assert.deepEqual(generate(lm, [], { maxNewTokens: 30, temperature: 1, topP: 1e-6, seed: 3 }), greedy);
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

test('repeated generation keeps the tensor count flat', () => {
  generate(lm, [], { maxNewTokens: 5 });
  const before = tf.memory().numTensors;
  for (let i = 0; i < 3; i++) {
    generate(lm, [1, 403], { maxNewTokens: 20, temperature: 0.8, seed: i });
    generate(lm, [], { maxNewTokens: 10 });
  }
  assert.equal(tf.memory().numTensors, before);
});

test('generation stops when the context is full; bad options and non-causal models are rejected', () => {
  const prompt = Array.from({ length: lm.info.maxPositions - 3 }, (_, i) => (i === 0 ? 1 : 403 + (i % 7)));
  assert.equal(generate(lm, prompt, { maxNewTokens: 10, stopAtEos: false }).length, 4);
  assert.throws(() => generate(lm, [], { maxNewTokens: 1, temperature: -1 }), /temperature/);
  assert.throws(() => generate(lm, [], { maxNewTokens: 1, temperature: 1, topP: 0 }), /topP/);
  const masked = { ...lm, info: { ...lm.info, source: 'bert-dir' }, decodeStep: undefined } as LanguageModel;
  assert.throws(() => generate(masked, [], { maxNewTokens: 1 }), /bert-dir.*not a causal LM/);
});
