/**
 * `npm run demo`: the main job end to end on the default model. P-tunes bert-mini-lama (frozen) on six LAMA
 * relations — continuous prompts [P*3] {sub_label} [P*3] [MASK] [P*3] trained per relation — and compares it with
 * the relations' manual prompts and the majority-object baseline. Writes out/demo/report.md, report.json, p1.svg.
 */
import fs from 'node:fs';
import path from 'node:path';
import { main } from '../src/cli/main.js';

const shared = path.resolve(process.cwd(), '../shared');
const out = path.resolve('out/demo');
fs.rmSync(out, { recursive: true, force: true });

const args = [
  'lama',
  '--model', path.join(shared, 'models/bert-mini-lama'),
  '--data', path.join(shared, 'data/lama'),
  '--relations', 'P1412,P103,P176,P449,P178,P20',
  '--mode', 'majority', 'manual', 'ptune',
  '--epochs', '6',
  '--patience', '3',
  '--out', out,
];
console.log(`ptune ${args.join(' ')}\n`);
const t0 = Date.now();
const code = await main(['node', 'ptune', ...args]);
if (code !== 0) process.exit(code);
console.log(`\n${fs.readFileSync(path.join(out, 'report.md'), 'utf8')}`);
console.log(`done in ${((Date.now() - t0) / 1000).toFixed(0)} s; report, chart and predictions in ${out}`);
