import { tf } from '../../engine/index.js';
import type { LanguageModel } from '../../models/lm.js';
import { crossEntropy } from '../../prompt/heads.js';
import { promptedHidden } from '../../prompt/ptuning.js';
import { collate, renderExample, type RenderedExample } from '../../prompt/render.js';
import { parseTemplate } from '../../prompt/template.js';
import { AdamW, decayGroups } from '../../train/optim.js';
import { makeSchedule } from '../../train/schedule.js';
import { trainLoop, type TrainLoopConfig, type TrainResult } from '../../train/trainer.js';
import { makeNormal, makeRng } from '../../util/rng.js';
import type { Progress } from '../../util/progress.js';
import { taskInfo, type TaskExample, type TaskName } from './tasks.js';

/**
 * Plain fine-tuning (no pattern): a linear head over one final hidden state, trained jointly with the LM.
 * Masked LMs read position 0 ([CLS]); causal LMs the last real token. The input is the task's text fields,
 * separated by [SEP] for masked LMs; the trailing [MASK] is only there because every template needs an
 * answer slot (for a causal LM it marks the last prefix token, which is the position read).
 */
const INPUT_FIELDS: Partial<Record<TaskName, string[]>> = {
  sst2: ['sentence'],
  rte: ['premise', 'hypothesis'],
  cb: ['premise', 'hypothesis'],
  boolq: ['question', 'passage'],
  wic: ['word', 'sentence1', 'sentence2'],
  multirc: ['passage', 'question', 'answer'],
};

export function classifierTemplate(task: TaskName, kind: 'masked' | 'causal'): string {
  const fields = INPUT_FIELDS[task];
  if (!fields) throw new Error(`finetune: no classifier input defined for ${task}`);
  return fields.map((f) => `{${f}}`).join(kind === 'masked' ? ' [SEP] ' : ' ') + ' [MASK]';
}

interface ClsItem {
  ex: RenderedExample;
  target: number;
}

export interface ClassifierConfig {
  task: TaskName;
  maxLength: number;
  loop: TrainLoopConfig;
  lmLr: number;
  lmWeightDecay: number;
  headLr: number;
  warmupRatio: number;
  seed: number;
}

export class LinearClassifier {
  readonly labels: readonly string[];
  private readonly weight: tf.Variable;
  private readonly bias: tf.Variable;
  private readonly template;

  constructor(readonly lm: LanguageModel, readonly config: ClassifierConfig) {
    this.labels = taskInfo(config.task).labels;
    const h = lm.info.hiddenSize;
    const k = this.labels.length;
    const normal = makeNormal(makeRng(config.seed));
    const w = Float32Array.from({ length: h * k }, () => 0.02 * normal());
    this.weight = tf.variable(tf.tensor2d(w, [h, k]), true, `cls_weight_${config.seed}_${Date.now()}`);
    this.bias = tf.variable(tf.zeros([k]), true, `cls_bias_${config.seed}_${Date.now()}`);
    this.template = parseTemplate(classifierTemplate(config.task, lm.info.kind));
  }

  prepare(examples: readonly TaskExample[]): ClsItem[] {
    return examples.map((x, index) => {
      const ex = renderExample(this.template, x.fields, this.lm.tokenizer, this.lm.info, { maxLength: this.config.maxLength, index })!;
      return { ex, target: x.label === undefined ? -1 : this.labels.indexOf(x.label) };
    });
  }

  /** logits [B, K] */
  logits(items: readonly ClsItem[]): tf.Tensor {
    const batch = collate(items.map((i) => i.ex), this.lm.info);
    const hidden = promptedHidden(this.lm, batch, null);
    const [b, s, h] = hidden.shape as [number, number, number];
    const pos = this.lm.info.kind === 'masked' ? batch.answerPositions.map((_, r) => r * s) : batch.answerPositions.map((p, r) => r * s + p);
    const picked = tf.gather(tf.reshape(hidden, [b * s, h]), tf.tensor1d(pos, 'int32'));
    return tf.add(tf.matMul(picked, this.weight), this.bias);
  }

  predict(items: readonly ClsItem[], batchSize = 32): string[] {
    const out: string[] = [];
    for (let i = 0; i < items.length; i += batchSize) {
      const am = tf.tidy(() => tf.argMax(this.logits(items.slice(i, i + batchSize)), 1).arraySync() as number[]);
      out.push(...am.map((k) => this.labels[k]!));
    }
    return out;
  }

  params(): Map<string, tf.Variable> {
    const out = new Map<string, tf.Variable>([['head.weight', this.weight], ['head.bias', this.bias]]);
    for (const [k, v] of this.lm.parameters()) out.set(`lm.${k}`, v);
    return out;
  }

  /** Trains with dev accuracy for model selection and restores the best weights. */
  train(train: readonly TaskExample[], dev: readonly TaskExample[], runDir: string, progress?: Progress): TrainResult {
    const c = this.config;
    const trItems = this.prepare(train);
    const dvItems = this.prepare(dev);
    const params = this.params();
    const lmParams = new Map([...params].filter(([k]) => k.startsWith('lm.')));
    const groups = [
      ...decayGroups(lmParams, { lr: c.lmLr, weightDecay: c.lmWeightDecay, name: 'lm' }),
      { name: 'head', params: new Map([['head.weight', this.weight], ['head.bias', this.bias]]), lr: c.headLr, weightDecay: 0 },
    ];
    const optimizer = new AdamW(groups);
    const steps = Math.ceil(trItems.length / c.loop.batchSize) * c.loop.epochs;
    const totalSteps = c.loop.maxSteps > 0 ? Math.min(c.loop.maxSteps, steps) : steps;
    try {
      const result = trainLoop<ClsItem>({
        runDir,
        config: c.loop,
        task: {
          examples: trItems,
          loss: (batch) => crossEntropy(this.logits(batch), batch.map((b) => b.target)),
          evaluate: () => {
            const preds = this.predict(dvItems);
            const acc = preds.filter((p, i) => p === dev[i]!.label).length / dev.length;
            return { score: acc, metrics: { accuracy: acc } };
          },
        },
        params,
        optimizer,
        lrScale: makeSchedule({ kind: 'linear', warmupSteps: Math.round(c.warmupRatio * totalSteps), totalSteps }),
        resume: false,
        progress,
        restoreBest: true,
      });
      return result;
    } finally {
      optimizer.dispose();
    }
  }

  dispose(): void {
    this.weight.dispose();
    this.bias.dispose();
  }
}
