import fs from 'node:fs';
import path from 'node:path';
import { readSafetensors, writeSafetensors } from '../engine/safetensors.js';
import { numPseudo, parseTemplate } from '../prompt/template.js';
import type { HeadSpec } from '../prompt/heads.js';
import { UserError } from '../util/errors.js';
import { writeCheckpointDir, writeFileAtomic, writeJsonAtomic } from './checkpoint.js';
import { peftAdapterFiles, PLACEMENT_FILE, type PtunePlacement } from './peft.js';
import { DEFAULT_LOOP, DEFAULT_OPTIM, PTuningSession, type RunConfig } from './session.js';

/**
 * Writes the frozen prompt table as a Hugging Face PEFT P-tuning adapter (peft.ts: `peftAdapterFiles`):
 * `adapter_config.json`, `adapter_model.safetensors` and ptune's placement note ptune_template.json.
 */
export async function exportPeft(session: PTuningSession, outDir: string): Promise<void> {
  const files = await peftAdapterFiles(session);
  fs.mkdirSync(outDir, { recursive: true });
  for (const [name, bytes] of Object.entries(files)) writeFileAtomic(path.join(outDir, name), bytes);
}

/** Writes just the prompt table (safetensors, `prompt_embeddings`) plus the run config needed to use it. */
export async function exportTable(session: PTuningSession, outDir: string): Promise<void> {
  const table = await session.promptTable();
  if (!table) throw new UserError('the run has no pseudo tokens: nothing to export');
  fs.mkdirSync(outDir, { recursive: true });
  writeSafetensors(path.join(outDir, 'prompt_table.safetensors'), { prompt_embeddings: table });
  writeJsonAtomic(path.join(outDir, 'config.json'), session.config);
}

export interface ImportOptions {
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
 * before the whole input, as PEFT places them.
 */
export function importPeft(o: ImportOptions): RunConfig {
  const cfgFile = path.join(o.adapterDir, 'adapter_config.json');
  const weightsFile = path.join(o.adapterDir, 'adapter_model.safetensors');
  if (!fs.existsSync(cfgFile)) throw new UserError(`${cfgFile} not found`);
  if (!fs.existsSync(weightsFile)) throw new UserError(`${weightsFile} not found`);
  const cfg = JSON.parse(fs.readFileSync(cfgFile, 'utf8')) as Record<string, unknown>;
  if (cfg.peft_type !== 'P_TUNING') throw new UserError(`${cfgFile}: peft_type is ${JSON.stringify(cfg.peft_type)}, expected "P_TUNING"`);
  const table = readSafetensors(weightsFile).tensors.get('prompt_embeddings');
  if (!table) throw new UserError(`${weightsFile}: tensor "prompt_embeddings" is missing`);
  const n = table.shape[0]!;
  if (cfg.num_virtual_tokens !== undefined && cfg.num_virtual_tokens !== n) {
    throw new UserError(`${cfgFile}: num_virtual_tokens ${cfg.num_virtual_tokens} but prompt_embeddings has ${n} rows`);
  }
  const placementFile = path.join(o.adapterDir, PLACEMENT_FILE);
  const placement = fs.existsSync(placementFile)
    ? (JSON.parse(fs.readFileSync(placementFile, 'utf8')) as PtunePlacement)
    : null;
  const template = placement?.template ?? o.template;
  const head = o.head ?? placement?.head;
  if (!template) throw new UserError(`${o.adapterDir} has no ${PLACEMENT_FILE}: give --template (the input after PEFT's virtual tokens)`);
  if (!head) throw new UserError(`${o.adapterDir} has no ${PLACEMENT_FILE}: give --label-field/--verbalizer or --answer-field`);
  const inTemplate = numPseudo(parseTemplate(template, { legacyBertOrder: placement?.legacyBertOrder }));
  const peftPrefix = placement ? 0 : n;
  if (placement && inTemplate !== n) {
    throw new UserError(`${placementFile}: template has ${inTemplate} pseudo tokens but the adapter has ${n}`);
  }
  if (!placement && inTemplate !== 0) throw new UserError(`--template must not contain [P] tokens: PEFT places all ${n} before the input`);
  const config: RunConfig = {
    version: 1,
    model: o.model,
    template,
    legacyBertOrder: placement?.legacyBertOrder,
    head,
    encoder: { type: 'embedding', seed: 0 },
    maxLength: o.maxLength ?? placement?.maxLength ?? 128,
    skipTooLong: false,
    ...(peftPrefix ? { peftPrefix } : {}),
    loop: DEFAULT_LOOP,
    optim: DEFAULT_OPTIM,
  };
  fs.mkdirSync(o.runDir, { recursive: true });
  writeJsonAtomic(path.join(o.runDir, 'config.json'), config);
  writeCheckpointDir(path.join(o.runDir, 'best'), (dir) => {
    writeSafetensors(path.join(dir, 'params.safetensors'), { 'encoder.embedding.weight': { shape: table.shape, data: table.data } });
    writeJsonAtomic(path.join(dir, 'state.json'), { importedFrom: path.resolve(o.adapterDir) });
  });
  return config;
}
