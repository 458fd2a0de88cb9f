import type { Progress } from '../util/progress.js';
import { DEFAULT_LOOP, DEFAULT_OPTIM, type RunConfig } from '../train/tuning.js';
import { Verbalizer } from '../prompt/verbalizer.js';

/** What a page asks for a P-tuning run; `lamaRunConfig` / `labelledRunConfig` turn it into a RunConfig. */
export interface TuneSettings {
  /** the model's URL (recorded in the config; the model itself is loaded by the caller) */
  model: string;
  template: string;
  steps: number;
  batchSize: number;
  lr: number;
  seed: number;
  /** evaluate on dev every N steps (and at the end) */
  evalEvery: number;
  maxLength?: number;
}

function base(s: TuneSettings): Omit<RunConfig, 'head'> {
  return {
    version: 1,
    model: s.model,
    template: s.template,
    encoder: { type: 'lstm', seed: s.seed },
    maxLength: s.maxLength ?? 64,
    skipTooLong: false,
    loop: { ...DEFAULT_LOOP, epochs: 1000, maxSteps: s.steps, batchSize: s.batchSize, evalEvery: s.evalEvery, saveEvery: 0, logEvery: 1, seed: s.seed },
    optim: { ...DEFAULT_OPTIM, lr: s.lr },
  };
}

/** LAMA knowledge probing (one-token answers in `obj_label`), as `ptune train --answer-field obj_label`. */
export function lamaRunConfig(s: TuneSettings): RunConfig {
  return { ...base(s), head: { kind: 'answer', answerField: 'obj_label' } };
}

/**
 * A labelled list (`text`, `label` fields) with label words: `0:terrible,1:great`, or empty for the labels
 * themselves as words.
 */
export function labelledRunConfig(s: TuneSettings, labels: readonly string[], labelWords: string): RunConfig {
  const words = labelWords.trim() ? Verbalizer.parseSpec(labelWords) : Object.fromEntries(labels.map((l) => [l, l]));
  return { ...base(s), head: { kind: 'label', labelField: 'label', labelWords: words } };
}

/**
 * Records from a pasted list: one `text<TAB>label` per line (the last tab splits; a `text<TAB>label` header
 * line is skipped). Errors name the line.
 */
export function parseLabelledList(text: string, what = 'list'): { text: string; label: string }[] {
  const out: { text: string; label: string }[] = [];
  text.split(/\r?\n/).forEach((line, i) => {
    if (!line.trim()) return;
    const tab = line.lastIndexOf('\t');
    if (tab <= 0) throw new Error(`${what} line ${i + 1}: expected "text<TAB>label"`);
    const record = { text: line.slice(0, tab).trim(), label: line.slice(tab + 1).trim() };
    if (i === 0 && ['text', 'sentence'].includes(record.text.toLowerCase()) && record.label.toLowerCase() === 'label') return;
    if (!record.text || !record.label) throw new Error(`${what} line ${i + 1}: empty text or label`);
    out.push(record);
  });
  return out;
}

/**
 * Step times of a training run, from the loop's progress updates: the time between two optimizer steps,
 * leaving out the first step (it compiles the programs) and steps followed by an evaluation.
 */
export function stepTimer(now: () => number = () => performance.now()): {
  progress: Progress;
  onLog(record: Record<string, unknown>): void;
  /** milliseconds of each counted step */
  readonly times: number[];
  median(): number;
} {
  const times: number[] = [];
  let last: number | null = null;
  let lastStep = 0;
  let evaluated = false;
  return {
    times,
    progress: {
      start() {
        last = now();
      },
      update(done) {
        const t = now();
        if (last !== null && done > 1 && done === lastStep + 1 && !evaluated) times.push(t - last);
        last = t;
        lastStep = done;
        evaluated = false;
      },
      log() {},
      stop() {},
    },
    onLog(record) {
      if (record.type === 'eval') evaluated = true;
    },
    median() {
      if (times.length === 0) return NaN;
      const s = [...times].sort((a, b) => a - b);
      const m = s.length >> 1;
      return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
    },
  };
}

let lastFrame = 0;

/**
 * Gives the page a turn between training steps: in a visible page a rendered frame every `frameEveryMs` (the
 * dev curve and status redraw, screenshots work), else a task turn for input — never a timer, which hidden
 * tabs throttle to a second or more.
 */
export function yieldToPage(frameEveryMs = 200): Promise<void> {
  const g = globalThis as { document?: { visibilityState?: string }; requestAnimationFrame?: (f: () => void) => number; scheduler?: { yield?: () => Promise<void> } };
  const now = performance.now();
  if (g.requestAnimationFrame && g.document?.visibilityState === 'visible' && now - lastFrame >= frameEveryMs) {
    lastFrame = now;
    return new Promise((resolve) => g.requestAnimationFrame!(() => taskTurn().then(resolve)));
  }
  return g.scheduler?.yield ? g.scheduler.yield() : taskTurn();
}

function taskTurn(): Promise<void> {
  return new Promise((resolve) => {
    const ch = new MessageChannel();
    ch.port1.onmessage = () => {
      ch.port1.close();
      resolve();
    };
    ch.port2.postMessage(null);
  });
}
