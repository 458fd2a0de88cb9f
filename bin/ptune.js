#!/usr/bin/env -S MALLOC_MMAP_THRESHOLD_=131072 node --max-semi-space-size=2
// glibc keeps freed blocks below its self-raising mmap threshold in the heap instead of returning them; ONNX
// Runtime's per-run activations are such blocks, so a fixed threshold (set by the line above when this file runs
// as a program) keeps the process's memory at what it uses: BERT-base P-tuning ~690 MB instead of ~850 MB
// (src/cli/process-env.ts). V8's
// young generation grows to 3 × 16 MB after the bursts of objects a program's graph is built from and stays there;
// 2 MB semi-spaces keep ~25 MB of it off (BERT-base int8 P-tuning: 662 against 688 MB, the same step time).
import { main } from '../dist/src/cli/main.js';
main(process.argv).then((code) => {
  process.exitCode = code;
});
