import * as tf from '@tensorflow/tfjs-core';
// the union package registers every op's gradient (tfjs-core alone registers a dozen)
import '@tensorflow/tfjs';
import '@tensorflow/tfjs-backend-cpu';
import '@tensorflow/tfjs-backend-wasm';
import { installWasmKernelFixes } from './wasm-kernels.js';

export type BackendName = 'wasm' | 'cpu';

let ready: Promise<BackendName> | null = null;
let current: BackendName | null = null;

/**
 * Selects and initialises the tensor backend once per process. Default: wasm (SIMD), with the kernel fixes
 * it needs for training; `cpu` is the pure-JS fallback. `PTUNE_BACKEND` overrides the default.
 */
export function initEngine(preferred?: BackendName): Promise<BackendName> {
  const want = preferred ?? (process.env.PTUNE_BACKEND as BackendName | undefined) ?? 'wasm';
  if (current === want && ready) return ready;
  ready = (async () => {
    if (want === 'wasm') installWasmKernelFixes();
    const ok = await tf.setBackend(want);
    if (!ok) {
      if (want === 'cpu') throw new Error('cannot initialise the cpu tensor backend');
      await tf.setBackend('cpu');
      current = 'cpu';
      return current;
    }
    await tf.ready();
    current = want;
    return current;
  })();
  return ready;
}

export function backendName(): string {
  return tf.getBackend();
}

/**
 * A float32 tensor holding a copy of `values`, so the caller may overwrite `values` afterwards: the wasm backend
 * copies into its heap on creation, the cpu backend keeps the array itself (then it is copied here).
 */
export function tensorFromScratch(values: Float32Array, shape: number[]): tf.Tensor {
  return tf.tensor(tf.getBackend() === 'wasm' ? values : values.slice(), shape, 'float32');
}

/** The values of a float32 tensor in an array the caller owns (the cpu backend would hand out its own storage). */
export function hostCopy(t: tf.Tensor): Float32Array {
  const data = t.dataSync() as Float32Array;
  return tf.getBackend() === 'wasm' ? data : data.slice();
}
