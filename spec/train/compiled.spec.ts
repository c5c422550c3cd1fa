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
import { adamwInit, trainStep, type AdamWState, type TrainBatch } from '../../src/train/step';
import { compiledTraining, trainStepCompiled } from '../../src/train/compiled';
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

const release = (p: PaliGemmaParams, s: AdamWState) => [p, s.m, s.v].forEach((t) => d.disposeTree(t));

test.serial('compiled AdamW steps = eager trainStep (loss, params, moments), one trace, no leaks', async (t) => {
  const c = { learningRate: 1e-2, weightDecay: 0.01 };
  let pe = loadPreset(path.join(dir, 'preset'));
  let se = adamwInit(pe);
  let pc = loadPreset(path.join(dir, 'preset'));
  let sc = adamwInit(pc);
  const batch = batchOf();
  const before = tf.memory().numTensors;
  for (let i = 0; i < 3; i++) {
    const e = trainStep(pe, se, batch, c);
    const k = trainStepCompiled(pc, sc, batch, c);
    assertClose(t, await k.loss.data(), await e.loss.data(), 1e-4, 1e-3, `step ${i} loss`);
    release(pe, se);
    release(pc, sc);
    tf.dispose([e.loss, k.loss]);
    [pe, se, pc, sc] = [e.params, e.state, k.params, k.state];
  }
  t.is(tf.memory().numTensors, before, 'a compiled step replaces params and state one for one');
  t.is(sc.step, 3);
  let worst = 0;
  for (const [a, b] of [[pc, pe], [sc.m, se.m], [sc.v, se.v]] as const) {
    const la = d.leaves(a);
    const lb = new Map(d.leaves(b));
    for (const [k, x] of la) worst = Math.max(worst, assertClose(t, await x.tensor.data(), await lb.get(k)!.tensor.data(), 1e-4, 1e-3, k));
  }
  t.log(`after 3 steps: params and moments max |diff| ${worst.toExponential(2)}`);
  t.is(compiledTraining.step.traces, 1, 'one graph for every step');
  release(pe, se);
  release(pc, sc);
  tf.dispose(d.collectTensors(batch));
});
