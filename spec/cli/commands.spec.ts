/**
 * The model commands through `main(argv, io)`: run-fixture reproduces a fixture (compared as
 * scripts/compare-fixture.mjs does) and fails loudly on a corrupted preset; `run` and `generate` on the shipped
 * preset; literal errors. Plus PaliGemmaCausalLM end to end (strings in, strings out) on the generate fixture.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { execFileSync } from 'node:child_process';
import { main, type Io } from '../../src/cli/cli';
import { readBin } from '../../src/cli/fixture';
import { generateText, loadCausalLM } from '../../src/generate/causal_lm';
import { readImage, type RawImage } from '../../src/preprocess/image';
import * as d from '../../dsl';
import { tf } from '../../dsl/tf';
import { test } from '../helpers/backends';
import { tempDir } from '../helpers/files';
import { resolvePreset } from '../../src/runtime/preset';

function capture(): Io & { lines: string[]; errors: string[] } {
  const lines: string[] = [];
  const errors: string[] = [];
  return { lines, errors, out: (l) => lines.push(l), err: (l) => errors.push(l) };
}

test.serial('run-fixture writes every output and gradient of the grad fixture, within tolerance', async (t) => {
  const out = tempDir(t, 'pg-cli-');
  const io = capture();
  t.is(await main(['run-fixture', 'spec/fixtures/keras_hub/grad', '--out', out, '--backend', 'cpu'], io), 0);
  t.regex(io.lines[0], /^grad: wrote 2 outputs and 64 gradients to /);
  const report = execFileSync('node', ['scripts/compare-fixture.mjs', 'spec/fixtures/keras_hub/grad', out], { encoding: 'utf8' });
  t.regex(report, /output sequence_output: max \|diff\| /);
  t.regex(report, /gradient images: max \|diff\| /);
  t.regex(report, /\nOK\n$/);
  const m = JSON.parse(fs.readFileSync(path.join(out, 'manifest.json'), 'utf8'));
  t.deepEqual(m.outputs.loss, { file: 'outputs/loss.bin', dtype: 'float32', shape: [1] });
  t.true(Math.abs(readBin(out, m.outputs.loss)[0] - -44.39296) < 1e-3);
});

test.serial('run-fixture fails loudly on a corrupted preset (truncated h5, wrong shape, missing weight)', async (t) => {
  const src = 'spec/fixtures/keras_hub/pg1_basic';
  const copy = () => {
    const dir = tempDir(t, 'pg-cli-');
    fs.cpSync(src, dir, { recursive: true });
    fs.chmodSync(path.join(dir, 'preset'), 0o755);
    for (const f of fs.readdirSync(path.join(dir, 'preset'))) fs.chmodSync(path.join(dir, 'preset', f), 0o644);
    return dir;
  };
  const truncated = copy();
  const h5 = path.join(truncated, 'preset', 'model.weights.h5');
  fs.truncateSync(h5, fs.statSync(h5).size - 5000);
  const io = capture();
  t.is(await main(['run-fixture', truncated, '--out', tempDir(t, 'pg-cli-'), '--backend', 'cpu'], io), 1);
  t.regex(io.errors.join('\n'), /model\.weights\.h5: truncated HDF5 file/);

  const shaped = copy();
  const config = JSON.parse(fs.readFileSync(path.join(shaped, 'preset', 'config.json'), 'utf8'));
  config.config.hidden_dim = 48;
  fs.writeFileSync(path.join(shaped, 'preset', 'config.json'), JSON.stringify(config));
  const io2 = capture();
  t.is(await main(['run-fixture', shaped, '--out', tempDir(t, 'pg-cli-'), '--backend', 'cpu'], io2), 1);
  t.regex(io2.errors.join('\n'), /wrong shape layers\/reversible_embedding\/vars\/0 in .*model\.weights\.h5 \(token_embedding\/embeddings\): expected \[128, 48\], got \[128, 32\]/);

  const missing = copy();
  config.config.hidden_dim = 32;
  config.config.num_layers = 3;
  fs.writeFileSync(path.join(missing, 'preset', 'config.json'), JSON.stringify(config));
  const io3 = capture();
  t.is(await main(['run-fixture', missing, '--out', tempDir(t, 'pg-cli-'), '--backend', 'cpu'], io3), 1);
  t.regex(io3.errors.join('\n'), /missing layers\/pali_gemma_decoder_block_2\/attention\/query_dense\/vars\/0 \(decoder_block_2\/attention\/query\/kernel, expected shape \[4, 32, 8\]\)/);
});

test.serial('run: the README main job on the shipped preset', async (t) => {
  const io = capture();
  t.is(await main(['run', '--backend', 'wasm'], io), 0);
  const text = io.lines.join('\n');
  // paligemma_shapes: 16 image tokens + <bos> caption ▁en \n
  t.regex(text, /preset: paligemma_shapes \(3 decoder layers, 16 image tokens, vocabulary 1466\)/);
  t.regex(text, /sequence_output: \[1, 20, 128\]  logits: \[1, 4, 1466\]/);
  t.regex(text, /top tokens after the prompt:\n\s+\d+\s+"/);
  t.regex(text, /backend: wasm; load [\d.]+ s, forward [\d.]+ s/);
});

test.serial('generate: text, a tokens/s figure, and literal errors', async (t) => {
  const io = capture();
  t.is(await main(['generate', '--prompt', 'caption en', '--max-length', '24', '--backend', 'wasm'], io), 0);
  // the shipped model's caption of its shipped picture (checkpoints/shapes/shapes.png): right
  t.deepEqual(io.lines, ['a yellow circle and a red circle']);
  t.regex(io.errors.join('\n'), /loading paligemma_shapes: 100%/);
  t.regex(io.errors[io.errors.length - 1], /^8 tokens in [\d.]+ s: [\d.]+ tokens\/s \(wasm, prefill included\)$/);
  // int8 weights (onnx): the same caption; on an eager backend a literal error
  const int8 = capture();
  t.is(await main(['generate', '--prompt', 'caption en', '--max-length', '24', '--backend', 'onnx', '--int8'], int8), 0);
  t.deepEqual(int8.lines, ['a yellow circle and a red circle']);
  t.regex(int8.errors[int8.errors.length - 1], /^8 tokens in [\d.]+ s: [\d.]+ tokens\/s \(onnx, int8 weights, prefill included\)$/);
  const eager = capture();
  t.is(await main(['generate', '--prompt', 'caption en', '--backend', 'wasm', '--int8'], eager), 1);
  t.regex(eager.errors.join('\n'), /generate: quantize 'int8' runs compiled, on onnxruntime \(backend 'onnx' or compiled: true\); the active backend is 'wasm'/);
  const three = capture();
  t.is(await main(['generate', '--preset', 'tiny', '--prompt', 'caption en', '--max-new-tokens', '3', '--backend', 'cpu'], three), 0);
  t.regex(three.errors[three.errors.length - 1], /^3 tokens in [\d.]+ s: /);
  t.is(three.errors[three.errors.length - 2], 'finish: length (the token budget: --max-new-tokens 3)');
  // streamed: where the output takes partial lines, the pieces arrive one by one and add up to the answer
  const chunks: string[] = [];
  const streamed = { ...capture(), write: (s: string) => chunks.push(s) };
  t.is(await main(['generate', '--preset', 'tiny', '--prompt', 'caption en', '--max-new-tokens', '3', '--backend', 'cpu'], streamed), 0);
  t.deepEqual(streamed.lines, []);
  t.is(chunks.length, 4, chunks.join('|'));
  t.is(chunks[3], '\n');
  t.is(chunks.join(''), `${three.lines[0]}\n`);
  t.is(resolvePreset('tiny').dir, path.resolve('checkpoints', 'tiny'));
  t.is(resolvePreset('paligemma_tiny').dir, path.resolve('checkpoints', 'tiny'), 'an alias');
  const bad = capture();
  t.is(await main(['generate', '--prompt', 'caption en', '--image', 'nope.png'], bad), 1);
  t.deepEqual(bad.errors, ['paligemma generate: --image nope.png: no such file']);
  const long = capture();
  t.is(await main(['generate', '--prompt', 'word '.repeat(40), '--max-length', '16', '--backend', 'cpu'], long), 1);
  t.regex(long.errors.join('\n'), /prompt 0 is \d+ tokens with <bos>; max length 16 leaves no room to generate/);
  const unknown = capture();
  t.is(await main(['generate', '--preset', 'pali_gemma_3b_2244', '--prompt', 'x', '--backend', 'cpu'], unknown), 1);
  t.regex(unknown.errors.join('\n'), /unknown preset\. Closest built-in presets: pali_gemma_3b_224/);
  const notImage = capture();
  t.is(await main(['generate', '--prompt', 'x', '--image', 'package.json', '--backend', 'cpu'], notImage), 1);
  t.regex(notImage.errors.join('\n'), /package\.json/);
});

test.serial('PaliGemmaCausalLM end to end: strings in, strings out, as keras_hub generates row 0', async (t) => {
  // the generate fixture's preset with its tokenizer where a keras preset keeps it
  const dir = tempDir(t, 'pg-cli-');
  fs.cpSync('spec/fixtures/text/generate/preset', dir, { recursive: true });
  fs.mkdirSync(path.join(dir, 'assets', 'tokenizer'), { recursive: true });
  fs.copyFileSync('spec/fixtures/text/tokenizer/vocabulary.spm', path.join(dir, 'assets', 'tokenizer', 'vocabulary.spm'));
  const lm = loadCausalLM(dir);
  const rgba = readImage('spec/fixtures/text/preprocess/images/b_rgba_64x64.png');
  const flipped: RawImage = { ...rgba, data: new Uint8Array(rgba.data.length) };
  const row = rgba.width * rgba.channels;
  for (let y = 0; y < rgba.height; y++) (flipped.data as Uint8Array).set((rgba.data as Uint8Array).subarray((rgba.height - 1 - y) * row, (rgba.height - y) * row), y * row);
  const before = tf.memory().numTensors;
  const out = await generateText(lm, { images: [rgba, flipped], prompts: ['caption en\n', 'detect cat ; dog\n'] }, { maxLength: 24 });
  t.is(tf.memory().numTensors, before);
  t.is(out.texts[0], 'caption en\n<loc0865><loc0727><loc0114><seg012>');
  const stripped = await generateText(lm, { images: [rgba], prompts: ['caption en\n'] }, { maxLength: 24, stripPrompt: true });
  t.deepEqual(stripped.texts, ['<loc0865><loc0727><loc0114><seg012>']);
  // row 1 is generated as it would be alone (keras_hub's batched schedule differs; see src/generate/generate.ts)
  const alone = await generateText(lm, { images: [flipped], prompts: ['detect cat ; dog\n'] }, { maxLength: 24 });
  t.is(out.texts[1], alone.texts[0]);
  t.true(out.texts[1].startsWith('detect cat ; dog\n'));
  d.disposeTree(lm.params);
});
