/**
 * One training step, from the parts: keras_hub's loss (loss.ts) differentiated with respect to the trainable
 * leaves only (select.ts), then an optimizer update (optim.ts). The trainer (`fit`) calls this in a loop.
 *
 *   report, grads = valueAndGradTrainable(causalLmLoss(params, batch), params, trainable)
 *   trainable', state' = optimizer.update(trainable, grads, state, learningRate)
 *
 * The loss reported is that of the params BEFORE the update (keras' train_on_batch logs the same).
 */
import { tf } from '../../dsl/tf';
import * as d from '../../dsl';
import type { PaliGemmaParams } from '../../models/paligemma';
import type { LossReport, Optimizer, OptimizerState, TrainBatch } from './api';
import { causalLmLoss, type LossOptions } from './loss';
import { valueAndGradTrainable, type Trainable } from './select';

export interface StepOptions extends LossOptions {
  readonly optimizer: Optimizer;
  readonly learningRate: number;
}

/**
 * Loss and gradients at `trainable` (the params' trainable leaves by path), then one optimizer update.
 * Returns the new trainable leaves and state; the old ones, the report and the rest of the params stay the
 * caller's (dispose the old leaves once nothing else holds them).
 */
/**
 * keras_hub's loss of `params` with `trainable`'s leaves in place, its report and the gradients of those
 * leaves (eager; the caller disposes report and gradients). Whether the tied embedding's gradient is computed
 * follows from `trainable` (loss.ts `tableGrad`).
 */
export function lossAndGrads(params: PaliGemmaParams, trainable: Trainable, batch: TrainBatch, o: LossOptions = {}): { report: LossReport; grads: Trainable } {
  const { grads, report, value } = valueAndGradTrainable((p: PaliGemmaParams) => causalLmLoss(p, batch, o), params, trainable);
  // causalLmLoss returns a report, so valueAndGradTrainable passes it on; `value` is its loss
  return { report: report ?? { loss: value, correct: tf.scalar(0), weight: tf.scalar(0) }, grads };
}

export function trainStep(
  params: PaliGemmaParams,
  trainable: Trainable,
  state: OptimizerState,
  batch: TrainBatch,
  o: StepOptions,
): { report: LossReport; trainable: Trainable; state: OptimizerState } {
  return updateWith(lossAndGrads(params, trainable, batch, o), trainable, state, o);
}

/** The optimizer update from a loss-and-gradients result (eager or compiled); the gradients are disposed. */
export function updateWith(
  { report, grads }: { report: LossReport; grads: Trainable },
  trainable: Trainable,
  state: OptimizerState,
  o: Pick<StepOptions, 'optimizer' | 'learningRate'>,
): { report: LossReport; trainable: Trainable; state: OptimizerState } {
  try {
    const next = o.optimizer.update(trainable, grads, state, o.learningRate);
    return { report, trainable: next.params as Trainable, state: next.state };
  } finally {
    d.disposeTree(grads);
  }
}
