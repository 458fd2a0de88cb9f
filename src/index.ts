/**
 * ptune: P-tuning ("GPT Understands, Too") for TypeScript.
 *
 * Data flows one way: data → template → token ids + prompt slots → LM → verbalizer/head → loss and metrics.
 * Every computation is a program built from the op vocabulary and run by ONNX Runtime; weights live on the host.
 */
export { initEngine, getRuntime, useRuntime, Runtime, programs, ProgramBuilder, ProgramCache, Parameter, prefixed } from './engine/index.js';
export type { Ops, Program, ProgramGraph, ProgramResult, HostTensor, ParamMap, RuntimeName } from './engine/index.js';
export { Graph, OnnxOps, gradients, type Sym } from './engine/onnx/index.js';
export { readSafetensors, writeSafetensors, loadCheckpointTensors, checkpointIndex, SafetensorsReader } from './engine/safetensors.js';

export { LanguageModel } from './models/model.js';
export type { ModelInfo, LmKind, SpecialIds, LmFunctions, ModelFamily, HiddenInputs, HiddenOutputs, WeightOf } from './models/lm.js';
export { loadModel, createRandomModel, type LoadOptions } from './models/load.js';
export { parseQuantize, quantizeName, type QuantizeOptions, type QuantizeSettings } from './models/quantize.js';
export type { QuantizationInfo } from './models/lm.js';
export { supportedModelTypes, familyFor } from './models/families.js';
export { generate, decodeStep, KvCache, type GenerateOptions, type PromptRows } from './models/generate.js';
export type { TextTokenizer } from './tokenizers/tokenizer.js';
export { HfTokenizer } from './tokenizers/hf.js';
export { Llama2cTokenizer } from './tokenizers/llama2c.js';

export { parseTemplate, expandTuple, numPseudo, fields, fromLamaTemplate, withAnchorsAndPseudo, type Template } from './prompt/template.js';
export { renderExample, renderAll, collate, renderText, type RenderedExample, type CollatedBatch } from './prompt/render.js';
export { Verbalizer, answerVocabulary, type LabelWords, type TokenRule } from './prompt/verbalizer.js';
export { PromptEncoder, type PromptEncoderConfig, type PromptEncoderType } from './prompt/encoder.js';
export { PTuningPrograms } from './prompt/programs.js';
export { batchFeeds, spliceOn, paddedLength, paddedRows } from './prompt/ptuning.js';
export { makeHead, crossEntropyOn, type Head, type HeadSpec } from './prompt/heads.js';

export { Adam, AdamW, clipGradNorm, type ParamGroup } from './train/optim.js';
export { makeSchedule, type ScheduleConfig } from './train/schedule.js';
export { trainLoop, NonFiniteLossError, TrainingInterrupted, type TrainLoopConfig, type TrainTask, type TrainResult, type DevResult } from './train/trainer.js';
export { PTuningSession, DEFAULT_LOOP, DEFAULT_OPTIM, type RunConfig, type OptimConfig, type Prediction } from './train/session.js';
export { exportPeft, exportTable, importPeft, readPeftAdapter } from './train/export.js';
export { readRunConfig, parseRunConfig, readTrainState, RUN_CONFIG_VERSION } from './train/files.js';
export { checkOutputDir, claimOutputDir, RUN_OUTPUTS, EXPORT_OUTPUTS, LAMA_OUTPUTS, FEWGLUE_OUTPUTS, type OutputSpec, type ClaimedOutput } from './train/rundir.js';
export { UserError } from './util/errors.js';
export { peftAdapterFiles, promptTableFile } from './train/peft.js';
export { PTuning, TrainingStopped } from './train/tuning.js';
export { runLoop, memoryStore, type TrainStore } from './train/loop.js';
export { exportOnnx, type OnnxExportOptions } from './export/onnx.js';
export { ExportedModel, type ExportedPrediction } from './export/model.js';
export { renderInputs, type ExportSpec } from './export/spec.js';
export { fetchSource, blobSource, type FileSource } from './io/files.js';
export { dirSource } from './io/node-files.js';
export { loadModelFrom } from './models/assemble.js';
export { parseRecords } from './data/parse.js';

export { PromptTable, TaskInputError, UnknownTaskError, type TaskDefinition, type TaskInfo, type TaskPrediction, type Generation, type GenerationRequest } from './serve/table.js';
export { modelFingerprint, baseDifference, type BaseModelId } from './serve/fingerprint.js';
export { mixedLogitsProgram, type MixedOutputs } from './serve/programs.js';
export { createServer, type ServeOptions, type PtuneServer } from './serve/server.js';
export { readRecords } from './data/read.js';
export { makeProgress, type Progress } from './util/progress.js';

export { runLama } from './tasks/lama/run.js';
export { runFewGlue } from './tasks/fewglue/run.js';
