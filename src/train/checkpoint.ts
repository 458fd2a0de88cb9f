import fs from 'node:fs';
import path from 'node:path';
import { tf } from '../engine/index.js';
import { readSafetensors, writeSafetensors } from '../engine/safetensors.js';
import type { OptimizerState, ParamOptimState } from './optim.js';
export { writeFileAtomic, writeJsonAtomic } from '../util/atomic.js';

export interface HostTensor {
  shape: number[];
  data: Float32Array;
}

/**
 * Replaces the checkpoint folder `dir` as one unit: everything is written into `dir.tmp`, then the old folder is
 * moved to `dir.old`, the new one into place, and the old one removed. A crash at any point leaves either the
 * previous or the new checkpoint readable (`resolveCheckpointDir` falls back to `dir.old`).
 */
export function writeCheckpointDir(dir: string, write: (tmpDir: string) => void): void {
  const tmp = `${dir}.tmp`;
  const old = `${dir}.old`;
  fs.rmSync(tmp, { recursive: true, force: true });
  fs.mkdirSync(tmp, { recursive: true });
  write(tmp);
  fs.rmSync(old, { recursive: true, force: true });
  if (fs.existsSync(dir)) fs.renameSync(dir, old);
  fs.renameSync(tmp, dir);
  fs.rmSync(old, { recursive: true, force: true });
}

/** The readable checkpoint folder for `dir` (itself, or the previous one if a swap was interrupted), or null. */
export function resolveCheckpointDir(dir: string): string | null {
  if (fs.existsSync(path.join(dir, 'state.json'))) return dir;
  const old = `${dir}.old`;
  if (fs.existsSync(path.join(old, 'state.json'))) return old;
  return null;
}

export function variablesToHost(vars: Map<string, tf.Variable>): Map<string, HostTensor> {
  const out = new Map<string, HostTensor>();
  for (const [name, v] of vars) out.set(name, { shape: v.shape.slice(), data: v.dataSync() as Float32Array });
  return out;
}

export function saveVariables(file: string, vars: Map<string, tf.Variable>, metadata?: Record<string, string>): void {
  writeSafetensors(file, variablesToHost(vars), metadata);
}

/** Assigns saved values to `vars` by name; every variable must be present with the same shape. */
export function loadVariables(file: string, vars: Map<string, tf.Variable>): void {
  const stored = readSafetensors(file).tensors;
  for (const [name, v] of vars) {
    const t = stored.get(name);
    if (!t) throw new Error(`${file}: tensor "${name}" is missing`);
    if (t.shape.join(',') !== v.shape.join(',')) {
      throw new Error(`${file}: tensor "${name}" has shape [${t.shape}], expected [${v.shape}]`);
    }
  }
  for (const [name, v] of vars) {
    const t = stored.get(name)!;
    tf.tidy(() => v.assign(tf.tensor(t.data, t.shape, 'float32')));
  }
}

/** Optimizer moments as `<param>.m` / `<param>.v` tensors; step counts and the kind in the metadata. */
export function saveOptimizerState(file: string, state: OptimizerState): void {
  const tensors = new Map<string, HostTensor>();
  const steps: Record<string, number> = {};
  for (const [name, p] of state.params) {
    tensors.set(`${name}.m`, { shape: [p.m.length], data: p.m });
    tensors.set(`${name}.v`, { shape: [p.v.length], data: p.v });
    steps[name] = p.step;
  }
  writeSafetensors(file, tensors, { kind: state.kind, steps: JSON.stringify(steps) });
}

export function loadOptimizerState(file: string): OptimizerState {
  const { tensors, metadata } = readSafetensors(file);
  const kind = metadata.kind;
  if (kind !== 'adam' && kind !== 'adamw') throw new Error(`${file}: metadata "kind" must be adam or adamw, got ${kind}`);
  let steps: Record<string, number>;
  try {
    steps = JSON.parse(metadata.steps ?? '') as Record<string, number>;
  } catch {
    throw new Error(`${file}: metadata "steps" is not valid JSON`);
  }
  const params = new Map<string, ParamOptimState>();
  for (const [name, step] of Object.entries(steps)) {
    const m = tensors.get(`${name}.m`);
    const v = tensors.get(`${name}.v`);
    if (!m || !v) throw new Error(`${file}: moments of "${name}" are missing`);
    params.set(name, { step, m: m.data, v: v.data });
  }
  return { kind, params };
}
