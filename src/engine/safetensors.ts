import fs from 'node:fs';
import path from 'node:path';
import { MAX_HEADER, assertDecodable, bytesOf, decode, decodeInto, header, parseHeader, type LazyTensor, type SafetensorsFile, type StoredTensor, type TensorsToWrite } from './safetensors-format.js';

export {
  halfToFloat, parseSafetensors, safetensorsBytes, safetensorsIndex,
  type LazyTensor, type SafetensorsFile, type StoredTensor, type TensorToWrite, type TensorsToWrite,
} from './safetensors-format.js';

/**
 * Reading and writing safetensors files on disk (the format itself, for bytes in memory: safetensors-format.ts).
 * Every tensor is returned as float32.
 */

/** A safetensors file whose header has been read; tensors are read one at a time from their file offsets. */
export class SafetensorsReader {
  readonly entries: Map<string, { dtype: string; shape: number[] }>;
  readonly metadata: Record<string, string>;
  private readonly offsets = new Map<string, { start: number; end: number }>();
  private readonly dataStart: number;

  constructor(readonly file: string) {
    const fd = openOrThrow(file);
    try {
      const size = fs.fstatSync(fd).size;
      if (size < 8) throw new Error(`${file}: not a safetensors file (${size} bytes, need at least 8)`);
      const lenBuf = Buffer.alloc(8);
      fs.readSync(fd, lenBuf, 0, 8, 0);
      const headerLen = Number(lenBuf.readBigUInt64LE(0));
      if (headerLen > size - 8 || headerLen > MAX_HEADER) {
        throw new Error(`${file}: header length ${headerLen} exceeds the file size ${size}`);
      }
      const headerBuf = Buffer.alloc(headerLen);
      fs.readSync(fd, headerBuf, 0, headerLen, 8);
      this.dataStart = 8 + headerLen;
      const { entries, metadata } = parseHeader(file, headerBuf.toString('utf8'), size - this.dataStart);
      this.metadata = metadata;
      this.entries = new Map();
      for (const e of entries) {
        this.entries.set(e.name, { dtype: e.dtype, shape: e.shape });
        this.offsets.set(e.name, { start: e.start, end: e.end });
      }
    } finally {
      fs.closeSync(fd);
    }
  }

  /** The raw bytes of one tensor, read from its offsets (into `into`, exactly as many bytes, when given). */
  readBytes(name: string, into?: Uint8Array): Uint8Array {
    const at = this.offsets.get(name);
    if (!at) throw new Error(`${this.file}: no tensor "${name}"`);
    if (into && into.length !== at.end - at.start) throw new Error(`${this.file}: tensor "${name}": ${at.end - at.start} bytes into ${into.length}`);
    const fd = openOrThrow(this.file);
    try {
      const out = into ?? new Uint8Array(at.end - at.start);
      let done = 0;
      while (done < out.length) {
        const n = fs.readSync(fd, out, done, out.length - done, this.dataStart + at.start + done);
        if (n === 0) throw new Error(`${this.file}: tensor "${name}": file ends early`);
        done += n;
      }
      return out;
    } finally {
      fs.closeSync(fd);
    }
  }

  /** One tensor as float32 (F16, BF16 and F64 are converted). */
  read(name: string): StoredTensor {
    const e = this.decodable(name);
    return { dtype: e.dtype, shape: e.shape, data: decode(this.readBytes(name), e.dtype), file: this.file };
  }

  /** One tensor's values into `out` (float32, exactly as many): F32 read straight into it. */
  readInto(name: string, out: Float32Array): void {
    const e = this.decodable(name);
    if (e.dtype === 'F32') this.readBytes(name, new Uint8Array(out.buffer, out.byteOffset, out.byteLength));
    else decodeInto(this.readBytes(name), e.dtype, out);
  }

  /** The entry of a tensor that decodes to float32. */
  private decodable(name: string): { dtype: string; shape: number[] } {
    const e = this.entries.get(name);
    if (!e) throw new Error(`${this.file}: no tensor "${name}"`);
    assertDecodable(this.file, name, e.dtype);
    return e;
  }
}

/** Every tensor of a (small) file, read at once. */
export function readSafetensors(file: string): SafetensorsFile {
  const reader = new SafetensorsReader(file);
  const tensors = new Map<string, StoredTensor>();
  for (const name of reader.entries.keys()) tensors.set(name, reader.read(name));
  return { tensors, metadata: reader.metadata };
}

function openOrThrow(file: string): number {
  try {
    return fs.openSync(file, 'r');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new Error(code === 'ENOENT' ? `${file}: file not found` : `${file}: cannot open (${code ?? String(err)})`);
  }
}

/**
 * The tensors of a Hugging Face checkpoint directory, by name: `model.safetensors`, or the shards listed in
 * `model.safetensors.index.json` (`weight_map`: tensor name → shard file). Only headers are read here; each
 * tensor's data is read from its file offsets when `read()` is called.
 */
export function checkpointIndex(dir: string): Map<string, LazyTensor> {
  const single = path.join(dir, 'model.safetensors');
  const index = path.join(dir, 'model.safetensors.index.json');
  const out = new Map<string, LazyTensor>();
  const add = (reader: SafetensorsReader, name: string) => {
    const e = reader.entries.get(name)!;
    out.set(name, { dtype: e.dtype, shape: e.shape, file: reader.file, read: () => reader.read(name).data, readInto: (o) => reader.readInto(name, o) });
  };
  if (fs.existsSync(single)) {
    const reader = new SafetensorsReader(single);
    for (const name of reader.entries.keys()) add(reader, name);
    return out;
  }
  if (!fs.existsSync(index)) throw new Error(`${dir}: no model.safetensors or model.safetensors.index.json`);
  let weightMap: unknown;
  try {
    weightMap = (JSON.parse(fs.readFileSync(index, 'utf8')) as { weight_map?: unknown }).weight_map;
  } catch (err) {
    throw new Error(`${index}: invalid JSON (${(err as Error).message})`);
  }
  if (typeof weightMap !== 'object' || weightMap === null) throw new Error(`${index}: weight_map missing or not an object`);
  const byShard = new Map<string, string[]>();
  for (const [name, shard] of Object.entries(weightMap)) {
    if (typeof shard !== 'string') throw new Error(`${index}: weight_map["${name}"] is not a file name`);
    byShard.set(shard, [...(byShard.get(shard) ?? []), name]);
  }
  for (const [shard, names] of byShard) {
    const reader = new SafetensorsReader(path.join(dir, shard));
    for (const name of names) {
      if (!reader.entries.has(name)) throw new Error(`${reader.file}: tensor "${name}" listed in ${path.basename(index)} is not in the shard`);
      add(reader, name);
    }
  }
  return out;
}

/** All tensors of a checkpoint directory, read at once (small checkpoints and tests). */
export function loadCheckpointTensors(dir: string): Map<string, StoredTensor> {
  const out = new Map<string, StoredTensor>();
  for (const [name, t] of checkpointIndex(dir)) out.set(name, { dtype: t.dtype, shape: t.shape, data: t.read(), file: t.file });
  return out;
}

/** Writes tensors atomically (temp file + rename), one tensor at a time; the header is padded to 8 bytes. */
export function writeSafetensors(file: string, tensors: TensorsToWrite, metadata?: Record<string, string>): void {
  const entries = tensors instanceof Map ? [...tensors] : Object.entries(tensors);
  const head = header(file, entries, metadata);
  const tmp = `${file}.${process.pid}.${Math.random().toString(36).slice(2)}.tmp`;
  try {
    const fd = fs.openSync(tmp, 'w');
    try {
      fs.writeSync(fd, head);
      for (const [, t] of entries) fs.writeSync(fd, bytesOf(t));
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    fs.renameSync(tmp, file);
  } catch (err) {
    fs.rmSync(tmp, { force: true });
    throw err;
  }
}
