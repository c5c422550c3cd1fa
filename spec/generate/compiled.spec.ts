/**
 * Compiled generation (src/generate/compiled.ts): keras_hub's generate fixture through two onnxruntime
 * sessions (prefill, decode step), equal to the eager path; and 200 compiled decode steps with a flat
 * tensor count and flat RSS.
 */
import test from 'ava';
import { tf } from '../../dsl/tf';
import * as d from '../../dsl';
import type { PaliGemmaParams } from '../../models/paligemma';
import type { Images } from '../../models/siglip';
import { generate, topK, topP, type GenerateOptions } from '../../src/generate/generate';
import { compiledGeneration, decodeStepCompiled, prefillCompiled } from '../../src/generate/compiled';
import { assertClose } from '../helpers/numeric';
import { T, bin, list, manifest, paddingMask, rowsOf, runTokens, tokenIds, withModel } from './fixture';

const VOCAB = 2352;

const run = (p: PaliGemmaParams, images: Images, options: GenerateOptions) => generate(p, { images, tokenIds, paddingMask }, options);

test.serial('compiled generate: greedy row 0 = keras_hub (tokens, decode logits within 2e-4), row 1 = row 1 alone; = eager within 1e-4', async (t) => {
  await withModel(async (p, images) => {
    const before = tf.memory().numTensors;
    const out = await run(p, images, { returnLogits: true, compiled: true });
    t.is(tf.memory().numTensors, before, 'compiled generate is memory-neutral');
    t.deepEqual(list(out.tokenIds[0]), runTokens('greedy')[0], 'row 0 tokens');
    t.deepEqual(list(out.tokenIds[1]), runTokens('greedy_row1_alone')[0], 'row 1 tokens = keras_hub row 1 alone');
    const expected = bin(manifest.runs.greedy.decode!.logits) as Float32Array; // [18, 2, vocab]
    for (let s = 0; s < 18; s++) assertClose(t, out.logits![0][s], expected.subarray(s * 2 * VOCAB, (s * 2 + 1) * VOCAB), 2e-4, 0, `row 0 step ${s} logits`);
    const eager = await run(p, images, { returnLogits: true, compiled: false });
    for (const r of [0, 1]) eager.logits![r].forEach((l, s) => assertClose(t, out.logits![r][s], l, 1e-4, 0, `row ${r} step ${s}: compiled = eager`));
    t.is(compiledGeneration.decodeStep.traces, 1, 'one decode-step graph for every step');
    t.is(compiledGeneration.prefill.traces, 1, 'one prefill graph');
    // 18 steps: the head used the embedding transposed once (compiled.ts); a call of under 16 steps does
    // not transpose it, and its steps give the same logits
    t.is(compiledGeneration.transpose.traces, 1, 'the embedding transposed by its own session');
    const short = await run(p, images, { returnLogits: true, compiled: true, maxNewTokens: 4 });
    t.is(compiledGeneration.decodeStep.traces, 2, 'a decode-step graph with the untransposed head');
    for (const r of [0, 1]) short.logits![r].forEach((l, s) => assertClose(t, l, out.logits![r][s], 1e-5, 0, `row ${r} step ${s}: untransposed head = transposed`));
    t.is(tf.memory().numTensors, before);
  });
});

test.serial('compiled generate: top_k and top_p replayed from keras_hub uniforms (row 0 tokens)', async (t) => {
  await withModel(async (p, images) => {
    for (const [name, sampler] of [['top_k', topK(5)], ['top_p', topP(0.25)]] as const) {
      const r = manifest.runs[name];
      if (!r?.sampling) continue;
      const out = await run(p, images, { sampler, uniforms: rowsOf(bin(r.sampling.uniforms), 2), compiled: true });
      t.deepEqual(list(out.tokenIds[0]), runTokens(name)[0], `${name} row 0 tokens`);
    }
  });
});

test.serial('compiled decode: 200 steps keep the tensor count and RSS flat', async (t) => {
  await withModel(async (p, images) => {
    const before = tf.memory().numTensors;
    let state = prefillCompiled(p, images, tokenIds, [6, 11], T);
    const live = tf.memory().numTensors;
    let rssWarm = 0;
    for (let s = 0; s < 200; s++) {
      const at = [16 + 6 + (s % 17), 16 + 11 + (s % 12)];
      const next = decodeStepCompiled(p, state.cache, [s % VOCAB, (7 * s) % VOCAB], at, [true, true]);
      tf.dispose(d.collectTensors(state));
      state = next;
      if (s === 19) rssWarm = process.memoryUsage().rss;
      if (s % 50 === 49) t.is(tf.memory().numTensors, live, `tensors after step ${s + 1}`);
    }
    const growth = process.memoryUsage().rss - rssWarm;
    t.log(`RSS after 200 steps: ${(growth / 2 ** 20).toFixed(1)} MiB more than after 20`);
    t.true(growth < 32 * 2 ** 20, `RSS grew ${(growth / 2 ** 20).toFixed(1)} MiB over 180 steps`);
    tf.dispose(d.collectTensors(state));
    t.is(tf.memory().numTensors, before);
  });
});
