import type { Sym } from '../engine/onnx/index.js';
import { programs, type ParamLookup, type Program, type ProgramBuilder, type ProgramResult, type RunOptions } from '../engine/program.js';
import type { HostTensor, ParamMap } from '../engine/tensor.js';
import type { TextTokenizer } from '../tokenizers/tokenizer.js';
import type { LmFunctions, ModelFamily, ModelInfo, SpecialIds, WeightOf } from './lm.js';
import type { QuantizedStore } from './quantize.js';
import { quantizeName } from './quantize-settings.js';

const LM = 'lm.';

/**
 * A language model: its family's computation, its weights as host parameters (Hugging Face names and layout)
 * and its tokenizer. Every computation with it is a program (src/engine/program.ts) that reads the weights as
 * inputs: frozen weights get no gradient, trainable ones (`setTrainable`) do, and an update to `params` is
 * seen by every program at once.
 */
export class LanguageModel {
  readonly info: ModelInfo;
  readonly fns: LmFunctions;
  /** identifies the architecture in program keys: programs compile once per architecture and shape */
  readonly arch: string;

  constructor(
    readonly family: ModelFamily<unknown>,
    readonly config: unknown,
    readonly params: ParamMap,
    readonly tokenizer: TextTokenizer,
    opts: { source: string; special: SpecialIds; quantized?: QuantizedStore },
  ) {
    let parameterCount = 0;
    for (const p of params.values()) parameterCount += p.storedSize;
    this.quantized = opts.quantized ?? null;
    const q = this.quantized;
    if (q) parameterCount += q.values;
    this.info = {
      family: family.name,
      kind: family.kind,
      source: opts.source,
      special: opts.special,
      parameterCount,
      ...family.describe(config),
      ...(q && {
        quantization: {
          name: quantizeName(q.settings),
          bits: q.settings.bits,
          blockSize: q.settings.blockSize,
          symmetric: q.settings.symmetric,
          backward: q.settings.backward,
          activations: q.settings.activations,
          weights: q.entries.size,
          values: q.values,
          bytes: q.fileBytes,
          store: q.dir,
          reused: q.reused,
        },
      }),
    };
    this.fns = family.functions(config);
    // programs over quantized weights hold them as constants: keyed by the store too
    // and by the host's layout: the same config with and without padded inner widths has other weight shapes
    const padded = [...params.values()].some((p) => p.size !== p.storedSize);
    this.arch = `${family.name}${JSON.stringify(config)}${q ? `|quantized ${q.key} ${q.settings.activations}` : ''}${padded ? '|padded' : ''}`;
  }

  /** the quantized linear weights (absent from `params`), or null */
  readonly quantized: QuantizedStore | null;

  /** true when every weight trains (joint tuning / fine-tuning) */
  get trainable(): boolean {
    for (const p of this.params.values()) if (!p.trainable) return false;
    return this.params.size > 0;
  }

  setTrainable(on: boolean): void {
    if (on && this.quantized) {
      throw new Error(`${this.info.source}: the LM's linear weights are quantized (${this.info.quantization!.name}) and cannot train; tune the LM without quantization`);
    }
    for (const p of this.params.values()) {
      p.trainable = on;
      if (!on) p.dropGrad();
    }
  }

  /** The model's weights inside a program: parameters named `lm.<name>`, with gradients when they train. */
  weights(b: ProgramBuilder): WeightOf<Sym> {
    const q = this.quantized;
    return (name) => {
      const p = this.params.get(name);
      if (p) return b.param(LM + name, p.shape, p.trainable);
      const e = q?.entries.get(name);
      if (e) return b.quantizedWeight(name, e.stored, q!, { layout: e.layout, activations: q!.settings.activations });
      throw new Error(`${this.info.source}: no weight "${name}"`);
    };
  }

  /** Runs a program built around this model; `extra` resolves its other parameters (encoder, head, ...). */
  run(program: Program, feeds: Record<string, HostTensor>, extra?: ParamLookup, opts?: RunOptions): Promise<ProgramResult> {
    const keyed: Program = { key: `${this.arch}|${this.trainingSignature()}|${program.key}`, build: program.build };
    return programs.run(keyed, feeds, (name) => (name.startsWith(LM) ? this.params.get(name.slice(LM.length)) : extra?.(name)), opts);
  }

  /** Which weights train (programs differ in the gradients they return): none, all, or the names. */
  private trainingSignature(): string {
    const names = [...this.params].filter(([, p]) => p.trainable).map(([n]) => n);
    if (names.length === 0) return 'frozen';
    return names.length === this.params.size ? 'trained' : names.join(',');
  }

  /** Releases the weights (the model is unusable afterwards). */
  dispose(): void {
    this.params.clear();
  }
}
