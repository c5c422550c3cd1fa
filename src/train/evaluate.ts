/**
 * Evaluation on held-out records: keras_hub's loss and weighted token accuracy (teacher forcing, no
 * dropout), and greedy exact match: the model generates from each prompt (src/generate) and the text it
 * produces, trimmed, must equal the suffix, trimmed. Exact match is also counted per prefix.
 */
import { tf } from '../../dsl/tf';
import * as d from '../../dsl';
import { generateText, type CausalLM } from '../generate/causal_lm';
import { batchesPerEpoch, makeBatch, promptOf, toTensors, type BatchOptions, type Dataset } from './data';
import { causalLmLoss } from './loss';
import { lossCompiled } from './compiled';
import { compiledModels } from '../runtime/backend';
import type { Quantize } from '../generate/compiled';

export interface EvalOptions {
  readonly batchSize?: number;
  /** Text positions for the loss (default 'longest' in each batch). */
  readonly sequenceLength?: number | 'longest';
  readonly truncate?: boolean;
  readonly verbatimPrompts?: boolean;
  /** Compute the loss and token accuracy (default true). */
  readonly loss?: boolean;
  /** Generate and compare (default true). */
  readonly exactMatch?: boolean;
  /** Most tokens generated per prompt (default: the longest suffix of the batch + 1 for the eos). */
  readonly maxNewTokens?: number;
  /** Called after each batch with the examples done so far. */
  readonly onProgress?: (done: number, total: number) => void;
  /** Generate with int8 weights (GenerateOptions.quantize; compiled only). */
  readonly quantize?: Quantize;
}

export interface PrefixCount {
  readonly correct: number;
  readonly total: number;
}

export interface EvalReport {
  /** Mean of the per-batch keras losses (each a sum over B * L), and correct / weighted target tokens. */
  readonly loss?: number;
  readonly tokenAccuracy?: number;
  /** Greedy exact match over all examples, and per prefix (in first-seen order). */
  readonly exactMatch?: PrefixCount & { readonly accuracy: number };
  readonly byPrefix?: ReadonlyMap<string, PrefixCount>;
  /** The generated answers, by example index. */
  readonly predictions?: readonly string[];
}

/** Loss, token accuracy and exact match of `lm` on `data`. Memory-neutral. */
export async function evaluate(lm: CausalLM, data: Dataset, options: EvalOptions = {}): Promise<EvalReport> {
  const B = options.batchSize ?? 8;
  const o: BatchOptions = {
    tokenizer: lm.tokenizer,
    imageSize: lm.params.config.image_size,
    batchSize: B,
    sequenceLength: options.sequenceLength ?? 'longest',
    truncate: options.truncate,
    verbatimPrompts: options.verbatimPrompts,
  };
  const n = data.examples.length;
  const batches = batchesPerEpoch(data, o);
  let lossSum = 0;
  let correct = 0;
  let weight = 0;
  let matched = 0;
  const byPrefix = new Map<string, { correct: number; total: number }>();
  const predictions: string[] = [];
  for (let i = 0; i < batches; i++) {
    const rows = Array.from({ length: Math.min(B, n - i * B) }, (_, r) => i * B + r);
    if (options.loss !== false) {
      const host = makeBatch(data, rows, o);
      const x = toTensors(host);
      // on the onnx backend compiled (src/train/compiled.ts), else eager
      const r = compiledModels() ? lossCompiled(lm.params, x) : causalLmLoss(lm.params, x, { weights: host.sampleWeight, tableGrad: false });
      lossSum += (await r.loss.data())[0];
      correct += (await r.correct.data())[0];
      weight += (await r.weight.data())[0];
      tf.dispose([r.loss, r.correct, r.weight, ...d.collectTensors(x)]);
    }
    if (options.exactMatch !== false) {
      const examples = rows.map((r) => data.examples[r]);
      const prompts = examples.map((e) => (options.verbatimPrompts ? e.prefix : promptOf(e.prefix)));
      const promptTokens = Math.max(...prompts.map((p) => lm.tokenizer.encode(p).length));
      const newTokens = options.maxNewTokens ?? Math.max(...examples.map((e) => lm.tokenizer.encode(e.suffix).length)) + 1;
      const out = await generateText(lm, { images: examples.map((e) => e.image), prompts }, { maxLength: 1 + promptTokens + newTokens, stripPrompt: true, quantize: options.quantize });
      out.texts.forEach((text, j) => {
        const ex = examples[j];
        const ok = text.trim() === ex.suffix.trim();
        predictions.push(text);
        if (ok) matched++;
        const c = byPrefix.get(ex.prefix) ?? { correct: 0, total: 0 };
        byPrefix.set(ex.prefix, { correct: c.correct + (ok ? 1 : 0), total: c.total + 1 });
      });
    }
    options.onProgress?.(rows[rows.length - 1] + 1, n);
  }
  return {
    ...(options.loss !== false && { loss: lossSum / batches, tokenAccuracy: weight > 0 ? correct / weight : 0 }),
    ...(options.exactMatch !== false && { exactMatch: { correct: matched, total: n, accuracy: matched / n }, byPrefix, predictions }),
  };
}

/** `accuracy: 0.973 (1946/2000)`: three decimals, then the counts. */
export const formatAccuracy = (label: string, c: PrefixCount): string => `${label}: ${(c.total ? c.correct / c.total : 0).toFixed(3)} (${c.correct}/${c.total})`;
