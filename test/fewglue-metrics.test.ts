import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import {
  accuracy, classF1, macroF1, multircScores, normalizeAnswer, exactMatch, tokenF1, recordScores, wscSpanMatch,
  evaluate, majorityBaseline, loadTask, type TaskExample,
} from '../src/tasks/fewglue/index.js';

const FEWGLUE = path.resolve(process.cwd(), '../shared/data/fewglue');
const close = (a: number, b: number) => assert.ok(Math.abs(a - b) < 1e-12, `${a} != ${b}`);

test('accuracy and per-class / macro F1 on hand-computed cases', () => {
  close(accuracy(['a', 'b', 'a'], ['a', 'a', 'a']), 2 / 3);
  const preds = ['e', 'e', 'c', 'n', 'e'];
  const golds = ['e', 'c', 'c', 'n', 'n'];
  // e: tp 1 fp 2 fn 0 → 2/4; c: tp 1 fn 1 → 2/3; n: tp 1 fn 1 → 2/3
  close(classF1(preds, golds, 'e'), 0.5);
  close(classF1(preds, golds, 'c'), 2 / 3);
  close(macroF1(preds, golds), (0.5 + 2 / 3 + 2 / 3) / 3);
  // a label that never occurs counts as F1 0 only when asked for explicitly
  close(macroF1(preds, golds, ['e', 'c', 'n', 'x']), (0.5 + 2 / 3 + 2 / 3) / 4);
  close(macroF1(['a', 'a'], ['a', 'b']), (2 / 3 + 0) / 2);
  assert.throws(() => accuracy(['a'], ['a', 'b']), /1 predictions for 2 gold labels/);
  assert.throws(() => accuracy([], []), /no examples/);
});

test('MultiRC EM groups answer options by question; F1a is binary F1 over all options', () => {
  const groups = ['q1', 'q1', 'q1', 'q2', 'q2', 'q3'];
  const golds = ['True', 'False', 'True', 'False', 'True', 'False'];
  const preds = ['True', 'False', 'True', 'True', 'True', 'False'];
  const { em, f1a } = multircScores(preds, golds, groups);
  close(em, 2 / 3); // q1 and q3 fully right, q2 not
  close(f1a, 6 / 7); // tp 3, fp 1, fn 0
  assert.deepEqual(multircScores(['False'], ['False'], ['q']), { em: 1, f1a: 0 });
  assert.throws(() => multircScores(['True'], ['True'], []), /0 group ids for 1 answer options/);
});

test('ReCoRD EM / F1 with SQuAD normalization, best over gold answers', () => {
  assert.equal(normalizeAnswer('The  Cat, sat!'), 'cat sat');
  assert.equal(normalizeAnswer("An apple's core"), 'apples core');
  assert.equal(exactMatch('Olimpija Ljubljana.', 'olimpija ljubljana'), 1);
  assert.equal(exactMatch('Ljubljana', 'Olimpija Ljubljana'), 0);
  close(tokenF1('the cat sat', 'a cat sat down'), 0.8); // p = 2/2, r = 2/3
  close(tokenF1('cat cat', 'cat'), 2 / 3); // repeated tokens count once per gold occurrence
  assert.equal(tokenF1('dog', 'cat'), 0);
  const { em, f1 } = recordScores(['Chelsea', 'Diego'], [['Chelsea FC', 'Chelsea'], ['Diego Costa']]);
  close(em, 0.5);
  close(f1, (1 + 2 / 3) / 2);
  assert.throws(() => recordScores(['x'], [[]]), /query 0 has no gold answers/);
});

test('WSC span match: word containment either way, case and punctuation ignored', () => {
  assert.equal(wscSpanMatch('the demonstrators', 'The demonstrators'), true);
  assert.equal(wscSpanMatch('demonstrators.', 'The demonstrators'), true);
  assert.equal(wscSpanMatch('the city councilmen', 'councilmen'), true);
  assert.equal(wscSpanMatch('the councilmen', 'The demonstrators'), false);
  assert.equal(wscSpanMatch(' . ', 'Tina'), false);
});

const ex = (id: string, label: string, extra: Partial<TaskExample> = {}): TaskExample => ({ id, fields: {}, label, ...extra });

test('evaluate reports each task its metrics', () => {
  const cb = [ex('1', 'entailment'), ex('2', 'contradiction'), ex('3', 'neutral'), ex('4', 'entailment')];
  const cbScores = evaluate('cb', cb, ['entailment', 'contradiction', 'entailment', 'entailment']);
  assert.deepEqual(Object.keys(cbScores), ['acc', 'f1-macro']);
  close(cbScores.acc, 0.75);
  close(cbScores['f1-macro'], (0.8 + 1 + 0) / 3);
  assert.deepEqual(evaluate('copa', [ex('1', '0'), ex('2', '1')], ['0', '0']), { acc: 0.5 });
  const mrc = [ex('1', 'True', { group: 'a' }), ex('2', 'False', { group: 'a' }), ex('3', 'True', { group: 'b' })];
  const m = evaluate('multirc', mrc, ['True', 'False', 'False']);
  close(m.em, 0.5);
  close(m.f1a, 2 / 3);
  const rec = [ex('1', 'Paris', { answers: ['Paris', 'Paris, France'] })];
  assert.deepEqual(evaluate('record', rec, ['paris']), { em: 1, f1: 1 });
  assert.throws(() => evaluate('rte', [ex('1', 'entailment')], []), /rte evaluation: 0 predictions for 1/);
  assert.throws(() => evaluate('rte', [{ id: 'u', fields: {} }], ['entailment']), /example u has no label/);
});

test('majority-class baseline from the train labels, scored on val', () => {
  const baseline = (task: string) => majorityBaseline(task as 'rte', loadTask(FEWGLUE, task, 'train'), loadTask(FEWGLUE, task, 'val'))!;
  const rte = baseline('rte'); // train: 19 not_entailment / 13; val: 131 not_entailment of 277
  assert.equal(rte.label, 'not_entailment');
  close(rte.scores.acc, 131 / 277);
  const boolq = baseline('boolq');
  assert.equal(boolq.label, 'True');
  close(boolq.scores.acc, 2033 / 3270);
  const cb = baseline('cb'); // val: 23 entailment of 56; F1(entailment) = 46/79, others 0
  assert.equal(cb.label, 'entailment');
  close(cb.scores.acc, 23 / 56);
  close(cb.scores['f1-macro'], 46 / 79 / 3);
  const copa = baseline('copa');
  assert.equal(copa.label, '1');
  close(copa.scores.acc, 0.45);
  const wsc = baseline('wsc');
  assert.equal(wsc.label, 'True');
  close(wsc.scores.acc, 38 / 104);
  const multirc = baseline('multirc');
  assert.equal(multirc.label, 'False');
  assert.equal(multirc.scores.f1a, 0);
  assert.ok(multirc.scores.em > 0 && multirc.scores.em < 0.01);
  assert.equal(majorityBaseline('record', loadTask(FEWGLUE, 'record', 'train'), []), null);
  // ties go to the earlier label of the task's label list
  assert.equal(majorityBaseline('rte', [ex('1', 'not_entailment'), ex('2', 'entailment')], [ex('3', 'entailment')])!.label, 'entailment');
});
