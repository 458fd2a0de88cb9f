import fs from 'node:fs';
import path from 'node:path';
import { checkpointIndex, type LazyTensor } from '../engine/safetensors.js';
import { Parameter, type ParamMap } from '../engine/tensor.js';
import { HfTokenizer } from '../tokenizers/hf.js';
import { Llama2cTokenizer } from '../tokenizers/llama2c.js';
import type { TextTokenizer } from '../tokenizers/tokenizer.js';
import { parameterFor, randomStream, type WeightSpec } from './common.js';
import {
  assemble, createRandomModel as createRandomFloatModel, locateWeights, randomFallbackIds, randomModelShape, type AssembleOptions,
} from './assemble.js';
import { familyFor } from './families.js';
import { llamaFamily } from './llama.js';
import { isTokenizerBin, llama2cCheckpointIn, readLlama2c } from './llama2c.js';
import type { ModelFamily } from './lm.js';
import type { LanguageModel } from './model.js';
import { resolveModel, type ResolveOptions } from '../hub/index.js';
import { defaultQuantCache, linearWeights, parseQuantize, QuantizedStore, sourceChecksum, type QuantizeOptions, type QuantizeSettings } from './quantize.js';
import type { WeightLayout } from '../engine/ops.js';
import crypto from 'node:crypto';

export { loadModelFrom, specialIds, specialIdsOf } from './assemble.js';

export interface LoadOptions extends AssembleOptions {
  /** how a Hub repository id is resolved (revision, cache, endpoint, token, offline, progress) */
  hub?: ResolveOptions;
  /**
   * quantize the frozen LM's linear weights at load: 'int8', 'int4' or options (block size, zero points, the
   * gradient's form, the cache folder); 'none' or absent: float32. Not with `trainable`.
   */
  quantize?: QuantizeOptions | 'int8' | 'int4' | 'none' | null;
}

/** Float weights read from disk hold padded inner widths unless asked not to; quantized models never do. */
function padsFeedForward(opts: LoadOptions, q: QuantizeSettings | null): boolean {
  return !q && (opts.padFeedForward ?? true);
}

function quantizeSettings(opts: LoadOptions): QuantizeSettings | null {
  const q = parseQuantize(opts.quantize);
  if (q && opts.trainable) throw new Error('quantized weights are frozen: quantize cannot be combined with a trainable LM (--tune-lm, fine-tuning)');
  return q;
}

/** Which of `specs` are quantized (linear weights), with their layouts and shapes. */
function quantizedSpecs(family: ModelFamily<unknown>, config: unknown, specs: WeightSpec[]): Map<string, { layout: WeightLayout; shape: number[] }> {
  const layouts = linearWeights(family.functions(config), family.describe(config), specs);
  const out = new Map<string, { layout: WeightLayout; shape: number[] }>();
  for (const s of specs) {
    const layout = layouts.get(s.name);
    if (layout) out.set(s.name, { layout, shape: s.shape });
  }
  return out;
}

/**
 * Loads a language model, one way: files → config → weights → model.
 * - a Hub repository id (`org/name`, `org/name@revision`): resolved into the huggingface_hub cache first
 *   (src/hub), then read as the directory below;
 * - a Hugging Face directory: config.json (its `model_type` picks the family), model.safetensors or a sharded
 *   index (each tensor read from its file offsets), tokenizer.json (+ tokenizer_config.json and
 *   special_tokens_map.json);
 * - a llama2.c `.bin` checkpoint, or a directory holding one (and no config.json with a model_type).
 */
export async function loadModel(spec: string, opts: LoadOptions = {}): Promise<LanguageModel> {
  const dirOrFile = fs.existsSync(spec) ? spec : await resolveModel(spec, opts.hub);
  const configFile = path.join(dirOrFile, 'config.json');
  const isDir = fs.statSync(dirOrFile).isDirectory();
  const raw = isDir && fs.existsSync(configFile) ? readConfig(configFile) : null;
  if (!raw || raw.model_type === undefined) {
    const bin = llama2cCheckpointIn(dirOrFile);
    if (bin) return fromLlama2c(bin, opts);
    if (!isDir) throw new Error(`${dirOrFile}: expected a model directory (with config.json) or a llama2.c .bin checkpoint`);
    if (!raw) throw new Error(`${configFile}: not found (and no llama2.c .bin checkpoint in ${dirOrFile})`);
  }
  const family = familyFor(raw!.model_type, configFile);
  const config = family.parseConfig(raw!, configFile);
  const tokenizer = tokenizerIn(dirOrFile);
  const q = quantizeSettings(opts);
  const specs = family.weights(config);
  const stored = checkpoint(dirOrFile);
  const located = locateWeights(specs, stored, dirOrFile);
  let store: QuantizedStore | undefined;
  if (q) {
    const chosen = quantizedSpecs(family, config, specs);
    const files = [...new Set([...located.values()].map(([, t]) => t.file))].sort();
    const checksum = sourceChecksum(files, q.cacheDir ?? defaultQuantCache());
    store = QuantizedStore.open(checksum, dirOrFile, chosen, q, (name) => located.get(name)![1].read());
  }
  const params: ParamMap = new Map();
  const pad = padsFeedForward(opts, q);
  for (const spec of specs) {
    if (store?.entries.has(spec.name)) continue;
    params.set(spec.name, parameterFor(spec, located.get(spec.name)![1], pad));
  }
  return assemble(family, config, params, tokenizer, dirOrFile, opts, {}, store);
}

function fromLlama2c(file: string, opts: LoadOptions): LanguageModel {
  const q = quantizeSettings(opts);
  const ckpt = readLlama2c(file);
  const params: ParamMap = new Map();
  const specs = llamaFamily.weights(ckpt.config);
  let store: QuantizedStore | undefined;
  if (q) {
    const chosen = quantizedSpecs(llamaFamily as ModelFamily<unknown>, ckpt.config, specs);
    store = QuantizedStore.open(sourceChecksum([file], q.cacheDir ?? defaultQuantCache()), file, chosen, q, (name) => ckpt.weights.get(name)!);
  }
  const pad = padsFeedForward(opts, q);
  for (const spec of specs) {
    if (!store?.entries.has(spec.name)) params.set(spec.name, parameterFor(spec, ckpt.weights.get(spec.name)!, pad));
    ckpt.weights.delete(spec.name);
  }
  return assemble(llamaFamily as ModelFamily<unknown>, ckpt.config, params, ckpt.tokenizer, file, opts, {}, store);
}

/**
 * The float32 weights of the model at `spec` (a directory or llama2.c checkpoint), one tensor at a time in the
 * family's order (the order of a float load's `params`), without building a model; null when `spec` is not a
 * model on disk (a Hub id, a random model). What a quantized model's fingerprint is computed from.
 */
export function forEachFloatWeight(spec: string, visit: (name: string, shape: number[], data: Float32Array) => void): boolean {
  if (!fs.existsSync(spec)) return false;
  const configFile = path.join(spec, 'config.json');
  const isDir = fs.statSync(spec).isDirectory();
  const raw = isDir && fs.existsSync(configFile) ? readConfig(configFile) : null;
  if (!raw || raw.model_type === undefined) {
    const bin = llama2cCheckpointIn(spec);
    if (!bin) return false;
    const ckpt = readLlama2c(bin);
    for (const s of llamaFamily.weights(ckpt.config)) visit(s.name, s.shape, ckpt.weights.get(s.name)!);
    return true;
  }
  const family = familyFor(raw.model_type, configFile);
  const config = family.parseConfig(raw, configFile);
  const specs = family.weights(config);
  const located = locateWeights(specs, checkpoint(spec), spec);
  for (const s of specs) visit(s.name, s.shape, located.get(s.name)![1].read());
  return true;
}

function readConfig(file: string): Record<string, unknown> {
  let raw: unknown;
  try {
    raw = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (err) {
    throw new Error(`${file}: invalid JSON (${(err as Error).message.split('\n')[0]})`);
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new Error(`${file}: not a JSON object`);
  return raw as Record<string, unknown>;
}

function checkpoint(dir: string): Map<string, LazyTensor> {
  const hasSafetensors = ['model.safetensors', 'model.safetensors.index.json'].some((f) => fs.existsSync(path.join(dir, f)));
  if (!hasSafetensors && fs.existsSync(path.join(dir, 'pytorch_model.bin'))) {
    throw new Error(`${path.join(dir, 'model.safetensors')}: not found (pytorch_model.bin is not read: no pickle is ever loaded; convert it to safetensors)`);
  }
  return checkpointIndex(dir);
}

/** tokenizer.json, else a llama2.c tokenizer .bin. */
function tokenizerIn(dir: string): TextTokenizer {
  if (fs.existsSync(path.join(dir, 'tokenizer.json'))) return HfTokenizer.fromDir(dir);
  const bin = fs.readdirSync(dir).filter(isTokenizerBin).sort()[0];
  if (bin) return Llama2cTokenizer.fromFile(path.join(dir, bin));
  throw new Error(`${path.join(dir, 'tokenizer.json')}: tokenizer file not found`);
}

/** The random model of assemble.ts's `createRandomModel`, its linear weights quantized when `opts` ask for it. */
export function createRandomModel(
  modelType: string,
  overrides: Record<string, number | boolean | string>,
  seed: number,
  tokenizer?: TextTokenizer,
  opts: LoadOptions = {},
): LanguageModel {
  const q = quantizeSettings(opts);
  if (!q) return createRandomFloatModel(modelType, overrides, seed, tokenizer, opts);
  const { family, config, tok, specs } = randomModelShape(modelType, overrides, tokenizer);
  const params: ParamMap = new Map();
  let store: QuantizedStore;
  {
    // the values in order, one tensor at a time; the quantized ones are drawn only when the store is written
    const chosen = quantizedSpecs(family, config, specs);
    const recipe = JSON.stringify({ random: family.name, modelType, config, seed, generator: 1 });
    const checksum = crypto.createHash('sha256').update(recipe).digest('hex');
    // the store reads the quantized weights in spec order; the others drawn on the way wait in `pending`
    const pending = new Map<string, Float32Array>();
    let drawn = 0;
    const stream = randomStream(specs, seed);
    const take = (name: string, materialize: (s: WeightSpec) => boolean): Float32Array => {
      while (!pending.has(name)) {
        const spec = specs[drawn++]!;
        const v = stream(materialize(spec));
        if (v) pending.set(spec.name, v);
      }
      const v = pending.get(name)!;
      pending.delete(name);
      return v;
    };
    store = QuantizedStore.open(checksum, `random ${family.name} (seed ${seed})`, chosen, q, (name) => take(name, () => true));
    const quantized = store.entries;
    for (const s of specs) {
      if (!quantized.has(s.name)) params.set(s.name, new Parameter(s.name, s.shape, take(s.name, (x) => !quantized.has(x.name))));
    }
  }
  return assemble(family, config, params, tok, `random ${family.name} (seed ${seed})`, opts, randomFallbackIds(family, tok), store);
}
