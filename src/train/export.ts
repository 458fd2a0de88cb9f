import fs from 'node:fs';
import path from 'node:path';
import { readSafetensors, writeSafetensors } from '../engine/safetensors.js';
import type { LanguageModel } from '../models/model.js';
import { loadModel } from '../models/load.js';
import { numPseudo, parseTemplate } from '../prompt/template.js';
import type { HeadSpec } from '../prompt/heads.js';
import { UserError } from '../util/errors.js';
import { writeCheckpointDir, writeFileAtomic, writeJsonAtomic } from './checkpoint.js';
import { readAdapterConfig, readPlacement } from './files.js';
import { HEAD_FILE, peftAdapter, PLACEMENT_FILE, type PeftCompatibility } from './peft.js';
import { DEFAULT_LOOP, DEFAULT_OPTIM, PTuningSession, type RunConfig } from './session.js';

export { peftCompatibility, type PeftCompatibility, type PeftType } from './peft.js';

/**
 * Writes the frozen prompt as a Hugging Face PEFT adapter (peft.ts: `peftAdapterFiles`): `adapter_config.json`
 * and `adapter_model.safetensors` holding `prompt_embeddings` — P_TUNING / PROMPT_TUNING: [N, token_dim] input
 * rows; PREFIX_TUNING: [N, layers · 2 · kvDim] keys and values. ptune's rendering (template, head, placement)
 * goes beside it in ptune_template.json, the linear head in ptune_head.safetensors, and README.md says what PEFT
 * reproduces. Each file is written atomically, adapter_config.json (which makes the folder an adapter) last.
 */
export async function exportPeft(session: PTuningSession, outDir: string, opts: WriteOptions = {}): Promise<PeftCompatibility> {
  const { files, compat } = await peftAdapter(session);
  opts.beforeWrite?.();
  fs.mkdirSync(outDir, { recursive: true });
  for (const [name, bytes] of Object.entries(files)) writeFileAtomic(path.join(outDir, name), bytes);
  return compat;
}

export interface WriteOptions {
  /** called once everything has been read and checked, before the first file is written */
  beforeWrite?: () => void;
}

/** Writes just the prompt table (safetensors, `prompt_embeddings`) plus the run config needed to use it. */
export async function exportTable(session: PTuningSession, outDir: string, opts: WriteOptions = {}): Promise<void> {
  const table = await session.promptTable();
  if (!table) throw new UserError('the run has no pseudo tokens or deep prompts: nothing to export');
  opts.beforeWrite?.();
  fs.mkdirSync(outDir, { recursive: true });
  writeSafetensors(path.join(outDir, 'prompt_table.safetensors'), { prompt_embeddings: table });
  writeJsonAtomic(path.join(outDir, 'config.json'), session.config);
}

export interface ImportOptions extends WriteOptions {
  adapterDir: string;
  model: string;
  runDir: string;
  /** for adapters without ptune_template.json: the template after PEFT's virtual tokens (e.g. `{text} It was [MASK] .`) */
  template?: string;
  head?: HeadSpec;
  maxLength?: number;
}

/** A PEFT adapter read into memory: the run configuration that uses it, its parameters and its table. */
export interface PeftAdapter {
  config: RunConfig;
  /** the run's trained parameters by name (`encoder.embedding.weight`, `prefix.embedding.weight`, `head.*`) */
  params: Record<string, { shape: number[]; data: Float32Array }>;
  /** prompt_embeddings as stored */
  table: { shape: number[]; data: Float32Array };
  /** adapter_config.json as written */
  adapterConfig: Record<string, unknown>;
  weightsFile: string;
  headFile: string;
  /** ptune_template.json when the adapter has one */
  placementFile: string | null;
}

/**
 * Reads a PEFT adapter (P_TUNING, PROMPT_TUNING or PREFIX_TUNING, inference mode): with ptune_template.json the
 * original rendering is restored; otherwise the virtual tokens go before the whole input, as PEFT places them, and
 * `template` / `head` must be given. `maxPositions`: the model's, the default length's cap.
 */
export function readPeftAdapter(o: Omit<ImportOptions, 'runDir'>, maxPositions = Infinity): PeftAdapter {
  const cfgFile = path.join(o.adapterDir, 'adapter_config.json');
  const weightsFile = path.join(o.adapterDir, 'adapter_model.safetensors');
  if (!fs.existsSync(cfgFile)) throw new UserError(`${cfgFile} not found`);
  if (!fs.existsSync(weightsFile)) throw new UserError(`${weightsFile} not found`);
  const cfg = readAdapterConfig(cfgFile);
  const peftType = cfg.peft_type;
  const table = readSafetensors(weightsFile).tensors.get('prompt_embeddings');
  if (!table) throw new UserError(`${weightsFile}: tensor "prompt_embeddings" is missing (an adapter saved in training mode? PEFT saves the table in inference mode)`);
  if (table.shape.length !== 2) throw new UserError(`${weightsFile}: prompt_embeddings has shape [${table.shape}], expected [num_virtual_tokens, width]`);
  const n = table.shape[0]!;
  if (cfg.num_virtual_tokens !== undefined && cfg.num_virtual_tokens !== n) {
    throw new UserError(`${cfgFile}: num_virtual_tokens ${cfg.num_virtual_tokens} but prompt_embeddings has ${n} rows`);
  }
  const placementFile = path.join(o.adapterDir, PLACEMENT_FILE);
  const placement = fs.existsSync(placementFile) ? readPlacement(placementFile) : null;
  const template = placement?.template ?? o.template;
  const head = o.head ?? placement?.head;
  if (!template) throw new UserError(`${o.adapterDir} has no ${PLACEMENT_FILE}: give --template (the input after PEFT's virtual tokens)`);
  if (!head) throw new UserError(`${o.adapterDir} has no ${PLACEMENT_FILE}: give --label-field/--verbalizer or --answer-field`);
  let inTemplate: number;
  try {
    inTemplate = numPseudo(parseTemplate(template, { legacyBertOrder: placement?.legacyBertOrder }));
  } catch (e) {
    throw new UserError(`${placement ? placementFile : '--template'}: ${(e as Error).message}`);
  }
  const base = {
    version: 1 as const, model: o.model, template,
    ...(placement?.legacyBertOrder !== undefined && { legacyBertOrder: placement.legacyBertOrder }),
    head, encoder: { type: 'embedding' as const, seed: 0 },
    maxLength: o.maxLength ?? placement?.maxLength ?? Math.min(128, maxPositions), skipTooLong: false,
    loop: DEFAULT_LOOP, optim: DEFAULT_OPTIM,
  };
  let config: RunConfig;
  let params: Record<string, { shape: number[]; data: Float32Array }>;
  if (peftType === 'PREFIX_TUNING') {
    if (inTemplate !== 0) throw new UserError(`--template must not contain [P] tokens: a PREFIX_TUNING adapter's prompt is in the keys and values`);
    config = { ...base, method: 'prefix', prefix: { numVirtualTokens: n, projection: false } };
    params = { 'prefix.embedding.weight': { shape: table.shape, data: table.data as Float32Array } };
  } else if (peftType === 'PROMPT_TUNING' || placement?.method === 'prompt-tuning') {
    if (inTemplate !== 0) throw new UserError(`--template must not contain [P] tokens: PEFT places all ${n} before the input`);
    config = { ...base, method: 'prompt-tuning', promptTuning: { numVirtualTokens: n, initFromWords: placement?.promptTuning?.initFromWords } };
    params = { 'encoder.embedding.weight': { shape: table.shape, data: table.data as Float32Array } };
  } else {
    if (!placement && inTemplate !== 0) throw new UserError(`--template must not contain [P] tokens: PEFT places all ${n} before the input`);
    const peftPrefix = placement ? placement.peftPrefix : n;
    if (inTemplate + (peftPrefix ?? 0) !== n) {
      throw new UserError(`${placementFile}: the template has ${inTemplate} pseudo tokens${peftPrefix ? ` and ${peftPrefix} go first` : ''}, but the adapter has ${n}`);
    }
    config = { ...base, ...(peftPrefix ? { peftPrefix } : {}), ...(placement?.peftLayout ? { peftLayout: true } : {}) };
    params = { 'encoder.embedding.weight': { shape: table.shape, data: table.data as Float32Array } };
  }
  const headFile = path.join(o.adapterDir, HEAD_FILE);
  if (head.kind === 'linear') {
    if (!fs.existsSync(headFile)) throw new UserError(`${headFile} not found: a linear head's weights are needed`);
    for (const [k, t] of readSafetensors(headFile).tensors) params[`head.${k}`] = { shape: t.shape, data: t.data as Float32Array };
  }
  return { config, params, table: { shape: table.shape, data: table.data as Float32Array }, adapterConfig: cfg, weightsFile, headFile, placementFile: placement ? placementFile : null };
}

/**
 * Turns a PEFT adapter into a ptune run usable by eval/predict/serve (see `readPeftAdapter`). Everything is
 * checked against the model (`lm`, else loaded from `model`) before the first file is written: the table's
 * shape, the template, the head, the length.
 */
export async function importPeft(o: ImportOptions, lm?: LanguageModel): Promise<RunConfig> {
  const model = lm ?? (await loadModel(o.model));
  let read: PeftAdapter;
  try {
    read = readPeftAdapter(o, model.info.maxPositions);
  } catch (e) {
    if (!lm) model.dispose();
    throw e;
  }
  const { config, params, weightsFile, headFile, placementFile } = read;
  // the run as eval will build it: the template must fit the model, the tables their parameters
  const session = await PTuningSession.create(config, model).catch((e: unknown) => {
    if (!lm) model.dispose();
    throw e instanceof UserError ? new UserError(`${placementFile ?? o.adapterDir}: ${e.message}`) : e;
  });
  try {
    const want = new Map<string, readonly number[]>([
      ...[...(session.encoder?.params ?? [])].map(([k, p]) => [`encoder.${k}`, p.shape] as const),
      ...[...(session.prefix?.params ?? [])].map(([k, p]) => [`prefix.${k}`, p.shape] as const),
      ...[...(session.head.params ?? [])].map(([k, p]) => [`head.${k}`, p.shape] as const),
    ]);
    for (const [name, t] of Object.entries(params)) {
      const shape = want.get(name);
      if (!shape || shape.join(',') !== t.shape.join(',')) {
        const file = name.startsWith('head.') ? headFile : weightsFile;
        throw new UserError(`${file}: ${name.startsWith('head.') ? name.slice(5) : 'prompt_embeddings'} has shape [${t.shape}], ${session.lm.info.source} needs [${shape ?? '(none)'}]`);
      }
    }
  } finally {
    session.dispose({ keepLm: lm !== undefined });
  }

  o.beforeWrite?.();
  fs.mkdirSync(o.runDir, { recursive: true });
  // config.json, which makes the folder a run, after its checkpoint
  writeCheckpointDir(path.join(o.runDir, 'best'), (dir) => {
    writeSafetensors(path.join(dir, 'params.safetensors'), params);
    writeJsonAtomic(path.join(dir, 'state.json'), { importedFrom: path.resolve(o.adapterDir) });
  });
  writeJsonAtomic(path.join(o.runDir, 'config.json'), config);
  return config;
}
