/**
 * Quantization settings (`--quantize int8|int4`, `LoadOptions.quantize`) and their names: nothing of Node's, so
 * the model (and ptune/web) can name a model's quantization without the store (src/models/quantize.ts).
 */
import { checkSettings, type BlockSize, type QuantBits } from '../engine/quant.js';

/**
 * The library option: `{ bits: 8 }` is int8 with a scale per output feature (per channel: ONNX Runtime's integer
 * GEMM, the fastest here: docs/quantization.md), `{ bits: 4 }` int4 in blocks of 32 with zero points.
 */
export interface QuantizeOptions {
  bits: QuantBits;
  /**
   * values per block along a weight's input axis: 32, 64 or 128; or 'channel' (int8 only): one scale per output
   * feature, multiplied by ONNX Runtime's integer GEMM (DynamicQuantizeMatMul; the activations quantized to uint8
   * with one scale per tensor). Default: 'channel' for int8, unless a setting it cannot take is asked for (zero
   * points, the dequantized backward, float32 products: then 32); 32 for int4
   */
  blockSize?: BlockSize;
  /**
   * symmetric blocks or blocks with a zero point each; default symmetric for int8 and zero points for int4 (a
   * 16-level grid fits a block's skewed range much better with its own zero: docs/quantization.md)
   */
  symmetric?: boolean;
  /** how the gradient to a layer's input is computed: a quantized copy of Ŵᵀ (default) or Ŵ dequantized */
  backward?: 'transposed' | 'dequantize';
  /**
   * how the kernels multiply: activations quantized to int8 per block, integer products (default; ONNX
   * Runtime's accuracy level 4), or float32 products of the dequantized weights (slower, exact in Ŵ)
   */
  activations?: 'int8' | 'float32';
  /** where stores live (default `$PTUNE_CACHE_DIR/quantized`, else `~/.cache/ptune/quantized`) */
  cacheDir?: string;
}

export type QuantizeSettings = Required<Omit<QuantizeOptions, 'cacheDir'>> & { cacheDir?: string };

/** What `--quantize` accepts: int8, int4, or none / fp32 (no quantization). */
export function parseQuantize(value: string | QuantizeOptions | null | undefined): QuantizeSettings | null {
  if (value === undefined || value === null) return null;
  const o: QuantizeOptions | null =
    typeof value !== 'string' ? value : value === 'int8' ? { bits: 8 } : value === 'int4' ? { bits: 4 } : value === 'none' || value === 'fp32' ? null : invalid(value);
  if (!o) return null;
  const s: QuantizeSettings = {
    bits: o.bits,
    blockSize: o.blockSize ?? defaultBlock(o),
    symmetric: o.symmetric ?? o.bits === 8,
    backward: o.backward ?? 'transposed',
    activations: o.activations ?? 'int8',
    ...(o.cacheDir !== undefined && { cacheDir: o.cacheDir }),
  };
  checkSettings(s);
  if (s.backward !== 'transposed' && s.backward !== 'dequantize') throw new Error(`quantize: backward must be transposed or dequantize, got ${String(s.backward)}`);
  if (s.activations !== 'int8' && s.activations !== 'float32') throw new Error(`quantize: activations must be int8 or float32, got ${String(s.activations)}`);
  if (s.blockSize === 'channel' && (s.backward !== 'transposed' || s.activations !== 'int8')) {
    throw new Error('quantize: per-channel int8 multiplies integers in both directions (backward transposed, activations int8)');
  }
  return s;
}

/** The block size of settings that name none: per channel for int8 unless they ask for what it cannot take, else 32. */
function defaultBlock(o: Omit<QuantizeOptions, 'blockSize' | 'cacheDir'>): BlockSize {
  return o.bits === 8 && o.symmetric !== false && o.backward !== 'dequantize' && o.activations !== 'float32' ? 'channel' : 32;
}

function invalid(value: string): never {
  throw new Error(`quantize: expected int8, int4 or none, got ${JSON.stringify(value)}`);
}

/** The short name of settings, as `--quantize` spells them plus the non-default parts (int8, int8-b32, int4-b64-zp, ...). */
export function quantizeName(s: QuantizeSettings): string {
  const parts = [`int${s.bits}`];
  if (s.blockSize !== defaultBlock(s)) parts.push(s.blockSize === 'channel' ? 'ch' : `b${s.blockSize}`);
  if (s.symmetric !== (s.bits === 8)) parts.push(s.symmetric ? 'sym' : 'zp');
  if (s.backward !== 'transposed') parts.push('deq');
  if (s.activations !== 'int8') parts.push('f32act');
  return parts.join('-');
}

