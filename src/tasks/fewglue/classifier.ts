import type { TaskName } from './tasks.js';

/**
 * The input of the classifier modes (fine-tuning and deep prompts with a linear head): the task's text fields,
 * separated by [SEP] for masked LMs, read by a linear head at [CLS] (masked LM) or the last real token (causal
 * LM). The trailing [MASK] is there because every template needs an answer slot; for a causal LM it marks the
 * position after the last token, so the state read is the last real token's.
 */
const INPUT_FIELDS: Partial<Record<TaskName, string[]>> = {
  sst2: ['sentence'],
  rte: ['premise', 'hypothesis'],
  cb: ['premise', 'hypothesis'],
  boolq: ['question', 'passage'],
  wic: ['word', 'sentence1', 'sentence2'],
  multirc: ['passage', 'question', 'answer'],
};

export function classifierFields(task: TaskName): string[] {
  const fields = INPUT_FIELDS[task];
  if (!fields) throw new Error(`no classifier input defined for ${task}`);
  return fields;
}

export function classifierTemplate(task: TaskName, kind: 'masked' | 'causal'): string {
  return classifierFields(task).map((f) => `{${f}}`).join(kind === 'masked' ? ' [SEP] ' : ' ') + ' [MASK]';
}
