/**
 * Compiled training (src/train/compiled.ts): loss, gradients and the optimizer update in one session run
 * per step, equal to the eager trainStep over several steps (full, LoRA; Adam, AdamW, SGD; an optimizer
 * without a split), with one trace for every step; the separate gradient and update graphs too.
 */
import * as path from 'node:path';
import test, { type ExecutionContext } from 'ava';
import { tf } from '../../dsl/tf';
import * as d from '../../dsl';
import { fixtureInputs, readManifest } from '../../src/cli/fixture';
import { loadPreset } from '../../src/runtime/preset';
import { trainStep } from '../../src/train/step';
import type { Optimizer, TrainBatch } from '../../src/train/api';
import type { Tree } from '../../dsl';
import { adam, adamw, disposeState, sgd } from '../../src/train/optim';
import { selectTrainable, trainableOf } from '../../src/train/select';
import { enableLora, loraTrainable } from '../../src/train/lora';
import { compiledTraining, lossAndGradsCompiled, trainStepCompiled, updateCompiled } from '../../src/train/compiled';
import type { PaliGemmaParams } from '../../models/paligemma';
import { assertClose } from '../helpers/numeric';

const dir = path.join('spec/fixtures/keras_hub', 'pg1_basic');

function batchOf(): TrainBatch {
  const inputs = fixtureInputs(dir, readManifest(dir));
  return d.scoped(() => {
    const ids = inputs.token_ids.tensor;
    const y = tf.concat([tf.slice(ids, [0, 1], [-1, -1]), tf.zeros([ids.shape[0], 1], 'int32')], 1);
    return { ...inputs, y: d.named(y, ['batch', 'seq'] as const), sample_weight: d.named(tf.cast(inputs.padding_mask.tensor, 'float32'), ['batch', 'seq'] as const) };
  });
}

/** Every leaf of two same-structure pytrees within tolerance; the largest |diff|. */
async function closeTrees(t: ExecutionContext, a: Tree, b: Tree, what: string): Promise<number> {
  const lb = new Map(d.leaves(b));
  let worst = 0;
  for (const [k, x] of d.leaves(a)) worst = Math.max(worst, assertClose(t, await x.tensor.data(), await lb.get(k)!.tensor.data(), 1e-4, 1e-3, `${what} ${k}`));
  return worst;
}

type Step = typeof trainStep;

/** `steps` steps of `step` from the same params; the final trainable leaves and state (the caller disposes). */
async function run(step: Step, params: PaliGemmaParams, paths: string[], optimizer: Optimizer, batch: TrainBatch, steps: number) {
  let trainable = trainableOf(params, paths);
  let state = optimizer.init(trainable);
  const losses: number[] = [];
  for (let i = 0; i < steps; i++) {
    const o = step(params, trainable, state, batch, { optimizer, learningRate: 1e-2 });
    losses.push((await o.report.loss.data())[0]);
    tf.dispose([o.report.loss, o.report.correct, o.report.weight]);
    if (i > 0) d.disposeTree(trainable);
    disposeState(state);
    [trainable, state] = [o.trainable, o.state];
  }
  return { trainable, state, losses };
}

const cases: Array<{ name: string; optimizer: () => Optimizer; lora?: boolean }> = [
  { name: 'AdamW over every leaf', optimizer: () => adamw({ weightDecay: 0.01, excludeFromWeightDecay: ['bias', 'gamma'] }) },
  { name: 'SGD with Nesterov momentum over LoRA adapters', optimizer: () => sgd({ momentum: 0.9, nesterov: true }), lora: true },
  // an optimizer of the user's without a split: its update runs eagerly after the compiled gradients
  { name: 'a custom optimizer without a split (eager update)', optimizer: () => ({ ...adam(), name: 'custom', split: undefined }) },
];

for (const c of cases) {
  test.serial(`compiled steps = eager trainStep: ${c.name} (losses, params, slots over 3 steps), one trace, no leaks`, async (t) => {
    const loaded = loadPreset(path.join(dir, 'preset'));
    const base = c.lora ? enableLora(loaded, { rank: 2, key: d.key(3) }) : loaded;
    const paths = c.lora ? loraTrainable(base) : selectTrainable(base);
    const batch = batchOf();
    const optimizer = c.optimizer();
    const before = tf.memory().numTensors;
    const eager = await run(trainStep, base, paths, optimizer, batch, 3);
    const traces = compiledTraining.lossAndGrads.traces;
    const compiled = await run(trainStepCompiled, base, paths, optimizer, batch, 3);
    assertClose(t, compiled.losses, eager.losses, 1e-4, 1e-3, 'losses');
    let worst = await closeTrees(t, compiled.trainable, eager.trainable, 'params');
    for (const slot of Object.keys(eager.state.slots)) worst = Math.max(worst, await closeTrees(t, compiled.state.slots[slot], eager.state.slots[slot], slot));
    t.is(compiled.state.step, 3);
    t.log(`after 3 steps: params and slots max |diff| ${worst.toExponential(2)}`);
    if (optimizer.split) t.is(compiledTraining.step(optimizer)!.traces, 1, 'one graph (loss, gradients, update) for every step');
    else t.is(compiledTraining.lossAndGrads.traces - traces, 1, 'one gradient graph for every step');
    for (const r of [eager, compiled]) {
      d.disposeTree(r.trainable);
      disposeState(r.state);
    }
    t.is(tf.memory().numTensors, before, 'memory-neutral');
    tf.dispose(d.collectTensors(batch));
    d.disposeTree(base);
  });
}

test.serial('compiled: lossAndGradsCompiled then updateCompiled = trainStep (the accumulation / clipping path)', async (t) => {
  const base = loadPreset(path.join(dir, 'preset'));
  const paths = selectTrainable(base, { train: ['layers/**'] });
  const batch = batchOf();
  const optimizer = adam();
  const trainable = trainableOf(base, paths);
  const state = optimizer.init(trainable);
  const e = trainStep(base, trainable, state, batch, { optimizer, learningRate: 1e-3 });
  const { report, grads } = lossAndGradsCompiled(base, trainable, batch);
  const u = updateCompiled(optimizer, trainable, grads, state, 1e-3);
  assertClose(t, await report.loss.data(), await e.report.loss.data(), 1e-4, 1e-3, 'loss');
  t.deepEqual(await report.weight.data(), await e.report.weight.data(), 'weighted positions');
  await closeTrees(t, u.params, e.trainable, 'params');
  t.is(compiledTraining.update(optimizer)!.traces, 1);
  for (const x of [e.report, report]) tf.dispose([x.loss, x.correct, x.weight]);
  [grads, e.trainable, u.params].forEach((g) => d.disposeTree(g));
  [state, e.state, u.state].forEach(disposeState);
  tf.dispose(d.collectTensors(batch));
  d.disposeTree(base);
});
