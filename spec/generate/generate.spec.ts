/**
 * Generation against keras_hub's `PaliGemmaCausalLM.generate` fixture (spec/fixtures/text/generate, README
 * section 3), under this project's schedule: every row generates what it generates alone. So the batch's
 * shortest row (row 0) matches keras_hub's batched run, and row 1 matches keras_hub's `greedy_row1_alone`
 * (keras_hub's batched row 1 re-feeds its prompt tail causally and is not a target).
 *
 * Covered: greedy tokens and decode logits (2e-4), rows alone vs batched, stop ids (including one that
 * only occurs in a prompt, and the pad id), the samplers replayed from the stored uniforms (on keras_hub's
 * own logits for every step and row, and end to end), the prefill and final KV caches, the cached logits vs
 * a full prefix-LM forward, a longer buffer, memory neutrality, literal errors.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { ExecutionContext } from 'ava';
import { tf } from '../../dsl/tf';
import * as d from '../../dsl';
import { backbone, logits as lmLogits, type PaliGemmaParams } from '../../models/paligemma';
import type { Images } from '../../models/siglip';
import { readBin, type BinEntry } from '../../src/cli/fixture';
import { loadPreset } from '../../src/runtime/preset';
import { decodeStep, generate, prefill, sample, topK, topP, type GenerateOptions, type LayerCache, type Sampler } from '../../src/generate/generate';
import { backendTest, test } from '../helpers/backends';
import { assertClose } from '../helpers/numeric';

const DIR = 'spec/fixtures/text/generate';
const N = 16; // image tokens
const T = 24; // buffer

interface Run {
  readonly outputs: { readonly token_ids: BinEntry; readonly padding_mask: BinEntry };
  readonly decode?: { readonly logits: BinEntry };
  readonly sampling?: Readonly<Record<'uniforms' | 'candidate_ids' | 'candidate_probs', BinEntry>> & {
    readonly candidates_kept_per_step_row: number[][];
  };
}
const manifest = JSON.parse(fs.readFileSync(path.join(DIR, 'manifest.json'), 'utf8')) as {
  inputs: Record<'images' | 'token_ids' | 'padding_mask', BinEntry>;
  runs: Record<string, Run>;
  debug: Record<'prefill_cache' | 'final_cache_greedy', BinEntry>;
};
const bin = (e: BinEntry) => readBin(DIR, e);
const rowsOf = (flat: ArrayLike<number>, width: number): number[][] =>
  Array.from({ length: flat.length / width }, (_, r) => Array.from(flat).slice(r * width, (r + 1) * width));

const tokenIds = rowsOf(bin(manifest.inputs.token_ids), T);
const paddingMask = rowsOf(bin(manifest.inputs.padding_mask), T);
const runTokens = (name: string) => rowsOf(bin(manifest.runs[name].outputs.token_ids), T);
const runMask = (name: string) => rowsOf(bin(manifest.runs[name].outputs.padding_mask), T);
const ROW1_ALONE = runTokens('greedy_row1_alone')[0];
const PROMPT = [6, 11];
const VOCAB = 2352;

/** The preset and the images (all rows, or the rows listed), freed after `fn`. */
async function withModel(fn: (p: PaliGemmaParams, images: (rows?: number[]) => Images) => Promise<void>): Promise<void> {
  const params = loadPreset(path.join(DIR, 'preset'));
  const all = tf.tensor(bin(manifest.inputs.images) as Float32Array, [...manifest.inputs.images.shape]);
  const made: tf.Tensor[] = [all];
  const images = (rows?: number[]) => {
    const t = rows ? tf.gather(all, tf.tensor1d(rows, 'int32')) : all;
    if (rows) made.push(t);
    return d.named(t, ['batch', 'height', 'width', 'channels'] as const);
  };
  try {
    await fn(params, images);
  } finally {
    tf.dispose(made);
    d.disposeTree(params);
  }
}

const run = (p: PaliGemmaParams, images: Images, rows: number[], options: GenerateOptions) =>
  generate(p, { images, tokenIds: rows.map((r) => tokenIds[r]), paddingMask: rows.map((r) => paddingMask[r]) }, options);

const list = (a: ArrayLike<number>) => Array.from(a);

// -------------------------------------------------------------------------------------------------
// greedy
// -------------------------------------------------------------------------------------------------

backendTest('greedy: row 0 = keras_hub batched (tokens, decode logits within 2e-4), row 1 = keras_hub row 1 alone', async (t, backend) => {
  await withModel(async (p, images) => {
    const start = performance.now();
    const out = await run(p, images(), [0, 1], { returnLogits: true });
    const seconds = (performance.now() - start) / 1000;
    const generated = out.promptLengths.reduce((a, len) => a + T - len, 0);
    t.deepEqual(out.promptLengths, PROMPT);
    t.is(out.steps, 18, 'the shortest row needs 18 tokens');
    t.deepEqual(list(out.tokenIds[0]), runTokens('greedy')[0], 'row 0 tokens');
    t.deepEqual(list(out.tokenIds[1]), ROW1_ALONE, 'row 1 tokens = keras_hub row 1 alone');
    t.deepEqual(out.paddingMask.map(list), runMask('greedy'), 'no stop ids: all true');
    const expected = bin(manifest.runs.greedy.decode!.logits) as Float32Array; // [18, 2, vocab]
    t.is(out.logits![0].length, 18);
    t.is(out.logits![1].length, 13);
    let worst = 0;
    for (let s = 0; s < 18; s++) {
      const want = expected.subarray((s * 2 + 0) * VOCAB, (s * 2 + 1) * VOCAB);
      worst = Math.max(worst, assertClose(t, out.logits![0][s], want, 2e-4, 0, `row 0 step ${s} logits`));
    }
    t.log(`row 0 decode logits: max |diff| ${worst.toExponential(2)}; ${generated} tokens in ${seconds.toFixed(2)} s = ${(generated / seconds).toFixed(1)} tokens/s on ${backend.name}`);
  });
}, { webgpu: true });

backendTest('greedy_row0_alone, greedy_row1_alone: a row alone = the same row in the batch', async (t) => {
  await withModel(async (p, images) => {
    const batched = await run(p, images(), [0, 1], { returnLogits: true });
    for (const r of [0, 1]) {
      const alone = await run(p, images([r]), [r], { returnLogits: true });
      const name = `greedy_row${r}_alone`;
      t.deepEqual(list(alone.tokenIds[0]), runTokens(name)[0], `${name} tokens`);
      t.deepEqual(list(alone.paddingMask[0]), runMask(name)[0], `${name} mask`);
      t.deepEqual(list(alone.tokenIds[0]), list(batched.tokenIds[r]), `row ${r}: alone = batched`);
      let worst = 0;
      alone.logits![0].forEach((l, s) => (worst = Math.max(worst, assertClose(t, l, batched.logits![r][s], 1e-4, 0, `row ${r} step ${s}`))));
      t.log(`row ${r}: alone vs batched logits max |diff| ${worst.toExponential(2)}`);
    }
  });
});

// -------------------------------------------------------------------------------------------------
// stop token ids
// -------------------------------------------------------------------------------------------------

backendTest('stop ids: greedy_stop_eos, greedy_stop_eos_and_prompt_token (prompt positions never count)', async (t) => {
  await withModel(async (p, images) => {
    for (const [name, stops] of [['greedy_stop_eos', [1]], ['greedy_stop_eos_and_prompt_token', [1, 800]]] as const) {
      const out = await run(p, images(), [0, 1], { stopTokenIds: stops });
      // row 0 stops at 10 and goes on (masked) until row 1, which never emits 1, fills its buffer after
      // 13 steps; keras_hub runs 18 (its row 1 starts at 6), so row 0 is compared through position 18
      t.is(out.steps, 13, name);
      const g0 = runTokens(name)[0];
      t.deepEqual(list(out.tokenIds[0]), [...g0.slice(0, 19), ...Array(5).fill(0)], `${name} row 0 tokens`);
      t.deepEqual(list(out.paddingMask[0]), runMask(name)[0], `${name} row 0 mask`);
      t.deepEqual(list(out.paddingMask[0]), [...Array(11).fill(1), ...Array(13).fill(0)], 'true through the <eos> at 10');
      t.deepEqual(list(out.tokenIds[1]), ROW1_ALONE, `${name} row 1 = row 1 alone`);
      t.deepEqual(list(out.paddingMask[1]), Array(T).fill(1), `${name} row 1 never stops`);
    }
  });
});

backendTest('stop ids: greedy_stop_early_all_rows under our schedule, and a stop that ends every row early', async (t) => {
  await withModel(async (p, images) => {
    // keras_hub's batched row 1 emits 1031 at 15; row 1 alone never emits 1 or 1031, so here only row 0
    // stops and the loop runs until row 1's buffer is full (13 steps). Row 0 agrees with keras_hub through
    // the 10 steps keras_hub ran, and keeps generating (masked) after its stop.
    const name = 'greedy_stop_early_all_rows';
    const out = await run(p, images(), [0, 1], { stopTokenIds: [1, 1031] });
    t.is(out.steps, 13);
    t.deepEqual(list(out.tokenIds[0]).slice(0, 16), runTokens(name)[0].slice(0, 16), 'row 0 through the steps keras_hub ran');
    t.deepEqual(list(out.tokenIds[0]), [...runTokens('greedy')[0].slice(0, 19), ...Array(5).fill(0)], 'row 0 goes on (masked)');
    t.deepEqual(list(out.paddingMask[0]), runMask(name)[0], 'row 0 mask = keras_hub');
    t.deepEqual(list(out.tokenIds[1]), ROW1_ALONE);
    t.deepEqual(list(out.paddingMask[1]), Array(T).fill(1));

    // 2056 is row 1's 2nd token alone (position 12): row 0 stops at step 4 (position 10), row 1 at step 1
    const early = await run(p, images(), [0, 1], { stopTokenIds: [1, 2056] });
    t.is(early.steps, 5, 'ends when the last row stops');
    const g0 = runTokens('greedy')[0];
    t.deepEqual(list(early.tokenIds[0]), [...g0.slice(0, 11), ...Array(13).fill(0)], 'positions never reached hold 0');
    t.deepEqual(list(early.tokenIds[1]), [...ROW1_ALONE.slice(0, 16), ...Array(8).fill(0)], 'row 1 goes on after its stop until row 0 stops');
    t.deepEqual(list(early.paddingMask[0]), [...Array(11).fill(1), ...Array(13).fill(0)]);
    t.deepEqual(list(early.paddingMask[1]), [...Array(13).fill(1), ...Array(11).fill(0)]);
  });
});

backendTest('stop ids: the pad id 0 counts only when generated (keras_hub stops at once on its unfilled zeros)', async (t) => {
  await withModel(async (p, images) => {
    const out = await run(p, images(), [0, 1], { stopTokenIds: [0] });
    t.is(out.steps, 18, 'keras_hub runs 0 steps (greedy_stop_on_pad_id); the model never emits 0 here');
    t.deepEqual(list(out.tokenIds[0]), runTokens('greedy')[0]);
    t.deepEqual(list(out.tokenIds[1]), ROW1_ALONE);
    t.deepEqual(out.paddingMask.map(list), [Array(T).fill(1), Array(T).fill(1)]);
    t.notDeepEqual(out.paddingMask.map(list), runMask('greedy_stop_on_pad_id'), 'documented departure');
  });
});

// -------------------------------------------------------------------------------------------------
// samplers
// -------------------------------------------------------------------------------------------------

const SAMPLERS: Array<[string, Sampler]> = [['top_k', topK(5)], ['top_p', topP(0.25)]];

test('samplers on keras_hub logits: every step and row gives its candidates, q and token', (t) => {
  for (const [name, sampler] of SAMPLERS) {
    const r = manifest.runs[name];
    const logits = bin(r.decode!.logits) as Float32Array;
    const u = bin(r.sampling!.uniforms) as Float64Array;
    const ids = bin(r.sampling!.candidate_ids) as Int32Array;
    const probs = bin(r.sampling!.candidate_probs) as Float32Array;
    const width = r.sampling!.candidate_ids.shape[2];
    const tokens = runTokens(name);
    let worst = 0;
    for (let s = 0; s < 18; s++) {
      for (let b = 0; b < 2; b++) {
        const at = s * 2 + b;
        const choice = sample(sampler, logits.subarray(at * VOCAB, (at + 1) * VOCAB), u[at]);
        const kept = r.sampling!.candidates_kept_per_step_row[s][b];
        t.deepEqual(list(choice.candidates!), list(ids.subarray(at * width, at * width + kept)), `${name} step ${s} row ${b} candidates`);
        worst = Math.max(worst, assertClose(t, choice.probs!, probs.subarray(at * width, at * width + kept), 1e-6, 0, `${name} step ${s} row ${b} q`));
        // keras_hub keeps the prompt token where a longer row's prompt still runs (row 1 before position 11)
        if (6 + s >= PROMPT[b]) t.is(choice.token, tokens[b][6 + s], `${name} step ${s} row ${b} token`);
      }
    }
    t.log(`${name}: q max |diff| ${worst.toExponential(2)}`);
  }
});

test('samplers: greedy takes the first index on ties; top-k ties keep the lower id; temperature', (t) => {
  const logits = [1, 3, 3, 2, 3];
  t.is(sample({ kind: 'greedy' }, logits).token, 1);
  t.deepEqual(list(sample(topK(2), logits, 0.5).candidates!), [1, 2]);
  t.deepEqual(list(sample(topK(4), logits, 0.5).candidates!), [1, 2, 4, 3]);
  // top-p keeps through the first cumulative sum above p: probs ~ [.04 .28 .28 .10 .28] sorted 1,2,4,3,0
  t.deepEqual(list(sample(topP(0.3), logits, 0.5).candidates!), [1, 2]);
  t.deepEqual(list(sample(topP(0.6), logits, 0.5).candidates!), [1, 2, 4]);
  t.deepEqual(list(sample(topP(0.1), logits, 0.99).candidates!), [1], 'the first is always kept');
  t.deepEqual(list(sample(topP(0.99, { k: 2 }), logits, 0.5).candidates!), [1, 2], 'k first');
  // searchsorted 'right': u at a cdf boundary moves to the next candidate
  t.is(sample(topK(2), logits, 0.5).token, 2);
  t.is(sample(topK(2), logits, 0.4999).token, 1);
  // temperature sharpens: at 0.01 a top-k draw of [3, 2] is the top one for any u < 1
  t.is(sample(topK(2, 0.01), [2, 3], 0.999).token, 1);
});

backendTest('top_k, top_p: replayed from the stored uniforms (row 0 = keras_hub; row 1 = row 1 alone)', async (t) => {
  await withModel(async (p, images) => {
    for (const [name, sampler] of SAMPLERS) {
      const r = manifest.runs[name];
      const u = rowsOf(bin(r.sampling!.uniforms), 2); // [step][row]
      const out = await run(p, images(), [0, 1], { sampler, uniforms: u, returnChoices: true });
      t.deepEqual(list(out.tokenIds[0]), runTokens(name)[0], `${name} row 0 tokens`);
      const ids = bin(r.sampling!.candidate_ids) as Int32Array;
      const width = r.sampling!.candidate_ids.shape[2];
      out.choices![0].forEach((choice, s) => {
        const kept = r.sampling!.candidates_kept_per_step_row[s][0];
        t.deepEqual(list(choice.candidates!), list(ids.subarray(s * 2 * width, s * 2 * width + kept)), `${name} step ${s} candidates`);
      });
      const alone = await run(p, images([1]), [1], { sampler, uniforms: (s) => u[s][1] });
      t.deepEqual(list(out.tokenIds[1]), list(alone.tokenIds[0]), `${name} row 1 batched = alone`);
    }
  });
});

backendTest('seeded sampling: the same seed gives the same tokens; a seed is required', async (t) => {
  await withModel(async (p, images) => {
    const a = await run(p, images(), [0, 1], { sampler: topP(0.9), seed: 7 });
    const b = await run(p, images(), [0, 1], { sampler: topP(0.9), seed: 7 });
    const c = await run(p, images(), [0, 1], { sampler: topP(0.9), seed: 8 });
    t.deepEqual(a.tokenIds.map(list), b.tokenIds.map(list));
    t.notDeepEqual(a.tokenIds.map(list), c.tokenIds.map(list));
    await t.throwsAsync(run(p, images(), [0, 1], { sampler: topK(5) }), {
      message: 'generate: the top_k sampler needs uniforms, a key or a seed',
    });
  });
});

// -------------------------------------------------------------------------------------------------
// cache
// -------------------------------------------------------------------------------------------------

/**
 * keras_hub's cache [batch, layers, 2, N + T, kv_heads, head_dim] at (b, layer, kv, position): the
 * [kv_heads, head_dim] block. keras_hub stores keys with the RoPE halves interleaved (its `_apply_rope`
 * stacks the halves on a last axis: stored[2i] = x[i], stored[2i + 1] = x[H/2 + i]; q gets the same
 * permutation, so q.k is unchanged): undo it to compare with our halves layout.
 */
const cacheAt = (x: Float32Array, b: number, layer: number, kv: number, pos: number) => {
  const [heads, h] = [2, 8];
  const at = (((b * 3 + layer) * 2 + kv) * (N + T) + pos) * heads * h;
  const block = x.subarray(at, at + heads * h);
  if (kv === 1) return block;
  return Float32Array.from({ length: heads * h }, (_, k) => {
    const [head, i] = [Math.floor(k / h), k % h];
    return block[head * h + (i < h / 2 ? 2 * i : 2 * (i - h / 2) + 1)];
  });
};

async function compareCache(t: ExecutionContext, got: readonly LayerCache[], want: Float32Array, b: number, positions: number, what: string) {
  let worst = 0;
  for (let layer = 0; layer < 3; layer++) {
    for (const [kv, x] of [[0, got[layer].key], [1, got[layer].value]] as const) {
      const data = (await x.tensor.data()) as Float32Array;
      const block = 16;
      for (let pos = 0; pos < positions; pos++) {
        const mine = data.subarray(((b * (N + T)) + pos) * block, ((b * (N + T)) + pos + 1) * block);
        worst = Math.max(worst, assertClose(t, mine, cacheAt(want, b, layer, kv, pos), 1e-4, 0, `${what} row ${b} layer ${layer} ${kv ? 'value' : 'key'} position ${pos}`));
      }
    }
  }
  return worst;
}

backendTest('KV cache: prefill = keras_hub prefill_cache over each prompt; teacher-forced steps = final_cache_greedy (row 0)', async (t) => {
  await withModel(async (p, images) => {
    const before = tf.memory().numTensors;
    let state = prefill(p, images(), tokenIds, PROMPT, T);
    t.deepEqual(state.cache[0].key.shape, [2, N + T, 2, 8], 'fixed-size cache');
    const want = bin(manifest.debug.prefill_cache) as Float32Array;
    const w0 = await compareCache(t, state.cache, want, 0, N + PROMPT[0], 'prefill');
    const w1 = await compareCache(t, state.cache, want, 1, N + PROMPT[1], 'prefill');
    // feed the greedy tokens of row 0 and of row 1 alone, each row at its own positions
    const seqs = [runTokens('greedy')[0], ROW1_ALONE];
    for (let s = 1; s < 18; s++) {
      const active = PROMPT.map((len) => len + s < T);
      const feed = PROMPT.map((len, b) => (active[b] ? seqs[b][len + s - 1] : 0));
      const at = PROMPT.map((len, b) => (active[b] ? N + len + s - 1 : N + T - 1));
      const next = decodeStep(p, state.cache, feed, at, active);
      tf.dispose(d.collectTensors(state));
      state = next;
    }
    // keras_hub's last step writes position N + 22; position N + 23 is never fed
    const wf = await compareCache(t, state.cache, bin(manifest.debug.final_cache_greedy) as Float32Array, 0, N + T - 1, 'final');
    tf.dispose(d.collectTensors(state));
    t.is(tf.memory().numTensors, before, 'prefill and decodeStep leave nothing behind');
    t.log(`cache max |diff|: prefill row 0 ${w0.toExponential(2)}, row 1 ${w1.toExponential(2)}; final row 0 ${wf.toExponential(2)}`);
  });
});

backendTest('cached step logits = a full prefix-LM forward over the final sequence (2e-4)', async (t) => {
  await withModel(async (p, images) => {
    const out = await run(p, images(), [0, 1], { returnLogits: true });
    const seq = (rows: Int32Array[]) => d.named(tf.tensor2d(rows.map(list), [2, T], 'int32'), ['batch', 'seq'] as const);
    const response = out.promptLengths.map((len) => Int32Array.from({ length: T }, (_, i) => (i >= len ? 1 : 0)));
    const inputs = {
      images: images(),
      token_ids: seq(out.tokenIds),
      padding_mask: seq([new Int32Array(T).fill(1), new Int32Array(T).fill(1)]),
      response_mask: seq(response),
    };
    const full = d.scoped(() => lmLogits(p, backbone(p, inputs)));
    const data = (await full.tensor.data()) as Float32Array; // [2, T, vocab]
    let worst = 0;
    out.promptLengths.forEach((len, b) => {
      for (let pos = len; pos < T; pos++) {
        const at = (b * T + pos - 1) * VOCAB;
        worst = Math.max(worst, assertClose(t, out.logits![b][pos - len], data.subarray(at, at + VOCAB), 2e-4, 0, `row ${b} position ${pos}`));
      }
    });
    tf.dispose([full.tensor, inputs.token_ids.tensor, inputs.padding_mask.tensor, inputs.response_mask.tensor]);
    t.log(`cached vs full forward: max |diff| ${worst.toExponential(2)}`);
  });
});

backendTest('maxLength longer than the packed width: the buffer grows, earlier tokens unchanged', async (t) => {
  await withModel(async (p, images) => {
    const out = await run(p, images(), [0, 1], { maxLength: 28 });
    t.is(out.tokenIds[0].length, 28);
    t.is(out.steps, 22);
    t.deepEqual(list(out.tokenIds[0]).slice(0, T), runTokens('greedy')[0]);
    t.deepEqual(list(out.tokenIds[1]).slice(0, T), ROW1_ALONE);
  });
});

// -------------------------------------------------------------------------------------------------
// memory and errors
// -------------------------------------------------------------------------------------------------

backendTest('generate is memory-neutral (tensors before = after), also when it throws', async (t) => {
  await withModel(async (p, images) => {
    const all = images();
    const before = tf.memory().numTensors;
    await run(p, all, [0, 1], { sampler: topP(0.5), seed: 1, stopTokenIds: [1], returnLogits: true });
    await run(p, all, [0, 1], {});
    t.is(tf.memory().numTensors, before);
    await t.throwsAsync(run(p, all, [0, 1], { sampler: topK(2), uniforms: [[0.5, 0.5]] }), {
      message: 'generate: uniforms has no value for step 1, row 0 (it has 1 steps)',
    });
    t.is(tf.memory().numTensors, before, 'after an error mid-loop');
  });
});

backendTest('errors: a prompt that fills the buffer, bad stop ids, bad masks, bad samplers', async (t) => {
  await withModel(async (p, images) => {
    const all = images();
    const full = [Array(T).fill(1), paddingMask[1]];
    await t.throwsAsync(generate(p, { images: all, tokenIds: tokenIds, paddingMask: full }), {
      message: "generate: row 0's prompt (24 tokens) fills the whole buffer (max length 24): nothing to generate",
    });
    await t.throwsAsync(run(p, all, [0, 1], { maxLength: 11 }), {
      message: "generate: row 1's prompt (11 tokens) fills the whole buffer (max length 11): nothing to generate",
    });
    for (const bad of [-1, 2352, 1.5]) {
      await t.throwsAsync(run(p, all, [0, 1], { stopTokenIds: [1, bad] }), {
        message: `generate: stop token id ${bad} is not an integer in [0, 2352)`,
      });
    }
    const holes = [[1, 1, 0, 1, ...Array(T - 4).fill(0)], paddingMask[1]];
    await t.throwsAsync(generate(p, { images: all, tokenIds: tokenIds, paddingMask: holes }), {
      message: "generate: row 0's padding_mask has a 1 at 3 after a 0 at 2; prompts must be left-aligned",
    });
    await t.throwsAsync(generate(p, { images: all, tokenIds: tokenIds, paddingMask: [Array(T).fill(0), paddingMask[1]] }), {
      message: 'generate: row 0 has an empty prompt; a packed prompt starts with [bos]',
    });
    await t.throwsAsync(run(p, all, [0, 1], { sampler: topK(0) }), { message: 'sampler: top_k k must be an integer in [1, 2352], got 0' });
    await t.throwsAsync(run(p, all, [0, 1], { sampler: topP(0) }), { message: 'sampler: top_p p must be in (0, 1], got 0' });
  });
});
