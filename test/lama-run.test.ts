import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { programs } from '../src/engine/index.js';
import { collectGarbage, runCli } from './fixtures.js';
import { capFacts } from '../src/tasks/lama/worker.js';
import { runLama, type LamaRunOptions } from '../src/tasks/lama/run.js';
import { saveRelationResult, skippedResult, type LamaRelationResult } from '../src/tasks/lama/report.js';

const shared = path.resolve(process.cwd(), '../shared');
const data = path.join(shared, 'data/lama');
const bert = path.join(shared, 'models/bert-mini-lama');
const gpt2 = path.join(shared, 'models/gpt2-mini-lama');

const made: string[] = [];
const tmp = () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ptune-lama-'));
  made.push(dir);
  return dir;
};
after(() => made.forEach((dir) => fs.rmSync(dir, { recursive: true, force: true })));
const find = (results: LamaRelationResult[], mode: string, rel: string) => results.find((r) => r.mode === mode && r.relation === rel)!;
/** Bytes of JS heap and host arrays in use, after full collections (array buffers are freed a cycle late). */
function hostMemory(): number {
  for (let i = 0; i < 3; i++) collectGarbage();
  const m = process.memoryUsage();
  return m.heapUsed + m.external + m.arrayBuffers;
}
const run = (o: Partial<LamaRunOptions>) => runLama({ model: bert, data, out: tmp(), jobs: 1, quiet: true, ...o });

/** a tiny training slice: 16 train / 8 dev / 16 test facts, one epoch of 2 steps */
const SLICE: Partial<LamaRunOptions> = {
  maxFacts: { train: 16, dev: 8, test: 16 },
  ptune: { epochs: 1, batchSize: 8 },
  finetune: { epochs: 1, batchSize: 8 },
};

test('manual bert-mini-lama on full test sets matches the model README: P138 4.49, P178 37.07', async (t) => {
  const before = hostMemory();
  const r = await run({ relations: ['P138', 'P178', 'P190'], modes: ['manual'] });
  const p178 = find(r.report.results, 'manual', 'P178');
  assert.equal(p178.n_test, 588);
  assert.equal(p178.test_hits, 218);
  assert.equal((p178.test_p1! * 100).toFixed(2), '37.07');
  assert.equal(p178.template, '{sub_label} is developed by [MASK] .');
  assert.equal((p178.majority_p1! * 100).toFixed(2), '4.93');
  const p138 = find(r.report.results, 'manual', 'P138');
  assert.equal(p138.n_test, 468);
  assert.equal((p138.test_p1! * 100).toFixed(2), '4.49');
  // a relation without a test file is reported, not scored
  assert.equal(find(r.report.results, 'manual', 'P190').status, 'no test file');
  assert.deepEqual(r.report.relations_skipped, [{ relation: 'P190', mode: 'manual', reason: 'no test file' }]);
  assert.equal(r.report.summary.manual!.relations, 2);
  assert.equal((r.report.summary.manual!.macro_p1! * 100).toFixed(2), '20.78');
  const md = fs.readFileSync(r.files.md, 'utf8');
  assert.match(md, /\| P178 \| developer \| 588 \| 4\.93 \| 37\.07 \|/);
  assert.match(md, /P190 \(all modes\): no test file/);
  assert.match(fs.readFileSync(r.files.svg, 'utf8'), /^<svg/);
  const preds = fs.readFileSync(path.join(path.dirname(r.files.md), 'manual/P178/predictions.test.jsonl'), 'utf8').trim().split('\n');
  assert.equal(preds.length, 588);
  const first = JSON.parse(preds[0]!) as { top: unknown[]; hit: boolean };
  assert.equal(first.top.length, 10);
  assert.equal(preds.filter((l) => (JSON.parse(l) as { hit: boolean }).hit).length, 218);
  // the run's model is released with it: only the bounded cache of compiled sessions stays
  const grown = (hostMemory() - before) / 2 ** 20;
  t.diagnostic(`host memory change over the run: ${grown.toFixed(1)} MiB`);
  assert.ok(grown < 16, `host arrays grew by ${grown.toFixed(1)} MiB over the run`);
});

test('manual gpt2-mini-lama cuts the template after [Y]: P178 matches the README (29.42)', async () => {
  const r = await run({ model: gpt2, relations: ['P178'], modes: ['manual'] });
  const p178 = find(r.report.results, 'manual', 'P178');
  assert.equal(p178.template, '{sub_label} is developed by [MASK]');
  assert.equal((p178.test_p1! * 100).toFixed(2), '29.42');
});

test('resume: a relation whose result.json exists is not recomputed', async () => {
  const out = tmp();
  const planted = { ...skippedResult('manual', 'P178', 'ok'), n_test: 4, test_p1: 0.75, test_hits: 3, dev_p1: null, majority_p1: 0.25 };
  saveRelationResult(out, planted);
  const r = await run({ out, relations: ['P176', 'P178'], modes: ['manual'], maxFacts: { test: 50 } });
  assert.equal(r.computed, 1);
  assert.equal(r.reused, 1);
  assert.equal(find(r.report.results, 'manual', 'P178').test_p1, 0.75);
  assert.equal(find(r.report.results, 'manual', 'P176').n_test, 50);
  const again = await run({ out, relations: ['P176', 'P178'], modes: ['manual'], maxFacts: { test: 50 } });
  assert.equal(again.computed, 0);
  assert.deepEqual(again.report.summary, r.report.summary);
  // the same folder with other settings for a mode is refused
  await assert.rejects(run({ out, relations: ['P176'], modes: ['manual'], maxFacts: { test: 60 } }), /settings\.json: manual results here were made with maxFacts/);
});

test('majority, manual, ptune and finetune on a small slice: jobs=2 gives the same numbers as jobs=1', async () => {
  const opts: Partial<LamaRunOptions> = { ...SLICE, relations: ['P176', 'P1412'], modes: ['majority', 'manual', 'ptune', 'finetune'] };
  const one = await run({ ...opts, jobs: 1 });
  const two = await run({ ...opts, jobs: 2 });
  assert.equal(one.computed, 8);
  assert.equal(two.computed, 8);
  const strip = (rs: LamaRelationResult[]) => rs.map(({ seconds: _, ...rest }) => rest);
  assert.deepEqual(strip(two.report.results), strip(one.report.results));
  const pt = find(one.report.results, 'ptune', 'P176');
  assert.equal(pt.status, 'ok');
  assert.equal(pt.template, '[P*3] {sub_label} [P*3] [MASK] [P*3]');
  assert.deepEqual([pt.n_train, pt.n_dev, pt.n_test, pt.epochs], [16, 8, 16, 1]);
  assert.equal(find(one.report.results, 'finetune', 'P176').template, '{sub_label} is produced by [MASK] .');
  for (const r of one.report.results) assert.equal(r.status, 'ok', `${r.mode} ${r.relation}`);
  // majority mode scores the majority answer itself, taken from all 773 train facts, not the 16 of the cap
  const maj = find(one.report.results, 'majority', 'P1412');
  assert.equal(maj.test_p1, maj.majority_p1);
  assert.equal(maj.majority, 'French');
  const outDir = path.dirname(one.files.md);
  assert.ok(fs.existsSync(path.join(outDir, 'ptune/P176/train/best/prompt_table.safetensors')));
  assert.ok(!fs.existsSync(path.join(outDir, 'finetune/P176/train/best')), 'finetune LM checkpoints are removed');
});

test('gpt2-mini-lama: ptune uses 3,3,0; manual+ptune keeps the anchors and ends at [MASK]', async () => {
  const r = await run({ ...SLICE, model: gpt2, relations: ['P176'], modes: ['ptune', 'manual+ptune'] });
  const pt = find(r.report.results, 'ptune', 'P176');
  assert.equal(pt.template, '[P*3] {sub_label} [P*3] [MASK]');
  assert.equal(pt.status, 'ok');
  const mp = find(r.report.results, 'manual+ptune', 'P176');
  assert.equal(mp.template, '[P*3] {sub_label} [P*3] is produced by [MASK]');
  assert.equal(mp.status, 'ok');
  assert.ok(fs.existsSync(path.join(path.dirname(r.files.md), 'manual+ptune/P176/predictions.test.jsonl')));
});

test('ptune on a second relation with the same template shape compiles no new programs', async () => {
  await programs.clear();
  const a = await run({ ...SLICE, relations: ['P1412'], modes: ['ptune'] });
  assert.equal(find(a.report.results, 'ptune', 'P1412').status, 'ok');
  const compiled = programs.size;
  assert.ok(compiled > 0 && compiled < programs.maxSessions, `${compiled} programs`);
  const b = await run({ ...SLICE, relations: ['P176'], modes: ['ptune'] });
  assert.equal(find(b.report.results, 'ptune', 'P176').status, 'ok');
  assert.equal(programs.size, compiled, 'training, evaluation and ranking programs are shared across relations');
});

test('capFacts: a seeded sample of n facts in file order, the same every time', () => {
  const facts = [...Array(50).keys()];
  const a = capFacts(facts, 10, 'P19/train');
  assert.equal(a.length, 10);
  assert.deepEqual(a, [...a].sort((x, y) => x - y));
  assert.deepEqual(capFacts(facts, 10, 'P19/train'), a);
  assert.notDeepEqual(capFacts(facts, 10, 'P20/train'), a);
  assert.equal(capFacts(facts, 60, 'x'), facts);
});

test('CLI: a bad --relations value exits 2 with a one-line error', async () => {
  const { code, text } = await runCli(['lama', '--model', bert, '--data', data, '--out', tmp(), '--relations', 'P19,P9999']);
  assert.equal(code, 2);
  assert.equal(text.trim().split('\n').length, 1);
  assert.match(text, /^ptune: --relations: unknown relation "P9999"/);
});

test('CLI: an unknown --mode exits 2', async () => {
  const { code } = await runCli(['lama', '--model', bert, '--data', data, '--out', tmp(), '--mode', 'zero-shot']);
  assert.equal(code, 2);
});
