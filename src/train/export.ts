import fs from 'node:fs';
import path from 'node:path';
import { readSafetensors, writeSafetensors } from '../engine/safetensors.js';
import type { LanguageModel } from '../models/model.js';
import { loadModel } from '../models/load.js';
import { numPseudo, parseTemplate } from '../prompt/template.js';
import type { HeadSpec } from '../prompt/heads.js';
import { UserError } from '../util/errors.js';
import { writeCheckpointDir, writeJsonAtomic } from './checkpoint.js';
import { readAdapterConfig, readPlacement, type Placement } from './files.js';
import { DEFAULT_LOOP, DEFAULT_OPTIM, PTuningSession, type RunConfig } from './session.js';

/** ptune's own note inside an exported adapter: where the virtual tokens go (PEFT itself ignores this file). */
type PtunePlacement = Placement;

const PLACEMENT_FILE = 'ptune_template.json';

/**
 * Writes the frozen prompt table as a Hugging Face PEFT P-tuning adapter: `adapter_config.json` and
 * `adapter_model.safetensors` holding the single tensor `prompt_embeddings` [num_virtual_tokens, token_dim]
 * (what PEFT saves in inference mode). PEFT places every virtual token before the input; ptune's template
 * placement is kept beside it in ptune_template.json so a ptune import restores it exactly.
 */
export async function exportPeft(session: PTuningSession, outDir: string, opts: WriteOptions = {}): Promise<void> {
  const table = await session.promptTable();
  if (!table) throw new UserError('the run has no pseudo tokens: nothing to export');
  const info = session.lm.info;
  const enc = session.encoder!.config;
  opts.beforeWrite?.();
  fs.mkdirSync(outDir, { recursive: true });
  // each file written atomically; adapter_config.json, which makes the folder an adapter, after the weights
  writeSafetensors(path.join(outDir, 'adapter_model.safetensors'), { prompt_embeddings: table }, { format: 'pt' });
  writeJsonAtomic(path.join(outDir, 'adapter_config.json'), {
    peft_type: 'P_TUNING',
    task_type: info.kind === 'causal' ? 'CAUSAL_LM' : 'SEQ_CLS',
    base_model_name_or_path: session.config.model,
    revision: null,
    inference_mode: true,
    num_virtual_tokens: table.shape[0],
    token_dim: table.shape[1],
    num_transformer_submodules: 1,
    num_attention_heads: info.numHeads,
    num_layers: info.numLayers,
    encoder_reparameterization_type: enc.type === 'mlp' ? 'MLP' : 'LSTM',
    encoder_hidden_size: enc.hiddenSize,
    encoder_num_layers: enc.lstmLayers,
    encoder_dropout: enc.dropout,
  });
  const placement: PtunePlacement = {
    template: session.config.template,
    ...(session.config.legacyBertOrder !== undefined && { legacyBertOrder: session.config.legacyBertOrder }),
    head: session.config.head,
    maxLength: session.config.maxLength,
  };
  writeJsonAtomic(path.join(outDir, PLACEMENT_FILE), placement);
}

export interface WriteOptions {
  /** called once everything has been read and checked, before the first file is written */
  beforeWrite?: () => void;
}

/** Writes just the prompt table (safetensors, `prompt_embeddings`) plus the run config needed to use it. */
export async function exportTable(session: PTuningSession, outDir: string, opts: WriteOptions = {}): Promise<void> {
  const table = await session.promptTable();
  if (!table) throw new UserError('the run has no pseudo tokens: nothing to export');
  opts.beforeWrite?.();
  fs.mkdirSync(outDir, { recursive: true });
  writeSafetensors(path.join(outDir, 'prompt_table.safetensors'), { prompt_embeddings: table });
  writeJsonAtomic(path.join(outDir, 'config.json'), session.config);
}

export interface ImportOptions extends WriteOptions {
  adapterDir: string;
  model: string;
  runDir: string;
  /** for adapters without ptune_template.json: the template after PEFT's prefix (e.g. `{text} It was [MASK] .`) */
  template?: string;
  head?: HeadSpec;
  maxLength?: number;
}

/**
 * Turns a PEFT P-tuning adapter into a ptune run (encoder type `embedding` holding the table) usable by
 * eval/predict. With ptune_template.json the original placement is restored; otherwise the virtual tokens go
 * before the whole input, as PEFT places them. Everything is checked against the model (`lm`, else loaded from
 * `model`) before the first file is written: the table's shape, the template, the head, the length.
 */
export async function importPeft(o: ImportOptions, lm?: LanguageModel): Promise<RunConfig> {
  const cfgFile = path.join(o.adapterDir, 'adapter_config.json');
  const weightsFile = path.join(o.adapterDir, 'adapter_model.safetensors');
  if (!fs.existsSync(cfgFile)) throw new UserError(`${cfgFile} not found`);
  if (!fs.existsSync(weightsFile)) throw new UserError(`${weightsFile} not found`);
  const cfg = readAdapterConfig(cfgFile);
  const table = readSafetensors(weightsFile).tensors.get('prompt_embeddings');
  if (!table) throw new UserError(`${weightsFile}: tensor "prompt_embeddings" is missing`);
  if (table.shape.length !== 2) throw new UserError(`${weightsFile}: prompt_embeddings has shape [${table.shape}], expected [num_virtual_tokens, token_dim]`);
  const n = table.shape[0]!;
  if (cfg.num_virtual_tokens !== undefined && cfg.num_virtual_tokens !== n) {
    throw new UserError(`${cfgFile}: num_virtual_tokens ${cfg.num_virtual_tokens} but prompt_embeddings has ${n} rows`);
  }
  if (cfg.token_dim !== undefined && cfg.token_dim !== table.shape[1]) {
    throw new UserError(`${cfgFile}: token_dim ${cfg.token_dim} but prompt_embeddings has ${table.shape[1]} columns`);
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
  const peftPrefix = placement ? 0 : n;
  if (placement && inTemplate !== n) {
    throw new UserError(`${placementFile}: template has ${inTemplate} pseudo tokens but the adapter has ${n}`);
  }
  if (!placement && inTemplate !== 0) throw new UserError(`--template must not contain [P] tokens: PEFT places all ${n} before the input`);
  const model = lm ?? (await loadModel(o.model));
  const config: RunConfig = {
    version: 1,
    model: o.model,
    template,
    ...(placement?.legacyBertOrder !== undefined && { legacyBertOrder: placement.legacyBertOrder }),
    head,
    encoder: { type: 'embedding', seed: 0 },
    maxLength: o.maxLength ?? placement?.maxLength ?? Math.min(128, model.info.maxPositions),
    skipTooLong: false,
    ...(peftPrefix ? { peftPrefix } : {}),
    loop: DEFAULT_LOOP,
    optim: DEFAULT_OPTIM,
  };

  // the run as eval will build it: the template must fit the model, the table the encoder
  const session = await PTuningSession.create(config, model).catch((e: unknown) => {
    if (!lm) model.dispose();
    throw e instanceof UserError ? new UserError(`${placement ? placementFile : o.adapterDir}: ${e.message}`) : e;
  });
  try {
    const want = session.encoder!.params.get('embedding.weight')!.shape;
    if (want.join(',') !== table.shape.join(',')) {
      throw new UserError(
        `${weightsFile}: prompt_embeddings has shape [${table.shape}], ${session.lm.info.source} needs [${want}] (virtual tokens × its embedding size)`,
      );
    }
  } finally {
    session.dispose({ keepLm: lm !== undefined });
  }

  o.beforeWrite?.();
  fs.mkdirSync(o.runDir, { recursive: true });
  // config.json, which makes the folder a run, after its checkpoint
  writeCheckpointDir(path.join(o.runDir, 'best'), (dir) => {
    writeSafetensors(path.join(dir, 'params.safetensors'), { 'encoder.embedding.weight': { shape: table.shape, data: table.data } });
    writeJsonAtomic(path.join(dir, 'state.json'), { importedFrom: path.resolve(o.adapterDir) });
  });
  writeJsonAtomic(path.join(o.runDir, 'config.json'), config);
  return config;
}
