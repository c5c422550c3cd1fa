/**
 * keras_hub's PaliGemmaCausalLM training loss, computed without the logits it does not need.
 *
 *   ce[b,t]  = logsumexp(logits[b,t]) - logits[b,t,y[b,t]]           logits = softcap(h[b,t] . E^T)
 *   loss     = sum_{b,t} sample_weight[b,t] * ce[b,t] / (B * L)      (keras' "sum_over_batch_size": NOT / sum(w))
 *   correct  = sum_{b,t} sample_weight[b,t] * [argmax logits[b,t] == y[b,t]]   (SparseCategoricalAccuracy)
 *   weight   = sum_{b,t} sample_weight[b,t]
 *
 * Only the text positions whose weight is non-zero are unembedded (a zero weight contributes 0 to all three
 * sums), `chunk` positions at a time, and each chunk is one custom-gradient op that keeps only its inputs for
 * the backward pass and recomputes its logits there (the logit gradient in its own scope). So the
 * vocabulary-wide tensors of the loss are at most `chunk x V` floats each, whatever B and L are, and about six
 * of them are live at once: the peak grows by 5.6 x V float32 per position of the chunk (measured with
 * tf.profile, spec/train/loss.spec.ts). The default chunk is floor(2^24 / V) positions (65 for PaliGemma's
 * 257152 tokens), at most 64 MiB per such tensor: ~360 MiB of peak for the loss on top of the activations.
 * The tied embedding's gradient (V x E, as large as the table) is computed only when it is differentiated.
 */
import { tf } from '../../dsl/tf';
import * as d from '../../dsl';
import type { Key, Named } from '../../dsl';
import { backbone, type Embedding, type PaliGemmaParams } from '../../models/paligemma';
import { imageSequenceLength } from '../../models/config';
import type { LossReport, TrainBatch } from './api';
import { isDifferentiated } from './select';

export interface LossOptions {
  /** Dropout on (training mode) with this key; absent = the deterministic forward. */
  readonly key?: Key;
  /** Weighted positions unembedded at once (default floor(2^24 / vocabulary_size), at least 1). */
  readonly chunk?: number;
  /** keras_hub's code where it departs from its documentation (models/paligemma.ts). */
  readonly compat?: 'keras_hub';
  /**
   * Whether the gradient reaches the tied embedding through the logits. Default: inside
   * `valueAndGradTrainable`, whether the embedding is trainable there; elsewhere true. When it is frozen
   * (LoRA), tfjs would otherwise compute, then drop, a V x E gradient per chunk.
   */
  readonly tableGrad?: boolean;
  /**
   * A host copy of `sample_weight` (row-major [B, L]), to choose the weighted positions without reading the
   * device. Without it, cpu and wasm read the tensor synchronously; on webgpu, where Node has no synchronous
   * read, every position is unembedded (the same values; zero-weight positions cost compute only).
   */
  readonly weights?: ArrayLike<number>;
}

/** Default positions per chunk: at most 2^24 logits (64 MiB of float32) per vocabulary-wide tensor. */
export const defaultLossChunk = (vocabularySize: number): number => Math.max(1, Math.floor(2 ** 24 / vocabularySize));

/** The flat indices (b * L + t) of the positions with a non-zero weight, or every index when unreadable. */
function weightedPositions(w: tf.Tensor, host?: ArrayLike<number>): number[] {
  let values: ArrayLike<number> | undefined = host;
  if (values === undefined && tf.getBackend() !== 'webgpu') values = w.dataSync() as Float32Array;
  if (values === undefined) return Array.from({ length: w.size }, (_, i) => i);
  if (values.length !== w.size) throw new Error(`causalLmLoss: options.weights has ${values.length} values, sample_weight has ${w.size}`);
  const out: number[] = [];
  for (let i = 0; i < values.length; i++) if (values[i] !== 0) out.push(i);
  return out;
}

/**
 * One chunk: h [n, E], y int32 [n], w [n], the embedding shards -> [2] = [sum w * ce, sum w * correct].
 * The second entry carries no gradient (dy[1] is ignored). With `tableGrad` false the shards are constants
 * captured by the closure (they are params, alive for the whole gradient computation).
 */
function chunkOp(cap: number | null, table: Embedding, tableGrad: boolean) {
  const axesOf = (s: tf.Tensor) => d.named(s, ['vocab', 'embed'] as const);
  const forward = (h: tf.Tensor, shards: readonly tf.Tensor[]) => {
    const hn = d.named(h, ['n', 'embed'] as const);
    const parts = shards.map((s) => d.dot(hn, axesOf(s), 'embed').tensor); // [n, V_i]
    const raw = parts.length === 1 ? parts[0] : tf.concat(parts, 1);
    // Gemma 2's final soft cap: cap * tanh(z / cap)
    return cap === null ? raw : tf.mul(tf.tanh(tf.div(raw, cap)), cap);
  };
  const op = (h: tf.Tensor, y: tf.Tensor, w: tf.Tensor, shards: readonly tf.Tensor[]) => {
    const logits = forward(h, shards);
    const V = logits.shape[1] as number;
    const lse = tf.logSumExp(logits, 1);
    const picked = tf.sum(tf.mul(logits, tf.oneHot(y as tf.Tensor1D, V)), 1);
    const ce = tf.sub(lse, picked);
    // keras' SparseCategoricalAccuracy: argmax (first maximum) equals the target
    const hit = tf.cast(tf.equal(tf.argMax(logits, 1), y), 'float32');
    return { logits, ce, value: tf.stack([tf.sum(tf.mul(w, ce)), tf.sum(tf.mul(w, hit))]) };
  };
  const backward = (dy: tf.Tensor, h: tf.Tensor, y: tf.Tensor, w: tf.Tensor, shards: readonly tf.Tensor[]) => {
    const dLoss = tf.slice(dy, [0], [1]);
    // the logit gradient in its own scope, so that only it outlives the recomputed chunk
    const [g, dw] = tf.tidy(() => {
      const { logits, ce } = op(h, y, w, shards);
      const V = logits.shape[1] as number;
      // d ce / d logits = softmax - onehot(y), times the weight and the upstream gradient
      let gl = tf.mul(tf.sub(tf.softmax(logits), tf.oneHot(y as tf.Tensor1D, V)), tf.mul(tf.expandDims(w, 1), dLoss));
      // through the soft cap: d(cap tanh(z/cap))/dz = 1 - tanh^2 = 1 - (logit / cap)^2
      if (cap !== null) gl = tf.mul(gl, tf.sub(1, tf.square(tf.div(logits, cap))));
      return [gl, tf.mul(ce, dLoss)];
    });
    let offset = 0;
    let dh: tf.Tensor | undefined;
    const dShards: tf.Tensor[] = [];
    for (const s of shards) {
      const rows = s.shape[0];
      const gi = d.named(shards.length === 1 ? g : tf.slice(g, [0, offset], [-1, rows]), ['n', 'vocab'] as const);
      const part = d.dot(gi, axesOf(s), 'vocab').tensor; // [n, E]
      dh = dh ? tf.add(dh, part) : part;
      if (tableGrad) dShards.push(d.dot(gi, d.named(h, ['n', 'embed'] as const), 'n').tensor); // [V_i, E]
      offset += rows;
    }
    return { dh: dh!, dy: tf.zerosLike(y), dw, dShards };
  };
  const tableTensors = table.map((s) => s.tensor);
  if (tableGrad) {
    return tf.customGrad(((...args: unknown[]) => {
      const save = args.pop() as tf.GradSaveFunc;
      const [h, y, w, ...shards] = args as tf.Tensor[];
      save([h, y, w, ...shards]);
      return {
        value: op(h, y, w, shards).value,
        gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
          const [sh, sy, sw, ...ss] = saved;
          const r = backward(dy, sh, sy, sw, ss);
          return [r.dh, r.dy, r.dw, ...r.dShards];
        },
      };
    }) as unknown as Parameters<typeof tf.customGrad>[0]) as unknown as (...xs: tf.Tensor[]) => tf.Tensor;
  }
  const op3 = tf.customGrad(((h: tf.Tensor, y: tf.Tensor, w: tf.Tensor, save: tf.GradSaveFunc) => {
    save([h, y, w]);
    return {
      value: op(h, y, w, tableTensors).value,
      gradFunc: (dy: tf.Tensor, [sh, sy, sw]: tf.Tensor[]) => {
        const r = backward(dy, sh, sy, sw, tableTensors);
        return [r.dh, r.dy, r.dw];
      },
    };
  }) as unknown as Parameters<typeof tf.customGrad>[0]) as unknown as (...xs: tf.Tensor[]) => tf.Tensor;
  return (h: tf.Tensor, y: tf.Tensor, w: tf.Tensor) => op3(h, y, w);
}

/**
 * The loss, weighted accuracy counts and weight of a batch (keras_hub's default compile), from the text
 * positions of the backbone output. Differentiable with respect to the params (`valueAndGradTrainable`).
 */
export function causalLmLoss(params: PaliGemmaParams, batch: TrainBatch, options: LossOptions = {}): LossReport {
  const c = params.config;
  const [B, L] = batch.y.shape;
  const check = (name: string, x: Named) => {
    if (x.shape.length !== 2 || x.shape[0] !== B || x.shape[1] !== L) {
      throw new Error(`causalLmLoss: ${name} has shape [${x.shape.join(', ')}], expected [${B}, ${L}] (the shape of y)`);
    }
  };
  check('token_ids', batch.token_ids);
  check('sample_weight', batch.sample_weight);
  const chunk = options.chunk ?? defaultLossChunk(c.vocabulary_size);
  if (!Number.isInteger(chunk) || chunk < 1) throw new Error(`causalLmLoss: chunk must be a positive integer, got ${chunk}`);
  let picked = weightedPositions(batch.sample_weight.tensor, options.weights);
  // no weighted position: one zero-weight position keeps the loss (0) a function of the params
  if (picked.length === 0) picked = [0];
  const tableGrad = options.tableGrad ?? params.token_embedding.some((s) => isDifferentiated(s.tensor) ?? true);
  return tf.tidy(() => {
    const seq = backbone(params, batch, { compat: options.compat, ...(options.key ? { train: { key: options.key } } : {}) });
    const n = imageSequenceLength(c);
    const text = d.slice(seq, 'seq', n, seq.size('seq') - n); // [batch, L, embed]
    const flat = d.named(tf.reshape(text.tensor, [B * L, c.hidden_dim]), ['pos', 'embed'] as const);
    const y = tf.reshape(tf.cast(batch.y.tensor, 'int32'), [B * L]);
    const w = tf.reshape(tf.cast(batch.sample_weight.tensor, 'float32'), [B * L]);
    const f = chunkOp(c.final_logit_soft_cap, params.token_embedding, tableGrad);
    const table = params.token_embedding.map((s) => s.tensor);
    let total: tf.Tensor = tf.zeros([2]);
    for (let i = 0; i < picked.length; i += chunk) {
      const ids = tf.tensor1d(picked.slice(i, i + chunk), 'int32');
      // d.embed's gather has a scatter-add gradient (tfjs' own gather gradient needs UnsortedSegmentSum, absent on wasm)
      const h = d.embed(flat, d.named(ids, ['n'] as const)).tensor; // [n, embed]
      const out = tableGrad ? f(h, tf.gather(y, ids), tf.gather(w, ids), ...table) : f(h, tf.gather(y, ids), tf.gather(w, ids));
      total = tf.add(total, out);
    }
    return {
      loss: tf.div(tf.reshape(tf.slice(total, [0], [1]), []), B * L) as tf.Scalar,
      correct: tf.reshape(tf.slice(total, [1], [1]), []) as tf.Scalar,
      weight: tf.sum(w) as tf.Scalar,
    };
  });
}
