import os from 'node:os';
import { Runtime, type OrtModule } from './runtime.js';

/**
 * onnxruntime-node (the native CPU runtime), or onnxruntime-web (WebAssembly) when asked for
 * (`PTUNE_RUNTIME=web`) or when the native binding cannot load, which is said in one line on stderr.
 * `PTUNE_DISABLE_NATIVE=1` treats the native binding as missing (to exercise the fallback).
 */
export async function loadNodeRuntime(): Promise<Runtime> {
  const threads = process.env.PTUNE_THREADS ? Number(process.env.PTUNE_THREADS) : os.availableParallelism();
  if (!Number.isInteger(threads) || threads < 1) throw new Error(`PTUNE_THREADS: expected a positive integer, got ${JSON.stringify(process.env.PTUNE_THREADS)}`);
  const asked = process.env.PTUNE_RUNTIME;
  if (asked !== undefined && asked !== 'node' && asked !== 'web') {
    throw new Error(`PTUNE_RUNTIME: expected "node" or "web", got ${JSON.stringify(asked)}`);
  }
  if (asked !== 'web') {
    try {
      if (process.env.PTUNE_DISABLE_NATIVE === '1') throw new Error('disabled by PTUNE_DISABLE_NATIVE=1');
      const ort = (await import('onnxruntime-node')) as unknown as OrtModule;
      return new Runtime('onnxruntime-node', ort, threads);
    } catch (err) {
      const reason = (err instanceof Error ? err.message : String(err)).split('\n')[0];
      process.stderr.write(`ptune: onnxruntime-node cannot be loaded (${reason}); running on onnxruntime-web (WebAssembly), several times slower\n`);
    }
  }
  const ort = (await import('onnxruntime-web')) as unknown as OrtModule;
  return new Runtime('onnxruntime-web', ort, threads, { bakeFrozenWeights: process.env.PTUNE_ORT_BAKE === '1' });
}
