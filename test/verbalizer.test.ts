import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { HfTokenizer } from '../src/tokenizers/hf.js';
import type { TextTokenizer } from '../src/tokenizers/tokenizer.js';
import { answerVocabulary, Verbalizer } from '../src/prompt/verbalizer.js';

const shared = path.resolve(process.cwd(), '../shared');

/** bert-base-uncased WordPiece from the shared model directory */
function bertTokenizer(): TextTokenizer {
  return HfTokenizer.fromDir(path.join(shared, 'models/bert-mini-lama'));
}

/** a cased fake: each word one token, `Ġ`-prefixed by encodeWord; `<unk>` for words with `?` */
function casedFake(): TextTokenizer {
  const vocab = new Map<string, number>([['<unk>', 0]]);
  const id = (token: string) => {
    if (token.includes('?')) return 0;
    if (!vocab.has(token)) vocab.set(token, vocab.size);
    return vocab.get(token) as number;
  };
  return {
    vocabSize: 1000,
    lowercase: false,
    encode: (text) => text.split(/\s+/).filter(Boolean).map(id),
    encodeWord: (word) => [id(`Ġ${word}`)],
    decode: () => '',
    idToToken: (i) => [...vocab].find(([, v]) => v === i)?.[0],
    tokenToId: (token) => vocab.get(token),
  };
}

const tok = bertTokenizer();
const [BAD, TERRIBLE, GOOD, GREAT] = [2919, 6659, 2204, 2307];
const XYZZYQ = [1060, 2100, 28753, 4160];

test('candidate ids are the unique tokens of all label words; scores aggregate by max or mean over words', () => {
  const v = new Verbalizer({ '0': ['bad', 'terrible'], '1': ['good', 'great'] }, tok);
  assert.deepEqual(v.labels, ['0', '1']);
  assert.deepEqual(v.candidateIds(), [BAD, TERRIBLE, GOOD, GREAT]);
  assert.deepEqual(v.wordTokens(), [[[BAD], [TERRIBLE]], [[GOOD], [GREAT]]]);
  const scores = [-1, -3, -2, -0.5];
  assert.deepEqual(v.labelScores(scores), [-1, -0.5]);
  assert.equal(v.predict(scores), 1);
  const byMean = new Verbalizer({ '0': ['bad', 'terrible'], '1': ['good', 'great'] }, tok, { wordAggregation: 'mean' });
  assert.deepEqual(byMean.labelScores(scores), [-2, -1.25]);
  assert.deepEqual(v.labelScoresBatch(new Float32Array([...scores, 0, -1, -1, -1]), 2), [[-1, -0.5], [0, -1]]);
  assert.throws(() => v.labelScores([1, 2, 3]), /got 3 scores for 4 candidates/);
  assert.throws(() => v.labelScoresBatch([1, 2, 3], 2), /not 2 rows × 4 candidates/);
});

test('multi-token words score by the token rule', () => {
  const words = { odd: 'xyzzyq', even: 'good' };
  const ids = new Verbalizer(words, tok).candidateIds();
  assert.deepEqual(ids, [...XYZZYQ, GOOD]);
  const scores = [-2, -4, -1, -5, -3];
  const score = (tokenRule: 'first' | 'mean' | 'sum' | 'max') => new Verbalizer(words, tok, { tokenRule }).labelScores(scores);
  assert.deepEqual(score('first'), [-2, -3]);
  assert.deepEqual(score('mean'), [-3, -3]);
  assert.deepEqual(score('sum'), [-12, -3]);
  assert.deepEqual(score('max'), [-1, -3]);
  // a token shared by two words is one candidate column
  const shared = new Verbalizer({ a: 'x', b: 'xyzzyq' }, tok, { tokenRule: 'sum' });
  assert.deepEqual(shared.candidateIds(), XYZZYQ);
  assert.deepEqual(shared.columns, [[[0]], [[0, 1, 2, 3]]]);
});

test('label word errors name the word and the label', () => {
  assert.throws(
    () => new Verbalizer({ pos: 'good', neg: 'xyzzyq' }, tok, { requireSingleToken: true }),
    /^Error: verbalizer label "neg": word "xyzzyq" is 4 tokens \(x ##y ##zzy ##q\); single-token words required$/,
  );
  assert.throws(() => new Verbalizer({ pos: ['good', '☃'] }, tok), /^Error: verbalizer label "pos": word "☃" maps to the unknown token$/);
  assert.throws(() => new Verbalizer({ pos: ['good', ' '] }, tok), /label "pos": empty label word/);
  assert.throws(() => new Verbalizer({ pos: [] }, tok), /label "pos": no label words/);
  assert.throws(() => new Verbalizer({}, tok), /no labels/);
  assert.throws(() => new Verbalizer({ pos: 'Good', neg: 'good' }, tok), /label "neg": word "good" is also a word of label "pos"/);
  assert.throws(() => new Verbalizer({ a: 'x?' }, casedFake()), /word "x\?" maps to the unknown token/);
});

test('load: inline label:word, inline JSON and JSON files', () => {
  const inline = Verbalizer.load('neg:bad|terrible, pos:good,pos:great', tok);
  assert.deepEqual(inline.labels, ['neg', 'pos']);
  assert.deepEqual(inline.words, [['bad', 'terrible'], ['good', 'great']]);
  const json = Verbalizer.load('{"entailment": "yes", "contradiction": ["no"]}', tok, { requireSingleToken: true });
  assert.deepEqual(json.words, [['yes'], ['no']]);

  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ptune-verbalizer-'));
  try {
    const file = path.join(dir, 'sst2.json');
    fs.writeFileSync(file, JSON.stringify({ '0': ['bad'], '1': ['good'] }));
    assert.deepEqual(Verbalizer.load(file, tok).candidateIds(), [BAD, GOOD]);
    const broken = path.join(dir, 'broken.json');
    fs.writeFileSync(broken, '{"0": ["bad"],}');
    assert.throws(() => Verbalizer.load(broken, tok), new RegExp(`^Error: verbalizer file ${broken}: `));
    fs.writeFileSync(broken, '{"0": [1]}');
    assert.throws(() => Verbalizer.load(broken, tok), /label "0" must map to a word or a list of words/);
    assert.throws(() => Verbalizer.load(path.join(dir, 'missing.json'), tok), /verbalizer file .*missing\.json: ENOENT/);
  } finally {
    fs.rmSync(dir, { recursive: true });
  }
  assert.throws(() => Verbalizer.load('pos:good,neg', tok), /bad entry "neg" \(expected label:word/);
  assert.throws(() => Verbalizer.load('pos:good|', tok), /bad entry "pos:good\|"/);
});

test('labelIndex matches record labels by their text', () => {
  const v = Verbalizer.load('0:bad,1:good', tok);
  assert.equal(v.labelIndex(1), 1);
  assert.equal(v.labelIndex('0'), 0);
  const b = Verbalizer.load('false:no,true:yes', tok);
  assert.equal(b.labelIndex(true), 1);
  assert.throws(() => v.labelIndex('2'), /label "2" is not in the verbalizer \(labels: 0, 1\)/);
});

test('answerVocabulary: LAMA common vocabulary, lowercased, single tokens only', () => {
  const small = answerVocabulary(tok, ['Paris', 'paris', 'xyzzyq', '☃', 'London', '']);
  assert.deepEqual(small.ids, [3000, 2414]);
  assert.deepEqual(small.words, ['paris', 'london']);
  assert.equal(small.dropped, 3);
  assert.deepEqual(small.droppedWords, ['xyzzyq', '☃', '']);
  assert.equal(small.duplicates, 1);

  const lama = JSON.parse(fs.readFileSync(path.join(shared, 'data/lama/29k-vocab.json'), 'utf8'))['bert-base-cased'];
  const common = answerVocabulary(tok, lama);
  // the figure the gpt2-mini-lama model card reports for this vocabulary and tokenizer
  assert.equal(common.ids.length, 15315);
  assert.equal(new Set(common.ids).size, common.ids.length);

  const full = answerVocabulary(tok);
  assert.ok(full.ids.includes(3000));
  for (const special of ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]', '[unused0]']) {
    assert.ok(!full.ids.includes(tok.tokenToId(special) as number), special);
  }
  assert.equal(full.ids.length, 30522 - 5 - 994);

  const cased = casedFake();
  const c = answerVocabulary(cased, ['Paris', 'paris', 'a?']);
  assert.deepEqual(c.words, ['Paris', 'paris']);
  assert.deepEqual(c.ids, [cased.tokenToId('ĠParis'), cased.tokenToId('Ġparis')]);
  assert.equal(c.dropped, 1);
});
