import path from 'node:path';
import { readJsonl, type Row } from './records.js';
import { lowercaseFirst, stripFinalPunct, words } from './text.js';
import { taskInfo, type FewGlueSplit, type FewGlueTask, type TaskExample, type TaskInfo } from './tasks.js';

type Converter = (row: Row, split: string, info: TaskInfo) => TaskExample[];

/**
 * Reads `<dataDir>/<TaskDir>/<split>.jsonl` (dataDir is the FewGLUE root, e.g. ../shared/data/fewglue) into
 * normalized examples. Every example of a labeled split (train, dev32, val) must carry a label. Ids are
 * `<split>-<idx>` and unique within the split (an idx seen before gets `-line<N>`).
 * MultiRC yields one example per answer option; ReCoRD one per query. Nothing is filtered or augmented
 * (see mirrorCopa for COPA's mirrored training examples).
 */
export function loadTask(dataDir: string, task: FewGlueTask | string, split: FewGlueSplit | 'test'): TaskExample[] {
  const info = taskInfo(task);
  if (info.name === 'sst2') throw new Error('sst2 is read with loadSst2(dataDir, split, opts)');
  const file = path.join(dataDir, info.dir, `${split}.jsonl`);
  const seen = new Set<string>();
  return readJsonl(file).flatMap((row) =>
    CONVERTERS[info.name as FewGlueTask](row, split, info).map((ex) => {
      // keep ids unique when a file repeats an idx (WiC's unlabeled set has one line twice)
      const id = seen.has(ex.id) ? `${ex.id}-line${row.line}` : ex.id;
      seen.add(id);
      return id === ex.id ? ex : { ...ex, id };
    }),
  );
}

function labelOf(row: Row, split: string, read: () => string): string | undefined {
  if (row.has('label')) return read();
  if (split === 'unlabeled' || split === 'test') return undefined;
  return row.fail('label', 'is missing');
}

function boolLabel(row: Row, split: string): string | undefined {
  return labelOf(row, split, () => (row.bool('label') ? 'True' : 'False'));
}

function namedLabel(row: Row, split: string, info: TaskInfo): string | undefined {
  return labelOf(row, split, () => {
    const label = row.str('label');
    if (!info.labels.includes(label)) row.fail('label', `is "${label}", expected one of ${info.labels.join(', ')}`);
    return label;
  });
}

function withLabel(example: TaskExample, label: string | undefined): TaskExample {
  return label === undefined ? example : { ...example, label };
}

const premiseHypothesis: Converter = (row, split, info) => {
  const hypothesis = row.str('hypothesis');
  const fields = { premise: row.str('premise'), hypothesis, hypothesis_bare: stripFinalPunct(hypothesis) };
  return [withLabel({ id: `${split}-${row.id()}`, fields }, namedLabel(row, split, info))];
};

const boolq: Converter = (row, split) => {
  const fields = { passage: row.str('passage'), question: row.str('question') };
  return [withLabel({ id: `${split}-${row.id()}`, fields }, boolLabel(row, split))];
};

const wic: Converter = (row, split) => {
  const fields = { word: row.str('word'), sentence1: row.str('sentence1'), sentence2: row.str('sentence2') };
  return [withLabel({ id: `${split}-${row.id()}`, fields }, boolLabel(row, split))];
};

const copa: Converter = (row, split) => {
  const question = row.str('question');
  if (question !== 'cause' && question !== 'effect') row.fail('question', `is "${question}", expected cause or effect`);
  const premise = row.str('premise');
  const [choice1, choice2] = [row.str('choice1'), row.str('choice2')];
  const [choice1_mid, choice2_mid] = [choice1, choice2].map((c) => lowercaseFirst(stripFinalPunct(c)));
  const fields = { premise, premise_bare: stripFinalPunct(premise), choice1, choice2, choice1_mid, choice2_mid, question };
  const label = labelOf(row, split, () => {
    const l = row.int('label');
    if (l !== 0 && l !== 1) row.fail('label', `is ${l}, expected 0 or 1`);
    return String(l);
  });
  return [withLabel({ id: `${split}-${row.id()}`, fields, choices: [choice1_mid, choice2_mid] }, label)];
};

const wsc: Converter = (row, split) => {
  const target = row.obj('target');
  const text = row.str('text');
  const span1 = target.str('span1_text');
  const span2 = target.str('span2_text');
  const fields = { text, text_marked: markPronoun(text, span2, target.int('span2_index'), target), span1_text: span1, span2_text: span2 };
  return [withLabel({ id: `${split}-${row.id()}`, fields, choices: [span1] }, boolLabel(row, split))];
};

/**
 * Wraps the pronoun in asterisks at its word index. Some SuperGLUE indices are off by one, and some pronouns
 * carry punctuation (`him,"`); both are repaired, anything else is an error.
 */
function markPronoun(text: string, pronoun: string, index: number, target: Row): string {
  const ws = words(text);
  let i = index;
  if (ws[i] !== pronoun) i = [index - 1, index + 1].find((j) => ws[j] === pronoun) ?? index;
  if (ws[i] === undefined || !ws[i].startsWith(pronoun)) {
    return target.fail('span2_index', `is ${index} but word ${index} is "${ws[index] ?? ''}", not "${pronoun}"`);
  }
  ws[i] = `*${pronoun}*${ws[i].slice(pronoun.length)}`;
  return ws.join(' ');
}

const multirc: Converter = (row, split) => {
  const p = row.id();
  const passage = row.obj('passage');
  const text = passage.str('text');
  return passage.rows('questions').flatMap((q) => {
    const question = q.str('question');
    const group = `p${p}-q${q.id()}`;
    return q.rows('answers').map((a) => {
      const fields = { passage: text, question, question_bare: stripFinalPunct(question), answer: a.str('text') };
      const label = labelOf(a, split, () => {
        const l = a.int('label');
        if (l !== 0 && l !== 1) a.fail('label', `is ${l}, expected 0 or 1`);
        return l === 1 ? 'True' : 'False';
      });
      return withLabel({ id: `${split}-${group}-a${a.id()}`, fields, group }, label);
    });
  });
};

const PLACEHOLDER = '@placeholder';

const record: Converter = (row, split) => {
  const p = row.id();
  const passage = row.obj('passage');
  const text = passage.str('text');
  const entities: string[] = [];
  for (const e of passage.rows('entities')) {
    const [start, end] = [e.int('start'), e.int('end')];
    if (start < 0 || end < start || end >= text.length) e.fail('end', `${start}..${end} is outside the passage`);
    const entity = text.slice(start, end + 1); // ReCoRD entity offsets are inclusive
    if (!entities.includes(entity)) entities.push(entity);
  }
  // highlights become a bulleted summary (as in the GPT-3 paper's ReCoRD prompt)
  const shown = text.replace(/@highlight\n/g, '- ');
  return row.rows('qas').map((qa) => {
    const query = qa.str('query');
    const at = query.indexOf(PLACEHOLDER);
    if (at < 0 || query.indexOf(PLACEHOLDER, at + 1) >= 0) qa.fail('query', `must contain ${PLACEHOLDER} exactly once`);
    const fields = {
      passage: shown,
      query,
      query_left: query.slice(0, at).trim(),
      query_right: query.slice(at + PLACEHOLDER.length).trim(),
      query_blank: query.replace(PLACEHOLDER, '_'),
    };
    const answers = qa.has('answers') ? [...new Set(qa.rows('answers').map((a) => a.str('text')))] : [];
    if (answers.length === 0 && split !== 'unlabeled' && split !== 'test') qa.fail('answers', 'is missing or empty');
    const example: TaskExample = { id: `${split}-p${p}-q${qa.id()}`, fields, choices: entities };
    return answers.length ? { ...example, label: answers[0], answers } : example;
  });
};

const CONVERTERS: Record<FewGlueTask, Converter> = {
  boolq, cb: premiseHypothesis, copa, multirc, record, rte: premiseHypothesis, wic, wsc,
};

/**
 * COPA's training augmentation (PET, P-tuning): each example again with its two choices swapped.
 * Returns the originals followed by the mirrors (ids suffixed `-m`).
 */
export function mirrorCopa(examples: readonly TaskExample[]): TaskExample[] {
  const mirrors = examples.map((ex) => {
    const f = ex.fields;
    const fields = { ...f, choice1: f.choice2, choice2: f.choice1, choice1_mid: f.choice2_mid, choice2_mid: f.choice1_mid };
    const mirror: TaskExample = { id: `${ex.id}-m`, fields, choices: [f.choice2_mid, f.choice1_mid] };
    return ex.label === undefined ? mirror : { ...mirror, label: ex.label === '0' ? '1' : '0' };
  });
  return [...examples, ...mirrors];
}
