import type * as NodeFs from 'node:fs';

/**
 * Node's `fs` when running in Node, else null (a browser). Reached through `process.getBuiltinModule`, not an
 * import, so a module that reads a file only as a convenience (a tokenizer directory, a label-word file) stays
 * loadable in a page; what loads over the network takes a FileSource instead (src/io/files.ts).
 */
export function nodeFs(): typeof NodeFs | null {
  const host = globalThis as { process?: { getBuiltinModule?: (id: string) => unknown } };
  return (host.process?.getBuiltinModule?.('node:fs') as typeof NodeFs | undefined) ?? null;
}

/** `nodeFs()`, or an error saying what needed a file system. */
export function requireNodeFs(what: string): typeof NodeFs {
  const fs = nodeFs();
  if (!fs) throw new Error(`${what}: reading files needs Node (in a browser, load through a FileSource)`);
  return fs;
}
