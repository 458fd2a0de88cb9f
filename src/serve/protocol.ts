import type { HeadSpec } from '../prompt/heads.js';
import type { QuantizeOptions } from '../models/quantize-settings.js';
import type { TaskInfo, TaskPrediction } from './table.js';

/** What the inference worker is started with. */
export interface WorkerInit {
  model: string;
  table?: string;
  runs?: { name: string; run: string }[];
  threads?: number;
  /** the LM's linear weights quantized at load (--quantize) */
  quantize?: QuantizeOptions;
}

/** A request's failure as the HTTP layer answers it. */
export interface WireError {
  status: number;
  code: string;
  message: string;
  /** JSON pointer into the request body of the field at fault */
  path?: string;
}

export interface ModelSummary {
  source: string;
  family: string;
  kind: 'masked' | 'causal';
  maxPositions: number;
  parameterCount: number;
  /** int8, int4, ... when the LM's linear weights are quantized */
  quantization?: string;
}

export interface AddTask {
  name: string;
  run?: string;
  peft?: string;
  template?: string;
  head?: HeadSpec;
  maxLength?: number;
  replace?: boolean;
  truncate?: boolean;
}

export type WorkerRequest = { id: number } & (
  | { op: 'predict'; rows: { task: string; record: Record<string, unknown>; topK: number }[] }
  | {
      op: 'generate';
      task: string;
      record: Record<string, unknown>;
      maxNewTokens: number;
      temperature: number;
      topP: number;
      seed: number;
      stop: string[];
      stream: boolean;
    }
  | { op: 'cancel' }
  | { op: 'add'; task: AddTask }
  | { op: 'remove'; name: string }
  | { op: 'save'; dir: string }
);

export type RowResult = { ok: true; value: TaskPrediction } | { ok: false; error: WireError };

export type WorkerMessage =
  | { type: 'ready'; model: ModelSummary; tasks: TaskInfo[] }
  | { type: 'fatal'; message: string }
  | { type: 'reply'; id: number; ok: true; value: unknown; ms?: number }
  | { type: 'reply'; id: number; ok: false; error: WireError }
  | { type: 'token'; id: number; token: { id: number; token: string; text: string } }
  | { type: 'rest'; id: number; text: string };
