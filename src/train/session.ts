import fs from 'node:fs';
import path from 'node:path';
import { writeSafetensors } from '../engine/safetensors.js';
import { loadModel } from '../models/load.js';
import type { LanguageModel } from '../models/model.js';
import { readRecords } from '../data/read.js';
import type { Progress } from '../util/progress.js';
import { loadParams, resolveCheckpointDir, writeJsonAtomic } from './checkpoint.js';
import { trainLoop, type TrainResult, type TrainState } from './trainer.js';
import { readRunConfig } from './files.js';
import { checkQuantize, classificationMetrics, primaryMetric, PTuning, runtimeRecord, type EvalResult, type RunConfig } from './tuning.js';
import { describeBaselines, devBaselines, type Baselines } from './baselines.js';
import { UserError } from '../util/errors.js';
import type { QuantizeOptions } from '../models/quantize.js';

export {
  checkQuantize, classificationMetrics, DEFAULT_LOOP, DEFAULT_METHOD, DEFAULT_OPTIM, leadingPseudo, METHODS, primaryMetric, PTuning, recordId,
  TrainingStopped, withPeftPrefix, type EvalResult, type Item, type MethodName, type OptimConfig, type Prediction, type RunConfig,
} from './tuning.js';

/**
 * A P-tuning run on disk: PTuning (tuning.ts: the template, encoder, head, programs, evaluation, prediction)
 * with its model loaded from a directory or the Hub, run directories with atomic checkpoints and resume, and
 * data read from files.
 */
export class PTuningSession extends PTuning {
  private constructor(config: RunConfig, lm: LanguageModel) {
    super(config, lm);
  }

  static override async create(config: RunConfig, lm?: LanguageModel): Promise<PTuningSession> {
    // refused before anything is loaded
    checkQuantize(config, lm);
    const model = lm ?? (await loadModel(config.model, { trainable: config.optim.tuneLm, quantize: config.quantize }));
    const s = new PTuningSession(config, model);
    await s.initialise();
    return s;
  }

  /**
   * Rebuilds a run from its directory, with the weights of `best/` (default) or `last/`. `quantize` overrides
   * the run's own setting (null: float32).
   */
  static async load(runDir: string, which: 'best' | 'last' = 'best', lm?: LanguageModel, opts: { quantize?: QuantizeOptions | null } = {}): Promise<PTuningSession> {
    const cfgFile = path.join(runDir, 'config.json');
    if (!fs.existsSync(cfgFile)) throw new UserError(`${cfgFile} not found: not a ptune run directory`);
    const { quantize: own, ...rest } = readRunConfig(cfgFile);
    const quantize = opts.quantize === undefined ? own : opts.quantize;
    const config: RunConfig = { ...rest, ...(quantize && { quantize }) };
    const s = await PTuningSession.create(config, lm);
    const weights = path.join(resolveCheckpointDir(path.join(runDir, which)) ?? path.join(runDir, which), 'params.safetensors');
    if (!fs.existsSync(weights)) throw new UserError(`${weights} not found: the run has no ${which} checkpoint yet`);
    loadParams(weights, s.trainedParams());
    return s;
  }

  async evaluateFile(file: string): Promise<EvalResult> {
    const { items, skipped } = this.prepare(readRecords(file), file);
    const r = await this.evaluateItems(items, skipped);
    r.metrics.skipped = skipped;
    return r;
  }

  /** Trains on `config.data` (or the given records) and writes the run directory. */
  async train(opts: {
    runDir: string;
    resume?: boolean;
    progress?: Progress;
    train?: Record<string, unknown>[];
    dev?: Record<string, unknown>[];
    /** end with the weights of best/ loaded (default: the last step's weights stay) */
    restoreBest?: boolean;
    /** polled after each step: true stops with a checkpoint (see trainLoop) */
    stopRequested?: () => boolean;
    /** measure the majority and zero-shot dev baselines first (default true; skipped when resuming) */
    baselines?: boolean;
    /**
     * called once the data, the configuration and (on resume) the checkpoint have all been read and checked,
     * before the first file of the run is written
     */
    beforeWrite?: (resumedFrom: TrainState | null) => void;
  }): Promise<TrainResult & { trainSkipped: number; devSkipped: number; baselines?: Baselines }> {
    const { runDir } = opts;
    const c = this.config;
    const trainRecords = opts.train ?? readRecords(c.data!.train);
    const devRecords = opts.dev ?? readRecords(c.data!.dev);
    const tr = this.prepare(trainRecords, c.data?.train ?? 'train');
    const dv = this.prepare(devRecords, c.data?.dev ?? 'dev');
    if (tr.items.length === 0) throw new UserError('no training examples left after rendering');
    const runtime = await runtimeRecord();
    // measured before the first file is written; saved with the run's config
    const baselines = (opts.baselines ?? true) && !opts.resume ? await devBaselines(this, tr.items, dv.items, devRecords, classificationMetrics) : undefined;
    const o = this.loopOptions(tr.items, dv.items, opts);
    try {
      const result = await trainLoop({
        ...o,
        runDir,
        resume: opts.resume ?? false,
        onStart: (resumedFrom) => {
          opts.beforeWrite?.(resumedFrom);
          writeJsonAtomic(path.join(runDir, 'config.json'), { ...c, runtime });
          if (baselines) {
            writeJsonAtomic(path.join(runDir, 'baselines.json'), baselines);
            opts.progress?.log(describeBaselines(baselines, primaryMetric(this.head)));
          }
        },
      });
      return { ...result, trainSkipped: tr.skipped, devSkipped: dv.skipped, ...(baselines && { baselines }) };
    } finally {
      o.optimizer.dispose();
    }
  }

  async savePromptTable(file: string): Promise<void> {
    const table = await this.promptTable();
    if (table) writeSafetensors(file, { prompt_embeddings: table });
  }

  /** Another session over the same LM (e.g. the zero-shot reading of this one's template). */
  override variant(config: RunConfig): Promise<PTuningSession> {
    return PTuningSession.create(config, this.lm);
  }
}
