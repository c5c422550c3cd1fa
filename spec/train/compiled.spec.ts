/**
 * The compiled training step (src/train/compiled.ts): value, gradient and AdamW update in one session run
 * per step, equal to the eager trainStep over several steps, with one trace for every step.
 */
import * as path from 'node:path';
import test from 'ava';
import { tf } from '../../dsl/tf';
import * as d from '../../dsl';
import { fixtureInputs, readManifest } from '../../src/cli/fixture';
import { loadPreset } from '../../src/runtime/preset';
import { trainStep } from '../../src/train/step';
import type { TrainBatch } from '../../src/train/api';
import { adamw, disposeState } from '../../src/train/optim';
import { selectTrainable, trainableOf } from '../../src/train/select';
import { compiledAdamWInit, compiledTraining, trainStepCompiled, type CompiledAdamWState } from '../../src/train/compiled';
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

const release = (p: PaliGemmaParams, s: CompiledAdamWState) => [p, s.m, s.v].forEach((t) => d.disposeTree(t));

test.serial('compiled AdamW steps = eager trainStep with adamw over every leaf (loss, params, moments), one trace, no leaks', async (t) => {
  const c = { learningRate: 1e-2, weightDecay: 0.01 };
  const base = loadPreset(path.join(dir, 'preset'));
  const optimizer = adamw({ weightDecay: c.weightDecay });
  let te = trainableOf(base, selectTrainable(base));
  let se = optimizer.init(te);
  let pc = loadPreset(path.join(dir, 'preset'));
  let sc = compiledAdamWInit(pc);
  const batch = batchOf();
  const before = tf.memory().numTensors;
  for (let i = 0; i < 3; i++) {
    const e = trainStep(base, te, se, batch, { optimizer, learningRate: c.learningRate });
    const k = trainStepCompiled(pc, sc, batch, c);
    assertClose(t, await k.loss.data(), await e.report.loss.data(), 1e-4, 1e-3, `step ${i} loss`);
    if (i > 0) d.disposeTree(te);
    disposeState(se);
    release(pc, sc);
    tf.dispose([e.report.loss, e.report.correct, e.report.weight, k.loss]);
    [te, se, pc, sc] = [e.trainable, e.state, k.params, k.state];
  }
  // the eager side's first trainable leaves were the base params' own; its later ones are new tensors
  t.is(tf.memory().numTensors, before + d.leaves(te).length, 'a step replaces params and state one for one');
  t.is(sc.step, 3);
  let worst = 0;
  for (const [a, b] of [[pc, te], [sc.m, se.slots.m], [sc.v, se.slots.v]] as const) {
    const lb = new Map(d.leaves(b));
    for (const [k, x] of d.leaves(a)) worst = Math.max(worst, assertClose(t, await x.tensor.data(), await lb.get(k)!.tensor.data(), 1e-4, 1e-3, k));
  }
  t.log(`after 3 steps: params and moments max |diff| ${worst.toExponential(2)}`);
  t.is(compiledTraining.step.traces, 1, 'one graph for every step');
  d.disposeTree(te);
  disposeState(se);
  d.disposeTree(base);
  release(pc, sc);
  tf.dispose(d.collectTensors(batch));
});
