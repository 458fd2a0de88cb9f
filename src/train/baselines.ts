import type { Head } from '../prompt/heads.js';
import { numPseudo, type Template } from '../prompt/template.js';
import type { Item, PTuning } from './tuning.js';

/** What a run must beat, measured on its dev set before training. */
export interface Baselines {
  /** always predicting the most frequent training class (ties: the first class) */
  majority: { prediction: string; metrics: Record<string, number> };
  /**
   * the frozen LM with the template's words alone (pseudo tokens and learned prompts left out), scored by the
   * verbalizer head; absent for a linear head (it has no zero-shot reading) or a template with nothing but
   * pseudo tokens around the input
   */
  zeroShot?: { template: string; metrics: Record<string, number> };
}

/** The template's text with its pseudo tokens removed, or null when no anchor word is left. */
export function anchorsOnly(t: Template): string | null {
  const kept = t.parts.filter((p) => p.type !== 'pseudo');
  if (!kept.some((p) => p.type === 'text')) return null;
  return numPseudo(t) === 0 ? t.text : t.text.replace(/\s*\[P(\*\d+)?\]/g, '').trim();
}

function majority(head: Head, train: readonly Item[], dev: readonly Item[], metrics: MetricsFn): Baselines['majority'] {
  const counts = new Array<number>(head.numClasses).fill(0);
  for (const it of train) if (it.target >= 0 && it.target < counts.length) counts[it.target]!++;
  let best = 0;
  for (let k = 1; k < counts.length; k++) if (counts[k]! > counts[best]!) best = k;
  return { prediction: head.className(best), metrics: metrics(dev.map(() => best), dev.map((i) => i.target), head) };
}

type MetricsFn = (pred: number[], gold: number[], head: Head) => Record<string, number>;

/** Majority and zero-shot scores of a session's task on the dev records (the LM as it is now). */
export async function devBaselines(
  session: PTuning,
  train: readonly Item[],
  dev: readonly Item[],
  devRecords: readonly Record<string, unknown>[],
  metrics: MetricsFn,
): Promise<Baselines> {
  const out: Baselines = { majority: majority(session.head, train, dev, metrics) };
  const template = session.head.spec.kind === 'linear' ? null : anchorsOnly(session.template);
  if (template === null || dev.length === 0) return out;
  const c = session.config;
  const plain = await session.variant({ ...c, template, method: 'ptuning', prefix: undefined, promptTuning: undefined, peftPrefix: undefined, peftLayout: undefined });
  const { items } = plain.prepare(devRecords, 'dev');
  const r = await plain.evaluateItems(items);
  out.zeroShot = { template, metrics: r.metrics };
  return out;
}

/** One line for the console: `majority "great" 0.5090 · zero-shot "{sentence} It was [MASK] ." 0.5230`. */
export function describeBaselines(b: Baselines, metric: string): string {
  const f = (m: Record<string, number>) => (m[metric] ?? NaN).toFixed(4);
  const zs = b.zeroShot ? ` · zero-shot ${JSON.stringify(b.zeroShot.template)} ${f(b.zeroShot.metrics)}` : '';
  return `dev baselines (${metric}): majority ${JSON.stringify(b.majority.prediction)} ${f(b.majority.metrics)}${zs}`;
}
