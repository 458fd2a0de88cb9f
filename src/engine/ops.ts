/**
 * The op vocabulary that model files are written against.
 *
 * Models never import a tensor library: they receive an `Ops<T>` and call it. The tfjs engine implements it
 * on real tensors (src/engine/tfjs-ops.ts); a graph engine can implement it on symbolic tensors and build a
 * graph from the very same model code.
 *
 * Conventions:
 * - Shapes are row-major; `axis` may be negative (counted from the end).
 * - Linear weights are stored `[in, out]` (Hugging Face Conv1D layout); loaders transpose torch `nn.Linear`
 *   weights (`[out, in]`) once at load time, so the hot path never transposes a weight.
 * - Integer inputs (token ids, positions) are int32 tensors.
 */
/**
 * A frozen weight quantized block-wise (src/engine/quant.ts: ONNX Runtime's MatMulNBits layout) as tensors of
 * an engine: Ŵ [n, k], rows the output features, blocks of `blockSize` along k.
 */
export interface QuantizedTensors<T> {
  n: number;
  k: number;
  bits: 4 | 8;
  blockSize: number;
  /** uint8 [n, kBlocks, blockSize · bits / 8] */
  data: T;
  /** float32 [n, kBlocks] */
  scales: T;
  /** uint8 [n, ceil(kBlocks · bits / 8)]; absent: symmetric blocks (zero point 2^(bits-1)) */
  zeroPoints?: T;
  /**
   * per channel (blockSize = k): `data` is int8 [n, k] (zero point 0), `scales` [n], and `columns` the same
   * integers as [k, n], the operand of the forward's integer GEMM
   */
  signed?: boolean;
  columns?: T;
  /**
   * how an engine may multiply: 'int8' lets it quantize the activations to int8 per block and multiply in
   * integers (ONNX Runtime's accuracy level 4; default), 'float32' dequantizes and multiplies in float32
   */
  activations?: 'int8' | 'float32';
  /**
   * Ŵᵀ quantized on its own ([k, n], blocks along n): when present, the gradient to the input of a quantized
   * dense runs as another quantized matmul; absent, it dequantizes Ŵ and multiplies in float32
   */
  transposed?: QuantizedTensors<T>;
}

/** One direction of a torch.nn.LSTM layer: W_ih [4h, in], W_hh [4h, h], b_ih and b_hh [4h]; gate order i, f, g, o. */
export interface LstmWeights<T> {
  wih: T;
  whh: T;
  bih: T;
  bhh: T;
}

/** How a quantized weight stands in for the float weight it replaces: torch nn.Linear [out, in] or Conv1D [in, out]. */
export type WeightLayout = 'out-in' | 'in-out';

export interface Ops<T> {
  shape(x: T): number[];

  // constants
  scalar(v: number): T;
  constInt(values: Int32Array | number[], shape: number[]): T;
  constFloat(values: Float32Array | number[], shape: number[]): T;

  // elementwise
  add(a: T, b: T): T;
  sub(a: T, b: T): T;
  mul(a: T, b: T): T;
  div(a: T, b: T): T;
  scale(x: T, s: number): T;
  neg(x: T): T;
  exp(x: T): T;
  sqrt(x: T): T;
  tanh(x: T): T;
  sigmoid(x: T): T;
  relu(x: T): T;
  /** Exact GELU: x * Φ(x) (BERT's "gelu"). */
  gelu(x: T): T;
  /** Tanh-approximated GELU (GPT-2's "gelu_new"). */
  geluTanh(x: T): T;
  silu(x: T): T;
  /** elementwise cosine and sine (rotary angles; not differentiated) */
  cos(x: T): T;
  sin(x: T): T;

  // linear algebra
  /** Batched matmul over the last two axes; `transposeB` multiplies by b's transpose. */
  matmul(a: T, b: T, transposeB?: boolean): T;
  /** x[..., in] @ w[in, out] (+ bias[out]). */
  linear(x: T, w: T, bias?: T): T;
  /** x[..., in] @ wᵀ (+ bias[out]) for w [out, in]: torch nn.Linear's layout. */
  dense(x: T, w: T, bias?: T): T;
  /**
   * x[..., k] @ Ŵᵀ (+ bias[n]) for a block-quantized Ŵ [n, k]; the weight is frozen (gradients flow to x and
   * the bias only).
   */
  quantizedDense(x: T, w: QuantizedTensors<T>, bias?: T): T;
  /**
   * A quantized weight as a value model code can hold where the float weight went (`layout` says which):
   * `dense` / `linear` of it (and the output projection `matmul(it, rows, true)`, and `gather` of its rows) read
   * it quantized; any other use sees its dequantized values.
   */
  quantized(w: QuantizedTensors<T>, layout: WeightLayout): T;

  /**
   * One bidirectional LSTM layer as torch.nn.LSTM computes it over one sequence (batch 1) from zero states:
   * x [n, in] → [n, 2h], each row the forward direction's output then the backward direction's.
   */
  bilstm(x: T, forward: LstmWeights<T>, backward: LstmWeights<T>): T;

  // reductions and normalisation
  sum(x: T, axis: number, keepDims?: boolean): T;
  mean(x: T, axis: number, keepDims?: boolean): T;
  max(x: T, axis: number, keepDims?: boolean): T;
  softmax(x: T, axis?: number): T;
  logSoftmax(x: T, axis?: number): T;
  layerNorm(x: T, gamma: T, beta: T, eps: number): T;
  rmsNorm(x: T, weight: T, eps: number): T;

  // indexing and layout
  /** Rows of `table` (axis 0) at integer `ids` of any shape: result shape ids.shape + table.shape[1:]. */
  gather(table: T, ids: T, axis?: number): T;
  concat(xs: T[], axis: number): T;
  slice(x: T, begin: number[], size: number[]): T;
  transpose(x: T, perm: number[]): T;
  reshape(x: T, shape: number[]): T;
  expandDims(x: T, axis: number): T;
  /** x broadcast to `shape` (numpy rules; size-1 axes repeat) */
  expand(x: T, shape: number[]): T;
  cast(x: T, dtype: 'float32' | 'int32'): T;

  /**
   * Dropout with probability `rate`: x itself, except in a training program an engine builds with dropout on,
   * where each element is zeroed with probability `rate` and the others scaled by 1 / (1 − rate).
   */
  dropout(x: T, rate: number): T;

  /**
   * x unchanged, marking it a boundary between transformer layers (called before each layer and after the
   * last): with gradient checkpointing, an engine keeps only such values for the backward pass and recomputes
   * what lies between two of them.
   */
  checkpoint(x: T): T;

}
