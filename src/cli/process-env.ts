/**
 * The environment the `ptune` command starts Node in (bin/ptune.js's shebang line sets the same; processes that
 * start `node bin/ptune.js` themselves pass this):
 * - glibc's mmap threshold fixed at 128 KiB, so the activations ONNX Runtime frees after each run go back to the
 *   system instead of staying in the heap (BERT-base P-tuning ~690 MB instead of ~850 MB);
 * - glibc's allocator asking for transparent huge pages on those mappings (`glibc.malloc.hugetlb=1`; where the
 *   kernel's THP mode is `madvise`): the fresh pages each run's buffers take are faulted 2 MiB at a time instead
 *   of 4 KiB (BERT-base fp32 P-tuning step 1.21–1.28 against 1.42–1.49 s here, the same peak RSS).
 */
export const PTUNE_PROCESS_ENV: Readonly<Record<string, string>> = {
  MALLOC_MMAP_THRESHOLD_: '131072',
  GLIBC_TUNABLES: 'glibc.malloc.hugetlb=1',
};
