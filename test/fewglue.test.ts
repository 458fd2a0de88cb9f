import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import {
  FEWGLUE_TASKS, TASKS, loadTask, mirrorCopa, loadSst2, fewShotSplit, type TaskExample,
} from '../src/tasks/fewglue/index.js';

const SHARED = path.resolve(process.cwd(), '../shared');
const FEWGLUE = path.join(SHARED, 'data/fewglue');
const SST2 = path.join(SHARED, 'data/sst2');

function counts(xs: readonly (string | undefined)[]): Record<string, number> {
  const c: Record<string, number> = {};
  for (const x of xs) c[String(x)] = (c[String(x)] ?? 0) + 1;
  return c;
}

// examples per split (MultiRC: answer options; ReCoRD: queries)
const SIZES: Record<string, Record<string, number>> = {
  boolq: { train: 32, dev32: 32, val: 3270 },
  cb: { train: 32, dev32: 32, val: 56 },
  copa: { train: 32, dev32: 32, val: 100, unlabeled: 400 },
  multirc: { train: 154, dev32: 167, val: 4848 },
  record: { train: 32, dev32: 32 },
  rte: { train: 32, dev32: 32, val: 277 },
  wic: { train: 32, dev32: 32, val: 638, unlabeled: 5428 },
  wsc: { train: 32, dev32: 32, val: 104, unlabeled: 554 },
};

test('every FewGLUE split loads with the expected size, fields, unique ids and valid labels', () => {
  for (const task of FEWGLUE_TASKS) {
    const info = TASKS[task];
    for (const [split, size] of Object.entries(SIZES[task])) {
      const xs = loadTask(FEWGLUE, task, split as 'train');
      assert.equal(xs.length, size, `${task} ${split}`);
      assert.equal(new Set(xs.map((x) => x.id)).size, size, `${task} ${split} ids unique`);
      for (const x of xs) {
        assert.deepEqual(Object.keys(x.fields).sort(), [...info.fields].sort(), `${task} ${x.id} fields`);
        for (const f of info.fields) assert.equal(typeof x.fields[f], 'string');
        if (split === 'unlabeled') assert.equal(x.label, undefined);
        else if (task === 'record') assert.ok(x.answers!.includes(x.label!));
        else assert.ok(info.labels.includes(x.label!), `${task} ${x.id} label ${x.label}`);
      }
    }
  }
});

test('FewGLUE few-shot sets hold 32 labeled examples per split (MultiRC: 32 questions)', () => {
  for (const task of FEWGLUE_TASKS) {
    for (const split of ['train', 'dev32'] as const) {
      const xs = loadTask(FEWGLUE, task, split);
      const units = task === 'multirc' ? new Set(xs.map((x) => x.group)).size : xs.length;
      assert.equal(units, 32, `${task} ${split}`);
    }
  }
  assert.deepEqual(counts(loadTask(FEWGLUE, 'wic', 'val').map((x) => x.label)), { True: 319, False: 319 });
  assert.deepEqual(counts(loadTask(FEWGLUE, 'cb', 'val').map((x) => x.label)), { contradiction: 28, entailment: 23, neutral: 5 });
  const wic = loadTask(FEWGLUE, 'wic', 'unlabeled');
  assert.deepEqual(wic.filter((x) => x.id.startsWith('unlabeled-1754')).map((x) => x.id), ['unlabeled-1754', 'unlabeled-1754-line2979']);
  assert.throws(() => loadTask(FEWGLUE, 'record', 'val'), /cannot read .*ReCoRD[/\\]val\.jsonl/);
});

test('RTE, CB, BoolQ, WiC: fields from real lines', () => {
  const rte = loadTask(FEWGLUE, 'rte', 'val')[0];
  assert.equal(rte.id, 'val-0');
  assert.equal(rte.fields.hypothesis, 'Christopher Reeve had an accident.');
  assert.equal(rte.fields.hypothesis_bare, 'Christopher Reeve had an accident');
  assert.match(rte.fields.premise, /^Dana Reeve, the widow/);
  assert.equal(rte.label, 'not_entailment');
  const boolq = loadTask(FEWGLUE, 'boolq', 'train')[0];
  assert.equal(boolq.fields.question, 'is ghost in the shell based on the anime');
  assert.equal(boolq.label, 'False');
  const wic = loadTask(FEWGLUE, 'wic', 'train')[0];
  assert.deepEqual(wic.fields, { word: 'feel', sentence1: 'You make me feel naked.', sentence2: 'She felt small and insignificant.' });
  assert.equal(wic.label, 'True');
  assert.equal(loadTask(FEWGLUE, 'cb', 'train')[0].label, 'entailment');
});

test('COPA: choices read mid-sentence, label indexes them; mirrorCopa swaps them', () => {
  const [first, second] = loadTask(FEWGLUE, 'copa', 'train');
  assert.equal(first.fields.question, 'cause');
  assert.equal(first.fields.premise_bare, 'The chandelier shattered on the floor');
  assert.deepEqual(first.choices, ['the chandelier dropped from the ceiling', "the chandelier's lights flickered on and off"]);
  assert.equal(first.label, '0');
  assert.equal(second.fields.question, 'effect');
  assert.equal(second.label, '1');
  // "I" stays capitalized
  const dev = loadTask(FEWGLUE, 'copa', 'dev32')[0];
  assert.equal(dev.fields.choice1_mid, 'I encouraged her to take deep breaths');

  const mirrored = mirrorCopa([first, second]);
  assert.equal(mirrored.length, 4);
  assert.equal(mirrored[2].id, `${first.id}-m`);
  assert.deepEqual(mirrored[2].choices, [...first.choices!].reverse());
  assert.equal(mirrored[2].fields.choice1, first.fields.choice2);
  assert.equal(mirrored[2].label, '1');
  assert.equal(mirrored[2].choices![Number(mirrored[2].label)], first.choices![Number(first.label)]);
});

test('MultiRC: one example per answer option, grouped by question', () => {
  const xs = loadTask(FEWGLUE, 'multirc', 'train');
  const first = xs.filter((x) => x.group === xs[0].group);
  assert.equal(xs[0].group, 'p6-q56');
  assert.equal(xs[0].id, 'train-p6-q56-a333');
  assert.deepEqual(first.map((x) => x.label), ['False', 'True', 'False', 'False', 'True', 'True', 'True']);
  assert.equal(first[1].fields.answer, "He objects to the stranger's presence and challenges him to a shootout");
  assert.equal(first[0].fields.question_bare, 'How does Jason react to the stranger who arrives with Susan');
  for (const x of first) assert.equal(x.fields.question, first[0].fields.question);
  // options of a question are contiguous and every group has one passage and one question
  const val = loadTask(FEWGLUE, 'multirc', 'val');
  const seen = new Map<string, TaskExample>();
  let previous = '';
  for (const x of val) {
    const g = x.group!;
    if (g !== previous) assert.ok(!seen.has(g), `group ${g} is split`);
    const head = seen.get(g) ?? x;
    assert.equal(x.fields.question, head.fields.question);
    assert.equal(x.fields.passage, head.fields.passage);
    seen.set(g, head);
    previous = g;
  }
  assert.equal(seen.size, 953);
  assert.deepEqual(counts(val.map((x) => x.label)), { False: 2773, True: 2075 });
});

test('ReCoRD: entity candidates, all gold answers, query split at @placeholder, highlights as bullets', () => {
  const [x] = loadTask(FEWGLUE, 'record', 'train');
  assert.equal(x.id, 'train-p3088-q4756');
  assert.deepEqual(x.answers, ['Olimpija Ljubljana']);
  assert.equal(x.label, 'Olimpija Ljubljana');
  assert.ok(x.choices!.includes('Olimpija Ljubljana'));
  assert.ok(x.choices!.includes('Diego Costa'));
  assert.equal(new Set(x.choices).size, x.choices!.length, 'candidates are unique');
  assert.ok(!x.fields.passage.includes('@highlight'));
  assert.ok(x.fields.passage.includes('\n- Nik Kapun put the hosts ahead in first half'));
  assert.match(x.fields.query_left, /the best thing was that$/);
  assert.equal(x.fields.query_right, 'made it difficult.');
  assert.ok(x.fields.query_blank.includes('the best thing was that _ made it difficult.'));
  for (const split of ['train', 'dev32'] as const) {
    for (const ex of loadTask(FEWGLUE, 'record', split)) for (const a of ex.answers!) assert.ok(ex.choices!.includes(a));
  }
  assert.deepEqual(counts(loadTask(FEWGLUE, 'record', 'dev32').map((ex) => String(ex.answers!.length))), { 1: 19, 2: 12, 3: 1 }, 'answers are distinct texts');
});

test('WSC: candidate span, pronoun marked at its (repaired) index', () => {
  const [x] = loadTask(FEWGLUE, 'wsc', 'train');
  assert.equal(x.fields.span1_text, 'Tina');
  assert.equal(x.fields.span2_text, 'it');
  assert.deepEqual(x.choices, ['Tina']);
  assert.equal(x.label, 'True');
  assert.match(x.fields.text_marked, /because she figured \*it\* was easier to pronounce\.$/);
  // train idx 137: the index points at `him,"`, whose punctuation stays outside the mark
  const pony = loadTask(FEWGLUE, 'wsc', 'train').find((e) => e.id === 'train-137')!;
  assert.ok(pony.fields.text_marked.includes('*him*,"'));
  for (const split of ['train', 'dev32', 'val', 'unlabeled'] as const) {
    for (const e of loadTask(FEWGLUE, 'wsc', split)) assert.equal(e.fields.text_marked.split(`*${e.fields.span2_text}*`).length, 2, e.id);
  }
  // FewGLUE's WSC train set holds positive examples only
  assert.deepEqual(counts(loadTask(FEWGLUE, 'wsc', 'train').map((e) => e.label)), { True: 32 });
});

function fixture(files: Record<string, string>): string {
  const dir = mkdtempSync(path.join(tmpdir(), 'fewglue-'));
  for (const [name, text] of Object.entries(files)) {
    mkdirSync(path.dirname(path.join(dir, name)), { recursive: true });
    writeFileSync(path.join(dir, name), text);
  }
  return dir;
}

test('malformed lines fail with the file, line number and field', () => {
  const good = '{"premise": "p", "hypothesis": "h", "label": "entailment", "idx": 0}';
  const dir = fixture({
    'RTE/train.jsonl': `${good}\n{"premise": "p", "hypothesis": "h", "label": "entailment", "idx": 1\n`,
    'RTE/dev32.jsonl': `${good}\n\n{"premise": "p", "label": "entailment", "idx": 2}\n`,
    'RTE/val.jsonl': `${good}\n{"premise": "p", "hypothesis": "h", "label": "maybe", "idx": 1}\n`,
    'RTE/unlabeled.jsonl': '{"premise": "p", "hypothesis": "h", "idx": 0}\n[1, 2]\n',
    'WSC/train.jsonl': '{"text": "A b c .", "target": {"span1_index": 0, "span1_text": "A", "span2_index": 2, "span2_text": "it"}, "label": true, "idx": 0}\n',
    'MultiRC/train.jsonl': '{"idx": 0, "passage": {"text": "t", "questions": [{"question": "q", "idx": 0, "answers": [{"text": "a", "idx": 0}]}]}}\n',
    'ReCoRD/train.jsonl': '{"idx": 0, "source": "s", "passage": {"text": "Abc", "entities": [{"start": 0, "end": 2}]}, "qas": [{"query": "no slot", "idx": 0, "answers": [{"start": 0, "end": 2, "text": "Abc"}]}]}\n',
    'COPA/train.jsonl': '{"premise": "p", "choice1": "a", "choice2": "b", "question": "why", "label": 0, "idx": 0}\n',
  });
  const file = (t: string, s: string) => path.join(dir, t, `${s}.jsonl`).replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  assert.throws(() => loadTask(dir, 'rte', 'train'), new RegExp(`^Error: ${file('RTE', 'train')}:2: invalid JSON`));
  assert.throws(() => loadTask(dir, 'rte', 'dev32'), new RegExp(`${file('RTE', 'dev32')}:3: field "hypothesis" is missing`));
  assert.throws(() => loadTask(dir, 'rte', 'val'), new RegExp(`${file('RTE', 'val')}:2: field "label" is "maybe", expected one of entailment, not_entailment`));
  assert.throws(() => loadTask(dir, 'rte', 'unlabeled'), new RegExp(`${file('RTE', 'unlabeled')}:2: expected a JSON object`));
  assert.throws(() => loadTask(dir, 'wsc', 'train'), /WSC[/\\]train\.jsonl:1: field "target\.span2_index" is 2 but word 2 is "c", not "it"/);
  assert.throws(() => loadTask(dir, 'multirc', 'train'), /MultiRC[/\\]train\.jsonl:1: field "passage\.questions\[0\]\.answers\[0\]\.label" is missing/);
  assert.throws(() => loadTask(dir, 'record', 'train'), /ReCoRD[/\\]train\.jsonl:1: field "qas\[0\]\.query" must contain @placeholder exactly once/);
  assert.throws(() => loadTask(dir, 'copa', 'train'), /COPA[/\\]train\.jsonl:1: field "question" is "why", expected cause or effect/);
  assert.throws(() => loadTask(dir, 'nope', 'train'), /unknown task "nope"/);
  for (const t of ['rte', 'wsc', 'multirc', 'record', 'copa']) {
    try { loadTask(dir, t, t === 'rte' ? 'val' : 'train'); } catch (e) { assert.ok(!(e as Error).message.includes('\n'), 'one-line message'); }
  }
});

test('SST-2: full splits, and a reproducible, balanced, disjoint few-shot train/dev from train.tsv', () => {
  assert.equal(loadSst2(SST2, 'test').length, 872);
  assert.deepEqual(counts(loadSst2(SST2, 'test').map((x) => x.label)), { positive: 444, negative: 428 });
  assert.equal(loadSst2(SST2, 'dev').length, 6735);
  const full = loadSst2(SST2, 'train');
  assert.equal(full.length, 60614);
  assert.deepEqual(full[0], { id: 'train-2', fields: { sentence: 'when are bears bears and' }, label: 'positive' });

  const opts = { fewShot: { n: 32, seed: 13 } };
  const train = loadSst2(SST2, 'train', opts);
  const dev = loadSst2(SST2, 'dev', opts);
  assert.equal(train.length, 32);
  assert.equal(dev.length, 32);
  assert.deepEqual(counts(train.map((x) => x.label)), { positive: 16, negative: 16 });
  assert.deepEqual(counts(dev.map((x) => x.label)), { positive: 16, negative: 16 });
  const trainIds = new Set(train.map((x) => x.id));
  assert.ok(dev.every((x) => !trainIds.has(x.id)), 'train and dev are disjoint');
  assert.ok(dev.every((x) => x.id.startsWith('train-')), 'few-shot dev comes from train.tsv');
  assert.deepEqual(loadSst2(SST2, 'train', opts), train, 'same seed, same sample');
  assert.deepEqual(loadSst2(SST2, 'dev', opts), dev);
  assert.notDeepEqual(loadSst2(SST2, 'train', { fewShot: { n: 32, seed: 14 } }).map((x) => x.id), train.map((x) => x.id));
  assert.equal(loadSst2(SST2, 'test', opts).length, 872, 'test stays the full test file');
  const plain = loadSst2(SST2, 'train', { fewShot: { seed: 13, stratified: false } });
  assert.equal(plain.length, 32);
  assert.deepEqual(loadSst2(SST2, 'train', { fewShot: { seed: 13, stratified: false } }), plain);
});

test('fewShotSplit: label quotas with a remainder, errors when a label runs short', () => {
  const pool: TaskExample[] = [];
  for (const [label, n] of [['a', 10], ['b', 10], ['c', 3]] as const) {
    for (let i = 0; i < n; i++) pool.push({ id: `${label}${i}`, fields: {}, label });
  }
  const { train, dev } = fewShotSplit(pool, { n: 4, seed: 1 });
  assert.deepEqual(counts(train.map((x) => x.label)), { a: 2, b: 1, c: 1 });
  assert.deepEqual(counts(dev.map((x) => x.label)), { a: 2, b: 1, c: 1 });
  assert.throws(() => fewShotSplit(pool, { n: 6, seed: 1 }), /needs 4 examples of label "c", the pool has 3/);
  assert.throws(() => fewShotSplit(pool, { n: 12, seed: 1, stratified: false }), /needs 24 examples, the pool has 23/);
});

test('SST-2 malformed files fail with file and line', () => {
  const dir = fixture({
    'train.tsv': 'text\tlabel\nfine\t1\n',
    'dev.tsv': 'sentence\tlabel\nfine\t1\nbad\t1\textra\n',
    'test.tsv': 'sentence\tlabel\nfine\t1\n\nbad\t2\n',
  });
  assert.throws(() => loadSst2(dir, 'train'), /train\.tsv:1: expected the header "sentence<TAB>label"/);
  assert.throws(() => loadSst2(dir, 'dev'), /dev\.tsv:3: expected 2 tab-separated columns, got 3/);
  assert.throws(() => loadSst2(dir, 'test'), /test\.tsv:4: label is "2", expected 0 or 1/);
});
