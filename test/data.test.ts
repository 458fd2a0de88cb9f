import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { csvRows, jsonErrorOffset, parseCsv, parseJsonArray, parseJsonl, parseTsv, readRecords } from '../src/data/read.js';

const shared = path.resolve(process.cwd(), '../shared');

function withFiles(files: Record<string, string>, body: (dir: string) => void) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ptune-data-'));
  try {
    for (const [name, text] of Object.entries(files)) fs.writeFileSync(path.join(dir, name), text);
    body(dir);
  } finally {
    fs.rmSync(dir, { recursive: true });
  }
}

test('JSONL: one object per line, blank lines and CRLF ignored', () => {
  const records = parseJsonl('{"a": 1}\r\n\n  \n{"a": "x", "b": [1]}\n');
  assert.deepEqual(records, [{ a: 1 }, { a: 'x', b: [1] }]);
});

test('JSONL: a malformed line names the file and its 1-based line', () => {
  const text = '{"a": 1}\n\n{"a": 2,}\n{"a": 3}';
  assert.throws(() => parseJsonl(text, 'data.jsonl'), (e: Error) => {
    assert.match(e.message, /^data\.jsonl line 3: /);
    assert.ok(!e.message.includes('\n'));
    return true;
  });
  assert.throws(() => parseJsonl('{"a": 1}\n[1, 2]', 'x.jsonl'), /^UserError: x\.jsonl line 2: expected a JSON object, got an array$/);
  assert.throws(() => parseJsonl('null', 'x.jsonl'), /x\.jsonl line 1: expected a JSON object, got null/);
});

test('JSON: an array of objects; errors carry the line when the parser gives a position', () => {
  assert.deepEqual(parseJsonArray('[{"a": 1}, {"b": 2}]'), [{ a: 1 }, { b: 2 }]);
  assert.throws(() => parseJsonArray('[\n{"a": 1},\n{"a": }\n]', 'd.json'), (e: Error) => {
    assert.match(e.message, /^d\.json line 3 column 7: /);
    assert.ok(!e.message.includes('\n'), 'one line');
    return true;
  });
  assert.throws(() => parseJsonArray('{"a": 1}', 'd.json'), /d\.json: expected a JSON array of objects, got object/);
  assert.throws(() => parseJsonArray('[{"a": 1}, 2]', 'd.json'), /d\.json item 2: expected a JSON object, got number/);
});

test('jsonErrorOffset finds the first syntax error and accepts valid JSON', () => {
  for (const ok of ['[]', ' {} ', '[1, -2.5e+3, "a\\"\\u00e9", true, false, null, {"k": [{}]}]', '"x"', '0']) {
    assert.doesNotThrow(() => JSON.parse(ok));
    assert.equal(jsonErrorOffset(ok), -1, ok);
  }
  assert.equal(jsonErrorOffset('[1,]'), 3);
  assert.equal(jsonErrorOffset('{"a" 1}'), 5);
  assert.equal(jsonErrorOffset('{a: 1}'), 1);
  assert.equal(jsonErrorOffset('["abc'), 5);
  assert.equal(jsonErrorOffset('["\\x"]'), 3);
  assert.equal(jsonErrorOffset('[01]'), 2);
  assert.equal(jsonErrorOffset('[1] x'), 4);
  assert.equal(jsonErrorOffset(''), 0);
});

test('CSV: RFC 4180 quoting with commas, doubled quotes and line breaks; CRLF', () => {
  const text = 'id,text,label\r\n1,"hello, world",pos\r\n2,"she said ""hi""",neg\r\n3,"two\nlines",\r\n\r\n4,,""\r\n';
  assert.deepEqual(parseCsv(text), [
    { id: '1', text: 'hello, world', label: 'pos' },
    { id: '2', text: 'she said "hi"', label: 'neg' },
    { id: '3', text: 'two\nlines', label: '' },
    { id: '4', text: '', label: '' },
  ]);
  assert.deepEqual(
    csvRows('a,b\n"x\ny",z\n\nq,r').map((r) => r.line),
    [1, 2, 5],
  );
  assert.deepEqual(parseCsv('a\n1'), [{ a: '1' }]);
});

test('CSV: wrong column counts and bad quoting name the line', () => {
  assert.throws(() => parseCsv('a,b\n1,2\n"multi\nline",2\n3\n', 'd.csv'), /^UserError: d\.csv line 5: 1 columns, the header has 2$/);
  assert.throws(() => parseCsv('a,b\n1,2,3', 'd.csv'), /d\.csv line 2: 3 columns, the header has 2/);
  assert.throws(() => parseCsv('a,b\n1,"open\n\n', 'd.csv'), /d\.csv line 2: unterminated quoted field/);
  assert.throws(() => parseCsv('a,b\n1,2\n3,"x"y', 'd.csv'), /d\.csv line 3: unexpected "y" after a closing quote/);
  assert.throws(() => parseCsv('a,b\n1,x"y', 'd.csv'), /d\.csv line 2: stray '"' inside an unquoted field/);
  assert.throws(() => parseCsv('a,a\n1,2', 'd.csv'), /d\.csv line 1: duplicate header column "a"/);
  assert.throws(() => parseCsv('a,\n1,2', 'd.csv'), /d\.csv line 1: header column 2 has no name/);
  assert.throws(() => parseCsv('\n\n', 'd.csv'), /d\.csv: no header row/);
});

test('TSV: tabs split fields, quotes are literal, wrong column counts name the line', () => {
  assert.deepEqual(parseTsv('sentence\tlabel\r\nit \'s "fine" , really \t1\n\nbad\t0\n'), [
    { sentence: 'it \'s "fine" , really ', label: '1' },
    { sentence: 'bad', label: '0' },
  ]);
  assert.throws(() => parseTsv('sentence\tlabel\na\t1\nb\n', 'd.tsv'), /^UserError: d\.tsv line 3: 1 columns, the header has 2$/);
  assert.deepEqual(parseTsv('a\tb\n\t\n'), [{ a: '', b: '' }]);
});

test('readRecords picks the parser by extension and names the file', () => {
  withFiles(
    {
      'd.jsonl': '{"x": 1}\n{"x": 2\n',
      'd.json': '\uFEFF[{"x": 1}]',
      'd.csv': 'x,y\n1,"a,b"\n',
      'd.tsv': 'x\ty\n1\ta,b\n',
      'd.txt': 'x',
    },
    (dir) => {
      const file = (name: string) => path.join(dir, name);
      assert.throws(() => readRecords(file('d.jsonl')), new RegExp(`^UserError: ${file('d.jsonl')} line 2: `));
      assert.deepEqual(readRecords(file('d.json')), [{ x: 1 }]);
      assert.deepEqual(readRecords(file('d.csv')), [{ x: '1', y: 'a,b' }]);
      assert.deepEqual(readRecords(file('d.tsv')), [{ x: '1', y: 'a,b' }]);
      assert.throws(() => readRecords(file('d.txt')), /d\.txt: unknown data format "\.txt"/);
      assert.throws(() => readRecords(file('none.jsonl')), /none\.jsonl: ENOENT/);
    },
  );
});

test('reads the shared LAMA, FewGLUE and SST-2 files', () => {
  const facts = readRecords(path.join(shared, 'data/lama/fact-retrieval/original/P19/test.jsonl'));
  assert.ok(facts.length > 100);
  assert.deepEqual(Object.keys(facts[0]).sort(), ['obj_label', 'obj_uri', 'predicate_id', 'sub_label', 'sub_uri', 'uuid']);
  const cb = readRecords(path.join(shared, 'data/fewglue/CB/train.jsonl'));
  assert.equal(cb.length, 32);
  assert.equal(typeof cb[0].premise, 'string');
  const sst = readRecords(path.join(shared, 'data/sst2/test.tsv'));
  assert.equal(sst.length, 872);
  assert.deepEqual(sst[1], { sentence: 'unflinchingly bleak and desperate ', label: '0' });
  assert.ok(sst.every((r) => r.label === '0' || r.label === '1'));
});
