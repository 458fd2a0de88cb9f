import fs from 'node:fs';
import path from 'node:path';
import type { Parameter } from '../engine/tensor.js';
import type { Progress } from '../util/progress.js';
import { loadOptimizerState, loadParams, resolveCheckpointDir, saveOptimizerState, saveParams, writeCheckpointDir, writeFileAtomic, writeJsonAtomic } from './checkpoint.js';
import { readTrainState } from './files.js';
import { runLoop, type LoopOptions, type TrainResult, type TrainStore } from './loop.js';

export {
  epochOrder, memoryStore, NonFiniteLossError, runLoop, stillFinished, TrainingInterrupted,
  type DevResult, type LoopOptions, type TrainLoopConfig, type TrainOptimizer, type TrainResult, type TrainState, type TrainStore, type TrainTask,
} from './loop.js';

export interface TrainLoopOptions<E> extends LoopOptions<E> {
  runDir: string;
  /** continue from `runDir/last` when it exists */
  resume: boolean;
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

/**
 * A run directory as the loop's store: `metrics.jsonl`, `last/` (weights, optimizer state, loop state) and `best/`
 * (weights and the files saved with them), each checkpoint folder written atomically; `resume` continues from
 * `last/` and drops the metrics lines logged after it.
 */
export function runDirStore(runDir: string, opts: { resume: boolean; progress?: Progress }): TrainStore {
  const metricsFile = path.join(runDir, 'metrics.jsonl');
  const lastDir = path.join(runDir, 'last');
  const bestDir = path.join(runDir, 'best');
  let saved = false;
  let resumeFrom: string | null = null;
  return {
    begin(params, optimizer, task) {
      resumeFrom = opts.resume ? resolveCheckpointDir(lastDir) : null;
      if (!resumeFrom) return null;
      // everything read and checked before anything is loaded into the parameters
      const state = readTrainState(path.join(resumeFrom, 'state.json'));
      const optState = loadOptimizerState(path.join(resumeFrom, 'optimizer.safetensors'));
      loadParams(path.join(resumeFrom, 'params.safetensors'), params);
      optimizer.loadState(optState);
      if (state.task !== undefined) task.restoreState?.(state.task);
      saved = true;
      return state;
    },
    open(resumed) {
      if (resumed && resumeFrom) {
        truncateMetrics(metricsFile, resumed.step);
        opts.progress?.log(`resuming from ${resumeFrom}: epoch ${resumed.epoch + 1}, step ${resumed.step}`);
      } else if (fs.existsSync(metricsFile)) {
        fs.rmSync(metricsFile);
      }
      fs.mkdirSync(runDir, { recursive: true });
    },
    log: (rec) => fs.appendFileSync(metricsFile, JSON.stringify(rec) + '\n'),
    saveLast(state, params, optimizer) {
      writeCheckpointDir(lastDir, (dir) => {
        saveParams(path.join(dir, 'params.safetensors'), params);
        saveOptimizerState(path.join(dir, 'optimizer.safetensors'), optimizer.state());
        writeJsonAtomic(path.join(dir, 'state.json'), state);
      });
      saved = true;
    },
    saveBest(state, dev, params, files) {
      writeCheckpointDir(bestDir, (dir) => {
        saveParams(path.join(dir, 'params.safetensors'), params);
        writeJsonAtomic(path.join(dir, 'state.json'), { ...state, dev });
        for (const [name, bytes] of Object.entries(files)) fs.writeFileSync(path.join(dir, name), bytes);
      });
    },
    restoreBest(params: Map<string, Parameter>) {
      const best = resolveCheckpointDir(bestDir);
      if (best) loadParams(path.join(best, 'params.safetensors'), params);
    },
    lastSaved: () => (saved ? (resolveCheckpointDir(lastDir) ?? lastDir) : null),
  };
}

/**
 * The training loop (loop.ts) over a run directory: `best/` and `last/` checkpoints written atomically,
 * `metrics.jsonl`, exact resume from `last/`, and a stop on a non-finite loss that keeps the last good checkpoint.
 */
export function trainLoop<E>(o: TrainLoopOptions<E>): Promise<TrainResult> {
  return runLoop(o, runDirStore(o.runDir, { resume: o.resume, progress: o.progress }));
}
