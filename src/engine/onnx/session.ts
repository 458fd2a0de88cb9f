import { createRequire } from 'node:module';
import os from 'node:os';

/** A tensor crossing into or out of ONNX Runtime. */
export interface HostTensor {
  data: Float32Array | Int32Array;
  dims: number[];
}

interface NativeTensor {
  data: Float32Array | Int32Array;
  dims: readonly number[];
}
interface NativeSession {
  loadModel(buffer: ArrayBufferLike, offset: number, length: number, options: object): void;
  loadModel(path: string, options: object): void;
  run(feeds: Record<string, NativeTensor>, fetches: Record<string, null>, options: object): Record<string, NativeTensor>;
  dispose(): void;
}
interface Runtime {
  binding: { InferenceSession: new () => NativeSession };
  initOrt(): void;
  Tensor: new (type: string, data: Float32Array | Int32Array, dims: readonly number[]) => NativeTensor;
}

const require = createRequire(import.meta.url);
let runtime: Runtime | null | undefined;

/**
 * onnxruntime-node's native binding. Its session `run` is synchronous (the public API only wraps it in a
 * promise), and LanguageModel.run and tfjs gradients are synchronous, so the binding is used directly.
 */
function loadRuntime(): Runtime | null {
  if (runtime !== undefined) return runtime;
  try {
    const { binding, initOrt } = require('onnxruntime-node/dist/binding.js') as Pick<Runtime, 'binding' | 'initOrt'>;
    const { Tensor } = require('onnxruntime-node') as Pick<Runtime, 'Tensor'>;
    if (typeof binding?.InferenceSession !== 'function' || typeof initOrt !== 'function') throw new Error('unexpected binding');
    initOrt();
    runtime = { binding, initOrt, Tensor };
  } catch {
    runtime = null;
  }
  return runtime;
}

/** Whether ONNX Runtime can be used in this process. */
export function ortAvailable(): boolean {
  return loadRuntime() !== null;
}

export interface SessionOptions {
  /** intra-op threads; default: the number of CPU cores */
  threads?: number;
  /**
   * let idle intra-op threads spin-wait for the next op; default false: between ORT calls the cores run tfjs
   * (and, on shared machines, other processes), which spinning threads would compete with
   */
  spin?: boolean;
}

/** One ONNX Runtime CPU session over a serialised model, run synchronously. */
export class OrtSession {
  private native: NativeSession | null;
  private readonly rt: Runtime;

  /** `model`: the serialised model, or the path of a model file (needed when it has external data). */
  constructor(model: Uint8Array | string, opts: SessionOptions = {}) {
    const rt = loadRuntime();
    if (!rt) throw new Error('onnxruntime-node is not available (install it, or use the tfjs engine)');
    this.rt = rt;
    this.native = new rt.binding.InferenceSession();
    const options = {
      intraOpNumThreads: opts.threads ?? os.availableParallelism(),
      interOpNumThreads: 1,
      graphOptimizationLevel: 'all',
      executionMode: 'sequential',
      extra: { session: { intra_op: { allow_spinning: opts.spin ? '1' : '0' }, inter_op: { allow_spinning: '0' } } },
    };
    if (typeof model === 'string') this.native.loadModel(model, options);
    else this.native.loadModel(model.buffer, model.byteOffset, model.byteLength, options);
  }

  run(feeds: Record<string, HostTensor>, outputs: string[]): Record<string, HostTensor> {
    if (!this.native) throw new Error('onnx session: used after dispose');
    const native: Record<string, NativeTensor> = {};
    for (const [name, t] of Object.entries(feeds)) {
      native[name] = new this.rt.Tensor(t.data instanceof Float32Array ? 'float32' : 'int32', t.data, t.dims);
    }
    const fetches = Object.fromEntries(outputs.map((n) => [n, null]));
    const result = this.native.run(native, fetches, {});
    const out: Record<string, HostTensor> = {};
    for (const n of outputs) {
      const t = result[n];
      if (!t) throw new Error(`onnx session: no output "${n}"`);
      out[n] = { data: t.data, dims: t.dims.slice() };
    }
    return out;
  }

  get disposed(): boolean {
    return this.native === null;
  }

  dispose(): void {
    this.native?.dispose();
    this.native = null;
  }
}
