/**
 * Properties of the backbone over random tiny configs (fast-check, dims <= 8, from the testing kit
 * src/testing: PaliGemma 1 and 2 shapes, every pooling, MHA/GQA/MQA): shapes, the prefix-LM mask against its
 * literal formula, memory neutrality, batch independence and padding invariance; the kit's own promises.
 */
import fc from 'fast-check';
import { tf } from '../../dsl/tf';
import * as d from '../../dsl';
import { CONFIG_DEFAULTS, imageSequenceLength, type PaliGemmaConfig } from '../../models/config';
import { backbone, logits, prefixLmMask, type BackboneInputs } from '../../models/paligemma';
import { initParams } from '../../checkpoints/init';
import { parameterCount } from '../../checkpoints/params';
import { backendTest, test } from '../helpers/backends';
import { assertClose } from '../helpers/numeric';
import { configs, maskRows, randomInputs } from '../../src/testing';

const disposeInputs = (x: BackboneInputs) => tf.dispose(d.collectTensors(x));

backendTest('shapes, memory neutrality, batch independence and padding invariance (fast-check)', async (t) => {
  await fc.assert(
    fc.asyncProperty(configs(), fc.integer({ min: 1, max: 5 }), fc.integer({ min: 0, max: 1000 }), async (c, T, seed) => {
      const rowsOf = fc.sample(maskRows(2, T), { seed, numRuns: 1 })[0];
      const params = initParams(c, d.key(seed));
      const n = imageSequenceLength(c);
      const inputs = randomInputs(c, 2, T, { rows: rowsOf, seed });
      const before = tf.memory().numTensors;
      const seq = backbone(params, inputs);
      const lg = logits(params, seq);
      t.is(tf.memory().numTensors, before + 2, 'backbone and logits leave only their outputs');
      t.deepEqual(seq.shape, [2, n + T, c.hidden_dim]);
      t.deepEqual(lg.shape, [2, T, c.vocabulary_size]);
      const all = await seq.tensor.data();

      // batch independence: row 1 alone gives row 1 of the batch
      const alone = randomInputs(c, 1, T, { rows: [rowsOf[1]], seed, tokenIds: (await inputs.token_ids.tensor.data()).slice(T) });
      const imgRow = tf.slice(inputs.images.tensor, [1, 0, 0, 0], [1, -1, -1, -1]);
      const aloneInputs = { ...alone, images: d.named(imgRow, ['batch', 'height', 'width', 'channels'] as const) };
      const seqAlone = backbone(params, aloneInputs);
      const L = n + T;
      assertClose(t, await seqAlone.tensor.data(), all.slice(L * c.hidden_dim), 1e-5, 1e-5, 'row 1 alone');

      // padding invariance: other ids under padding_mask = 0 change nothing at unpadded positions
      const ids = Int32Array.from(await inputs.token_ids.tensor.data());
      const pad = await inputs.padding_mask.tensor.data();
      ids.forEach((v, i) => { if (pad[i] === 0) ids[i] = (v + 1) % c.vocabulary_size; });
      const repadded = { ...inputs, token_ids: d.named(tf.tensor(ids, [2, T], 'int32'), ['batch', 'seq'] as const) };
      const seq2 = await backbone(params, repadded).tensor.data();
      for (let b = 0; b < 2; b++) for (let i = 0; i < L; i++) {
        if (i >= n && pad[b * T + (i - n)] === 0) continue;
        const at = (b * L + i) * c.hidden_dim;
        assertClose(t, seq2.slice(at, at + c.hidden_dim), all.slice(at, at + c.hidden_dim), 1e-5, 1e-5, `position ${i} of row ${b}`);
      }
      tf.dispose([seq.tensor, lg.tensor, seqAlone.tensor, imgRow, repadded.token_ids.tensor]);
      disposeInputs(inputs);
      disposeInputs(alone);
      d.disposeTree(params);
    }),
    { numRuns: 20, seed: 7 },
  );
});

test('the prefix-LM mask equals its literal formula, with and without a sliding window (fast-check)', async (t) => {
  await fc.assert(
    fc.asyncProperty(fc.integer({ min: 1, max: 6 }), fc.integer({ min: 0, max: 3 }), fc.option(fc.integer({ min: 1, max: 5 }), { nil: undefined }), fc.integer(), async (T, N, window, seed) => {
      const rowsOf = fc.sample(maskRows(2, T), { seed, numRuns: 1 })[0];
      const pad: number[][] = rowsOf.map(({ prompt, response: resp }) => Array.from({ length: T }, (_, i) => (i < prompt + resp ? 1 : 0)));
      const resp: number[][] = rowsOf.map(({ prompt, response: r }) => Array.from({ length: T }, (_, i) => (i >= prompt && i < prompt + r ? 1 : 0)));
      const m = prefixLmMask(
        d.named(tf.tensor2d(pad, undefined, 'int32'), ['batch', 'seq'] as const),
        d.named(tf.tensor2d(resp, undefined, 'int32'), ['batch', 'seq'] as const),
        N,
        window,
      );
      const got = await tf.cast(m.tensor, 'int32').data();
      const L = N + T;
      const expected: number[] = [];
      for (let b = 0; b < 2; b++) for (let i = 0; i < L; i++) for (let j = 0; j < L; j++) {
        const pj = j < N ? 1 : pad[b][j - N];
        const rj = j < N ? 0 : resp[b][j - N];
        let ok = (pj === 1 && rj === 0) || (rj === 1 && j <= i);
        if (window !== undefined) ok = ok && Math.abs(i - j) <= window - 1;
        expected.push(ok ? 1 : 0);
      }
      t.deepEqual(Array.from(got), expected);
      m.dispose();
    }),
    { numRuns: 40 },
  );
});

test('a literal prefix-LM mask: 1 image token, prompt 2, response 2, 1 pad', async (t) => {
  const m = prefixLmMask(
    d.named(tf.tensor2d([[1, 1, 1, 1, 0]], undefined, 'int32'), ['batch', 'seq'] as const),
    d.named(tf.tensor2d([[0, 0, 1, 1, 0]], undefined, 'int32'), ['batch', 'seq'] as const),
    1,
  );
  t.deepEqual(await tf.cast(m.tensor, 'int32').array(), [[
    [1, 1, 1, 0, 0, 0], // image sees image + prompt
    [1, 1, 1, 0, 0, 0], // prompt
    [1, 1, 1, 0, 0, 0],
    [1, 1, 1, 1, 0, 0], // first response token: prefix + itself
    [1, 1, 1, 1, 1, 0], // second response token
    [1, 1, 1, 1, 1, 0], // padding query: prefix and the responses before it (its output is never used)
  ]]);
  m.dispose();
});

test('initialisation follows keras_hub: zero RMSNorm scales, unit gammas, glorot ranges, 1/vocab embedding variance', (t) => {
  const c: PaliGemmaConfig = { ...CONFIG_DEFAULTS, vocabulary_size: 400, image_size: 8, num_layers: 1, num_query_heads: 2, num_key_value_heads: 1, hidden_dim: 64, intermediate_dim: 64, head_dim: 16, vit_patch_size: 4, vit_num_heads: 2, vit_hidden_dim: 16, vit_num_layers: 1, vit_intermediate_dim: 32 };
  const p = initParams(c, d.key(3));
  const v = (x: d.Named) => x.tensor.dataSync();
  t.true(v(p.layers[0].pre_attention_norm.scale).every((x) => x === 0));
  t.true(v(p.vit.blocks[0].layer_norm_1.gamma).every((x) => x === 1));
  const q = v(p.layers[0].attention.query);
  const limit = Math.sqrt(6 / (64 * 2 + 16 * 2)); // fan_in = D * N, fan_out = H * N
  t.true(q.every((x) => Math.abs(x) <= limit));
  t.true(Math.max(...q) > 0.9 * limit);
  const e = Array.from(v(p.token_embedding[0]));
  const variance = e.reduce((a, x) => a + x * x, 0) / e.length;
  t.true(Math.abs(variance - 1 / 400) < 0.1 / 400, `embedding variance ${variance}`);
  const again = initParams(c, d.key(3));
  t.deepEqual(Array.from(v(again.token_embedding[0])), e, 'same key, same params');
  t.is(parameterCount(c), d.leaves(p).reduce((n, [, x]) => n + x.tensor.size, 0));
  d.disposeTree(p);
  d.disposeTree(again);
});
