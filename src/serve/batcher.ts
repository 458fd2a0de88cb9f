import type { RowResult } from './protocol.js';
import { ServeError, type InferenceEngine } from './engine.js';

export interface BatcherOptions {
  /** rows per forward */
  maxBatch: number;
  /** how long the oldest waiting row waits for more before its batch goes anyway */
  maxWaitMs: number;
  /** rows waiting (not yet in a forward) before new requests are refused */
  maxQueue: number;
}

export interface BatchObserver {
  /** a forward ran: its rows, how many tasks they came from, and its time in the worker */
  batch?(rows: number, tasks: number, seconds: number): void;
  queue?(depth: number): void;
}

interface Request {
  results: RowResult[];
  remaining: number;
  done: boolean;
  resolve: (r: RowResult[]) => void;
  reject: (e: Error) => void;
}

interface Row {
  task: string;
  record: Record<string, unknown>;
  topK: number;
  request: Request;
  index: number;
  at: number;
}

/** The queue is full: the request may be retried after `retryAfter` seconds. */
export class QueueFull extends ServeError {
  constructor(readonly retryAfter: number, depth: number) {
    super({ status: 429, code: 'queue_full', message: `${depth} rows are waiting: retry after ${retryAfter} s` });
  }
}

/**
 * Dynamic batching across requests and tasks: rows of all requests wait in one queue; a forward takes up to
 * `maxBatch` of them (any mix of tasks) as soon as that many wait, or when the oldest has waited `maxWaitMs`.
 * One forward is in flight at a time (the worker runs one at a time anyway), and rows keep queueing meanwhile.
 */
export class Batcher {
  private readonly queue: Row[] = [];
  private inFlight = 0;
  private timer: NodeJS.Timeout | null = null;
  private idle: (() => void)[] = [];
  /** seconds per forward, smoothed (for Retry-After) */
  private secondsPerBatch = 0.05;

  constructor(
    private readonly engine: InferenceEngine,
    readonly options: BatcherOptions,
    private readonly observer: BatchObserver = {},
  ) {}

  get depth(): number {
    return this.queue.length;
  }

  get busy(): boolean {
    return this.inFlight > 0;
  }

  /**
   * Queues a request's rows; resolves with one result per row when all have run. `cancel` (a timeout) drops
   * the rows still waiting.
   */
  submit(rows: { task: string; record: Record<string, unknown>; topK: number }[]): { done: Promise<RowResult[]>; cancel: () => void } {
    const { maxQueue, maxBatch } = this.options;
    if (this.queue.length + rows.length > maxQueue) {
      const batches = Math.ceil((this.queue.length + rows.length) / maxBatch) + this.inFlight;
      throw new QueueFull(Math.max(1, Math.ceil(batches * this.secondsPerBatch)), this.queue.length);
    }
    let request!: Request;
    const done = new Promise<RowResult[]>((resolve, reject) => {
      request = { results: new Array(rows.length), remaining: rows.length, done: false, resolve, reject };
    });
    const at = performance.now();
    rows.forEach((r, index) => this.queue.push({ ...r, request, index, at }));
    this.observer.queue?.(this.queue.length);
    this.pump();
    return {
      done,
      cancel: () => {
        request.done = true;
      },
    };
  }

  private pump(): void {
    while (this.queue.length && this.queue[0]!.request.done) this.queue.shift();
    if (this.inFlight > 0 || this.queue.length === 0) {
      if (this.inFlight === 0) this.notifyIdle();
      return;
    }
    const waited = performance.now() - this.queue[0]!.at;
    if (this.queue.length < this.options.maxBatch && waited < this.options.maxWaitMs) {
      this.timer ??= setTimeout(() => {
        this.timer = null;
        this.pump();
      }, Math.max(0, this.options.maxWaitMs - waited));
      return;
    }
    if (this.timer) {
      clearTimeout(this.timer);
      this.timer = null;
    }
    const rows: Row[] = [];
    while (rows.length < this.options.maxBatch && this.queue.length) {
      const r = this.queue.shift()!;
      if (!r.request.done) rows.push(r);
    }
    this.observer.queue?.(this.queue.length);
    if (rows.length === 0) return this.pump();
    this.inFlight++;
    void this.run(rows).finally(() => {
      this.inFlight--;
      this.pump();
    });
  }

  private async run(rows: Row[]): Promise<void> {
    try {
      const { value, ms } = await this.engine.predict(rows.map((r) => ({ task: r.task, record: r.record, topK: r.topK })));
      this.secondsPerBatch = 0.8 * this.secondsPerBatch + 0.2 * (ms / 1000);
      this.observer.batch?.(rows.length, new Set(rows.map((r) => r.task)).size, ms / 1000);
      rows.forEach((r, i) => {
        const q = r.request;
        q.results[r.index] = value[i]!;
        if (--q.remaining === 0 && !q.done) {
          q.done = true;
          q.resolve(q.results);
        }
      });
    } catch (e) {
      for (const r of rows) {
        if (!r.request.done) {
          r.request.done = true;
          r.request.reject(e as Error);
        }
      }
    }
  }

  private notifyIdle(): void {
    const waiting = this.idle;
    this.idle = [];
    for (const f of waiting) f();
  }

  /** Resolves when no row waits and no forward runs. */
  drained(): Promise<void> {
    if (this.queue.length === 0 && this.inFlight === 0) return Promise.resolve();
    return new Promise((resolve) => this.idle.push(resolve));
  }
}
