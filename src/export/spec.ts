import type { LabelWords, TokenRule, WordAggregation } from '../prompt/verbalizer.js';
import { renderExample, type RenderInfo } from '../prompt/render.js';
import type { Template, TemplatePart } from '../prompt/template.js';
import type { SpecialIds } from '../models/lm.js';
import type { TextTokenizer } from '../tokenizers/tokenizer.js';
import { withPeftPrefix } from '../train/tuning.js';

/**
 * `ptune.json`: what a consumer of an exported run (model.onnx + tokenizer.json) needs to turn a record into the
 * model's inputs and read its outputs. `renderInputs` below is the reference implementation; the `howTo` lines
 * in the file say the same in words for other languages.
 */
export interface ExportSpec {
  format: 'ptune-onnx';
  version: 1;
  /** the graph, and the external data file its weights are in (null: inside model.onnx) */
  files: { model: string; externalData: string | null; tokenizer: string };
  /** where it came from (informational) */
  source: { model: string; family: string; kind: 'masked' | 'causal'; vocabSize: number };
  /** label: classes scored by label words through the LM head, or by a linear head (`labels.words` null) */
  task: 'label' | 'answer';
  /**
   * `parts` are the template as rendered, which `renderInputs` reads; `source` and `text` are the run's template
   * as written (informational: where its leading pseudo tokens go before everything, they are render.prefix)
   */
  template: { source: string; text: string; legacyBertOrder: boolean; parts: readonly TemplatePart[] };
  render: {
    /** longest rendered sequence, special tokens and pseudo tokens included (longer fields are cut to fit) */
    maxLength: number;
    /** ids the tokenizer's post-processor puts around a sequence, as rendered (causal LMs: no end tokens) */
    wrap: { start: number[]; end: number[] };
    special: SpecialIds;
    tokenTypes: boolean;
    /** pseudo token k (0-based, in template order, PEFT prefix tokens first) is written as input id `pseudoBase + k` */
    pseudoBase: number;
    numPseudo: number;
    /**
     * this many pseudo tokens before everything, special tokens included: an imported PEFT adapter's, the PEFT
     * layout's leading [P] tokens, prompt tuning's rows; 0 otherwise
     */
    prefix: number;
    /** pseudo positions hold this id in ptune's own rendering (informational; the export reads pseudoBase + k) */
    placeholder: number;
  };
  /** every input is int64 [batch, length]; rows and positions beyond the records are padding */
  inputs: { names: string[]; batch: number; length: number; paddingSide: 'left' | 'right'; padId: number };
  outputs: Record<string, { shape: number[]; dtype: 'float32' | 'int64'; meaning: string }>;
  /** label tasks: labels in output order, their words, how multi-token words score (null: a linear head) */
  labels?: { field: string; names: string[]; words: LabelWords | null; tokenRule: TokenRule | null; wordAggregation: WordAggregation | null };
  /** answer tasks: the field, the answer ids predictions are restricted to (null: every token), top-k */
  answer?: { field: string; vocabulary: number[] | null; topK: number };
  howTo: string[];
}

export interface ExportInputs {
  /** [batch, length] int64 tensors by input name */
  feeds: Record<string, { data: BigInt64Array; shape: number[] }>;
  /** records in this batch (the other rows are padding) */
  rows: number;
}

/**
 * The model inputs for `records` (at most `spec.inputs.batch`), rendered exactly as `ptune predict` renders them:
 * the template with the record's fields, the tokenizer's special tokens around it, pseudo tokens as
 * `pseudoBase + k`, padded to [batch, length] on the spec's side.
 */
export function renderInputs(spec: ExportSpec, tokenizer: TextTokenizer, records: readonly Record<string, unknown>[], template?: Template): ExportInputs {
  const { batch, length, paddingSide, padId } = spec.inputs;
  if (records.length === 0 || records.length > batch) throw new Error(`renderInputs: ${records.length} records for a batch of ${batch}`);
  const t = template ?? specTemplate(spec);
  const info: RenderInfo = { kind: spec.source.kind, special: spec.render.special, tokenTypes: spec.render.tokenTypes };
  const grid = () => new BigInt64Array(batch * length);
  const ids = grid().fill(BigInt(padId));
  const mask = grid();
  const types = grid();
  records.forEach((record, row) => {
    let ex = renderExample(t, record, tokenizer, info, { maxLength: spec.render.maxLength - spec.render.prefix, index: row })!;
    if (spec.render.prefix) ex = withPeftPrefix(ex, spec.render.prefix, padId);
    const seq = ex.ids.slice();
    ex.pseudoPositions.forEach((pos, k) => (seq[pos] = spec.render.pseudoBase + ex.pseudoIndex[k]!));
    const shift = paddingSide === 'left' ? length - seq.length : 0;
    const at = row * length + shift;
    seq.forEach((id, i) => {
      ids[at + i] = BigInt(id);
      mask[at + i] = 1n;
      types[at + i] = BigInt(ex.tokenTypeIds?.[i] ?? 0);
    });
  });
  const shape = [batch, length];
  const feeds: ExportInputs['feeds'] = { input_ids: { data: ids, shape }, attention_mask: { data: mask, shape } };
  if (spec.inputs.names.includes('token_type_ids')) feeds.token_type_ids = { data: types, shape };
  return { feeds, rows: records.length };
}

/** The template `renderInputs` renders: the spec's parts. */
export function specTemplate(spec: Pick<ExportSpec, 'template'>): Template {
  const { source, text, parts } = spec.template;
  return { source, text, parts };
}

/** The prose version of `renderInputs`, written into ptune.json. */
export function howToRender(spec: Omit<ExportSpec, 'howTo'>): string[] {
  const r = spec.render;
  const lines = [
    `Tokenize with tokenizer.json, without its special tokens, one template part at a time: each text or {field} part as " " + text when template.parts[i].spaceBefore, else as the text.`,
    `Write the parts in order between render.wrap.start and render.wrap.end; a [P] part of count n is n pseudo tokens, written as ids render.pseudoBase + k (k counts the pseudo tokens from 0 in template order);`,
    spec.source.kind === 'masked'
      ? `[MASK] is the id render.special.mask (${r.special.mask}); ` +
        (spec.labels && !spec.labels.words ? 'the linear head reads the first token, not the [MASK].' : 'the model reads its answer there.')
      : `[MASK] ends the prompt and writes nothing: the model reads the next token after the last one.`,
    `If the sequence is longer than render.maxLength (${r.maxLength}), cut the longest field by one token from its end, again and again (a field keeps at least one token).`,
    r.prefix ? `Put render.prefix (${r.prefix}) pseudo tokens (ids pseudoBase + 0..${r.prefix - 1}) before everything; the template's own pseudo tokens then count from ${r.prefix}.` : '',
    `Pad to inputs.length (${spec.inputs.length}) on the ${spec.inputs.paddingSide} with inputs.padId (${spec.inputs.padId}); attention_mask is 1 on real tokens, 0 on padding;` +
      (r.tokenTypes ? ' token_type_ids is 0, and 1 after a [SEP] written inside the template;' : '') +
      ` fill unused rows of the batch (${spec.inputs.batch}) with padding and a zero mask. All inputs are int64.`,
    spec.task === 'label'
      ? `Output "probabilities" [batch, ${spec.labels!.names.length}] are the label probabilities in labels.names order.`
      : `Outputs "top_ids" / "top_scores" [batch, ${spec.answer!.topK}] are the best answer token ids (restricted to answer.vocabulary when given) and their probabilities, best first; decode ids with tokenizer.json.`,
  ];
  return lines.filter(Boolean);
}
