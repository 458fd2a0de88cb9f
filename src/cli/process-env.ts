/**
 * The environment the `ptune` command starts Node in (bin/ptune.js's shebang line sets the same; processes that
 * start `node bin/ptune.js` themselves pass this):
 * glibc's mmap threshold fixed at 32 MiB (the largest it raises itself to), so that the tensors ONNX Runtime
 * allocates and frees during a training run are reused from the heap on the next run instead of being mapped,
 * faulted in and unmapped each time (see compile in src/engine/program.ts); fixed rather than self-raising so
 * that the heap does not wait for the first large blocks to be freed. Transparent huge pages
 * for those mappings (`GLIBC_TUNABLES=glibc.malloc.hugetlb=1`) are not asked for: with them a base-size step
 * spends more time in the kernel and is slower (BERT-base P-tuning, eight steps: 2.8–3.3 against 1.8–1.9 s of
 * system time, median step 1.43–1.74 against 1.29–1.31 s, three alternating pairs).
 */
export const PTUNE_PROCESS_ENV: Readonly<Record<string, string>> = {
  MALLOC_MMAP_THRESHOLD_: '33554432',
};
