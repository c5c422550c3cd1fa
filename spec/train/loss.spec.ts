import * as path from 'node:path';
import { tf } from '../../dsl/tf';
import * as d from '../../dsl';
import { backbone, logits, type PaliGemmaParams } from '../../models/paligemma';
import { readBin, readManifest } from '../../src/cli/fixture';
import { trainBatchOf } from '../../src/cli/train_fixture';
import { loadPreset } from '../../src/runtime/preset';
import { causalLmLoss, defaultLossChunk } from '../../src/train/loss';
import { isDifferentiated, selectTrainable, trainableOf, valueAndGradTrainable } from '../../src/train/select';
import { adam } from '../../src/train/optim';
import { trainStep } from '../../src/train/step';
import { backendTest, test } from '../helpers/backends';
import { setBackend, setMaxTensorBytes } from '../../src/runtime/backend';
import { initParams } from '../../checkpoints/init';
import { readPresetConfig } from '../../checkpoints/keras';
import { assertClose } from '../helpers/numeric';

const dir = 'spec/fixtures/train/train_trajectory_full';

/** The reference: every logit materialised, keras' rule written out on the host in float64. */
async function reference(params: PaliGemmaParams, batch: ReturnType<typeof trainBatchOf>) {
  const seq = backbone(params, batch);
  const l = logits(params, seq);
  const [B, T, V] = l.shape;
  const lv = await l.tensor.data();
  const y = await batch.y.tensor.data();
  const w = await batch.sample_weight.tensor.data();
  let sum = 0;
  let correct = 0;
  for (let i = 0; i < B * T; i++) {
    const row = Array.from(lv.slice(i * V, (i + 1) * V));
    const max = Math.max(...row);
    const lse = max + Math.log(row.reduce((a, v) => a + Math.exp(v - max), 0));
    sum += w[i] * (lse - row[y[i]]);
    correct += w[i] * (row.indexOf(max) === y[i] ? 1 : 0);
  }
  tf.dispose([seq.tensor, l.tensor]);
  return { loss: sum / (B * T), correct, weight: Array.from(w).reduce((a, b) => a + b, 0) };
}

backendTest('causalLmLoss = sum(w * ce) / (B * L) over the full vocabulary, accuracy counts, any chunk size', async (t) => {
  const m = readManifest(dir);
  const params = loadPreset(path.join(dir, 'preset'));
  const batch = trainBatchOf(dir, m);
  const ref = await reference(params, batch);
  // keras' own loss of this batch at the initial weights (the fixture's first logged loss)
  assertClose(t, [ref.loss], [(readBin(dir, m.outputs.losses) as Float32Array)[0]], 1e-5, 0, 'reference vs keras');
  for (const chunk of [1, 3, 1000]) {
    const before = tf.memory().numTensors;
    const r = causalLmLoss(params, batch, { chunk });
    t.is(tf.memory().numTensors - before, 3, 'returns three scalars, leaks nothing');
    assertClose(t, [(await r.loss.data())[0]], [ref.loss], 1e-6, 1e-6, `loss, chunk ${chunk}`);
    t.is((await r.correct.data())[0], ref.correct, 'weighted correct count');
    t.is((await r.weight.data())[0], ref.weight, 'weight = sum(sample_weight)');
    tf.dispose([r.loss, r.correct, r.weight]);
  }
  tf.dispose(d.collectTensors(batch));
  d.disposeTree(params);
});

backendTest('causalLmLoss gradients: chunked custom gradient equals autograd through the full logits', async (t) => {
  const m = readManifest(dir);
  const params = loadPreset(path.join(dir, 'preset'));
  const batch = trainBatchOf(dir, m);
  const trainable = trainableOf(params, selectTrainable(params, { train: ['token_embedding/*', 'final_norm/**', 'layers/1/**'] }));
  const full = (p: PaliGemmaParams) =>
    tf.tidy(() => {
      const l = d.align(logits(p, backbone(p, batch)), ['batch', 'seq', 'vocab'] as const).tensor;
      const picked = tf.sum(tf.mul(tf.logSoftmax(l), tf.oneHot(tf.cast(batch.y.tensor, 'int32') as tf.Tensor2D, l.shape[2] as number)), -1);
      return tf.div(tf.neg(tf.sum(tf.mul(picked, batch.sample_weight.tensor))), batch.y.tensor.size) as tf.Scalar;
    });
  const want = valueAndGradTrainable(full, params, trainable);
  const before = tf.memory().numTensors;
  const got = valueAndGradTrainable((p: PaliGemmaParams) => causalLmLoss(p, batch, { chunk: 2 }), params, trainable);
  t.is(tf.memory().numTensors - before, 3 + Object.keys(trainable).length, 'value, correct, weight and one gradient per trainable leaf');
  assertClose(t, await got.value.data(), await want.value.data(), 1e-6, 1e-6, 'loss');
  for (const [p, g] of Object.entries(want.grads)) assertClose(t, await got.grads[p].tensor.data(), await g.tensor.data(), 1e-6, 1e-4, `grad ${p}`);
  t.truthy(got.report, 'a LossReport loss gives the report');
  tf.dispose([want.value, got.value, got.report!.correct, got.report!.weight]);
  d.disposeTree(want.grads);
  d.disposeTree(got.grads);
  tf.dispose(d.collectTensors(batch));
  d.disposeTree(params);
});

test('default loss chunk bounds every vocabulary-wide tensor to 2^24 floats', (t) => {
  t.is(defaultLossChunk(257152), 65);
  t.is(defaultLossChunk(48), 349525);
  t.is(defaultLossChunk(2 ** 30), 1);
});

backendTest('trainStep: Adam steps lower the loss on a fixed batch and leak no tensors', async (t) => {
  const m = readManifest(dir);
  const params = loadPreset(path.join(dir, 'preset'));
  const batch = trainBatchOf(dir, m);
  const optimizer = adam();
  let trainable = trainableOf(params, selectTrainable(params));
  const initial = trainable;
  let state = optimizer.init(trainable);
  const losses: number[] = [];
  const before = tf.memory().numTensors;
  for (let i = 0; i < 4; i++) {
    const out = trainStep(params, trainable, state, batch, { optimizer, learningRate: 1e-2 });
    losses.push((await out.report.loss.data())[0]);
    tf.dispose([out.report.loss, out.report.correct, out.report.weight]);
    if (trainable !== initial) d.disposeTree(trainable);
    for (const s of Object.values(state.slots)) d.disposeTree(s);
    trainable = out.trainable;
    state = out.state;
  }
  t.is(tf.memory().numTensors - before, Object.keys(trainable).length, 'a step replaces params and state one for one (plus the untouched initial leaves)');
  t.true(losses.every((l, i) => i === 0 || l < losses[i - 1]), `loss ${losses.map((l) => l.toFixed(4)).join(' -> ')}`);
  t.is(state.step, 4);
  d.disposeTree(trainable);
  for (const s of Object.values(state.slots)) d.disposeTree(s);
  tf.dispose(d.collectTensors(batch));
  d.disposeTree(params);
});

backendTest('causalLmLoss over a row-sharded embedding: the same loss and gradients (shards get theirs)', async (t) => {
  const m = readManifest(dir);
  const one = loadPreset(path.join(dir, 'preset'));
  setMaxTensorBytes(640); // 10 rows of 16 floats per shard: 4 shards of the 40-token table
  let sharded: PaliGemmaParams;
  try {
    sharded = loadPreset(path.join(dir, 'preset'));
  } finally {
    setMaxTensorBytes();
  }
  t.is(sharded.token_embedding.length, 4);
  const batch = trainBatchOf(dir, m);
  const run = async (p: PaliGemmaParams) => {
    const g = valueAndGradTrainable((q: PaliGemmaParams) => causalLmLoss(q, batch, { chunk: 4 }).loss, p, trainableOf(p, selectTrainable(p, { train: ['token_embedding/*', 'final_norm/*'] })));
    const table = tf.concat(Object.entries(g.grads).filter(([k]) => k.startsWith('token_embedding/')).map(([, x]) => x.tensor), 0);
    const out = { loss: (await g.value.data())[0], table: await table.data(), norm: await g.grads['final_norm/scale'].tensor.data() };
    tf.dispose([g.value, table]);
    d.disposeTree(g.grads);
    return out;
  };
  const a = await run(one);
  const b = await run(sharded);
  assertClose(t, [b.loss], [a.loss], 1e-6, 0, 'loss');
  assertClose(t, b.table, a.table, 1e-6, 1e-5, 'embedding gradient');
  assertClose(t, b.norm, a.norm, 1e-6, 1e-5, 'final norm gradient');
  tf.dispose(d.collectTensors(batch));
  d.disposeTree(one);
  d.disposeTree(sharded);
});

backendTest('a frozen embedding gets no gradient work (isDifferentiated), and the trainable gradients are the same', async (t) => {
  const m = readManifest(dir);
  const params = loadPreset(path.join(dir, 'preset'));
  const batch = trainBatchOf(dir, m);
  const trainable = trainableOf(params, selectTrainable(params, { train: ['final_norm/*', 'layers/1/gating_ffw'] }));
  t.is(isDifferentiated(params.token_embedding[0].tensor), undefined, 'outside a gradient computation');
  const seen: Array<boolean | undefined> = [];
  const auto = valueAndGradTrainable((p: PaliGemmaParams) => {
    seen.push(isDifferentiated(p.token_embedding[0].tensor), isDifferentiated(p.final_norm.scale.tensor));
    return causalLmLoss(p, batch).loss;
  }, params, trainable);
  t.deepEqual(seen, [false, true]);
  const forced = valueAndGradTrainable((p: PaliGemmaParams) => causalLmLoss(p, batch, { tableGrad: true }).loss, params, trainable);
  for (const k of Object.keys(trainable)) assertClose(t, await auto.grads[k].tensor.data(), await forced.grads[k].tensor.data(), 0, 0, k);
  tf.dispose([auto.value, forced.value]);
  d.disposeTree(auto.grads);
  d.disposeTree(forced.grads);
  tf.dispose(d.collectTensors(batch));
  d.disposeTree(params);
});

test.serial('peak memory of loss + gradients grows with the chunk, not with the weighted positions (tf.profile)', async (t) => {
  await setBackend('cpu');
  const m = readManifest(dir);
  // the fixture's model with a 20000-token vocabulary (random weights): vocabulary-wide tensors dominate
  const params = initParams({ ...readPresetConfig(path.join(dir, 'preset')), vocabulary_size: 20000 }, d.key(5));
  const batch = trainBatchOf(dir, m);
  const V = params.config.vocabulary_size;
  const trainable = trainableOf(params, selectTrainable(params, { train: ['final_norm/*'] }));
  const peak = async (chunk: number) => {
    const info = await tf.profile(() => {
      const r = valueAndGradTrainable((p: PaliGemmaParams) => causalLmLoss(p, batch, { chunk }), params, trainable);
      tf.dispose([r.value, r.report!.correct, r.report!.weight]);
      d.disposeTree(r.grads);
    });
    return info.peakBytes;
  };
  const n = Array.from(await batch.sample_weight.tensor.data()).filter((w) => w !== 0).length;
  const one = await peak(1);
  const all = await peak(n);
  const perPosition = (all - one) / (n - 1);
  t.log(`weighted positions ${n}, vocabulary ${V}: peak ${one} bytes (chunk 1), ${all} (chunk ${n}); ${(perPosition / (4 * V)).toFixed(2)} x V floats per extra position`);
  t.true(perPosition <= 8 * 4 * V, `at most 8 vocabulary-wide float32 rows live per chunk position (${perPosition / (4 * V)})`);
  tf.dispose(d.collectTensors(batch));
  d.disposeTree(params);
});
