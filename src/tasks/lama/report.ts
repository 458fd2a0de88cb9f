/**
 * LAMA results on disk: one `result.json` per finished (mode, relation) for resuming, per-relation prediction
 * JSONL, and the run report (`report.json`, `report.md`, `p1.svg`). All files are written atomically.
 * P@1 values are fractions in [0, 1]; the markdown table and chart show percentages.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { writeFileAtomic } from '../../util/atomic.js';
import { barChartSvg, DEFAULT_COLORS } from '../../report/chart.js';
import { compareRelationIds, type AnswerableFact, type FactSet } from './data.js';
import { macroP1, microP1, type HitCount, type ScoredToken } from './metrics.js';

export interface LamaRelationResult {
  /** 'manual', 'ptune', ... (also a directory name) */
  mode: string;
  relation: string;
  /** 'ok' when the relation was scored; otherwise why not ('no test file', 'no facts after filtering', ...) */
  status: string;
  label?: string;
  template?: string;
  /** fact counts after vocabulary filtering */
  n_train: number;
  n_dev: number;
  n_test: number;
  /** facts dropped by the filter per set */
  dropped: Record<FactSet, number>;
  dev_p1: number | null;
  test_p1: number | null;
  /** correct test answers; defaults to round(test_p1 × n_test) */
  test_hits?: number;
  majority?: string;
  majority_p1: number | null;
  epochs: number;
  seconds: number;
}

export interface LamaReportMeta {
  title?: string;
  /** the command line that produced the results */
  command?: string;
  config?: Record<string, unknown>;
}

export interface ModeSummary {
  relations: number;
  facts: number;
  macro_p1: number | null;
  micro_p1: number | null;
  majority_macro_p1: number | null;
  majority_micro_p1: number | null;
  dev_macro_p1: number | null;
  seconds: number;
}

export interface LamaReport {
  title: string;
  command?: string;
  config?: Record<string, unknown>;
  modes: string[];
  /** per mode, over the relations that mode scored */
  summary: Record<string, ModeSummary>;
  /** per mode, over `relations_covered` only (comparable across modes) */
  summary_common: Record<string, ModeSummary>;
  /** relations scored in every mode */
  relations_covered: string[];
  relations_skipped: { relation: string; mode: string; reason: string }[];
  results: LamaRelationResult[];
}

// ---------------------------------------------------------------------------------------------------------------
// Files


function checkName(kind: string, name: string): string {
  if (!/^[A-Za-z0-9][A-Za-z0-9._+-]*$/.test(name)) throw new Error(`invalid ${kind} name "${name}" (letters, digits, . _ + -)`);
  return name;
}

export function relationDir(outDir: string, mode: string, rel: string): string {
  return path.join(outDir, checkName('mode', mode), checkName('relation', rel));
}

export function relationResultPath(outDir: string, mode: string, rel: string): string {
  return path.join(relationDir(outDir, mode, rel), 'result.json');
}

// ---------------------------------------------------------------------------------------------------------------
// Per-relation results (resume support)

/** A result for a relation that was not scored, with `status` saying why. */
export function skippedResult(
  mode: string,
  relation: string,
  status: string,
  extra: Partial<LamaRelationResult> = {},
): LamaRelationResult {
  return {
    mode,
    relation,
    status,
    n_train: 0,
    n_dev: 0,
    n_test: 0,
    dropped: { train: 0, dev: 0, test: 0 },
    dev_p1: null,
    test_p1: null,
    majority_p1: null,
    epochs: 0,
    seconds: 0,
    ...extra,
  };
}

/** Checks the shape of a parsed result; `where` names the source in errors. */
export function validateResult(value: unknown, where: string): LamaRelationResult {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) throw new Error(`${where}: expected an object`);
  const o = value as Record<string, unknown>;
  const fail = (field: string, want: string): never => {
    throw new Error(`${where}: field "${field}" must be ${want}`);
  };
  for (const f of ['mode', 'relation', 'status']) if (typeof o[f] !== 'string') fail(f, 'a string');
  for (const f of ['label', 'template', 'majority']) if (o[f] !== undefined && typeof o[f] !== 'string') fail(f, 'a string');
  for (const f of ['n_train', 'n_dev', 'n_test', 'epochs', 'seconds']) {
    if (typeof o[f] !== 'number' || !((o[f] as number) >= 0)) fail(f, 'a non-negative number');
  }
  if (o.test_hits !== undefined && (typeof o.test_hits !== 'number' || o.test_hits < 0)) fail('test_hits', 'a non-negative number');
  for (const f of ['dev_p1', 'test_p1', 'majority_p1']) {
    const v = o[f];
    if (v !== null && (typeof v !== 'number' || v < 0 || v > 1)) fail(f, 'null or a number in [0, 1]');
  }
  const d = o.dropped as Record<string, unknown> | null;
  if (d === null || typeof d !== 'object' || !['train', 'dev', 'test'].every((s) => typeof d[s] === 'number')) {
    fail('dropped', 'an object of train/dev/test counts');
  }
  return o as unknown as LamaRelationResult;
}

export function saveRelationResult(outDir: string, result: LamaRelationResult): string {
  validateResult(result, `result of ${result.mode}/${result.relation}`);
  const file = relationResultPath(outDir, result.mode, result.relation);
  writeFileAtomic(file, JSON.stringify(result, null, 2) + '\n');
  return file;
}

/** The saved result, or null when there is none; a malformed file is an error naming it. */
export function loadRelationResult(outDir: string, mode: string, rel: string): LamaRelationResult | null {
  const file = relationResultPath(outDir, mode, rel);
  if (!fs.existsSync(file)) return null;
  let value: unknown;
  try {
    value = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    throw new Error(`${file}: malformed JSON (${(e as Error).message})`);
  }
  const result = validateResult(value, file);
  if (result.mode !== mode || result.relation !== rel) {
    throw new Error(`${file}: holds ${result.mode}/${result.relation}, expected ${mode}/${rel}`);
  }
  return result;
}

/** true when a result for (mode, relation) has been saved (whatever its status). */
export function relationDone(outDir: string, mode: string, rel: string): boolean {
  return fs.existsSync(relationResultPath(outDir, mode, rel));
}

function subdirs(dir: string): string[] {
  if (!fs.existsSync(dir)) return [];
  return fs
    .readdirSync(dir, { withFileTypes: true })
    .filter((d) => d.isDirectory())
    .map((d) => d.name);
}

/** Every saved result under outDir (`<mode>/<relation>/result.json`), by mode then relation. */
export function collectResults(outDir: string): LamaRelationResult[] {
  const out: LamaRelationResult[] = [];
  for (const mode of subdirs(outDir)) {
    for (const rel of subdirs(path.join(outDir, mode))) {
      if (!fs.existsSync(path.join(outDir, mode, rel, 'result.json'))) continue;
      out.push(loadRelationResult(outDir, mode, rel)!);
    }
  }
  return sortResults(out);
}

function orderModes(modes: Iterable<string>): string[] {
  return [...new Set(modes)].sort((a, b) => (a === 'manual' ? -1 : b === 'manual' ? 1 : a < b ? -1 : a > b ? 1 : 0));
}

function sortResults(results: LamaRelationResult[]): LamaRelationResult[] {
  const modes = orderModes(results.map((r) => r.mode));
  return [...results].sort(
    (a, b) => modes.indexOf(a.mode) - modes.indexOf(b.mode) || compareRelationIds(a.relation, b.relation),
  );
}

// ---------------------------------------------------------------------------------------------------------------
// Predictions

export interface LamaPrediction {
  sub: string;
  gold: string;
  gold_id: number;
  hit: boolean;
  /** best answers first */
  top: { token: string; id: number; score: number }[];
}

/** Pairs facts with their ranked answers; `tokenText` shows an id (e.g. `id => tok.decode([id]).trim()`). */
export function toPredictions(
  facts: readonly AnswerableFact[],
  ranked: readonly ScoredToken[][],
  tokenText: (id: number) => string,
): LamaPrediction[] {
  if (facts.length !== ranked.length) throw new Error(`toPredictions: ${ranked.length} rankings for ${facts.length} facts`);
  return facts.map((f, i) => ({
    sub: f.sub_label,
    gold: f.obj_label,
    gold_id: f.obj_token_id,
    hit: ranked[i].length > 0 && ranked[i][0].id === f.obj_token_id,
    top: ranked[i].map((t) => ({ token: tokenText(t.id), id: t.id, score: t.score })),
  }));
}

/** Writes `<outDir>/<mode>/<rel>/predictions.<set>.jsonl`; returns its path. */
export function writePredictions(
  outDir: string,
  mode: string,
  rel: string,
  predictions: readonly LamaPrediction[],
  set: FactSet = 'test',
): string {
  const file = path.join(relationDir(outDir, mode, rel), `predictions.${set}.jsonl`);
  writeFileAtomic(file, predictions.map((p) => JSON.stringify(p) + '\n').join(''));
  return file;
}

// ---------------------------------------------------------------------------------------------------------------
// Report

const isScored = (r: LamaRelationResult): boolean => r.status === 'ok' && r.test_p1 !== null;

function testHits(r: LamaRelationResult): HitCount {
  return { n: r.n_test, hits: r.test_hits ?? Math.round((r.test_p1 ?? 0) * r.n_test) };
}

function summarize(results: readonly LamaRelationResult[]): ModeSummary {
  const scored = results.filter(isScored);
  const withMajority = scored.filter((r) => r.majority_p1 !== null);
  const majority = withMajority.map((r) => ({ n: r.n_test, hits: Math.round(r.majority_p1! * r.n_test) }));
  const dev = scored.filter((r) => r.dev_p1 !== null).map((r) => r.dev_p1!);
  return {
    relations: scored.length,
    facts: scored.reduce((a, r) => a + r.n_test, 0),
    macro_p1: macroP1(scored.map(testHits)),
    micro_p1: microP1(scored.map(testHits)),
    majority_macro_p1: withMajority.length > 0 ? macroP1(majority) : null,
    majority_micro_p1: withMajority.length > 0 ? microP1(majority) : null,
    dev_macro_p1: dev.length > 0 ? dev.reduce((a, b) => a + b, 0) / dev.length : null,
    seconds: results.reduce((a, r) => a + r.seconds, 0),
  };
}

export function buildLamaReport(results: readonly LamaRelationResult[], meta: LamaReportMeta = {}): LamaReport {
  const sorted = sortResults([...results]);
  for (const r of sorted) validateResult(r, `result of ${r.mode}/${r.relation}`);
  const seen = new Set<string>();
  for (const r of sorted) {
    const key = `${r.mode}/${r.relation}`;
    if (seen.has(key)) throw new Error(`LAMA report: two results for ${key}`);
    seen.add(key);
  }
  const modes = orderModes(sorted.map((r) => r.mode));
  const relations = [...new Set(sorted.map((r) => r.relation))].sort(compareRelationIds);
  const find = (mode: string, rel: string) => sorted.find((r) => r.mode === mode && r.relation === rel);
  const covered = relations.filter((rel) => modes.every((m) => { const r = find(m, rel); return r !== undefined && isScored(r); }));
  const skipped: LamaReport['relations_skipped'] = [];
  for (const mode of modes) {
    for (const rel of relations) {
      const r = find(mode, rel);
      if (r === undefined) skipped.push({ relation: rel, mode, reason: 'no result' });
      else if (!isScored(r)) skipped.push({ relation: rel, mode, reason: r.status === 'ok' ? 'no test P@1' : r.status });
    }
  }
  const summary: Record<string, ModeSummary> = {};
  const summaryCommon: Record<string, ModeSummary> = {};
  for (const mode of modes) {
    const ofMode = sorted.filter((r) => r.mode === mode);
    summary[mode] = summarize(ofMode);
    summaryCommon[mode] = summarize(ofMode.filter((r) => covered.includes(r.relation)));
  }
  return {
    title: meta.title ?? 'LAMA fact retrieval',
    command: meta.command,
    config: meta.config,
    modes,
    summary,
    summary_common: summaryCommon,
    relations_covered: covered,
    relations_skipped: skipped,
    results: sorted,
  };
}

const pct = (v: number | null | undefined): string => (v === null || v === undefined ? '–' : (v * 100).toFixed(2));
const cell = (s: string): string => s.replace(/\|/g, '\\|').replace(/\n/g, ' ');

function configLines(config: Record<string, unknown> | undefined): string[] {
  if (config === undefined) return [];
  return Object.entries(config).map(([k, v]) => `- ${k}: \`${typeof v === 'string' ? v : JSON.stringify(v)}\``);
}

/** The modes that get their own column or bars: `majority` already stands beside every score. */
function shownModes(report: LamaReport): string[] {
  const modes = report.modes.filter((m) => m !== 'majority');
  return modes.length > 0 ? modes : report.modes;
}

export function lamaReportMarkdown(report: LamaReport): string {
  const modes = shownModes(report);
  const rels = [...new Set(report.results.filter(isScored).map((r) => r.relation))].sort(compareRelationIds);
  const get = (mode: string, rel: string) => report.results.find((r) => r.mode === mode && r.relation === rel);
  const first = (rel: string) => report.results.find((r) => r.relation === rel && isScored(r)) ?? get(modes[0], rel);
  const lines: string[] = [`# ${report.title}`, ''];
  if (report.command) lines.push('```', report.command, '```', '');
  const cfg = configLines(report.config);
  if (cfg.length > 0) lines.push(...cfg, '');
  lines.push(
    'Test P@1 (%) on the facts left after answer-vocabulary filtering; majority = always answering the most ' +
      'frequent train object; macro = mean over relations, micro = over all facts. Relations not scored in any ' +
      'mode are listed under Skipped.',
    '',
  );
  lines.push(`| relation | label | facts | majority | ${modes.map(cell).join(' | ')} |`);
  lines.push(`|---|---|---:|---:|${modes.map(() => '---:').join('|')}|`);
  for (const rel of rels) {
    const f = first(rel);
    const scores = modes.map((m) => {
      const r = get(m, rel);
      return r !== undefined && isScored(r) ? pct(r.test_p1) : '–';
    });
    const facts = f !== undefined && isScored(f) ? String(f.n_test) : '–';
    const majority = f !== undefined && isScored(f) ? pct(f.majority_p1) : '–';
    lines.push(`| ${rel} | ${cell(f?.label ?? '')} | ${facts} | ${majority} | ${scores.join(' | ')} |`);
  }
  const common = report.summary_common[modes[0]];
  if (modes.length > 0 && common !== undefined) {
    const n = report.relations_covered.length;
    const row = (name: string, pick: (s: ModeSummary) => number | null, majority: number | null) =>
      `| **${name}** | ${n} relations | ${common.facts} | ${pct(majority)} | ${modes.map((m) => pct(pick(report.summary_common[m]))).join(' | ')} |`;
    lines.push(row('macro', (s) => s.macro_p1, common.majority_macro_p1));
    lines.push(row('micro', (s) => s.micro_p1, common.majority_micro_p1));
  }
  lines.push('', `Macro / micro rows cover the ${report.relations_covered.length} relations scored in every mode.`, '');
  const counted = rels.map(first).filter((r): r is LamaRelationResult => r !== undefined && isScored(r));
  if (counted.length > 0) {
    const sum = (f: (r: LamaRelationResult) => number) => counted.reduce((a, r) => a + f(r), 0);
    const sets = (['train', 'dev', 'test'] as const).map(
      (set) => `${set} ${sum((r) => r[`n_${set}`])} used / ${sum((r) => r.dropped[set])} dropped`,
    );
    lines.push(`Facts of the scored relations (used: in the answer vocabulary, after any caps; dropped: not): ${sets.join(', ')}.`, '');
  }

  lines.push('| mode | relations scored | macro P@1 | micro P@1 | dev macro P@1 | seconds |', '|---|---:|---:|---:|---:|---:|');
  for (const m of modes) {
    const s = report.summary[m];
    lines.push(`| ${cell(m)} | ${s.relations} | ${pct(s.macro_p1)} | ${pct(s.micro_p1)} | ${pct(s.dev_macro_p1)} | ${s.seconds.toFixed(1)} |`);
  }
  if (report.relations_skipped.length > 0) {
    lines.push('', '## Skipped', '');
    const byKey = new Map<string, string[]>();
    for (const s of report.relations_skipped) {
      const key = `${s.relation}\u0000${s.reason}`;
      byKey.set(key, [...(byKey.get(key) ?? []), s.mode]);
    }
    for (const [key, ms] of byKey) {
      const [rel, reason] = key.split('\u0000');
      const where = ms.length === modes.length ? 'all modes' : ms.join(', ');
      lines.push(`- ${rel} (${where}): ${reason}`);
    }
  }
  return lines.join('\n') + '\n';
}

export function lamaReportSvg(report: LamaReport): string {
  const rels = [...new Set(report.results.filter(isScored).map((r) => r.relation))].sort(compareRelationIds);
  const p1 = (mode: string, rel: string): number | null => {
    const r = report.results.find((x) => x.mode === mode && x.relation === rel);
    return r !== undefined && isScored(r) ? r.test_p1! * 100 : null;
  };
  const series = shownModes(report).map((mode) => ({
    name: mode,
    values: [...rels.map((rel) => p1(mode, rel)), pct100(report.summary_common[mode]?.macro_p1)],
  }));
  const majority = rels.map((rel) => {
    const r = report.results.find((x) => x.relation === rel && isScored(x) && x.majority_p1 !== null);
    return r === undefined ? null : r.majority_p1! * 100;
  });
  if (majority.some((v) => v !== null)) {
    const firstMode = report.modes[0];
    series.push({ name: 'majority', values: [...majority, pct100(report.summary_common[firstMode]?.majority_macro_p1)] });
  }
  const colors = report.modes.map((_, i) => DEFAULT_COLORS[i % DEFAULT_COLORS.length]);
  return barChartSvg({
    title: `${report.title}: test P@1`,
    colors: [...colors, '#a0a0a0'],
    categories: [...rels, 'macro'],
    series,
    yLabel: 'P@1 (%)',
  });
}

function pct100(v: number | null | undefined): number | null {
  return v === null || v === undefined ? null : v * 100;
}

/** Writes report.json, report.md and p1.svg into outDir; returns their paths. */
export function writeLamaReport(
  outDir: string,
  results: readonly LamaRelationResult[],
  meta: LamaReportMeta = {},
): { json: string; md: string; svg: string; report: LamaReport } {
  const report = buildLamaReport(results, meta);
  const json = path.join(outDir, 'report.json');
  const md = path.join(outDir, 'report.md');
  const svg = path.join(outDir, 'p1.svg');
  writeFileAtomic(json, JSON.stringify(report, null, 2) + '\n');
  writeFileAtomic(md, lamaReportMarkdown(report));
  writeFileAtomic(svg, lamaReportSvg(report));
  return { json, md, svg, report };
}
