/**
 * ptune vs PyTorch at P-tuning's shapes (batch 16 × seq 32, 9 pseudo tokens, fp32; the 1.1B Llama-shaped model
 * at batch 8 × seq 64).
 *
 *   npm run bench -- [--models bert-mini,gpt2-mini,bert-base,gpt2-base,tinyllama] [--engines ort,ort-int8,ort-int4,ort-web]
 *                    [--modes fwd,ptune,full,lama] [--reps N] [--rounds N] [--torch-threads 1,2] [--python PATH] [--no-torch]
 *
 * PyTorch: the interpreter given by --python, else `$PTUNE_TORCH_PYTHON`, else `.venv-torch/bin/python` (made by
 * `../shared/bench/setup-pytorch.sh .venv-torch`: current PyTorch, CPU), else Debian's /usr/bin/python3.
 * Each (model, engine, mode) runs in its own process, so every peak RSS is one mode's alone (PyTorch's too).
 * Steps (median of --reps after one warm-up, which includes compiling the programs; default 20 for the mini models,
 * 3 for the others; PyTorch gets the same) mirror
 * ../shared/bench/torch_ptuning_step.py:
 *   fwd    ids → LM → logits over the full vocabulary at one answer position per row (the inference program)
 *   ptune  LSTM prompt encoder, its rows spliced into the 9 pseudo positions, LM, full-vocab cross-entropy at the
 *          answer position, gradient to the encoder only (frozen LM), Adam step: one program run + Adam
 *   full   the same with every LM weight trainable (Adam over all parameters); full_grad: the gradient only
 *   lama   PTuningSession.evaluateItems on LAMA P1412 dev facts ([P*3] {sub_label} [P*3] [MASK]), facts/s,
 *          second pass (the first compiles the programs for the shapes met)
 * Engines: `ort` = onnxruntime-node, `ort-web` = onnxruntime-web (WebAssembly) in Node; `-int8` / `-int4` after either:
 * the frozen LM's linear weights quantized (`--quantize`; int8 per channel), optionally with `-b32` / `-b64` / `-b128` (blocks),
 * `-ch` (per channel), `-zp` / `-sym` (zero points or symmetric blocks), `-deq` (the backward through Ŵ dequantized); then `-gc`:
 * gradient checkpointing (each layer's activations recomputed in the backward pass), or `-half` / `-full`: the activations the
 * backward reads kept in float16 / float32 (`--saved-activations`; default float16 over quantized weights); quantized engines run fwd, ptune and
 * lama (their weights
 * cannot train). Each quantized model's store is written by an unmeasured child first (the cache `--cache DIR`,
 * default .tmp/bench-quantized), so every measured process finds it.
 * Prints one JSON object: results[model][engine] with medians and `<mode>_peak_rss_mb`, PyTorch beside them, and
 * ratios to the faster of PyTorch's thread counts (< 1: faster than PyTorch).
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { PTUNE_PROCESS_ENV } from '../src/cli/process-env.js';
import { getRuntime } from '../src/engine/runtime.js';
import { createRandomModel, loadModel } from '../src/models/load.js';
import type { LanguageModel } from '../src/models/model.js';
import { PromptEncoder } from '../src/prompt/encoder.js';
import { makeHead } from '../src/prompt/heads.js';
import { PTuningPrograms } from '../src/prompt/programs.js';
import { Adam } from '../src/train/optim.js';
import { PTuningSession, DEFAULT_LOOP, DEFAULT_OPTIM, type RunConfig } from '../src/train/session.js';
import { readRecords } from '../src/data/read.js';
import { prefixed } from '../src/engine/tensor.js';
import { benchBatch } from './batch.js';
import { HfTokenizer } from '../src/tokenizers/hf.js';
import type { QuantizeOptions } from '../src/models/quantize.js';
import { quantizeFrom, type QuantizeCliOptions } from '../src/cli/options.js';

const PSEUDO = 9;

/** An engine name: the runtime, and the quantization its suffix asks for (ort-int4-b128 → int4, block 128; ort-int8-b32 → int8 in blocks of 32, ort-int8 per channel). */
function parseEngine(e: string): { runtime: 'node' | 'web'; quantize: string[]; checkpointing: boolean; saved: string } {
  const m = /^ort(-web)?(?:-(int8|int4)((?:-b(?:32|64|128)|-ch|-zp|-sym|-deq)*))?(-gc)?(-half|-full)?$/.exec(e);
  if (!m) throw new Error(`--engines: unknown engine "${e}" (ort, ort-web, ort-int8, ort-int8-b32, ort-int4, ort-int4-b128, ort-int4-gc, ort-int8-half, ...)`);
  const quantize: string[] = [];
  if (m[2]) {
    quantize.push('--quantize', m[2]);
    for (const part of (m[3] ?? '').split('-').filter(Boolean)) {
      if (part.startsWith('b')) quantize.push('--quant-block', part.slice(1));
      if (part === 'ch') quantize.push('--quant-block', 'channel');
      if (part === 'zp') quantize.push('--quant-zero-points');
      if (part === 'sym') quantize.push('--quant-symmetric');
      if (part === 'deq') quantize.push('--quant-backward', 'dequantize');
    }
  }
  return { runtime: m[1] ? 'web' : 'node', quantize, checkpointing: !!m[4], saved: m[5] === '-half' ? 'float16' : m[5] === '-full' ? 'float32' : 'auto' };
}
const shared = path.resolve(process.cwd(), '../shared');
const TORCH_SCRIPT = path.join(shared, 'bench/torch_ptuning_step.py');

type Mode = 'fwd' | 'ptune' | 'full' | 'lama';

interface ModelDef {
  modelType: 'bert' | 'gpt2' | 'llama';
  dir?: string;
  overrides?: Record<string, number>;
  batch: number;
  seq: number;
  /** modes that fit this machine */
  modes: Mode[];
  torchArgs: string[];
}

const BASE = { numLayers: 12, hiddenSize: 768, numHeads: 12, intermediateSize: 3072 };
const MODELS: Record<string, ModelDef> = {
  'bert-mini': { modelType: 'bert', dir: 'bert-mini-lama', batch: 16, seq: 32, modes: ['fwd', 'ptune', 'full', 'lama'], torchArgs: ['--model', path.join(shared, 'models/bert-mini-lama')] },
  'gpt2-mini': { modelType: 'gpt2', dir: 'gpt2-mini-lama', batch: 16, seq: 32, modes: ['fwd', 'ptune', 'full', 'lama'], torchArgs: ['--model', path.join(shared, 'models/gpt2-mini-lama')] },
  'bert-base': { modelType: 'bert', overrides: { ...BASE, vocabSize: 30522 }, batch: 16, seq: 32, modes: ['fwd', 'ptune', 'full', 'lama'], torchArgs: ['--arch', 'bert', '--layers', '12', '--hidden', '768', '--heads', '12', '--vocab', '30522'] },
  'gpt2-base': { modelType: 'gpt2', overrides: { ...BASE, vocabSize: 50257 }, batch: 16, seq: 32, modes: ['fwd', 'ptune', 'full', 'lama'], torchArgs: ['--arch', 'gpt2', '--layers', '12', '--hidden', '768', '--heads', '12', '--vocab', '50257'] },
  'tinyllama-1.1b': {
    modelType: 'llama',
    overrides: { numLayers: 22, hiddenSize: 2048, numHeads: 32, numKvHeads: 4, intermediateSize: 5632, vocabSize: 32000 },
    batch: 8,
    seq: 64,
    modes: ['fwd', 'ptune'],
    torchArgs: ['--arch', 'llama', '--layers', '22', '--hidden', '2048', '--heads', '32', '--kv-heads', '4', '--inter', '5632', '--vocab', '32000', '--batch', '8', '--seq', '64'],
  },
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

/** Warm-up (reported separately: it includes compiling the programs) then `reps` timed runs. */
async function timeSteps(reps: number, fn: () => Promise<void>): Promise<{ median_s: number; warmup_s: number } | { error: string }> {
  try {
    let t0 = performance.now();
    await fn();
    const warmup = (performance.now() - t0) / 1000;
    const all: number[] = [];
    for (let i = 0; i < reps; i++) {
      t0 = performance.now();
      await fn();
      all.push((performance.now() - t0) / 1000);
    }
    return { median_s: round(median(all)), warmup_s: round(warmup) };
  } catch (err) {
    return { error: (err instanceof Error ? err.message : String(err)).split('\n')[0]! };
  }
}

async function buildModel(key: string, quantize: QuantizeOptions | null | undefined): Promise<LanguageModel> {
  const def = MODELS[key]!;
  const opts = quantize ? { quantize } : {};
  if (def.dir) return loadModel(path.join(shared, 'models', def.dir), opts);
  // the mini models' tokenizer (bert-base-uncased WordPiece), so LAMA facts tokenize for real
  const tok = HfTokenizer.fromDir(path.join(shared, 'models/bert-mini-lama'));
  return createRandomModel(def.modelType, def.overrides!, 1, tok, opts);
}

async function child(key: string, modes: Mode[], reps: number): Promise<void> {
  const def = MODELS[key]!;
  const rt = await getRuntime();
  const quantize = quantizeFrom({
    quantize: arg('quantize') as QuantizeCliOptions['quantize'],
    quantBlock: arg('quant-block'),
    quantZeroPoints: process.argv.includes('--quant-zero-points'),
    quantSymmetric: process.argv.includes('--quant-symmetric'),
    quantBackward: arg('quant-backward') as QuantizeCliOptions['quantBackward'],
  });
  const out: Record<string, unknown> = { model: key, runtime: rt.name, threads: rt.threads, reps };
  let t0 = performance.now();
  const lm = await buildModel(key, quantize);
  out.load_s = round((performance.now() - t0) / 1000);
  out.parameters = lm.info.parameterCount;
  if (lm.info.quantization) {
    const q = lm.info.quantization;
    out.quantization = { name: q.name, bits: q.bits, block: q.blockSize, symmetric: q.symmetric, backward: q.backward, weights: q.weights, store_mb: Math.round(q.bytes / 1e6), reused: q.reused };
  }
  if (modes.length === 0) {
    console.log(JSON.stringify(out));
    return;
  }
  const batch = benchBatch(lm, def.batch, def.seq, PSEUDO);
  const targets = Array.from({ length: def.batch }, (_, i) => 1000 + i * 7);
  const encoder = new PromptEncoder({ type: 'lstm', numVirtualTokens: PSEUDO, tokenDim: lm.info.hiddenSize, seed: 1 });
  const head = makeHead({ kind: 'answer', answerField: 'answer' }, lm.tokenizer, lm.info.vocabSize);
  const step = new PTuningPrograms(lm, encoder, head);
  if (modes.includes('fwd')) {
    const plain = new PTuningPrograms(lm, null, head);
    out.fwd = await timeSteps(reps, async () => void (await plain.scores(batch)));
  }
  if (modes.includes('ptune')) {
    const adam = new Adam([{ params: encoder.params, lr: 1e-5 }]);
    out.ptune = await timeSteps(reps, async () => {
      const { loss, graded } = await step.lossAndGrads(batch, targets);
      if (!Number.isFinite(loss)) throw new Error(`loss ${loss}`);
      adam.step(new Map(graded.map((p) => [p.name, p.grad])));
    });
  }
  if (modes.includes('lama')) {
    const n = def.dir ? 256 : 64;
    const rel = path.join(shared, 'data/lama/fact-retrieval/original/P1412');
    const dev = readRecords(path.join(rel, 'dev.jsonl')).slice(0, n);
    const config: RunConfig = {
      version: 1, model: lm.info.source, template: '[P*3] {sub_label} [P*3] [MASK]', head: { kind: 'answer', answerField: 'obj_label' },
      encoder: { type: 'lstm', seed: 3 }, maxLength: 32, skipTooLong: false, loop: DEFAULT_LOOP, optim: DEFAULT_OPTIM,
    };
    const s = await PTuningSession.create(config, lm);
    const { items } = s.prepare(dev, 'dev');
    await s.evaluateItems(items); // warm-up: compiles a program per (batch, length bucket) met; timed below is steady state
    t0 = performance.now();
    await s.evaluateItems(items);
    out.lama = { facts: items.length, facts_per_s: round(items.length / ((performance.now() - t0) / 1000)) };
  }
  if (modes.includes('full') && !lm.quantized) {
    lm.setTrainable(true);
    const params = new Map([...prefixed(encoder.params, 'enc.'), ...prefixed(lm.params, 'lm.')]);
    const byParam = new Map([...params].map(([name, p]) => [p, name]));
    const run = async (adam: Adam | null) => {
      const { loss, graded } = await step.lossAndGrads(batch, targets);
      if (!Number.isFinite(loss)) throw new Error(`loss ${loss}`);
      adam?.step(new Map(graded.map((p) => [byParam.get(p)!, p.grad])));
    };
    // the optimizer first, as a training run makes it (its arena then holds the weights, gradients and moments);
    // the gradient alone is timed too: Adam over every weight is the optimizer's cost, not the engine's
    const adam = new Adam([{ params, lr: 1e-5 }]);
    out.full_grad = await timeSteps(reps, () => run(null));
    out.full = await timeSteps(reps, () => run(adam));
  }
  out.peak_rss_mb = Math.round(process.resourceUsage().maxRSS / 1024);
  console.log(JSON.stringify(out));
}

function torchPython(): string | null {
  const candidates = [arg('python'), process.env.PTUNE_TORCH_PYTHON, '.venv-torch/bin/python', '/usr/bin/python3'].filter((x): x is string => !!x);
  for (const py of candidates) {
    if (!py.includes('/') || fs.existsSync(py)) {
      if (spawnSync(py, ['-c', 'import torch'], { stdio: 'ignore' }).status === 0) return py;
    }
  }
  return null;
}

function runJson(cmd: string, args: string[], env?: NodeJS.ProcessEnv): Record<string, unknown> {
  const r = spawnSync(cmd, args, { encoding: 'utf8', maxBuffer: 1 << 24, env: env ?? process.env });
  const line = r.stdout.trim().split('\n').filter((l) => l.startsWith('{')).pop();
  if (r.status !== 0 || !line) return { error: (r.stderr || r.stdout).trim().split('\n').slice(-3).join(' | ') };
  return JSON.parse(line) as Record<string, unknown>;
}

const seconds = (x: unknown): number | undefined => (x && typeof x === 'object' && 'median_s' in x ? (x as { median_s: number }).median_s : typeof x === 'number' ? x : undefined);

async function parent(): Promise<void> {
  const models = list(arg('models'), 'bert-mini,gpt2-mini,bert-base,gpt2-base,tinyllama-1.1b');
  for (const m of models) if (!MODELS[m]) throw new Error(`--models: unknown model "${m}" (expected ${Object.keys(MODELS).join(', ')})`);
  const engines = list(arg('engines'), 'ort,ort-int8,ort-int4');
  const parsed = new Map(engines.map((e) => [e, parseEngine(e)]));
  const cache = path.resolve(arg('cache') ?? '.tmp/bench-quantized');
  const modes = list(arg('modes'), 'fwd,ptune,full,lama') as Mode[];
  const torchThreads = list(arg('torch-threads'), '1,2');
  const python = process.argv.includes('--no-torch') ? null : torchPython();
  const self = fileURLToPath(import.meta.url);
  const torchVersion = python ? spawnSync(python, ['-c', 'import torch; print(torch.__version__)'], { encoding: 'utf8' }).stdout.trim() : null;
  const report: Record<string, unknown> = {
    cores: os.availableParallelism(), loadavg_start: os.loadavg().map((x) => round(x)), node: process.version,
    torch: torchVersion ?? 'not found (../shared/bench/setup-pytorch.sh .venv-torch)', results: {},
  };
  const results = report.results as Record<string, Record<string, unknown>>;
  for (const m of models) {
    const def = MODELS[m]!;
    // the minis' steps take tens of milliseconds and their first runs after the warm-up are slower than the rest
    const reps = String(Number(arg('reps') ?? (def.dir ? 20 : 3)));
    const rounds = Number(arg('rounds') ?? (def.dir ? 3 : 1));
    const mine = modes.filter((x) => def.modes.includes(x));
    const byEngine: Record<string, Record<string, unknown>[]> = {};
    const envOf = (e: string) => ({
      ...process.env,
      PTUNE_RUNTIME: parsed.get(e)!.runtime,
      PTUNE_CACHE_DIR: cache,
      PTUNE_GRADIENT_CHECKPOINTING: parsed.get(e)!.checkpointing ? '1' : '0',
      PTUNE_SAVED_ACTIVATIONS: parsed.get(e)!.saved,
      // the environment the `ptune` command gives itself (bin/ptune.js)
      ...PTUNE_PROCESS_ENV,
    });
    // the Node flags of the `ptune` command (bin/ptune.js); no raised heap limit, which the weights (host arrays
    // outside V8's heap) do not need and which slowed the minis' forward (gpt2-mini: 9.7–12.6 against 9.3–10.6 ms
    // over six processes, 2026-12-02)
    const childArgs = (e: string, modeList: string) => ['--max-semi-space-size=2', self, '--child', m, '--modes', modeList, '--reps', reps, ...parsed.get(e)!.quantize];
    // quantized weights: the store written once, outside every measured process
    for (const e of engines) {
      if (parsed.get(e)!.quantize.length === 0) continue;
      const prep = runJson(process.execPath, childArgs(e, 'none'), envOf(e));
      process.stderr.write(`${m} ${e} store: ${JSON.stringify(prep)}\n`);
    }
    // rounds interleave ptune and PyTorch, so a slow phase of a shared machine hits both; each number below is
    // the median over the rounds of each round's median
    for (let round = 0; round < rounds; round++) {
      for (const e of engines) {
        const env = envOf(e);
        // every mode in a process of its own, so each peak RSS is that mode's alone; quantized weights cannot train
        const merged: Record<string, unknown> = {};
        for (const mode of mine.filter((x) => x !== 'full' || parsed.get(e)!.quantize.length === 0)) {
          const part = runJson(process.execPath, childArgs(e, mode), env);
          const { peak_rss_mb: rss, error, ...rest } = part;
          Object.assign(merged, rest, error ? { [`${mode}_error`]: error } : { [`${mode}_peak_rss_mb`]: rss });
        }
        (byEngine[e] ??= []).push(merged);
        process.stderr.write(`${m} ${e} round ${round + 1}: ${JSON.stringify(merged)}\n`);
      }
      if (python) {
        for (const t of torchThreads) {
          const merged: Record<string, unknown> = {};
          for (const mode of mine.filter((x) => x !== 'lama')) {
            const part = runJson(python, [TORCH_SCRIPT, ...def.torchArgs, '--threads', t, '--reps', reps, '--modes', mode]);
            const { peak_rss_mb: rss, error, ...rest } = part;
            Object.assign(merged, rest, error ? { [`${mode}_error`]: error } : { [`${mode}_peak_rss_mb`]: rss });
          }
          (byEngine[`pytorch_${t}t`] ??= []).push(merged);
          process.stderr.write(`${m} pytorch ${t} thread(s) round ${round + 1}: ${JSON.stringify(merged)}\n`);
        }
      }
    }
    const row: Record<string, unknown> = { batch: def.batch, seq: def.seq, rounds };
    for (const [name, list] of Object.entries(byEngine)) row[name] = combineRounds(list);
    if (python) {
      // ratios ptune / the faster PyTorch (per mode and round, then the median over rounds): < 1 is faster
      const ratios: Record<string, number> = {};
      const torchRounds = (round: number) => torchThreads.map((t) => byEngine[`pytorch_${t}t`]![round]!);
      const best = (rows: Record<string, unknown>[], key: string) => Math.min(...rows.map((r) => (typeof r[key] === 'number' ? (r[key] as number) : seconds(r[key]) ?? Infinity)));
      for (const e of engines) {
        const perRound = (f: (ours: Record<string, unknown>, torch: Record<string, unknown>[]) => number | undefined) =>
          medianOf(byEngine[e]!.map((ours, r) => f(ours, torchRounds(r))).filter((x): x is number => x !== undefined && Number.isFinite(x)));
        for (const mode of ['fwd', 'ptune', 'full']) {
          const t = perRound((ours, torch) => (seconds(ours[mode]) ?? NaN) / best(torch, `${mode}_s`));
          if (t !== undefined) ratios[`${e}_${mode}`] = round4(t);
          const mem = perRound((ours, torch) => (ours[`${mode}_peak_rss_mb`] as number) / best(torch, `${mode}_peak_rss_mb`));
          if (mem !== undefined) ratios[`${e}_${mode}_rss`] = round4(mem);
        }
        // PyTorch's script has no LAMA mode: `batch` facts per full-vocab forward is its upper bound in facts/s
        const lama = perRound((ours, torch) => ((ours.lama as { facts_per_s?: number } | undefined)?.facts_per_s ?? NaN) / (def.batch / best(torch, 'fwd_s')));
        if (lama !== undefined) ratios[`${e}_lama_facts_per_s_vs_torch_fwd_bound`] = round4(lama);
      }
      row.ratio_to_pytorch = ratios;
    }
    results[m] = row;
  }
  report.loadavg_end = os.loadavg().map((x) => round(x));
  console.log(JSON.stringify(report, null, 2));
}

function medianOf(xs: number[]): number | undefined {
  return xs.length ? median(xs) : undefined;
}

const round4 = round;

/** One engine's rounds as one record: medians of the timed medians and of the peak RSS per mode. */
function combineRounds(rounds: Record<string, unknown>[]): Record<string, unknown> {
  if (rounds.length === 1) return rounds[0]!;
  const out: Record<string, unknown> = { ...rounds[0]!, per_round: rounds };
  for (const key of Object.keys(rounds[0]!)) {
    const values = rounds.map((r) => r[key]);
    if (values.every((v) => typeof v === 'number')) out[key] = round(median(values as number[]));
    else if (values.every((v) => seconds(v) !== undefined && typeof v === 'object')) out[key] = { ...(values[0] as object), median_s: round(median(values.map((v) => seconds(v)!))) };
    else if (key === 'lama' && values.every((v) => typeof (v as { facts_per_s?: number })?.facts_per_s === 'number')) {
      out[key] = { ...(values[0] as object), facts_per_s: round(median(values.map((v) => (v as { facts_per_s: number }).facts_per_s))) };
    }
  }
  return out;
}

async function main(): Promise<void> {
  const i = process.argv.indexOf('--child');
  if (i < 0) return parent();
  const modes = arg('modes') === 'none' ? [] : (list(arg('modes'), 'fwd,ptune,full,lama') as Mode[]);
  await child(process.argv[i + 1]!, modes, Number(arg('reps') ?? 3));
}

main().catch((err: unknown) => {
  process.stderr.write(`bench: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exitCode = 1;
});
