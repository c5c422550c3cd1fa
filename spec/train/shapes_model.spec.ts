/**
 * The shipped model (checkpoints/shapes, `paligemma_shapes`): a keras_hub task preset that loads by name
 * from the package, and its exact-match accuracy on 24 fresh pictures (seed 8, never used in training: the
 * training pictures are seed 1), the numbers measured when it was shipped.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import test from 'ava';
import { tf } from '../../dsl/tf';
import * as d from '../../dsl';
import { setBackend } from '../../src/runtime/backend';
import { resolvePreset } from '../../src/runtime/preset';
import { loadCausalLM } from '../../src/generate/causal_lm';
import { evaluateShapes } from '../../src/train/shapes_eval';
import { shapesConfig } from '../../src/train/shapes_model';
import { shapesVocabularyBytes } from '../../src/train/shapes_vocab';
import { makeScene, renderScene } from '../../src/train/shapes';
import { encodePng } from '../../src/cli/shapes_command';

test.serial('paligemma_shapes resolves to checkpoints/shapes, a keras_hub task preset of the shapes config', (t) => {
  const dir = resolvePreset('paligemma_shapes').dir!;
  t.is(dir, path.resolve('checkpoints/shapes'));
  for (const f of ['config.json', 'model.weights.h5', 'metadata.json', 'tokenizer.json', 'image_converter.json', 'preprocessor.json', 'assets/tokenizer/vocabulary.spm']) {
    t.true(fs.existsSync(path.join(dir, f)), f);
  }
  t.deepEqual(new Uint8Array(fs.readFileSync(path.join(dir, 'assets/tokenizer/vocabulary.spm'))), shapesVocabularyBytes());
  const config = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8')).config;
  const want = shapesConfig();
  for (const k of ['vocabulary_size', 'image_size', 'num_layers', 'hidden_dim', 'vit_patch_size', 'final_logit_soft_cap', 'attention_logit_soft_cap', 'use_sliding_window_attention', 'use_post_ffw_norm'] as const) {
    t.is(config[k], want[k], k);
  }
  t.true(fs.statSync(path.join(dir, 'model.weights.h5')).size < 4e6);
  // the shipped picture is picture 18 of seed 9 (npx paligemma make-shapes --out DIR --count 19 --seed 9)
  t.deepEqual(new Uint8Array(fs.readFileSync(path.join(dir, 'shapes.png'))), encodePng(renderScene(makeScene(9, SHIPPED_PICTURE))));
});

const SHIPPED_PICTURE = 18;

test.serial('the shipped model: exact-match accuracy on 24 fresh pictures, as measured at shipping', async (t) => {
  await setBackend('wasm');
  const lm = loadCausalLM('paligemma_shapes');
  const before = tf.memory().numTensors;
  const result = await evaluateShapes(lm, 8, 24);
  t.is(tf.memory().numTensors, before, 'evaluation is memory-neutral');
  d.disposeTree(lm.params);
  t.deepEqual(result.tasks, MEASURED);
});

// measured when the model was shipped (dist/eval-shapes.js --seed 8 --count 24); the counts task is solved far
// better than captions (every shape right, in order) and detections (all four bins of every box exact)
const MEASURED = {
  'answer en how many shapes?': { correct: 21, total: 24 },
  'caption en': { correct: 6, total: 24 },
  detect: { correct: 0, total: 36, iou50: 2 },
};
