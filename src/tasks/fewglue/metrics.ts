import { taskInfo, type TaskExample, type TaskName } from './tasks.js';

function checkLengths(what: string, a: readonly unknown[], b: readonly unknown[]): void {
  if (a.length !== b.length) throw new Error(`${what}: ${a.length} predictions for ${b.length} gold labels`);
  if (a.length === 0) throw new Error(`${what}: no examples`);
}

export function accuracy(preds: readonly string[], golds: readonly string[]): number {
  checkLengths('accuracy', preds, golds);
  return preds.filter((p, i) => p === golds[i]).length / preds.length;
}

/** F1 of one class; 0 when it has no true positives (including when it never occurs at all). */
export function classF1(preds: readonly string[], golds: readonly string[], positive: string): number {
  checkLengths('F1', preds, golds);
  let tp = 0, fp = 0, fn = 0;
  preds.forEach((p, i) => {
    if (p === positive && golds[i] === positive) tp++;
    else if (p === positive) fp++;
    else if (golds[i] === positive) fn++;
  });
  return tp === 0 ? 0 : (2 * tp) / (2 * tp + fp + fn);
}

/**
 * Unweighted mean of the per-class F1s (CB's second metric). Classes: `labels` if given, else every label
 * that occurs among golds or predictions (scikit-learn's default, which SuperGLUE's scorer uses).
 */
export function macroF1(preds: readonly string[], golds: readonly string[], labels?: readonly string[]): number {
  checkLengths('macro-F1', preds, golds);
  const classes = labels ?? [...new Set([...golds, ...preds])];
  return classes.reduce((s, c) => s + classF1(preds, golds, c), 0) / classes.length;
}

/**
 * MultiRC: predictions and golds per answer option ('True' / 'False'), `groups` the question of each option.
 * em: share of questions whose options are all right; f1a: binary F1 of 'True' over all options.
 */
export function multircScores(preds: readonly string[], golds: readonly string[], groups: readonly string[]): { em: number; f1a: number } {
  checkLengths('MultiRC', preds, golds);
  if (groups.length !== golds.length) throw new Error(`MultiRC: ${groups.length} group ids for ${golds.length} answer options`);
  const allRight = new Map<string, boolean>();
  groups.forEach((g, i) => allRight.set(g, (allRight.get(g) ?? true) && preds[i] === golds[i]));
  const em = [...allRight.values()].filter(Boolean).length / allRight.size;
  return { em, f1a: classF1(preds, golds, 'True') };
}

const PUNCT = /[!"#$%&'()*+,\-./:;<=>?@[\\\]^_`{|}~]/g;

/** SQuAD's answer normalization: lowercase, drop punctuation and the articles a/an/the, collapse whitespace. */
export function normalizeAnswer(s: string): string {
  return s.toLowerCase().replace(PUNCT, '').replace(/\b(a|an|the)\b/g, ' ').split(/\s+/).filter(Boolean).join(' ');
}

export function exactMatch(pred: string, gold: string): number {
  return normalizeAnswer(pred) === normalizeAnswer(gold) ? 1 : 0;
}

/** SQuAD token-overlap F1 between normalized answers. */
export function tokenF1(pred: string, gold: string): number {
  const p = normalizeAnswer(pred).split(' ').filter(Boolean);
  const g = normalizeAnswer(gold).split(' ').filter(Boolean);
  const counts = new Map<string, number>();
  for (const t of g) counts.set(t, (counts.get(t) ?? 0) + 1);
  let same = 0;
  for (const t of p) {
    const c = counts.get(t) ?? 0;
    if (c > 0) { same++; counts.set(t, c - 1); }
  }
  if (same === 0) return 0;
  const precision = same / p.length, recall = same / g.length;
  return (2 * precision * recall) / (precision + recall);
}

/** ReCoRD: per query the best EM / F1 over its gold answers, averaged over queries. */
export function recordScores(preds: readonly string[], goldAnswers: readonly (readonly string[])[]): { em: number; f1: number } {
  checkLengths('ReCoRD', preds, goldAnswers);
  let em = 0, f1 = 0;
  preds.forEach((p, i) => {
    const golds = goldAnswers[i];
    if (golds.length === 0) throw new Error(`ReCoRD: query ${i} has no gold answers`);
    em += Math.max(...golds.map((g) => exactMatch(p, g)));
    f1 += Math.max(...golds.map((g) => tokenF1(p, g)));
  });
  return { em: em / preds.length, f1: f1 / preds.length };
}

/**
 * WSC as generation: does the text the model filled in name the candidate? After lowercasing and keeping
 * letter runs as words, either word list must be contained in the other (the T5 / PET rule), so
 * "the demonstrators" matches "demonstrators". Empty output matches nothing.
 */
export function wscSpanMatch(predicted: string, candidate: string): boolean {
  const toWords = (s: string) => s.toLowerCase().split(/[^a-z]+/).filter(Boolean);
  const p = toWords(predicted), c = toWords(candidate);
  if (p.length === 0) return false;
  return p.every((w) => c.includes(w)) || c.every((w) => p.includes(w));
}

/**
 * Scores predictions with the task's metrics (TaskInfo.metrics). One prediction per example: the label for
 * label tasks and WSC ('True' / 'False'), the choice index for COPA ('0' / '1'), the chosen entity for ReCoRD.
 */
export function evaluate(task: TaskName, examples: readonly TaskExample[], preds: readonly string[]): Record<string, number> {
  const info = taskInfo(task);
  checkLengths(`${info.name} evaluation`, preds, examples);
  if (info.name === 'record') {
    return recordScores(preds, examples.map((ex) => ex.answers ?? fail(ex, 'answers')));
  }
  const golds = examples.map((ex) => ex.label ?? fail(ex, 'label'));
  if (info.name === 'multirc') return multircScores(preds, golds, examples.map((ex) => ex.group ?? fail(ex, 'group')));
  const scores: Record<string, number> = { acc: accuracy(preds, golds) };
  if (info.metrics.includes('f1-macro')) scores['f1-macro'] = macroF1(preds, golds);
  return scores;
}

function fail(ex: TaskExample, what: string): never {
  throw new Error(`example ${ex.id} has no ${what}`);
}

/**
 * The majority-class baseline: the most frequent training label (ties: the earlier label in the task's
 * label list), predicted for every evaluation example and scored with `evaluate`. Not defined for ReCoRD,
 * whose answers are per-query entities (returns null).
 * Note WSC: FewGLUE's WSC train set holds only positive examples, so this predicts 'True' everywhere.
 */
export function majorityBaseline(task: TaskName, train: readonly TaskExample[], evalSet: readonly TaskExample[]): { label: string; scores: Record<string, number> } | null {
  const info = taskInfo(task);
  if (info.name === 'record') return null;
  const counts = new Map<string, number>();
  for (const ex of train) if (ex.label !== undefined) counts.set(ex.label, (counts.get(ex.label) ?? 0) + 1);
  if (counts.size === 0) throw new Error(`majority baseline for ${info.name}: no labeled training examples`);
  const rank = (l: string) => (info.labels.includes(l) ? info.labels.indexOf(l) : info.labels.length);
  const label = [...counts.entries()].sort((a, b) => b[1] - a[1] || rank(a[0]) - rank(b[0]))[0][0];
  return { label, scores: evaluate(info.name, evalSet, evalSet.map(() => label)) };
}
