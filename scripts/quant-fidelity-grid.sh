#!/bin/bash
# The fidelity grid of docs/quantization.md: every cell of scripts/quant-fidelity.ts (both mini models; LAMA and
# SST-2 at fp32 / int8 / int4, seeds 1,2,3; then the gradient and logit comparison), one process per cell, one
# after another, ONNX Runtime on one thread. Run from the repository root after `npx tsc -p .`; prints each
# cell's wall time. Results merge into docs/quantization/fidelity.json (or $OUT).
export PTUNE_THREADS=${PTUNE_THREADS:-1}
OUT=${OUT:-docs/quantization/fidelity.json}
T0=$(date +%s)
for m in bert-mini-lama gpt2-mini-lama; do
  for part in lama sst2; do
    for q in fp32 int8 int8-b32 int4 int4-b128; do
      t=$(date +%s)
      node dist/scripts/quant-fidelity.js --model $m --part $part --quant $q --seeds 1,2,3 --out "$OUT" || echo "FAILED $m $part $q"
      echo "cell $m $part $q: $(( $(date +%s) - t )) s"
    done
  done
  t=$(date +%s)
  node dist/scripts/quant-fidelity.js --model $m --part grads --out "$OUT" || echo "FAILED $m grads"
  echo "cell $m grads: $(( $(date +%s) - t )) s"
done
echo "total: $(( $(date +%s) - T0 )) s"
node dist/scripts/quant-fidelity.js --part table --out "$OUT"
