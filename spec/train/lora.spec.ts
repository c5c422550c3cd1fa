import * as fs from 'node:fs';
import * as path from 'node:path';
import { tf } from '../../dsl/tf';
import * as d from '../../dsl';
import { backbone, type PaliGemmaParams } from '../../models/paligemma';
import { readBin, readManifest } from '../../src/cli/fixture';
import { computeLoraGrad, computeTrajectory } from '../../src/cli/train_fixture';
import { loadPreset } from '../../src/runtime/preset';
import { enableLora, loraTargets, loraTrainable, mergeLora } from '../../src/train/lora';
import { readLoraH5 } from '../../checkpoints/lora';
import { initParams } from '../../checkpoints/init';
import { setBackend } from '../../src/runtime/backend';
import { CONFIG_DEFAULTS, type PaliGemmaConfig } from '../../models/config';
import { backendTest, test } from '../helpers/backends';
import { assertClose } from '../helpers/numeric';
import { tempDir } from '../helpers/files';

const root = 'spec/fixtures/train';
type Entry = { file: string; dtype: 'float32'; shape: number[] };

backendTest('lora_forward_grad: forward, loss and the 24 trainable gradients match keras_hub', async (t) => {
  const dir = path.join(root, 'lora_forward_grad');
  const m = readManifest(dir);
  const before = tf.memory().numTensors;
  const c = await computeLoraGrad(dir, m);
  t.is(tf.memory().numTensors, before, 'memory-neutral');
  assertClose(t, c.outputs.get('sequence_output')!.data, readBin(dir, m.outputs.sequence_output) as Float32Array, 1e-4, 0, 'sequence_output');
  assertClose(t, c.outputs.get('logits')!.data, readBin(dir, m.outputs.logits) as Float32Array, 1e-4, 0, 'logits');
  assertClose(t, c.outputs.get('loss')!.data, readBin(dir, m.outputs.loss) as Float32Array, 1e-5, 0, 'loss');
  const grads = m.gradients as Record<string, Entry>;
  t.is(c.gradients.size, Object.keys(grads).length, 'one gradient per trainable variable');
  for (const [k, e] of Object.entries(grads)) assertClose(t, c.gradients.get(k)!.data, readBin(dir, e) as Float32Array, 1e-4, 1e-3, `grad ${k}`);
}, { webgpu: true, onnx: true });

backendTest('train_trajectory_lora: losses, final adapters and biases, and the saved .lora.h5 match keras_hub', async (t) => {
  const dir = path.join(root, 'train_trajectory_lora');
  const m = readManifest(dir);
  const before = tf.memory().numTensors;
  const c = await computeTrajectory(dir, m);
  t.is(tf.memory().numTensors, before, 'memory-neutral');
  assertClose(t, c.outputs.get('losses')!.data, readBin(dir, m.outputs.losses) as Float32Array, 1e-5, 0, 'losses');
  const wf = m.weights_final as Record<string, Entry>;
  t.deepEqual([...c.weights_final!.keys()].sort(), Object.keys(wf).sort(), 'weights_final keys');
  for (const [k, e] of Object.entries(wf)) assertClose(t, c.weights_final!.get(k)!.data, readBin(dir, e) as Float32Array, 1e-6, 1e-5, `weights_final ${k}`);
  const out = tempDir(t);
  const [name, write] = [...c.files!][0];
  t.is(name, 'lora_final.lora.h5');
  write(path.join(out, name));
  const config = loadPreset(path.join(dir, 'preset')).config;
  const mine = readLoraH5(path.join(out, name), config);
  const theirs = readLoraH5(path.join(dir, 'lora_final.lora.h5'), config);
  t.is(mine.rank, theirs.rank);
  theirs.adapters.forEach((a, i) => {
    t.is(mine.adapters[i].layer, a.layer);
    assertClose(t, mine.adapters[i].a.values, a.a.values, 1e-6, 1e-5, `${a.layer} A`);
    assertClose(t, mine.adapters[i].b.values, a.b.values, 1e-6, 1e-5, `${a.layer} B`);
  });
}, { onnx: true }); // passes on webgpu too (27 s on SwiftShader, measured); left to cpu, wasm and onnx to keep the suite short

function tiny(): PaliGemmaParams {
  return loadPreset(path.join(root, 'lora_forward_grad', 'preset'));
}

function inputs() {
  const dir = path.join(root, 'lora_forward_grad');
  const m = readManifest(dir);
  const get = (k: string, dtype: 'float32' | 'int32') => tf.tensor(readBin(dir, m.inputs[k]) as Float32Array, [...m.inputs[k].shape], dtype);
  return {
    images: d.named(get('images', 'float32'), ['batch', 'height', 'width', 'channels'] as const),
    token_ids: d.named(get('token_ids', 'int32'), ['batch', 'seq'] as const),
    padding_mask: d.named(get('padding_mask', 'int32'), ['batch', 'seq'] as const),
    response_mask: d.named(get('response_mask', 'int32'), ['batch', 'seq'] as const),
  };
}

backendTest('enableLora: keras_hub defaults (B = 0 leaves the model unchanged); mergeLora equals the unmerged forward', async (t) => {
  const base = tiny();
  const x = inputs();
  const before = tf.memory().numTensors;
  const lora = enableLora(base, { rank: 4, key: d.key(7) });
  t.deepEqual(loraTargets(base).map((l) => l.layer), [
    'image_encoder/encoder_block_0/multi_head_attention/query_proj', 'image_encoder/encoder_block_0/multi_head_attention/value_proj',
    'image_encoder/encoder_block_1/multi_head_attention/query_proj', 'image_encoder/encoder_block_1/multi_head_attention/value_proj',
    'decoder_block_0/attention/query', 'decoder_block_0/attention/value', 'decoder_block_1/attention/query', 'decoder_block_1/attention/value',
    'decoder_block_2/attention/query', 'decoder_block_2/attention/value',
  ]);
  t.is(loraTrainable(lora).length, 24, "keras_hub's 24 trainable variables");
  t.is(tf.memory().numTensors - before, 20, 'one A and one B per target, nothing else');
  const a = (lora.layers[0].attention.query_lora!.lora_kernel_a);
  t.deepEqual([...a.axes], ['embed', 'heads', 'lora_rank']);
  t.deepEqual([...a.shape], [16, 4, 4]);
  const limit = Math.sqrt(6 / (4 * 16)); // he_uniform, keras' fan_in of (heads, embed, rank)
  const av = await a.tensor.data();
  t.true(av.every((v) => Math.abs(v) <= limit) && av.some((v) => Math.abs(v) > limit / 2), 'A is U(-limit, limit)');
  const y0 = backbone(base, x);
  const y1 = backbone(lora, x);
  assertClose(t, await y1.tensor.data(), await y0.tensor.data(), 0, 0, 'B = 0: exactly the base model');
  // give B values, then merging must not change the forward
  const withB = { ...lora, layers: lora.layers.map((l) => ({ ...l, attention: { ...l.attention, value_lora: { ...l.attention.value_lora!, lora_kernel_b: d.named(tf.randomUniform([4, 8] as number[], -0.5, 0.5, 'float32', 3), ['lora_rank', 'head_dim'] as const) } } })) } as PaliGemmaParams;
  const y2 = backbone(withB, x);
  const merged = mergeLora(withB);
  t.is(d.leaves(merged).filter(([p]) => p.includes('lora')).length, 0, 'no adapter left');
  const y3 = backbone(merged, x);
  const dt = tf.max(tf.abs(tf.sub(y2.tensor, y0.tensor)));
  const diff = (await dt.data())[0];
  dt.dispose();
  t.true(diff > 1e-2, `the adapters change the output (${diff})`);
  assertClose(t, await y3.tensor.data(), await y2.tensor.data(), 1e-5, 0, 'merged = unmerged');
  tf.dispose([y0.tensor, y1.tensor, y2.tensor, y3.tensor, ...d.collectTensors(x)]);
  for (const l of withB.layers) l.attention.value_lora!.lora_kernel_b.dispose();
  for (const [p, v] of d.leaves(merged)) if (!d.leaves(base).some(([, b]) => b === v)) void p, v.dispose();
  for (const [p, v] of d.leaves(lora)) if (p.includes('lora_kernel')) v.dispose();
  d.disposeTree(base);
  t.pass();
});

test('enableLora: any kernels by path or glob; unknown targets and bad ranks are refused by name', (t) => {
  const base = tiny();
  const lora = enableLora(base, { rank: 2, alpha: 8, key: d.key(1), targets: ['layers/*/attention/key', 'decoder_block_0/ffw_linear', 'vit/blocks/0/mlp_dense_1/kernel'] });
  t.deepEqual(loraTargets(base, ['layers/*/attention/key', 'decoder_block_0/ffw_linear', 'vit/blocks/0/mlp_dense_1/kernel']).map((l) => l.holder), [
    'vit/blocks/0/mlp_dense_1', 'layers/0/attention/key_lora', 'layers/0/ffw_linear_lora', 'layers/1/attention/key_lora', 'layers/2/attention/key_lora',
  ]);
  t.is(lora.layers[1].attention.key_lora!.lora_scale, 4, 'scale alpha / rank');
  t.deepEqual([...lora.layers[0].ffw_linear_lora!.lora_kernel_b.shape], [2, 16]);
  t.throws(() => enableLora(base, { rank: 2, key: d.key(1), targets: ['layers/0/attention/nothing'] }), {
    message: "enableLora: unknown target 'layers/0/attention/nothing': no Dense/EinsumDense kernel matches it (e.g. vit/blocks/0/query_proj/kernel, vit/blocks/0/key_proj/kernel, ...)",
  });
  t.throws(() => enableLora(base, { rank: 0, key: d.key(1) }), { message: 'enableLora: rank must be a positive integer, got 0' });
  t.throws(() => enableLora(lora, { rank: 2, key: d.key(1), targets: ['layers/0/attention/key'] }), { message: 'enableLora: decoder_block_0/attention/key (layers/0/attention/key) already has a LoRA adapter' });
  for (const [p, v] of d.leaves(lora)) if (p.includes('lora_kernel')) v.dispose();
  d.disposeTree(base);
});

test("enableLora's default targets with a MAP head: keras_hub's list (lora_targets_map_pooling.json)", async (t) => {
  await setBackend('cpu');
  const j = JSON.parse(fs.readFileSync(path.join(root, 'lora_targets_map_pooling.json'), 'utf8'));
  const config = { ...CONFIG_DEFAULTS, ...j.config } as PaliGemmaConfig;
  const params = initParams(config, d.key(3));
  const lora = enableLora(params, { rank: 2, key: d.key(4) });
  t.deepEqual(loraTargets(params).map((l) => l.layer).sort(), [...j.lora_targets].sort());
  const x = d.scoped(() => ({
    images: d.named(tf.zeros([1, 8, 8, 3]), ['batch', 'height', 'width', 'channels'] as const),
    token_ids: d.named(tf.tensor([[2, 5, 6]], [1, 3], 'int32'), ['batch', 'seq'] as const),
    padding_mask: d.named(tf.ones([1, 3], 'int32'), ['batch', 'seq'] as const),
    response_mask: d.named(tf.tensor([[0, 0, 1]], [1, 3], 'int32'), ['batch', 'seq'] as const),
  }));
  const a = backbone(params, x);
  const b = backbone(lora, x);
  t.deepEqual(Array.from(b.tensor.dataSync()), Array.from(a.tensor.dataSync()), 'B = 0: the MAP-pooled model is unchanged');
  tf.dispose([a.tensor, b.tensor, ...d.collectTensors(x)]);
  for (const [p, v] of d.leaves(lora)) if (p.includes('lora_kernel')) v.dispose();
  d.disposeTree(params);
});
