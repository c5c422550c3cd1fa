import * as fs from 'node:fs';
import * as path from 'node:path';
import test from 'ava';
import { readPresetConfig } from '../../checkpoints/keras';
import { kerasLayerIndex, readLoraH5, readLoraSafetensors, writeLoraH5, writeLoraSafetensors } from '../../checkpoints/lora';
import { writeH5 } from '../../checkpoints/h5write';
import { indexH5 } from '../../checkpoints/h5';
import { tempDir } from '../helpers/files';
import { assertClose } from '../helpers/numeric';
import { tf as tfx } from '../../dsl/tf';
import * as dl from '../../dsl';
import { encodeParams } from '../../checkpoints/params';
import { readKerasWeights } from '../../checkpoints/keras';
import { loadPreset } from '../../src/runtime/preset';
import { withAdapters } from '../../src/train/lora';
import { setBackend } from '../../src/runtime/backend';

const dir = 'spec/fixtures/train/lora_forward_grad';
const config = readPresetConfig(path.join(dir, 'preset'));
const file = path.join(dir, 'adapter.lora.h5');

test('.lora.h5: keras layer indices as the fixture lists them', (t) => {
  const m = JSON.parse(fs.readFileSync(path.join(dir, 'manifest.json'), 'utf8'));
  const index = kerasLayerIndex(config);
  for (const e of m.lora.lora_h5_index_space as { index: number; layer_path: string }[]) t.is(index.get(e.layer_path), e.index, e.layer_path);
  t.is(index.size, m.lora.lora_h5_index_space.length);
});

test(".lora.h5: keras_hub's file reads, and ours has the same datasets, shapes and values", (t) => {
  const lora = readLoraH5(file, config);
  t.is(lora.rank, 4);
  t.is(lora.adapters.length, 10);
  const out = path.join(tempDir(t), 'a.lora.h5');
  writeLoraH5(out, config, lora);
  const theirs = indexH5(file);
  const mine = indexH5(out);
  t.deepEqual([...mine.datasets.keys()].sort(), [...theirs.datasets.keys()].sort());
  for (const [k, ds] of theirs.datasets) {
    t.deepEqual(mine.datasets.get(k)!.shape, ds.shape, k);
    t.is(mine.datasets.get(k)!.dtype, ds.dtype, k);
  }
  t.deepEqual(readLoraH5(out, config), lora);
  const st = path.join(tempDir(t), 'a.safetensors');
  writeLoraSafetensors(st, lora);
  const back = readLoraSafetensors(st, config);
  t.is(back.rank, 4);
  t.deepEqual(new Map(back.adapters.map((a) => [a.layer, a])), new Map(lora.adapters.map((a) => [a.layer, a])));
});

test('.lora.h5: wrong shapes, ranks, indices and keys are refused by name', (t) => {
  const lora = readLoraH5(file, config);
  const d = tempDir(t);
  const write = (name: string, sets: [string, number[], Float32Array | BigInt64Array][]) => {
    const f = path.join(d, name);
    writeH5(f, new Map(sets.map(([k, shape, values]) => [k, { shape, values }])));
    return f;
  };
  const a = lora.adapters[0];
  const rank = BigInt64Array.of(4n);
  const bad = write('shape.lora.h5', [['lora/vars/rank', [], rank], ['lora/11/vars/lora_kernel_a', [12, 3], new Float32Array(36)], ['lora/11/vars/lora_kernel_b', [4, 12], a.b.values]]);
  t.throws(() => readLoraH5(bad, config), { message: `${bad}: lora/11/vars/lora_kernel_a (image_encoder/encoder_block_1/multi_head_attention/value_proj/lora_kernel_a) has shape [12, 3], expected [12, 4] for rank 4` });
  const r2 = write('rank.lora.h5', [['lora/vars/rank', [], BigInt64Array.of(2n)], ['lora/11/vars/lora_kernel_a', [12, 4], a.a.values], ['lora/11/vars/lora_kernel_b', [4, 12], a.b.values]]);
  t.throws(() => readLoraH5(r2, config), { message: `${r2}: lora/11/vars/lora_kernel_a (image_encoder/encoder_block_1/multi_head_attention/value_proj/lora_kernel_a) has shape [12, 4], expected [12, 2] for rank 2` });
  const idx = write('index.lora.h5', [['lora/vars/rank', [], rank], ['lora/5/vars/lora_kernel_a', [12, 4], a.a.values], ['lora/5/vars/lora_kernel_b', [4, 12], a.b.values]]);
  t.throws(() => readLoraH5(idx, config), { message: `${idx}: lora/5 is keras layer image_encoder/encoder_block_1/layer_norm_2, which has no LoRA-able kernel` });
  const extra = write('extra.lora.h5', [['lora/vars/rank', [], rank], ['lora/11/vars/bias', [12], new Float32Array(12)]]);
  t.throws(() => readLoraH5(extra, config), { message: `${extra}: unexpected dataset lora/11/vars/bias (expected lora/<index>/vars/lora_kernel_a|b)` });
  const none = write('none.lora.h5', [['lora/11/vars/lora_kernel_a', [12, 4], a.a.values]]);
  t.throws(() => readLoraH5(none, config), { message: `${none}: missing lora/vars/rank (not a keras_hub .lora.h5 file?)` });
});

test("params codec: a LoRA model encodes its merged kernels, as keras_hub's save_to_preset (preset_merged)", async (t) => {
  await setBackend('cpu');
  const base = loadPreset(path.join(dir, 'preset'));
  const params = withAdapters(base, readLoraH5(file, base.config));
  const before = tfx.memory().numTensors;
  const encoded = encodeParams(params);
  t.is(tfx.memory().numTensors, before, 'memory-neutral');
  const merged = readKerasWeights(path.join(dir, 'preset_merged'));
  t.is(encoded.size, merged.size);
  for (const [h5, w] of merged) assertClose(t, encoded.get(h5)!.values, w.read(), 1e-6, 1e-6, h5);
  for (const [p, x] of dl.leaves(params)) if (p.includes('lora_kernel')) x.dispose();
  dl.disposeTree(base);
});
