/**
 * The test oracle: the same model and prompt functions (written against Ops<T>) evaluated eagerly on tfjs
 * tensors, with gradients from tfjs's tape, so the ONNX Runtime programs can be checked against an
 * independent execution of the same code.
 */
import type { LanguageModel } from '../../src/models/model.js';
import type { WeightOf } from '../../src/models/lm.js';
import type { TokenBatch } from '../../src/models/forward.js';
import { tf, initOracle } from './backend.js';
import { tfOps } from './tfjs-ops.js';

export { tf, initOracle, tfOps };

/** The model's weights as tfjs tensors (variables when `trainable`, so the tape can differentiate them). */
export function oracleWeights(lm: LanguageModel, trainable = false): { w: WeightOf<tf.Tensor>; vars: Map<string, tf.Variable>; dispose(): void } {
  const vars = new Map<string, tf.Variable>();
  for (const [name, p] of lm.params) vars.set(name, tf.variable(tf.tensor(p.data, p.shape, 'float32'), trainable, `oracle/${name}/${Math.random()}`));
  return {
    w: (name) => {
      const v = vars.get(name);
      if (!v) throw new Error(`oracle: no weight ${name}`);
      return v;
    },
    vars,
    dispose: () => vars.forEach((v) => v.dispose()),
  };
}

export function int2d(rows: number[][]): tf.Tensor {
  return tf.tensor2d(rows.flat(), [rows.length, rows[0]!.length], 'int32');
}

/** Final hidden states of a token batch, computed by the oracle. */
export function oracleHidden(lm: LanguageModel, w: WeightOf<tf.Tensor>, batch: TokenBatch, embeds?: tf.Tensor): tf.Tensor {
  const o = tfOps;
  const ids = int2d(batch.ids);
  return lm.fns.hidden(o, w, {
    embeds: embeds ?? lm.fns.embed(o, w, ids),
    attentionMask: int2d(batch.attentionMask ?? batch.ids.map((r) => r.map(() => 1))),
    ...(batch.tokenTypeIds && { tokenTypeIds: int2d(batch.tokenTypeIds) }),
    ...(batch.positionIds && { positionIds: int2d(batch.positionIds) }),
  }).hidden;
}

export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`maxAbsDiff: lengths ${a.length} and ${b.length}`);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}
