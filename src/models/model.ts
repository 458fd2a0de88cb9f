import type { Sym } from '../engine/onnx/index.js';
import { programs, type ParamLookup, type Program, type ProgramBuilder, type ProgramResult } from '../engine/program.js';
import type { HostTensor, ParamMap } from '../engine/tensor.js';
import type { TextTokenizer } from '../tokenizers/tokenizer.js';
import type { LmFunctions, ModelFamily, ModelInfo, SpecialIds, WeightOf } from './lm.js';

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
    opts: { source: string; special: SpecialIds },
  ) {
    let parameterCount = 0;
    for (const p of params.values()) parameterCount += p.size;
    this.info = { family: family.name, kind: family.kind, source: opts.source, special: opts.special, parameterCount, ...family.describe(config) };
    this.fns = family.functions(config);
    this.arch = `${family.name}${JSON.stringify(config)}`;
  }

  /** true when every weight trains (joint tuning / fine-tuning) */
  get trainable(): boolean {
    for (const p of this.params.values()) if (!p.trainable) return false;
    return this.params.size > 0;
  }

  setTrainable(on: boolean): void {
    for (const p of this.params.values()) {
      p.trainable = on;
      if (!on) p.dropGrad();
    }
  }

  /** The model's weights inside a program: parameters named `lm.<name>`, with gradients when they train. */
  weights(b: ProgramBuilder): WeightOf<Sym> {
    return (name) => {
      const p = this.params.get(name);
      if (!p) throw new Error(`${this.info.source}: no weight "${name}"`);
      return b.param(LM + name, p.shape, p.trainable);
    };
  }

  /** Runs a program built around this model; `extra` resolves its other parameters (encoder, head, ...). */
  run(program: Program, feeds: Record<string, HostTensor>, extra?: ParamLookup): Promise<ProgramResult> {
    const keyed: Program = { key: `${this.arch}|${this.trainingSignature()}|${program.key}`, build: program.build };
    return programs.run(keyed, feeds, (name) => (name.startsWith(LM) ? this.params.get(name.slice(LM.length)) : extra?.(name)));
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
