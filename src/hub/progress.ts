import cliProgress from 'cli-progress';

/** Progress of the downloads: a byte bar per file on a TTY, a line per file otherwise, nothing when off. */
export interface DownloadProgress {
  /** a download of `file` starts at `done` bytes (a resumed one) of `total` (undefined: unknown) */
  start(file: string, done: number, total: number | undefined): void;
  update(done: number): void;
  /** the file is complete (`size` bytes) after `ms` */
  finish(file: string, size: number, ms: number): void;
  /** the download was abandoned (the error is reported by the caller) */
  abort(): void;
  note(line: string): void;
}

export function formatBytes(n: number): string {
  const units = ['B', 'kB', 'MB', 'GB', 'TB'];
  let v = n;
  let i = 0;
  while (v >= 1000 && i < units.length - 1) {
    v /= 1000;
    i++;
  }
  return i === 0 ? `${n} B` : `${v.toFixed(v < 10 ? 2 : 1)} ${units[i]}`;
}

export function makeDownloadProgress(enabled: boolean, label: string, stream: NodeJS.WritableStream = process.stderr): DownloadProgress {
  if (!enabled) return { start() {}, update() {}, finish() {}, abort() {}, note() {} };
  const tty = (stream as NodeJS.WriteStream).isTTY === true;
  return tty ? ttyProgress(label, stream as NodeJS.WriteStream) : lineProgress(label, stream);
}

function ttyProgress(label: string, stream: NodeJS.WriteStream): DownloadProgress {
  let bar: cliProgress.SingleBar | null = null;
  let t0 = 0;
  let first = 0;
  const stop = (): void => {
    bar?.stop();
    bar = null;
  };
  return {
    start(file, done, total) {
      stop();
      t0 = Date.now();
      first = done;
      bar = new cliProgress.SingleBar(
        {
          stream,
          hideCursor: true,
          format: (options, params, payload: { file: string; rate: string }) => {
            const width = options.barsize ?? 30;
            const frac = params.total > 0 ? Math.min(1, params.value / params.total) : 0;
            const filled = Math.round(frac * width);
            const bar = (options.barCompleteString ?? '').slice(0, filled) + (options.barIncompleteString ?? '').slice(0, width - filled);
            const total = params.total > 0 ? formatBytes(params.total) : '?';
            return `${label} ${payload.file} [${bar}] ${formatBytes(params.value)}/${total} ${payload.rate}/s`;
          },
        },
        cliProgress.Presets.shades_classic,
      );
      bar.start(total ?? 0, done, { file, rate: formatBytes(0) });
    },
    update(done) {
      const secs = Math.max(1e-3, (Date.now() - t0) / 1000);
      bar?.update(done, { rate: formatBytes(Math.round((done - first) / secs)) });
    },
    finish() {
      stop();
    },
    abort() {
      stop();
    },
    note(line) {
      if (bar) stream.write('\r\x1b[2K');
      stream.write(line + '\n');
    },
  };
}

function lineProgress(label: string, stream: NodeJS.WritableStream): DownloadProgress {
  let resumed = 0;
  return {
    start(_file, done) {
      resumed = done;
    },
    update() {},
    finish(file, size, ms) {
      const from = resumed > 0 ? ` (resumed at ${formatBytes(resumed)})` : '';
      stream.write(`${label}: ${file} ${formatBytes(size)} in ${(ms / 1000).toFixed(1)} s${from}\n`);
    },
    abort() {},
    note(line) {
      stream.write(line + '\n');
    },
  };
}
