/**
 * The few-shot NLU task registry: FewGLUE (SuperGLUE tasks with 32 training examples) and SST-2.
 * Everything the rest of ptune needs to know about a task without reading its data: where it lives, what its
 * examples carry, how its answers are framed and which metrics score it.
 */

export const FEWGLUE_TASKS = ['boolq', 'cb', 'copa', 'multirc', 'record', 'rte', 'wic', 'wsc'] as const;
export type FewGlueTask = (typeof FEWGLUE_TASKS)[number];
export type TaskName = FewGlueTask | 'sst2';
export const TASK_NAMES: readonly TaskName[] = [...FEWGLUE_TASKS, 'sst2'];

/**
 * label: the answer is one of a fixed set of labels, read through label words (verbalizer).
 * choice: the answer is one of `example.choices`, each scored as a (multi-token) answer text (COPA).
 * span: the answer is a span of the input text (WSC: the referent of the pronoun; ReCoRD: a passage entity).
 */
export type AnswerType = 'label' | 'choice' | 'span';
export type MetricName = 'acc' | 'f1-macro' | 'em' | 'f1a' | 'f1';
export type FewGlueSplit = 'train' | 'dev32' | 'val' | 'unlabeled';
export type Sst2Split = 'train' | 'dev' | 'test';

/** One normalized example of any task. */
export interface TaskExample {
  /** unique within a split, e.g. `val-12`, `train-p3-q56-a334` (MultiRC) */
  id: string;
  /** the text fields a pattern's `{field}` can name; see TaskInfo.fields */
  fields: Record<string, string>;
  /**
   * label tasks: the class label. COPA: index of the right choice ('0' | '1'). WSC: 'True' when choices[0] is
   * the pronoun's referent. ReCoRD: the first gold answer. Absent on unlabeled data.
   */
  label?: string;
  /** COPA: both alternatives as they read in the answer slot; WSC: [candidate span]; ReCoRD: passage entities */
  choices?: string[];
  /** ReCoRD: every gold answer (any of them counts as right) */
  answers?: string[];
  /** MultiRC: the question this answer option belongs to (EM needs all options of a question right) */
  group?: string;
}

export interface TaskInfo {
  name: TaskName;
  /** directory under the data root: `fewglue/<dir>` or `sst2` */
  dir: string;
  answerType: AnswerType;
  /** label tasks: the class labels; COPA: choice indices; WSC: 'True' | 'False'; ReCoRD: none (labels are entities) */
  labels: readonly string[];
  /** every field the loader puts in `example.fields` */
  fields: readonly string[];
  /** the metrics `evaluate` reports, the main one first */
  metrics: readonly MetricName[];
  splits: readonly string[];
}

const BOOL = ['True', 'False'] as const;
const FEWGLUE_SPLITS = ['train', 'dev32', 'val'] as const;

export const TASKS: Readonly<Record<TaskName, TaskInfo>> = {
  boolq: {
    name: 'boolq', dir: 'BoolQ', answerType: 'label', labels: BOOL,
    fields: ['passage', 'question'], metrics: ['acc'], splits: FEWGLUE_SPLITS,
  },
  cb: {
    name: 'cb', dir: 'CB', answerType: 'label', labels: ['entailment', 'contradiction', 'neutral'],
    fields: ['premise', 'hypothesis', 'hypothesis_bare'], metrics: ['acc', 'f1-macro'], splits: FEWGLUE_SPLITS,
  },
  copa: {
    name: 'copa', dir: 'COPA', answerType: 'choice', labels: ['0', '1'],
    fields: ['premise', 'premise_bare', 'choice1', 'choice2', 'choice1_mid', 'choice2_mid', 'question'],
    metrics: ['acc'], splits: [...FEWGLUE_SPLITS, 'unlabeled'],
  },
  multirc: {
    name: 'multirc', dir: 'MultiRC', answerType: 'label', labels: BOOL,
    fields: ['passage', 'question', 'question_bare', 'answer'], metrics: ['f1a', 'em'],
    splits: [...FEWGLUE_SPLITS, 'unlabeled'],
  },
  record: {
    name: 'record', dir: 'ReCoRD', answerType: 'span', labels: [],
    fields: ['passage', 'query', 'query_left', 'query_right', 'query_blank'], metrics: ['f1', 'em'],
    splits: ['train', 'dev32'],
  },
  rte: {
    name: 'rte', dir: 'RTE', answerType: 'label', labels: ['entailment', 'not_entailment'],
    fields: ['premise', 'hypothesis', 'hypothesis_bare'], metrics: ['acc'], splits: FEWGLUE_SPLITS,
  },
  wic: {
    name: 'wic', dir: 'WiC', answerType: 'label', labels: BOOL,
    fields: ['word', 'sentence1', 'sentence2'], metrics: ['acc'], splits: [...FEWGLUE_SPLITS, 'unlabeled'],
  },
  wsc: {
    name: 'wsc', dir: 'WSC', answerType: 'span', labels: BOOL,
    fields: ['text', 'text_marked', 'span1_text', 'span2_text'], metrics: ['acc'],
    splits: [...FEWGLUE_SPLITS, 'unlabeled'],
  },
  sst2: {
    name: 'sst2', dir: 'sst2', answerType: 'label', labels: ['positive', 'negative'],
    fields: ['sentence'], metrics: ['acc'], splits: ['train', 'dev', 'test'],
  },
};

export function taskInfo(name: string): TaskInfo {
  const info = (TASKS as Record<string, TaskInfo | undefined>)[name.toLowerCase()];
  if (!info) throw new Error(`unknown task "${name}" (known: ${TASK_NAMES.join(', ')})`);
  return info;
}
