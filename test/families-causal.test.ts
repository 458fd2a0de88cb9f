/**
 * The causal families against the tiny reference checkpoints in ../shared/models/tiny/<family>: golden logits,
 * padded batches and input-embedding gradients; special ids as the tokenizer files name them; KV-cache
 * generation equal to full recomputation (sliding windows included); config.json round trips; random models;
 * and short P-tuning runs, frozen and jointly tuned.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { sequenceLogits } from '../src/models/forward.js';
import { argmax, decodeStep, generate, KvCache } from '../src/models/generate.js';
import { familyFor } from '../src/models/families.js';
import type { DecoderConfig } from '../src/models/llama.js';
import { createRandomModel, loadModel } from '../src/models/load.js';
import type { LanguageModel } from '../src/models/model.js';
import type { SpecialIds } from '../src/models/lm.js';
import { HfTokenizer } from '../src/tokenizers/hf.js';
import { DEFAULT_LOOP, DEFAULT_OPTIM, PTuningSession, type RunConfig } from '../src/train/session.js';
import { checkEmbedsGrad, checkPadded, checkSingle, readGolden, tinyDir } from './golden.js';

const FAMILIES = ['qwen2', 'qwen3', 'mistral', 'llama', 'phi3', 'gemma2'] as const;
type Family = (typeof FAMILIES)[number];

const models = new Map<Family, LanguageModel>();
const made: string[] = [];
const tmp = (what: string) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `ptune-${what}-`));
  made.push(dir);
  return dir;
};
const lm = (f: Family) => models.get(f)!;

before(async () => {
  for (const f of FAMILIES) models.set(f, await loadModel(tinyDir(f)));
});
after(() => {
  for (const m of models.values()) m.dispose();
  for (const d of made) fs.rmSync(d, { recursive: true, force: true });
});

// ---------------------------------------------------------------------------------------------------------
// golden outputs

for (const f of FAMILIES) {
  test(`${f}: golden logits, padded batch and inputs_embeds gradient`, async () => {
    const g = readGolden(f);
    assert.equal(g.model_type, f);
    assert.equal(lm(f).info.family, f);
    assert.equal(lm(f).info.kind, 'causal');
    assert.equal(lm(f).info.paddingSide, 'left');
    const single = await checkSingle(lm(f), g);
    const padded = await checkPadded(lm(f), g);
    const grad = await checkEmbedsGrad(lm(f), g);
    console.log(`${f}: max |Δ| logits ${single.maxLogitDiff.toExponential(2)}, padded ${padded.maxLogitDiff.toExponential(2)}, grad ${grad.maxGradDiff.toExponential(2)}`);
  });
}

test('config: the switches each tiny config.json turns on', () => {
  const c = (f: Family) => lm(f).config as DecoderConfig & Record<string, unknown>;
  assert.equal(c('qwen2').attentionBias, true);
  assert.equal(c('qwen2').outputBias, undefined);
  assert.equal(c('qwen2').slidingWindow, undefined, 'use_sliding_window false: no window');
  assert.equal(c('qwen2').tieWordEmbeddings, true);
  assert.equal(c('qwen3').headDim, 32);
  assert.equal(c('qwen3').attentionBias, false);
  assert.equal(c('mistral').slidingWindow, 4);
  assert.equal(c('mistral').slidingLayers, undefined, 'every layer slides');
  assert.equal(c('phi3').fusedProjections, true);
  assert.equal(c('phi3').rotaryDim, 12);
  assert.equal(c('phi3').ropeInvFreq.length, 6);
  assert.equal(c('gemma2').headDim, 24);
  assert.deepEqual(c('gemma2').slidingLayers, [true, false]);
  assert.equal(c('gemma2').queryPreAttnScalar, 32);
  assert.equal(c('gemma2').attnLogitSoftcap, 0.05);
  assert.equal(c('gemma2').finalLogitSoftcap, 1);
  assert.equal(c('gemma2').tieWordEmbeddings, true, 'Gemma2Config default when config.json has no tie_word_embeddings');
  assert.equal(lm('gemma2').params.has('lm_head.weight'), false);
});

test('gemma2: embed returns the rows scaled by sqrt(hidden), softcapped logits stay within the cap', async () => {
  const m = lm('gemma2');
  const ids = readGolden('gemma2').items.find((x) => x.name === 'single')!.input_ids as number[];
  const r = await m.run(
    {
      key: 'test gemma2 embed',
      build: (b) => ({ outputs: { e: m.fns.embed(b.o, m.weights(b), b.input('ids', [1, ids.length], 'int32')) } }),
    },
    { ids: { data: Int32Array.from(ids), shape: [1, ids.length] } },
  );
  const table = m.params.get('model.embed_tokens.weight')!;
  const h = m.info.hiddenSize;
  const e = r.outputs.e!.data as Float32Array;
  let diff = 0;
  let sum = 0;
  ids.forEach((id, t) => {
    for (let j = 0; j < h; j++) {
      diff = Math.max(diff, Math.abs(e[t * h + j]! - table.data[id * h + j]! * 8));
      sum += e[t * h + j]!;
    }
  });
  assert.ok(diff < 1e-6, `scaled rows differ by ${diff}`);
  const want = readGolden('gemma2').items.find((x) => x.name === 'embeds_grad')!.inputs_embeds_sum as number;
  assert.ok(Math.abs(sum - want) < 1e-3, `inputs_embeds sum ${sum} vs ${want}`);
  const logits = await sequenceLogits(m, ids.slice(0, 5));
  for (const row of logits) for (const x of row) assert.ok(Math.abs(x) < 1, `logit ${x} beyond final_logit_softcapping 1`);
});

// ---------------------------------------------------------------------------------------------------------
// special ids

/** The id of each special role the tokenizer files name (special_tokens_map.json, then tokenizer_config.json). */
function namedInTokenizerFiles(dir: string): Partial<Record<keyof SpecialIds, number | null>> {
  const read = (file: string) => (fs.existsSync(path.join(dir, file)) ? JSON.parse(fs.readFileSync(path.join(dir, file), 'utf8')) : {});
  const tokJson = read('tokenizer.json') as { added_tokens: { id: number; content: string }[]; model: { vocab: Record<string, number> } };
  const idOf = (content: string) => tokJson.added_tokens.find((t) => t.content === content)?.id ?? tokJson.model.vocab[content];
  const spelled = { ...read('special_tokens_map.json'), ...read('tokenizer_config.json') } as Record<string, unknown>;
  const out: Partial<Record<keyof SpecialIds, number | null>> = {};
  for (const role of ['pad', 'unk', 'bos', 'eos', 'cls', 'sep', 'mask'] as const) {
    const v = spelled[`${role}_token`];
    if (v === undefined) continue;
    const content = typeof v === 'string' ? v : v && typeof v === 'object' ? (v as { content: string }).content : null;
    out[role] = content === null ? null : (idOf(content) ?? null);
  }
  return out;
}

test('special ids: the tokenizer files decide, config.json fills roles they leave open, pad falls back to eos', () => {
  const expected: Record<Family, SpecialIds> = {
    // tokenizer_config: eos = pad = <|endoftext|>, bos_token null (config.json's bos_token_id 381 fills it)
    qwen2: { pad: 381, eos: 381, bos: 381 },
    // eos <|im_end|> 413 (config.json agrees), pad <|endoftext|> 411, bos from config.json
    qwen3: { pad: 411, eos: 413, bos: 411 },
    // <unk> <s> </s>, no pad token: padding uses eos
    mistral: { unk: 0, bos: 1, eos: 2, pad: 2 },
    llama: { bos: 374, eos: 375, pad: 375 },
    // eos = pad = <|endoftext|> 389
    phi3: { unk: 0, bos: 1, eos: 389, pad: 389 },
    gemma2: { pad: 0, eos: 1, bos: 2, unk: 3 },
  };
  for (const f of FAMILIES) {
    const special = lm(f).info.special;
    assert.deepEqual(special, expected[f], `${f}: info.special`);
    const named = namedInTokenizerFiles(tinyDir(f));
    for (const [role, id] of Object.entries(named)) {
      if (id !== null) assert.equal(special[role as keyof SpecialIds], id, `${f}: ${role} as the tokenizer files name it`);
    }
    const tok = lm(f).tokenizer;
    assert.ok(tok instanceof HfTokenizer);
    for (const [role, id] of Object.entries(tok.special)) assert.equal(special[role as keyof SpecialIds], id, `${f}: ${role}`);
  }
});

test('special ids: a tokenizer role wins over a different config.json id; config.json fills what the tokenizer leaves open', async () => {
  const dir = tmp('special');
  for (const file of fs.readdirSync(tinyDir('phi3'))) fs.copyFileSync(path.join(tinyDir('phi3'), file), path.join(dir, file));
  const config = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8'));
  const tc = JSON.parse(fs.readFileSync(path.join(dir, 'tokenizer_config.json'), 'utf8'));
  delete tc.bos_token;
  fs.writeFileSync(path.join(dir, 'tokenizer_config.json'), JSON.stringify(tc));
  const map = JSON.parse(fs.readFileSync(path.join(dir, 'special_tokens_map.json'), 'utf8'));
  delete map.bos_token;
  fs.writeFileSync(path.join(dir, 'special_tokens_map.json'), JSON.stringify(map));
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ ...config, bos_token_id: 5, eos_token_id: 2, pad_token_id: 3 }));
  const m = await loadModel(dir);
  assert.deepEqual(m.info.special, { unk: 0, bos: 5, eos: 389, pad: 389 });
  m.dispose();
});

// ---------------------------------------------------------------------------------------------------------
// generation with the cache

/** Greedy continuation by recomputing the whole sequence for every new token. */
async function greedyFull(m: LanguageModel, prompt: number[], n: number): Promise<{ ids: number[]; logits: Float32Array[] }> {
  const seq = [...prompt];
  const ids: number[] = [];
  const logits: Float32Array[] = [];
  for (let i = 0; i < n; i++) {
    const rows = await sequenceLogits(m, seq);
    const last = rows[rows.length - 1]!;
    logits.push(Float32Array.from(last));
    const next = argmax(last);
    ids.push(next);
    seq.push(next);
  }
  return { ids, logits };
}

/** generate() (greedy, KV cache) against full recomputation; also the cached logits step by step. */
async function checkGeneration(m: LanguageModel, prompt: number[], n = 8): Promise<number> {
  const cached = await generate(m, prompt, { maxNewTokens: n, stopAtEos: false });
  const full = await greedyFull(m, prompt, n);
  assert.deepEqual(cached, full.ids, `${m.info.family}: cached greedy tokens`);
  const cache = new KvCache(m);
  let input = prompt;
  let maxDiff = 0;
  for (let i = 0; i < n; i++) {
    const logits = await decodeStep(m, cache, input);
    for (let v = 0; v < logits.length; v++) maxDiff = Math.max(maxDiff, Math.abs(logits[v]! - full.logits[i]![v]!));
    input = [full.ids[i]!];
  }
  assert.ok(maxDiff < 1e-4, `${m.info.family}: cached logits differ from full recomputation by ${maxDiff}`);
  return maxDiff;
}

const goldenIds = (f: Family) => readGolden(f).items.find((x) => x.name === 'single')!.input_ids as number[];

for (const f of FAMILIES) {
  test(`${f}: greedy generation with the KV cache equals full recomputation`, async () => {
    const prompt = goldenIds(f).slice(0, 20);
    const window = (lm(f).config as DecoderConfig).slidingWindow;
    if (window !== undefined) assert.ok(prompt.length > window, 'the prompt is longer than the sliding window');
    const diff = await checkGeneration(lm(f), prompt);
    console.log(`${f}: generation equal; max |Δ| cached vs full logits ${diff.toExponential(2)}`);
  });
}

/** A copy of a tiny checkpoint with config.json changed. */
function variant(f: Family, change: (c: Record<string, unknown>) => void): string {
  const dir = tmp(f);
  for (const file of fs.readdirSync(tinyDir(f))) fs.copyFileSync(path.join(tinyDir(f), file), path.join(dir, file));
  const config = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8')) as Record<string, unknown>;
  change(config);
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(config));
  return dir;
}

test('qwen2 / qwen3 sliding windows: the layers max_window_layers or layer_types pick; cache equals full recomputation', async () => {
  const q2 = await loadModel(
    variant('qwen2', (c) => {
      Object.assign(c, { use_sliding_window: true, sliding_window: 4, max_window_layers: 1 });
      delete c.layer_types;
    }),
  );
  assert.deepEqual((q2.config as DecoderConfig).slidingLayers, [false, true]);
  assert.equal((q2.config as DecoderConfig).slidingWindow, 4);
  const prompt = goldenIds('qwen2').slice(0, 12);
  // within the window the model is the plain one; beyond it the window changes the logits
  const short = prompt.slice(0, 4);
  const [a, b] = [await sequenceLogits(q2, short), await sequenceLogits(lm('qwen2'), short)];
  assert.ok(maxAbs(a.at(-1)!, b.at(-1)!) < 1e-5);
  const [c, d] = [await sequenceLogits(q2, prompt), await sequenceLogits(lm('qwen2'), prompt)];
  assert.ok(maxAbs(c.at(-1)!, d.at(-1)!) > 1e-4, 'the window changes the logits past it');
  await checkGeneration(q2, prompt);
  q2.dispose();

  const q3 = await loadModel(
    variant('qwen3', (c) => Object.assign(c, { use_sliding_window: true, sliding_window: 3, layer_types: ['sliding_attention', 'full_attention'] })),
  );
  assert.deepEqual((q3.config as DecoderConfig).slidingLayers, [true, false]);
  await checkGeneration(q3, goldenIds('qwen3').slice(0, 10), 6);
  q3.dispose();
  // use_sliding_window false: sliding_window and layer_types name no window in use
  const off = await loadModel(variant('qwen2', (c) => Object.assign(c, { use_sliding_window: false, sliding_window: 4, layer_types: ['full_attention', 'sliding_attention'] })));
  assert.equal((off.config as DecoderConfig).slidingWindow, undefined);
  off.dispose();
});

test('phi3: LongRoPE switches to the long factors past original_max_position_embeddings', async () => {
  const dim = 12;
  const dir = variant('phi3', (c) =>
    Object.assign(c, {
      max_position_embeddings: 128,
      original_max_position_embeddings: 16,
      rope_scaling: { type: 'longrope', short_factor: Array(dim / 2).fill(1), long_factor: Array.from({ length: dim / 2 }, (_, i) => 1 + i) },
    }),
  );
  const m = await loadModel(dir);
  const c = m.config as DecoderConfig;
  assert.ok(c.ropeLong);
  assert.ok(Math.abs(c.ropeAttentionScale - Math.sqrt(1 + Math.log(8) / Math.log(16))) < 1e-12);
  const base = lm('phi3');
  const ids = goldenIds('phi3');
  // up to 16 positions: the short factors (all 1) are the plain frequencies, only cos/sin are scaled
  const within = await sequenceLogits(m, ids.slice(0, 16));
  const plain = await sequenceLogits(base, ids.slice(0, 16));
  assert.ok(maxAbs(within.at(-1)!, plain.at(-1)!) > 1e-5, 'the attention factor scales cos/sin');
  // past 16 positions the long factors apply to every position of the run, the first one included
  const beyond = await sequenceLogits(m, ids.slice(0, 17));
  const first16 = await sequenceLogits(m, ids.slice(0, 16));
  assert.ok(maxAbs(beyond[1]!, first16[1]!) > 1e-6, 'a longer run rotates with the long factors');
  m.dispose();
});

function maxAbs(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

// ---------------------------------------------------------------------------------------------------------
// configs and random models

test('config.json round trip: parseConfig(toHfConfig(c)) is c', () => {
  for (const f of FAMILIES) {
    const m = lm(f);
    const json = JSON.parse(JSON.stringify(m.family.toHfConfig(m.config)));
    assert.deepEqual(m.family.parseConfig(json, `${f} round trip`), m.config, f);
    assert.equal(familyFor(json.model_type, 'x'), m.family);
  }
});

test('random models of each new family run forward and decode with the cache', async () => {
  const small = { hiddenSize: 32, numHeads: 4, numKvHeads: 2, numLayers: 2, intermediateSize: 48, maxPositions: 64, vocabSize: 64 };
  for (const type of ['qwen2', 'qwen3', 'mistral', 'phi3', 'gemma2']) {
    const over = type === 'mistral' || type === 'gemma2' ? { ...small, slidingWindow: 3 } : small;
    const m = createRandomModel(type, over, 7);
    assert.equal(m.info.family, type);
    assert.equal(m.info.headDim, 8);
    await checkGeneration(m, [5, 6, 7, 8, 9, 10], 3);
    m.dispose();
  }
});

// ---------------------------------------------------------------------------------------------------------
// P-tuning

/** Words that are one token of `tok` (as an answer after a space). */
function singleTokenWords(tok: LanguageModel['tokenizer'], n: number): string[] {
  const words = ['the', 'and', 'of', 'is', 'was', 'a', 'in', 'to', 'it', 'on', 'at', 'he', 'we', 's', 'e', 'o', 'r', 'n'];
  const out = words.filter((w) => tok.encodeWord(w).length === 1);
  assert.ok(out.length >= n, `only ${out.length} single-token answers`);
  return out.slice(0, n);
}

function ptuningConfig(tuneLm: boolean): RunConfig {
  return {
    version: 1,
    model: 'in-memory',
    template: '[P*3] {text} [P*2] [MASK]',
    head: { kind: 'answer', answerField: 'answer' },
    encoder: { type: 'lstm', hiddenSize: 16, seed: 5 },
    maxLength: 32,
    skipTooLong: false,
    loop: { ...DEFAULT_LOOP, epochs: 25, maxSteps: 25, batchSize: 8, logEvery: 1, evalEvery: 25, saveEvery: 0 },
    optim: { ...DEFAULT_OPTIM, lr: 1e-2, ...(tuneLm && { tuneLm: true, lmLr: 1e-3, lmWeightDecay: 0 }) },
  };
}

async function ptune(m: LanguageModel, tuneLm: boolean): Promise<{ first: number; last: number }> {
  const answers = singleTokenWords(m.tokenizer, 2);
  const texts = ['the river flows', 'a small village', 'children play', 'the old bridge', 'cheese and bread', 'the north wind'];
  const records = texts.map((text, i) => ({ text, answer: answers[i % answers.length]! }));
  const s = await PTuningSession.create(ptuningConfig(tuneLm), m);
  const runDir = tmp('ptune');
  await s.train({ runDir, train: records, dev: records.slice(0, 2) });
  const losses = fs
    .readFileSync(path.join(runDir, 'metrics.jsonl'), 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as { type: string; loss?: number })
    .filter((r) => r.type === 'train')
    .map((r) => r.loss!);
  assert.equal(losses.length, 25);
  return { first: losses[0]!, last: losses.at(-1)! };
}

for (const f of FAMILIES) {
  test(`${f}: P-tuning with a frozen LM lowers the training loss`, async () => {
    const m = lm(f);
    const before = new Map([...m.params].map(([k, p]) => [k, Float32Array.from(p.data)]));
    const { first, last } = await ptune(m, false);
    console.log(`${f}: P-tuning loss ${first.toFixed(4)} → ${last.toFixed(4)}`);
    assert.ok(last < first - 0.05, `${f}: loss ${first} → ${last}`);
    for (const [k, p] of m.params) assert.deepEqual(p.data, before.get(k), `${f}: frozen weight ${k} changed`);
  });
}

test('gemma2: P-tuning jointly with the LM (tuneLm) lowers the loss and changes the LM weights', async () => {
  const m = await loadModel(tinyDir('gemma2'), { trainable: true });
  const before = new Map([...m.params].map(([k, p]) => [k, Float32Array.from(p.data)]));
  const { first, last } = await ptune(m, true);
  console.log(`gemma2 (tuneLm): P-tuning loss ${first.toFixed(4)} → ${last.toFixed(4)}`);
  assert.ok(last < first - 0.05, `loss ${first} → ${last}`);
  let changed = 0;
  for (const [k, p] of m.params) if (maxAbs(p.data, before.get(k)!) > 0) changed++;
  assert.ok(changed >= m.params.size - 1, `only ${changed} of ${m.params.size} LM weights changed`);
  for (const k of ['model.embed_tokens.weight', 'model.layers.0.pre_feedforward_layernorm.weight', 'model.norm.weight']) {
    assert.ok(maxAbs(m.params.get(k)!.data, before.get(k)!) > 0, `${k} did not change`);
  }
  m.dispose();
});
