import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { barChartSvg } from '../src/report/chart.js';
import { loadRelation, missingFilesStatus, type AnswerableFact } from '../src/tasks/lama/data.js';
import { topK } from '../src/tasks/lama/metrics.js';
import {
  buildLamaReport,
  collectResults,
  loadRelationResult,
  relationDone,
  relationResultPath,
  saveRelationResult,
  skippedResult,
  toPredictions,
  writeLamaReport,
  writePredictions,
  type LamaRelationResult,
} from '../src/tasks/lama/report.js';

const dataDir = path.resolve(process.cwd(), '../shared/data/lama');

function tmpDir(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'lama-report-'));
}

/** Tags open and close in order (a light well-formedness check). */
function assertBalancedTags(xml: string): void {
  const stack: string[] = [];
  for (const m of xml.matchAll(/<(\/?)([a-zA-Z]+)[^>]*?(\/?)>/g)) {
    const [, closing, name, selfClosing] = m;
    if (selfClosing) continue;
    if (closing) assert.equal(stack.pop(), name, `closing </${name}>`);
    else stack.push(name);
  }
  assert.deepEqual(stack, []);
}

function result(mode: string, relation: string, nTest: number, hits: number, extra: Partial<LamaRelationResult> = {}): LamaRelationResult {
  return {
    mode,
    relation,
    status: 'ok',
    label: `label of ${relation}`,
    n_train: 100,
    n_dev: 20,
    n_test: nTest,
    dropped: { train: 3, dev: 1, test: 2 },
    dev_p1: 0.5,
    test_p1: hits / nTest,
    test_hits: hits,
    majority: 'x',
    majority_p1: 0.1,
    epochs: mode === 'manual' ? 0 : 4,
    seconds: 1.5,
    ...extra,
  };
}

test('barChartSvg: one rect per finite value, escaped text, balanced tags', () => {
  const svg = barChartSvg({
    title: 'A <b> & "c"',
    categories: ['P1', 'P2', 'P3'],
    series: [
      { name: 'manual', values: [10, null, 30] },
      { name: 'p&tune', values: [15, 25, NaN] },
    ],
    yLabel: 'P@1 (%)',
  });
  assert.ok(svg.startsWith('<svg'));
  assert.equal(svg.match(/<rect/g)?.length, 4);
  assert.ok(svg.includes('A &lt;b&gt; &amp; &quot;c&quot;'));
  assert.ok(svg.includes('>p&amp;tune<'));
  assert.ok(!svg.includes('NaN'));
  assertBalancedTags(svg);
  // the tallest bar reaches the top tick (30), bars grow from the same baseline
  const bars = [...svg.matchAll(/<rect x="[^"]+" y="([^"]+)" width="[^"]+" height="([^"]+)"/g)].map((m) => [
    Number(m[1]),
    Number(m[2]),
  ]);
  const bases = bars.map(([y, h]) => Math.round(y + h));
  assert.ok(bases.every((b) => b === bases[0]));
  const heights = bars.map(([, h]) => h);
  const values = [10, 15, 25, 30]; // category by category, series by series
  heights.forEach((h, i) => assert.ok(Math.abs(h / values[i] - heights[0] / values[0]) < 0.02, 'heights ∝ values'));
  assert.throws(
    () => barChartSvg({ title: 't', categories: ['a'], series: [{ name: 's', values: [1, 2] }], yLabel: 'y' }),
    /series "s" has 2 values for 1 categories/,
  );
});

test('report: macro vs micro, a relation without test file reported as skipped, files parseable', () => {
  const p17 = loadRelation(dataDir, 'original', 'P17');
  const status = missingFilesStatus(p17.missing);
  assert.equal(status, 'no test file');
  const results: LamaRelationResult[] = [
    result('ptune', 'P19', 10, 9),
    result('manual', 'P19', 10, 1),
    result('manual', 'P101', 90, 45),
    result('ptune', 'P101', 90, 63),
    result('manual', 'P20', 100, 20),
    skippedResult('manual', 'P17', status, { n_train: p17.train!.length }),
    skippedResult('ptune', 'P17', status),
  ];
  const dir = tmpDir();
  const { json, md, svg, report } = writeLamaReport(dir, results, {
    title: 'LAMA bert-mini-lama',
    command: 'ptune lama --model bert-mini-lama',
    config: { vocab: '29k', seed: 1 },
  });
  const parsed = JSON.parse(fs.readFileSync(json, 'utf8'));
  assert.deepEqual(parsed, JSON.parse(JSON.stringify(report)));
  assert.deepEqual(parsed.modes, ['manual', 'ptune']);
  assert.deepEqual(parsed.relations_covered, ['P19', 'P101']);
  assert.deepEqual(parsed.relations_skipped, [
    { relation: 'P17', mode: 'manual', reason: 'no test file' },
    { relation: 'P17', mode: 'ptune', reason: 'no test file' },
    { relation: 'P20', mode: 'ptune', reason: 'no result' },
  ]);
  // manual over its 3 scored relations: macro mean(0.1, 0.5, 0.2), micro 66/200
  assert.ok(Math.abs(parsed.summary.manual.macro_p1 - (0.1 + 0.5 + 0.2) / 3) < 1e-12);
  assert.equal(parsed.summary.manual.micro_p1, 66 / 200);
  assert.equal(parsed.summary.manual.relations, 3);
  // common relations only: manual macro (0.1 + 0.5) / 2, ptune (0.9 + 0.7) / 2, micro 72/100
  assert.ok(Math.abs(parsed.summary_common.manual.macro_p1 - 0.3) < 1e-12);
  assert.ok(Math.abs(parsed.summary_common.ptune.macro_p1 - 0.8) < 1e-12);
  assert.equal(parsed.summary_common.ptune.micro_p1, 72 / 100);
  assert.equal(parsed.summary_common.ptune.majority_micro_p1, 10 / 100);
  assert.deepEqual(
    parsed.results.map((r: LamaRelationResult) => `${r.mode}/${r.relation}`),
    ['manual/P17', 'manual/P19', 'manual/P20', 'manual/P101', 'ptune/P17', 'ptune/P19', 'ptune/P101'],
  );

  const text = fs.readFileSync(md, 'utf8');
  assert.ok(text.startsWith('# LAMA bert-mini-lama\n'));
  assert.ok(text.includes('ptune lama --model bert-mini-lama'));
  assert.ok(text.includes('- vocab: `29k`'));
  assert.ok(text.includes('| relation | label | facts | majority | manual | ptune |'));
  assert.ok(text.includes('| P19 | label of P19 | 10 | 10.00 | 10.00 | 90.00 |'));
  assert.ok(text.includes('| P20 | label of P20 | 100 | 10.00 | 20.00 | – |'));
  assert.ok(text.includes('| **macro** | 2 relations | 100 | 10.00 | 30.00 | 80.00 |'));
  assert.ok(text.includes('| **micro** | 2 relations | 100 | 10.00 | 46.00 | 72.00 |'));
  assert.ok(text.includes('- P17 (all modes): no test file'));
  assert.ok(text.includes('- P20 (ptune): no result'));

  const chart = fs.readFileSync(svg, 'utf8');
  assert.ok(chart.startsWith('<svg'));
  // bars: manual 3 relations + macro, ptune 2 + macro, majority 3 + macro
  assert.equal(chart.match(/<rect/g)?.length, 4 + 3 + 4);
  for (const label of ['P19', 'P20', 'P101', 'macro', 'manual', 'ptune', 'majority', 'P@1 (%)']) {
    assert.ok(chart.includes(`>${label}</text>`), label);
  }
  assertBalancedTags(chart);
  assert.deepEqual(fs.readdirSync(dir).sort(), ['p1.svg', 'report.json', 'report.md'], 'no temp files left');
  fs.rmSync(dir, { recursive: true });
});

test('report rejects duplicate and malformed results', () => {
  assert.throws(() => buildLamaReport([result('manual', 'P19', 10, 1), result('manual', 'P19', 10, 2)]), /two results for manual\/P19/);
  assert.throws(() => buildLamaReport([{ ...result('manual', 'P19', 10, 1), test_p1: 3 }]), /"test_p1" must be null or a number in \[0, 1\]/);
});

test('resume helpers: save, done, load, collect', () => {
  const dir = tmpDir();
  assert.equal(relationDone(dir, 'ptune', 'P19'), false);
  assert.equal(loadRelationResult(dir, 'ptune', 'P19'), null);
  assert.deepEqual(collectResults(dir), []);
  const a = result('ptune', 'P19', 10, 9);
  const file = saveRelationResult(dir, a);
  assert.equal(file, path.join(dir, 'ptune', 'P19', 'result.json'));
  saveRelationResult(dir, result('manual', 'P101', 90, 45));
  saveRelationResult(dir, skippedResult('manual', 'P17', 'no test file'));
  assert.equal(relationDone(dir, 'ptune', 'P19'), true);
  assert.equal(relationDone(dir, 'manual', 'P19'), false);
  assert.deepEqual(loadRelationResult(dir, 'ptune', 'P19'), a);
  assert.deepEqual(
    collectResults(dir).map((r) => `${r.mode}/${r.relation}/${r.status}`),
    ['manual/P17/no test file', 'manual/P101/ok', 'ptune/P19/ok'],
  );
  assert.deepEqual(fs.readdirSync(path.join(dir, 'ptune', 'P19')), ['result.json']);
  // a result file that does not parse is an error naming the file
  const bad = relationResultPath(dir, 'manual', 'P20');
  fs.mkdirSync(path.dirname(bad), { recursive: true });
  fs.writeFileSync(bad, '{"mode": "manual", ');
  assert.throws(() => collectResults(dir), (e: Error) => e.message.startsWith(`${bad}: malformed JSON`));
  fs.writeFileSync(bad, JSON.stringify({ ...result('manual', 'P20', 5, 1), n_test: -1 }));
  assert.throws(() => loadRelationResult(dir, 'manual', 'P20'), new RegExp(`${bad}: field "n_test"`));
  assert.throws(() => relationDone(dir, '../x', 'P19'), /invalid mode name/);
  fs.rmSync(dir, { recursive: true });
});

test('predictions: top-k answers with scores per fact, JSONL', () => {
  const facts: AnswerableFact[] = [
    { sub_label: 'Allan', obj_label: 'Paris', predicate_id: 'P19', obj_token_id: 2 },
    { sub_label: 'Bo', obj_label: 'Rome', predicate_id: 'P19', obj_token_id: 3 },
  ];
  const names = ['a', 'b', 'paris', 'rome'];
  const ranked = [topK(new Float32Array([0, 1, 5, 2]), 2, [1, 2, 3]), topK(new Float32Array([0, 1, 5, 2]), 2, [1, 3])];
  const preds = toPredictions(facts, ranked, (id) => names[id]);
  const dir = tmpDir();
  const file = writePredictions(dir, 'manual', 'P19', preds);
  assert.equal(file, path.join(dir, 'manual', 'P19', 'predictions.test.jsonl'));
  const lines = fs.readFileSync(file, 'utf8').trim().split('\n').map((l) => JSON.parse(l));
  assert.deepEqual(lines[0], {
    sub: 'Allan',
    gold: 'Paris',
    gold_id: 2,
    hit: true,
    top: [
      { token: 'paris', id: 2, score: 5 },
      { token: 'rome', id: 3, score: 2 },
    ],
  });
  assert.equal(lines[1].hit, true);
  assert.deepEqual(
    lines[1].top.map((t: { token: string }) => t.token),
    ['rome', 'b'],
  );
  assert.throws(() => toPredictions(facts, ranked.slice(1), String), /1 rankings for 2 facts/);
  fs.rmSync(dir, { recursive: true });
});
