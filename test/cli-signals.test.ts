/**
 * Signals and non-finite losses seen from the `ptune train` command: SIGINT / SIGTERM write a checkpoint at the
 * current step, say where it is and how to resume, and exit 130 / 143; a second Ctrl-C exits at once and the run
 * stays resumable; a NaN loss names a checkpoint that exists, or says that none was written.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { readSafetensors, writeSafetensors } from '../src/engine/safetensors.js';
import { epochOrder } from '../src/train/trainer.js';
import { waitFor } from './fixtures.js';

const shared = path.resolve(process.cwd(), '../shared');
const bert = path.join(shared, 'models/bert-mini-lama');
const rel = path.join(shared, 'data/lama/fact-retrieval/original/P103');
const cli = path.resolve('bin/ptune.js');

function tmp(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'ptune-signals-'));
}

function lines(file: string, n: number): string[] {
  return fs.readFileSync(file, 'utf8').trim().split('\n').slice(0, n);
}

const tiny = path.join(shared, 'models/tiny/distilbert');

/** a two-label task in the tiny model's vocabulary: 32 train and 8 dev records */
function slice(dir: string): { train: string; dev: string } {
  const words = 'the and in is are capital of was at to dog on every fox lazy old over warm with boats bread brown castle cat'.split(' ');
  let seed = 7;
  const next = () => (seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648;
  const record = () => ({
    sentence: Array.from({ length: 3 + Math.floor(next() * 6) }, () => words[Math.floor(next() * words.length)]).join(' '),
    label: next() < 0.5 ? 'pos' : 'neg',
  });
  const write = (name: string, n: number) => {
    const file = path.join(dir, name);
    fs.writeFileSync(file, Array.from({ length: n }, () => JSON.stringify(record())).join('\n') + '\n');
    return file;
  };
  return { train: write('train.jsonl', 32), dev: write('dev.jsonl', 8) };
}

/** 16 steps an epoch; no periodic checkpoint, so the one a signal writes is the only one inside an epoch */
const args = (data: { train: string; dev: string }, out: string, epochs = 6): string[] => [
  cli, 'train', '--model', tiny, '--train', data.train, '--dev', data.dev, '--template', '{sentence} [P*3] it was [MASK] .',
  '--label-field', 'label', '--verbalizer', 'pos:warm,neg:old', '--epochs', String(epochs), '--batch-size', '2',
  '--save-every', '0', '--seed', '3', '--out', out, '--quiet',
];

const metrics = (run: string) => fs.readFileSync(path.join(run, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
const trainedSteps = (run: string) => metrics(run).filter((m) => m.type === 'train').length;

interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
  stderr: string;
  ms: number;
}

/** Starts training, sends `signals` (spaced by `gapMs`) once metrics.jsonl has its first train line. */
async function interrupt(a: string[], run: string, signals: NodeJS.Signals[], gapMs = 0): Promise<Exit> {
  const child = spawn(process.execPath, a, { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (b) => (stderr += String(b)));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((res) => child.on('exit', (code, signal) => res({ code, signal })));
  const logged = (): boolean => {
    try {
      return trainedSteps(run) >= 1;
    } catch {
      return false; // not yet
    }
  };
  try {
    await waitFor(logged, 60_000, 'training to log a step', 10);
  } catch (err) {
    child.kill('SIGKILL');
    throw err;
  }
  const sent = Date.now();
  for (const [i, s] of signals.entries()) {
    if (i > 0 && gapMs) await new Promise((r) => setTimeout(r, gapMs));
    child.kill(s);
  }
  const killer = setTimeout(() => child.kill('SIGKILL'), 30_000);
  const r = await exited;
  clearTimeout(killer);
  return { ...r, stderr, ms: Date.now() - sent };
}

for (const [signal, code] of [['SIGINT', 130], ['SIGTERM', 143]] as const) {
  const compare = signal === 'SIGINT';
  test(`${signal} during training writes a checkpoint at the current step, says how to resume, exits ${code}${compare ? '; --resume ends as an uninterrupted run' : ''}`, async () => {
    const dir = tmp();
    const data = slice(dir);
    const cut = path.join(dir, 'cut');
    const r = await interrupt(args(data, cut), cut, [signal]);
    assert.equal(r.code, code, `exit ${r.code} / ${r.signal}: ${r.stderr}`);
    const state = JSON.parse(fs.readFileSync(path.join(cut, 'last/state.json'), 'utf8'));
    assert.ok(state.step >= 10 && !state.finished, JSON.stringify(state));
    assert.match(r.stderr, new RegExp(`step ${state.step}`));
    assert.match(r.stderr, new RegExp(`${path.join(cut, 'last').replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`));
    assert.match(r.stderr, /ptune train --out \S+ --resume/);
    assert.doesNotMatch(r.stderr, /\n\s+at /);
    assert.ok(!fs.existsSync(path.join(cut, '.ptune.lock')), 'lock released');
    if (!compare) return;

    const resumed = spawnSync(process.execPath, [...args(data, cut), '--resume'], { encoding: 'utf8' });
    assert.equal(resumed.status, 0, resumed.stderr);
    const full = path.join(dir, 'full');
    const u = spawnSync(process.execPath, args(data, full), { encoding: 'utf8' });
    assert.equal(u.status, 0, u.stderr);
    assert.deepEqual(metrics(cut), metrics(full));
    for (const f of ['best/params.safetensors', 'last/params.safetensors', 'last/optimizer.safetensors']) {
      assert.deepEqual(fs.readFileSync(path.join(cut, f)), fs.readFileSync(path.join(full, f)), f);
    }
  });
}

test('a second Ctrl-C exits at once; the run stays resumable, with each step logged once', async () => {
  const dir = tmp();
  const data = slice(dir);
  const run = path.join(dir, 'run');
  const r = await interrupt(args(data, run), run, ['SIGINT', 'SIGINT']);
  assert.equal(r.code, 130, `exit ${r.code} / ${r.signal}: ${r.stderr}`);
  assert.ok(r.ms < 5000, `took ${r.ms} ms`);
  assert.match(r.stderr, /again/);
  assert.ok(!fs.existsSync(path.join(run, '.ptune.lock')), 'lock released');
  const resumed = spawnSync(process.execPath, [...args(data, run), '--resume'], { encoding: 'utf8' });
  assert.equal(resumed.status, 0, resumed.stderr);
  const keys = metrics(run).map((m) => `${m.type} ${m.step}`);
  assert.equal(new Set(keys).size, keys.length, keys.join(', '));
  assert.equal(JSON.parse(fs.readFileSync(path.join(run, 'last/state.json'), 'utf8')).step, 6 * 16);
});

/**
 * bert-mini-lama with position embedding row 40 set to NaN: a sequence padded past 40 tokens has a NaN loss, a
 * short one does not. The long record is placed where the seeded epoch order puts it at step `at`.
 */
function nanSetup(dir: string, at: number): { model: string; data: { train: string; dev: string } } {
  const model = path.join(dir, 'poisoned');
  fs.mkdirSync(model);
  for (const f of fs.readdirSync(bert)) if (f !== 'model.safetensors' && f !== 'golden.json') fs.copyFileSync(path.join(bert, f), path.join(model, f));
  const { tensors, metadata } = readSafetensors(path.join(bert, 'model.safetensors'));
  const name = [...tensors.keys()].find((k) => k.endsWith('position_embeddings.weight'))!;
  const pos = tensors.get(name)!;
  const h = pos.shape[1]!;
  const data = Float32Array.from(pos.data);
  data.fill(NaN, 40 * h, 41 * h);
  const out = new Map([...tensors].map(([k, t]) => [k, { shape: t.shape, data: k === name ? data : t.data }]));
  writeSafetensors(path.join(model, 'model.safetensors'), out, metadata);

  const n = 8;
  const facts = lines(path.join(rel, 'train.jsonl'), n).map((l) => JSON.parse(l));
  const order = epochOrder(n, 3, 0);
  facts[order[at - 1]!].sub_label = Array(40).fill('paris').join(' ');
  const train = path.join(dir, 'train.jsonl');
  const dev = path.join(dir, 'dev.jsonl');
  fs.writeFileSync(train, facts.map((f) => JSON.stringify(f)).join('\n') + '\n');
  fs.writeFileSync(dev, lines(path.join(rel, 'dev.jsonl'), 4).join('\n') + '\n');
  return { model, data: { train, dev } };
}

test('a NaN loss names the checkpoint that exists, or says that none was written', () => {
  const dir = tmp();
  for (const at of [4, 1]) {
    const sub = path.join(dir, `at${at}`);
    fs.mkdirSync(sub);
    const { model, data } = nanSetup(sub, at);
    const run = path.join(sub, 'run');
    const r = spawnSync(process.execPath, [cli, 'train', '--model', model, '--train', data.train, '--dev', data.dev, '--template', '3,3,3',
      '--answer-field', 'obj_label', '--batch-size', '1', '--save-every', '1', '--seed', '3', '--max-length', '64', '--out', run, '--quiet'], { encoding: 'utf8' });
    assert.notEqual(r.status, 0);
    const line = r.stderr.trim().split('\n');
    assert.equal(line.length, 1, r.stderr);
    assert.match(line[0]!, new RegExp(`loss became NaN at step ${at}`));
    if (at === 1) {
      assert.match(line[0]!, /no checkpoint was written/);
      assert.ok(!fs.existsSync(path.join(run, 'last')));
    } else {
      const m = /checkpoint is in (\S+)/.exec(line[0]!);
      assert.ok(m, line[0]);
      const state = JSON.parse(fs.readFileSync(path.join(m[1]!, 'state.json'), 'utf8'));
      assert.equal(state.step, at - 1);
    }
  }
});
