/**
 * Fine-tuning compiled (d.jit onto onnxruntime): what `fit` and `evaluate` run on the onnx backend.
 *
 *   trainStepCompiled      loss + gradients of the trainable leaves + the optimizer update: ONE session run
 *                          per step (trainStep's signature and math)
 *   lossAndGradsCompiled   loss + gradients only (for gradient accumulation and clipping, which happen
 *                          between the micro-batches and the update)
 *   updateCompiled         the optimizer update only
 *   lossCompiled           the loss and its accuracy counts (evaluation)
 *
 * The gradients are traced through tfjs' own gradient functions (and loss.ts's custom chunk gradient). What
 * changes from step to step goes in as tensors so that one graph serves every step: the optimizer's per-step
 * numbers (learning rate, bias corrections) come from its `split` (api.ts) as scalar tensors; an optimizer
 * without one is applied eagerly. In a trace the sample weights cannot be read, so every text position is
 * unembedded (loss.ts): the same sums (a zero weight adds 0), one graph per batch shape whatever the weights.
 * Dropout compiles too: the step's key is a key argument of the graph (d.jit's `keys`), so each call draws
 * the masks on the host from its own key, the same bits as eager dropout, and feeds them in.
 */
import { tf } from '../../dsl/tf';
import * as d from '../../dsl';
import type { Key } from '../../dsl';
import type { Jitted } from '../../dsl/jit';
import type { PaliGemmaParams } from '../../models/paligemma';
import type { LossReport, Optimizer, OptimizerSplit, OptimizerState, TrainBatch } from './api';
import { causalLmLoss, type LossOptions } from './loss';
import type { Trainable } from './select';
import { lossAndGrads, updateWith } from './step';

/** The loss options: numbers and flags (constants of the graph) and the dropout key (an input). */
export type CompiledLossOptions = Pick<LossOptions, 'chunk' | 'compat' | 'tableGrad' | 'key'>;

type StaticLoss = Omit<CompiledLossOptions, 'key'>;
/** Only the loss options a graph depends on (the signature; whatever else the caller's record holds stays out). */
const staticLoss = (o: CompiledLossOptions): StaticLoss => ({ chunk: o.chunk, compat: o.compat, tableGrad: o.tableGrad });

function lossAndGradsPure(params: PaliGemmaParams, trainable: Trainable, batch: TrainBatch, o: StaticLoss, key: Key | undefined) {
  const { report, grads } = lossAndGrads(params, trainable, batch, { ...o, key });
  return { ...report, grads };
}

const lossAndGradsJit = d.jit(lossAndGradsPure, { name: 'loss_and_grads', keys: [4] });
const lossJit = d.jit((params: PaliGemmaParams, batch: TrainBatch, o: StaticLoss) => causalLmLoss(params, batch, { ...o, tableGrad: false }), { name: 'loss' });

// one graph per optimizer (its constants, e.g. betas and which leaves decay, are part of its `apply`)
type UpdateFn = (params: Trainable, grads: Trainable, slots: OptimizerState['slots'], scalars: readonly tf.Scalar[]) => ReturnType<OptimizerSplit['apply']>;
type StepFn = (
  params: PaliGemmaParams,
  trainable: Trainable,
  slots: OptimizerState['slots'],
  batch: TrainBatch,
  scalars: readonly tf.Scalar[],
  o: StaticLoss,
  key: Key | undefined,
) => {
  loss: tf.Scalar;
  correct: tf.Scalar;
  weight: tf.Scalar;
  trainable: Trainable;
  slots: OptimizerState['slots'];
};
const updates = new WeakMap<OptimizerSplit, Jitted<UpdateFn>>();
const steps = new WeakMap<OptimizerSplit, Jitted<StepFn>>();

function updateJit(split: OptimizerSplit): Jitted<UpdateFn> {
  let f = updates.get(split);
  if (!f) updates.set(split, (f = d.jit(((p, g, slots, scalars) => split.apply(p, g, slots, scalars)) as UpdateFn, { name: 'optimizer_update' })));
  return f;
}

function stepJit(split: OptimizerSplit): Jitted<StepFn> {
  let f = steps.get(split);
  if (!f) {
    const step: StepFn = (params, trainable, slots, batch, scalars, o, key) => {
      const { loss, correct, weight, grads } = lossAndGradsPure(params, trainable, batch, o, key);
      const next = split.apply(trainable, grads, slots, scalars);
      return { loss, correct, weight, trainable: next.params as Trainable, slots: next.slots };
    };
    steps.set(split, (f = d.jit(step, { name: 'train_step', keys: [6] })));
  }
  return f;
}

/** The step's scalars as tensors, disposed after `f`. */
function withScalars<T>(split: OptimizerSplit, state: OptimizerState, learningRate: number, f: (scalars: tf.Scalar[]) => T): T {
  if (!Number.isInteger(state.step) || state.step < 0) throw new Error(`compiled training: state.step must be a non-negative integer, got ${state.step}`);
  const scalars = split.scalars(state, learningRate).map((x) => tf.scalar(x));
  try {
    return f(scalars);
  } finally {
    tf.dispose(scalars);
  }
}

export interface CompiledStepOptions extends CompiledLossOptions {
  readonly optimizer: Optimizer;
  readonly learningRate: number;
}

/**
 * `trainStep` compiled: loss and gradients at `trainable` (the params' trainable leaves by path), then the
 * optimizer update, in one session run. Returns the report (of the params before the update), the new
 * trainable leaves and state; the old ones stay the caller's.
 */
export function trainStepCompiled(
  params: PaliGemmaParams,
  trainable: Trainable,
  state: OptimizerState,
  batch: TrainBatch,
  o: CompiledStepOptions,
): { report: LossReport; trainable: Trainable; state: OptimizerState } {
  const split = o.optimizer.split;
  if (!split) return updateWith(lossAndGradsCompiled(params, trainable, batch, o), trainable, state, o);
  const out = withScalars(split, state, o.learningRate, (scalars) => stepJit(split)(params, trainable, state.slots, batch, scalars, staticLoss(o), o.key));
  return { report: { loss: out.loss, correct: out.correct, weight: out.weight }, trainable: out.trainable, state: { step: state.step + 1, slots: out.slots } };
}

/**
 * keras_hub's loss, its accuracy counts and the gradient with respect to the `trainable` leaves (paths of
 * `params`), in one session run: `valueAndGradTrainable(causalLmLoss)` compiled. The caller disposes the
 * report and the gradients.
 */
export function lossAndGradsCompiled(params: PaliGemmaParams, trainable: Trainable, batch: TrainBatch, o: CompiledLossOptions = {}): { report: LossReport; grads: Trainable } {
  const out = lossAndGradsJit(params, trainable, batch, staticLoss(o), o.key);
  return { report: { loss: out.loss, correct: out.correct, weight: out.weight }, grads: out.grads };
}

/** `optimizer.update` compiled (eagerly when the optimizer has no `split`). */
export function updateCompiled(optimizer: Optimizer, trainable: Trainable, grads: Trainable, state: OptimizerState, learningRate: number): { params: Trainable; state: OptimizerState } {
  const split = optimizer.split;
  if (!split) {
    const next = optimizer.update(trainable, grads, state, learningRate);
    return { params: next.params as Trainable, state: next.state };
  }
  const out = withScalars(split, state, learningRate, (scalars) => updateJit(split)(trainable, grads, state.slots, scalars));
  return { params: out.params as Trainable, state: { step: state.step + 1, slots: out.slots } };
}

/** keras_hub's loss and accuracy counts of a batch (no gradient), compiled. The caller disposes the report. */
export function lossCompiled(params: PaliGemmaParams, batch: TrainBatch, o: StaticLoss = {}): LossReport {
  return lossJit(params, batch, staticLoss(o));
}

/** The sessions behind compiled fine-tuning and evaluation, for their trace counts and stats. */
export const compiledTraining = {
  lossAndGrads: lossAndGradsJit,
  loss: lossJit,
  step: (optimizer: Optimizer): Jitted<StepFn> | undefined => (optimizer.split ? steps.get(optimizer.split) : undefined),
  update: (optimizer: Optimizer): Jitted<UpdateFn> | undefined => (optimizer.split ? updates.get(optimizer.split) : undefined),
};
