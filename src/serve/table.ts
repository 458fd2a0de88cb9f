import fs from 'node:fs';
import path from 'node:path';
import { readSafetensors, writeSafetensors } from '../engine/safetensors.js';
import type { HostTensor } from '../engine/tensor.js';
import { generate as generateIds } from '../models/generate.js';
import type { LanguageModel } from '../models/model.js';
import { makeHead, type Head, type HeadSpec } from '../prompt/heads.js';
import { batchFeeds, paddedLength, paddedRows } from '../prompt/ptuning.js';
import { collate, renderExample, type RenderedExample } from '../prompt/render.js';
import { fields, numPseudo, parseTemplate, validateFor, type Template } from '../prompt/template.js';
import { Verbalizer } from '../prompt/verbalizer.js';
import { resolveCheckpointDir, writeCheckpointDir, writeJsonAtomic } from '../train/checkpoint.js';
import { readPeftAdapter } from '../train/export.js';
import { PTuningSession, withPeftPrefix, type RunConfig } from '../train/session.js';
import { inputPlacement } from '../train/tuning.js';
import { readRunConfig } from '../train/files.js';
import { UserError } from '../util/errors.js';
import { baseDifference, fingerprintOf, modelFingerprint, type BaseModelId } from './fingerprint.js';
import { mixedLogitsProgram, type MixedOutputs } from './programs.js';

/** One task of a prompt table: how a record becomes the LM's input, its frozen prompt rows and its head. */
export interface TaskDefinition {
  template: string;
  legacyBertOrder?: boolean;
  head: HeadSpec;
  /** maximum tokens of a rendered record, special tokens included (capped at the model's positions) */
  maxLength: number;
  /**
   * an input longer than `maxLength` has its fields shrunk, longest first, as training did (default true);
   * false: such an input is an error
   */
  truncate?: boolean;
  /** PEFT placement: this many virtual tokens before everything (adapters without ptune's template) */
  peftPrefix?: number;
  /** frozen prompt rows [virtual tokens, embedding width] */
  prompt: HostTensor<Float32Array>;
  /** where the task came from (run or adapter directory), for listing */
  source?: string;
}

export interface TaskInfo {
  name: string;
  head: 'label' | 'answer';
  /** label heads: the labels */
  labels?: string[];
  template: string;
  /** record fields the template reads */
  fields: string[];
  maxLength: number;
  truncate: boolean;
  virtualTokens: number;
  /** the task can generate (causal LMs) */
  generate: boolean;
  source?: string;
}

/** A record a task cannot take: a missing or non-text field, or an input too long for the task. */
export class TaskInputError extends Error {
  constructor(
    message: string,
    readonly code: 'missing_field' | 'bad_field' | 'too_long',
    readonly field?: string,
  ) {
    super(message);
    this.name = 'TaskInputError';
  }
}

/** A task name the table does not hold. */
export class UnknownTaskError extends UserError {
  constructor(
    readonly task: string,
    names: string[],
  ) {
    super(`no task "${task}" (tasks: ${names.join(', ') || 'none'})`);
    this.name = 'UnknownTaskError';
  }
}

export interface ScoredLabel {
  label: string;
  /** probability (exp of the log-softmax over the head's classes) */
  score: number;
}

export interface TaskPrediction {
  prediction: string;
  score: number;
  top: ScoredLabel[];
}

export interface GenerationRequest {
  maxNewTokens: number;
  temperature?: number;
  topP?: number;
  seed?: number;
  /** the text ends before the first of these strings (which is cut off) */
  stop?: string[];
  /** false: recompute the whole sequence at every step (the cache's reference) */
  cache?: boolean;
  /**
   * each new token as it is chosen, with the text it adds; text that could still turn into a stop string is
   * held back, and what is left at the end comes through `onRest`, so the deltas add up to the final `text`
   */
  onToken?: (token: { id: number; token: string; text: string }) => void;
  onRest?: (text: string) => void;
}

export interface Generation {
  text: string;
  tokens: number[];
  /** stop: a stop string; eos: the model ended the text; length: max_new_tokens or the model's context */
  finishReason: 'stop' | 'eos' | 'length';
  promptTokens: number;
}

interface ForwardOutputs {
  /** token id → column of `candidates` */
  columns: Map<number, number>;
  candidates: { data: Float32Array; width: number } | null;
  top: { values: Float32Array; indices: Int32Array; width: number } | null;
  full: { data: Float32Array; width: number } | null;
}

interface ServedTask {
  name: string;
  def: TaskDefinition;
  template: Template;
  head: Head;
  verbalizer: Verbalizer | null;
  fields: string[];
  maxLength: number;
}

/**
 * How a run's prompt rows meet its input in the table: the template as rendered and the rows placed before
 * everything (PEFT's layout, prompt tuning). Deep prompts and linear heads are not input-layer prompts over
 * the LM's vocabulary logits, which is what one mixed-task forward shares.
 */
function inputLayout(name: string, config: RunConfig, from: string): { template: string; peftPrefix: number } {
  const method = config.method ?? 'ptuning';
  if (method === 'prefix') {
    throw new UserError(`task "${name}" (${from}): deep prompts (method prefix) put keys and values in every layer; the prompt table serves input-layer prompts (ptuning, prompt-tuning) — use ptune predict for this run`);
  }
  if (config.head.kind === 'linear') {
    throw new UserError(`task "${name}" (${from}): a linear head reads the hidden state, not the vocabulary logits the table's forward shares — use ptune predict for this run`);
  }
  const template = parseTemplate(config.template, { legacyBertOrder: config.legacyBertOrder });
  const { rendered, placedFirst } = inputPlacement(config, template);
  // the rendered template without its leading pseudo tokens, in the canonical text (a tuple's too)
  const text = rendered === template ? config.template : template.text.replace(/^(\s*\[P(\*\d+)?\])+\s*/, '');
  return { template: text, peftPrefix: placedFirst };
}

const TABLE_FILE = 'table.json';
const PROMPTS_FILE = 'prompts.safetensors';
const NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;

interface TableJson {
  format: 'ptune-prompt-table';
  version: 1;
  /** the base model as the runs named it (a directory or Hub id) */
  model: string;
  base: BaseModelId;
  tasks: Record<string, Omit<TaskDefinition, 'prompt'> & { virtualTokens: number }>;
}

function logSumExp(xs: ArrayLike<number>, allowed?: readonly number[] | null): number {
  let max = -Infinity;
  const n = allowed ? allowed.length : xs.length;
  for (let i = 0; i < n; i++) max = Math.max(max, xs[allowed ? allowed[i]! : i]!);
  let sum = 0;
  for (let i = 0; i < n; i++) sum += Math.exp(xs[allowed ? allowed[i]! : i]! - max);
  return max + Math.log(sum);
}

/** The `k` best entries of `values` (restricted to `allowed`), best first. */
function topIndices(values: ArrayLike<number>, k: number, allowed: readonly number[] | null): number[] {
  const best: number[] = [];
  const n = allowed ? allowed.length : values.length;
  for (let j = 0; j < n; j++) {
    const i = allowed ? allowed[j]! : j;
    const v = values[i]!;
    if (best.length === k && v <= values[best[k - 1]!]!) continue;
    let at = best.length === k ? k - 1 : best.length;
    while (at > 0 && values[best[at - 1]!]! < v) {
      if (at < k) best[at] = best[at - 1]!;
      at--;
    }
    best[at] = i;
  }
  return best.slice(0, k);
}

/**
 * Many tasks' tuned prompts over one frozen language model. Each task has its template, its frozen prompt
 * rows and its head; tasks are added, replaced and removed while the LM stays loaded, and every task must come
 * from the same base model (its configuration and weight checksum are checked). A batch may mix tasks: one
 * forward of the LM serves every row with its own task's prompt, and each task's head then turns its rows'
 * logits into predictions, as `ptune predict` gives them for the run. Causal LMs also generate, the prompt
 * rows standing at the template's pseudo positions.
 */
export class PromptTable {
  private readonly tasks = new Map<string, ServedTask>();
  private union: { data: Float32Array; rows: number; offsets: Map<ServedTask, number> } | null = null;
  /** the base model's name as the table's runs gave it */
  model: string;

  private constructor(
    readonly lm: LanguageModel,
    readonly base: BaseModelId,
  ) {
    this.model = lm.info.source;
  }

  /** An empty table over `lm` (its weights are checksummed once). */
  static create(lm: LanguageModel): PromptTable {
    return new PromptTable(lm, modelFingerprint(lm));
  }

  /** A table written by `save` (or `ptune table`), over `lm`, which must be the table's base model. */
  static load(dir: string, lm: LanguageModel): PromptTable {
    const { json, prompts } = PromptTable.readFiles(dir);
    const table = PromptTable.create(lm);
    const diff = baseDifference(json.base, table.base);
    if (diff) throw new UserError(`${path.join(dir, TABLE_FILE)}: the table's base model (${json.model}) is not ${lm.info.source}: ${diff}`);
    table.model = json.model;
    for (const [name, t] of Object.entries(json.tasks)) {
      const prompt = prompts.get(name);
      if (!prompt) throw new UserError(`${path.join(dir, PROMPTS_FILE)}: no prompt rows for task "${name}"`);
      const { virtualTokens: _, ...def } = t;
      table.set(name, { ...def, prompt });
    }
    return table;
  }

  /** The base model a table directory names (to load it before `load`). */
  static modelOf(dir: string): string {
    return PromptTable.readFiles(dir).json.model;
  }

  private static readFiles(dir: string): { json: TableJson; prompts: Map<string, HostTensor<Float32Array>> } {
    const real = resolveCheckpointDir(dir) ?? dir;
    const file = path.join(real, TABLE_FILE);
    if (!fs.existsSync(file)) throw new UserError(`${path.join(dir, TABLE_FILE)} not found: not a prompt table (ptune table --out DIR writes one)`);
    const json = JSON.parse(fs.readFileSync(file, 'utf8')) as TableJson;
    if (json.format !== 'ptune-prompt-table') throw new UserError(`${file}: not a ptune prompt table`);
    const prompts = new Map<string, HostTensor<Float32Array>>();
    for (const [name, t] of readSafetensors(path.join(real, PROMPTS_FILE)).tensors) prompts.set(name, { shape: t.shape, data: t.data });
    return { json, prompts };
  }

  /** Writes the table (table.json + prompts.safetensors) into `dir`, replacing what is there at once. */
  save(dir: string): void {
    const json: TableJson = { format: 'ptune-prompt-table', version: 1, model: this.model, base: this.base, tasks: {} };
    const prompts: Record<string, HostTensor<Float32Array>> = {};
    for (const [name, t] of this.tasks) {
      const { prompt, ...def } = t.def;
      json.tasks[name] = { ...def, virtualTokens: prompt.shape[0]! };
      // safetensors has no empty tensors: a task without virtual tokens keeps one unused row
      prompts[name] = prompt.shape[0] ? prompt : { shape: [1, prompt.shape[1]!], data: new Float32Array(prompt.shape[1]!) };
    }
    fs.mkdirSync(path.dirname(path.resolve(dir)), { recursive: true });
    writeCheckpointDir(dir, (tmp) => {
      writeSafetensors(path.join(tmp, PROMPTS_FILE), prompts);
      writeJsonAtomic(path.join(tmp, TABLE_FILE), json);
    });
  }

  get names(): string[] {
    return [...this.tasks.keys()];
  }

  has(name: string): boolean {
    return this.tasks.has(name);
  }

  /**
   * Adds a task, or replaces it with `replace`. The prompt rows must fit the template (one per virtual token)
   * and the model's embedding width; the template must suit the model (causal LMs answer last).
   */
  set(name: string, def: TaskDefinition, opts: { replace?: boolean } = {}): TaskInfo {
    if (!NAME.test(name)) throw new UserError(`task name ${JSON.stringify(name)}: use letters, digits, "_", "-", "." (at most 128)`);
    if (this.tasks.has(name) && opts.replace === false) throw new UserError(`task "${name}" exists already`);
    if (def.head.kind === 'linear') throw new UserError(`task "${name}": a linear head is not served by the prompt table (it reads the hidden state)`);
    const info = this.lm.info;
    let template: Template;
    try {
      template = parseTemplate(def.template, { legacyBertOrder: def.legacyBertOrder });
      validateFor(template, info.kind);
    } catch (e) {
      throw new UserError(`task "${name}": ${(e as Error).message}`);
    }
    const width = info.embeddingSize ?? info.hiddenSize;
    const n = numPseudo(template) + (def.peftPrefix ?? 0);
    const [rows, cols] = def.prompt.shape as [number, number];
    if (rows !== n || (n > 0 && cols !== width)) {
      throw new UserError(`task "${name}": prompt rows [${def.prompt.shape}] do not fit the template's ${n} virtual tokens × the model's width ${width}`);
    }
    const prompt = n > 0 ? def.prompt : { shape: [0, width], data: new Float32Array(0) };
    let head: Head;
    try {
      head = makeHead(def.head, this.lm.tokenizer, info.vocabSize);
    } catch (e) {
      throw new UserError(`task "${name}": ${(e as Error).message}`);
    }
    const verbalizer =
      def.head.kind === 'label'
        ? new Verbalizer(def.head.labelWords, this.lm.tokenizer, { tokenRule: def.head.tokenRule, wordAggregation: def.head.wordAggregation })
        : null;
    const task: ServedTask = {
      name,
      def: { ...def, prompt, truncate: def.truncate ?? true },
      template,
      head,
      verbalizer,
      fields: fields(template),
      maxLength: Math.min(def.maxLength, info.maxPositions),
    };
    this.tasks.set(name, task);
    this.union = null;
    return this.describe(task);
  }

  /**
   * Adds a run's tuned prompt (its best checkpoint): `best/prompt_table.safetensors`, or the table its
   * encoder computes when the run has none. The run must have left the LM frozen and name the same base model.
   */
  async addRun(name: string, runDir: string, opts: { replace?: boolean; truncate?: boolean } = {}): Promise<TaskInfo> {
    const cfgFile = path.join(runDir, 'config.json');
    if (!fs.existsSync(cfgFile)) throw new UserError(`task "${name}": ${cfgFile} not found: not a ptune run directory`);
    const config = readRunConfig(cfgFile);
    const layout = inputLayout(name, config, runDir);
    if (config.optim?.tuneLm) {
      throw new UserError(`task "${name}": run ${runDir} tuned the LM's weights too (--tune-lm): it cannot share the frozen base model`);
    }
    await this.checkBase(name, config.model, runDir);
    const best = path.join(runDir, 'best');
    const file = path.join(resolveCheckpointDir(best) ?? best, 'prompt_table.safetensors');
    let prompt: HostTensor<Float32Array> | null;
    if (fs.existsSync(file)) {
      const t = readSafetensors(file).tensors.get('prompt_embeddings');
      if (!t) throw new UserError(`task "${name}": ${file} has no tensor "prompt_embeddings"`);
      prompt = { shape: t.shape, data: t.data };
    } else {
      const session = await PTuningSession.load(runDir, 'best', this.lm);
      prompt = await session.promptTable();
      session.dispose({ keepLm: true });
    }
    const width = this.lm.info.embeddingSize ?? this.lm.info.hiddenSize;
    return this.set(
      name,
      {
        template: layout.template,
        legacyBertOrder: config.legacyBertOrder,
        head: config.head,
        maxLength: config.maxLength,
        truncate: opts.truncate ?? true,
        ...(layout.peftPrefix && { peftPrefix: layout.peftPrefix }),
        prompt: prompt ?? { shape: [0, width], data: new Float32Array(0) },
        source: path.resolve(runDir),
      },
      opts,
    );
  }

  /** Adds a PEFT P-tuning adapter (adapter_config.json + adapter_model.safetensors). */
  async addPeft(
    name: string,
    adapterDir: string,
    opts: { replace?: boolean; truncate?: boolean; template?: string; head?: HeadSpec; maxLength?: number } = {},
  ): Promise<TaskInfo> {
    const { config, table, adapterConfig } = readPeftAdapter({ adapterDir, model: this.lm.info.source, template: opts.template, head: opts.head, maxLength: opts.maxLength }, this.lm.info.maxPositions);
    const layout = inputLayout(name, config, adapterDir);
    const info = this.lm.info;
    const base = adapterConfig.base_model_name_or_path;
    if (typeof base === 'string' && fs.existsSync(base)) await this.checkBase(name, base, adapterDir);
    for (const [key, want] of [['num_layers', info.numLayers], ['num_attention_heads', info.numHeads], ['token_dim', info.embeddingSize ?? info.hiddenSize]] as const) {
      const have = adapterConfig[key];
      if (have !== undefined && have !== null && have !== want) {
        throw new UserError(`task "${name}": adapter ${adapterDir} has ${key} ${JSON.stringify(have)}, the served model ${want}`);
      }
    }
    return this.set(
      name,
      {
        template: layout.template, legacyBertOrder: config.legacyBertOrder, head: config.head, maxLength: config.maxLength, truncate: opts.truncate ?? true,
        ...(layout.peftPrefix && { peftPrefix: layout.peftPrefix }), prompt: table, source: path.resolve(adapterDir),
      },
      opts,
    );
  }

  private async checkBase(name: string, model: string, from: string): Promise<void> {
    let base: BaseModelId;
    try {
      base = await fingerprintOf(model, this.lm);
    } catch (e) {
      throw new UserError(`task "${name}" (${from}): cannot read its base model ${model}: ${(e as Error).message}`);
    }
    const diff = baseDifference(base, this.base);
    if (diff) throw new UserError(`task "${name}" (${from}) was tuned on ${model}, not on the served model ${this.lm.info.source}: ${diff}`);
  }

  remove(name: string): boolean {
    const had = this.tasks.delete(name);
    if (had) this.union = null;
    return had;
  }

  info(name: string): TaskInfo | undefined {
    const t = this.tasks.get(name);
    return t && this.describe(t);
  }

  list(): TaskInfo[] {
    return [...this.tasks.values()].map((t) => this.describe(t));
  }

  private describe(t: ServedTask): TaskInfo {
    return {
      name: t.name,
      head: t.def.head.kind as TaskInfo['head'],
      ...(t.verbalizer && { labels: [...t.verbalizer.labels] }),
      template: t.def.template,
      fields: t.fields,
      maxLength: t.maxLength,
      truncate: t.def.truncate !== false,
      virtualTokens: t.def.prompt.shape[0]!,
      generate: this.lm.info.kind === 'causal',
      ...(t.def.source && { source: t.def.source }),
    };
  }

  private task(name: string): ServedTask {
    const t = this.tasks.get(name);
    if (!t) throw new UnknownTaskError(name, this.names);
    return t;
  }

  /**
   * A record as the task's LM input. Fields the template reads must be present and text (or numbers/booleans);
   * a too-long input is shrunk as in training, or refused when the task does not truncate.
   */
  render(name: string, record: Record<string, unknown>): RenderedExample {
    return this.renderFor(this.task(name), record);
  }

  private renderFor(t: ServedTask, record: Record<string, unknown>): RenderedExample {
    for (const f of t.fields) {
      const v = record[f];
      if (v === undefined || v === null) throw new TaskInputError(`missing field "${f}" used by the template of task "${t.name}"`, 'missing_field', f);
      if (!['string', 'number', 'boolean'].includes(typeof v)) throw new TaskInputError(`field "${f}" is not text (${Array.isArray(v) ? 'array' : typeof v})`, 'bad_field', f);
    }
    const prefix = t.def.peftPrefix ?? 0;
    const truncate = t.def.truncate !== false;
    const room = t.maxLength - prefix;
    let ex: RenderedExample | null;
    try {
      ex = renderExample(t.template, record, this.lm.tokenizer, this.lm.info, { maxLength: truncate ? room : Number.MAX_SAFE_INTEGER, skipTooLong: true });
    } catch (e) {
      throw new TaskInputError((e as Error).message.replace(/^record: /, ''), 'bad_field');
    }
    if (!ex) throw new TaskInputError(`the input cannot fit in the ${t.maxLength} tokens of task "${t.name}" even with its fields shrunk to one token each`, 'too_long');
    if (ex.ids.length > room) {
      throw new TaskInputError(`the input is ${ex.ids.length + prefix} tokens, more than the ${t.maxLength} of task "${t.name}" (which does not truncate)`, 'too_long');
    }
    return prefix ? withPeftPrefix(ex, prefix, this.lm.info.special.pad) : ex;
  }

  /** The union of every task's prompt rows, padded to a power of two (≥ 8) so table changes rarely change its shape. */
  private unionTable() {
    if (this.union) return this.union;
    const width = this.lm.info.embeddingSize ?? this.lm.info.hiddenSize;
    const offsets = new Map<ServedTask, number>();
    let total = 0;
    for (const t of this.tasks.values()) {
      offsets.set(t, total);
      total += t.def.prompt.shape[0]!;
    }
    const rows = Math.max(8, paddedRows(total));
    const data = new Float32Array(rows * width);
    for (const [t, at] of offsets) data.set(t.def.prompt.data, at * width);
    this.union = { data, rows, offsets };
    return this.union;
  }

  /**
   * Predictions for rows of any tasks. Rows are run in batches of `batchSize`, each batch one forward; a row
   * that its task cannot take is an error (TaskInputError) unless `errors: 'inline'` returns it in its place.
   */
  async predict(inputs: readonly { task: string; record: Record<string, unknown>; topK?: number }[], opts: { batchSize?: number; topK?: number } = {}): Promise<TaskPrediction[]> {
    const out: TaskPrediction[] = [];
    const size = opts.batchSize ?? 32;
    for (let i = 0; i < inputs.length; i += size) {
      const rows = inputs.slice(i, i + size).map((r) => ({ task: r.task, record: r.record, topK: r.topK ?? opts.topK ?? 5 }));
      for (const r of await this.predictBatch(rows)) {
        if (r instanceof Error) throw r;
        out.push(r);
      }
    }
    return out;
  }

  /**
   * One forward for all `rows` (any mix of tasks); per row its prediction, or the error that kept it out of the
   * batch (unknown task, missing field, too long).
   */
  async predictBatch(rows: readonly { task: string; record: Record<string, unknown>; topK: number }[]): Promise<(TaskPrediction | Error)[]> {
    const results: (TaskPrediction | Error)[] = new Array(rows.length);
    const ok: { at: number; t: ServedTask; ex: RenderedExample; topK: number }[] = [];
    rows.forEach((r, at) => {
      try {
        const t = this.task(r.task);
        ok.push({ at, t, ex: this.renderFor(t, r.record), topK: r.topK });
      } catch (e) {
        results[at] = e as Error;
      }
    });
    if (ok.length === 0) return results;
    const out = await this.forward(ok);
    ok.forEach((r, i) => (results[r.at] = this.score(r.t, i, out, r.topK)));
    return results;
  }

  /**
   * One forward over rows of any tasks. Label rows need the logits of their label words' tokens; answer rows
   * the best log-probabilities over the vocabulary (computed in the program), or the whole logits when their
   * task restricts the answers.
   */
  private async forward(rows: { t: ServedTask; ex: RenderedExample; topK: number }[]): Promise<ForwardOutputs> {
    const lm = this.lm;
    const union = this.unionTable();
    const batch = collate(rows.map((r) => r.ex), lm.info);
    batch.pseudoIndex = batch.pseudoIndex.map((k, i) => k + union.offsets.get(rows[batch.pseudoRows[i]!]!.t)!);
    const padded = paddedRows(rows.length);
    const sp = paddedLength(batch.ids[0]!.length, lm.info.maxPositions);
    const feeds: Record<string, HostTensor> = {
      ...batchFeeds(batch, padded, sp, lm.info),
      prompt_table: { data: union.data, shape: [union.rows, lm.info.embeddingSize ?? lm.info.hiddenSize] },
    };
    const labelIds = [...new Set(rows.flatMap((r) => r.t.verbalizer?.candidateIds() ?? []))].sort((x, y) => x - y);
    const columns = new Map(labelIds.map((id, i) => [id, i]));
    const c = Math.ceil(labelIds.length / 8) * 8;
    if (c > 0) {
      const fed = new Int32Array(c).fill(labelIds[0]!);
      fed.set(labelIds);
      feeds.candidates = { data: fed, shape: [c] };
    }
    const answers = rows.filter((r) => !r.t.verbalizer);
    const kinds: MixedOutputs =
      answers.length === 0
        ? { kind: 'candidates', candidates: c }
        : { kind: 'vocabulary', k: Math.max(8, paddedRows(Math.max(...answers.map((r) => r.topK)))), candidates: c, full: answers.some((r) => r.t.head.predictable !== null) };
    const r = await lm.run(mixedLogitsProgram(lm, padded, sp, union.rows, kinds), feeds);
    const o = r.outputs;
    const cand = kinds.kind === 'candidates' ? o.logits : o.candidate_logits;
    return {
      columns,
      candidates: cand ? { data: cand.data as Float32Array, width: cand.shape[1]! } : null,
      top: o.top_values ? { values: o.top_values.data as Float32Array, indices: o.top_indices!.data as Int32Array, width: o.top_values.shape[1]! } : null,
      full: kinds.kind === 'vocabulary' && kinds.full ? { data: o.logits!.data as Float32Array, width: o.logits!.shape[1]! } : null,
    };
  }

  /** A task's head on one row of a forward, as PTuningPrograms.topK computes it: log-softmax over the classes, top k. */
  private score(t: ServedTask, row: number, out: ForwardOutputs, k: number): TaskPrediction {
    if (!t.verbalizer && t.head.predictable === null) {
      const { values, indices, width } = out.top!;
      const top = Array.from({ length: Math.min(k, width) }, (_, j) => ({ label: t.head.className(indices[row * width + j]!), score: Math.exp(values[row * width + j]!) }));
      return { prediction: top[0]!.label, score: top[0]!.score, top };
    }
    let classLogp: Float64Array;
    let allowed: readonly number[] | null = null;
    if (t.verbalizer) {
      const { data, width } = out.candidates!;
      const z = t.verbalizer.candidateIds().map((id) => data[row * width + out.columns.get(id)!]!);
      const lse = logSumExp(z);
      const scores = t.verbalizer.labelScores(z.map((x) => x - lse));
      const norm = logSumExp(scores);
      classLogp = Float64Array.from(scores, (x) => x - norm);
    } else {
      const { data, width } = out.full!;
      const logits = data.subarray(row * width, (row + 1) * width);
      const lse = logSumExp(logits);
      classLogp = Float64Array.from(logits, (x) => x - lse);
      allowed = t.head.predictable;
    }
    const top = topIndices(classLogp, Math.min(k, allowed ? allowed.length : classLogp.length), allowed).map((c) => ({ label: t.head.className(c), score: Math.exp(classLogp[c]!) }));
    return { prediction: top[0]!.label, score: top[0]!.score, top };
  }

  /**
   * Generates after the task's rendered record (a causal LM): the prompt rows stand at the template's pseudo
   * positions, then the KV cache carries the generation. The returned text ends before a stop string.
   */
  async generate(name: string, record: Record<string, unknown>, req: GenerationRequest): Promise<Generation> {
    const lm = this.lm;
    const t = this.task(name);
    if (lm.info.kind !== 'causal') throw new UserError(`task "${name}": ${lm.info.source} is a ${lm.info.kind} LM; generation needs a causal LM`);
    const ex = this.renderFor(t, record);
    const stops = (req.stop ?? []).filter((s) => s.length > 0);
    const tok = lm.tokenizer;
    const cut = (text: string) => {
      let at = -1;
      for (const s of stops) {
        const i = text.indexOf(s);
        if (i >= 0 && (at < 0 || i < at)) at = i;
      }
      return at;
    };
    // the longest end of `text` that a stop string starts with (it may still become that stop string)
    const pending = (text: string) => {
      let hold = 0;
      for (const s of stops) for (let l = Math.min(s.length - 1, text.length); l > hold; l--) if (text.endsWith(s.slice(0, l))) hold = l;
      return hold;
    };
    const ids: number[] = [];
    let emitted = '';
    // the streamed text holds back what could still become a stop string, and never what is cut off
    const onToken = req.onToken
      ? (id: number) => {
          ids.push(id);
          const text = tok.decode(ids, { skipSpecial: true });
          const stopAt = cut(text);
          const safe = stopAt >= 0 ? stopAt : Math.max(emitted.length, text.length - pending(text));
          const next = text.startsWith(emitted) ? text.slice(0, safe) : emitted;
          req.onToken!({ id, token: tok.idToToken(id) ?? `<${id}>`, text: next.slice(emitted.length) });
          emitted = next;
        }
      : undefined;
    const tokens = await generateIds(lm, ex.ids, {
      maxNewTokens: req.maxNewTokens,
      temperature: req.temperature,
      topP: req.topP,
      seed: req.seed,
      stop: stops.length ? stops : undefined,
      stopAtEos: true,
      cache: req.cache,
      onToken,
      prompts: ex.pseudoPositions.length ? { table: t.def.prompt, positions: ex.pseudoPositions, rows: ex.pseudoIndex } : undefined,
    });
    const full = tok.decode(tokens, { skipSpecial: true });
    const stopAt = cut(full);
    const text = stopAt >= 0 ? full.slice(0, stopAt) : full;
    const budget = Math.min(req.maxNewTokens, lm.info.maxPositions - ex.ids.length + 1);
    const finishReason = stopAt >= 0 ? 'stop' : tokens.length < budget ? 'eos' : 'length';
    if (req.onToken && text.length > emitted.length && text.startsWith(emitted)) req.onRest?.(text.slice(emitted.length));
    return { text, tokens, finishReason, promptTokens: ex.ids.length };
  }
}
