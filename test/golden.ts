/**
 * Checks of a model family against the reference outputs in ../shared/models/tiny/<family>/golden.json (from an
 * independent implementation that follows transformers' modeling code): full logits of one sequence, a padded
 * batch, and the gradient of one log-probability with respect to the input embeddings.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { inputEmbeddingGradient, logitsAt, sequenceLogits, type TokenBatch } from '../src/models/forward.js';
import type { LanguageModel } from '../src/models/model.js';
import { HfTokenizer } from '../src/tokenizers/hf.js';
import { shared } from './fixtures.js';

export const tinyDir = (family: string): string => path.join(shared, 'models/tiny', family);

interface Golden {
  model_type: string;
  tolerances: { logits: number; grad: number; loss: number };
  items: Record<string, unknown>[];
}

export function readGolden(family: string): Golden {
  return JSON.parse(fs.readFileSync(path.join(tinyDir(family), 'golden.json'), 'utf8')) as Golden;
}

function item(g: Golden, name: string): Record<string, unknown> {
  const it = g.items.find((x) => x.name === name);
  if (!it) throw new Error(`golden.json has no item "${name}"`);
  return it;
}

const num = (x: unknown) => x as number;
const rows = (x: unknown) => x as number[][];

function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length, 'lengths differ');
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

function logSoftmaxAt(row: ArrayLike<number>, id: number): number {
  let max = -Infinity;
  for (let i = 0; i < row.length; i++) max = Math.max(max, row[i]!);
  let sum = 0;
  for (let i = 0; i < row.length; i++) sum += Math.exp(row[i]! - max);
  return row[id]! - max - Math.log(sum);
}

/** The optional model inputs an item gives (token types, explicit position ids). */
function extras(it: Record<string, unknown>, lm: LanguageModel, batched: boolean): Omit<TokenBatch, 'ids'> {
  const wrap = (x: unknown) => (batched ? rows(x) : [x as number[]]);
  const out: Omit<TokenBatch, 'ids'> = {};
  if (it.attention_mask) out.attentionMask = wrap(it.attention_mask);
  if (lm.info.tokenTypes && it.token_type_ids) out.tokenTypeIds = wrap(it.token_type_ids);
  // causal goldens give the position ids transformers' generate() derives; masked LMs number from 0 by index
  if (lm.info.kind === 'causal' && Array.isArray(it.position_ids)) out.positionIds = wrap(it.position_ids);
  return out;
}

/** Tokenization, full logits and loss of `single`. */
export async function checkSingle(lm: LanguageModel, g: Golden): Promise<{ maxLogitDiff: number }> {
  const it = item(g, 'single');
  const ids = it.input_ids as number[];
  assert.ok(lm.tokenizer instanceof HfTokenizer);
  assert.deepEqual(lm.tokenizer.encodeWithSpecials(it.text as string), ids, 'input ids of the golden text');
  const logits = await sequenceLogits(lm, ids, extras(it, lm, false));
  const want = rows(it.logits);
  let maxLogitDiff = 0;
  logits.forEach((row, i) => (maxLogitDiff = Math.max(maxLogitDiff, maxDiff(row, want[i]!))));
  assert.ok(maxLogitDiff <= g.tolerances.logits, `single: logits differ by up to ${maxLogitDiff}`);
  let loss: number;
  if (lm.info.kind === 'masked') {
    const labels = it.labels as number[];
    const at = labels.flatMap((l, i) => (l >= 0 ? [i] : []));
    loss = -at.reduce((s, i) => s + logSoftmaxAt(logits[i]!, labels[i]!), 0) / at.length;
  } else {
    loss = -ids.slice(1).reduce((s, id, t) => s + logSoftmaxAt(logits[t]!, id), 0) / (ids.length - 1);
  }
  assert.ok(Math.abs(loss - num(it.loss)) <= g.tolerances.loss, `single: loss ${loss} vs ${it.loss}`);
  return { maxLogitDiff };
}

/** Logits at each row's mask / last real token of the padded batch. */
export async function checkPadded(lm: LanguageModel, g: Golden): Promise<{ maxLogitDiff: number }> {
  const it = item(g, 'batch_padded');
  const at = it.logits_at as { row: number; position: number; logits: number[] }[];
  const got = await logitsAt(lm, { ids: rows(it.input_ids), ...extras(it, lm, true) }, at);
  const maxLogitDiff = Math.max(...got.map((row, i) => maxDiff(row, at[i]!.logits)));
  assert.ok(maxLogitDiff <= g.tolerances.logits, `batch_padded: logits differ by up to ${maxLogitDiff}`);
  return { maxLogitDiff };
}

/** d log p(target at position) / d input embeddings, [S, H]. */
export async function checkEmbedsGrad(lm: LanguageModel, g: Golden): Promise<{ maxGradDiff: number }> {
  const it = item(g, 'embeds_grad');
  const ids = it.input_ids as number[];
  const r = await inputEmbeddingGradient(lm, { ids: [ids], ...extras(it, lm, false) }, num(it.position), num(it.target));
  const scalar = [it.value, it.scalar, it.loss].find((x) => typeof x === 'number') as number;
  assert.ok(Math.abs(r.logProb - scalar) <= g.tolerances.loss, `embeds_grad: log-prob ${r.logProb} vs ${scalar}`);
  const maxGradDiff = maxDiff(r.grad.data, rows(it.grad).flat());
  assert.ok(maxGradDiff <= g.tolerances.grad, `embeds_grad: gradient differs by up to ${maxGradDiff}`);
  return { maxGradDiff };
}
