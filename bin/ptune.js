#!/usr/bin/env -S MALLOC_MMAP_THRESHOLD_=33554432 node --max-semi-space-size=2
// glibc's mmap threshold fixed at its largest (set by the line above when this file runs as a program): the
// tensors ONNX Runtime allocates during a training run are reused from the heap on the next run instead of being
// mapped and faulted in afresh each time (src/cli/process-env.ts). V8's
// young generation grows to 3 × 16 MB after the bursts of objects a program's graph is built from and stays there;
// 2 MB semi-spaces keep ~25 MB of it off (BERT-base int8 P-tuning: 662 against 688 MB, the same step time).
import { main } from '../dist/src/cli/main.js';
main(process.argv).then((code) => {
  process.exitCode = code;
});
