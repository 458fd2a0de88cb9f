import type { Command } from 'commander';
import { InvalidArgumentError } from 'commander';
import {
  parseModes,
  runLama,
  FINETUNE_DEFAULTS,
  PTUNE_DEFAULTS,
  THUDM_TRAIN,
  type LamaTrainSettings,
} from '../tasks/lama/run.js';
import type { FactSet, LamaSplit, VocabStrategy } from '../tasks/lama/data.js';
import { parseFloatOption, parseIntOption, parseListOption } from './options.js';

interface LamaCliOptions {
  model: string;
  data: string;
  out: string;
  relations: string;
  split: LamaSplit;
  vocab: VocabStrategy;
  mode: string[];
  jobs?: number;
  seed: number;
  template?: string;
  pseudo: number;
  preset: 'mini' | 'thudm';
  lr?: number;
  weightDecay?: number;
  schedule?: LamaTrainSettings['schedule'];
  gamma?: number;
  epochs?: number;
  patience?: number;
  batchSize?: number;
  ftLr?: number;
  ftWeightDecay?: number;
  ftEpochs?: number;
  ftPatience?: number;
  ftBatchSize?: number;
  maxTrain?: number;
  maxDev?: number;
  maxTest?: number;
  topK: number;
  keepCheckpoints?: boolean;
  quiet?: boolean;
}

function choice<T extends string>(name: string, values: readonly T[]) {
  return (v: string): T => {
    if (!(values as readonly string[]).includes(v)) throw new InvalidArgumentError(`${name} must be one of ${values.join(', ')}`);
    return v as T;
  };
}

function defined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}

const fmt = (v: number | null | undefined) => (v === null || v === undefined ? '–' : (v * 100).toFixed(2));

export function registerLamaCommand(program: Command): void {
  program
    .command('lama')
    .description('LAMA knowledge probing: majority, manual prompts, P-tuning, manual+P-tuning and fine-tuning, per relation')
    .requiredOption('--model <dir>', 'model directory or checkpoint')
    .requiredOption('--data <dir>', 'LAMA data directory (fact-retrieval/, relations.jsonl, 29k-vocab.json)')
    .requiredOption('--out <dir>', 'output folder (results are resumed from it)')
    .option('--relations <list>', 'all, complete (train+dev+test files) or ids like P19,P20', 'all')
    .option('--split <name>', 'original or trex', choice('--split', ['original', 'trex'] as const), 'original')
    .option('--vocab <name>', 'answer vocabulary: 29k, 34k or full', choice('--vocab', ['29k', '34k', 'full'] as const), '29k')
    .option('--mode <modes...>', 'majority, manual, ptune, manual+ptune, ptune-lm, prefix, prompt-tuning, finetune (several allowed)', ['manual'])
    .option('--jobs <n>', 'worker processes (default: number of cores)', parseIntOption)
    .option('--seed <n>', 'training seed (encoder init and batch order)', parseIntOption, 13)
    .option('--template <t>', 'ptune template: tuple like 3,3,3 or template text (default 3,3,3; causal LMs 3,3,0)')
    .option('--pseudo <n>', 'manual+ptune: pseudo tokens per gap', parseIntOption, 3)
    .option('--preset <name>', 'training defaults: mini (tuned for the H=128 mini models) or thudm', choice('--preset', ['mini', 'thudm'] as const), 'mini')
    .option('--lr <x>', `prompt encoder learning rate (default ${PTUNE_DEFAULTS.lr})`, parseFloatOption)
    .option('--weight-decay <x>', 'prompt encoder weight decay', parseFloatOption)
    .option('--schedule <s>', 'constant, linear or exponential (per epoch)', choice('--schedule', ['constant', 'linear', 'exponential'] as const))
    .option('--gamma <x>', 'exponential schedule: lr factor per epoch', parseFloatOption)
    .option('--epochs <n>', `ptune epochs (default ${PTUNE_DEFAULTS.epochs})`, parseIntOption)
    .option('--patience <n>', `ptune: stop after n epochs without dev gain (default ${PTUNE_DEFAULTS.patience})`, parseIntOption)
    .option('--batch-size <n>', `ptune batch size (default ${PTUNE_DEFAULTS.batchSize})`, parseIntOption)
    .option('--ft-lr <x>', `finetune: LM learning rate (default ${FINETUNE_DEFAULTS.lr})`, parseFloatOption)
    .option('--ft-weight-decay <x>', 'finetune: LM weight decay', parseFloatOption)
    .option('--ft-epochs <n>', `finetune epochs (default ${FINETUNE_DEFAULTS.epochs})`, parseIntOption)
    .option('--ft-patience <n>', `finetune patience (default ${FINETUNE_DEFAULTS.patience})`, parseIntOption)
    .option('--ft-batch-size <n>', 'finetune batch size', parseIntOption)
    .option('--max-train <n>', 'cap train facts per relation (seeded sample)', parseIntOption)
    .option('--max-dev <n>', 'cap dev facts per relation', parseIntOption)
    .option('--max-test <n>', 'cap test facts per relation', parseIntOption)
    .option('--top-k <n>', 'answers per fact in the predictions files', parseIntOption, 10)
    .option('--keep-checkpoints', "keep finetune's per-relation LM checkpoints")
    .option('--quiet', 'no progress display')
    .action(async (o: LamaCliOptions) => {
      const base = o.preset === 'thudm' ? THUDM_TRAIN : PTUNE_DEFAULTS;
      const ftBase = o.preset === 'thudm' ? THUDM_TRAIN : FINETUNE_DEFAULTS;
      const ptune: LamaTrainSettings = {
        ...base,
        ...defined({ lr: o.lr, weightDecay: o.weightDecay, schedule: o.schedule, gamma: o.gamma, epochs: o.epochs, patience: o.patience, batchSize: o.batchSize }),
      };
      const finetune: LamaTrainSettings = {
        ...ftBase,
        ...defined({
          lr: o.ftLr,
          weightDecay: o.ftWeightDecay,
          schedule: o.schedule,
          gamma: o.gamma,
          epochs: o.ftEpochs,
          patience: o.ftPatience,
          batchSize: o.ftBatchSize,
        }),
      };
      const relations = o.relations === 'all' || o.relations === 'complete' ? o.relations : parseListOption(o.relations);
      const maxFacts: Partial<Record<FactSet, number>> = defined({ train: o.maxTrain, dev: o.maxDev, test: o.maxTest });
      const r = await runLama({
        model: o.model,
        data: o.data,
        out: o.out,
        relations,
        split: o.split,
        vocab: o.vocab,
        modes: parseModes(o.mode),
        jobs: o.jobs,
        seed: o.seed,
        template: o.template,
        pseudo: o.pseudo,
        ptune,
        finetune,
        maxFacts,
        topK: o.topK,
        keepCheckpoints: o.keepCheckpoints,
        quiet: o.quiet,
        command: ['ptune', ...process.argv.slice(2)].join(' '),
      });
      console.log(`${r.computed} tasks computed, ${r.reused} reused, ${r.seconds.toFixed(1)} s`);
      for (const mode of r.report.modes) {
        const s = r.report.summary[mode]!;
        console.log(
          `${mode.padEnd(13)} ${String(s.relations).padStart(3)} relations  macro P@1 ${fmt(s.macro_p1)}  micro P@1 ${fmt(s.micro_p1)}  (majority ${fmt(s.majority_macro_p1)} / ${fmt(s.majority_micro_p1)})`,
        );
      }
      console.log(`report: ${r.files.md}`);
    });
}
