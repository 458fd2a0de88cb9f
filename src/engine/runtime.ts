import type { InferenceSession, Tensor, Env } from 'onnxruntime-common';
import type { HostTensor, TensorData } from './tensor.js';

/** What ptune uses of an onnxruntime package (onnxruntime-node and onnxruntime-web share this API). */
export interface OrtModule {
  InferenceSession: typeof InferenceSession;
  Tensor: typeof Tensor;
  env: Env;
}

export type RuntimeName = 'onnxruntime-node' | 'onnxruntime-web';

export interface RuntimeOptions {
  /**
   * onnxruntime-web: the execution providers sessions ask for, in order (default `['wasm']`; `['webgpu', 'wasm']`
   * runs what WebGPU supports there and the rest on WebAssembly)
   */
  executionProviders?: string[];
  /**
   * Bind the weights of frozen parameters (`trainable` false) into each compiled program instead of feeding them
   * on every run. onnxruntime-web copies every input into its WebAssembly memory on each run and cannot pre-pack
   * the matrices of a matmul it is fed; bound weights are copied once per program and pre-packed. Costs one copy
   * of the frozen weights per compiled program: for small models (the page's), not for large ones.
   */
  bakeFrozenWeights?: boolean;
  /** onnxruntime-web: let idle worker threads spin (default true); off helps on machines busy with other work */
  spinning?: boolean;
}

export type SavedActivations = 'float32' | 'float16' | 'auto';

/** The process's environment where there is one (read through globalThis: this module also runs in browsers). */
export function processEnv(): Record<string, string | undefined> | undefined {
  return (globalThis as { process?: { env?: Record<string, string | undefined> } }).process?.env;
}

/** How a session is created beyond the runtime's defaults. */
export interface CreateSessionOptions {
  /** ONNX external data the model refers to, by the file name its tensors give (`location`) */
  externalData?: { path: string; data: Uint8Array }[];
  /** onnxruntime-node: the folder the model's external-data locations (file names) are relative to */
  externalFolder?: string;
  /**
   * constant folding (default on); programs holding quantized weights as constants turn it off, so that no
   * dequantized (float) copy of a weight is folded into the session
   */
  constantFolding?: boolean;
  /** onnxruntime-node: ONNX Runtime's CPU memory arena for this session (default off; PTUNE_ORT_ARENA=1|0 overrides) */
  memArena?: boolean;
  /**
   * onnxruntime-node: ONNX Runtime's memory pattern, one block planned for all of a run's intermediates (default on,
   * off with gradient checkpointing; PTUNE_ORT_MEMPATTERN=1|0 overrides)
   */
  memPattern?: boolean;
}

export interface RuntimeSession {
  readonly inputNames: readonly string[];
  readonly outputNames: readonly string[];
  /** Runs the model; `into` names outputs to write into the given arrays instead of fresh ones. */
  run(feeds: Record<string, HostTensor>, outputs: string[], into?: Record<string, HostTensor>): Promise<Record<string, HostTensor>>;
  release(): Promise<void>;
}

const ORT_TYPE = (d: TensorData): Tensor.Type => {
  if (d instanceof Float32Array) return 'float32';
  if (d instanceof Int32Array) return 'int32';
  if (d instanceof BigInt64Array) return 'int64';
  if (d instanceof Uint8Array) return 'uint8';
  return 'float16';
};

/**
 * One ONNX Runtime package behind ptune's programs: sessions are created from serialised models with the
 * package's public API (`InferenceSession.create` / `run`), tensors are fed from host arrays without copies.
 */
export class Runtime {
  private threadCount: number;

  constructor(
    readonly name: RuntimeName,
    private readonly ort: OrtModule,
    defaultThreads: number,
    private readonly opts: RuntimeOptions = {},
  ) {
    this.threadCount = defaultThreads;
    if (name === 'onnxruntime-web') this.configureWasm(defaultThreads);
  }

  /** Intra-op threads of sessions created from now on. */
  get threads(): number {
    return this.threadCount;
  }

  set threads(n: number) {
    if (!Number.isInteger(n) || n < 1) throw new Error(`threads must be a positive integer, got ${n}`);
    this.threadCount = n;
    if (this.name === 'onnxruntime-web') this.configureWasm(n);
  }

  private configureWasm(threads: number): void {
    this.ort.env.wasm.numThreads = threads;
    this.ort.env.wasm.simd = true;
  }

  private checkpointing: boolean | undefined;

  /**
   * Gradient checkpointing in training programs: the backward pass recomputes each transformer layer's
   * activations from the layer's input instead of keeping them from the forward pass (less memory, one more
   * forward pass of compute). Default: PTUNE_GRADIENT_CHECKPOINTING=1, else off.
   */
  get gradientCheckpointing(): boolean {
    const env = processEnv();
    return this.checkpointing ?? env?.PTUNE_GRADIENT_CHECKPOINTING === '1';
  }

  set gradientCheckpointing(on: boolean) {
    this.checkpointing = on;
  }

  private saved: SavedActivations | undefined;

  /**
   * The precision training programs keep the forward's activations in until the backward pass reads them:
   * 'float16' halves what a step holds between its forward and backward (the gradients change by the rounding of
   * those values, about 1e-3 relative; the forward is unchanged); 'auto' (default): float16 in programs over
   * quantized weights, whose kernels already round activations to 8 bits, float32 otherwise. Not with gradient
   * checkpointing, which keeps only each layer's input. Default: PTUNE_SAVED_ACTIVATIONS, else 'auto'.
   */
  get savedActivations(): SavedActivations {
    const env = processEnv();
    const v = env?.PTUNE_SAVED_ACTIVATIONS;
    return this.saved ?? (v === 'float16' || v === 'float32' ? v : 'auto');
  }

  set savedActivations(p: SavedActivations) {
    if (p !== 'float32' && p !== 'float16' && p !== 'auto') throw new Error(`saved activations: float32, float16 or auto, got ${String(p)}`);
    this.saved = p;
  }

  get bakeFrozenWeights(): boolean {
    return this.opts.bakeFrozenWeights ?? false;
  }

  /** The execution providers sessions are created with. */
  get executionProviders(): string[] {
    return this.name === 'onnxruntime-node' ? ['cpu'] : (this.opts.executionProviders ?? ['wasm']);
  }

  async createSession(model: Uint8Array, opts: CreateSessionOptions = {}): Promise<RuntimeSession> {
    const env = processEnv();
    const spin = env?.PTUNE_ORT_SPIN ?? '1';
    // ORT's fused SkipLayerNormalization is several times slower on CPU than the Add and LayerNormalization it
    // replaces (measured on [512, 128]: ~200 µs against ~40 µs)
    const disabled = ['SkipLayerNormFusion', 'ReshapeFusion', ...(opts.constantFolding === false ? ['ConstantFolding'] : [])].join(';');
    const options: InferenceSession.SessionOptions =
      this.name === 'onnxruntime-node'
        ? {
            intraOpNumThreads: this.threadCount,
            interOpNumThreads: 1,
            graphOptimizationLevel: 'all',
            executionMode: 'sequential',
            // without ORT's CPU arena, activations go back to the allocator after each run: the arena kept growing
            // across runs (BERT-base P-tuning: ~1.14 GB held after 4 steps, against ~0.70 GB without); programs ask
            // for it where it pays (see compile in program.ts)
            enableCpuMemArena: env?.PTUNE_ORT_ARENA ? env.PTUNE_ORT_ARENA === '1' : (opts.memArena ?? false),
            // the memory pattern (one block planned for all of a run's intermediates) holds more at once: with
            // gradient checkpointing, the mode for memory, it is off (the 1.1B int4 P-tuning step: 2,989 against
            // 3,114 MiB at the same step time); float training programs turn it off too (see compile in program.ts)
            enableMemPattern: env?.PTUNE_ORT_MEMPATTERN ? env.PTUNE_ORT_MEMPATTERN !== '0' : !this.gradientCheckpointing && (opts.memPattern ?? true),
            // PTUNE_ORT_PROFILE=PREFIX: ONNX Runtime's per-node trace of every session, PREFIX_<date>.json (a diagnostic)
            ...(env?.PTUNE_ORT_PROFILE && { enableProfiling: true, profileFilePrefix: env.PTUNE_ORT_PROFILE }),
            extra: {
              session: {
                intra_op: { allow_spinning: spin },
                inter_op: { allow_spinning: '0' },
                ...(opts.externalFolder !== undefined && { model_external_initializers_file_folder_path: opts.externalFolder }),
              },
              optimization: { disable_specified_optimizers: disabled },
            },
          }
        : {
            executionProviders: this.executionProviders,
            graphOptimizationLevel: 'all',
            ...(((this.opts.spinning === false || env?.PTUNE_ORT_SPIN === '0') || opts.constantFolding === false) && {
              extra: {
                ...((this.opts.spinning === false || env?.PTUNE_ORT_SPIN === '0') && { session: { intra_op: { allow_spinning: '0' } } }),
                ...(opts.constantFolding === false && { optimization: { disable_specified_optimizers: 'ConstantFolding' } }),
              },
            }),
          };
    if (opts.externalData) options.externalData = opts.externalData;
    const session = await this.ort.InferenceSession.create(model, options);
    const Tensor = this.ort.Tensor;
    const toOrt = (t: HostTensor) => new Tensor(ORT_TYPE(t.data), t.data as Float32Array, t.shape);
    return {
      inputNames: session.inputNames,
      outputNames: session.outputNames,
      async run(feeds, outputs, into) {
        const ortFeeds: Record<string, Tensor> = {};
        for (const [name, t] of Object.entries(feeds)) ortFeeds[name] = toOrt(t);
        const fetches: Record<string, Tensor | null> = {};
        for (const name of outputs) fetches[name] = into?.[name] ? toOrt(into[name]!) : null;
        const result = await session.run(ortFeeds, fetches);
        const out: Record<string, HostTensor> = {};
        for (const name of outputs) {
          const v = result[name] as Tensor | undefined;
          if (!v) throw new Error(`onnx session: no output "${name}"`);
          out[name] = into?.[name] ?? { data: v.data as TensorData, shape: v.dims.slice() };
        }
        return out;
      },
      release: () => session.release(),
    };
  }
}

/**
 * Frees an output array's memory now instead of at the next garbage collection: its buffer is moved into a
 * message on a closed channel, which drops it (ONNX Runtime then releases the tensor behind it). The array is
 * empty afterwards.
 */
export function releaseNow(data: TensorData): void {
  const buffer = data.buffer;
  if (!(buffer instanceof ArrayBuffer) || buffer.byteLength === 0) return;
  const channel = new MessageChannel();
  channel.port2.close();
  channel.port1.postMessage(null, [buffer]);
  channel.port1.close();
}

let current: Promise<Runtime> | null = null;

/**
 * The process's runtime: the one set with `useRuntime`, else (in Node) onnxruntime-node, falling back to
 * onnxruntime-web with a one-line notice when the native binding cannot load.
 */
export function getRuntime(): Promise<Runtime> {
  current ??= loadDefault();
  return current;
}

/** The Node loader (onnxruntime-node), named by a variable so that browser bundles do not pull it in. */
const NODE_RUNTIME = './runtime-node.js';

async function loadDefault(): Promise<Runtime> {
  const host = globalThis as { process?: { versions?: { node?: string } } };
  if (!host.process?.versions?.node) {
    throw new Error('no ONNX Runtime chosen: call useRuntime(new Runtime("onnxruntime-web", ort, threads)) first (ptune/web: initWebRuntime)');
  }
  const m = (await import(/* webpackIgnore: true */ /* @vite-ignore */ NODE_RUNTIME)) as typeof import('./runtime-node.js');
  return m.loadNodeRuntime();
}

/** Makes `rt` the process's runtime (the browser entry point uses onnxruntime-web). */
export function useRuntime(rt: Runtime | Promise<Runtime>): void {
  current = Promise.resolve(rt);
}
