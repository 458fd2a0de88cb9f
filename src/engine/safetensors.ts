import fs from 'node:fs';
import path from 'node:path';

/**
 * Reading and writing the safetensors format: an 8-byte little-endian header length, a JSON header
 * `{ name: { dtype, shape, data_offsets: [start, end] }, __metadata__?: {...} }`, then the raw tensor bytes
 * (offsets relative to the end of the header). Every tensor is returned as float32.
 */

export interface StoredTensor {
  /** dtype as stored in the file (F32, F16, BF16, F64) */
  dtype: string;
  shape: number[];
  data: Float32Array;
  /** the file the tensor was read from */
  file: string;
}

export interface SafetensorsFile {
  tensors: Map<string, StoredTensor>;
  metadata: Record<string, string>;
}

/** A tensor to write: float32 by default; integer and half arrays are written as the dtype their array implies. */
export interface TensorToWrite {
  shape: number[];
  data: Float32Array | Int32Array | Uint8Array | Int8Array | Uint16Array;
  /** for Uint16Array data: F16 (default) or BF16 */
  dtype?: 'F16' | 'BF16';
}

export type TensorsToWrite = Map<string, TensorToWrite> | Record<string, TensorToWrite>;

function dtypeOf(t: TensorToWrite): string {
  if (t.data instanceof Float32Array) return 'F32';
  if (t.data instanceof Int32Array) return 'I32';
  if (t.data instanceof Uint8Array) return 'U8';
  if (t.data instanceof Int8Array) return 'I8';
  return t.dtype ?? 'F16';
}

const BYTES: Record<string, number> = { F32: 4, F16: 2, BF16: 2, F64: 8, I8: 1, U8: 1, I16: 2, I32: 4, I64: 8, BOOL: 1 };
const DECODABLE = new Set(['F32', 'F16', 'BF16', 'F64']);
/** the format's own limit on the header size */
const MAX_HEADER = 100_000_000;

interface Entry {
  name: string;
  dtype: string;
  shape: number[];
  start: number;
  end: number;
}

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

  /** The raw bytes of one tensor, read from its offsets. */
  readBytes(name: string): Uint8Array {
    const at = this.offsets.get(name);
    if (!at) throw new Error(`${this.file}: no tensor "${name}"`);
    const fd = openOrThrow(this.file);
    try {
      const out = new Uint8Array(at.end - at.start);
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
    const e = this.entries.get(name);
    if (!e) throw new Error(`${this.file}: no tensor "${name}"`);
    if (!DECODABLE.has(e.dtype)) throw new Error(`${this.file}: tensor "${name}": unsupported dtype ${e.dtype} (as float: F32, F16, BF16, F64)`);
    return { dtype: e.dtype, shape: e.shape, data: decode(this.readBytes(name), e.dtype), file: this.file };
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

function parseHeader(
  file: string,
  text: string,
  dataLen: number,
): { entries: Entry[]; metadata: Record<string, string> } {
  let header: unknown;
  try {
    header = JSON.parse(text);
  } catch (err) {
    throw new Error(`${file}: header is not valid JSON (${(err as Error).message})`);
  }
  if (typeof header !== 'object' || header === null || Array.isArray(header)) {
    throw new Error(`${file}: header is not a JSON object`);
  }
  const metadata: Record<string, string> = {};
  const entries: Entry[] = [];
  for (const [name, value] of Object.entries(header as Record<string, unknown>)) {
    if (name === '__metadata__') {
      if (typeof value !== 'object' || value === null) throw new Error(`${file}: __metadata__ is not an object`);
      for (const [k, v] of Object.entries(value)) metadata[k] = String(v);
      continue;
    }
    entries.push(parseEntry(file, name, value, dataLen));
  }
  const sorted = [...entries].sort((a, b) => a.start - b.start);
  for (let i = 1; i < sorted.length; i++) {
    const prev = sorted[i - 1]!;
    const cur = sorted[i]!;
    if (cur.start < prev.end) {
      throw new Error(
        `${file}: tensor "${cur.name}": data_offsets [${cur.start}, ${cur.end}] overlap tensor "${prev.name}" [${prev.start}, ${prev.end}]`,
      );
    }
  }
  return { entries, metadata };
}

function parseEntry(file: string, name: string, value: unknown, dataLen: number): Entry {
  const where = `${file}: tensor "${name}"`;
  if (typeof value !== 'object' || value === null) throw new Error(`${where}: entry is not an object`);
  const { dtype, shape, data_offsets: offsets } = value as Record<string, unknown>;
  if (typeof dtype !== 'string') throw new Error(`${where}: dtype missing or not a string`);
  const bytes = BYTES[dtype];
  if (bytes === undefined) throw new Error(`${where}: unknown dtype ${JSON.stringify(dtype)}`);
  if (!Array.isArray(shape) || !shape.every((d) => Number.isInteger(d) && d >= 0)) {
    throw new Error(`${where}: shape ${JSON.stringify(shape)} is not a list of non-negative integers`);
  }
  if (
    !Array.isArray(offsets) ||
    offsets.length !== 2 ||
    !offsets.every((o) => Number.isInteger(o) && o >= 0) ||
    offsets[0] > offsets[1]
  ) {
    throw new Error(`${where}: data_offsets ${JSON.stringify(offsets)} is not a pair [start, end] with start <= end`);
  }
  const [start, end] = offsets as [number, number];
  const expected = (shape as number[]).reduce((a, b) => a * b, 1) * bytes;
  if (end - start !== expected) {
    throw new Error(
      `${where}: data_offsets [${start}, ${end}] do not match shape [${shape.join(',')}] ${dtype} (${expected} bytes)`,
    );
  }
  if (end > dataLen) {
    throw new Error(`${where}: data_offsets [${start}, ${end}] run past the end of the data (${dataLen} bytes)`);
  }
  return { name, dtype, shape: shape as number[], start, end };
}

function decode(raw: Uint8Array, dtype: string): Float32Array {
  const view = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
  switch (dtype) {
    case 'F32':
      // a fresh, aligned buffer read for this tensor alone: viewed in place, never copied
      return raw.byteOffset % 4 === 0 ? new Float32Array(raw.buffer, raw.byteOffset, raw.byteLength / 4) : new Float32Array(raw.slice().buffer);
    case 'F16': {
      const out = new Float32Array(raw.byteLength / 2);
      for (let i = 0; i < out.length; i++) out[i] = halfToFloat(view.getUint16(2 * i, true));
      return out;
    }
    case 'BF16': {
      const out = new Float32Array(raw.byteLength / 2);
      const bits = new Uint32Array(out.buffer);
      for (let i = 0; i < out.length; i++) bits[i] = view.getUint16(2 * i, true) << 16;
      return out;
    }
    case 'F64': {
      const out = new Float32Array(raw.byteLength / 8);
      for (let i = 0; i < out.length; i++) out[i] = view.getFloat64(8 * i, true);
      return out;
    }
    default:
      throw new Error(`unsupported dtype ${dtype}`);
  }
}

/** IEEE 754 binary16 → number */
export function halfToFloat(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24;
  if (exp === 0x1f) return frac ? NaN : sign * Infinity;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}

/** A tensor of a checkpoint, read from its file when asked. */
export interface LazyTensor {
  dtype: string;
  shape: number[];
  file: string;
  read(): Float32Array;
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
    out.set(name, { dtype: e.dtype, shape: e.shape, file: reader.file, read: () => reader.read(name).data });
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

function header(file: string, entries: [string, TensorToWrite][], metadata?: Record<string, string>): Uint8Array {
  const json: Record<string, unknown> = {};
  if (metadata && Object.keys(metadata).length) json.__metadata__ = metadata;
  let offset = 0;
  for (const [name, t] of entries) {
    const numel = t.shape.reduce((a, b) => a * b, 1);
    if (t.data.length !== numel) {
      throw new Error(`${file}: tensor "${name}": ${t.data.length} values do not match shape [${t.shape.join(',')}]`);
    }
    const bytes = t.data.byteLength;
    json[name] = { dtype: dtypeOf(t), shape: t.shape, data_offsets: [offset, offset + bytes] };
    offset += bytes;
  }
  let text = JSON.stringify(json);
  text += ' '.repeat((8 - (Buffer.byteLength(text) % 8)) % 8);
  const headerBytes = Buffer.from(text, 'utf8');
  const out = new Uint8Array(8 + headerBytes.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(headerBytes.length), true);
  out.set(headerBytes, 8);
  return out;
}

const bytesOf = (t: TensorToWrite) => new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);

/** The bytes of a safetensors file holding `tensors` (small tensors: the file is built in memory). */
export function safetensorsBytes(tensors: TensorsToWrite, metadata?: Record<string, string>): Uint8Array {
  const entries = tensors instanceof Map ? [...tensors] : Object.entries(tensors);
  const head = header('safetensors', entries, metadata);
  const out = new Uint8Array(head.length + entries.reduce((n, [, t]) => n + t.data.byteLength, 0));
  out.set(head, 0);
  let at = head.length;
  for (const [, t] of entries) {
    out.set(bytesOf(t), at);
    at += t.data.byteLength;
  }
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
