import { bertFamily } from './bert.js';
import { gpt2Family } from './gpt2.js';
import { llamaFamily } from './llama.js';
import type { ModelFamily } from './lm.js';

/** Every supported architecture. A new family is a file of its own and one entry here. */
const FAMILIES: readonly ModelFamily<never>[] = [bertFamily, gpt2Family, llamaFamily] as unknown as ModelFamily<never>[];

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
