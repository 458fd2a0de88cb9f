import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { HfTokenizer } from '../src/tokenizers/hf.js';

const shared = path.resolve(process.cwd(), '../shared/models');

interface GoldenItem {
  text: string;
  input_ids: number[];
  tokens: string[];
}
function golden(model: string): GoldenItem[] {
  return (JSON.parse(fs.readFileSync(path.join(shared, model, 'golden.json'), 'utf8')) as { items: GoldenItem[] }).items;
}

test('WordPiece tokenizer reproduces the golden input ids of both models', () => {
  const tok = HfTokenizer.fromDir(path.join(shared, 'bert-mini-lama'));
  assert.equal(tok.vocabSize, 30522);
  assert.equal(tok.lowercase, true);
  assert.equal(tok.byteLevel, false);
  assert.deepEqual(tok.special, { pad: 0, unk: 100, cls: 101, sep: 102, mask: 103 });
  for (const item of golden('bert-mini-lama')) {
    assert.deepEqual([101, ...tok.encode(item.text), 102], item.input_ids, item.text);
    assert.deepEqual(item.input_ids.map((id) => tok.idToToken(id)), item.tokens);
  }
  const gpt = HfTokenizer.fromDir(path.join(shared, 'gpt2-mini-lama'));
  assert.deepEqual(gpt.special, { pad: 0, unk: 100, bos: 101, eos: 102, cls: 101, sep: 102, mask: 103 });
  for (const item of golden('gpt2-mini-lama')) {
    assert.deepEqual([gpt.special.bos!, ...gpt.encode(item.text)], item.input_ids, item.text);
  }
});

test('WordPiece: token/id maps, encodeWord, decode with and without specials', () => {
  const tok = HfTokenizer.fromDir(path.join(shared, 'bert-mini-lama'));
  assert.equal(tok.tokenToId('paris'), 3000);
  assert.equal(tok.tokenToId('[MASK]'), 103);
  assert.equal(tok.tokenToId('no-such-token'), undefined);
  assert.equal(tok.idToToken(2483), '##is');
  assert.equal(tok.idToToken(99999), undefined);
  assert.deepEqual(tok.encodeWord('France'), [2605]);
  assert.deepEqual(tok.encodeWord('Marais'), [13955, 2483]);
  assert.equal(tok.decode([101, 3000, 2003, 103, 1012, 102]), '[CLS] paris is [MASK]. [SEP]');
  assert.equal(tok.decode([101, 3000, 2003, 1996, 3007, 102], { skipSpecial: true }), 'paris is the capital');
});

test('byte-level BPE: encodeWord uses the Ġ (after-a-space) form', () => {
  const vocab = { a: 0, b: 1, c: 2, 'Ġ': 3, 'Ġa': 4, 'Ġab': 5, ab: 6, '<|endoftext|>': 7 };
  const json = {
    added_tokens: [{ id: 7, content: '<|endoftext|>', special: true, normalized: false }],
    normalizer: null,
    pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: { type: 'BPE', vocab, merges: ['Ġ a', 'a b', 'Ġa b'] },
  };
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ptune-bpe-'));
  fs.writeFileSync(path.join(dir, 'tokenizer.json'), JSON.stringify(json));
  fs.writeFileSync(path.join(dir, 'tokenizer_config.json'), JSON.stringify({ eos_token: { content: '<|endoftext|>' } }));
  const tok = HfTokenizer.fromDir(dir);
  assert.equal(tok.byteLevel, true);
  assert.equal(tok.lowercase, false);
  assert.deepEqual(tok.special, { eos: 7 });
  assert.deepEqual(tok.encode('ab'), [6]);
  assert.deepEqual(tok.encodeWord('ab'), [5]);
  assert.deepEqual(tok.encode('ab ab c'), [6, 5, 3, 2]);
  assert.equal(tok.decode([6, 5, 3, 2]), 'ab ab c');
  assert.equal(tok.vocabSize, 8);
});

test('fromDir errors name the missing or broken file', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ptune-tok-'));
  assert.throws(() => HfTokenizer.fromDir(dir), new RegExp(`${dir}/tokenizer\\.json: tokenizer file not found`));
  fs.writeFileSync(path.join(dir, 'tokenizer.json'), '{"model": ');
  assert.throws(() => HfTokenizer.fromDir(dir), /tokenizer\.json: cannot read JSON/);
  fs.writeFileSync(path.join(dir, 'tokenizer.json'), '{"version": "1.0"}');
  assert.throws(() => HfTokenizer.fromDir(dir), /tokenizer\.json: no "model" object/);
});
