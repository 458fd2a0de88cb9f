import { UserError } from '../util/errors.js';
import { isSafeRepoPath } from './cache.js';

/** Which files of a repository a model directory needs. */

export const CONFIG = 'config.json';
export const SINGLE_WEIGHTS = 'model.safetensors';
export const WEIGHTS_INDEX = 'model.safetensors.index.json';

/** Taken when the repository has them. */
export const OPTIONAL_FILES = [
  'tokenizer.json',
  'tokenizer_config.json',
  'special_tokens_map.json',
  'generation_config.json',
  'tokenizer.model',
  'vocab.txt',
  'merges.txt',
  'vocab.json',
];

const PICKLES = ['pytorch_model.bin', 'pytorch_model.bin.index.json'];

export function pickleOnlyError(repo: string, revision: string): UserError {
  return new UserError(
    `${repo}@${revision}: only pytorch_model.bin weights (a Python pickle), no model.safetensors; ptune never loads pickles: ` +
      `use a revision that has safetensors (often a conversion pull request: ${repo}@refs/pr/N) or convert it with transformers ` +
      `(AutoModel.from_pretrained(...).save_pretrained(dir, safe_serialization=True)) and pass that directory`,
  );
}

/** The weights entry point among `files`: model.safetensors, else the shard index; else an error saying why none. */
export function weightsEntry(repo: string, revision: string, has: (file: string) => boolean, where: string): string {
  if (has(SINGLE_WEIGHTS)) return SINGLE_WEIGHTS;
  if (has(WEIGHTS_INDEX)) return WEIGHTS_INDEX;
  if (PICKLES.some(has)) throw pickleOnlyError(repo, revision);
  throw new UserError(`${repo}@${revision}: no ${SINGLE_WEIGHTS} or ${WEIGHTS_INDEX} ${where}`);
}

/** The shard files a model.safetensors.index.json lists (each once, in order of first use). */
export function shardsOf(repo: string, indexText: string): string[] {
  let weightMap: unknown;
  try {
    weightMap = (JSON.parse(indexText) as { weight_map?: unknown }).weight_map;
  } catch (err) {
    throw new UserError(`${repo}: ${WEIGHTS_INDEX}: invalid JSON (${(err as Error).message.split('\n')[0]})`);
  }
  if (typeof weightMap !== 'object' || weightMap === null || Array.isArray(weightMap)) {
    throw new UserError(`${repo}: ${WEIGHTS_INDEX}: weight_map missing or not an object`);
  }
  const shards = new Set<string>();
  for (const [name, shard] of Object.entries(weightMap)) {
    if (typeof shard !== 'string' || !isSafeRepoPath(shard)) {
      throw new UserError(`${repo}: ${WEIGHTS_INDEX}: weight_map[${JSON.stringify(name)}] is not a file of the repository`);
    }
    shards.add(shard);
  }
  if (shards.size === 0) throw new UserError(`${repo}: ${WEIGHTS_INDEX}: weight_map lists no shard`);
  return [...shards];
}
