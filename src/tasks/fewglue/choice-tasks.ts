/**
 * COPA, WSC and ReCoRD on top of a PTuningSession (its LM, prompt encoder and trained parameters), with the
 * multi-token scoring of scoring.ts.
 *
 * - COPA: the two alternatives are the candidates; training adds the mirrored examples (choices swapped).
 * - WSC: one candidate, the referent span (span1_text). Trained on positive examples only (the span's
 *   mean token NLL at its masks, as PET). Decision: 'True' when the span's mean token log-prob reaches a
 *   threshold tuned on dev32 for the weights being evaluated (dev32 accuracy at that threshold also drives
 *   checkpoint selection).
 * - ReCoRD: the passage entities are the candidates; training keeps the gold entity plus up to 9 others
 *   (a seeded sample, as PET caps them), evaluation scores all. Only train / dev32 exist, so dev32 is the
 *   evaluation set: no checkpoint selection on it, the last epoch is kept.
 */
import { parseTemplate, type Template } from '../../prompt/template.js';
import type { PTuningSession } from '../../train/session.js';
import { trainLoop, type TrainResult } from '../../train/trainer.js';
import type { Progress } from '../../util/progress.js';
import { mirrorCopa } from './loaders.js';
import { normalizeAnswer } from './metrics.js';
import { templateFor, type Pattern } from './patterns.js';
import { seededRandom, shuffled } from './sampling.js';
import { bestThreshold, ChoiceScorer, renderChoices, type ChoiceItem } from './scoring.js';
import type { TaskExample, TaskName } from './tasks.js';

export const CHOICE_TASKS: readonly TaskName[] = ['copa', 'wsc', 'record'];
const RECORD_TRAIN_CANDIDATES = 10;

export interface ChoiceRunResult {
  predictions: string[];
  devScore: number | null;
  bestEpoch: number | null;
  steps: number;
  /** WSC: the threshold used on the evaluation set */
  threshold?: number;
}

export class ChoiceTask {
  private readonly templates = new Map<string, Template>();
  private readonly scorer: ChoiceScorer;

  constructor(
    readonly task: TaskName,
    readonly session: PTuningSession,
    readonly pattern: Pattern,
    readonly maxLength: number,
    readonly seed: number,
  ) {
    if (!CHOICE_TASKS.includes(task)) throw new Error(`${task} is not a choice / span task (${CHOICE_TASKS.join(', ')})`);
    this.scorer = new ChoiceScorer(session.lm, session.encoder);
  }

  private template(ex: TaskExample): Template {
    const text = templateFor(this.pattern, ex, this.session.lm.info.kind);
    let t = this.templates.get(text);
    if (!t) this.templates.set(text, (t = parseTemplate(text)));
    return t;
  }

  /** Candidates and target of one example; for training, ReCoRD's candidates are capped around the gold. */
  candidates(ex: TaskExample, forTraining: boolean): { texts: string[]; target: number } {
    const choices = ex.choices ?? [];
    if (choices.length === 0) throw new Error(`${this.task} example ${ex.id}: no candidates`);
    if (this.task === 'copa') return { texts: choices, target: ex.label === undefined ? -1 : Number(ex.label) };
    if (this.task === 'wsc') return { texts: choices.slice(0, 1), target: ex.label === 'True' ? 0 : -1 };
    const gold = new Set((ex.answers ?? []).map(normalizeAnswer));
    const target = choices.findIndex((c) => gold.has(normalizeAnswer(c)));
    if (!forTraining || target < 0) return { texts: choices, target };
    const others = shuffled(choices.filter((_, i) => i !== target), seededRandom(this.seed)).slice(0, RECORD_TRAIN_CANDIDATES - 1);
    return { texts: [choices[target]!, ...others], target: 0 };
  }

  prepare(examples: readonly TaskExample[], forTraining = false): ChoiceItem[] {
    return examples.map((ex, index) => {
      const { texts, target } = this.candidates(ex, forTraining);
      return renderChoices(this.session.lm, this.template(ex), { ...ex.fields, id: ex.id }, texts, target, {
        maxLength: this.maxLength, index, where: `${this.task} example ${ex.id}`,
      });
    });
  }

  /** The training examples the task's loss uses: COPA mirrored, WSC positives, ReCoRD with the gold among its entities. */
  trainingExamples(train: readonly TaskExample[]): TaskExample[] {
    if (this.task === 'copa') return mirrorCopa(train);
    if (this.task === 'wsc') return train.filter((x) => x.label === 'True');
    return train.filter((x) => this.candidates(x, true).target >= 0);
  }

  lossAndGrads(items: readonly ChoiceItem[]) {
    return this.task === 'wsc' ? this.scorer.spanLoss(items) : this.scorer.choiceLoss(items);
  }

  /** Predictions for `examples` ('0'/'1' for COPA, the entity for ReCoRD, 'True'/'False' for WSC with `threshold`). */
  async predict(examples: readonly TaskExample[], items: readonly ChoiceItem[], threshold = 0): Promise<string[]> {
    const scores = await this.scorer.score(items);
    return scores.map((s, i) => {
      if (this.task === 'wsc') return s.mean[0]! >= threshold ? 'True' : 'False';
      const k = s.sum.indexOf(Math.max(...s.sum));
      return this.task === 'copa' ? String(k) : this.candidates(examples[i]!, false).texts[k]!;
    });
  }

  /** WSC: the dev32 threshold and accuracy for the current weights. */
  async wscThreshold(dev: readonly TaskExample[], devItems: readonly ChoiceItem[]): Promise<{ threshold: number; accuracy: number }> {
    const means = (await this.scorer.score(devItems)).map((s) => s.mean[0]!);
    return bestThreshold(means, dev.map((x) => x.label === 'True'));
  }

  async devScore(dev: readonly TaskExample[], devItems: readonly ChoiceItem[]): Promise<number> {
    if (this.task === 'wsc') return (await this.wscThreshold(dev, devItems)).accuracy;
    const preds = await this.predict(dev, devItems);
    return preds.filter((p, i) => p === dev[i]!.label).length / dev.length;
  }

  /** Trains the session's parameters on the task loss; restores the selected checkpoint. */
  async train(train: readonly TaskExample[], dev: readonly TaskExample[], runDir: string, progress?: Progress): Promise<TrainResult> {
    const c = this.session.config;
    const examples = this.trainingExamples(train);
    if (examples.length === 0) throw new Error(`${this.task}: no usable training examples`);
    const items = this.prepare(examples, true);
    const devItems = this.prepare(dev);
    const optimizer = this.session.makeOptimizer();
    let evals = 0;
    try {
      const result = await trainLoop<ChoiceItem>({
        runDir,
        config: c.loop,
        task: {
          examples: items,
          lossAndGrads: (batch) => this.lossAndGrads(batch),
          // ReCoRD's dev32 is its evaluation set: an increasing score keeps the last checkpoint
          evaluate: async () => {
            const score = this.task === 'record' ? ++evals : await this.devScore(dev, devItems);
            return { score, metrics: { score } };
          },
        },
        params: this.session.trainedParams(),
        optimizer,
        lrScale: this.session.lrSchedule(items.length),
        resume: false,
        progress,
        restoreBest: true,
      });
      return result;
    } finally {
      optimizer.dispose();
    }
  }

  /** Train (unless `manual`), then predict on `evalSet`. */
  async run(data: { train: TaskExample[]; dev: TaskExample[]; evalSet: TaskExample[] }, runDir: string, trainIt: boolean, progress?: Progress): Promise<ChoiceRunResult> {
    let devScore: number | null = null, bestEpoch: number | null = null, steps = 0;
    if (trainIt) {
      const res = await this.train(data.train, data.dev, runDir, progress);
      devScore = this.task === 'record' ? null : res.bestScore;
      bestEpoch = res.bestEpoch + 1;
      steps = res.step;
    }
    let threshold: number | undefined;
    if (this.task === 'wsc') {
      const t = await this.wscThreshold(data.dev, this.prepare(data.dev));
      threshold = t.threshold;
      devScore ??= t.accuracy;
    } else if (!trainIt && this.task === 'copa') {
      devScore = await this.devScore(data.dev, this.prepare(data.dev));
    }
    const predictions = await this.predict(data.evalSet, this.prepare(data.evalSet), threshold);
    return { predictions, devScore, bestEpoch, steps, ...(threshold === undefined ? {} : { threshold }) };
  }
}
