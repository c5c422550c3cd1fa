/**
 * big_vision `.npz` checkpoints: the npz reader and writer (stored, deflated, ZIP64, bf16 as V2), the big_vision
 * <-> keras_hub mapping (round trips through the keras_hub fixtures' expected outputs via `fromPreset`), config
 * inference, and literal errors (truncated file, Fortran order, a missing key).
 */
import test from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { setBackend } from '../../src/runtime/backend';
import { fromPreset, loadPreset, presetFormat } from '../../src/runtime/preset';
import { encodeParams } from '../../checkpoints/params';
import { bigVisionWeights, inferBigVisionConfig, kerasToBigVision } from '../../checkpoints/bigvision';
import { readNpz, writeNpz, type NpyToWrite } from '../../checkpoints/npz';
import { initParams } from '../../checkpoints/init';
import * as d from '../../dsl';
import type { PaliGemmaConfig } from '../../models/config';
import { tempDir } from '../helpers/files';
import { assertFixtureOutput } from '../helpers/fixtures';

const KH = 'spec/fixtures/keras_hub';
const PG1 = path.join(KH, 'pg1_basic');
const PG2 = path.join(KH, 'pg2_full');
const PG1_BF16 = path.join(KH, 'pg1_bf16');

test.before(async () => {
  await setBackend('cpu');
});

function thrown(f: () => unknown): string {
  try {
    f();
  } catch (e) {
    return (e as Error).message;
  }
  throw new Error('expected an error');
}

/** True when every value is a bfloat16 (the low 16 bits of its float32 are zero): stored as bf16, it is exact. */
const bf16Exact = (values: Float32Array) => new Uint32Array(values.buffer, values.byteOffset, values.length).every((b) => (b & 0xffff) === 0);

/** A fixture's weights as big_vision arrays (encoded from the keras preset), with per-array dtypes. */
function bigVisionArrays(fixture: string, options: Parameters<typeof kerasToBigVision>[2] = {}): { config: PaliGemmaConfig; arrays: Map<string, NpyToWrite & { values: Float32Array; shape: number[] }> } {
  const params = loadPreset(path.join(fixture, 'preset'));
  try {
    return { config: params.config, arrays: kerasToBigVision(params.config, encodeParams(params), options) };
  } finally {
    d.disposeTree(params);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// npz
// ---------------------------------------------------------------------------------------------------------------

test('npz: stored, deflated and ZIP64 archives read back exactly, bf16 (V2) rounded to nearest even, ranges', (t) => {
  const dir = tempDir(t, 'paligemma-npz-');
  const values = Float32Array.from({ length: 24 }, (_, i) => (i - 7) / 3);
  const bf16 = Float32Array.from([1, 1 + 2 ** -8, 1 + 3 * 2 ** -8, -2.5, 0, 1e-3]);
  for (const options of [{}, { compress: true }, { zip64: true }, { compress: true, zip64: true }]) {
    const file = path.join(dir, 'a.npz');
    writeNpz(file, [
      ['params/x/y', { shape: [2, 3, 4], values }],
      ['b', { shape: [6], values: bf16, dtype: 'bfloat16' }],
    ], options);
    const arrays = readNpz(file);
    t.deepEqual([...arrays.keys()], ['params/x/y', 'b']);
    const x = arrays.get('params/x/y')!;
    t.deepEqual([x.descr, x.shape, x.dtype], ['<f4', [2, 3, 4], 'float32']);
    t.deepEqual(x.read(), values);
    t.deepEqual(x.readRange(12, 5), values.slice(12, 17));
    const b = arrays.get('b')!;
    t.deepEqual([b.descr, b.dtype], ['<V2', 'bfloat16']);
    // ties go to the even mantissa: 1 + 2^-8 -> 1, 1 + 3 * 2^-8 -> 1 + 2^-6
    t.deepEqual([...b.read()].slice(0, 4), [1, 1, 1 + 2 ** -6, -2.5]);
    t.is(thrown(() => x.readRange(20, 5)), `${file}: params/x/y: elements 20..25 are out of range (24 elements)`);
  }
});

test('npz: a truncated file and a Fortran-order array are refused, naming the file (and key)', (t) => {
  const dir = tempDir(t, 'paligemma-npz-');
  const file = path.join(dir, 'a.npz');
  writeNpz(file, [['w', { shape: [2, 3], values: new Float32Array(6) }]]);
  const bytes = fs.readFileSync(file);

  const cut = path.join(dir, 'cut.npz');
  fs.writeFileSync(cut, bytes.subarray(0, bytes.length - 30));
  t.is(thrown(() => readNpz(cut)), `${cut}: not a .npz (ZIP) archive, or truncated: no end-of-central-directory record in its last bytes`);

  // Bytes cut from the middle: the directory no longer lines up with the data.
  const short = path.join(dir, 'short.npz');
  writeNpz(short, [['w', { shape: [2, 3], values: new Float32Array(6) }]]);
  const s = fs.readFileSync(short);
  const cdAt = s.lastIndexOf(Buffer.from([0x50, 0x4b, 0x01, 0x02]));
  fs.writeFileSync(short, Buffer.concat([s.subarray(0, cdAt - 8), s.subarray(cdAt)]));
  t.regex(thrown(() => readNpz(short)), /short\.npz: not a \.npz \(ZIP\) archive, or truncated: /);

  const fortran = path.join(dir, 'fortran.npz');
  const patched = Buffer.from(bytes);
  const at = patched.indexOf("'fortran_order': False");
  patched.write("'fortran_order': True ", at, 'latin1');
  fs.writeFileSync(fortran, patched);
  t.is(thrown(() => readNpz(fortran)), `${fortran}: w: Fortran-order arrays are not supported (save it C-ordered: np.ascontiguousarray)`);
});

// ---------------------------------------------------------------------------------------------------------------
// big_vision -> keras through fromPreset: the fixtures' outputs
// ---------------------------------------------------------------------------------------------------------------

test('PG1 from a big_vision .npz (params/ keys, an embedding padded past the vocabulary) gives keras_hub outputs', async (t) => {
  const dir = tempDir(t, 'paligemma-npz-');
  const { config, arrays } = bigVisionArrays(PG1, { embeddingRows: 128 + 64 });
  const emb = arrays.get('params/llm/embedder/input_embedding')!;
  t.deepEqual(emb.shape, [192, 32]);
  emb.values.fill(7, 128 * 32); // padding rows: never read
  const file = path.join(dir, 'pg1.npz');
  writeNpz(file, arrays);
  t.is(presetFormat(file), 'bigvision');
  const params = fromPreset(file, { config });
  await assertFixtureOutput(t, PG1, params);
  d.disposeTree(params);
});

test('PG1 from a bf16 big_vision .npz (every array stored as V2, like the bf16 Kaggle checkpoints) gives keras_hub outputs', async (t) => {
  const dir = tempDir(t, 'paligemma-npz-');
  const { config, arrays } = bigVisionArrays(PG1_BF16, { embeddingRows: 130 });
  // pg1_bf16's weights are bfloat16s, so storing them as bf16 is exact
  t.true([...arrays.values()].every((a) => bf16Exact(a.values)));
  const file = path.join(dir, 'pg1_bf16.npz');
  writeNpz(file, [...arrays].map(([k, a]) => [k, { ...a, dtype: 'bfloat16' as const }] as const));
  t.true([...readNpz(file).values()].every((a) => a.dtype === 'bfloat16'));
  const params = fromPreset(file, { config });
  await assertFixtureOutput(t, PG1_BF16, params);
  d.disposeTree(params);
});

test('PG2 from a directory (one .npz, no params/ prefix, gating_einsum stored transposed, deflated, config.json beside it)', async (t) => {
  const dir = tempDir(t, 'paligemma-npz-');
  const { arrays } = bigVisionArrays(PG2, { gatingTransposed: true, prefix: '' });
  t.deepEqual(arrays.get('llm/layers/mlp/gating_einsum')!.shape, [3, 2, 24, 32]); // (L, 2, F, D)
  t.true(arrays.has('llm/layers/post_attention_norm/scale') && arrays.has('llm/layers/post_ffw_norm/scale'));
  writeNpz(path.join(dir, 'pg2.npz'), arrays, { compress: true, zip64: true });
  fs.copyFileSync(path.join(PG2, 'preset', 'config.json'), path.join(dir, 'config.json'));
  t.is(presetFormat(dir), 'bigvision');
  const params = fromPreset(dir);
  await assertFixtureOutput(t, PG2, params);
  d.disposeTree(params);
});

test('round trip: fused qkv_einsum (as many key/value heads as query heads) decodes to the encoded values', (t) => {
  const dir = tempDir(t, 'paligemma-npz-');
  const base = bigVisionArrays(PG1).config;
  const config: PaliGemmaConfig = { ...base, num_key_value_heads: base.num_query_heads };
  const params = initParams(config, d.key(3));
  const values = encodeParams(params);
  d.disposeTree(params);
  const arrays = kerasToBigVision(config, values, { fusedQkv: true });
  t.deepEqual(arrays.get('params/llm/layers/attn/qkv_einsum/w')!.shape, [2, 3, 4, 32, 8]);
  t.false(arrays.has('params/llm/layers/attn/q_einsum/w'));
  const file = path.join(dir, 'fused.npz');
  writeNpz(file, arrays);
  const weights = bigVisionWeights(config, readNpz(file), file);
  t.is(weights.size, values.size);
  for (const [h5, v] of values) t.deepEqual(weights.get(h5)!.read(), v.values, h5);
});

// ---------------------------------------------------------------------------------------------------------------
// config and key errors
// ---------------------------------------------------------------------------------------------------------------

test('a missing key is an error naming it with its big_vision shape and the keras variable it feeds', (t) => {
  const dir = tempDir(t, 'paligemma-npz-');
  const { config, arrays } = bigVisionArrays(PG1);
  arrays.delete('params/llm/final_norm/scale');
  arrays.set('params/llm/extra', { shape: [2], values: new Float32Array(2) });
  const file = path.join(dir, 'pg1.npz');
  writeNpz(file, arrays);
  t.is(
    thrown(() => fromPreset(file, { config })),
    `${file}: 2 problem(s) with the big_vision weights for this config:\n` +
      '  missing params/llm/final_norm/scale (big_vision shape [32], for final_normalization/scale [32])\n' +
      '  unexpected params/llm/extra (shape [2])',
  );
});

test('config: inferred when exactly one candidate fits, else an error asking for it; refused for other formats', (t) => {
  const dir = tempDir(t, 'paligemma-npz-');
  const { config, arrays } = bigVisionArrays(PG1);
  const file = path.join(dir, 'pg1.npz');
  writeNpz(file, arrays);
  const npz = readNpz(file);
  const pg2 = bigVisionArrays(PG2).config;
  t.deepEqual(inferBigVisionConfig(npz, [['pg2', pg2], ['pg1', config]], file), config);
  t.regex(thrown(() => inferBigVisionConfig(npz, [['a', config], ['b', { ...config, final_logit_soft_cap: 30 }]], file)), /fit several configs \(a, b\); pass the config/);
  t.regex(thrown(() => fromPreset(file)), /carries no config, and its arrays fit no built-in preset; pass the config/);
  t.is(
    thrown(() => fromPreset(path.join(PG1, 'preset'), { config })),
    `fromPreset("${path.join(PG1, 'preset')}"): options.config is for big_vision .npz checkpoints, which carry no config; this preset's files have their own`,
  );
  writeNpz(path.join(dir, 'other.npz'), arrays);
  t.is(thrown(() => fromPreset(dir, { config })), `${dir}: 2 .npz files (other.npz, pg1.npz); pass one of them: fromPreset("${path.join(dir, 'other.npz')}", ...)`);
});
