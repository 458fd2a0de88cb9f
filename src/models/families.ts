import { bertFamily } from './bert.js';
import { distilbertFamily } from './distilbert.js';
import { albertFamily } from './albert.js';
import { debertaV2Family } from './deberta-v2.js';
import { modernbertFamily } from './modernbert.js';
import { gpt2Family } from './gpt2.js';
import { llamaFamily } from './llama.js';
import { gemma2Family } from './gemma2.js';
import { mistralFamily } from './mistral.js';
import { phi3Family } from './phi3.js';
import { qwen2Family } from './qwen2.js';
import { qwen3Family } from './qwen3.js';
import type { ModelFamily } from './lm.js';

/** Every supported architecture. A new family is a file of its own and one entry here. */
const FAMILIES: readonly ModelFamily<never>[] = [bertFamily, distilbertFamily, albertFamily, debertaV2Family, modernbertFamily, gpt2Family, llamaFamily, qwen2Family, qwen3Family, mistralFamily, phi3Family, gemma2Family] as unknown as ModelFamily<never>[];

const BY_TYPE = new Map<string, ModelFamily<unknown>>();
for (const f of FAMILIES) for (const t of f.modelTypes) BY_TYPE.set(t, f as ModelFamily<unknown>);

/** The config.json `model_type` values ptune reads. */
export function supportedModelTypes(): string[] {
  return [...BY_TYPE.keys()];
}

/** The family of a `model_type`; an error naming `file` and the supported types otherwise. */
export function familyFor(modelType: unknown, file: string): ModelFamily<unknown> {
  const f = typeof modelType === 'string' ? BY_TYPE.get(modelType) : undefined;
  if (!f) throw new Error(`${file}: unsupported model_type ${JSON.stringify(modelType)} (supported: ${supportedModelTypes().join(', ')})`);
  return f;
}
