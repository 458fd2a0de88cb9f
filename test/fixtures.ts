import { before, after } from 'node:test';
import path from 'node:path';
import { initEngine } from '../src/engine/index.js';
import { loadModel } from '../src/models/load.js';
import type { LanguageModel } from '../src/models/lm.js';

export const shared = path.resolve(process.cwd(), '../shared');
export const modelDir = (name: string): string => path.join(shared, 'models', name);

/** bert-mini-lama and gpt2-mini-lama on tfjs, set by `useMiniModels` (live bindings). */
export let bert: LanguageModel;
export let gpt2: LanguageModel;

/** Loads the two mini models before the calling file's tests and frees them after. */
export function useMiniModels(): void {
  before(async () => {
    await initEngine('wasm');
    bert = await loadModel(modelDir('bert-mini-lama'), { engine: 'tfjs' });
    gpt2 = await loadModel(modelDir('gpt2-mini-lama'), { engine: 'tfjs' });
  });
  after(() => {
    bert.dispose();
    gpt2.dispose();
  });
}
