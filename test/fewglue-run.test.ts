import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { programs } from '../src/engine/index.js';
import { loadModel } from '../src/models/load.js';
import { parseTemplate, numPseudo } from '../src/prompt/template.js';
import { renderExample } from '../src/prompt/render.js';
import { collectGarbage, runCli } from './fixtures.js';
import { loadPatterns, pseudoTokenCount, templateFor, type TaskName } from '../src/tasks/fewglue/index.js';
import { capEval, loadTaskData, meanStd, RUNNABLE_TASKS, runFewGlue, summarize, type FewGlueReport, type RunResult } from '../src/tasks/fewglue/run.js';
import { classifierTemplate } from '../src/tasks/fewglue/classifier.js';
import { reportMarkdown, writeReport } from '../src/tasks/fewglue/report.js';

const SHARED = path.resolve(process.cwd(), '../shared');
const DATA = path.join(SHARED, 'data');
const BERT = path.join(SHARED, 'models/bert-mini-lama');
const GPT2 = path.join(SHARED, 'models/gpt2-mini-lama');
const tmp = () => mkdtempSync(path.join(tmpdir(), 'fewglue-run-'));

/** Bytes of JS heap and host arrays in use, after full collections (array buffers are freed a cycle late). */
function hostMemory(): number {
  for (let i = 0; i < 3; i++) collectGarbage();
  const m = process.memoryUsage();
  return m.heapUsed + m.external + m.arrayBuffers;
}

test('every runnable task renders each pattern (and the classifier input) for BERT and GPT-2, truncating long passages', async () => {
  for (const dir of [BERT, GPT2]) {
    const lm = await loadModel(dir);
    const kind = lm.info.kind;
    for (const task of RUNNABLE_TASKS) {
      const data = loadTaskData(task as TaskName, 1, DATA, 40);
      const pf = loadPatterns(task);
      const texts = [...pf.patterns.map((p) => ({ name: p.name, text: templateFor(p, data.evalSet[0]!, kind), pseudo: pseudoTokenCount(p.template) })),
        { name: 'classifier', text: classifierTemplate(task as TaskName, kind), pseudo: 0 }];
      for (const { name, text, pseudo } of texts) {
        const template = parseTemplate(text);
        assert.equal(numPseudo(template), pseudo, `${task} ${name}`);
        if (kind === 'causal') assert.ok(text.trimEnd().endsWith('[MASK]'), `${task} ${name}: causal template ends with the slot`);
        let longest = 0;
        for (const ex of [...data.train, ...data.evalSet]) {
          const r = renderExample(template, ex.fields, lm.tokenizer, lm.info, { maxLength: 128 })!;
          assert.ok(r.ids.length <= 128, `${task} ${name}: ${r.ids.length} tokens`);
          assert.equal(r.pseudoPositions.length, pseudo);
          if (kind === 'masked') assert.equal(r.ids[r.answerPosition], lm.info.special.mask, `${task} ${name}: mask at the answer position`);
          else assert.equal(r.answerPosition, r.ids.length - 1, `${task} ${name}: causal answer read at the last token`);
          longest = Math.max(longest, r.ids.length);
        }
        // BoolQ and MultiRC passages are longer than 128 tokens: rendering must have truncated them to the limit
        if (task === 'boolq' || task === 'multirc') assert.equal(longest, 128, `${task} ${name}`);
      }
    }
    lm.dispose();
  }
});

test('capEval keeps a fixed sample, whole MultiRC questions, and everything under the cap', () => {
  const multirc = loadTaskData('multirc', 1, DATA, 0).evalSet;
  const a = capEval(multirc, 300);
  assert.deepEqual(capEval(multirc, 300), a);
  assert.ok(a.length <= 300 && a.length > 250, `${a.length}`);
  const groups = new Set(a.map((x) => x.group));
  for (const g of groups) assert.equal(a.filter((x) => x.group === g).length, multirc.filter((x) => x.group === g).length);
  const sst = loadTaskData('sst2', 1, DATA, 0).evalSet;
  assert.equal(sst.length, 872);
  assert.equal(capEval(sst, 0), sst);
});

function fakeRun(mode: RunResult['mode'], seed: number, acc: number): RunResult {
  return {
    task: 'cb', mode, seed, pattern: 'manual', scores: { acc, 'f1-macro': acc / 2 }, baseline: { acc: 0.5, 'f1-macro': 0.2 },
    baselineLabel: 'contradiction', devScore: 0.6, bestEpoch: 2, steps: 8, seconds: 1, evalSplit: 'val', nEval: 56, nTrain: 32,
  };
}

test('report: mean ± sample std over seeds with the majority baseline beside it; not-run cells listed', () => {
  const ms = meanStd([0.5, 0.7]);
  assert.ok(Math.abs(ms.mean - 0.6) < 1e-12 && Math.abs(ms.std - Math.sqrt(0.02)) < 1e-12);
  const runs = [fakeRun('manual', 1, 0.5), fakeRun('ptune', 1, 0.6), fakeRun('ptune', 2, 0.7)];
  const report: FewGlueReport = {
    model: '/m/bert-mini-lama', modelKind: 'bert (masked)', settings: { epochs: 1 }, runs, cells: summarize(runs),
    notRun: [{ task: 'copa', mode: 'ptune', reason: 'choice scoring not implemented' }], seconds: 3,
  };
  const md = reportMarkdown(report);
  assert.match(md, /\| cb \| acc \| 50\.0 ± 0\.0 \(n=1\) \[50\.0\] \| 65\.0 ± 7\.1 \(n=2\) \[50\.0\] \|/);
  assert.match(md, /\| cb \| f1-macro \| 25\.0 ± 0\.0 \(n=1\) \[20\.0\] \| 32\.5 ± 3\.5 \(n=2\) \[20\.0\] \|/);
  assert.match(md, /- copa ptune: choice scoring not implemented/);
  const out = tmp();
  writeReport(out, report);
  assert.deepEqual(JSON.parse(readFileSync(path.join(out, 'report.json'), 'utf8')).cells, report.cells);
  assert.equal(readFileSync(path.join(out, 'report.md'), 'utf8'), md);
});

test('SST-2: a short seeded ptune-lm run beats zero-shot manual on a fixed 64-sentence slice', async (t) => {
  // a small data root: 32 positive + 32 negative training sentences are both the few-shot pool (16 + 16 train,
  // the other 32 dev) and the evaluation slice, so the check is that training, best-checkpoint restore and
  // evaluation are wired together (the tiny LM barely generalizes from 32 sentences; see docs/fewglue.md)
  const root = tmp();
  mkdirSync(path.join(root, 'sst2'));
  const rows = readFileSync(path.join(DATA, 'sst2', 'train.tsv'), 'utf8').split('\n').slice(1);
  const pos = rows.filter((l) => l.endsWith('\t1')).slice(0, 32);
  const neg = rows.filter((l) => l.endsWith('\t0')).slice(0, 32);
  const tsv = 'sentence\tlabel\n' + pos.flatMap((p, i) => [p, neg[i]!]).join('\n') + '\n';
  writeFileSync(path.join(root, 'sst2', 'train.tsv'), tsv);
  writeFileSync(path.join(root, 'sst2', 'test.tsv'), tsv);
  const out = tmp();
  const before = hostMemory();
  const report = await runFewGlue({
    model: BERT, tasks: ['sst2'], modes: ['manual', 'ptune-lm'], seeds: [3], out, dataDir: root, epochs: 8, patience: 0,
    lmLr: 3e-4, jointPromptLr: 3e-3,
  });
  // both LMs, the tuned copy's gradients and Adam moments (≈ 5 × 19 MB of host arrays) are released with the
  // run; what stays is the bounded cache of compiled sessions
  const grown = (hostMemory() - before) / 2 ** 20;
  t.diagnostic(`host memory change over the run: ${grown.toFixed(1)} MiB`);
  assert.ok(grown < 16, `host arrays grew by ${grown.toFixed(1)} MiB over the run`);
  assert.ok(programs.size <= programs.maxSessions);
  const acc = (mode: string) => report.runs.find((r) => r.mode === mode)!.scores.acc!;
  assert.equal(report.runs.length, 2);
  assert.ok(acc('ptune-lm') > acc('manual') + 0.1, `ptune-lm ${acc('ptune-lm')} vs manual ${acc('manual')}`);
  const preds = readFileSync(path.join(out, 'predictions', 'sst2-ptune-lm-seed3.jsonl'), 'utf8').trim().split('\n');
  assert.equal(preds.length, 64);
  assert.match(readFileSync(path.join(out, 'report.md'), 'utf8'), /\| sst2 \| acc \| /);
});

const cliError = (args: string[]) => runCli(['fewglue', ...args]);

test('CLI: bad arguments exit 2 with one line', async () => {
  const cases: [string[], RegExp][] = [
    [['--model', BERT, '--task', 'sst2,foo', '--out', tmp()], /^ptune: --task: unknown task "foo"/],
    [['--model', BERT, '--task', 'rte', '--mode', 'zero', '--out', tmp()], /^ptune: --mode: unknown mode "zero"/],
    [['--model', BERT, '--task', 'rte', '--seeds', '0', '--out', tmp()], /^ptune: --seeds: expected an integer ≥ 1, got "0"/],
    [['--model', BERT, '--task', 'rte', '--seeds', 'x', '--out', tmp()], /expected an integer/],
    [['--model', BERT, '--out', tmp()], /required option '--task/],
  ];
  for (const [args, re] of cases) {
    const { code, text } = await cliError(args);
    assert.equal(code, 2, args.join(' '));
    assert.equal(text.trim().split('\n').length, 1, text);
    assert.match(text, re);
  }
});
