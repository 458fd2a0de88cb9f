/**
 * The demo page: classify with an exported run, P-tune bert-mini-lama on a LAMA relation or a pasted list, watch
 * the dev curve, predict, download the prompt. Everything goes through ptune/web (src/web/index.ts).
 */
import {
  blobSource, ExportedModel, fetchSource, initWebRuntime, labelledRunConfig, lamaRunConfig, loadModelFrom, parseLabelledList,
  parseRecords, peftAdapterFiles, primaryMetric, promptTableFile, PTuning, stepTimer, TrainingStopped, yieldToPage,
  type FileSource, type LanguageModel, type TuneSettings, type WebRuntime,
} from '../src/web/index.js';

interface Site {
  models: { name: string; url: string }[];
  exports: { name: string; url: string }[];
  relations: string[];
  /** URL of the LAMA fact-retrieval folder (RELATION/train.jsonl, dev.jsonl) */
  lama: string;
}

const $ = <T extends HTMLElement = HTMLElement>(id: string) => document.getElementById(id) as T;
const input = (id: string) => $<HTMLInputElement>(id);

let wr: WebRuntime;
let site: Site = { models: [], exports: [], relations: [], lama: 'data/lama/fact-retrieval/original' };
let exported: ExportedModel | null = null;
let lm: LanguageModel | null = null;
let tuning: PTuning | null = null;
let stopAsked = false;

function message(text: string, kind: 'error' | 'info' = 'error'): void {
  const m = $('message');
  m.textContent = text;
  m.className = kind;
  m.dataset.kind = kind;
  m.hidden = false;
}

function clearMessage(): void {
  const m = $('message');
  m.hidden = true;
  m.textContent = '';
  delete m.dataset.kind;
}

/** Runs an event handler; whatever it throws becomes the page's message (never an uncaught error). */
function handle(el: HTMLElement, event: string, what: string, fn: () => Promise<void>): void {
  el.addEventListener(event, () => {
    clearMessage();
    fn().catch((err: unknown) => message(`${what}: ${err instanceof Error ? err.message : String(err)}`));
  });
}

function option(select: HTMLSelectElement, value: string, text = value): void {
  const o = document.createElement('option');
  o.value = value;
  o.textContent = text;
  select.append(o);
}

function filesSource(list: FileList | null): FileSource {
  const files = Array.from(list ?? []);
  if (files.length === 0) throw new Error('no files chosen');
  return blobSource(files.map((f) => [f.name, f] as [string, Blob]), 'chosen files');
}

// ---------------------------------------------------------------- classify with an export

async function loadExport(source: FileSource): Promise<void> {
  $<HTMLButtonElement>('classify-run').disabled = true;
  await exported?.release();
  exported = null;
  $('export-info').textContent = `loading ${source.name}…`;
  try {
    exported = await ExportedModel.load(source, wr.inference);
  } catch (err) {
    $('export-info').textContent = '';
    throw err;
  }
  const s = exported.spec;
  const what = s.task === 'label' ? `labels ${s.labels!.names.join(', ')}` : `top ${s.answer!.topK} answers`;
  $('export-info').textContent = `${source.name}: ${s.source.family} ${s.template.text} — ${what}; inputs [${s.inputs.batch} × ${s.inputs.length}]`;
  $('export-info').dataset.loaded = '1';
  $<HTMLButtonElement>('classify-run').disabled = false;
}

async function classify(): Promise<void> {
  if (!exported) throw new Error('load an exported run first');
  const text = input('classify-text').value.trim();
  if (!text) throw new Error('type a sentence');
  const field = exported.spec.template.parts.find((p) => p.type === 'field');
  const record = field && field.type === 'field' ? { [field.name]: text } : {};
  const t0 = performance.now();
  const [p] = await exported.predict([record]);
  const ms = performance.now() - t0;
  const out = $('classify-result');
  out.dataset.label = p!.prediction;
  const words = exported.spec.labels?.words;
  const name = (label: string) => {
    const w = words?.[label];
    return w ? `${label} (${Array.isArray(w) ? w.join('/') : w})` : label;
  };
  out.replaceChildren(resultGrid(p!.scores.map((s) => ({ label: name(s.label), score: s.score })), `${name(p!.prediction)}`, ms));
}

function resultGrid(scores: { label: string; score: number }[], best: string, ms: number): HTMLElement {
  const wrap = document.createElement('div');
  const head = document.createElement('p');
  head.innerHTML = `<span class="label"></span> <span class="muted">(${ms.toFixed(0)} ms)</span>`;
  head.querySelector('.label')!.textContent = best;
  const grid = document.createElement('div');
  grid.className = 'result';
  for (const s of scores) {
    const name = document.createElement('span');
    name.textContent = s.label;
    const bar = document.createElement('div');
    bar.className = 'bar';
    bar.style.width = `${Math.max(1, s.score * 100).toFixed(1)}%`;
    const value = document.createElement('span');
    value.textContent = s.score.toFixed(4);
    grid.append(name, bar, value);
  }
  wrap.append(head, grid);
  return wrap;
}

// ---------------------------------------------------------------- P-tuning

async function loadLm(source: FileSource): Promise<void> {
  $<HTMLButtonElement>('train-run').disabled = true;
  $<HTMLButtonElement>('predict-run').disabled = true;
  tuning?.dispose({ keepLm: true });
  tuning = null;
  lm?.dispose();
  lm = null;
  $('model-info').textContent = `loading ${source.name}…`;
  try {
    lm = await loadModelFrom(source);
  } catch (err) {
    $('model-info').textContent = '';
    throw err;
  }
  const i = lm.info;
  $('model-info').textContent = `${source.name}: ${i.family} (${i.kind}), ${i.numLayers} layers, hidden ${i.hiddenSize}, ${(i.parameterCount / 1e6).toFixed(2)}M parameters`;
  $('model-info').dataset.loaded = '1';
  $<HTMLButtonElement>('train-run').disabled = false;
}

function settings(): TuneSettings {
  const num = (id: string) => {
    const v = Number(input(id).value);
    if (!Number.isFinite(v)) throw new Error(`${id}: not a number`);
    return v;
  };
  return {
    model: (input('model-select') as unknown as HTMLSelectElement).value || 'model',
    template: input('template').value,
    steps: num('steps'),
    batchSize: num('batch'),
    lr: num('lr'),
    seed: num('seed'),
    evalEvery: num('eval-every'),
  };
}

function taskKind(): 'lama' | 'list' {
  return (document.querySelector('input[name=task]:checked') as HTMLInputElement).value as 'lama' | 'list';
}

async function taskData(s: TuneSettings): Promise<{ config: ReturnType<typeof lamaRunConfig>; train: Record<string, unknown>[]; dev: Record<string, unknown>[] }> {
  if (taskKind() === 'lama') {
    const rel = ($('relation') as HTMLSelectElement).value;
    const source = fetchSource(`${site.lama}/${rel}`);
    const read = async (split: string) => {
      const bytes = await source.read(`${split}.jsonl`);
      if (!bytes) throw new Error(`${source.name}/${split}.jsonl: not found`);
      return parseRecords(new TextDecoder().decode(bytes), '.jsonl', `${rel}/${split}.jsonl`);
    };
    const [train, dev] = await Promise.all([read('train'), read('dev')]);
    return { config: lamaRunConfig(s), train, dev };
  }
  const all = parseLabelledList(input('list-train').value, 'train list');
  let dev = input('list-dev').value.trim() ? parseLabelledList(input('list-dev').value, 'dev list') : [];
  let train = all;
  if (dev.length === 0) {
    const cut = Math.max(1, Math.floor(all.length * 0.8));
    train = all.slice(0, cut);
    dev = all.slice(cut);
  }
  if (train.length === 0 || dev.length === 0) throw new Error('the list needs at least two lines (train and dev)');
  const labels = [...new Set(all.map((r) => r.label))];
  return { config: labelledRunConfig(s, labels, input('label-words').value), train, dev };
}

async function train(): Promise<void> {
  if (!lm) throw new Error('load a model first');
  const s = settings();
  const { config, train, dev } = await taskData(s);
  tuning?.dispose({ keepLm: true });
  tuning = await PTuning.create(config, lm);
  const metric = primaryMetric(tuning.head);
  const timer = stepTimer();
  const evals: { step: number; score: number }[] = [];
  const losses: { step: number; loss: number }[] = [];
  const status = $('train-status');
  status.dataset.state = 'training';
  delete status.dataset.dev;
  $<HTMLButtonElement>('train-run').disabled = true;
  $<HTMLButtonElement>('train-stop').disabled = false;
  $<HTMLButtonElement>('predict-run').disabled = true;
  stopAsked = false;
  drawCurve(evals, losses, s.steps, metric);
  const progress = {
    ...timer.progress,
    update(done: number, fields?: Record<string, string | number>) {
      timer.progress.update(done, fields);
      const ms = timer.median();
      status.textContent = `step ${done}/${s.steps} · loss ${Number(fields?.loss ?? NaN).toFixed(3)}${Number.isFinite(ms) ? ` · ${ms.toFixed(0)} ms/step` : ''}${evals.length ? ` · dev ${metric} ${(100 * evals.at(-1)!.score).toFixed(1)}` : ''}`;
      status.dataset.step = String(done);
    },
  };
  const t0 = performance.now();
  try {
    const r = await tuning.trainInMemory({
      train,
      dev,
      progress,
      onLog(rec) {
        timer.onLog(rec);
        if (rec.type === 'eval') evals.push({ step: rec.step as number, score: rec.score as number });
        if (rec.type === 'train') losses.push({ step: rec.step as number, loss: rec.loss as number });
        drawCurve(evals, losses, s.steps, metric);
      },
      afterStep: yieldToPage,
      stopRequested: () => stopAsked,
    });
    const dev1 = r.lastDev?.score ?? NaN;
    const ms = timer.median();
    status.textContent = `done: ${r.step} steps in ${((performance.now() - t0) / 1000).toFixed(1)} s · ${ms.toFixed(0)} ms/step · dev ${metric} ${(100 * dev1).toFixed(1)} (best ${(100 * (r.bestScore ?? NaN)).toFixed(1)} at step ${r.bestStep})`;
    Object.assign(status.dataset, { state: 'done', steps: String(r.step), dev: String(dev1), best: String(r.bestScore), stepMs: String(ms) });
  } catch (err) {
    if (!(err instanceof TrainingStopped)) {
      status.dataset.state = 'failed';
      throw err;
    }
    status.textContent = `stopped at step ${err.step}`;
    status.dataset.state = 'stopped';
  } finally {
    $<HTMLButtonElement>('train-run').disabled = false;
    $<HTMLButtonElement>('train-stop').disabled = true;
  }
  $<HTMLButtonElement>('predict-run').disabled = false;
  await offerDownloads();
}

function drawCurve(evals: { step: number; score: number }[], losses: { step: number; loss: number }[], steps: number, metric: string): void {
  const svg = $('curve');
  const W = 600, H = 220, L = 44, R = 44, T = 14, B = 28;
  const x = (step: number) => L + ((W - L - R) * step) / Math.max(1, steps);
  const y = (v: number) => H - B - (H - T - B) * v;
  const maxLoss = Math.max(1e-6, ...losses.map((p) => p.loss));
  const parts: string[] = [
    `<line class="axis" x1="${L}" y1="${H - B}" x2="${W - R}" y2="${H - B}"/>`,
    `<line class="axis" x1="${L}" y1="${T}" x2="${L}" y2="${H - B}"/>`,
    `<text x="${L - 6}" y="${y(1) + 4}" text-anchor="end">100</text><text x="${L - 6}" y="${y(0.5) + 4}" text-anchor="end">50</text><text x="${L - 6}" y="${y(0) + 4}" text-anchor="end">0</text>`,
    `<text x="${W - R}" y="${H - 8}" text-anchor="end">step ${steps}</text><text x="${L}" y="${H - 8}">0</text>`,
    `<text x="${L + 6}" y="${T + 10}">dev ${metric} (%)</text><text x="${W - R}" y="${T + 10}" text-anchor="end" fill="#d08a2c">train loss</text>`,
  ];
  if (losses.length > 1) parts.push(`<polyline class="loss" points="${losses.map((p) => `${x(p.step).toFixed(1)},${y(p.loss / maxLoss).toFixed(1)}`).join(' ')}"/>`);
  if (evals.length) {
    parts.push(`<polyline class="line" points="${evals.map((p) => `${x(p.step).toFixed(1)},${y(p.score).toFixed(1)}`).join(' ')}"/>`);
    for (const p of evals) parts.push(`<circle cx="${x(p.step).toFixed(1)}" cy="${y(p.score).toFixed(1)}" r="3.5" fill="#3572cc"/><text x="${x(p.step).toFixed(1)}" y="${(y(p.score) - 8).toFixed(1)}" text-anchor="middle">${(100 * p.score).toFixed(1)}</text>`);
  }
  svg.innerHTML = parts.join('');
}

async function predict(): Promise<void> {
  if (!tuning) throw new Error('train first');
  const text = input('predict-text').value.trim();
  if (!text) throw new Error('type an input');
  const field = tuning.template.parts.find((p) => p.type === 'field');
  const record = field && field.type === 'field' ? { [field.name]: text } : {};
  const t0 = performance.now();
  const [p] = await tuning.predict([record], 'input', 5);
  const out = $('predict-result');
  out.dataset.prediction = p!.prediction;
  out.replaceChildren(resultGrid(p!.scores, p!.prediction, performance.now() - t0));
}

async function offerDownloads(): Promise<void> {
  if (!tuning) return;
  const files: Record<string, Uint8Array> = { 'prompt_table.safetensors': await promptTableFile(tuning), ...(await peftAdapterFiles(tuning)) };
  const box = $('downloads');
  box.classList.remove('muted');
  box.replaceChildren();
  for (const [name, bytes] of Object.entries(files)) {
    const a = document.createElement('a');
    a.href = URL.createObjectURL(new Blob([bytes as Uint8Array<ArrayBuffer>]));
    a.download = name;
    a.textContent = name;
    box.append(a);
  }
  const note = document.createElement('span');
  note.textContent = '(adapter_*: a PEFT P-tuning adapter; ptune_template.json keeps the template placement)';
  box.append(note);
}

// ---------------------------------------------------------------- start

async function start(): Promise<void> {
  const q = new URLSearchParams(location.search);
  const threads = q.get('threads');
  wr = await initWebRuntime({
    wasmPaths: new URL('ort/', location.href).href,
    ...(threads && { threads: Number(threads) }),
    ...(q.get('device') && { device: q.get('device') as 'auto' | 'wasm' | 'webgpu' }),
    ...(q.get('bake') && { bakeFrozenWeights: q.get('bake') !== '0' }),
    ...(q.get('spin') && { spinning: q.get('spin') === '1' }),
  });
  const rt = $('runtime');
  rt.textContent = `onnxruntime-web · programs on WebAssembly (SIMD, ${wr.threads} thread${wr.threads > 1 ? 's' : ''}${wr.crossOriginIsolated ? ', cross-origin isolated' : ''}) · exported models on ${wr.device === 'webgpu' ? 'WebGPU' : 'WebAssembly'}`;
  rt.dataset.ready = '1';
  rt.dataset.threads = String(wr.threads);
  try {
    const res = await fetch('site.json');
    if (res.ok) site = { ...site, ...((await res.json()) as Partial<Site>) };
  } catch {
    // a page served without site.json: URLs can still be typed in the selects' place
  }
  const models = $<HTMLSelectElement>('model-select');
  for (const m of site.models) option(models, m.url, m.name);
  const exports = $<HTMLSelectElement>('export-select');
  for (const e of site.exports) option(exports, e.url, e.name);
  if (site.exports.length === 0) option(exports, '', '(none served: open files)');
  const rels = $<HTMLSelectElement>('relation');
  for (const r of site.relations) option(rels, r);
  if (site.relations.includes('P1303')) rels.value = 'P1303';

  handle($('export-load'), 'click', 'Cannot load the exported run', async () => {
    if (!exports.value) throw new Error('no exported run is served here: open its files instead');
    await loadExport(fetchSource(new URL(exports.value, location.href).href));
  });
  handle($('export-files'), 'change', 'Cannot load the exported run', () => loadExport(filesSource(input('export-files').files)));
  handle($('classify-run'), 'click', 'Cannot classify', classify);
  handle($('model-load'), 'click', 'Cannot load the model', async () => {
    if (!models.value) throw new Error('no model is served here: open its files instead');
    await loadLm(fetchSource(new URL(models.value, location.href).href));
  });
  handle($('model-files'), 'change', 'Cannot load the model', () => loadLm(filesSource(input('model-files').files)));
  handle($('train-run'), 'click', 'Training failed', train);
  $('train-stop').addEventListener('click', () => (stopAsked = true));
  handle($('predict-run'), 'click', 'Cannot predict', predict);
  for (const radio of document.querySelectorAll<HTMLInputElement>('input[name=task]')) {
    radio.addEventListener('change', () => {
      const list = taskKind() === 'list';
      $('list-inputs').hidden = !list;
      input('template').value = list ? '{text} [P*3] It was [MASK] .' : '3,3,3';
      input('predict-text').placeholder = list ? 'a sentence' : 'a subject, e.g. Jimi Hendrix';
    });
  }
  input('classify-text').addEventListener('keydown', (e) => e.key === 'Enter' && $('classify-run').click());
  input('predict-text').addEventListener('keydown', (e) => e.key === 'Enter' && $('predict-run').click());
}

start().catch((err: unknown) => message(`Cannot start: ${err instanceof Error ? err.message : String(err)}`));
