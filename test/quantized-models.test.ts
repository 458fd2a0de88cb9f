import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Parameter, type ParamMap } from '../src/engine/tensor.js';
import { programs, type ProgramGraph } from '../src/engine/program.js';
import { blockCount, dequantizeMatrix, rowBytes, transposeMatrix } from '../src/engine/quant.js';
import { readSafetensors, writeSafetensors } from '../src/engine/safetensors.js';
import { createRandomModel, loadModel, type LoadOptions } from '../src/models/load.js';
import { LanguageModel } from '../src/models/model.js';
import { logitsAt, type TokenBatch } from '../src/models/forward.js';
import { linearWeights } from '../src/models/quantize.js';
import { PromptEncoder } from '../src/prompt/encoder.js';
import { makeHead } from '../src/prompt/heads.js';
import { PTuningPrograms } from '../src/prompt/programs.js';
import { collate, renderExample } from '../src/prompt/render.js';
import { PrefixEncoder } from '../src/prompt/prefix.js';
import { parseTemplate } from '../src/prompt/template.js';
import { modelFingerprint, fingerprintOf } from '../src/serve/fingerprint.js';
import { cosine, modelDir, runCli, shared } from './fixtures.js';

const cacheDir = fs.mkdtempSync(path.join(os.tmpdir(), 'ptune-quant-test-'));
after(() => fs.rmSync(cacheDir, { recursive: true, force: true }));

const q = (bits: 4 | 8, more: Partial<{ blockSize: 32 | 64 | 128 | 'channel'; symmetric: boolean; backward: 'transposed' | 'dequantize'; activations: 'int8' | 'float32' }> = {}): LoadOptions => ({
  quantize: { bits, cacheDir, ...more },
});

/** An fp32 model whose linear weights are the dequantized ones of `lm`: what the quantized programs stand for. */
function dequantizedTwin(lm: LanguageModel): LanguageModel {
  const params: ParamMap = new Map(lm.params);
  for (const [name, e] of lm.quantized!.entries) {
    const s = e.stored;
    const scales = lm.quantized!.read(s.scales);
    const deq = dequantizeMatrix({
      n: s.n, k: s.k, bits: s.bits, blockSize: s.blockSize, ...(s.signed && { signed: true }),
      data: lm.quantized!.read(s.data),
      scales: new Float32Array(scales.buffer, 0, scales.length / 4),
      ...(s.zeroPoints && { zeroPoints: lm.quantized!.read(s.zeroPoints) }),
    });
    params.set(name, new Parameter(name, e.shape, e.layout === 'out-in' ? deq : transposeMatrix(deq, s.n, s.k)));
  }
  return new LanguageModel(lm.family, lm.config, params, lm.tokenizer, { source: `${lm.info.source} (dequantized)`, special: lm.info.special });
}

const maxAbs = (a: ArrayLike<number>) => Array.from(a).reduce((m, v) => Math.max(m, Math.abs(v)), 0);
function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

const bertBatch: TokenBatch = { ids: [[101, 3000, 2003, 1996, 3007, 1997, 103, 1012, 102, 0]], attentionMask: [[1, 1, 1, 1, 1, 1, 1, 1, 1, 0]] };
const gptBatch: TokenBatch = { ids: [[0, 101, 3000, 2003, 1996, 3007, 1997, 2605]], attentionMask: [[0, 1, 1, 1, 1, 1, 1, 1]] };

let fp: Record<'bert' | 'gpt2', LanguageModel>;
before(async () => {
  fp = { bert: await loadModel(modelDir('bert-mini-lama')), gpt2: await loadModel(modelDir('gpt2-mini-lama')) };
});

test('which weights are quantized: the linear layers (nn.Linear, Conv1D, an untied output head), never embeddings, norms or biases', async () => {
  const bert = await loadModel(modelDir('bert-mini-lama'), q(8));
  const names = [...bert.quantized!.entries.keys()];
  assert.equal(names.length, 4 * 6 + 1);
  assert.ok(names.every((n) => n.endsWith('.weight') && !/embeddings|LayerNorm/.test(n)), names.join(','));
  assert.ok(bert.params.has('bert.embeddings.word_embeddings.weight') && !bert.params.has('bert.encoder.layer.0.attention.self.query.weight'));
  const gpt2 = await loadModel(modelDir('gpt2-mini-lama'), q(8));
  assert.deepEqual(new Set([...gpt2.quantized!.entries.values()].map((e) => e.layout)), new Set(['in-out']));
  assert.equal(gpt2.quantized!.entries.size, 4 * 4);
  // Llama: q/k/v/o, gate/up/down and the untied lm_head; the tied variant keeps its embedding table
  const untied = createRandomModel('llama', { hiddenSize: 64, numHeads: 4, numKvHeads: 2, numLayers: 2, intermediateSize: 96, maxPositions: 64, vocabSize: 80 }, 3);
  const layouts = linearWeights(untied.fns, untied.info, untied.family.weights(untied.config));
  assert.equal(layouts.size, 2 * 7 + 1);
  assert.equal(layouts.get('lm_head.weight'), 'out-in');
  assert.ok(!layouts.has('model.embed_tokens.weight'));
  const tied = createRandomModel('llama', { hiddenSize: 64, numHeads: 4, numKvHeads: 2, numLayers: 2, intermediateSize: 96, maxPositions: 64, vocabSize: 80, tieWordEmbeddings: true }, 3);
  assert.ok(!linearWeights(tied.fns, tied.info, tied.family.weights(tied.config)).has('model.embed_tokens.weight'));
  assert.equal(bert.info.parameterCount, fp.bert.info.parameterCount);
});

test('quantized programs compute the dequantized model: float32 products match it to 1e-4, every family path (dense, Conv1D, output head, candidate rows)', async () => {
  const llama = createRandomModel('llama', { hiddenSize: 64, numHeads: 4, numKvHeads: 2, numLayers: 2, intermediateSize: 96, maxPositions: 64, vocabSize: 80 }, 5, undefined, q(4, { activations: 'float32' }));
  const cases: [string, LanguageModel, TokenBatch, number][] = [
    ['bert int8', await loadModel(modelDir('bert-mini-lama'), q(8, { activations: 'float32' })), bertBatch, 6],
    ['gpt2 int4 symmetric', await loadModel(modelDir('gpt2-mini-lama'), q(4, { activations: 'float32', symmetric: true })), gptBatch, 7],
    ['llama int4 zero points (quantized lm_head)', llama, { ids: [[1, 5, 9, 33, 61, 7]] }, 5],
  ];
  for (const [what, lm, batch, position] of cases) {
    const twin = dequantizedTwin(lm);
    const a = (await logitsAt(lm, batch, [{ row: 0, position }]))[0]!;
    const b = (await logitsAt(twin, batch, [{ row: 0, position }]))[0]!;
    assert.ok(maxDiff(a, b) <= 1e-4 * Math.max(1, maxAbs(b)), `${what}: ${maxDiff(a, b)}`);
  }
  // candidate rows of a quantized output head (label words): GatherBlockQuantized
  const head = makeHead({ kind: 'label', labelField: 'y', labelWords: { a: 'w7', b: 'w30', c: 'w55' } }, llama.tokenizer, llama.info.vocabSize);
  const ex = { ids: [9, 4, 4, 12, 40, 4], pseudoPositions: [], pseudoIndex: [], answerPosition: 5 };
  const batch = collate([ex, { ...ex, ids: [3, 4, 8, 12, 41, 4] }], llama.info);
  const s1 = await new PTuningPrograms(llama, null, head).scores(batch);
  const s2 = await new PTuningPrograms(dequantizedTwin(llama), null, head).scores(batch);
  assert.ok(maxDiff(s1.data, s2.data) <= 1e-4 * Math.max(1, maxAbs(s2.data)), `label scores: ${maxDiff(s1.data, s2.data)}`);
});

test('quantized logits within the stated bound of fp32 (int8: 3% of the largest logit, int4: 25%): int8 per channel and in blocks, int8 activations', async () => {
  for (const [name, batch, position] of [['bert', bertBatch, 6], ['gpt2', gptBatch, 7]] as const) {
    const ref = (await logitsAt(fp[name], batch, [{ row: 0, position }]))[0]!;
    const scale = maxAbs(ref);
    for (const [bits, bound, more] of [[8, 0.03, {}], [8, 0.03, { blockSize: 32 }], [4, 0.25, {}]] as const) {
      const lm = await loadModel(modelDir(`${name}-mini-lama`), q(bits, more));
      const got = (await logitsAt(lm, batch, [{ row: 0, position }]))[0]!;
      const err = maxDiff(got, ref);
      assert.ok(err <= bound * scale, `${name} int${bits} ${JSON.stringify(more)}: max error ${err.toFixed(4)} > ${bound} × ${scale.toFixed(3)}`);
      assert.ok(err > 0, `${name} int${bits}: the quantized logits differ from fp32`);
    }
  }
});

test('int8 per channel on a causal LM with grouped KV heads and an untied output head (random Llama): logits within 3% of fp32, an encoder gradient pointing where fp32\'s does', async () => {
  const shape = { hiddenSize: 64, numHeads: 4, numKvHeads: 2, numLayers: 2, intermediateSize: 96, maxPositions: 64, vocabSize: 80 };
  const float = createRandomModel('llama', shape, 5);
  const int8 = createRandomModel('llama', shape, 5, undefined, q(8));
  try {
    assert.equal(int8.info.quantization!.name, 'int8');
    assert.ok(int8.quantized!.entries.has('lm_head.weight'), 'the untied output head is quantized');
    const batch: TokenBatch = { ids: [[1, 5, 7, 9, 11, 13]], attentionMask: [[1, 1, 1, 1, 1, 1]] };
    const ref = (await logitsAt(float, batch, [{ row: 0, position: 5 }]))[0]!;
    const got = (await logitsAt(int8, batch, [{ row: 0, position: 5 }]))[0]!;
    const err = maxDiff(got, ref);
    assert.ok(err > 0 && err <= 0.03 * maxAbs(ref), `max error ${err} against ${maxAbs(ref)}`);
    const grads = async (lm: LanguageModel) => {
      const encoder = new PromptEncoder({ type: 'lstm', numVirtualTokens: 3, tokenDim: 64, seed: 2 });
      const head = makeHead({ kind: 'answer', answerField: 'y' }, lm.tokenizer, lm.info.vocabSize);
      const t = parseTemplate('[P*3] {x} [MASK]');
      const items = [{ x: 'w10 w11 w12' }, { x: 'w20 w21' }].map((r, i) => renderExample(t, r, lm.tokenizer, lm.info, { maxLength: 32, index: i })!);
      const r = await new PTuningPrograms(lm, encoder, head).lossAndGrads(collate(items, lm.info), [7, 11]);
      return Float32Array.from(r.graded.flatMap((p) => Array.from(p.grad)));
    };
    const cos = cosine(await grads(float), await grads(int8));
    assert.ok(cos >= 0.99, `cosine ${cos}`);
  } finally {
    float.dispose();
    int8.dispose();
  }
});

/** log p(target) at `position` from input embeddings fed directly, and its gradient to them. */
function embedsProgram(lm: LanguageModel, shape: number[], position: number, target: number, mask: number[]) {
  return {
    key: `test embeds logp ${shape} ${position} ${target}`,
    build: (b: Parameters<Parameters<typeof programs.run>[0]['build']>[0]): ProgramGraph => {
      const { o } = b;
      const w = lm.weights(b);
      const embeds = b.input('embeds', shape);
      const out = lm.fns.hidden(o, w, {
        embeds,
        attentionMask: o.constInt(mask, [1, shape[1]!]),
        ...(lm.info.tokenTypes && { tokenTypeIds: o.constInt(mask.map(() => 0), [1, shape[1]!]) }),
      });
      const rows = o.gather(o.reshape(out.hidden, [shape[1]!, lm.info.hiddenSize]), o.constInt([position], [1]));
      const logp = o.reshape(o.slice(o.logSoftmax(lm.fns.logits(o, w, rows)), [0, target], [1, 1]), [1]);
      return { outputs: { logp }, loss: logp, wrt: { embeds } };
    },
  };
}

test('input gradients of a quantized model against finite differences of its own forward', async () => {
  for (const [name, batch, position, target] of [['bert', bertBatch, 6, 3007], ['gpt2', gptBatch, 7, 2605]] as const) {
    const exact = await loadModel(modelDir(`${name}-mini-lama`), q(4, { backward: 'dequantize', activations: 'float32' }));
    const fast = await loadModel(modelDir(`${name}-mini-lama`), q(4));
    const ids = batch.ids[0]!;
    const table = exact.params.get(name === 'bert' ? 'bert.embeddings.word_embeddings.weight' : 'transformer.wte.weight')!;
    const h = exact.info.hiddenSize;
    const embeds = new Float32Array(ids.length * h);
    ids.forEach((id, i) => embeds.set(table.data.subarray(id * h, (id + 1) * h), i * h));
    const shape = [1, ids.length, h];
    const mask = batch.attentionMask![0]!;
    const run = async (lm: LanguageModel, e: Float32Array) => {
      const r = await lm.run(embedsProgram(lm, shape, position, target, mask), { embeds: { data: e, shape } });
      return { logp: r.outputs.logp!.data[0] as number, grad: r.wrt.embeds!.data as Float32Array };
    };
    const g = (await run(exact, embeds)).grad;
    const eps = 1e-2;
    const coords = [3, h + 17, 2 * h + 64, 4 * h + 127, (position - 1) * h + 5];
    for (const i of coords) {
      const plus = embeds.slice();
      plus[i]! += eps;
      const minus = embeds.slice();
      minus[i]! -= eps;
      const fd = ((await run(exact, plus)).logp - (await run(exact, minus)).logp) / (2 * eps);
      assert.ok(Math.abs(fd - g[i]!) <= 2e-3 + 2e-2 * Math.abs(g[i]!), `${name} coord ${i}: fd ${fd} vs ${g[i]}`);
    }
    // the defaults (int8 activations, a quantized copy of Ŵᵀ for the backward): the same direction
    const gf = (await run(fast, embeds)).grad;
    const cos = cosine(g, gf);
    assert.ok(cos >= 0.95, `${name}: cosine ${cos}`);
  }
});

test('quantized weights are frozen: a trainable LM with quantize, setTrainable and --tune-lm are refused', async () => {
  await assert.rejects(loadModel(modelDir('bert-mini-lama'), { ...q(8), trainable: true }), /quantize cannot be combined with a trainable LM/);
  const lm = await loadModel(modelDir('bert-mini-lama'), q(8));
  assert.throws(() => lm.setTrainable(true), /quantized .* cannot train/);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ptune-quant-cli-'));
  try {
    const data = path.join(shared, 'data/lama/fact-retrieval/original/P1412');
    const r = await runCli(['train', '--model', modelDir('bert-mini-lama'), '--template', '3,3,3', '--answer-field', 'obj_label', '--train', path.join(data, 'train.jsonl'), '--dev', path.join(data, 'dev.jsonl'), '--out', path.join(dir, 'run'), '--quantize', 'int8', '--tune-lm', '--quiet']);
    assert.notEqual(r.code, 0);
    assert.match(r.text, /--quantize cannot be combined with --tune-lm/);
    assert.ok(!fs.existsSync(path.join(dir, 'run', 'config.json')));
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('the quantized store: reused by the second load, a new one when the settings or the weights change', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ptune-quant-model-'));
  const own = fs.mkdtempSync(path.join(os.tmpdir(), 'ptune-quant-cache-'));
  try {
    for (const f of fs.readdirSync(modelDir('gpt2-mini-lama'))) fs.copyFileSync(path.join(modelDir('gpt2-mini-lama'), f), path.join(dir, f));
    fs.chmodSync(path.join(dir, 'model.safetensors'), 0o644);
    const opts = (more = {}): LoadOptions => ({ quantize: { bits: 4, cacheDir: own, ...more } });
    const first = await loadModel(dir, opts());
    assert.equal(first.info.quantization!.reused, false);
    const t0 = performance.now();
    const second = await loadModel(dir, opts());
    const secondMs = performance.now() - t0;
    assert.equal(second.info.quantization!.reused, true);
    assert.equal(second.info.quantization!.store, first.info.quantization!.store);
    const logits = async (lm: LanguageModel) => (await logitsAt(lm, gptBatch, [{ row: 0, position: 7 }]))[0]!;
    assert.deepEqual(Array.from(await logits(second)), Array.from(await logits(first)));
    // settings: another block size, symmetric blocks, the other backward each get their own store
    const stores = new Set([first.info.quantization!.store]);
    for (const more of [{ blockSize: 64 }, { symmetric: true }, { backward: 'dequantize' as const }, { bits: 8, blockSize: 'channel' as const }]) {
      const other = await loadModel(dir, opts(more));
      assert.equal(other.info.quantization!.reused, false, JSON.stringify(more));
      stores.add(other.info.quantization!.store);
      if (more.blockSize === 'channel') {
        // per channel: the int8 values twice ([n, k] and [k, n]) and a scale per row, nothing more
        const q = other.info.quantization!;
        const bytes = fs.statSync(path.join(q.store, 'weights.bin')).size;
        assert.ok(bytes >= 2 * q.values && bytes < 2 * q.values * 1.1, `per channel: ${bytes} bytes for ${q.values} values`);
        assert.equal(q.name, 'int8');
        assert.equal((await loadModel(dir, opts(more))).info.quantization!.reused, true);
      }
    }
    assert.equal(stores.size, 5);
    // int8 activations or float32 products read the same store
    assert.equal((await loadModel(dir, opts({ activations: 'float32' }))).info.quantization!.store, first.info.quantization!.store);
    // the weights: one value of one linear weight changed (the file rewritten)
    const file = path.join(dir, 'model.safetensors');
    const { tensors, metadata } = readSafetensors(file);
    const name = 'transformer.h.0.mlp.c_fc.weight';
    const t = tensors.get(name)!;
    t.data[0]! += 0.5;
    writeSafetensors(file, new Map([...tensors].map(([k, v]) => [k, { shape: v.shape, data: v.data }])), metadata);
    const changed = await loadModel(dir, opts());
    assert.equal(changed.info.quantization!.reused, false);
    assert.notEqual(changed.info.quantization!.store, first.info.quantization!.store);
    assert.notDeepEqual(Array.from(await logits(changed)), Array.from(await logits(first)));
    assert.equal((await loadModel(dir, opts())).info.quantization!.reused, true);
    // the store holds what the loader needs and nothing of the float weights
    const manifest = JSON.parse(fs.readFileSync(path.join(first.info.quantization!.store, 'manifest.json'), 'utf8')) as { tensors: Record<string, unknown> };
    assert.equal(Object.keys(manifest.tensors).length, 16);
    assert.ok(secondMs < 5000);
    const bytes = fs.statSync(path.join(first.info.quantization!.store, 'weights.bin')).size;
    const values = first.info.quantization!.values;
    assert.ok(bytes < values * 1.5, `${bytes} bytes for ${values} values (int4, two copies)`);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
    fs.rmSync(own, { recursive: true, force: true });
  }
});

test('P-tuning a quantized LM: the step trains the encoder only and its gradient points where fp32 does', async () => {
  const make = async (opts: LoadOptions) => {
    const lm = await loadModel(modelDir('bert-mini-lama'), opts);
    const encoder = new PromptEncoder({ type: 'lstm', numVirtualTokens: 3, tokenDim: lm.info.hiddenSize, seed: 1 });
    const head = makeHead({ kind: 'answer', answerField: 'a' }, lm.tokenizer, lm.info.vocabSize);
    return { lm, encoder, p: new PTuningPrograms(lm, encoder, head) };
  };
  const ex = { ids: [101, 103, 103, 103, 3000, 2003, 103, 1012, 102], pseudoPositions: [1, 2, 3], pseudoIndex: [0, 1, 2], answerPosition: 6 };
  const grads = async (opts: LoadOptions) => {
    const { lm, encoder, p } = await make(opts);
    const batch = collate([ex, { ...ex, ids: [101, 103, 103, 103, 2605, 2003, 103, 1012, 102] }], lm.info);
    const r = await p.lossAndGrads(batch, [3007, 2605]);
    assert.ok(r.graded.every((x) => [...encoder.params.values()].includes(x)), 'only the encoder trains');
    return { loss: r.loss, g: Float32Array.from(r.graded.flatMap((x) => Array.from(x.grad))) };
  };
  const ref = await grads({});
  for (const [bits, more] of [[8, {}], [8, { blockSize: 32 }], [4, {}]] as const) {
    const got = await grads(q(bits, more));
    const cos = cosine(ref.g, got.g);
    assert.ok(cos >= (bits === 8 ? 0.99 : 0.9), `int${bits} ${JSON.stringify(more)}: cosine ${cos}`);
    assert.ok(Math.abs(got.loss - ref.loss) <= (bits === 8 ? 0.05 : 0.5) * Math.abs(ref.loss), `int${bits} ${JSON.stringify(more)}: loss ${got.loss} vs ${ref.loss}`);
  }
});

test('deep prompts over a quantized LM: the fp32 prefix alone trains, its gradient points where fp32 does (bert, gpt2)', async () => {
  for (const name of ['bert-mini-lama', 'gpt2-mini-lama']) {
    const grads = async (opts: LoadOptions) => {
      const lm = await loadModel(modelDir(name), opts);
      const prefix = new PrefixEncoder({ numVirtualTokens: 4, projection: false, seed: 3 }, lm.info);
      const head = makeHead({ kind: 'answer', answerField: 'a' }, lm.tokenizer, lm.info.vocabSize);
      const t = parseTemplate(lm.info.kind === 'masked' ? 'The capital of {x} is [MASK] .' : 'The capital of {x} is [MASK]');
      const rows = ['France', 'Italy', 'Japan'].map((x, i) => renderExample(t, { x }, lm.tokenizer, lm.info, { maxLength: 32, index: i })!);
      const r = await new PTuningPrograms(lm, null, head, prefix).lossAndGrads(collate(rows, lm.info), [3000, 4000, 5000]);
      assert.deepEqual(r.graded, [...prefix.params.values()], `${name}: only the prefix trains`);
      const g = Float32Array.from(r.graded.flatMap((x) => Array.from(x.grad)));
      lm.dispose();
      return { loss: r.loss, g };
    };
    const ref = await grads({});
    for (const bits of [8, 4] as const) {
      const got = await grads(q(bits));
      const cos = cosine(ref.g, got.g);
      assert.ok(Number.isFinite(got.loss) && cos >= (bits === 8 ? 0.99 : 0.9), `${name} int${bits}: cosine ${cos}, loss ${got.loss} vs ${ref.loss}`);
    }
  }
});

test('a quantized model has the fingerprint of its float weights: prompts tuned on the same base serve on it', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ptune-quant-fp-'));
  try {
    // a copy elsewhere: the fingerprint comes from the weights, not the path
    for (const f of fs.readdirSync(modelDir('bert-mini-lama'))) fs.copyFileSync(path.join(modelDir('bert-mini-lama'), f), path.join(dir, f));
    const float = await loadModel(modelDir('bert-mini-lama'));
    const quantized = await loadModel(dir, q(8));
    assert.deepEqual(modelFingerprint(quantized), modelFingerprint(float));
    assert.deepEqual(await fingerprintOf(modelDir('bert-mini-lama'), quantized), modelFingerprint(quantized));
    // remembered in the store: a second load of the same store answers without reading the float weights
    const again = await loadModel(dir, q(8));
    assert.ok(fs.existsSync(path.join(again.info.quantization!.store, 'float-weights.sha256')));
    assert.deepEqual(modelFingerprint(again), modelFingerprint(float));
    for (const lm of [float, quantized, again]) lm.dispose();
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

void blockCount;
void rowBytes;
