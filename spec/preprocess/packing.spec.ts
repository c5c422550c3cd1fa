/**
 * src/preprocess/packing.ts against keras_hub's PaliGemmaCausalLMPreprocessor (fixture packing L16 / L32,
 * generate_preprocess, generate_postprocess), literal rows from the README, and fast-check invariants.
 */
import test from 'ava';
import fc from 'fast-check';
import {
  GEMMA_SPECIAL_IDS,
  generatePostprocess,
  generatePostprocessBatch,
  packGeneration,
  packGenerationBatch,
  packTraining,
  packTrainingBatch,
  roundRobinKeep,
} from '../../src/preprocess/packing';
import { load, manifest, pieceDecoder } from './fixture';

const prompts = manifest.pairs.map((p) => p.prompt_ids);
const responses = manifest.pairs.map((p) => p.response_ids);

test('the fixture uses the Gemma special ids', (t) => {
  t.deepEqual(manifest.special_ids, GEMMA_SPECIAL_IDS);
});

// ---------------------------------------------------------------------------------------------------------
// keras_hub parity
// ---------------------------------------------------------------------------------------------------------

for (const name of ['L16', 'L32'] as const) {
  test(`training packing ${name} equals keras_hub on all 12 pairs`, (t) => {
    const refs = manifest.packing[name];
    const L = refs.x_token_ids.shape[1];
    const packed = packTrainingBatch(prompts, responses, L);
    t.deepEqual(packed.shape, refs.x_token_ids.shape as [number, number]);
    t.deepEqual(Array.from(packed.tokenIds), load(refs.x_token_ids));
    t.deepEqual(Array.from(packed.paddingMask), load(refs.x_padding_mask));
    t.deepEqual(Array.from(packed.responseMask), load(refs.x_response_mask));
    t.deepEqual(Array.from(packed.y), load(refs.y));
    t.deepEqual(Array.from(packed.sampleWeight), load(refs.sample_weight));
  });
}

for (const [name, refs] of Object.entries(manifest.generate_preprocess)) {
  test(`generate_preprocess ${name} equals keras_hub`, (t) => {
    const L = refs.token_ids.shape[1];
    const packed = packGenerationBatch(prompts, name.endsWith('prompts_and_responses') ? responses : undefined, L);
    t.deepEqual(packed.shape, refs.token_ids.shape as [number, number]);
    t.deepEqual(Array.from(packed.tokenIds), load(refs.token_ids));
    t.deepEqual(Array.from(packed.paddingMask), load(refs.padding_mask));
    t.deepEqual(Array.from(packed.responseMask), load(refs.response_mask));
  });
}

test('generate_postprocess: the kept ids detokenize to keras_hub output strings', (t) => {
  const decode = pieceDecoder();
  const expectedIds = [
    [799, 792, 498, 569, 12, 792, 282, 280], // "caption en\na cat": bos, eos and pads dropped
    [800, 300, 344, 282, 280, 12, 1205, 1206, 282, 280, 598, 357, 814], // an eos mid-row is dropped too
    [419, 797, 12, 831, 458], // positions with padding_mask 0 are dropped whatever they hold
    [802, 793, 3], // pad and bos ids inside the row are dropped; unk (3) is kept
  ];
  manifest.generate_postprocess.forEach((c, i) => {
    const ids = generatePostprocess(c.token_ids, c.padding_mask);
    t.deepEqual(ids, expectedIds[i]);
    t.is(decode(ids), c.output);
  });
  const rows = manifest.generate_postprocess.slice(0, 1);
  const batch = generatePostprocessBatch(
    [...rows[0].token_ids, ...rows[0].token_ids],
    [...rows[0].padding_mask, ...rows[0].padding_mask],
    [2, rows[0].token_ids.length],
  );
  t.deepEqual(batch, [expectedIds[0], expectedIds[0]]);
});

// ---------------------------------------------------------------------------------------------------------
// Literal rows (README section 2)
// ---------------------------------------------------------------------------------------------------------

test('README worked example: pair 0 at L16 keeps 5 + 10 tokens', (t) => {
  const p = packTraining(prompts[0], responses[0], 16);
  t.deepEqual(p.shape, [1, 16]);
  t.deepEqual(Array.from(p.tokenIds), [2, 799, 792, 498, 569, 12, 818, 282, 280, 285, 294, 791, 313, 368, 272, 285]);
  t.deepEqual(Array.from(p.paddingMask), [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]);
  t.deepEqual(Array.from(p.responseMask), [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]);
  t.deepEqual(Array.from(p.y), [799, 792, 498, 569, 12, 818, 282, 280, 285, 294, 791, 313, 368, 272, 285, 1]);
  t.deepEqual(Array.from(p.sampleWeight), [0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]);
});

test('README: empty prompt and response', (t) => {
  const p = packTraining([], [], 6);
  t.deepEqual(Array.from(p.tokenIds), [2, 1, 0, 0, 0, 0]);
  t.deepEqual(Array.from(p.paddingMask), [1, 1, 0, 0, 0, 0]);
  t.deepEqual(Array.from(p.responseMask), [0, 1, 0, 0, 0, 0]);
  t.deepEqual(Array.from(p.y), [1, 0, 0, 0, 0, 0]);
  t.deepEqual(Array.from(p.sampleWeight), [1, 0, 0, 0, 0, 0]);
});

test('round robin: a long prompt is cut too (pair 1 at L16 keeps 12 of 14 prompt tokens)', (t) => {
  t.deepEqual(roundRobinKeep([14, 3], 15), [12, 3]);
  t.deepEqual(roundRobinKeep([5, 13], 15), [5, 10]);
  t.deepEqual(roundRobinKeep([9, 9], 5), [3, 2]);
  t.deepEqual(roundRobinKeep([2, 3], 10), [2, 3]);
  t.deepEqual(roundRobinKeep([4, 4], 0), [0, 0]);
  t.deepEqual(Array.from(packTraining(prompts[1], responses[1], 16).tokenIds.subarray(0, 13)), [2, ...prompts[1].slice(0, 12)]);
});

test('generation: no eos, the prompt alone gets the whole budget without responses', (t) => {
  const g = packGeneration([5, 6, 7, 8, 9], undefined, 4);
  t.deepEqual(Array.from(g.tokenIds), [2, 5, 6, 7]);
  t.deepEqual(Array.from(g.responseMask), [0, 0, 0, 0]);
  const r = packGeneration([5, 6, 7], [8, 9], 8);
  t.deepEqual(Array.from(r.tokenIds), [2, 5, 6, 7, 8, 9, 0, 0]);
  t.deepEqual(Array.from(r.paddingMask), [1, 1, 1, 1, 1, 1, 0, 0]);
  t.deepEqual(Array.from(r.responseMask), [0, 0, 0, 0, 1, 1, 0, 0]);
});

test('custom special ids and typed-array inputs', (t) => {
  const special = { bos: 7, eos: 8, pad: 9 };
  const p = packTraining(Int32Array.from([1]), Uint16Array.from([2]), 5, special);
  t.deepEqual(Array.from(p.tokenIds), [7, 1, 2, 8, 9]);
  t.deepEqual(Array.from(p.paddingMask), [1, 1, 1, 1, 0]);
  t.deepEqual(generatePostprocess(p.tokenIds, p.paddingMask, [7, 8, 9]), [1, 2]);
});

test('errors', (t) => {
  t.throws(() => packTraining([1], [2], 0), { message: 'packTraining: sequenceLength must be a positive integer, got 0' });
  t.throws(() => packGeneration([1.5], undefined, 4), { message: 'packGeneration: prompts[0][0] is 1.5, not a token id (a non-negative int32)' });
  t.throws(() => packTrainingBatch([[1], [2]], [[3]], 4), { message: 'packTraining: 2 prompts but 1 responses' });
  t.throws(() => generatePostprocess([1, 2], [1]), { message: 'generatePostprocess: 2 token ids but 1 mask values' });
  t.throws(() => generatePostprocessBatch([1, 2, 3], [1, 1, 1], [2, 2]), {
    message: 'generatePostprocessBatch: shape [2, 2] needs 4 values; got 3 token ids and 3 mask values',
  });
});

// ---------------------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------------------

// Ids above the specials (pad 0, eos 1, bos 2), so that padding_mask is exactly "not padding".
const ids = fc.array(fc.integer({ min: 3, max: 50 }), { maxLength: 12 });
const lengths = fc.integer({ min: 1, max: 16 });

test('property: training packing invariants', (t) => {
  fc.assert(
    fc.property(ids, ids, lengths, (prompt, response, L) => {
      const p = packTraining(prompt, response, L);
      const [kp, kr] = roundRobinKeep([prompt.length, response.length], L - 1);
      const seq = [2, ...prompt.slice(0, kp), ...response.slice(0, kr), 1];
      const seg = [0, ...prompt.slice(0, kp).map(() => 0), ...response.slice(0, kr).map(() => 1), 1];
      while (seq.length < L + 1) {
        seq.push(0);
        seg.push(0);
      }
      t.deepEqual(p.shape, [1, L]);
      for (const a of [p.tokenIds, p.paddingMask, p.responseMask, p.y, p.sampleWeight]) t.is(a.length, L);
      t.deepEqual(Array.from(p.tokenIds), seq.slice(0, L));
      t.deepEqual(Array.from(p.y), seq.slice(1));
      for (let i = 0; i < L; i++) {
        // Truth tables of the masks.
        t.is(p.paddingMask[i], p.tokenIds[i] !== 0 ? 1 : 0);
        t.is(p.responseMask[i], seg[i]);
        t.is(p.sampleWeight[i], seg[i + 1]);
        if (p.responseMask[i]) t.is(p.paddingMask[i], 1);
        // y is the shifted sequence; sampleWeight is the shifted response mask.
        if (i + 1 < L) {
          t.is(p.y[i], p.tokenIds[i + 1]);
          t.is(p.sampleWeight[i], p.responseMask[i + 1]);
        }
      }
      // Round robin: all that fits is kept; otherwise the budget is full and shares differ by at most one.
      t.is(kp + kr, Math.min(prompt.length + response.length, L - 1));
      if (kp < prompt.length && kr < response.length) t.true(kp === kr || kp === kr + 1);
      t.is(p.tokenIds[0], 2);
    }),
    { numRuns: 200 },
  );
});

test('property: generation packing invariants', (t) => {
  fc.assert(
    fc.property(ids, fc.option(ids, { nil: undefined }), lengths, (prompt, response, L) => {
      const g = packGeneration(prompt, response, L);
      const tokens = Array.from(g.tokenIds);
      t.is(tokens.length, L);
      t.is(tokens[0], 2);
      t.false(tokens.includes(1)); // never an eos
      const real = g.paddingMask.reduce((a, b) => a + b, 0);
      t.is(real, Math.min(L, 1 + prompt.length + (response?.length ?? 0)));
      t.deepEqual(Array.from(g.paddingMask), tokens.map((v) => (v !== 0 ? 1 : 0)));
      if (!response) t.true(g.responseMask.every((v) => v === 0));
      // Postprocess gives back the packed prompt and response without bos.
      t.deepEqual(generatePostprocess(g.tokenIds, g.paddingMask), tokens.slice(1, real));
    }),
    { numRuns: 200 },
  );
});
