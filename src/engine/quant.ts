/**
 * Block-wise weight quantization in the layout of ONNX Runtime's `com.microsoft.MatMulNBits`.
 *
 * A matrix W [N, K] (torch nn.Linear's [out, in]) is cut into blocks of `blockSize` consecutive values along K;
 * each block has one float32 scale (and, unless symmetric, one zero point) and its values become unsigned
 * `bits`-bit integers q with w ≈ (q - zeroPoint) · scale:
 * - `data`: uint8 [N, ceil(K / blockSize), blockSize · bits / 8]; 4-bit values two to a byte, the even index of
 *   a pair in the low nibble; a last partial block is padded with the zero point (K need not divide);
 * - `scales`: float32 [N, kBlocks];
 * - `zeroPoints` (asymmetric only): uint8 [N, ceil(kBlocks · bits / 8)], packed like the data. Symmetric blocks
 *   store none: the kernel's default zero point 2^(bits-1) applies (8 or 128).
 *
 * Per channel (`blockSize: 'channel'`, 8 bits, symmetric only): one block per row (blockSize = k) and the values
 * stored as signed bytes q - 128 (`signed`; zero point 0), in the layout of ONNX Runtime's integer GEMM
 * (`com.microsoft.DynamicQuantizeMatMul`, whose VNNI kernel multiplies uint8 activations by int8 weights).
 *
 * Symmetric: scale = f · max |w| / (2^(bits-1) - 1), q = clamp(round(w / scale) + 2^(bits-1)); asymmetric: the
 * range [min(w, 0), max(w, 0)] (its ends possibly pulled in by f) over 2^bits - 1 steps, zero point
 * round(-min / scale). f is searched per block (SHRINK) for the least squared error, f = 1 (nothing clipped)
 * included, so no block is worse than plain round-to-nearest over its whole range: a value inside the range is
 * within scale / 2 of ŵ, one outside it is clipped to the range's end.
 */

export type QuantBits = 4 | 8;

export interface QuantSettings {
  bits: QuantBits;
  /** values per block along the input axis: 32, 64 or 128, or 'channel': one scale per output feature */
  blockSize: BlockSize;
  /** symmetric blocks (no zero points) or blocks with a zero point each */
  symmetric: boolean;
}

export const BLOCK_SIZES = [32, 64, 128] as const;
export type BlockSize = (typeof BLOCK_SIZES)[number] | 'channel';

export interface QuantizedMatrix {
  /** rows (output features) */
  n: number;
  /** columns (input features) */
  k: number;
  bits: QuantBits;
  /** values per block (k for a per-channel matrix) */
  blockSize: number;
  /** the values as signed bytes q - 2^(bits-1), zero point 0 (per channel) */
  signed?: boolean;
  data: Uint8Array;
  scales: Float32Array;
  zeroPoints?: Uint8Array;
}

export function checkSettings(s: QuantSettings): void {
  if (s.bits !== 4 && s.bits !== 8) throw new Error(`quantize: bits must be 4 or 8, got ${String(s.bits)}`);
  if (s.blockSize === 'channel') {
    if (s.bits !== 8 || !s.symmetric) throw new Error('quantize: per-channel scales are for symmetric int8 only');
  } else if (!(BLOCK_SIZES as readonly unknown[]).includes(s.blockSize)) {
    throw new Error(`quantize: block size must be one of ${BLOCK_SIZES.join(', ')} or channel, got ${String(s.blockSize)}`);
  }
}

export function blockCount(k: number, blockSize: number): number {
  return Math.ceil(k / blockSize);
}

/** Byte length of one row's data and zero points. */
export function rowBytes(k: number, s: { bits: QuantBits; blockSize: number }): { data: number; zeroPoints: number } {
  const blocks = blockCount(k, s.blockSize);
  return { data: (blocks * s.blockSize * s.bits) / 8, zeroPoints: Math.ceil((blocks * s.bits) / 8) };
}

/** The tensor shapes of a quantized [n, k] matrix as its kernel reads them: data, scales and zero points. */
export function quantizedShapes(q: { bits: QuantBits; blockSize: number; n: number; k: number; signed?: boolean }): { data: number[]; scales: number[]; zeroPoints: number[] } {
  // per channel: int8 [n, k] and one scale per row
  if (q.signed) return { data: [q.n, q.k], scales: [q.n], zeroPoints: [] };
  const blocks = blockCount(q.k, q.blockSize);
  const bytes = rowBytes(q.k, q);
  return { data: [q.n, blocks, bytes.data / blocks], scales: [q.n, blocks], zeroPoints: [q.n, bytes.zeroPoints] };
}

/**
 * Candidate ranges of a block, as multiples of its largest magnitude (symmetric) or of its extremes
 * (asymmetric): 1 keeps every value inside the range; below 1 clips the outliers a little to give the rest finer
 * steps. Each block keeps the candidate with the least squared error (never more than the full range's).
 */
const SHRINK = [1, 0.96, 0.92, 0.88, 0.84, 0.8, 0.76, 0.72];

/** Squared error of quantizing w[from, to) with `scale` and zero point `zp` over levels 0..levels. */
function blockError(w: Float32Array, from: number, to: number, scale: number, zp: number, levels: number): number {
  const inv = 1 / scale;
  let e = 0;
  for (let i = from; i < to; i++) {
    const v = w[i]!;
    let q = Math.round(v * inv) + zp;
    q = q < 0 ? 0 : q > levels ? levels : q;
    const d = v - (q - zp) * scale;
    e += d * d;
  }
  return e;
}

/** A symmetric block: zero point 2^(bits-1), levels -mid..mid-1 around it; the scale chosen by least squared error. */
function symmetricBlock(w: Float32Array, from: number, to: number, mid: number, levels: number): { scale: number; zp: number } {
  let amax = 0;
  for (let i = from; i < to; i++) amax = Math.max(amax, Math.abs(w[i]!));
  if (amax === 0) return { scale: 0, zp: mid };
  let best = Math.fround(amax / (mid - 1));
  let bestErr = blockError(w, from, to, best, mid, levels);
  for (const f of SHRINK.slice(1)) {
    const scale = Math.fround((amax * f) / (mid - 1));
    const e = blockError(w, from, to, scale, mid, levels);
    if (e < bestErr) [best, bestErr] = [scale, e];
  }
  return { scale: best, zp: mid };
}

/** A block with a zero point: the range [lo, hi] (0 inside it) over 2^bits - 1 steps, its ends pulled in by least squared error. */
function asymmetricBlock(w: Float32Array, from: number, to: number, lo: number, hi: number, levels: number): { scale: number; zp: number } {
  if (hi === lo) return { scale: 0, zp: 0 };
  const at = (l: number, h: number) => {
    const scale = Math.fround((h - l) / levels);
    const zp = Math.min(levels, Math.max(0, Math.round(-l / scale)));
    return { scale, zp, err: blockError(w, from, to, scale, zp, levels) };
  };
  let best = at(lo, hi);
  for (const f of SHRINK.slice(1)) {
    for (const c of [at(lo * f, hi * f), at(lo, hi * f), at(lo * f, hi)]) if (c.err < best.err) best = c;
  }
  return { scale: best.scale, zp: best.zp };
}

/** Quantizes W [n, k] (row-major) block-wise along k. */
export function quantizeMatrix(w: Float32Array, n: number, k: number, s: QuantSettings): QuantizedMatrix {
  checkSettings(s);
  if (w.length !== n * k) throw new Error(`quantize: ${w.length} values for [${n}, ${k}]`);
  const { bits } = s;
  const blockSize = s.blockSize === 'channel' ? k : s.blockSize;
  const blocks = blockCount(k, blockSize);
  const bytes = rowBytes(k, { bits, blockSize });
  const data = new Uint8Array(n * bytes.data);
  const scales = new Float32Array(n * blocks);
  const zeroPoints = s.symmetric ? undefined : new Uint8Array(n * bytes.zeroPoints);
  const levels = (1 << bits) - 1;
  const mid = 1 << (bits - 1);
  const q = new Uint8Array(blockSize);
  for (let r = 0; r < n; r++) {
    const row = r * k;
    for (let b = 0; b < blocks; b++) {
      const start = b * blockSize;
      const end = Math.min(start + blockSize, k);
      let lo = 0;
      let hi = 0;
      for (let i = start; i < end; i++) {
        const v = w[row + i]!;
        if (v < lo) lo = v;
        if (v > hi) hi = v;
      }
      const { scale: found, zp } = s.symmetric ? symmetricBlock(w, row + start, row + end, mid, levels) : asymmetricBlock(w, row + start, row + end, lo, hi, levels);
      let scale = found;
      // float32 scale: the kernel multiplies by the stored value
      scale = Math.fround(scale);
      const inv = scale > 0 ? 1 / scale : 0;
      q.fill(zp);
      for (let i = start; i < end; i++) {
        const v = Math.round(w[row + i]! * inv) + zp;
        q[i - start] = v < 0 ? 0 : v > levels ? levels : v;
      }
      scales[r * blocks + b] = scale;
      const out = r * bytes.data + (b * blockSize * bits) / 8;
      if (bits === 8) data.set(q, out);
      else for (let i = 0; i < blockSize; i += 2) data[out + (i >> 1)] = q[i]! | (q[i + 1]! << 4);
      if (zeroPoints) {
        const at = r * bytes.zeroPoints;
        if (bits === 8) zeroPoints[at + b] = zp;
        else zeroPoints[at + (b >> 1)]! |= b & 1 ? zp << 4 : zp;
      }
    }
  }
  if (s.blockSize === 'channel') {
    for (let i = 0; i < data.length; i++) data[i] ^= 0x80; // q - 128 as a two's-complement byte
    return { n, k, bits, blockSize, signed: true, data, scales };
  }
  return { n, k, bits, blockSize, data, scales, ...(zeroPoints && { zeroPoints }) };
}

/** The zero point of block `b` of row `r`. */
export function zeroPointAt(m: QuantizedMatrix, r: number, b: number): number {
  if (m.signed) return 0;
  if (!m.zeroPoints) return 1 << (m.bits - 1);
  const per = rowBytes(m.k, m).zeroPoints;
  const byte = m.zeroPoints[r * per + (m.bits === 8 ? b : b >> 1)]!;
  return m.bits === 8 ? byte : b & 1 ? byte >> 4 : byte & 15;
}

/** The integer value of element (r, i). */
export function quantAt(m: QuantizedMatrix, r: number, i: number): number {
  const per = rowBytes(m.k, m).data;
  if (m.signed) return (m.data[r * per + i]! << 24) >> 24;
  if (m.bits === 8) return m.data[r * per + i]!;
  const byte = m.data[r * per + (i >> 1)]!;
  return i & 1 ? byte >> 4 : byte & 15;
}

/** Ŵ [n, k]: the values the quantized matrix stands for. */
export function dequantizeMatrix(m: QuantizedMatrix): Float32Array {
  const out = new Float32Array(m.n * m.k);
  for (let r = 0; r < m.n; r++) dequantizeRow(m, r, out, r * m.k);
  return out;
}

/** Wᵀ [k, n] of a row-major W [n, k]. */
export function transposeMatrix(w: Float32Array, n: number, k: number): Float32Array {
  const out = new Float32Array(n * k);
  const tile = 64;
  for (let r0 = 0; r0 < n; r0 += tile) {
    for (let c0 = 0; c0 < k; c0 += tile) {
      const r1 = Math.min(r0 + tile, n);
      const c1 = Math.min(c0 + tile, k);
      for (let r = r0; r < r1; r++) for (let c = c0; c < c1; c++) out[c * n + r] = w[r * k + c]!;
    }
  }
  return out;
}

/** The signed bytes of a per-channel [n, k] matrix transposed ([k, n]): the same integers, the GEMM's B operand. */
export function transposeBytes(data: Uint8Array, n: number, k: number): Uint8Array {
  const out = new Uint8Array(n * k);
  for (let r = 0; r < n; r++) for (let c = 0; c < k; c++) out[c * n + r] = data[r * k + c]!;
  return out;
}

/** Bytes a quantized matrix holds. */
export function quantizedBytes(m: QuantizedMatrix): number {
  return m.data.byteLength + m.scales.byteLength + (m.zeroPoints?.byteLength ?? 0);
}

/** Ŵᵀ [k, n]: the dequantized values, written transposed (the source of a quantized copy of Ŵᵀ). */
export function dequantizeTransposed(m: QuantizedMatrix): Float32Array {
  const { n, k } = m;
  const out = new Float32Array(n * k);
  const tile = 64;
  const rows = new Float32Array(tile * k);
  for (let r0 = 0; r0 < n; r0 += tile) {
    const r1 = Math.min(r0 + tile, n);
    for (let r = r0; r < r1; r++) dequantizeRow(m, r, rows, (r - r0) * k);
    for (let i = 0; i < k; i++) {
      const at = i * n;
      for (let r = r0; r < r1; r++) out[at + r] = rows[(r - r0) * k + i]!;
    }
  }
  return out;
}

/** Row r of Ŵ into out[at .. at + k). */
function dequantizeRow(m: QuantizedMatrix, r: number, out: Float32Array, at: number): void {
  const { k, blockSize, bits } = m;
  const blocks = blockCount(k, blockSize);
  const base = r * rowBytes(k, m).data;
  for (let b = 0; b < blocks; b++) {
    const scale = m.scales[r * blocks + b]!;
    const zp = zeroPointAt(m, r, b);
    const end = Math.min((b + 1) * blockSize, k);
    for (let i = b * blockSize; i < end; i++) {
      const q = m.signed ? (m.data[base + i]! << 24) >> 24 : bits === 8 ? m.data[base + i]! : i & 1 ? m.data[base + (i >> 1)]! >> 4 : m.data[base + (i >> 1)]! & 15;
      out[at + i] = (q - zp) * scale;
    }
  }
}
