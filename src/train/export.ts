import fs from 'node:fs';
import path from 'node:path';
import { readSafetensors, writeSafetensors } from '../engine/safetensors.js';
import type { LanguageModel } from '../models/model.js';
import { loadModel } from '../models/load.js';
import { numPseudo, parseTemplate } from '../prompt/template.js';
import type { HeadSpec } from '../prompt/heads.js';
import { UserError } from '../util/errors.js';
import { writeCheckpointDir, writeFileAtomic, writeJsonAtomic } from './checkpoint.js';
import { readAdapterConfig, readPlacement, type Placement } from './files.js';
import { DEFAULT_LOOP, DEFAULT_OPTIM, leadingPseudo, PTuningSession, type RunConfig } from './session.js';

/** ptune's own note inside an exported adapter: how ptune renders the input (PEFT itself ignores this file). */
type PtunePlacement = Placement;

const PLACEMENT_FILE = 'ptune_template.json';
const HEAD_FILE = 'ptune_head.safetensors';

export type PeftType = 'P_TUNING' | 'PREFIX_TUNING' | 'PROMPT_TUNING';

/** What Hugging Face PEFT computes from the adapter alone, compared with ptune. */
export interface PeftCompatibility {
  peftType: PeftType;
  taskType: 'CAUSAL_LM' | 'FEATURE_EXTRACTION';
  /** PEFT's model gives ptune's scores (at the answer position it says) */
  reproducible: boolean;
  /** where PEFT's output is read, or why it differs */
  notes: string[];
}

/** How the run maps onto PEFT, and what does not carry over. */
export function peftCompatibility(session: PTuningSession): PeftCompatibility {
  const c = session.config;
  const info = session.lm.info;
  const method = c.method ?? 'ptuning';
  const peftType: PeftType = method === 'prefix' ? 'PREFIX_TUNING' : method === 'prompt-tuning' ? 'PROMPT_TUNING' : 'P_TUNING';
  const notes: string[] = [];
  let reproducible = true;
  if (method === 'ptuning') {
    const pseudo = numPseudo(session.template);
    if (c.peftPrefix === undefined && !(c.peftLayout && leadingPseudo(session.template) === pseudo)) {
      reproducible = false;
      notes.push(
        leadingPseudo(session.template) === pseudo
          ? `the template's ${pseudo} pseudo tokens come after the start tokens (trained without --peft-layout); PEFT prepends them before everything`
          : `the template places pseudo tokens between words (${session.template.text}); PEFT can only prepend virtual tokens`,
      );
    }
  }
  if (method === 'prefix' && info.past?.transformers === false) {
    reproducible = false;
    notes.push(`transformers' ${info.family} takes no past keys and values: PEFT would run the model without the prefix, silently`);
  }
  if (c.optim.tuneLm) {
    reproducible = false;
    notes.push('the LM was tuned jointly: the adapter holds only the prompt, PEFT would run it on the original weights');
  }
  if (c.head.kind === 'linear') {
    reproducible = false;
    notes.push(`the linear head (${HEAD_FILE}) has no PEFT counterpart (SEQ_CLS adds the model's own pooler and classifier)`);
  }
  const taskType = info.kind === 'causal' ? 'CAUSAL_LM' : 'FEATURE_EXTRACTION';
  const shift = method === 'prefix' ? 0 : session.placedFirst;
  if (info.kind === 'masked') {
    notes.push(`masked LM: PEFT has no masked-LM task type; load with task_type FEATURE_EXTRACTION on the *ForMaskedLM model and read the logits at the [MASK] position${shift ? ` + ${shift}` : ''}`);
  } else {
    notes.push(`causal LM: the next-token logits at the last input position${shift ? ` + ${shift}` : ''} of PEFT's output`);
  }
  if (c.head.kind === 'label') notes.push('the verbalizer (label words → classes) is applied by ptune; PEFT returns vocabulary logits');
  return { peftType, taskType, reproducible, notes };
}

function adapterConfig(session: PTuningSession, compat: PeftCompatibility, table: { shape: number[] }): Record<string, unknown> {
  const info = session.lm.info;
  const c = session.config;
  const common = {
    peft_type: compat.peftType,
    task_type: compat.taskType,
    base_model_name_or_path: c.model,
    revision: null,
    inference_mode: true,
    num_virtual_tokens: table.shape[0],
    num_transformer_submodules: 1,
    num_layers: info.numLayers,
  };
  if (compat.peftType === 'PREFIX_TUNING') {
    const p = session.prefix!.config;
    const kvDim = info.numKvHeads * info.headDim;
    // grouped-query attention: PEFT sizes the prefix by the key/value heads (peft#1901)
    return { ...common, token_dim: kvDim, num_attention_heads: info.numKvHeads, prefix_projection: p.projection, encoder_hidden_size: p.projection ? p.hiddenSize : kvDim };
  }
  const tokenDim = table.shape[1];
  if (compat.peftType === 'PROMPT_TUNING') {
    const words = c.promptTuning?.initFromWords;
    return {
      ...common, token_dim: tokenDim, num_attention_heads: info.numHeads,
      prompt_tuning_init: words ? 'TEXT' : 'RANDOM', prompt_tuning_init_text: words ?? null, tokenizer_name_or_path: words ? c.model : null,
    };
  }
  const enc = session.encoder!.config;
  return {
    ...common, token_dim: tokenDim, num_attention_heads: info.numHeads,
    encoder_reparameterization_type: enc.type === 'mlp' ? 'MLP' : 'LSTM',
    encoder_hidden_size: enc.hiddenSize, encoder_num_layers: enc.lstmLayers, encoder_dropout: enc.dropout,
  };
}

function modelCard(compat: PeftCompatibility, config: Record<string, unknown>): string {
  return [
    '---', 'library_name: peft', `base_model: ${JSON.stringify(config.base_model_name_or_path)}`, '---', '',
    `# ${compat.peftType} adapter exported by ptune`, '',
    compat.reproducible
      ? 'Hugging Face PEFT reproduces ptune\'s scores from this adapter (`PeftModel.from_pretrained(base, dir)`):'
      : '**PEFT alone does not reproduce ptune\'s scores from this adapter**; `ptune import-peft` restores the run exactly. Why:',
    '',
    ...compat.notes.map((n) => `- ${n}`), '',
  ].join('\n');
}

/**
 * Writes the frozen prompt as a Hugging Face PEFT adapter (what PEFT saves in inference mode):
 * `adapter_config.json` and `adapter_model.safetensors` holding `prompt_embeddings` —
 * P_TUNING / PROMPT_TUNING: [N, token_dim] input rows; PREFIX_TUNING: [N, layers · 2 · kvDim] keys and values.
 * ptune's rendering (template, head, placement) goes beside it in ptune_template.json, the linear head in
 * ptune_head.safetensors, and README.md says what PEFT reproduces. Each file is written atomically,
 * adapter_config.json (which makes the folder an adapter) last.
 */
export async function exportPeft(session: PTuningSession, outDir: string, opts: WriteOptions = {}): Promise<PeftCompatibility> {
  const table = await session.promptTable();
  if (!table) throw new UserError('the run has no pseudo tokens or deep prompts: nothing to export');
  const compat = peftCompatibility(session);
  const config = adapterConfig(session, compat, table);
  const headParams = session.head.params;
  const c = session.config;
  const placement: PtunePlacement = {
    template: c.template,
    ...(c.legacyBertOrder !== undefined && { legacyBertOrder: c.legacyBertOrder }),
    head: c.head,
    maxLength: c.maxLength,
    ...(c.method !== undefined && { method: c.method }),
    ...(c.peftLayout !== undefined && { peftLayout: c.peftLayout }),
    ...(c.peftPrefix !== undefined && { peftPrefix: c.peftPrefix }),
    ...(c.promptTuning !== undefined && { promptTuning: c.promptTuning }),
    peft: compat,
  };
  opts.beforeWrite?.();
  fs.mkdirSync(outDir, { recursive: true });
  writeSafetensors(path.join(outDir, 'adapter_model.safetensors'), { prompt_embeddings: table }, { format: 'pt' });
  if (headParams) writeSafetensors(path.join(outDir, HEAD_FILE), Object.fromEntries([...headParams].map(([k, p]) => [k, { shape: p.shape, data: p.data }])));
  writeJsonAtomic(path.join(outDir, PLACEMENT_FILE), placement);
  writeFileAtomic(path.join(outDir, 'README.md'), modelCard(compat, config));
  writeJsonAtomic(path.join(outDir, 'adapter_config.json'), config);
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
