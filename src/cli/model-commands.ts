import fs from 'node:fs';
import path from 'node:path';
import type { Command } from 'commander';
import { initEngine } from '../engine/index.js';
import { loadModel } from '../models/load.js';
import { generate } from '../models/generate.js';
import type { LanguageModel } from '../models/model.js';
import { paddedLength } from '../prompt/ptuning.js';
import { sequenceWrap } from '../prompt/render.js';
import { UserError } from '../util/errors.js';
import { addQuantizeOptions, fillSchema, generateSchema, infoSchema, parseOptions, quantizeFrom, type GenerateOptions } from './options.js';
import { asText } from './options.js';
import { PromptTable, TaskInputError } from '../serve/table.js';


export interface TopToken {
  id: number;
  token: string;
  logit: number;
  prob: number;
}

export interface FillPrediction {
  position: number;
  top: TopToken[];
}

/** Ids the model sees for `text`: wrapped as its tokenizer wraps a sequence (e.g. [CLS] text [SEP], BOS + text). */
export function modelInputIds(lm: LanguageModel, text: string): number[] {
  const { start, end } = sequenceWrap(lm.tokenizer, lm.info);
  return [...start, ...lm.tokenizer.encode(text), ...end];
}

/**
 * Masked LM: predictions at every [MASK] of `text`; causal LM: the next token after `text`.
 * Logits are over the full vocabulary, before softmax.
 */
export async function fill(lm: LanguageModel, text: string, topK: number): Promise<FillPrediction[]> {
  const ids = modelInputIds(lm, text);
  let positions: number[];
  if (lm.info.kind === 'masked') {
    const mask = lm.info.special.mask!;
    positions = ids.flatMap((id, i) => (id === mask ? [i] : []));
    if (positions.length === 0) throw new UserError(`text has no [MASK] token for the masked LM ${lm.info.source}: "${text}"`);
  } else {
    if (ids.length === 0) throw new UserError('empty text and the model has no BOS token');
    positions = [ids.length - 1];
  }
  if (ids.length > lm.info.maxPositions) throw new UserError(`text is ${ids.length} tokens, more than the ${lm.info.maxPositions} positions of ${lm.info.source}`);
  const s = paddedLength(ids.length, lm.info.maxPositions);
  const p = positions.length;
  const grid = (f: (i: number) => number) => Int32Array.from({ length: s }, (_, i) => (i < ids.length ? f(i) : 0));
  const r = await lm.run(
    {
      key: `fill ${s} at ${p}`,
      build: (b) => {
        const { o } = b;
        const w = lm.weights(b);
        const { hidden } = lm.fns.hidden(o, w, { embeds: lm.fns.embed(o, w, b.input('ids', [1, s], 'int32')), attentionMask: b.input('attention_mask', [1, s], 'int32') });
        // padding follows the text, so real tokens keep their positions
        const rows = o.gather(o.reshape(hidden, [s, lm.info.hiddenSize]), b.input('positions', [p], 'int32'));
        const logits = lm.fns.logits(o, w, rows);
        return { outputs: { logits, logp: o.logSoftmax(logits) } };
      },
    },
    {
      ids: { data: grid((i) => ids[i]!), shape: [1, s] },
      attention_mask: { data: grid(() => 1), shape: [1, s] },
      positions: { data: Int32Array.from(positions), shape: [p] },
    },
  );
  const v = r.outputs.logits!.shape[1]!;
  const logits = r.outputs.logits!.data as Float32Array;
  const logp = r.outputs.logp!.data as Float32Array;
  return positions.map((position, k) => {
    const row = logits.subarray(k * v, (k + 1) * v);
    return {
      position,
      top: topIndices(row, topK).map((id) => ({
        id,
        token: lm.tokenizer.idToToken(id) ?? `<${id}>`,
        logit: row[id]!,
        prob: Math.exp(logp[k * v + id]!),
      })),
    };
  });
}

export function topIndices(values: ArrayLike<number>, k: number): number[] {
  const idx: number[] = [];
  for (let i = 0; i < values.length; i++) {
    if (idx.length < k) {
      idx.push(i);
      idx.sort((a, b) => values[b]! - values[a]!);
    } else if (values[i]! > values[idx[k - 1]!]!) {
      idx[k - 1] = i;
      idx.sort((a, b) => values[b]! - values[a]!);
    }
  }
  return idx;
}

export function registerModelCommands(program: Command): void {
  const info = program
    .command('info')
    .description('show a model: family, parameter count, vocabulary, layers, hidden size, heads')
    .argument('<model>', 'model directory (Hugging Face layout) or llama2.c checkpoint')
    .option('--json', 'print JSON');
  addQuantizeOptions(info, 'the model').action(async (model: string, raw: Record<string, unknown>) => {
      const opts = parseOptions(infoSchema, raw);
      const quantize = quantizeFrom(opts);
      await initEngine();
      const lm = await loadModel(model, { quantize });
      const i = lm.info;
      if (opts.json) {
        console.log(JSON.stringify(i, null, 2));
      } else {
        console.log(`${i.source}`);
        console.log(`  family        ${i.family} (${i.kind} LM)`);
        console.log(`  parameters    ${i.parameterCount.toLocaleString('en-US')}`);
        console.log(`  vocabulary    ${i.vocabSize}`);
        console.log(`  layers        ${i.numLayers}`);
        console.log(`  hidden size   ${i.hiddenSize} (intermediate ${i.intermediateSize})`);
        console.log(`  heads         ${i.numHeads}${i.numKvHeads !== i.numHeads ? ` (${i.numKvHeads} key/value)` : ''}`);
        console.log(`  max positions ${i.maxPositions}`);
        const q = i.quantization;
        if (q) {
          console.log(`  quantized     ${q.name}: ${q.weights} linear weights (${q.values.toLocaleString('en-US')} values), ${q.blockSize === 'channel' ? 'per channel' : `block ${q.blockSize}`}, ${q.symmetric ? 'symmetric' : 'zero points'}, backward ${q.backward}`);
          console.log(`  store         ${q.store} (${(q.bytes / 1e6).toFixed(1)} MB, ${q.reused ? 'reused' : 'written now'})`);
        }
      }
      lm.dispose();
    });

  const fillCmd = program
    .command('fill')
    .description('masked LM: top predictions at each [MASK]; causal LM: the next token after the text')
    .argument('<model>', 'model directory or checkpoint')
    .argument('<text>', 'input text, with [MASK] for a masked LM')
    .option('--top <k>', 'predictions per position (≥ 1)', asText, 10)
    .option('--json', 'print JSON');
  addQuantizeOptions(fillCmd, 'the model').action(async (model: string, text: string, raw: Record<string, unknown>) => {
      const opts = parseOptions(fillSchema, raw);
      const quantize = quantizeFrom(opts);
      await initEngine();
      const lm = await loadModel(model, { quantize });
      const predictions = await fill(lm, text, opts.top);
      if (opts.json) {
        console.log(JSON.stringify({ predictions }));
      } else {
        for (const p of predictions) {
          console.log(`position ${p.position}:`);
          for (const t of p.top) console.log(`  ${t.token.padEnd(16)} ${t.prob.toFixed(4)}  (logit ${t.logit.toFixed(3)})`);
        }
      }
      lm.dispose();
    });

  const generateCmd = program
    .command('generate')
    .description('generate text with a causal LM (greedy at temperature 0, KV cache); with --run, after a tuned prompt and a record')
    .argument('[model]', 'model directory or checkpoint (not with --run: the run names its model)')
    .option('--prompt <text>', 'prompt text (empty: start from BOS)', '')
    .option('--run <dir>', "a P-tuning run: generate after its template filled with --text's record, its prompt at the pseudo tokens")
    .option('--text <json>', 'with --run: the record as JSON, e.g. \'{"sub_label":"Paris"}\'')
    .option('--max-new-tokens <n>', 'tokens to generate (≥ 0)', asText, 64)
    .option('--temperature <t>', 'sampling temperature (≥ 0); 0 = greedy', asText, 0)
    .option('--top-p <p>', 'nucleus sampling mass, in (0, 1]', asText, 1)
    .option('--seed <n>', 'sampling seed', asText, 0)
    .option('--stop <s>', 'stop string: the text ends before it (repeatable)', (v: string, all: string[]) => [...all, v], [] as string[])
    .option('--json', 'with --run: print {"text", "tokens", "finish_reason"}');
  addQuantizeOptions(generateCmd, 'the model').action(async (model: string | undefined, raw: Record<string, unknown>) => {
      const opts = parseOptions(generateSchema, raw);
      const quantize = quantizeFrom(opts);
      if (opts.run) return generateWithRun(model, opts);
      if (!model) throw new UserError('give a model directory, or --run RUNDIR --text JSON');
      await initEngine();
      const lm = await loadModel(model, { quantize });
      if (lm.info.kind !== 'causal') throw new UserError(`${lm.info.source} is a ${lm.info.kind} LM: generate needs a causal LM`);
      const ids = opts.prompt ? modelInputIds(lm, opts.prompt) : [];
      if (ids.length >= lm.info.maxPositions) throw new UserError(`--prompt is ${ids.length} tokens: no room left in the ${lm.info.maxPositions} positions of ${lm.info.source}`);
      const out = await generate(lm, ids, {
        maxNewTokens: opts.maxNewTokens,
        temperature: opts.temperature,
        topP: opts.topP,
        seed: opts.seed,
        stopAtEos: true,
        stop: opts.stop.length ? opts.stop : undefined,
      });
      // decode prompt + continuation together: spacing between them is the tokenizer's call ("time" + "," → "time,")
      const head = lm.tokenizer.decode(ids, { skipSpecial: true });
      const full = lm.tokenizer.decode([...ids, ...out], { skipSpecial: true });
      let text = full.startsWith(head) ? opts.prompt + full.slice(head.length) : full;
      for (const s of opts.stop) {
        const at = text.indexOf(s, opts.prompt.length);
        if (s && at >= 0) text = text.slice(0, at);
      }
      process.stdout.write(text + '\n');
      lm.dispose();
    });
}

/** `ptune generate --run RUN --text JSON`: the run's task in a one-task prompt table, generating after the record. */
async function generateWithRun(model: string | undefined, opts: GenerateOptions): Promise<void> {
  if (model) throw new UserError('--run names its model: give no model argument with it');
  if (!opts.text) throw new UserError('--run needs --text JSON (the record its template is filled with)');
  let record: Record<string, unknown>;
  try {
    record = JSON.parse(opts.text) as Record<string, unknown>;
  } catch (e) {
    throw new UserError(`--text is not valid JSON: ${(e as Error).message}`);
  }
  if (!record || typeof record !== 'object' || Array.isArray(record)) throw new UserError('--text must be a JSON object (one record)');
  const cfgFile = path.join(opts.run!, 'config.json');
  if (!fs.existsSync(cfgFile)) throw new UserError(`${cfgFile} not found: not a ptune run directory`);
  const { model: base } = JSON.parse(fs.readFileSync(cfgFile, 'utf8')) as { model: string };
  await initEngine();
  const lm = await loadModel(base, { quantize: quantizeFrom(opts) });
  if (lm.info.kind !== 'causal') throw new UserError(`${lm.info.source} is a ${lm.info.kind} LM: generate needs a causal LM`);
  const table = PromptTable.create(lm);
  await table.addRun('run', opts.run!);
  let g;
  try {
    g = await table.generate('run', record, { maxNewTokens: opts.maxNewTokens, temperature: opts.temperature, topP: opts.topP, seed: opts.seed, stop: opts.stop });
  } catch (e) {
    if (e instanceof TaskInputError) throw new UserError(`--text: ${e.message}`);
    throw e;
  }
  process.stdout.write((opts.json ? JSON.stringify({ text: g.text, tokens: g.tokens, finish_reason: g.finishReason }) : g.text) + '\n');
  lm.dispose();
}
