import fs from 'node:fs';
import path from 'node:path';
import type { Parameter } from '../engine/tensor.js';
import { makeRng } from '../util/rng.js';
import type { Progress } from '../util/progress.js';
import { clipGradNorm, type OptimizerState } from './optim.js';
import { loadOptimizerState, loadParams, resolveCheckpointDir, saveOptimizerState, saveParams, writeCheckpointDir, writeFileAtomic, writeJsonAtomic } from './checkpoint.js';
import { readTrainState } from './files.js';

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

export interface TrainLoopOptions<E> {
  runDir: string;
  config: TrainLoopConfig;
  task: TrainTask<E>;
  /** the parameters being trained, by checkpoint name */
  params: Map<string, Parameter>;
  optimizer: TrainOptimizer;
  /** learning-rate multiplier for optimizer step `step` (0-based) in epoch `epoch` */
  lrScale(step: number, epoch: number): number;
  /** continue from `runDir/last` when it exists */
  resume: boolean;
  progress?: Progress;
  /** extra files for best/ by name (e.g. the exported prompt table) */
  onSaveBest?(): Promise<Record<string, Uint8Array>>;
  /** when training ends, load the weights of best/ into `params`, so the model is the one the dev score selected */
  restoreBest?: boolean;
  /** polled after every optimizer step: true ends training with a checkpoint of the current step */
  stopRequested?: () => boolean;
  /**
   * called once everything has been read and checked (the checkpoint to resume from included), before the loop
   * writes anything into `runDir`
   */
  onStart?: (resumedFrom: TrainState | null) => void;
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

/** Drops metrics.jsonl lines logged after `step` (a run resumed from a checkpoint at `step` logs them again). */
function truncateMetrics(file: string, step: number): void {
  if (!fs.existsSync(file)) return;
  const kept = fs
    .readFileSync(file, 'utf8')
    .split('\n')
    .filter((line) => {
      if (!line.trim()) return false;
      try {
        return (JSON.parse(line) as { step?: number }).step! <= step;
      } catch {
        return false;
      }
    });
  writeFileAtomic(file, kept.map((l) => l + '\n').join(''));
}

function initialState(): TrainState {
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
 * steps or per epoch, early stopping with patience, `best/` and `last/` checkpoints written atomically,
 * `metrics.jsonl`, exact resume from `last/`, and a stop on a non-finite loss that keeps the last good checkpoint.
 */
export async function trainLoop<E>(o: TrainLoopOptions<E>): Promise<TrainResult> {
  const { config: c, task, params, optimizer, runDir } = o;
  const t0 = Date.now();
  const metricsFile = path.join(runDir, 'metrics.jsonl');
  const logMetric = (rec: Record<string, unknown>) => fs.appendFileSync(metricsFile, JSON.stringify(rec) + '\n');

  let state = initialState();
  const lastDir = path.join(runDir, 'last');
  const bestDir = path.join(runDir, 'best');
  const resumeFrom = o.resume ? resolveCheckpointDir(lastDir) : null;
  if (resumeFrom) {
    // everything read and checked before anything is loaded into the parameters
    state = readTrainState(path.join(resumeFrom, 'state.json'));
    const optState = loadOptimizerState(path.join(resumeFrom, 'optimizer.safetensors'));
    loadParams(path.join(resumeFrom, 'params.safetensors'), params);
    optimizer.loadState(optState);
    if (state.task !== undefined) task.restoreState?.(state.task);
    if (state.finished && !stillFinished(state, c)) {
      o.progress?.log(`the run had stopped (${state.stopReason}); the new limits let it go on`);
      state.finished = false;
      state.stopReason = '';
    }
  }
  o.onStart?.(resumeFrom ? { ...state } : null);
  if (resumeFrom) {
    truncateMetrics(metricsFile, state.step);
    o.progress?.log(`resuming from ${resumeFrom}: epoch ${state.epoch + 1}, step ${state.step}`);
  } else if (fs.existsSync(metricsFile)) {
    fs.rmSync(metricsFile);
  }

  fs.mkdirSync(runDir, { recursive: true });
  let saved = resumeFrom !== null;
  const saveLast = () => {
    state.task = task.saveState?.();
    state.lossSum = lossSum;
    state.lossCount = lossCount;
    writeCheckpointDir(lastDir, (dir) => {
      saveParams(path.join(dir, 'params.safetensors'), params);
      saveOptimizerState(path.join(dir, 'optimizer.safetensors'), optimizer.state());
      writeJsonAtomic(path.join(dir, 'state.json'), state);
    });
    saved = true;
  };
  const saveBest = async (dev: DevResult) => {
    const files: Record<string, Uint8Array> = (await o.onSaveBest?.()) ?? {};
    writeCheckpointDir(bestDir, (dir) => {
      saveParams(path.join(dir, 'params.safetensors'), params);
      writeJsonAtomic(path.join(dir, 'state.json'), { ...state, dev });
      for (const [name, bytes] of Object.entries(files)) fs.writeFileSync(path.join(dir, name), bytes);
    });
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
          const where = saved ? `the last good checkpoint is in ${resolveCheckpointDir(lastDir) ?? lastDir}` : 'no checkpoint was written yet';
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
      if (o.stopRequested?.()) {
        state.stopReason = `interrupted at step ${state.step}`;
        saveLast();
        o.progress?.stop();
        throw new TrainingInterrupted(state.step, resolveCheckpointDir(lastDir) ?? lastDir);
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
  const best = o.restoreBest ? resolveCheckpointDir(bestDir) : null;
  if (best) loadParams(path.join(best, 'params.safetensors'), params);
  return { ...state, lastDev, seconds: (Date.now() - t0) / 1000 };
}
