import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { HfTokenizer } from '../src/tokenizers/hf.js';
import type { TextTokenizer } from '../src/tokenizers/tokenizer.js';
import {
  answerTokenId,
  answerVocabKey,
  completeRelations,
  filterFacts,
  filterRelation,
  listRelations,
  loadAnswerVocab,
  loadRelation,
  majorityObject,
  missingFilesStatus,
  readFactsFile,
  type LamaFact,
} from '../src/tasks/lama/data.js';

const shared = path.resolve(process.cwd(), '../shared');
const dataDir = path.join(shared, 'data/lama');
const modelDir = path.join(shared, 'models/bert-mini-lama');

/** A toy byte-level-BPE-like tokenizer: word-initial tokens carry 'Ġ', case kept. */
function toyBpeTokenizer(words: string[]): TextTokenizer {
  const vocab = ['<|endoftext|>', ...words.map((w) => 'Ġ' + w), ...words];
  const ids = new Map(vocab.map((t, i) => [t, i]));
  const encodeWord = (w: string): number[] => {
    const id = ids.get('Ġ' + w);
    return id !== undefined ? [id] : [...w].map(() => 0);
  };
  return {
    vocabSize: vocab.length,
    lowercase: false,
    encode: (text) => text.split(' ').flatMap(encodeWord),
    encodeWord,
    decode: (list, opts) =>
      list
        .filter((i) => !(opts?.skipSpecial && i === 0))
        .map((i) => vocab[i].replace(/^Ġ/, ' '))
        .join(''),
    idToToken: (i) => vocab[i],
    tokenToId: (t) => ids.get(t),
  };
}

const tok = HfTokenizer.fromDir(modelDir);

test('listRelations: 40 original relations, 28 complete, templates from relations.jsonl', () => {
  const rels = listRelations(dataDir, 'original');
  assert.equal(rels.length, 40);
  assert.equal(completeRelations(rels).length, 28);
  const ids = rels.map((r) => r.id);
  assert.ok(ids.indexOf('P17') < ids.indexOf('P101'), 'numeric relation order');
  const p19 = rels.find((r) => r.id === 'P19')!;
  assert.equal(p19.template, '[X] was born in [Y] .');
  assert.equal(p19.label, 'place of birth');
  assert.deepEqual(p19.files, { train: true, dev: true, test: true });
  const p190 = rels.find((r) => r.id === 'P190')!;
  assert.deepEqual(p190.files, { train: false, dev: true, test: false });
  assert.equal(completeRelations(listRelations(dataDir, 'trex')).length, 38);
});

test('loadRelation: missing files are null and reported', () => {
  const p17 = loadRelation(dataDir, 'original', 'P17');
  assert.equal(p17.test, null);
  assert.deepEqual(p17.missing, ['test']);
  assert.ok(p17.train!.length > 0 && p17.dev!.length > 0);
  assert.equal(missingFilesStatus(p17.missing), 'no test file');
  assert.equal(missingFilesStatus(loadRelation(dataDir, 'original', 'P190').missing), 'no train and test files');
  assert.equal(missingFilesStatus([]), 'ok');
  const p19 = loadRelation(dataDir, 'original', 'P19');
  assert.deepEqual(p19.missing, []);
  const f = p19.test![0];
  assert.equal(f.predicate_id, 'P19');
  assert.equal(typeof f.sub_label, 'string');
  assert.equal(typeof f.uuid, 'string');
  assert.throws(() => loadRelation(dataDir, 'original', 'P999999'), /P999999/);
});

test('readFactsFile: malformed line names file and line', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lama-data-'));
  const file = path.join(dir, 'test.jsonl');
  fs.writeFileSync(
    file,
    '{"sub_label":"a","obj_label":"b","predicate_id":"P1"}\n\n{"sub_label":"a", oops}\n',
  );
  assert.throws(() => readFactsFile(file), (e: Error) => e.message.startsWith(`${file}:3: malformed JSON`));
  fs.writeFileSync(file, '{"sub_label":"a","predicate_id":"P1"}\n');
  assert.throws(() => readFactsFile(file), new RegExp(`${file}:1: field "obj_label"`));
  fs.rmSync(dir, { recursive: true });
});

test('29k vocab for the uncased mini model: 15,315 single-token ids; 34k: 17,835', () => {
  const v29 = loadAnswerVocab(dataDir, '29k', 'bert-mini-lama', tok);
  assert.equal(v29.length, 15315);
  assert.ok(v29.every((id, i) => i === 0 || id > v29[i - 1]), 'ascending and unique');
  assert.ok(v29.includes(tok.tokenToId('paris')!));
  assert.equal(loadAnswerVocab(dataDir, '34k', 'bert-mini-lama', tok).length, 17835);
  // the GPT-2 mini model shares the WordPiece vocabulary, so it maps to the same list
  assert.deepEqual(loadAnswerVocab(dataDir, '29k', '/x/gpt2-mini-lama', tok), v29);
});

test('full vocab: every token but the 5 specials', () => {
  const full = loadAnswerVocab(dataDir, 'full', 'bert-mini-lama', tok);
  assert.equal(full.length, 30522 - 5);
  for (const special of [0, 100, 101, 102, 103]) assert.ok(!full.includes(special));
});

test('filtering the 28 complete relations with 29k keeps 20,303 of 22,881 test facts', () => {
  const vocab = new Set(loadAnswerVocab(dataDir, '29k', 'bert-mini-lama', tok));
  let total = 0;
  let kept = 0;
  let p101 = 0;
  for (const rel of completeRelations(listRelations(dataDir, 'original'))) {
    const filtered = filterRelation(loadRelation(dataDir, 'original', rel.id), vocab, tok);
    const c = filtered.counts.test!;
    total += c.kept + c.dropped;
    kept += c.kept;
    if (rel.id === 'P101') p101 = c.kept;
    for (const f of filtered.test!) assert.equal(f.obj_token_id, tok.tokenToId(f.obj_label.toLowerCase()));
    assert.ok(filtered.counts.train!.kept > 0);
  }
  assert.equal(total, 22881);
  assert.equal(kept, 20303);
  assert.equal(p101, 573);
});

test('filterFacts: multi-token, accented and out-of-vocab objects are dropped', () => {
  const vocab = new Set([tok.tokenToId('paris')!, tok.tokenToId('london')!]);
  const fact = (obj: string): LamaFact => ({ sub_label: 's', obj_label: obj, predicate_id: 'P1' });
  const { kept, dropped } = filterFacts(
    [fact('Paris'), fact('New York'), fact('Berlin'), fact('London'), fact('Zürich'), fact('')],
    vocab,
    tok,
  );
  assert.deepEqual(
    kept.map((f) => [f.obj_label, f.obj_token_id]),
    [
      ['Paris', tok.tokenToId('paris')],
      ['London', tok.tokenToId('london')],
    ],
  );
  assert.deepEqual(
    dropped.map((f) => f.obj_label),
    ['New York', 'Berlin', 'Zürich', ''],
  );
  assert.equal(answerTokenId('Zürich', tok), undefined);
  assert.equal(answerTokenId('New York', tok), undefined);
});

test('BPE vocabularies use the word-initial form and the gpt2-xl list', () => {
  const bpe = toyBpeTokenizer(['Paris', 'paris', 'Rome']);
  assert.equal(answerVocabKey('my-gpt', bpe, ['bert-base-cased', 'gpt2-xl', 'roberta-large']), 'gpt2-xl');
  assert.equal(answerVocabKey('roberta-large', bpe, ['bert-base-cased', 'roberta-large']), 'roberta-large');
  assert.equal(answerVocabKey('bert-mini-lama', tok, ['bert-base-cased', 'gpt2-xl']), 'bert-base-cased');
  assert.equal(answerTokenId('Paris', bpe), bpe.tokenToId('ĠParis'));
  assert.equal(answerTokenId('paris', bpe), bpe.tokenToId('Ġparis'), 'cased: no lowercasing');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lama-vocab-'));
  fs.writeFileSync(
    path.join(dir, '29k-vocab.json'),
    JSON.stringify({ 'bert-base-cased': ['Paris'], 'gpt2-xl': ['ĠParis', 'ĠRome', 'ĠOslo'] }),
  );
  assert.deepEqual(loadAnswerVocab(dir, '29k', 'gpt2', bpe), [bpe.tokenToId('ĠParis'), bpe.tokenToId('ĠRome')]);
  fs.rmSync(dir, { recursive: true });
});

test('majorityObject: most frequent train object, ties to the smallest label', () => {
  const f = (obj: string): LamaFact => ({ sub_label: 's', obj_label: obj, predicate_id: 'P1' });
  assert.equal(majorityObject([f('b'), f('a'), f('b'), f('c')]), 'b');
  assert.equal(majorityObject([f('c'), f('b'), f('c'), f('b'), f('a')]), 'b');
  assert.equal(majorityObject([]), undefined);
  const p19 = loadRelation(dataDir, 'original', 'P19');
  const m = majorityObject(p19.train!)!;
  const count = (label: string) => p19.train!.filter((x) => x.obj_label === label).length;
  for (const other of new Set(p19.train!.map((x) => x.obj_label))) assert.ok(count(other) <= count(m));
});
