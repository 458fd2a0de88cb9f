import { Worker } from 'node:worker_threads';
import type { AddTask, ModelSummary, RowResult, WireError, WorkerInit, WorkerMessage, WorkerRequest } from './protocol.js';
import type { Generation, TaskInfo } from './table.js';

/** A request's failure, carrying what the HTTP layer answers. */
export class ServeError extends Error {
  constructor(readonly wire: WireError) {
    super(wire.message);
    this.name = 'ServeError';
  }
}

interface Pending {
  resolve: (v: unknown) => void;
  reject: (e: ServeError) => void;
  onToken?: (t: { id: number; token: string; text: string }) => void;
  onRest?: (text: string) => void;
}

type Body<T> = T extends unknown ? Omit<T, 'id'> : never;

/**
 * The HTTP thread's handle on the inference worker (worker.ts): requests go out as messages with an id, replies
 * and streamed tokens come back with it.
 */
export class InferenceEngine {
  private readonly worker: Worker;
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  model!: ModelSummary;
  private exited = false;

  private constructor(init: WorkerInit) {
    this.worker = new Worker(new URL('./worker.js', import.meta.url), { workerData: init });
  }

  /** Starts the worker and waits until it has loaded the model and the tasks. */
  static start(init: WorkerInit): Promise<{ engine: InferenceEngine; tasks: TaskInfo[] }> {
    const engine = new InferenceEngine(init);
    return new Promise((resolve, reject) => {
      engine.worker.on('message', (m: WorkerMessage) => {
        if (m.type === 'ready') {
          engine.model = m.model;
          resolve({ engine, tasks: m.tasks });
        } else if (m.type === 'fatal') {
          reject(new Error(m.message));
          void engine.worker.terminate();
        } else {
          engine.receive(m);
        }
      });
      engine.worker.on('error', (e) => {
        reject(e);
        engine.failAll(e);
      });
      engine.worker.on('exit', () => {
        engine.exited = true;
        reject(new Error('the inference worker exited while starting'));
        engine.failAll(new Error('the inference worker exited'));
      });
    });
  }

  private receive(m: Exclude<WorkerMessage, { type: 'ready' | 'fatal' }>): void {
    const p = this.pending.get(m.id);
    if (!p) return;
    if (m.type === 'token') return p.onToken?.(m.token);
    if (m.type === 'rest') return p.onRest?.(m.text);
    this.pending.delete(m.id);
    if (m.ok) p.resolve(m.ms === undefined ? m.value : { value: m.value, ms: m.ms });
    else p.reject(new ServeError(m.error));
  }

  private failAll(e: Error): void {
    for (const p of this.pending.values()) p.reject(new ServeError({ status: 500, code: 'internal', message: e.message }));
    this.pending.clear();
  }

  private call<T>(req: Body<WorkerRequest>, extra: Partial<Pending> = {}): { id: number; done: Promise<T> } {
    const id = this.nextId++;
    const done = new Promise<T>((resolve, reject) => {
      if (this.exited) return reject(new ServeError({ status: 503, code: 'unavailable', message: 'the inference worker has stopped' }));
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject, ...extra });
      this.worker.postMessage({ ...req, id });
    });
    return { id, done };
  }

  /** One forward over rows of any tasks. */
  predict(rows: { task: string; record: Record<string, unknown>; topK: number }[]): Promise<{ value: RowResult[]; ms: number }> {
    return this.call<{ value: RowResult[]; ms: number }>({ op: 'predict', rows }).done;
  }

  generate(
    req: Omit<Extract<WorkerRequest, { op: 'generate' }>, 'id' | 'op'>,
    stream?: { onToken: Pending['onToken']; onRest: Pending['onRest'] },
  ): { id: number; done: Promise<Generation> } {
    return this.call<Generation>({ op: 'generate', ...req }, stream ?? {});
  }

  /** Stops a generation at its next token. */
  cancel(id: number): void {
    if (!this.exited) this.worker.postMessage({ op: 'cancel', id });
  }

  addTask(task: AddTask): Promise<TaskInfo> {
    return this.call<TaskInfo>({ op: 'add', task }).done;
  }

  removeTask(name: string): Promise<string> {
    return this.call<string>({ op: 'remove', name }).done;
  }

  saveTable(dir: string): Promise<string> {
    return this.call<string>({ op: 'save', dir }).done;
  }

  async close(): Promise<void> {
    if (!this.exited) await this.worker.terminate();
  }
}
