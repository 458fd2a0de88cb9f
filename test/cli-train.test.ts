import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { waitFor } from './fixtures.js';

const shared = path.resolve(process.cwd(), '../shared');
const bert = path.join(shared, 'models/bert-mini-lama');
const rel = path.join(shared, 'data/lama/fact-retrieval/original/P103');
const cli = path.resolve('bin/ptune.js');

function tmp(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'ptune-cli-'));
}

/** a LAMA slice as JSONL files */
function slice(dir: string): { train: string; dev: string } {
  const take = (split: string, n: number) =>
    fs.readFileSync(path.join(rel, `${split}.jsonl`), 'utf8').trim().split('\n').slice(0, n).join('\n') + '\n';
  const train = path.join(dir, 'train.jsonl');
  const dev = path.join(dir, 'dev.jsonl');
  fs.writeFileSync(train, take('train', 96));
  fs.writeFileSync(dev, take('dev', 40));
  return { train, dev };
}

/** With encoder dropout (and `extra`), so that an exact resume also needs the checkpointed dropout streams. */
function trainArgs(data: { train: string; dev: string }, out: string, extra: string[] = []): string[] {
  return [cli, 'train', '--model', bert, '--train', data.train, '--dev', data.dev, '--template', '3,3,3',
    '--answer-field', 'obj_label', '--epochs', '3', '--save-every', '2', '--seed', '5', '--encoder-dropout', '0.2',
    ...extra, '--out', out, '--quiet'];
}

function metricLines(run: string): Record<string, unknown>[] {
  return fs.readFileSync(path.join(run, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
}

function evalLines(run: string): unknown[] {
  return fs.readFileSync(path.join(run, 'metrics.jsonl'), 'utf8').trim().split('\n')
    .map((l) => JSON.parse(l)).filter((r) => r.type === 'eval').map((r) => [r.step, r.score]);
}

const RESUMED: [string, string[], string[]][] = [
  ['encoder dropout 0.2', [], ['dropout']],
  ['--tune-lm: encoder dropout 0.2 and the LM\'s own dropout 0.1', ['--tune-lm'], ['dropout', 'lmDropout']],
];

for (const [what, extra, streams] of RESUMED) {
  test(`train (${what}) killed with SIGKILL mid-epoch, then --resume, ends with the same weights and metrics as an uninterrupted run`, async () => {
    const dir = tmp();
    const data = slice(dir);
    const full = path.join(dir, 'full');
    const r = spawnSync('node', trainArgs(data, full, extra), { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    const summary = JSON.parse(r.stdout.trim().split('\n').pop()!);

    const cut = path.join(dir, 'cut');
    const child = spawn('node', trainArgs(data, cut, extra), { stdio: 'ignore' });
    const state = path.join(cut, 'last', 'state.json');
    const step = (): number => {
      try {
        return JSON.parse(fs.readFileSync(state, 'utf8')).step;
      } catch {
        return 0; // not written yet
      }
    };
    try {
      await waitFor(() => step() >= 16, 90_000, 'training to reach step 16');
    } finally {
      child.kill('SIGKILL');
    }
    await new Promise((res) => child.on('exit', res));
    const killedAt = JSON.parse(fs.readFileSync(state, 'utf8'));
    assert.ok(killedAt.step < 36 && !killedAt.finished, `killed too late: ${JSON.stringify(killedAt)}`);
    for (const k of streams) assert.equal(killedAt.task[k].length, 4, `the checkpoint holds the ${k} stream`);
    assert.ok(killedAt.batchInEpoch > 0, `killed mid-epoch: ${JSON.stringify(killedAt)}`);

    const resumed = spawnSync('node', [...trainArgs(data, cut, extra), '--resume'], { encoding: 'utf8' });
    assert.equal(resumed.status, 0, resumed.stderr);
    const after = JSON.parse(resumed.stdout.trim().split('\n').pop()!);
    assert.equal(after.best, summary.best);
    assert.equal(after.steps, summary.steps);
    assert.deepEqual(evalLines(cut), evalLines(full));
    // every step logged once, with the numbers of the uninterrupted run
    const lines = metricLines(cut);
    const keys = lines.map((l) => `${l.type} ${l.step}`);
    assert.equal(new Set(keys).size, keys.length, `duplicate metric lines: ${keys.join(', ')}`);
    assert.deepEqual(lines, metricLines(full));
    for (const f of ['best/params.safetensors', 'best/prompt_table.safetensors', 'last/params.safetensors', 'last/optimizer.safetensors']) {
      assert.deepEqual(fs.readFileSync(path.join(cut, f)), fs.readFileSync(path.join(full, f)), f);
    }
  });
}

test('bad inputs give one-line errors naming the place', () => {
  const dir = tmp();
  const data = slice(dir);
  const bad = path.join(dir, 'bad.jsonl');
  fs.writeFileSync(bad, '{"sub_label": "a", "obj_label": "French"}\n{"sub_label": "b", \n');
  const run = (args: string[]) => spawnSync('node', [cli, ...args], { encoding: 'utf8' });
  const base = ['train', '--model', bert, '--dev', data.dev, '--answer-field', 'obj_label', '--out', path.join(dir, 'o'), '--quiet'];

  let r = run([...base, '--train', bad, '--template', '3,3,3']);
  assert.notEqual(r.status, 0);
  assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
  assert.match(r.stderr, /bad\.jsonl line 2/);

  r = run([...base, '--train', data.train, '--template', '{sub_label [MASK]']);
  assert.notEqual(r.status, 0);
  assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
  assert.match(r.stderr, /template column \d+/);

  r = run([...base, '--train', data.train, '--template', '{subject} [P] [MASK]']);
  assert.notEqual(r.status, 0);
  assert.match(r.stderr, /subject/);
  assert.ok(!fs.existsSync(path.join(dir, 'o', 'best')), 'a failed run must not leave a checkpoint');

  r = run(['eval', '--run', path.join(dir, 'nothing'), '--data', data.dev]);
  assert.notEqual(r.status, 0);
  assert.match(r.stderr, /not a ptune run directory/);
});
