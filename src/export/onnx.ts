import fs from 'node:fs';
import path from 'node:path';
import { HfTokenizer } from '../tokenizers/hf.js';
import { UserError } from '../util/errors.js';
import { writeFileAtomic, writeJsonAtomic } from '../util/atomic.js';
import type { PTuning } from '../train/tuning.js';
import { numPseudo } from '../prompt/template.js';
import { sequenceWrap } from '../prompt/render.js';
import { Verbalizer } from '../prompt/verbalizer.js';
import { exportGraph, type ExportTables } from './graph.js';
import { howToRender, type ExportSpec } from './spec.js';

export interface OnnxExportOptions {
  /** rows of the exported graph (default 1) */
  batch?: number;
  /** answer tasks: answers returned per row (default 5) */
  topK?: number;
  /** weights in `model.onnx.data` beside the graph: true, false, or 'auto' (default: when they pass 1 GiB) */
  externalData?: boolean | 'auto';
  /** called once everything has been read and checked, before the first file is written */
  beforeWrite?: () => void;
}

/** Weights this large go to external data on 'auto' (protobuf's own limit for one message is 2 GiB). */
const AUTO_EXTERNAL_BYTES = 2 ** 30;
/** External tensors start at multiples of this (memory-mappable); smaller tensors stay inside the graph. */
const ALIGN = 4096;
const MIN_EXTERNAL = 1024;

/**
 * Writes a run as a self-contained ONNX model: `model.onnx` (the frozen LM with the prompt baked in as constants
 * — pseudo-token rows, prompt tuning's rows, deep prompts' keys and values at every layer, a linear head's
 * weights; `model.onnx.data` beside it when the weights go to external data), the model's `tokenizer.json`
 * and `ptune.json` (how to render a record and read the outputs, spec.ts). The graph has static shapes:
 * [batch, the run's maxLength]; records are padded to that length (see ptune.json `inputs`).
 */
export async function exportOnnx(run: PTuning, outDir: string, opts: OnnxExportOptions = {}): Promise<ExportSpec> {
  const batch = opts.batch ?? 1;
  const topK = opts.topK ?? 5;
  if (!Number.isInteger(batch) || batch < 1) throw new UserError(`--batch must be a positive integer, got ${batch}`);
  if (!Number.isInteger(topK) || topK < 1) throw new UserError(`--top must be a positive integer, got ${topK}`);
  const { lm, config, head } = run;
  const info = lm.info;
  if (info.quantization) {
    throw new UserError(`an ONNX export holds the float LM, and ${info.source} is loaded with ${info.quantization.name} weights: export with --quantize none (library: load the run without quantize)`);
  }
  const tokenizerFile = path.join(info.source, 'tokenizer.json');
  if (!(lm.tokenizer instanceof HfTokenizer) || !fs.existsSync(tokenizerFile)) {
    throw new UserError(`${info.source}: an ONNX export needs the model's Hugging Face tokenizer.json`);
  }
  const length = config.maxLength;
  const deep = run.prefix?.config.numVirtualTokens ?? 0;
  if (length + deep > info.maxPositions) {
    throw new UserError(`the run's maxLength ${length}${deep ? ` and ${deep} deep prompt slots` : ''} exceed the model's ${info.maxPositions} positions`);
  }

  const tables: ExportTables = { prompts: run.encoder ? await run.encoder.table() : null, prefix: run.prefix ? await run.prefix.table() : null };
  const { builder, outputs, inputNames } = exportGraph(run, tables, { batch, length, topK });
  let weightBytes = (tables.prompts?.data.byteLength ?? 0) + (tables.prefix?.data.byteLength ?? 0);
  for (const p of [...lm.params.values(), ...(head.params?.values() ?? [])]) weightBytes += p.storedSize * 4;
  const external = opts.externalData === true || ((opts.externalData ?? 'auto') === 'auto' && weightBytes > AUTO_EXTERNAL_BYTES);

  opts.beforeWrite?.();
  fs.mkdirSync(outDir, { recursive: true });
  const dataName = 'model.onnx.data';
  const dataFile = path.join(outDir, dataName);
  fs.rmSync(dataFile, { force: true });
  let fd: number | null = null;
  let offset = 0;
  try {
    if (external) fd = fs.openSync(`${dataFile}.tmp`, 'w');
    const model = builder.g.toModel(outputs, [], external
      ? (_name, byteLength, raw) => {
          if (byteLength < MIN_EXTERNAL) return undefined;
          offset = Math.ceil(offset / ALIGN) * ALIGN;
          const at = offset;
          fs.writeSync(fd!, raw(), 0, byteLength, at);
          offset += byteLength;
          return { location: dataName, offset: at };
        }
      : undefined);
    if (fd !== null) {
      fs.fsyncSync(fd);
      fs.closeSync(fd);
      fd = null;
      fs.renameSync(`${dataFile}.tmp`, dataFile);
    }
    writeFileAtomic(path.join(outDir, 'model.onnx'), model.bytes);
  } finally {
    if (fd !== null) fs.closeSync(fd);
    fs.rmSync(`${dataFile}.tmp`, { force: true });
  }
  writeFileAtomic(path.join(outDir, 'tokenizer.json'), fs.readFileSync(tokenizerFile));

  const template = run.template;
  const prefix = run.placedFirst;
  const B = batch;
  const base: Omit<ExportSpec, 'howTo'> = {
    format: 'ptune-onnx',
    version: 1,
    files: { model: 'model.onnx', externalData: external ? dataName : null, tokenizer: 'tokenizer.json' },
    source: { model: config.model, family: info.family, kind: info.kind, vocabSize: info.vocabSize },
    task: head.spec.kind === 'answer' ? 'answer' : 'label',
    template: { source: config.template, text: template.text, legacyBertOrder: config.legacyBertOrder ?? false, parts: run.rendered.parts },
    render: {
      maxLength: length,
      wrap: sequenceWrap(lm.tokenizer, info),
      special: info.special,
      tokenTypes: info.tokenTypes,
      pseudoBase: info.vocabSize,
      numPseudo: numPseudo(run.rendered) + prefix,
      prefix,
      placeholder: info.special.unk ?? info.special.pad,
    },
    inputs: { names: inputNames, batch: B, length, paddingSide: info.paddingSide, padId: info.special.pad },
    outputs: {},
  };
  if (head.spec.kind === 'label') {
    const v = new Verbalizer(head.spec.labelWords, lm.tokenizer, { tokenRule: head.spec.tokenRule, wordAggregation: head.spec.wordAggregation });
    base.labels = { field: head.spec.labelField, names: [...v.labels], words: head.spec.labelWords, tokenRule: v.tokenRule, wordAggregation: v.wordAggregation };
    base.outputs.probabilities = { shape: [B, v.labels.length], dtype: 'float32', meaning: 'probability of each label (labels.names order)' };
  } else if (head.spec.kind === 'linear') {
    const names = head.spec.labels;
    base.labels = { field: head.spec.labelField, names: [...names], words: null, tokenRule: null, wordAggregation: null };
    base.outputs.probabilities = { shape: [B, names.length], dtype: 'float32', meaning: 'probability of each label (labels.names order), from the linear head' };
  } else {
    const k = Math.min(topK, head.numClasses);
    base.answer = { field: head.spec.answerField, vocabulary: head.spec.answerVocab ?? null, topK: k };
    base.outputs.top_ids = { shape: [B, k], dtype: 'int64', meaning: 'answer token ids, best first (tokenizer.json ids)' };
    base.outputs.top_scores = { shape: [B, k], dtype: 'float32', meaning: 'their probabilities' };
    if (info.kind === 'causal') {
      base.outputs.logits = { shape: [B, info.vocabSize], dtype: 'float32', meaning: 'next-token logits after the prompt (prefill only: no KV cache)' };
    }
  }
  const spec: ExportSpec = { ...base, howTo: howToRender(base) };
  writeJsonAtomic(path.join(outDir, 'ptune.json'), spec);
  return spec;
}
