import test from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { tf } from '../../dsl/tf';
import * as d from '../../dsl';
import { generateText, loadCausalLM } from '../../src/generate/causal_lm';
import { saveCausalLM } from '../../src/generate/save';
import { readModelProto } from '../../src/text/tokenizer';
import { tempDir } from '../helpers/files';

const keras = 'spec/fixtures/train/preprocess_train/preset';
const readJson = (f: string): unknown => JSON.parse(fs.readFileSync(f, 'utf8'));

test.serial("saveCausalLM writes keras_hub's task preset: the same files and configs keras_hub wrote", async (t) => {
  const out = path.join(tempDir(t), 'saved');
  const lm = loadCausalLM(keras);
  const before = tf.memory().numTensors;
  await saveCausalLM(lm, out, { sequenceLength: 16 });
  t.is(tf.memory().numTensors, before, 'memory-neutral');
  const list = (dir: string) => (fs.readdirSync(dir, { recursive: true, encoding: 'utf8' }) as string[]).sort();
  t.deepEqual(list(out), list(keras));
  for (const f of ['config.json', 'preprocessor.json', 'tokenizer.json', 'image_converter.json']) {
    t.deepEqual(readJson(path.join(out, f)), readJson(path.join(keras, f)), f);
  }
  const meta = readJson(path.join(out, 'metadata.json')) as Record<string, unknown>;
  t.is(meta.parameter_count, 20432);
  t.deepEqual(meta.tasks, ['CausalLM']);
  // the vocabulary: keras_hub copies the trained .spm (with training-only fields); ours holds what encoding reads
  const a = readModelProto(fs.readFileSync(path.join(out, 'assets/tokenizer/vocabulary.spm')));
  const b = readModelProto(fs.readFileSync(path.join(keras, 'assets/tokenizer/vocabulary.spm')));
  t.deepEqual(a, b);
  // no staging or temporary folders left beside it
  t.deepEqual(fs.readdirSync(path.dirname(out)), ['saved']);
  d.disposeTree(lm.params);
});

test.serial('save, load, generate: the same weights and the same text', async (t) => {
  const out = path.join(tempDir(t), 'tiny-copy');
  const lm = loadCausalLM('checkpoints/tiny');
  await saveCausalLM(lm, out);
  const back = loadCausalLM(out);
  const wa = d.leaves(lm.params);
  const wb = d.leaves(back.params);
  t.deepEqual(wb.map(([p]) => p), wa.map(([p]) => p));
  for (let i = 0; i < wa.length; i++) t.deepEqual(await wb[i][1].tensor.data(), await wa[i][1].tensor.data(), wa[i][0]);
  const inputs = { images: ['checkpoints/tiny/cat.png', 'checkpoints/tiny/cat.png'], prompts: ['caption en\n', 'answer en what is this?\n'] };
  const x = await generateText(lm, inputs, { maxLength: 24 });
  const y = await generateText(back, inputs, { maxLength: 24 });
  t.deepEqual(y.texts, x.texts);
  t.true(x.texts[0].length > 'caption en\n'.length);
  t.deepEqual(readJson(path.join(out, 'preprocessor.json')), { ...(readJson(path.join(out, 'preprocessor.json')) as object) });
  t.is((readJson(path.join(out, 'preprocessor.json')) as { config: { sequence_length: number } }).config.sequence_length, 512);
  d.disposeTree(lm.params);
  d.disposeTree(back.params);
});

test.serial('saving over an existing preset replaces it whole', async (t) => {
  const out = path.join(tempDir(t), 'p');
  fs.mkdirSync(out);
  fs.writeFileSync(path.join(out, 'stale.txt'), 'old');
  const lm = loadCausalLM(keras);
  await saveCausalLM(lm, out, { sequenceLength: 16 });
  t.false(fs.existsSync(path.join(out, 'stale.txt')));
  t.true(fs.existsSync(path.join(out, 'model.weights.h5')));
  await t.throwsAsync(saveCausalLM(lm, out, { sequenceLength: 0 }), { message: 'saveCausalLM: sequenceLength must be a positive integer, got 0' });
  d.disposeTree(lm.params);
});
