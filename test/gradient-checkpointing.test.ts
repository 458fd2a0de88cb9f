/**
 * Gradient checkpointing (Runtime.gradientCheckpointing): the backward pass recomputes each layer's
 * activations from the layer's input. Gradients must equal those of the plain program, and the backward must
 * read no forward value from inside a layer other than the layer's inputs.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ProgramBuilder } from '../src/engine/program.js';
import { gradients } from '../src/engine/onnx/autodiff.js';
import { createRandomModel, loadModel } from '../src/models/load.js';
import type { LanguageModel } from '../src/models/model.js';
import { PromptEncoder } from '../src/prompt/encoder.js';
import { makeHead } from '../src/prompt/heads.js';
import { PrefixEncoder } from '../src/prompt/prefix.js';
import { PTuningPrograms } from '../src/prompt/programs.js';
import { collate, renderExample } from '../src/prompt/render.js';
import { parseTemplate } from '../src/prompt/template.js';
import { modelDir, shared, withRuntime } from './fixtures.js';

const SMALL = { hiddenSize: 32, numLayers: 3, numHeads: 4, intermediateSize: 64, maxPositions: 64, vocabSize: 120 };
const RECORDS = [{ x: 'w10 w11 w12' }, { x: 'w20 w21' }, { x: 'w30 w31 w32 w33' }];

const withCheckpointing = <R>(on: boolean, fn: () => Promise<R>): Promise<R> => withRuntime('gradientCheckpointing', on, fn);

function batchOf(lm: LanguageModel, template: string) {
  const t = parseTemplate(template);
  return collate(RECORDS.map((r, i) => renderExample(t, r, lm.tokenizer, lm.info, { maxLength: 32, index: i })!), lm.info);
}

/** One P-tuning step's loss and gradients, with and without checkpointing; returns the largest difference. */
async function compare(lm: LanguageModel, method: 'ptuning' | 'prefix'): Promise<{ loss: number; diff: number; scale: number }> {
  const masked = lm.info.kind === 'masked';
  const template = method === 'ptuning' ? (masked ? '[P*3] {x} [MASK] .' : '[P*3] {x} [MASK]') : masked ? '{x} [MASK] .' : '{x} [MASK]';
  const encoder = method === 'ptuning' ? new PromptEncoder({ type: 'lstm', numVirtualTokens: 3, tokenDim: lm.info.embeddingSize ?? lm.info.hiddenSize, seed: 2 }) : null;
  const prefix = method === 'prefix' ? new PrefixEncoder({ numVirtualTokens: 3, projection: true, seed: 4 }, lm.info) : undefined;
  const head = makeHead({ kind: 'answer', answerField: 'y' }, lm.tokenizer, lm.info.vocabSize);
  const programs = new PTuningPrograms(lm, encoder, head, prefix);
  const batch = batchOf(lm, template);
  const targets = [7, 11, 13];
  const step = async () => {
    const r = await programs.lossAndGrads(batch, targets);
    return { loss: r.loss, grads: r.graded.map((p) => ({ name: p.name, grad: Float32Array.from(p.grad) })) };
  };
  const plain = await withCheckpointing(false, step);
  const recomputed = await withCheckpointing(true, step);
  assert.ok(Math.abs(plain.loss - recomputed.loss) < 1e-6, `loss ${plain.loss} against ${recomputed.loss}`);
  assert.deepEqual(recomputed.grads.map((g) => g.name), plain.grads.map((g) => g.name));
  assert.ok(plain.grads.length > 0);
  let diff = 0;
  let scale = 0;
  plain.grads.forEach((g, k) => {
    const r = recomputed.grads[k]!.grad;
    for (let i = 0; i < g.grad.length; i++) {
      diff = Math.max(diff, Math.abs(g.grad[i]! - r[i]!));
      scale = Math.max(scale, Math.abs(g.grad[i]!));
    }
  });
  return { loss: plain.loss, diff, scale };
}

const models: [string, () => Promise<LanguageModel>][] = [
  ['bert-mini-lama', () => loadModel(modelDir('bert-mini-lama'))],
  ['gpt2-mini-lama', () => loadModel(modelDir('gpt2-mini-lama'))],
  ['random llama', async () => createRandomModel('llama', { ...SMALL, numKvHeads: 2 }, 5)],
  ['random albert', async () => createRandomModel('albert', { ...SMALL, embeddingSize: 16 }, 6)],
  ['tiny gemma2', () => loadModel(modelDir('tiny/gemma2'))],
];

for (const [name, make] of models) {
  let lm: LanguageModel;
  before(async () => (lm = await make()));
  after(() => lm.dispose());
  for (const method of ['ptuning', 'prefix'] as const) {
    test(`${name}, ${method}: gradients with checkpointing equal the plain program's`, async (t) => {
      if (method === 'prefix' && lm.info.past && !lm.info.past.ptune) return t.skip('no deep prompts on this family');
      const { loss, diff, scale } = await compare(lm, method);
      assert.ok(Number.isFinite(loss));
      assert.ok(diff <= 1e-5 * Math.max(1, scale), `largest gradient difference ${diff} (largest gradient ${scale})`);
    });
  }
}

test('with checkpointing the backward reads, of each layer, only its inputs; the forward copies are gated on the gradient', async () => {
  const lm = createRandomModel('gpt2', SMALL, 9);
  try {
    const b = new ProgramBuilder();
    const w = lm.weights(b);
    const embeds = b.input('embeds', [2, 5, SMALL.hiddenSize], 'float32');
    const out = lm.fns.hidden(b.o, w, { embeds, attentionMask: b.input('attention_mask', [2, 5], 'int32') });
    const loss = b.o.sum(b.o.reshape(b.o.mul(out.hidden, out.hidden), [-1]), 0);
    const graph = b.g;
    const marks = graph.checkpoints.slice();
    assert.equal(marks.length, SMALL.numLayers + 1, 'a checkpoint before each layer and after the last');
    const forward = graph.nodes.length;
    const inside = new Set<string>();
    for (let k = 0; k + 1 < marks.length; k++) for (const n of graph.nodes.slice(marks[k], marks[k + 1])) for (const o of n.outputs) inside.add(o);
    const layerInputs = new Set(marks.map((m) => graph.nodes[m - 1]?.outputs[0]).filter((x): x is string => !!x));
    const [dx] = gradients(b.o, loss, b.o.constFloat([1], loss.shape), [embeds], { recompute: true });
    assert.ok(dx);
    const backward = graph.nodes.slice(forward);
    const read = backward.flatMap((n) => n.inputs).filter((x) => inside.has(x) && !layerInputs.has(x));
    assert.deepEqual([...new Set(read)], [], 'backward nodes read forward activations from inside a layer');
    // a gate: x reshaped to its own shape, the shape computed from an element of the gradient (Ops.after)
    const producer = new Map(graph.nodes.flatMap((n) => n.outputs.map((o) => [o, n] as const)));
    const gates = backward.filter((n) => n.op === 'Reshape' && producer.get(n.inputs[1]!)?.op === 'Add' && layerInputs.has(n.inputs[0]!));
    assert.ok(gates.length >= SMALL.numLayers, `${gates.length} gated layer inputs`);
  } finally {
    lm.dispose();
  }
});

test('ptune --gradient-checkpointing train: the same losses as without', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ptune-gc-'));
  try {
    const rel = path.join(shared, 'data/lama/fact-retrieval/original/P1412');
    const take = (split: string, n: number) => fs.readFileSync(path.join(rel, `${split}.jsonl`), 'utf8').trim().split('\n').slice(0, n).join('\n') + '\n';
    fs.writeFileSync(path.join(dir, 'train.jsonl'), take('train', 24));
    fs.writeFileSync(path.join(dir, 'dev.jsonl'), take('dev', 8));
    const losses = (global: string[], out: string) => {
      const r = spawnSync(process.execPath, ['bin/ptune.js', ...global, 'train', '--model', modelDir('gpt2-mini-lama'), '--train', path.join(dir, 'train.jsonl'),
        '--dev', path.join(dir, 'dev.jsonl'), '--template', '[P*3] {sub_label} [P*2] [MASK]', '--answer-field', 'obj_label', '--max-steps', '20', '--epochs', '10', '--eval-every', '10',
        '--batch-size', '6', '--seed', '3', '--quiet', '--out', path.join(dir, out)], { encoding: 'utf8', env: { ...process.env, PTUNE_GRADIENT_CHECKPOINTING: '' } });
      assert.equal(r.status, 0, r.stderr);
      const rows = fs.readFileSync(path.join(dir, out, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { loss?: number });
      return rows.map((x) => x.loss).filter((x): x is number => typeof x === 'number');
    };
    const plain = losses([], 'plain');
    const recomputed = losses(['--gradient-checkpointing'], 'recomputed');
    assert.ok(plain.length >= 2, `losses logged: ${plain}`);
    assert.equal(recomputed.length, plain.length);
    plain.forEach((l, i) => assert.ok(Math.abs(l - recomputed[i]!) < 1e-4, `loss ${i}: ${l} against ${recomputed[i]}`));
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
