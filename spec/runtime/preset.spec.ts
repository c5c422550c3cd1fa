/**
 * Presets: the built-in table (parameter counts from the derived configs), name resolution (aliases, caches of
 * kagglehub and huggingface_hub, local directories), literal errors, the safetensors reader/writer and the
 * Hugging Face <-> keras_hub mapping (round trips through the keras_hub fixtures' expected outputs).
 *
 * Serial throughout: tests set environment variables and the tfjs backend, both process-wide.
 */
import test from 'ava';
import type { ExecutionContext } from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { tf } from '../../dsl/tf';
import * as d from '../../dsl';
import { setBackend, setWasmSafeBytes } from '../../src/runtime/backend';
import { PRESETS, closestPresetNames, findPreset, presetNames } from '../../checkpoints/presets';
import { fromPreset, loadPreset, presetConfig, resolvePreset } from '../../src/runtime/preset';
import { encodeParams, kerasLayout, parameterCount } from '../../checkpoints/params';
import { readKerasWeights, readPresetConfig } from '../../checkpoints/keras';
import { halfToNumber } from '../../checkpoints/h5';
import { decodeHfConfig, encodeHfConfig, hfLayout, kerasToHf, toKeras, writeHfCheckpoint } from '../../checkpoints/hf';
import { readSafetensors, readSafetensorsFile, toBfloat16Bits, toHalfBits, writeSafetensors, writeShardedSafetensors, type TensorToWrite } from '../../checkpoints/safetensors';
import type { PaliGemmaParams } from '../../models/paligemma';
import type { PaliGemmaConfig } from '../../models/config';
import { tempDir } from '../helpers/files';
import { assertFixtureOutput } from '../helpers/fixtures';

const KH = 'spec/fixtures/keras_hub';
const PG1 = path.join(KH, 'pg1_basic');
const PG2 = path.join(KH, 'pg2_full');
const SHARDED = path.join(KH, 'pg1_sharded');
const preset = (fixture: string) => path.join(fixture, 'preset');

test.before(async () => {
  await setBackend('cpu');
});

// ---------------------------------------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------------------------------------

/** Run `f` with these environment variables (undefined = unset), then put them back. */
async function withEnv<T>(vars: Record<string, string | undefined>, f: () => T | Promise<T>): Promise<T> {
  const before = Object.fromEntries(Object.keys(vars).map((k) => [k, process.env[k]]));
  const set = (vs: Record<string, string | undefined>) => {
    for (const [k, v] of Object.entries(vs)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  };
  set(vars);
  try {
    return await f();
  } finally {
    set(before);
  }
}

/** Every cache variable pointed at `root`'s empty subfolders, so nothing on this machine is found by accident. */
const isolated = (root: string, more: Record<string, string | undefined> = {}) => ({
  KAGGLEHUB_CACHE: path.join(root, 'kagglehub'),
  PALIGEMMA_PRESETS: undefined,
  HF_HUB_CACHE: path.join(root, 'hf'),
  HUGGINGFACE_HUB_CACHE: undefined,
  HF_HOME: undefined,
  ...more,
});

/** A writable copy of a preset directory. */
function copyDir(src: string, dst: string): string {
  fs.mkdirSync(dst, { recursive: true });
  for (const f of fs.readdirSync(src)) {
    fs.copyFileSync(path.join(src, f), path.join(dst, f));
    fs.chmodSync(path.join(dst, f), 0o644);
  }
  return dst;
}

function editConfig(dir: string, edit: (c: Record<string, unknown>) => void): void {
  const file = path.join(dir, 'config.json');
  const json = JSON.parse(fs.readFileSync(file, 'utf8'));
  edit(json.config);
  fs.writeFileSync(file, JSON.stringify(json));
}

const thrown = (f: () => unknown): string => {
  try {
    f();
  } catch (e) {
    return (e as Error).message;
  }
  throw new Error('expected an error');
};

async function leafValues(p: PaliGemmaParams): Promise<Map<string, { shape: number[]; data: Float32Array }>> {
  const out = new Map<string, { shape: number[]; data: Float32Array }>();
  for (const [k, x] of d.leaves(p)) out.set(k, { shape: [...x.tensor.shape], data: (await x.tensor.data()) as Float32Array });
  return out;
}

async function assertSameParams(t: ExecutionContext, a: PaliGemmaParams, b: PaliGemmaParams): Promise<void> {
  const [va, vb] = [await leafValues(a), await leafValues(b)];
  t.deepEqual([...va.keys()].sort(), [...vb.keys()].sort());
  for (const [k, x] of va) {
    t.deepEqual(vb.get(k)!.shape, x.shape, k);
    t.deepEqual(vb.get(k)!.data, x.data, k);
  }
}

/** transformers >= 4.52 names (PaliGemmaModel wraps the towers; the head sits outside). */
const newStyleKey = (k: string): string =>
  k.startsWith('language_model.model.') ? `model.language_model.${k.slice('language_model.model.'.length)}`
  : k === 'language_model.lm_head.weight' ? 'lm_head.weight'
  : `model.${k}`;

// ---------------------------------------------------------------------------------------------------------------
// the table
// ---------------------------------------------------------------------------------------------------------------

test.serial('the table: every row of PRESETS.md, with its aliases and Kaggle handle', (t) => {
  t.deepEqual(PRESETS.map((p) => p.name), [
    'pali_gemma_3b_mix_224', 'pali_gemma_3b_224', 'pali_gemma_3b_mix_448', 'pali_gemma_3b_448', 'pali_gemma_3b_896',
    'pali_gemma2_pt_3b_224', 'pali_gemma2_pt_3b_448', 'pali_gemma2_pt_3b_896', 'pali_gemma2_mix_3b_224', 'pali_gemma2_mix_3b_448',
    'pali_gemma_2_ft_docci_3b_448', 'pali_gemma2_pt_10b_224', 'pali_gemma2_pt_10b_448', 'pali_gemma2_pt_10b_896',
    'pali_gemma2_mix_10b_224', 'pali_gemma2_mix_10b_448', 'pali_gemma2_ft_docci_10b_448', 'pali_gemma2_pt_28b_224',
    'pali_gemma2_pt_28b_448', 'pali_gemma2_pt_28b_896', 'pali_gemma2_mix_28b_224', 'pali_gemma2_mix_28b_448',
  ]);
  t.deepEqual(PRESETS.filter((p) => p.sequenceLength !== null).map((p) => [p.name, p.sequenceLength]), [
    ['pali_gemma_3b_mix_224', 256], ['pali_gemma_3b_224', 128], ['pali_gemma_3b_mix_448', 512], ['pali_gemma_3b_448', 512], ['pali_gemma_3b_896', 512],
  ]);
  t.is(findPreset('pali_gemma2_mix_28b_224')!.kaggleHandle, 'kaggle://keras/paligemma2/keras/pali_gemma2_28b_mix_224/3');
  t.is(findPreset('pali_gemma2_pt_28b_224')!.kaggleHandle, 'kaggle://keras/paligemma2/keras/pali_gemma2_pt_28b_224/4');
  t.is(findPreset('pali_gemma_3b_896')!.kaggleHandle, 'kaggle://keras/paligemma/keras/pali_gemma_3b_896/4');
  for (const p of PRESETS) {
    t.is(p.imageSize as number, p.config.image_size, p.name);
    // Kaggle spells the 28B mix variations differently (pali_gemma2_28b_mix_*).
    t.is(p.kaggleHandle.split('/').slice(-2)[0], p.name.replace('pali_gemma2_mix_28b_', 'pali_gemma2_28b_mix_'), p.name);
    t.is(p.config.dtype, p.family === 'PG1 3B' ? 'float32' : 'bfloat16', p.name);
  }
  t.regex(findPreset('pali_gemma_3b_mix_224')!.description, /^PaliGemma 3B, image size 224, fine-tuned on a mixture .*text sequence length 256\.$/);
});

test.serial("every preset: parameterCount(config) is keras_hub's count (28B at 448/896: + 1152 x (patches - 256))", (t) => {
  for (const p of PRESETS) {
    const patches = (p.imageSize / 14) ** 2;
    const slip = p.family === 'PG2 28B' ? 1152 * (patches - 256) : 0;
    t.is(parameterCount(p.config), p.kerasHubParams + slip, p.name);
    t.is(p.params, parameterCount(p.config), p.name);
  }
  t.is(findPreset('pali_gemma2_pt_28b_448')!.params, 27_651_076_848);
  t.is(findPreset('pali_gemma2_pt_28b_896')!.params, 27_654_615_792);
  // PRESETS.md's check by hand for pali_gemma_3b_224: language model + vision (encoder and projection).
  const specs = kerasLayout(findPreset('pali_gemma_3b_224')!.config);
  const count = (keep: (k: string) => boolean) => specs.filter((s) => keep(s.keras)).reduce((n, s) => n + s.kerasShape.reduce((a, b) => a * b, 1), 0);
  const vision = (k: string) => k.startsWith('image_encoder/') || k.startsWith('image_classifier/');
  t.deepEqual([count((k) => !vision(k)), count(vision)], [2_508_531_712, 414_803_696]);
});

test.serial('architectures: the decoder of each family', (t) => {
  const pick = (name: string) => {
    const c = findPreset(name)!.config;
    return [c.num_layers, c.num_query_heads, c.num_key_value_heads, c.hidden_dim, c.intermediate_dim, c.head_dim, c.query_head_dim_normalize, c.attention_logit_soft_cap, c.final_logit_soft_cap, c.use_sliding_window_attention, c.use_post_attention_norm, c.use_post_ffw_norm];
  };
  t.deepEqual(pick('pali_gemma_3b_448'), [18, 8, 1, 2048, 32768, 256, true, null, null, false, false, false]);
  t.deepEqual(pick('pali_gemma2_mix_3b_224'), [26, 8, 4, 2304, 18432, 256, true, 50, 30, true, true, true]);
  t.deepEqual(pick('pali_gemma2_ft_docci_10b_448'), [42, 16, 8, 3584, 28672, 256, true, 50, 30, true, true, true]);
  t.deepEqual(pick('pali_gemma2_pt_28b_896'), [46, 32, 16, 4608, 73728, 128, false, 50, 30, true, true, true]);
  const vit = findPreset('pali_gemma2_pt_28b_896')!.config;
  t.deepEqual([vit.vocabulary_size, vit.vit_patch_size, vit.vit_hidden_dim, vit.vit_num_layers, vit.vit_num_heads, vit.vit_intermediate_dim, vit.vit_pooling, vit.sliding_window_size, vit.layer_norm_epsilon, vit.dropout], [257152, 14, 1152, 27, 16, 4304, null, 4096, 1e-6, 0]);
});

test.serial('aliases and near misses', (t) => {
  t.is(findPreset('pali_gemma2_3b_ft_docci_448')!.name, 'pali_gemma_2_ft_docci_3b_448');
  t.is(findPreset('pali_gemma2_10b_ft_docci_448')!.name, 'pali_gemma2_ft_docci_10b_448');
  t.is(findPreset('pali_gemma_mix_224')!.name, 'pali_gemma_3b_mix_224');
  t.is(findPreset('pali_gemma_3b'), undefined);
  t.is(presetNames().length, 22 + 3);
  t.deepEqual(closestPresetNames('pali_gemma_3b_22'), ['pali_gemma_3b_224', 'pali_gemma_3b_448', 'pali_gemma_3b_896']);
  t.deepEqual(closestPresetNames('PaliGemma2-3B-pt-224'), ['pali_gemma2_pt_3b_224', 'pali_gemma2_pt_28b_224', 'pali_gemma_3b_224']);
  t.deepEqual(closestPresetNames('pali_gemma2_28b_mix_224', 1), ['pali_gemma2_mix_28b_224']);
});

// ---------------------------------------------------------------------------------------------------------------
// resolution and its errors
// ---------------------------------------------------------------------------------------------------------------

const FORMS =
  'A preset is a built-in name (checkpoints/presets.ts), a local directory (a keras_hub preset or a Hugging Face checkpoint), ' +
  'kaggle://<owner>/<model>/<framework>/<variation>[/<version>] or hf://<org>/<repo>[@<revision>].';

test.serial('an unknown preset: the closest names, literally', async (t) => {
  const root = tempDir(t, 'paligemma-presets-');
  await withEnv(isolated(root), () => {
    t.is(
      thrown(() => fromPreset('pali_gemma_3b_22')),
      `fromPreset("pali_gemma_3b_22"): unknown preset. Closest built-in presets: pali_gemma_3b_224, pali_gemma_3b_448, pali_gemma_3b_896. ${FORMS}`,
    );
    t.is(thrown(() => fromPreset('gs://bucket/preset')), `fromPreset("gs://bucket/preset"): the gs:// scheme is not supported here. ${FORMS}`);
    t.is(
      thrown(() => fromPreset('kaggle://keras/paligemma')),
      'fromPreset("kaggle://keras/paligemma"): not a Kaggle model handle; expected kaggle://<owner>/<model>/<framework>/<variation>[/<version>] (no empty, "." or ".." parts)',
    );
    const missing = path.join(root, 'nowhere');
    t.is(thrown(() => loadPreset(missing)), `fromPreset("${missing}"): ${missing} is not a directory. ${FORMS}`);
  });
});

test.serial('a known preset that is not downloaded: every path tried and how to get it, literally', async (t) => {
  const root = tempDir(t, 'paligemma-presets-');
  const presets = path.join(root, 'presets');
  const kaggle = path.join(root, 'kagglehub');
  await withEnv(isolated(root, { PALIGEMMA_PRESETS: presets }), () => {
    t.is(
      thrown(() => fromPreset('pali_gemma2_3b_ft_docci_448')),
      'fromPreset("pali_gemma2_3b_ft_docci_448"): the preset is not on this machine, and paligemma-ts downloads nothing. Looked in:\n' +
        `  - ${presets}/pali_gemma_2_ft_docci_3b_448 ($PALIGEMMA_PRESETS): no such directory\n` +
        `  - ${presets}/pali_gemma2_3b_ft_docci_448 ($PALIGEMMA_PRESETS): no such directory\n` +
        `  - ${kaggle}/models/keras/paligemma2/keras/pali_gemma_2_ft_docci_3b_448/2 (kagglehub's cache, $KAGGLEHUB_CACHE): no such directory\n` +
        'Get it with kagglehub where there is a network (a Kaggle account that accepted the Gemma license):\n' +
        `    python -c 'import kagglehub; print(kagglehub.model_download("keras/paligemma2/keras/pali_gemma_2_ft_docci_3b_448/2"))'\n` +
        '  then use the same cache here (KAGGLEHUB_CACHE), copy the printed directory to $PALIGEMMA_PRESETS/<name>, or pass that directory.\n' +
        'For initialised weights with this architecture: fromPreset("pali_gemma2_3b_ft_docci_448", { loadWeights: false }).',
    );
    // Another version in the cache is named, never loaded instead.
    fs.mkdirSync(path.join(kaggle, 'models/keras/paligemma2/keras/pali_gemma2_pt_3b_224/3'), { recursive: true });
    const message = thrown(() => fromPreset('pali_gemma2_pt_3b_224'));
    t.true(
      message.includes(
        `  - ${kaggle}/models/keras/paligemma2/keras/pali_gemma2_pt_3b_224/2 (kagglehub's cache, $KAGGLEHUB_CACHE): no such directory; ` +
          'versions there: 3 (kaggle://keras/paligemma2/keras/pali_gemma2_pt_3b_224/3 loads one)\n',
      ),
      message,
    );
  });
  await withEnv(isolated(root), () => {
    t.is(
      thrown(() => fromPreset('hf://google/paligemma2-3b-pt-224')),
      'fromPreset("hf://google/paligemma2-3b-pt-224"): the preset is not on this machine, and paligemma-ts downloads nothing. Looked in:\n' +
        `  - ${root}/hf/models--google--paligemma2-3b-pt-224/snapshots (the Hugging Face cache, $HF_HUB_CACHE): no such directory\n` +
        'Get it with huggingface_hub where there is a network (the PaliGemma repos are gated: accept the license, then huggingface-cli login):\n' +
        '    huggingface-cli download google/paligemma2-3b-pt-224\n' +
        '  then use the same cache here (HF_HUB_CACHE or HF_HOME), or pass the snapshot directory.',
    );
  });
});

test.serial('kagglehub cache: built-in names, kaggle:// handles with and without a version; $PALIGEMMA_PRESETS first', async (t) => {
  const root = tempDir(t, 'paligemma-presets-');
  const variation = path.join(root, 'kagglehub/models/keras/paligemma/keras/pali_gemma_3b_224');
  copyDir(preset(PG1), path.join(variation, '4'));
  copyDir(preset(PG2), path.join(variation, '3'));
  fs.writeFileSync(path.join(variation, '4.complete'), ''); // kagglehub's markers are not folders
  const pg1Config = readPresetConfig(preset(PG1));
  const pg2Config = readPresetConfig(preset(PG2));
  await withEnv(isolated(root), async () => {
    const r = resolvePreset('pali_gemma_3b_224');
    t.deepEqual([r.dir, r.format, r.builtin?.name], [path.join(variation, '4'), 'keras', 'pali_gemma_3b_224']);
    t.deepEqual(presetConfig('pali_gemma_3b_224'), pg1Config); // the files' config, not the table's
    const params = fromPreset('pali_gemma_3b_224');
    const reference = loadPreset(preset(PG1));
    await assertSameParams(t, params, reference);
    d.disposeTree(params);
    d.disposeTree(reference);
    t.is(resolvePreset('kaggle://keras/paligemma/keras/pali_gemma_3b_224').dir, path.join(variation, '4')); // the highest version
    t.is(resolvePreset('kaggle://keras/paligemma/keras/pali_gemma_3b_224/3').dir, path.join(variation, '3'));
    t.is(resolvePreset('kaggle://keras/paligemma/keras/pali_gemma_3b_224/3').builtin?.name, 'pali_gemma_3b_224');
    t.deepEqual(presetConfig('kaggle://keras/paligemma/keras/pali_gemma_3b_224/3'), pg2Config);
  });
  const presets = path.join(root, 'presets');
  copyDir(preset(PG2), path.join(presets, 'pali_gemma_3b_224'));
  copyDir(preset(PG1), path.join(presets, 'pali_gemma2_10b_ft_docci_448')); // an alias as folder name
  await withEnv(isolated(root, { PALIGEMMA_PRESETS: presets }), () => {
    t.is(resolvePreset('pali_gemma_3b_224').dir, path.join(presets, 'pali_gemma_3b_224'));
    t.deepEqual(presetConfig('pali_gemma_3b_224'), pg2Config);
    const alias = resolvePreset('pali_gemma2_10b_ft_docci_448');
    t.deepEqual([alias.dir, alias.builtin?.name], [path.join(presets, 'pali_gemma2_10b_ft_docci_448'), 'pali_gemma2_ft_docci_10b_448']);
  });
});

test.serial('Hugging Face cache: refs/main, @revision, the newest snapshot, $HF_HOME; snapshot files are links to blobs', async (t) => {
  const root = tempDir(t, 'paligemma-presets-');
  const repo = path.join(root, 'home/hub/models--someone--tiny-paligemma');
  const params = loadPreset(preset(PG1));
  const staging = path.join(root, 'staging');
  writeHfCheckpoint(staging, params);
  const snapshot = (commit: string) => {
    const dir = path.join(repo, 'snapshots', commit);
    fs.mkdirSync(dir, { recursive: true });
    for (const f of fs.readdirSync(staging)) {
      const blob = path.join(repo, 'blobs', `${commit}-${f}`);
      fs.mkdirSync(path.dirname(blob), { recursive: true });
      fs.copyFileSync(path.join(staging, f), blob);
      fs.symlinkSync(path.relative(dir, blob), path.join(dir, f));
    }
    return dir;
  };
  const a = snapshot('aaaa1111');
  const b = snapshot('bbbb2222');
  fs.utimesSync(a, new Date(), new Date(Date.now() + 60_000)); // a is the newest
  await withEnv(isolated(root, { HF_HUB_CACHE: undefined, HF_HOME: path.join(root, 'home') }), async () => {
    t.is(resolvePreset('hf://someone/tiny-paligemma').dir, a);
    fs.mkdirSync(path.join(repo, 'refs'));
    fs.writeFileSync(path.join(repo, 'refs/main'), 'bbbb2222');
    t.deepEqual([resolvePreset('hf://someone/tiny-paligemma').dir, resolvePreset('hf://someone/tiny-paligemma').format], [b, 'hf']);
    t.is(resolvePreset('hf://someone/tiny-paligemma@aaaa1111').dir, a);
    fs.writeFileSync(path.join(repo, 'refs/v1'), 'aaaa1111');
    t.is(resolvePreset('hf://someone/tiny-paligemma@v1').dir, a);
    t.regex(thrown(() => fromPreset('hf://someone/tiny-paligemma@v2')), /no ref or snapshot "v2"\n/);
    const loaded = fromPreset('hf://someone/tiny-paligemma');
    await assertSameParams(t, loaded, params);
    d.disposeTree(loaded);
  });
  d.disposeTree(params);
});

// ---------------------------------------------------------------------------------------------------------------
// Hugging Face round trips
// ---------------------------------------------------------------------------------------------------------------

test.serial("HF round trip, pg1_basic: legacy names, a padded embedding never read, the tied head; keras_hub's output", async (t) => {
  const dir = tempDir(t, 'paligemma-presets-');
  const params = loadPreset(preset(PG1));
  const c = params.config;
  const hf = kerasToHf(c, encodeParams(params));
  const embedding = hf.get('language_model.model.embed_tokens.weight')!;
  // PG1: 128 ids + <image>, padded to a multiple of 64 rows; the padding must never be read.
  t.deepEqual(embedding.shape, [192, 32]);
  embedding.values.fill(Number.NaN, 128 * 32);
  const tensors: [string, TensorToWrite][] = [...hf, ['language_model.lm_head.weight', { shape: embedding.shape, values: embedding.values }]];
  writeSafetensors(path.join(dir, 'model.safetensors'), tensors);
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(encodeHfConfig(c)));
  const config = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8'));
  t.deepEqual([config.image_token_index, config.text_config.vocab_size, config.text_config.model_type], [128, 192, 'gemma']);

  const loaded = fromPreset(dir);
  t.deepEqual(loaded.config, c);
  await assertSameParams(t, loaded, params);
  await assertFixtureOutput(t, PG1, loaded);
  d.disposeTree(loaded);
  d.disposeTree(params);
});

test.serial("HF round trip, pg2_full: sharded, transformers >= 4.52 names, Gemma 2 norms and query scale; keras_hub's output", async (t) => {
  const dir = tempDir(t, 'paligemma-presets-');
  const params = loadPreset(preset(PG2));
  const c = params.config;
  const hfConfig = encodeHfConfig(c);
  t.like(hfConfig, { text_config: { model_type: 'gemma2', query_pre_attn_scalar: 8, head_dim: 12, attn_logit_softcapping: 2, final_logit_softcapping: 1.5, sliding_window: 4, rms_norm_eps: 0.001 } });
  // keras' dropout has no HF counterpart; everything else comes back.
  t.deepEqual(decodeHfConfig(hfConfig), { ...c, dropout: 0 });
  const renamed = [...kerasToHf(c, encodeParams(params))].map(([k, v]) => [newStyleKey(k), v] as const);
  const shards = writeShardedSafetensors(dir, renamed, 40_000);
  t.true(shards.length >= 3, `${shards.length} shards`);
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(hfConfig));

  const loaded = fromPreset(dir);
  t.deepEqual(loaded.config, { ...c, dropout: 0 });
  await assertSameParams(t, loaded, params);
  await assertFixtureOutput(t, PG2, loaded);
  d.disposeTree(loaded);
  d.disposeTree(params);
});

test.serial('writeHfCheckpoint: bf16 weights come back rounded to nearest even, with dtype bfloat16', async (t) => {
  const dir = tempDir(t, 'paligemma-presets-');
  const params = loadPreset(preset(PG1));
  writeHfCheckpoint(dir, params, { dtype: 'BF16' });
  const tensors = readSafetensors(dir);
  t.deepEqual([...new Set([...tensors.values()].map((x) => x.dtype))], ['BF16']);
  const loaded = fromPreset(dir);
  t.is(loaded.config.dtype, 'bfloat16');
  const [a, b] = [await leafValues(params), await leafValues(loaded)];
  for (const [k, x] of a) {
    const expected = Uint32Array.from(x.data, (v) => toBfloat16Bits(v) << 16);
    t.deepEqual(new Uint32Array(b.get(k)!.data.buffer), expected, k);
  }
  d.disposeTree(loaded);
  d.disposeTree(params);
});

test.serial("HF transforms follow transformers' layouts (index-coded values)", (t) => {
  const coded = (shape: number[], code: (i: number[]) => number) => {
    const out = new Float32Array(shape.reduce((a, b) => a * b, 1));
    const idx = shape.map(() => 0);
    for (let o = 0; o < out.length; o++) {
      out[o] = code(idx);
      for (let a = shape.length - 1; a >= 0 && ++idx[a] === shape[a]; a--) idx[a] = 0;
    }
    return out;
  };
  const at = (values: Float32Array, shape: number[], i: number[]) => values[i.reduce((o, x, a) => o * shape[a] + x, 0)];
  const [N, H, D] = [2, 3, 4];
  // q_proj.weight[n*H + h, d] is keras query[n, d, h]
  const q = toKeras({ kind: 'heads_in', headDim: H }, [N * H, D], coded([N * H, D], ([r, dd]) => 100 * Math.floor(r / H) + 10 * (r % H) + dd));
  for (const [n, dd, h] of [[0, 0, 0], [1, 2, 1], [1, 3, 2], [0, 1, 2]]) t.is(at(q, [N, D, H], [n, dd, h]), 100 * n + 10 * h + dd);
  // o_proj.weight[d, n*H + h] is keras attention_output[n, h, d]
  const o = toKeras({ kind: 'heads_out', headDim: H }, [D, N * H], coded([D, N * H], ([dd, c]) => 100 * Math.floor(c / H) + 10 * (c % H) + dd));
  for (const [n, h, dd] of [[0, 0, 0], [1, 2, 3], [0, 1, 2]]) t.is(at(o, [N, H, D], [n, h, dd]), 100 * n + 10 * h + dd);
  // patch_embedding.weight[out, channel, y, x] is keras embedding_conv[y, x, channel, out]
  const conv = toKeras({ kind: 'conv' }, [5, 3, 2, 2], coded([5, 3, 2, 2], ([oo, ch, y, x]) => 1000 * oo + 100 * ch + 10 * y + x));
  for (const [y, x, ch, oo] of [[0, 1, 2, 4], [1, 0, 1, 3], [1, 1, 0, 0]]) t.is(at(conv, [2, 2, 3, 5], [y, x, ch, oo]), 1000 * oo + 100 * ch + 10 * y + x);
  // Linear.weight[out, in] is keras kernel[in, out]; the embedding keeps its first rows
  const lin = toKeras({ kind: 'transpose' }, [3, 2], coded([3, 2], ([oo, i]) => 10 * oo + i));
  t.deepEqual([...lin], [0, 10, 20, 1, 11, 21]);
  t.deepEqual([...toKeras({ kind: 'rows', rows: 2 }, [3, 2], Float32Array.of(1, 2, 3, 4, 5, 6))], [1, 2, 3, 4]);
});

test.serial('HF norms: PaliGemma 1\'s post_attention_layernorm is the pre-FFW norm, PaliGemma 2\'s the post-attention one', (t) => {
  const norms = (c: PaliGemmaConfig) =>
    hfLayout(c)
      .filter((s) => s.hf.startsWith('language_model.model.layers.0.') && s.hf.includes('layernorm'))
      .map((s) => [s.hf.replace('language_model.model.layers.0.', ''), s.keras.keras]);
  t.deepEqual(norms(readPresetConfig(preset(PG1))), [
    ['input_layernorm.weight', 'decoder_block_0/pre_attention_norm/scale'],
    ['post_attention_layernorm.weight', 'decoder_block_0/pre_ffw_norm/scale'],
  ]);
  t.deepEqual(norms(readPresetConfig(preset(PG2))), [
    ['input_layernorm.weight', 'decoder_block_0/pre_attention_norm/scale'],
    ['post_attention_layernorm.weight', 'decoder_block_0/post_attention_norm/scale'],
    ['pre_feedforward_layernorm.weight', 'decoder_block_0/pre_ffw_norm/scale'],
    ['post_feedforward_layernorm.weight', 'decoder_block_0/post_ffw_norm/scale'],
  ]);
});

// Modelled on the published config.json files (transformers writes only the fields that differ from defaults).
const HF_PG1_3B_224 = {
  architectures: ['PaliGemmaForConditionalGeneration'], bos_token_id: 2, eos_token_id: 1, hidden_size: 2048, ignore_index: -100,
  image_token_index: 257152, model_type: 'paligemma', pad_token_id: 0, projection_dim: 2048, torch_dtype: 'float32',
  text_config: { hidden_size: 2048, intermediate_size: 16384, model_type: 'gemma', num_attention_heads: 8, num_hidden_layers: 18, num_image_tokens: 256, num_key_value_heads: 1, torch_dtype: 'float32', vocab_size: 257216 },
  vision_config: { hidden_size: 1152, intermediate_size: 4304, model_type: 'siglip_vision_model', num_attention_heads: 16, num_hidden_layers: 27, num_image_tokens: 256, patch_size: 14, projection_dim: 2048, projector_hidden_act: 'gelu_fast', vision_use_head: false },
};
const hfPg2 = (size: number, text: Record<string, unknown>) => ({
  architectures: ['PaliGemmaForConditionalGeneration'], bos_token_id: 2, eos_token_id: 1, hidden_size: 2048, image_token_index: 257152,
  model_type: 'paligemma', pad_token_id: 0, projection_dim: text['hidden_size'], torch_dtype: 'bfloat16',
  text_config: { final_logit_softcapping: 30.0, hidden_activation: 'gelu_pytorch_tanh', model_type: 'gemma2', num_image_tokens: (size / 14) ** 2, sliding_window: 4096, torch_dtype: 'bfloat16', vocab_size: 257152, ...text },
  vision_config: { hidden_size: 1152, image_size: size, intermediate_size: 4304, model_type: 'siglip_vision_model', num_attention_heads: 16, num_hidden_layers: 27, num_image_tokens: (size / 14) ** 2, num_positions: (size / 14) ** 2, patch_size: 14, projection_dim: text['hidden_size'], torch_dtype: 'bfloat16', vision_use_head: false },
});

test.serial("HF config.json: PaliGemma 1 and 2 as published decode to the table's configs", (t) => {
  t.deepEqual(decodeHfConfig(HF_PG1_3B_224), findPreset('pali_gemma_3b_224')!.config);
  const pg2_3b = { head_dim: 256, hidden_size: 2304, intermediate_size: 9216, num_attention_heads: 8, num_hidden_layers: 26, num_key_value_heads: 4, query_pre_attn_scalar: 256 };
  // head_dim is text_config's (256), not num_image_tokens (1024): keras_hub's converter confuses the two.
  t.deepEqual(decodeHfConfig(hfPg2(448, pg2_3b)), findPreset('pali_gemma2_pt_3b_448')!.config);
  const pg2_10b = { head_dim: 256, hidden_size: 3584, intermediate_size: 14336, num_attention_heads: 16, num_hidden_layers: 42, num_key_value_heads: 8, query_pre_attn_scalar: 256 };
  t.deepEqual(decodeHfConfig(hfPg2(224, pg2_10b)), findPreset('pali_gemma2_mix_10b_224')!.config);
  const pg2_28b = { head_dim: 128, hidden_size: 4608, intermediate_size: 36864, num_attention_heads: 32, num_hidden_layers: 46, num_key_value_heads: 16, query_pre_attn_scalar: 144 };
  t.deepEqual(decodeHfConfig(hfPg2(896, pg2_28b)), findPreset('pali_gemma2_pt_28b_896')!.config);
  // Newer files list the layer types; the same pattern is accepted.
  const types = Array.from({ length: 26 }, (_, i) => (i % 2 === 0 ? 'sliding_attention' : 'full_attention'));
  t.deepEqual(decodeHfConfig(hfPg2(224, { ...pg2_3b, layer_types: types })), findPreset('pali_gemma2_pt_3b_224')!.config);
  for (const p of PRESETS) t.deepEqual(decodeHfConfig(encodeHfConfig(p.config)), p.config, p.name);
});

test.serial('HF config.json: every problem listed, literally', (t) => {
  const bad = hfPg2(224, { head_dim: 256, hidden_size: 2304, num_attention_heads: 8, query_pre_attn_scalar: 100, rope_theta: 1e6, vocab_size: undefined, num_image_tokens: 100 });
  (bad.vision_config as Record<string, unknown>)['layer_norm_eps'] = 1e-5;
  t.is(
    thrown(() => decodeHfConfig(bad, 'x/config.json')),
    [
      'x/config.json: text_config.vocab_size: expected a positive integer, got nothing',
      'x/config.json: text_config.rope_theta: expected 10000 (keras_hub\'s Gemma), got 1000000',
      'x/config.json: text_config.query_pre_attn_scalar: expected head_dim (256) or hidden_size / num_attention_heads (288), got 100',
      'x/config.json: vision_config.layer_norm_eps: expected 1e-6 (SigLIP\'s, fixed in keras_hub), got 0.00001',
      'x/config.json: num_image_tokens: expected (image_size / patch_size)^2 = 256, got 100',
    ].join('\n'),
  );
  t.is(
    thrown(() => decodeHfConfig({ ...HF_PG1_3B_224, text_config: { ...HF_PG1_3B_224.text_config, model_type: 'gemma3' } }, 'c.json')),
    'c.json: text_config.model_type: expected "gemma" (PaliGemma 1) or "gemma2" (PaliGemma 2), got "gemma3"',
  );
});

test.serial('HF weights: missing, mis-shaped and unexpected tensors named in HF terms, literally; an unused SigLIP head is ignored', async (t) => {
  const dir = tempDir(t, 'paligemma-presets-');
  const params = loadPreset(preset(PG1));
  const hf = kerasToHf(params.config, encodeParams(params));
  d.disposeTree(params);
  hf.delete('language_model.model.norm.weight');
  hf.set('language_model.model.layers.0.self_attn.q_proj.weight', { shape: [32, 31], values: new Float32Array(32 * 31) });
  hf.set('vision_tower.vision_model.head.probe', { shape: [1, 1, 32], values: new Float32Array(32) });
  const file = path.join(dir, 'model.safetensors');
  writeSafetensors(file, hf);
  const config = encodeHfConfig(readPresetConfig(preset(PG1)));
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(config));
  t.is(
    thrown(() => fromPreset(dir)),
    `${dir}: 3 problem(s) with the Hugging Face weights for this config:\n` +
      `  wrong shape language_model.model.layers.0.self_attn.q_proj.weight in ${file}: expected [32, 32] (for decoder_block_0/attention/query/kernel [4, 32, 8]), got [32, 31]\n` +
      '  missing language_model.model.norm.weight (HF shape [32], for final_normalization/scale [32])\n' +
      `  unexpected vision_tower.vision_model.head.probe (shape [1, 1, 32], in ${file})`,
  );
  // transformers' SigLIP keeps its pooling head unless vision_use_head is false; PaliGemma never runs it.
  delete (config.vision_config as Record<string, unknown>)['vision_use_head'];
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(config));
  t.regex(thrown(() => fromPreset(dir)), /^[^\n]*: 2 problem\(s\)/);
});

// ---------------------------------------------------------------------------------------------------------------
// corrupted Keras presets
// ---------------------------------------------------------------------------------------------------------------

test.serial('a truncated model.weights.h5: the file, its sizes and what is lost, literally', async (t) => {
  const root = tempDir(t, 'paligemma-presets-');
  const dir = copyDir(preset(PG1), path.join(root, 'pg1'));
  const file = path.join(dir, 'model.weights.h5');
  // h5py writes the group tree last: a cut near the end loses the final norm's group.
  fs.truncateSync(file, 299_700);
  t.is(
    thrown(() => fromPreset(dir)),
    `${file}: truncated HDF5 file (299700 bytes, the superblock says 300184): symbol table node of group "layers/rms_normalization/vars" needs bytes 299856..299864`,
  );
  // In a shard whose tree comes first, the weight itself is named.
  const sharded = copyDir(preset(SHARDED), path.join(root, 'sharded'));
  const shard = path.join(sharded, 'model_00000.weights.h5');
  fs.truncateSync(shard, 90_970);
  const block = 'layers/pali_gemma_vit/layers/pali_gemma_vit_encoder/resblocks/pali_gemma_vit_encoder_block';
  t.is(
    thrown(() => fromPreset(sharded)),
    `${shard}: truncated HDF5 file (90970 bytes, the superblock says 113960): object header of "${block}/mlp_dense_1/vars/1" needs bytes 90784..91040; ` +
      `object header of "${block}/mlp_dense_2" needs bytes 91040..91044; object header of "${block}_1" needs bytes 101936..101940`,
  );
  // A file cut after it was indexed (weights are read lazily): the weight being read is named.
  const again = copyDir(preset(PG1), path.join(root, 'again'));
  const againFile = path.join(again, 'model.weights.h5');
  const patch = readKerasWeights(again).get('layers/pali_gemma_vit/layers/pali_gemma_vit_encoder/vision_embeddings/patch_embedding/vars/0')!;
  const before = tf.memory().numTensors;
  const message = thrown(() => fromPreset(again, { onProgress: (done) => done === 128 * 32 && fs.truncateSync(againFile, 1000) }));
  t.is(
    message,
    `${againFile}: truncated HDF5 file (1000 bytes): dataset "${patch.path}" needs bytes ${patch.offset}..${patch.offset + patch.byteLength} (${patch.byteLength} bytes)`,
  );
  t.is(tf.memory().numTensors, before, 'the embedding read before the failure is not left behind');
});

test.serial('a weight whose shape does not fit the config, and missing weights: key and shapes, literally', async (t) => {
  const root = tempDir(t, 'paligemma-presets-');
  const dir = copyDir(preset(PG1), path.join(root, 'shape'));
  editConfig(dir, (c) => {
    c['image_size'] = 20; // 25 patches; the file has 16 position embeddings
  });
  const before = tf.memory().numTensors;
  t.is(
    thrown(() => fromPreset(dir)),
    `${dir}: 1 problem(s) with the weights for this config:\n` +
      `  wrong shape layers/pali_gemma_vit/layers/pali_gemma_vit_encoder/vision_embeddings/position_embedding/vars/0 in ${dir}/model.weights.h5 ` +
      '(image_encoder/encoder_embeddings/position_embedding/embeddings): expected [25, 32], got [16, 32]',
  );
  const missing = copyDir(preset(PG1), path.join(root, 'missing'));
  editConfig(missing, (c) => {
    c['use_post_attention_norm'] = true;
  });
  t.is(
    thrown(() => fromPreset(missing)),
    `${missing}: 2 problem(s) with the weights for this config:\n` +
      '  missing layers/pali_gemma_decoder_block/post_attention_norm/vars/0 (decoder_block_0/post_attention_norm/scale, expected shape [32])\n' +
      '  missing layers/pali_gemma_decoder_block_1/post_attention_norm/vars/0 (decoder_block_1/post_attention_norm/scale, expected shape [32])',
  );
  t.is(tf.memory().numTensors, before, 'nothing allocated');
});

test.serial('preset directories: task.json backbones, and folders that are not presets', async (t) => {
  const root = tempDir(t, 'paligemma-presets-');
  const task = copyDir(preset(PG1), path.join(root, 'task'));
  const backbone = JSON.parse(fs.readFileSync(path.join(task, 'config.json'), 'utf8'));
  fs.writeFileSync(
    path.join(task, 'task.json'),
    JSON.stringify({ module: 'keras_hub.src.models.pali_gemma.pali_gemma_causal_lm', class_name: 'PaliGemmaCausalLM', config: { backbone, preprocessor: null, name: 'pali_gemma_causal_lm', trainable: true }, registered_name: 'keras_hub>PaliGemmaCausalLM' }),
  );
  fs.rmSync(path.join(task, 'config.json'));
  t.deepEqual(presetConfig(task), readPresetConfig(preset(PG1)));
  const params = fromPreset(task);
  t.is(params.layers.length, 2);
  d.disposeTree(params);

  const empty = path.join(root, 'empty');
  fs.mkdirSync(empty);
  fs.writeFileSync(path.join(empty, 'README.md'), '');
  t.is(
    thrown(() => fromPreset(empty)),
    `${empty}: not a PaliGemma preset: expected config.json (keras_hub: class_name PaliGemmaBackbone; Hugging Face: model_type paligemma, ` +
      'with *.safetensors) or a keras_hub task.json whose backbone is a PaliGemmaBackbone',
  );
  fs.writeFileSync(path.join(empty, 'config.json'), JSON.stringify({ class_name: 'GemmaBackbone', config: {} }));
  t.is(
    thrown(() => fromPreset(empty)),
    `${empty}/config.json: not a PaliGemma config (class_name "GemmaBackbone"; expected class_name "PaliGemmaBackbone" or model_type "paligemma")`,
  );
  fs.writeFileSync(path.join(empty, 'config.json'), JSON.stringify(HF_PG1_3B_224));
  t.is(thrown(() => fromPreset(empty)), `${empty}: a Hugging Face config.json but no model.safetensors or model.safetensors.index.json`);
});

// ---------------------------------------------------------------------------------------------------------------
// safetensors
// ---------------------------------------------------------------------------------------------------------------

test.serial('safetensors: F32, BF16 and F16 widened exactly; header padded to 8 bytes; prefix reads', (t) => {
  const dir = tempDir(t, 'paligemma-presets-');
  const file = path.join(dir, 'x.safetensors');
  const u16 = (...bits: number[]) => new Uint8Array(Uint16Array.from(bits).buffer);
  writeSafetensors(file, [
    ['bf16', { shape: [4], dtype: 'BF16', bytes: u16(0x3f80, 0xc000, 0x7f80, 0x0001) }],
    ['f16', { shape: [5], dtype: 'F16', bytes: u16(0x3c00, 0xc000, 0x7bff, 0x0001, 0x8000) }],
    ['ids', { shape: [1], dtype: 'I64', bytes: new Uint8Array(8) }],
    ['f32', { shape: [2, 3], values: Float32Array.of(0, 1, 2, 3, 4, 5) }],
  ]);
  const headerBytes = Number(fs.readFileSync(file).readBigUInt64LE(0));
  t.is(headerBytes % 8, 0);
  const { tensors, metadata } = readSafetensorsFile(file);
  t.deepEqual(metadata, { format: 'pt' });
  t.deepEqual([...tensors.values()].map((x) => [x.key, x.dtype, x.shape, x.byteLength]), [
    ['bf16', 'BF16', [4], 8], ['f16', 'F16', [5], 10], ['ids', 'I64', [1], 8], ['f32', 'F32', [2, 3], 24],
  ]);
  t.deepEqual([...tensors.get('bf16')!.read()], [1, -2, Infinity, 2 ** -133]);
  t.deepEqual([...tensors.get('f16')!.read()], [1, -2, 65504, 2 ** -24, -0]);
  t.deepEqual([...tensors.get('f32')!.read()], [0, 1, 2, 3, 4, 5]);
  t.deepEqual([...tensors.get('f32')!.readPrefix(3)], [0, 1, 2]);
  t.is(thrown(() => tensors.get('ids')!.read()), `${file}: tensor "ids" (I64 [1]) is not a float tensor (F32, BF16, F16, F64)`);
  // The writer's roundings: nearest, ties to even.
  t.deepEqual([1 + 2 ** -8, 1 + 3 * 2 ** -8, -0].map(toBfloat16Bits), [0x3f80, 0x3f82, 0x8000]);
  t.deepEqual([65520, 2 ** -25, 3 * 2 ** -25, 1 + 2 ** -11, 0.1].map(toHalfBits), [0x7c00, 0x0000, 0x0002, 0x3c00, 0x2e66]);
  t.is(halfToNumber(toHalfBits(0.1)), 0.0999755859375);
});

test.serial('safetensors: a truncated file names the file, the tensor, its dtype and shape, literally', (t) => {
  const dir = tempDir(t, 'paligemma-presets-');
  const file = path.join(dir, 'model.safetensors');
  const write = () =>
    writeSafetensors(file, [
      ['a', { shape: [2], values: Float32Array.of(1, 2) }],
      ['b', { shape: [2, 3], dtype: 'BF16', values: new Float32Array(6) }],
    ]);
  write();
  const size = fs.statSync(file).size;
  const data = size - 12; // b is last: 6 bf16 values
  fs.truncateSync(file, size - 3);
  t.is(
    thrown(() => readSafetensors(dir)),
    `${file}: truncated safetensors file (${size - 3} bytes): tensor "b" (BF16 [2, 3]) needs bytes ${data}..${size}`,
  );
  // Cut after it was indexed: found when the tensor is read.
  write();
  const tensors = readSafetensors(dir);
  fs.truncateSync(file, size - 1);
  t.deepEqual([...tensors.get('a')!.read()], [1, 2]);
  t.is(thrown(() => tensors.get('b')!.read()), `${file}: truncated safetensors file (${size - 1} bytes): tensor "b" (BF16 [2, 3]) needs bytes ${data}..${size}`);
  // Cut inside the header.
  fs.truncateSync(file, 20);
  t.regex(thrown(() => readSafetensors(dir)), new RegExp(`^${file}: truncated safetensors file \\(20 bytes\\): the JSON header needs bytes 8\\.\\.\\d+$`));
});

test.serial('safetensors: a shard index must agree with its shards', (t) => {
  const dir = tempDir(t, 'paligemma-presets-');
  const tensors: [string, TensorToWrite][] = ['a', 'b', 'c'].map((k, i) => [k, { shape: [4], values: Float32Array.of(i, i, i, i) }]);
  t.deepEqual(writeShardedSafetensors(dir, tensors, 20), ['model-00001-of-00003.safetensors', 'model-00002-of-00003.safetensors', 'model-00003-of-00003.safetensors']);
  t.deepEqual([...readSafetensors(dir).get('c')!.read()], [2, 2, 2, 2]);
  const indexFile = path.join(dir, 'model.safetensors.index.json');
  const index = JSON.parse(fs.readFileSync(indexFile, 'utf8'));
  t.deepEqual(index.metadata, { total_size: 48 });
  index.weight_map.b = 'model-00001-of-00003.safetensors';
  fs.writeFileSync(indexFile, JSON.stringify(index));
  t.is(
    thrown(() => readSafetensors(dir)),
    `${indexFile}: weight_map puts "b" in model-00001-of-00003.safetensors, which has no such tensor`,
  );
  index.weight_map.b = 'model-00003-of-00003.safetensors';
  index.weight_map.c = 'model-00002-of-00003.safetensors';
  fs.writeFileSync(indexFile, JSON.stringify(index));
  t.is(
    thrown(() => readSafetensors(dir)),
    `${indexFile}: model-00002-of-00003.safetensors holds "b", which weight_map puts in model-00003-of-00003.safetensors\n` +
      `${indexFile}: model-00003-of-00003.safetensors holds "c", which weight_map puts in model-00002-of-00003.safetensors`,
  );
});

// ---------------------------------------------------------------------------------------------------------------
// loadWeights: false, progress, the wasm heap guard
// ---------------------------------------------------------------------------------------------------------------

test.serial("loadWeights: false: the preset's config (files, else the table) and keras_hub's initializers, seeded", async (t) => {
  const root = tempDir(t, 'paligemma-presets-');
  const reference = loadPreset(preset(PG2));
  const a = fromPreset(preset(PG2), { loadWeights: false, seed: 7 });
  const b = fromPreset(preset(PG2), { loadWeights: false, key: d.key(7) });
  const c = fromPreset(preset(PG2), { loadWeights: false, seed: 8 });
  t.deepEqual(a.config, readPresetConfig(preset(PG2)));
  const [va, vb, vc, vr] = await Promise.all([a, b, c, reference].map(leafValues));
  t.deepEqual([...va].map(([k, x]) => [k, x.shape]), [...vr].map(([k, x]) => [k, x.shape]));
  t.deepEqual(va, vb);
  t.notDeepEqual(va.get('token_embedding/0')!.data, vc.get('token_embedding/0')!.data);
  t.deepEqual([...va.get('final_norm/scale')!.data], new Array(32).fill(0)); // RMSNorm scales start at 0
  [a, b, c, reference].forEach((p) => d.disposeTree(p));
  await withEnv(isolated(root), () => {
    // No files: the table gives the config (and nothing is read).
    t.deepEqual(presetConfig('pali_gemma2_pt_28b_896'), findPreset('pali_gemma2_pt_28b_896')!.config);
    t.deepEqual(presetConfig('kaggle://keras/paligemma/keras/pali_gemma_3b_224'), findPreset('pali_gemma_3b_224')!.config);
    t.regex(thrown(() => presetConfig('hf://google/paligemma-3b-pt-224')), /^fromPreset\("hf:\/\/google\/paligemma-3b-pt-224"\): the preset is not on this machine/);
  });
});

test.serial('onProgress: once per weight, in parameters, ending at the total', (t) => {
  const calls: [number, number, string][] = [];
  const params = fromPreset(preset(PG1), { onProgress: (done, total, what) => calls.push([done, total, what]) });
  const total = parameterCount(params.config);
  t.is(calls.length, kerasLayout(params.config).length);
  t.true(calls.every(([done, all], i) => all === total && done > (i === 0 ? 0 : calls[i - 1][0])));
  t.deepEqual(calls[0], [128 * 32, total, 'layers/reversible_embedding/vars/0']);
  t.is(calls[calls.length - 1][0], total);
  d.disposeTree(params);
});

test.serial('wasm: weights over the heap line are refused before anything is allocated', async (t) => {
  const root = tempDir(t, 'paligemma-presets-');
  await setBackend('wasm');
  try {
    setWasmSafeBytes(64 * 1024);
    const before = tf.memory().numTensors;
    const count = parameterCount(readPresetConfig(preset(PG1)));
    const message = thrown(() => fromPreset(preset(PG1)));
    t.true(message.startsWith(`fromPreset("${preset(PG1)}"): ${count.toLocaleString('en-US')} parameters as float32 needs`), message);
    t.regex(message, /wasm backend/);
    await withEnv(isolated(root), () => {
      // A built-in name without files: the table's 28B config is refused the same way, before initialising.
      t.regex(thrown(() => fromPreset('pali_gemma2_pt_28b_224', { loadWeights: false })), /^fromPreset\("pali_gemma2_pt_28b_224"\): 27,650,192,112 parameters as float32 needs/);
    });
    t.is(tf.memory().numTensors, before);
  } finally {
    setWasmSafeBytes();
    await setBackend('cpu');
  }
});
