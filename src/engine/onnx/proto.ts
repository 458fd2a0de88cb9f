import protobuf from 'protobufjs';

/**
 * Serialisation of the ONNX messages a generated model needs (ModelProto, GraphProto, NodeProto,
 * AttributeProto, TensorProto, ValueInfoProto), through protobufjs with a schema of just those messages and
 * fields (numbers as in onnx/onnx.proto3). Weights normally travel as external data (weight-file.ts), so the
 * serialised model is the graph and its small constants.
 */

export type ElemType = 'float32' | 'int32' | 'int64' | 'bool' | 'uint8' | 'int8' | 'float16';
/** ONNX's TensorProto.DataType numbers (a tensor's element type, Cast's `to`) */
export const ELEM: Record<ElemType, number> = { float32: 1, int32: 6, int64: 7, bool: 9, uint8: 2, int8: 3, float16: 10 };

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

const repeated = (type: string, id: number) => ({ rule: 'repeated', type, id });

const root = protobuf.Root.fromJSON({
  nested: {
    onnx: {
      nested: {
        ModelProto: {
          fields: {
            irVersion: { type: 'int64', id: 1 },
            producerName: { type: 'string', id: 2 },
            graph: { type: 'GraphProto', id: 7 },
            opsetImport: repeated('OperatorSetIdProto', 8),
          },
        },
        OperatorSetIdProto: { fields: { domain: { type: 'string', id: 1 }, version: { type: 'int64', id: 2 } } },
        GraphProto: {
          fields: {
            node: repeated('NodeProto', 1),
            name: { type: 'string', id: 2 },
            initializer: repeated('TensorProto', 5),
            input: repeated('ValueInfoProto', 11),
            output: repeated('ValueInfoProto', 12),
          },
        },
        NodeProto: {
          fields: {
            input: repeated('string', 1),
            output: repeated('string', 2),
            opType: { type: 'string', id: 4 },
            attribute: repeated('AttributeProto', 5),
            domain: { type: 'string', id: 7 },
          },
        },
        AttributeProto: {
          fields: {
            name: { type: 'string', id: 1 },
            f: { type: 'float', id: 2 },
            i: { type: 'int64', id: 3 },
            s: { type: 'bytes', id: 4 },
            floats: repeated('float', 7),
            ints: repeated('int64', 8),
            type: { type: 'int32', id: 20 },
          },
        },
        TensorProto: {
          fields: {
            dims: repeated('int64', 1),
            dataType: { type: 'int32', id: 2 },
            name: { type: 'string', id: 8 },
            rawData: { type: 'bytes', id: 9 },
            externalData: repeated('StringStringEntryProto', 13),
            dataLocation: { type: 'int32', id: 14 },
          },
        },
        StringStringEntryProto: { fields: { key: { type: 'string', id: 1 }, value: { type: 'string', id: 2 } } },
        ValueInfoProto: { fields: { name: { type: 'string', id: 1 }, type: { type: 'TypeProto', id: 2 } } },
        TypeProto: {
          fields: { tensorType: { type: 'Tensor', id: 1 } },
          nested: { Tensor: { fields: { elemType: { type: 'int32', id: 1 }, shape: { type: 'TensorShapeProto', id: 2 } } } },
        },
        TensorShapeProto: {
          fields: { dim: repeated('Dimension', 1) },
          nested: { Dimension: { fields: { dimValue: { type: 'int64', id: 1 } } } },
        },
      },
    },
  },
});

const ModelProto = root.lookupType('onnx.ModelProto');

// AttributeProto.AttributeType
const ATTR_FLOAT = 1, ATTR_INT = 2, ATTR_STRING = 3, ATTR_FLOATS = 6, ATTR_INTS = 7;

function attribute(name: string, v: AttrValue): Record<string, unknown> {
  if (typeof v === 'number') return { name, i: v, type: ATTR_INT };
  if (typeof v === 'string') return { name, s: new TextEncoder().encode(v), type: ATTR_STRING };
  if (Array.isArray(v) || 'ints' in v) return { name, ints: Array.isArray(v) ? v : v.ints, type: ATTR_INTS };
  if ('floats' in v) return { name, floats: v.floats, type: ATTR_FLOATS };
  return { name, f: v.float, type: ATTR_FLOAT };
}

function tensor(t: TensorSpec): Record<string, unknown> {
  const base = { dims: t.dims, dataType: ELEM[t.dtype], name: t.name };
  if (!t.external) {
    const raw = typeof t.raw === 'function' ? t.raw() : t.raw;
    if (raw.length !== t.byteLength) throw new Error(`onnx encode: tensor "${t.name}" has ${raw.length} bytes, ${t.byteLength} were declared`);
    return { ...base, rawData: raw };
  }
  const entries = { location: t.external.location, offset: String(t.external.offset), length: String(t.byteLength) };
  return { ...base, externalData: Object.entries(entries).map(([key, value]) => ({ key, value })), dataLocation: 1 };
}

function valueInfo(v: ValueSpec): Record<string, unknown> {
  return { name: v.name, type: { tensorType: { elemType: ELEM[v.dtype], shape: { dim: v.dims.map((d) => ({ dimValue: d })) } } } };
}

/** Serialised ModelProto (IR version 8). */
export function encodeModel(m: ModelSpec): Uint8Array {
  const message = ModelProto.fromObject({
    irVersion: 8,
    producerName: 'ptune',
    graph: {
      name: 'ptune',
      node: m.nodes.map((n) => ({
        input: n.inputs,
        output: n.outputs,
        opType: n.op,
        ...(n.domain && { domain: n.domain }),
        attribute: Object.entries(n.attrs ?? {}).map(([k, v]) => attribute(k, v)),
      })),
      initializer: m.initializers.map(tensor),
      input: m.inputs.map(valueInfo),
      output: m.outputs.map(valueInfo),
    },
    opsetImport: m.opsets.map((o) => ({ ...(o.domain && { domain: o.domain }), version: o.version })),
  });
  return ModelProto.encode(message).finish();
}
