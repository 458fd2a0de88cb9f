/**
 * Protobuf wire encoding of the few ONNX messages a generated model needs (ModelProto, GraphProto, NodeProto,
 * AttributeProto, TensorProto, ValueInfoProto). Field numbers follow onnx/onnx.proto3. Hand-encoded: the
 * subset is small, write-only and has no optional-field subtleties, so a protobuf runtime would add nothing.
 */

export type ElemType = 'float32' | 'int32' | 'int64' | 'bool';
const ELEM: Record<ElemType, number> = { float32: 1, int32: 6, int64: 7, bool: 9 };

export type AttrValue = number | number[] | string | { float: number } | { floats: number[] } | { ints: number[] };

export interface NodeSpec {
  op: string;
  inputs: string[];
  outputs: string[];
  attrs?: Record<string, AttrValue>;
  domain?: string;
}

export interface TensorSpec {
  name: string;
  dtype: ElemType;
  dims: number[];
  /**
   * little-endian bytes of the values, or a function producing them (called once, while the final buffer is
   * written, so a model's weights never all sit in memory twice); `byteLength` must then be given
   */
  raw: Uint8Array | (() => Uint8Array);
  byteLength: number;
  /** stored outside the model (ONNX external data): file name relative to the model file, byte offset */
  external?: { location: string; offset: number };
}

export interface ValueSpec {
  name: string;
  dtype: ElemType;
  dims: number[];
}

export interface ModelSpec {
  nodes: NodeSpec[];
  initializers: TensorSpec[];
  inputs: ValueSpec[];
  outputs: ValueSpec[];
  opsets: { domain: string; version: number }[];
}

/** A run of bytes in the output: inline bytes, or a tensor's data fetched only when the output is assembled. */
type Chunk = Uint8Array | { length: number; fetch: () => Uint8Array };

/**
 * Protobuf writer that keeps a message as a list of chunks: nested messages and large byte fields are linked,
 * not copied, and `finish` assembles the model once into a buffer of the exact size (a weight-carrying model
 * used to be copied at every nesting level while its buffers doubled).
 */
class Writer {
  private readonly chunks: Chunk[] = [];
  private buf = new Uint8Array(256);
  private used = 0;
  /** total bytes written so far */
  length = 0;

  private reserve(n: number): void {
    if (this.used + n <= this.buf.length) return;
    this.flush();
    if (n > this.buf.length) this.buf = new Uint8Array(Math.max(n, 256));
  }

  private flush(): void {
    if (this.used === 0) return;
    this.chunks.push(this.buf.slice(0, this.used));
    this.used = 0;
  }

  private push(c: Chunk): void {
    this.flush();
    this.chunks.push(c);
    this.length += c.length;
  }

  varint(v: number | bigint): void {
    let x = BigInt.asUintN(64, BigInt(v));
    this.reserve(10);
    while (x >= 0x80n) {
      this.buf[this.used++] = Number(x & 0x7fn) | 0x80;
      this.length++;
      x >>= 7n;
    }
    this.buf[this.used++] = Number(x);
    this.length++;
  }

  tag(field: number, wire: number): void {
    this.varint((field << 3) | wire);
  }

  bytes(field: number, data: Uint8Array | (() => Uint8Array), byteLength?: number): void {
    const n = typeof data === 'function' ? byteLength! : data.length;
    this.tag(field, 2);
    this.varint(n);
    if (typeof data === 'function') this.push({ length: n, fetch: data });
    else if (n > 4096) this.push(data);
    else {
      this.reserve(n);
      this.buf.set(data, this.used);
      this.used += n;
      this.length += n;
    }
  }

  string(field: number, s: string): void {
    this.bytes(field, new TextEncoder().encode(s));
  }

  message(field: number, build: (w: Writer) => void): void {
    const inner = new Writer();
    build(inner);
    inner.flush();
    this.tag(field, 2);
    this.varint(inner.length);
    for (const c of inner.chunks) this.push(c);
  }

  int(field: number, v: number): void {
    this.tag(field, 0);
    this.varint(v);
  }

  float(field: number, v: number): void {
    this.tag(field, 5);
    this.reserve(4);
    new DataView(this.buf.buffer).setFloat32(this.used, v, true);
    this.used += 4;
    this.length += 4;
  }

  finish(): Uint8Array {
    this.flush();
    const out = new Uint8Array(this.length);
    let at = 0;
    for (const c of this.chunks) {
      const data = c instanceof Uint8Array ? c : c.fetch();
      if (data.length !== c.length) throw new Error(`onnx encode: a tensor produced ${data.length} bytes, ${c.length} were declared`);
      out.set(data, at);
      at += data.length;
    }
    return out;
  }
}

// AttributeProto.AttributeType
const ATTR_FLOAT = 1, ATTR_INT = 2, ATTR_STRING = 3, ATTR_FLOATS = 6, ATTR_INTS = 7;

function writeAttr(w: Writer, name: string, v: AttrValue): void {
  w.string(1, name);
  if (typeof v === 'number') {
    w.int(3, v);
    w.int(20, ATTR_INT);
  } else if (typeof v === 'string') {
    w.bytes(4, new TextEncoder().encode(v));
    w.int(20, ATTR_STRING);
  } else if (Array.isArray(v) || 'ints' in v) {
    for (const i of Array.isArray(v) ? v : v.ints) w.int(8, i);
    w.int(20, ATTR_INTS);
  } else if ('floats' in v) {
    for (const f of v.floats) w.float(7, f);
    w.int(20, ATTR_FLOATS);
  } else {
    w.float(2, v.float);
    w.int(20, ATTR_FLOAT);
  }
}

function writeTensor(w: Writer, t: TensorSpec): void {
  for (const d of t.dims) w.int(1, d);
  w.int(2, ELEM[t.dtype]);
  w.string(8, t.name);
  if (!t.external) {
    w.bytes(9, t.raw, t.byteLength);
    return;
  }
  const entry = (key: string, value: string) =>
    w.message(13, (e) => {
      e.string(1, key);
      e.string(2, value);
    });
  entry('location', t.external.location);
  entry('offset', String(t.external.offset));
  entry('length', String(t.byteLength));
  w.int(14, 1); // data_location = EXTERNAL
}

function writeValueInfo(w: Writer, v: ValueSpec): void {
  w.string(1, v.name);
  w.message(2, (type) =>
    type.message(1, (tensor) => {
      tensor.int(1, ELEM[v.dtype]);
      tensor.message(2, (shape) => {
        for (const d of v.dims) shape.message(1, (dim) => dim.int(1, d));
      });
    }),
  );
}

/** Serialised ModelProto (IR version 8). */
export function encodeModel(m: ModelSpec): Uint8Array {
  const w = new Writer();
  w.int(1, 8); // ir_version
  w.string(2, 'ptune');
  w.message(7, (g) => {
    for (const n of m.nodes) {
      g.message(1, (node) => {
        for (const i of n.inputs) node.string(1, i);
        for (const o of n.outputs) node.string(2, o);
        node.string(4, n.op);
        if (n.domain) node.string(7, n.domain);
        for (const [k, v] of Object.entries(n.attrs ?? {})) node.message(5, (a) => writeAttr(a, k, v));
      });
    }
    g.string(2, 'ptune');
    for (const t of m.initializers) g.message(5, (tw) => writeTensor(tw, t));
    for (const v of m.inputs) g.message(11, (vw) => writeValueInfo(vw, v));
    for (const v of m.outputs) g.message(12, (vw) => writeValueInfo(vw, v));
  });
  for (const o of m.opsets) {
    w.message(8, (os) => {
      if (o.domain) os.string(1, o.domain);
      os.int(2, o.version);
    });
  }
  return w.finish();
}
