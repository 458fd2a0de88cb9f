/**
 * ptune/web: ptune in a browser tab, on onnxruntime-web. No file system, no child processes, no native
 * binding: models and exported runs are loaded over `fetch` (or from files a user picks), tokenized with
 * @huggingface/tokenizers and run by the same programs as in Node; P-tuning runs the same training step, with
 * the optimizer (the WebAssembly Adam kernel) on host arrays and the run kept in memory.
 */
export { initWebRuntime, type WebRuntime, type WebRuntimeOptions, type WebDevice } from './runtime.js';
export { lamaRunConfig, labelledRunConfig, parseLabelledList, stepTimer, yieldToPage, type TuneSettings } from './tasks.js';
export { Runtime, useRuntime, getRuntime, type OrtModule } from '../engine/runtime.js';
export { fetchSource, blobSource, readText, readJson, type FileSource } from '../io/files.js';
export { loadModelFrom } from '../models/assemble.js';
export type { LanguageModel } from '../models/model.js';
export { HfTokenizer } from '../tokenizers/hf.js';
export { ExportedModel, type ExportedPrediction } from '../export/model.js';
export { renderInputs, type ExportSpec, type ExportInputs } from '../export/spec.js';
export { PTuning, TrainingStopped, DEFAULT_LOOP, DEFAULT_OPTIM, primaryMetric, type RunConfig, type Prediction } from '../train/tuning.js';
export { peftAdapterFiles, promptTableFile } from '../train/peft.js';
export { parseRecords } from '../data/parse.js';
export { parseTemplate } from '../prompt/template.js';
export { renderText } from '../prompt/render.js';
export { safetensorsBytes, parseSafetensors } from '../engine/safetensors-format.js';
