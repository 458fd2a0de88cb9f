import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Runtime, useRuntime, type OrtModule } from '../src/engine/runtime.js';
import { readRecords } from '../src/data/read.js';
import { blobSource } from '../src/io/files.js';
import { dirSource } from '../src/io/node-files.js';
import { createRandomModel, loadModel, loadModelFrom } from '../src/models/load.js';
import { PromptEncoder } from '../src/prompt/encoder.js';
import { PTuningPrograms } from '../src/prompt/programs.js';
import { makeHead } from '../src/prompt/heads.js';
import { collate, renderExample } from '../src/prompt/render.js';
import { parseTemplate } from '../src/prompt/template.js';
import { memoryStore } from '../src/train/loop.js';
import { DEFAULT_LOOP, DEFAULT_OPTIM, PTuningSession, type RunConfig } from '../src/train/session.js';
import { PTuning } from '../src/train/tuning.js';
import { lamaRunConfig, parseLabelledList, stepTimer } from '../src/web/tasks.js';
import { bundle, nodeOnlySources } from '../scripts/web/build.js';
import { shared } from './fixtures.js';

const bertDir = path.join(shared, 'models/bert-mini-lama');
const p1303 = path.join(shared, 'data/lama/fact-retrieval/original/P1303');

test('ptune/web bundles for browsers with nothing of Node: no fs, child_process, native binding or file-reading module', async () => {
  const { metafile } = await bundle('src/web/index.ts', null);
  const inputs = Object.keys(metafile.inputs);
  assert.ok(inputs.includes('src/web/index.ts') && inputs.includes('src/train/tuning.ts') && inputs.includes('src/prompt/programs.ts'));
  const banned = nodeOnlySources();
  for (const f of ['src/train/session.ts', 'src/train/trainer.ts', 'src/models/load.ts', 'src/data/read.ts', 'src/engine/safetensors.ts', 'src/engine/runtime-node.ts']) {
    assert.ok(banned.has(f), `${f} reads files`);
    assert.ok(!inputs.includes(f), `${f} is in the browser bundle`);
  }
  assert.ok(!inputs.some((p) => p.startsWith('node:') || p.includes('onnxruntime-node')));
  const pkg = JSON.parse(fs.readFileSync('package.json', 'utf8')) as { exports: Record<string, { import: string }> };
  assert.equal(pkg.exports['./web']!.import, './dist/src/web/index.js');
});

test('loadModelFrom a FileSource gives the weights loadModel reads from disk; a truncated safetensors is a one-line error', async () => {
  const fromDisk = await loadModel(bertDir);
  const fromSource = await loadModelFrom(dirSource(bertDir));
  assert.deepEqual([...fromSource.params.keys()], [...fromDisk.params.keys()]);
  for (const [name, p] of fromDisk.params) assert.deepEqual(fromSource.params.get(name)!.data, p.data, name);
  assert.deepEqual(fromSource.info.special, fromDisk.info.special);
  assert.equal(fromSource.tokenizer.encode('the capital of france').join(','), fromDisk.tokenizer.encode('the capital of france').join(','));
  fromDisk.dispose();
  fromSource.dispose();

  const bytes = fs.readFileSync(path.join(bertDir, 'model.safetensors'));
  const files = (weights: Uint8Array) => blobSource({
    'config.json': fs.readFileSync(path.join(bertDir, 'config.json')),
    'tokenizer.json': fs.readFileSync(path.join(bertDir, 'tokenizer.json')),
    'model.safetensors': weights,
  }, 'picked');
  await assert.rejects(loadModelFrom(files(bytes.subarray(0, 100_000))), /^Error: picked\/model\.safetensors: tensor ".*": data_offsets \[\d+, \d+\] run past the end of the data \(\d+ bytes\)$/);
  await assert.rejects(loadModelFrom(files(new TextEncoder().encode('not a safetensors file at all'))), /picked\/model\.safetensors: header length \d+ exceeds the file size 29/);
  await assert.rejects(loadModelFrom(blobSource({ 'notes.txt': new Uint8Array(3) }, 'picked')), /^Error: picked\/config\.json: not found: not a Hugging Face model directory/);
});

test('trainInMemory is PTuningSession.train without files: the same evaluations, the best weights restored from memory', async () => {
  const lm = await loadModel(bertDir);
  const config = lamaRunConfig({ model: bertDir, template: '3,3,3', steps: 8, batchSize: 8, lr: 0.01, seed: 3, evalEvery: 4 });
  const train = readRecords(path.join(p1303, 'train.jsonl')).slice(0, 64);
  const dev = readRecords(path.join(p1303, 'dev.jsonl')).slice(0, 40);
  const runDir = fs.mkdtempSync(path.join(os.tmpdir(), 'ptune-mem-'));
  const onDisk = await PTuningSession.create(config, lm);
  const disk = await onDisk.train({ runDir, train, dev });
  const diskEvals = fs.readFileSync(path.join(runDir, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>).filter((r) => r.type === 'eval');
  onDisk.dispose({ keepLm: true });

  const inMemory = new PTuning(config, lm);
  const logged: Record<string, unknown>[] = [];
  const timer = stepTimer();
  const mem = await inMemory.trainInMemory({ train, dev, onLog: (r) => { logged.push(r); timer.onLog(r); }, progress: timer.progress, restoreBest: true });
  assert.deepEqual(logged.filter((r) => r.type === 'eval'), diskEvals);
  assert.equal(mem.bestScore, disk.bestScore);
  assert.equal(mem.step, 8);
  assert.equal(timer.times.length, 8 - 1 - 1, 'steps after the first, less the one followed by an evaluation before the last');
  const best = await PTuningSession.load(runDir, 'best', lm);
  for (const [name, p] of best.trainedParams()) assert.deepEqual(inMemory.trainedParams().get(name)!.data, p.data, name);
  fs.rmSync(runDir, { recursive: true, force: true });
  lm.dispose();

  const store = memoryStore();
  assert.equal(store.begin(new Map(), null as never, null as never), null);
  assert.equal(store.lastSaved(), null);
});

test('a pasted labelled list: text<TAB>label lines, header skipped, errors name the line', () => {
  assert.deepEqual(parseLabelledList('text\tlabel\na fine film\tpos\n\nawful\tneg\n'), [{ text: 'a fine film', label: 'pos' }, { text: 'awful', label: 'neg' }]);
  assert.throws(() => parseLabelledList('a fine film\tpos\nno label here'), /list line 2: expected "text<TAB>label"/);
});

test('onnxruntime-web with frozen weights bound into programs: the same losses and gradients, and a second model of the same shape is not served the first one\'s weights', async () => {
  const ort = (await import('onnxruntime-web')) as unknown as OrtModule;
  const shape = { hiddenSize: 32, numLayers: 2, numHeads: 2, intermediateSize: 64, maxPositions: 64, vocabSize: 120 };
  const a = createRandomModel('bert', shape, 1);
  const b = createRandomModel('bert', shape, 2);
  const template = parseTemplate('[P*2] w7 w8 [MASK] w9');
  const head = makeHead({ kind: 'answer', answerField: 'y' }, a.tokenizer, 120);
  const step = async (lm: typeof a) => {
    const enc = new PromptEncoder({ type: 'lstm', numVirtualTokens: 2, tokenDim: 32, seed: 4 });
    const ex = renderExample(template, {}, lm.tokenizer, lm.info, { maxLength: 16 })!;
    const r = await new PTuningPrograms(lm, enc, head).lossAndGrads(collate([ex, ex], lm.info), [10, 11]);
    return { loss: r.loss, grad: Array.from(enc.params.get('embedding.weight')!.grad) };
  };
  useRuntime(new Runtime('onnxruntime-web', ort, 1));
  const plainA = await step(a);
  const plainB = await step(b);
  useRuntime(new Runtime('onnxruntime-web', ort, 1, { bakeFrozenWeights: true, spinning: false }));
  const { programs } = await import('../src/engine/program.js');
  await programs.clear();
  const bakedA = await step(a);
  const bakedB = await step(b);
  assert.ok(Math.abs(plainA.loss - plainB.loss) > 1e-3, 'two different models');
  for (const [plain, baked] of [[plainA, bakedA], [plainB, bakedB]] as const) {
    assert.ok(Math.abs(plain.loss - baked.loss) < 1e-5, `loss ${baked.loss} bound, ${plain.loss} fed`);
    plain.grad.forEach((g, i) => assert.ok(Math.abs(g - baked.grad[i]!) < 1e-5));
  }
});
