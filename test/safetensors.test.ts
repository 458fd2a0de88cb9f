import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  halfToFloat,
  loadCheckpointTensors,
  readSafetensors,
  writeSafetensors,
} from '../src/engine/safetensors.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'ptune-st-'));

/** A safetensors file from a header object and raw data bytes, with the header length optionally overridden. */
function craft(name: string, header: object, data: Uint8Array, headerLen?: number): string {
  const json = Buffer.from(JSON.stringify(header), 'utf8');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(headerLen ?? json.length));
  const file = path.join(tmp, name);
  fs.writeFileSync(file, Buffer.concat([len, json, data]));
  return file;
}

function u16(values: number[]): Uint8Array {
  const b = Buffer.alloc(values.length * 2);
  values.forEach((v, i) => b.writeUInt16LE(v, 2 * i));
  return b;
}

test('write then read round-trips shapes, values and metadata; header padded to 8 bytes', () => {
  const file = path.join(tmp, 'rt.safetensors');
  const a = Float32Array.from([1, -2.5, 3.25, 1e-8, 6]);
  const b = Float32Array.from({ length: 12 }, (_, i) => i * 0.5 - 3);
  writeSafetensors(file, { 'a.weight': { shape: [5], data: a }, 'b.bias': { shape: [3, 4], data: b } }, { format: 'pt' });
  const bytes = fs.readFileSync(file);
  assert.equal(Number(bytes.readBigUInt64LE(0)) % 8, 0);
  assert.equal(fs.readdirSync(tmp).some((f) => f.includes('.tmp-')), false);
  const { tensors, metadata } = readSafetensors(file);
  assert.deepEqual(metadata, { format: 'pt' });
  assert.deepEqual([...tensors.keys()], ['a.weight', 'b.bias']);
  assert.deepEqual(tensors.get('a.weight')!.shape, [5]);
  assert.deepEqual(tensors.get('b.bias')!.shape, [3, 4]);
  assert.deepEqual(tensors.get('a.weight')!.data, a);
  assert.deepEqual(tensors.get('b.bias')!.data, b);
  assert.equal(tensors.get('a.weight')!.dtype, 'F32');

  const map = new Map([['s', { shape: [] as number[], data: Float32Array.from([7]) }]]);
  writeSafetensors(file, map);
  const again = readSafetensors(file);
  assert.deepEqual(again.tensors.get('s')!.shape, []);
  assert.equal(again.tensors.get('s')!.data[0], 7);
  assert.deepEqual(again.metadata, {});
});

test('F16 decodes to known values, subnormals and infinities included', () => {
  const bits = [0x3c00, 0xc000, 0x7bff, 0x0001, 0x3555, 0x7c00, 0xfc00, 0x8000];
  const file = craft('f16.safetensors', { h: { dtype: 'F16', shape: [2, 4], data_offsets: [0, 16] } }, u16(bits));
  const t = readSafetensors(file).tensors.get('h')!;
  assert.equal(t.dtype, 'F16');
  const want = [1, -2, 65504, 2 ** -24, 0.333251953125, Infinity, -Infinity, -0];
  assert.deepEqual([...t.data], want.map((v) => Math.fround(v)));
  assert.ok(Number.isNaN(halfToFloat(0x7e00)));
});

test('BF16 decodes to known values', () => {
  const bits = [0x3f80, 0xc040, 0x4049, 0x0000, 0x7f80];
  const file = craft('bf16.safetensors', { w: { dtype: 'BF16', shape: [5], data_offsets: [0, 10] } }, u16(bits));
  const t = readSafetensors(file).tensors.get('w')!;
  assert.deepEqual([...t.data], [1, -3, 3.140625, 0, Infinity]);
});

test('sharded checkpoint: tensors gathered through model.safetensors.index.json', () => {
  const dir = fs.mkdtempSync(path.join(tmp, 'sharded-'));
  writeSafetensors(path.join(dir, 'model-00001-of-00002.safetensors'), { x: { shape: [2], data: Float32Array.from([1, 2]) } });
  writeSafetensors(path.join(dir, 'model-00002-of-00002.safetensors'), { y: { shape: [1, 2], data: Float32Array.from([3, 4]) } });
  const index = { metadata: {}, weight_map: { x: 'model-00001-of-00002.safetensors', y: 'model-00002-of-00002.safetensors' } };
  fs.writeFileSync(path.join(dir, 'model.safetensors.index.json'), JSON.stringify(index));
  const all = loadCheckpointTensors(dir);
  assert.deepEqual([...all.keys()].sort(), ['x', 'y']);
  assert.deepEqual([...all.get('y')!.data], [3, 4]);
  assert.match(all.get('y')!.file, /model-00002-of-00002\.safetensors$/);

  fs.rmSync(path.join(dir, 'model-00002-of-00002.safetensors'));
  assert.throws(() => loadCheckpointTensors(dir), /model-00002-of-00002\.safetensors: file not found/);
  const empty = fs.mkdtempSync(path.join(tmp, 'empty-'));
  assert.throws(() => loadCheckpointTensors(empty), /no model\.safetensors or model\.safetensors\.index\.json/);
});

function oneLine(fn: () => unknown, pattern: RegExp): void {
  assert.throws(fn, (err: Error) => {
    assert.match(err.message, pattern);
    assert.equal(err.message.includes('\n'), false);
    return true;
  });
}

test('corrupt files give one-line errors naming the file and the tensor', () => {
  const four = new Uint8Array(16);
  const short = path.join(tmp, 'short.safetensors');
  fs.writeFileSync(short, Buffer.from([1, 2, 3]));
  oneLine(() => readSafetensors(short), /short\.safetensors: not a safetensors file \(3 bytes/);

  const lying = craft('lying.safetensors', { x: { dtype: 'F32', shape: [4], data_offsets: [0, 16] } }, four, 10_000);
  oneLine(() => readSafetensors(lying), /lying\.safetensors: header length 10000 exceeds the file size/);

  const good = readSafetensors(craft('ok.safetensors', { x: { dtype: 'F32', shape: [4], data_offsets: [0, 16] } }, four));
  assert.equal(good.tensors.get('x')!.data.length, 4);

  const truncated = craft('trunc.safetensors', { x: { dtype: 'F32', shape: [4], data_offsets: [0, 16] } }, four.subarray(0, 12));
  oneLine(() => readSafetensors(truncated), /trunc\.safetensors: tensor "x": data_offsets \[0, 16\] run past the end of the data \(12 bytes\)/);

  const mismatch = craft('mismatch.safetensors', { 'x.weight': { dtype: 'F32', shape: [2, 2], data_offsets: [0, 12] } }, four);
  oneLine(
    () => readSafetensors(mismatch),
    /mismatch\.safetensors: tensor "x\.weight": data_offsets \[0, 12\] do not match shape \[2,2\] F32 \(16 bytes\)/,
  );

  const overlap = craft(
    'overlap.safetensors',
    { a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] }, b: { dtype: 'F32', shape: [2], data_offsets: [4, 12] } },
    four,
  );
  oneLine(() => readSafetensors(overlap), /overlap\.safetensors: tensor "b": data_offsets \[4, 12\] overlap tensor "a"/);

  const badDtype = craft('dtype.safetensors', { w: { dtype: 'F7', shape: [4], data_offsets: [0, 16] } }, four);
  oneLine(() => readSafetensors(badDtype), /dtype\.safetensors: tensor "w": unknown dtype "F7"/);
  const intDtype = craft('i64.safetensors', { ids: { dtype: 'I64', shape: [2], data_offsets: [0, 16] } }, four);
  oneLine(() => readSafetensors(intDtype), /i64\.safetensors: tensor "ids": unsupported dtype I64/);

  const badShape = craft('shape.safetensors', { w: { dtype: 'F32', shape: [2, -2], data_offsets: [0, 16] } }, four);
  oneLine(() => readSafetensors(badShape), /shape\.safetensors: tensor "w": shape \[2,-2\] is not a list/);
  const noOffsets = craft('offs.safetensors', { w: { dtype: 'F32', shape: [4] } }, four);
  oneLine(() => readSafetensors(noOffsets), /offs\.safetensors: tensor "w": data_offsets undefined is not a pair/);

  const notJson = path.join(tmp, 'json.safetensors');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(5n);
  fs.writeFileSync(notJson, Buffer.concat([len, Buffer.from('{nope')]));
  oneLine(() => readSafetensors(notJson), /json\.safetensors: header is not valid JSON/);
  const arr = craft('array.safetensors', [1, 2], new Uint8Array(0));
  oneLine(() => readSafetensors(arr), /array\.safetensors: header is not a JSON object/);
  oneLine(() => readSafetensors(path.join(tmp, 'absent.safetensors')), /absent\.safetensors: file not found/);
});

test('writeSafetensors rejects data that does not match the shape', () => {
  const file = path.join(tmp, 'bad-write.safetensors');
  oneLine(
    () => writeSafetensors(file, { w: { shape: [2, 3], data: new Float32Array(5) } }),
    /bad-write\.safetensors: tensor "w": 5 values do not match shape \[2,3\]/,
  );
  assert.equal(fs.existsSync(file), false);
});
