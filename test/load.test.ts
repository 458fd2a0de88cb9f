import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { initEngine, tf } from '../src/engine/index.js';
import { readSafetensors, writeSafetensors } from '../src/engine/safetensors.js';
import { bertConfigToHf, type BertConfig, BertLM } from '../src/models/bert.js';
import { gpt2ConfigToHf, Gpt2LM } from '../src/models/gpt2.js';
import { createRandomModel, loadModel } from '../src/models/load.js';
import type { LanguageModel } from '../src/models/lm.js';
import { HfTokenizer } from '../src/tokenizers/hf.js';

const shared = path.resolve(process.cwd(), '../shared/models');
const bertDir = path.join(shared, 'bert-mini-lama');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'ptune-load-'));
let tokenizer: HfTokenizer;

before(async () => {
  await initEngine('wasm');
  tokenizer = HfTokenizer.fromDir(bertDir);
});

const TINY = { hiddenSize: 8, numLayers: 1, numHeads: 2, intermediateSize: 16, maxPositions: 32 };

/** Writes `lm` as a Hugging Face directory (config.json, model.safetensors, the WordPiece tokenizer files). */
function writeModelDir(name: string, config: Record<string, unknown>, tensors: Map<string, { shape: number[]; data: Float32Array }>): string {
  const dir = path.join(tmp, name);
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(config));
  writeSafetensors(path.join(dir, 'model.safetensors'), tensors, { format: 'pt' });
  for (const f of ['tokenizer.json', 'tokenizer_config.json']) fs.copyFileSync(path.join(bertDir, f), path.join(dir, f));
  return dir;
}

function tinyBertDir(name: string, over: Partial<BertConfig> = {}): { dir: string; lm: BertLM } {
  const lm = createRandomModel('bert', { ...TINY, ...over }, 11, tokenizer);
  return { dir: writeModelDir(name, bertConfigToHf(lm.config), lm.exportTensors()), lm };
}

function logitsOf(lm: LanguageModel, ids: number[], position: number): Float32Array {
  return tf.tidy(() => {
    const idT = tf.tensor2d([ids], [1, ids.length], 'int32');
    const hidden = lm.run({ embeds: lm.embed(idT), attentionMask: tf.onesLike(idT) });
    return lm.logitsAt(hidden, tf.tensor1d([position], 'int32')).dataSync() as Float32Array;
  });
}

async function rejects(p: string, pattern: RegExp): Promise<void> {
  await assert.rejects(loadModel(p), (err: Error) => {
    assert.match(err.message, pattern);
    assert.equal(err.message.includes('\n'), false, err.message);
    return true;
  });
}

test('bert-mini-lama and gpt2-mini-lama load with the right info and parameter counts', async () => {
  const tensorsBefore = tf.memory().numTensors;
  const bert = await loadModel(bertDir);
  assert.equal(bert.info.parameterCount, 4_764_090);
  assert.deepEqual(
    { family: bert.info.family, kind: bert.info.kind, side: bert.info.paddingSide, v: bert.info.vocabSize, h: bert.info.hiddenSize, l: bert.info.numLayers, pos: bert.info.maxPositions },
    { family: 'bert', kind: 'masked', side: 'right', v: 30522, h: 128, l: 4, pos: 128 },
  );
  assert.deepEqual(bert.info.special, { pad: 0, unk: 100, cls: 101, sep: 102, mask: 103 });
  const params = bert.parameters();
  assert.equal([...params.values()].reduce((n, v) => n + v.size, 0), 4_764_090);
  assert.deepEqual(params.get('bert.encoder.layer.0.intermediate.dense.weight')!.shape, [128, 512]);
  assert.equal([...params.values()].every((v) => !v.trainable), true);
  bert.dispose();

  const gpt2 = await loadModel(path.join(shared, 'gpt2-mini-lama'), { trainable: true });
  assert.equal(gpt2.info.parameterCount, 4_716_544);
  assert.equal(gpt2.info.family, 'gpt2');
  assert.equal(gpt2.info.kind, 'causal');
  assert.equal(gpt2.info.paddingSide, 'left');
  assert.equal(typeof gpt2.decodeStep, 'function');
  assert.deepEqual(gpt2.info.special, { pad: 0, unk: 100, bos: 101, eos: 102, cls: 101, sep: 102, mask: 103 });
  assert.equal([...gpt2.parameters().values()].every((v) => v.trainable), true);
  gpt2.dispose();
  assert.equal(tf.memory().numTensors, tensorsBefore);
});

test('a llama2.c directory (config.json without model_type) is routed to the Llama loader', async () => {
  const lm = await loadModel(path.join(shared, 'stories260K'));
  assert.equal(lm.info.family, 'llama');
  assert.equal(lm.info.vocabSize, 512);
  lm.dispose();
});

test('createRandomModel is deterministic per seed and counts parameters like the checkpoints', () => {
  const a = createRandomModel('bert', TINY, 3);
  const b = createRandomModel('bert', TINY, 3);
  const c = createRandomModel('bert', TINY, 4);
  const name = 'bert.encoder.layer.0.attention.self.query.weight';
  const [va, vb, vc] = [a, b, c].map((m) => m.parameters().get(name)!.dataSync());
  assert.deepEqual(va, vb);
  assert.notDeepEqual(va, vc);
  assert.equal(a.tokenizer.vocabSize, 30522);
  assert.deepEqual(a.info.special, { pad: 0, unk: 1, cls: 2, sep: 3, mask: 4 });
  [a, b, c].forEach((m) => m.dispose());

  const mini = { vocabSize: 30522, hiddenSize: 128, numLayers: 4, numHeads: 4, intermediateSize: 512, maxPositions: 128 };
  const bertMini = createRandomModel('bert', mini, 1);
  assert.equal(bertMini.info.parameterCount, 4_764_090);
  bertMini.dispose();
  const gptMini = createRandomModel('gpt2', mini, 1);
  assert.equal(gptMini.info.parameterCount, 4_716_544);
  assert.deepEqual(gptMini.info.special, { pad: 0, unk: 1, cls: 2, sep: 3, mask: 4, bos: 2, eos: 3 });
  gptMini.dispose();
});

test('export → safetensors → loadModel reproduces BERT, RoBERTa and GPT-2 logits', async () => {
  const ids = [101, 3000, 2003, 103, 1012, 102];
  const cases: [string, LanguageModel, Record<string, unknown>, Map<string, { shape: number[]; data: Float32Array }>][] = [];
  const bert = createRandomModel('bert', TINY, 21, tokenizer);
  cases.push(['bert', bert, bertConfigToHf(bert.config), bert.exportTensors()]);
  const roberta = createRandomModel('bert', { ...TINY, modelType: 'roberta', padTokenId: 1, maxPositions: 34, typeVocabSize: 1 }, 22, tokenizer);
  cases.push(['roberta', roberta, bertConfigToHf(roberta.config), roberta.exportTensors()]);
  const gpt2 = createRandomModel('gpt2', TINY, 23, tokenizer);
  cases.push(['gpt2', gpt2, gpt2ConfigToHf(gpt2.config, { bos: 101, eos: 102, pad: 0 }), gpt2.exportTensors()]);
  for (const [name, lm, config, tensors] of cases) {
    const dir = writeModelDir(`rt-${name}`, config, tensors);
    const stored = readSafetensors(path.join(dir, 'model.safetensors')).tensors;
    if (name === 'roberta') assert.ok(stored.has('lm_head.dense.weight') && stored.has('roberta.embeddings.word_embeddings.weight'));
    if (name === 'bert') assert.deepEqual(stored.get('bert.encoder.layer.0.intermediate.dense.weight')!.shape, [16, 8]);
    // the tfjs engine on both sides: the round trip must reproduce the logits bit for bit
    const loaded = await loadModel(dir, { engine: 'tfjs' });
    assert.equal(loaded.info.parameterCount, lm.info.parameterCount);
    const want = logitsOf(lm, ids, 3);
    const got = logitsOf(loaded, ids, 3);
    assert.deepEqual(got, want, name);
    loaded.dispose();
    lm.dispose();
  }
});

test('gpt2 checkpoints without the transformer. prefix load too', async () => {
  const lm = createRandomModel('gpt2', TINY, 5, tokenizer);
  const bare = new Map([...lm.exportTensors()].map(([k, v]) => [k.replace(/^transformer\./, ''), v]));
  const dir = writeModelDir('gpt2-bare', gpt2ConfigToHf(lm.config, { bos: 101, eos: 102, pad: 0 }), bare);
  const loaded = await loadModel(dir, { engine: 'tfjs' });
  assert.ok(loaded instanceof Gpt2LM);
  assert.deepEqual(logitsOf(loaded, [101, 2023], 1), logitsOf(lm, [101, 2023], 1));
  loaded.dispose();
  lm.dispose();
});

test('load errors are one line and name the path, field or tensor', async () => {
  await rejects(path.join(tmp, 'nope'), /nope: no such file or directory/);

  const empty = path.join(tmp, 'empty');
  fs.mkdirSync(empty);
  await rejects(empty, /empty\/config\.json: not found/);

  const t5 = path.join(tmp, 't5');
  fs.mkdirSync(t5);
  fs.writeFileSync(path.join(t5, 'config.json'), JSON.stringify({ model_type: 't5' }));
  await rejects(t5, /t5\/config\.json: unsupported model_type "t5" \(supported: bert, roberta, gpt2, llama\)/);
  fs.writeFileSync(path.join(t5, 'config.json'), '{ "model_type": ');
  await rejects(t5, /t5\/config\.json: invalid JSON/);

  const { dir, lm } = tinyBertDir('errors');
  lm.dispose();
  const config = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8')) as Record<string, unknown>;

  delete config.hidden_size;
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(config));
  await rejects(dir, /errors\/config\.json: field "hidden_size" missing or not a number/);
  config.hidden_size = 8;

  // a config that disagrees with the stored shapes
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ ...config, intermediate_size: 12 }));
  await rejects(
    dir,
    /errors\/model\.safetensors: tensor "bert\.encoder\.layer\.0\.intermediate\.dense\.weight": expected shape \[12,8\], found \[16,8\]/,
  );
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ ...config, num_hidden_layers: 2 }));
  await rejects(dir, /errors\/model\.safetensors: missing tensor "bert\.encoder\.layer\.1\.attention\.self\.query\.weight" \(expected shape \[8,8\]\)/);
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(config));

  const weights = path.join(dir, 'model.safetensors');
  const good = fs.readFileSync(weights);
  fs.writeFileSync(weights, good.subarray(0, good.length - 100));
  await rejects(dir, /errors\/model\.safetensors: tensor "[^"]+": data_offsets \[\d+, \d+\] run past the end of the data/);
  fs.writeFileSync(weights, good.subarray(0, 4));
  await rejects(dir, /errors\/model\.safetensors: not a safetensors file \(4 bytes/);
  fs.rmSync(weights);
  await rejects(dir, /errors: no model\.safetensors or model\.safetensors\.index\.json/);
  fs.writeFileSync(weights, good);

  fs.rmSync(path.join(dir, 'tokenizer.json'));
  await rejects(dir, /errors\/tokenizer\.json: tokenizer file not found/);
});
