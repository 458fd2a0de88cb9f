/**
 * ptune serve under load on loopback (autocannon, bounded in time and count), next to the offline batched
 * throughput of the same model and tasks.
 *
 *   npm run bench:serve -- [--models bert-mini,bert-base] [--seconds 8] [--rss-requests 20000]
 *
 * Per model: a prompt table of 4 tasks with random prompt rows (two label tasks, two open-vocabulary answer
 * tasks, all on the template `{sentence} [P*3] It was [MASK] .` so their rows have one shape), SST-2 test
 * sentences as inputs, one input per request, the tasks in turn (every forward mixes tasks).
 *   offline   PromptTable.predictBatch in this process, batch 32: rows/s; and the time of a batch of 32 rows
 *             from the 4 tasks against 32 rows of one answer task (same shape), interleaved
 *   served    `ptune serve --max-batch 32 --max-wait-ms 5` in a child process; autocannon at 1, 16 and 64
 *             connections for --seconds each after a warm-up (which compiles the programs): requests/s,
 *             latency p50/p99, errors and non-2xx answers (bert-base: 16, 64 and 256 requests instead of a time
 *             window, its batches taking seconds here)
 *   rss       (first model) the server's RSS sampled every 1,000 of --rss-requests requests at 64 connections
 * bert-base is BERT-base-shaped with random weights (written to a temporary directory with the mini models'
 * tokenizer). Prints one JSON object.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import autocannon from 'autocannon';
import { PTUNE_PROCESS_ENV } from '../src/cli/process-env.js';
import { writeSafetensors } from '../src/engine/safetensors.js';
import { createRandomModel, loadModel } from '../src/models/load.js';
import type { LanguageModel } from '../src/models/model.js';
import { readRecords } from '../src/data/read.js';
import { PromptTable } from '../src/serve/table.js';
import type { HeadSpec } from '../src/prompt/heads.js';
import { mulberry32 } from '../src/util/rng.js';

const shared = path.resolve(process.cwd(), '../shared');
const MINI = path.join(shared, 'models/bert-mini-lama');
const arg = (name: string, dflt: string) => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1]! : dflt;
};
const SECONDS = Number(arg('seconds', '8'));
const RSS_REQUESTS = Number(arg('rss-requests', '20000'));
const MODELS = arg('models', 'bert-mini,bert-base').split(',');
const TEMPLATE = '{sentence} [P*3] It was [MASK] .';
const TASKS: [string, HeadSpec][] = [
  ['sentiment', { kind: 'label', labelField: 'label', labelWords: { '0': 'terrible', '1': 'great' } }],
  ['polarity', { kind: 'label', labelField: 'label', labelWords: { neg: 'bad', pos: 'good' } }],
  ['topic', { kind: 'answer', answerField: 'answer' }],
  ['genre', { kind: 'answer', answerField: 'answer' }],
];
const log = (s: string) => process.stderr.write(`bench:serve ${s}\n`);

/** A model directory (config.json, model.safetensors, the mini models' tokenizer files) for a random model. */
function writeModelDir(lm: LanguageModel, dir: string): void {
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(lm.family.toHfConfig(lm.config), null, 2));
  writeSafetensors(path.join(dir, 'model.safetensors'), new Map([...lm.params].map(([k, p]) => [k, { shape: p.shape, data: p.data }])));
  for (const f of ['tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json', 'vocab.txt']) fs.copyFileSync(path.join(MINI, f), path.join(dir, f));
}

function makeTable(lm: LanguageModel): PromptTable {
  const table = PromptTable.create(lm);
  const width = lm.info.hiddenSize;
  TASKS.forEach(([name, head], k) => {
    const rng = mulberry32(100 + k);
    const data = Float32Array.from({ length: 3 * width }, () => (rng() - 0.5) * 0.1);
    table.set(name, { template: TEMPLATE, head, maxLength: 64, prompt: { shape: [3, width], data } });
  });
  return table;
}

/** SST-2 test sentences of at most 20 words (short requests; the padded lengths stay few). */
function sentences(): string[] {
  return readRecords(path.join(shared, 'data/sst2/test.tsv'))
    .map((r) => String(r.sentence))
    .filter((s) => s.split(' ').length <= 20)
    .slice(0, 256);
}

async function offline(lm: LanguageModel, texts: string[]) {
  const table = makeTable(lm);
  const rows = (mixed: boolean, at: number) =>
    Array.from({ length: 32 }, (_, i) => ({ task: mixed ? TASKS[i % 4]![0] : 'topic', record: { sentence: texts[(at + i) % texts.length]! }, topK: 1 }));
  for (let i = 0; i < 3; i++) {
    await table.predictBatch(rows(true, i * 32));
    await table.predictBatch(rows(false, i * 32));
  }
  // throughput: mixed batches of 32 over the sentences
  const n = lm.info.hiddenSize > 256 ? 4 : 40;
  let t0 = performance.now();
  for (let i = 0; i < n; i++) await table.predictBatch(rows(true, i * 32));
  const seconds = (performance.now() - t0) / 1000;
  // the same 32 sentences, mixed tasks vs one task, interleaved
  const mixedT: number[] = [];
  const singleT: number[] = [];
  for (let i = 0; i < n; i++) {
    t0 = performance.now();
    await table.predictBatch(rows(true, 0));
    mixedT.push(performance.now() - t0);
    t0 = performance.now();
    await table.predictBatch(rows(false, 0));
    singleT.push(performance.now() - t0);
  }
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;
  return {
    batch: 32,
    rows_per_s: Number(((n * 32) / seconds).toFixed(1)),
    mixed_4_tasks_batch_ms: Number(median(mixedT).toFixed(2)),
    single_task_batch_ms: Number(median(singleT).toFixed(2)),
    mixed_over_single: Number((median(mixedT) / median(singleT)).toFixed(3)),
  };
}

function rssMb(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) / 1024 : NaN;
}

async function startServer(table: string): Promise<{ child: ChildProcess; url: string }> {
  const child = spawn(process.execPath, ['bin/ptune.js', 'serve', '--table', table, '--port', '0', '--max-batch', '32', '--max-wait-ms', '5', '--max-queue', '4096'], {
    stdio: ['ignore', 'pipe', 'inherit'],
    env: { ...process.env, ...PTUNE_PROCESS_ENV },
  });
  const url = await new Promise<string>((resolve, reject) => {
    let out = '';
    child.stdout!.on('data', (d) => {
      out += d;
      if (out.includes('\n')) resolve((JSON.parse(out.split('\n')[0]!) as { listening: string }).listening);
    });
    child.on('exit', (code) => reject(new Error(`ptune serve exited with ${code}`)));
  });
  return { child, url };
}

function requests(texts: string[]): autocannon.Request[] {
  return texts.slice(0, 128).map((sentence, i) => ({
    method: 'POST',
    path: '/v1/predict',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ task: TASKS[i % 4]![0], inputs: [{ sentence }], top_k: 1 }),
  }));
}

async function load(url: string, texts: string[], connections: number, opts: { duration?: number; amount?: number; onResponse?: () => void }) {
  const r = await new Promise<autocannon.Result>((resolve, reject) => {
    const options = { url, connections, requests: requests(texts), ...(opts.amount ? { amount: opts.amount } : { duration: opts.duration ?? SECONDS }), timeout: 30 };
    const instance = autocannon(options, (err, res) => (err ? reject(err) : resolve(res)));
    if (opts.onResponse) instance.on('response', opts.onResponse);
  });
  return {
    connections,
    requests: r.requests.total,
    seconds: Number(r.duration.toFixed(1)),
    requests_per_s: Number((r.requests.total / r.duration).toFixed(1)),
    latency_p50_ms: r.latency.p50,
    latency_p99_ms: r.latency.p99,
    errors: r.errors,
    timeouts: r.timeouts,
    non_2xx: r.non2xx,
  };
}

async function main(): Promise<void> {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'ptune-bench-serve-'));
  const texts = sentences();
  const out: Record<string, unknown> = {
    started: new Date().toISOString(),
    cores: os.availableParallelism(),
    loadavg_start: os.loadavg().map((x) => Number(x.toFixed(2))),
    settings: { max_batch: 32, max_wait_ms: 5, tasks: TASKS.map(([n, h]) => `${n} (${h.kind})`), template: TEMPLATE, inputs_per_request: 1, seconds_per_level: SECONDS },
    models: {},
  };
  try {
    for (const [m, key] of MODELS.entries()) {
      log(`${key}: preparing`);
      let lm: LanguageModel;
      let dir: string;
      if (key === 'bert-mini') {
        dir = MINI;
        lm = await loadModel(MINI);
      } else if (key === 'bert-base') {
        dir = path.join(tmp, 'bert-base-random');
        const tok = (await loadModel(MINI)).tokenizer;
        lm = createRandomModel('bert', { numLayers: 12, hiddenSize: 768, numHeads: 12, intermediateSize: 3072, maxPositions: 512, vocabSize: 30522 }, 1, tok);
        writeModelDir(lm, dir);
        lm = await loadModel(dir);
      } else {
        throw new Error(`--models: unknown ${key} (bert-mini, bert-base)`);
      }
      const tableDir = path.join(tmp, `table-${key}`);
      const table = makeTable(lm);
      table.model = dir;
      table.save(tableDir);
      log(`${key}: offline`);
      const off = await offline(lm, texts);
      lm.dispose();
      log(`${key}: serving`);
      const { child, url } = await startServer(tableDir);
      try {
        // warm-up: compiles the programs of the batch shapes met at each concurrency. A model whose batch of 32
        // takes seconds runs a fixed number of requests per level (a time window could end before one batch)
        const slow = key === 'bert-base';
        for (const c of [64, 16, 1]) await load(url, texts, c, slow ? { amount: Math.max(4, 2 * c) } : { duration: 3 });
        const levels = [];
        for (const c of [1, 16, 64]) {
          log(`${key}: ${c} connections`);
          levels.push(await load(url, texts, c, slow ? { amount: c === 1 ? 16 : 4 * c } : { duration: SECONDS }));
        }
        const result: Record<string, unknown> = { parameters: lm.info.parameterCount, offline: off, served: levels };
        const at64 = levels.find((l) => l.connections === 64)!;
        result.served_64_over_offline = Number((at64.requests_per_s / off.rows_per_s).toFixed(3));
        if (m === 0 && RSS_REQUESTS > 0) {
          log(`${key}: ${RSS_REQUESTS} requests, RSS sampled`);
          const samples: { requests: number; rss_mb: number }[] = [{ requests: 0, rss_mb: Number(rssMb(child.pid!).toFixed(1)) }];
          let n = 0;
          const run = await load(url, texts, 64, {
            amount: RSS_REQUESTS,
            onResponse: () => {
              if (++n % 1000 === 0) samples.push({ requests: n, rss_mb: Number(rssMb(child.pid!).toFixed(1)) });
            },
          });
          const after = samples.filter((s) => s.requests >= 2000);
          const first = after[0]!.rss_mb;
          const max = Math.max(...after.map((s) => s.rss_mb));
          const min = Math.min(...after.map((s) => s.rss_mb));
          result.rss = {
            requests: run.requests,
            errors: run.errors,
            non_2xx: run.non_2xx,
            requests_per_s: run.requests_per_s,
            samples,
            from_2000_requests: { first_mb: first, last_mb: after[after.length - 1]!.rss_mb, min_mb: min, max_mb: max, spread_pct: Number((((max - min) / first) * 100).toFixed(2)) },
          };
        }
        (out.models as Record<string, unknown>)[key] = result;
      } finally {
        child.kill('SIGTERM');
        await new Promise((r) => child.once('exit', r));
      }
    }
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
  out.loadavg_end = os.loadavg().map((x) => Number(x.toFixed(2)));
  out.finished = new Date().toISOString();
  console.log(JSON.stringify(out, null, 2));
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
