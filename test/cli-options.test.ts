/**
 * Every option is checked before any work, with a one-line message naming the option and the accepted values;
 * run files (config.json, last/state.json, adapter_config.json) are read through schemas whose errors name the
 * file and the field; `--resume` compares the options given with the run's.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { runCli } from './fixtures.js';

const shared = path.resolve(process.cwd(), '../shared');
const bert = path.join(shared, 'models/bert-mini-lama');
const stories = path.join(shared, 'models/stories260K');
const rel = path.join(shared, 'data/lama/fact-retrieval/original/P103');

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ptune-options-'));
const take = (split: string, n: number) => fs.readFileSync(path.join(rel, `${split}.jsonl`), 'utf8').trim().split('\n').slice(0, n).join('\n') + '\n';
const data = { train: path.join(dir, 'train.jsonl'), dev: path.join(dir, 'dev.jsonl') };
fs.writeFileSync(data.train, take('train', 16));
fs.writeFileSync(data.dev, take('dev', 8));
let outs = 0;
const freshOut = () => path.join(dir, `out${++outs}`);

const train = (...extra: string[]) => [
  'train', '--model', bert, '--train', data.train, '--dev', data.dev, '--template', '3,3,3', '--answer-field', 'obj_label',
  '--epochs', '1', '--quiet', '--out', freshOut(), ...extra,
];
const labelTrain = (...extra: string[]) => [
  'train', '--model', bert, '--train', data.train, '--dev', data.dev, '--template', '{sub_label} [P*2] [MASK] .',
  '--label-field', 'obj_label', '--verbalizer', 'French:french,Dutch:dutch',
  '--epochs', '1', '--quiet', '--out', freshOut(), ...extra,
];

/** one-line error, exit 2, no internal error text */
async function refused(args: string[], pattern: RegExp): Promise<string> {
  const r = await runCli(args);
  assert.equal(r.code, 2, `${args.join(' ')}: exit ${r.code}: ${r.text}`);
  const lines = r.text.split('\n').filter((l) => l.trim());
  assert.equal(lines.length, 1, r.text);
  assert.match(lines[0]!, pattern);
  assert.doesNotMatch(lines[0]!, /TypeError|Cannot read|undefined|\x1b\[|onnxruntime|Non-zero status/);
  return lines[0]!;
}

test('train options out of range or not in their set are refused before any work, naming the option and the accepted values', async () => {
  const cases: [string[], RegExp][] = [
    [['--optimizer', 'sgd'], /--optimizer.*adam, adamw.*"sgd"/],
    [['--schedule', 'foo'], /--schedule.*constant, linear, exponential/],
    [['--epochs', '0'], /--epochs.*integer ≥ 1/],
    [['--epochs', '-1'], /--epochs.*integer ≥ 1/],
    [['--batch-size', '-2'], /--batch-size.*integer ≥ 1/],
    [['--batch-size', '0'], /--batch-size.*integer ≥ 1/],
    [['--grad-accum', '0'], /--grad-accum.*integer ≥ 1/],
    [['--warmup', '-1'], /--warmup.*0.*1/],
    [['--warmup', '2'], /--warmup.*0.*1/],
    [['--eval-every', '-1'], /--eval-every.*integer ≥ 0/],
    [['--max-steps', '-1'], /--max-steps.*integer ≥ 0/],
    [['--patience', '-1'], /--patience.*integer ≥ 0/],
    [['--max-grad-norm', '-1'], /--max-grad-norm.*≥ 0/],
    [['--token-rule', 'foo'], /--token-rule.*first, mean, sum, max/],
    [['--lr', '0'], /--lr.*> 0/],
    [['--encoder', 'gru'], /--encoder.*lstm, mlp, embedding/],
    [['--encoder-dropout', '1'], /--encoder-dropout/],
    [['--epochs', '2.5'], /--epochs.*integer/],
    [['--seed', 'abc'], /--seed.*integer/],
  ];
  for (const [extra, pattern] of cases) {
    const args = train(...extra);
    const out = args[args.indexOf('--out') + 1]!;
    await refused(args, pattern);
    assert.ok(!fs.existsSync(out), `${extra.join(' ')}: nothing may be written`);
  }
  // with a label head the token rule is used: a bad one is still an option error
  await refused(labelTrain('--token-rule', 'foo'), /--token-rule.*first, mean, sum, max/);
});

test('--max-length is checked against the model\'s positions', async () => {
  await refused(train('--max-length', '1000'), /--max-length.*128/);
});

test('predict --top and fill --top must be ≥ 1', async () => {
  const run = freshOut();
  const r = await runCli(['train', '--model', bert, '--train', data.train, '--dev', data.dev, '--template', '3,3,3', '--answer-field', 'obj_label', '--epochs', '1', '--quiet', '--out', run]);
  assert.equal(r.code, 0, r.text);
  for (const top of ['-1', '0', '1.5']) {
    await refused(['predict', '--run', run, '--text', '{"sub_label":"x"}', '--top', top], /--top.*integer ≥ 1/);
  }
  await refused(['predict', '--run', run, '--text', '{"sub_label":"x"}', '--checkpoint', 'first'], /--checkpoint.*best, last/);
  await refused(['fill', bert, 'a [MASK] .', '--top', '-3'], /--top.*integer ≥ 1/);
});

test('fewglue, lama and generate options are checked', async () => {
  await refused(['fewglue', '--model', bert, '--task', 'cb', '--eval-cap', '-1', '--out', freshOut()], /--eval-cap.*integer ≥ 0/);
  await refused(['fewglue', '--model', bert, '--task', 'cb', '--max-length', '1000', '--out', freshOut()], /--max-length.*128/);
  await refused(['fewglue', '--model', bert, '--task', 'cb', '--seed-list', '2,x', '--out', freshOut()], /--seed-list.*integer.*"x"/);
  await refused(['lama', '--model', bert, '--data', path.join(shared, 'data/lama'), '--lr', '-1', '--out', freshOut()], /--lr.*> 0/);
  await refused(['lama', '--model', bert, '--data', path.join(shared, 'data/lama'), '--jobs', '0', '--out', freshOut()], /--jobs.*integer ≥ 1/);
  await refused(['generate', stories, '--top-p', '0'], /--top-p/);
  await refused(['generate', stories, '--temperature', '-1'], /--temperature.*≥ 0/);
  await refused(['generate', stories, '--prompt', 'once upon a time '.repeat(200)], /--prompt.*positions/);
});

test('unknown global options and tuple templates say what is accepted', async () => {
  await refused(['--backend', 'foo', 'info', bert], /--backend.*--runtime node\|web/);
  await refused(['--runtime', 'foo', 'info', bert], /--runtime.*node, web/);
  for (const t of ['3,3', '-1,3,3', '3,3,3,3']) await refused(train('--template', t), /tuple.*three.*integers/);
});

test('--resume: differing options are listed and refused; --epochs may change and is applied, saying so', async () => {
  const run = freshOut();
  const base = ['train', '--model', bert, '--train', data.train, '--dev', data.dev, '--template', '3,3,3', '--answer-field', 'obj_label', '--quiet', '--out', run];
  assert.equal((await runCli([...base, '--epochs', '1'])).code, 0);
  const cfg = fs.readFileSync(path.join(run, 'config.json'), 'utf8');
  const line = await refused([...base, '--resume', '--lr', '0.01', '--template', '[P] {sub_label} [MASK]'], /^ptune: --resume: options differ/);
  assert.match(line, /--lr 0\.01 \(the run has 0\.003\)/);
  assert.match(line, /--template "\[P\] \{sub_label\} \[MASK\]" \(the run has "3,3,3"\)/);
  assert.equal(fs.readFileSync(path.join(run, 'config.json'), 'utf8'), cfg);

  const r = await runCli(['train', '--out', run, '--resume', '--epochs', '2', '--quiet']);
  assert.equal(r.code, 0, r.text);
  assert.match(r.text, /--epochs 2 \(was 1\)/);
  assert.equal(JSON.parse(fs.readFileSync(path.join(run, 'config.json'), 'utf8')).loop.epochs, 2);
  const state = JSON.parse(fs.readFileSync(path.join(run, 'last/state.json'), 'utf8'));
  assert.equal(state.epoch, 2);
  assert.equal(state.step, 4);
  await refused(['train', '--out', run, '--resume', '--overwrite'], /--resume.*--overwrite/);
});

test('run files are read through schemas: errors name the file and the field; unknown versions are refused', async () => {
  const run = freshOut();
  assert.equal((await runCli(['train', '--model', bert, '--train', data.train, '--dev', data.dev, '--template', '3,3,3', '--answer-field', 'obj_label', '--epochs', '1', '--quiet', '--out', run])).code, 0);
  const cfgFile = path.join(run, 'config.json');
  const good = fs.readFileSync(cfgFile, 'utf8');
  const evalRun = () => ['eval', '--run', run, '--data', data.dev];
  const esc = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

  fs.writeFileSync(cfgFile, '{bad');
  await refused(evalRun(), new RegExp(`${esc(cfgFile)}.*JSON`));
  fs.writeFileSync(cfgFile, '{"version":1}');
  await refused(evalRun(), new RegExp(`${esc(cfgFile)}: model`));
  fs.writeFileSync(cfgFile, '{"version":7}');
  await refused(evalRun(), new RegExp(`${esc(cfgFile)}: version 7`));
  const c = JSON.parse(good);
  c.loop.batchSize = 0;
  fs.writeFileSync(cfgFile, JSON.stringify(c));
  await refused(evalRun(), new RegExp(`${esc(cfgFile)}: loop\\.batchSize`));
  fs.writeFileSync(cfgFile, good);

  const stateFile = path.join(run, 'last/state.json');
  fs.writeFileSync(stateFile, '{x');
  await refused(['train', '--out', run, '--resume', '--epochs', '2', '--quiet'], new RegExp(`${esc(stateFile)}.*JSON`));
  fs.writeFileSync(stateFile, '{"step": -1}');
  await refused(['train', '--out', run, '--resume', '--epochs', '2', '--quiet'], new RegExp(`${esc(stateFile)}: `));

  const adapter = path.join(dir, 'adapter');
  fs.mkdirSync(adapter);
  fs.writeFileSync(path.join(adapter, 'adapter_config.json'), '{"peft_type": "P_TUNING",');
  fs.writeFileSync(path.join(adapter, 'adapter_model.safetensors'), '');
  await refused(['import-peft', '--adapter', adapter, '--model', bert, '--out', freshOut()], /adapter_config\.json.*JSON/);
  fs.writeFileSync(path.join(adapter, 'adapter_config.json'), '{"peft_type": "P_TUNING", "num_virtual_tokens": "four"}');
  await refused(['import-peft', '--adapter', adapter, '--model', bert, '--out', freshOut()], /adapter_config\.json: num_virtual_tokens/);
});

test('every option a command declares reaches its schema (none is dropped silently), --quantize on every command that loads an LM', async () => {
  const { Command } = await import('commander');
  const o = await import('../src/cli/options.js');
  const { registerModelCommands } = await import('../src/cli/model-commands.js');
  const { registerLamaCommand } = await import('../src/cli/lama-command.js');
  const { registerTrainCommands } = await import('../src/cli/train-commands.js');
  const { registerFewGlueCommand } = await import('../src/cli/fewglue-command.js');
  const { registerServeCommands } = await import('../src/cli/serve-commands.js');
  const program = new Command();
  for (const register of [registerModelCommands, registerLamaCommand, registerTrainCommands, registerFewGlueCommand, registerServeCommands]) register(program);
  const schemas: Record<string, { shape: Record<string, unknown> }> = {
    train: o.trainSchema, eval: o.evalSchema, predict: o.predictSchema, export: o.exportSchema, 'import-peft': o.importSchema,
    info: o.infoSchema, fill: o.fillSchema, generate: o.generateSchema, lama: o.lamaSchema, fewglue: o.fewglueSchema, serve: o.serveSchema,
  };
  const loadsLm = ['train', 'eval', 'predict', 'export', 'info', 'fill', 'generate', 'lama', 'fewglue', 'serve', 'table'];
  for (const cmd of program.commands) {
    const keys = cmd.options.map((x) => x.attributeName());
    if (loadsLm.includes(cmd.name())) {
      for (const k of Object.keys(o.quantizeFields)) assert.ok(keys.includes(k), `${cmd.name()}: no --${k.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`);
    }
    const schema = schemas[cmd.name()];
    if (!schema) continue;
    for (const k of keys) assert.ok(k in schema.shape, `${cmd.name()}: option ${k} is not in its schema`);
  }
});

test('--quantize: bad values and settings without it are refused by name; a run records it; LM-tuning modes refuse it by name', async () => {
  await refused(train('--quantize', 'int3'), /^ptune: --quantize: expected one of int8, int4, none, fp32, got "int3"/);
  await refused(train('--quant-block', '64'), /--quant-block.*need --quantize int8\|int4/);
  await refused(train('--quantize', 'int4', '--quant-block', '48'), /--quant-block: expected 32, 64, 128 or channel, got 48/);
  await refused(train('--quantize', 'int4', '--quant-block', 'channel'), /--quant-block channel: int8 with symmetric scales/);
  await refused(train('--quantize', 'int8', '--quant-block', 'channel', '--quant-backward', 'dequantize'), /--quant-block channel: int8 with symmetric scales/);
  await refused(train('--quantize', 'int8', '--tune-lm'), /--quantize cannot be combined with --tune-lm/);
  await refused(['lama', '--model', bert, '--data', path.join(shared, 'data/lama'), '--out', freshOut(), '--mode', 'ptune,ptune-lm', '--relations', 'P103', '--quantize', 'int8', '--quiet'], /--quantize cannot be combined with the ptune-lm mode/);
  await refused(['fewglue', '--model', bert, '--task', 'rte', '--out', freshOut(), '--mode', 'ptune,manual-lm,finetune', '--quantize', 'int4', '--quiet'], /--quantize cannot be combined with the manual-lm, finetune modes/);
  const { trainConfigFromOptions } = await import('../src/cli/train-commands.js');
  const given = () => false;
  const base = { model: bert, train: data.train, dev: data.dev, template: '3,3,3', answerField: 'obj_label', out: freshOut() };
  const defaults = {
    tokenRule: 'first', method: 'ptuning', virtualTokens: '20', prefixDropout: '0', peftLayout: true, baselines: true, encoder: 'lstm', encoderPreset: 'thudm',
    encoderDropout: '0', weightDecay: '0', warmup: '0', gamma: '0.98', lmLr: '1e-4', lmWeightDecay: '0.1', lmDropout: true, batchSize: '8', gradAccum: '1', maxGradNorm: '1',
    epochs: '1', maxSteps: '0', evalEvery: '0', patience: '0', saveEvery: '50', maxLength: '128', seed: '13',
  };
  const config = trainConfigFromOptions({ ...defaults, ...base, quantize: 'int4', quantBlock: '64', quantSymmetric: true }, given);
  assert.deepEqual(config.quantize, { bits: 4, blockSize: 64, symmetric: true });
  assert.deepEqual(trainConfigFromOptions({ ...defaults, ...base, quantize: 'int8', quantBlock: 'channel' }, given).quantize, { bits: 8, blockSize: 'channel' });
  assert.equal(trainConfigFromOptions({ ...defaults, ...base, quantize: 'none' }, given).quantize, undefined);
});

test('--tune-lm trains the LM with its dropout unless --no-lm-dropout, which applies with --tune-lm only', async () => {
  await refused(train('--no-lm-dropout'), /--no-lm-dropout applies with --tune-lm only/);
  const { trainConfigFromOptions } = await import('../src/cli/train-commands.js');
  const given = () => false;
  const base = {
    model: bert, train: data.train, dev: data.dev, template: '3,3,3', answerField: 'obj_label', out: freshOut(), tokenRule: 'first', method: 'ptuning',
    virtualTokens: '20', prefixDropout: '0', peftLayout: true, baselines: true, encoder: 'lstm', encoderPreset: 'thudm', encoderDropout: '0',
    weightDecay: '0', warmup: '0', gamma: '0.98', lmLr: '1e-4', lmWeightDecay: '0.1', batchSize: '8', gradAccum: '1', maxGradNorm: '1',
    epochs: '1', maxSteps: '0', evalEvery: '0', patience: '0', saveEvery: '50', maxLength: '128', seed: '13',
  };
  assert.equal(trainConfigFromOptions({ ...base, tuneLm: true, lmDropout: true }, given).optim.lmDropout, true);
  assert.equal(trainConfigFromOptions({ ...base, tuneLm: true, lmDropout: false }, given).optim.lmDropout, false);
  assert.equal('lmDropout' in trainConfigFromOptions({ ...base, lmDropout: true }, given).optim, false, 'a frozen LM: nothing recorded');
});

test('fewglue --seed-list runs the seeds named, not 1..--seeds', async () => {
  const out = freshOut();
  const r = await runCli(['fewglue', '--model', bert, '--task', 'sst2', '--mode', 'bow', '--seed-list', '4,7', '--quiet', '--out', out]);
  assert.equal(r.code, 0, r.text);
  const report = JSON.parse(fs.readFileSync(path.join(out, 'report.json'), 'utf8')) as { runs: { seed: number }[] };
  assert.deepEqual(report.runs.map((x) => x.seed).sort((a, b) => a - b), [4, 7]);
});
