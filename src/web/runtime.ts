import { Runtime, useRuntime, type OrtModule } from '../engine/runtime.js';

export type WebDevice = 'wasm' | 'webgpu';

export interface WebRuntimeOptions {
  /** onnxruntime-web's WebAssembly build (default: `import('onnxruntime-web/wasm')`) */
  ort?: OrtModule;
  /** its WebGPU build, loaded only when the browser has an adapter (default: `import('onnxruntime-web/webgpu')`) */
  webgpu?: () => Promise<OrtModule>;
  /** where onnxruntime-web's .wasm / .mjs files are served (a URL prefix ending in "/") */
  wasmPaths?: string;
  /**
   * WebAssembly threads (default: where the page is cross-origin isolated, the cores, at most 4, as Node uses the
   * cores; else 1). On 2 idle cores a bert-mini P-tuning step took 74–82 ms with 2 threads and 77–92 ms with 1;
   * with one core busy elsewhere, 191 ms with 2 and 98 ms with 1 — pass 1 where the cores are shared.
   */
  threads?: number;
  /** 'auto' (default): WebGPU for exported models when the browser has an adapter, else WebAssembly */
  device?: 'auto' | WebDevice;
  /** bind a frozen LM's weights into each compiled program (default true: see RuntimeOptions.bakeFrozenWeights) */
  bakeFrozenWeights?: boolean;
  /** let idle WebAssembly threads spin (default false: spinning costs more than it saves when the cores are shared) */
  spinning?: boolean;
}

export interface WebRuntime {
  /** runs ptune's programs (training steps, evaluation): WebAssembly with SIMD, and threads where isolated */
  programs: Runtime;
  /** runs exported models: WebGPU (with WebAssembly for what it lacks) when present, else the same as `programs` */
  inference: Runtime;
  device: WebDevice;
  threads: number;
  crossOriginIsolated: boolean;
}

/**
 * onnxruntime-web as ptune's runtime in a page: `useRuntime(new Runtime('onnxruntime-web', ort, threads))` for
 * every program (a frozen LM's weights bound into the programs, idle threads not spinning), and a runtime for
 * exported models.
 *
 * Programs run on onnxruntime-web's plain WebAssembly build even where WebGPU exists: the builds that carry
 * WebGPU run the CPU kernels several times slower (a bert-mini P-tuning step in Chromium: 638 ms against
 * 178 ms), and a program's trainable weights live on the host, where the optimizer updates them. Exported
 * models, whose weights stay inside their session, run on the WebGPU build when the browser has an adapter.
 */
export async function initWebRuntime(opts: WebRuntimeOptions = {}): Promise<WebRuntime> {
  const ort = opts.ort ?? ((await import('onnxruntime-web/wasm')) as unknown as OrtModule);
  const g = globalThis as { crossOriginIsolated?: boolean; navigator?: { hardwareConcurrency?: number; gpu?: { requestAdapter(): Promise<unknown> } } };
  const isolated = g.crossOriginIsolated === true;
  const threads = opts.threads ?? (isolated ? Math.max(1, Math.min(4, g.navigator?.hardwareConcurrency ?? 1)) : 1);
  if (opts.wasmPaths) (ort.env.wasm as { wasmPaths?: string }).wasmPaths = opts.wasmPaths;
  let device: WebDevice = 'wasm';
  if (opts.device === 'webgpu') device = 'webgpu';
  else if ((opts.device ?? 'auto') === 'auto' && g.navigator?.gpu) {
    try {
      if (await g.navigator.gpu.requestAdapter()) device = 'webgpu';
    } catch {
      device = 'wasm';
    }
  }
  const common = { bakeFrozenWeights: opts.bakeFrozenWeights ?? true, spinning: opts.spinning ?? false };
  const programs = new Runtime('onnxruntime-web', ort, threads, common);
  useRuntime(programs);
  let inference = programs;
  if (device === 'webgpu') {
    try {
      const gpuOrt = await (opts.webgpu ?? (async () => (await import('onnxruntime-web/webgpu')) as unknown as OrtModule))();
      if (opts.wasmPaths) (gpuOrt.env.wasm as { wasmPaths?: string }).wasmPaths = opts.wasmPaths;
      inference = new Runtime('onnxruntime-web', gpuOrt, threads, { ...common, executionProviders: ['webgpu', 'wasm'] });
    } catch {
      device = 'wasm';
    }
  }
  return { programs, inference, device, threads, crossOriginIsolated: isolated };
}
