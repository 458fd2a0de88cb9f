/**
 * Property-based tests (fast-check): templates, records, data files, option values and run configs drawn at
 * random either work or raise a one-line UserError — never an internal TypeError, a raw ONNX Runtime message or
 * a stack trace. The model is loaded once, outside the properties. On a failure fast-check prints the seed and
 * the shrunk counterexample; `fc.assert(..., { seed, path })` replays it.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import fc from 'fast-check';
import { Command } from 'commander';
import { loadModel } from '../src/models/load.js';
import type { LanguageModel } from '../src/models/model.js';
import { PTuningSession, DEFAULT_LOOP, DEFAULT_OPTIM, type RunConfig } from '../src/train/session.js';
import { parseRunConfig } from '../src/train/files.js';
import { parseCsv, parseJsonArray, parseJsonl, parseTsv } from '../src/data/read.js';
import { registerTrainCommands, trainConfigFromOptions } from '../src/cli/train-commands.js';
import { numPseudo } from '../src/prompt/template.js';
import { UserError } from '../src/util/errors.js';
import { runCli } from './fixtures.js';

const shared = path.resolve(process.cwd(), '../shared');
const tinyDir = path.join(shared, 'models/tiny/distilbert');

/** Runs per property (the whole file takes a few seconds); PTUNE_FUZZ_SCALE=20 runs twenty times as many. */
const scale = Math.max(1, Number(process.env.PTUNE_FUZZ_SCALE ?? 1) || 1);
const BASE_RUNS = { templates: 300, records: 300, forward: 60, data: 300, csvRoundTrip: 200, options: 300, cli: 150, configs: 300 };
export const RUNS = Object.fromEntries(Object.entries(BASE_RUNS).map(([k, n]) => [k, n * scale])) as typeof BASE_RUNS;

const INTERNAL = /TypeError|ReferenceError|RangeError|Cannot read propert|is not a function|is not iterable|Non-zero status code|onnxruntime|\x1b\[/;

/** `body` works, or throws a one-line UserError that reads as one: anything else fails the property. */
function worksOrUserError<T>(body: () => T): T | UserError {
  try {
    return body();
  } catch (e) {
    if (!(e instanceof UserError)) throw new Error(`not a UserError: ${(e as Error)?.stack ?? String(e)}`);
    assert.ok(!e.message.includes('\n'), `two lines: ${e.message}`);
    assert.doesNotMatch(e.message, INTERNAL);
    return e;
  }
}

async function worksOrUserErrorAsync<T>(body: () => Promise<T>): Promise<T | UserError> {
  try {
    return await body();
  } catch (e) {
    if (!(e instanceof UserError)) throw new Error(`not a UserError: ${(e as Error)?.stack ?? String(e)}`);
    assert.ok(!e.message.includes('\n'), `two lines: ${e.message}`);
    assert.doesNotMatch(e.message, INTERNAL);
    return e;
  }
}

let lm: LanguageModel;
before(async () => {
  lm = await loadModel(tinyDir);
});
after(() => lm.dispose());

const config = (template: string, head: RunConfig['head'], maxLength = 48): RunConfig => ({
  version: 1,
  model: tinyDir,
  template,
  head,
  encoder: { type: 'mlp', seed: 1 },
  maxLength,
  skipTooLong: false,
  loop: { ...DEFAULT_LOOP },
  optim: { ...DEFAULT_OPTIM },
});
const answerHead: RunConfig['head'] = { kind: 'answer', answerField: 'obj' };
const labelHead: RunConfig['head'] = { kind: 'label', labelField: 'label', labelWords: { pos: 'warm', neg: ['old', 'cat'] }, tokenRule: 'mean' };

/** Template text: pieces of the template language mixed with arbitrary characters. */
const templatePiece = fc.oneof(
  fc.constantFrom('[P]', '[P*2]', '[P*0]', '[P*1025]', '[P* 3 ]', '[MASK]', '[SEP]', '[CLS]', '[FOO]', '[', ']', '{', '}', '{sub}', '{obj}',
    '{label}', '{bad name}', '{}', '\\[', '\\', ' ', '  ', 'the', 'capital', 'of', 'é', ',', '3', '-1', '(', ')', '*', 'P', '\t', '\n'),
  fc.string({ maxLength: 4 }),
  fc.string({ unit: 'binary', maxLength: 3 }),
);
const templateText = fc.oneof(
  fc.array(templatePiece, { maxLength: 12 }).map((p) => p.join('')),
  fc.tuple(fc.integer({ min: -2, max: 5 }), fc.integer({ min: -2, max: 5 }), fc.integer({ min: -2, max: 5 })).map((t) => t.join(',')),
  fc.array(fc.integer({ min: -3, max: 1100 }), { maxLength: 5 }).map((t) => t.join(',')),
);

/** Field values of every JSON kind, strings with any code units included. */
const fieldValue = fc.oneof(
  fc.constantFrom('the cat', 'paris', 'warm', 'old', 'pos', 'neg', '', ' ', '[MASK]', '[P]', '{sub}', 'the '.repeat(40)),
  fc.string({ maxLength: 20 }),
  fc.string({ unit: 'binary', maxLength: 8 }),
  fc.integer(),
  fc.double(),
  fc.boolean(),
  fc.constant(null),
  fc.array(fc.string(), { maxLength: 2 }),
  fc.dictionary(fc.string({ maxLength: 3 }), fc.string(), { maxKeys: 2 }),
);
const record = fc.dictionary(fc.constantFrom('sub', 'obj', 'label', 'id', 'other'), fieldValue, { maxKeys: 5 });

test(`templates: parsed, checked against the model and rendered, or a one-line UserError (${RUNS.templates} runs)`, async () => {
  await fc.assert(
    fc.asyncProperty(templateText, fc.boolean(), fc.array(record, { minLength: 1, maxLength: 3 }), async (template, label, records) => {
      const session = await worksOrUserErrorAsync(() => PTuningSession.create(config(template, label ? labelHead : answerHead), lm));
      if (session instanceof UserError) return;
      const r = worksOrUserError(() => session.prepare(records, 'fuzz'));
      if (r instanceof UserError) return;
      for (const { ex } of r.items) {
        assert.ok(ex.ids.length <= 48, `${ex.ids.length} ids`);
        assert.ok(ex.ids.every((id) => Number.isInteger(id) && id >= 0 && id < lm.info.vocabSize));
        assert.equal(ex.pseudoPositions.length, numPseudo(session.template));
        assert.ok(ex.answerPosition >= 0 && ex.answerPosition < ex.ids.length);
      }
    }),
    { numRuns: RUNS.templates },
  );
});

const create = (c: RunConfig) => PTuningSession.create(c, lm);

test(`records: rendered with targets for label and answer heads, or a one-line UserError (${RUNS.records} runs)`, async () => {
  const sessions: PTuningSession[] = [];
  for (const c of [config('{sub} [P*2] is [MASK] .', answerHead), config('[P] {sub} [SEP] {obj} [P*3] [MASK]', labelHead), config('{sub} [MASK] {other}', labelHead, 8)]) {
    for (const skipTooLong of [false, true]) sessions.push(await create({ ...c, skipTooLong }));
  }
  fc.assert(
    fc.property(fc.array(record, { minLength: 1, maxLength: 4 }), (records) => {
      for (const s of sessions) {
        const r = worksOrUserError(() => s.prepare(records, 'fuzz.jsonl'));
        if (r instanceof UserError) assert.match(r.message, /fuzz\.jsonl/);
      }
    }),
    { numRuns: RUNS.records },
  );
});

test(`rendered batches run through the model: scores are finite, no raw ONNX Runtime error (${RUNS.forward} runs)`, async () => {
  const templates = ['{sub} [P] [MASK] .', '[P*2] {sub} [MASK]', '{sub} [SEP] {obj} [MASK] [P]'];
  await fc.assert(
    fc.asyncProperty(fc.constantFrom(...templates), fc.array(record, { minLength: 1, maxLength: 3 }), fc.integer({ min: 4, max: 64 }), async (template, records, maxLength) => {
      const s = await worksOrUserErrorAsync(() => create({ ...config(template, labelHead, maxLength), skipTooLong: true }));
      if (s instanceof UserError) return;
      const r = worksOrUserError(() => s.prepare(records, 'fuzz', false));
      if (r instanceof UserError || r.items.length === 0) return;
      const scores = await worksOrUserErrorAsync(() => s.scores(r.items));
      if (scores instanceof UserError) return;
      assert.deepEqual(scores.shape, [r.items.length, 2]);
      assert.ok([...scores.data].every(Number.isFinite));
    }),
    { numRuns: RUNS.forward },
  );
});

const dataText = fc.array(
  fc.oneof(fc.constantFrom(',', '\t', '"', '""', '\n', '\r\n', '\r', ' ', 'a', 'b', '{', '}', '[', ']', ':', '1', 'null', '\\', '\uFEFF'), fc.string({ maxLength: 3 })),
  { maxLength: 30 },
).map((p) => p.join(''));

test(`data files: CSV, TSV, JSONL and JSON text reads as records or a one-line UserError naming the file (${RUNS.data} runs each)`, () => {
  const parsers = [
    ['d.csv', parseCsv],
    ['d.tsv', parseTsv],
    ['d.jsonl', parseJsonl],
    ['d.json', parseJsonArray],
  ] as const;
  for (const [file, parse] of parsers) {
    fc.assert(
      fc.property(fc.oneof(dataText, fc.string({ maxLength: 40 })), (text) => {
        const r = worksOrUserError(() => parse(text, file));
        if (r instanceof UserError) {
          assert.ok(r.message.startsWith(file), r.message);
          return;
        }
        for (const rec of r) assert.ok(rec !== null && typeof rec === 'object' && !Array.isArray(rec));
      }),
      { numRuns: RUNS.data },
    );
  }
});

/** RFC 4180 writing: every field quoted, quotes doubled. */
const csvLine = (fields: string[]) => fields.map((f) => `"${f.replace(/"/g, '""')}"`).join(',');

test(`CSV written by the RFC reads back the same records, with each record's line (${RUNS.csvRoundTrip} runs)`, () => {
  fc.assert(
    fc.property(fc.integer({ min: 1, max: 4 }), fc.array(fc.array(fc.string({ maxLength: 6 }), { minLength: 4, maxLength: 4 }), { maxLength: 6 }), fc.constantFrom('\n', '\r\n'), (width, rows, eol) => {
      const header = Array.from({ length: width }, (_, i) => `c${i}`);
      const body = rows.map((r) => r.slice(0, width));
      const text = [csvLine(header), ...body.map(csvLine)].join(eol) + eol;
      const back = parseCsv(text, 'r.csv');
      assert.deepEqual(back, body.map((r) => Object.fromEntries(header.map((h, i) => [h, r[i]]))));
    }),
    { numRuns: RUNS.csvRoundTrip },
  );
});

/** The train command's declared defaults, as commander hands them to the action. */
function trainDefaults(): Record<string, unknown> {
  const program = new Command();
  registerTrainCommands(program);
  const train = program.commands.find((c) => c.name() === 'train')!;
  return Object.fromEntries(train.options.filter((o) => o.defaultValue !== undefined).map((o) => [o.attributeName(), o.defaultValue]));
}

const optionText = fc.oneof(
  fc.constantFrom('0', '1', '-1', '2', '0.5', '1.5', '1e3', '1e-5', 'NaN', 'Infinity', '-Infinity', '0x10', '', ' ', ' 3 ', 'abc', '1,2',
    '٣', '9007199254740993', 'adam', 'adamw', 'sgd', 'linear', 'exponential', 'constant', 'first', 'mean', 'max', 'foo', 'lstm', 'mlp', 'peft', 'thudm'),
  fc.integer({ min: -5, max: 300 }).map(String),
  fc.double({ min: -2, max: 3, noNaN: true }).map(String),
  fc.string({ maxLength: 5 }),
);
const TRAIN_VALUED = ['tokenRule', 'encoder', 'encoderHidden', 'encoderPreset', 'encoderDropout', 'lr', 'weightDecay', 'optimizer', 'schedule', 'warmup',
  'gamma', 'lmLr', 'lmWeightDecay', 'batchSize', 'gradAccum', 'maxGradNorm', 'epochs', 'maxSteps', 'evalEvery', 'patience', 'saveEvery', 'maxLength', 'seed'];
const TRAIN_FLAGS = ['tuneLm', 'skipTooLong', 'legacyBertOrder'];

test(`train option values: a config the run files' schema reads back, or a one-line UserError naming the option (${RUNS.options} runs)`, async () => {
  const defaults = trainDefaults();
  const base = { ...defaults, model: tinyDir, train: 't.jsonl', dev: 'd.jsonl', template: '{sub} [P] [MASK]', out: 'run', answerField: 'obj' };
  await fc.assert(
    fc.asyncProperty(
      fc.dictionary(fc.constantFrom(...TRAIN_VALUED), optionText, { maxKeys: 4 }),
      fc.subarray(TRAIN_FLAGS),
      fc.boolean(),
      async (values, flags, label) => {
        const raw: Record<string, unknown> = { ...base, ...values, ...Object.fromEntries(flags.map((f) => [f, true])) };
        if (label) Object.assign(raw, { answerField: undefined, labelField: 'label', verbalizer: 'pos:warm,neg:old' });
        const given = (k: string) => k in values || flags.includes(k);
        const c = worksOrUserError(() => trainConfigFromOptions(raw, given));
        if (c instanceof UserError) {
          assert.match(c.message, /^--[a-z-]+/, c.message);
          return;
        }
        // what the CLI accepts, config.json accepts back
        parseRunConfig(JSON.parse(JSON.stringify(c)), 'config.json');
        const s = await worksOrUserErrorAsync(() => create(c));
        if (!(s instanceof UserError)) assert.equal(s.config.loop.batchSize, c.loop.batchSize);
      },
    ),
    { numRuns: RUNS.options },
  );
});

test(`the ptune command on random option values exits 0 or 2 with one line, never 1 (${RUNS.cli} runs)`, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ptune-fuzz-'));
  const missing = path.join(dir, 'no-model');
  const commands = [
    (v: string) => ['train', '--model', missing, '--train', 't.jsonl', '--dev', 'd.jsonl', '--template', '[P] {s} [MASK]', '--answer-field', 'o', '--out', path.join(dir, 'o'), '--epochs', v],
    (v: string) => ['train', '--model', missing, '--train', 't.jsonl', '--dev', 'd.jsonl', '--template', v, '--answer-field', 'o', '--out', path.join(dir, 'o')],
    (v: string) => ['predict', '--run', path.join(dir, 'no-run'), '--text', '{}', '--top', v],
    (v: string) => ['fill', missing, 'a [MASK]', '--top', v],
    (v: string) => ['generate', missing, '--top-p', v],
    (v: string) => ['--threads', v, 'info', missing],
    (v: string) => ['--runtime', v, 'info', missing],
    (v: string) => ['eval', '--run', path.join(dir, 'no-run'), '--data', 'x.jsonl', '--checkpoint', v],
    (v: string) => ['export', '--run', path.join(dir, 'no-run'), '--out', path.join(dir, 'e'), '--format', v],
    (v: string) => ['lama', '--model', missing, '--data', path.join(dir, 'no-data'), '--out', path.join(dir, 'l'), '--jobs', v],
    (v: string) => ['fewglue', '--model', missing, '--task', 'cb', '--out', path.join(dir, 'f'), '--eval-cap', v],
    (v: string) => [v],
  ];
  await fc.assert(
    fc.asyncProperty(fc.integer({ min: 0, max: commands.length - 1 }), optionText, async (k, v) => {
      const args = commands[k]!(v);
      const { code, text } = await runCli(args);
      assert.ok(code === 0 || code === 2, `exit ${code}: ${text}`);
      if (code === 2) {
        const lines = text.split('\n').filter((l) => l.trim());
        assert.equal(lines.length, 1, text);
        assert.doesNotMatch(text, INTERNAL);
      }
    }),
    { numRuns: RUNS.cli },
  );
});

test(`run configs: a config.json with any field changed is read or refused naming the file and the field (${RUNS.configs} runs)`, async () => {
  const good = JSON.parse(JSON.stringify(config('{sub} [P*2] [MASK] .', labelHead))) as Record<string, unknown>;
  const paths: string[][] = [];
  const walk = (v: unknown, p: string[]) => {
    paths.push(p);
    if (v && typeof v === 'object' && !Array.isArray(v)) for (const [k, x] of Object.entries(v)) walk(x, [...p, k]);
  };
  walk(good, []);
  const jsonValue = fc.oneof(fc.jsonValue({ maxDepth: 2 }), fc.constantFrom(0, -1, 1.5, 1e9, '', 'lstm', 'adamw', 'label', 'answer', null, true));
  await fc.assert(
    fc.asyncProperty(fc.constantFrom(...paths.filter((p) => p.length > 0)), jsonValue, fc.boolean(), async (p, value, remove) => {
      const c = structuredClone(good);
      let at = c as Record<string, unknown>;
      for (const k of p.slice(0, -1)) at = at[k] as Record<string, unknown>;
      if (remove) delete at[p[p.length - 1]!];
      else at[p[p.length - 1]!] = value;
      const parsed = worksOrUserError(() => parseRunConfig(c, 'run/config.json'));
      if (parsed instanceof UserError) {
        assert.match(parsed.message, /^run\/config\.json: /);
        return;
      }
      await worksOrUserErrorAsync(() => create(parsed));
    }),
    { numRuns: RUNS.configs },
  );
});
