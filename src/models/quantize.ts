/**
 * Frozen LM weights quantized at load (`LoadOptions.quantize`, `--quantize int8|int4`).
 *
 * Which weights: those the model's computation reads only as the weight of a linear layer — torch nn.Linear
 * (`dense`), GPT-2's Conv1D (`linear`), or an untied output projection — found by tracing the family's
 * functions once on symbolic tensors. Embeddings (gathered), norms and biases stay float32, and so does
 * everything that trains (the prompt encoder, heads).
 *
 * How: block-wise (src/engine/quant.ts), and with `backward: 'transposed'` (default) also Ŵᵀ quantized on its
 * own, so the gradient to a layer's input (dX = dY·Ŵ) runs as a quantized matmul too; `'dequantize'` keeps one
 * copy and multiplies dY by Ŵ dequantized in float32 instead. Per channel (int8), the store holds the integers
 * twice, [n, k] and [k, n]: both directions run the integer GEMM on the same Ŵ.
 *
 * Where: a store per (source weights' checksum, settings, weight list) under the cache directory
 * (`cacheDir`, else `$PTUNE_CACHE_DIR/quantized`, else `~/.cache/ptune/quantized`): `weights.bin` (each tensor
 * page-aligned) and `manifest.json`, written to a temporary folder and renamed into place. ONNX Runtime reads
 * the tensors from `weights.bin` itself (external data; it prepacks them for its kernels), so the host keeps
 * neither the float copy nor the quantized one. A second load with the same source and settings finds the store
 * and reads no linear weight at all. The checksum is the sha256 of the checkpoint's files, computed once per
 * file version (a file's size, mtime and inode are remembered with its checksum in `checksums.json`).
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { FileSlice, QuantizedSource, StoredQuantized } from '../engine/program.js';
import { ProgramBuilder } from '../engine/program.js';
import type { WeightLayout } from '../engine/ops.js';
import {
  dequantizeTransposed,
  quantizeMatrix,
  transposeBytes,
  transposeMatrix,
  type QuantizedMatrix,
} from '../engine/quant.js';
import { rowsAt, type WeightSpec } from './common.js';
import type { LmFunctions, ModelInfo } from './lm.js';
import type { QuantizeSettings } from './quantize-settings.js';

export { parseQuantize, quantizeName, type QuantizeOptions, type QuantizeSettings } from './quantize-settings.js';

export function defaultQuantCache(): string {
  const base = process.env.PTUNE_CACHE_DIR ?? path.join(process.env.XDG_CACHE_HOME ?? path.join(os.homedir(), '.cache'), 'ptune');
  return path.join(base, 'quantized');
}

// ---------------------------------------------------------------------------------------------------------
// which weights

const PARAM = 'param:lm.';

/**
 * The weights a model's functions read only as linear-layer weights, with the layout they are stored in:
 * 'out-in' (nn.Linear, and [V, H] output projections read as `matmul(table, rows, true)`) or 'in-out'
 * (Conv1D). Traced on a one-row batch, with and without the P-tuning programs' `at` rows.
 */
export function linearWeights(fns: LmFunctions, info: Pick<ModelInfo, 'tokenTypes'>, specs: readonly WeightSpec[]): Map<string, WeightLayout> {
  const shapes = new Map(specs.map((s) => [s.name, s.shape]));
  const b = new ProgramBuilder();
  const o = b.o;
  const w = (name: string) => {
    const shape = shapes.get(name);
    if (!shape) throw new Error(`quantize: the model reads a weight "${name}" it does not declare`);
    return b.param(`lm.${name}`, shape);
  };
  const s = 8;
  for (const at of [false, true]) {
    const ids = b.input(`ids${at}`, [1, s], 'int32');
    const mask = b.input(`mask${at}`, [1, s], 'int32');
    const positions = b.input(`at${at}`, [1], 'int32');
    const out = fns.hidden(o, w, {
      embeds: fns.embed(o, w, ids),
      attentionMask: mask,
      ...(info.tokenTypes && { tokenTypeIds: b.input(`types${at}`, [1, s], 'int32') }),
      ...(at && { at: positions }),
    });
    fns.logits(o, w, out.rows ?? rowsAt(o, out.hidden, positions));
  }
  const layouts = new Map<string, WeightLayout | null>();
  for (const n of b.g.nodes) {
    n.inputSyms.forEach((sym, i) => {
      if (!sym.name.startsWith(PARAM)) return;
      const name = sym.name.slice(PARAM.length);
      let use: WeightLayout | null = null;
      if (sym.rank === 2) {
        if (n.op === 'Gemm' && i === 1 && !n.attrs?.transA) use = n.attrs?.transB ? 'out-in' : 'in-out';
        else if (n.op === 'Gemm' && i === 0 && n.attrs?.transB && !n.attrs?.transA) use = 'out-in';
      }
      const seen = layouts.get(name);
      layouts.set(name, seen === undefined || seen === use ? use : null);
    });
  }
  const out = new Map<string, WeightLayout>();
  for (const [name, layout] of layouts) if (layout) out.set(name, layout);
  return out;
}

// ---------------------------------------------------------------------------------------------------------
// checksums

interface ChecksumMemo {
  [file: string]: { size: number; mtimeMs: number; ino: number; sha256: string };
}

/** sha256 of each file, remembered per (size, mtime, inode) in `<root>/checksums.json`. */
export function fileChecksums(files: readonly string[], root: string): string[] {
  const memoFile = path.join(root, 'checksums.json');
  let memo: ChecksumMemo = {};
  try {
    memo = JSON.parse(fs.readFileSync(memoFile, 'utf8')) as ChecksumMemo;
  } catch {
    memo = {};
  }
  let changed = false;
  const sums = files.map((f) => {
    const real = fs.realpathSync(f);
    const st = fs.statSync(real);
    const hit = memo[real];
    if (hit && hit.size === st.size && hit.mtimeMs === st.mtimeMs && hit.ino === st.ino) return hit.sha256;
    const sha256 = sha256File(real);
    memo[real] = { size: st.size, mtimeMs: st.mtimeMs, ino: st.ino, sha256 };
    changed = true;
    return sha256;
  });
  if (changed) {
    try {
      fs.mkdirSync(root, { recursive: true });
      const tmp = `${memoFile}.${process.pid}.tmp`;
      fs.writeFileSync(tmp, JSON.stringify(memo, null, 1));
      fs.renameSync(tmp, memoFile);
    } catch {
      // a cache that cannot be written only costs the next load a rehash
    }
  }
  return sums;
}

function sha256File(file: string): string {
  const hash = crypto.createHash('sha256');
  const fd = fs.openSync(file, 'r');
  const buf = Buffer.alloc(1 << 24);
  try {
    let pos = 0;
    for (;;) {
      const n = fs.readSync(fd, buf, 0, buf.length, pos);
      if (n === 0) break;
      hash.update(n === buf.length ? buf : buf.subarray(0, n));
      pos += n;
    }
  } finally {
    fs.closeSync(fd);
  }
  return hash.digest('hex');
}

// ---------------------------------------------------------------------------------------------------------
// stores

const FORMAT = 2;
const ALIGN = 4096;

export interface QuantizedEntry {
  layout: WeightLayout;
  /** the weight's shape as the checkpoint stores it */
  shape: number[];
  stored: StoredQuantized;
}

interface Manifest {
  format: number;
  key: string;
  source: { checksum: string; description: string };
  settings: Omit<QuantizeSettings, 'cacheDir'>;
  fileBytes: number;
  tensors: Record<string, QuantizedEntry>;
}

/** A model's quantized weights: `weights.bin` and its manifest, in a folder of the cache. */
export class QuantizedStore implements QuantizedSource {
  readonly folder: string;
  readonly fileName = 'weights.bin';

  private constructor(
    readonly dir: string,
    readonly key: string,
    readonly settings: QuantizeSettings,
    readonly entries: Map<string, QuantizedEntry>,
    /** whether this load found the store (true) or wrote it (false) */
    readonly reused: boolean,
    readonly fileBytes: number,
  ) {
    this.folder = dir;
  }

  get file(): string {
    return path.join(this.dir, this.fileName);
  }

  read(s: FileSlice): Uint8Array {
    const out = new Uint8Array(s.bytes);
    const fd = fs.openSync(this.file, 'r');
    try {
      let done = 0;
      while (done < out.length) {
        const n = fs.readSync(fd, out, done, out.length - done, s.offset + done);
        if (n === 0) throw new Error(`${this.file}: ends before byte ${s.offset + s.bytes}`);
        done += n;
      }
    } finally {
      fs.closeSync(fd);
    }
    return out;
  }

  /** Quantized values (n · k) of the weights it holds. */
  get values(): number {
    let n = 0;
    for (const e of this.entries.values()) n += e.stored.n * e.stored.k;
    return n;
  }

  /**
   * The store for `weights` of a source with checksum `checksum`: found in the cache, or written by quantizing
   * each weight as `read(name)` returns it (one at a time; nothing of it is kept).
   */
  static open(
    checksum: string,
    description: string,
    weights: ReadonlyMap<string, { layout: WeightLayout; shape: number[] }>,
    settings: QuantizeSettings,
    read: (name: string) => Float32Array,
  ): QuantizedStore {
    const root = settings.cacheDir ?? defaultQuantCache();
    // written in the order given (a checkpoint's order: random weights are drawn in it); keyed by the sorted list
    const names = [...weights.keys()];
    const sorted = [...names].sort();
    const { cacheDir: _ignored, activations: _compute, ...plain } = settings;
    const key = crypto
      .createHash('sha256')
      .update(JSON.stringify({ format: FORMAT, checksum, settings: plain, weights: sorted.map((n) => [n, weights.get(n)!.layout, weights.get(n)!.shape]) }))
      .digest('hex')
      .slice(0, 32);
    const dir = path.join(root, key);
    const found = QuantizedStore.tryRead(dir, key, settings);
    if (found) return found;
    return QuantizedStore.write(root, dir, key, checksum, description, names, weights, settings, read);
  }

  private static tryRead(dir: string, key: string, settings: QuantizeSettings): QuantizedStore | null {
    let m: Manifest;
    try {
      m = JSON.parse(fs.readFileSync(path.join(dir, 'manifest.json'), 'utf8')) as Manifest;
      if (m.format !== FORMAT || m.key !== key) return null;
      if (fs.statSync(path.join(dir, 'weights.bin')).size !== m.fileBytes) return null;
    } catch {
      return null;
    }
    return new QuantizedStore(dir, key, settings, new Map(Object.entries(m.tensors)), true, m.fileBytes);
  }

  private static write(
    root: string, dir: string, key: string, checksum: string, description: string, names: string[],
    weights: ReadonlyMap<string, { layout: WeightLayout; shape: number[] }>, settings: QuantizeSettings, read: (name: string) => Float32Array,
  ): QuantizedStore {
    fs.mkdirSync(root, { recursive: true });
    const tmp = fs.mkdtempSync(path.join(root, `.${key}.`));
    try {
      const fd = fs.openSync(path.join(tmp, 'weights.bin'), 'w');
      let at = 0;
      const put = (bytes: Uint8Array): FileSlice => {
        at = Math.ceil(at / ALIGN) * ALIGN;
        let done = 0;
        while (done < bytes.length) done += fs.writeSync(fd, bytes, done, bytes.length - done, at + done);
        const slice = { offset: at, bytes: bytes.length };
        at += bytes.length;
        return slice;
      };
      const store = (m: QuantizedMatrix): StoredQuantized => ({
        n: m.n,
        k: m.k,
        bits: m.bits,
        blockSize: m.blockSize,
        data: put(m.data),
        scales: put(new Uint8Array(m.scales.buffer, m.scales.byteOffset, m.scales.byteLength)),
        ...(m.zeroPoints && { zeroPoints: put(m.zeroPoints) }),
        // per channel: the forward's GEMM reads the integers as [k, n]; the input gradient reads `data` itself
        ...(m.signed && { signed: true, columns: put(transposeBytes(m.data, m.n, m.k)) }),
      });
      const tensors: Record<string, QuantizedEntry> = {};
      try {
        for (const name of names) {
          const { layout, shape } = weights.get(name)!;
          if (shape.length !== 2) throw new Error(`quantize: "${name}" is not a matrix [${shape}]`);
          let w: Float32Array | null = read(name);
          // Ŵ is [out, in]: a Conv1D weight [in, out] is transposed first
          const [n, k] = layout === 'out-in' ? [shape[0]!, shape[1]!] : [shape[1]!, shape[0]!];
          if (layout === 'in-out') w = transposeMatrix(w, k, n);
          const q = quantizeMatrix(w, n, k, settings);
          w = null;
          const stored = store(q);
          if (settings.backward === 'transposed' && !q.signed) {
            // the copy for dX = dY·Ŵ quantizes Ŵᵀ (the dequantized forward weight), so both directions see Ŵ
            const t = quantizeMatrix(dequantizeTransposed(q), k, n, settings);
            stored.transposed = store(t);
          }
          tensors[name] = { layout, shape, stored };
        }
        if (at % 8 !== 0) put(new Uint8Array(8 - (at % 8)));
        fs.fsyncSync(fd);
      } finally {
        fs.closeSync(fd);
      }
      const { cacheDir: _ignored, ...plain } = settings;
      const manifest: Manifest = { format: FORMAT, key, source: { checksum, description }, settings: plain, fileBytes: at, tensors };
      fs.writeFileSync(path.join(tmp, 'manifest.json'), JSON.stringify(manifest, null, 1));
      try {
        fs.renameSync(tmp, dir);
      } catch (err) {
        // another process wrote the same store meanwhile: use theirs
        const theirs = QuantizedStore.tryRead(dir, key, settings);
        if (!theirs) throw err;
        fs.rmSync(tmp, { recursive: true, force: true });
        return theirs;
      }
      return new QuantizedStore(dir, key, settings, new Map(Object.entries(tensors)), false, at);
    } catch (err) {
      fs.rmSync(tmp, { recursive: true, force: true });
      throw err;
    }
  }
}

/** The checksum that keys a store: the sha256 of the source files' checksums (in order). */
export function sourceChecksum(files: readonly string[], root: string): string {
  const sums = fileChecksums(files, root);
  return crypto.createHash('sha256').update(sums.join('\n')).digest('hex');
}
