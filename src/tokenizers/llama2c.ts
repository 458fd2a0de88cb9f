import { readFileSync } from 'node:fs';
import type { TextTokenizer } from './tokenizer.js';

const UNK = 0;
const BOS = 1;
const EOS = 2;
/** Byte-fallback pieces `<0x00>`..`<0xFF>` occupy ids 3..258. */
const BYTE_OFFSET = 3;
const SPECIAL_NAMES = ['<unk>', '<s>', '</s>'];
/** SentencePiece's word-boundary marker; llama2.c's export stores it as a plain space. */
const SP_SPACE = '\u2581';

const utf8 = new TextDecoder('utf-8');

/**
 * The SentencePiece-BPE tokenizer of llama2.c models, read from its `tokenizer.bin` / `tok512.bin` export:
 * int32 max_token_length, then per token float32 score, int32 byte length, bytes.
 * Encoding follows llama2.c's `encode`: a leading "dummy prefix" space, one token per UTF-8 character
 * (unknown characters fall back to their bytes), then repeated merging of the adjacent pair whose
 * concatenation is a piece with the highest score.
 */
export class Llama2cTokenizer implements TextTokenizer {
  readonly lowercase = false;
  readonly maxTokenLength: number;
  private readonly pieces: Uint8Array[];
  private readonly texts: string[];
  private readonly scores: Float32Array;
  /** piece text → id, for ordinary pieces only (byte-fallback and special pieces never match literal text) */
  private readonly lookup = new Map<string, number>();

  constructor(pieces: Uint8Array[], scores: Float32Array, maxTokenLength: number) {
    this.pieces = pieces;
    this.scores = scores;
    this.maxTokenLength = maxTokenLength;
    this.texts = pieces.map((p) => utf8.decode(p));
    for (let id = BYTE_OFFSET + 256; id < pieces.length; id++) {
      const t = this.texts[id]!;
      if (!this.lookup.has(t)) this.lookup.set(t, id);
    }
  }

  static fromFile(file: string, vocabSize?: number): Llama2cTokenizer {
    const buf = readFileSync(file);
    const fail = (what: string, at: number): never => {
      throw new Error(`${file}: ${what} at byte ${at} (file has ${buf.length} bytes)`);
    };
    if (buf.length < 4) fail('missing max_token_length header', 0);
    const maxLen = buf.readInt32LE(0);
    const pieces: Uint8Array[] = [];
    const scores: number[] = [];
    let off = 4;
    while (off < buf.length && (vocabSize === undefined || pieces.length < vocabSize)) {
      if (off + 8 > buf.length) fail(`truncated entry for token ${pieces.length}`, off);
      const score = buf.readFloatLE(off);
      const len = buf.readInt32LE(off + 4);
      if (len < 0 || off + 8 + len > buf.length) fail(`bad length ${len} for token ${pieces.length}`, off + 4);
      pieces.push(new Uint8Array(buf.subarray(off + 8, off + 8 + len)));
      scores.push(score);
      off += 8 + len;
    }
    if (vocabSize !== undefined && pieces.length !== vocabSize) {
      fail(`expected ${vocabSize} tokens, found ${pieces.length}`, off);
    }
    if (pieces.length < BYTE_OFFSET + 256) fail(`only ${pieces.length} tokens, need byte fallback ids 3..258`, off);
    return new Llama2cTokenizer(pieces, Float32Array.from(scores), maxLen);
  }

  /** The tokenizer.bin byte layout this tokenizer was read from. */
  toBuffer(): Buffer {
    const parts: Buffer[] = [Buffer.alloc(4)];
    parts[0]!.writeInt32LE(this.maxTokenLength, 0);
    this.pieces.forEach((piece, id) => {
      const head = Buffer.alloc(8);
      head.writeFloatLE(this.scores[id]!, 0);
      head.writeInt32LE(piece.length, 4);
      parts.push(head, Buffer.from(piece));
    });
    return Buffer.concat(parts);
  }

  get vocabSize(): number {
    return this.pieces.length;
  }

  encode(text: string): number[] {
    if (text.length === 0) return [];
    const ids: number[] = [];
    for (const ch of ' ' + text) {
      const id = this.lookup.get(ch);
      if (id !== undefined) {
        ids.push(id);
        continue;
      }
      for (const byte of Buffer.from(ch, 'utf8')) ids.push(byte + BYTE_OFFSET);
    }
    return this.mergePairs(ids);
  }

  encodeWord(word: string): number[] {
    return this.encode(word);
  }

  /** BPE: merge the best-scoring adjacent pair (first one on ties) until no pair forms a piece. */
  private mergePairs(ids: number[]): number[] {
    for (;;) {
      let best = -Infinity;
      let bestIdx = -1;
      let bestId = -1;
      for (let i = 0; i + 1 < ids.length; i++) {
        const merged = this.lookup.get(this.texts[ids[i]!]! + this.texts[ids[i + 1]!]!);
        if (merged !== undefined && this.scores[merged]! > best) {
          best = this.scores[merged]!;
          bestIdx = i;
          bestId = merged;
        }
      }
      if (bestIdx < 0) return ids;
      ids.splice(bestIdx, 2, bestId);
    }
  }

  /**
   * Token ids → text. Byte-fallback pieces become raw bytes; the leading space of the first piece (and of
   * the piece after BOS) is the dummy prefix and is dropped, as llama2.c does.
   */
  decode(ids: number[], opts: { skipSpecial?: boolean } = {}): string {
    const bytes: number[] = [];
    let atStart = true;
    for (const id of ids) {
      if (id < 0 || id >= this.pieces.length) throw new Error(`Llama2cTokenizer.decode: token id ${id} out of range`);
      if (id === UNK || id === BOS || id === EOS) {
        if (!opts.skipSpecial) bytes.push(...Buffer.from(SPECIAL_NAMES[id]!, 'utf8'));
        atStart = id === BOS || (atStart && opts.skipSpecial === true);
        continue;
      }
      if (id < BYTE_OFFSET + 256) {
        bytes.push(id - BYTE_OFFSET);
      } else {
        const piece = this.pieces[id]!;
        bytes.push(...(atStart && piece[0] === 0x20 ? piece.subarray(1) : piece));
      }
      atStart = false;
    }
    return utf8.decode(Uint8Array.from(bytes));
  }

  /** Pieces use SentencePiece's `▁` for spaces (the Hugging Face Llama vocabulary form). */
  idToToken(id: number): string | undefined {
    if (id < 0 || id >= this.pieces.length) return undefined;
    if (id < SPECIAL_NAMES.length) return SPECIAL_NAMES[id];
    return this.texts[id]!.replaceAll(' ', SP_SPACE);
  }

  tokenToId(token: string): number | undefined {
    const special = SPECIAL_NAMES.indexOf(token);
    if (special >= 0) return special;
    const byte = /^<0x([0-9A-F]{2})>$/.exec(token);
    if (byte) return parseInt(byte[1]!, 16) + BYTE_OFFSET;
    return this.lookup.get(token.replaceAll(SP_SPACE, ' '));
  }
}
