/**
 * The prompt methods side by side: what each exports as a PEFT adapter (type, sizes, what PEFT reproduces and
 * why not), import restoring the same scores, the dev baselines a run measures first, the bag-of-words
 * baseline, and the FewGLUE driver's mode names.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { readSafetensors } from '../src/engine/safetensors.js';
import { parseTemplate } from '../src/prompt/template.js';
import { BagOfWords, bowTokens } from '../src/tasks/bow.js';
import { fewShotSplit } from '../src/tasks/fewglue/sampling.js';
import { parseMode } from '../src/tasks/fewglue/run.js';
import { anchorsOnly, describeBaselines } from '../src/train/baselines.js';
import { exportPeft, importPeft, peftCompatibility } from '../src/train/export.js';
import { PTuningSession, DEFAULT_LOOP, DEFAULT_OPTIM, type RunConfig } from '../src/train/session.js';
import { UserError } from '../src/util/errors.js';
import { bert, gpt2, modelDir, runCli, useMiniModels } from './fixtures.js';

useMiniModels();

const SST = [
  { sentence: 'a gorgeous , witty , seductive movie', label: '1' }, { sentence: 'the acting is terrible and flat', label: '0' },
  { sentence: 'a wonderful and moving film', label: '1' }, { sentence: 'dull , boring and far too long', label: '0' },
  { sentence: 'one of the best films of the year', label: '1' }, { sentence: 'a mess of a movie', label: '0' },
  { sentence: 'charming and funny', label: '1' }, { sentence: 'painfully bad', label: '0' },
];

function config(model: string, template: string, over: Partial<RunConfig>): RunConfig {
  return {
    version: 1, model, template,
    head: { kind: 'label', labelField: 'label', labelWords: { '0': 'terrible', '1': 'great' } },
    encoder: { type: 'lstm', seed: 2 }, maxLength: 48, skipTooLong: false,
    loop: { ...DEFAULT_LOOP, epochs: 2, batchSize: 4, saveEvery: 0, logEvery: 1 }, optim: { ...DEFAULT_OPTIM, lr: 1e-2 },
    ...over,
  };
}

interface Case {
  name: string;
  causal?: boolean;
  template: string;
  over: Partial<RunConfig>;
  peftType: string;
  reproducible: boolean;
  /** adapter_config.json fields */
  fields: (c: Record<string, unknown>) => void;
  note?: RegExp;
}

const CASES: Case[] = [
  {
    name: 'prefix', template: '{sentence} It was [MASK] .', over: { method: 'prefix', prefix: { numVirtualTokens: 4, projection: false } },
    peftType: 'PREFIX_TUNING', reproducible: true, note: /FEATURE_EXTRACTION.*\[MASK\] position$/,
    fields: (c) => {
      assert.equal(c.token_dim, bert.info.numKvHeads * bert.info.headDim);
      assert.equal(c.num_attention_heads, bert.info.numKvHeads);
      assert.equal(c.prefix_projection, false);
    },
  },
  {
    name: 'prompt-tuning', causal: true, template: '{sentence} It was [MASK]',
    over: { method: 'prompt-tuning', promptTuning: { numVirtualTokens: 3, initFromWords: 'the review says' } },
    peftType: 'PROMPT_TUNING', reproducible: true, note: /causal LM: the next-token logits at the last input position \+ 3/,
    fields: (c) => {
      assert.equal(c.task_type, 'CAUSAL_LM');
      assert.equal(c.prompt_tuning_init, 'TEXT');
      assert.equal(c.prompt_tuning_init_text, 'the review says');
      assert.equal(c.token_dim, gpt2.info.hiddenSize);
    },
  },
  {
    name: 'p-tuning, PEFT layout', template: '[P*3] {sentence} It was [MASK] .', over: { peftLayout: true },
    peftType: 'P_TUNING', reproducible: true,
    fields: (c) => {
      assert.equal(c.encoder_reparameterization_type, 'LSTM');
      assert.equal(c.num_virtual_tokens, 3);
    },
  },
  {
    name: 'p-tuning between words', template: '{sentence} [P*2] It was [MASK] .', over: {},
    peftType: 'P_TUNING', reproducible: false, note: /between words/, fields: () => {},
  },
  {
    name: 'linear head', template: '[P*2] {sentence} [MASK]', over: { peftLayout: true, head: { kind: 'linear', labelField: 'label', labels: ['0', '1'], seed: 4 } },
    peftType: 'P_TUNING', reproducible: false, note: /linear head/, fields: () => {},
  },
];

test('PEFT export per method: adapter type and sizes, what PEFT reproduces (model card), and import restores the scores', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ptune-export-'));
  try {
    for (const c of CASES) {
      const lm = c.causal ? gpt2 : bert;
      const s = await PTuningSession.create(config(modelDir(c.causal ? 'gpt2-mini-lama' : 'bert-mini-lama'), c.template, c.over), lm);
      const run = path.join(dir, `${c.name}-run`);
      await s.train({ runDir: run, train: SST, dev: SST.slice(0, 4), restoreBest: false, baselines: false });
      const out = path.join(dir, `${c.name}-adapter`);
      const compat = await exportPeft(s, out);
      assert.deepEqual(compat, peftCompatibility(s));
      assert.equal(compat.peftType, c.peftType, c.name);
      assert.equal(compat.reproducible, c.reproducible, `${c.name}: ${compat.notes.join(' | ')}`);
      if (c.note) assert.ok(compat.notes.some((n) => c.note!.test(n)), `${c.name}: ${compat.notes.join(' | ')}`);
      const cfg = JSON.parse(fs.readFileSync(path.join(out, 'adapter_config.json'), 'utf8')) as Record<string, unknown>;
      assert.equal(cfg.peft_type, c.peftType);
      assert.equal(cfg.num_layers, lm.info.numLayers);
      c.fields(cfg);
      const table = readSafetensors(path.join(out, 'adapter_model.safetensors')).tensors.get('prompt_embeddings')!;
      const width = c.peftType === 'PREFIX_TUNING' ? lm.info.numLayers * 2 * lm.info.numKvHeads * lm.info.headDim : lm.info.hiddenSize;
      assert.equal(table.shape[1], width, `${c.name}: table width`);
      const card = fs.readFileSync(path.join(out, 'README.md'), 'utf8');
      assert.equal(card.includes('PEFT alone does not reproduce'), !c.reproducible, c.name);
      assert.equal(fs.existsSync(path.join(out, 'ptune_head.safetensors')), c.over.head?.kind === 'linear');

      const back = path.join(dir, `${c.name}-imported`);
      await importPeft({ adapterDir: out, model: modelDir(c.causal ? 'gpt2-mini-lama' : 'bert-mini-lama'), runDir: back }, lm);
      const r = await PTuningSession.load(back, 'best', lm);
      const a = await s.predict(SST, 'sst', 2);
      const b = await r.predict(SST, 'sst', 2);
      assert.deepEqual(b.map((p) => p.prediction), a.map((p) => p.prediction), `${c.name}: imported predictions`);
      const sa = await s.scores(s.prepare(SST, 'sst').items);
      const sb = await r.scores(r.prepare(SST, 'sst').items);
      for (let i = 0; i < sa.data.length; i++) assert.ok(Math.abs(sa.data[i]! - sb.data[i]!) < 1e-5, `${c.name}: score ${i}`);
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('a jointly tuned LM, or a prefix on a family whose transformers class takes no past, is exported but marked not reproducible; a windowed decoder\'s prefix (Gemma 2) is reproducible', async () => {
  const s = await PTuningSession.create(config(modelDir('bert-mini-lama'), '[P*2] {sentence} It was [MASK] .', { peftLayout: true, optim: { ...DEFAULT_OPTIM, tuneLm: true } }), bert);
  const c = peftCompatibility(s);
  assert.equal(c.reproducible, false);
  assert.ok(c.notes.some((n) => /tuned jointly/.test(n)));
  const tiny = modelDir('tiny/distilbert');
  if (fs.existsSync(tiny)) {
    const d = await PTuningSession.create(config(tiny, '{sentence} It was [MASK] .', { method: 'prefix', prefix: { numVirtualTokens: 2, projection: false } }));
    const dc = peftCompatibility(d);
    assert.equal(dc.reproducible, false);
    assert.ok(dc.notes.some((n) => /takes no past keys and values/.test(n)), dc.notes.join(' | '));
    d.lm.dispose();
  }
  const gemma = modelDir('tiny/gemma2');
  if (fs.existsSync(gemma)) {
    const g = await PTuningSession.create(config(gemma, '{sentence} It was [MASK]', { method: 'prefix', prefix: { numVirtualTokens: 2, projection: false } }));
    const gc = peftCompatibility(g);
    // Gemma 2's prefix matches PEFT (scripts/peft-check.py) since the sliding window counts positions, not padding
    assert.equal(gc.reproducible, true, gc.notes.join(' | '));
    g.lm.dispose();
  }
});

test('dev baselines: majority and the template without its pseudo tokens, measured before training and saved', async () => {
  assert.equal(anchorsOnly(parseTemplate('[P*3] {sentence} It was [P] [MASK] .')), '{sentence} It was [MASK] .');
  assert.equal(anchorsOnly(parseTemplate('[P] {sentence} [P] [MASK]')), null, 'no anchor word left');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ptune-baselines-'));
  try {
    const train = [...SST, { sentence: 'great fun', label: '1' }];
    const s = await PTuningSession.create(config(modelDir('bert-mini-lama'), '[P*2] {sentence} It was [MASK] .', {}), bert);
    const r = await s.train({ runDir: dir, train, dev: SST, restoreBest: false });
    assert.ok(r.baselines);
    assert.equal(r.baselines.majority.prediction, '1', 'five 1s against four 0s');
    assert.equal(r.baselines.majority.metrics.accuracy, 0.5);
    assert.equal(r.baselines.zeroShot?.template, '{sentence} It was [MASK] .');
    const plain = await PTuningSession.create(config(modelDir('bert-mini-lama'), '{sentence} It was [MASK] .', { encoder: undefined }), bert);
    const zs = await plain.evaluateItems(plain.prepare(SST, 'dev').items);
    assert.equal(r.baselines.zeroShot?.metrics.accuracy, zs.metrics.accuracy, 'the frozen LM with the anchors alone');
    assert.deepEqual(JSON.parse(fs.readFileSync(path.join(dir, 'baselines.json'), 'utf8')), JSON.parse(JSON.stringify(r.baselines)));
    assert.match(describeBaselines(r.baselines, 'accuracy'), /^dev baselines \(accuracy\): majority "1" 0\.5000 · zero-shot "\{sentence\} It was \[MASK\] \." \d\.\d{4}$/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('bag of words: per-field unigram and bigram features, learns held-out sentences, seeded runs agree', () => {
  assert.deepEqual(bowTokens("It isn't GOOD, really."), ['it', "isn't", 'good', ',', 'really', '.']);
  const pos = ['good', 'great', 'fine', 'lovely'];
  const neg = ['bad', 'awful', 'dull', 'poor'];
  const fillers = ['the film', 'this movie', 'a story', 'the plot', 'its cast'];
  const make = (words: string[], label: string, k: number) => fillers.map((f, i) => ({ fields: { text: `${f} is ${words[(i + k) % words.length]}` }, label }));
  const train = [...make(pos, '1', 0), ...make(neg, '0', 0), ...make(pos, '1', 1), ...make(neg, '0', 1)];
  const held = [{ fields: { text: 'what a lovely plot' }, label: '1' }, { fields: { text: 'so dull and poor' }, label: '0' }];
  const m = new BagOfWords(['0', '1']).fit(train, 1e-3);
  assert.deepEqual(held.map((x) => m.predict(x)), ['1', '0']);
  const again = new BagOfWords(['0', '1']).fit(train, 1e-3);
  assert.deepEqual(train.map((x) => again.predict(x)), train.map((x) => m.predict(x)));
  assert.throws(() => new BagOfWords(['0', '1']).fit([{ fields: { text: 'x' }, label: '2' }], 0), /label "2" is not one of 0, 1/);
  // fields are separate feature spaces: the same word in another field is not the same feature
  const byField = new BagOfWords(['a', 'b']).fit([{ fields: { p: 'x', h: 'y' }, label: 'a' }, { fields: { p: 'y', h: 'x' }, label: 'b' }], 1e-4);
  assert.equal(byField.predict({ fields: { p: 'x', h: 'y' } }), 'a');
  assert.equal(byField.predict({ fields: { p: 'y', h: 'x' } }), 'b');
});

test('few-shot sampling with a dev size of its own; the FewGLUE mode "pet" is renamed with a pointer', () => {
  const pool = Array.from({ length: 200 }, (_, i) => ({ id: String(i), fields: { text: `t${i}` }, label: i % 4 === 0 ? 'a' : 'b' }));
  const { train, dev } = fewShotSplit(pool, { n: 40, devN: 10, seed: 3 });
  assert.equal(train.length, 40);
  assert.equal(dev.length, 10);
  assert.equal(new Set([...train, ...dev].map((e) => e.id)).size, 50, 'disjoint');
  assert.equal(dev.filter((e) => e.label === 'a').length, 5, 'stratified dev');
  assert.equal(parseMode('prefix'), 'prefix');
  assert.throws(() => parseMode('pet'), (e: unknown) => e instanceof UserError && /manual-lm/.test((e as Error).message));
  assert.throws(() => parseMode('nope'), /unknown mode "nope"/);
});

test('CLI: the default method, --method prompt-tuning and --head linear train (baselines saved unless --no-baselines), export as PROMPT_TUNING, and [P] with prefix is one line', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ptune-cli-methods-'));
  try {
    const data = path.join(dir, 'sst.jsonl');
    fs.writeFileSync(data, SST.map((r) => JSON.stringify(r)).join('\n') + '\n');
    const base = ['train', '--model', modelDir('bert-mini-lama'), '--train', data, '--dev', data, '--label-field', 'label',
      '--epochs', '1', '--batch-size', '4', '--quiet'];
    let r = await runCli([...base, '--template', '{sentence} It was [MASK] .', '--verbalizer', '0:terrible,1:great',
      '--method', 'prompt-tuning', '--virtual-tokens', '3', '--init-from-words', 'it was', '--out', path.join(dir, 'pt')]);
    assert.equal(r.code, 0, r.text);
    const cfg = JSON.parse(fs.readFileSync(path.join(dir, 'pt', 'config.json'), 'utf8')) as RunConfig;
    assert.equal(cfg.method, 'prompt-tuning');
    assert.deepEqual(cfg.promptTuning, { numVirtualTokens: 3, initFromWords: 'it was' });
    assert.ok(fs.existsSync(path.join(dir, 'pt', 'baselines.json')));
    r = await runCli(['export', '--run', path.join(dir, 'pt'), '--out', path.join(dir, 'pt-peft')]);
    assert.equal(r.code, 0, r.text);
    assert.equal(JSON.parse(fs.readFileSync(path.join(dir, 'pt-peft', 'adapter_config.json'), 'utf8')).peft_type, 'PROMPT_TUNING');

    r = await runCli([...base, '--template', '[P*2] {sentence} [MASK]', '--head', 'linear', '--no-baselines', '--out', path.join(dir, 'lin')]);
    assert.equal(r.code, 0, r.text);
    const lin = JSON.parse(fs.readFileSync(path.join(dir, 'lin', 'config.json'), 'utf8')) as RunConfig;
    assert.deepEqual(lin.head, { kind: 'linear', labelField: 'label', labels: ['0', '1'], seed: lin.head.kind === 'linear' ? lin.head.seed : 0 });
    assert.ok(!fs.existsSync(path.join(dir, 'lin', 'baselines.json')), '--no-baselines');

    // no --method: deep prompts for a template of anchor words alone with the LM frozen, v1 with [P] tokens
    r = await runCli([...base, '--template', '{sentence} It was [MASK] .', '--verbalizer', '0:terrible,1:great', '--virtual-tokens', '2', '--no-baselines', '--out', path.join(dir, 'auto')]);
    assert.equal(r.code, 0, r.text);
    const auto = JSON.parse(fs.readFileSync(path.join(dir, 'auto', 'config.json'), 'utf8')) as RunConfig;
    assert.equal(auto.method, 'prefix');
    assert.deepEqual(auto.prefix, { numVirtualTokens: 2, projection: false, dropout: 0 });
    assert.equal(auto.optim.lr, 1e-2);
    assert.equal(lin.method, 'ptuning');
    r = await runCli([...base, '--template', '{sentence} [P] [MASK]', '--verbalizer', '0:terrible,1:great', '--method', 'prefix', '--out', path.join(dir, 'bad')]);
    assert.notEqual(r.code, 0);
    assert.equal(r.text.trim().split('\n').length, 1, r.text);
    assert.match(r.text, /\[P\]/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('deep prompts take the first positions: a maxLength that leaves the prefix no room is refused by name, and long inputs are cut to fit', async () => {
  const n = 16;
  const full = bert.info.maxPositions;
  await assert.rejects(
    PTuningSession.create(config(modelDir('bert-mini-lama'), '{sentence} It was [MASK] .', { maxLength: full, method: 'prefix', prefix: { numVirtualTokens: n, projection: false } }), bert),
    new RegExp(`maxLength ${full} and the ${n} prefix positions are more than the ${full} positions .*at most ${full - n}`),
  );
  const s = await PTuningSession.create(config(modelDir('bert-mini-lama'), '{sentence} It was [MASK] .', { maxLength: full - n, method: 'prefix', prefix: { numVirtualTokens: n, projection: false } }), bert);
  const long = [{ sentence: Array.from({ length: 300 }, (_, i) => `w${i % 50}`).join(' '), label: '1' }];
  const { items } = s.prepare(long, 'long');
  assert.equal(items[0]!.ex.ids.length, full - n);
  const scores = await s.scores(items);
  assert.ok(scores.data.every(Number.isFinite));
});

test('DeBERTa-v2 and ModernBERT: deep prompts train (their prefix has no position, so a maxLength of every position is accepted); the PEFT export says PEFT cannot run them', async () => {
  const { loadModel } = await import('../src/models/load.js');
  for (const family of ['deberta-v2', 'modernbert']) {
    const dir = modelDir(`tiny/${family}`);
    const lm = await loadModel(dir);
    try {
      const c = config(dir, '{sentence} It was [MASK] .', { maxLength: lm.info.maxPositions, method: 'prefix', prefix: { numVirtualTokens: 4, projection: false } });
      const s = await PTuningSession.create(c, lm);
      const records = Array.from({ length: 8 }, (_, i) => ({ sentence: `w${i} good movie number ${i}`, label: String(i % 2) }));
      const table = s.prefix!.params.get('embedding.weight')!;
      const before = Float32Array.from(table.data);
      const r = await s.trainInMemory({ train: records, dev: records.slice(0, 4), restoreBest: false });
      assert.ok(Number.isFinite(r.lastDev!.score), `${family}: dev ${r.lastDev?.score}`);
      assert.ok(table.data.some((x, i) => x !== before[i]), `${family}: the prefix did not train`);
      const verdict = peftCompatibility(s);
      assert.equal(verdict.reproducible, false);
      assert.match(verdict.notes.join(' '), /takes no past keys and values/);
      s.dispose({ keepLm: true });
    } finally {
      lm.dispose();
    }
  }
});
