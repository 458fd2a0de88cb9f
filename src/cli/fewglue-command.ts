import path from 'node:path';
import type { Command } from 'commander';
import { initEngine } from '../engine/index.js';
import { ALL_TASKS, FEWGLUE_MODES, parseMode, runFewGlue } from '../tasks/fewglue/run.js';
import { DEEP_DEFAULTS, TUNE_LM_DEFAULTS } from '../train/defaults.js';
import { TASK_NAMES, type TaskName } from '../tasks/fewglue/tasks.js';
import { makeProgress } from '../util/progress.js';
import { UserError } from '../util/errors.js';
import { checkOutputDir, claimOutputDir, FEWGLUE_OUTPUTS, type ClaimedOutput } from '../train/rundir.js';
import { addQuantizeOptions, asText, fewglueSchema, parseListOption, parseOptions, quantizeFrom } from './options.js';

function pick<T extends string>(values: string[], known: readonly T[], all: readonly T[], what: string): T[] {
  if (values.length === 1 && values[0]!.toLowerCase() === 'all') return [...all];
  return values.map((v) => {
    const k = known.find((x) => x === v.toLowerCase());
    if (!k) throw new UserError(`--${what}: unknown ${what} "${v}" (known: ${known.join(', ')}, all)`);
    return k;
  });
}

export function registerFewGlueCommand(program: Command): void {
  const cmd = program
    .command('fewglue')
    .description('few-shot SuperGLUE + SST-2: tasks × modes × seeds, report.json / report.md / predictions')
    .requiredOption('--model <dir>', 'model directory')
    .requiredOption('--task <list>', `comma list of ${ALL_TASKS.join(', ')} or all`, parseListOption)
    .requiredOption('--out <dir>', 'output directory')
    .option('--mode <list>', `comma list of ${FEWGLUE_MODES.join(', ')} or all`, parseListOption, ['ptune'])
    .option('--seeds <n>', 'number of seeds (1..n)', asText, 3)
    .option('--seed-list <list>', 'these seeds (comma list) instead of 1..--seeds, e.g. to add seeds to a table', parseListOption)
    .option('--data <dir>', 'data root holding fewglue/ and sst2/ (default ../shared/data)')
    .option('--epochs <n>', 'epochs', asText, 20)
    .option('--batch-size <n>', 'batch size', asText, 8)
    .option('--eval-every <n>', 'dev evaluation every N steps (0 = per epoch)', asText, 0)
    .option('--patience <n>', 'early stop after N evaluations without dev gain', asText, 6)
    .option('--eval-cap <n>', 'evaluation examples kept (seeded sample; 0 = all)', asText, 1000)
    .option('--max-length <n>', 'maximum tokens per example (default min(256, model max))')
    .option('--prompt-lr <x>', 'prompt lr, frozen LM (ptune)', asText, 3e-3)
    .option('--joint-prompt-lr <x>', 'prompt lr with the LM tuned (ptune-lm)', asText, TUNE_LM_DEFAULTS.lr)
    .option('--lm-lr <x>', 'LM lr (ptune-lm, manual-lm, finetune)', asText, TUNE_LM_DEFAULTS.lmLr)
    .option('--deep-lr <x>', 'lr of deep prompts and prompt tuning (prefix, prefix-linear, prompt-tuning)', asText, DEEP_DEFAULTS.lr)
    .option('--virtual-tokens <n>', 'deep prompts / prompt tuning: virtual tokens', asText, DEEP_DEFAULTS.numVirtualTokens)
    .option('--prefix-projection', 'deep prompts: reparameterise the prefix with an MLP (PEFT prefix_projection)')
    .option('--sst2-train <n>', 'SST-2 training examples drawn from train.tsv (dev: 32, or a quarter when larger)', asText, 32)
    .option('--lm-weight-decay <x>', 'LM weight decay', asText, 0.1)
    .option('--head-lr <x>', 'finetune classifier head lr', asText, 1e-3)
    .option('--overwrite', 'replace the results in --out')
    .option('--quiet', 'no progress output');
  addQuantizeOptions(cmd).action(async (raw: Record<string, unknown>) => {
      const o = parseOptions(fewglueSchema, raw);
      const quantize = quantizeFrom(o);
      const tasks = pick<TaskName>(o.task, TASK_NAMES, ALL_TASKS, 'task');
      const modes = o.mode.length === 1 && o.mode[0]!.toLowerCase() === 'all' ? [...FEWGLUE_MODES] : o.mode.map(parseMode);
      const out = path.resolve(o.out);
      checkOutputDir(out, FEWGLUE_OUTPUTS, { overwrite: o.overwrite });
      await initEngine();
      let claim: ClaimedOutput | undefined;
      const report = await runFewGlue({
        model: path.resolve(o.model),
        tasks,
        modes,
        seeds: o.seedList ?? Array.from({ length: o.seeds }, (_, i) => i + 1),
        out,
        dataDir: o.data ? path.resolve(o.data) : undefined,
        maxLength: o.maxLength,
        evalCap: o.evalCap,
        epochs: o.epochs,
        batchSize: o.batchSize,
        evalEvery: o.evalEvery,
        patience: o.patience,
        promptLr: o.promptLr,
        jointPromptLr: o.jointPromptLr,
        lmLr: o.lmLr,
        lmWeightDecay: o.lmWeightDecay,
        headLr: o.headLr,
        deepLr: o.deepLr,
        numVirtualTokens: o.virtualTokens,
        prefixProjection: o.prefixProjection || DEEP_DEFAULTS.projection,
        sst2Train: o.sst2Train,
        ...(quantize && { quantize }),
        progress: makeProgress({ quiet: true }),
        log: o.quiet ? undefined : (line) => process.stderr.write(line + '\n'),
        beforeWrite: () => {
          claim = claimOutputDir(out, FEWGLUE_OUTPUTS, { overwrite: o.overwrite }, (line) => process.stderr.write(`ptune: ${line}\n`));
          claim.clear();
        },
      }).finally(() => (claim as ClaimedOutput | undefined)?.release());
      console.log(`wrote ${path.join(o.out, 'report.md')} (${report.runs.length} runs, ${report.seconds.toFixed(0)} s)`);
    });
}
