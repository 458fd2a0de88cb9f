/** The ONNX graph engine: symbolic Ops, reverse-mode autodiff, serialisation and ONNX Runtime sessions. */
export { Graph, Sym, type DType } from './graph.js';
export { OnnxOps } from './ops.js';
export { gradients, savedForBackward } from './autodiff.js';
export { OrtSession, ortAvailable, type HostTensor, type SessionOptions } from './session.js';
export { WeightFile } from './weight-file.js';
