/**
 * The LM's own dropout when it trains (`optim.lmDropout`, `ptune train --tune-lm`): masks drawn from a seeded
 * stream and fed to the training program, the same masks in its backward pass (finite differences with the stream
 * rewound), none in evaluation.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createRandomModel } from '../src/models/load.js';
import { SyntheticTokenizer } from '../src/models/common.js';
import { PTuningSession } from '../src/train/session.js';
import { Rng } from '../src/util/rng.js';
import { checkCentralDifferences, tunedLmConfig, withRuntime } from './fixtures.js';

test('Rng.dropoutMask makes its mask from the draws next() makes, and leaves the stream where they do', () => {
  const a = new Rng(7);
  const b = new Rng(7);
  const mask = a.dropoutMask(10_001, 0.3);
  const expected = Float32Array.from({ length: 10_001 }, () => (b.next() < 0.3 ? 0 : 1 / 0.7));
  assert.deepEqual(mask, expected);
  assert.deepEqual(a.state(), b.state());
  const zeros = mask.filter((v) => v === 0).length / mask.length;
  assert.ok(Math.abs(zeros - 0.3) < 0.02, `fraction dropped ${zeros}`);
});

/** A tiny random LM of `family` whose weights train, with these dropout rates in its config. */
function tinyLm(family: 'bert' | 'gpt2', rates: Record<string, number>, seed: number) {
  const dims = { vocabSize: 40, hiddenSize: 8, numLayers: 2, numHeads: 2, intermediateSize: 16, maxPositions: 32 };
  return createRandomModel(family, { ...dims, ...rates }, seed, new SyntheticTokenizer(40), { trainable: true });
}

const FAMILIES = [
  ['bert', { hiddenDropout: 0.3, attentionDropout: 0.3 }, '[P*2] {x} [P] [MASK] .'],
  ['gpt2', { embdDropout: 0.3, attnDropout: 0.3, residDropout: 0.3 }, '[P*2] {x} [P] [MASK]'],
] as const;

for (const [family, rates, template] of FAMILIES) {
  test(`${family}: a tuned LM trains with its config's dropout — seeded, in the backward too, never in evaluation`, async () => {
    const lm = tinyLm(family, rates, 5);
    const records = [{ x: 'w7 w8 w9', y: 'a' }, { x: 'w9', y: 'b' }, { x: 'w12 w13', y: 'a' }];
    const plain = await PTuningSession.create(tunedLmConfig(template, false), lm);
    const s = await PTuningSession.create(tunedLmConfig(template, true), lm);
    assert.equal(plain.programs.lmDropout, null, 'lmDropout false: no stream');
    const stream = s.programs.lmDropout!;
    assert.ok(stream, 'lmDropout with tuneLm: a stream');
    const { items } = s.prepare(records, 'dropout');

    const plainLoss = (await plain.lossAndGrads(items)).loss;
    const start = stream.state();
    const lossAt = async () => {
      stream.restore(start);
      return (await s.lossAndGrads(items)).loss;
    };
    const first = await lossAt();
    assert.notEqual(first, plainLoss, 'dropout changes the training loss');
    assert.equal(await lossAt(), first, 'the same stream position, the same masks');
    stream.restore(start);
    await s.lossAndGrads(items);
    assert.notEqual((await s.lossAndGrads(items)).loss, first, 'the next step draws new masks');

    // masks of ones are no dropout at all
    s.programs.lmDropout = { dropoutMask: (n: number) => new Float32Array(n).fill(1) } as unknown as Rng;
    assert.ok(Math.abs((await s.lossAndGrads(items)).loss - plainLoss) < 1e-6, 'all kept: the plain loss');
    s.programs.lmDropout = stream;

    // evaluation reads no masks
    const a = await plain.evaluateItems(items);
    const b = await s.evaluateItems(items);
    assert.deepEqual(b.metrics, a.metrics);

    // the gradient of the masked loss, with the masks held fixed
    stream.restore(start);
    const params = s.trainedParams();
    const { graded } = await s.lossAndGrads(items);
    assert.equal(graded.length, params.size);
    const grads = new Map([...params].map(([k, p]) => [k, Float32Array.from(p.grad)]));
    let checked = 0;
    // the encoder, and the first layer's MLP (its gradient passes every dropout site after it)
    const firstMlp = [...params.keys()].find((k) => /\.0\.(intermediate\.dense|mlp\.c_fc)\.weight$/.test(k));
    assert.ok(firstMlp, 'the first MLP weight trains');
    for (const name of ['encoder.mlp_head.0.weight', firstMlp]) checked += await checkCentralDifferences(name, params.get(name)!, grads.get(name)!, lossAt);
    assert.equal(checked, 6);
  });
}

test('with gradient checkpointing the recomputed layers read the same masks: the same loss and gradients', async () => {
  const lm = tinyLm('bert', { hiddenDropout: 0.3, attentionDropout: 0.3 }, 6);
  const s = await PTuningSession.create(tunedLmConfig('{x} [P*2] [MASK] .', true), lm);
  const { items } = s.prepare([{ x: 'w7 w8 w9', y: 'a' }, { x: 'w12', y: 'b' }], 'gc');
  const stream = s.programs.lmDropout!;
  const start = stream.state();
  const step = async () => {
    stream.restore(start);
    const { loss, graded } = await s.lossAndGrads(items);
    return { loss, grads: graded.map((p) => Float32Array.from(p.grad)) };
  };
  const plain = await step();
  const recomputed = await withRuntime('gradientCheckpointing', true, step);
  assert.ok(Math.abs(recomputed.loss - plain.loss) < 1e-6, `loss ${recomputed.loss} vs ${plain.loss}`);
  assert.equal(recomputed.grads.length, plain.grads.length);
  recomputed.grads.forEach((g, i) => g.forEach((v, j) => assert.ok(Math.abs(v - plain.grads[i]![j]!) < 1e-5, `gradient ${i}[${j}]: ${v} vs ${plain.grads[i]![j]}`)));
});
