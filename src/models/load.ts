import fs from 'node:fs';
import path from 'node:path';
import { loadCheckpointTensors } from '../engine/safetensors.js';
import { HfTokenizer } from '../tokenizers/hf.js';
import type { TextTokenizer } from '../tokenizers/tokenizer.js';
import { BERT_BASE, BertLM, bertAliases, bertConfigFromHf, bertParamSpecs, type BertConfig } from './bert.js';
import { randomTensors, SyntheticTokenizer, takeCheckpointTensors } from './common.js';
import { GPT2_SMALL, Gpt2LM, gpt2Aliases, gpt2ConfigFromHf, gpt2ParamSpecs, type Gpt2Config } from './gpt2.js';
import type { LanguageModel, SpecialIds } from './lm.js';
import { loadLlama } from './llama.js';
import { OrtLM } from './ort.js';
import { ortAvailable } from '../engine/onnx/session.js';

export interface LoadOptions {
  /** make the LM weights trainable tf.Variables (full fine-tuning); default false (frozen LM) */
  trainable?: boolean;
  /**
   * where the LM forward and its gradient run: 'ort' (ONNX Runtime graphs compiled from the model code) or
   * 'tfjs' (the reference). Default: `PTUNE_ENGINE`, else 'ort' when onnxruntime-node loads, else 'tfjs'.
   */
  engine?: 'tfjs' | 'ort';
}

/** The engine `opts` asks for, resolved against the environment and onnxruntime-node's availability. */
export function resolveEngine(opts: LoadOptions = {}): 'tfjs' | 'ort' {
  const asked = opts.engine ?? process.env.PTUNE_ENGINE;
  if (asked !== undefined && asked !== 'tfjs' && asked !== 'ort') {
    throw new Error(`engine: expected "tfjs" or "ort", got ${JSON.stringify(asked)}`);
  }
  if (asked === 'ort' && !ortAvailable()) throw new Error('engine "ort": onnxruntime-node cannot be loaded');
  return asked ?? (ortAvailable() ? 'ort' : 'tfjs');
}

const SUPPORTED = 'bert, roberta, gpt2, llama';

/**
 * Loads a language model from
 * - a Hugging Face directory (config.json + model.safetensors or a sharded index + tokenizer.json) of
 *   model_type bert, roberta, gpt2 or llama;
 * - a llama2.c `.bin` checkpoint, or a directory holding one (with a config.json without model_type, or none).
 * The returned model runs on `opts.engine` (see LoadOptions). Call initEngine() first.
 */
export async function loadModel(dirOrFile: string, opts: LoadOptions = {}): Promise<LanguageModel> {
  const engine = resolveEngine(opts);
  const lm = await loadTfjsModel(dirOrFile, opts);
  return engine === 'ort' ? new OrtLM(lm) : lm;
}

async function loadTfjsModel(dirOrFile: string, opts: LoadOptions): Promise<LanguageModel> {
  if (!fs.existsSync(dirOrFile)) throw new Error(`${dirOrFile}: no such file or directory`);
  if (fs.statSync(dirOrFile).isFile()) {
    if (dirOrFile.endsWith('.bin')) return loadLlama(dirOrFile, opts);
    throw new Error(`${dirOrFile}: expected a model directory (with config.json) or a llama2.c .bin checkpoint`);
  }
  const configFile = path.join(dirOrFile, 'config.json');
  if (!fs.existsSync(configFile)) {
    if (hasLlama2cCheckpoint(dirOrFile)) return loadLlama(dirOrFile, opts);
    throw new Error(`${configFile}: not found (and no llama2.c .bin checkpoint in ${dirOrFile})`);
  }
  const raw = readConfig(configFile);
  switch (raw.model_type) {
    case 'bert':
    case 'roberta':
      return loadBert(dirOrFile, bertConfigFromHf(raw, configFile), opts);
    case 'gpt2':
      return loadGpt2(dirOrFile, raw, gpt2ConfigFromHf(raw, configFile), opts);
    case 'llama':
      return loadLlama(dirOrFile, opts);
    case undefined:
      if (hasLlama2cCheckpoint(dirOrFile)) return loadLlama(dirOrFile, opts);
      throw new Error(`${configFile}: no model_type (expected one of ${SUPPORTED}) and no llama2.c .bin checkpoint beside it`);
    default:
      throw new Error(`${configFile}: unsupported model_type ${JSON.stringify(raw.model_type)} (supported: ${SUPPORTED})`);
  }
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

function hasLlama2cCheckpoint(dir: string): boolean {
  return fs.readdirSync(dir).some((f) => f.endsWith('.bin') && !/^tok.*\.bin$/i.test(f) && f !== 'pytorch_model.bin');
}

/** The checkpoint's tensors and the file that lists them (model.safetensors or the shard index). */
function checkpointTensors(dir: string): { stored: ReturnType<typeof loadCheckpointTensors>; where: string } {
  const single = path.join(dir, 'model.safetensors');
  const index = path.join(dir, 'model.safetensors.index.json');
  const hasSafetensors = fs.existsSync(single) || fs.existsSync(index);
  if (!hasSafetensors && fs.existsSync(path.join(dir, 'pytorch_model.bin'))) {
    throw new Error(`${single}: not found (pytorch_model.bin is not supported; convert it to safetensors)`);
  }
  return { stored: loadCheckpointTensors(dir), where: fs.existsSync(single) ? single : index };
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

async function loadBert(dir: string, cfg: BertConfig, opts: LoadOptions): Promise<LanguageModel> {
  const tokenizer = HfTokenizer.fromDir(dir);
  const { stored, where } = checkpointTensors(dir);
  const values = takeCheckpointTensors(bertParamSpecs(cfg), stored, where, bertAliases);
  const special: SpecialIds = { ...tokenizer.special, pad: tokenizer.special.pad ?? cfg.padTokenId };
  return new BertLM(cfg, values, tokenizer, { source: dir, special, trainable: opts.trainable });
}

async function loadGpt2(dir: string, raw: Record<string, unknown>, cfg: Gpt2Config, opts: LoadOptions): Promise<LanguageModel> {
  const tokenizer = HfTokenizer.fromDir(dir);
  const { stored, where } = checkpointTensors(dir);
  const values = takeCheckpointTensors(gpt2ParamSpecs(cfg), stored, where, gpt2Aliases);
  const id = (v: unknown) => (typeof v === 'number' ? v : undefined);
  const bos = id(raw.bos_token_id) ?? tokenizer.special.bos;
  const eos = id(raw.eos_token_id) ?? tokenizer.special.eos;
  const pad = id(raw.pad_token_id) ?? tokenizer.special.pad ?? eos ?? 0;
  const special: SpecialIds = { ...tokenizer.special, pad, ...(bos !== undefined && { bos }), ...(eos !== undefined && { eos }) };
  return new Gpt2LM(cfg, values, tokenizer, { source: dir, special, trainable: opts.trainable });
}

/**
 * A randomly initialised BERT or GPT-2 (seeded, deterministic) for tests and benchmarks. Unset config fields
 * default to BERT-base / GPT-2 small; the vocabulary defaults to the tokenizer's size. Without a tokenizer, a
 * SyntheticTokenizer (`[PAD]` 0, `[UNK]` 1, `[CLS]` 2, `[SEP]` 3, `[MASK]` 4, then `w5`...) is used.
 * The model is always the tfjs one (`opts.engine` is not consulted): wrap it in `new OrtLM(model)` for ORT.
 */
export function createRandomModel(
  family: 'bert',
  cfg: Partial<BertConfig>,
  seed: number,
  tokenizer?: TextTokenizer,
  opts?: LoadOptions,
): BertLM;
export function createRandomModel(
  family: 'gpt2',
  cfg: Partial<Gpt2Config>,
  seed: number,
  tokenizer?: TextTokenizer,
  opts?: LoadOptions,
): Gpt2LM;
export function createRandomModel(
  family: 'bert' | 'gpt2',
  cfg: Partial<BertConfig> | Partial<Gpt2Config>,
  seed: number,
  tokenizer?: TextTokenizer,
  opts?: LoadOptions,
): LanguageModel;
export function createRandomModel(
  family: 'bert' | 'gpt2',
  cfg: Partial<BertConfig> | Partial<Gpt2Config>,
  seed: number,
  tokenizer?: TextTokenizer,
  opts: LoadOptions = {},
): LanguageModel {
  const base = family === 'bert' ? BERT_BASE : GPT2_SMALL;
  const vocabSize = cfg.vocabSize ?? tokenizer?.vocabSize ?? base.vocabSize;
  const tok = tokenizer ?? new SyntheticTokenizer(vocabSize);
  const known = specialIdsOf(tok);
  const source = `random ${family} (seed ${seed})`;
  const trainable = opts.trainable ?? false;
  if (family === 'bert') {
    const full: BertConfig = { ...BERT_BASE, ...(cfg as Partial<BertConfig>), vocabSize };
    const special: SpecialIds = { ...known, pad: known.pad ?? full.padTokenId };
    return new BertLM(full, randomTensors(bertParamSpecs(full), seed), tok, { source, special, trainable });
  }
  const full: Gpt2Config = { ...GPT2_SMALL, ...(cfg as Partial<Gpt2Config>), vocabSize };
  const bos = known.bos ?? known.cls;
  const eos = known.eos ?? known.sep;
  const special: SpecialIds = { ...known, pad: known.pad ?? eos ?? 0, ...(bos !== undefined && { bos }), ...(eos !== undefined && { eos }) };
  return new Gpt2LM(full, randomTensors(gpt2ParamSpecs(full), seed), tok, { source, special, trainable });
}
