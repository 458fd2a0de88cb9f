import fs from 'node:fs';
import path from 'node:path';
import type { FileSource } from './files.js';

/** A directory on disk as a FileSource (Node only). */
export function dirSource(dir: string): FileSource {
  return {
    name: dir,
    async read(file) {
      const p = path.join(dir, file);
      if (!fs.existsSync(p)) return null;
      return new Uint8Array(fs.readFileSync(p));
    },
  };
}
