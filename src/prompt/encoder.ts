import type { Ops } from '../engine/ops.js';
import type { Sym } from '../engine/onnx/index.js';
import { programs, type ProgramBuilder } from '../engine/program.js';
import { Parameter, type ParamMap } from '../engine/tensor.js';
import { makeNormal, makeRng, Rng } from '../util/rng.js';

/**
 * Prompt encoders: the trainable module that produces the continuous prompt embeddings [n, tokenDim].
 *
 * - `lstm`: embedding [n, tokenDim] → bidirectional LSTM (`lstmLayers` layers) → Linear → ReLU → Linear.
 *   Presets fix what `hiddenSize` means:
 *   - 'thudm' (THUDM P-tuning LAMA / FewGLUE): `hiddenSize` (default tokenDim) is the LSTM's output width, so
 *     each direction has hiddenSize/2 units; MLP Linear(hiddenSize, hiddenSize) → ReLU → Linear(hiddenSize, tokenDim).
 *   - 'peft' (PEFT's PromptEncoder): `hiddenSize` (default tokenDim) is the width of each direction;
 *     MLP Linear(2·hiddenSize, 2·hiddenSize) → ReLU → Linear(2·hiddenSize, tokenDim).
 * - `mlp` (PEFT): embedding → Linear(tokenDim, h) → ReLU → Linear(h, h) → ReLU → Linear(h, tokenDim).
 * - `embedding`: the table itself (prompt tuning without reparametrization).
 *
 * The LSTM reads the embeddings of ids 0..n-1 as one sequence (batch 1), so the output does not depend on the
 * batch: compute it once per step and broadcast it into every example.
 *
 * Variables are named and shaped exactly like the PyTorch state_dict of THUDM's / PEFT's encoder
 * (`embedding.weight`, `lstm_head.weight_ih_l0[_reverse]`, `mlp_head.0.weight`, ...): Linear weights are
 * [out, in], LSTM weights [4h, in] / [4h, h] with gate order i, f, g, o. This module keeps torch's layout (unlike
 * the engine's [in, out] convention) so checkpoints move between the two without conversion.
 *
 * Initialisation follows PyTorch's defaults with our own seeded PRNG, drawn in a fixed order (the order of
 * `variables()`): Embedding N(0, 1); LSTM weights and biases U(-1/√h, 1/√h) with h the per-direction width;
 * Linear weight and bias U(-1/√fan_in, 1/√fan_in). The same seed gives bit-identical weights.
 *
 * Dropout (`dropout`, lstm only) acts as nn.LSTM's: on the outputs of every LSTM layer except the last, only
 * when forward(training = true), with masks from a PRNG seeded by `seed`.
 */
export type PromptEncoderType = 'lstm' | 'mlp' | 'embedding';
export type LstmPreset = 'thudm' | 'peft';

export interface PromptEncoderConfig {
  type: PromptEncoderType;
  numVirtualTokens: number;
  tokenDim: number;
  hiddenSize?: number;
  /** lstm only; default 2 */
  lstmLayers?: number;
  /** lstm only; default 0 */
  dropout?: number;
  /** lstm only; default 'thudm' */
  preset?: LstmPreset;
  seed: number;
}

export interface TensorState {
  shape: number[];
  data: Float32Array;
}

type Init = { kind: 'normal' } | { kind: 'uniform'; bound: number };

interface ParamSpec {
  name: string;
  shape: number[];
  init: Init;
}

interface LstmDims {
  layers: number;
  /** units per direction */
  hidden: number;
  /** MLP width after the LSTM (= 2 · hidden) */
  mlpWidth: number;
}

const ENC = 'enc.';

export class PromptEncoder {
  readonly config: Readonly<Required<Omit<PromptEncoderConfig, 'hiddenSize'>>> & { hiddenSize: number };
  /** trainable parameters by PyTorch state_dict name */
  readonly params: ParamMap = new Map();
  private readonly lstm: LstmDims | null;
  private readonly dropoutRng: Rng;

  constructor(cfg: PromptEncoderConfig) {
    this.config = normalise(cfg);
    this.lstm = this.config.type === 'lstm' ? lstmDims(this.config) : null;
    const rng = makeRng(this.config.seed);
    const normal = makeNormal(rng);
    for (const spec of paramSpecs(this.config, this.lstm)) {
      const size = spec.shape.reduce((a, b) => a * b, 1);
      const data = new Float32Array(size);
      if (spec.init.kind === 'normal') for (let i = 0; i < size; i++) data[i] = normal();
      else {
        const bound = spec.init.bound;
        for (let i = 0; i < size; i++) data[i] = (2 * rng() - 1) * bound;
      }
      this.params.set(spec.name, new Parameter(spec.name, spec.shape, data, true));
    }
    this.dropoutRng = new Rng(this.config.seed ^ 0x5eed_d50f);
  }

  /**
   * The encoder inside a program: its parameters (named `enc.<state_dict name>`, with gradients when
   * `train`), dropout masks as inputs when training with dropout, and the prompt embeddings [n, tokenDim].
   */
  inProgram(b: ProgramBuilder, train: boolean, dropout: boolean): Sym {
    const w = (name: string) => b.param(ENC + name, this.params.get(name)!.shape, train);
    const masks = dropout ? Array.from({ length: this.config.lstmLayers - 1 }, (_, l) => b.input(`dropout:${l}`, this.dropoutShape(), 'float32')) : undefined;
    return this.encode(b.o, w, masks);
  }

  /** Resolves the encoder's parameters for a program run. */
  lookup(name: string): Parameter | undefined {
    return name.startsWith(ENC) ? this.params.get(name.slice(ENC.length)) : undefined;
  }

  /** Dropout masks for one training step as program feeds (advancing the dropout stream), or none. */
  dropoutFeeds(): Record<string, { data: Float32Array; shape: number[] }> | null {
    const masks = this.dropoutMasks(true);
    if (!masks) return null;
    return Object.fromEntries(masks.map((m, l) => [`dropout:${l}`, { data: m, shape: this.dropoutShape() }]));
  }

  /** The prompt embeddings [numVirtualTokens, tokenDim] (no dropout): the table inference needs. */
  async table(): Promise<{ shape: number[]; data: Float32Array }> {
    const c = this.config;
    const key = `encoder ${c.type}/${c.numVirtualTokens}/${c.tokenDim}/${c.hiddenSize}/${c.lstmLayers}/${c.preset}`;
    const r = await programs.run(
      { key, build: (b) => ({ outputs: { table: this.inProgram(b, false, false) } }) },
      {},
      (name) => this.lookup(name),
    );
    const t = r.outputs.table!;
    return { shape: t.shape, data: t.data as Float32Array };
  }

  /**
   * The encoder's computation over any op vocabulary: `w` reads a parameter by state_dict name; `dropout`
   * holds one mask per LSTM layer but the last (scaled by 1/(1-p)), from `dropoutMasks`, when training with
   * dropout.
   */
  encode<T>(o: Ops<T>, w: (name: string) => T, dropout?: T[]): T {
    const emb = w('embedding.weight');
    if (this.config.type === 'embedding') return emb;
    const linear = (x: T, prefix: string) => o.dense(x, w(`${prefix}.weight`), w(`${prefix}.bias`));
    if (this.config.type === 'mlp') {
      let x = o.relu(linear(emb, 'mlp_head.0'));
      x = o.relu(linear(x, 'mlp_head.2'));
      return linear(x, 'mlp_head.4');
    }
    const dims = this.lstm!;
    let x = emb;
    for (let l = 0; l < dims.layers; l++) {
      x = lstmLayer(o, w, x, l);
      if (dropout && l < dims.layers - 1) x = o.mul(x, dropout[l]!);
    }
    return linear(o.relu(linear(x, 'mlp_head.0')), 'mlp_head.2');
  }

  /** Whether a training step applies dropout masks. */
  get hasDropout(): boolean {
    return this.config.dropout > 0 && this.lstm !== null && this.lstm.layers > 1;
  }

  /**
   * Dropout masks for one training forward (advancing the encoder's dropout stream), or null when there is no
   * dropout to apply. Each mask has the shape `dropoutShape()`.
   */
  dropoutMasks(training: boolean): Float32Array[] | null {
    const p = this.config.dropout;
    if (!training || !this.hasDropout) return null;
    return Array.from({ length: this.lstm!.layers - 1 }, () => this.dropoutRng.dropoutMask(this.config.numVirtualTokens * this.lstm!.mlpWidth, p));
  }

  /** The dropout stream's position, for checkpoints (exact resume with dropout). */
  get dropoutState(): number[] {
    return this.dropoutRng.state();
  }

  set dropoutState(state: number[]) {
    this.dropoutRng.restore(state);
  }

  /** Shape of every dropout mask: one per pseudo token and LSTM output unit. */
  dropoutShape(): number[] {
    return [this.config.numVirtualTokens, this.lstm?.mlpWidth ?? 0];
  }

  parameterCount(): number {
    let n = 0;
    for (const p of this.params.values()) n += p.size;
    return n;
  }

  /** A copy of every parameter's values (torch layout), for checkpoints. */
  state(): Map<string, TensorState> {
    const out = new Map<string, TensorState>();
    for (const [name, p] of this.params) out.set(name, { shape: p.shape.slice(), data: Float32Array.from(p.data) });
    return out;
  }

  /** Loads values saved by `state()` or converted from a PyTorch state_dict; every tensor must be present. */
  loadState(map: Map<string, TensorState>): void {
    for (const name of map.keys()) {
      if (!this.params.has(name)) throw new Error(`prompt encoder state: unexpected tensor '${name}'`);
    }
    for (const [name, p] of this.params) {
      const t = map.get(name);
      if (!t) throw new Error(`prompt encoder state: missing tensor '${name}'`);
      if (t.shape.join(',') !== p.shape.join(',')) throw new Error(`prompt encoder state: '${name}' has shape [${t.shape}], expected [${p.shape}]`);
      if (t.data.length !== p.size) throw new Error(`prompt encoder state: '${name}' has ${t.data.length} values, expected ${p.size}`);
    }
    for (const [name, p] of this.params) p.set(map.get(name)!.data);
  }
}

function lstmLayer<T>(o: Ops<T>, w: (name: string) => T, x: T, layer: number): T {
  const direction = (suffix: string) => {
    const p = (name: string) => w(`lstm_head.${name}_l${layer}${suffix}`);
    return { wih: p('weight_ih'), whh: p('weight_hh'), bih: p('bias_ih'), bhh: p('bias_hh') };
  };
  return o.bilstm(x, direction(''), direction('_reverse'));
}

function normalise(cfg: PromptEncoderConfig): PromptEncoder['config'] {
  const where = 'prompt encoder config';
  if (!['lstm', 'mlp', 'embedding'].includes(cfg.type)) {
    throw new Error(`${where}: type must be 'lstm', 'mlp' or 'embedding', got '${cfg.type}'`);
  }
  positiveInt(cfg.numVirtualTokens, `${where}: numVirtualTokens`);
  positiveInt(cfg.tokenDim, `${where}: tokenDim`);
  const hiddenSize = cfg.hiddenSize ?? cfg.tokenDim;
  positiveInt(hiddenSize, `${where}: hiddenSize`);
  const lstmLayers = cfg.lstmLayers ?? 2;
  positiveInt(lstmLayers, `${where}: lstmLayers`);
  const dropout = cfg.dropout ?? 0;
  if (!(dropout >= 0 && dropout < 1)) throw new Error(`${where}: dropout must be in [0, 1), got ${dropout}`);
  if (dropout > 0 && cfg.type !== 'lstm') {
    throw new Error(`${where}: dropout applies between LSTM layers only; type '${cfg.type}' has none`);
  }
  const preset = cfg.preset ?? 'thudm';
  if (preset !== 'thudm' && preset !== 'peft') {
    throw new Error(`${where}: preset must be 'thudm' or 'peft', got '${preset}'`);
  }
  if (cfg.type === 'lstm' && preset === 'thudm' && hiddenSize % 2 !== 0) {
    throw new Error(`${where}: hiddenSize ${hiddenSize} must be even for the 'thudm' preset (split over 2 directions)`);
  }
  if (!Number.isFinite(cfg.seed)) throw new Error(`${where}: seed must be a finite number, got ${cfg.seed}`);
  return { type: cfg.type, numVirtualTokens: cfg.numVirtualTokens, tokenDim: cfg.tokenDim, hiddenSize, lstmLayers, dropout, preset, seed: cfg.seed };
}

function positiveInt(v: number, what: string): void {
  if (!Number.isInteger(v) || v <= 0) throw new Error(`${what} must be a positive integer, got ${v}`);
}

function lstmDims(cfg: PromptEncoder['config']): LstmDims {
  const hidden = cfg.preset === 'thudm' ? cfg.hiddenSize / 2 : cfg.hiddenSize;
  return { layers: cfg.lstmLayers, hidden, mlpWidth: 2 * hidden };
}

function linearSpecs(prefix: string, inDim: number, outDim: number): ParamSpec[] {
  const init: Init = { kind: 'uniform', bound: 1 / Math.sqrt(inDim) };
  return [
    { name: `${prefix}.weight`, shape: [outDim, inDim], init },
    { name: `${prefix}.bias`, shape: [outDim], init },
  ];
}

/** Parameters in PyTorch's registration order (which is also our initialisation order). */
function paramSpecs(cfg: PromptEncoder['config'], lstm: LstmDims | null): ParamSpec[] {
  const { numVirtualTokens: n, tokenDim: d } = cfg;
  const specs: ParamSpec[] = [{ name: 'embedding.weight', shape: [n, d], init: { kind: 'normal' } }];
  if (cfg.type === 'mlp') {
    const h = cfg.hiddenSize;
    specs.push(...linearSpecs('mlp_head.0', d, h), ...linearSpecs('mlp_head.2', h, h), ...linearSpecs('mlp_head.4', h, d));
  } else if (lstm) {
    const h = lstm.hidden;
    const init: Init = { kind: 'uniform', bound: 1 / Math.sqrt(h) };
    for (let l = 0; l < lstm.layers; l++) {
      const inDim = l === 0 ? d : 2 * h;
      for (const sfx of [`l${l}`, `l${l}_reverse`]) {
        specs.push(
          { name: `lstm_head.weight_ih_${sfx}`, shape: [4 * h, inDim], init },
          { name: `lstm_head.weight_hh_${sfx}`, shape: [4 * h, h], init },
          { name: `lstm_head.bias_ih_${sfx}`, shape: [4 * h], init },
          { name: `lstm_head.bias_hh_${sfx}`, shape: [4 * h], init },
        );
      }
    }
    const w = lstm.mlpWidth;
    specs.push(...linearSpecs('mlp_head.0', w, w), ...linearSpecs('mlp_head.2', w, d));
  }
  return specs;
}
