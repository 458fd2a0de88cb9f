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
