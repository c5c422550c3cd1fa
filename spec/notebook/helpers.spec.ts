/**
 * Notebook ergonomics: named tensors print as `Named<[batch=2, ...]> float32 [values]` through util.inspect
 * (what console.log and tslab use) without dsl/ importing node:util; `summary` tables a parameter tree with
 * runs of identical blocks folded; `drawDetections` draws literal box outlines and round-trips through PNG.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { inspect } from 'node:util';
import { PNG } from 'pngjs';
import { tf } from '../../dsl/tf';
import * as d from '../../dsl';
import { CONFIG_DEFAULTS, type PaliGemmaConfig } from '../../models/config';
import { initParams } from '../../checkpoints/init';
import { summary } from '../../src/notebook/summary';
import { BOX_COLOURS, drawDetections } from '../../src/notebook/draw';
import { parseDetections, type DetectedObject } from '../../src/preprocess/outputs';
import { backendTest, test } from '../helpers/backends';

backendTest('a named tensor prints its axes, sizes, dtype and first values, and allocates nothing', async (t, info) => {
  const x = d.named(tf.reshape(tf.div(tf.range(0, 512), 7), [2, 8, 32]), ['batch', 'seq', 'embed'] as const);
  const before = tf.memory().numTensors;
  // webgpu in Node reads computed tensors asynchronously only: the printout says how to get the values
  const values = info.name === 'webgpu' ? '(values: await x.tensor.data() on webgpu)' : '[0, 0.1429, 0.2857, 0.4286, 0.5714, 0.7143, ... 506 more]';
  t.is(inspect(x), `Named<[batch=2, seq=8, embed=32]> float32 ${values}`);
  t.is(`${x}`, 'Named<[batch=2, seq=8, embed=32]> float32');
  t.is(inspect({ hidden: x }), `{\n  hidden: Named<[batch=2, seq=8, embed=32]> float32 ${values}\n}`);
  t.is(tf.memory().numTensors, before);
  // only the first values are read, never the whole tensor (a 2 GB embedding must print without a copy)
  const whole = x.tensor.dataSync;
  x.tensor.dataSync = () => {
    throw new Error('the whole tensor was read');
  };
  t.is(inspect(x), `Named<[batch=2, seq=8, embed=32]> float32 ${values}`);
  x.tensor.dataSync = whole;
  const ids = d.named(tf.tensor1d([3, 1, 2], 'int32'), ['seq'] as const);
  t.is(inspect(ids), 'Named<[seq=3]> int32 [3, 1, 2]');
  x.dispose();
  ids.dispose();
  t.is(inspect(x), 'Named<[batch=2, seq=8, embed=32]> float32 (disposed)');
}, { webgpu: true });

test('dsl/named.ts finds inspect by its global symbol: no node:util import to break a browser bundle', (t) => {
  const source = fs.readFileSync(path.join(__dirname, '..', '..', '..', 'dsl', 'named.ts'), 'utf8');
  t.false(/from 'node:util'|from 'util'|require\('(node:)?util'\)/.test(source));
  t.true(source.includes("Symbol.for('nodejs.util.inspect.custom')"));
});

test('summary: blocks, counts, named shapes, identical runs folded, totals; reads no tensor', (t) => {
  const c: PaliGemmaConfig = {
    ...CONFIG_DEFAULTS,
    vocabulary_size: 8, image_size: 4, num_layers: 2, num_query_heads: 2, num_key_value_heads: 1, hidden_dim: 4,
    intermediate_dim: 4, head_dim: 2, vit_patch_size: 2, vit_num_heads: 1, vit_hidden_dim: 2, vit_num_layers: 1, vit_intermediate_dim: 2,
  };
  const p = initParams(c, d.key(0));
  const before = tf.memory().numTensors;
  const s = summary(p);
  t.is(tf.memory().numTensors, before);
  t.is(s.total, d.leaves(p).reduce((n, [, x]) => n + x.tensor.size, 0));
  t.is(
    inspect(s),
    [
      'block                   params  shapes',
      'layers.0-1              2 x 80  pre_attention_norm.scale [embed=4]',
      '                                attention.query [embed=4, heads=2, head_dim=2]',
      '                                attention.key [embed=4, kv_heads=1, head_dim=2]',
      '                                attention.value [embed=4, kv_heads=1, head_dim=2]',
      '                                attention.output [heads=2, head_dim=2, embed=4]',
      '                                pre_ffw_norm.scale [embed=4]',
      '                                gating_ffw [embed=4, ffw=2]',
      '                                gating_ffw_2 [embed=4, ffw=2]',
      '                                ffw_linear [ffw=2, embed=4]',
      'vit.blocks.0                44  layer_norm_1.gamma [vit_embed=2]',
      '                                layer_norm_1.beta [vit_embed=2]',
      '                                query_proj.kernel [vit_embed=2, vit_qkv=2]',
      '                                query_proj.bias [vit_qkv=2]',
      '                                key_proj.kernel [vit_embed=2, vit_qkv=2]',
      '                                key_proj.bias [vit_qkv=2]',
      '                                value_proj.kernel [vit_embed=2, vit_qkv=2]',
      '                                value_proj.bias [vit_qkv=2]',
      '                                out_proj.kernel [vit_qkv=2, vit_embed=2]',
      '                                out_proj.bias [vit_embed=2]',
      '                                layer_norm_2.gamma [vit_embed=2]',
      '                                layer_norm_2.beta [vit_embed=2]',
      '                                mlp_dense_1.kernel [vit_embed=2, vit_mlp=2]',
      '                                mlp_dense_1.bias [vit_mlp=2]',
      '                                mlp_dense_2.kernel [vit_mlp=2, vit_embed=2]',
      '                                mlp_dense_2.bias [vit_embed=2]',
      'vit.patch_embedding         26  kernel [patch_h=2, patch_w=2, channels=3, vit_embed=2]',
      '                                bias [vit_embed=2]',
      'vit                          8  position_embedding [patches=4, vit_embed=2]',
      'vit.encoder_layer_norm       4  gamma [vit_embed=2]',
      '                                beta [vit_embed=2]',
      'vit.image_classifier        12  kernel [vit_embed=2, embed=4]',
      '                                bias [embed=4]',
      'token_embedding             32  shard 0 [vocab=8, embed=4]',
      'final_norm                   4  scale [embed=4]',
      'total                      290  (0.0 MiB as float32)',
    ].join('\n'),
  );
  t.deepEqual(s.rows[0], { block: 'layers.0-1', count: 2, params: 80, shapes: s.rows[0].shapes });
  d.disposeTree(p);
});

test('drawDetections: literal outlines, enlarged small pictures, a colour per label, PNG round trip', (t) => {
  // a 4 x 4 grey picture; two boxes in its pixels; enlarged to 8 x 8 (minSize 8), lines 1 px
  const grey = { data: new Uint8Array(4 * 4 * 3).fill(100), height: 4, width: 4, channels: 3 as const };
  const objects: Array<Pick<DetectedObject, 'label' | 'box'>> = [
    { label: 'cat', box: { yMin: 0, xMin: 0, yMax: 2, xMax: 2 } },
    { label: 'ball', box: { yMin: 4, xMin: 4, yMax: 3, xMax: 3 } }, // reversed, and past the edge: clamped
    { label: 'cat', box: { yMin: 1, xMin: 3, yMax: 1, xMax: 3 } }, // a point
  ];
  const out = drawDetections(grey, objects, { minSize: 8, thickness: 1 });
  t.is(out.scale, 2);
  t.deepEqual(out.legend, [{ label: 'cat', colour: BOX_COLOURS[0] }, { label: 'ball', colour: BOX_COLOURS[1] }]);
  const at = (y: number, x: number) => Array.from(out.image.data.subarray(3 * (y * 8 + x), 3 * (y * 8 + x) + 3));
  const map = Array.from({ length: 8 }, (_, y) => Array.from({ length: 8 }, (_, x) => {
    const v = at(y, x).join(',');
    return v === BOX_COLOURS[0].join(',') ? 'c' : v === BOX_COLOURS[1].join(',') ? 'b' : v === '100,100,100' ? '.' : '?';
  }).join(''));
  t.deepEqual(map, [
    'ccccc...', // cat: rows and columns 0..4 of the 8 x 8 picture
    'c...c...',
    'c...c.c.', // the second cat box, a point: (1, 3) x 2 = (2, 6)
    'c...c...',
    'ccccc...',
    '........',
    '......bb', // ball: 6..7 (4 x 2 = 8, clamped to 7)
    '......bb',
  ]);
  const png = PNG.sync.read(Buffer.from(out.png));
  t.is(png.width, 8);
  for (let i = 0; i < 64; i++) t.deepEqual(Array.from(png.data.subarray(4 * i, 4 * i + 3)), Array.from(out.image.data.subarray(3 * i, 3 * i + 3)));
  // a parsed answer on the shipped picture: boxes in its pixels
  const cat = drawDetections(path.join('checkpoints', 'tiny', 'cat.png'), parseDetections('<loc0100><loc0200><loc0900><loc0800> cat', { height: 64, width: 64 }));
  t.is(cat.scale, 4);
  t.deepEqual([cat.image.height, cat.image.width], [256, 256]);
  // the box's top edge at y = round(6.25 * 4) = 25, from x = 50 to 200
  t.deepEqual(Array.from(cat.image.data.subarray(3 * (25 * 256 + 50), 3 * (25 * 256 + 50) + 3)), [...BOX_COLOURS[0]]);
  t.deepEqual(Array.from(cat.image.data.subarray(3 * (26 * 256 + 200), 3 * (26 * 256 + 200) + 3)), [...BOX_COLOURS[0]]);
});
