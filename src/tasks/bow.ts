/**
 * The bag-of-words baseline every prompt method must beat: multinomial logistic regression over binary
 * unigram and bigram features of the text fields (one feature space per field, so "premise: not" and
 * "hypothesis: not" differ), L2-regularised, trained full-batch with Adam; the regularisation strength is
 * chosen on the dev set from a small grid.
 */

export interface BowExample {
  fields: Record<string, string>;
  label: string;
}

const TOKEN = /[\p{L}\p{N}]+(?:'[\p{L}]+)?|[^\s\p{L}\p{N}]/gu;

export function bowTokens(text: string): string[] {
  return text.toLowerCase().match(TOKEN) ?? [];
}

function featuresOf(fields: Record<string, string>): string[] {
  const out = new Set<string>();
  for (const [name, text] of Object.entries(fields)) {
    const t = bowTokens(text);
    for (let i = 0; i < t.length; i++) {
      out.add(`${name}:${t[i]}`);
      if (i + 1 < t.length) out.add(`${name}:${t[i]} ${t[i + 1]}`);
    }
  }
  return [...out];
}

export class BagOfWords {
  private readonly index = new Map<string, number>();
  private weights = new Float32Array(0);
  private bias = new Float32Array(0);

  constructor(readonly labels: readonly string[]) {
    if (labels.length < 2) throw new Error(`bag-of-words: needs at least two labels, got ${labels.length}`);
  }

  private encode(x: BowExample, grow: boolean): number[] {
    const ids: number[] = [];
    for (const f of featuresOf(x.fields)) {
      let id = this.index.get(f);
      if (id === undefined && grow) this.index.set(f, (id = this.index.size));
      if (id !== undefined) ids.push(id);
    }
    return ids;
  }

  private logits(ids: readonly number[], out: Float64Array): void {
    const k = this.labels.length;
    for (let c = 0; c < k; c++) {
      let z = this.bias[c]!;
      for (const i of ids) z += this.weights[i * k + c]!;
      out[c] = z;
    }
  }

  /** Fits on `train` with L2 strength `l2` (per example, on the mean loss). */
  fit(train: readonly BowExample[], l2: number, epochs = 200, lr = 0.05): this {
    const k = this.labels.length;
    const xs = train.map((x) => this.encode(x, true));
    const ys = train.map((x) => {
      const y = this.labels.indexOf(x.label);
      if (y < 0) throw new Error(`bag-of-words: label ${JSON.stringify(x.label)} is not one of ${this.labels.join(', ')}`);
      return y;
    });
    const n = xs.length;
    const dim = this.index.size * k;
    this.weights = new Float32Array(dim);
    this.bias = new Float32Array(k);
    const g = new Float64Array(dim + k);
    const m = new Float64Array(dim + k);
    const v = new Float64Array(dim + k);
    const z = new Float64Array(k);
    for (let t = 1; t <= epochs; t++) {
      g.fill(0);
      for (let e = 0; e < n; e++) {
        this.logits(xs[e]!, z);
        const max = Math.max(...z);
        let sum = 0;
        for (let c = 0; c < k; c++) sum += (z[c] = Math.exp(z[c]! - max));
        for (let c = 0; c < k; c++) {
          const d = (z[c]! / sum - (c === ys[e] ? 1 : 0)) / n;
          for (const i of xs[e]!) g[i * k + c]! += d;
          g[dim + c]! += d;
        }
      }
      for (let j = 0; j < dim; j++) g[j]! += l2 * this.weights[j]!;
      const b1 = 1 - 0.9 ** t;
      const b2 = 1 - 0.999 ** t;
      for (let j = 0; j < dim + k; j++) {
        m[j] = 0.9 * m[j]! + 0.1 * g[j]!;
        v[j] = 0.999 * v[j]! + 0.001 * g[j]! * g[j]!;
        const step = (lr * (m[j]! / b1)) / (Math.sqrt(v[j]! / b2) + 1e-8);
        if (j < dim) this.weights[j]! -= step;
        else this.bias[j - dim]! -= step;
      }
    }
    return this;
  }

  predict(x: { fields: Record<string, string> }): string {
    const z = new Float64Array(this.labels.length);
    this.logits(this.encode({ fields: x.fields, label: '' }, false), z);
    let best = 0;
    for (let c = 1; c < z.length; c++) if (z[c]! > z[best]!) best = c;
    return this.labels[best]!;
  }

  accuracy(xs: readonly BowExample[]): number {
    return xs.length === 0 ? 0 : xs.filter((x) => this.predict(x) === x.label).length / xs.length;
  }
}

export const BOW_L2_GRID = [1e-4, 1e-3, 1e-2, 1e-1];

/** Fits one model per L2 strength and keeps the one with the best dev accuracy (ties: the stronger L2). */
export function fitBagOfWords(labels: readonly string[], train: readonly BowExample[], dev: readonly BowExample[]): { model: BagOfWords; l2: number; devAccuracy: number } {
  let best: { model: BagOfWords; l2: number; devAccuracy: number } | null = null;
  for (const l2 of [...BOW_L2_GRID].reverse()) {
    const model = new BagOfWords(labels).fit(train, l2);
    const devAccuracy = model.accuracy(dev);
    if (!best || devAccuracy > best.devAccuracy) best = { model, l2, devAccuracy };
  }
  return best!;
}
