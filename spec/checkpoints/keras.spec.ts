import test from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { readKerasWeights, readPresetConfig, readPresetMetadata, readWeightsFiles } from '../../checkpoints/keras';
import { KERAS_HUB, presetDirs, readManifest, tempDir } from './helpers';

const PG1 = path.join(KERAS_HUB, 'pg1_basic/preset');
const SHARDED = path.join(KERAS_HUB, 'pg1_sharded/preset');
const SPLIT_GROUP = 'layers/pali_gemma_vit/layers/pali_gemma_vit_encoder/resblocks/pali_gemma_vit_encoder_block_1/attn/key_proj/vars';

test('every preset: exactly the manifest\'s weights, with their shapes (and shard files)', (t) => {
  for (const [name, preset] of presetDirs()) {
    const weights = readKerasWeights(preset);
    const manifest = readManifest(path.dirname(preset)).weights ?? [];
    t.deepEqual([...weights.keys()].sort(), manifest.map((w) => w.h5_path).sort(), name);
    for (const w of manifest) {
      const got = weights.get(w.h5_path)!;
      t.deepEqual(got.shape, w.shape, `${name}: ${w.h5_path}`);
      if (w.h5_file !== undefined) t.is(path.basename(got.file), w.h5_file, `${name}: ${w.h5_path}`);
      t.is(got.read().length, w.shape.reduce((a, b) => a * b, 1));
    }
  }
});

test('pg1_sharded holds pg1_basic, dataset by dataset', (t) => {
  const basic = readKerasWeights(PG1);
  const sharded = readKerasWeights(SHARDED);
  t.deepEqual([...sharded.keys()].sort(), [...basic.keys()].sort());
  t.deepEqual(new Set([...sharded.values()].map((w) => path.basename(w.file))), new Set(['model_00000.weights.h5', 'model_00001.weights.h5', 'model_00002.weights.h5']));
  for (const [p, w] of basic) {
    const s = sharded.get(p)!;
    t.deepEqual([s.shape, s.dtype, s.layerName], [w.shape, w.dtype, w.layerName], p);
    t.deepEqual(s.read(), w.read(), p);
  }
  // The vars group split across shards: kernel in shard 0, bias in shard 1, whose copy has no name attribute.
  t.deepEqual(
    [0, 1].map((i) => sharded.get(`${SPLIT_GROUP}/${i}`)!).map((w) => [path.basename(w.file), w.layerName]),
    [
      ['model_00000.weights.h5', 'key_proj'],
      ['model_00001.weights.h5', 'key_proj'],
    ],
  );
});

test('weights are lazy: layer names, dtypes and offsets come from the index; read() widens bf16', (t) => {
  const bf16 = readKerasWeights(path.join(KERAS_HUB, 'pg1_bf16/preset'));
  const embedding = bf16.get('layers/reversible_embedding/vars/0')!;
  t.deepEqual([embedding.dtype, embedding.shape, embedding.byteLength, embedding.layerName], ['bfloat16', [128, 32], 128 * 32 * 2, 'token_embedding']);
  const values = embedding.read();
  t.true(values instanceof Float32Array && values.length === 128 * 32);
  t.true(new Uint32Array(values.buffer).every((bits) => (bits & 0xffff) === 0));
  t.is(readKerasWeights(PG1).get('layers/pali_gemma_decoder_block_1/attention/query_dense/vars/0')!.layerName, 'query');
});

test('the standalone ViT weights file (Model.save_weights)', (t) => {
  const weights = readWeightsFiles([path.join(KERAS_HUB, 'vit_pooling_standalone/vit.weights.h5')]);
  t.deepEqual(weights.get('layers/dense/vars/0')!.shape, [16, 24]);
});

test('config and metadata of every preset', (t) => {
  for (const [name, preset] of presetDirs()) {
    const config = readPresetConfig(preset);
    const metadata = readPresetMetadata(preset)!;
    const parameters = [...readKerasWeights(preset).values()].reduce((n, w) => n + w.shape.reduce((a, b) => a * b, 1), 0);
    t.is(metadata.parameter_count, parameters, name);
    t.is(config.dtype, name === 'pg1_bf16' ? 'bfloat16' : 'float32');
  }
});

// ---------------------------------------------------------------------------------------------------------------
// Errors in preset directories
// ---------------------------------------------------------------------------------------------------------------

/** A copy of pg1_sharded's preset to break. */
function shardedCopy(dir: string): string {
  const out = path.join(dir, 'preset');
  fs.cpSync(SHARDED, out, { recursive: true });
  for (const f of fs.readdirSync(out)) fs.chmodSync(path.join(out, f), 0o644);
  return out;
}

const editMap = (preset: string, edit: (map: { metadata: { total_size: number }; weight_map: Record<string, string | string[]> }) => void): void => {
  const file = path.join(preset, 'model.weights.json');
  const map = JSON.parse(fs.readFileSync(file, 'utf8')) as { metadata: { total_size: number }; weight_map: Record<string, string | string[]> };
  edit(map);
  fs.writeFileSync(file, JSON.stringify(map));
};

test('a dataset in two shards is an error', (t) => {
  const { dir, remove } = tempDir();
  try {
    const preset = path.join(dir, 'preset');
    fs.mkdirSync(preset);
    fs.copyFileSync(path.join(PG1, 'model.weights.h5'), path.join(preset, 'model_00000.weights.h5'));
    fs.copyFileSync(path.join(PG1, 'model.weights.h5'), path.join(preset, 'model_00001.weights.h5'));
    fs.writeFileSync(path.join(preset, 'model.weights.json'), JSON.stringify({ metadata: { total_size: 0 }, weight_map: { '/layers/reversible_embedding/vars': ['model_00000.weights.h5', 'model_00001.weights.h5'] } }));
    t.throws(() => readKerasWeights(preset), {
      message: `dataset "layers/pali_gemma_decoder_block/attention/key_dense/vars/0" is in both ${preset}/model_00000.weights.h5 and ${preset}/model_00001.weights.h5`,
    });
  } finally {
    remove();
  }
});

test('the shard map must match the shards', (t) => {
  const { dir, remove } = tempDir();
  try {
    const preset = shardedCopy(dir);
    const mapFile = path.join(preset, 'model.weights.json');
    editMap(preset, (m) => {
      delete m.weight_map['/layers/reversible_embedding/vars'];
      m.weight_map[`/${SPLIT_GROUP}`] = 'model_00000.weights.h5';
      m.metadata.total_size = 1;
    });
    t.throws(() => readKerasWeights(preset), {
      message: [
        `${mapFile}: dataset "layers/reversible_embedding/vars/0" (in model_00000.weights.h5) is not in weight_map: keras would not load it`,
        `${mapFile}: dataset "${SPLIT_GROUP}/1" is in model_00001.weights.h5, but weight_map lists /${SPLIT_GROUP} in model_00000.weights.h5`,
        `${mapFile}: metadata.total_size is 1 bytes, the shards hold 143232`,
      ].join('\n'),
    });
    editMap(preset, (m) => {
      m.weight_map['/layers/nothing/vars'] = 'model_00003.weights.h5';
    });
    t.throws(() => readKerasWeights(preset), { message: `${mapFile}: lists shard model_00003.weights.h5, which is not in ${preset}` });
    fs.writeFileSync(mapFile, '{"weight_map": 3}');
    t.throws(() => readKerasWeights(preset), {
      message: [`${mapFile}: metadata.total_size: expected number, got nothing`, `${mapFile}: weight_map: expected object, got 3`].join('\n'),
    });
  } finally {
    remove();
  }
});

test('preset directories: missing or ambiguous weights, bad config.json', (t) => {
  const { dir, remove } = tempDir();
  try {
    t.throws(() => readKerasWeights(dir), { message: `${dir}: no weights (neither model.weights.h5 nor model.weights.json)` });
    const preset = shardedCopy(dir);
    fs.copyFileSync(path.join(PG1, 'model.weights.h5'), path.join(preset, 'model.weights.h5'));
    t.throws(() => readKerasWeights(preset), { message: `${preset}: both model.weights.h5 and model.weights.json exist; keep the one that was saved last` });
    const config = path.join(preset, 'config.json');
    fs.writeFileSync(config, '{"class_name": "PaliGemmaBackbone",');
    t.throws(() => readPresetConfig(preset), { message: (m: string) => m.startsWith(`${config}: not valid JSON: `) });
    fs.writeFileSync(config, JSON.stringify({ module: 'm', class_name: 'PaliGemmaBackbone', config: { hidden_dim: 'abc' } }));
    const lines = (m: string): string[] => m.split('\n');
    t.throws(() => readPresetConfig(preset), { message: (m: string) => lines(m)[0] === `${config}: config.vocabulary_size: missing (required)` });
    t.throws(() => readPresetConfig(preset), { message: (m: string) => lines(m).includes(`${config}: config.hidden_dim: expected number, got "abc"`) });
    fs.rmSync(config);
    t.throws(() => readPresetConfig(preset), { message: (m: string) => m.startsWith(`${config}: cannot read: ENOENT`) });
    fs.writeFileSync(path.join(preset, 'metadata.json'), JSON.stringify({ parameter_count: 'many' }));
    t.throws(() => readPresetMetadata(preset), { message: `${path.join(preset, 'metadata.json')}: parameter_count: unexpected value "many"` });
    fs.rmSync(path.join(preset, 'metadata.json'));
    t.is(readPresetMetadata(preset), null);
  } finally {
    remove();
  }
});
