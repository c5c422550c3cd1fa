/**
 * The testing kit (src/testing): its configs are valid and cover what they promise, its inputs have the
 * promised shapes, masks and ranges, and validateConfig names each broken rule (literal messages) at the model
 * entry points, before tfjs sees a fractional shape.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as os from 'node:os';
import { fromPreset } from '../../src/runtime/preset';
import fc from 'fast-check';
import { tf } from '../../dsl/tf';
import * as d from '../../dsl';
import { CONFIG_DEFAULTS, type PaliGemmaConfig } from '../../models/config';
import { backbone } from '../../models/paligemma';
import { vit } from '../../models/siglip';
import { initParams } from '../../checkpoints/init';
import { decodeConfig, encodeConfig } from '../../checkpoints/config';
import { ConfigError, configProblems, configs, defaultPresetDir, disposeInputs, inputsFor, inputSpecs, memoryNeutral, randomInputs, uniforms, validateConfig } from '../../src/testing';
import { SHIPPED_PRESETS } from '../../checkpoints/presets';
import { test } from '../helpers/backends';

const TINY: PaliGemmaConfig = {
  ...CONFIG_DEFAULTS,
  vocabulary_size: 8, image_size: 4, num_layers: 1, num_query_heads: 2, num_key_value_heads: 1, hidden_dim: 4,
  intermediate_dim: 4, head_dim: 2, vit_patch_size: 2, vit_num_heads: 1, vit_hidden_dim: 2, vit_num_layers: 1, vit_intermediate_dim: 2,
};

test('every config the kit draws is valid, and the draws cover families, poolings and attention kinds', (t) => {
  fc.assert(fc.property(configs(), (c) => configProblems(c).length === 0), { numRuns: 500, seed: 1 });
  const drawn = fc.sample(configs(), { numRuns: 400, seed: 2 });
  const kinds = new Set(drawn.map((c) => (c.num_key_value_heads === 1 ? 'mqa' : c.num_key_value_heads === c.num_query_heads ? 'mha' : 'gqa')));
  t.deepEqual([...kinds].sort(), ['gqa', 'mha', 'mqa']);
  t.deepEqual([...new Set(drawn.map((c) => String(c.vit_pooling)))].sort(), ['gap', 'map', 'null', 'zero']);
  t.deepEqual([...new Set(drawn.map((c) => c.use_post_ffw_norm))].sort(), [false, true]);
  t.true(drawn.every((c) => Math.max(c.hidden_dim, c.head_dim, c.intermediate_dim / 2, c.vocabulary_size, c.vit_hidden_dim, c.vit_intermediate_dim) <= 8));
});

test('configs honour their options: PaliGemma 1 and 2 shapes, GQA and MQA, poolings, sizes', (t) => {
  for (const c of fc.sample(configs({ family: 'pg1' }), { numRuns: 50, seed: 3 })) {
    t.deepEqual(
      [c.attention_logit_soft_cap, c.final_logit_soft_cap, c.use_post_attention_norm, c.use_post_ffw_norm, c.use_sliding_window_attention, c.query_head_dim_normalize],
      [null, null, false, false, false, true],
    );
  }
  for (const c of fc.sample(configs({ family: 'pg2' }), { numRuns: 50, seed: 4 })) {
    t.true(c.attention_logit_soft_cap! > 0 && c.final_logit_soft_cap! > 0 && c.use_post_attention_norm && c.use_post_ffw_norm && c.use_sliding_window_attention);
  }
  for (const c of fc.sample(configs({ attention: 'gqa' }), { numRuns: 50, seed: 5 })) {
    t.true(c.num_key_value_heads > 1 && c.num_key_value_heads < c.num_query_heads && c.num_query_heads % c.num_key_value_heads === 0, JSON.stringify(c));
  }
  t.true(fc.sample(configs({ attention: 'mqa' }), { numRuns: 50, seed: 6 }).every((c) => c.num_key_value_heads === 1));
  t.true(fc.sample(configs({ pooling: ['map'] }), { numRuns: 50, seed: 7 }).every((c) => c.vit_pooling === 'map'));
  const big = fc.sample(configs({ maxDim: 16, maxLayers: 3, maxGrid: 3 }), { numRuns: 300, seed: 8 });
  t.true(big.some((c) => c.hidden_dim > 8) && big.every((c) => c.hidden_dim <= 16 && c.num_layers <= 3));
  t.throws(() => configs({ maxDim: 2 }), { message: 'configs: maxDim must be an integer >= 4, got 2' });
});

test('randomInputs: shapes, literal masks, ids in the vocabulary, the same for the same seed, owned by the caller', async (t) => {
  const before = tf.memory().numTensors;
  const x = randomInputs(TINY, 2, 4, { rows: [{ prompt: 2, response: 1 }, { prompt: 0, response: 4 }], seed: 9 });
  t.is(tf.memory().numTensors, before + 4);
  t.deepEqual(x.images.shape, [2, 4, 4, 3]);
  t.deepEqual(x.token_ids.axes, ['batch', 'seq']);
  t.deepEqual(await x.padding_mask.tensor.array(), [[1, 1, 1, 0], [1, 1, 1, 1]]);
  t.deepEqual(await x.response_mask.tensor.array(), [[0, 0, 1, 0], [1, 1, 1, 1]]);
  const ids = Array.from(await x.token_ids.tensor.data());
  t.true(ids.every((i) => Number.isInteger(i) && i >= 0 && i < 8));
  const pixels = Array.from(await x.images.tensor.data());
  t.true(pixels.every((v) => v >= -1 && v < 1));
  const again = randomInputs(TINY, 2, 4, { rows: [{ prompt: 2, response: 1 }, { prompt: 0, response: 4 }], seed: 9 });
  t.deepEqual(Array.from(await again.token_ids.tensor.data()), ids);
  const other = randomInputs(TINY, 2, 4, { seed: 10 });
  t.notDeepEqual(Array.from(await other.token_ids.tensor.data()), ids);
  t.deepEqual(await other.padding_mask.tensor.array(), [[1, 1, 1, 1], [1, 1, 1, 1]], 'default rows: all prompt');
  t.deepEqual(await other.response_mask.tensor.array(), [[0, 0, 0, 0], [0, 0, 0, 0]]);
  for (const y of [x, again, other]) disposeInputs(y);
  t.is(tf.memory().numTensors, before);
  t.throws(() => randomInputs(TINY, 1, 3, { rows: [{ prompt: 2, response: 2 }] }), { message: 'randomInputs: row 0 has prompt 2 + response 2 tokens, more than the length 3' });
  t.throws(() => randomInputs(TINY, 2, 3, { rows: [{ prompt: 1, response: 0 }] }), { message: 'randomInputs: 1 rows for a batch of 2' });
  t.throws(() => randomInputs(TINY, 1, 0), { message: 'randomInputs: length must be an integer >= 1, got 0' });
  // mulberry32 from seed 0: its published first output
  t.is(Math.round(uniforms(1, 0)[0] * 2 ** 32), 1144304738);
});

test('inputSpecs: batch, length and rows fit together', (t) => {
  fc.assert(
    fc.property(inputSpecs({ batch: { min: 1, max: 3 }, length: { min: 1, max: 6 } }), (s) =>
      s.rows.length === s.batch && s.rows.every((r) => r.prompt >= 0 && r.response >= 0 && r.prompt + r.response <= s.length),
    ),
    { numRuns: 300 },
  );
  t.pass('fc.assert throws on a counterexample');
});

test('inputsFor: ids drawn in the vocabulary, and randomInputs takes them as they are', async (t) => {
  const specs = fc.sample(inputsFor(TINY, { batch: { min: 2, max: 2 }, length: { min: 3, max: 3 } }), { numRuns: 50, seed: 11 });
  t.true(specs.every((s) => s.tokenIds.length === 6 && s.tokenIds.every((id) => Number.isInteger(id) && id >= 0 && id < 8)));
  t.true(new Set(specs.flatMap((s) => s.tokenIds)).size === 8, 'every id of the vocabulary drawn somewhere');
  const s = specs[0];
  const x = randomInputs(TINY, s.batch, s.length, s);
  t.deepEqual(Array.from(await x.token_ids.tensor.data()), s.tokenIds);
  disposeInputs(x);
});

test('validateConfig names every broken rule', (t) => {
  const bad = {
    ...TINY,
    image_size: 225, vit_patch_size: 16, num_query_heads: 3, num_key_value_heads: 2, intermediate_dim: 5, head_dim: 3,
    vocabulary_size: 2, vit_hidden_dim: 6, vit_num_heads: 4, hidden_dim: 0, dropout: 1, layer_norm_epsilon: 0,
    attention_logit_soft_cap: -1, use_sliding_window_attention: true, sliding_window_size: 0, vit_pooling: 'max' as never,
  };
  const e = t.throws(() => validateConfig(bad), { instanceOf: ConfigError })!;
  t.deepEqual(e.problems, [
    'image_size 225 is not a multiple of vit_patch_size 16: the image is cut into vit_patch_size squares',
    'vit_hidden_dim 6 is not a multiple of vit_num_heads 4: each head gets vit_hidden_dim / vit_num_heads features',
    'vit_pooling must be null, "map", "gap" or "zero", got "max"',
    'hidden_dim must be an integer >= 1, got 0',
    "vocabulary_size 2 cannot hold Gemma's special ids (pad 0, eos 1, bos 2): it must be > 2",
    'num_query_heads 3 is not a multiple of num_key_value_heads 2: each key/value head serves num_query_heads / num_key_value_heads query heads',
    "intermediate_dim 5 is odd: it is twice the FFN width (keras_hub's convention), so it must be even",
    'head_dim 3 is odd: RoPE rotates the two halves of each head, so it must be even',
    'sliding_window_size must be an integer >= 1 when use_sliding_window_attention is true, got 0',
    'attention_logit_soft_cap must be null or a number > 0, got -1',
    'layer_norm_epsilon must be a number > 0, got 0',
    'dropout must be a number in [0, 1), got 1',
  ]);
  t.is(e.message.split('; ')[0], 'invalid PaliGemma config: image_size 225 is not a multiple of vit_patch_size 16: the image is cut into vit_patch_size squares');
  t.is(validateConfig(TINY), TINY);
  t.deepEqual(configProblems({ ...TINY, num_layers: 1.5 }), ['num_layers must be an integer >= 1, got 1.5']);
});

test('the model entry points refuse a bad config before tfjs sees a shape', (t) => {
  const before = tf.memory().numTensors;
  const patchy = { ...TINY, image_size: 225, vit_patch_size: 16 };
  // was: "Tensor must have a shape comprised of positive integers but got shape [14.0625,16]"
  t.throws(() => initParams(patchy, d.key(0)), {
    instanceOf: ConfigError,
    message: 'invalid PaliGemma config: image_size 225 is not a multiple of vit_patch_size 16: the image is cut into vit_patch_size squares',
  });
  const params = initParams(TINY, d.key(0));
  const inputs = randomInputs(TINY, 1, 2);
  t.throws(() => backbone({ ...params, config: { ...TINY, num_key_value_heads: 3 } }, inputs), {
    instanceOf: ConfigError,
    message: 'invalid PaliGemma config: num_query_heads 2 is not a multiple of num_key_value_heads 3: each key/value head serves num_query_heads / num_key_value_heads query heads',
  });
  t.throws(() => vit(params.vit, { ...TINY, vit_num_heads: 3 }, inputs.images), {
    instanceOf: ConfigError,
    message: 'invalid PaliGemma ViT config: vit_hidden_dim 2 is not a multiple of vit_num_heads 3: each head gets vit_hidden_dim / vit_num_heads features',
  });
  disposeInputs(inputs);
  d.disposeTree(params);
  t.is(tf.memory().numTensors, before);

  // a preset directory whose config does not fit together: refused before a weight is read
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pg-kit-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  fs.cpSync(path.join('checkpoints', 'tiny'), dir, { recursive: true });
  const hf = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8'));
  hf.config.num_key_value_heads = 3;
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(hf));
  t.throws(() => fromPreset(dir), {
    message: `${path.join(dir, 'config.json')}: num_query_heads 4 is not a multiple of num_key_value_heads 3: each key/value head serves num_query_heads / num_key_value_heads query heads`,
  });

  // a config.json: each problem on its own line, prefixed with the file
  const json = { ...encodeConfig(TINY), config: { ...encodeConfig(TINY).config, intermediate_dim: 7, head_dim: 5 } };
  t.throws(() => decodeConfig(json, 'preset/config.json'), {
    message:
      "preset/config.json: intermediate_dim 7 is odd: it is twice the FFN width (keras_hub's convention), so it must be even\n" +
      'preset/config.json: head_dim 5 is odd: RoPE rotates the two halves of each head, so it must be even',
  });
});

test('the kit is a plain module: fast-check and the package entry, no test runner', (t) => {
  const source = fs.readFileSync(path.join(__dirname, '..', '..', '..', 'src', 'testing', 'index.ts'), 'utf8');
  const imports = [...source.matchAll(/^(?:import|export) .* from '([^']+)';$/gm)].map((m) => m[1]);
  t.deepEqual(imports, ['fast-check', '../index', '../index']);
});

test.serial('memoryNeutral returns the result and the counts, and names a leak with both counts', async (t) => {
  const before = tf.memory().numTensors;
  const ok = await memoryNeutral(() => tf.tidy(() => tf.add(tf.scalar(1), tf.scalar(2)).dataSync()[0]));
  t.deepEqual(ok, { result: 3, tensorsBefore: before, tensorsAfter: before });
  let leaked: tf.Tensor | undefined;
  await t.throwsAsync(
    memoryNeutral(async () => {
      leaked = tf.scalar(1);
    }, 'the leaky thing'),
    { message: `the leaky thing is not memory-neutral: ${before} tensors before, ${before + 1} after` },
  );
  leaked!.dispose();
});

test('defaultPresetDir is the first shipped preset, in this checkout', (t) => {
  t.is(defaultPresetDir(), path.resolve(SHIPPED_PRESETS[0].dir));
  t.true(fs.existsSync(path.join(defaultPresetDir(), 'model.weights.h5')));
});
