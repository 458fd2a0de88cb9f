import { OnnxOps } from '../engine/onnx/ops.js';
import type { Sym } from '../engine/onnx/index.js';
import { ProgramBuilder } from '../engine/program.js';
import type { Parameter } from '../engine/tensor.js';
import { answerScores, HEAD, readsFirstToken } from '../prompt/programs.js';
import type { PTuning } from '../train/tuning.js';

const SQRT1_2 = Math.SQRT1_2;
const GELU_TANH_C = Math.sqrt(2 / Math.PI);

/**
 * The op vocabulary in standard ONNX operators only (opset 17), for graphs that leave ptune: the exact GELU
 * through Erf, the tanh GELU written out. Everything else is already standard (transposed matmuls are Gemm, or
 * Transpose + MatMul).
 */
export class StandardOps extends OnnxOps {
  override gelu(x: Sym): Sym {
    const erf = this.graph.op1('Erf', [this.mul(x, this.scalar(SQRT1_2))], x.shape, 'float32');
    return this.mul(this.mul(x, this.scalar(0.5)), this.add(erf, this.scalar(1)));
  }

  override geluTanh(x: Sym): Sym {
    const cubic = this.mul(this.mul(x, x), x);
    const inner = this.mul(this.add(x, this.mul(cubic, this.scalar(0.044715))), this.scalar(GELU_TANH_C));
    return this.mul(this.mul(x, this.scalar(0.5)), this.add(this.tanh(inner), this.scalar(1)));
  }
}

/** Builds a run's computation with its parameters as constants (initializers named as the weights) and standard ops. */
class ConstantBuilder extends ProgramBuilder {
  override readonly o: OnnxOps = new StandardOps(this.g);
  private readonly made = new Map<string, Sym>();

  constructor(private readonly lookup: (name: string) => Parameter | undefined) {
    super();
  }

  override param(name: string, shape: number[]): Sym {
    const hit = this.made.get(name);
    if (hit) return hit;
    const p = this.lookup(name);
    if (!p) throw new Error(`export: no parameter "${name}"`);
    if (p.shape.join(',') !== shape.join(',')) throw new Error(`export: parameter "${name}" has shape [${p.shape}], the graph reads [${shape}]`);
    // in the stored shape: the host's padding of feed-forward widths is for ptune's own runtime, and the model's
    // functions take their shapes from the tensors
    const sym = this.g.constant(p.toStored(), p.storedShape, 'float32', name.replace(/^lm\./, ''));
    this.made.set(name, sym);
    return sym;
  }
}

export interface ExportShape {
  batch: number;
  length: number;
  /** answer tasks: how many answers the graph returns */
  topK: number;
}

export interface ExportGraph {
  builder: ProgramBuilder;
  outputs: Record<string, Sym>;
  inputNames: string[];
}

/** The frozen tables an export bakes in: the encoder's prompt rows [N, tokenDim], deep prompts' prefix table. */
export interface ExportTables {
  prompts: { shape: number[]; data: Float32Array } | null;
  /** [N, layers · 2 · kvDim] (PrefixEncoder.table), the keys and values every layer's tokens attend to first */
  prefix: { shape: number[]; data: Float32Array } | null;
}

/**
 * A run as one self-contained inference graph: int64 `input_ids`, `attention_mask` (and `token_type_ids` where
 * the family reads them) [batch, length] → the task's outputs, with the frozen LM's weights, the prompt rows,
 * deep prompts' keys and values and a linear head's weights as constants. Pseudo tokens arrive as ids
 * vocabSize + k; the answer position is the [MASK] (masked LMs; [CLS], position 0, for a linear head) or the
 * last position (causal LMs, padded on the left). Label tasks (a linear head's included) return
 * `probabilities` [batch, labels]; answer tasks `top_ids` / `top_scores` [batch, topK] (probabilities,
 * restricted to the answer vocabulary, as `ptune predict`), and causal LMs also the next-token `logits`
 * [batch, vocab] (prefill only: no KV cache in or out).
 */
export function exportGraph(run: PTuning, tables: ExportTables, shape: ExportShape): ExportGraph {
  const { lm, head } = run;
  const info = lm.info;
  const { batch: B, length: S } = shape;
  const b = new ConstantBuilder((name) =>
    name.startsWith('lm.') ? lm.params.get(name.slice(3)) : name.startsWith(HEAD) ? head.params?.get(name.slice(HEAD.length)) : undefined,
  );
  const { g, o } = b;
  const int64 = (name: string) => g.input(name, [B, S], 'int64');
  const inputNames = ['input_ids', 'attention_mask', ...(info.tokenTypes ? ['token_type_ids'] : [])];
  const ids = o.cast(int64('input_ids'), 'int32');
  const attentionMask = o.cast(int64('attention_mask'), 'int32');
  const tokenTypeIds = info.tokenTypes ? o.cast(int64('token_type_ids'), 'int32') : undefined;

  const V = info.vocabSize;
  const isPseudo = o.greater(ids, o.constInt([V - 1], []));
  const zero = o.constInt([0], []);
  const where = (cond: Sym, a: Sym, c: Sym) => g.op1('Where', [cond, a, c], ids.shape, 'int32');
  const table = tables.prompts;
  const prompts = table ? g.constant(table.data, table.shape, 'float32', 'prompt_embeddings') : null;
  const wordIds = prompts ? where(isPseudo, zero, ids) : ids;
  const pseudo = prompts
    ? {
        prompts,
        pseudoIndex: where(isPseudo, o.sub(ids, o.constInt([V], [])), zero),
        pseudoMask: o.reshape(o.cast(o.cast(isPseudo, 'int32'), 'float32'), [B, S, 1]),
      }
    : {};

  const prefix = tables.prefix;
  if (prefix && !run.prefix) throw new Error('export: a prefix table for a run without deep prompts');
  const past = prefix ? run.prefix!.pastOf(o, g.constant(prefix.data, prefix.shape, 'float32', 'prefix_table'), B) : undefined;

  let positions: Sym;
  if (readsFirstToken(head, info.kind)) {
    positions = o.constInt(new Array<number>(B).fill(0), [B]);
  } else if (info.kind === 'masked') {
    const isMask = o.cast(o.cast(o.equal(ids, o.constInt([info.special.mask!], [])), 'int32'), 'float32');
    positions = o.cast(g.op1('ArgMax', [isMask], [B], 'int64', { axis: 1, keepdims: 0 }), 'int32');
  } else {
    positions = o.constInt(new Array<number>(B).fill(S - 1), [B]);
  }
  const scores = answerScores(b, lm, head, { ids: wordIds, attentionMask, ...(tokenTypeIds && { tokenTypeIds }), positions, ...pseudo, ...(past && { past }) });

  const outputs: Record<string, Sym> = {};
  if (head.spec.kind !== 'answer') {
    outputs.probabilities = o.softmax(scores, 1);
  } else {
    const classes = head.numClasses;
    let logp = o.logSoftmax(scores, 1);
    if (head.predictable) {
      const mask = new Float32Array(classes).fill(-Infinity);
      for (const id of head.predictable) mask[id] = 0;
      logp = o.add(logp, g.constant(mask, [classes], 'float32', 'answer_mask'));
    }
    const k = Math.min(shape.topK, classes);
    const [values, indices] = g.node('TopK', [logp, g.ints([k])], [{ shape: [B, k], dtype: 'float32' }, { shape: [B, k], dtype: 'int64' }], { axis: 1, largest: 1, sorted: 1 });
    outputs.top_ids = indices!;
    outputs.top_scores = o.exp(values!);
    if (info.kind === 'causal') outputs.logits = scores;
  }
  return { builder: b, outputs, inputNames };
}
