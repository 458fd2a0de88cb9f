/** The ONNX graph engine: symbolic Ops, reverse-mode autodiff and serialisation. */
export { Graph, Sym, type DType } from './graph.js';
export { OnnxOps, type DropoutMask } from './ops.js';
export { gradients, savedForBackward } from './autodiff.js';
