import type { Program } from '../engine/program.js';
import { rowsAt } from '../models/common.js';
import type { LanguageModel } from '../models/model.js';
import { spliceOn } from '../prompt/ptuning.js';

/**
 * One forward over rows of different tasks: every task's frozen prompt rows sit in one `prompt_table` input
 * [tableRows, E] (the union of the tasks' tables), and each pseudo position's `pseudo_index` points into it, so
 * a row takes the prompt of its own task. Returns the logits at each row's answer position — [rows, V], or
 * [rows, C] over the fed `candidates` [C] (a batch of label tasks only needs their label words' tokens); the
 * tasks' heads are applied to them afterwards.
 *
 * Keyed by shape only (batch rows, sequence length, table rows, candidate count), so every mix of tasks of a
 * model shares the compiled sessions.
 */
export function mixedLogitsProgram(lm: LanguageModel, rows: number, sp: number, tableRows: number, candidates: number | null): Program {
  const width = lm.info.embeddingSize ?? lm.info.hiddenSize;
  return {
    key: `mixed ${rows}x${sp} table ${tableRows} candidates ${candidates ?? 'all'}`,
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
      const out = lm.fns.hidden(o, w, {
        embeds,
        attentionMask: ints('attention_mask', [rows, sp]),
        ...(lm.info.tokenTypes && { tokenTypeIds: ints('token_type_ids', [rows, sp]) }),
        at: positions,
      });
      const cand = candidates === null ? undefined : ints('candidates', [candidates]);
      return { outputs: { logits: lm.fns.logits(o, w, out.rows ?? rowsAt(o, out.hidden, positions), cand) } };
    },
  };
}
