/**
 * Activations kept at 16 bits between the forward and the backward pass (Runtime.savedActivations): the forward
 * is unchanged, the gradients move by the rounding of the saved values only, and the backward reads no large
 * float32 value of the forward run.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import type { SavedActivations } from '../src/engine/runtime.js';
import { ProgramBuilder, programs, type Program } from '../src/engine/program.js';
import { gradients } from '../src/engine/onnx/autodiff.js';
import { createRandomModel, loadModel, type LoadOptions } from '../src/models/load.js';
import type { LanguageModel } from '../src/models/model.js';
import { PromptEncoder } from '../src/prompt/encoder.js';
import { makeHead } from '../src/prompt/heads.js';
import { PTuningPrograms } from '../src/prompt/programs.js';
import { benchBatch } from '../bench/batch.js';
import { cosine, modelDir, rand, withRuntime } from './fixtures.js';

const withSaved = <R>(p: SavedActivations, fn: () => Promise<R>): Promise<R> => withRuntime('savedActivations', p, fn);

test('a program kept at 16 bits: the same loss, gradients within the rounding of the saved values', async () => {
  const [m, k, n] = [256, 384, 512];
  const w1 = rand(k * n, 1, 0.05);
  const w2 = rand(n * 64, 2, 0.05);
  const x = rand(m * k, 3);
  const program: Program = {
    key: 'test saved activations',
    build: (b) => {
      const o = b.o;
      const xs = b.input('x', [m, k]);
      const h = o.tanh(o.matmul(xs, o.constFloat(w1, [k, n])));
      const y = o.matmul(o.gelu(o.mul(h, h)), o.constFloat(w2, [n, 64]));
      const loss = o.reshape(o.sum(o.reshape(o.mul(y, y), [1, m * 64]), 1), [1]);
      return { outputs: { loss }, loss, wrt: { x: xs } };
    },
  };
  const run = () => programs.run(program, { x: { data: x, shape: [m, k] } }, () => undefined);
  const full = await withSaved('float32', run);
  const half = await withSaved('float16', run);
  assert.equal(half.outputs.loss!.data[0], full.outputs.loss!.data[0], 'the forward is the same');
  const a = full.wrt.x!.data as Float32Array;
  const b = half.wrt.x!.data as Float32Array;
  let diff = 0;
  let scale = 0;
  for (let i = 0; i < a.length; i++) (diff = Math.max(diff, Math.abs(a[i]! - b[i]!))), (scale = Math.max(scale, Math.abs(a[i]!)));
  assert.ok(diff > 0, 'the saved values were rounded');
  assert.ok(diff <= 5e-3 * scale, `largest difference ${diff}, largest gradient ${scale}`);
  assert.ok(cosine(a, b) >= 0.99999, `cosine ${cosine(a, b)}`);
});

test('kept at 16 bits, the backward reads no float32 value of the forward run above the size bound; the forward reads the copies only once they exist', () => {
  const lm = createRandomModel('gpt2', { hiddenSize: 32, numLayers: 2, numHeads: 4, intermediateSize: 64, maxPositions: 64, vocabSize: 120 }, 9);
  try {
    const b = new ProgramBuilder();
    const w = lm.weights(b);
    const embeds = b.input('embeds', [2, 5, 32], 'float32');
    const out = lm.fns.hidden(b.o, w, { embeds, attentionMask: b.input('attention_mask', [2, 5], 'int32') });
    const loss = b.o.sum(b.o.reshape(b.o.mul(out.hidden, out.hidden), [-1]), 0);
    const graph = b.g;
    const original = new Set(graph.nodes);
    const [dx] = gradients(b.o, loss, b.o.constFloat([1], loss.shape), [embeds], { savedActivations: 'float16', halfMinSize: 64 });
    assert.ok(dx);
    const lastForward = Math.max(...graph.nodes.map((n, i) => (original.has(n) ? i : -1)));
    const forward = graph.nodes.slice(0, lastForward + 1);
    const backward = graph.nodes.slice(lastForward + 1);
    const produced = new Map(forward.flatMap((n) => n.outputSyms.map((s) => [s.name, s] as const)));
    const inputs = new Set(graph.inputs.map((s) => s.name));
    const read = new Map(backward.flatMap((n) => n.inputs.map((x) => [x, produced.get(x)] as const)).filter(([x, s]) => s && !inputs.has(x)));
    const big32 = [...read.values()].filter((s) => s!.dtype === 'float32' && s!.size >= 64);
    assert.deepEqual(big32.map((s) => `${s!.name} [${s!.shape}]`), []);
    const halves = [...read.values()].filter((s) => s!.dtype === 'float16');
    assert.ok(halves.length >= 6, `${halves.length} values kept at 16 bits`);
    // each half copy sits right after the value it copies, and the forward's consumers read the value through a gate on it
    const index = new Map(graph.nodes.map((n, i) => [n, i]));
    for (const h of halves) {
      const cast = forward.find((n) => n.outputs.includes(h!.name))!;
      const source = forward.find((n) => n.outputs.includes(cast.inputs[0]!))!;
      assert.ok(index.get(cast)! > index.get(source)! && index.get(cast)! <= index.get(source)! + 2, 'the copy follows its value');
      const direct = forward.filter((n) => n !== cast && original.has(n) && n.inputs.includes(cast.inputs[0]!));
      assert.deepEqual(direct.map((n) => n.op), [], 'forward consumers read the gated value');
    }
  } finally {
    lm.dispose();
  }
});

test('kept at 16 bits: values computed from the weights alone (the LSTM encoder\'s stacked weights) stay float32', () => {
  const halves = (weighted: boolean): string[] => {
    const encoder = new PromptEncoder({ type: 'lstm', numVirtualTokens: 9, tokenDim: 64, seed: 1 });
    const b = new ProgramBuilder();
    const y = encoder.inProgram(b, true, false);
    const hidden = b.o.tanh(b.o.matmul(b.input('x', [9, 64]), y, true)); // an activation: data times the encoder's rows
    const loss = b.o.sum(b.o.reshape(b.o.mul(hidden, hidden), [-1]), 0);
    const params = [...b.params.values()].map((p) => p.sym);
    const weights = weighted ? new Set(params.map((s) => s.name)) : undefined;
    gradients(b.o, loss, b.o.constFloat([1], loss.shape), params, { savedActivations: 'float16', halfMinSize: 64, weights });
    return b.g.nodes.filter((n) => n.op === 'Cast' && n.outputSyms[0]!.dtype === 'float16').map((n) => n.inputs[0]!);
  };
  assert.ok(halves(false).length > 0, 'without the weights named, the encoder\'s values are taken for activations');
  const kept = halves(true);
  assert.equal(kept.length, 1, `only the activation is kept at 16 bits: ${kept.join(', ')}`);
});

async function ptuneStep(opts: LoadOptions, saved: SavedActivations): Promise<{ loss: number; grad: Float32Array }> {
  const lm: LanguageModel = await loadModel(modelDir('bert-mini-lama'), opts);
  try {
    const encoder = new PromptEncoder({ type: 'lstm', numVirtualTokens: 9, tokenDim: lm.info.hiddenSize, seed: 1 });
    const head = makeHead({ kind: 'answer', answerField: 'a' }, lm.tokenizer, lm.info.vocabSize);
    const p = new PTuningPrograms(lm, encoder, head);
    // a batch of the bench's size: its activations are above the 65,536-element bound
    const batch = benchBatch(lm, 16, 32, 9);
    const r = await withSaved(saved, () => p.lossAndGrads(batch, Array.from({ length: 16 }, (_, i) => 1000 + i * 7)));
    return { loss: r.loss, grad: Float32Array.from(r.graded.flatMap((x) => Array.from(x.grad))) };
  } finally {
    lm.dispose();
  }
}

test('P-tuning step: auto keeps float32 over float weights and float16 over quantized ones; float16 moves the gradient by its rounding only', async () => {
  const fp32 = await ptuneStep({}, 'float32');
  const auto = await ptuneStep({}, 'auto');
  assert.deepEqual(Array.from(auto.grad), Array.from(fp32.grad), 'auto over float weights: float32');
  const half = await ptuneStep({}, 'float16');
  assert.equal(half.loss, fp32.loss);
  assert.ok(cosine(half.grad, fp32.grad) >= 0.9999, `fp32 model, float16 saved: cosine ${cosine(half.grad, fp32.grad)}`);
  assert.notDeepEqual(Array.from(half.grad), Array.from(fp32.grad));
  const q = { quantize: { bits: 8 as const } };
  const qFull = await ptuneStep(q, 'float32');
  const qAuto = await ptuneStep(q, 'auto');
  const qHalf = await ptuneStep(q, 'float16');
  assert.deepEqual(Array.from(qAuto.grad), Array.from(qHalf.grad), 'auto over quantized weights: float16');
  assert.equal(qAuto.loss, qFull.loss);
  // the int8 kernels quantize what they read per tensor: a rounded saved value can move an 8-bit step there
  assert.ok(cosine(qAuto.grad, qFull.grad) >= 0.999, `int8, float16 saved: cosine ${cosine(qAuto.grad, qFull.grad)}`);
});

test('ptune --saved-activations: a bad value is refused in one line', () => {
  const r = spawnSync(process.execPath, ['bin/ptune.js', '--saved-activations', 'bf16', 'info', modelDir('bert-mini-lama')], { encoding: 'utf8' });
  assert.equal(r.status, 2, r.stderr);
  assert.match(r.stderr.trim(), /^ptune: --saved-activations: expected one of float32, float16, auto, got "bf16"$/);
});
