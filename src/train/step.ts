/**
 * Fine-tuning: keras_hub's PaliGemmaCausalLM loss and a functional AdamW over params pytrees.
 *
 *   loss = sum_{b,t} sample_weight[b,t] * -log softmax(logits[b,t])[y[b,t]] / (B * T)
 *
 * (keras' SparseCategoricalCrossentropy with sample_weight = the response mask shifted by one, reduced by
 * "sum_over_batch_size": the weighted sum over every position divided by B * T, not by the number of
 * weighted positions). The same model code as inference, with dropout on when a key is given.
 */
import { tf } from '../../dsl/tf';
import * as d from '../../dsl';
import type { Key, Named } from '../../dsl';
import { backbone, logits, type BackboneInputs, type PaliGemmaParams } from '../../models/paligemma';

export interface TrainBatch extends BackboneInputs {
  /** Next-token targets, int32 [batch, seq]. */
  readonly y: Named<readonly ['batch', 'seq']>;
  /** Loss weights, [batch, seq] (1 where the target is a response token). */
  readonly sample_weight: Named<readonly ['batch', 'seq']>;
}

/** keras_hub's causal-LM loss (a scalar tensor). With `key`, dropout is on (training mode). */
export function causalLmLoss(params: PaliGemmaParams, batch: TrainBatch, key?: Key): tf.Scalar {
  return tf.tidy(() => {
    const seq = backbone(params, batch, key ? { train: { key } } : {});
    const l = d.align(logits(params, seq), ['batch', 'seq', 'vocab'] as const).tensor;
    const logp = tf.logSoftmax(l);
    const picked = tf.sum(tf.mul(logp, tf.oneHot(tf.cast(batch.y.tensor, 'int32') as tf.Tensor1D, l.shape[2] as number)), -1); // [batch, seq]
    const w = tf.cast(batch.sample_weight.tensor, 'float32');
    return tf.div(tf.neg(tf.sum(tf.mul(picked, w))), w.size) as tf.Scalar;
  });
}

export interface AdamWConfig {
  readonly learningRate: number;
  readonly beta1?: number;
  readonly beta2?: number;
  readonly epsilon?: number;
  /** Decoupled weight decay (AdamW); 0 gives Adam. */
  readonly weightDecay?: number;
}

export interface AdamWState {
  readonly step: number;
  readonly m: PaliGemmaParams;
  readonly v: PaliGemmaParams;
}

export function adamwInit(params: PaliGemmaParams): AdamWState {
  return { step: 0, m: d.mapTree(params, (x) => d.named(tf.zerosLike(x.tensor), x.axes)), v: d.mapTree(params, (x) => d.named(tf.zerosLike(x.tensor), x.axes)) };
}

/**
 * One AdamW step (keras' Adam with bias correction; decay applied as p -= lr * wd * p). Returns new params
 * and state; the caller owns both and disposes the old ones (`disposeTree`) when done with them.
 */
export function adamwUpdate(params: PaliGemmaParams, grads: PaliGemmaParams, state: AdamWState, c: AdamWConfig): { params: PaliGemmaParams; state: AdamWState } {
  const b1 = c.beta1 ?? 0.9;
  const b2 = c.beta2 ?? 0.999;
  const eps = c.epsilon ?? 1e-7;
  const wd = c.weightDecay ?? 0;
  const step = state.step + 1;
  const lr = (c.learningRate * Math.sqrt(1 - b2 ** step)) / (1 - b1 ** step);
  const g = new Map(d.leaves(grads));
  const m = new Map(d.leaves(state.m));
  const v = new Map(d.leaves(state.v));
  const newM = new Map<string, Named>();
  const newV = new Map<string, Named>();
  const next = d.mapTree(params, (p, path) =>
    d.scoped(() => {
      const gi = g.get(path)!.tensor;
      const mi = tf.add(tf.mul(m.get(path)!.tensor, b1), tf.mul(gi, 1 - b1));
      const vi = tf.add(tf.mul(v.get(path)!.tensor, b2), tf.mul(tf.square(gi), 1 - b2));
      newM.set(path, d.named(tf.keep(mi), p.axes));
      newV.set(path, d.named(tf.keep(vi), p.axes));
      let out = tf.sub(p.tensor, tf.mul(tf.div(mi, tf.add(tf.sqrt(vi), eps)), lr));
      if (wd) out = tf.sub(out, tf.mul(p.tensor, c.learningRate * wd));
      return d.named(out, p.axes);
    }),
  );
  return {
    params: next,
    state: { step, m: d.mapTree(params, (_, path) => newM.get(path)!), v: d.mapTree(params, (_, path) => newV.get(path)!) },
  };
}

/** loss, then one AdamW update. The old params and state are left to the caller. */
export function trainStep(
  params: PaliGemmaParams,
  state: AdamWState,
  batch: TrainBatch,
  c: AdamWConfig,
  key?: Key,
): { loss: tf.Scalar; params: PaliGemmaParams; state: AdamWState } {
  const { value, grads } = d.valueAndGrad((p: PaliGemmaParams) => causalLmLoss(p, batch, key), params);
  const updated = adamwUpdate(params, grads, state, c);
  d.disposeTree(grads);
  return { loss: value, ...updated };
}
