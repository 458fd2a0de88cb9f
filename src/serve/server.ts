import fs from 'node:fs';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import Fastify, { type FastifyError, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import swagger from '@fastify/swagger';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { Batcher, QueueFull } from './batcher.js';
import { InferenceEngine, ServeError } from './engine.js';
import type { ModelSummary, WireError } from './protocol.js';
import { PromptTable, type Generation, type TaskInfo } from './table.js';
import { UserError } from '../util/errors.js';
import type { QuantizeOptions } from '../models/quantize-settings.js';

/** The base model a run directory names. */
export function runModel(runDir: string): string {
  const cfgFile = path.join(runDir, 'config.json');
  if (!fs.existsSync(cfgFile)) throw new UserError(`${cfgFile} not found: not a ptune run directory`);
  return (JSON.parse(fs.readFileSync(cfgFile, 'utf8')) as { model: string }).model;
}

export interface ServeOptions {
  /** the base model (directory or Hub id); default: the table's */
  model?: string;
  /** a prompt table directory (`ptune table --out`) */
  table?: string;
  /** runs to serve as tasks */
  runs?: { name: string; run: string }[];
  /** default 127.0.0.1 */
  host?: string;
  /** default 8080; 0: any free port */
  port?: number;
  /** rows per forward (default 32) */
  maxBatch?: number;
  /** how long a row waits for others to batch with (default 5 ms) */
  maxWaitMs?: number;
  /** rows waiting before requests get 429 (default 1024) */
  maxQueue?: number;
  /** request timeout: 504 after it (default 30 s; a request may ask for less with timeout_ms) */
  timeoutMs?: number;
  /** largest request body in bytes: 413 above (default 1 MiB) */
  bodyLimit?: number;
  /** inputs in one predict request (default 256) */
  maxInputs?: number;
  /** generations running at once before 429 (default 4) */
  maxGenerations?: number;
  /** most tokens a generation may ask for (default 512) */
  maxNewTokens?: number;
  /** ONNX Runtime threads of the inference worker (default PTUNE_THREADS, else the cores) */
  threads?: number;
  /** the LM's linear weights quantized at load (--quantize); runs tuned on the same base, quantized or not, serve on it */
  quantize?: QuantizeOptions;
}

export interface PtuneServer {
  readonly app: FastifyInstance;
  readonly model: ModelSummary;
  /** binds (127.0.0.1:8080 by default) and returns the URL */
  listen(): Promise<string>;
  /** the URL once listening */
  readonly url: string | null;
  /** tasks served now */
  tasks(): TaskInfo[];
  /**
   * Drains: stops accepting connections, finishes the requests in flight (their batches and generations),
   * then stops the worker.
   */
  close(): Promise<void>;
}

const record = { type: 'object', description: 'a record: the fields the task\'s template reads' } as const;
const errorSchema = {
  type: 'object',
  properties: {
    error: {
      type: 'object',
      properties: { status: { type: 'integer' }, code: { type: 'string' }, message: { type: 'string' }, path: { type: 'string' } },
      required: ['status', 'code', 'message'],
    },
  },
} as const;
const scored = { type: 'object', properties: { label: { type: 'string' }, score: { type: 'number' } }, required: ['label', 'score'] } as const;
const taskInfo = {
  type: 'object',
  properties: {
    name: { type: 'string' },
    head: { type: 'string', enum: ['label', 'answer'] },
    labels: { type: 'array', items: { type: 'string' } },
    template: { type: 'string' },
    fields: { type: 'array', items: { type: 'string' } },
    maxLength: { type: 'integer' },
    truncate: { type: 'boolean' },
    virtualTokens: { type: 'integer' },
    generate: { type: 'boolean' },
    source: { type: 'string' },
  },
} as const;
const errors = { 400: errorSchema, 404: errorSchema, 413: errorSchema, 429: errorSchema, 504: errorSchema } as const;

function fail(status: number, code: string, message: string, path?: string): ServeError {
  return new ServeError({ status, code, message, ...(path && { path }) });
}

/** A JSON pointer to the field a schema error is about (the missing or extra property included). */
function validationPath(v: { instancePath?: string; params?: Record<string, unknown> }): string {
  const p = v.params ?? {};
  const extra = (p.missingProperty ?? p.additionalProperty) as string | undefined;
  return `${v.instancePath ?? ''}${extra ? `/${extra}` : ''}` || '/';
}

function sendError(reply: FastifyReply, e: WireError, retryAfter?: number): FastifyReply {
  if (retryAfter !== undefined) reply.header('Retry-After', String(retryAfter));
  return reply.code(e.status).send({ error: e });
}

/** A missing or non-text field of a task's template: 400 naming it. */
function checkFields(task: TaskInfo, rec: Record<string, unknown>, where: string, path: string): void {
  for (const f of task.fields) {
    const v = rec[f];
    if (v === undefined || v === null) throw fail(400, 'missing_field', `${where}: missing field "${f}" used by the template of task "${task.name}"`, `${path}/${f}`);
    if (!['string', 'number', 'boolean'].includes(typeof v)) throw fail(400, 'bad_field', `${where}: field "${f}" is not text (${Array.isArray(v) ? 'array' : typeof v})`, `${path}/${f}`);
  }
}

/**
 * The HTTP server of tuned prompts: one frozen LM in a worker thread, a table of tasks, dynamic batching across
 * requests and tasks, generation (with Server-Sent Events), hot task changes, Prometheus metrics, OpenAPI.
 */
export async function createServer(options: ServeOptions): Promise<PtuneServer> {
  const o = {
    host: '127.0.0.1',
    port: 8080,
    maxBatch: 32,
    maxWaitMs: 5,
    maxQueue: 1024,
    timeoutMs: 30_000,
    bodyLimit: 1 << 20,
    maxInputs: 256,
    maxGenerations: 4,
    maxNewTokens: 512,
    ...Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined)),
  } as Required<Omit<ServeOptions, 'model' | 'table' | 'runs' | 'threads' | 'quantize'>> & ServeOptions;
  const model = o.model ?? (o.table ? PromptTable.modelOf(o.table) : o.runs?.[0] ? runModel(o.runs[0].run) : undefined);
  if (!model) throw new UserError('createServer: give a model, a table or a run (each names its model)');
  const { engine, tasks: initial } = await InferenceEngine.start({ model, table: o.table, runs: o.runs, threads: o.threads, ...(o.quantize && { quantize: o.quantize }) });
  const tasks = new Map(initial.map((t) => [t.name, t]));

  const registry = new Registry();
  collectDefaultMetrics({ register: registry });
  const requests = new Counter({ name: 'ptune_http_requests_total', help: 'HTTP requests by route and status', labelNames: ['method', 'route', 'status'], registers: [registry] });
  const latency = new Histogram({
    name: 'ptune_http_request_duration_seconds',
    help: 'HTTP request latency',
    labelNames: ['route'],
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
    registers: [registry],
  });
  const batchSizes = new Histogram({
    name: 'ptune_batch_size',
    help: 'rows per forward',
    buckets: [1, 2, 4, 8, 16, 32, 64, 128, 256].filter((b) => b <= Math.max(o.maxBatch, 1) * 2),
    registers: [registry],
  });
  const batchTasks = new Histogram({ name: 'ptune_batch_tasks', help: 'distinct tasks per forward', buckets: [1, 2, 4, 8, 16], registers: [registry] });
  const batchSeconds = new Histogram({
    name: 'ptune_batch_seconds',
    help: 'time of one forward in the inference worker',
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
    registers: [registry],
  });
  const queueDepth = new Gauge({ name: 'ptune_queue_depth', help: 'rows waiting for a forward', registers: [registry] });
  const generating = new Gauge({ name: 'ptune_generations_running', help: 'generations running', registers: [registry] });
  const generatedTokens = new Counter({ name: 'ptune_generated_tokens_total', help: 'tokens generated', registers: [registry] });
  new Gauge({ name: 'ptune_tasks', help: 'tasks served', registers: [registry], collect() { this.set(tasks.size); } });

  const batcher = new Batcher(engine, { maxBatch: o.maxBatch, maxWaitMs: o.maxWaitMs, maxQueue: o.maxQueue }, {
    batch(rows, n, seconds) {
      batchSizes.observe(rows);
      batchTasks.observe(n);
      batchSeconds.observe(seconds);
    },
    queue: (depth) => queueDepth.set(depth),
  });
  let running = 0;
  let closing: Promise<void> | null = null;
  let draining = false;

  const app = Fastify({
    bodyLimit: o.bodyLimit,
    logger: false,
    // schema violations are errors, not silently fixed: no coercion, no removal of extra properties
    ajv: { customOptions: { removeAdditional: false, coerceTypes: false, useDefaults: true, allErrors: false } },
    forceCloseConnections: 'idle',
    return503OnClosing: true,
  });
  await app.register(swagger, {
    openapi: {
      openapi: '3.0.3',
      info: { title: 'ptune serve', description: 'P-tuned prompts of many tasks over one frozen language model', version: '1' },
    },
  });

  app.setErrorHandler((error: FastifyError, _req, reply) => {
    if (error instanceof QueueFull) return sendError(reply, error.wire, error.retryAfter);
    if (error instanceof ServeError) return sendError(reply, error.wire);
    if (error.validation?.length) {
      const v = error.validation[0]!;
      const path = validationPath(v as { instancePath?: string; params?: Record<string, unknown> });
      return sendError(reply, { status: 400, code: 'invalid_request', message: `${error.validationContext ?? 'body'}${path === '/' ? '' : path} ${v.message ?? 'is invalid'}`, path });
    }
    const status = error.statusCode && error.statusCode >= 400 ? error.statusCode : 500;
    const code = status === 413 ? 'body_too_large' : status === 400 ? 'malformed_request' : status === 415 ? 'unsupported_media_type' : 'internal';
    return sendError(reply, { status, code, message: error.message, ...(status === 400 && { path: '/' }) });
  });
  app.setNotFoundHandler((req, reply) => sendError(reply, { status: 404, code: 'not_found', message: `no route ${req.method} ${req.url}` }));
  // while draining, every answer closes its connection (keep-alive ones would otherwise hold the close up)
  app.addHook('onSend', async (_req, reply, payload) => {
    if (draining) reply.header('Connection', 'close');
    return payload;
  });
  app.addHook('onResponse', async (req, reply) => {
    const route = req.routeOptions.url ?? 'unmatched';
    requests.inc({ method: req.method, route, status: String(reply.statusCode) });
    latency.observe({ route }, reply.elapsedTime / 1000);
  });

  const taskOf = (name: string): TaskInfo => {
    const t = tasks.get(name);
    if (!t) throw fail(404, 'unknown_task', `no task "${name}" (tasks: ${[...tasks.keys()].join(', ') || 'none'})`, '/task');
    return t;
  };
  const timeoutOf = (asked?: number) => Math.min(asked ?? o.timeoutMs, o.timeoutMs);
  const timedOut = (ms: number) => fail(504, 'timeout', `the request did not finish within ${ms} ms`);

  app.get('/healthz', { schema: { summary: 'liveness: answers at once, even while a batch runs', response: { 200: { type: 'object', additionalProperties: true }, 503: { type: 'object', additionalProperties: true } } } }, async (_req, reply) => {
    if (closing) reply.code(503);
    return { status: closing ? 'draining' : 'ok', model: engine.model.source, tasks: tasks.size, queue: batcher.depth, busy: batcher.busy, generations: running };
  });

  app.get('/metrics', { schema: { summary: 'Prometheus metrics: requests, latency, batch sizes, queue depth, process' } }, async (_req, reply) => {
    reply.header('Content-Type', registry.contentType);
    return registry.metrics();
  });

  app.get('/openapi.json', { schema: { hide: true } }, async () => app.swagger());

  app.get('/v1/tasks', { schema: { summary: 'the tasks served', response: { 200: { type: 'object', properties: { model: { type: 'object', additionalProperties: true }, tasks: { type: 'array', items: taskInfo } } } } } }, async () => ({
    model: engine.model,
    tasks: [...tasks.values()],
  }));

  app.post<{ Body: { name: string; run?: string; peft?: string; template?: string; replace?: boolean; truncate?: boolean; max_length?: number } }>(
    '/v1/tasks',
    {
      schema: {
        summary: 'add (or with replace, replace) a task from a run directory or a PEFT adapter, while serving',
        body: {
          type: 'object',
          required: ['name'],
          additionalProperties: false,
          properties: {
            name: { type: 'string', pattern: '^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$' },
            run: { type: 'string', minLength: 1, description: 'a ptune run directory (its best checkpoint)' },
            peft: { type: 'string', minLength: 1, description: 'a PEFT P-tuning adapter directory exported by ptune' },
            template: { type: 'string', minLength: 1, description: 'PEFT adapters without ptune_template.json: the input after the virtual tokens' },
            replace: { type: 'boolean', default: false },
            truncate: { type: 'boolean', description: 'shrink too-long inputs as training did (default) or refuse them' },
            max_length: { type: 'integer', minimum: 1 },
          },
        },
        response: { 201: { type: 'object', properties: { task: taskInfo } }, 409: errorSchema, ...errors },
      },
    },
    async (req, reply) => {
      const b = req.body;
      if (!b.run === !b.peft) throw fail(400, 'invalid_request', 'body must have exactly one of "run" or "peft"', '/run');
      if (tasks.has(b.name) && !b.replace) throw fail(409, 'task_exists', `task "${b.name}" exists: send "replace": true to replace it`, '/name');
      const info = await engine.addTask({ name: b.name, run: b.run, peft: b.peft, template: b.template, replace: b.replace ?? false, truncate: b.truncate, maxLength: b.max_length });
      tasks.set(info.name, info);
      return reply.code(201).send({ task: info });
    },
  );

  app.delete<{ Params: { name: string } }>(
    '/v1/tasks/:name',
    { schema: { summary: 'remove a task while serving', params: { type: 'object', properties: { name: { type: 'string' } } }, response: { 200: { type: 'object', properties: { removed: { type: 'string' } } }, ...errors } } },
    async (req) => {
      taskOf(req.params.name);
      await engine.removeTask(req.params.name);
      tasks.delete(req.params.name);
      return { removed: req.params.name };
    },
  );

  app.post<{ Body: { task: string; inputs: Record<string, unknown>[]; top_k: number; timeout_ms?: number } }>(
    '/v1/predict',
    {
      schema: {
        summary: 'predict: per input the label or answer, its score (probability) and the top k, as ptune predict gives them',
        body: {
          type: 'object',
          required: ['task', 'inputs'],
          additionalProperties: false,
          properties: {
            task: { type: 'string', minLength: 1 },
            inputs: { type: 'array', minItems: 1, maxItems: o.maxInputs, items: record },
            top_k: { type: 'integer', minimum: 1, maximum: 100, default: 5 },
            timeout_ms: { type: 'integer', minimum: 1 },
          },
        },
        response: {
          200: {
            type: 'object',
            properties: {
              task: { type: 'string' },
              outputs: { type: 'array', items: { type: 'object', properties: { prediction: { type: 'string' }, score: { type: 'number' }, top: { type: 'array', items: scored } }, required: ['prediction', 'score', 'top'] } },
            },
          },
          ...errors,
        },
      },
    },
    async (req) => {
      const { task, inputs, top_k: topK } = req.body;
      const t = taskOf(task);
      inputs.forEach((rec, i) => checkFields(t, rec, `inputs[${i}]`, `/inputs/${i}`));
      const ms = timeoutOf(req.body.timeout_ms);
      const { done, cancel } = batcher.submit(inputs.map((rec) => ({ task, record: rec, topK })));
      let timer: NodeJS.Timeout | undefined;
      const results = await Promise.race([
        done,
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => {
            cancel();
            reject(timedOut(ms));
          }, ms);
        }),
      ]).finally(() => clearTimeout(timer));
      const bad = results.find((r) => !r.ok);
      if (bad && !bad.ok) throw new ServeError(bad.error);
      return { task, outputs: results.map((r) => (r.ok ? r.value : null)) };
    },
  );

  interface GenerateBody {
    task: string;
    input: Record<string, unknown>;
    max_new_tokens: number;
    temperature: number;
    top_p: number;
    seed: number;
    stop: string[];
    stream: boolean;
    timeout_ms?: number;
  }
  app.post<{ Body: GenerateBody }>(
    '/v1/generate',
    {
      schema: {
        summary: 'generate after the task\'s prompt and the input record (causal LMs); "stream": true sends Server-Sent Events, one per token, then "done"',
        body: {
          type: 'object',
          required: ['task', 'input'],
          additionalProperties: false,
          properties: {
            task: { type: 'string', minLength: 1 },
            input: record,
            max_new_tokens: { type: 'integer', minimum: 0, maximum: o.maxNewTokens, default: 32 },
            temperature: { type: 'number', minimum: 0, default: 0 },
            top_p: { type: 'number', exclusiveMinimum: 0, maximum: 1, default: 1 },
            seed: { type: 'integer', default: 0 },
            stop: { type: 'array', maxItems: 16, items: { type: 'string', minLength: 1, maxLength: 256 }, default: [] },
            stream: { type: 'boolean', default: false },
            timeout_ms: { type: 'integer', minimum: 1 },
          },
        },
        response: {
          200: {
            type: 'object',
            properties: { task: { type: 'string' }, text: { type: 'string' }, tokens: { type: 'array', items: { type: 'integer' } }, finish_reason: { type: 'string' }, prompt_tokens: { type: 'integer' } },
          },
          ...errors,
        },
      },
    },
    async (req, reply) => {
      const b = req.body;
      const t = taskOf(b.task);
      if (!t.generate) throw fail(400, 'not_generative', `task "${t.name}": ${engine.model.source} is a ${engine.model.kind} LM; generation needs a causal LM`, '/task');
      checkFields(t, b.input, 'input', '/input');
      if (running >= o.maxGenerations) {
        reply.header('Retry-After', '1');
        throw fail(429, 'busy', `${running} generations are running: retry later`);
      }
      const ms = timeoutOf(b.timeout_ms);
      const job = { task: b.task, record: b.input, maxNewTokens: b.max_new_tokens, temperature: b.temperature, topP: b.top_p, seed: b.seed, stop: b.stop };
      const answer = (g: Generation) => ({ task: b.task, text: g.text, tokens: g.tokens, finish_reason: g.finishReason, prompt_tokens: g.promptTokens });
      running++;
      generating.set(running);
      const finished = () => {
        running--;
        generating.set(running);
      };
      if (!b.stream) {
        const { id, done } = engine.generate({ ...job, stream: false });
        let timer: NodeJS.Timeout | undefined;
        try {
          const g = await Promise.race([
            done,
            new Promise<never>((_, reject) => {
              timer = setTimeout(() => {
                engine.cancel(id);
                reject(timedOut(ms));
              }, ms);
            }),
          ]);
          generatedTokens.inc(g.tokens.length);
          return answer(g);
        } finally {
          clearTimeout(timer);
          void done.catch(() => undefined).finally(finished);
        }
      }
      // Server-Sent Events: one "token" event per token, a "text" event with text held back until the end (what
      // could have become a stop string), then "done" with the whole answer (or "error")
      reply.hijack();
      const raw = reply.raw;
      raw.writeHead(200, { 'Content-Type': 'text/event-stream', 'Cache-Control': 'no-cache', Connection: draining ? 'close' : 'keep-alive' });
      const event = (name: string, data: unknown) => raw.write(`event: ${name}\ndata: ${JSON.stringify(data)}\n\n`);
      const t0 = performance.now();
      const { id, done } = engine.generate({ ...job, stream: true }, { onToken: (tok) => event('token', tok), onRest: (text) => event('text', { text }) });
      const timer = setTimeout(() => engine.cancel(id), ms);
      raw.on('close', () => engine.cancel(id));
      let status = 200;
      try {
        const g = await done;
        generatedTokens.inc(g.tokens.length);
        event('done', answer(g));
      } catch (e) {
        const wire = e instanceof ServeError ? e.wire : { status: 500, code: 'internal', message: String(e) };
        status = wire.status;
        event('error', { error: wire });
      } finally {
        clearTimeout(timer);
        finished();
        raw.end();
        // a stream that outlived the start of a drain leaves no idle connection behind
        if (draining) raw.once('finish', () => req.raw.socket?.end());
        requests.inc({ method: 'POST', route: '/v1/generate', status: String(status) });
        latency.observe({ route: '/v1/generate' }, (performance.now() - t0) / 1000);
      }
    },
  );

  let url: string | null = null;
  return {
    app,
    model: engine.model,
    get url() {
      return url;
    },
    tasks: () => [...tasks.values()],
    async listen() {
      await app.listen({ host: o.host, port: o.port });
      const a = app.server.address() as AddressInfo;
      url = `http://${a.family === 'IPv6' ? `[${a.address}]` : a.address}:${a.port}`;
      return url;
    },
    close() {
      closing ??= (async () => {
        draining = true;
        await app.close();
        await batcher.drained();
        await engine.close();
      })();
      return closing;
    },
  };
}
