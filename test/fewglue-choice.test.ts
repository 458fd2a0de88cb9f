import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { programs } from '../src/engine/index.js';
import { loadModel } from '../src/models/load.js';
import { logitsAt, sequenceLogits } from '../src/models/forward.js';
import { parseTemplate } from '../src/prompt/template.js';
import { PTuningSession } from '../src/train/session.js';
import { ChoiceTask } from '../src/tasks/fewglue/choice-tasks.js';
import { loadPatterns } from '../src/tasks/fewglue/patterns.js';
import { loadTaskData, patternFor, resolveOptions, runFewGlue, sessionConfig, type FewGlueReport } from '../src/tasks/fewglue/run.js';
import { answerTokens, bestThreshold, ChoiceScorer, expandMasks, renderChoices } from '../src/tasks/fewglue/scoring.js';

const SHARED = path.resolve(process.cwd(), '../shared');
const DATA = path.join(SHARED, 'data');
const BERT = path.join(SHARED, 'models/bert-mini-lama');
const GPT2 = path.join(SHARED, 'models/gpt2-mini-lama');

/** float64 log-softmax of a logits row, at `id`. */
function logProb(logits: Float32Array, id: number): number {
  let m = -Infinity;
  for (const v of logits) m = Math.max(m, v);
  let z = 0;
  for (const v of logits) z += Math.exp(v - m);
  return logits[id]! - m - Math.log(z);
}

test('masked LM: the answer slot holds n masks for an n-token candidate; later pseudo positions shift by n-1', async () => {
  const lm = await loadModel(BERT);
  const template = parseTemplate('{premise} because [MASK] [P] .');
  const cands = ['rain', 'the man went home to sleep'];
  const item = renderChoices(lm, template, { premise: 'the grass was wet' }, cands, 0, { maxLength: 64 });
  const mask = lm.info.special.mask!;
  const one = expandMasks(item.seqs[0]!, 1, mask);
  assert.equal(item.cands.length, 2);
  assert.notEqual(item.cands[0]!.seq, item.cands[1]!.seq, 'different lengths need different inputs');
  for (const c of item.cands) {
    const seq = item.seqs[c.seq]!;
    const n = c.tokens.length;
    assert.equal(seq.ids.filter((id) => id === mask).length, n);
    for (let j = 0; j < n; j++) assert.equal(seq.ids[seq.answerPosition + j], mask);
    assert.equal(seq.ids[seq.answerPosition + n], one.ids[one.answerPosition + 1], 'the token after the masks is the pseudo placeholder');
    assert.deepEqual(seq.pseudoPositions, [one.answerPosition + n]);
    assert.equal(seq.ids.length, one.ids.length + n - 1);
    assert.equal(seq.tokenTypeIds!.length, seq.ids.length);
  }
  assert.ok(item.cands[1]!.tokens.length > 3);
  assert.deepEqual(item.cands[1]!.tokens, answerTokens(lm, template, cands[1]!));
  // the scorer's sum is each answer token's log-prob at its own mask, read from the full logits of its input
  // (no prompt encoder: the pseudo slot keeps its placeholder embedding)
  const [scored] = await new ChoiceScorer(lm, null).score([item]);
  for (const [k, c] of item.cands.entries()) {
    const seq = item.seqs[c.seq]!;
    const rows = await logitsAt(lm, { ids: [seq.ids], tokenTypeIds: [seq.tokenTypeIds!] }, c.tokens.map((_, j) => ({ row: 0, position: seq.answerPosition + j })));
    const byHand = c.tokens.reduce((s, t, j) => s + logProb(rows[j]!, t), 0);
    assert.ok(Math.abs(scored!.sum[k]! - byHand) < 1e-3, `candidate ${k}: ${scored!.sum[k]} vs ${byHand}`);
    assert.ok(Math.abs(scored!.mean[k]! - byHand / c.tokens.length) < 1e-3);
  }
  lm.dispose();
});

test('causal LM: the teacher-forced score is the sum of next-token log-probs from the full logits', async () => {
  const lm = await loadModel(GPT2);
  const template = parseTemplate('{premise} so [MASK]');
  const cands = ['it rained', 'the man went home to sleep early'];
  const item = renderChoices(lm, template, { premise: 'The grass was wet' }, cands, 0, { maxLength: 64 });
  const scorer = new ChoiceScorer(lm, null);
  const [scored] = await scorer.score([item]);
  // scoring again compiles nothing new and gives the same numbers
  const sessions = programs.size;
  const [again] = await scorer.score([item]);
  assert.equal(programs.size, sessions);
  assert.deepEqual(again, scored);
  const prompt = item.seqs[0]!.ids.slice(0, item.seqs[0]!.answerPosition + 1);
  for (const [k] of cands.entries()) {
    const tokens = item.cands[k]!.tokens;
    const ids = [...prompt, ...tokens];
    const logits = await sequenceLogits(lm, ids);
    const byHand = tokens.reduce((s, t, j) => s + logProb(logits[prompt.length - 1 + j]!, t), 0);
    assert.ok(Math.abs(scored!.sum[k]! - byHand) < 1e-3, `candidate ${k}: ${scored!.sum[k]} vs ${byHand}`);
    assert.ok(Math.abs(scored!.mean[k]! - byHand / tokens.length) < 1e-3);
  }
  assert.ok(item.cands[0]!.tokens.length !== item.cands[1]!.tokens.length, 'left padding exercised');
  lm.dispose();
});

test('the COPA choice loss is the cross-entropy over summed candidate scores and trains the prompt encoder', async () => {
  const lm = await loadModel(BERT);
  const data = loadTaskData('copa', 1, DATA, 8, 4);
  const pf = loadPatterns('copa');
  const r = resolveOptions({ model: BERT, tasks: ['copa'], modes: ['ptune'], seeds: [1], out: '' });
  const session = await PTuningSession.create(sessionConfig(BERT, lm, pf, 'ptune', 1, 128, r, data.train[0]!), lm);
  const task = new ChoiceTask('copa', session, patternFor(pf, 'ptune'), 128, 1);
  const items = task.prepare(task.trainingExamples(data.train), true);
  assert.equal(items.length, 8, 'mirrored');
  const params = [...session.encoder!.params.values()];
  const step = async () => {
    const { loss, graded } = await task.lossAndGrads(items);
    assert.equal(graded.length, params.length, 'a gradient for every encoder parameter');
    let sq = 0;
    for (const p of params) for (const g of p.grad) sq += g * g;
    return { loss, norm: Math.sqrt(sq) };
  };
  await step();
  const sessions = programs.size;
  const { loss, norm } = await step();
  assert.equal(programs.size, sessions, 'a repeated step reuses its program');
  assert.ok(Number.isFinite(loss) && loss > 0, `loss ${loss}`);
  assert.ok(norm > 1e-6, `encoder gradient norm ${norm}`);
  // the same number from the scoring program: mean over items of -log softmax(candidate sums)[target]
  const { sums } = await new ChoiceScorer(lm, session.encoder).logProbs(items);
  let c = 0;
  let ce = 0;
  for (const it of items) {
    const s = sums.slice(c, c + it.cands.length);
    c += it.cands.length;
    const m = Math.max(...s);
    ce += -(s[it.target]! - m - Math.log(s.reduce((z, v) => z + Math.exp(v - m), 0)));
  }
  ce /= items.length;
  assert.ok(Math.abs(loss - ce) < 1e-4, `choice loss ${loss} vs cross-entropy of the scores ${ce}`);
  session.dispose();
});

test('bestThreshold picks the accuracy-maximizing cut', () => {
  const r = bestThreshold([-3, -2, -1, -0.5], [false, false, true, true]);
  assert.equal(r.accuracy, 1);
  assert.equal(r.threshold, -1.5);
  assert.equal(bestThreshold([-1, -1], [true, true]).accuracy, 1);
});

test('a COPA run of one epoch on 8 examples writes a report row (finetune: not applicable)', async () => {
  const out = mkdtempSync(path.join(tmpdir(), 'fewglue-choice-'));
  const report = await runFewGlue({
    model: BERT, tasks: ['copa'], modes: ['ptune', 'finetune'], seeds: [1], out, dataDir: DATA,
    trainCap: 8, evalCap: 8, epochs: 1, maxLength: 96,
  });
  assert.equal(report.runs.length, 1);
  const run = report.runs[0]!;
  assert.equal(run.task, 'copa');
  assert.equal(run.nEval, 8);
  assert.ok(run.steps >= 1 && run.scores.acc! >= 0 && run.scores.acc! <= 1);
  assert.deepEqual(report.notRun.map((n) => `${n.task} ${n.mode}`), ['copa finetune']);
  const saved = JSON.parse(readFileSync(path.join(out, 'report.json'), 'utf8')) as FewGlueReport;
  assert.equal(saved.runs.length, 1);
  const md = readFileSync(path.join(out, 'report.md'), 'utf8');
  assert.match(md, /\| copa \| acc \| \d+\.\d ± 0\.0 \(n=1\)/);
  const preds = readFileSync(path.join(out, 'predictions', 'copa-ptune-seed1.jsonl'), 'utf8').trim().split('\n');
  assert.equal(preds.length, 8);
  assert.ok(preds.every((l) => ['0', '1'].includes(JSON.parse(l).prediction)));
});
