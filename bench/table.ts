/**
 * Markdown table of an `npm run bench` JSON report (docs/performance.md and the README show these tables).
 *
 *   npm run bench > bench.json && node dist/bench/table.js bench.json
 */
import fs from 'node:fs';

type Row = Record<string, unknown>;

const timed = (x: unknown): number | undefined =>
  x && typeof x === 'object' && 'median_s' in x ? (x as { median_s: number }).median_s : typeof x === 'number' ? x : undefined;

function fmt(x: number | undefined, digits = 3): string {
  return x === undefined || !Number.isFinite(x) ? '—' : x.toFixed(digits);
}

function engineRow(model: string, name: string, r: Row, ratios: Row | undefined): string {
  const torch = name.startsWith('pytorch');
  const get = (mode: string) => timed(torch ? r[`${mode}_s`] : r[mode]);
  const failed = (mode: string) => r[`${mode}_error`] !== undefined;
  const cell = (mode: string) => (failed(mode) ? 'abort' : fmt(get(mode)));
  const grad = timed(r.full_grad);
  const full = cell('full') + (grad !== undefined ? ` (${fmt(grad)})` : '');
  const lama = (r.lama as { facts_per_s?: number } | undefined)?.facts_per_s;
  const rss = ['fwd', 'ptune', 'full', 'lama']
    .map((m) => r[`${m}_peak_rss_mb`])
    .filter((v) => typeof v === 'number')
    .map((v) => String(Math.round(v as number)))
    .join(' / ');
  const ratio = (key: string) => fmt(ratios?.[key] as number | undefined, 2);
  const speed = torch ? '' : ['fwd', 'ptune', 'full'].map((m) => ratio(`${name}_${m}`)).join(' / ');
  const mem = torch ? '' : ['fwd', 'ptune', 'full'].map((m) => ratio(`${name}_${m}_rss`)).join(' / ');
  const label = torch ? `pytorch ${r.torch ?? ''} ${name.slice(8, -1)} thread${name === 'pytorch_1t' ? '' : 's'}` : name;
  return `| ${model} | ${label} | ${cell('fwd')} | ${cell('ptune')} | ${full} | ${torch ? '' : fmt(lama, 1)} | ${rss} | ${speed} | ${mem} |`;
}

function main(): void {
  const file = process.argv[2];
  if (!file) throw new Error('usage: node dist/bench/table.js BENCH.json');
  const report = JSON.parse(fs.readFileSync(file, 'utf8')) as Row;
  const lines = [
    '| model | engine | fwd s | P-tuning step s | full FT step s (grad only) | LAMA facts/s | peak RSS MB (fwd / ptune / full / lama) | time vs faster PyTorch: fwd / ptune / full | peak RSS vs PyTorch: fwd / ptune / full |',
    '|---|---|---|---|---|---|---|---|---|',
  ];
  for (const [model, row] of Object.entries(report.results as Record<string, Row>)) {
    const label = `${model} (${row.batch}×${row.seq})`;
    for (const [name, r] of Object.entries(row)) {
      if (!r || typeof r !== 'object' || name === 'ratio_to_pytorch') continue;
      lines.push(engineRow(label, name, r as Row, row.ratio_to_pytorch as Row | undefined));
    }
  }
  lines.push('', `load average at start / end: [${report.loadavg_start}] [${report.loadavg_end}]; PyTorch ${report.torch}`);
  console.log(lines.join('\n'));
}

main();
