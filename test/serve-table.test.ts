import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { readSafetensors, writeSafetensors } from '../src/engine/safetensors.js';
import { PromptTable, TaskInputError, UnknownTaskError } from '../src/serve/table.js';
import { exportPeft } from '../src/train/export.js';
import { DEFAULT_LOOP, DEFAULT_OPTIM, PTuningSession, type RunConfig } from '../src/train/session.js';
import { bert, gpt2, modelDir, useMiniModels } from './fixtures.js';
import { P1412, SST2, SST2_HEAD, ptunePredict, tinyRuns, type CliPrediction, type TinyRuns } from './serve-fixtures.js';

useMiniModels();

let tmp: string;
let runs: TinyRuns;

before(async () => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'ptune-table-'));
  runs = await tinyRuns(tmp, bert, gpt2);
});

after(() => fs.rmSync(tmp, { recursive: true, force: true }));

const lamaInputs = () => P1412('test', 12);
const sstInputs = () => SST2('test', 12);

function assertSame(served: { prediction: string; top: { label: string; score: number }[] }[], cli: CliPrediction[], what: string): void {
  assert.equal(served.length, cli.length);
  served.forEach((s, i) => {
    assert.equal(s.prediction, cli[i]!.prediction, `${what} ${i}`);
    assert.deepEqual(s.top.map((t) => t.label), cli[i]!.scores.map((t) => t.label), `${what} ${i} labels`);
    s.top.forEach((t, j) => assert.ok(Math.abs(t.score - cli[i]!.scores[j]!.score) < 1e-4, `${what} ${i}: ${t.score} vs ${cli[i]!.scores[j]!.score}`));
  });
}

test('a table of a LAMA and an SST-2 task on bert-mini-lama predicts what ptune predict reports for each run, alone and in mixed batches', async () => {
  const table = PromptTable.create(bert);
  await table.addRun('p1412', runs.p1412);
  await table.addRun('sst2', runs.sst2);
  assert.deepEqual(table.list().map((t) => [t.name, t.head, t.virtualTokens]), [['p1412', 'answer', 9], ['sst2', 'label', 3]]);
  assert.deepEqual(table.info('sst2')!.labels, ['0', '1']);
  const lama = lamaInputs();
  const sst = sstInputs();
  const cliLama = ptunePredict(runs.p1412, lama, 5);
  const cliSst = ptunePredict(runs.sst2, sst, 2);
  const alone = {
    lama: await table.predict(lama.map((record) => ({ task: 'p1412', record })), { topK: 5 }),
    sst: await table.predict(sst.map((record) => ({ task: 'sst2', record })), { topK: 2 }),
  };
  assertSame(alone.lama, cliLama, 'P1412');
  assertSame(alone.sst, cliSst, 'SST-2');
  // one batch, rows of both tasks interleaved: each row gets the answer its task alone gives
  const mixed = lama.flatMap((record, i) => [{ task: 'p1412', record, topK: 5 }, { task: 'sst2', record: sst[i]!, topK: 2 }]);
  const out = await table.predictBatch(mixed);
  out.forEach((r, i) => {
    assert.ok(!(r instanceof Error));
    const want = i % 2 === 0 ? alone.lama[i / 2]! : alone.sst[(i - 1) / 2]!;
    assert.equal(r.prediction, want.prediction);
    r.top.forEach((t, j) => assert.ok(Math.abs(t.score - want.top[j]!.score) < 1e-5 && t.label === want.top[j]!.label));
  });
});

test('an answer task restricted to an answer vocabulary predicts what ptune predict reports for it', async () => {
  const run = path.join(tmp, 'p1412-vocab');
  fs.cpSync(runs.p1412, run, { recursive: true });
  const cfg = JSON.parse(fs.readFileSync(path.join(run, 'config.json'), 'utf8'));
  const answerVocab = ['french', 'english', 'german', 'spanish', 'italian', 'russian', 'dutch', 'latin'].map((w) => bert.tokenizer.encodeWord(w)[0]!);
  fs.writeFileSync(path.join(run, 'config.json'), JSON.stringify({ ...cfg, head: { ...cfg.head, answerVocab } }));
  const table = PromptTable.create(bert);
  await table.addRun('vocab', run);
  await table.addRun('sst2', runs.sst2);
  const records = lamaInputs();
  const served = await table.predictBatch(records.flatMap((record) => [{ task: 'vocab', record, topK: 3 }, { task: 'sst2', record: { sentence: String(record.sub_label) }, topK: 2 }]));
  assertSame(served.filter((_, i) => i % 2 === 0) as { prediction: string; top: { label: string; score: number }[] }[], ptunePredict(run, records, 3), 'P1412 with an answer vocabulary');
});

test('bad rows: unknown task, a missing template field (named), an input too long for a task that does not truncate', async () => {
  const table = PromptTable.create(bert);
  await table.addRun('sst2', runs.sst2);
  await table.addRun('strict', runs.sst2, { truncate: false });
  const long = { sentence: Array(200).fill('good').join(' ') };
  const [a, b, c, d] = await table.predictBatch([
    { task: 'nope', record: {}, topK: 1 },
    { task: 'sst2', record: { text: 'x' }, topK: 1 },
    { task: 'strict', record: long, topK: 1 },
    { task: 'sst2', record: long, topK: 1 },
  ]);
  assert.ok(a instanceof UnknownTaskError && /no task "nope"/.test(a.message));
  assert.ok(b instanceof TaskInputError && b.code === 'missing_field' && b.field === 'sentence', String(b));
  assert.ok(c instanceof TaskInputError && c.code === 'too_long' && /more than the 64/.test(c.message), String(c));
  assert.ok(!(d instanceof Error) && ['0', '1'].includes(d.prediction), 'the truncating task shrinks the field');
});

test('tasks are added, replaced and removed without reloading the LM; the table saves and loads', async () => {
  const table = PromptTable.create(bert);
  await table.addRun('a', runs.sst2);
  await assert.rejects(table.addRun('a', runs.p1412, { replace: false }), /exists already/);
  await table.addRun('a', runs.p1412, { replace: true });
  assert.equal(table.info('a')!.head, 'answer');
  await table.addRun('b', runs.sst2);
  assert.ok(table.remove('a'));
  assert.ok(!table.remove('a'));
  assert.deepEqual(table.names, ['b']);
  await table.addRun('a', runs.p1412);
  const dir = path.join(tmp, 'saved');
  table.save(dir);
  const again = PromptTable.load(dir, bert);
  assert.deepEqual(again.list(), table.list());
  const record = P1412('test', 1)[0]!;
  assert.deepEqual(await again.predict([{ task: 'a', record }]), await table.predict([{ task: 'a', record }]));
  assert.throws(() => PromptTable.load(dir, gpt2), /base model .* is not .*gpt2-mini-lama: family bert vs gpt2/);
});

test('a PEFT adapter serves like its run', async () => {
  const session = await PTuningSession.load(runs.sst2, 'best', bert);
  const adapter = path.join(tmp, 'sst2-peft');
  await exportPeft(session, adapter);
  const table = PromptTable.create(bert);
  await table.addRun('run', runs.sst2);
  await table.addPeft('peft', adapter);
  const records = SST2('test', 4);
  const a = await table.predict(records.map((record) => ({ task: 'run', record })));
  const b = await table.predict(records.map((record) => ({ task: 'peft', record })));
  a.forEach((r, i) => {
    assert.equal(r.prediction, b[i]!.prediction);
    assert.ok(Math.abs(r.score - b[i]!.score) < 1e-6);
  });
});

test('every task must come from the served base model: another family, or the same config with other weights, is a clear error', async () => {
  const table = PromptTable.create(bert);
  await assert.rejects(table.addRun('gpt', runs.gpt), /task "gpt" .* was tuned on .*gpt2-mini-lama, not on the served model .*bert-mini-lama: family gpt2 vs bert/);
  // bert-mini-lama with one weight changed: same config.json, other checksum
  const other = path.join(tmp, 'bert-other');
  fs.mkdirSync(other);
  const src = modelDir('bert-mini-lama');
  for (const f of fs.readdirSync(src)) if (f !== 'model.safetensors') fs.symlinkSync(path.join(src, f), path.join(other, f));
  const tensors = readSafetensors(path.join(src, 'model.safetensors')).tensors;
  const changed = new Map([...tensors].map(([k, t]) => [k, { shape: t.shape, data: t.data }]));
  const first = changed.keys().next().value as string;
  changed.get(first)!.data[0]! += 1;
  writeSafetensors(path.join(other, 'model.safetensors'), changed);
  const run = path.join(tmp, 'other-run');
  fs.cpSync(runs.sst2, run, { recursive: true });
  const cfg = JSON.parse(fs.readFileSync(path.join(run, 'config.json'), 'utf8'));
  fs.writeFileSync(path.join(run, 'config.json'), JSON.stringify({ ...cfg, model: other }));
  await assert.rejects(table.addRun('other', run), /same config, but the weights differ \(checksum/);
  // the CLI packs tables and refuses a mixed one
  const ok = spawnSync(process.execPath, ['bin/ptune.js', 'table', '--run', `p1412=${runs.p1412}`, '--run', `sst2=${runs.sst2}`, '--out', path.join(tmp, 'packed')], { encoding: 'utf8' });
  assert.equal(ok.status, 0, ok.stderr);
  assert.deepEqual(PromptTable.load(path.join(tmp, 'packed'), bert).names, ['p1412', 'sst2']);
  const bad = spawnSync(process.execPath, ['bin/ptune.js', 'table', '--run', `sst2=${runs.sst2}`, '--run', `other=${run}`, '--out', path.join(tmp, 'bad')], { encoding: 'utf8' });
  assert.equal(bad.status, 2);
  assert.match(bad.stderr, /^ptune: task "other" .* the weights differ/);
  assert.ok(!fs.existsSync(path.join(tmp, 'bad')));
});

test('gpt2-mini-lama: predictions equal ptune predict; the first greedy token is its top-1; greedy with the cache equals greedy without; stop strings are cut off; streamed text adds up', async () => {
  const table = PromptTable.create(gpt2);
  await table.addRun('gpt', runs.gpt);
  const records = P1412('test', 8);
  const cli = ptunePredict(runs.gpt, records, 5);
  const served = await table.predict(records.map((record) => ({ task: 'gpt', record })), { topK: 5 });
  assertSame(served, cli, 'gpt2 P1412');
  let stopped = 0;
  for (const [i, record] of records.slice(0, 4).entries()) {
    const cached = await table.generate('gpt', record, { maxNewTokens: 8 });
    const recomputed = await table.generate('gpt', record, { maxNewTokens: 8, cache: false });
    assert.deepEqual(cached.tokens, recomputed.tokens, `record ${i}`);
    assert.equal(gpt2.tokenizer.idToToken(cached.tokens[0]!), cli[i]!.prediction, `record ${i}: first greedy token vs predict's top-1`);
    assert.equal(cached.promptTokens, 1 + 6 + gpt2.tokenizer.encode(` ${record.sub_label}`).length);
    // a stop string: the text ends before it
    const word = cached.text.split(' ')[1];
    if (word) {
      const cut = await table.generate('gpt', record, { maxNewTokens: 8, stop: [word] });
      assert.equal(cut.finishReason, 'stop');
      assert.equal(cut.text, cached.text.slice(0, cached.text.indexOf(word)));
      const deltas: string[] = [];
      const streamed = await table.generate('gpt', record, { maxNewTokens: 8, stop: [word], onToken: (t) => deltas.push(t.text), onRest: (t) => deltas.push(t) });
      assert.equal(deltas.join(''), cut.text);
      assert.deepEqual(streamed, cut);
      stopped++;
    }
  }
  assert.ok(stopped > 0, 'some generation had a second word to stop at');
  const sampled = await table.generate('gpt', records[0]!, { maxNewTokens: 6, temperature: 1, topP: 0.9, seed: 3 });
  assert.deepEqual(await table.generate('gpt', records[0]!, { maxNewTokens: 6, temperature: 1, topP: 0.9, seed: 3 }), sampled);
  // ptune generate --run prints the same text
  const r = spawnSync(process.execPath, ['bin/ptune.js', 'generate', '--run', runs.gpt, '--text', JSON.stringify(records[0]), '--max-new-tokens', '8', '--json'], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  const printed = JSON.parse(r.stdout) as { text: string; tokens: number[] };
  const want = await table.generate('gpt', records[0]!, { maxNewTokens: 8 });
  assert.deepEqual(printed.tokens, want.tokens);
  assert.equal(printed.text, want.text);
});

test('prompt-tuning and PEFT-layout P-tuning runs are served with their rows before the input; deep prompts and linear heads are refused by name', async () => {
  const mk = async (name: string, over: Partial<RunConfig>, template: string, data = { train: SST2('train', 32), dev: SST2('dev', 8) }) => {
    const config: RunConfig = {
      version: 1, model: modelDir('bert-mini-lama'), template, head: SST2_HEAD, encoder: { type: 'lstm', seed: 2 }, maxLength: 64, skipTooLong: false,
      loop: { ...DEFAULT_LOOP, epochs: 1, batchSize: 8, maxSteps: 8, saveEvery: 1000, logEvery: 1000 }, optim: { ...DEFAULT_OPTIM, lr: 1e-2 }, ...over,
    };
    const s = await PTuningSession.create(config, bert);
    const dir = path.join(tmp, name);
    await s.train({ runDir: dir, ...data, baselines: false });
    s.dispose({ keepLm: true });
    return dir;
  };
  const pt = await mk('pt', { method: 'prompt-tuning', promptTuning: { numVirtualTokens: 4, initFromWords: 'the movie was' } }, '{sentence} It was [MASK] .');
  const layout = await mk('layout', { peftLayout: true }, '[P*3] {sentence} It was [MASK] .');
  const table = PromptTable.create(bert);
  await table.addRun('pt', pt);
  await table.addRun('layout', layout);
  assert.deepEqual(table.list().map((t) => [t.name, t.virtualTokens]), [['pt', 4], ['layout', 3]]);
  const sst = sstInputs();
  for (const [name, dir] of [['pt', pt], ['layout', layout]] as const) {
    assertSame(await table.predict(sst.map((record) => ({ task: name, record })), { topK: 2 }), ptunePredict(dir, sst, 2), name);
  }
  // a LAMA tuple whose pseudo tokens all lead, in PEFT's layout: served from its canonical text
  const tuple = await mk('tuple', { peftLayout: true, head: { kind: 'answer', answerField: 'obj_label' } }, '3,0,0', { train: P1412('train', 32), dev: P1412('dev', 8) });
  await table.addRun('tuple', tuple);
  const facts = lamaInputs();
  assertSame(await table.predict(facts.map((record) => ({ task: 'tuple', record })), { topK: 3 }), ptunePredict(tuple, facts, 3), 'tuple');
  table.remove('tuple');
  const prefix = await mk('prefix', { method: 'prefix', prefix: { numVirtualTokens: 2, projection: false } }, '{sentence} It was [MASK] .');
  await assert.rejects(table.addRun('deep', prefix), /task "deep" .*deep prompts \(method prefix\).*ptune predict/);
  const linear = await mk('linear', { head: { kind: 'linear', labelField: 'label', labels: ['0', '1'] } }, '[P*2] {sentence} [MASK]');
  await assert.rejects(table.addRun('lin', linear), /task "lin" .*a linear head/);
  assert.deepEqual(table.list().map((t) => t.name), ['pt', 'layout'], 'nothing added by the refusals');
});
