/**
 * Engine comparison at P-tuning's shapes (batch 16 × seq 32, 9 pseudo tokens, fp32): tfjs (wasm) vs ONNX
 * Runtime, and PyTorch when Debian's python3-torch is installed.
 *
 *   npm run bench -- [--models bert-mini,gpt2-mini,bert-base,gpt2-base] [--engines tfjs,ort] [--reps N]
 *                    [--modes fwd,ptune,full,lama] [--torch-threads 1,2] [--no-torch]
 *
 * Each (model, engine, mode) runs in its own process, so every peak RSS is one mode's alone (PyTorch's too). Steps (median of --reps after one
 * warm-up, which for ORT includes compiling the session) mirror ../shared/bench/torch_ptuning_step.py:
 *   fwd    LM forward from input embeddings + logits over the full vocabulary at one answer position per row
 *          (on ORT the inference program: the id → embedding gather is inside it)
 *   ptune  LSTM prompt encoder forward, its rows written into the 9 pseudo positions, LM forward, full-vocab
 *          cross-entropy at the answer position, gradient to the encoder only (frozen LM), Adam step
 *   full   the same with every LM weight trainable (Adam over all parameters); full_grad: its gradient only
 *   lama   PTuningSession.evaluateItems on LAMA P1412 dev facts ([P*3] {sub_label} [P*3] [MASK]), facts/s,
 *          second pass (the first compiles ORT sessions for the shapes met)
 * Prints one JSON object with per-engine results and ratios to PyTorch (< 1: faster than PyTorch).
 */
import { spawnSync } from 'node:child_process';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { tf, initEngine } from '../src/engine/index.js';
import { createRandomModel, loadModel } from '../src/models/load.js';
import { OrtLM } from '../src/models/ort.js';
import type { LanguageModel } from '../src/models/lm.js';
import { PromptEncoder } from '../src/prompt/encoder.js';
import { promptedEmbeds, type PromptBatch } from '../src/prompt/ptuning.js';
import { CompiledPTuning } from '../src/prompt/compiled.js';
import { makeHead } from '../src/prompt/heads.js';
import { Adam } from '../src/train/optim.js';
import { PTuningSession, DEFAULT_LOOP, DEFAULT_OPTIM, type RunConfig } from '../src/train/session.js';
import { readRecords } from '../src/data/read.js';
import { benchBatch } from './batch.js';

const BATCH = 16;
const SEQ = 32;
const PSEUDO = 9;
const LABELS = Array.from({ length: BATCH }, (_, i) => 1000 + i * 7);
const shared = path.resolve(process.cwd(), '../shared');
const TORCH_SCRIPT = path.join(shared, 'bench/torch_ptuning_step.py');
const PYTHON = '/usr/bin/python3';

type Engine = 'tfjs' | 'ort';
type Mode = 'fwd' | 'ptune' | 'full' | 'lama';

interface ModelDef {
  family: 'bert' | 'gpt2';
  dir?: string;
  base?: boolean;
  torchArgs: string[];
}

const BASE = { numLayers: 12, hiddenSize: 768, numHeads: 12, intermediateSize: 3072 };
const MODELS: Record<string, ModelDef> = {
  'bert-mini': { family: 'bert', dir: 'bert-mini-lama', torchArgs: ['--model', path.join(shared, 'models/bert-mini-lama')] },
  'gpt2-mini': { family: 'gpt2', dir: 'gpt2-mini-lama', torchArgs: ['--model', path.join(shared, 'models/gpt2-mini-lama')] },
  'bert-base': { family: 'bert', base: true, torchArgs: ['--arch', 'bert', '--layers', '12', '--hidden', '768', '--heads', '12', '--vocab', '30522'] },
  'gpt2-base': { family: 'gpt2', base: true, torchArgs: ['--arch', 'gpt2', '--layers', '12', '--hidden', '768', '--heads', '12', '--vocab', '50257'] },
};

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  if (i >= 0) return process.argv[i + 1];
  return process.argv.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3);
}

const list = (v: string | undefined, fallback: string) => (v ?? fallback).split(',').map((s) => s.trim()).filter(Boolean);
const round = (x: number) => Math.round(x * 1e4) / 1e4;

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[s.length >> 1]!;
}

/** Warm-up (reported separately: it includes ORT's session compile) then `reps` timed runs. */
function timeSteps(reps: number, fn: () => void): { median_s: number; warmup_s: number } | { error: string } {
  try {
    let t0 = performance.now();
    fn();
    const warmup = (performance.now() - t0) / 1000;
    const all: number[] = [];
    for (let i = 0; i < reps; i++) {
      t0 = performance.now();
      fn();
      all.push((performance.now() - t0) / 1000);
    }
    return { median_s: round(median(all)), warmup_s: round(warmup) };
  } catch (err) {
    return { error: (err instanceof Error ? err.message : String(err)).split('\n')[0]! };
  }
}

async function buildModel(key: string, engine: Engine, trainable: boolean): Promise<LanguageModel> {
  const def = MODELS[key]!;
  let lm: LanguageModel;
  if (def.dir) {
    lm = await loadModel(path.join(shared, 'models', def.dir), { engine: 'tfjs', trainable });
  } else {
    // the mini models' tokenizer (bert-base-uncased WordPiece), so LAMA facts tokenize for real
    const tok = await loadModel(path.join(shared, 'models/bert-mini-lama'), { engine: 'tfjs' });
    const vocabSize = def.family === 'bert' ? 30522 : 50257;
    lm = createRandomModel(def.family, { ...BASE, vocabSize }, 1, tok.tokenizer, { trainable });
    tok.dispose();
  }
  return engine === 'ort' ? new OrtLM(lm) : lm;
}

function logitsOf(lm: LanguageModel, batch: PromptBatch, prompts: tf.Tensor | null): tf.Tensor {
  const hidden = lm.run({
    embeds: promptedEmbeds(lm, batch, prompts),
    attentionMask: tf.tensor2d(batch.attentionMask.flat(), [BATCH, SEQ], 'int32'),
    ...(lm.info.family === 'bert' && { tokenTypeIds: tf.tensor2d(batch.tokenTypeIds.flat(), [BATCH, SEQ], 'int32') }),
  });
  return lm.logitsAt(hidden, tf.tensor1d(batch.answerPositions, 'int32'));
}

/**
 * Gradients of full-vocabulary cross-entropy for `params` (the encoder's, plus the LM's for full tuning), then
 * an Adam step. On ORT the step is the library's compiled program (encoder + LM + loss + backward in one session
 * run, as PTuningSession trains); on tfjs it runs under the tape.
 */
function trainStep(lm: LanguageModel, batch: PromptBatch, encoder: PromptEncoder, adam: Adam | null, params: Map<string, tf.Variable>, compiled: CompiledPTuning | null): void {
  const vars = [...params.values()];
  let loss: number;
  let grads: Map<string, tf.Tensor | Float32Array>;
  if (compiled) ({ loss, grads } = compiled.lossAndGrads(batch, LABELS));
  else {
    const labels = tf.tensor1d(LABELS, 'int32');
    const r = tf.variableGrads(() =>
      tf.tidy(() => {
        const logits = logitsOf(lm, batch, encoder.forward(true));
        // picked like the answer head's loss: log-softmax, then one gather over the flattened rows
        const v = logits.shape[1]!;
        const flat = tf.add(tf.mul(tf.range(0, BATCH, 1, 'int32'), tf.scalar(v, 'int32')), labels);
        return tf.neg(tf.mean(tf.gather(tf.reshape(tf.logSoftmax(logits), [-1]), flat))) as tf.Scalar;
      }), vars);
    loss = r.value.dataSync()[0]!;
    r.value.dispose();
    labels.dispose();
    grads = new Map(Object.entries(r.grads));
  }
  if (!Number.isFinite(loss)) throw new Error(`loss ${loss}`);
  const byName = new Map([...params].map(([n, v]) => [n, grads.get(v.name)!]));
  adam?.step(byName);
  for (const g of grads.values()) if (!(g instanceof Float32Array)) g.dispose();
}

async function child(key: string, engine: Engine, modes: Mode[], reps: number): Promise<void> {
  await initEngine('wasm');
  const out: Record<string, unknown> = { model: key, engine, reps };
  let t0 = performance.now();
  const lm = await buildModel(key, engine, false);
  out.load_s = round((performance.now() - t0) / 1000);
  out.parameters = lm.info.parameterCount;
  const batch = benchBatch(lm, BATCH, SEQ, PSEUDO);
  const encoder = new PromptEncoder({ type: 'lstm', numVirtualTokens: PSEUDO, tokenDim: lm.info.hiddenSize, seed: 1 });
  const head = makeHead({ kind: 'answer', answerField: 'answer' }, lm.tokenizer);
  const compiled = lm instanceof OrtLM ? new CompiledPTuning(lm, encoder, head) : null;
  if (modes.includes('fwd')) {
    // on ORT through the library's inference program (ids → embeddings → LM → logits in one session run)
    const plain = lm instanceof OrtLM ? new CompiledPTuning(lm, null, head) : null;
    out.fwd = timeSteps(reps, () => tf.tidy(() => void (plain ? plain.scores(batch) : logitsOf(lm, batch, null)).dataSync()));
  }
  if (modes.includes('ptune')) {
    const adam = new Adam([{ params: encoder.variables(), lr: 1e-5 }]);
    out.ptune = timeSteps(reps, () => trainStep(lm, batch, encoder, adam, encoder.variables(), compiled));
    adam.dispose();
  }
  if (modes.includes('lama')) {
    const n = MODELS[key]!.base ? 64 : 256;
    const rel = path.join(shared, 'data/lama/fact-retrieval/original/P1412');
    const dev = readRecords(path.join(rel, 'dev.jsonl')).slice(0, n);
    const config: RunConfig = {
      version: 1, model: lm.info.source, template: '[P*3] {sub_label} [P*3] [MASK]', head: { kind: 'answer', answerField: 'obj_label' },
      encoder: { type: 'lstm', seed: 3 }, maxLength: 32, skipTooLong: false, loop: DEFAULT_LOOP, optim: DEFAULT_OPTIM,
    };
    const s = await PTuningSession.create(config, lm);
    const { items } = s.prepare(dev, 'dev');
    s.evaluateItems(items); // warm-up: compiles a session per (batch, length bucket) met; timed below is steady state
    t0 = performance.now();
    s.evaluateItems(items);
    out.lama = { facts: items.length, facts_per_s: round(items.length / ((performance.now() - t0) / 1000)) };
    s.dispose({ keepLm: true });
  }
  if (modes.includes('full')) {
    if (lm instanceof OrtLM) lm.resetSessions();
    const params = new Map(encoder.variables());
    for (const [name, v] of lm.parameters()) {
      v.trainable = true;
      params.set(`lm.${name}`, v);
    }
    // the gradient alone first: Adam over every weight is the optimizer's cost, not the engine's
    out.full_grad = timeSteps(reps, () => trainStep(lm, batch, encoder, null, params, compiled));
    const adam = new Adam([{ params, lr: 1e-5 }]);
    out.full = timeSteps(reps, () => trainStep(lm, batch, encoder, adam, params, compiled));
    adam.dispose();
  }
  out.peak_rss_mb = Math.round(process.resourceUsage().maxRSS / 1024);
  console.log(JSON.stringify(out));
}

function torchAvailable(): boolean {
  return spawnSync(PYTHON, ['-c', 'import torch'], { stdio: 'ignore' }).status === 0;
}

function runJson(cmd: string, args: string[]): Record<string, unknown> {
  const r = spawnSync(cmd, args, { encoding: 'utf8', maxBuffer: 1 << 24 });
  const line = r.stdout.trim().split('\n').filter((l) => l.startsWith('{')).pop();
  if (r.status !== 0 || !line) return { error: (r.stderr || r.stdout).trim().split('\n').slice(-3).join(' | ') };
  return JSON.parse(line) as Record<string, unknown>;
}

const seconds = (x: unknown): number | undefined => (x && typeof x === 'object' && 'median_s' in x ? (x as { median_s: number }).median_s : typeof x === 'number' ? x : undefined);

async function parent(): Promise<void> {
  const models = list(arg('models'), 'bert-mini,gpt2-mini,bert-base,gpt2-base');
  for (const m of models) if (!MODELS[m]) throw new Error(`--models: unknown model "${m}" (expected ${Object.keys(MODELS).join(', ')})`);
  const engines = list(arg('engines'), 'tfjs,ort') as Engine[];
  const modes = list(arg('modes'), 'fwd,ptune,full,lama') as Mode[];
  const torchThreads = list(arg('torch-threads'), '1,2');
  const useTorch = !process.argv.includes('--no-torch') && torchAvailable();
  const self = fileURLToPath(import.meta.url);
  const report: Record<string, unknown> = {
    batch: BATCH, seq: SEQ, pseudoTokens: PSEUDO, cores: os.availableParallelism(), loadavg_start: os.loadavg().map((x) => round(x)),
    node: process.version, results: {},
  };
  const results = report.results as Record<string, Record<string, unknown>>;
  for (const m of models) {
    const repsDefault = MODELS[m]!.base ? 3 : 5;
    const reps = String(Number(arg('reps') ?? repsDefault));
    const row: Record<string, unknown> = {};
    for (const e of engines) {
      // every mode in a process of its own, so each peak RSS is that mode's alone
      const merged: Record<string, unknown> = {};
      for (const mode of modes) {
        const part = runJson(process.execPath, ['--max-old-space-size=16384', self, '--child', m, '--engine', e, '--modes', mode, '--reps', reps]);
        const { peak_rss_mb: rss, error, ...rest } = part;
        Object.assign(merged, rest, error ? { [`${mode}_error`]: error } : { [`${mode}_peak_rss_mb`]: rss });
      }
      row[e] = merged;
      process.stderr.write(`${m} ${e}: ${JSON.stringify(row[e])}\n`);
    }
    if (useTorch) {
      for (const t of torchThreads) {
        const merged: Record<string, unknown> = {};
        for (const mode of modes.filter((x) => x !== 'lama')) {
          const part = runJson(PYTHON, [TORCH_SCRIPT, ...MODELS[m]!.torchArgs, '--threads', t, '--reps', reps, '--modes', mode]);
          const { peak_rss_mb: rss, error, ...rest } = part;
          Object.assign(merged, rest, error ? { [`${mode}_error`]: error } : { [`${mode}_peak_rss_mb`]: rss });
        }
        row[`pytorch_${t}t`] = merged;
        process.stderr.write(`${m} pytorch ${t} thread(s): ${JSON.stringify(row[`pytorch_${t}t`])}\n`);
      }
      // ratios engine / PyTorch (1 thread): < 1 means faster than PyTorch
      const ref = row.pytorch_1t as Record<string, unknown>;
      const ratios: Record<string, number> = {};
      for (const e of engines) {
        const r = row[e] as Record<string, unknown>;
        for (const mode of ['fwd', 'ptune', 'full']) {
          const a = seconds(r[mode]);
          const b = seconds(ref[`${mode}_s`]);
          if (a !== undefined && b !== undefined) ratios[`${e}_${mode}`] = round(a / b);
        }
        const lama = (r.lama as { facts_per_s?: number } | undefined)?.facts_per_s;
        const fwd = seconds(ref.fwd_s);
        // PyTorch's script has no LAMA mode: 16 facts per full-vocab forward is its upper bound in facts/s
        if (lama && fwd) ratios[`${e}_lama_facts_per_s_vs_torch_fwd_bound`] = round(lama / (BATCH / fwd));
      }
      row.ratio_to_pytorch_1t = ratios;
    }
    results[m] = row;
  }
  report.torch = useTorch ? 'python3-torch (Debian)' : 'not installed: apt-get install -y python3-torch libopenblas0-pthread';
  report.loadavg_end = os.loadavg().map((x) => round(x));
  console.log(JSON.stringify(report, null, 2));
}

async function main(): Promise<void> {
  const i = process.argv.indexOf('--child');
  if (i < 0) return parent();
  const key = process.argv[i + 1]!;
  const engine = arg('engine') as Engine;
  await child(key, engine, list(arg('modes'), 'fwd,ptune,full,lama') as Mode[], Number(arg('reps') ?? 3));
}

main().catch((err: unknown) => {
  process.stderr.write(`bench: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exitCode = 1;
});
