"""
The throughput of ONNX Runtime's CPU kernels for one linear layer of a BERT-base P-tuning step (512 rows: batch 16
x 32 tokens), fp32 against the quantized kernels ptune can use: MatMulNBits (blocks, int8/int4, accuracy level 0
or 4) and DynamicQuantizeMatMul (int8 per output channel, the activations quantized to uint8 per run), plus the
input-gradient form of the latter (dY times the [n, k] integers). docs/quantization.md quotes its output.

  python scripts/quant-kernels.py [--rows 512] [--threads 2]      # needs numpy, onnx, onnxruntime (not ptune's)
"""
import argparse
import json
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper


def session(nodes, inits, k, n, rows, threads):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, k])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, n])], inits)
    m = helper.make_model(g, ir_version=9, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    o = ort.SessionOptions()
    o.intra_op_num_threads = threads
    o.inter_op_num_threads = 1
    return ort.InferenceSession(m.SerializeToString(), o, providers=["CPUExecutionProvider"])


def timed(s, k, rows, reps=50):
    x = np.random.default_rng(1).standard_normal((rows, k)).astype(np.float32)
    for _ in range(5):
        s.run(None, {"x": x})
    t = time.perf_counter()
    for _ in range(reps):
        s.run(None, {"x": x})
    return (time.perf_counter() - t) / reps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    out = {"onnxruntime": ort.__version__, "rows": a.rows, "threads": a.threads, "shapes": []}
    for k, n in [(768, 768), (768, 3072), (3072, 768)]:
        w = rng.standard_normal((k, n)).astype(np.float32)
        scale = (np.abs(w).max(0) / 127).astype(np.float32)
        q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)  # [k, n], a scale per column
        cases = {
            "fp32 MatMul": ([helper.make_node("MatMul", ["x", "W"], ["y"])], [numpy_helper.from_array(w, "W")], k, n),
            "int8 per channel (DynamicQuantizeMatMul)": (
                [helper.make_node("DynamicQuantizeMatMul", ["x", "Q", "S"], ["y"], domain="com.microsoft")],
                [numpy_helper.from_array(q, "Q"), numpy_helper.from_array(scale, "S")], k, n),
            # the input gradient: dY [rows, n] times the same integers as [n, k], the scales folded into dY
            "int8 per channel, input gradient": (
                [helper.make_node("DynamicQuantizeMatMul", ["x", "Q", "S"], ["y"], domain="com.microsoft")],
                [numpy_helper.from_array(np.ascontiguousarray(q.T), "Q"), numpy_helper.from_array(np.float32(1), "S")], n, k),
        }
        for bits in (8, 4):
            for block in (32, 128):
                for level in (0, 4):
                    blocks = k // block
                    data = rng.integers(0, 256, (n, blocks, block * bits // 8), dtype=np.uint8)
                    scales = np.full((n * blocks,), 0.01, np.float32)
                    node = helper.make_node("MatMulNBits", ["x", "D", "S"], ["y"], domain="com.microsoft", K=k, N=n, bits=bits,
                                            block_size=block, accuracy_level=level)
                    cases[f"int{bits} blocks of {block}, accuracy level {level} (MatMulNBits)"] = (
                        [node], [numpy_helper.from_array(data, "D"), numpy_helper.from_array(scales, "S")], k, n)
        row = {"k": k, "n": n, "ms": {}, "gflops": {}}
        for name, (nodes, inits, kk, nn) in cases.items():
            dt = timed(session(nodes, inits, kk, nn, a.rows, a.threads), kk, a.rows)
            row["ms"][name] = round(dt * 1e3, 3)
            row["gflops"][name] = round(2 * a.rows * kk * nn / dt / 1e9, 1)
        out["shapes"].append(row)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
