import fs from 'node:fs';
import path from 'node:path';
import { readSafetensors, writeSafetensors } from '../engine/safetensors.js';
import type { Parameter } from '../engine/tensor.js';
import { writeJsonAtomic } from '../util/atomic.js';
import { UserError } from '../util/errors.js';
import type { OptimizerState, ParamOptimState } from './optim.js';
export { writeFileAtomic, writeJsonAtomic } from '../util/atomic.js';

/** Written last into a checkpoint folder: its presence means every other file of the folder is complete. */
const COMPLETE = 'complete.json';

interface Completion {
  /** increases with every checkpoint written into the same place */
  seq: number;
}

function completion(dir: string): Completion | null {
  try {
    const c = JSON.parse(fs.readFileSync(path.join(dir, COMPLETE), 'utf8')) as Completion;
    return typeof c.seq === 'number' ? c : null;
  } catch {
    return null;
  }
}

/** The complete versions of checkpoint `dir` (itself, its `.tmp` and `.old`), newest first. */
function completeVersions(dir: string): { path: string; seq: number }[] {
  const out: { path: string; seq: number }[] = [];
  for (const p of [dir, `${dir}.tmp`, `${dir}.old`]) {
    const c = completion(p);
    if (c) out.push({ path: p, seq: c.seq });
    // folders written before completion markers existed: complete when their state.json is there
    else if (p === dir && fs.existsSync(path.join(p, 'state.json'))) out.push({ path: p, seq: -1 });
  }
  return out.sort((a, b) => b.seq - a.seq);
}

/**
 * Replaces the checkpoint folder `dir` as one unit. Everything is written into `dir.tmp`, a completion marker
 * last; then `dir` moves to `dir.old`, `dir.tmp` into place, and `dir.old` is removed. A crash in any window
 * leaves a complete version that `resolveCheckpointDir` finds — the newest one, `dir.tmp` included once its
 * marker is written — and the next write first puts that version back in place, so it is never lost.
 */
export function writeCheckpointDir(dir: string, write: (tmpDir: string) => void): void {
  const tmp = `${dir}.tmp`;
  const old = `${dir}.old`;
  const seq = recoverCheckpointDir(dir) + 1;
  fs.rmSync(tmp, { recursive: true, force: true });
  fs.mkdirSync(tmp, { recursive: true });
  write(tmp);
  writeJsonAtomic(path.join(tmp, COMPLETE), { seq } satisfies Completion);
  fs.rmSync(old, { recursive: true, force: true });
  if (fs.existsSync(dir)) fs.renameSync(dir, old);
  fs.renameSync(tmp, dir);
  fs.rmSync(old, { recursive: true, force: true });
}

/**
 * After an interrupted swap: moves the newest complete version into `dir` and removes the others. Returns
 * its sequence number (0 when there is none).
 */
export function recoverCheckpointDir(dir: string): number {
  const versions = completeVersions(dir);
  const newest = versions[0];
  if (!newest) return 0;
  if (newest.path !== dir) {
    fs.rmSync(dir, { recursive: true, force: true });
    fs.renameSync(newest.path, dir);
  }
  for (const p of [`${dir}.tmp`, `${dir}.old`]) fs.rmSync(p, { recursive: true, force: true });
  return Math.max(newest.seq, 0);
}

/** The newest complete version of checkpoint folder `dir` (itself, `.tmp` or `.old` after a crash), or null. */
export function resolveCheckpointDir(dir: string): string | null {
  return completeVersions(dir)[0]?.path ?? null;
}

/** Parameters' values as a safetensors file, by name, in their stored shapes (the host's padding cut off). */
export function saveParams(file: string, params: Map<string, Parameter>, metadata?: Record<string, string>): void {
  writeSafetensors(file, new Map([...params].map(([name, p]) => [name, { shape: p.storedShape, data: p.toStored() }])), metadata);
}

/** Loads saved values into `params` by name; every parameter must be present with its stored shape (checked first). */
export function loadParams(file: string, params: Map<string, Parameter>): void {
  const stored = readSafetensors(file).tensors;
  for (const [name, p] of params) {
    const t = stored.get(name);
    if (!t) throw new UserError(`${file}: tensor "${name}" is missing`);
    if (t.shape.join(',') !== p.storedShape.join(',')) throw new UserError(`${file}: tensor "${name}" has shape [${t.shape}], expected [${p.storedShape}]`);
  }
  for (const [name, p] of params) p.set(p.fromStored(stored.get(name)!.data));
}

/** Optimizer moments as `<param>.m` / `<param>.v` tensors; step counts and the kind in the metadata. */
export function saveOptimizerState(file: string, state: OptimizerState): void {
  const tensors = new Map<string, { shape: number[]; data: Float32Array }>();
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
  if (kind !== 'adam' && kind !== 'adamw') throw new UserError(`${file}: metadata "kind" must be adam or adamw, got ${kind}`);
  let steps: Record<string, number>;
  try {
    steps = JSON.parse(metadata.steps ?? '') as Record<string, number>;
  } catch {
    throw new UserError(`${file}: metadata "steps" is not valid JSON`);
  }
  const params = new Map<string, ParamOptimState>();
  for (const [name, step] of Object.entries(steps)) {
    const m = tensors.get(`${name}.m`);
    const v = tensors.get(`${name}.v`);
    if (!m || !v) throw new UserError(`${file}: moments of "${name}" are missing`);
    params.set(name, { step, m: m.data, v: v.data });
  }
  return { kind, params };
}
