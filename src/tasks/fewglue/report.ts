import fs from 'node:fs';
import path from 'node:path';
import { writeFileAtomic, writeJsonAtomic } from '../../train/checkpoint.js';
import type { FewGlueReport } from './run.js';
import { taskInfo } from './tasks.js';

const pct = (x: number) => (100 * x).toFixed(1);

/** Paper-style table: one row per task and metric, one column per mode: mean ± std (majority baseline). */
export function reportMarkdown(report: FewGlueReport): string {
  const modes = [...new Set(report.cells.map((c) => c.mode))];
  const tasks = [...new Set(report.cells.map((c) => c.task))];
  const lines = [
    `# Few-shot SuperGLUE / SST-2: ${path.basename(report.model)}`,
    '',
    `Model ${report.model} (${report.modelKind}). Scores in %, mean ± sample std over seeds (n runs); ` +
      '[brackets]: majority-class baseline on the same evaluation set.',
    '',
    `| task | metric | ${modes.join(' | ')} |`,
    `|---|---|${modes.map(() => '---').join('|')}|`,
  ];
  for (const task of tasks) {
    for (const metric of taskInfo(task).metrics) {
      const row = modes.map((mode) => {
        const c = report.cells.find((x) => x.task === task && x.mode === mode);
        const m = c?.metrics[metric];
        if (!c || !m) return 'not run';
        const base = c.baseline?.[metric];
        return `${pct(m.mean)} ± ${pct(m.std)} (n=${c.runs})${base === undefined ? '' : ` [${pct(base)}]`}`;
      });
      lines.push(`| ${task} | ${metric} | ${row.join(' | ')} |`);
    }
  }
  if (report.notRun.length > 0) {
    lines.push('', '## Not run', '');
    for (const n of report.notRun) lines.push(`- ${n.task} ${n.mode}: ${n.reason}`);
  }
  lines.push('', '## Runs', '', '| task | mode | seed | pattern | scores | dev32 best | best epoch | steps | eval set | seconds |', '|---|---|---|---|---|---|---|---|---|---|');
  for (const r of report.runs) {
    const scores = Object.entries(r.scores).map(([k, v]) => `${k} ${pct(v)}`).join(', ');
    lines.push(`| ${r.task} | ${r.mode} | ${r.seed} | ${r.pattern} | ${scores} | ${r.devScore === null ? '-' : pct(r.devScore)} | ${r.bestEpoch ?? '-'} | ${r.steps} | ${r.evalSplit} (${r.nEval}) | ${r.seconds.toFixed(0)} |`);
  }
  lines.push('', `Settings: \`${JSON.stringify(report.settings)}\``, '', `Total time ${report.seconds.toFixed(0)} s.`, '');
  return lines.join('\n');
}

export function writeReport(out: string, report: FewGlueReport): void {
  fs.mkdirSync(out, { recursive: true });
  writeJsonAtomic(path.join(out, 'report.json'), report);
  writeFileAtomic(path.join(out, 'report.md'), reportMarkdown(report));
}
