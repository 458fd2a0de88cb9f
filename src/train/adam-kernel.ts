/**
 * The Adam update as a WebAssembly SIMD kernel (four float32 lanes per instruction, float32 arithmetic as
 * torch.optim computes it for float32 parameters). The parameters and moments it updates live in one WebAssembly
 * memory (`AdamArena`), which ONNX Runtime reads in place like any other host array.
 *
 * The module is assembled here from its instructions (a single function; see `adamBody`), so no build step or
 * binary file is involved.
 */

/** θ, g, m, v: byte offsets of 16-byte aligned arrays; bytes: their length in bytes, a multiple of 16. */
export type AdamKernel = (
  theta: number, grad: number, m: number, v: number, bytes: number,
  l2: number, keep: number, stepSize: number, invRoot2: number, beta1: number, beta2: number, c1: number, c2: number, eps: number,
) => void;

const I32 = 0x7f;
const F32 = 0x7d;
const V128 = 0x7b;

function leb(n: number): number[] {
  const out: number[] = [];
  do {
    let byte = n & 0x7f;
    n >>>= 7;
    if (n !== 0) byte |= 0x80;
    out.push(byte);
  } while (n !== 0);
  return out;
}

const vec = (items: number[][]): number[] => [...leb(items.length), ...items.flat()];
const section = (id: number, body: number[]): number[] => [id, ...leb(body.length), ...body];
const name = (s: string): number[] => vec([...s].map((c) => [c.charCodeAt(0)]));

// instructions
const get = (i: number) => [0x20, ...leb(i)];
const set = (i: number) => [0x21, ...leb(i)];
const simd = (op: number, ...imm: number[]) => [0xfd, ...leb(op), ...imm];
const MEMARG = [4, 0]; // 16-byte alignment, offset 0
const load = (base: number, i: number) => [...get(base), ...get(i), 0x6a /* i32.add */, ...simd(0x00, ...MEMARG)];
const store = (base: number, i: number, value: number[]) => [...get(base), ...get(i), 0x6a, ...value, ...simd(0x0b, ...MEMARG)];
const splat = simd(0x13);
const sqrt = simd(0xe3);
const add = simd(0xe4);
const sub = simd(0xe5);
const mul = simd(0xe6);
const div = simd(0xe7);

// parameter and local indices
const [THETA, GRAD, M, V, BYTES] = [0, 1, 2, 3, 4];
const SCALARS = ['l2', 'keep', 'step', 'invRoot2', 'b1', 'b2', 'c1', 'c2', 'eps'] as const;
const scalarParam = (k: (typeof SCALARS)[number]) => 5 + SCALARS.indexOf(k);
const I = 14;
const lane = (k: (typeof SCALARS)[number]) => 15 + SCALARS.indexOf(k);
const [TH, GI, MV, VV] = [24, 25, 26, 27];

/**
 * for (i = 0; i < bytes; i += 16): gi = g + l2·θ; m = b1·m + c1·gi; v = b2·v + c2·gi²;
 * θ = keep·θ − step·m / (√v·invRoot2 + eps)
 */
function adamBody(): number[] {
  const code: number[] = [];
  for (const k of SCALARS) code.push(...get(scalarParam(k)), ...splat, ...set(lane(k)));
  code.push(0x02, 0x40, 0x03, 0x40); // block, loop
  code.push(...get(I), ...get(BYTES), 0x4f /* i32.ge_u */, 0x0d, 1 /* br_if out */);
  code.push(...load(THETA, I), ...set(TH));
  code.push(...load(GRAD, I), ...get(lane('l2')), ...get(TH), ...mul, ...add, ...set(GI));
  code.push(...get(lane('b1')), ...load(M, I), ...mul, ...get(lane('c1')), ...get(GI), ...mul, ...add, ...set(MV));
  code.push(...store(M, I, get(MV)));
  code.push(...get(lane('b2')), ...load(V, I), ...mul, ...get(lane('c2')), ...get(GI), ...get(GI), ...mul, ...mul, ...add, ...set(VV));
  code.push(...store(V, I, get(VV)));
  const update = [
    ...get(TH), ...get(lane('keep')), ...mul,
    ...get(lane('step')), ...get(MV), ...mul,
    ...get(VV), ...sqrt, ...get(lane('invRoot2')), ...mul, ...get(lane('eps')), ...add,
    ...div, ...sub,
  ];
  code.push(...store(THETA, I, update));
  code.push(...get(I), 0x41, ...leb(16), 0x6a, ...set(I)); // i += 16
  code.push(0x0c, 0, 0x0b, 0x0b); // br loop; end loop; end block
  code.push(0x0b); // end function
  const locals = vec([[...leb(1), I32], [...leb(13), V128]]);
  const body = [...locals, ...code];
  return [...leb(body.length), ...body];
}

function adamModule(): Uint8Array {
  const funcType = [0x60, ...vec([...Array(5).fill([I32]), ...Array(9).fill([F32])]), ...vec([])];
  const bytes = [
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00,
    ...section(1, vec([funcType])),
    ...section(2, vec([[...name('env'), ...name('memory'), 0x02, 0x00, ...leb(1)]])),
    ...section(3, vec([leb(0)])),
    ...section(7, vec([[...name('adam'), 0x00, ...leb(0)]])),
    ...section(10, vec([adamBody()])),
  ];
  return Uint8Array.from(bytes);
}

let compiled: WebAssembly.Module | null | undefined;

function kernelModule(): WebAssembly.Module | null {
  if (compiled === undefined) {
    try {
      compiled = new WebAssembly.Module(adamModule() as Uint8Array<ArrayBuffer>);
    } catch {
      compiled = null; // no WebAssembly SIMD here: the optimizer's JavaScript loop does the work
    }
  }
  return compiled;
}

/** The largest arena made (WebAssembly memories are limited to 4 GiB). */
const MAX_ARENA_BYTES = 3.5 * 2 ** 30;

/**
 * One WebAssembly memory holding parameters' values, Adam moments and a window for gradients, each 16-byte aligned, with the
 * kernel bound to it. Arrays are views into the memory, which never grows, so they stay valid.
 */
export class AdamArena {
  private readonly memory: WebAssembly.Memory;
  readonly kernel: AdamKernel;
  private used = 0;

  private constructor(bytes: number, module: WebAssembly.Module) {
    this.memory = new WebAssembly.Memory({ initial: Math.max(1, Math.ceil(bytes / 65536)) });
    const instance = new WebAssembly.Instance(module, { env: { memory: this.memory } });
    this.kernel = instance.exports.adam as AdamKernel;
  }

  /** An arena for arrays of these element counts (each counted once), or null when the kernel cannot be used. */
  static create(lengths: number[]): AdamArena | null {
    const module = kernelModule();
    const bytes = lengths.reduce((n, len) => n + padded(len) * 4, 0);
    if (!module || bytes > MAX_ARENA_BYTES) return null;
    return new AdamArena(bytes, module);
  }

  /** A zeroed array of `length` floats inside the arena. */
  alloc(length: number): Float32Array {
    const view = new Float32Array(this.memory.buffer, this.used, length);
    this.used += padded(length) * 4;
    return view;
  }

  /** Whether `a` is one of this arena's arrays. */
  holds(a: Float32Array): boolean {
    return a.buffer === this.memory.buffer;
  }
}

/** `n` rounded up to whole 16-byte lanes. */
export function padded(n: number): number {
  return Math.ceil(n / 4) * 4;
}
