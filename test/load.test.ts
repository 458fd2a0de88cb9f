import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { readSafetensors, writeSafetensors } from '../src/engine/safetensors.js';
import type { BertConfig } from '../src/models/bert.js';
import { gpt2Family, type Gpt2Config } from '../src/models/gpt2.js';
import { createRandomModel, loadModel } from '../src/models/load.js';
import { supportedModelTypes } from '../src/models/families.js';
import type { LanguageModel } from '../src/models/model.js';
import { logitsAt } from '../src/models/forward.js';
import { HfTokenizer } from '../src/tokenizers/hf.js';

const shared = path.resolve(process.cwd(), '../shared/models');
const bertDir = path.join(shared, 'bert-mini-lama');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'ptune-load-'));
let tokenizer: HfTokenizer;

before(() => {
  tokenizer = HfTokenizer.fromDir(bertDir);
});

const TINY = { hiddenSize: 8, numLayers: 1, numHeads: 2, intermediateSize: 16, maxPositions: 32 };

/** The model's weights as safetensors entries (Hugging Face names and layout). */
function tensorsOf(lm: LanguageModel): Map<string, { shape: number[]; data: Float32Array }> {
  return new Map([...lm.params].map(([name, p]) => [name, { shape: p.shape, data: p.data }]));
}

/** config.json for `lm` as Hugging Face writes it (`special` overrides a GPT-2's bos/eos/pad). */
function hfConfig(lm: LanguageModel, special?: Gpt2Config['special']): Record<string, unknown> {
  const config = special ? { ...(lm.config as Gpt2Config), special } : lm.config;
  return lm.family.toHfConfig(config);
}

/** Writes a Hugging Face directory (config.json, model.safetensors, the WordPiece tokenizer files). */
function writeModelDir(name: string, config: Record<string, unknown>, tensors: Map<string, { shape: number[]; data: Float32Array }>): string {
  const dir = path.join(tmp, name);
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(config));
  writeSafetensors(path.join(dir, 'model.safetensors'), tensors, { format: 'pt' });
  for (const f of ['tokenizer.json', 'tokenizer_config.json']) fs.copyFileSync(path.join(bertDir, f), path.join(dir, f));
  return dir;
}

function tinyBertDir(name: string, over: Partial<BertConfig> = {}): { dir: string; lm: LanguageModel } {
  const lm = createRandomModel('bert', { ...TINY, ...over }, 11, tokenizer);
  return { dir: writeModelDir(name, hfConfig(lm), tensorsOf(lm)), lm };
}

async function logitsOf(lm: LanguageModel, ids: number[], position: number): Promise<Float32Array> {
  return (await logitsAt(lm, { ids: [ids] }, [{ row: 0, position }]))[0]!;
}

async function rejects(p: string, pattern: RegExp): Promise<void> {
  await assert.rejects(loadModel(p), (err: Error) => {
    assert.match(err.message, pattern);
    assert.equal(err.message.includes('\n'), false, err.message);
    return true;
  });
}

test('bert-mini-lama and gpt2-mini-lama load with the right info and parameter counts', async () => {
  const bert = await loadModel(bertDir);
  assert.equal(bert.info.parameterCount, 4_764_090);
  assert.deepEqual(
    { family: bert.info.family, kind: bert.info.kind, side: bert.info.paddingSide, v: bert.info.vocabSize, h: bert.info.hiddenSize, l: bert.info.numLayers, pos: bert.info.maxPositions },
    { family: 'bert', kind: 'masked', side: 'right', v: 30522, h: 128, l: 4, pos: 128 },
  );
  assert.deepEqual(bert.info.special, { pad: 0, unk: 100, cls: 101, sep: 102, mask: 103 });
  const params = bert.params;
  assert.equal([...params.values()].reduce((n, v) => n + v.size, 0), 4_764_090);
  // Hugging Face layout: torch nn.Linear weights are [out, in]
  assert.deepEqual(params.get('bert.encoder.layer.0.intermediate.dense.weight')!.shape, [512, 128]);
  assert.equal([...params.values()].every((v) => !v.trainable), true);
  assert.equal(bert.trainable, false);
  bert.dispose();
  assert.equal(bert.params.size, 0, 'dispose releases the weights');

  const gpt2 = await loadModel(path.join(shared, 'gpt2-mini-lama'), { trainable: true });
  assert.equal(gpt2.info.parameterCount, 4_716_544);
  assert.equal(gpt2.info.family, 'gpt2');
  assert.equal(gpt2.info.kind, 'causal');
  assert.equal(gpt2.info.paddingSide, 'left');
  assert.equal(gpt2.family, gpt2Family);
  // GPT-2's Conv1D weights are stored [in, out]
  assert.deepEqual(gpt2.params.get('transformer.h.0.mlp.c_fc.weight')!.shape, [128, 512]);
  assert.deepEqual(gpt2.info.special, { pad: 0, unk: 100, bos: 101, eos: 102, cls: 101, sep: 102, mask: 103 });
  assert.equal([...gpt2.params.values()].every((v) => v.trainable), true);
  assert.equal(gpt2.trainable, true);
  gpt2.setTrainable(false);
  assert.equal([...gpt2.params.values()].some((v) => v.trainable), false);
  gpt2.dispose();
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
  const [va, vb, vc] = [a, b, c].map((m) => m.params.get(name)!.data);
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
  assert.ok(createRandomModel('gpt2', TINY, 1, undefined, { trainable: true }).trainable);
});

test('export → safetensors → loadModel reproduces BERT, RoBERTa and GPT-2 logits', async () => {
  const ids = [101, 3000, 2003, 103, 1012, 102];
  const cases: [string, LanguageModel, Record<string, unknown>][] = [];
  const bert = createRandomModel('bert', TINY, 21, tokenizer);
  cases.push(['bert', bert, hfConfig(bert)]);
  const roberta = createRandomModel('roberta', { ...TINY, modelType: 'roberta', padTokenId: 1, maxPositions: 34, typeVocabSize: 1 }, 22, tokenizer);
  cases.push(['roberta', roberta, hfConfig(roberta)]);
  const gpt2 = createRandomModel('gpt2', TINY, 23, tokenizer);
  cases.push(['gpt2', gpt2, hfConfig(gpt2, { bos: 101, eos: 102, pad: 0 })]);
  for (const [name, lm, config] of cases) {
    const dir = writeModelDir(`rt-${name}`, config, tensorsOf(lm));
    const stored = readSafetensors(path.join(dir, 'model.safetensors')).tensors;
    if (name === 'roberta') assert.ok(stored.has('lm_head.dense.weight') && stored.has('roberta.embeddings.word_embeddings.weight'));
    if (name === 'bert') assert.deepEqual(stored.get('bert.encoder.layer.0.intermediate.dense.weight')!.shape, [16, 8]);
    const loaded = await loadModel(dir);
    assert.equal(loaded.info.family, lm.info.family);
    assert.equal(loaded.info.parameterCount, lm.info.parameterCount);
    const json = (x: unknown) => JSON.parse(JSON.stringify(x)) as unknown;
    assert.deepEqual(json(loaded.family.toHfConfig(loaded.config)), json(config), `${name}: config.json reads back as the same configuration`);
    // the same program on both sides: the round trip must reproduce the logits bit for bit
    const want = await logitsOf(lm, ids, 3);
    const got = await logitsOf(loaded, ids, 3);
    assert.deepEqual(got, want, name);
    loaded.dispose();
    lm.dispose();
  }
});

test('gpt2 checkpoints without the transformer. prefix load too', async () => {
  const lm = createRandomModel('gpt2', TINY, 5, tokenizer);
  const bare = new Map([...tensorsOf(lm)].map(([k, v]) => [k.replace(/^transformer\./, ''), v]));
  const dir = writeModelDir('gpt2-bare', hfConfig(lm, { bos: 101, eos: 102, pad: 0 }), bare);
  const loaded = await loadModel(dir);
  assert.equal(loaded.family, gpt2Family);
  assert.ok(loaded.params.has('transformer.h.0.attn.c_attn.weight'), 'weights keep their canonical names');
  assert.deepEqual(await logitsOf(loaded, [101, 2023], 1), await logitsOf(lm, [101, 2023], 1));
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
  const supported = supportedModelTypes();
  for (const t of ['bert', 'roberta', 'gpt2', 'llama']) assert.ok(supported.includes(t), t);
  await rejects(t5, new RegExp(`t5/config\\.json: unsupported model_type "t5" \\(supported: ${supported.join(', ')}\\)`));
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
    /errors\/model\.safetensors: tensor "bert\.encoder\.layer\.0\.intermediate\.dense\.weight": expected shape \[12,8\] from config\.json, found \[16,8\]/,
  );
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ ...config, num_hidden_layers: 2 }));
  await rejects(dir, /errors: checkpoint has no tensor "bert\.encoder\.layer\.1\.attention\.self\.query\.weight" \(expected shape \[8,8\]\)/);
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
