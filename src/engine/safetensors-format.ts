/**
 * The safetensors format without a file system: an 8-byte little-endian header length, a JSON header
 * `{ name: { dtype, shape, data_offsets: [start, end] }, __metadata__?: {...} }`, then the raw tensor bytes
 * (offsets relative to the end of the header). Files read here are whole byte arrays (fetched, or picked in a
 * page); safetensors.ts reads files from disk tensor by tensor with the same checks.
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

export function dtypeOf(t: TensorToWrite): string {
  if (t.data instanceof Float32Array) return 'F32';
  if (t.data instanceof Int32Array) return 'I32';
  if (t.data instanceof Uint8Array) return 'U8';
  if (t.data instanceof Int8Array) return 'I8';
  return t.dtype ?? 'F16';
}

export const BYTES: Record<string, number> = { F32: 4, F16: 2, BF16: 2, F64: 8, I8: 1, U8: 1, I16: 2, I32: 4, I64: 8, BOOL: 1 };
export const DECODABLE = new Set(['F32', 'F16', 'BF16', 'F64']);
/** the format's own limit on the header size */
export const MAX_HEADER = 100_000_000;

export interface Entry {
  name: string;
  dtype: string;
  shape: number[];
  start: number;
  end: number;
}

export function parseHeader(
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

export function decode(raw: Uint8Array, dtype: string): Float32Array {
  if (dtype === 'F32') {
    // a fresh, aligned buffer read for this tensor alone: viewed in place, never copied
    return raw.byteOffset % 4 === 0 ? new Float32Array(raw.buffer, raw.byteOffset, raw.byteLength / 4) : new Float32Array(raw.slice().buffer);
  }
  const out = new Float32Array(raw.byteLength / (BYTES[dtype] ?? 1));
  decodeInto(raw, dtype, out);
  return out;
}

/** Throws unless a tensor's `dtype` decodes to float32, naming the file and the tensor. */
export function assertDecodable(file: string, name: string, dtype: string): void {
  if (!DECODABLE.has(dtype)) throw new Error(`${file}: tensor "${name}": unsupported dtype ${dtype} (as float: F32, F16, BF16, F64)`);
}

/** `raw` (F32, F16, BF16 or F64 values) as float32 into `out`, which holds exactly as many values. */
export function decodeInto(raw: Uint8Array, dtype: string, out: Float32Array): void {
  const view = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
  const n = raw.byteLength / (BYTES[dtype] ?? 1);
  if (!DECODABLE.has(dtype)) throw new Error(`unsupported dtype ${dtype}`);
  if (out.length !== n) throw new Error(`decode: ${n} values into an array of ${out.length}`);
  switch (dtype) {
    case 'F32':
      new Uint8Array(out.buffer, out.byteOffset, out.byteLength).set(raw);
      return;
    case 'F16':
      for (let i = 0; i < n; i++) out[i] = halfToFloat(view.getUint16(2 * i, true));
      return;
    case 'BF16': {
      const bits = new Uint32Array(out.buffer, out.byteOffset, n);
      for (let i = 0; i < n; i++) bits[i] = view.getUint16(2 * i, true) << 16;
      return;
    }
    default:
      for (let i = 0; i < n; i++) out[i] = view.getFloat64(8 * i, true);
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
  /** Reads the values into `out` (exactly as many), with no array of its own on the way for F32. */
  readInto(out: Float32Array): void;
}

export function header(file: string, entries: [string, TensorToWrite][], metadata?: Record<string, string>): Uint8Array {
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
  const encoder = new TextEncoder();
  text += ' '.repeat((8 - (encoder.encode(text).length % 8)) % 8);
  const headerBytes = encoder.encode(text);
  const out = new Uint8Array(8 + headerBytes.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(headerBytes.length), true);
  out.set(headerBytes, 8);
  return out;
}

export const bytesOf = (t: TensorToWrite) => new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);

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


/**
 * The tensors of a safetensors file held in memory, checked as safetensors.ts checks files on disk; each
 * tensor is decoded to float32 when read (F32 tensors are views of `bytes` where aligned). `file` names the
 * file in messages.
 */
export function safetensorsIndex(bytes: Uint8Array, file: string): { tensors: Map<string, LazyTensor>; metadata: Record<string, string> } {
  const size = bytes.byteLength;
  if (size < 8) throw new Error(`${file}: not a safetensors file (${size} bytes, need at least 8)`);
  const headerLen = Number(new DataView(bytes.buffer, bytes.byteOffset, 8).getBigUint64(0, true));
  if (headerLen > size - 8 || headerLen > MAX_HEADER) {
    throw new Error(`${file}: header length ${headerLen} exceeds the file size ${size}`);
  }
  const dataStart = 8 + headerLen;
  const text = new TextDecoder().decode(bytes.subarray(8, dataStart));
  const { entries, metadata } = parseHeader(file, text, size - dataStart);
  const tensors = new Map<string, LazyTensor>();
  for (const e of entries) {
    tensors.set(e.name, {
      dtype: e.dtype,
      shape: e.shape,
      file,
      read: () => {
        assertDecodable(file, e.name, e.dtype);
        return decode(bytes.subarray(dataStart + e.start, dataStart + e.end), e.dtype);
      },
      readInto: (out) => {
        assertDecodable(file, e.name, e.dtype);
        decodeInto(bytes.subarray(dataStart + e.start, dataStart + e.end), e.dtype, out);
      },
    });
  }
  return { tensors, metadata };
}

/** Every tensor of a safetensors file held in memory, as float32. */
export function parseSafetensors(bytes: Uint8Array, file: string): SafetensorsFile {
  const { tensors, metadata } = safetensorsIndex(bytes, file);
  const out = new Map<string, StoredTensor>();
  for (const [name, t] of tensors) out.set(name, { dtype: t.dtype, shape: t.shape, data: t.read(), file });
  return { tensors: out, metadata };
}
