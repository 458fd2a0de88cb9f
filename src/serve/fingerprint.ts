import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { forEachFloatWeight, loadModel } from '../models/load.js';
import type { LanguageModel } from '../models/model.js';
import { writeFileAtomic } from '../util/atomic.js';

/**
 * What identifies a base model for serving prompts tuned on it: its configuration (as Hugging Face writes
 * config.json) and a checksum of its weights (sha256 over every weight's name, shape and float32 values, in
 * the family's order). Two models with the same fingerprint compute the same function, so a prompt tuned on
 * one serves on the other.
 */
export interface BaseModelId {
  family: string;
  config: Record<string, unknown>;
  /** sha256, hex */
  weights: string;
}

const cache = new WeakMap<LanguageModel, BaseModelId>();

/** Keys sorted at every level, so equal configs print equal. */
function canonical(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(canonical);
  if (value && typeof value === 'object') {
    return Object.fromEntries(Object.keys(value as object).sort().map((k) => [k, canonical((value as Record<string, unknown>)[k])]));
  }
  return value;
}

/**
 * A model's fingerprint. A model loaded with quantized weights has the fingerprint of its float weights (read
 * again from its files, one tensor at a time, and remembered in the quantized store), so that prompts tuned on the
 * same base, quantized or not, serve on it; a quantized model that is not on disk (random) gets one of its own.
 */
export function modelFingerprint(lm: LanguageModel): BaseModelId {
  const hit = cache.get(lm);
  if (hit) return hit;
  const id: BaseModelId = { family: lm.family.name, config: canonical(lm.family.toHfConfig(lm.config)) as Record<string, unknown>, weights: weightChecksum(lm) };
  cache.set(lm, id);
  return id;
}

function weightChecksum(lm: LanguageModel): string {
  const h = createHash('sha256');
  const add = (name: string, shape: number[], data: Float32Array) => {
    h.update(`${name}[${shape.join(',')}]`);
    h.update(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
  };
  const q = lm.quantized;
  if (!q) {
    for (const [name, p] of lm.params) add(name, p.storedShape, p.toStored());
    return h.digest('hex');
  }
  const saved = path.join(q.dir, 'float-weights.sha256');
  try {
    const text = fs.readFileSync(saved, 'utf8').trim();
    if (/^[0-9a-f]{64}$/.test(text)) return text;
  } catch {
    // not computed yet
  }
  if (!forEachFloatWeight(lm.info.source, add)) {
    for (const [name, p] of lm.params) add(name, p.storedShape, p.toStored());
    h.update(`quantized ${q.key}`);
    return h.digest('hex');
  }
  const digest = h.digest('hex');
  try {
    writeFileAtomic(saved, digest + '\n');
  } catch {
    // a read-only cache: computed again next time
  }
  return digest;
}

/** Why two base models differ (config keys first, then the weights), or null when they are the same. */
export function baseDifference(a: BaseModelId, b: BaseModelId): string | null {
  if (a.family !== b.family) return `family ${a.family} vs ${b.family}`;
  const keys = [...new Set([...Object.keys(a.config), ...Object.keys(b.config)])].sort();
  const differ = keys.filter((k) => JSON.stringify(a.config[k]) !== JSON.stringify(b.config[k]));
  if (differ.length) {
    const shown = differ.slice(0, 4).map((k) => `${k} ${JSON.stringify(a.config[k])} vs ${JSON.stringify(b.config[k])}`);
    return `config differs: ${shown.join(', ')}${differ.length > 4 ? `, and ${differ.length - 4} more` : ''}`;
  }
  if (a.weights !== b.weights) return `same config, but the weights differ (checksum ${a.weights.slice(0, 12)}… vs ${b.weights.slice(0, 12)}…)`;
  return null;
}

const byFile = new Map<string, { stamp: string; id: BaseModelId }>();

function realpath(p: string): string | null {
  try {
    return fs.realpathSync(p);
  } catch {
    return null;
  }
}

/** modification times of a model's files (a directory's config and weights, or the file) */
function stampOf(real: string): string {
  if (!fs.statSync(real).isDirectory()) return String(fs.statSync(real).mtimeMs);
  return fs.readdirSync(real).filter((f) => f.endsWith('.json') || f.endsWith('.safetensors') || f.endsWith('.bin')).sort()
    .map((f) => `${f}@${fs.statSync(`${real}/${f}`).mtimeMs}`).join(',');
}

/**
 * The fingerprint of the model a run names (a directory or Hub id). The model `known` was loaded from counts
 * as itself (same files); any other is loaded once to be checksummed (and remembered by path and mtime).
 */
export async function fingerprintOf(spec: string, known?: LanguageModel): Promise<BaseModelId> {
  const real = realpath(spec);
  if (known && real && real === realpath(known.info.source)) return modelFingerprint(known);
  const stamp = real ? stampOf(real) : '';
  const hit = real ? byFile.get(real) : undefined;
  if (hit && hit.stamp === stamp) return hit.id;
  const lm = await loadModel(spec);
  const id = modelFingerprint(lm);
  lm.dispose();
  if (real) byFile.set(real, { stamp, id });
  return id;
}
