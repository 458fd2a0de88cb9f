/**
 * Fidelity of quantized P-tuning (docs/quantization.md): on the mini models, P-tuning scores at fp32, int8 and
 * int4 (LAMA's six demo relations; SST-2 with 2,000 sampled training sentences), the encoder's gradients under
 * int8 / int4 against fp32 on 20 batches, and logit errors against fp32.
 *
 *   node dist/scripts/quant-fidelity.js --model bert-mini-lama --part lama|sst2|grads --quant fp32|int8|int8-b32|int4|int4-b128 \
 *       [--seeds 1,2,3] [--out docs/quantization/fidelity.json]
 *
 * Each call computes one cell (a model, a part, a setting, its seeds) and merges it into the JSON file, so the
 * grid runs as a sequence of short calls; `--part table` prints the markdown tables from the file.
 * `npm run fidelity:quant -- ARGS` runs one call; `npm run fidelity:quant:grid` (scripts/quant-fidelity-grid.sh)
 * the whole grid, one cell per process, with PTUNE_THREADS=1. Paths are relative to the repository root
 * (../shared holds the models and data).
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { readRecords } from '../src/data/read.js';
import { loadModel } from '../src/models/load.js';
import type { LanguageModel } from '../src/models/model.js';
import type { QuantizeOptions } from '../src/models/quantize.js';
import { runLama } from '../src/tasks/lama/run.js';
import { DEFAULT_LOOP, DEFAULT_OPTIM, PTuningSession, type RunConfig } from '../src/train/session.js';
import { makeRng } from '../src/util/rng.js';

const shared = path.resolve('../shared');
const RELATIONS = ['P1412', 'P103', 'P176', 'P449', 'P178', 'P20'];
const LAMA = { epochs: 4, patience: 2 };
const SST2 = { train: 2000, dev: 500, epochs: 4, patience: 2, batchSize: 16, lr: 3e-3 };

function arg(name: string, fallback?: string): string {
  const i = process.argv.indexOf(`--${name}`);
  const v = i >= 0 ? process.argv[i + 1] : fallback;
  if (v === undefined) throw new Error(`--${name} is required`);
  return v;
}

// int8: per channel (the default); int8-b32: int8 in blocks of 32; int4-b128: int4 in blocks of 128
const QUANT: Record<string, QuantizeOptions | undefined> = {
  fp32: undefined, int8: { bits: 8 }, 'int8-b32': { bits: 8, blockSize: 32 }, int4: { bits: 4 }, 'int4-b128': { bits: 4, blockSize: 128 },
};
/** the quantized settings compared with fp32 */
const QUANTIZED = ['int8', 'int8-b32', 'int4', 'int4-b128'] as const;

type Json = Record<string, unknown>;

function readJson(file: string): Json {
  return fs.existsSync(file) ? (JSON.parse(fs.readFileSync(file, 'utf8')) as Json) : {};
}

function merge(file: string, keys: string[], value: unknown): void {
  const all = readJson(file);
  let at = all;
  for (const k of keys.slice(0, -1)) at = (at[k] ??= {}) as Json;
  at[keys[keys.length - 1]!] = value;
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, JSON.stringify(all, null, 1) + '\n');
}

const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
const std = (xs: number[]) => (xs.length > 1 ? Math.sqrt(xs.reduce((a, b) => a + (b - mean(xs)) ** 2, 0) / (xs.length - 1)) : 0);
const machine = () => ({ cores: os.availableParallelism(), loadavg: os.loadavg().map((x) => Math.round(x * 100) / 100), at: new Date().toISOString() });

/** SST-2 as the experiment uses it: a seeded sample of train.tsv, the first dev.tsv sentences, test.tsv. */
function sst2(): { train: Record<string, unknown>[]; dev: Record<string, unknown>[]; test: Record<string, unknown>[] } {
  const dir = path.join(shared, 'data/sst2');
  const pool = readRecords(path.join(dir, 'train.tsv'));
  const rng = makeRng(2024);
  const order = [...pool.keys()];
  for (let i = order.length - 1; i > 0; i--) {
    const j = Math.floor(rng() * (i + 1));
    [order[i], order[j]] = [order[j]!, order[i]!];
  }
  return {
    train: order.slice(0, SST2.train).map((i) => pool[i]!),
    dev: readRecords(path.join(dir, 'dev.tsv')).slice(0, SST2.dev),
    test: readRecords(path.join(dir, 'test.tsv')),
  };
}

function sst2Config(model: string, lm: LanguageModel, seed: number, quantize: QuantizeOptions | undefined): RunConfig {
  return {
    version: 1,
    model,
    template: lm.info.kind === 'masked' ? '{sentence} [P*3] it was [MASK] .' : '{sentence} [P*3] it was [MASK]',
    head: { kind: 'label', labelField: 'label', labelWords: { '0': ['terrible'], '1': ['great'] } },
    encoder: { type: 'lstm', seed },
    maxLength: 64,
    skipTooLong: true,
    loop: { ...DEFAULT_LOOP, epochs: SST2.epochs, patience: SST2.patience, batchSize: SST2.batchSize, saveEvery: 0, seed },
    optim: { ...DEFAULT_OPTIM, lr: SST2.lr },
    ...(quantize && { quantize }),
  };
}

async function partLama(model: string, quant: string, seeds: number[], work: string): Promise<Json> {
  const runs: Json[] = [];
  for (const seed of seeds) {
    const t0 = Date.now();
    const r = await runLama({
      model: path.join(shared, 'models', model),
      data: path.join(shared, 'data/lama'),
      out: path.join(work, `lama-${model}-${quant}-seed${seed}`),
      relations: RELATIONS,
      modes: ['ptune'],
      jobs: 1,
      seed,
      ptune: LAMA,
      quiet: true,
      ...(QUANT[quant] && { quantize: QUANT[quant] }),
    });
    const s = r.report.summary.ptune!;
    runs.push({ seed, macro_p1: s.macro_p1, micro_p1: s.micro_p1, dev_macro_p1: s.dev_macro_p1, seconds: (Date.now() - t0) / 1000 });
    process.stderr.write(`lama ${model} ${quant} seed ${seed}: macro P@1 ${((s.macro_p1 ?? 0) * 100).toFixed(2)} (${((Date.now() - t0) / 1000).toFixed(0)} s)\n`);
  }
  const macro = runs.map((r) => (r.macro_p1 as number) * 100);
  return { runs, macro_p1_mean: mean(macro), macro_p1_std: std(macro), settings: { relations: RELATIONS, template: 'default (3,3,3 masked / 3,3,0 causal)', ...LAMA }, machine: machine() };
}

async function partSst2(model: string, quant: string, seeds: number[], work: string): Promise<Json> {
  const data = sst2();
  const dir = path.join(shared, 'models', model);
  const lm = await loadModel(dir, { quantize: QUANT[quant] });
  const runs: Json[] = [];
  for (const seed of seeds) {
    const t0 = Date.now();
    const session = await PTuningSession.create(sst2Config(dir, lm, seed, QUANT[quant]), lm);
    const runDir = path.join(work, `sst2-${model}-${quant}-seed${seed}`);
    fs.rmSync(runDir, { recursive: true, force: true });
    const res = await session.train({ runDir, train: data.train, dev: data.dev, restoreBest: true });
    const { items } = session.prepare(data.test, 'sst2 test');
    const ev = await session.evaluateItems(items);
    runs.push({ seed, test_acc: ev.metrics.accuracy, dev_acc: res.bestScore, best_epoch: res.bestEpoch + 1, steps: res.step, seconds: (Date.now() - t0) / 1000, test_n: items.length });
    process.stderr.write(`sst2 ${model} ${quant} seed ${seed}: test acc ${((ev.metrics.accuracy ?? 0) * 100).toFixed(2)} (${((Date.now() - t0) / 1000).toFixed(0)} s)\n`);
    session.dispose({ keepLm: true });
  }
  const acc = runs.map((r) => (r.test_acc as number) * 100);
  return { runs, test_acc_mean: mean(acc), test_acc_std: std(acc), settings: { ...SST2, template: sst2Config(dir, lm, 1, undefined).template, verbalizer: '0: terrible, 1: great' }, machine: machine() };
}

/** Gradient cosines (20 batches each of SST-2 and LAMA P1412) and logit errors, int8 and int4 against fp32. */
async function partGrads(model: string, work: string): Promise<Json> {
  const dir = path.join(shared, 'models', model);
  const data = sst2();
  const lama = readRecords(path.join(shared, 'data/lama/fact-retrieval/original/P1412/train.jsonl'));
  const lms: Record<string, LanguageModel> = { fp32: await loadModel(dir) };
  for (const q of QUANTIZED) lms[q] = await loadModel(dir, { quantize: QUANT[q] });
  const out: Json = {};
  for (const task of ['sst2', 'lama'] as const) {
    const make = (lm: LanguageModel) =>
      PTuningSession.create(
        task === 'sst2'
          ? sst2Config(dir, lm, 1, undefined)
          : {
              version: 1, model: dir, template: lm.info.kind === 'masked' ? '3,3,3' : '3,3,0', head: { kind: 'answer', answerField: 'obj_label' },
              encoder: { type: 'lstm', seed: 1 }, maxLength: 64, skipTooLong: true, loop: DEFAULT_LOOP, optim: DEFAULT_OPTIM,
            },
        lm,
      );
    const sessions: Record<string, PTuningSession> = {};
    for (const q of ['fp32', ...QUANTIZED]) sessions[q] = await make(lms[q]!);
    const records = task === 'sst2' ? data.train : lama;
    const items = sessions.fp32!.prepare(records.slice(0, 160), task).items;
    const batches = Array.from({ length: 20 }, (_, b) => items.slice(b * 8, b * 8 + 8));
    const cos: Record<string, number[]> = Object.fromEntries(QUANTIZED.map((q) => [q, []]));
    const logits: Record<string, { maxAbs: number; maxRel: number; kl: number[]; top1: number; n: number }> = {};
    for (const batch of batches) {
      const grads: Record<string, Float32Array> = {};
      for (const q of ['fp32', ...QUANTIZED]) {
        const r = await sessions[q]!.lossAndGrads(batch);
        grads[q] = Float32Array.from(r.graded.flatMap((p) => Array.from(p.grad)));
      }
      for (const q of QUANTIZED) {
        let dot = 0, na = 0, nb = 0;
        for (let i = 0; i < grads.fp32!.length; i++) {
          dot += grads.fp32![i]! * grads[q]![i]!;
          na += grads.fp32![i]! ** 2;
          nb += grads[q]![i]! ** 2;
        }
        cos[q]!.push(dot / Math.sqrt(na * nb));
      }
    }
    // logits over the whole vocabulary at the answer position (no prompt: the LM alone), 160 examples
    const plain = async (lm: LanguageModel) =>
      PTuningSession.create({ ...(await make(lm)).config, template: task === 'sst2' ? (lm.info.kind === 'masked' ? '{sentence} it was [MASK] .' : '{sentence} it was [MASK]') : (lm.info.kind === 'masked' ? '{sub_label} [MASK] .' : '{sub_label} [MASK]'), head: { kind: 'answer', answerField: task === 'sst2' ? 'label' : 'obj_label' } }, lm);
    const ref = await plain(lms.fp32!);
    const refItems = ref.prepare(records.slice(0, 160).map((r) => ({ ...r, label: 'great' })), task).items;
    const refScores = await ref.scores(refItems);
    for (const q of QUANTIZED) {
      const s = await (await plain(lms[q]!)).scores(refItems);
      const v = refScores.shape[1]!;
      let maxAbs = 0, maxLogit = 0, top1 = 0;
      const kl: number[] = [];
      for (let r = 0; r < refItems.length; r++) {
        const a = refScores.data.subarray(r * v, (r + 1) * v);
        const b = s.data.subarray(r * v, (r + 1) * v);
        let am = 0, bm = 0;
        for (let j = 0; j < v; j++) {
          maxAbs = Math.max(maxAbs, Math.abs(a[j]! - b[j]!));
          maxLogit = Math.max(maxLogit, Math.abs(a[j]!));
          if (a[j]! > a[am]!) am = j;
          if (b[j]! > b[bm]!) bm = j;
        }
        if (am === bm) top1++;
        const lse = (x: Float32Array) => {
          let m = -Infinity;
          for (const t of x) m = Math.max(m, t);
          let z = 0;
          for (const t of x) z += Math.exp(t - m);
          return m + Math.log(z);
        };
        const la = lse(a), lb = lse(b);
        let k = 0;
        for (let j = 0; j < v; j++) k += Math.exp(a[j]! - la) * (a[j]! - la - (b[j]! - lb));
        kl.push(k);
      }
      logits[q] = { maxAbs, maxRel: maxAbs / maxLogit, kl, top1, n: refItems.length };
    }
    out[task] = Object.fromEntries(
      QUANTIZED.map((q) => [
        q,
        {
          grad_cosine_mean: mean(cos[q]!), grad_cosine_min: Math.min(...cos[q]!), grad_cosine: cos[q],
          logits_max_abs_error: logits[q]!.maxAbs, logits_max_error_over_max_logit: logits[q]!.maxRel,
          logits_mean_kl: mean(logits[q]!.kl), top1_agreement: logits[q]!.top1 / logits[q]!.n, logit_examples: logits[q]!.n,
        },
      ]),
    );
  }
  void work;
  return { ...out, machine: machine() };
}

function table(file: string): void {
  const all = readJson(file) as Record<string, Record<string, Record<string, Json>>>;
  const f = (x: unknown, d = 2) => (typeof x === 'number' ? x.toFixed(d) : '—');
  const lines = [`| model | task | fp32 | ${QUANTIZED.join(' | ')} | ${QUANTIZED.map((q) => `${q} − fp32`).join(' | ')} |`, `|---|---|---|${QUANTIZED.map(() => '---|---|').join('')}`];
  for (const [model, parts] of Object.entries(all)) {
    for (const [task, key, label] of [['lama', 'macro_p1', 'LAMA 6 relations, test macro P@1'], ['sst2', 'test_acc', 'SST-2 test accuracy']] as const) {
      const cell = (q: string) => parts[task]?.[q] as Json | undefined;
      const m = (q: string) => cell(q)?.[`${key}_mean`] as number | undefined;
      const s = (q: string) => cell(q)?.[`${key}_std`] as number | undefined;
      const show = (q: string) => (m(q) === undefined ? '—' : `${f(m(q))} ± ${f(s(q))}`);
      const d = (q: string) => (m(q) === undefined || m('fp32') === undefined ? '—' : (m(q)! - m('fp32')! >= 0 ? '+' : '') + f(m(q)! - m('fp32')!));
      lines.push(`| ${model} | ${label} | ${show('fp32')} | ${QUANTIZED.map(show).join(' | ')} | ${QUANTIZED.map(d).join(' | ')} |`);
    }
  }
  lines.push('', '| model | batches | setting | gradient cosine to fp32: mean (min) | logits max abs error (÷ max logit) | mean KL | top-1 agreement |', '|---|---|---|---|---|---|---|');
  for (const [model, parts] of Object.entries(all)) {
    const g = parts.grads as Record<string, Record<string, Json>> | undefined;
    if (!g) continue;
    for (const task of ['sst2', 'lama']) {
      for (const q of QUANTIZED) {
        const c = g[task]?.[q];
        if (!c) continue;
        lines.push(
          `| ${model} | ${task === 'sst2' ? 'SST-2 train' : 'LAMA P1412 train'} | ${q} | ${f(c.grad_cosine_mean, 4)} (${f(c.grad_cosine_min, 4)}) | ${f(c.logits_max_abs_error, 3)} (${f(c.logits_max_error_over_max_logit, 3)}) | ${f(c.logits_mean_kl, 4)} | ${f((c.top1_agreement as number) * 100, 1)}% |`,
        );
      }
    }
  }
  console.log(lines.join('\n'));
}

async function main(): Promise<void> {
  const out = path.resolve(arg('out', 'docs/quantization/fidelity.json'));
  const part = arg('part');
  if (part === 'table') return table(out);
  const model = arg('model');
  const work = path.resolve(arg('work', '.tmp/fidelity'));
  const seeds = arg('seeds', '1,2,3').split(',').map(Number);
  if (part === 'grads') return merge(out, [model, 'grads'], await partGrads(model, work));
  const quant = arg('quant');
  if (!(quant in QUANT)) throw new Error(`--quant: one of ${Object.keys(QUANT).join(', ')}, got ${quant}`);
  const cell = part === 'lama' ? await partLama(model, quant, seeds, work) : part === 'sst2' ? await partSst2(model, quant, seeds, work) : null;
  if (!cell) throw new Error(`--part: lama, sst2, grads or table, got ${part}`);
  merge(out, [model, part, quant], cell);
}

main().catch((err: unknown) => {
  process.stderr.write(`quant-fidelity: ${err instanceof Error ? err.stack ?? err.message : String(err)}\n`);
  process.exitCode = 1;
});
