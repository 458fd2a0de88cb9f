import fs from 'node:fs';
import path from 'node:path';
import { writeSafetensors } from '../engine/safetensors.js';
import { Llama2cTokenizer } from '../tokenizers/llama2c.js';
import { defaultInvFreq, llamaFamily, type DecoderConfig } from './llama.js';
import type { LanguageModel } from './model.js';

/**
 * llama2.c's legacy v0 checkpoint format (`.bin`): a 7-int32 header (dim, hidden_dim, n_layers, n_heads,
 * n_kv_heads, vocab_size — negative when the classifier is stored separately —, seq_len), then float32 blocks
 * in a fixed order. Its q/k rows are in Meta's order, so the model rotates interleaved pairs.
 */
const HEADER_BYTES = 7 * 4;
export const isTokenizerBin = (f: string) => /^tok.*\.bin$/i.test(path.basename(f));

export interface Llama2cCheckpoint {
  config: DecoderConfig;
  /** Hugging Face names, torch layout */
  weights: Map<string, Float32Array>;
  tokenizer: Llama2cTokenizer;
  file: string;
}

/** A directory holding a llama2.c checkpoint (and no config.json with a model_type), or the .bin itself. */
export function llama2cCheckpointIn(dirOrFile: string): string | null {
  if (fs.statSync(dirOrFile).isFile()) return dirOrFile.endsWith('.bin') && !isTokenizerBin(dirOrFile) ? dirOrFile : null;
  const bins = fs.readdirSync(dirOrFile).filter((f) => f.endsWith('.bin') && !isTokenizerBin(f) && f !== 'pytorch_model.bin');
  if (bins.length > 1) throw new Error(`${dirOrFile}: ${bins.length} llama2.c .bin checkpoints (${bins.join(', ')}); name one`);
  return bins.length === 1 ? path.join(dirOrFile, bins[0]!) : null;
}

export function readLlama2c(file: string): Llama2cCheckpoint {
  const buf = fs.readFileSync(file);
  if (buf.length < HEADER_BYTES) throw new Error(`${file}: llama2.c checkpoint too short: ${buf.length} bytes, the header alone is ${HEADER_BYTES}`);
  const [dim, hidden, layers, heads, kvHeads, signedVocab, seqLen] = Array.from({ length: 7 }, (_, i) => buf.readInt32LE(4 * i)) as number[];
  const vocab = Math.abs(signedVocab!);
  const header = `dim ${dim}, hidden_dim ${hidden}, n_layers ${layers}, n_heads ${heads}, n_kv_heads ${kvHeads}, vocab_size ${signedVocab}, seq_len ${seqLen}`;
  const sane = [dim, hidden, layers, heads, kvHeads, vocab, seqLen].every((v) => v! > 0 && v! < 1 << 24);
  if (!sane || dim! % heads! !== 0 || heads! % kvHeads! !== 0 || (dim! / heads!) % 2 !== 0) {
    throw new Error(`${file}: not a llama2.c checkpoint: implausible header (${header})`);
  }
  const d = dim!, f = hidden!, L = layers!, hd = d / heads!, kvDim = hd * kvHeads!;
  const sizes: [string, number][] = [
    ['tok_embeddings', vocab * d], ['rms_att', L * d], ['wq', L * d * d], ['wk', L * kvDim * d], ['wv', L * kvDim * d],
    ['wo', L * d * d], ['rms_ffn', L * d], ['w1', L * f * d], ['w2', L * d * f], ['w3', L * f * d], ['rms_final', d],
    ['freq_cis', seqLen! * hd], ['classifier', signedVocab! < 0 ? vocab * d : 0],
  ];
  const expected = HEADER_BYTES + 4 * sizes.reduce((a, [, n]) => a + n, 0);
  if (buf.length !== expected) throw new Error(`${file}: llama2.c checkpoint size mismatch: header (${header}) implies ${expected} bytes, file has ${buf.length}`);
  const floats = new Float32Array(buf.buffer.slice(buf.byteOffset + HEADER_BYTES, buf.byteOffset + buf.length));
  const blocks = new Map<string, Float32Array>();
  let off = 0;
  for (const [name, n] of sizes) {
    blocks.set(name, floats.subarray(off, off + n));
    off += n;
  }
  const perLayer = (block: string, i: number, n: number) => blocks.get(block)!.slice(i * n, (i + 1) * n);
  const weights = new Map<string, Float32Array>([['model.embed_tokens.weight', blocks.get('tok_embeddings')!.slice()]]);
  for (let i = 0; i < L; i++) {
    const p = `model.layers.${i}`;
    weights.set(`${p}.input_layernorm.weight`, perLayer('rms_att', i, d));
    weights.set(`${p}.self_attn.q_proj.weight`, perLayer('wq', i, d * d));
    weights.set(`${p}.self_attn.k_proj.weight`, perLayer('wk', i, kvDim * d));
    weights.set(`${p}.self_attn.v_proj.weight`, perLayer('wv', i, kvDim * d));
    weights.set(`${p}.self_attn.o_proj.weight`, perLayer('wo', i, d * d));
    weights.set(`${p}.post_attention_layernorm.weight`, perLayer('rms_ffn', i, d));
    weights.set(`${p}.mlp.gate_proj.weight`, perLayer('w1', i, f * d));
    weights.set(`${p}.mlp.down_proj.weight`, perLayer('w2', i, d * f));
    weights.set(`${p}.mlp.up_proj.weight`, perLayer('w3', i, f * d));
  }
  weights.set('model.norm.weight', blocks.get('rms_final')!.slice());
  if (signedVocab! < 0) weights.set('lm_head.weight', blocks.get('classifier')!.slice());
  const config: DecoderConfig = {
    vocabSize: vocab, hiddenSize: d, intermediateSize: f, numLayers: L, numHeads: heads!, numKvHeads: kvHeads!, headDim: hd,
    maxPositions: seqLen!, rmsNormEps: 1e-5, ropeTheta: 10000, ropeScaling: null, ropeInvFreq: defaultInvFreq(10000, hd),
    ropeAttentionScale: 1, tieWordEmbeddings: signedVocab! > 0, attentionBias: false, ropeStyle: 'interleaved',
    special: { bos: 1, eos: 2 },
  };
  const dir = path.dirname(file);
  const tokFile = fs.readdirSync(dir).filter(isTokenizerBin).sort().find((n, _, all) => n === 'tokenizer.bin' || n === `tok${vocab}.bin` || all.length === 1);
  if (!tokFile) throw new Error(`${dir}: no llama2.c tokenizer (tokenizer.bin or tok${vocab}.bin) beside ${path.basename(file)}`);
  return { config, weights, tokenizer: Llama2cTokenizer.fromFile(path.join(dir, tokFile), vocab), file };
}

/**
 * Reorders the rows of a torch-layout q/k weight [heads·headDim, in] within each head from interleaved pairs
 * (2i, 2i+1) to halves (i, i+headDim/2), as Hugging Face's Llama conversion does for rotate_half.
 */
function permuteForRotateHalf(w: Float32Array, heads: number, headDim: number, inDim: number): Float32Array {
  const out = new Float32Array(w.length);
  const half = headDim / 2;
  for (let h = 0; h < heads; h++) {
    for (let i = 0; i < half; i++) {
      for (let j = 0; j < 2; j++) {
        const from = (h * headDim + 2 * i + j) * inDim;
        const to = (h * headDim + j * half + i) * inDim;
        out.set(w.subarray(from, from + inDim), to);
      }
    }
  }
  return out;
}

/**
 * Writes a Llama model in Hugging Face layout: config.json, model.safetensors (q/k rows permuted for
 * rotate_half when the model rotates interleaved pairs) and, for a llama2.c tokenizer, tokenizer.bin.
 */
export function llamaToHf(model: LanguageModel, outDir: string): void {
  const c = model.config as DecoderConfig;
  if (model.family !== llamaFamily) throw new Error(`${model.info.source} is not a Llama model`);
  fs.mkdirSync(outDir, { recursive: true });
  const tensors = new Map<string, { shape: number[]; data: Float32Array }>();
  for (const [name, p] of model.params) {
    let data = p.toStored();
    const shape = p.storedShape;
    if (c.ropeStyle === 'interleaved' && /\.(q|k)_proj\.weight$/.test(name)) data = permuteForRotateHalf(data, shape[0]! / c.headDim, c.headDim, shape[1]!);
    tensors.set(name, { shape, data });
  }
  writeSafetensors(path.join(outDir, 'model.safetensors'), tensors, { format: 'pt' });
  fs.writeFileSync(path.join(outDir, 'config.json'), JSON.stringify(llamaFamily.toHfConfig({ ...c, ropeStyle: 'half' }), null, 2) + '\n');
  if (model.tokenizer instanceof Llama2cTokenizer) fs.writeFileSync(path.join(outDir, 'tokenizer.bin'), model.tokenizer.toBuffer());
}
