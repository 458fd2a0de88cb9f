import type { Program } from '../engine/program.js';
import { rowsAt } from '../models/common.js';
import type { LanguageModel } from '../models/model.js';
import { topK } from '../prompt/programs.js';
import { spliceOn } from '../prompt/ptuning.js';

/**
 * What a mixed-task forward returns at each row's answer position:
 * - `candidates` (every row is a label task): `logits` [rows, C] over the fed `candidates` [C] only (the LM
 *   head projected onto the label words' tokens);
 * - otherwise the logits over the vocabulary stay inside the program, which returns `top_values` /
 *   `top_indices` [rows, k] (the k best log-probabilities over the vocabulary, for open-vocabulary answers),
 *   `candidate_logits` [rows, C] at the fed `candidates` when label tasks are in the batch (C > 0), and with
 *   `full` the whole `logits` [rows, V] (answer tasks restricted to an answer vocabulary).
 */
export type MixedOutputs = { kind: 'candidates'; candidates: number } | { kind: 'vocabulary'; k: number; candidates: number; full: boolean };

/**
 * One forward over rows of different tasks: every task's frozen prompt rows sit in one `prompt_table` input
 * [tableRows, E] (the union of the tasks' tables), and each pseudo position's `pseudo_index` points into it, so
 * a row takes the prompt of its own task. The tasks' heads are applied to what it returns (see MixedOutputs).
 *
 * Keyed by shape only (batch rows, sequence length, table rows, outputs), so every mix of tasks of a model
 * shares the compiled sessions.
 */
export function mixedLogitsProgram(lm: LanguageModel, rows: number, sp: number, tableRows: number, out: MixedOutputs): Program {
  const width = lm.info.embeddingSize ?? lm.info.hiddenSize;
  const what = out.kind === 'candidates' ? `candidates ${out.candidates}` : `top ${out.k} candidates ${out.candidates}${out.full ? ' full' : ''}`;
  return {
    key: `mixed ${rows}x${sp} table ${tableRows} ${what}`,
    build: (b) => {
      const { o } = b;
      const w = lm.weights(b);
      const ints = (name: string, shape: number[]) => b.input(name, shape, 'int32');
      const embeds = spliceOn(
        o,
        lm.fns.embed(o, w, ints('ids', [rows, sp])),
        b.input('prompt_table', [tableRows, width]),
        ints('pseudo_index', [rows, sp]),
        b.input('pseudo_mask', [rows, sp, 1]),
      );
      const positions = ints('positions', [rows]);
      const h = lm.fns.hidden(o, w, {
        embeds,
        attentionMask: ints('attention_mask', [rows, sp]),
        ...(lm.info.tokenTypes && { tokenTypeIds: ints('token_type_ids', [rows, sp]) }),
        at: positions,
      });
      const answerRows = h.rows ?? rowsAt(o, h.hidden, positions);
      if (out.kind === 'candidates') return { outputs: { logits: lm.fns.logits(o, w, answerRows, ints('candidates', [out.candidates])) } };
      const logits = lm.fns.logits(o, w, answerRows);
      const outputs = topK(b, logits, out.k, false);
      if (out.candidates > 0) outputs.candidate_logits = o.gather(logits, ints('candidates', [out.candidates]), 1);
      if (out.full) outputs.logits = logits;
      return { outputs };
    },
  };
}
