import test from 'ava';
import * as fc from 'fast-check';
import * as assert from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { PaliGemmaArguments, decodeConfig, encodeConfig } from '../../checkpoints/config';
import { CONFIG_DEFAULTS, type PaliGemmaConfig } from '../../models/config';
import { presetDirs, readManifest } from './helpers';

const readJson = (file: string): Record<string, unknown> => JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, unknown>;

/** pg1_basic's config.json, to edit in the error tests. */
const pg1 = (): { config: Record<string, unknown> } & Record<string, unknown> =>
  readJson('spec/fixtures/keras_hub/pg1_basic/preset/config.json') as { config: Record<string, unknown> } & Record<string, unknown>;

const REQUIRED = {
  vocabulary_size: 128,
  image_size: 16,
  num_layers: 2,
  num_query_heads: 4,
  num_key_value_heads: 1,
  hidden_dim: 32,
  intermediate_dim: 64,
  head_dim: 8,
  vit_patch_size: 4,
  vit_num_heads: 4,
  vit_hidden_dim: 32,
  vit_num_layers: 2,
};

// ---------------------------------------------------------------------------------------------------------------
// The fixtures
// ---------------------------------------------------------------------------------------------------------------

test('every fixture config.json decodes to the kwargs it was built with, plus keras_hub defaults', (t) => {
  for (const [name, preset] of presetDirs()) {
    const kwargs = readManifest(path.dirname(preset)).config!;
    const dtype = name === 'pg1_bf16' ? 'bfloat16' : 'float32';
    const want: PaliGemmaConfig = { ...CONFIG_DEFAULTS, ...kwargs, dtype } as PaliGemmaConfig;
    t.deepEqual(decodeConfig(readJson(path.join(preset, 'config.json'))), want, name);
    // The bare kwargs (no wrapper, no name/trainable/dtype) decode too.
    t.deepEqual(decodeConfig(kwargs), { ...want, dtype: 'float32' }, name);
  }
});

test('encode(decode(config.json)) reproduces keras_hub\'s file, keys in order', (t) => {
  for (const [name, preset] of presetDirs()) {
    const json = readJson(path.join(preset, 'config.json'));
    t.is(JSON.stringify(encodeConfig(decodeConfig(json))), JSON.stringify(json), name);
  }
});

// ---------------------------------------------------------------------------------------------------------------
// Defaults and aliases
// ---------------------------------------------------------------------------------------------------------------

test('missing optional arguments take keras_hub\'s defaults', (t) => {
  t.deepEqual(decodeConfig(REQUIRED), { ...CONFIG_DEFAULTS, ...REQUIRED });
  t.deepEqual(decodeConfig({ ...pg1(), config: { ...REQUIRED, name: 'pali_gemma_backbone', trainable: true } }), { ...CONFIG_DEFAULTS, ...REQUIRED });
});

test('aliases: vit_intermediate_dim null, vit_pooling "0", activation "linear"', (t) => {
  t.is(decodeConfig({ ...REQUIRED, vit_intermediate_dim: null }).vit_intermediate_dim, 4304);
  t.is(decodeConfig({ ...REQUIRED, vit_pooling: '0' }).vit_pooling, 'zero');
  t.is(decodeConfig({ ...REQUIRED, vit_pooling: 'zero' }).vit_pooling, 'zero');
  t.is(decodeConfig({ ...REQUIRED, vit_classifier_activation: 'linear' }).vit_classifier_activation, null);
});

test('dtype: a name, a DTypePolicy (or keras 3.0\'s FloatDTypePolicy), or a DTypePolicyMap\'s default', (t) => {
  const policy = (class_name: string, name: string) => ({ module: 'keras', class_name, config: { name }, registered_name: null });
  const dtype = (d: unknown) => decodeConfig({ ...REQUIRED, dtype: d }).dtype;
  t.is(dtype('bfloat16'), 'bfloat16');
  t.is(dtype(policy('DTypePolicy', 'mixed_bfloat16')), 'mixed_bfloat16');
  t.is(dtype(policy('FloatDTypePolicy', 'float16')), 'float16');
  const map = (default_policy: unknown) => ({
    module: 'keras',
    class_name: 'DTypePolicyMap',
    config: { default_policy, policy_map: { 'decoder_block_0/attention/query': policy('QuantizedDTypePolicy', 'int8_from_bfloat16') } },
    registered_name: null,
  });
  t.is(dtype(map('bfloat16')), 'bfloat16');
  t.is(dtype(map(policy('DTypePolicy', 'bfloat16'))), 'bfloat16');
  t.is(dtype(map(null)), 'float32'); // keras: a null default defers to the global policy, float32 by default
});

// ---------------------------------------------------------------------------------------------------------------
// Errors: each names the file and the field path
// ---------------------------------------------------------------------------------------------------------------

test('errors: wrong types, missing and unknown fields, all listed', (t) => {
  const json = pg1();
  json.config.hidden_dim = 'abc';
  json.config.num_layers = 2.5;
  json.config.dropout = null;
  json.config.vit_pooling = 'avg';
  json.config.rope_max_wavelength = 10000;
  delete json.config.head_dim;
  t.throws(() => decodeConfig(json), {
    message: [
      'config.json: config.num_layers: expected positive integer at most 1024, got 2.5',
      'config.json: config.hidden_dim: expected number, got "abc"',
      'config.json: config.head_dim: missing (required)',
      'config.json: config.vit_pooling: expected one of null, "map", "gap", "zero", "0", got "avg"',
      'config.json: config.dropout: expected number, got null',
      'config.json: config.rope_max_wavelength: unknown field',
    ].join('\n'),
  });
});

test('errors: the wrapper, and the dtype policy', (t) => {
  t.throws(() => decodeConfig({ ...pg1(), class_name: 'GemmaBackbone', build_config: {} }, 'x/config.json'), {
    message: ['x/config.json: class_name: expected one of "PaliGemmaBackbone", got "GemmaBackbone"', 'x/config.json: build_config: unknown field'].join('\n'),
  });
  t.throws(() => decodeConfig({ ...REQUIRED, dtype: 'int8' }), {
    message: 'config.json: dtype: expected one of "float16", "float32", "float64", "bfloat16", "mixed_float16", "mixed_bfloat16", got "int8"',
  });
  t.throws(() => decodeConfig({ ...REQUIRED, dtype: { module: 'keras', class_name: 'DTypePolicy', config: { name: 'float32', extra: 1 } } }), {
    message: 'config.json: dtype.config.extra: unknown field',
  });
  t.throws(() => decodeConfig({ ...REQUIRED, dtype: { module: 'keras', class_name: 'QuantizedDTypePolicy', config: { name: 'int8_from_float32' } } }), {
    message: 'config.json: dtype.class_name: expected one of "DTypePolicy", "FloatDTypePolicy", "DTypePolicyMap", got "QuantizedDTypePolicy"',
  });
  t.throws(() => decodeConfig([1, 2]), { message: 'config.json: expected object, got [1,2]' });
});

// ---------------------------------------------------------------------------------------------------------------
// Round trip
// ---------------------------------------------------------------------------------------------------------------

const positive = fc.integer({ min: 1, max: 1 << 16 });
/** Layer and head counts, within CONFIG_MAXIMA (1024). */
const count = fc.integer({ min: 1, max: 1024 });
/** Factors whose products below stay within CONFIG_MAXIMA: 32 x 32 heads, 90 x 90 px, 1024 x 256 widths. */
const factor = fc.integer({ min: 1, max: 32 });
const side = fc.integer({ min: 1, max: 90 });
const perHead = fc.integer({ min: 1, max: 256 });
/** Finite positive doubles, -0 normalized (JSON cannot tell -0 from 0). */
const positiveReal = fc.double({ min: 1e-12, max: 1e6, noNaN: true });
const arbitraryConfig: fc.Arbitrary<PaliGemmaConfig> = fc.record({
  vocabulary_size: positive,
  image_size: side,
  num_layers: count,
  num_query_heads: factor,
  num_key_value_heads: factor,
  hidden_dim: positive,
  intermediate_dim: positive,
  head_dim: positive,
  vit_patch_size: side,
  vit_num_heads: count,
  vit_hidden_dim: perHead,
  vit_num_layers: count,
  vit_intermediate_dim: positive,
  vit_pooling: fc.constantFrom(null, 'map', 'gap', 'zero'),
  vit_classifier_activation: fc.constantFrom(null, 'gelu', 'gelu_approximate', 'tanh', 'relu'),
  vit_name: fc.option(fc.string(), { nil: null }),
  query_head_dim_normalize: fc.boolean(),
  use_post_ffw_norm: fc.boolean(),
  use_post_attention_norm: fc.boolean(),
  attention_logit_soft_cap: fc.option(positiveReal, { nil: null }),
  final_logit_soft_cap: fc.option(positiveReal, { nil: null }),
  use_sliding_window_attention: fc.boolean(),
  sliding_window_size: positive,
  layer_norm_epsilon: positiveReal,
  dropout: fc.double({ min: 0, max: 0.99, noNaN: true }).map((x) => x + 0),
  dtype: fc.constantFrom('float16', 'float32', 'float64', 'bfloat16', 'mixed_float16', 'mixed_bfloat16'),
}).map((r) => ({
  // the cross-field rules decodeConfig checks (models/config.ts: validateConfig), made true by construction
  ...r,
  vocabulary_size: r.vocabulary_size + 2, // room for pad, eos and bos
  image_size: r.vit_patch_size * r.image_size, // a whole number of patches
  num_query_heads: r.num_key_value_heads * r.num_query_heads, // whole groups
  intermediate_dim: 2 * r.intermediate_dim, // twice the FFN width
  head_dim: 2 * r.head_dim, // RoPE halves
  vit_hidden_dim: r.vit_num_heads * r.vit_hidden_dim, // whole ViT heads
}));

test('decode(encode(config)) is the identity, through JSON text', (t) => {
  fc.assert(
    fc.property(arbitraryConfig, (config) => {
      const text = JSON.stringify(encodeConfig(config));
      // fc.record builds null-prototype objects: compare with a plain copy. A throw lets fast-check shrink.
      assert.deepStrictEqual(decodeConfig(JSON.parse(text)), { ...config });
      assert.ok(PaliGemmaArguments.is(config));
    }),
    { numRuns: 200 },
  );
  t.pass();
});
