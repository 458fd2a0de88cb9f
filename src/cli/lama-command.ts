import path from 'node:path';
import type { Command } from 'commander';
import {
  parseModes,
  runLama,
  FINETUNE_DEFAULTS,
  PTUNE_DEFAULTS,
  THUDM_TRAIN,
  type LamaTrainSettings,
} from '../tasks/lama/run.js';
import type { FactSet, LamaSplit, VocabStrategy } from '../tasks/lama/data.js';
import { checkOutputDir, claimOutputDir, LAMA_OUTPUTS, type ClaimedOutput } from '../train/rundir.js';
import { addQuantizeOptions, lamaSchema, parseListOption, parseOptions, quantizeFrom } from './options.js';
import { asText } from './options.js';


function defined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}

const fmt = (v: number | null | undefined) => (v === null || v === undefined ? '–' : (v * 100).toFixed(2));

export function registerLamaCommand(program: Command): void {
  const cmd = program
    .command('lama')
    .description('LAMA knowledge probing: majority, manual prompts, P-tuning, manual+P-tuning and fine-tuning, per relation')
    .requiredOption('--model <dir>', 'model directory or checkpoint')
    .requiredOption('--data <dir>', 'LAMA data directory (fact-retrieval/, relations.jsonl, 29k-vocab.json)')
    .requiredOption('--out <dir>', 'output folder (--resume reuses its finished tasks)')
    .option('--relations <list>', 'all, complete (train+dev+test files) or ids like P19,P20', 'all')
    .option('--split <name>', 'original or trex', 'original')
    .option('--vocab <name>', 'answer vocabulary: 29k, 34k or full', '29k')
    .option('--mode <modes...>', 'majority, manual, ptune, manual+ptune, ptune-lm, prefix, prompt-tuning, finetune (several allowed)', ['manual'])
    .option('--jobs <n>', 'worker processes (default: number of cores)')
    .option('--seed <n>', 'training seed (encoder init and batch order)', asText, 13)
    .option('--template <t>', 'ptune template: tuple like 3,3,3 or template text (default 3,3,3; causal LMs 3,3,0)')
    .option('--pseudo <n>', 'manual+ptune: pseudo tokens per gap', asText, 3)
    .option('--preset <name>', 'training defaults: mini (tuned for the H=128 mini models) or thudm', 'mini')
    .option('--lr <x>', `prompt encoder learning rate (default ${PTUNE_DEFAULTS.lr})`)
    .option('--weight-decay <x>', 'prompt encoder weight decay')
    .option('--schedule <s>', 'constant, linear or exponential (per epoch)')
    .option('--gamma <x>', 'exponential schedule: lr factor per epoch')
    .option('--epochs <n>', `ptune epochs (default ${PTUNE_DEFAULTS.epochs})`)
    .option('--patience <n>', `ptune: stop after n epochs without dev gain (default ${PTUNE_DEFAULTS.patience})`)
    .option('--batch-size <n>', `ptune batch size (default ${PTUNE_DEFAULTS.batchSize})`)
    .option('--ft-lr <x>', `finetune: LM learning rate (default ${FINETUNE_DEFAULTS.lr})`)
    .option('--ft-weight-decay <x>', 'finetune: LM weight decay')
    .option('--ft-epochs <n>', `finetune epochs (default ${FINETUNE_DEFAULTS.epochs})`)
    .option('--ft-patience <n>', `finetune patience (default ${FINETUNE_DEFAULTS.patience})`)
    .option('--ft-batch-size <n>', 'finetune batch size')
    .option('--max-train <n>', 'cap train facts per relation (seeded sample)')
    .option('--max-dev <n>', 'cap dev facts per relation')
    .option('--max-test <n>', 'cap test facts per relation')
    .option('--top-k <n>', 'answers per fact in the predictions files', asText, 10)
    .option('--keep-checkpoints', "keep finetune's per-relation LM checkpoints")
    .option('--resume', 'reuse the finished tasks of the results in --out')
    .option('--overwrite', 'replace the results in --out')
    .option('--quiet', 'no progress display');
  addQuantizeOptions(cmd).action(async (raw: Record<string, unknown>) => {
      const o = parseOptions(lamaSchema, raw);
      const quantize = quantizeFrom(o);
      const out = path.resolve(o.out);
      checkOutputDir(out, LAMA_OUTPUTS, { resume: o.resume, overwrite: o.overwrite });
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
      let claim: ClaimedOutput | undefined;
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
        ...(quantize && { quantize }),
        quiet: o.quiet,
        command: ['ptune', ...process.argv.slice(2)].join(' '),
        beforeWrite: () => {
          claim = claimOutputDir(out, LAMA_OUTPUTS, { resume: o.resume, overwrite: o.overwrite }, (line) => process.stderr.write(`ptune: ${line}\n`));
          claim.clear();
        },
      }).finally(() => (claim as ClaimedOutput | undefined)?.release());
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
