/**
 * The engine: the op vocabulary models are written in, programs built from it and run by ONNX Runtime, host
 * tensors and parameters, and safetensors I/O.
 */
export type { Ops } from './ops.js';
export { Parameter, prefixed, sizeOf, type HostTensor, type ParamMap, type TensorData } from './tensor.js';
export { programs, ProgramBuilder, ProgramCache, type Program, type ProgramGraph, type ProgramResult, type ParamLookup } from './program.js';
export { getRuntime, useRuntime, Runtime, type RuntimeName, type SavedActivations } from './runtime.js';

import { getRuntime, type Runtime, type SavedActivations } from './runtime.js';

/**
 * The runtime, configured: `threads` sets the intra-op threads of sessions created from now on (default:
 * `PTUNE_THREADS`, else the number of cores); `gradientCheckpointing` recomputes each layer's activations in the
 * backward pass instead of keeping them (default: `PTUNE_GRADIENT_CHECKPOINTING=1`, else off); `savedActivations`
 * is the precision the activations the backward reads are kept in: 'float16', 'float32', or 'auto' (float16 over
 * quantized weights; default: `PTUNE_SAVED_ACTIVATIONS`, else auto).
 */
export async function initEngine(opts: { threads?: number; gradientCheckpointing?: boolean; savedActivations?: SavedActivations } = {}): Promise<Runtime> {
  const rt = await getRuntime();
  if (opts.threads !== undefined) rt.threads = opts.threads;
  if (opts.gradientCheckpointing !== undefined) rt.gradientCheckpointing = opts.gradientCheckpointing;
  if (opts.savedActivations !== undefined) rt.savedActivations = opts.savedActivations;
  return rt;
}
