import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { tf, initEngine } from '../src/engine/index.js';
import { readSafetensors } from '../src/engine/safetensors.js';
import { loadLlama, llama2cToHf, LlamaLM } from '../src/models/llama.js';
import type { LanguageModel } from '../src/models/lm.js';
import { Llama2cTokenizer } from '../src/tokenizers/llama2c.js';

const STORIES = path.resolve(process.cwd(), '../shared/models/stories260K');
const CHECKPOINT = path.join(STORIES, 'stories260K.bin');
const TEXT = 'Once upon a time, there was a little dog. He liked to run in the sun.';

let lm: LanguageModel;
let tok: Llama2cTokenizer;

before(async () => {
  await initEngine();
  lm = await loadLlama(STORIES);
  tok = Llama2cTokenizer.fromFile(path.join(STORIES, 'tok512.bin'), 512);
});

function tmpDir(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'ptune-llama-'));
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

/** Logits [S, V] at every position of one unpadded sequence. */
function allLogits(model: LanguageModel, ids: number[]): Float32Array {
  return tf.tidy(() => {
    const s = ids.length;
    const idsT = tf.tensor2d(ids, [1, s], 'int32');
    const hidden = model.run({ embeds: model.embed(idsT), attentionMask: tf.ones([1, s], 'int32') });
    const rows = Array.from({ length: s }, (_, p) => model.logitsAt(hidden, tf.tensor1d([p], 'int32')));
    return tf.concat(rows, 0).dataSync() as Float32Array;
  });
}

test('tokenizer: dummy prefix, highest-score merges, ▁ pieces', () => {
  assert.equal(tok.vocabSize, 512);
  assert.deepEqual(tok.encode(''), []);
  assert.deepEqual(tok.encode('the'), [265]);
  assert.deepEqual(tok.encodeWord('the'), tok.encode('the'));
  assert.equal(tok.idToToken(265), '▁the');
  assert.equal(tok.tokenToId('▁the'), 265);
  assert.equal(tok.tokenToId('<0x41>'), 0x41 + 3);
  assert.equal(tok.tokenToId('</s>'), 2);
  assert.equal(tok.lowercase, false);
  const ids = tok.encode(TEXT);
  assert.ok(ids.length < TEXT.length / 2, `merges should shorten ${TEXT.length} chars, got ${ids.length} ids`);
  assert.equal(tok.decode(ids), TEXT);
});

test('tokenizer: non-ASCII round trip through byte fallback', () => {
  // ' ' is piece 410; the emoji is not in the vocabulary, so it becomes its 4 UTF-8 bytes (byte + 3)
  assert.deepEqual(tok.encode('😀'), [410, 0xf0 + 3, 0x9f + 3, 0x98 + 3, 0x80 + 3]);
  for (const text of ['héllo wörld', 'naïve café — 日本語 😀!', '  two leading spaces', 'tab\there\nnewline']) {
    assert.equal(tok.decode(tok.encode(text)), text);
  }
});

test('tokenizer: decode strips the dummy prefix after BOS and renders special tokens', () => {
  const ids = [1, ...tok.encode('Once upon'), 2];
  assert.equal(tok.decode(ids, { skipSpecial: true }), 'Once upon');
  assert.equal(tok.decode(ids), '<s>Once upon</s>');
  assert.equal(tok.decode([...tok.encode('a'), ...tok.encode('b')]), 'a b');
  assert.throws(() => tok.decode([512]), /out of range/);
});

test('tokenizer: toBuffer reproduces tok512.bin; malformed files fail with the file name', () => {
  const bytes = fs.readFileSync(path.join(STORIES, 'tok512.bin'));
  assert.ok(tok.toBuffer().equals(bytes));
  const bad = path.join(tmpDir(), 'tok512.bin');
  fs.writeFileSync(bad, bytes.subarray(0, 1000));
  assert.throws(() => Llama2cTokenizer.fromFile(bad, 512), (e: Error) => e.message.includes(bad) && /token/.test(e.message));
});

test('stories260K loads from its directory and from the .bin with the documented shape', async () => {
  assert.equal(lm.info.family, 'llama');
  assert.equal(lm.info.kind, 'causal');
  assert.equal(lm.info.paddingSide, 'left');
  assert.deepEqual(
    [lm.info.vocabSize, lm.info.hiddenSize, lm.info.numLayers, lm.info.numHeads, lm.info.numKvHeads, lm.info.intermediateSize, lm.info.maxPositions],
    [512, 64, 5, 8, 4, 172, 512],
  );
  assert.equal(lm.info.parameterCount, 260032);
  assert.deepEqual(lm.info.special, { pad: 0, unk: 0, bos: 1, eos: 2 });
  const params = lm.parameters();
  assert.deepEqual(params.get('model.layers.0.self_attn.k_proj.weight')!.shape, [64, 32]);
  assert.deepEqual(params.get('model.layers.4.mlp.down_proj.weight')!.shape, [172, 64]);
  assert.equal(params.has('lm_head.weight'), false);
  assert.ok([...params.values()].every((v) => !v.trainable), 'frozen by default');
  const fromFile = await loadLlama(CHECKPOINT, { trainable: true });
  assert.ok([...fromFile.parameters().values()].every((v) => v.trainable));
  const ids = [1, ...tok.encode('Once upon a time')];
  assert.equal(maxAbsDiff(allLogits(fromFile, ids), allLogits(lm, ids)), 0);
  fromFile.dispose();
});

test('truncated or padded .bin fails with the file and byte counts', async () => {
  const dir = tmpDir();
  const bytes = fs.readFileSync(CHECKPOINT);
  const cut = path.join(dir, 'cut.bin');
  fs.writeFileSync(cut, bytes.subarray(0, 1_000_000));
  await assert.rejects(loadLlama(cut), (e: Error) =>
    e.message.includes(cut) && e.message.includes('1056540 bytes') && e.message.includes('1000000') && !e.message.includes('\n'));
  fs.writeFileSync(cut, Buffer.concat([bytes, Buffer.alloc(4)]));
  await assert.rejects(loadLlama(cut), /size mismatch/);
  fs.writeFileSync(cut, bytes.subarray(0, 10));
  await assert.rejects(loadLlama(cut), /too short/);
});

test('untied classifier (negative vocab_size) is read from the end of the .bin', async () => {
  const dir = tmpDir();
  const bytes = fs.readFileSync(CHECKPOINT);
  const untied = Buffer.concat([bytes, bytes.subarray(28, 28 + 512 * 64 * 4)]); // classifier = embedding copy
  untied.writeInt32LE(-512, 20);
  fs.writeFileSync(path.join(dir, 'untied.bin'), untied);
  fs.copyFileSync(path.join(STORIES, 'tok512.bin'), path.join(dir, 'tok512.bin'));
  const model = await loadLlama(dir);
  assert.deepEqual(model.parameters().get('lm_head.weight')!.shape, [64, 512]);
  const ids = [1, ...tok.encode('The cat sat')];
  assert.ok(maxAbsDiff(allLogits(model, ids), allLogits(lm, ids)) < 1e-5);
  model.dispose();
});

test('Hugging Face layout (q/k permuted for rotate_half) reloads with the same logits', async () => {
  const dir = tmpDir();
  llama2cToHf(lm, dir);
  const config = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8'));
  assert.equal(config.model_type, 'llama');
  assert.equal(config.num_key_value_heads, 4);
  const stored = readSafetensors(path.join(dir, 'model.safetensors')).tensors;
  assert.deepEqual(stored.get('model.layers.0.self_attn.k_proj.weight')!.shape, [32, 64]);
  assert.deepEqual(stored.get('model.layers.0.mlp.gate_proj.weight')!.shape, [172, 64]);
  const hf = await loadLlama(dir);
  assert.ok(hf instanceof LlamaLM && hf.config.ropeStyle === 'half');
  assert.equal(hf.tokenizer.decode(hf.tokenizer.encode(TEXT)), TEXT);
  const ids = [1, ...tok.encode(TEXT)];
  const diff = maxAbsDiff(allLogits(hf, ids), allLogits(lm, ids));
  assert.ok(diff < 1e-4, `max |Δlogit| ${diff}`);
  hf.dispose();
});

test('incremental decodeStep with the KV cache equals the full forward pass', () => {
  const ids = [1, ...tok.encode(TEXT)].slice(0, 16);
  const full = allLogits(lm, ids);
  const V = lm.info.vocabSize;
  const before = tf.memory().numTensors;
  const prefill = 6;
  const prompt = tf.tensor2d(ids.slice(0, prefill), [1, prefill], 'int32');
  let step = lm.decodeStep!(prompt, null);
  prompt.dispose();
  let cache = step.cache;
  const check = (pos: number, logits: tf.Tensor) => {
    assert.ok(maxAbsDiff(logits.dataSync(), full.subarray(pos * V, (pos + 1) * V)) < 1e-4, `position ${pos}`);
    logits.dispose();
  };
  check(prefill - 1, step.logits);
  for (let p = prefill; p < ids.length; p++) {
    const input = tf.tensor2d([ids[p]!], [1, 1], 'int32');
    step = lm.decodeStep!(input, cache);
    input.dispose();
    cache = step.cache;
    assert.equal(cache.length, p + 1);
    check(p, step.logits);
  }
  cache.dispose();
  assert.equal(tf.memory().numTensors, before, 'cache tensors released');
});

test('left-padded batch gives the same next-token logits as each unpadded sequence', () => {
  const seqs = [[1, ...tok.encode('Once upon a time')], [1, ...tok.encode('The little bird was happy and sang a song')]];
  const S = Math.max(...seqs.map((s) => s.length));
  const padded = seqs.flatMap((s) => [...Array(S - s.length).fill(0), ...s]);
  const mask = seqs.flatMap((s) => [...Array(S - s.length).fill(0), ...Array(s.length).fill(1)]);
  const V = lm.info.vocabSize;
  const before = tf.memory().numTensors;
  const [batched, picked] = tf.tidy(() => {
    const ids = tf.tensor2d(padded, [2, S], 'int32');
    const hidden = lm.run({ embeds: lm.embed(ids), attentionMask: tf.tensor2d(mask, [2, S], 'int32') });
    const last = tf.tensor1d([S - 1, S - 1], 'int32');
    const candidates = tf.tensor1d([5, 265, 400], 'int32');
    return [lm.logitsAt(hidden, last).dataSync(), lm.logitsAt(hidden, last, candidates).dataSync()];
  });
  assert.equal(tf.memory().numTensors, before);
  seqs.forEach((s, b) => {
    const alone = allLogits(lm, s);
    const want = alone.subarray((s.length - 1) * V, s.length * V);
    const got = batched.subarray(b * V, (b + 1) * V);
    assert.ok(maxAbsDiff(got, want) < 1e-4, `row ${b}`);
    assert.deepEqual(Array.from(picked.subarray(b * 3, b * 3 + 3)), [5, 265, 400].map((c) => got[c]!));
  });
});

test('gradients flow from the logits to the input embeddings', () => {
  const ids = [1, ...tok.encode('Once upon')];
  const grad = tf.tidy(() => {
    const idsT = tf.tensor2d(ids, [1, ids.length], 'int32');
    const embeds = lm.embed(idsT);
    const mask = tf.ones([1, ids.length], 'int32');
    const f = (e: tf.Tensor) =>
      tf.sum(lm.logitsAt(lm.run({ embeds: e, attentionMask: mask }), tf.tensor1d([ids.length - 1], 'int32'), tf.tensor1d([259], 'int32')));
    return tf.grad(f)(embeds).abs().sum(-1).dataSync();
  });
  assert.ok(Array.from(grad).every((g) => Number.isFinite(g) && g > 0), `per-position |grad| ${Array.from(grad)}`);
});

test('loadLlama rejects what it cannot read, naming the path', async () => {
  const dir = tmpDir();
  await assert.rejects(loadLlama(path.join(dir, 'missing')), /no such file/);
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ model_type: 'gpt2' }));
  await assert.rejects(loadLlama(dir), /model_type "gpt2" is not llama/);
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ model_type: 'llama', hidden_size: 64 }));
  await assert.rejects(loadLlama(dir), /num_attention_heads/);
  const empty = tmpDir();
  await assert.rejects(loadLlama(empty), /exactly one llama2.c .bin checkpoint, found 0/);
});
