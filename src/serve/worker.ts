/**
 * The inference worker: a worker thread that owns the language model, the prompt table and the compiled
 * programs. ONNX Runtime's `run` works synchronously under its promise, so inference here never blocks the
 * HTTP thread's event loop. Requests come as messages (protocol.ts); generation yields between decode steps,
 * so prediction batches and table changes interleave with it.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { initEngine, programs } from '../engine/index.js';
import { loadModel } from '../models/load.js';
import { UserError } from '../util/errors.js';
import type { RowResult, WireError, WorkerInit, WorkerMessage, WorkerRequest } from './protocol.js';
import { PromptTable, TaskInputError, UnknownTaskError } from './table.js';

const port = parentPort!;
const post = (m: WorkerMessage) => port.postMessage(m);

class Cancelled extends Error {}

export function wireError(e: unknown, index?: number): WireError {
  const at = index === undefined ? '' : `/inputs/${index}`;
  if (e instanceof UnknownTaskError) return { status: 404, code: 'unknown_task', message: e.message, path: '/task' };
  if (e instanceof TaskInputError) {
    const where = index === undefined ? 'input' : `inputs[${index}]`;
    const base = index === undefined ? '/input' : at;
    return { status: 400, code: e.code, message: `${where}: ${e.message}`, path: e.field ? `${base}/${e.field}` : base };
  }
  if (e instanceof Cancelled) return { status: 504, code: 'timeout', message: 'the request timed out' };
  if (e instanceof UserError) return { status: 400, code: 'bad_request', message: e.message };
  return { status: 500, code: 'internal', message: e instanceof Error ? e.message : String(e) };
}

async function main(init: WorkerInit): Promise<void> {
  await initEngine(init.threads ? { threads: init.threads } : {});
  // a server meets many batch shapes (rows × padded length × label-only or not); sessions hold no weights, so
  // keeping more of them costs little and spares recompiling under load
  programs.maxSessions = Math.max(programs.maxSessions, 96);
  const lm = await loadModel(init.model, { quantize: init.quantize ?? null });
  const table = init.table ? PromptTable.load(init.table, lm) : PromptTable.create(lm);
  for (const r of init.runs ?? []) await table.addRun(r.name, r.run);
  const cancelled = new Set<number>();
  // one request at a time through the model, in arrival order; generation yields between its steps
  let chain: Promise<void> = Promise.resolve();

  const handle = async (m: WorkerRequest): Promise<void> => {
    switch (m.op) {
      case 'predict': {
        const t0 = performance.now();
        const out = await table.predictBatch(m.rows);
        const rows: RowResult[] = out.map((r, i) => (r instanceof Error ? { ok: false, error: wireError(r, i) } : { ok: true, value: r }));
        post({ type: 'reply', id: m.id, ok: true, value: rows, ms: performance.now() - t0 });
        return;
      }
      case 'generate': {
        const g = await table.generate(m.task, m.record, {
          maxNewTokens: m.maxNewTokens,
          temperature: m.temperature,
          topP: m.topP,
          seed: m.seed,
          stop: m.stop,
          onToken: (token) => {
            if (cancelled.delete(m.id)) throw new Cancelled();
            if (m.stream) post({ type: 'token', id: m.id, token });
          },
          onRest: (text) => m.stream && post({ type: 'rest', id: m.id, text }),
        });
        post({ type: 'reply', id: m.id, ok: true, value: g });
        return;
      }
      case 'add': {
        const t = m.task;
        const opts = { replace: t.replace ?? false, truncate: t.truncate };
        const info = t.run
          ? await table.addRun(t.name, t.run, opts)
          : await table.addPeft(t.name, t.peft!, { ...opts, template: t.template, head: t.head, maxLength: t.maxLength });
        post({ type: 'reply', id: m.id, ok: true, value: info });
        return;
      }
      case 'remove': {
        if (!table.remove(m.name)) throw new UnknownTaskError(m.name, table.names);
        post({ type: 'reply', id: m.id, ok: true, value: m.name });
        return;
      }
      case 'save': {
        table.save(m.dir);
        post({ type: 'reply', id: m.id, ok: true, value: m.dir });
        return;
      }
      case 'cancel':
        return;
    }
  };

  const generating = new Set<number>();
  port.on('message', (m: WorkerRequest) => {
    if (m.op === 'cancel') {
      if (generating.has(m.id)) cancelled.add(m.id);
      return;
    }
    if (m.op === 'generate') generating.add(m.id);
    const run = async () => {
      try {
        await handle(m);
      } catch (e) {
        post({ type: 'reply', id: m.id, ok: false, error: wireError(e) });
      } finally {
        cancelled.delete(m.id);
        generating.delete(m.id);
      }
    };
    // generation runs beside the queue (it yields at every token); everything else in order
    if (m.op === 'generate') void run();
    else chain = chain.then(run);
  });
  const i = lm.info;
  post({
    type: 'ready',
    model: {
      source: i.source, family: i.family, kind: i.kind, maxPositions: i.maxPositions, parameterCount: i.parameterCount,
      ...(i.quantization && { quantization: i.quantization.name }),
    },
    tasks: table.list(),
  });
}

main(workerData as WorkerInit).catch((e) => post({ type: 'fatal', message: e instanceof Error ? e.message : String(e) }));
