/**
 * The ptune half of scripts/peft-check.py: for every exportable case (model × method × head) it trains a short
 * run, exports it as a PEFT adapter, and writes what ptune computes for a few inputs — the input ids PEFT is
 * given (without virtual tokens), the position PEFT's output is read at, the token ids scored and ptune's
 * log-probabilities and top-1 — to <out>/cases.json. The Python half loads each adapter with
 * PeftModel.from_pretrained and compares.
 *
 *   node dist/scripts/peft-check.js --out /tmp/peft-check [--steps 12] [--only gpt2]
 */
import fs from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { initEngine } from '../src/engine/index.js';
import { loadModel } from '../src/models/load.js';
import type { LanguageModel } from '../src/models/model.js';
import { Verbalizer } from '../src/prompt/verbalizer.js';
import { DEFAULT_LOOP, DEFAULT_OPTIM, PTuningSession, type RunConfig } from '../src/train/session.js';
import { exportPeft } from '../src/train/export.js';

const SHARED = path.resolve(process.cwd(), '../shared');
const { values: args } = parseArgs({
  options: { out: { type: 'string', default: '/tmp/peft-check' }, steps: { type: 'string', default: '12' }, only: { type: 'string' } },
});
const out = path.resolve(args.out!);
const steps = Number(args.steps);

const SST = [
  ['a gorgeous , witty , seductive movie', '1'], ['the acting is terrible and flat', '0'], ['a wonderful and moving film', '1'],
  ['dull , boring and far too long', '0'], ['one of the best films of the year', '1'], ['a mess of a movie', '0'],
  ['charming and funny', '1'], ['painfully bad', '0'], ['an engrossing portrait', '1'], ['it never finds its footing', '0'],
].map(([sentence, label]) => ({ sentence, label }));

const FACTS = [
  ['john coltrane', 'saxophone'], ['jimi hendrix', 'guitar'], ['glenn gould', 'piano'], ['yo-yo ma', 'cello'],
  ['miles davis', 'trumpet'], ['ringo starr', 'drums'], ['itzhak perlman', 'violin'], ['eric clapton', 'guitar'],
].map(([sub_label, obj_label]) => ({ sub_label, obj_label }));

interface Case {
  name: string;
  model: string;
  method: 'ptuning' | 'prefix' | 'prompt-tuning';
  template: string;
  head: 'label' | 'answer';
  projection?: boolean;
  tokens?: number;
}

function cases(): Case[] {
  const minis = ['bert-mini-lama', 'gpt2-mini-lama'].map((m) => path.join(SHARED, 'models', m));
  const tiny = fs.readdirSync(path.join(SHARED, 'models/tiny')).filter((f) => fs.existsSync(path.join(SHARED, 'models/tiny', f, 'config.json'))).sort();
  const list: Case[] = [];
  for (const model of [...minis, ...tiny.map((f) => path.join(SHARED, 'models/tiny', f))]) {
    const base = path.basename(model);
    list.push({ name: `${base} p-tuning (lstm) answer`, model, method: 'ptuning', template: '[P*6] {sub_label} plays [MASK]', head: 'answer' });
    list.push({ name: `${base} p-tuning (lstm) label`, model, method: 'ptuning', template: '[P*4] {sentence} It was [MASK]', head: 'label' });
    list.push({ name: `${base} prompt tuning label`, model, method: 'prompt-tuning', template: '{sentence} It was [MASK]', head: 'label' });
    list.push({ name: `${base} prefix label`, model, method: 'prefix', template: '{sentence} It was [MASK]', head: 'label' });
    list.push({ name: `${base} prefix (projection) answer`, model, method: 'prefix', template: '{sub_label} plays [MASK]', head: 'answer', projection: true });
    list.push({ name: `${base} prefix, 3 tokens, label`, model, method: 'prefix', template: '{sentence} It was [MASK]', head: 'label', tokens: 3 });
  }
  return args.only ? list.filter((c) => c.name.includes(args.only!)) : list;
}

/** Facts whose answer is one token of this vocabulary (the tiny models' vocabularies hold few of the real ones). */
function answerRecords(lm: LanguageModel) {
  const single = (w: string) => lm.tokenizer.encodeWord(w).length === 1;
  const real = FACTS.filter((f) => single(f.obj_label));
  if (real.length >= 4) return real;
  const words = ['guitar', 'piano', 'drums', 'violin', 'the', 'a', 'and', 'of', 'to', 'in', 'is', 'it', 'was', 'on'].filter(single);
  if (words.length < 2) throw new Error('no one-token answers in this vocabulary');
  return FACTS.map((f, i) => ({ ...f, obj_label: words[i % words.length]! }));
}

/** Label words that are one token of this tokenizer (the tiny models' vocabularies differ). */
function labelWords(lm: LanguageModel): Record<string, string[]> {
  for (const [neg, pos] of [['bad', 'good'], ['terrible', 'great'], ['no', 'yes'], ['a', 'the']]) {
    const ok = [neg, pos].every((w) => lm.tokenizer.encode(lm.info.kind === 'causal' ? ` ${w}` : w).length === 1);
    if (ok) return { '0': [neg!], '1': [pos!] };
  }
  return { '0': ['a'], '1': ['b'] };
}

async function runCase(c: Case, index: number) {
  const lm = await loadModel(c.model);
  const label = c.head === 'label';
  const records = label ? SST : answerRecords(lm);
  const config: RunConfig = {
    version: 1, model: c.model, template: c.template,
    head: label ? { kind: 'label', labelField: 'label', labelWords: labelWords(lm) } : { kind: 'answer', answerField: 'obj_label' },
    encoder: { type: 'lstm', seed: 7 + index }, maxLength: 48, skipTooLong: false,
    method: c.method,
    ...(c.method === 'prefix' && { prefix: { numVirtualTokens: c.tokens ?? 5, projection: c.projection ?? false, hiddenSize: 24 } }),
    ...(c.method === 'prompt-tuning' && { promptTuning: { numVirtualTokens: 5 } }),
    ...(c.method === 'ptuning' && { peftLayout: true }),
    loop: { ...DEFAULT_LOOP, epochs: 100, maxSteps: steps, batchSize: 4, saveEvery: 0, logEvery: 1, seed: index },
    optim: { ...DEFAULT_OPTIM, lr: 1e-2 },
  };
  const session = await PTuningSession.create(config, lm);
  const runDir = path.join(out, 'runs', String(index));
  const trainRecords: Record<string, string>[] = records;
  await session.train({ runDir, train: trainRecords, dev: trainRecords.slice(0, 4), baselines: false });
  const adapter = path.join(out, 'adapters', String(index));
  const compat = await exportPeft(session, adapter);
  const { items } = session.prepare(trainRecords, 'check');
  const first = c.method === 'prefix' ? 0 : session.placedFirst;
  const examples = [];
  if (label) {
    const v = new Verbalizer(config.head.kind === 'label' ? config.head.labelWords : {}, lm.tokenizer);
    // the label head normalises over the label words' tokens (Verbalizer.candidateIds), then reads each label's first
    const candidates = v.candidateIds();
    const ids = v.columns.map((words) => candidates[words[0]![0]!]!);
    const scores = await session.scores(items);
    const k = scores.shape[1]!;
    for (let i = 0; i < items.length; i++) {
      const row = Array.from(scores.data.subarray(i * k, (i + 1) * k));
      examples.push({ ...inputOf(items[i]!.ex, first), ids, normalise_over: candidates, logprobs: row, top1: ids[row.indexOf(Math.max(...row))] });
    }
  } else {
    const { top, topScores } = await session.rank(items, 5);
    for (let i = 0; i < items.length; i++) examples.push({ ...inputOf(items[i]!.ex, first), ids: top[i], logprobs: topScores[i], top1: top[i]![0] });
  }
  session.dispose();
  return { name: c.name, model: c.model, kind: lm.info.kind, family: lm.info.family, adapter, peftType: compat.peftType, reproducible: compat.reproducible, examples };
}

/** What PEFT is given: the input without ptune's placeholder ids for the virtual tokens. */
function inputOf(ex: { ids: number[]; tokenTypeIds?: number[]; answerPosition: number }, first: number) {
  return {
    input_ids: ex.ids.slice(first),
    ...(ex.tokenTypeIds?.some((t) => t !== 0) && { token_type_ids: ex.tokenTypeIds.slice(first) }),
    position: ex.answerPosition,
  };
}

await initEngine();
fs.rmSync(out, { recursive: true, force: true });
fs.mkdirSync(out, { recursive: true });
const results = [];
const list = cases();
for (const [i, c] of list.entries()) {
  try {
    results.push(await runCase(c, i));
    process.stderr.write(`ptune ${i + 1}/${list.length} ${c.name}\n`);
  } catch (e) {
    results.push({ name: c.name, model: c.model, error: (e as Error).message });
    process.stderr.write(`ptune ${i + 1}/${list.length} ${c.name}: ${(e as Error).message}\n`);
  }
}
fs.writeFileSync(path.join(out, 'cases.json'), JSON.stringify(results, null, 1));
console.log(path.join(out, 'cases.json'));
