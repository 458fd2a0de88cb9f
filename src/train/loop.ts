import type { Parameter } from '../engine/tensor.js';
import { makeRng } from '../util/rng.js';
import type { Progress } from '../util/progress.js';
import { clipGradNorm, type OptimizerState } from './optim.js';

/** What the training loop needs from an optimizer (Adam and AdamW in optim.ts). */
export interface TrainOptimizer {
  step(grads: Map<string, Float32Array>, lrScale: number): void;
  state(): OptimizerState;
  loadState(state: OptimizerState): void;
}

export interface TrainLoopConfig {
  epochs: number;
  /** stop after this many optimizer steps (0: no limit) */
  maxSteps: number;
  batchSize: number;
  /** micro-batches per optimizer step */
  gradAccum: number;
  /** global L2 norm clip; 0 = off */
  maxGradNorm: number;
  /** evaluate every N optimizer steps; 0 = at the end of each epoch */
  evalEvery: number;
  /** stop after this many evaluations without a better dev score; 0 = never */
  patience: number;
  /** write `last/` every N optimizer steps (besides every evaluation); 0 = only at evaluations */
  saveEvery: number;
  /** log the training loss to metrics.jsonl every N optimizer steps */
  logEvery: number;
  seed: number;
}

export interface DevResult {
  /** higher is better; drives model selection and early stopping */
  score: number;
  metrics: Record<string, number>;
}

export interface TrainTask<E> {
  examples: E[];
  /**
   * Mean loss of a micro-batch, its gradients written into the `grad` buffers of the parameters it returns
   * (a training program run).
   */
  lossAndGrads(batch: E[]): Promise<{ loss: number; graded: Parameter[] }>;
  evaluate(): Promise<DevResult>;
  /** state outside the parameters that an exact resume needs (e.g. a dropout stream), saved with `last/` */
  saveState?(): unknown;
  restoreState?(state: unknown): void;
}

export interface TrainState {
  /** the task's own state (saveState) at this point */
  task?: unknown;
  epoch: number;
  /** micro-batches already done in `epoch` */
  batchInEpoch: number;
  step: number;
  bestScore: number | null;
  bestStep: number;
  bestEpoch: number;
  evalsWithoutGain: number;
  finished: boolean;
  stopReason: string;
  /** training losses summed since the last `train` line of metrics.jsonl (a resumed run's next line averages them too) */
  lossSum?: number;
  lossCount?: number;
}

export interface TrainResult extends TrainState {
  lastDev: DevResult | null;
  seconds: number;
}

/** What the loop needs of a training run, wherever its state is kept (trainer.ts: a run directory). */
export interface LoopOptions<E> {
  config: TrainLoopConfig;
  task: TrainTask<E>;
  /** the parameters being trained, by checkpoint name */
  params: Map<string, Parameter>;
  optimizer: TrainOptimizer;
  /** learning-rate multiplier for optimizer step `step` (0-based) in epoch `epoch` */
  lrScale(step: number, epoch: number): number;
  progress?: Progress;
  /** extra files saved with the best weights, by name (e.g. the exported prompt table) */
  onSaveBest?(): Promise<Record<string, Uint8Array>>;
  /** when training ends, load the best weights into `params`, so the model is the one the dev score selected */
  restoreBest?: boolean;
  /** polled after every optimizer step: true ends training with a checkpoint of the current step */
  stopRequested?: () => boolean;
  /** awaited after every optimizer step (a page yields to its renderer here) */
  afterStep?: () => Promise<void>;
  /**
   * called once everything has been read and checked (the state to resume from included), before the store
   * writes anything
   */
  onStart?: (resumedFrom: TrainState | null) => void;
}

/**
 * Where a training run keeps what it saves: metrics lines, the last state (for resume), the best weights.
 * trainer.ts keeps them in a run directory; `memoryStore` keeps the best weights in memory and nothing else.
 */
export interface TrainStore {
  /**
   * The state to continue from, with `params`, the optimizer and the task restored to it; null: start afresh.
   * Reads and checks only: nothing is written before `open`.
   */
  begin(params: Map<string, Parameter>, optimizer: TrainOptimizer, task: TrainTask<unknown>): TrainState | null;
  /** Makes the store ready for writing, after `onStart` (a run directory drops the metrics lines after `resumed`). */
  open?(resumed: TrainState | null): void;
  /** one metrics record (`type` train / eval / error) */
  log(record: Record<string, unknown>): void;
  saveLast(state: TrainState, params: Map<string, Parameter>, optimizer: TrainOptimizer): void;
  saveBest(state: TrainState, dev: DevResult, params: Map<string, Parameter>, files: Record<string, Uint8Array>): void;
  /** Loads the best weights saved so far into `params` (nothing when none were). */
  restoreBest(params: Map<string, Parameter>): void;
  /** where the last saved state is, for messages; null when none was saved */
  lastSaved(): string | null;
}

export class NonFiniteLossError extends Error {}

/** Training stopped on request (a signal) after writing a checkpoint of the current step. */
export class TrainingInterrupted extends Error {
  constructor(
    readonly step: number,
    readonly checkpoint: string,
  ) {
    super(`training interrupted at step ${step}; checkpoint written to ${checkpoint}`);
  }
}

export function initialState(): TrainState {
  return {
    epoch: 0,
    batchInEpoch: 0,
    step: 0,
    bestScore: null,
    bestStep: -1,
    bestEpoch: -1,
    evalsWithoutGain: 0,
    finished: false,
    stopReason: '',
  };
}

/**
 * Whether a finished run stays finished under (possibly changed) limits: a resume with a larger --epochs,
 * --max-steps or --patience goes on from where the run stopped.
 */
export function stillFinished(state: TrainState, c: TrainLoopConfig): boolean {
  if (state.epoch >= c.epochs) return true;
  if (c.maxSteps > 0 && state.step >= c.maxSteps) return true;
  return state.stopReason.startsWith('early stop') && c.patience > 0 && state.evalsWithoutGain >= c.patience;
}

/** Order of the examples in `epoch`: a permutation that depends only on (seed, epoch), so resume reproduces it. */
export function epochOrder(n: number, seed: number, epoch: number): number[] {
  const rng = makeRng((seed * 1_000_003 + epoch * 7919) >>> 0);
  const order = [...Array(n).keys()];
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(rng() * (i + 1));
    [order[i], order[j]] = [order[j]!, order[i]!];
  }
  return order;
}

/**
 * The training loop: seeded epoch order, gradient accumulation and clipping, a schedule, evaluation every N
 * steps or per epoch, early stopping with patience, the last state and the best weights saved to `store`,
 * metrics lines, exact resume from the store's last state, and a stop on a non-finite loss that keeps the last
 * good state. Nothing here touches storage itself: trainer.ts runs it over a run directory, a page in memory.
 */
export async function runLoop<E>(o: LoopOptions<E>, store: TrainStore): Promise<TrainResult> {
  const { config: c, task, params, optimizer } = o;
  const t0 = Date.now();
  const logMetric = (rec: Record<string, unknown>) => store.log(rec);

  const resumed = store.begin(params, optimizer, task as TrainTask<unknown>);
  const state = resumed ?? initialState();
  if (resumed && state.finished && !stillFinished(state, c)) {
    o.progress?.log(`the run had stopped (${state.stopReason}); the new limits let it go on`);
    state.finished = false;
    state.stopReason = '';
  }
  o.onStart?.(resumed ? { ...state } : null);
  store.open?.(resumed);

  const saveLast = () => {
    state.task = task.saveState?.();
    state.lossSum = lossSum;
    state.lossCount = lossCount;
    store.saveLast(state, params, optimizer);
  };
  const saveBest = async (dev: DevResult) => {
    const files: Record<string, Uint8Array> = (await o.onSaveBest?.()) ?? {};
    store.saveBest(state, dev, params, files);
  };

  let lastDev: DevResult | null = null;
  /** `epoch`: the epoch the evaluated weights are in (0-based) */
  const evaluate = async (epoch = state.epoch): Promise<boolean> => {
    const dev = await task.evaluate();
    lastDev = dev;
    const better = state.bestScore === null || dev.score > state.bestScore;
    if (better) {
      state.bestScore = dev.score;
      state.bestStep = state.step;
      state.bestEpoch = epoch;
      state.evalsWithoutGain = 0;
    } else {
      state.evalsWithoutGain++;
    }
    logMetric({ type: 'eval', step: state.step, epoch, score: dev.score, ...dev.metrics, best: better });
    o.progress?.log(`eval step ${state.step} epoch ${epoch + 1}: score ${dev.score.toFixed(4)}${better ? ' (best)' : ''}`);
    if (better) await saveBest(dev);
    return c.patience > 0 && state.evalsWithoutGain >= c.patience;
  };

  const n = task.examples.length;
  const batchesPerEpoch = Math.ceil(n / c.batchSize);
  const stepsPerEpoch = Math.ceil(batchesPerEpoch / c.gradAccum);
  const totalSteps = c.maxSteps > 0 ? Math.min(c.maxSteps, stepsPerEpoch * c.epochs) : stepsPerEpoch * c.epochs;
  o.progress?.start(totalSteps, 'train');
  let lossSum = state.lossSum ?? 0;
  let lossCount = state.lossCount ?? 0;
  const accBuffers = new Map<string, Float32Array>();

  outer: while (!state.finished && state.epoch < c.epochs) {
    const order = epochOrder(n, c.seed, state.epoch);
    while (state.batchInEpoch < batchesPerEpoch) {
      // gradients on the host: the compiled path hands them over as arrays, the optimizer reads arrays
      const accumulated = new Map<string, Float32Array>();
      let stepLoss = 0;
      let micro = 0;
      while (micro < c.gradAccum && state.batchInEpoch < batchesPerEpoch) {
        const start = state.batchInEpoch * c.batchSize;
        const batch = order.slice(start, start + c.batchSize).map((i) => task.examples[i]!);
        const { loss: lossValue, graded } = await task.lossAndGrads(batch);
        if (!Number.isFinite(lossValue)) {
          logMetric({ type: 'error', step: state.step, epoch: state.epoch, loss: lossValue });
          o.progress?.stop();
          const last = store.lastSaved();
          const where = last ? `the last good checkpoint is in ${last}` : 'no checkpoint was written yet';
          throw new NonFiniteLossError(`loss became ${lossValue} at step ${state.step + 1} (epoch ${state.epoch + 1}); training stopped, ${where}`);
        }
        const gradded = new Set(graded);
        for (const [name, p] of params) {
          if (!gradded.has(p)) continue;
          const prev = accumulated.get(name);
          if (!prev) {
            // with accumulation the sum needs its own buffer: the next micro-batch overwrites p.grad
            let acc = p.grad;
            if (c.gradAccum > 1) {
              acc = accBuffers.get(name) ?? new Float32Array(p.size);
              accBuffers.set(name, acc);
              acc.set(p.grad);
            }
            accumulated.set(name, acc);
          } else {
            const g = p.grad;
            for (let i = 0; i < prev.length; i++) prev[i] = prev[i]! + g[i]!;
          }
        }
        stepLoss += lossValue;
        micro++;
        state.batchInEpoch++;
      }
      if (micro > 1) {
        for (const g of accumulated.values()) for (let i = 0; i < g.length; i++) g[i] = g[i]! / micro;
      }
      const gradNorm = clipGradNorm(accumulated, c.maxGradNorm > 0 ? c.maxGradNorm : Infinity);
      const lr = o.lrScale(state.step, state.epoch);
      optimizer.step(accumulated, lr);
      state.step++;
      lossSum += stepLoss / micro;
      lossCount++;
      if (c.logEvery > 0 && state.step % c.logEvery === 0) {
        logMetric({ type: 'train', step: state.step, epoch: state.epoch, loss: lossSum / lossCount, lrScale: lr, gradNorm });
      }
      o.progress?.update(state.step, { epoch: state.epoch + 1, loss: lossSum / lossCount, ...(lastDev ? { dev: (lastDev as DevResult).score } : {}) });
      if (c.logEvery > 0 && state.step % c.logEvery === 0) {
        lossSum = 0;
        lossCount = 0;
      }
      const atMax = c.maxSteps > 0 && state.step >= c.maxSteps;
      if (c.evalEvery > 0 && state.step % c.evalEvery === 0) {
        if (await evaluate()) {
          state.finished = true;
          state.stopReason = `early stop: no dev gain in ${c.patience} evaluations`;
          saveLast();
          break outer;
        }
        saveLast();
      } else if (c.saveEvery > 0 && state.step % c.saveEvery === 0) {
        saveLast();
      }
      if (atMax) {
        state.finished = true;
        state.stopReason = `reached max steps ${c.maxSteps}`;
        if (c.evalEvery === 0 || state.step % c.evalEvery !== 0) await evaluate();
        saveLast();
        break outer;
      }
      await o.afterStep?.();
      if (o.stopRequested?.()) {
        state.stopReason = `interrupted at step ${state.step}`;
        saveLast();
        o.progress?.stop();
        throw new TrainingInterrupted(state.step, store.lastSaved() ?? 'memory');
      }
    }
    state.epoch++;
    state.batchInEpoch = 0;
    if (c.evalEvery === 0) {
      const stop = await evaluate(state.epoch - 1);
      if (stop) {
        state.finished = true;
        state.stopReason = `early stop: no dev gain in ${c.patience} evaluations`;
      }
    }
    saveLast();
  }
  if (!state.finished) {
    state.finished = true;
    state.stopReason = `completed ${c.epochs} epochs`;
    if (lastDev === null && state.bestScore === null) await evaluate(state.epoch - 1);
    saveLast();
  }
  o.progress?.stop();
  if (o.restoreBest) store.restoreBest(params);
  return { ...state, lastDev, seconds: (Date.now() - t0) / 1000 };
}

/**
 * A store that keeps the best weights (copies) and the files saved with them in memory, and hands each metrics
 * record to `onLog`: training without storage (a page), where a run is not resumed.
 */
export function memoryStore(onLog: (record: Record<string, unknown>) => void = () => undefined): TrainStore & {
  best: { state: TrainState; dev: DevResult; files: Record<string, Uint8Array> } | null;
} {
  let bestValues: Map<string, Float32Array> | null = null;
  return {
    best: null,
    begin: () => null,
    log: onLog,
    saveLast: () => undefined,
    saveBest(state, dev, params, files) {
      bestValues = new Map([...params].map(([name, p]) => [name, Float32Array.from(p.data)]));
      this.best = { state: { ...state }, dev, files };
    },
    restoreBest(params) {
      if (bestValues) for (const [name, p] of params) p.set(bestValues.get(name)!);
    },
    lastSaved: () => null,
  };
}
