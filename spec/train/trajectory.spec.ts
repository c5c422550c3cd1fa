import * as path from 'node:path';
import { tf } from '../../dsl/tf';
import { readBin, readManifest } from '../../src/cli/fixture';
import { computeTrainFixture, computeTrajectory, optimizerOf } from '../../src/cli/train_fixture';
import { backendTest, test } from '../helpers/backends';
import { assertClose } from '../helpers/numeric';

const root = 'spec/fixtures/train';
// webgpu (SwiftShader, ~25 s per fixture here) runs lora_forward_grad (spec/train/lora.spec.ts); these pass there
// too (measured: PALIGEMMA_TEST_BACKENDS=webgpu with { webgpu: true }), but would add ~100 s to the suite.

for (const name of ['train_trajectory_full', 'train_trajectory_adamw']) {
  backendTest(`${name}: losses, step-1 gradients and final weights match keras`, async (t) => {
    const dir = path.join(root, name);
    const m = readManifest(dir);
    const before = tf.memory().numTensors;
    const c = await computeTrajectory(dir, m);
    t.is(tf.memory().numTensors, before, 'memory-neutral');
    assertClose(t, c.outputs.get('losses')!.data, readBin(dir, m.outputs.losses) as Float32Array, 1e-5, 0, 'losses');
    // step-1 gradients from the packed debug layout
    const layout = (m.debug_packed_layout as { variables: { keras_path: string; offset: number; shape: number[] }[] }).variables;
    const packed = readBin(dir, (m.debug as Record<string, { file: string; dtype: 'float32'; shape: number[] }>).grads_step1) as Float32Array;
    for (const v of layout) {
      const n = v.shape.reduce((a, b) => a * b, 1);
      assertClose(t, c.gradients.get(v.keras_path)!.data, packed.subarray(v.offset, v.offset + n), 1e-4, 1e-3, `grad ${v.keras_path}`);
    }
    const wf = m.weights_final as Record<string, { file: string; dtype: 'float32'; shape: number[] }>;
    const lr = (m.compile as { optimizer_config: { learning_rate: number } }).optimizer_config.learning_rate;
    for (const [k, e] of Object.entries(wf)) {
      const want = readBin(dir, e) as Float32Array;
      // The ViT key biases have a true gradient of exactly 0 (softmax ignores a per-query constant), so their
      // float32 gradients are rounding noise (<= 3e-9) and keras' Adam moves them by noise alone: up to 1.9e-6
      // in 3 AdamW steps at lr 1e-3, above the weight tolerance. Each noisy step moves a weight by at most
      // lr * 1e-3 (m / (sqrt(v) + eps) <= 3e-3 for |g| <= 3e-9), so that is their bound.
      const noise = /(key_proj|attention\/key)\/bias$/.test(k);
      assertClose(t, c.weights_final!.get(k)!.data, want, noise ? Math.max(1e-6, 3 * lr * 1e-3) : 1e-6, 1e-5, `weights_final ${k}`);
    }
  }, { onnx: true });
}

backendTest('preprocess_train: packed ids and masks exact, converted images, and the end-to-end loss of keras_hub', async (t) => {
  const dir = path.join(root, 'preprocess_train');
  const m = readManifest(dir);
  const before = tf.memory().numTensors;
  const c = await computeTrainFixture(dir, m);
  t.is(tf.memory().numTensors, before, 'memory-neutral');
  const runs = m.runs as Record<string, Record<string, { file: string; dtype: 'float32' | 'int32' | 'uint8'; shape: number[] }>>;
  for (const [name, run] of Object.entries(runs)) {
    for (const k of ['x_token_ids', 'x_padding_mask', 'x_response_mask', 'y', 'sample_weight']) {
      t.deepEqual(Array.from(c.runs!.get(name)!.get(k)!.data), Array.from(readBin(dir, run[k])), `${name} ${k}`);
    }
    assertClose(t, c.runs!.get(name)!.get('x_images')!.data, readBin(dir, run.x_images), 1e-6, 0, `${name} x_images`);
  }
  assertClose(t, c.outputs.get('end_to_end_loss')!.data, readBin(dir, m.outputs.end_to_end_loss) as Float32Array, 1e-5, 0, 'end_to_end_loss');
}, { onnx: true });

test('optimizerOf: the manifest optimizer, its exclusions checked against the fixture, others refused by name', (t) => {
  const dir = path.join(root, 'train_trajectory_adamw');
  const m = readManifest(dir);
  const compile = m.compile as { optimizer_config: object; excluded_from_weight_decay: string[] };
  const trainable = new Map([['vit/blocks/0/query_proj/bias', 'image_encoder/encoder_block_0/multi_head_attention/query_proj/bias'], ['layers/0/attention/query', 'decoder_block_0/attention/query/kernel']]);
  const { optimizer, learningRate, clipping } = optimizerOf(dir, m, trainable);
  t.is(optimizer.name, 'adamw');
  t.is(learningRate, 0.0010000000474974513);
  t.deepEqual(clipping, {});
  const lion = { ...m, compile: { ...compile, optimizer_class: 'keras.optimizers.Lion' } };
  t.throws(() => optimizerOf(dir, lion, trainable), { message: `${path.join(dir, 'manifest.json')}: optimizer keras.optimizers.Lion is not supported (keras.optimizers.Adam, AdamW, SGD)` });
  const wrong = { ...m, compile: { ...compile, excluded_from_weight_decay: [] } };
  t.throws(() => optimizerOf(dir, wrong, trainable), { message: `${path.join(dir, 'manifest.json')}: weight-decay exclusions [bias, scale] select 1 trainable variables here, the fixture lists 0` });
  const sgdM = { ...m, compile: { ...compile, optimizer_class: 'keras.optimizers.SGD', optimizer_config: { learning_rate: 0.1, momentum: 0.9, global_clipnorm: 1 } } };
  const s = optimizerOf(dir, sgdM, trainable);
  t.is(s.optimizer.name, 'sgd');
  t.deepEqual(s.clipping, { global_clipnorm: 1 });
});
