/**
 * Run directories never lose or mix data: an existing run is refused without --resume / --overwrite, a run is
 * locked while a process writes it, nothing is written before every check has passed, and a replaced run keeps
 * nothing of the old one.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { runCli, waitFor } from './fixtures.js';
import { writeSafetensors } from '../src/engine/safetensors.js';

const shared = path.resolve(process.cwd(), '../shared');
const bert = path.join(shared, 'models/bert-mini-lama');
const gpt2 = path.join(shared, 'models/gpt2-mini-lama');
const rel = path.join(shared, 'data/lama/fact-retrieval/original/P103');
const cli = path.resolve('bin/ptune.js');

function tmp(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'ptune-safety-'));
}

function slice(dir: string, nTrain = 16, nDev = 8): { train: string; dev: string } {
  const take = (split: string, n: number) =>
    fs.readFileSync(path.join(rel, `${split}.jsonl`), 'utf8').trim().split('\n').slice(0, n).join('\n') + '\n';
  const train = path.join(dir, 'train.jsonl');
  const dev = path.join(dir, 'dev.jsonl');
  fs.writeFileSync(train, take('train', nTrain));
  fs.writeFileSync(dev, take('dev', nDev));
  return { train, dev };
}

const trainArgs = (data: { train: string; dev: string }, out: string, template = '3,3,3'): string[] => [
  'train', '--model', bert, '--train', data.train, '--dev', data.dev, '--template', template,
  '--answer-field', 'obj_label', '--epochs', '1', '--out', out, '--quiet',
];

/** every file under `dir` (relative path → bytes) */
function snapshot(dir: string): Map<string, string> {
  const out = new Map<string, string>();
  const walk = (d: string) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else out.set(path.relative(dir, p), fs.readFileSync(p).toString('base64'));
    }
  };
  if (fs.existsSync(dir)) walk(dir);
  return out;
}

function assertOneLine(text: string, pattern: RegExp): void {
  const lines = text.split('\n').filter((l) => l.trim());
  assert.equal(lines.length, 1, text);
  assert.match(lines[0]!, pattern);
}

async function trainedRun(dir: string, data: { train: string; dev: string }, name = 'run'): Promise<string> {
  const out = path.join(dir, name);
  const r = await runCli(trainArgs(data, out));
  assert.equal(r.code, 0, r.text);
  return out;
}

test('a train that fails its option checks leaves an existing run untouched (eval still works)', async () => {
  const dir = tmp();
  const data = slice(dir);
  const run = await trainedRun(dir, data);
  const before = snapshot(run);
  // another template (another pseudo-token count) and a bad batch size
  const r = await runCli([...trainArgs(data, run, '[P*9] {sub_label} [MASK] .'), '--batch-size', '0']);
  assert.equal(r.code, 2, r.text);
  assertOneLine(r.text, /--batch-size/);
  assert.deepEqual(snapshot(run), before);
  const ev = await runCli(['eval', '--run', run, '--data', data.dev, '--json']);
  assert.equal(ev.code, 0, ev.text);
});

test('train --out FINISHED_RUN without --resume is refused; --overwrite replaces the whole run', async () => {
  const dir = tmp();
  const data = slice(dir);
  const run = await trainedRun(dir, data);
  const before = snapshot(run);
  const r = await runCli(trainArgs(data, run, '[P*2] {sub_label} [MASK] .'));
  assert.equal(r.code, 2, r.text);
  assertOneLine(r.text, /holds a run.*--resume.*--overwrite/);
  assert.deepEqual(snapshot(run), before);

  // --overwrite with a data file that fails: still untouched
  const bad = path.join(dir, 'bad.jsonl');
  fs.writeFileSync(bad, '{"sub_label": "a", "obj_label": "French"}\n{"sub_label": \n');
  const broken = await runCli([...trainArgs({ ...data, train: bad }, run, '[P*2] {sub_label} [MASK] .'), '--overwrite']);
  assert.equal(broken.code, 2, broken.text);
  assertOneLine(broken.text, /bad\.jsonl line 2/);
  assert.deepEqual(snapshot(run), before);

  const o = await runCli([...trainArgs(data, run, '[P*2] {sub_label} [MASK] .'), '--overwrite', '--epochs', '2']);
  assert.equal(o.code, 0, o.text);
  const cfg = JSON.parse(fs.readFileSync(path.join(run, 'config.json'), 'utf8'));
  assert.equal(cfg.template, '[P*2] {sub_label} [MASK] .');
  const evals = fs.readFileSync(path.join(run, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l)).filter((m) => m.type === 'eval');
  assert.deepEqual(evals.map((m) => m.step), [2, 4], 'metrics.jsonl holds the new run alone');
  assert.equal(JSON.parse(fs.readFileSync(path.join(run, 'last/state.json'), 'utf8')).step, 4);
  assert.ok(!fs.readdirSync(run).some((f) => /lock/.test(f)), 'the lock is released');
});

test('--resume on a missing run is an error that writes nothing', async () => {
  const dir = tmp();
  const data = slice(dir);
  const out = path.join(dir, 'missing');
  const r = await runCli([...trainArgs(data, out), '--resume']);
  assert.equal(r.code, 2, r.text);
  assertOneLine(r.text, /--resume.*no run/);
  assert.ok(!fs.existsSync(out) || fs.readdirSync(out).length === 0);
});

/** A P-tuning adapter written by hand: `rows` × `dim` prompt table, ptune's placement note when `template`. */
function adapter(dir: string, rows: number, dim: number, template?: string): string {
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'adapter_config.json'), JSON.stringify({ peft_type: 'P_TUNING', num_virtual_tokens: rows, token_dim: dim }));
  const data = Float32Array.from({ length: rows * dim }, (_, i) => Math.sin(i) * 0.1);
  writeSafetensors(path.join(dir, 'adapter_model.safetensors'), { prompt_embeddings: { shape: [rows, dim], data } });
  if (template) {
    fs.writeFileSync(path.join(dir, 'ptune_template.json'), JSON.stringify({ template, head: { kind: 'answer', answerField: 'obj_label' }, maxLength: 64 }));
  }
  return dir;
}

test('import-peft --out TRAINED_RUN is refused; --overwrite replaces it whole (no old last/ or metrics.jsonl)', async () => {
  const dir = tmp();
  const data = slice(dir);
  const run = await trainedRun(dir, data);
  const before = snapshot(run);
  const a = adapter(path.join(dir, 'adapter'), 4, 128, '[P*2] {sub_label} [P*2] [MASK] .');
  const r = await runCli(['import-peft', '--adapter', a, '--model', bert, '--out', run]);
  assert.equal(r.code, 2, r.text);
  assertOneLine(r.text, /holds a run.*--overwrite/);
  assert.deepEqual(snapshot(run), before);

  const o = await runCli(['import-peft', '--adapter', a, '--model', bert, '--out', run, '--overwrite']);
  assert.equal(o.code, 0, o.text);
  assert.deepEqual(fs.readdirSync(run).sort(), ['best', 'config.json']);
  const ev = await runCli(['eval', '--run', run, '--data', data.dev, '--json']);
  assert.equal(ev.code, 0, ev.text);
});

test('import-peft with a wrong tensor shape, or a template that does not fit the model, writes nothing', async () => {
  const dir = tmp();
  const cases: [string, string, RegExp][] = [
    ['shape', adapter(path.join(dir, 'a1'), 4, 64, '[P*2] {sub_label} [P*2] [MASK] .'), /prompt_embeddings.*\[4,\s*64\].*128/],
    // [MASK] mid-template cannot be answered by a causal LM
    ['template', adapter(path.join(dir, 'a2'), 4, 128, '[P*2] {sub_label} [MASK] [P*2] .'), /template/],
  ];
  for (const [what, a, pattern] of cases) {
    const out = path.join(dir, `out-${what}`);
    const r = await runCli(['import-peft', '--adapter', a, '--model', what === 'shape' ? bert : gpt2, '--out', out]);
    assert.equal(r.code, 2, `${what}: ${r.text}`);
    assertOneLine(r.text, pattern);
    assert.deepEqual([...snapshot(out).keys()], [], `${what}: nothing written`);
  }
});

test('export --out EXISTING is refused without --overwrite, and export never writes into its own run', async () => {
  const dir = tmp();
  const data = slice(dir);
  const run = await trainedRun(dir, data);
  const out = path.join(dir, 'peft');
  assert.equal((await runCli(['export', '--run', run, '--out', out])).code, 0);
  const before = snapshot(out);
  const again = await runCli(['export', '--run', run, '--out', out, '--format', 'table']);
  assert.equal(again.code, 2, again.text);
  assertOneLine(again.text, /--overwrite/);
  assert.deepEqual(snapshot(out), before);
  const replaced = await runCli(['export', '--run', run, '--out', out, '--format', 'table', '--overwrite']);
  assert.equal(replaced.code, 0, replaced.text);
  assert.deepEqual(fs.readdirSync(out).sort(), ['config.json', 'prompt_table.safetensors']);

  const runBefore = snapshot(run);
  const self = await runCli(['export', '--run', run, '--out', run, '--format', 'table', '--overwrite']);
  assert.equal(self.code, 2, self.text);
  assertOneLine(self.text, /--out/);
  assert.deepEqual(snapshot(run), runBefore);
});

test('two train processes into one --out: the second is refused naming the first one\'s pid; the first run is not mixed', async () => {
  const dir = tmp();
  // a tiny model on a two-label task: 16 steps an epoch, for as long as the test needs it
  const words = 'the and in is are capital of was at to dog on every fox lazy old over warm with boats bread brown castle cat'.split(' ');
  const rows = (n: number, k: number) => Array.from({ length: n }, (_, i) => JSON.stringify({ sentence: `${words[(i * 7 + k) % words.length]} ${words[(i * 3) % words.length]}`, label: i % 2 ? 'pos' : 'neg' })).join('\n') + '\n';
  const data = { train: path.join(dir, 'train.jsonl'), dev: path.join(dir, 'dev.jsonl') };
  fs.writeFileSync(data.train, rows(32, 1));
  fs.writeFileSync(data.dev, rows(8, 2));
  const out = path.join(dir, 'run');
  const args = [cli, 'train', '--model', path.join(shared, 'models/tiny/distilbert'), '--train', data.train, '--dev', data.dev,
    '--template', '{sentence} [P*3] it was [MASK] .', '--label-field', 'label', '--verbalizer', 'pos:warm,neg:old',
    '--epochs', '100000', '--batch-size', '2', '--out', out, '--quiet'];
  const first = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let firstErr = '';
  first.stderr.on('data', (b) => (firstErr += String(b)));
  const exited = new Promise<number | null>((res) => first.on('exit', (code) => res(code)));
  try {
    await waitFor(() => fs.existsSync(path.join(out, 'config.json')), 60_000, 'the first run to start');
    const second = spawnSync(process.execPath, args, { encoding: 'utf8', timeout: 60_000 });
    assert.equal(second.status, 2, second.stderr);
    assertOneLine(second.stderr, new RegExp(`in use by .*pid ${first.pid}`));
  } finally {
    // the first run trains until told to stop (however slow the machine, it still holds the folder above)
    first.kill('SIGINT');
    const code = await exited;
    assert.equal(code, 130, firstErr);
  }
  const keys = fs.readFileSync(path.join(out, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l)).map((m) => `${m.type} ${m.step}`);
  assert.equal(new Set(keys).size, keys.length, `metrics.jsonl mixes runs: ${keys.join(', ')}`);
});

test('a lock left by a dead process is taken over', async () => {
  const dir = tmp();
  const data = slice(dir);
  const out = path.join(dir, 'run');
  fs.mkdirSync(out);
  const dead = spawnSync(process.execPath, ['-e', '0']).pid;
  fs.writeFileSync(path.join(out, '.ptune.lock'), JSON.stringify({ host: os.hostname(), pid: dead, nonce: 'x', since: new Date().toISOString() }));
  const r = await runCli(trainArgs(data, out));
  assert.equal(r.code, 0, r.text);
  assert.match(r.text, new RegExp(`stale lock.*pid ${dead}`));
  assert.ok(!fs.existsSync(path.join(out, '.ptune.lock')));
});

test('lama and fewglue refuse an existing --out without --resume / --overwrite', async () => {
  const dir = tmp();
  const lamaOut = path.join(dir, 'lama');
  const lama = ['lama', '--model', bert, '--data', path.join(shared, 'data/lama'), '--relations', 'P103', '--mode', 'majority', '--out', lamaOut, '--quiet', '--jobs', '1'];
  assert.equal((await runCli(lama)).code, 0);
  const before = snapshot(lamaOut);
  const again = await runCli(lama);
  assert.equal(again.code, 2, again.text);
  assertOneLine(again.text, /--resume.*--overwrite/);
  assert.deepEqual(snapshot(lamaOut), before);
  assert.equal((await runCli([...lama, '--resume'])).code, 0);
  assert.equal((await runCli([...lama, '--overwrite'])).code, 0);

  const fgOut = path.join(dir, 'fewglue');
  fs.mkdirSync(fgOut);
  fs.writeFileSync(path.join(fgOut, 'report.json'), '{}');
  const fg = await runCli(['fewglue', '--model', bert, '--task', 'cb', '--mode', 'manual', '--out', fgOut, '--quiet']);
  assert.equal(fg.code, 2, fg.text);
  assertOneLine(fg.text, /--overwrite/);
  assert.equal(fs.readFileSync(path.join(fgOut, 'report.json'), 'utf8'), '{}');
});
