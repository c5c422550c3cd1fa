/**
 * The contracts between the parts of fine-tuning (src/train/): what a loss, an optimizer and a learning-rate
 * schedule look like to the trainer. All of them are pure functions over params pytrees (`dsl/tree.ts`):
 * params, gradients and optimizer state go in, new ones come out, and the caller owns (and disposes) both.
 */
import type { tf } from '../../dsl/tf';
import type { Key, Named, Tree } from '../../dsl';
import type { BackboneInputs } from '../../models/paligemma';

/** A batch from keras_hub's training preprocessor: model inputs, next-token targets and loss weights. */
export interface TrainBatch extends BackboneInputs {
  /** Next-token targets, int32 [batch, seq]. */
  readonly y: Named<readonly ['batch', 'seq']>;
  /** Loss weights, [batch, seq] (1 where the target is a response token). */
  readonly sample_weight: Named<readonly ['batch', 'seq']>;
}

/** What one loss evaluation reports (all scalars; the caller disposes them). */
export interface LossReport {
  /** keras_hub's loss: weighted cross-entropy summed and divided by B * L. */
  readonly loss: tf.Scalar;
  /** Weighted count of positions whose argmax is the target, and the weighted count of positions. */
  readonly correct: tf.Scalar;
  readonly weight: tf.Scalar;
}

/** A learning rate per optimizer step (step counts from 0). */
export type Schedule = (step: number) => number;

/**
 * A gradient transformation, generic over any params pytree. `update` gets only the trainable leaves'
 * params and grads (same structure); frozen leaves never reach it. State is a pytree of tensors plus
 * plain numbers, so it can be saved with the params' writers and restored bit for bit.
 */
export interface Optimizer<S extends OptimizerState = OptimizerState> {
  readonly name: string;
  init(params: Tree): S;
  update(params: Tree, grads: Tree, state: S, learningRate: number): { readonly params: Tree; readonly state: S };
  /**
   * The same rule split so that it compiles (src/train/compiled.ts): `scalars` are the numbers of this step
   * (learning rate, bias corrections: whatever changes from step to step), computed on the host; `apply` is
   * the tensor math given them as scalar tensors, so one traced graph serves every step. The built-in
   * optimizers have it, and their `update` is `apply` with the scalars as tensors; without it, compiled
   * training runs `update` eagerly.
   */
  readonly split?: OptimizerSplit<S>;
}

export interface OptimizerSplit<S extends OptimizerState = OptimizerState> {
  scalars(state: S, learningRate: number): readonly number[];
  apply(params: Tree, grads: Tree, slots: S['slots'], scalars: readonly tf.Scalar[]): { readonly params: Tree; readonly slots: S['slots'] };
}

export interface OptimizerState {
  /** Optimizer steps taken (keras' `iterations`). */
  readonly step: number;
  /** Slot variables by name (`m`, `v`, `momentum`), each a pytree shaped like the trainable params. */
  readonly slots: { readonly [name: string]: Tree };
}

/** A training run's randomness: one key per step is derived from it, so a resumed run repeats exactly. */
export interface RunKeys {
  readonly dropout: Key;
  readonly shuffle: Key;
}
