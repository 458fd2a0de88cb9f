import { safetensorsBytes } from '../engine/safetensors-format.js';
import type { HeadSpec } from '../prompt/heads.js';
import { UserError } from '../util/errors.js';
import type { PTuning } from './tuning.js';

/** ptune's own note inside an exported adapter: where the virtual tokens go (PEFT itself ignores this file). */
export interface PtunePlacement {
  template: string;
  legacyBertOrder?: boolean;
  head: HeadSpec;
  maxLength: number;
}

export const PLACEMENT_FILE = 'ptune_template.json';

const json = (value: unknown) => new TextEncoder().encode(JSON.stringify(value, null, 2) + '\n');

/**
 * The frozen prompt table as a Hugging Face PEFT P-tuning adapter, as files by name: `adapter_config.json` and
 * `adapter_model.safetensors` holding the single tensor `prompt_embeddings` [num_virtual_tokens, token_dim]
 * (what PEFT saves in inference mode). PEFT places every virtual token before the input; ptune's template
 * placement is kept beside it in ptune_template.json so a ptune import restores it exactly.
 */
export async function peftAdapterFiles(run: PTuning): Promise<Record<string, Uint8Array>> {
  if (run.prefix) throw new UserError('deep prompts (method "prefix") are no PEFT P-tuning adapter: export the run with --format table or onnx');
  const table = await run.promptTable();
  if (!table) throw new UserError('the run has no pseudo tokens: nothing to export');
  const info = run.lm.info;
  const enc = run.encoder!.config;
  const placement: PtunePlacement = {
    template: run.config.template,
    legacyBertOrder: run.config.legacyBertOrder,
    head: run.config.head,
    maxLength: run.config.maxLength,
  };
  return {
    'adapter_model.safetensors': safetensorsBytes({ prompt_embeddings: table }, { format: 'pt' }),
    'adapter_config.json': json({
      peft_type: 'P_TUNING',
      task_type: info.kind === 'causal' ? 'CAUSAL_LM' : 'SEQ_CLS',
      base_model_name_or_path: run.config.model,
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
    }),
    [PLACEMENT_FILE]: json(placement),
  };
}

/** The prompt table alone, as `prompt_table.safetensors` (tensor `prompt_embeddings`). */
export async function promptTableFile(run: PTuning): Promise<Uint8Array> {
  const table = await run.promptTable();
  if (!table) throw new UserError('the run has no pseudo tokens: nothing to export');
  return safetensorsBytes({ prompt_embeddings: table });
}
