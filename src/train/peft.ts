/**
 * A run as a Hugging Face PEFT adapter, as files by name (nothing here touches storage: export.ts writes them
 * into a folder, the browser entry offers them for download).
 */
import { safetensorsBytes } from '../engine/safetensors-format.js';
import { numPseudo } from '../prompt/template.js';
import { UserError } from '../util/errors.js';
import type { Placement } from './files.js';
import { leadingPseudo, type PTuning } from './tuning.js';

/** ptune's own note inside an exported adapter: how ptune renders the input (PEFT itself ignores this file). */
export type PtunePlacement = Placement;

export const PLACEMENT_FILE = 'ptune_template.json';
export const HEAD_FILE = 'ptune_head.safetensors';

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

const json = (value: unknown) => new TextEncoder().encode(JSON.stringify(value, null, 2) + '\n');

/** How the run maps onto PEFT, and what does not carry over. */
export function peftCompatibility(run: PTuning): PeftCompatibility {
  const c = run.config;
  const info = run.lm.info;
  const method = c.method ?? 'ptuning';
  const peftType: PeftType = method === 'prefix' ? 'PREFIX_TUNING' : method === 'prompt-tuning' ? 'PROMPT_TUNING' : 'P_TUNING';
  const notes: string[] = [];
  let reproducible = true;
  if (method === 'ptuning') {
    const pseudo = numPseudo(run.template);
    if (c.peftPrefix === undefined && !(c.peftLayout && leadingPseudo(run.template) === pseudo)) {
      reproducible = false;
      notes.push(
        leadingPseudo(run.template) === pseudo
          ? `the template's ${pseudo} pseudo tokens come after the start tokens (trained without --peft-layout); PEFT prepends them before everything`
          : `the template places pseudo tokens between words (${run.template.text}); PEFT can only prepend virtual tokens`,
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
  const shift = method === 'prefix' ? 0 : run.placedFirst;
  if (info.kind === 'masked') {
    notes.push(`masked LM: PEFT has no masked-LM task type; load with task_type FEATURE_EXTRACTION on the *ForMaskedLM model and read the logits at the [MASK] position${shift ? ` + ${shift}` : ''}`);
  } else {
    notes.push(`causal LM: the next-token logits at the last input position${shift ? ` + ${shift}` : ''} of PEFT's output`);
  }
  if (c.head.kind === 'label') notes.push('the verbalizer (label words → classes) is applied by ptune; PEFT returns vocabulary logits');
  return { peftType, taskType, reproducible, notes };
}

function adapterConfig(run: PTuning, compat: PeftCompatibility, table: { shape: number[] }): Record<string, unknown> {
  const info = run.lm.info;
  const c = run.config;
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
    const p = run.prefix!.config;
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
  const enc = run.encoder!.config;
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
 * The frozen prompt as a Hugging Face PEFT adapter (what PEFT saves in inference mode), as files by name:
 * `adapter_model.safetensors` holding `prompt_embeddings` — P_TUNING / PROMPT_TUNING: [N, token_dim] input rows;
 * PREFIX_TUNING: [N, layers · 2 · kvDim] keys and values — and `adapter_config.json`. ptune's rendering
 * (template, head, placement) goes beside it in ptune_template.json, the linear head in ptune_head.safetensors,
 * and README.md says what PEFT reproduces. The files come in the order to write them: adapter_config.json (which
 * makes a folder an adapter) last.
 */
export async function peftAdapterFiles(run: PTuning): Promise<Record<string, Uint8Array>> {
  return (await peftAdapter(run)).files;
}

/** `peftAdapterFiles` with what PEFT reproduces of the run. */
export async function peftAdapter(run: PTuning): Promise<{ files: Record<string, Uint8Array>; compat: PeftCompatibility }> {
  const table = await run.promptTable();
  if (!table) throw new UserError('the run has no pseudo tokens or deep prompts: nothing to export');
  const compat = peftCompatibility(run);
  const config = adapterConfig(run, compat, table);
  const headParams = run.head.params;
  const c = run.config;
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
  const files: Record<string, Uint8Array> = {
    'adapter_model.safetensors': safetensorsBytes({ prompt_embeddings: table }, { format: 'pt' }),
  };
  if (headParams) files[HEAD_FILE] = safetensorsBytes(Object.fromEntries([...headParams].map(([k, p]) => [k, { shape: p.shape, data: p.data }])));
  files[PLACEMENT_FILE] = json(placement);
  files['README.md'] = new TextEncoder().encode(modelCard(compat, config));
  files['adapter_config.json'] = json(config);
  return { files, compat };
}

/** The prompt table alone, as `prompt_table.safetensors` (tensor `prompt_embeddings`). */
export async function promptTableFile(run: PTuning): Promise<Uint8Array> {
  const table = await run.promptTable();
  if (!table) throw new UserError('the run has no pseudo tokens or deep prompts: nothing to export');
  return safetensorsBytes({ prompt_embeddings: table });
}
