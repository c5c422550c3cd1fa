/**
 * A compiled training step: the value and gradient of keras_hub's causal-LM loss (traced through tfjs' own
 * gradient functions) and the AdamW update, in one onnxruntime session run per step.
 *
 * Same math as step.ts `trainStep` / `adamwUpdate`. What changes from step to step is passed as tensors so
 * one graph serves every step: the bias-corrected learning rate lr_t = lr sqrt(1 - b2^t) / (1 - b1^t) and
 * the decoupled decay factor lr * wd are scalar tensors fed per call (as numbers they would be constants of
 * the first trace). Dropout (a `key`) is not compiled: its masks are drawn on the host per key.
 */
import { tf } from '../../dsl/tf';
import * as d from '../../dsl';
import type { Named } from '../../dsl';
import type { PaliGemmaParams } from '../../models/paligemma';
import { causalLmLoss, type AdamWConfig, type AdamWState, type TrainBatch } from './step';

interface Scales {
  /** lr_t, the bias-corrected learning rate of this step, a float32 scalar. */
  readonly lr: tf.Tensor;
  /** lr * weight decay, a float32 scalar. */
  readonly decay: tf.Tensor;
}

function stepPure(params: PaliGemmaParams, m: PaliGemmaParams, v: PaliGemmaParams, batch: TrainBatch, s: Scales, h: { b1: number; b2: number; eps: number; wd: boolean }) {
  const { value, grads } = d.valueAndGrad((p: PaliGemmaParams) => causalLmLoss(p, batch), params);
  const g = new Map(d.leaves(grads));
  const ms = new Map(d.leaves(m));
  const vs = new Map(d.leaves(v));
  const newM = new Map<string, Named>();
  const newV = new Map<string, Named>();
  const next = d.mapTree(params, (p, path) => {
    const gi = g.get(path)!.tensor;
    const mi = tf.add(tf.mul(ms.get(path)!.tensor, h.b1), tf.mul(gi, 1 - h.b1));
    const vi = tf.add(tf.mul(vs.get(path)!.tensor, h.b2), tf.mul(tf.square(gi), 1 - h.b2));
    newM.set(path, d.named(mi, p.axes));
    newV.set(path, d.named(vi, p.axes));
    let out = tf.sub(p.tensor, tf.mul(tf.div(mi, tf.add(tf.sqrt(vi), h.eps)), s.lr));
    if (h.wd) out = tf.sub(out, tf.mul(p.tensor, s.decay));
    return d.named(out, p.axes);
  });
  return {
    loss: value,
    params: next,
    m: d.mapTree(params, (_, path) => newM.get(path)!),
    v: d.mapTree(params, (_, path) => newV.get(path)!),
  };
}

const stepJit = d.jit(stepPure, { name: 'train_step' });

/** The session behind compiled training (traces, stats). */
export const compiledTraining = { step: stepJit };

/** step.ts `trainStep` (without dropout), compiled: same arguments and result; old params and state are the caller's. */
export function trainStepCompiled(params: PaliGemmaParams, state: AdamWState, batch: TrainBatch, c: AdamWConfig): { loss: tf.Scalar; params: PaliGemmaParams; state: AdamWState } {
  const b1 = c.beta1 ?? 0.9;
  const b2 = c.beta2 ?? 0.999;
  const wd = c.weightDecay ?? 0;
  const step = state.step + 1;
  const scales: Scales = {
    lr: tf.scalar((c.learningRate * Math.sqrt(1 - b2 ** step)) / (1 - b1 ** step)),
    decay: tf.scalar(c.learningRate * wd),
  };
  try {
    const out = stepJit(params, state.m, state.v, batch, scales, { b1, b2, eps: c.epsilon ?? 1e-7, wd: wd !== 0 });
    return { loss: out.loss as tf.Scalar, params: out.params, state: { step, m: out.m, v: out.v } };
  } finally {
    tf.dispose([scales.lr, scales.decay]);
  }
}
