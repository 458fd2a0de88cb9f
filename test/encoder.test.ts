import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Parameter, programs, type Program } from '../src/engine/index.js';
import { PromptEncoder, type PromptEncoderConfig, type TensorState } from '../src/prompt/encoder.js';
import { AdamW } from '../src/train/optim.js';
import { makeRng } from '../src/util/rng.js';
import { initOracle, tf, tfOps } from './oracle/index.js';
import { collectGarbage } from './fixtures.js';

await initOracle();

type State = Map<string, TensorState>;

// ---- plain-JS float64 reference of the encoder equations (torch semantics) ----

function get(s: State, name: string): TensorState {
  const t = s.get(name);
  assert.ok(t, `reference: missing ${name}`);
  return t;
}

/** y[r] = W x[r] + b with torch-layout W [out, in]. */
function refLinear(x: number[][], w: TensorState, b: TensorState): number[][] {
  const [out, inDim] = w.shape as [number, number];
  return x.map((row) => {
    const y = new Array<number>(out);
    for (let o = 0; o < out; o++) {
      let acc = b.data[o]!;
      for (let i = 0; i < inDim; i++) acc += w.data[o * inDim + i]! * row[i]!;
      y[o] = acc;
    }
    return y;
  });
}

const sigmoid = (z: number): number => 1 / (1 + Math.exp(-z));
const relu = (x: number[][]): number[][] => x.map((r) => r.map((v) => Math.max(0, v)));

function refLstmDirection(x: number[][], s: State, sfx: string, reverse: boolean): number[][] {
  const wih = get(s, `lstm_head.weight_ih_${sfx}`);
  const whh = get(s, `lstm_head.weight_hh_${sfx}`);
  const bih = get(s, `lstm_head.bias_ih_${sfx}`);
  const bhh = get(s, `lstm_head.bias_hh_${sfx}`);
  const hs = whh.shape[1]!;
  const inDim = wih.shape[1]!;
  const n = x.length;
  let h = new Array<number>(hs).fill(0);
  let c = new Array<number>(hs).fill(0);
  const out: number[][] = new Array(n);
  for (let k = 0; k < n; k++) {
    const t = reverse ? n - 1 - k : k;
    const gate = (row: number): number => {
      let acc = bih.data[row]! + bhh.data[row]!;
      for (let i = 0; i < inDim; i++) acc += wih.data[row * inDim + i]! * x[t]![i]!;
      for (let j = 0; j < hs; j++) acc += whh.data[row * hs + j]! * h[j]!;
      return acc;
    };
    const nh = new Array<number>(hs);
    const nc = new Array<number>(hs);
    for (let j = 0; j < hs; j++) {
      const i = sigmoid(gate(j));
      const f = sigmoid(gate(hs + j));
      const g = Math.tanh(gate(2 * hs + j));
      const o = sigmoid(gate(3 * hs + j));
      nc[j] = f * c[j]! + i * g;
      nh[j] = o * Math.tanh(nc[j]!);
    }
    h = nh;
    c = nc;
    out[t] = h;
  }
  return out;
}

/** `masks`: one dropout mask [n·2h] per LSTM layer but the last (as `dropoutMasks` draws them). */
function refForward(cfg: PromptEncoderConfig, s: State, masks?: Float32Array[] | null): number[][] {
  const emb = get(s, 'embedding.weight');
  const [n, d] = emb.shape as [number, number];
  let x: number[][] = [];
  for (let r = 0; r < n; r++) x.push(Array.from(emb.data.subarray(r * d, (r + 1) * d)));
  const lin = (v: number[][], p: string) => refLinear(v, get(s, `${p}.weight`), get(s, `${p}.bias`));
  if (cfg.type === 'embedding') return x;
  if (cfg.type === 'mlp') return lin(relu(lin(relu(lin(x, 'mlp_head.0')), 'mlp_head.2')), 'mlp_head.4');
  const layers = cfg.lstmLayers ?? 2;
  for (let l = 0; l < layers; l++) {
    const f = refLstmDirection(x, s, `l${l}`, false);
    const b = refLstmDirection(x, s, `l${l}_reverse`, true);
    x = f.map((row, t) => [...row, ...b[t]!]);
    const mask = masks?.[l];
    if (mask && l < layers - 1) x = x.map((row, t) => row.map((v, j) => v * mask[t * row.length + j]!));
  }
  return lin(relu(lin(x, 'mlp_head.0')), 'mlp_head.2');
}

function maxAbsDiff(a: Float32Array, b: number[][]): number {
  const flat = b.flat();
  assert.equal(a.length, flat.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - flat[i]!));
  return m;
}

/** The encoder's inference output: its table program. */
async function tableData(enc: PromptEncoder): Promise<Float32Array> {
  const t = await enc.table();
  assert.deepEqual(t.shape, [enc.config.numVirtualTokens, enc.config.tokenDim]);
  return Float32Array.from(t.data);
}

const sizeKey = (enc: PromptEncoder) => {
  const c = enc.config;
  return `${c.type}/${c.numVirtualTokens}/${c.tokenDim}/${c.hiddenSize}/${c.lstmLayers}/${c.preset}`;
};

/** A training forward: the encoder with dropout masks fed (from `dropoutFeeds`, advancing the stream when drawn here). */
async function trainingData(enc: PromptEncoder, feeds = enc.dropoutFeeds()): Promise<Float32Array> {
  const program: Program = {
    key: `test encoder train ${sizeKey(enc)} ${feeds ? 'dropout' : 'plain'}`,
    build: (b) => ({ outputs: { y: enc.inProgram(b, false, feeds !== null) } }),
  };
  const r = await programs.run(program, feeds ?? {}, (name) => enc.lookup(name));
  return Float32Array.from(r.outputs.y!.data as Float32Array);
}

/**
 * loss = Σ enc(θ) ⊙ r as a program: its run writes d loss / dθ into every encoder parameter's `grad`.
 */
function weightedSum(enc: PromptEncoder): Program {
  const { numVirtualTokens: n, tokenDim: d } = enc.config;
  return {
    key: `test encoder weighted-sum ${sizeKey(enc)}`,
    build: (b) => {
      const { o } = b;
      const y = enc.inProgram(b, true, false);
      const loss = o.sum(o.sum(o.mul(y, b.input('r', [n, d])), 1), 0);
      return { outputs: { loss }, loss };
    },
  };
}

const small: PromptEncoderConfig[] = [
  { type: 'lstm', numVirtualTokens: 5, tokenDim: 6, hiddenSize: 8, seed: 3 },
  { type: 'lstm', numVirtualTokens: 4, tokenDim: 6, hiddenSize: 5, lstmLayers: 3, preset: 'peft', seed: 4 },
  { type: 'lstm', numVirtualTokens: 1, tokenDim: 5, hiddenSize: 4, seed: 7 },
  { type: 'mlp', numVirtualTokens: 4, tokenDim: 6, hiddenSize: 7, seed: 5 },
  { type: 'embedding', numVirtualTokens: 4, tokenDim: 6, seed: 6 },
];

// ---- shapes and parameter counts ----

test('THUDM preset for H=768 and 9 pseudo tokens has 8,278,272 parameters in torch layout', () => {
  const enc = new PromptEncoder({ type: 'lstm', numVirtualTokens: 9, tokenDim: 768, seed: 1 });
  assert.equal(enc.parameterCount(), 8_278_272);
  const shapes = Object.fromEntries([...enc.params].map(([k, v]) => [k, v.shape.join('x')]));
  assert.deepEqual(Object.keys(shapes).slice(0, 5), [
    'embedding.weight',
    'lstm_head.weight_ih_l0',
    'lstm_head.weight_hh_l0',
    'lstm_head.bias_ih_l0',
    'lstm_head.bias_hh_l0',
  ]);
  assert.equal(shapes['embedding.weight'], '9x768');
  assert.equal(shapes['lstm_head.weight_ih_l0'], '1536x768');
  assert.equal(shapes['lstm_head.weight_hh_l0_reverse'], '1536x384');
  assert.equal(shapes['lstm_head.weight_ih_l1'], '1536x768');
  assert.equal(shapes['lstm_head.bias_hh_l1_reverse'], '1536');
  assert.equal(shapes['mlp_head.0.weight'], '768x768');
  assert.equal(shapes['mlp_head.2.weight'], '768x768');
  assert.equal(Object.keys(shapes).length, 1 + 16 + 4);
  for (const [name, p] of enc.params) {
    assert.ok(p instanceof Parameter && p.trainable, `${name}: a trainable parameter`);
    assert.equal(p.name, name);
  }
});

test('PEFT presets: lstm hidden per direction with a 2h MLP, and the 3-layer MLP encoder', async () => {
  const d = 64, h = 32, n = 10;
  const lstm = new PromptEncoder({ type: 'lstm', numVirtualTokens: n, tokenDim: d, hiddenSize: h, preset: 'peft', seed: 1 });
  const layer = (inDim: number) => 2 * (4 * h * inDim + 4 * h * h + 8 * h);
  assert.equal(lstm.parameterCount(), n * d + layer(d) + layer(2 * h) + (2 * h * 2 * h + 2 * h) + (2 * h * d + d));
  assert.deepEqual(lstm.params.get('mlp_head.2.weight')!.shape, [d, 2 * h]);
  const mlp = new PromptEncoder({ type: 'mlp', numVirtualTokens: n, tokenDim: d, hiddenSize: h, seed: 1 });
  assert.equal(mlp.parameterCount(), n * d + (d * h + h) + (h * h + h) + (h * d + d));
  const emb = new PromptEncoder({ type: 'embedding', numVirtualTokens: n, tokenDim: d, seed: 1 });
  assert.equal(emb.parameterCount(), n * d);
  for (const e of [lstm, mlp, emb]) {
    const y = await e.table();
    assert.deepEqual(y.shape, [n, d]);
  }
});

// ---- initialisation ----

test('same seed gives bit-identical weights; init follows PyTorch defaults', () => {
  const cfg: PromptEncoderConfig = { type: 'lstm', numVirtualTokens: 50, tokenDim: 64, seed: 42 };
  const a = new PromptEncoder(cfg);
  const b = new PromptEncoder(cfg);
  const c = new PromptEncoder({ ...cfg, seed: 43 });
  const sa = a.state(), sb = b.state(), sc = c.state();
  for (const [name, t] of sa) {
    assert.deepEqual(Buffer.from(t.data.buffer), Buffer.from(sb.get(name)!.data.buffer), name);
    assert.notDeepEqual(t.data, sc.get(name)!.data, name);
  }
  // Embedding ~ N(0, 1)
  const e = sa.get('embedding.weight')!.data;
  const mean = e.reduce((s, v) => s + v, 0) / e.length;
  const std = Math.sqrt(e.reduce((s, v) => s + (v - mean) ** 2, 0) / e.length);
  assert.ok(Math.abs(mean) < 0.06 && Math.abs(std - 1) < 0.05, `embedding mean ${mean} std ${std}`);
  // LSTM ~ U(-1/√h, 1/√h), h = 32 per direction; Linear ~ U(±1/√fan_in)
  const checkUniform = (name: string, bound: number) => {
    const w = sa.get(name)!.data;
    let lo = Infinity, hi = -Infinity, sq = 0;
    for (const v of w) { lo = Math.min(lo, v); hi = Math.max(hi, v); sq += v * v; }
    assert.ok(lo >= -bound && hi <= bound, `${name} outside ±${bound}`);
    assert.ok(lo < -0.95 * bound && hi > 0.95 * bound, `${name} does not fill ±${bound}`);
    const variance = sq / w.length;
    assert.ok(Math.abs(variance / (bound * bound / 3) - 1) < 0.1, `${name} variance ${variance}`);
  };
  checkUniform('lstm_head.weight_ih_l0', 1 / Math.sqrt(32));
  checkUniform('lstm_head.weight_hh_l1_reverse', 1 / Math.sqrt(32));
  checkUniform('lstm_head.bias_ih_l1', 1 / Math.sqrt(32));
  checkUniform('mlp_head.0.weight', 1 / Math.sqrt(64));
  checkUniform('mlp_head.2.weight', 1 / Math.sqrt(64));
});

// ---- forward against the reference ----

test('the table program matches a float64 reference of the LSTM / MLP equations to 1e-5, and so does the oracle', async () => {
  for (const cfg of small) {
    const enc = new PromptEncoder(cfg);
    const ref = refForward(cfg, enc.state());
    const diff = maxAbsDiff(await tableData(enc), ref);
    assert.ok(diff < 1e-5, `${cfg.type}/${cfg.preset ?? ''}: max |diff| ${diff}`);
    // the same function evaluated eagerly by the tfjs oracle
    const oracle = tf.tidy(() => {
      const y = enc.encode(tfOps, (name) => tf.tensor(enc.params.get(name)!.data, enc.params.get(name)!.shape));
      return Float32Array.from(y.dataSync() as Float32Array);
    });
    assert.ok(maxAbsDiff(oracle, ref) < 1e-5, `${cfg.type}: oracle`);
  }
});

test('LSTM forward matches the reference with larger, saturating weights', async () => {
  const cfg: PromptEncoderConfig = { type: 'lstm', numVirtualTokens: 7, tokenDim: 16, hiddenSize: 12, seed: 9 };
  const enc = new PromptEncoder(cfg);
  const s = enc.state();
  for (const t of s.values()) for (let i = 0; i < t.data.length; i++) t.data[i] = t.data[i]! * 3;
  enc.loadState(s);
  const ref = refForward(cfg, s);
  const scale = Math.max(...ref.flat().map(Math.abs));
  const diff = maxAbsDiff(await tableData(enc), ref);
  assert.ok(diff < 1e-5 * Math.max(1, scale), `max |diff| ${diff} (output scale ${scale})`);
});

// ---- gradients against central finite differences ----

test('program gradients (written into param.grad) match central finite differences for every encoder type', async () => {
  const eps = 1e-2;
  for (const cfg of small) {
    const enc = new PromptEncoder(cfg);
    const n = cfg.numVirtualTokens, d = cfg.tokenDim;
    const rng = makeRng(100 + cfg.seed);
    const r = { data: Float32Array.from({ length: n * d }, () => 2 * rng() - 1), shape: [n, d] };
    const program = weightedSum(enc);
    const lookup = (name: string) => enc.lookup(name);
    const run = await programs.run(program, { r }, lookup);
    assert.equal(run.graded.length, enc.params.size, 'every encoder parameter gets a gradient');
    const grads = new Map([...enc.params].map(([name, p]) => [name, Float32Array.from(p.grad)]));
    const loss = async () => (await programs.run(program, { r }, lookup)).outputs.loss!.data[0] as number;
    let checked = 0, nearKink = 0;
    for (const [name, p] of enc.params) {
      const g = grads.get(name)!;
      const base = Float32Array.from(p.data);
      const lossWith = async (i: number, delta: number): Promise<number> => {
        p.data[i] = base[i]! + delta;
        const v = await loss();
        p.data[i] = base[i]!;
        return v;
      };
      const centralDiff = async (i: number, h: number) => ((await lossWith(i, h)) - (await lossWith(i, -h))) / (2 * h);
      // floor: float32 rounding of the loss (~1e-6) over 2·eps is ~1e-4, so smaller gradients are not resolvable
      const relErr = (a: number, b: number) => Math.abs(a - b) / Math.max(Math.abs(a), Math.abs(b), 1e-2);
      for (let found = 0, tries = 0; found < 3 && tries < 12; tries++) {
        const i = Math.floor(rng() * base.length);
        const fd = await centralDiff(i, eps);
        // A ReLU switching inside [x−eps, x+eps] breaks the finite difference, not the gradient: such
        // coordinates show up as disagreement between step sizes eps and eps/2 and are not counted.
        if (relErr(fd, await centralDiff(i, eps / 2)) > 2e-3) {
          nearKink++;
          continue;
        }
        const rel = relErr(fd, g[i]!);
        assert.ok(rel < 1e-2, `${cfg.type} ${name}[${i}]: grad ${g[i]} vs finite difference ${fd} (rel ${rel})`);
        found++;
        checked++;
      }
      assert.deepEqual(p.data, base, `${name}: restored`);
    }
    assert.equal(checked, 3 * enc.params.size, `${cfg.type}: too many coordinates near a ReLU kink`);
    assert.ok(nearKink <= enc.params.size, `${cfg.type}: ${nearKink} coordinates near a kink`);
  }
});

// ---- dropout ----

test('dropout acts only in training mode, between LSTM layers, scaled by 1/(1-p)', async () => {
  const base: PromptEncoderConfig = { type: 'lstm', numVirtualTokens: 6, tokenDim: 8, seed: 11 };
  const plain = new PromptEncoder(base);
  assert.equal(plain.hasDropout, false);
  assert.equal(plain.dropoutMasks(true), null, 'no dropout configured: no masks');
  assert.deepEqual(await trainingData(plain), await tableData(plain));
  const withDrop = new PromptEncoder({ ...base, dropout: 0.5 });
  assert.equal(withDrop.hasDropout, true);
  assert.equal(withDrop.dropoutMasks(false), null, 'no masks outside training');
  const evalOut = await tableData(withDrop);
  assert.deepEqual(evalOut, await tableData(plain), 'eval output must ignore dropout');
  const stream = withDrop.dropoutState;
  const m1 = withDrop.dropoutMasks(true)!;
  // one mask per LSTM layer but the last, [tokens, 2h], entries 0 or 1/(1-p)
  assert.equal(m1.length, 1);
  assert.deepEqual(withDrop.dropoutShape(), [6, 8]);
  assert.equal(m1[0]!.length, 6 * 8);
  assert.ok(m1[0]!.every((v) => v === 0 || v === 2), 'mask entries are 0 or 1/(1-p)');
  const dropped = m1[0]!.filter((v) => v === 0).length;
  assert.ok(dropped > 8 && dropped < 40, `${dropped} of 48 dropped at p = 0.5`);
  withDrop.dropoutState = stream;
  const t1 = await trainingData(withDrop);
  const t2 = await trainingData(withDrop);
  assert.notDeepEqual(t1, evalOut);
  assert.notDeepEqual(t1, t2, 'fresh masks each training forward');
  // the training output is the reference with the drawn masks applied after layer 0
  assert.ok(maxAbsDiff(t1, refForward({ ...base, dropout: 0.5 }, withDrop.state(), m1)) < 1e-5, 'masked forward vs reference');
  // seeded: a fresh encoder with the same config draws the same masks
  const again = new PromptEncoder({ ...base, dropout: 0.5 });
  assert.deepEqual(await trainingData(again), t1);
  // single-layer LSTM: nn.LSTM applies no dropout after the last layer
  const one = new PromptEncoder({ ...base, lstmLayers: 1, dropout: 0.5 });
  assert.equal(one.hasDropout, false);
  assert.equal(one.dropoutMasks(true), null);
  assert.deepEqual(await trainingData(one), await tableData(one));
  assert.throws(() => new PromptEncoder({ type: 'mlp', numVirtualTokens: 2, tokenDim: 4, dropout: 0.1, seed: 1 }), /LSTM layers only/);
});

test('the dropout stream state saved and restored continues the identical mask sequence', () => {
  const cfg: PromptEncoderConfig = { type: 'lstm', numVirtualTokens: 5, tokenDim: 8, lstmLayers: 3, dropout: 0.3, seed: 21 };
  const a = new PromptEncoder(cfg);
  for (let i = 0; i < 3; i++) a.dropoutMasks(true);
  const saved = a.dropoutState;
  assert.ok(Array.isArray(saved) && saved.length === 4);
  // JSON round trip, as a checkpoint's state.json stores it
  const stored = JSON.parse(JSON.stringify(saved)) as number[];
  const next = Array.from({ length: 4 }, () => a.dropoutMasks(true)!);
  assert.equal(next[0]!.length, 2, 'a 3-layer LSTM has 2 dropout masks per step');
  assert.notDeepEqual(next[0], next[1]);
  // an encoder with another seed, brought to the saved position, draws exactly the same masks
  const b = new PromptEncoder({ ...cfg, seed: 99 });
  b.dropoutState = stored;
  const resumed = Array.from({ length: 4 }, () => b.dropoutMasks(true)!);
  assert.deepEqual(resumed, next);
  // restoring rewinds: the same encoder repeats its sequence
  a.dropoutState = stored;
  assert.deepEqual(a.dropoutMasks(true), next[0]);
  // the feeds a training step uses come from the same stream
  a.dropoutState = stored;
  const feeds = a.dropoutFeeds()!;
  assert.deepEqual(Object.keys(feeds), ['dropout:0', 'dropout:1']);
  assert.deepEqual(feeds['dropout:1']!.data, next[0]![1]);
  assert.deepEqual(feeds['dropout:0']!.shape, a.dropoutShape());
  assert.throws(() => (a.dropoutState = [1, 2]), /rng state/);
});

// ---- checkpoints ----

test('state/loadState round-trips exactly and rejects bad tensors by name', async () => {
  const cfg = small[0]!;
  const a = new PromptEncoder(cfg);
  const b = new PromptEncoder({ ...cfg, seed: 99 });
  assert.notDeepEqual(await tableData(b), await tableData(a));
  b.loadState(a.state());
  assert.deepEqual(await tableData(b), await tableData(a));
  // state() is a copy: changing it does not change the encoder
  const copy = a.state();
  copy.get('embedding.weight')!.data.fill(0);
  assert.notDeepEqual(a.params.get('embedding.weight')!.data, copy.get('embedding.weight')!.data);
  const s = a.state();
  s.get('lstm_head.weight_hh_l1_reverse')!.shape = [16, 3];
  assert.throws(() => b.loadState(s), /'lstm_head\.weight_hh_l1_reverse' has shape \[16,3\], expected \[16,4\]/);
  const missing = a.state();
  missing.delete('mlp_head.2.bias');
  assert.throws(() => b.loadState(missing), /missing tensor 'mlp_head\.2\.bias'/);
  const extra = a.state();
  extra.set('lstm_head.weight_ih_l2', { shape: [1], data: new Float32Array(1) });
  assert.throws(() => b.loadState(extra), /unexpected tensor 'lstm_head\.weight_ih_l2'/);
  const short = a.state();
  short.get('embedding.weight')!.data = new Float32Array(3);
  assert.throws(() => b.loadState(short), /'embedding\.weight' has 3 values, expected 30/);
  // a failed load changes nothing
  assert.deepEqual(await tableData(b), await tableData(a));
});

test('bad configs fail with a message naming the field', () => {
  const ok: PromptEncoderConfig = { type: 'lstm', numVirtualTokens: 3, tokenDim: 4, seed: 1 };
  assert.throws(() => new PromptEncoder({ ...ok, type: 'gru' as 'lstm' }), /type must be/);
  assert.throws(() => new PromptEncoder({ ...ok, numVirtualTokens: 0 }), /numVirtualTokens must be a positive integer/);
  assert.throws(() => new PromptEncoder({ ...ok, hiddenSize: 5 }), /hiddenSize 5 must be even/);
  assert.throws(() => new PromptEncoder({ ...ok, dropout: 1 }), /dropout must be in \[0, 1\)/);
  assert.throws(() => new PromptEncoder({ ...ok, preset: 'x' as 'peft' }), /preset must be/);
  assert.throws(() => new PromptEncoder({ ...ok, seed: NaN }), /seed must be a finite number/);
});

// ---- memory ----

test('repeated program forward + grad + optimizer steps keep memory and the session count bounded', async (t) => {
  const steps = async (enc: PromptEncoder, opt: AdamW, count: number) => {
    const program: Program = {
      key: `test encoder sum-of-squares ${sizeKey(enc)}${enc.hasDropout ? ' dropout' : ''}`,
      build: (b) => {
        const { o } = b;
        const y = enc.inProgram(b, true, enc.hasDropout);
        const loss = o.sum(o.sum(o.mul(y, y), 1), 0);
        return { outputs: { loss }, loss };
      },
    };
    for (let i = 0; i < count; i++) {
      const r = await programs.run(program, enc.dropoutFeeds() ?? {}, (name) => enc.lookup(name));
      assert.ok(Number.isFinite(r.outputs.loss!.data[0] as number));
      opt.step(new Map([...enc.params].map(([k, p]) => [k, p.grad])));
    }
  };
  const STEPS = 100;
  // the small encoders, and one whose parameters (≈ 2 MiB) would make any per-step copy left behind visible
  const configs = [...small, { type: 'lstm', numVirtualTokens: 9, tokenDim: 128, seed: 8 } as PromptEncoderConfig];
  const encoders = configs.map((cfg) => new PromptEncoder({ ...cfg, dropout: cfg.type === 'lstm' ? 0.1 : 0 }));
  const opts = encoders.map((enc) => new AdamW([{ params: enc.params, lr: 1e-2, weightDecay: 0.01 }]));
  // warm up: compile each program, allocate the optimizer moments
  for (let e = 0; e < encoders.length; e++) await steps(encoders[e]!, opts[e]!, 3);
  const sessions = programs.size;
  const firstGrads = encoders.flatMap((enc) => [...enc.params.values()].map((p) => p.grad));
  collectGarbage();
  const rss0 = process.memoryUsage().rss;
  for (let e = 0; e < encoders.length; e++) await steps(encoders[e]!, opts[e]!, STEPS);
  collectGarbage();
  const grown = (process.memoryUsage().rss - rss0) / 2 ** 20;
  assert.equal(programs.size, sessions, 'no new sessions for repeated steps');
  assert.ok(firstGrads.every((g) => g.length === 0), "a step's gradient arrays are freed when the next step runs");
  t.diagnostic(`RSS change over ${STEPS * encoders.length} steps: ${grown.toFixed(1)} MiB`);
  assert.ok(grown < 40, `RSS grew by ${grown.toFixed(1)} MiB over ${STEPS * encoders.length} steps`);
  for (const o of opts) o.dispose();
});
