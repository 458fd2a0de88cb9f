import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { OrtSession, type SessionOptions } from './session.js';

const WEIGHT_DIR_PREFIX = 'ptune-weights-';
const liveWeightDirs = new Set<string>();
process.on('exit', () => {
  for (const dir of liveWeightDirs) fs.rmSync(dir, { recursive: true, force: true });
});

/** Removes weight files left by processes that died without their exit handler (killed). */
function sweepStaleWeightDirs(): void {
  const tmp = os.tmpdir();
  for (const name of fs.readdirSync(tmp)) {
    const pid = Number(/^ptune-weights-(\d+)-/.exec(name)?.[1]);
    if (!pid || pid === process.pid) continue;
    try {
      process.kill(pid, 0);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ESRCH') fs.rmSync(path.join(tmp, name), { recursive: true, force: true });
    }
  }
}

/**
 * Weights in one file that every session compiled from a model references as ONNX external data, so sessions
 * neither embed nor copy their own weights (ONNX Runtime maps page-aligned external data on CPU) and
 * serialised models stay small. The file lives in the temp directory until `dispose` or process exit; files of
 * processes that were killed are swept by the next one.
 */
export class WeightFile {
  private readonly dir: string;
  private readonly offsets = new Map<string, number>();
  private models = 0;

  /** `weights`: name and a reader of its values, read once each while the file is written. */
  constructor(weights: Iterable<[string, () => Float32Array]>) {
    sweepStaleWeightDirs();
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), `${WEIGHT_DIR_PREFIX}${process.pid}-`));
    liveWeightDirs.add(this.dir);
    let fd = -1;
    try {
      fd = fs.openSync(path.join(this.dir, 'weights.bin'), 'w');
      let at = 0;
      for (const [name, read] of weights) {
        at = Math.ceil(at / 65536) * 65536; // page-aligned, so the runtime can map each weight in place
        const data = read();
        fs.writeSync(fd, new Uint8Array(data.buffer, data.byteOffset, data.byteLength), 0, data.byteLength, at);
        this.offsets.set(name, at);
        at += data.byteLength;
      }
    } catch (e) {
      this.dispose(); // e.g. no space left: nothing half-written stays behind
      throw e;
    } finally {
      if (fd >= 0) fs.closeSync(fd);
    }
  }

  /** Where a weight lies; undefined for one the file does not hold. */
  place(name: string): { location: string; offset: number } | undefined {
    const offset = this.offsets.get(name);
    return offset === undefined ? undefined : { location: 'weights.bin', offset };
  }

  /** A session over `model` (which references this file); the model file itself is removed once loaded. */
  session(model: Uint8Array, opts: SessionOptions): OrtSession {
    const file = path.join(this.dir, `model-${this.models++}.onnx`);
    fs.writeFileSync(file, model);
    try {
      return new OrtSession(file, opts);
    } finally {
      fs.rmSync(file, { force: true });
    }
  }

  dispose(): void {
    fs.rmSync(this.dir, { recursive: true, force: true });
    liveWeightDirs.delete(this.dir);
  }
}
