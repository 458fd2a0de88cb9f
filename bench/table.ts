/**
 * Markdown table of an `npm run bench` JSON report (docs/performance.md and the README show these tables).
 *
 *   npm run bench -- --torch-threads 1,2 > bench.json && node dist/bench/table.js bench.json
 */
import fs from 'node:fs';

type Row = Record<string, unknown>;

const timed = (x: unknown): number | undefined =>
  x && typeof x === 'object' && 'median_s' in x ? (x as { median_s: number }).median_s : typeof x === 'number' ? x : undefined;

function fmt(x: number | undefined, digits = 3): string {
  return x === undefined ? '—' : x.toFixed(digits);
}

function engineRow(model: string, name: string, r: Row, ratio: Row | undefined, engine: string): string {
  const torch = name.startsWith('pytorch');
  const get = (mode: string) => timed(torch ? r[`${mode}_s`] : r[mode]);
  const full = get('full');
  const grad = timed(r.full_grad);
  const failed = (x: unknown) => !!x && typeof x === 'object' && 'error' in x;
  const cell = (x: number | undefined, raw: unknown) => (failed(raw) ? 'abort' : fmt(x));
  const fullCell = r.full_error ? 'abort' : cell(full, r.full) + (grad !== undefined || failed(r.full_grad) ? ` (${cell(grad, r.full_grad)})` : '');
  const lama = (r.lama as { facts_per_s?: number } | undefined)?.facts_per_s;
  const fwd = get('fwd');
  const lamaCell = torch ? (fwd ? `≤ ${(16 / fwd).toFixed(1)}` : '—') : fmt(lama, 1);
  const rss = ['fwd', 'ptune', 'full', 'lama'].map((m) => {
    const v = r[`${m}_peak_rss_mb`];
    return typeof v === 'number' ? String(Math.round(v)) : torch && m === 'lama' ? '' : '—';
  });
  const ratios = torch
    ? name === 'pytorch_1t' ? '1 / 1 / 1' : ['fwd', 'ptune', 'full'].map((m) => fmt(get(m)! / (timed((ratio as Row)[`${m}_s`]) ?? NaN), 2)).join(' / ')
    : ['fwd', 'ptune', 'full'].map((m) => fmt(ratio?.[`${engine}_${m}`] as number | undefined, 2)).join(' / ');
  const label = torch ? `pytorch ${name.slice(8, -1)} thread${name === 'pytorch_1t' ? '' : 's'}` : name;
  return `| ${model} | ${label} | ${fmt(fwd)} | ${fmt(get('ptune'))} | ${fullCell} | ${lamaCell} | ${rss.filter((x) => x !== '').join(' / ')} | ${ratios} |`;
}

function main(): void {
  const file = process.argv[2];
  if (!file) throw new Error('usage: node dist/bench/table.js BENCH.json');
  const report = JSON.parse(fs.readFileSync(file, 'utf8')) as Row;
  const lines = [
    '| model | engine | fwd s | P-tuning step s | full FT step s (grad only) | LAMA facts/s | peak RSS MB (fwd / ptune / full / lama) | ratio to PyTorch 1 thread: fwd / ptune / full |',
    '|---|---|---|---|---|---|---|---|',
  ];
  for (const [model, row] of Object.entries(report.results as Record<string, Row>)) {
    const torch1 = row.pytorch_1t as Row | undefined;
    for (const [name, r] of Object.entries(row)) {
      if (name === 'ratio_to_pytorch_1t') continue;
      const ratio = name.startsWith('pytorch') ? torch1 : (row.ratio_to_pytorch_1t as Row | undefined);
      lines.push(engineRow(model, name, r as Row, ratio, name));
    }
  }
  lines.push('', `load average at start / end: [${report.loadavg_start}] [${report.loadavg_end}]`);
  console.log(lines.join('\n'));
}

main();
