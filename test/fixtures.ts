import { before, after } from 'node:test';
import path from 'node:path';
import { loadModel } from '../src/models/load.js';
import type { LanguageModel } from '../src/models/model.js';
import { main } from '../src/cli/main.js';

export const shared = path.resolve(process.cwd(), '../shared');
export const modelDir = (name: string): string => path.join(shared, 'models', name);

/** bert-mini-lama and gpt2-mini-lama, set by `useMiniModels` (live bindings). */
export let bert: LanguageModel;
export let gpt2: LanguageModel;

/** Loads the two mini models before the calling file's tests and frees them after. */
export function useMiniModels(): void {
  before(async () => {
    bert = await loadModel(modelDir('bert-mini-lama'));
    gpt2 = await loadModel(modelDir('gpt2-mini-lama'));
  });
  after(() => {
    bert.dispose();
    gpt2.dispose();
  });
}

/** Runs the `ptune` CLI with `args` (after "ptune"), capturing what it writes to stderr. */
export async function runCli(args: string[]): Promise<{ code: number; text: string }> {
  const written: string[] = [];
  const write = process.stderr.write;
  process.stderr.write = ((s: string) => {
    written.push(String(s));
    return true;
  }) as typeof process.stderr.write;
  try {
    const code = await main(['node', 'ptune', ...args]);
    return { code, text: written.join('') };
  } finally {
    process.stderr.write = write;
  }
}
