/**
 * A compiled training step: the value and gradient of keras_hub's causal-LM loss (traced through tfjs' own
 * gradient functions) and the AdamW update, in one onnxruntime session run per step.
 *
 * Same math as `trainStep` with `adamw` over every leaf (full fine-tuning; keras' decay w -= lr * wd * w is
 * applied with the Adam step here, on the same old w, which is the same update). What changes from step to step is passed as tensors so
 * one graph serves every step: the bias-corrected learning rate lr_t = lr sqrt(1 - b2^t) / (1 - b1^t) and
 * the decoupled decay factor lr * wd are scalar tensors fed per call (as numbers they would be constants of
 * the first trace). Dropout (a `key`) is not compiled: its masks are drawn on the host per key.
 */
import { tf } from '../../dsl/tf';
import * as d from '../../dsl';
import type { Named } from '../../dsl';
import type { PaliGemmaParams } from '../../models/paligemma';
import { backbone, logits } from '../../models/paligemma';
import type { LossReport, TrainBatch } from './api';
import { causalLmLoss, type LossOptions } from './loss';
import { valueAndGradTrainable, withLeaves, type Trainable } from './select';

export interface CompiledAdamWConfig {
  readonly learningRate: number;
  readonly beta1?: number;
  readonly beta2?: number;
  readonly epsilon?: number;
  /** keras' AdamW weight_decay over every leaf; 0 gives Adam. */
  readonly weightDecay?: number;
}

/** Adam's moments for every leaf of the params, and the steps taken. */
export interface CompiledAdamWState {
  readonly step: number;
  readonly m: PaliGemmaParams;
  readonly v: PaliGemmaParams;
}

export function compiledAdamWInit(params: PaliGemmaParams): CompiledAdamWState {
  const zeros = () => d.mapTree(params, (x) => d.named(tf.zerosLike(x.tensor), x.axes));
  return { step: 0, m: zeros(), v: zeros() };
}

/**
 * keras_hub's loss (sum of weighted cross-entropy / (B * L)) over full logits. A graph is fixed, so it
 * cannot pick the weighted positions per batch as loss.ts does; onnxruntime frees the logits as it goes.
 */
function fullLogitsLoss(params: PaliGemmaParams, batch: TrainBatch): tf.Scalar {
  return tf.tidy(() => {
    const l = d.align(logits(params, backbone(params, batch)), ['batch', 'seq', 'vocab'] as const).tensor;
    const picked = tf.sum(tf.mul(tf.logSoftmax(l), tf.oneHot(tf.cast(batch.y.tensor, 'int32') as tf.Tensor1D, l.shape[2] as number)), -1); // [batch, seq]
    const w = tf.cast(batch.sample_weight.tensor, 'float32');
    return tf.div(tf.neg(tf.sum(tf.mul(picked, w))), w.size) as tf.Scalar;
  });
}

interface Scales {
  /** lr_t, the bias-corrected learning rate of this step, a float32 scalar. */
  readonly lr: tf.Tensor;
  /** lr * weight decay, a float32 scalar. */
  readonly decay: tf.Tensor;
}

function stepPure(params: PaliGemmaParams, m: PaliGemmaParams, v: PaliGemmaParams, batch: TrainBatch, s: Scales, h: { b1: number; b2: number; eps: number; wd: boolean }) {
  const { value, grads } = d.valueAndGrad((p: PaliGemmaParams) => fullLogitsLoss(p, batch), params);
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

/** One full fine-tuning AdamW step (without dropout), compiled; old params and state are the caller's. */
export function trainStepCompiled(params: PaliGemmaParams, state: CompiledAdamWState, batch: TrainBatch, c: CompiledAdamWConfig): { loss: tf.Scalar; params: PaliGemmaParams; state: CompiledAdamWState } {
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

// ---------------------------------------------------------------------------------------------------------
// The loss and its gradient, compiled: what `fit` and `evaluate` run on the onnx backend. The optimizer
// stays eager (any `Optimizer`, on tfjs' cpu backend, elementwise over the trainable leaves only).
// ---------------------------------------------------------------------------------------------------------

/** The static part of the loss options (a key is not compiled: dropout runs eagerly). */
export type CompiledLossOptions = Pick<LossOptions, 'chunk' | 'compat' | 'tableGrad'>;

// In a trace the sample weights cannot be read, so every text position is unembedded (loss.ts): the same
// sums (a zero weight adds 0), and one graph per batch shape whatever the weights.
const lossAndGradsJit = d.jit(
  (params: PaliGemmaParams, trainable: Trainable, batch: TrainBatch, o: CompiledLossOptions) => {
    const { value, grads, report } = valueAndGradTrainable((p: PaliGemmaParams) => causalLmLoss(p, batch, o), withLeaves(params, trainable), trainable);
    return { loss: value, correct: report!.correct, weight: report!.weight, grads };
  },
  { name: 'loss_and_grads' },
);

const lossJit = d.jit((params: PaliGemmaParams, batch: TrainBatch, o: CompiledLossOptions) => causalLmLoss(params, batch, { ...o, tableGrad: false }), { name: 'loss' });

/**
 * keras_hub's loss, its accuracy counts and the gradient with respect to the `trainable` leaves (paths of
 * `params`), in one session run: `valueAndGradTrainable(causalLmLoss)` compiled. The caller disposes the
 * report and the gradients.
 */
export function lossAndGradsCompiled(params: PaliGemmaParams, trainable: Trainable, batch: TrainBatch, o: CompiledLossOptions = {}): { report: LossReport; grads: Trainable } {
  const tableGrad = o.tableGrad ?? Object.keys(trainable).some((p) => p.startsWith('token_embedding'));
  const out = lossAndGradsJit(params, trainable, batch, { chunk: o.chunk, compat: o.compat, tableGrad });
  return { report: { loss: out.loss, correct: out.correct, weight: out.weight }, grads: out.grads };
}

/** keras_hub's loss and accuracy counts of a batch (no gradient), compiled. The caller disposes the report. */
export function lossCompiled(params: PaliGemmaParams, batch: TrainBatch, o: CompiledLossOptions = {}): LossReport {
  return lossJit(params, batch, { chunk: o.chunk, compat: o.compat });
}

/** The sessions behind compiled fine-tuning and evaluation (traces, stats). */
export const compiledLoss = { lossAndGrads: lossAndGradsJit, loss: lossJit };
