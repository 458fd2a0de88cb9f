import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Runtime, type OrtModule } from '../src/engine/runtime.js';
import { ExportedModel, type ExportedPrediction } from '../src/export/model.js';
import { exportOnnx } from '../src/export/onnx.js';
import type { ExportSpec } from '../src/export/spec.js';
import { dirSource } from '../src/io/node-files.js';
import { readRecords } from '../src/data/read.js';
import { loadModel } from '../src/models/load.js';
import type { LanguageModel } from '../src/models/model.js';
import type { HeadSpec } from '../src/prompt/heads.js';
import { DEFAULT_LOOP, DEFAULT_OPTIM, PTuningSession, type Prediction, type RunConfig } from '../src/train/session.js';
import { runCli, shared } from './fixtures.js';

const bertDir = path.join(shared, 'models/bert-mini-lama');
const gpt2Dir = path.join(shared, 'models/gpt2-mini-lama');
const sst2 = path.join(shared, 'data/sst2');
const p1303 = path.join(shared, 'data/lama/fact-retrieval/original/P1303');
const TOL = 1e-4;

let root: string;
let web: Runtime;
let bert: LanguageModel;

before(async () => {
  root = fs.mkdtempSync(path.join(os.tmpdir(), 'ptune-onnx-'));
  const ort = (await import('onnxruntime-web')) as unknown as OrtModule;
  web = new Runtime('onnxruntime-web', ort, 2);
  bert = await loadModel(bertDir);
});

after(() => {
  bert.dispose();
  fs.rmSync(root, { recursive: true, force: true });
});

/** A Python with the onnx package (Debian's python3-onnx), or null. */
function onnxPython(): string | null {
  for (const py of [process.env.PTUNE_PYTHON, '/usr/bin/python3', 'python3']) {
    if (!py) continue;
    const r = spawnSync(py, ['-c', 'import onnx'], { encoding: 'utf8' });
    if (r.status === 0) return py;
  }
  return null;
}

/** onnx.checker.check_model, with full_check (shape inference over the whole graph). */
function checkModel(t: { skip(msg: string): void }, file: string): boolean {
  const py = onnxPython();
  if (!py) {
    // CI installs python3-onnx (.ci/run): there, a missing checker is a failure
    assert.ok(!process.env.CI, 'no python3 with the onnx package (apt-get install -y python3-onnx)');
    t.skip('no python3 with the onnx package (apt-get install -y python3-onnx)');
    return false;
  }
  const script = 'import sys, onnx\nonnx.checker.check_model(sys.argv[1], full_check=True)\nm = onnx.load(sys.argv[1])\nprint(onnx.__version__, m.ir_version, [o.version for o in m.opset_import if o.domain == ""][0])';
  const r = spawnSync(py, ['-c', script, file], { encoding: 'utf8' });
  assert.equal(r.status, 0, `onnx.checker.check_model failed: ${r.stderr}`);
  return true;
}

async function trainRun(name: string, config: RunConfig, train: Record<string, unknown>[], dev: Record<string, unknown>[], lm?: LanguageModel): Promise<string> {
  const runDir = path.join(root, name);
  const s = await PTuningSession.create(config, lm);
  await s.train({ runDir, train, dev });
  s.dispose({ keepLm: true });
  return runDir;
}

/** Largest |exported − predict| over every score `predict` lists; labels / top answers compared first. */
function compare(exported: ExportedPrediction[], predicted: Prediction[], what: string): number {
  assert.equal(exported.length, predicted.length);
  let max = 0;
  exported.forEach((e, i) => {
    const p = predicted[i]!;
    assert.equal(e.prediction, p.prediction, `${what}: record ${i} predicted ${e.prediction}, ptune predict says ${p.prediction}`);
    for (const s of p.scores) {
      const hit = e.scores.find((x) => x.label === s.label);
      assert.ok(hit, `${what}: record ${i}: no score for ${s.label}`);
      max = Math.max(max, Math.abs(hit.score - s.score));
    }
  });
  assert.ok(max <= TOL, `${what}: scores differ by ${max}`);
  return max;
}

const loop = { ...DEFAULT_LOOP, epochs: 1, maxSteps: 6, batchSize: 16, saveEvery: 0, logEvery: 0 };

test('ptune export --format onnx: an SST-2 run as model.onnx + tokenizer.json + ptune.json passes onnx.checker and predicts as ptune predict on 200 records (onnxruntime-node and -web)', async (t) => {
  const config: RunConfig = {
    version: 1, model: bertDir, template: '{sentence} [P*3] It was [MASK] .',
    head: { kind: 'label', labelField: 'label', labelWords: { '0': 'terrible', '1': 'great' } },
    encoder: { type: 'lstm', seed: 3 }, maxLength: 48, skipTooLong: false,
    loop, optim: { ...DEFAULT_OPTIM, lr: 1e-2 },
  };
  const dev = readRecords(path.join(sst2, 'dev.tsv')).slice(0, 200);
  const run = await trainRun('sst2', config, readRecords(path.join(sst2, 'train.tsv')).slice(0, 96), dev.slice(0, 32), bert);
  const out = path.join(root, 'sst2-onnx');
  const cli = await runCli(['export', '--run', run, '--format', 'onnx', '--out', out]);
  assert.equal(cli.code, 0, cli.text);
  assert.deepEqual(fs.readdirSync(out).sort(), ['model.onnx', 'ptune.json', 'tokenizer.json']);
  const spec = JSON.parse(fs.readFileSync(path.join(out, 'ptune.json'), 'utf8')) as ExportSpec;
  assert.deepEqual(spec.inputs, { names: ['input_ids', 'attention_mask', 'token_type_ids'], batch: 1, length: 48, paddingSide: 'right', padId: 0 });
  assert.deepEqual(spec.labels!.names, ['0', '1']);
  assert.equal(spec.render.pseudoBase, 30522);
  assert.equal(spec.render.numPseudo, 3);
  assert.ok(spec.howTo.length >= 5);
  checkModel(t, path.join(out, 'model.onnx'));

  const session = await PTuningSession.load(run, 'best', bert);
  const predicted = await session.predict(dev, 'dev', 2);
  const node = await ExportedModel.load(dirSource(out));
  const nodeDiff = compare(await node.predict(dev), predicted, 'onnxruntime-node');
  const inWeb = await ExportedModel.load(dirSource(out), web);
  const webDiff = compare(await inWeb.predict(dev), predicted, 'onnxruntime-web');
  assert.ok(new Set(predicted.map((p) => p.prediction)).size === 2, 'both labels are predicted');
  t.diagnostic(`max |score diff| over 200 records: node ${nodeDiff.toExponential(2)}, web ${webDiff.toExponential(2)}`);
  await Promise.all([node.release(), inWeb.release()]);
});

test('onnx export with external data and a batch of 8: check_model reads model.onnx.data; both runtimes give ptune predict\'s answers', async (t) => {
  const config: RunConfig = {
    version: 1, model: bertDir, template: '3,3,3',
    head: { kind: 'answer', answerField: 'obj_label' },
    encoder: { type: 'lstm', seed: 5 }, maxLength: 32, skipTooLong: false,
    loop, optim: DEFAULT_OPTIM,
  };
  const dev = readRecords(path.join(p1303, 'dev.jsonl'));
  const run = await trainRun('p1303', config, readRecords(path.join(p1303, 'train.jsonl')).slice(0, 96), dev.slice(0, 32), bert);
  const session = await PTuningSession.load(run, 'best', bert);
  const out = path.join(root, 'p1303-onnx');
  const spec = await exportOnnx(session, out, { batch: 8, topK: 3, externalData: true });
  assert.equal(spec.files.externalData, 'model.onnx.data');
  assert.ok(fs.statSync(path.join(out, 'model.onnx.data')).size > 15e6);
  assert.ok(fs.statSync(path.join(out, 'model.onnx')).size < 1e6, 'the graph without its weights');
  assert.deepEqual(Object.keys(spec.outputs), ['top_ids', 'top_scores']);
  checkModel(t, path.join(out, 'model.onnx'));

  const predicted = await session.predict(dev, 'dev', 3);
  const inWeb = await ExportedModel.load(dirSource(out), web);
  compare(await inWeb.predict(dev), predicted, 'onnxruntime-web (external data)');
  // onnxruntime-node reads the external data from beside the file it was given
  const ortNode = await import('onnxruntime-node');
  const s = await ortNode.InferenceSession.create(path.join(out, 'model.onnx'));
  const first = await inWeb.run(dev.slice(0, 8));
  const { renderInputs } = await import('../src/export/spec.js');
  const feeds = renderInputs(spec, inWeb.tokenizer, dev.slice(0, 8)).feeds;
  const r = await s.run(Object.fromEntries(Object.entries(feeds).map(([k, v]) => [k, new ortNode.Tensor('int64', v.data, v.shape)])));
  assert.deepEqual(Array.from(r.top_ids!.data as BigInt64Array), Array.from(first.outputs.top_ids!.data as BigInt64Array));
  await Promise.all([inWeb.release(), s.release()]);
});

test('onnx export of a causal LM (gpt2-mini-lama, left padding): top answers as ptune predict, and the next-token logits', async (t) => {
  const gpt2 = await loadModel(gpt2Dir);
  const config: RunConfig = {
    version: 1, model: gpt2Dir, template: '3,3,0',
    head: { kind: 'answer', answerField: 'obj_label' },
    encoder: { type: 'mlp', seed: 7 }, maxLength: 24, skipTooLong: false,
    loop, optim: DEFAULT_OPTIM,
  };
  const dev = readRecords(path.join(p1303, 'dev.jsonl')).slice(0, 64);
  const run = await trainRun('gpt2', config, readRecords(path.join(p1303, 'train.jsonl')).slice(0, 64), dev.slice(0, 16), gpt2);
  const session = await PTuningSession.load(run, 'best', gpt2);
  const out = path.join(root, 'gpt2-onnx');
  const spec = await exportOnnx(session, out, { batch: 4 });
  assert.equal(spec.inputs.paddingSide, 'left');
  assert.deepEqual(spec.inputs.names, ['input_ids', 'attention_mask']);
  assert.deepEqual(spec.outputs.logits!.shape, [4, gpt2.info.vocabSize]);
  checkModel(t, path.join(out, 'model.onnx'));
  const model = await ExportedModel.load(dirSource(out));
  compare(await model.predict(dev), await session.predict(dev, 'dev', 5), 'causal');
  // the logits are the engine's scores at the last prompt token
  const { items } = session.prepare(dev.slice(0, 4), 'dev', false);
  const engine = await session.scores(items);
  const { outputs } = await model.run(dev.slice(0, 4));
  const logits = outputs.logits!.data as Float32Array;
  let max = 0;
  for (let i = 0; i < engine.data.length; i++) max = Math.max(max, Math.abs(engine.data[i]! - logits[i]!));
  assert.ok(max < 1e-3, `logits differ by ${max}`);
  await model.release();
  gpt2.dispose();
});

test('onnx export bakes in deep prompts (plain and projected), prompt tuning\'s rows, the PEFT layout and a linear head: predictions as ptune predict (masked and causal)', async (t) => {
  const gpt2 = await loadModel(gpt2Dir);
  const dev = readRecords(path.join(sst2, 'dev.tsv')).slice(0, 40);
  const label: HeadSpec = { kind: 'label', labelField: 'label', labelWords: { '0': 'terrible', '1': 'great' } };
  const linear: HeadSpec = { kind: 'linear', labelField: 'label', labels: ['0', '1'], seed: 4 };
  const cases: [string, LanguageModel, Partial<RunConfig>][] = [
    ['prefix', bert, { method: 'prefix', prefix: { numVirtualTokens: 4, projection: false } }],
    ['prefix-proj-linear', bert, { method: 'prefix', prefix: { numVirtualTokens: 3, projection: true, hiddenSize: 16, dropout: 0.1 }, head: linear }],
    ['prompt-tuning', bert, { method: 'prompt-tuning', promptTuning: { numVirtualTokens: 5, initFromWords: 'the review says' } }],
    ['peft-layout-linear', bert, { template: '[P*3] {sentence} It was [MASK] .', peftLayout: true, head: linear }],
    ['gpt2-prefix-linear', gpt2, { template: '{sentence} It was [MASK]', method: 'prefix', prefix: { numVirtualTokens: 4, projection: false }, head: linear }],
  ];
  try {
    for (const [name, lm, over] of cases) {
      const config: RunConfig = {
        version: 1, model: lm.info.source, template: '{sentence} It was [MASK] .', head: label,
        encoder: { type: 'mlp', seed: 9 }, maxLength: 40, skipTooLong: false, loop, optim: DEFAULT_OPTIM, ...over,
      };
      const session = await PTuningSession.create(config, lm);
      const out = path.join(root, `${name}-onnx`);
      const spec = await exportOnnx(session, out, { batch: 4 });
      assert.equal(spec.task, 'label', name);
      assert.deepEqual(spec.labels!.names, ['0', '1'], name);
      assert.equal(spec.render.prefix, session.placedFirst, name);
      if (config.head.kind === 'linear') assert.equal(spec.labels!.words, null, name);
      if (name === 'prompt-tuning' || name === 'peft-layout-linear') {
        assert.ok(spec.template.parts.every((p) => p.type !== 'pseudo'), `${name}: the leading rows are render.prefix, not parts`);
        assert.equal(spec.render.numPseudo, session.placedFirst, name);
      }
      checkModel(t, path.join(out, 'model.onnx'));
      const model = await ExportedModel.load(dirSource(out), web);
      const diff = compare(await model.predict(dev), await session.predict(dev, 'dev', 2), name);
      t.diagnostic(`${name}: max |score diff| ${diff.toExponential(2)}`);
      await model.release();
      session.dispose({ keepLm: true });
    }
  } finally {
    gpt2.dispose();
  }
});

test('onnx export refuses what it cannot do, in one line', async () => {
  const { code, text } = await runCli(['export', '--run', path.join(root, 'sst2'), '--format', 'tflite', '--out', path.join(root, 'x')]);
  assert.equal(code, 2);
  assert.match(text, /--format: expected one of peft, table, onnx, got "tflite"/);
  await assert.rejects(ExportedModel.load(dirSource(bertDir)), /ptune\.json: not found: not a ptune ONNX export/);
});
