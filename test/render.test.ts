import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { HfTokenizer } from '../src/tokenizers/hf.js';
import type { TextTokenizer } from '../src/tokenizers/tokenizer.js';
import type { ModelInfo } from '../src/models/lm.js';
import { parseTemplate } from '../src/prompt/template.js';
import { collate, renderAll, renderExample, renderText, type RenderInfo } from '../src/prompt/render.js';

const shared = path.resolve(process.cwd(), '../shared');

/** bert-base-uncased WordPiece from the shared model directory */
function bertTokenizer(): TextTokenizer {
  return HfTokenizer.fromDir(path.join(shared, 'models/bert-mini-lama'));
}

/**
 * A byte-level-BPE-like fake: whitespace-separated words, `Ġ` marks a word that follows a space; ids are
 * handed out on first sight; words containing `?` are unknown.
 */
function fakeBpe(): TextTokenizer & { tokens(ids: number[]): string[] } {
  const vocab = new Map<string, number>([
    ['<pad>', 0],
    ['<unk>', 1],
    ['<s>', 2],
    ['</s>', 3],
  ]);
  const byId = () => new Map([...vocab].map(([k, v]) => [v, k]));
  const encode = (text: string) =>
    (text.match(/\s*\S+/g) ?? []).map((m) => {
      const word = m.trim();
      if (word.includes('?')) return 1;
      const token = (m !== word ? 'Ġ' : '') + word;
      if (!vocab.has(token)) vocab.set(token, vocab.size);
      return vocab.get(token) as number;
    });
  return {
    get vocabSize() {
      return vocab.size;
    },
    lowercase: false,
    encode,
    decode: (ids) => ids.map((id) => byId().get(id) ?? '').join(''),
    idToToken: (id) => byId().get(id),
    tokenToId: (token) => vocab.get(token),
    encodeWord: (word) => encode(` ${word}`),
    tokens: (ids) => ids.map((id) => byId().get(id) ?? '?'),
  };
}

const bert: RenderInfo = { kind: 'masked', tokenTypes: true, special: { pad: 0, unk: 100, cls: 101, sep: 102, mask: 103 } };
/** gpt2-mini-lama: same WordPiece vocabulary, [CLS] = 101 as BOS, [SEP] = 102 as EOS */
const gpt2: RenderInfo = { kind: 'causal', tokenTypes: false, special: { pad: 0, unk: 100, bos: 101, eos: 102 } };
const tok = bertTokenizer();
const fact = { uuid: 'u-1', sub_label: 'Allan Peiper', obj_label: 'Alexandra' };
const ALLAN_PEIPER = [8926, 26850, 4842];

test('BERT: [CLS] … [MASK] … [SEP] with the answer at the mask', () => {
  const ex = renderExample(parseTemplate('{sub_label} was born in [MASK] .'), fact, tok, bert, { maxLength: 32 });
  assert.ok(ex);
  assert.deepEqual(ex.ids, [101, ...ALLAN_PEIPER, 2001, 2141, 1999, 103, 1012, 102]);
  assert.equal(ex.answerPosition, 7);
  assert.equal(ex.ids[ex.answerPosition], 103);
  assert.deepEqual(ex.pseudoPositions, []);
  assert.deepEqual(ex.tokenTypeIds, new Array(10).fill(0));
});

test('BERT with the 3,3,3 tuple: pseudo slots hold [UNK], indices 0..8 in order', () => {
  const ex = renderExample(parseTemplate('3,3,3'), fact, tok, bert, { maxLength: 32 });
  assert.ok(ex);
  const P = 100;
  assert.deepEqual(ex.ids, [101, P, P, P, ...ALLAN_PEIPER, P, P, P, 103, P, P, P, 102]);
  assert.deepEqual(ex.pseudoPositions, [1, 2, 3, 7, 8, 9, 11, 12, 13]);
  assert.deepEqual(ex.pseudoIndex, [0, 1, 2, 3, 4, 5, 6, 7, 8]);
  assert.equal(ex.answerPosition, 10);
});

test('BERT: a [SEP] inside the template starts segment 1', () => {
  const t = parseTemplate('{premise} [SEP] {hypothesis} ? [MASK]');
  const ex = renderExample(t, { premise: 'it rains', hypothesis: 'wet' }, tok, bert, { maxLength: 32 });
  assert.ok(ex);
  const rains = tok.encode('it rains');
  assert.deepEqual(ex.ids, [101, ...rains, 102, ...tok.encode('wet'), ...tok.encode('?'), 103, 102]);
  assert.deepEqual(ex.tokenTypeIds, [0, 0, 0, 0, 1, 1, 1, 1]);
});

test('causal LM: BOS + prefix, answer read at the last prefix token, no mask or EOS', () => {
  const ex = renderExample(parseTemplate('3,3,0'), fact, tok, gpt2, { maxLength: 32 });
  assert.ok(ex);
  const P = 100;
  assert.deepEqual(ex.ids, [101, P, P, P, ...ALLAN_PEIPER, P, P, P]);
  assert.equal(ex.answerPosition, ex.ids.length - 1);
  assert.deepEqual(ex.pseudoPositions, [1, 2, 3, 7, 8, 9]);
  assert.equal(ex.tokenTypeIds, undefined);

  const manual = renderExample(parseTemplate('{sub_label} was born in [MASK]'), fact, tok, gpt2, { maxLength: 32 });
  assert.ok(manual);
  assert.deepEqual(manual.ids, [101, ...ALLAN_PEIPER, 2001, 2141, 1999]);
  assert.equal(manual.answerPosition, 6);
});

test('causal LM: the answer slot must be last, and something must precede it', () => {
  assert.throws(() => renderExample(parseTemplate('3,3,3'), fact, tok, gpt2, { maxLength: 32 }), /template column 32: \[MASK\] must be the last part/);
  // a causal LM whose tokenizer adds nothing around a sequence and which has no BOS
  const noBos: RenderInfo = { kind: 'causal', tokenTypes: false, special: { pad: 0, unk: 100 } };
  const plain = Object.assign(Object.create(tok) as typeof tok, { wrap: { start: [], end: [] } });
  const ex = renderExample(parseTemplate('{sub_label} [MASK]'), fact, plain, noBos, { maxLength: 8 });
  assert.deepEqual(ex?.ids, ALLAN_PEIPER);
  assert.equal(ex?.answerPosition, 2);
  assert.throws(() => renderExample(parseTemplate('[MASK]'), fact, plain, noBos, { maxLength: 8, index: 4 }), /record 5 \(uuid "u-1"\): the prompt before \[MASK\] is empty/);
});

test('BPE-style spacing follows the template: a leading space only where the template has one', () => {
  const bpe = fakeBpe();
  const info: RenderInfo = { kind: 'causal', tokenTypes: false, special: { pad: 0, unk: 1, bos: 2, eos: 3 } };
  const ex = renderExample(parseTemplate("[P] {name}'s home is in{city} [MASK]"), { name: 'Ann', city: 'Rome' }, bpe, info, { maxLength: 16 });
  assert.ok(ex);
  assert.deepEqual(bpe.tokens(ex.ids), ['<s>', '<unk>', 'ĠAnn', "'s", 'Ġhome', 'Ġis', 'Ġin', 'Rome']);
  const first = renderExample(parseTemplate('{name} [MASK]'), { name: 'Ann' }, bpe, info, { maxLength: 16 });
  assert.deepEqual(bpe.tokens(first?.ids ?? []), ['<s>', 'Ann']);
});

test('truncation shrinks only fields, the longest first, keeping pseudo tokens, anchors and the mask', () => {
  const t = parseTemplate('{premise} ? [P*2] [MASK] , {hypothesis}');
  const premise = 'the quick brown fox jumps over the lazy dog near the river bank today';
  const hypothesis = 'a fox jumps over a dog';
  const p = tok.encode(premise);
  const h = tok.encode(hypothesis);
  assert.deepEqual([p.length, h.length], [14, 6]);
  const q = tok.encode('?')[0];
  const comma = tok.encode(',')[0];
  // fixed: [CLS] ? P P [MASK] , [SEP] = 7 tokens; 20 field tokens; maxLength 21 → 6 tokens to drop, all from the premise
  const short = renderExample(t, { premise, hypothesis }, tok, bert, { maxLength: 21 });
  assert.ok(short);
  assert.deepEqual(short.ids, [101, ...p.slice(0, 8), q, 100, 100, 103, comma, ...h, 102]);
  assert.equal(short.answerPosition, 12);
  assert.deepEqual(short.pseudoPositions, [10, 11]);
  // maxLength 15 → drop 12: premise 14→6 (ties with the hypothesis), then both shrink alternately to 4 each
  const both = renderExample(t, { premise, hypothesis }, tok, bert, { maxLength: 15 });
  assert.ok(both);
  assert.equal(both.ids.length, 15);
  assert.deepEqual(both.ids, [101, ...p.slice(0, 4), q, 100, 100, 103, comma, ...h.slice(0, 4), 102]);
});

test('records that cannot fit: an error naming the record, or null with skipTooLong', () => {
  const t = parseTemplate('[P*4] {sub_label} [P*4] [MASK] .');
  // fixed parts take 12 tokens, the subject shrinks to 1 → 13 is the least
  assert.equal(renderExample(t, fact, tok, bert, { maxLength: 13 })?.ids.length, 13);
  assert.throws(
    () => renderExample(t, fact, tok, bert, { maxLength: 12, index: 17 }),
    /^Error: record 18 \(uuid "u-1"\) cannot fit in 12 tokens: the template needs 15/,
  );
  assert.equal(renderExample(t, fact, tok, bert, { maxLength: 12, skipTooLong: true }), null);
  const records = [fact, { sub_label: 'a' }, { sub_label: 'Jean Baptiste Emanuel Zorg' }];
  const set = renderAll(t, records, tok, bert, { maxLength: 13, skipTooLong: true });
  assert.equal(set.examples.length, 3);
  // fixed parts take 14 tokens: only a record whose subject encodes to nothing fits
  const tight = renderAll(parseTemplate('[P*11] {sub_label} [MASK]'), [fact, { sub_label: '' }, records[2]], tok, bert, {
    maxLength: 14,
    skipTooLong: true,
  });
  assert.deepEqual(tight.indices, [1]);
  assert.deepEqual(tight.skipped, [0, 2]);
});

test('missing or non-text fields name the field and the record; unknown special tokens the column', () => {
  const t = parseTemplate('{sub_label} [SEP] {obj_label} [MASK]');
  assert.throws(
    () => renderExample(t, { id: 7, sub_label: 'x' }, tok, bert, { maxLength: 16, index: 3 }),
    /^Error: record 4 \(id 7\): missing field "obj_label" used by the template$/,
  );
  assert.throws(() => renderExample(t, { sub_label: 'x', obj_label: ['a'] }, tok, bert, { maxLength: 16, index: 0 }), /record 1: field "obj_label" is not text \(array\)/);
  const n = renderExample(t, { sub_label: 1905, obj_label: true }, tok, bert, { maxLength: 16 });
  assert.deepEqual(n?.ids, [101, ...tok.encode('1905'), 102, ...tok.encode('true'), 103, 102]);
  assert.throws(
    () => renderExample(t, { sub_label: 'the [MASK] is', obj_label: 'x' }, tok, bert, { maxLength: 16, index: 2 }),
    /record 3: field "sub_label" contains the mask token/,
  );
  assert.throws(() => renderExample(parseTemplate('{sub_label} [FOO] [MASK]'), fact, tok, bert, { maxLength: 16 }), /template column 13: \[FOO\] is not a token of the tokenizer/);
});

test('collate with right padding (masked LM) keeps positions', () => {
  const t = parseTemplate('[P*2] {sub_label} [MASK] [P]');
  const a = renderExample(t, { sub_label: 'Allan Peiper' }, tok, bert, { maxLength: 32 });
  const b = renderExample(t, { sub_label: 'Rome' }, tok, bert, { maxLength: 32 });
  assert.ok(a && b);
  const info: Pick<ModelInfo, 'paddingSide' | 'special'> = { paddingSide: 'right', special: bert.special };
  const batch = collate([a, b], info);
  assert.deepEqual(batch.ids, [a.ids, [...b.ids, 0, 0]]);
  assert.deepEqual(batch.attentionMask, [
    [1, 1, 1, 1, 1, 1, 1, 1, 1],
    [1, 1, 1, 1, 1, 1, 1, 0, 0],
  ]);
  assert.deepEqual(batch.tokenTypeIds, [new Array(9).fill(0), new Array(9).fill(0)]);
  assert.deepEqual(batch.pseudoRows, [0, 0, 0, 1, 1, 1]);
  assert.deepEqual(batch.pseudoCols, [1, 2, 7, 1, 2, 5]);
  assert.deepEqual(batch.pseudoIndex, [0, 1, 2, 0, 1, 2]);
  assert.deepEqual(batch.answerPositions, [6, 4]);
  assert.deepEqual(batch.lengths, [9, 7]);
  for (let r = 0; r < 2; r++) assert.equal(batch.ids[r][batch.answerPositions[r]], 103);
  assert.throws(() => collate([], info), /no examples/);
});

test('collate with left padding (causal LM) shifts positions so every answer is last', () => {
  const t = parseTemplate('3,3,0');
  const a = renderExample(t, { sub_label: 'Allan Peiper' }, tok, gpt2, { maxLength: 32 });
  const b = renderExample(t, { sub_label: 'Rome' }, tok, gpt2, { maxLength: 32 });
  assert.ok(a && b);
  const batch = collate([a, b], { paddingSide: 'left', special: gpt2.special });
  assert.deepEqual(batch.ids[1], [0, 0, ...b.ids]);
  assert.deepEqual(batch.attentionMask[1], [0, 0, 1, 1, 1, 1, 1, 1, 1, 1]);
  assert.deepEqual(batch.answerPositions, [9, 9]);
  assert.deepEqual(batch.pseudoCols.slice(6), [3, 4, 5, 7, 8, 9]);
  assert.deepEqual(batch.pseudoRows, [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1]);
  for (let k = 0; k < batch.pseudoRows.length; k++) assert.equal(batch.ids[batch.pseudoRows[k]][batch.pseudoCols[k]], 100);
  assert.equal(batch.ids[1][batch.answerPositions[1]], b.ids[b.answerPosition]);
  assert.deepEqual(batch.tokenTypeIds[1], new Array(10).fill(0));
});

test('renderText shows pseudo tokens as [P]', () => {
  const t = parseTemplate("[P*2] {sub_label}'s home: [MASK] [SEP]");
  assert.equal(renderText(t, fact), "[P][P] Allan Peiper's home: [MASK] [SEP]");
  assert.equal(renderText(t), "[P][P] {sub_label}'s home: [MASK] [SEP]");
  assert.throws(() => renderText(t, {}), /missing field "sub_label"/);
});
