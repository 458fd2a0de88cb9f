import fs from 'node:fs';
import path from 'node:path';
import type { Command } from 'commander';
import { initEngine } from '../engine/index.js';
import { readRecords } from '../data/read.js';
import { Verbalizer } from '../prompt/verbalizer.js';
import type { HeadSpec } from '../prompt/heads.js';
import type { PromptEncoderType } from '../prompt/encoder.js';
import { DEFAULT_LOOP, DEFAULT_OPTIM, PTuningSession, type RunConfig } from '../train/session.js';
import { exportPeft, exportTable, importPeft } from '../train/export.js';
import { exportOnnx } from '../export/onnx.js';
import { makeProgress } from '../util/progress.js';
import { UserError } from '../util/errors.js';
import { parseFloatOption, parseIntOption } from './options.js';

interface HeadOptions {
  labelField?: string;
  verbalizer?: string;
  tokenRule?: 'first' | 'mean' | 'sum' | 'max';
  answerField?: string;
  answerVocab?: string;
}

/** `--label-field F --verbalizer SPEC` or `--answer-field F [--answer-vocab FILE]` → a head spec. */
function headFrom(o: HeadOptions): HeadSpec {
  if (o.answerField && o.labelField) throw new UserError('give either --label-field/--verbalizer or --answer-field, not both');
  if (o.answerField) {
    return { kind: 'answer', answerField: o.answerField };
  }
  if (!o.labelField || !o.verbalizer) throw new UserError('give --label-field and --verbalizer (classification) or --answer-field (one-token answers)');
  return { kind: 'label', labelField: o.labelField, labelWords: Verbalizer.parseSpec(o.verbalizer), tokenRule: o.tokenRule };
}

function answerVocabIds(session: PTuningSession, file: string): number[] {
  const words = fs.readFileSync(file, 'utf8').split(/\r?\n/).map((w) => w.trim()).filter(Boolean);
  const tok = session.lm.tokenizer;
  const ids = new Set<number>();
  for (const w of words) {
    const t = tok.encodeWord(tok.lowercase ? w.toLowerCase() : w);
    if (t.length === 1) ids.add(t[0]!);
  }
  if (ids.size === 0) throw new UserError(`${file}: no word in it is a single token of the model's vocabulary`);
  return [...ids].sort((a, b) => a - b);
}

function writeJsonl(rows: unknown[]): void {
  for (const r of rows) process.stdout.write(JSON.stringify(r) + '\n');
}

export function registerTrainCommands(program: Command): void {
  program
    .command('train')
    .description('P-tune a prompt for a task (frozen LM by default) and write a run directory')
    .requiredOption('--model <dir>', 'model directory or checkpoint')
    .requiredOption('--train <file>', 'training data (.jsonl, .json, .csv, .tsv)')
    .requiredOption('--dev <file>', 'dev data for model selection')
    .requiredOption('--template <t>', 'template, e.g. "{sentence} [P*3] It was [MASK] ." or the LAMA tuple "3,3,3"')
    .requiredOption('--out <dir>', 'run directory')
    .option('--label-field <f>', 'record field holding the label')
    .option('--verbalizer <spec>', 'label words: JSON file, inline JSON, or "neg:bad,pos:good"')
    .option('--token-rule <r>', 'multi-token label words: first|mean|sum|max', 'first')
    .option('--answer-field <f>', 'record field holding a one-token answer (open vocabulary)')
    .option('--answer-vocab <file>', 'restrict answers to these words (one per line)')
    .option('--encoder <type>', 'prompt encoder: lstm|mlp|embedding', 'lstm')
    .option('--encoder-hidden <n>', 'encoder hidden size (default: the LM hidden size)', parseIntOption)
    .option('--encoder-preset <p>', 'lstm shapes: thudm (hidden split over both directions) or peft (hidden per direction)', 'thudm')
    .option('--encoder-dropout <x>', 'dropout between LSTM layers', parseFloatOption, 0)
    .option('--lr <x>', 'prompt encoder learning rate', parseFloatOption, DEFAULT_OPTIM.lr)
    .option('--weight-decay <x>', 'prompt encoder weight decay', parseFloatOption, DEFAULT_OPTIM.weightDecay)
    .option('--optimizer <name>', 'adam|adamw', DEFAULT_OPTIM.optimizer)
    .option('--schedule <s>', 'constant|linear|exponential', DEFAULT_OPTIM.schedule)
    .option('--warmup <ratio>', 'warmup fraction of all steps', parseFloatOption, DEFAULT_OPTIM.warmupRatio)
    .option('--gamma <x>', 'exponential schedule: multiplier per epoch', parseFloatOption, DEFAULT_OPTIM.gamma)
    .option('--tune-lm', 'tune the LM jointly with the prompt')
    .option('--lm-lr <x>', 'LM learning rate with --tune-lm', parseFloatOption, DEFAULT_OPTIM.lmLr)
    .option('--lm-weight-decay <x>', 'LM weight decay with --tune-lm', parseFloatOption, DEFAULT_OPTIM.lmWeightDecay)
    .option('--batch-size <n>', 'batch size', parseIntOption, DEFAULT_LOOP.batchSize)
    .option('--grad-accum <n>', 'micro-batches per optimizer step', parseIntOption, DEFAULT_LOOP.gradAccum)
    .option('--max-grad-norm <x>', 'gradient clipping (0 = off)', parseFloatOption, DEFAULT_LOOP.maxGradNorm)
    .option('--epochs <n>', 'epochs', parseIntOption, DEFAULT_LOOP.epochs)
    .option('--max-steps <n>', 'stop after N optimizer steps (0 = no limit)', parseIntOption, 0)
    .option('--eval-every <n>', 'evaluate every N steps (0 = every epoch)', parseIntOption, 0)
    .option('--patience <n>', 'early stop after N evaluations without dev gain (0 = off)', parseIntOption, 0)
    .option('--save-every <n>', 'checkpoint last/ every N steps', parseIntOption, DEFAULT_LOOP.saveEvery)
    .option('--max-length <n>', 'maximum tokens per example', parseIntOption, 128)
    .option('--skip-too-long', 'skip (and count) records that cannot fit instead of failing')
    .option('--legacy-bert-order', 'tuple templates in THUDM\'s legacy BERT order [P] [MASK] [P] {sub_label} [P]')
    .option('--seed <n>', 'seed', parseIntOption, DEFAULT_LOOP.seed)
    .option('--resume', 'continue the run in --out from its last checkpoint')
    .option('--quiet', 'no progress output')
    .action(async (o) => {
      await initEngine();
      let config: RunConfig;
      const cfgFile = path.join(o.out, 'config.json');
      if (o.resume && fs.existsSync(cfgFile)) {
        config = JSON.parse(fs.readFileSync(cfgFile, 'utf8')) as RunConfig;
      } else {
        config = {
          version: 1,
          model: path.resolve(o.model),
          template: o.template,
          legacyBertOrder: o.legacyBertOrder ?? false,
          head: headFrom(o),
          encoder: {
            type: o.encoder as PromptEncoderType,
            hiddenSize: o.encoderHidden,
            preset: o.encoderPreset,
            dropout: o.encoderDropout,
            seed: o.seed,
          },
          maxLength: o.maxLength,
          skipTooLong: o.skipTooLong ?? false,
          data: { train: path.resolve(o.train), dev: path.resolve(o.dev) },
          loop: {
            ...DEFAULT_LOOP,
            epochs: o.epochs,
            maxSteps: o.maxSteps,
            batchSize: o.batchSize,
            gradAccum: o.gradAccum,
            maxGradNorm: o.maxGradNorm,
            evalEvery: o.evalEvery,
            patience: o.patience,
            saveEvery: o.saveEvery,
            seed: o.seed,
          },
          optim: {
            optimizer: o.optimizer,
            lr: o.lr,
            weightDecay: o.weightDecay,
            schedule: o.schedule,
            warmupRatio: o.warmup,
            gamma: o.gamma,
            tuneLm: o.tuneLm ?? false,
            lmLr: o.lmLr,
            lmWeightDecay: o.lmWeightDecay,
          },
        };
      }
      let session = await PTuningSession.create(config);
      if (o.answerVocab && config.head.kind === 'answer' && !config.head.answerVocab) {
        config = { ...config, head: { ...config.head, answerVocab: answerVocabIds(session, o.answerVocab) } };
        session.dispose({ keepLm: true });
        session = await PTuningSession.create(config, session.lm);
      }
      const progress = makeProgress({ quiet: o.quiet });
      const r = await session.train({ runDir: o.out, resume: o.resume ?? false, progress });
      console.log(
        JSON.stringify({
          run: o.out,
          best: r.bestScore,
          bestStep: r.bestStep,
          bestEpoch: r.bestEpoch + 1,
          steps: r.step,
          stop: r.stopReason,
          seconds: Number(r.seconds.toFixed(1)),
          trainSkipped: r.trainSkipped,
          devSkipped: r.devSkipped,
        }),
      );
      session.dispose();
    });

  program
    .command('eval')
    .description('evaluate a run (best checkpoint) on a data file')
    .requiredOption('--run <dir>', 'run directory')
    .requiredOption('--data <file>', 'data file with labels/answers')
    .option('--checkpoint <which>', 'best|last', 'best')
    .option('--json', 'print JSON')
    .action(async (o) => {
      await initEngine();
      const session = await PTuningSession.load(o.run, o.checkpoint);
      const r = await session.evaluateFile(o.data);
      if (o.json) console.log(JSON.stringify(r.metrics));
      else for (const [k, v] of Object.entries(r.metrics)) console.log(`${k.padEnd(10)} ${Number.isInteger(v) ? v : v.toFixed(4)}`);
      session.dispose();
    });

  program
    .command('predict')
    .description('predict with a run: JSONL with the input index, prediction and top-k scores')
    .requiredOption('--run <dir>', 'run directory')
    .option('--data <file>', 'data file')
    .option('--text <json>', 'one record as JSON, e.g. \'{"sentence":"a fine film"}\'')
    .option('--top <k>', 'scores to list', parseIntOption, 5)
    .option('--checkpoint <which>', 'best|last', 'best')
    .action(async (o) => {
      if (!o.data === !o.text) throw new UserError('give exactly one of --data FILE or --text JSON');
      let records: Record<string, unknown>[];
      if (o.text) {
        try {
          records = [JSON.parse(o.text) as Record<string, unknown>];
        } catch (e) {
          throw new UserError(`--text is not valid JSON: ${(e as Error).message}`);
        }
      } else {
        records = readRecords(o.data);
      }
      await initEngine();
      const session = await PTuningSession.load(o.run, o.checkpoint);
      writeJsonl(await session.predict(records, o.data ?? '--text', o.top));
      session.dispose();
    });

  program
    .command('export')
    .description('export a run: a PEFT P-tuning adapter, the bare prompt table, or a self-contained ONNX model')
    .requiredOption('--run <dir>', 'run directory')
    .requiredOption('--out <dir>', 'output directory')
    .option('--format <f>', 'peft|table|onnx (model.onnx + tokenizer.json + ptune.json: the LM with the prompt baked in)', 'peft')
    .option('--checkpoint <which>', 'best|last', 'best')
    .option('--batch <n>', 'onnx: rows of the exported graph (inputs are [batch, the run\'s max length])', parseIntOption, 1)
    .option('--top <k>', 'onnx, answer tasks: answers returned per row', parseIntOption, 5)
    .option('--external-data', 'onnx: weights in model.onnx.data beside the graph (default: only past 1 GiB)')
    .action(async (o) => {
      if (!['peft', 'table', 'onnx'].includes(o.format)) throw new UserError(`--format must be peft, table or onnx, got ${o.format}`);
      await initEngine();
      const session = await PTuningSession.load(o.run, o.checkpoint);
      if (o.format === 'peft') await exportPeft(session, o.out);
      else if (o.format === 'table') await exportTable(session, o.out);
      else await exportOnnx(session, o.out, { batch: o.batch, topK: o.top, externalData: o.externalData ? true : 'auto' });
      console.log(`wrote ${o.format} export to ${o.out}`);
      session.dispose();
    });

  program
    .command('import-peft')
    .description('make a ptune run from a PEFT P-tuning adapter (for eval/predict)')
    .requiredOption('--adapter <dir>', 'adapter directory (adapter_config.json + adapter_model.safetensors)')
    .requiredOption('--model <dir>', 'base model')
    .requiredOption('--out <dir>', 'run directory to create')
    .option('--template <t>', 'input template after the virtual tokens (adapters from PEFT)')
    .option('--label-field <f>', 'record field holding the label')
    .option('--verbalizer <spec>', 'label words')
    .option('--answer-field <f>', 'record field holding a one-token answer')
    .action(async (o) => {
      const head = o.labelField || o.answerField ? headFrom(o) : undefined;
      importPeft({ adapterDir: o.adapter, model: path.resolve(o.model), runDir: o.out, template: o.template, head });
      await initEngine();
      const session = await PTuningSession.load(o.out);
      console.log(`imported ${session.encoder?.config.numVirtualTokens ?? 0} virtual tokens into ${o.out}`);
      session.dispose();
    });
}
