import type { Ops } from '../engine/ops.js';
import type { Sym } from '../engine/onnx/index.js';
import { programs, type ProgramBuilder } from '../engine/program.js';
import { Parameter, type ParamMap } from '../engine/tensor.js';
import type { LayerKv, PastKv } from '../models/common.js';
import type { ModelInfo } from '../models/lm.js';
import { makeNormal, makeRng, Rng } from '../util/rng.js';

/**
 * Deep prompts (P-tuning v2 / prefix tuning): trainable keys and values of `numVirtualTokens` prefix slots at
 * every layer, which every token attends to. The table is laid out as PEFT's PREFIX_TUNING `prompt_embeddings`:
 * [N, layers · 2 · kvDim], each row the slot's key of layer 0, its value of layer 0, the key of layer 1, ... with
 * kvDim = key/value heads × head size.
 *
 * - without projection the table is the parameter itself (`embedding.weight`, initialised N(0, 1) as PEFT);
 * - with projection (PEFT's `prefix_projection`, THUDM P-tuning v2's `prefix_projection`) it is computed by an
 *   MLP from smaller prefix embeddings: embedding [N, kvDim] → Linear(kvDim, hidden) → tanh →
 *   Linear(hidden, layers · 2 · kvDim), with PyTorch's default initialisation (hidden: default kvDim, as PEFT);
 * - dropout (P-tuning v2's `hidden_dropout_prob` on the prefix) applies to the table when training.
 */
export interface PrefixConfig {
  numVirtualTokens: number;
  projection: boolean;
  /** projection MLP width; default the model's hidden size */
  hiddenSize?: number;
  dropout?: number;
  seed: number;
}

const PRE = 'prefix.';

export class PrefixEncoder {
  readonly params: ParamMap = new Map();
  readonly config: Required<PrefixConfig>;
  readonly layers: number;
  readonly kvHeads: number;
  readonly headDim: number;
  private readonly dropoutRng: Rng;

  constructor(cfg: PrefixConfig, info: Pick<ModelInfo, 'numLayers' | 'numKvHeads' | 'headDim' | 'hiddenSize'>) {
    if (!Number.isInteger(cfg.numVirtualTokens) || cfg.numVirtualTokens < 1) throw new Error(`prefix: numVirtualTokens must be a positive integer, got ${cfg.numVirtualTokens}`);
    const dropout = cfg.dropout ?? 0;
    if (!(dropout >= 0 && dropout < 1)) throw new Error(`prefix: dropout must be in [0, 1), got ${dropout}`);
    this.layers = info.numLayers;
    this.kvHeads = info.numKvHeads;
    this.headDim = info.headDim;
    this.config = { ...cfg, hiddenSize: cfg.hiddenSize ?? this.kvDim, dropout };
    const n = cfg.numVirtualTokens;
    const width = this.width;
    const rng = makeRng(cfg.seed);
    const normal = makeNormal(rng);
    const add = (name: string, shape: number[], init: () => number) => {
      const data = Float32Array.from({ length: shape.reduce((a, b) => a * b, 1) }, init);
      this.params.set(name, new Parameter(name, shape, data, true));
    };
    if (!cfg.projection) add('embedding.weight', [n, width], normal);
    else {
      const d = this.kvDim;
      const h = this.config.hiddenSize;
      add('embedding.weight', [n, d], normal);
      const uniform = (fanIn: number) => () => (2 * rng() - 1) / Math.sqrt(fanIn);
      add('transform.0.weight', [h, d], uniform(d));
      add('transform.0.bias', [h], uniform(d));
      add('transform.2.weight', [width, h], uniform(h));
      add('transform.2.bias', [width], uniform(h));
    }
    this.dropoutRng = new Rng(cfg.seed ^ 0x9e37_79b9);
  }

  /** key/value heads × head size */
  get kvDim(): number {
    return this.kvHeads * this.headDim;
  }

  /** columns of the table: layers · 2 · kvDim */
  get width(): number {
    return this.layers * 2 * this.kvDim;
  }

  get hasDropout(): boolean {
    return this.config.dropout > 0;
  }

  parameterCount(): number {
    let n = 0;
    for (const p of this.params.values()) n += p.size;
    return n;
  }

  lookup(name: string): Parameter | undefined {
    return name.startsWith(PRE) ? this.params.get(name.slice(PRE.length)) : undefined;
  }

  /** The prefix table [N, layers · 2 · kvDim] over any op vocabulary (`mask`: a dropout mask of the same shape). */
  encode<T>(o: Ops<T>, w: (name: string) => T, mask?: T): T {
    let table = w('embedding.weight');
    if (this.config.projection) {
      table = o.dense(o.tanh(o.dense(table, w('transform.0.weight'), w('transform.0.bias'))), w('transform.2.weight'), w('transform.2.bias'));
    }
    return mask ? o.mul(table, mask) : table;
  }

  /** The table's keys and values as the past of every row of a batch of `rows`: [rows, kvHeads, N, headDim] per layer. */
  pastOf<T>(o: Ops<T>, table: T, rows: number): PastKv<T> {
    const n = this.config.numVirtualTokens;
    const split = o.transpose(o.reshape(table, [n, this.layers * 2, this.kvHeads, this.headDim]), [1, 2, 0, 3]); // [L·2, kvH, N, hd]
    const layers: LayerKv<T>[] = [];
    const one = (i: number) => o.expand(o.reshape(o.slice(split, [i, 0, 0, 0], [1, this.kvHeads, n, this.headDim]), [1, this.kvHeads, n, this.headDim]), [rows, this.kvHeads, n, this.headDim]);
    for (let l = 0; l < this.layers; l++) layers.push({ k: one(2 * l), v: one(2 * l + 1) });
    return { layers, mask: o.constInt(new Array<number>(rows * n).fill(1), [rows, n]) };
  }

  /** The prefix inside a program: parameters `prefix.<name>` (gradients when `train`), a dropout mask input. */
  inProgram(b: ProgramBuilder, train: boolean, dropout: boolean, rows: number): PastKv<Sym> {
    const w = (name: string) => b.param(PRE + name, this.params.get(name)!.shape, train);
    const mask = dropout ? b.input('prefix_dropout', [this.config.numVirtualTokens, this.width]) : undefined;
    return this.pastOf(b.o, this.encode(b.o, w, mask), rows);
  }

  /** A dropout mask for one training step (advancing the stream), scaled by 1 / (1 - p), or none. */
  dropoutFeeds(): Record<string, { data: Float32Array; shape: number[] }> | null {
    const p = this.config.dropout;
    if (!(p > 0)) return null;
    const mask = this.dropoutRng.dropoutMask(this.config.numVirtualTokens * this.width, p);
    return { prefix_dropout: { data: mask, shape: [this.config.numVirtualTokens, this.width] } };
  }

  get dropoutState(): number[] {
    return this.dropoutRng.state();
  }

  set dropoutState(state: number[]) {
    this.dropoutRng.restore(state);
  }

  /** The trained prefix as PEFT stores it: the table [N, layers · 2 · kvDim] (no dropout). */
  async table(): Promise<{ shape: number[]; data: Float32Array }> {
    const c = this.config;
    const r = await programs.run(
      {
        key: `prefix table ${c.numVirtualTokens}x${this.width} proj ${c.projection} ${c.hiddenSize}`,
        build: (b) => ({ outputs: { table: this.encode(b.o, (name) => b.param(PRE + name, this.params.get(name)!.shape, false)) } }),
      },
      {},
      (name) => this.lookup(name),
    );
    const t = r.outputs.table!;
    return { shape: t.shape, data: t.data as Float32Array };
  }
}
