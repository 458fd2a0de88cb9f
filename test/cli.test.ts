import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const MODELS = path.resolve(process.cwd(), '../shared/models');
const BERT = path.join(MODELS, 'bert-mini-lama');
const GPT2 = path.join(MODELS, 'gpt2-mini-lama');
const STORIES = path.join(MODELS, 'stories260K');

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** the environment the CLI runs in: this process's, without the runtime settings, plus `env` */
function envWith(env: Record<string, string>): NodeJS.ProcessEnv {
  const base = { ...process.env };
  for (const k of ['PTUNE_RUNTIME', 'PTUNE_DISABLE_NATIVE', 'PTUNE_THREADS']) delete base[k];
  return { ...base, ...env };
}

function run(env: Record<string, string>, args: string[]): Run {
  const r = spawnSync(process.execPath, ['bin/ptune.js', ...args], { encoding: 'utf8', timeout: 60_000, env: envWith(env) });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** Runs the CLI entry (bin/ptune.js) in a child process. */
function ptune(...args: string[]): Run {
  return run({}, args);
}
/** The same, with extra environment variables. */
ptune.env = (env: Record<string, string>) => (...args: string[]): Run => run(env, args);

/** Exit code ≠ 0, one line on stderr, no stack frames. */
function assertOneLineError(r: Run, pattern: RegExp): void {
  assert.notEqual(r.code, 0, `exit code; stderr: ${r.stderr}`);
  const lines = r.stderr.split('\n').filter((l) => l.length > 0);
  assert.equal(lines.length, 1, `stderr: ${r.stderr}`);
  assert.match(lines[0]!, pattern);
  assert.doesNotMatch(r.stderr, /\n\s+at /);
}

interface Golden {
  items: { text: string; positions: Record<string, { top10_ids: number[]; top10_values: number[] }> }[];
}
const golden = (dir: string): Golden => JSON.parse(fs.readFileSync(path.join(dir, 'golden.json'), 'utf8')) as Golden;

interface FillJson {
  predictions: { position: number; top: { id: number; token: string; logit: number; prob: number }[] }[];
}

let tmp: string;
let corrupt: string;
let t5: string;

before(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'ptune-cli-'));
  corrupt = path.join(tmp, 'corrupt');
  fs.mkdirSync(corrupt);
  for (const f of fs.readdirSync(BERT)) {
    if (f !== 'model.safetensors') fs.symlinkSync(path.join(BERT, f), path.join(corrupt, f));
  }
  const weights = fs.readFileSync(path.join(BERT, 'model.safetensors'));
  fs.writeFileSync(path.join(corrupt, 'model.safetensors'), weights.subarray(0, 100_000));
  t5 = path.join(tmp, 't5');
  fs.mkdirSync(t5);
  fs.writeFileSync(path.join(t5, 'config.json'), JSON.stringify({ model_type: 't5' }));
});

after(() => fs.rmSync(tmp, { recursive: true, force: true }));

test('info --json describes bert-mini-lama', () => {
  const r = ptune('info', BERT, '--json');
  assert.equal(r.code, 0, r.stderr);
  const info = JSON.parse(r.stdout) as Record<string, unknown>;
  assert.equal(info.family, 'bert');
  assert.equal(info.kind, 'masked');
  assert.equal(info.parameterCount, 4764090);
  assert.equal(info.numLayers, 4);
  assert.equal(info.hiddenSize, 128);
  assert.equal(info.numHeads, 4);
  assert.equal(info.vocabSize, 30522);
});

test('info prints a human summary for gpt2-mini-lama and stories260K', () => {
  const gpt2 = ptune('info', GPT2);
  assert.equal(gpt2.code, 0, gpt2.stderr);
  assert.match(gpt2.stdout, /family\s+gpt2 \(causal LM\)/);
  assert.match(gpt2.stdout, /parameters\s+4,716,544/);
  assert.match(gpt2.stdout, /vocabulary\s+30522/);
  assert.match(gpt2.stdout, /layers\s+4\n/);

  const stories = ptune('info', STORIES);
  assert.equal(stories.code, 0, stories.stderr);
  assert.match(stories.stdout, /family\s+llama \(causal LM\)/);
  assert.match(stories.stdout, /parameters\s+260,032/);
  assert.match(stories.stdout, /vocabulary\s+512/);
  assert.match(stories.stdout, /layers\s+5\n/);
  assert.match(stories.stdout, /hidden size\s+64 /);
  assert.match(stories.stdout, /heads\s+8 \(4 key\/value\)/);
});

test('fill --json on bert-mini-lama matches the golden top-10 at [MASK]', () => {
  const item = golden(BERT).items[0]!;
  assert.equal(item.text, 'paris is the capital of [MASK] .');
  const r = ptune('fill', BERT, item.text, '--json', '--top', '10');
  assert.equal(r.code, 0, r.stderr);
  const { predictions } = JSON.parse(r.stdout) as FillJson;
  assert.equal(predictions.length, 1);
  const p = predictions[0]!;
  assert.equal(p.position, 6);
  const want = item.positions['6']!;
  assert.deepEqual(p.top.map((t) => t.id), want.top10_ids);
  p.top.forEach((t, i) => assert.ok(Math.abs(t.logit - want.top10_values[i]!) < 2e-4, `logit ${i}: ${t.logit} vs ${want.top10_values[i]}`));
  assert.equal(p.top[0]!.token, 'paris');
  const mass = p.top.reduce((s, t) => s + t.prob, 0);
  assert.ok(mass > 0 && mass <= 1 + 1e-9, `top-10 mass ${mass}`);
  for (let i = 1; i < p.top.length; i++) assert.ok(p.top[i]!.prob <= p.top[i - 1]!.prob);
});

test('fill on gpt2-mini-lama predicts the next token after the text', () => {
  const item = golden(GPT2).items[0]!;
  const r = ptune('fill', GPT2, item.text, '--json', '--top', '10');
  assert.equal(r.code, 0, r.stderr);
  const { predictions } = JSON.parse(r.stdout) as FillJson;
  assert.equal(predictions.length, 1);
  const last = String(Math.max(...Object.keys(item.positions).map(Number)));
  assert.equal(predictions[0]!.position, Number(last));
  const want = item.positions[last]!;
  assert.deepEqual(predictions[0]!.top.map((t) => t.id), want.top10_ids);
  predictions[0]!.top.forEach((t, i) => assert.ok(Math.abs(t.logit - want.top10_values[i]!) < 2e-4, `logit ${i}`));
});

test('generate greedily continues stories260K from BOS', () => {
  const r = ptune('generate', STORIES, '--max-new-tokens', '40', '--temperature', '0');
  assert.equal(r.code, 0, r.stderr);
  assert.ok(r.stdout.startsWith('Once upon a time, there was a little girl named Lily.'), JSON.stringify(r.stdout));
});

test('generate continues a prompt with the tokenizer\'s spacing', () => {
  const r = ptune('generate', STORIES, '--prompt', 'Once upon a time', '--max-new-tokens', '10');
  assert.equal(r.code, 0, r.stderr);
  assert.ok(r.stdout.startsWith('Once upon a time, there was a little girl named Lily'), JSON.stringify(r.stdout));
});

test('a missing model directory is a one-line error', () => {
  assertOneLineError(ptune('info', path.join(tmp, 'no-such-model')), /no-such-model: no such file or directory/);
});

test('a truncated model.safetensors is a one-line error naming the file', () => {
  assertOneLineError(ptune('info', corrupt), /corrupt\/model\.safetensors: .*past the end/);
  assertOneLineError(ptune('fill', corrupt, 'x [MASK]'), /model\.safetensors/);
});

test('an unsupported model_type is a one-line error', () => {
  assertOneLineError(ptune('info', t5), /config\.json: unsupported model_type "t5"/);
});

test('fill without [MASK] on a masked LM is a one-line error', () => {
  assertOneLineError(ptune('fill', BERT, 'paris is the capital of france .'), /no \[MASK\]/);
});

test('generate on a masked LM is a one-line error', () => {
  assertOneLineError(ptune('generate', BERT, '--max-new-tokens', '2'), /masked LM: generate needs a causal LM/);
});

test('fill --top 0 is a one-line error', () => {
  assertOneLineError(ptune('fill', BERT, '[MASK] .', '--top', '0'), /--top: expected an integer ≥ 1, got "0"/);
});

test('--verbose adds the stack trace', () => {
  const r = ptune('--verbose', 'info', corrupt);
  assert.notEqual(r.code, 0);
  assert.match(r.stderr, /^ptune: .*model\.safetensors/);
  assert.match(r.stderr, /\n\s+at /);
});

/** The top predictions of `fill --json` at the first predicted position. */
function fillTop(r: Run): { id: number; logit: number }[] {
  assert.equal(r.code, 0, r.stderr);
  return (JSON.parse(r.stdout) as FillJson).predictions[0]!.top;
}

test('--threads 1 gives the same fill predictions; a bad thread count is a one-line error', () => {
  const text = 'paris is the capital of [MASK] .';
  const a = fillTop(ptune('fill', BERT, text, '--json', '--top', '5'));
  const one = ptune('--threads', '1', 'fill', BERT, text, '--json', '--top', '5');
  assert.equal(one.stderr, '');
  const b = fillTop(one);
  assert.deepEqual(b.map((t) => t.id), a.map((t) => t.id));
  b.forEach((t, i) => assert.ok(Math.abs(t.logit - a[i]!.logit) < 1e-4, `logit ${i}: ${t.logit} vs ${a[i]!.logit}`));
  assertOneLineError(ptune('--threads', '0', 'info', BERT), /--threads: expected an integer ≥ 1, got "0"/);
});

test('without the native binding (PTUNE_DISABLE_NATIVE=1) fill runs on onnxruntime-web with a one-line notice and the same predictions', () => {
  const text = 'paris is the capital of [MASK] .';
  const native = ptune('fill', BERT, text, '--json', '--top', '5');
  assert.equal(native.stderr, '', 'no notice with the native binding');
  const a = fillTop(native);
  const web = ptune.env({ PTUNE_DISABLE_NATIVE: '1' })('fill', BERT, text, '--json', '--top', '5');
  const lines = web.stderr.split('\n').filter((l) => l.length > 0);
  assert.equal(lines.length, 1, `stderr: ${web.stderr}`);
  assert.match(lines[0]!, /onnxruntime-node cannot be loaded .*running on onnxruntime-web \(WebAssembly\)/);
  const b = fillTop(web);
  assert.deepEqual(b.map((t) => t.id), a.map((t) => t.id));
  b.forEach((t, i) => assert.ok(Math.abs(t.logit - a[i]!.logit) < 1e-4, `logit ${i}: ${t.logit} vs ${a[i]!.logit}`));
});

test('--runtime web runs on onnxruntime-web without a notice; an unknown --runtime is a one-line error', () => {
  const web = ptune('--runtime', 'web', 'fill', BERT, 'paris is the capital of [MASK] .', '--json', '--top', '3');
  assert.equal(web.stderr, '', 'asked for, not a fallback');
  assert.equal((JSON.parse(web.stdout) as FillJson).predictions[0]!.top[0]!.token, 'paris');
  assertOneLineError(ptune('--runtime', 'foo', 'info', BERT), /--runtime: expected one of node, web, got "foo"/);
});

test('the ptune command starts Node in the environment the bench and the methods runner pass (PTUNE_PROCESS_ENV)', async () => {
  const { PTUNE_PROCESS_ENV } = await import('../src/cli/process-env.js');
  const shebang = fs.readFileSync(path.resolve(process.cwd(), 'bin/ptune.js'), 'utf8').split('\n')[0]!;
  const set = Object.fromEntries([...shebang.matchAll(/\b([A-Z_]+)=(\S+)/g)].map((m) => [m[1]!, m[2]!]));
  assert.deepEqual(set, { ...PTUNE_PROCESS_ENV });
});
