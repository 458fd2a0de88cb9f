import { safetensorsIndex, type LazyTensor } from '../engine/safetensors-format.js';
import type { ParamMap } from '../engine/tensor.js';
import { readJson, where, type FileSource } from '../io/files.js';
import { HfTokenizer } from '../tokenizers/hf.js';
import type { TextTokenizer } from '../tokenizers/tokenizer.js';
import { parameterFor, randomStream, SyntheticTokenizer, type WeightSpec } from './common.js';
import { familyFor } from './families.js';
import type { ModelFamily, SpecialIds } from './lm.js';
import { LanguageModel } from './model.js';
import type { QuantizedStore } from './quantize.js';

/**
 * A model assembled from its parts — config → weights → model — without a file system: load.ts reads them
 * from disk (and the Hub), `loadModelFrom` from any FileSource (a URL, files picked in a page).
 */

export interface AssembleOptions {
  /** the LM's weights train (joint tuning, fine-tuning); default false (frozen LM) */
  trainable?: boolean;
  /**
   * hold feed-forward inner widths that are multiples of 1,024 at `hostWidth` (zero-padded: the same values,
   * faster native matrix products). Default true for weights read from disk or drawn at random; false for
   * `loadModelFrom`, whose F32 weights stay views of the source's bytes (padding would copy them). Checkpoints
   * ptune writes keep the stored shapes either way.
   */
  padFeedForward?: boolean;
}

/**
 * A Hugging Face model directory from a FileSource: config.json (its `model_type` picks the family),
 * tokenizer.json (+ tokenizer_config.json, special_tokens_map.json), model.safetensors or a sharded index.
 * Each safetensors file is read whole, then each tensor is checked against config.json as from disk.
 */
export async function loadModelFrom(source: FileSource, opts: AssembleOptions = {}): Promise<LanguageModel> {
  const configFile = where(source, 'config.json');
  const raw = await readJson(source, 'config.json');
  if (raw === null) throw new Error(`${configFile}: not found: not a Hugging Face model directory (config.json, tokenizer.json, model.safetensors)`);
  if (typeof raw !== 'object' || Array.isArray(raw)) throw new Error(`${configFile}: not a JSON object`);
  const json = raw as Record<string, unknown>;
  if (json.model_type === undefined) throw new Error(`${configFile}: no "model_type": not a Hugging Face model config`);
  const family = familyFor(json.model_type, configFile);
  const config = family.parseConfig(json, configFile);
  const tokenizer = await HfTokenizer.fromSource(source);
  const stored = await checkpointFrom(source);
  const params = readWeights(family.weights(config), stored, source.name, opts.padFeedForward ?? false);
  return assemble(family, config, params, tokenizer, source.name, opts);
}

/** model.safetensors, or the shards model.safetensors.index.json lists, as lazily decoded tensors. */
async function checkpointFrom(source: FileSource): Promise<Map<string, LazyTensor>> {
  const single = await source.read('model.safetensors');
  if (single) return safetensorsIndex(single, where(source, 'model.safetensors')).tensors;
  const indexFile = where(source, 'model.safetensors.index.json');
  const index = (await readJson(source, 'model.safetensors.index.json')) as { weight_map?: unknown } | null;
  if (index === null) throw new Error(`${source.name}: no model.safetensors or model.safetensors.index.json`);
  const weightMap = index.weight_map;
  if (typeof weightMap !== 'object' || weightMap === null) throw new Error(`${indexFile}: weight_map missing or not an object`);
  const out = new Map<string, LazyTensor>();
  const shards = new Map<string, string[]>();
  for (const [name, shard] of Object.entries(weightMap)) {
    if (typeof shard !== 'string') throw new Error(`${indexFile}: weight_map["${name}"] is not a file name`);
    shards.set(shard, [...(shards.get(shard) ?? []), name]);
  }
  for (const [shard, names] of shards) {
    const bytes = await source.read(shard);
    if (!bytes) throw new Error(`${where(source, shard)}: not found (listed in model.safetensors.index.json)`);
    const tensors = safetensorsIndex(bytes, where(source, shard)).tensors;
    for (const name of names) {
      const t = tensors.get(name);
      if (!t) throw new Error(`${where(source, shard)}: tensor "${name}" listed in model.safetensors.index.json is not in the shard`);
      out.set(name, t);
    }
  }
  return out;
}

export function assemble(
  family: ModelFamily<unknown>, config: unknown, params: ParamMap, tokenizer: TextTokenizer, source: string, opts: AssembleOptions,
  fallback: Partial<SpecialIds> = {}, quantized?: QuantizedStore,
): LanguageModel {
  const vocab = family.describe(config).vocabSize;
  if (tokenizer.vocabSize > vocab) throw new Error(`${source}: tokenizer has ${tokenizer.vocabSize} tokens, model vocabulary only ${vocab}`);
  const special = specialIds(tokenizer, { ...fallback, ...(family.specialIds?.(config) ?? {}) });
  const lm = new LanguageModel(family, config, params, tokenizer, { source, special, ...(quantized && { quantized }) });
  if (opts.trainable) lm.setTrainable(true);
  return lm;
}

/** Each weight read from its file (aliases allowed), shape-checked, as a parameter (see `parameterFor`). */
export function readWeights(specs: WeightSpec[], stored: Map<string, LazyTensor>, dir: string, pad: boolean): ParamMap {
  const located = locateWeights(specs, stored, dir);
  const params: ParamMap = new Map();
  for (const spec of specs) params.set(spec.name, parameterFor(spec, located.get(spec.name)![1], pad));
  return params;
}

/** Each weight's tensor in the checkpoint (aliases allowed), shape-checked; nothing is read yet. */
export function locateWeights(specs: WeightSpec[], stored: Map<string, LazyTensor>, dir: string): Map<string, [string, LazyTensor]> {
  const out = new Map<string, [string, LazyTensor]>();
  for (const spec of specs) {
    const found = [spec.name, ...(spec.aliases ?? [])].map((n) => [n, stored.get(n)] as const).find(([, t]) => t);
    if (!found && spec.missing) throw new Error(`${dir}: ${spec.missing}`);
    if (!found) throw new Error(`${dir}: checkpoint has no tensor "${spec.name}" (expected shape [${spec.shape.join(',')}])`);
    const [name, t] = found as [string, LazyTensor];
    if (t.shape.join(',') !== spec.shape.join(',')) {
      throw new Error(`${t.file}: tensor "${name}": expected shape [${spec.shape.join(',')}] from config.json, found [${t.shape.join(',')}]`);
    }
    out.set(spec.name, [name, t]);
  }
  return out;
}

/**
 * Special ids: those the tokenizer's files name win; config.json fills the gaps (bos/eos/pad); a pad id
 * falls back to eos, then 0 (padding is masked out, any id works).
 */
export function specialIds(tok: TextTokenizer, fromConfig: Partial<SpecialIds>): SpecialIds {
  const fromTok = specialIdsOf(tok);
  const merged = { ...fromConfig, ...fromTok };
  return { ...merged, pad: merged.pad ?? merged.eos ?? 0 };
}

/** Special ids a tokenizer knows: HfTokenizer's configured ones, else the usual token spellings. */
export function specialIdsOf(tok: TextTokenizer): Partial<SpecialIds> {
  if (tok instanceof HfTokenizer) return { ...tok.special };
  const out: Partial<SpecialIds> = {};
  const spellings: [keyof SpecialIds, string[]][] = [
    ['pad', ['[PAD]', '<pad>']],
    ['unk', ['[UNK]', '<unk>']],
    ['cls', ['[CLS]', '<s>']],
    ['sep', ['[SEP]', '</s>']],
    ['mask', ['[MASK]', '<mask>']],
    ['bos', ['<s>', '<|endoftext|>']],
    ['eos', ['</s>', '<|endoftext|>']],
  ];
  for (const [role, toks] of spellings) {
    const id = toks.map((t) => tok.tokenToId(t)).find((i) => i !== undefined);
    if (id !== undefined) out[role] = id;
  }
  return out;
}

/**
 * A model of `modelType` with random weights (seeded, deterministic), for tests and benchmarks: the family's
 * base size with `overrides`; the vocabulary defaults to the tokenizer's. Without a tokenizer a
 * SyntheticTokenizer is used (`[PAD]` 0, `[UNK]` 1, `[CLS]` 2, `[SEP]` 3, `[MASK]` 4, then `w5`, ...).
 */
export function createRandomModel(
  modelType: string,
  overrides: Record<string, number | boolean | string>,
  seed: number,
  tokenizer?: TextTokenizer,
  opts: AssembleOptions = {},
): LanguageModel {
  const { family, config, tok, specs } = randomModelShape(modelType, overrides, tokenizer);
  const next = randomStream(specs, seed);
  const pad = opts.padFeedForward ?? true;
  const source = { read: () => next(true)!, readInto: (into: Float32Array) => void next(true, into) };
  const params: ParamMap = new Map(specs.map((s) => [s.name, parameterFor(s, source, pad)]));
  return assemble(family, config, params, tok, `random ${family.name} (seed ${seed})`, opts, randomFallbackIds(family, tok));
}

/** What a random model of `modelType` is made of: its family, configuration, tokenizer and weight specs. */
export function randomModelShape(
  modelType: string,
  overrides: Record<string, number | boolean | string>,
  tokenizer?: TextTokenizer,
): { family: ModelFamily<unknown>; config: unknown; tok: TextTokenizer; specs: WeightSpec[] } {
  const family = familyFor(modelType, 'createRandomModel');
  if (!family.randomConfig) throw new Error(`createRandomModel: family ${family.name} has no random configuration`);
  const vocabSize = (overrides.vocabSize as number | undefined) ?? tokenizer?.vocabSize ?? 30522;
  const config = family.randomConfig(overrides, vocabSize, modelType);
  return { family, config, tok: tokenizer ?? new SyntheticTokenizer(vocabSize), specs: family.weights(config) };
}

/** A causal model whose tokenizer and config name no BOS / EOS starts and ends texts with [CLS] / [SEP]. */
export function randomFallbackIds(family: ModelFamily<unknown>, tok: TextTokenizer): Partial<SpecialIds> {
  const known = specialIdsOf(tok);
  const fallback: Partial<SpecialIds> = {};
  if (family.kind === 'causal' && known.cls !== undefined) fallback.bos = known.cls;
  if (family.kind === 'causal' && known.sep !== undefined) fallback.eos = known.sep;
  return fallback;
}
