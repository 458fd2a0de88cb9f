import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import {
  TASK_NAMES, TASKS, loadTask, loadSst2, loadPatterns, parsePatternFile, templateFor, templateTexts, pseudoTokenCount,
  type TaskExample, type TaskName,
} from '../src/tasks/fewglue/index.js';

const SHARED = path.resolve(process.cwd(), '../shared');

function trainExamples(task: TaskName): TaskExample[] {
  return task === 'sst2'
    ? loadSst2(path.join(SHARED, 'data/sst2'), 'train', { fewShot: { seed: 1 } })
    : loadTask(path.join(SHARED, 'data/fewglue'), task, 'train');
}

// `{field}` names by a plain regex, independent of any template parser
const fieldRefs = (text: string) => [...text.matchAll(/\{(\w+)\}/g)].map((m) => m[1]);

test('every task has a pattern file naming only fields its loader produces', () => {
  for (const task of TASK_NAMES) {
    const file = loadPatterns(task);
    const examples = trainExamples(task);
    assert.equal(file.task, task);
    assert.equal(file.answerType, TASKS[task].answerType);
    for (const ex of examples) for (const f of file.fields) assert.equal(typeof ex.fields[f], 'string', `${task}: ${f}`);
    for (const p of file.patterns) {
      for (const text of templateTexts(p)) {
        for (const f of fieldRefs(text)) assert.ok(file.fields.includes(f), `${task}/${p.name}: {${f}}`);
        assert.equal(text.split('[MASK]').length, 2, `${task}/${p.name}: one [MASK]`);
      }
      // names say how many pseudo tokens a pattern has
      assert.equal(p.name === 'manual' ? 0 : Number(p.name.split('-')[1]), pseudoTokenCount(p.template), `${task}/${p.name}`);
      for (const ex of examples) {
        assert.ok(templateFor(p, ex, 'causal').trimEnd().endsWith('[MASK]'), `${task}/${p.name}: causal ends with [MASK]`);
        assert.equal(typeof templateFor(p, ex, 'masked'), 'string');
      }
    }
    assert.ok(file.patterns.some((p) => !templateTexts(p).some((t) => t.includes('[P'))), `${task}: a manual pattern`);
    assert.ok(file.patterns.some((p) => pseudoTokenCount(p.template) > 0), `${task}: a P-tuning pattern`);
  }
});

test('label tasks map every label to single-word label words; choice and span tasks have none', () => {
  for (const task of TASK_NAMES) {
    const file = loadPatterns(task);
    if (TASKS[task].answerType !== 'label') {
      assert.equal(file.verbalizer, undefined, task);
      continue;
    }
    assert.deepEqual(Object.keys(file.verbalizer!).sort(), [...TASKS[task].labels].sort(), task);
    for (const words of Object.values(file.verbalizer!)) for (const w of words) assert.match(w, /^\S+$/);
  }
  // single tokens of the shared models' uncased WordPiece vocabulary (P-tuning scores one token per label)
  const vocab = new Set(readFileSync(path.join(SHARED, 'models/bert-mini-lama/vocab.txt'), 'utf8').split('\n'));
  for (const task of TASK_NAMES) {
    for (const words of Object.values(loadPatterns(task).verbalizer ?? {})) {
      for (const w of words) assert.ok(vocab.has(w.toLowerCase()), `${task}: "${w}" is one token`);
    }
  }
  assert.deepEqual(loadPatterns('sst2').verbalizer, { positive: ['great'], negative: ['terrible'] });
  assert.deepEqual(loadPatterns('rte').verbalizer, { entailment: ['Yes'], not_entailment: ['No'] });
});

test('SST-2 and RTE carry the P-tuning patterns and their manual forms', () => {
  const sst2 = loadPatterns('sst2').patterns;
  assert.deepEqual(sst2.find((p) => p.name === 'manual'), { name: 'manual', template: '{sentence} It was [MASK] .', causal: '{sentence} It was [MASK]' });
  assert.equal(sst2.find((p) => p.name === 'ptuning-3')!.template, '{sentence} [P*3] It was [MASK] .');
  assert.equal(loadPatterns('rte').patterns.find((p) => p.name === 'ptuning-1')!.template, '{premise} Question: {hypothesis_bare} ? [P] Answer: [MASK] .');
});

test('COPA picks its connective anchor by the question', () => {
  const [cause, effect] = trainExamples('copa');
  assert.equal(cause.fields.question, 'cause');
  for (const p of loadPatterns('copa').patterns) {
    assert.match(templateFor(p, cause), / because (\[P\] )*\[MASK\]/);
    assert.match(templateFor(p, effect), / so (\[P\] )*\[MASK\]/);
    assert.match(templateFor(p, effect, 'causal'), / so (\[P\] )*\[MASK\]$/);
  }
  const odd = { ...cause, id: 'odd', fields: { ...cause.fields, question: 'reason' } };
  assert.throws(() => templateFor(loadPatterns('copa').patterns[0], odd), /pattern "manual": no case for question="reason" \(example odd\)/);
});

const base = () => ({
  task: 'rte', answerType: 'label', fields: ['premise', 'hypothesis_bare'],
  verbalizer: { entailment: ['Yes'], not_entailment: ['No'] },
  patterns: [
    { name: 'manual', template: '{premise} {hypothesis_bare} ? [MASK]' },
    { name: 'ptuning-1', template: '{premise} [P] {hypothesis_bare} ? [MASK] .', causal: '{premise} [P] {hypothesis_bare} ? [MASK]' },
  ],
});

test('pattern validation: one-line errors naming the file and the field', () => {
  const check = (edit: (j: ReturnType<typeof base> & Record<string, unknown>) => void, message: RegExp) => {
    const json = base() as ReturnType<typeof base> & Record<string, unknown>;
    edit(json);
    assert.throws(() => parsePatternFile(json, 'patterns/rte.json'), (e: Error) => {
      assert.match(e.message, message);
      assert.ok(e.message.startsWith('patterns/rte.json: '), e.message);
      assert.ok(!e.message.includes('\n'));
      return true;
    });
  };
  assert.equal(parsePatternFile(base(), 'x.json').patterns.length, 2);
  check((j) => { j.labels = []; }, /labels: unknown key/);
  check((j) => { delete (j as Partial<typeof j>).fields; }, /fields: is missing/);
  check((j) => { j.task = 'glue'; }, /task: unknown task "glue"/);
  check((j) => { j.answerType = 'choice'; }, /answerType: is "choice", rte answers are "label"/);
  check((j) => { j.fields = ['premise', 'hypothesis_bare', 'question']; }, /fields: "question" is not a field of rte examples/);
  check((j) => { delete (j as Partial<typeof j>).verbalizer; }, /verbalizer: is missing \(rte is a label task\)/);
  check((j) => { j.verbalizer = { entailment: ['Yes'] } as typeof j.verbalizer; }, /verbalizer\.not_entailment: is missing/);
  check((j) => { j.verbalizer = { ...j.verbalizer, neutral: ['Maybe'] } as typeof j.verbalizer; }, /verbalizer\.neutral: unknown key/);
  check((j) => { j.verbalizer.entailment = []; }, /verbalizer\.entailment: must be a non-empty array/);
  check((j) => { (j.patterns[1] as Record<string, unknown>).weight = 1; }, /patterns\[1\]\.weight: unknown key/);
  check((j) => { j.patterns[0].template = '{premise} {hypothesis} ? [MASK]'; }, /patterns\[0\]\.template: \{hypothesis\} is not among the file's fields/);
  check((j) => { j.patterns[0].template = '{premise} ? [MASK] [MASK]'; }, /patterns\[0\]\.template: must contain \[MASK\] exactly once \(found 2\)/);
  check((j) => { j.patterns[0].template = '{premise} [MASK] .'; }, /patterns\[0\]\.causal: is missing, and the template does not end with \[MASK\]/);
  check((j) => { j.patterns[1].causal = '{premise} [P] {hypothesis_bare} ? [MASK] .'; }, /patterns\[1\]\.causal: must end with \[MASK\]/);
  check((j) => { j.patterns[1].causal = '{premise} [P*2] [MASK]'; }, /patterns\[1\]\.causal: has 2 pseudo tokens, the template has 1/);
  check((j) => { j.patterns[1].template = '{premise} [P*x] [MASK] .'; }, /patterns\[1\]\.template: unknown slot \[P\*x\]/);
  check((j) => { j.patterns[1].name = 'manual'; }, /patterns: name "manual" is used twice/);
  check((j) => { j.patterns = [j.patterns[1]]; }, /patterns: needs a manual pattern/);
  check((j) => { j.patterns = [j.patterns[0]]; }, /patterns: needs a P-tuning pattern/);
  check((j) => { j.patterns = []; }, /patterns: must be a non-empty array/);
});

test('case templates and non-label files are validated too', () => {
  const copa = {
    task: 'copa', answerType: 'choice', fields: ['premise_bare', 'question'],
    patterns: [
      { name: 'manual', template: { by: 'question', cases: { cause: '{premise_bare} because [MASK]', effect: '{premise_bare} so [MASK]' } } },
      { name: 'ptuning-1', template: { by: 'question', cases: { cause: '{premise_bare} because [P] [MASK]', effect: '{premise_bare} so [P] [MASK]' } } },
    ],
  };
  assert.equal(parsePatternFile(copa, 'c.json').patterns.length, 2);
  const broken = (edit: (j: typeof copa & Record<string, unknown>) => void) => {
    const j = structuredClone(copa) as typeof copa & Record<string, unknown>;
    edit(j);
    return () => parsePatternFile(j, 'c.json');
  };
  assert.throws(broken((j) => { j.verbalizer = { 0: ['a'] }; }), /^UserError: c\.json: verbalizer: not used by "choice" tasks/);
  assert.throws(broken((j) => { j.patterns[0].template.by = 'premise'; }), /c\.json: patterns\[0\]\.template\.by: must name one of the fields/);
  assert.throws(broken((j) => { j.patterns[1].template.cases.effect = '{premise_bare} so [MASK]'; }), /patterns\[1\]\.template\.cases: all cases must have the same number of pseudo tokens/);
  assert.throws(broken((j) => { (j.patterns[0].template as Record<string, unknown>).when = 1; }), /patterns\[0\]\.template\.when: unknown key/);
});

test('loadPatterns reads a directory and reports bad JSON with the file', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'patterns-'));
  writeFileSync(path.join(dir, 'rte.json'), JSON.stringify(base()));
  writeFileSync(path.join(dir, 'cb.json'), '{"task": "cb",');
  writeFileSync(path.join(dir, 'wic.json'), JSON.stringify(base()));
  assert.equal(loadPatterns('rte', dir).file, path.join(dir, 'rte.json'));
  assert.throws(() => loadPatterns('cb', dir), new RegExp(`^UserError: ${path.join(dir, 'cb.json').replace(/[.\\]/g, '\\$&')} line 1 column 15: not valid JSON`));
  assert.throws(() => loadPatterns('wic', dir), /wic\.json: task: is "rte" but the file is for wic/);
  assert.throws(() => loadPatterns('boolq', dir), /cannot read .*boolq\.json/);
});
