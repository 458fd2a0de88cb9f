/**
 * The P-tuning computation of a session, evaluated by the oracle: the same functions the programs are built
 * from (`lm.fns`, `encoder.encode`, `spliceOn`, `head.scoresOn`, `crossEntropyOn`) run eagerly on tfjs
 * tensors over the unpadded batch, with gradients from tfjs's tape.
 */
import type { HostTensor } from '../../src/engine/tensor.js';
import { rowsAt } from '../../src/models/common.js';
import { crossEntropyOn } from '../../src/prompt/heads.js';
import { batchFeeds, spliceOn } from '../../src/prompt/ptuning.js';
import { collate } from '../../src/prompt/render.js';
import type { Item, PTuningSession } from '../../src/train/session.js';
import { oracleWeights, tf, tfOps } from './index.js';

export interface OracleStep {
  loss: number;
  /** d loss / d parameter, by the session's checkpoint names (`trainedParams()`) */
  grads: Map<string, Float32Array>;
}

function tensorOf(h: HostTensor, dtype: 'int32' | 'float32'): tf.Tensor {
  return tf.tensor(h.data as Float32Array, h.shape, dtype);
}

/**
 * The oracle's per-class scores of `items` [B, K] (`training`: with the dropout `masks`), from the session's
 * current parameters; `withLoss` also differentiates the mean cross-entropy against the items' targets with
 * respect to every trained parameter.
 */
function evaluate(s: PTuningSession, items: readonly Item[], opts: { masks?: Float32Array[] | null; withLoss: boolean }): { scores: number[][]; step?: OracleStep } {
  const lm = s.lm;
  const batch = collate(items.map((i) => i.ex), lm.info);
  const b = batch.ids.length;
  const feeds = batchFeeds(batch, b, batch.ids[0]!.length, lm.info);
  const trained = s.trainedParams();
  const tuneLm = [...trained.keys()].some((k) => k.startsWith('lm.'));
  const lmW = oracleWeights(lm, tuneLm);
  const encVars = new Map([...(s.encoder?.params ?? [])].map(([k, p]) => [k, tf.variable(tf.tensor(p.data, p.shape, 'float32'), true, `oracle/enc/${k}/${Math.random()}`)]));
  const masks = opts.masks?.map((m) => tf.tensor(m, s.encoder!.dropoutShape(), 'float32'));
  const o = tfOps;
  const scoresOf = () => {
    let embeds = lm.fns.embed(o, lmW.w, tensorOf(feeds.ids!, 'int32'));
    if (s.encoder) {
      const prompts = s.encoder.encode(o, (name) => encVars.get(name)!, masks);
      embeds = spliceOn(o, embeds, prompts, tensorOf(feeds.pseudo_index!, 'int32'), tensorOf(feeds.pseudo_mask!, 'float32'));
    }
    const { hidden } = lm.fns.hidden(o, lmW.w, {
      embeds,
      attentionMask: tensorOf(feeds.attention_mask!, 'int32'),
      ...(lm.info.tokenTypes && { tokenTypeIds: tensorOf(feeds.token_type_ids!, 'int32') }),
    });
    const cand = s.head.candidates ? o.constInt(s.head.candidates, [s.head.candidates.length]) : undefined;
    const logits = lm.fns.logits(o, lmW.w, rowsAt(o, hidden, tensorOf(feeds.positions!, 'int32')), cand);
    return s.head.scoresOn(o, logits);
  };
  try {
    const scores = tf.tidy(() => scoresOf().arraySync() as number[][]);
    if (!opts.withLoss) return { scores };
    const targets = tf.tensor1d(items.map((i) => i.target), 'int32');
    const byVar = new Map<tf.Variable, string>();
    for (const [name, p] of trained) {
      const v = name.startsWith('lm.') ? lmW.vars.get(name.slice(3)) : encVars.get(name.slice('encoder.'.length));
      if (!v) throw new Error(`oracle: no variable for ${name} (${p.name})`);
      byVar.set(v, name);
    }
    const { value, grads } = tf.variableGrads(() => crossEntropyOn(o, scoresOf(), targets) as tf.Scalar, [...byVar.keys()]);
    const out = new Map<string, Float32Array>();
    for (const [v, name] of byVar) out.set(name, Float32Array.from(grads[v.name]!.dataSync() as Float32Array));
    const loss = value.dataSync()[0]!;
    tf.dispose([value, targets, ...Object.values(grads)]);
    return { scores, step: { loss, grads: out } };
  } finally {
    lmW.dispose();
    encVars.forEach((v) => v.dispose());
    masks?.forEach((m) => m.dispose());
  }
}

/** Loss and gradients of a training step on `items` (with `masks` when the encoder has dropout). */
export function oracleStep(s: PTuningSession, items: readonly Item[], masks?: Float32Array[] | null): OracleStep {
  return evaluate(s, items, { masks, withLoss: true }).step!;
}

/** Inference scores [B, K] of `items`. */
export function oracleScores(s: PTuningSession, items: readonly Item[]): number[][] {
  return evaluate(s, items, { withLoss: false }).scores;
}

/** float64 log-softmax of one row of scores. */
export function logSoftmaxRow(row: readonly number[]): number[] {
  const m = Math.max(...row);
  let z = 0;
  for (const v of row) z += Math.exp(v - m);
  const lz = m + Math.log(z);
  return row.map((v) => v - lz);
}

/** The `k` best classes of each row by log-probability, among `allowed` (all when null), best first. */
export function oracleTopK(scores: number[][], k: number, allowed: readonly number[] | null): { indices: number[][]; values: number[][] } {
  const indices: number[][] = [];
  const values: number[][] = [];
  for (const row of scores) {
    const logp = logSoftmaxRow(row);
    const pool = allowed ?? [...logp.keys()];
    const best = [...pool].sort((a, b) => logp[b]! - logp[a]! || a - b).slice(0, k);
    indices.push(best);
    values.push(best.map((i) => logp[i]!));
  }
  return { indices, values };
}
