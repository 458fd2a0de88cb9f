import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  expandTuple,
  fields,
  fromLamaTemplate,
  numPseudo,
  parseTemplate,
  validateFor,
  withAnchorsAndPseudo,
} from '../src/prompt/template.js';

/** asserts that parsing throws a one-line error naming `column` */
function parseFails(src: string, column: number, what: RegExp, opts = {}) {
  assert.throws(
    () => parseTemplate(src, opts),
    (e: Error) => {
      assert.ok(!e.message.includes('\n'), `one line: ${e.message}`);
      assert.ok(e.message.startsWith(`template column ${column}: `), `column ${column} in: ${e.message}`);
      assert.match(e.message, what);
      assert.ok(e.message.endsWith(` in "${src}"`), `names the template: ${e.message}`);
      return true;
    },
  );
}

test('parses fields, pseudo groups, mask and anchors', () => {
  const t = parseTemplate('[P*3] {sub_label} [P] was born in [MASK] .');
  assert.deepEqual(
    t.parts.map((p) => p.type),
    ['pseudo', 'field', 'pseudo', 'text', 'mask', 'text'],
  );
  assert.deepEqual(t.parts[0], { type: 'pseudo', count: 3, spaceBefore: false, column: 1 });
  assert.deepEqual(t.parts[1], { type: 'field', name: 'sub_label', spaceBefore: true, column: 7 });
  assert.deepEqual(t.parts[3], { type: 'text', text: 'was born in', spaceBefore: true, column: 23 });
  assert.deepEqual(t.parts[4], { type: 'mask', spaceBefore: true, column: 35 });
  assert.equal(numPseudo(t), 4);
  assert.deepEqual(fields(t), ['sub_label']);
  assert.equal(t.text, '[P*3] {sub_label} [P] was born in [MASK] .');
});

test('records where whitespace separates parts', () => {
  const t = parseTemplate("{a}'s friend:[MASK]");
  assert.deepEqual(
    t.parts.map((p) => [p.type, p.spaceBefore]),
    [
      ['field', false],
      ['text', false],
      ['mask', false],
    ],
  );
  assert.equal(t.text, "{a}'s friend:[MASK]");
});

test('special tokens pass through, fields are listed once in order, escapes are literal', () => {
  const t = parseTemplate('{premise} [SEP] {hypothesis} ? [P*2] [MASK] {premise} \\[x\\] \\{y\\}');
  assert.deepEqual(t.parts[1], { type: 'special', token: '[SEP]', spaceBefore: true, column: 11 });
  assert.deepEqual(fields(t), ['premise', 'hypothesis']);
  const last = t.parts[t.parts.length - 1];
  assert.equal(last.type === 'text' && last.text, '[x] {y}');
  assert.equal(parseTemplate(t.text).text, t.text, 'the canonical text parses back to itself');
});

test('tuple shorthand expands as THUDM LAMA --template', () => {
  assert.equal(parseTemplate('3,3,3').text, '[P*3] {sub_label} [P*3] [MASK] [P*3]');
  assert.equal(parseTemplate('3,3,0').text, '[P*3] {sub_label} [P*3] [MASK]');
  assert.equal(parseTemplate('(3, 3, 3)').text, '[P*3] {sub_label} [P*3] [MASK] [P*3]');
  assert.equal(parseTemplate('1,2,0').text, '[P] {sub_label} [P*2] [MASK]');
  assert.equal(parseTemplate('0,0,0').text, '{sub_label} [MASK]');
  assert.equal(parseTemplate('3,3,3', { legacyBertOrder: true }).text, '[P*3] [MASK] [P*3] {sub_label} [P*3]');
  assert.equal(parseTemplate('3,3,0', { legacyBertOrder: true }).text, '[P*3] [MASK] [P*3] {sub_label} .');
  assert.equal(expandTuple([2, 1, 0], { subjectField: 'subject' }), '[P*2] {subject} [P] [MASK]');
  const t = parseTemplate(' 3,3,3 ');
  assert.deepEqual(t.tuple, [3, 3, 3]);
  assert.equal(t.source, ' 3,3,3 ');
  assert.equal(numPseudo(t), 9);
});

test('field name errors name the column', () => {
  parseFails('{sub_label} was {} [MASK]', 17, /empty field name "\{\}"/);
  parseFails('x {  } [MASK]', 3, /empty field name/);
  parseFails('{a b} [MASK]', 1, /bad field name "\{a b\}"/);
  parseFails('ok {x} [MASK]', 4, /unknown field "\{x\}" \(known: sub_label\)/, { knownFields: ['sub_label'] });
  assert.equal(parseTemplate('{sub_label} [MASK]', { knownFields: ['sub_label'] }).parts.length, 2);
});

test('unbalanced brackets and braces name the column', () => {
  parseFails('Hello {sub_label [MASK]', 7, /unbalanced "\{"/);
  parseFails('[MASK] {sub_label', 8, /unbalanced "\{"/);
  parseFails('a } [MASK]', 3, /unbalanced "\}"/);
  parseFails('[P*3 {x} [MASK]', 1, /unbalanced "\["/);
  parseFails('[MASK] x ]', 10, /unbalanced "\]"/);
  parseFails('[MASK] [P', 8, /unbalanced "\["/);
});

test('answer slot errors', () => {
  parseFails('{sub_label} was born', 1, /no \[MASK\]/);
  parseFails('[MASK] and [MASK]', 12, /second \[MASK\]/);
  parseFails('[X] was born in [MASK]', 1, /LAMA placeholder/);
});

test('bad pseudo-token counts', () => {
  parseFails('{a} [P*0] [MASK]', 5, /bad pseudo-token count "\[P\*0\]"/);
  parseFails('{a} [MASK] [P*x]', 12, /bad pseudo-token count "\[P\*x\]"/);
  parseFails('[P*] [MASK]', 1, /bad pseudo-token count/);
  parseFails('[P*-2] [MASK]', 1, /bad pseudo-token count/);
  parseFails('[P*2000] [MASK]', 1, /bad pseudo-token count/);
  parseFails('[MASK] [a b]', 8, /bad bracketed token "\[a b\]"/);
  parseFails('[MASK] []', 8, /bad bracketed token/);
  assert.equal(numPseudo(parseTemplate('[P * 4] [MASK]')), 4);
});

test('validateFor: the answer slot must be last for a causal LM', () => {
  const manual = parseTemplate('{sub_label} was born in [MASK] .');
  validateFor(manual, 'masked');
  assert.throws(
    () => validateFor(manual, 'causal'),
    /^Error: template column 32: \[MASK\] must be the last part for a causal LM, found "\." after it in "\{sub_label\} was born in \[MASK\] \."$/,
  );
  assert.throws(() => validateFor(parseTemplate('3,3,3'), 'causal'), /template column 32: .*found "\[P\*3\]".*"3,3,0"\) in "\[P\*3\] \{sub_label\} \[P\*3\] \[MASK\] \[P\*3\]" \(from "3,3,3"\)$/);
  validateFor(parseTemplate('3,3,0'), 'causal');
  validateFor(parseTemplate('{sub_label} was born in [MASK]'), 'causal');
});

test('fromLamaTemplate converts [X]/[Y] and truncates for causal LMs', () => {
  assert.equal(fromLamaTemplate('[X] was born in [Y] .'), '{sub_label} was born in [MASK] .');
  assert.equal(fromLamaTemplate('The native language of [X] is [Y] .'), 'The native language of {sub_label} is [MASK] .');
  assert.equal(fromLamaTemplate('[X] plays [Y] music .', { kind: 'causal' }), '{sub_label} plays [MASK]');
  assert.equal(fromLamaTemplate('[X] is a {weird} [Y]', { subjectField: 's' }), '{s} is a \\{weird\\} [MASK]');
  assert.equal(parseTemplate(fromLamaTemplate('[X] is a {weird} [Y]')).parts[1].type, 'text');
  assert.throws(() => fromLamaTemplate('[X] was born'), /must contain \[X\] and \[Y\]/);
});

test('withAnchorsAndPseudo puts a pseudo group in every gap, anchors next to the following slot', () => {
  assert.equal(withAnchorsAndPseudo('[X] was born in [Y] .').text, '[P*3] {sub_label} [P*3] was born in [MASK] [P*3] .');
  assert.equal(
    withAnchorsAndPseudo('[X] was born in [Y] .', { kind: 'causal', pseudo: 2 }).text,
    '[P*2] {sub_label} [P*2] was born in [MASK]',
  );
  assert.equal(
    withAnchorsAndPseudo('The native language of [X] is [Y] .', { pseudo: [1, 2, 0] }).text,
    '[P] The native language of {sub_label} [P*2] is [MASK] .',
  );
  assert.equal(withAnchorsAndPseudo("{a}'s home is [MASK]", { pseudo: [0, 1, 0] }).text, "{a} [P]'s home is [MASK]");
  assert.equal(numPseudo(withAnchorsAndPseudo(parseTemplate('{p} ? [MASK] , {h}'), { pseudo: 1 })), 4);
  assert.throws(() => withAnchorsAndPseudo('[X] born [Y]', { pseudo: [1, 1] }), /expected 3 counts/);
  assert.throws(() => withAnchorsAndPseudo('[P] {a} [MASK]'), /already has pseudo tokens/);
  assert.throws(() => withAnchorsAndPseudo('{a} [MASK] .', { kind: 'causal' }), /must be the last part/);
});
