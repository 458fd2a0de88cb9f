/**
 * The engine: tensor backend, the op vocabulary models are written against, and checkpoint I/O.
 * Code outside src/engine reaches tfjs only through the `tf` namespace re-exported here.
 */
export * as tf from '@tensorflow/tfjs-core';
export { initEngine, backendName, tensorFromScratch, hostCopy, type BackendName } from './backend.js';
export type { Ops } from './ops.js';
export { tfOps } from './tfjs-ops.js';
