import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { readSafetensors } from '../src/engine/safetensors.js';
import { llamaFamily, type DecoderConfig } from '../src/models/llama.js';
import { llamaToHf } from '../src/models/llama2c.js';
import { loadModel } from '../src/models/load.js';
import type { LanguageModel } from '../src/models/model.js';
import { inputEmbeddingGradient, logitsAt, sequenceLogits } from '../src/models/forward.js';
import { decodeStep, KvCache } from '../src/models/generate.js';
import { Llama2cTokenizer } from '../src/tokenizers/llama2c.js';
import { candidateLogits, padBatch } from './fixtures.js';

const STORIES = path.resolve(process.cwd(), '../shared/models/stories260K');
const CHECKPOINT = path.join(STORIES, 'stories260K.bin');
const TEXT = 'Once upon a time, there was a little dog. He liked to run in the sun.';

let lm: LanguageModel;
let tok: Llama2cTokenizer;

before(async () => {
  lm = await loadModel(STORIES);
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
async function allLogits(model: LanguageModel, ids: number[]): Promise<Float32Array> {
  const rows = await sequenceLogits(model, ids);
  const v = model.info.vocabSize;
  const out = new Float32Array(rows.length * v);
  rows.forEach((r, i) => out.set(r, i * v));
  return out;
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
  // <s> and </s> name bos/eos (and cls/sep); no pad token, so padding (always masked) uses eos
  assert.deepEqual(lm.info.special, { pad: 2, unk: 0, bos: 1, eos: 2, cls: 1, sep: 2 });
  const params = lm.params;
  // Hugging Face names and torch layout (nn.Linear [out, in])
  assert.deepEqual(params.get('model.layers.0.self_attn.k_proj.weight')!.shape, [32, 64]);
  assert.deepEqual(params.get('model.layers.4.mlp.down_proj.weight')!.shape, [64, 172]);
  assert.equal(params.has('lm_head.weight'), false);
  assert.ok([...params.values()].every((v) => !v.trainable), 'frozen by default');
  assert.equal((lm.config as DecoderConfig).ropeStyle, 'interleaved');
  const fromFile = await loadModel(CHECKPOINT, { trainable: true });
  assert.ok([...fromFile.params.values()].every((v) => v.trainable));
  const ids = [1, ...tok.encode('Once upon a time')];
  assert.equal(maxAbsDiff(await allLogits(fromFile, ids), await allLogits(lm, ids)), 0);
  fromFile.dispose();
});

test('truncated or padded .bin fails with the file and byte counts', async () => {
  const dir = tmpDir();
  const bytes = fs.readFileSync(CHECKPOINT);
  const cut = path.join(dir, 'cut.bin');
  fs.copyFileSync(path.join(STORIES, 'tok512.bin'), path.join(dir, 'tok512.bin'));
  fs.writeFileSync(cut, bytes.subarray(0, 1_000_000));
  await assert.rejects(loadModel(cut), (e: Error) =>
    e.message.includes(cut) && e.message.includes('1056540 bytes') && e.message.includes('1000000') && !e.message.includes('\n'));
  fs.writeFileSync(cut, Buffer.concat([bytes, Buffer.alloc(4)]));
  await assert.rejects(loadModel(cut), /size mismatch/);
  fs.writeFileSync(cut, bytes.subarray(0, 10));
  await assert.rejects(loadModel(cut), /too short/);
});

test('untied classifier (negative vocab_size) is read from the end of the .bin', async () => {
  const dir = tmpDir();
  const bytes = fs.readFileSync(CHECKPOINT);
  const untied = Buffer.concat([bytes, bytes.subarray(28, 28 + 512 * 64 * 4)]); // classifier = embedding copy
  untied.writeInt32LE(-512, 20);
  fs.writeFileSync(path.join(dir, 'untied.bin'), untied);
  fs.copyFileSync(path.join(STORIES, 'tok512.bin'), path.join(dir, 'tok512.bin'));
  const model = await loadModel(dir);
  assert.deepEqual(model.params.get('lm_head.weight')!.shape, [512, 64]);
  assert.equal(model.info.parameterCount, 260032 + 512 * 64);
  const ids = [1, ...tok.encode('The cat sat')];
  assert.ok(maxAbsDiff(await allLogits(model, ids), await allLogits(lm, ids)) < 1e-5);
  model.dispose();
});

test('Hugging Face layout (q/k permuted for rotate_half) reloads with the same logits', async () => {
  const dir = tmpDir();
  llamaToHf(lm, dir);
  const config = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8'));
  assert.equal(config.model_type, 'llama');
  assert.equal(config.num_key_value_heads, 4);
  const stored = readSafetensors(path.join(dir, 'model.safetensors')).tensors;
  assert.deepEqual(stored.get('model.layers.0.self_attn.k_proj.weight')!.shape, [32, 64]);
  assert.deepEqual(stored.get('model.layers.0.mlp.gate_proj.weight')!.shape, [172, 64]);
  const hf = await loadModel(dir);
  assert.ok(hf.family === llamaFamily && (hf.config as DecoderConfig).ropeStyle === 'half');
  assert.equal(hf.info.parameterCount, lm.info.parameterCount);
  assert.equal(hf.tokenizer.decode(hf.tokenizer.encode(TEXT)), TEXT);
  const ids = [1, ...tok.encode(TEXT)];
  const diff = maxAbsDiff(await allLogits(hf, ids), await allLogits(lm, ids));
  assert.ok(diff < 1e-4, `max |Δlogit| ${diff}`);
  hf.dispose();
});

test('incremental decodeStep with the KV cache equals the full forward pass', async () => {
  const ids = [1, ...tok.encode(TEXT)].slice(0, 16);
  const full = await allLogits(lm, ids);
  const V = lm.info.vocabSize;
  const prefill = 6;
  const cache = new KvCache(lm);
  const check = (pos: number, logits: Float32Array) => {
    const d = maxAbsDiff(logits, full.subarray(pos * V, (pos + 1) * V));
    assert.ok(d < 1e-4, `position ${pos}: max diff ${d}`);
  };
  check(prefill - 1, await decodeStep(lm, cache, ids.slice(0, prefill)));
  assert.equal(cache.length, prefill);
  for (let p = prefill; p < ids.length; p++) {
    check(p, await decodeStep(lm, cache, [ids[p]!]));
    assert.equal(cache.length, p + 1);
  }
});

test('the KV cache grows past its capacity and keeps what it holds', async () => {
  const ids = [1, ...tok.encode(`${TEXT} ${TEXT} ${TEXT} ${TEXT}`)].slice(0, 70);
  assert.equal(ids.length, 70);
  const full = await allLogits(lm, ids);
  const V = lm.info.vocabSize;
  const cache = new KvCache(lm);
  await decodeStep(lm, cache, ids.slice(0, 60));
  assert.equal(cache.capacity, 64);
  let logits: Float32Array = new Float32Array();
  for (let p = 60; p < ids.length; p++) logits = await decodeStep(lm, cache, [ids[p]!]);
  assert.equal(cache.capacity, 128);
  assert.equal(cache.length, 70);
  const d = maxAbsDiff(logits, full.subarray(69 * V, 70 * V));
  assert.ok(d < 1e-4, `after growing: max diff ${d}`);
});

test('left-padded batch gives the same next-token logits as each unpadded sequence', async () => {
  const seqs = [[1, ...tok.encode('Once upon a time')], [1, ...tok.encode('The little bird was happy and sang a song')]];
  const batch = padBatch(seqs, 0, 'left');
  const S = batch.ids[0]!.length;
  const V = lm.info.vocabSize;
  const batched = await logitsAt(lm, batch, [{ row: 0, position: S - 1 }, { row: 1, position: S - 1 }]);
  const picked = await candidateLogits(lm, batch, [S - 1, S - 1], [5, 265, 400]);
  for (const [b, s] of seqs.entries()) {
    const alone = await allLogits(lm, s);
    const want = alone.subarray((s.length - 1) * V, s.length * V);
    const got = batched[b]!;
    assert.ok(maxAbsDiff(got, want) < 1e-4, `row ${b}`);
    const cand = Array.from(picked.subarray(b * 3, b * 3 + 3));
    assert.ok(maxAbsDiff(cand, [5, 265, 400].map((c) => got[c]!)) < 1e-5, `row ${b} candidates ${cand}`);
  }
});

test('gradients flow from the logits to the input embeddings', async () => {
  const ids = [1, ...tok.encode('Once upon')];
  const { logProb, grad } = await inputEmbeddingGradient(lm, { ids: [ids] }, ids.length - 1, 259);
  assert.deepEqual(grad.shape, [ids.length, lm.info.hiddenSize]);
  const h = lm.info.hiddenSize;
  const perPosition = Array.from({ length: ids.length }, (_, p) => grad.data.subarray(p * h, (p + 1) * h).reduce((a, g) => a + Math.abs(g), 0));
  assert.ok(perPosition.every((g) => Number.isFinite(g) && g > 0), `per-position |grad| ${perPosition}`);
  const logits = (await allLogits(lm, ids)).subarray((ids.length - 1) * lm.info.vocabSize, ids.length * lm.info.vocabSize);
  let max = -Infinity;
  for (const x of logits) max = Math.max(max, x);
  const lse = max + Math.log(logits.reduce((a, x) => a + Math.exp(x - max), 0));
  assert.ok(Math.abs(logProb - (logits[259]! - lse)) < 1e-4, `log p ${logProb} vs ${logits[259]! - lse}`);
});

test('loading rejects what it cannot read, naming the path', async () => {
  const dir = tmpDir();
  await assert.rejects(loadModel(path.join(dir, 'missing')), /missing: no such file/);
  assert.throws(() => llamaFamily.parseConfig({ model_type: 'gpt2' }, path.join(dir, 'config.json')), /config\.json: model_type "gpt2" is not llama/);
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ model_type: 'llama', hidden_size: 64 }));
  await assert.rejects(loadModel(dir), /config\.json: field "num_attention_heads" missing/);
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ model_type: 'llama', hidden_size: 64, num_attention_heads: 8, rope_scaling: { rope_type: 'yarn' } }));
  await assert.rejects(loadModel(dir), /rope_scaling type "yarn" is not supported/);
  const empty = tmpDir();
  await assert.rejects(loadModel(empty), /config\.json: not found \(and no llama2\.c \.bin checkpoint in /);
  const two = tmpDir();
  for (const f of ['a.bin', 'b.bin']) fs.copyFileSync(CHECKPOINT, path.join(two, f));
  await assert.rejects(loadModel(two), /2 llama2\.c \.bin checkpoints \(a\.bin, b\.bin\); name one/);
  const noTok = tmpDir();
  fs.copyFileSync(CHECKPOINT, path.join(noTok, 'model.bin'));
  await assert.rejects(loadModel(noTok), /no llama2\.c tokenizer \(tokenizer\.bin or tok512\.bin\) beside model\.bin/);
});
