import fs from 'node:fs';
import path from 'node:path';
import { checkpointIndex, type LazyTensor } from '../engine/safetensors.js';
import { Parameter, type ParamMap } from '../engine/tensor.js';
import { HfTokenizer } from '../tokenizers/hf.js';
import { Llama2cTokenizer } from '../tokenizers/llama2c.js';
import type { TextTokenizer } from '../tokenizers/tokenizer.js';
import { assemble, readWeights, type AssembleOptions } from './assemble.js';
import { familyFor } from './families.js';
import { llamaFamily } from './llama.js';
import { isTokenizerBin, llama2cCheckpointIn, readLlama2c } from './llama2c.js';
import type { ModelFamily } from './lm.js';
import type { LanguageModel } from './model.js';
import { resolveModel, type ResolveOptions } from '../hub/index.js';

export { createRandomModel, loadModelFrom, specialIds, specialIdsOf } from './assemble.js';

export interface LoadOptions extends AssembleOptions {
  /** how a Hub repository id is resolved (revision, cache, endpoint, token, offline, progress) */
  hub?: ResolveOptions;
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
  const params = readWeights(family.weights(config), checkpoint(dirOrFile), dirOrFile);
  return assemble(family, config, params, tokenizer, dirOrFile, opts);
}

function fromLlama2c(file: string, opts: LoadOptions): LanguageModel {
  const ckpt = readLlama2c(file);
  const params: ParamMap = new Map();
  for (const spec of llamaFamily.weights(ckpt.config)) params.set(spec.name, new Parameter(spec.name, spec.shape, ckpt.weights.get(spec.name)!));
  return assemble(llamaFamily as ModelFamily<unknown>, ckpt.config, params, ckpt.tokenizer, file, opts);
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

