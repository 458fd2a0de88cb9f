import type { Sym } from '../engine/onnx/index.js';
import type { ProgramBuilder } from '../engine/program.js';
import type { HostTensor } from '../engine/tensor.js';
import type { LanguageModel } from './model.js';

/** Token ids of a batch (rows of equal length), with the optional inputs the model reads. */
export interface TokenBatch {
  ids: number[][];
  /** default: all ones */
  attentionMask?: number[][];
  tokenTypeIds?: number[][];
  /** default: the number of real tokens before each position */
  positionIds?: number[][];
}

function grid(rows: number[][]): HostTensor {
  return { data: Int32Array.from(rows.flat()), shape: [rows.length, rows[0]!.length] };
}

function declare(lm: LanguageModel, b: ProgramBuilder, batch: TokenBatch): { embeds: Sym; hidden: (embeds: Sym) => Sym } {
  const shape = [batch.ids.length, batch.ids[0]!.length];
  const { o } = b;
  const w = lm.weights(b);
  const ints = (name: string) => b.input(name, shape, 'int32');
  const embeds = lm.fns.embed(o, w, ints('ids'));
  const hidden = (x: Sym) =>
    lm.fns.hidden(o, w, {
      embeds: x,
      attentionMask: ints('attention_mask'),
      ...(batch.tokenTypeIds && { tokenTypeIds: ints('token_type_ids') }),
      ...(batch.positionIds && { positionIds: ints('position_ids') }),
    }).hidden;
  return { embeds, hidden };
}

function feedsOf(batch: TokenBatch): Record<string, HostTensor> {
  const feeds: Record<string, HostTensor> = {
    ids: grid(batch.ids),
    attention_mask: grid(batch.attentionMask ?? batch.ids.map((r) => r.map(() => 1))),
  };
  if (batch.tokenTypeIds) feeds.token_type_ids = grid(batch.tokenTypeIds);
  if (batch.positionIds) feeds.position_ids = grid(batch.positionIds);
  return feeds;
}

function shapeKey(batch: TokenBatch): string {
  return `${batch.ids.length}x${batch.ids[0]!.length} t${+!!batch.tokenTypeIds} p${+!!batch.positionIds}`;
}

/** Full-vocabulary logits at the given (row, position) pairs of a batch, one array per pair. */
export async function logitsAt(lm: LanguageModel, batch: TokenBatch, at: { row: number; position: number }[]): Promise<Float32Array[]> {
  const [b, s] = [batch.ids.length, batch.ids[0]!.length];
  const n = at.length;
  const r = await lm.run(
    {
      key: `logits ${shapeKey(batch)} at ${n}`,
      build: (pb) => {
        const { o } = pb;
        const { embeds, hidden } = declare(lm, pb, batch);
        const rows = o.gather(o.reshape(hidden(embeds), [b * s, lm.info.hiddenSize]), pb.input('at', [n], 'int32'));
        return { outputs: { logits: lm.fns.logits(o, lm.weights(pb), rows) } };
      },
    },
    { ...feedsOf(batch), at: { data: Int32Array.from(at, (p) => p.row * s + p.position), shape: [n] } },
  );
  const v = r.outputs.logits!.shape[1]!;
  const data = r.outputs.logits!.data as Float32Array;
  return at.map((_, i) => data.subarray(i * v, (i + 1) * v));
}

/** Logits at every position of one unpadded sequence. */
export function sequenceLogits(lm: LanguageModel, ids: number[], extra: Omit<TokenBatch, 'ids'> = {}): Promise<Float32Array[]> {
  return logitsAt(lm, { ids: [ids], ...extra }, ids.map((_, position) => ({ row: 0, position })));
}

/** Final hidden states [B, S, H] of a batch. */
export async function hiddenStates(lm: LanguageModel, batch: TokenBatch): Promise<HostTensor<Float32Array>> {
  const r = await lm.run(
    {
      key: `hidden ${shapeKey(batch)}`,
      build: (pb) => {
        const { embeds, hidden } = declare(lm, pb, batch);
        return { outputs: { hidden: hidden(embeds) } };
      },
    },
    feedsOf(batch),
  );
  return r.outputs.hidden as HostTensor<Float32Array>;
}

/**
 * log p(`target` at `position` of row 0) and its gradient with respect to the input embeddings [S, H] of that
 * row (what a prompt encoder's output receives).
 */
export async function inputEmbeddingGradient(
  lm: LanguageModel, batch: TokenBatch, position: number, target: number,
): Promise<{ logProb: number; grad: HostTensor<Float32Array> }> {
  const [b, s] = [batch.ids.length, batch.ids[0]!.length];
  const r = await lm.run(
    {
      key: `embeds-grad ${shapeKey(batch)} at ${position} target ${target}`,
      build: (pb) => {
        const { o } = pb;
        const { embeds, hidden } = declare(lm, pb, batch);
        const rows = o.gather(o.reshape(hidden(embeds), [b * s, lm.info.hiddenSize]), o.constInt([position], [1]));
        const logp = o.logSoftmax(lm.fns.logits(o, lm.weights(pb), rows));
        const loss = o.reshape(o.slice(logp, [0, target], [1, 1]), [1]);
        return { outputs: { logp: loss }, loss, wrt: { embeds } };
      },
    },
    feedsOf(batch),
  );
  const g = r.wrt.embeds!;
  const h = lm.info.embeddingSize ?? lm.info.hiddenSize;
  return { logProb: r.outputs.logp!.data[0] as number, grad: { data: (g.data as Float32Array).slice(0, s * h), shape: [s, h] } };
}

/** The model's input embeddings (what `embed` gives, e.g. scaled for Gemma 2) of `ids`, [ids.length · H]. */
export async function inputEmbeddings(lm: LanguageModel, ids: number[]): Promise<Float32Array> {
  const r = await lm.run(
    { key: `embed ${ids.length}`, build: (pb) => ({ outputs: { rows: lm.fns.embed(pb.o, lm.weights(pb), pb.input('ids', [1, ids.length], 'int32')) } }) },
    { ids: { data: Int32Array.from(ids), shape: [1, ids.length] } },
  );
  return r.outputs.rows!.data as Float32Array;
}
