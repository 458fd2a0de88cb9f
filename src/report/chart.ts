/**
 * A dependency-free grouped bar chart as SVG text. Bars are the only `<rect>` elements (one per finite value);
 * the background and legend swatches are paths, so a bar count is a `<rect` count.
 */

export interface BarSeries {
  name: string;
  /** one value per category; null / NaN draws no bar */
  values: readonly (number | null)[];
}

export interface BarChartSpec {
  title: string;
  categories: readonly string[];
  series: readonly BarSeries[];
  yLabel: string;
  /** fixed top of the y axis (default: a rounded-up maximum of the data) */
  yMax?: number;
  /** tick and tooltip number format (default: up to 2 decimals) */
  format?: (v: number) => string;
  /** colours per series, cycled (default: a 10-colour qualitative palette) */
  colors?: readonly string[];
}

export const DEFAULT_COLORS: readonly string[] = ['#4e79a7', '#f28e2b', '#59a14f', '#e15759', '#76b7b2', '#edc948', '#b07aa1', '#ff9da7', '#9c755f', '#bab0ac'];
const FONT = 'font-family="Helvetica, Arial, sans-serif"';
const CHAR_W = 6.2; // rough width of one 11px character, for layout

export function escapeXml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&apos;' })[c]!);
}

const defaultFormat = (v: number): string => String(Math.round(v * 100) / 100);

/** A 1/2/5 × 10^k step giving about `count` intervals over [0, span]. */
function niceStep(span: number, count: number): number {
  const raw = span / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const norm = raw / mag;
  return (norm <= 1 ? 1 : norm <= 2 ? 2 : norm <= 5 ? 5 : 10) * mag;
}

const r1 = (v: number): string => String(Math.round(v * 10) / 10);

/** Legend entries left to right, wrapping to a new row at `maxX`. */
function layoutLegend(names: readonly string[], minX: number, maxX: number): { x: number; row: number }[] {
  let x = minX;
  let row = 0;
  return names.map((name) => {
    const w = 14 + name.length * CHAR_W + 20;
    if (x > minX && x + w > maxX) {
      x = minX;
      row++;
    }
    const at = { x, row };
    x += w;
    return at;
  });
}

export function barChartSvg(spec: BarChartSpec): string {
  const { categories, series } = spec;
  const format = spec.format ?? defaultFormat;
  const colors = spec.colors && spec.colors.length > 0 ? spec.colors : DEFAULT_COLORS;
  for (const s of series) {
    if (s.values.length !== categories.length) {
      throw new Error(`barChartSvg: series "${s.name}" has ${s.values.length} values for ${categories.length} categories`);
    }
  }

  const finite = series.flatMap((s) => s.values).filter((v): v is number => v !== null && Number.isFinite(v));
  const dataMax = Math.max(0, ...finite);
  const dataMin = Math.min(0, ...finite);
  const hi = spec.yMax ?? dataMax;
  const step = niceStep(hi - dataMin || 1, 5);
  const yMin = Math.floor(dataMin / step) * step;
  const yMax = spec.yMax ?? Math.max(Math.ceil(hi / step) * step, yMin + step);

  const nSeries = Math.max(1, series.length);
  const barW = nSeries <= 2 ? 12 : nSeries <= 4 ? 9 : 6;
  const groupW = nSeries * barW + 10;
  const longestLabel = Math.max(1, ...categories.map((c) => c.length));
  const left = 64;
  const right = 20;
  const plotW = Math.max(400, categories.length * groupW);
  const legend = layoutLegend(series.map((s) => s.name), left, left + plotW);
  const legendRows = legend.length > 0 ? legend[legend.length - 1].row + 1 : 0;
  const top = 44 + legendRows * 16;
  const bottom = 30 + Math.ceil(longestLabel * CHAR_W * Math.SQRT1_2);
  const plotH = 280;
  const width = left + plotW + right;
  const height = top + plotH + bottom;
  const y = (v: number): number => top + plotH - ((v - yMin) / (yMax - yMin)) * plotH;
  const slot = plotW / Math.max(1, categories.length);

  const out: string[] = [];
  out.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" ${FONT} font-size="11">`,
  );
  out.push(`<path d="M0 0H${width}V${height}H0Z" fill="#ffffff"/>`);
  out.push(`<text x="${width / 2}" y="22" text-anchor="middle" font-size="15" font-weight="bold">${escapeXml(spec.title)}</text>`);

  legend.forEach(({ x, row }, i) => {
    const ly = 38 + row * 16;
    out.push(`<path d="M${r1(x)} ${ly - 9}h10v10h-10Z" fill="${colors[i % colors.length]}"/>`);
    out.push(`<text x="${r1(x + 14)}" y="${ly}">${escapeXml(series[i].name)}</text>`);
  });

  // grid, ticks and y axis
  for (let v = yMin, i = 0; v <= yMax + step * 1e-9 && i < 100; v += step, i++) {
    const ty = r1(y(v));
    out.push(`<line x1="${left}" y1="${ty}" x2="${left + plotW}" y2="${ty}" stroke="#e0e0e0"/>`);
    out.push(`<text x="${left - 6}" y="${r1(y(v) + 4)}" text-anchor="end">${escapeXml(format(Math.round(v / step) * step))}</text>`);
  }
  out.push(`<line x1="${left}" y1="${top}" x2="${left}" y2="${top + plotH}" stroke="#333"/>`);
  out.push(`<line x1="${left}" y1="${r1(y(0))}" x2="${left + plotW}" y2="${r1(y(0))}" stroke="#333"/>`);
  const midY = top + plotH / 2;
  out.push(`<text x="16" y="${midY}" text-anchor="middle" transform="rotate(-90 16 ${midY})">${escapeXml(spec.yLabel)}</text>`);

  // bars and category labels
  categories.forEach((cat, ci) => {
    const x0 = left + ci * slot + (slot - nSeries * barW) / 2;
    series.forEach((s, si) => {
      const v = s.values[ci];
      if (v === null || !Number.isFinite(v)) return;
      const clamped = Math.min(Math.max(v, yMin), yMax);
      const yTop = Math.min(y(clamped), y(0));
      const h = Math.abs(y(clamped) - y(0));
      out.push(
        `<rect x="${r1(x0 + si * barW)}" y="${r1(yTop)}" width="${barW - 1}" height="${r1(h)}" fill="${colors[si % colors.length]}">` +
          `<title>${escapeXml(`${s.name}, ${cat}: ${format(v)}`)}</title></rect>`,
      );
    });
    const lx = r1(left + ci * slot + slot / 2 + 3);
    const ly = top + plotH + 12;
    out.push(`<text x="${lx}" y="${ly}" text-anchor="end" transform="rotate(-45 ${lx} ${ly})">${escapeXml(cat)}</text>`);
  });

  out.push('</svg>');
  return out.join('\n') + '\n';
}
