import { InvalidArgumentError, type Command } from 'commander';
import type { QuantizeOptions } from '../models/quantize.js';
import { UserError } from '../util/errors.js';

export function parseIntOption(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n)) throw new InvalidArgumentError(`expected an integer, got "${value}"`);
  return n;
}

export function parseFloatOption(value: string): number {
  const n = Number(value);
  if (!Number.isFinite(n)) throw new InvalidArgumentError(`expected a number, got "${value}"`);
  return n;
}

export function parseListOption(value: string): string[] {
  return value.split(',').map((s) => s.trim()).filter((s) => s.length > 0);
}

/** --quantize and its settings, on a command that loads an LM. */
export function addQuantizeOptions(cmd: Command, what = 'the frozen LM'): Command {
  return cmd
    .option('--quantize <q>', `quantize ${what}'s linear weights at load: int8, int4 or none`)
    .option('--quant-block <n>', 'quantization block size: 32, 64 or 128 (default 32)', parseIntOption)
    .option('--quant-zero-points', 'blocks with zero points (default for int4)')
    .option('--quant-symmetric', 'symmetric blocks (default for int8)')
    .option('--quant-backward <b>', "gradient to a layer's input: transposed (a quantized copy of W transposed, default) or dequantize")
    .option('--quant-activations <a>', 'int8 (activations quantized per block, integer products; default) or float32');
}

export interface QuantizeCliOptions {
  quantize?: string;
  quantBlock?: number;
  quantZeroPoints?: boolean;
  quantSymmetric?: boolean;
  quantBackward?: string;
  quantActivations?: string;
}

/** The options given, as QuantizeOptions; null for --quantize none; undefined when --quantize is absent. */
export function quantizeFrom(o: QuantizeCliOptions): QuantizeOptions | null | undefined {
  const extra = o.quantBlock !== undefined || o.quantZeroPoints || o.quantSymmetric || o.quantBackward !== undefined || o.quantActivations !== undefined;
  if (o.quantize === undefined) {
    if (extra) throw new UserError('--quant-block, --quant-zero-points, --quant-symmetric, --quant-backward and --quant-activations need --quantize int8|int4');
    return undefined;
  }
  if (o.quantize === 'none' || o.quantize === 'fp32') return null;
  if (o.quantize !== 'int8' && o.quantize !== 'int4') throw new UserError(`--quantize: expected int8, int4 or none, got ${JSON.stringify(o.quantize)}`);
  if (o.quantBlock !== undefined && ![32, 64, 128].includes(o.quantBlock)) throw new UserError(`--quant-block: expected 32, 64 or 128, got ${o.quantBlock}`);
  if (o.quantZeroPoints && o.quantSymmetric) throw new UserError('give --quant-zero-points or --quant-symmetric, not both');
  if (o.quantBackward !== undefined && o.quantBackward !== 'transposed' && o.quantBackward !== 'dequantize') {
    throw new UserError(`--quant-backward: expected transposed or dequantize, got ${JSON.stringify(o.quantBackward)}`);
  }
  if (o.quantActivations !== undefined && o.quantActivations !== 'int8' && o.quantActivations !== 'float32') {
    throw new UserError(`--quant-activations: expected int8 or float32, got ${JSON.stringify(o.quantActivations)}`);
  }
  return {
    bits: o.quantize === 'int8' ? 8 : 4,
    ...(o.quantBlock !== undefined && { blockSize: o.quantBlock }),
    ...(o.quantZeroPoints && { symmetric: false }),
    ...(o.quantSymmetric && { symmetric: true }),
    ...(o.quantBackward !== undefined && { backward: o.quantBackward as 'transposed' | 'dequantize' }),
    ...(o.quantActivations !== undefined && { activations: o.quantActivations as 'int8' | 'float32' }),
  };
}
