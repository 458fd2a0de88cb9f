import { getRuntime, type Runtime, type RuntimeSession } from '../engine/runtime.js';
import { readJson, where, type FileSource } from '../io/files.js';
import type { Template } from '../prompt/template.js';
import { HfTokenizer } from '../tokenizers/hf.js';
import { renderInputs, specTemplate, type ExportSpec } from './spec.js';

export interface ExportedPrediction {
  /** the best label (label tasks) or answer token (answer tasks) */
  prediction: string;
  /** label tasks: every label, in labels.names order; answer tasks: the top-k, best first */
  scores: { label: string; score: number; id?: number }[];
}

/**
 * An exported run (`ptune export --format onnx`) loaded from a FileSource — a directory over HTTP, files picked
 * in a page, a folder on disk — and run with the process's ONNX Runtime (or the one given): ptune.json,
 * tokenizer.json and model.onnx (+ its external data) are all it reads.
 */
export class ExportedModel {
  private constructor(
    readonly spec: ExportSpec,
    readonly tokenizer: HfTokenizer,
    private readonly session: RuntimeSession,
    private readonly template: Template,
  ) {}

  static async load(source: FileSource, runtime?: Runtime): Promise<ExportedModel> {
    const specFile = where(source, 'ptune.json');
    const spec = (await readJson(source, 'ptune.json')) as ExportSpec | null;
    if (spec === null) throw new Error(`${specFile}: not found: not a ptune ONNX export (ptune.json, tokenizer.json, model.onnx)`);
    if (spec.format !== 'ptune-onnx' || spec.version !== 1) throw new Error(`${specFile}: not a ptune ONNX export (format ${JSON.stringify(spec.format)}, version ${JSON.stringify(spec.version)})`);
    const tokenizer = await HfTokenizer.fromSource(source);
    const model = await source.read(spec.files.model);
    if (!model) throw new Error(`${where(source, spec.files.model)}: not found`);
    const externalData = [];
    if (spec.files.externalData) {
      const data = await source.read(spec.files.externalData);
      if (!data) throw new Error(`${where(source, spec.files.externalData)}: not found (model.onnx keeps its weights there)`);
      externalData.push({ path: spec.files.externalData, data });
    }
    const rt = runtime ?? (await getRuntime());
    let session: RuntimeSession;
    try {
      session = await rt.createSession(model, externalData.length ? { externalData } : {});
    } catch (err) {
      throw new Error(`${where(source, spec.files.model)}: ONNX Runtime cannot load it (${(err as Error).message.split('\n')[0]})`);
    }
    const template = specTemplate(spec);
    return new ExportedModel(spec, tokenizer, session, template);
  }

  /** The raw outputs for up to `spec.inputs.batch` records (rows past the records are padding). */
  async run(records: readonly Record<string, unknown>[]): Promise<{ outputs: Record<string, { data: ArrayLike<number | bigint>; shape: number[] }>; rows: number }> {
    const { feeds, rows } = renderInputs(this.spec, this.tokenizer, records, this.template);
    const outputs = await this.session.run(feeds, Object.keys(this.spec.outputs));
    return { outputs: outputs as Record<string, { data: ArrayLike<number | bigint>; shape: number[] }>, rows };
  }

  /** Predictions for any number of records, in batches of the graph's size. */
  async predict(records: readonly Record<string, unknown>[]): Promise<ExportedPrediction[]> {
    const out: ExportedPrediction[] = [];
    const B = this.spec.inputs.batch;
    for (let i = 0; i < records.length; i += B) {
      const { outputs, rows } = await this.run(records.slice(i, i + B));
      for (let r = 0; r < rows; r++) out.push(this.read(outputs, r));
    }
    return out;
  }

  private read(outputs: Record<string, { data: ArrayLike<number | bigint>; shape: number[] }>, r: number): ExportedPrediction {
    if (this.spec.task === 'label') {
      const names = this.spec.labels!.names;
      const p = outputs.probabilities!.data as Float32Array;
      const scores = names.map((label, k) => ({ label, score: p[r * names.length + k]! }));
      const best = scores.reduce((a, b) => (b.score > a.score ? b : a));
      return { prediction: best.label, scores };
    }
    const k = this.spec.answer!.topK;
    const ids = outputs.top_ids!.data as BigInt64Array;
    const values = outputs.top_scores!.data as Float32Array;
    const scores = Array.from({ length: k }, (_, j) => {
      const id = Number(ids[r * k + j]!);
      return { label: this.tokenizer.idToToken(id) ?? `<${id}>`, score: values[r * k + j]!, id };
    });
    return { prediction: scores[0]!.label, scores };
  }

  release(): Promise<void> {
    return this.session.release();
  }
}
