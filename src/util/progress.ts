import cliProgress from 'cli-progress';

/** Progress of a long job: a bar on a TTY, plain lines (at most every `intervalMs`) otherwise. */
export interface Progress {
  start(total: number, label: string): void;
  update(done: number, fields?: Record<string, string | number>): void;
  log(line: string): void;
  stop(): void;
}

function formatFields(fields: Record<string, string | number>): string {
  return Object.entries(fields)
    .map(([k, v]) => `${k} ${typeof v === 'number' ? (Number.isInteger(v) ? v : v.toFixed(4)) : v}`)
    .join('  ');
}

export function makeProgress(opts: { quiet?: boolean; stream?: NodeJS.WriteStream; intervalMs?: number } = {}): Progress {
  const stream = opts.stream ?? process.stderr;
  if (opts.quiet) return { start() {}, update() {}, log() {}, stop() {} };
  if (stream.isTTY) return ttyProgress(stream);
  return lineProgress(stream, opts.intervalMs ?? 5000);
}

function ttyProgress(stream: NodeJS.WriteStream): Progress {
  let bar: cliProgress.SingleBar | null = null;
  let t0 = 0;
  return {
    start(total, label) {
      bar?.stop();
      t0 = Date.now();
      bar = new cliProgress.SingleBar(
        { stream, format: `${label} [{bar}] {value}/{total} {rate}/s ETA {eta_formatted} {info}`, hideCursor: true },
        cliProgress.Presets.shades_classic,
      );
      bar.start(total, 0, { info: '', rate: '0.0' });
    },
    update(done, fields = {}) {
      const rate = done / Math.max(1e-3, (Date.now() - t0) / 1000);
      bar?.update(done, { info: formatFields(fields), rate: rate.toFixed(1) });
    },
    log(line) {
      if (bar) stream.write('\r\x1b[2K');
      stream.write(line + '\n');
    },
    stop() {
      bar?.stop();
      bar = null;
    },
  };
}

function lineProgress(stream: NodeJS.WriteStream, intervalMs: number): Progress {
  let total = 0;
  let label = '';
  let t0 = 0;
  let last = 0;
  return {
    start(n, l) {
      total = n;
      label = l;
      t0 = Date.now();
      last = 0;
    },
    update(done, fields = {}) {
      const now = Date.now();
      if (now - last < intervalMs && done < total) return;
      last = now;
      const secs = (now - t0) / 1000;
      const rate = done / Math.max(1e-3, secs);
      const eta = rate > 0 ? (total - done) / rate : 0;
      stream.write(`${label} ${done}/${total} ${rate.toFixed(1)}/s ETA ${eta.toFixed(0)}s ${formatFields(fields)}\n`);
    },
    log(line) {
      stream.write(line + '\n');
    },
    stop() {},
  };
}
