import type { LstmWeights } from '../ops.js';
import type { GraphNode, Sym } from './graph.js';
import type { OnnxOps } from './ops.js';

/**
 * A bidirectional LSTM layer as one ONNX LSTM node, and that node's gradient.
 *
 * Unrolled into elementwise nodes, an LSTM over nine pseudo tokens made some 900 of the 1,500 nodes of a
 * bert-mini P-tuning step: the node runs the whole recurrence, and its gradient keeps only what must be
 * sequential (seven small nodes a time step) and computes the rest for all time steps at once.
 */

/** torch's gate order i, f, g, o to ONNX's i, o, f, c: for each of `blocks` blocks of 4h rows, the source rows */
function gateRows(blocks: number, h: number): number[] {
  const from = [0, 3, 1, 2];
  const rows: number[] = [];
  for (let b = 0; b < blocks; b++) for (const g of from) for (let u = 0; u < h; u++) rows.push((b * 4 + g) * h + u);
  return rows;
}

/** x [n, in] → [n, 2h]: torch.nn.LSTM's bidirectional layer (batch 1, zero initial states) as ONNX's LSTM. */
export function lstmLayer(o: OnnxOps, x: Sym, fwd: LstmWeights<Sym>, bwd: LstmWeights<Sym>): Sym {
  const [n, width] = x.shape as [number, number];
  const h = fwd.whh.shape[1]!;
  const stacked = (a: Sym, b: Sym, cols: number) => o.reshape(o.gather(o.concat([a, b], 0), o.constInt(gateRows(2, h), [8 * h])), [2, 4 * h, cols]);
  const w = stacked(fwd.wih, bwd.wih, width);
  const r = stacked(fwd.whh, bwd.whh, h);
  // B: per direction the input biases, then the recurrent ones
  const b = o.reshape(o.gather(o.concat([fwd.bih, fwd.bhh, bwd.bih, bwd.bhh], 0), o.constInt(gateRows(4, h), [16 * h])), [2, 8 * h]);
  const attrs = { direction: 'bidirectional', hidden_size: h };
  const y = o.graph.op1('LSTM', [o.reshape(x, [n, 1, width]), w, r, b], [n, 2, 1, h], 'float32', attrs);
  return o.reshape(y, [n, 2 * h]);
}

/**
 * Gradients of Y [n, 2, 1, h] = LSTM(X [n, 1, in], W [2, 4h, in], R [2, 4h, h], B [2, 8h]) (gates i, o, f, c).
 *
 * Both directions step together as a batch of two, in the order each processes the sequence (the backward
 * direction's step k reads position n−1−k). The gates of every step are recomputed at once from the inputs and
 * the outputs (each step's input state is the previous step's output); only the cell states and the
 * backpropagation through time run step by step:
 *   c_k = f_k c_{k−1} + i_k g_k,  dh_k = dY_k + dz_{k+1} R,  dc_k = dh_k o_k (1 − tanh² c_k) + dc_{k+1} f_{k+1},
 *   dz_k = [dc_k, dh_k, dc_k, dc_k] ⊙ [g i(1−i), tanh(c) o(1−o), c_{k−1} f(1−f), i (1−g²)]_k.
 * Then dW = dZᵀ X, dR = dZᵀ H_prev, dB = Σ_k dZ (twice: input and recurrent biases), dX = dZ W.
 */
export function lstmGrads(o: OnnxOps, node: GraphNode, gy: Sym, needs: boolean[]): (Sym | undefined)[] {
  const [x, w, r, b] = node.inputSyms as [Sym, Sym, Sym, Sym];
  if (node.inputSyms.length !== 4 || x.shape[1] !== 1 || w.shape[0] !== 2) throw new Error('onnx autodiff: only a bidirectional LSTM over one sequence from zero states (lstmLayer) is differentiated');
  const y = node.outputSyms[0]!;
  const n = x.shape[0]!;
  const width = x.shape[2]!;
  const h = r.shape[2]!;
  const steps = [...Array(n).keys()];
  // rows of a [2n, ·] table (direction-major, positions in order) in each direction's processing order; its own
  // inverse, so it also takes processing order back to positions
  const order = o.constInt([...steps, ...steps.map((k) => 2 * n - 1 - k)], [2 * n]);
  const byStep = (t: Sym, cols: number) => o.reshape(o.gather(o.reshape(t, [2 * n, cols]), order), [2, n, cols]);
  const directions = (t: Sym) => byStep(o.transpose(o.reshape(t, [n, 2, h]), [1, 0, 2]), h); // [n, 2, 1, h] → [2, n, h]
  const zeros = o.zeros([2, 1, h]);
  const shifted = (t: Sym) => (n === 1 ? zeros : o.concat([zeros, o.slice(t, [0, 0, 0], [2, n - 1, h])], 1)); // value at k−1

  const x2 = o.reshape(x, [n, width]);
  const xs = o.reshape(o.gather(x2, o.constInt([...steps, ...steps.map((k) => n - 1 - k)], [2 * n])), [2, n, width]);
  const hPrev = shifted(directions(y));
  const bias = o.reshape(o.add(o.slice(b, [0, 0], [2, 4 * h]), o.slice(b, [0, 4 * h], [2, 4 * h])), [2, 1, 4 * h]);
  const fromInputs = o.add(o.matmul(xs, w, true), bias);
  const z = n === 1 ? fromInputs : o.add(fromInputs, o.matmul(hPrev, r, true));
  const gate = (j: number) => o.slice(z, [0, 0, j * h], [2, n, h]);
  const i = o.sigmoid(gate(0));
  const og = o.sigmoid(gate(1));
  const f = o.sigmoid(gate(2));
  const g = o.tanh(gate(3));
  const fs = o.split(f, 1, n);
  const igs = o.split(o.mul(i, g), 1, n);
  const cells: Sym[] = [igs[0]!];
  for (let k = 1; k < n; k++) cells.push(o.add(o.mul(fs[k]!, cells[k - 1]!), igs[k]!));
  const c = o.concat(cells, 1);
  const tc = o.tanh(c);
  const one = o.scalar(1);
  const slope = (s: Sym) => o.mul(s, o.sub(one, s));
  const fromH = o.split(o.mul(og, o.sub(one, o.mul(tc, tc))), 1, n);
  const local = o.split(o.concat([o.mul(g, slope(i)), o.mul(tc, slope(og)), o.mul(shifted(c), slope(f)), o.mul(i, o.sub(one, o.mul(g, g)))], 2), 1, n);
  const dy = o.split(directions(gy), 1, n);

  const dz: Sym[] = new Array(n);
  let dc: Sym | null = null;
  for (let k = n - 1; k >= 0; k--) {
    const dh = k === n - 1 ? dy[k]! : o.add(dy[k]!, o.matmul(dz[k + 1]!, r));
    const fromC: Sym = dc ? o.add(o.mul(dh, fromH[k]!), o.mul(dc, fs[k + 1]!)) : o.mul(dh, fromH[k]!);
    dc = fromC;
    dz[k] = o.mul(o.concat([fromC, dh, fromC, fromC], 2), local[k]!);
  }
  const dZ = o.concat(dz, 1); // [2, n, 4h]
  let dx: Sym | undefined;
  if (needs[0]) {
    const rows = o.reshape(o.gather(o.reshape(o.matmul(dZ, w), [2 * n, width]), order), [2, n, width]);
    dx = o.reshape(o.sum(rows, 0), [n, 1, width]);
  }
  const dw = needs[1] ? o.matmulTransposed(dZ, xs, true, false) : undefined;
  const dr = needs[2] ? o.matmulTransposed(dZ, hPrev, true, false) : undefined;
  let db: Sym | undefined;
  if (needs[3]) {
    const sum = o.sum(dZ, 1);
    db = o.concat([sum, sum], 1);
  }
  return [dx, dw, dr, db];
}
