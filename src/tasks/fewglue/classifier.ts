import type { Program, ProgramGraph } from '../../engine/program.js';
import { Parameter } from '../../engine/tensor.js';
import { dense, rowsAt } from '../../models/common.js';
import type { LanguageModel } from '../../models/model.js';
import { crossEntropyOn } from '../../prompt/heads.js';
import { batchFeeds, paddedLength, paddedRows } from '../../prompt/ptuning.js';
import { collate, renderExample, type RenderedExample } from '../../prompt/render.js';
import { parseTemplate } from '../../prompt/template.js';
import { AdamW, decayGroups } from '../../train/optim.js';
import { makeSchedule } from '../../train/schedule.js';
import { trainLoop, type TrainLoopConfig, type TrainResult } from '../../train/trainer.js';
import { makeNormal, makeRng } from '../../util/rng.js';
import { argmax } from '../../models/generate.js';
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
  /** torch layout: weight [K, H], bias [K] */
  private readonly weight: Parameter;
  private readonly bias: Parameter;
  private readonly template;

  constructor(readonly lm: LanguageModel, readonly config: ClassifierConfig) {
    this.labels = taskInfo(config.task).labels;
    const h = lm.info.hiddenSize;
    const k = this.labels.length;
    const normal = makeNormal(makeRng(config.seed));
    this.weight = new Parameter('head.weight', [k, h], Float32Array.from({ length: h * k }, () => 0.02 * normal()), true);
    this.bias = new Parameter('head.bias', [k], new Float32Array(k), true);
    this.template = parseTemplate(classifierTemplate(config.task, lm.info.kind));
  }

  prepare(examples: readonly TaskExample[]): ClsItem[] {
    return examples.map((x, index) => {
      const ex = renderExample(this.template, x.fields, this.lm.tokenizer, this.lm.info, { maxLength: this.config.maxLength, index })!;
      return { ex, target: x.label === undefined ? -1 : this.labels.indexOf(x.label) };
    });
  }

  private lookup = (name: string) => (name === 'cls.weight' ? this.weight : name === 'cls.bias' ? this.bias : undefined);

  /** logits [rows, K] of the hidden state read (masked LM: position 0; causal LM: the last real token) */
  private program(rows: number, sp: number, train: boolean): Program {
    const lm = this.lm;
    const k = this.labels.length;
    return {
      key: `classifier ${rows}x${sp} k${k} ${train ? 'train' : 'infer'}`,
      build: (b): ProgramGraph => {
        const { o } = b;
        const w = lm.weights(b);
        const ints = (name: string, shape: number[]) => b.input(name, shape, 'int32');
        const readAt = ints('read_at', [rows]);
        const out = lm.fns.hidden(o, w, {
          embeds: lm.fns.embed(o, w, ints('ids', [rows, sp])),
          attentionMask: ints('attention_mask', [rows, sp]),
          ...(lm.info.tokenTypes && { tokenTypeIds: ints('token_type_ids', [rows, sp]) }),
          at: readAt,
        });
        const read = out.rows ?? rowsAt(o, out.hidden, readAt);
        const logits = dense(o, read, b.param('cls.weight', [k, lm.info.hiddenSize], train), b.param('cls.bias', [k], train));
        if (!train) return { outputs: { logits } };
        const loss = crossEntropyOn(o, logits, ints('targets', [rows]));
        return { outputs: { loss }, loss };
      },
    };
  }

  private feeds(items: readonly ClsItem[], rows: number) {
    const batch = collate(items.map((i) => i.ex), this.lm.info);
    const sp = paddedLength(batch.ids[0]!.length, this.lm.info.maxPositions);
    const feeds = batchFeeds(batch, rows, sp, this.lm.info);
    const answers = feeds.positions!.data as Int32Array;
    const readAt = this.lm.info.kind === 'masked' ? new Int32Array(rows) : answers;
    feeds.read_at = { data: readAt, shape: [rows] };
    feeds.targets = { data: Int32Array.from({ length: rows }, (_, i) => Math.max(items[i]?.target ?? 0, 0)), shape: [rows] };
    return { feeds, sp };
  }

  async lossAndGrads(items: readonly ClsItem[]): Promise<{ loss: number; graded: Parameter[] }> {
    const { feeds, sp } = this.feeds(items, items.length);
    const r = await this.lm.run(this.program(items.length, sp, true), feeds, this.lookup);
    return { loss: r.outputs.loss!.data[0] as number, graded: r.graded };
  }

  async predict(items: readonly ClsItem[], batchSize = 32): Promise<string[]> {
    const out: string[] = [];
    const k = this.labels.length;
    for (let i = 0; i < items.length; i += batchSize) {
      const chunk = items.slice(i, i + batchSize);
      const rows = paddedRows(chunk.length);
      const { feeds, sp } = this.feeds(chunk, rows);
      const logits = (await this.lm.run(this.program(rows, sp, false), feeds, this.lookup)).outputs.logits!.data as Float32Array;
      for (let r = 0; r < chunk.length; r++) out.push(this.labels[argmax(logits.subarray(r * k, (r + 1) * k))]!);
    }
    return out;
  }

  params(): Map<string, Parameter> {
    const out = new Map<string, Parameter>([['head.weight', this.weight], ['head.bias', this.bias]]);
    for (const [k, v] of this.lm.params) out.set(`lm.${k}`, v);
    return out;
  }

  /** Trains with dev accuracy for model selection and restores the best weights. */
  async train(train: readonly TaskExample[], dev: readonly TaskExample[], runDir: string, progress?: Progress): Promise<TrainResult> {
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
    if (!this.lm.trainable) throw new Error('finetune: the classifier trains the LM jointly; load it with { trainable: true }');
    const steps = Math.ceil(trItems.length / c.loop.batchSize) * c.loop.epochs;
    const totalSteps = c.loop.maxSteps > 0 ? Math.min(c.loop.maxSteps, steps) : steps;
    try {
      const result = await trainLoop<ClsItem>({
        runDir,
        config: c.loop,
        task: {
          examples: trItems,
          lossAndGrads: (batch) => this.lossAndGrads(batch),
          evaluate: async () => {
            const preds = await this.predict(dvItems);
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
    this.weight.dropGrad();
    this.bias.dropGrad();
  }
}
