import { test } from 'node:test';
import assert from 'node:assert/strict';
import { initEngine, tf } from '../src/engine/index.js';
import { PromptEncoder, type PromptEncoderConfig, type TensorState } from '../src/prompt/encoder.js';
import { AdamW } from '../src/train/optim.js';
import { makeRng } from '../src/util/rng.js';

await initEngine();

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

function refForward(cfg: PromptEncoderConfig, s: State): number[][] {
  const emb = get(s, 'embedding.weight');
  const [n, d] = emb.shape as [number, number];
  let x: number[][] = [];
  for (let r = 0; r < n; r++) x.push(Array.from(emb.data.subarray(r * d, (r + 1) * d)));
  const lin = (v: number[][], p: string) => refLinear(v, get(s, `${p}.weight`), get(s, `${p}.bias`));
  if (cfg.type === 'embedding') return x;
  if (cfg.type === 'mlp') return lin(relu(lin(relu(lin(x, 'mlp_head.0')), 'mlp_head.2')), 'mlp_head.4');
  for (let l = 0; l < (cfg.lstmLayers ?? 2); l++) {
    const f = refLstmDirection(x, s, `l${l}`, false);
    const b = refLstmDirection(x, s, `l${l}_reverse`, true);
    x = f.map((row, t) => [...row, ...b[t]!]);
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

function forwardData(enc: PromptEncoder, training = false): Float32Array {
  const y = enc.forward(training);
  const d = y.dataSync() as Float32Array;
  y.dispose();
  return Float32Array.from(d);
}

const small: PromptEncoderConfig[] = [
  { type: 'lstm', numVirtualTokens: 5, tokenDim: 6, hiddenSize: 8, seed: 3 },
  { type: 'lstm', numVirtualTokens: 4, tokenDim: 6, hiddenSize: 5, lstmLayers: 3, preset: 'peft', seed: 4 },
  { type: 'mlp', numVirtualTokens: 4, tokenDim: 6, hiddenSize: 7, seed: 5 },
  { type: 'embedding', numVirtualTokens: 4, tokenDim: 6, seed: 6 },
];

// ---- shapes and parameter counts ----

test('THUDM preset for H=768 and 9 pseudo tokens has 8,278,272 parameters in torch layout', () => {
  const enc = new PromptEncoder({ type: 'lstm', numVirtualTokens: 9, tokenDim: 768, seed: 1 });
  try {
    assert.equal(enc.parameterCount(), 8_278_272);
    const shapes = Object.fromEntries([...enc.variables()].map(([k, v]) => [k, v.shape.join('x')]));
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
  } finally {
    enc.dispose();
  }
});

test('PEFT presets: lstm hidden per direction with a 2h MLP, and the 3-layer MLP encoder', () => {
  const d = 64, h = 32, n = 10;
  const lstm = new PromptEncoder({ type: 'lstm', numVirtualTokens: n, tokenDim: d, hiddenSize: h, preset: 'peft', seed: 1 });
  const layer = (inDim: number) => 2 * (4 * h * inDim + 4 * h * h + 8 * h);
  assert.equal(lstm.parameterCount(), n * d + layer(d) + layer(2 * h) + (2 * h * 2 * h + 2 * h) + (2 * h * d + d));
  assert.deepEqual(lstm.variables().get('mlp_head.2.weight')!.shape, [d, 2 * h]);
  const mlp = new PromptEncoder({ type: 'mlp', numVirtualTokens: n, tokenDim: d, hiddenSize: h, seed: 1 });
  assert.equal(mlp.parameterCount(), n * d + (d * h + h) + (h * h + h) + (h * d + d));
  const emb = new PromptEncoder({ type: 'embedding', numVirtualTokens: n, tokenDim: d, seed: 1 });
  assert.equal(emb.parameterCount(), n * d);
  for (const e of [lstm, mlp, emb]) {
    const y = e.forward();
    assert.deepEqual(y.shape, [n, d]);
    y.dispose();
    e.dispose();
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
  for (const x of [a, b, c]) x.dispose();
});

// ---- forward against the reference ----

test('forward matches a float64 reference of the LSTM / MLP equations to 1e-5', () => {
  for (const cfg of small) {
    const enc = new PromptEncoder(cfg);
    const diff = maxAbsDiff(forwardData(enc), refForward(cfg, enc.state()));
    assert.ok(diff < 1e-5, `${cfg.type}/${cfg.preset ?? ''}: max |diff| ${diff}`);
    enc.dispose();
  }
});

test('LSTM forward matches the reference with larger, saturating weights', () => {
  const cfg: PromptEncoderConfig = { type: 'lstm', numVirtualTokens: 7, tokenDim: 16, hiddenSize: 12, seed: 9 };
  const enc = new PromptEncoder(cfg);
  const s = enc.state();
  for (const t of s.values()) for (let i = 0; i < t.data.length; i++) t.data[i] = t.data[i]! * 3;
  enc.loadState(s);
  const ref = refForward(cfg, s);
  const scale = Math.max(...ref.flat().map(Math.abs));
  const diff = maxAbsDiff(forwardData(enc), ref);
  assert.ok(diff < 1e-5 * Math.max(1, scale), `max |diff| ${diff} (output scale ${scale})`);
  enc.dispose();
});

// ---- gradients against central finite differences ----

test('gradients match central finite differences for every encoder type', () => {
  const eps = 1e-2;
  for (const cfg of small) {
    const enc = new PromptEncoder(cfg);
    const vars = enc.variables();
    const n = cfg.numVirtualTokens, d = cfg.tokenDim;
    const rng = makeRng(100 + cfg.seed);
    const rData = Float32Array.from({ length: n * d }, () => 2 * rng() - 1);
    const r = tf.tensor2d(rData, [n, d]);
    const loss = () => tf.sum(tf.mul(enc.forward(), r)) as tf.Scalar;
    const { value, grads } = tf.variableGrads(loss, [...vars.values()]);
    value.dispose();
    let checked = 0, nearKink = 0;
    for (const [name, v] of vars) {
      const g = grads[v.name]!.dataSync() as Float32Array;
      const base = Float32Array.from(v.dataSync() as Float32Array);
      const lossWith = (i: number, delta: number): number => {
        const p = Float32Array.from(base);
        p[i] = base[i]! + delta;
        tf.tidy(() => v.assign(tf.tensor(p, v.shape, 'float32')));
        return tf.tidy(() => loss().dataSync()[0]!);
      };
      const centralDiff = (i: number, h: number) => (lossWith(i, h) - lossWith(i, -h)) / (2 * h);
      // floor: float32 rounding of the loss (~1e-6) over 2·eps is ~1e-4, so smaller gradients are not resolvable
      const relErr = (a: number, b: number) => Math.abs(a - b) / Math.max(Math.abs(a), Math.abs(b), 1e-2);
      for (let found = 0, tries = 0; found < 3 && tries < 12; tries++) {
        const i = Math.floor(rng() * base.length);
        const fd = centralDiff(i, eps);
        // A ReLU switching inside [x−eps, x+eps] breaks the finite difference, not the gradient: such
        // coordinates show up as disagreement between step sizes eps and eps/2 and are not counted.
        if (relErr(fd, centralDiff(i, eps / 2)) > 2e-3) {
          nearKink++;
          continue;
        }
        const rel = relErr(fd, g[i]!);
        assert.ok(rel < 1e-2, `${cfg.type} ${name}[${i}]: grad ${g[i]} vs finite difference ${fd} (rel ${rel})`);
        found++;
        checked++;
      }
      tf.tidy(() => v.assign(tf.tensor(base, v.shape, 'float32')));
    }
    assert.equal(checked, 3 * vars.size, `${cfg.type}: too many coordinates near a ReLU kink`);
    assert.ok(nearKink <= vars.size, `${cfg.type}: ${nearKink} coordinates near a kink`);
    for (const t of Object.values(grads)) t.dispose();
    r.dispose();
    enc.dispose();
  }
});

// ---- dropout ----

test('dropout acts only in training mode, between LSTM layers, scaled by 1/(1-p)', () => {
  const base: PromptEncoderConfig = { type: 'lstm', numVirtualTokens: 6, tokenDim: 8, seed: 11 };
  const plain = new PromptEncoder(base);
  assert.deepEqual(forwardData(plain, true), forwardData(plain, false));
  const withDrop = new PromptEncoder({ ...base, dropout: 0.5 });
  const evalOut = forwardData(withDrop, false);
  assert.deepEqual(evalOut, forwardData(plain, false), 'eval output must ignore dropout');
  const t1 = forwardData(withDrop, true);
  const t2 = forwardData(withDrop, true);
  assert.notDeepEqual(t1, evalOut);
  assert.notDeepEqual(t1, t2, 'fresh masks each training forward');
  // seeded: a fresh encoder with the same config draws the same masks
  const again = new PromptEncoder({ ...base, dropout: 0.5 });
  assert.deepEqual(forwardData(again, true), t1);
  // single-layer LSTM: nn.LSTM applies no dropout after the last layer
  const one = new PromptEncoder({ ...base, lstmLayers: 1, dropout: 0.5 });
  assert.deepEqual(forwardData(one, true), forwardData(one, false));
  for (const e of [plain, withDrop, again, one]) e.dispose();
  assert.throws(() => new PromptEncoder({ type: 'mlp', numVirtualTokens: 2, tokenDim: 4, dropout: 0.1, seed: 1 }), /LSTM layers only/);
});

// ---- checkpoints ----

test('state/loadState round-trips exactly and rejects bad tensors by name', () => {
  const cfg = small[0]!;
  const a = new PromptEncoder(cfg);
  const b = new PromptEncoder({ ...cfg, seed: 99 });
  b.loadState(a.state());
  assert.deepEqual(forwardData(b), forwardData(a));
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
  assert.deepEqual(forwardData(b), forwardData(a));
  a.dispose();
  b.dispose();
});

test('bad configs fail with a message naming the field', () => {
  const ok: PromptEncoderConfig = { type: 'lstm', numVirtualTokens: 3, tokenDim: 4, seed: 1 };
  assert.throws(() => new PromptEncoder({ ...ok, type: 'gru' as 'lstm' }), /type must be/);
  assert.throws(() => new PromptEncoder({ ...ok, numVirtualTokens: 0 }), /numVirtualTokens must be a positive integer/);
  assert.throws(() => new PromptEncoder({ ...ok, hiddenSize: 5 }), /hiddenSize 5 must be even/);
  assert.throws(() => new PromptEncoder({ ...ok, dropout: 1 }), /dropout must be in \[0, 1\)/);
  assert.throws(() => new PromptEncoder({ ...ok, preset: 'x' as 'peft' }), /preset must be/);
});

// ---- memory ----

test('tensor count stays flat over repeated forward + grad + optimizer step', () => {
  for (const cfg of small) {
    const enc = new PromptEncoder({ ...cfg, dropout: cfg.type === 'lstm' ? 0.1 : 0 });
    const vars = enc.variables();
    const opt = new AdamW([{ params: vars, lr: 1e-2, weightDecay: 0.01 }]);
    const step = () => {
      const { value, grads } = tf.variableGrads(() => tf.sum(tf.square(enc.forward(true))) as tf.Scalar, [...vars.values()]);
      const byName = new Map([...vars].map(([name, v]) => [name, grads[v.name]!]));
      opt.step(byName);
      value.dispose();
      for (const g of Object.values(grads)) g.dispose();
    };
    step(); // creates the optimizer's moment variables
    const before = tf.memory().numTensors;
    for (let i = 0; i < 5; i++) step();
    assert.equal(tf.memory().numTensors, before, cfg.type);
    opt.dispose();
    enc.dispose();
  }
});
