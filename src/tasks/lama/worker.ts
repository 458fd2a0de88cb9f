/**
 * One LAMA (mode, relation) task, and the child-process side of `runLama`'s worker pool.
 *
 * A `LamaTaskRunner` loads the model once (frozen; shared by the manual and P-tuning modes), the answer
 * vocabulary once, and each relation's filtered facts once; fine-tuning loads a fresh trainable copy of the LM
 * per relation. Run as a script (`child_process.fork`), this module answers task messages over IPC.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { initEngine } from '../../engine/index.js';
import { loadModel } from '../../models/load.js';
import type { LanguageModel } from '../../models/model.js';
import { fromLamaTemplate, withAnchorsAndPseudo } from '../../prompt/template.js';
import { DEFAULT_LOOP, DEFAULT_OPTIM, PTuningSession, type RunConfig } from '../../train/session.js';
import { DEEP_DEFAULTS } from '../../train/defaults.js';
import { NonFiniteLossError } from '../../train/trainer.js';
import type { Progress } from '../../util/progress.js';
import { makeRng } from '../../util/rng.js';
import {
  FACT_SETS,
  filterRelation,
  listRelations,
  loadAnswerVocab,
  loadRelation,
  majorityObject,
  missingFilesStatus,
  type AnswerableFact,
  type FactSet,
  type RelationInfo,
} from './data.js';
import { majorityHits } from './metrics.js';
import {
  relationDir,
  saveRelationResult,
  skippedResult,
  toPredictions,
  writePredictions,
  type LamaRelationResult,
} from './report.js';
import type { LamaMode, LamaSettings, LamaTrainSettings } from './run.js';

/** A saved result with what training did (best_epoch is 1-based; 0 for untrained modes). */
export type LamaTaskResult = LamaRelationResult & { best_epoch?: number; stop_reason?: string };

interface RelationFacts {
  info: RelationInfo;
  /** the filtered train facts before any cap: the majority baseline counts these */
  allTrain: AnswerableFact[] | null;
  train: AnswerableFact[] | null;
  dev: AnswerableFact[] | null;
  test: AnswerableFact[] | null;
  missing: FactSet[];
  dropped: Record<FactSet, number>;
}

const TRAINED: readonly LamaMode[] = ['ptune', 'manual+ptune', 'ptune-lm', 'prefix', 'prompt-tuning', 'finetune'];
/** modes that change the LM's weights: a fresh copy per relation */
const TUNES_LM: readonly LamaMode[] = ['finetune', 'ptune-lm'];

/** The sets a mode reads: manual only scores test; majority counts train objects; trained modes use all three. */
function neededSets(mode: LamaMode): FactSet[] {
  if (mode === 'manual') return ['test'];
  if (mode === 'majority') return ['train', 'test'];
  return [...FACT_SETS];
}

/** `n` facts drawn without replacement by a seed fixed per (relation, set), kept in file order. */
export function capFacts<T>(facts: T[], n: number | undefined, key: string): T[] {
  if (n === undefined || facts.length <= n) return facts;
  let seed = 17;
  for (const ch of key) seed = (Math.imul(seed, 31) + ch.charCodeAt(0)) >>> 0;
  const rng = makeRng(seed);
  const order = [...facts.keys()];
  for (let i = order.length - 1; i > 0; i--) {
    const j = Math.floor(rng() * (i + 1));
    [order[i], order[j]] = [order[j]!, order[i]!];
  }
  return order
    .slice(0, n)
    .sort((a, b) => a - b)
    .map((i) => facts[i]!);
}

export class LamaTaskRunner {
  private lm: LanguageModel | null = null;
  private vocab: number[] | null = null;
  private relations: Map<string, RelationInfo> | null = null;
  private readonly facts = new Map<string, RelationFacts>();

  constructor(readonly settings: LamaSettings) {}

  private async frozenLm(): Promise<LanguageModel> {
    if (!this.lm) this.lm = await loadModel(this.settings.model, { quantize: this.settings.quantize });
    return this.lm;
  }

  private async answerVocab(): Promise<number[]> {
    if (!this.vocab) {
      const lm = await this.frozenLm();
      this.vocab = loadAnswerVocab(this.settings.data, this.settings.vocab, this.settings.model, lm.tokenizer);
    }
    return this.vocab;
  }

  private async relationFacts(rel: string): Promise<RelationFacts> {
    const cached = this.facts.get(rel);
    if (cached) return cached;
    const s = this.settings;
    this.relations ??= new Map(listRelations(s.data, s.split).map((r) => [r.id, r]));
    const info = this.relations.get(rel);
    if (!info) throw new Error(`relation ${rel} is not in ${s.data} (split ${s.split})`);
    const lm = await this.frozenLm();
    const filtered = filterRelation(loadRelation(s.data, s.split, rel), await this.answerVocab(), lm.tokenizer);
    const cap = (set: FactSet) => {
      const facts = filtered[set];
      return facts === null ? null : capFacts(facts, s.maxFacts[set], `${rel}/${set}`);
    };
    const dropped = { train: 0, dev: 0, test: 0 };
    for (const set of FACT_SETS) dropped[set] = filtered.counts[set]?.dropped ?? 0;
    const out: RelationFacts = { info, allTrain: filtered.train, train: cap('train'), dev: cap('dev'), test: cap('test'), missing: filtered.missing, dropped };
    this.facts.set(rel, out);
    return out;
  }

  /** Runs one task, saves its result.json (and predictions), and returns the result. */
  async run(mode: LamaMode, rel: string, onStatus: (text: string) => void = () => {}): Promise<LamaTaskResult> {
    const t0 = Date.now();
    const f = await this.relationFacts(rel);
    const base: Partial<LamaRelationResult> = {
      label: f.info.label,
      n_train: f.train?.length ?? 0,
      n_dev: f.dev?.length ?? 0,
      n_test: f.test?.length ?? 0,
      dropped: f.dropped,
    };
    const missing = neededSets(mode).filter((set) => f[set] === null);
    const empty = neededSets(mode).filter((set) => f[set]?.length === 0);
    let result: LamaTaskResult;
    if (missing.length > 0) {
      result = skippedResult(mode, rel, missingFilesStatus(missing), base);
    } else if (empty.length > 0) {
      result = skippedResult(mode, rel, `no ${empty.join(', ')} facts after filtering`, base);
    } else if (mode !== 'majority' && f.info.template === undefined) {
      result = skippedResult(mode, rel, 'no manual template in relations.jsonl', base);
    } else {
      const majority = f.allTrain && f.allTrain.length > 0 ? majorityObject(f.allTrain) : undefined;
      const maj = majorityHits(majority, f.test!);
      const common = { ...base, majority, majority_p1: f.allTrain ? maj.hits / maj.n : null };
      if (mode === 'majority') {
        result = { ...skippedResult(mode, rel, 'ok', common), test_p1: maj.hits / maj.n, test_hits: maj.hits };
      } else {
        result = { ...skippedResult(mode, rel, 'ok', common), ...(await this.runLm(mode, rel, f, onStatus)) };
      }
    }
    result.seconds = (Date.now() - t0) / 1000;
    saveRelationResult(this.settings.out, result);
    return result;
  }

  private templateFor(mode: LamaMode, f: RelationFacts, lm: LanguageModel): string {
    const kind = lm.info.kind;
    const manual = f.info.template!;
    switch (mode) {
      case 'manual':
      case 'finetune':
      case 'prefix':
      case 'prompt-tuning':
        return fromLamaTemplate(manual, { kind });
      case 'manual+ptune':
        return withAnchorsAndPseudo(manual, { pseudo: this.settings.pseudo, kind }).text;
      default:
        return this.settings.template ?? (kind === 'causal' ? '3,3,0' : '3,3,3');
    }
  }

  private async runLm(
    mode: LamaMode,
    rel: string,
    f: RelationFacts,
    onStatus: (text: string) => void,
  ): Promise<Partial<LamaTaskResult>> {
    const s = this.settings;
    const frozen = await this.frozenLm();
    const tunesLm = TUNES_LM.includes(mode);
    const deep = mode === 'prefix' || mode === 'prompt-tuning';
    const train: LamaTrainSettings = tunesLm ? s.finetune : deep ? s.deep : s.ptune;
    const config: RunConfig = {
      version: 1,
      model: s.model,
      template: this.templateFor(mode, f, frozen),
      head: { kind: 'answer', answerField: 'obj_label', answerVocab: await this.answerVocab() },
      encoder: { type: 'lstm', seed: s.seed },
      maxLength: Math.min(frozen.info.maxPositions - (mode === 'prefix' ? s.virtualTokens : 0), 256),
      skipTooLong: false,
      ...(mode === 'prefix' && { method: 'prefix' as const, prefix: { numVirtualTokens: s.virtualTokens, projection: DEEP_DEFAULTS.projection } }),
      ...(mode === 'prompt-tuning' && { method: 'prompt-tuning' as const, promptTuning: { numVirtualTokens: s.virtualTokens } }),
      loop: {
        ...DEFAULT_LOOP,
        epochs: train.epochs,
        batchSize: train.batchSize,
        patience: train.patience,
        saveEvery: 0,
        logEvery: 20,
        seed: s.seed,
      },
      optim:
        mode === 'finetune'
          ? { ...DEFAULT_OPTIM, tuneLm: true, lmLr: train.lr, lmWeightDecay: train.weightDecay, schedule: train.schedule, gamma: train.gamma }
          : mode === 'ptune-lm'
            ? { ...DEFAULT_OPTIM, lr: s.ptune.lr, tuneLm: true, lmLr: train.lr, lmWeightDecay: train.weightDecay, schedule: train.schedule, gamma: train.gamma }
            : { ...DEFAULT_OPTIM, lr: train.lr, weightDecay: train.weightDecay, schedule: train.schedule, gamma: train.gamma },
      ...(s.quantize && !tunesLm && { quantize: s.quantize }),
    };
    // tuning the LM changes its weights: a fresh copy per relation, never the shared one
    const session = await PTuningSession.create(config, tunesLm ? undefined : frozen);
    try {
      const out: Partial<LamaTaskResult> = { template: session.template.text };
      const dir = relationDir(s.out, mode, rel);
      if (TRAINED.includes(mode)) {
        const runDir = path.join(dir, 'train');
        onStatus(`${mode} ${rel}: training`);
        let trained;
        try {
          trained = await session.train({
            runDir,
            resume: sameConfig(runDir, config),
            train: records(f.train!),
            dev: records(f.dev!),
            progress: statusProgress(`${mode} ${rel}`, onStatus),
            restoreBest: true,
          });
        } catch (e) {
          if (e instanceof NonFiniteLossError) return { status: `training diverged (${e.message.split(';')[0]})` };
          throw e;
        }
        out.dev_p1 = trained.bestScore;
        out.epochs = trained.epoch;
        out.best_epoch = trained.bestEpoch + 1;
        out.stop_reason = trained.stopReason;
        fs.rmSync(path.join(runDir, 'last'), { recursive: true, force: true });
        if (tunesLm && !s.keepCheckpoints) fs.rmSync(path.join(runDir, 'best'), { recursive: true, force: true });
      } else {
        onStatus(`${mode} ${rel}: scoring`);
        if (f.dev && f.dev.length > 0) out.dev_p1 = (await session.evaluateItems(session.prepare(records(f.dev), `${rel} dev`).items)).metrics['p@1']!;
      }
      onStatus(`${mode} ${rel}: testing`);
      const test = f.test!;
      const { items } = session.prepare(records(test), `${rel} test`);
      if (items.length !== test.length) throw new Error(`${rel} test: ${test.length - items.length} facts did not render`);
      const { top, topScores } = await session.rank(items, s.topK);
      const tok = session.lm.tokenizer;
      const ranked = top.map((ids, r) => ids.map((id, j) => ({ id, score: Number(Math.exp(topScores[r]![j]!).toPrecision(6)) })));
      const predictions = toPredictions(test, ranked, (id) => tok.decode([id]).trim());
      writePredictions(s.out, mode, rel, predictions);
      const hits = predictions.filter((p) => p.hit).length;
      return { ...out, test_p1: hits / test.length, test_hits: hits };
    } finally {
      session.dispose({ keepLm: !tunesLm });
    }
  }

  dispose(): void {
    this.lm?.dispose();
    this.lm = null;
  }
}

const records = (facts: AnswerableFact[]) => facts as unknown as Record<string, unknown>[];

/** Resume a relation's training only when it was started with exactly this configuration. */
function sameConfig(runDir: string, config: RunConfig): boolean {
  const file = path.join(runDir, 'config.json');
  if (!fs.existsSync(file)) return false;
  try {
    return JSON.stringify(JSON.parse(fs.readFileSync(file, 'utf8'))) === JSON.stringify(config);
  } catch {
    return false;
  }
}

/** Training progress as one status line, at most every 500 ms. */
function statusProgress(what: string, onStatus: (text: string) => void): Progress {
  let total = 0;
  let last = 0;
  return {
    start(n) {
      total = n;
    },
    update(done, fields = {}) {
      const now = Date.now();
      if (now - last < 500 && done < total) return;
      last = now;
      const extra = [
        fields.epoch !== undefined ? `epoch ${fields.epoch}` : '',
        typeof fields.loss === 'number' ? `loss ${fields.loss.toFixed(3)}` : '',
        typeof fields.dev === 'number' ? `dev ${(fields.dev * 100).toFixed(1)}` : '',
      ].filter(Boolean);
      onStatus(`${what}: step ${done}/${total} ${extra.join(' ')}`);
    },
    log() {},
    stop() {},
  };
}

// ---------------------------------------------------------------------------------------------------------------
// Child-process side

export type ToWorker = { type: 'init'; settings: LamaSettings } | { type: 'task'; mode: LamaMode; relation: string } | { type: 'exit' };
export type FromWorker =
  | { type: 'ready' }
  | { type: 'status'; text: string }
  | { type: 'done'; result: LamaTaskResult }
  | { type: 'error'; message: string };

function serve(): void {
  let runner: LamaTaskRunner | null = null;
  const send = (m: FromWorker) => process.send!(m);
  let queue = Promise.resolve();
  process.on('message', (m: ToWorker) => {
    queue = queue.then(async () => {
      try {
        if (m.type === 'init') {
          await initEngine();
          runner = new LamaTaskRunner(m.settings);
          send({ type: 'ready' });
        } else if (m.type === 'task') {
          const result = await runner!.run(m.mode, m.relation, (text) => send({ type: 'status', text }));
          send({ type: 'done', result });
        } else {
          runner?.dispose();
          process.disconnect();
        }
      } catch (e) {
        send({ type: 'error', message: (e as Error).message.split('\n')[0]! });
      }
    });
  });
}

if (process.send && process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) serve();
