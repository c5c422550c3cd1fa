import * as path from 'node:path';
import { tf } from '../../dsl/tf';
import * as d from '../../dsl';
import { backbone, logits } from '../../models/paligemma';
import { fixtureInputs, readManifest } from '../../src/cli/fixture';
import { loadPreset } from '../../src/runtime/preset';
import { adamwInit, causalLmLoss, trainStep, type TrainBatch } from '../../src/train/step';
import { backendTest } from '../helpers/backends';
import { assertClose } from '../helpers/numeric';

const dir = path.join('spec/fixtures/keras_hub', 'pg1_basic');

/** The fixture's inputs with next-token targets and the response mask as weights. */
function batchOf(): TrainBatch {
  const inputs = fixtureInputs(dir, readManifest(dir));
  return d.scoped(() => {
    const ids = inputs.token_ids.tensor;
    const y = tf.concat([tf.slice(ids, [0, 1], [-1, -1]), tf.zeros([ids.shape[0], 1], 'int32')], 1);
    // weight every real position (row 0 has no response): a non-trivial loss either way
    return { ...inputs, y: d.named(y, ['batch', 'seq'] as const), sample_weight: d.named(tf.cast(inputs.padding_mask.tensor, 'float32'), ['batch', 'seq'] as const) };
  });
}

backendTest('causal-LM loss = weighted mean of -log softmax at the targets over B * T', async (t) => {
  const params = loadPreset(path.join(dir, 'preset'));
  const batch = batchOf();
  const loss = (await causalLmLoss(params, batch).data())[0];
  const seq = backbone(params, batch);
  const l = logits(params, seq);
  const [B, T, V] = l.shape;
  const lv = await l.tensor.data();
  const y = await batch.y.tensor.data();
  const w = await batch.sample_weight.tensor.data();
  let sum = 0;
  for (let i = 0; i < B * T; i++) {
    const row = Array.from(lv.slice(i * V, (i + 1) * V));
    const max = Math.max(...row);
    const lse = max + Math.log(row.reduce((a, v) => a + Math.exp(v - max), 0));
    sum += w[i] * (lse - row[y[i]]);
  }
  assertClose(t, [loss], [sum / (B * T)], 1e-5, 1e-5, 'loss');
  tf.dispose([seq.tensor, l.tensor, ...d.collectTensors(batch)]);
  d.disposeTree(params);
});

backendTest('AdamW steps lower the loss on a fixed batch and leak no tensors', async (t) => {
  let params = loadPreset(path.join(dir, 'preset'));
  let state = adamwInit(params);
  const batch = batchOf();
  const losses: number[] = [];
  const before = tf.memory().numTensors;
  for (let i = 0; i < 5; i++) {
    const out = trainStep(params, state, batch, { learningRate: 1e-2, weightDecay: 0.01 });
    losses.push((await out.loss.data())[0]);
    out.loss.dispose();
    d.disposeTree(params);
    d.disposeTree(state.m);
    d.disposeTree(state.v);
    params = out.params;
    state = out.state;
  }
  t.is(tf.memory().numTensors, before, 'a step replaces params and state one for one');
  t.true(losses[4] < losses[0] * 0.9, `loss ${losses.map((l) => l.toFixed(4)).join(' -> ')}`);
  t.true(losses.every((l, i) => i === 0 || l < losses[i - 1]), 'monotone on a fixed batch at this rate');
  d.disposeTree(params);
  d.disposeTree(state.m);
  d.disposeTree(state.v);
  tf.dispose(d.collectTensors(batch));
});
