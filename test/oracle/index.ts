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
import type { QuantizedTensors } from '../../src/engine/ops.js';
import { quantizedShapes, type QuantBits } from '../../src/engine/quant.js';

export { tf, initOracle, tfOps };

/** A quantized [n, k] matrix's bytes and scales as the oracle's tensors (bytes as int32; signed ones as int8 values). */
export function tfQuantized(
  q: { bits: QuantBits; blockSize: number; n: number; k: number; signed?: boolean },
  data: Uint8Array,
  scales: Float32Array,
  zeroPoints?: Uint8Array,
): QuantizedTensors<tf.Tensor> {
  const shape = quantizedShapes(q);
  return {
    n: q.n,
    k: q.k,
    bits: q.bits,
    blockSize: q.blockSize,
    data: tf.tensor(Int32Array.from(q.signed ? new Int8Array(data.buffer, data.byteOffset, data.length) : data), shape.data, 'int32'),
    ...(q.signed && { signed: true }),
    scales: tf.tensor(scales, shape.scales, 'float32'),
    ...(zeroPoints && { zeroPoints: tf.tensor(Int32Array.from(zeroPoints), shape.zeroPoints, 'int32') }),
  };
}

/** A stored quantized weight's tensors, read back from its store, as the oracle's tensors. */
export function oracleQuantized(lm: LanguageModel, name: string): QuantizedTensors<tf.Tensor> {
  const store = lm.quantized;
  const e = store?.entries.get(name);
  if (!store || !e) throw new Error(`oracle: ${name} is not quantized`);
  const q = e.stored;
  const raw = store.read(q.scales);
  return tfQuantized(q, store.read(q.data), new Float32Array(raw.buffer, 0, raw.length / 4), q.zeroPoints && store.read(q.zeroPoints));
}

/**
 * The model's weights as tfjs tensors (variables when `trainable`, so the tape can differentiate them); a
 * quantized model's linear weights as the oracle's `quantized` values (dequantized, then the float matmul).
 */
export function oracleWeights(lm: LanguageModel, trainable = false): { w: WeightOf<tf.Tensor>; vars: Map<string, tf.Variable>; dispose(): void } {
  const vars = new Map<string, tf.Variable>();
  for (const [name, p] of lm.params) vars.set(name, tf.variable(tf.tensor(p.data, p.shape, 'float32'), trainable, `oracle/${name}/${Math.random()}`));
  const quantized = new Map<string, tf.Tensor>();
  for (const [name, e] of lm.quantized?.entries ?? []) {
    const q = oracleQuantized(lm, name);
    quantized.set(name, tfOps.quantized(q, e.layout));
    for (const t of [q.data, q.scales, q.zeroPoints]) t?.dispose();
  }
  return {
    w: (name) => {
      const v = vars.get(name) ?? quantized.get(name);
      if (!v) throw new Error(`oracle: no weight ${name}`);
      return v;
    },
    vars,
    dispose: () => {
      vars.forEach((v) => v.dispose());
      quantized.forEach((v) => v.dispose());
    },
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
