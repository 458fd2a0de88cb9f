import * as tf from '@tensorflow/tfjs-core';

/**
 * Three gaps of tfjs-backend-wasm 4.22 that training runs into:
 * - no `UnsortedSegmentSum` kernel, which is the gradient of `gather` (embedding lookup, picking [MASK] rows);
 * - `BatchMatMul` with transposeA/transposeB is 8-15x slower than the plain kernel, and every matmul gradient
 *   asks for it. We transpose explicitly (wasm Transpose kernel) and run the plain kernel.
 * - `Identity` copies its input; the tape clones every tensor the backward pass needs through it, so recording a
 *   BERT-base forward duplicated every weight and activation and ran out of the 4 GB wasm heap. The fix shares
 *   the buffer and counts one more reference, as the cpu backend does.
 * All are installed as wasm kernels so the tape, gradients and tensor bookkeeping stay tfjs's own.
 */

interface WasmBackend {
  readSync(dataId: object): tf.backend_util.BackendValues;
  makeOutput(shape: number[], dtype: tf.DataType): tf.TensorInfo;
  typedArrayFromHeap(info: tf.TensorInfo): tf.TypedArray;
  disposeData(dataId: object): boolean;
}

let installed = false;

export function installWasmKernelFixes(): void {
  if (installed) return;
  installed = true;
  installUnsortedSegmentSum();
  installPlainBatchMatMul();
  installSharingIdentity();
}

function installSharingIdentity(): void {
  const original = tf.getKernel('Identity', 'wasm');
  if (!original) return;
  tf.unregisterKernel('Identity', 'wasm');
  tf.registerKernel({
    kernelName: 'Identity',
    backendName: 'wasm',
    kernelFunc: (args) => {
      const x = (args.inputs as { x: tf.TensorInfo }).x;
      const entry = (args.backend as unknown as { dataIdMap: { get(id: object): { refCount: number } | undefined } }).dataIdMap.get(
        x.dataId,
      );
      if (x.dtype === 'string' || !entry) return original.kernelFunc(args);
      entry.refCount++;
      return { dataId: x.dataId, shape: x.shape, dtype: x.dtype };
    },
  });
}

function installUnsortedSegmentSum(): void {
  if (tf.getKernel('UnsortedSegmentSum', 'wasm')) return;
  tf.registerKernel({
    kernelName: 'UnsortedSegmentSum',
    backendName: 'wasm',
    kernelFunc: ({ inputs, attrs, backend }) => {
      const be = backend as unknown as WasmBackend;
      const { x, segmentIds } = inputs as { x: tf.TensorInfo; segmentIds: tf.TensorInfo };
      const numSegments = (attrs as unknown as { numSegments: number }).numSegments;
      const xs = be.readSync(x.dataId) as Float32Array;
      const ids = be.readSync(segmentIds.dataId) as Int32Array;
      const inner = x.shape.slice(segmentIds.shape.length).reduce((a, b) => a * b, 1);
      const outShape = [numSegments, ...x.shape.slice(segmentIds.shape.length)];
      const out = be.makeOutput(outShape, x.dtype);
      const vals = be.typedArrayFromHeap(out) as Float32Array;
      vals.fill(0);
      for (let i = 0; i < ids.length; i++) {
        const seg = ids[i];
        if (seg < 0 || seg >= numSegments) continue;
        const src = i * inner;
        const dst = seg * inner;
        for (let j = 0; j < inner; j++) vals[dst + j] += xs[src + j];
      }
      return out;
    },
  });
}

function installPlainBatchMatMul(): void {
  const original = tf.getKernel('BatchMatMul', 'wasm');
  const transpose = tf.getKernel('Transpose', 'wasm');
  if (!original || !transpose) return;
  const swapLast = (info: tf.TensorInfo, be: object): tf.TensorInfo => {
    const r = info.shape.length;
    const perm = [...Array(r).keys()];
    [perm[r - 1], perm[r - 2]] = [perm[r - 2]!, perm[r - 1]!];
    return transpose.kernelFunc({ inputs: { x: info }, attrs: { perm }, backend: be as tf.KernelBackend }) as tf.TensorInfo;
  };
  tf.unregisterKernel('BatchMatMul', 'wasm');
  tf.registerKernel({
    kernelName: 'BatchMatMul',
    backendName: 'wasm',
    setupFunc: original.setupFunc,
    disposeFunc: original.disposeFunc,
    kernelFunc: ({ inputs, attrs, backend }) => {
      const { a, b } = inputs as { a: tf.TensorInfo; b: tf.TensorInfo };
      const { transposeA, transposeB } = attrs as unknown as { transposeA: boolean; transposeB: boolean };
      if (!transposeA && !transposeB) return original.kernelFunc({ inputs, attrs, backend });
      const be = backend as unknown as WasmBackend;
      const ta = transposeA ? swapLast(a, backend) : a;
      const tb = transposeB ? swapLast(b, backend) : b;
      const out = original.kernelFunc({
        inputs: { a: ta, b: tb },
        attrs: { ...attrs, transposeA: false, transposeB: false },
        backend,
      });
      if (ta !== a) be.disposeData(ta.dataId);
      if (tb !== b) be.disposeData(tb.dataId);
      return out;
    },
  });
}
