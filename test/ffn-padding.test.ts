/**
 * Feed-forward inner widths that are multiples of 1,024 are held 32 wider on the host (`hostWidth`): zero columns
 * in the up-projection, zero rows in the down-projection. The model computes what the stored shapes compute,
 * trains the same way, and everything ptune writes keeps the stored shapes.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createRandomModel } from '../src/models/load.js';
import { hostWidth, SyntheticTokenizer } from '../src/models/common.js';
import { cropTo, padInPlace, padTo, Parameter } from '../src/engine/tensor.js';
import { readSafetensors } from '../src/engine/safetensors.js';
import { loadParams, saveParams } from '../src/train/checkpoint.js';
import { Adam } from '../src/train/optim.js';
import { PTuningSession } from '../src/train/session.js';
import { tunedLmConfig } from './fixtures.js';

test('padTo / padInPlace / cropTo: values at the start of every axis, zeros after them, and back', () => {
  const src = Float32Array.from({ length: 2 * 3 * 2 }, (_, i) => i + 1);
  const padded = padTo(src, [2, 3, 2], [3, 4, 2]);
  assert.equal(padded.length, 24);
  assert.deepEqual([...padded.subarray(0, 8)], [1, 2, 3, 4, 5, 6, 0, 0]);
  assert.deepEqual([...padded.subarray(8, 16)], [7, 8, 9, 10, 11, 12, 0, 0]);
  assert.ok(padded.subarray(16).every((v) => v === 0));
  assert.deepEqual(cropTo(padded, [3, 4, 2], [2, 3, 2]), src);
  assert.deepEqual([...padTo(Float32Array.of(1, 2), [2], [4])], [1, 2, 0, 0]);
  const inPlace = new Float32Array(24).fill(-1);
  inPlace.set(src);
  padInPlace(inPlace, [2, 3, 2], [3, 4, 2]);
  assert.deepEqual(inPlace, padded);
  assert.equal(hostWidth(3072), 3104);
  assert.equal(hostWidth(1024), 1056);
  assert.equal(hostWidth(5632), 5632);
  assert.equal(hostWidth(37), 37);
});

test('Parameter: stored layout in and out; a stored shape that does not fit is refused', () => {
  const p = new Parameter('w', [3, 2], padTo(Float32Array.of(1, 2, 3, 4), [2, 2], [3, 2]), false, [2, 2]);
  assert.equal(p.storedSize, 4);
  assert.deepEqual([...p.toStored()], [1, 2, 3, 4]);
  assert.deepEqual([...p.fromStored(Float32Array.of(5, 6, 7, 8))], [5, 6, 7, 8, 0, 0]);
  assert.throws(() => p.fromStored(new Float32Array(5)), /5 values for shape \[2,2\]/);
  assert.throws(() => new Parameter('x', [2, 2], new Float32Array(4), false, [3, 2]), /stored shape \[3,2\] does not fit in \[2,2\]/);
});

/** Tiny models whose inner width (1,024) is padded, one per family that pads; the template its kind takes. */
const FAMILIES = [
  ['bert', '[P*2] {x} [P] [MASK] .', {}],
  ['distilbert', '[P*2] {x} [P] [MASK] .', {}],
  ['albert', '[P*2] {x} [P] [MASK] .', { embeddingSize: 8, numHiddenGroups: 1, innerGroupNum: 1 }],
  ['deberta-v2', '[P*2] {x} [P] [MASK] .', {}],
  ['gpt2', '[P*2] {x} [P] [MASK]', {}],
  ['llama', '[P*2] {x} [P] [MASK]', { numKvHeads: 2, headDim: 4 }],
  ['gemma2', '[P*2] {x} [P] [MASK]', { numKvHeads: 2, headDim: 4 }],
] as const;

function tinyLm(family: string, extra: Record<string, number>, pad: boolean) {
  const dims = { vocabSize: 40, hiddenSize: 8, numLayers: 2, numHeads: 2, intermediateSize: 1024, maxPositions: 32, ...extra };
  return createRandomModel(family, dims, 3, new SyntheticTokenizer(40), { trainable: true, padFeedForward: pad });
}

for (const [family, template, extra] of FAMILIES) {
  test(`${family}: a padded inner width gives the stored shapes' loss, gradients and parameter count`, async () => {
    const padded = tinyLm(family, extra, true);
    const plain = tinyLm(family, extra, false);
    const widened = [...padded.params.values()].filter((p) => p.size !== p.storedSize);
    assert.ok(widened.length >= 2, `${family}: the up and down projections are widened`);
    for (const p of widened) {
      assert.ok(p.shape.includes(1056) && p.storedShape.includes(1024), `${p.name}: [${p.shape}] holds [${p.storedShape}]`);
      assert.deepEqual(p.toStored(), plain.params.get(p.name)!.data, `${p.name}: the stored values`);
    }
    assert.equal(padded.info.parameterCount, plain.info.parameterCount);

    const records = [{ x: 'w7 w8 w9', y: 'a' }, { x: 'w9', y: 'b' }, { x: 'w12 w13', y: 'a' }];
    const a = await PTuningSession.create(tunedLmConfig(template, false), padded);
    const b = await PTuningSession.create(tunedLmConfig(template, false), plain);
    const ra = await a.lossAndGrads(a.prepare(records, 'padded').items);
    const rb = await b.lossAndGrads(b.prepare(records, 'plain').items);
    assert.ok(Math.abs(ra.loss - rb.loss) < 1e-5, `loss ${ra.loss} vs ${rb.loss}`);
    const byName = new Map(rb.graded.map((p) => [p.name, p]));
    for (const p of ra.graded) {
      const q = byName.get(p.name)!;
      const g = p.toStored(p.grad);
      const err = Math.max(...g.map((v, i) => Math.abs(v - q.grad[i]!)));
      const scale = Math.max(1e-3, ...q.grad.map(Math.abs));
      assert.ok(err <= 1e-4 * scale, `${p.name}: gradient differs by ${err} (scale ${scale})`);
      if (p.size !== p.storedSize) assert.deepEqual(p.fromStored(g), p.grad, `${p.name}: the padding's gradient is exactly zero`);
    }
  });
}

test("Phi-3's fused gate | up projection, split at the inner width, stays as stored", () => {
  const dims = { vocabSize: 40, hiddenSize: 8, numLayers: 1, numHeads: 2, numKvHeads: 2, headDim: 4, intermediateSize: 1024, maxPositions: 32 };
  const lm = createRandomModel('phi3', dims, 3, new SyntheticTokenizer(40));
  assert.deepEqual(lm.params.get('model.layers.0.mlp.gate_up_proj.weight')!.shape, [2048, 8]);
  assert.ok([...lm.params.values()].every((p) => p.size === p.storedSize));
});

test('checkpoints and optimizer state hold the stored shapes, and load into a padded model as into a plain one', () => {
  const padded = tinyLm('bert', {}, true);
  const plain = tinyLm('bert', {}, false);
  const name = 'bert.encoder.layer.0.output.dense.weight';
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ptune-pad-'));
  try {
    const file = path.join(dir, 'params.safetensors');
    saveParams(file, padded.params);
    const saved = readSafetensors(file).tensors.get(name)!;
    assert.deepEqual(saved.shape, [8, 1024]);
    assert.deepEqual(saved.data, plain.params.get(name)!.data);

    // a plain model's checkpoint (as ptune wrote before padding) loads into the padded model
    for (const p of plain.params.values()) p.data.fill(0.5);
    saveParams(file, plain.params);
    loadParams(file, padded.params);
    const p = padded.params.get(name)!;
    assert.ok(p.toStored().every((v) => v === 0.5));
    assert.equal(p.data.reduce((s, v) => s + v, 0), 0.5 * p.storedSize, 'the padding stays zero');

    // Adam's moments: in the stored layout out, either layout in
    const params = new Map([[name, p]]);
    const adam = new Adam([{ params, lr: 1e-3 }]);
    adam.step(new Map([[name, p.fromStored(new Float32Array(p.storedSize).fill(1))]]));
    const state = adam.state();
    assert.equal(state.params.get(name)!.m.length, p.storedSize);
    const again = new Adam([{ params, lr: 1e-3 }]);
    again.loadState(state);
    assert.deepEqual(again.state().params.get(name)!.v, state.params.get(name)!.v);
    assert.ok(cropTo(p.data, p.shape, [8, 1024]).every((v) => Math.abs(v - 0.499) < 1e-6), 'the update reached the stored values');
    assert.equal(p.data[1030], 0, 'the padding stays zero after a step');
    adam.dispose();
    again.dispose();
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('a checkpoint on disk loads padded straight into the host arrays (F32 and F16), equal to the stored shapes', async () => {
  const { loadModel, loadModelFrom } = await import('../src/models/load.js');
  const { blobSource } = await import('../src/io/files.js');
  const { writeSafetensors } = await import('../src/engine/safetensors.js');
  const { HfTokenizer } = await import('../src/tokenizers/hf.js');
  const mini = path.resolve('../shared/models/bert-mini-lama');
  const tok = HfTokenizer.fromDir(mini);
  const dims = { vocabSize: tok.vocabSize, hiddenSize: 8, numLayers: 1, numHeads: 2, intermediateSize: 1024, maxPositions: 32 };
  const lm = createRandomModel('bert', dims, 4, tok, { padFeedForward: false });
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ptune-pad-load-'));
  try {
    for (const f of ['tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json', 'vocab.txt']) fs.copyFileSync(path.join(mini, f), path.join(dir, f));
    fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(lm.family.toHfConfig(lm.config)));
    const half = 'bert.encoder.layer.0.intermediate.dense.weight';
    const toHalf = (x: Float32Array) => Uint16Array.from(x, f16);
    const tensors = new Map([...lm.params].map(([n, p]) => [n, n === half ? { shape: p.shape, data: toHalf(p.data), dtype: 'F16' as const } : { shape: p.shape, data: p.data }]));
    writeSafetensors(path.join(dir, 'model.safetensors'), tensors);
    const padded = await loadModel(dir);
    const plain = await loadModel(dir, { padFeedForward: false });
    // the same file held in memory (a FileSource), padded when asked
    const files = Object.fromEntries(fs.readdirSync(dir).map((f) => [f, new Uint8Array(fs.readFileSync(path.join(dir, f)))]));
    const fromMemory = await loadModelFrom(blobSource(files), { padFeedForward: true });
    assert.ok([...(await loadModelFrom(blobSource(files))).params.values()].every((p) => p.size === p.storedSize), 'a FileSource loads unpadded by default');
    for (const [n, p] of fromMemory.params) assert.deepEqual(p.data, padded.params.get(n)!.data, `${n}: from memory as from disk`);
    let widened = 0;
    for (const [n, p] of padded.params) {
      const q = plain.params.get(n)!;
      assert.deepEqual(p.toStored(), q.data, `${n}: the stored values`);
      if (p.size === p.storedSize) continue;
      widened++;
      assert.equal(p.data.reduce((s, v) => s + Math.abs(v), 0), q.data.reduce((s, v) => s + Math.abs(v), 0), `${n}: zeros in the padding`);
    }
    assert.equal(widened, 3, 'the up projection, its bias and the down projection');
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

/** float → IEEE 754 binary16 bits (round to nearest; normal range is enough here) */
function f16(v: number): number {
  const f = new Float32Array([v]);
  const b = new Uint32Array(f.buffer)[0]!;
  const sign = (b >>> 16) & 0x8000;
  const exp = ((b >>> 23) & 0xff) - 127 + 15;
  if (exp <= 0) return sign;
  return sign | ((exp << 10) + Math.round((b & 0x7fffff) / 8192));
}
