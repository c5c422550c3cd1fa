/**
 * The generation API on the generate fixture (spec/fixtures/text/generate): finish reasons, the
 * maxNewTokens budget, the onToken stream (order and content), generateText's streamed text and its
 * prompt newline rule, the bounds refused before anything is allocated (literal errors), token ids
 * outside the vocabulary, the host-built prefix-LM mask against the tensor-op one, and fromPresetAsync /
 * loadCausalLMAsync against their synchronous forms. The decode logits themselves are checked against
 * keras_hub on cpu, wasm and webgpu in generate.spec.ts.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { ExecutionContext } from 'ava';
import { tf } from '../../dsl/tf';
import * as d from '../../dsl';
import { backbone, prefixLmMask, prefixLmMaskOps, prefixLmMaskValues } from '../../models/paligemma';
import { withCache } from '../../models/gemma';
import { fromPreset, fromPresetAsync, loadPreset } from '../../src/runtime/preset';
import { formatBytes, setBackend, setMaxTensorBytes } from '../../src/runtime/backend';
import { checkGenerationBounds, generate, MAX_POSITIONS, type TokenEvent } from '../../src/generate/generate';
import { generateText, loadCausalLM, loadCausalLMAsync, promptText, type TextTokenEvent } from '../../src/generate/causal_lm';
import { readImage } from '../../src/preprocess/image';
import { main, type Io } from '../../src/cli/cli';
import { backendTest, test } from '../helpers/backends';
import { tempDir } from '../helpers/files';
import { DIR, T, list, paddingMask, runTokens, tokenIds, withModel } from './fixture';

const GREEDY0 = runTokens('greedy')[0]; // keras_hub's row 0
const ROW1 = runTokens('greedy_row1_alone')[0];
const thrown = async (f: () => unknown): Promise<string> => {
  try {
    await f();
  } catch (e) {
    return (e as Error).message;
  }
  return 'no error';
};

// -------------------------------------------------------------------------------------------------
// finish reasons, maxNewTokens, streaming
// -------------------------------------------------------------------------------------------------

backendTest('finish reasons: stop for <eos> (row 0 at 10), length for a full buffer (row 1)', async (t) => {
  await withModel(async (p, images) => {
    const out = await generate(p, { images, tokenIds, paddingMask }, { stopTokenIds: [1] });
    t.deepEqual(out.finishReasons, ['stop', 'length']);
    t.deepEqual(out.generatedLengths, [5, 13], 'row 0: 4 tokens + <eos> (positions 6..10); row 1: 11..23');
    const none = await generate(p, { images, tokenIds, paddingMask });
    t.deepEqual(none.finishReasons, ['length', 'length']);
    t.deepEqual(none.generatedLengths, [18, 13]);
  });
});

backendTest('maxNewTokens: a per-row budget; tokens = the unbounded run, then 0 and masked; onToken in step-then-row order', async (t) => {
  await withModel(async (p, images) => {
    const before = tf.memory().numTensors;
    const events: TokenEvent[] = [];
    const out = await generate(p, { images, tokenIds, paddingMask }, { maxNewTokens: 3, onToken: (e) => void events.push(e) });
    t.is(tf.memory().numTensors, before, 'memory-neutral');
    t.is(out.steps, 3);
    t.deepEqual(out.finishReasons, ['length', 'length']);
    t.deepEqual(out.generatedLengths, [3, 3]);
    t.deepEqual(list(out.tokenIds[0]), [...GREEDY0.slice(0, 9), ...Array(15).fill(0)]);
    t.deepEqual(list(out.tokenIds[1]), [...ROW1.slice(0, 14), ...Array(10).fill(0)]);
    t.deepEqual(list(out.paddingMask[0]), [...Array(9).fill(1), ...Array(15).fill(0)]);
    t.deepEqual(list(out.paddingMask[1]), [...Array(14).fill(1), ...Array(10).fill(0)]);
    t.deepEqual(events, [
      { row: 0, token: GREEDY0[6], position: 6, step: 0 },
      { row: 1, token: ROW1[11], position: 11, step: 0 },
      { row: 0, token: GREEDY0[7], position: 7, step: 1 },
      { row: 1, token: ROW1[12], position: 12, step: 1 },
      { row: 0, token: GREEDY0[8], position: 8, step: 2, finish: 'length' },
      { row: 1, token: ROW1[13], position: 13, step: 2, finish: 'length' },
    ]);
  });
}, { webgpu: true });

backendTest('onToken with a stop: row 0 streams through its <eos> and no further; an async callback is awaited', async (t) => {
  await withModel(async (p, images) => {
    const seen: string[] = [];
    let pending = 0;
    const out = await generate(p, { images, tokenIds, paddingMask }, {
      stopTokenIds: [1],
      maxNewTokens: 6,
      onToken: async (e) => {
        t.is(pending, 0, 'the previous callback finished first');
        pending++;
        await new Promise((r) => setTimeout(r, 1));
        seen.push(`${e.step}:${e.row}:${e.token}${e.finish ? `:${e.finish}` : ''}`);
        pending--;
      },
    });
    t.deepEqual(out.finishReasons, ['stop', 'length']);
    t.deepEqual(out.generatedLengths, [5, 6]);
    const row0 = seen.filter((s) => s.split(':')[1] === '0');
    t.deepEqual(row0, ['0:0:2065', '1:0:1927', '2:0:1314', '3:0:2236', '4:0:1:stop']);
    t.is(seen.filter((s) => s.split(':')[1] === '1').length, 6);
    t.is(seen[seen.length - 1], `5:1:${ROW1[16]}:length`);
  });
});

// -------------------------------------------------------------------------------------------------
// generateText: streamed text, prompt newline, maxNewTokens default
// -------------------------------------------------------------------------------------------------

function fixtureLM(t: ExecutionContext): string {
  const dir = tempDir(t, 'pg-api-');
  fs.cpSync(path.join(DIR, 'preset'), dir, { recursive: true });
  fs.mkdirSync(path.join(dir, 'assets', 'tokenizer'), { recursive: true });
  fs.copyFileSync('spec/fixtures/text/tokenizer/vocabulary.spm', path.join(dir, 'assets', 'tokenizer', 'vocabulary.spm'));
  return dir;
}

test.serial('generateText: streamed pieces add up to the stripped text; finish reasons; "\\n" appended only when missing', async (t) => {
  const lm = loadCausalLM(fixtureLM(t));
  const rgba = readImage('spec/fixtures/text/preprocess/images/b_rgba_64x64.png');
  try {
    const before = tf.memory().numTensors;
    const events: TextTokenEvent[] = [];
    const out = await generateText(lm, { images: [rgba], prompts: ['caption en'] }, { maxNewTokens: 10, stripPrompt: true, onToken: (e) => void events.push(e) });
    t.is(tf.memory().numTensors, before);
    t.deepEqual(out.texts, ['<loc0865><loc0727><loc0114><seg012>'], 'as commands.spec: keras_hub row 0 on this image');
    t.deepEqual(out.finishReasons, ['stop']);
    t.is(out.generatedTokens, 5);
    t.deepEqual(
      events.map((e) => [e.piece, e.text, e.finish ?? '']),
      [
        ['<loc0865>', '<loc0865>', ''],
        ['<loc0727>', '<loc0865><loc0727>', ''],
        ['<loc0114>', '<loc0865><loc0727><loc0114>', ''],
        ['<seg012>', '<loc0865><loc0727><loc0114><seg012>', ''],
        ['', '<loc0865><loc0727><loc0114><seg012>', 'stop'],
      ],
    );
    t.is(events.map((e) => e.piece).join(''), out.texts[0]);
    const withNewline = await generateText(lm, { images: [rgba], prompts: ['caption en\n'] }, { maxNewTokens: 10, stripPrompt: true });
    t.deepEqual(withNewline.texts, out.texts, '"caption en" and "caption en\\n" are the same prompt');
    t.deepEqual(withNewline.output.tokenIds, out.output.tokenIds);
    const raw = await generateText(lm, { images: [rgba], prompts: ['caption en'] }, { maxNewTokens: 10, rawPrompts: true });
    t.is(raw.output.promptLengths[0], out.output.promptLengths[0] - 1, 'rawPrompts: one token fewer (no "\\n")');
    t.is(promptText('caption en'), 'caption en\n');
    t.is(promptText('caption en\n'), 'caption en\n');
    const budget = await generateText(lm, { images: [rgba], prompts: ['caption en'] }, { maxNewTokens: 2, stripPrompt: true });
    t.deepEqual(budget.texts, ['<loc0865><loc0727>']);
    t.deepEqual(budget.finishReasons, ['length']);
    t.is(budget.output.tokenIds[0].length, budget.output.promptLengths[0] + 2, 'the buffer is the prompt + maxNewTokens');
  } finally {
    d.disposeTree(lm.params);
  }
});

// -------------------------------------------------------------------------------------------------
// bounds and token ids: literal errors, before allocating
// -------------------------------------------------------------------------------------------------

backendTest('bounds: maxLength beyond the positions, a tensor beyond one buffer, bad maxNewTokens; ids outside the vocabulary', async (t) => {
  await withModel(async (p, images) => {
    const before = tf.memory().numTensors;
    const run = (o: Parameters<typeof generate>[2], ids = tokenIds) => thrown(() => generate(p, { images, tokenIds: ids, paddingMask }, o));
    t.is(
      await run({ maxLength: 1e9 }),
      `generate: maxLength 1000000000 with 16 image tokens needs 1000000016 positions; the model takes at most ${MAX_POSITIONS} (Gemma's max_position_embeddings), so maxLength can be at most 8176`,
    );
    t.is(await run({ maxLength: 100000 }), 'generate: maxLength 100000 with 16 image tokens needs 100016 positions; the model takes at most 8192 (Gemma\'s max_position_embeddings), so maxLength can be at most 8176');
    t.is(await run({ maxLength: 2.5 }), 'generate: maxLength must be a positive integer, got 2.5');
    t.is(await run({ maxNewTokens: 0 }), 'generate: maxNewTokens must be a positive integer, got 0');
    setMaxTensorBytes(4096);
    try {
      // the prefill's attention logits: 2 rows x 4 heads x (16 + 11)^2 x 4 bytes = 23.3 KiB
      t.is(await run({ maxLength: 24 }), 'generate: maxLength 24 for 2 row(s) needs a 22.8 KiB tensor; one buffer holds at most 4.0 KiB on this backend');
    } finally {
      setMaxTensorBytes(undefined);
    }
    const bad = tokenIds.map((r) => [...r]);
    bad[1][3] = 2352;
    t.is(await run({}, bad), 'generate: token id 2352 at row 1, position 3 is outside the vocabulary of 2352 ids [0, 2351]');
    bad[1][3] = -1;
    t.is(await run({}, bad), 'generate: token id -1 at row 1, position 3 is outside the vocabulary of 2352 ids [0, 2351]');
    t.is(tf.memory().numTensors, before, 'nothing allocated or leaked');
  });
});

backendTest('backbone: a token id outside the vocabulary is refused on the host (cpu, wasm)', async (t) => {
  await withModel(async (p, images) => {
    const ids = tokenIds.map((r) => [...r]);
    ids[0][2] = 5000;
    const inputs = {
      images,
      token_ids: d.named(tf.tensor2d(ids, undefined, 'int32'), ['batch', 'seq'] as const),
      padding_mask: d.named(tf.tensor2d(paddingMask, undefined, 'int32'), ['batch', 'seq'] as const),
      response_mask: d.named(tf.zeros([2, T], 'int32'), ['batch', 'seq'] as const),
    };
    try {
      t.is(await thrown(() => backbone(p, inputs)), 'backbone: token id 5000 at row 0, position 2 is outside the vocabulary of 2352 ids [0, 2351]');
    } finally {
      tf.dispose([inputs.token_ids.tensor, inputs.padding_mask.tensor, inputs.response_mask.tensor]);
    }
  });
});

test.serial('bounds on cpu: tensors beyond the machine\'s memory are refused, naming both sizes', async (t) => {
  await setBackend('cpu');
  const c = loadPreset(path.join(DIR, 'preset'));
  try {
    // 2 x 3 layers x 1e7 rows x (16 + 4000) keys x 2 kv heads x 8 x 4 bytes = 15.4 TB of KV cache
    const message = await thrown(() => checkGenerationBounds(c.config, 1e7, 4000, 'generate'));
    t.is(
      message,
      `generate: maxLength 4000 for 10000000 row(s) (KV cache ${formatBytes(2 * 3 * 1e7 * 4016 * 2 * 8 * 4)}, prefill attention ${formatBytes(3 * 1e7 * 4 * 4016 ** 2 * 4)}) ` +
        `needs ${formatBytes(2 * (2 * 3 * 1e7 * 4016 * 2 * 8 * 4) + 3 * 1e7 * 4 * 4016 ** 2 * 4 + 2 * 1e7 * 2352 * 4)} of tensors, more than this machine's ${formatBytes(os.totalmem())} of memory`,
    );
  } finally {
    d.disposeTree(c);
  }
});

test.serial('CLI: --max-length 1e9 and an out-of-range budget are refused with the limit, before generating', async (t) => {
  const errors: string[] = [];
  const io: Io = { out: () => undefined, err: (l) => errors.push(l) };
  t.is(await main(['generate', '--prompt', 'caption en', '--max-length', '1e9', '--backend', 'cpu'], io), 1);
  t.is(
    errors[errors.length - 1],
    'paligemma generate: generateText: maxLength 1000000000 with 16 image tokens needs 1000000016 positions; the model takes at most 8192 (Gemma\'s max_position_embeddings), so maxLength can be at most 8176',
  );
  // a budget below 1 is the parser's usage error (exit 2); generateText's own check is tested above
  t.is(await main(['generate', '--prompt', 'caption en', '--max-new-tokens', '0', '--backend', 'cpu'], io), 2);
  t.is(errors[errors.length - 2], "paligemma generate: --max-new-tokens must be an integer >= 1; got '0'");
});

// -------------------------------------------------------------------------------------------------
// the host-built mask
// -------------------------------------------------------------------------------------------------

test('the host prefix-LM mask equals the tensor-op one (webgpu path) and its literal form', async (t) => {
  const pad = [[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]];
  const resp = [[0, 0, 1, 1, 0], [0, 1, 0, 0, 0]];
  for (const window of [undefined, 1, 2, 3]) {
    const host = prefixLmMaskValues(pad, resp, 2, window);
    const ops = prefixLmMaskOps(d.named(tf.tensor2d(pad, undefined, 'int32'), ['batch', 'seq'] as const), d.named(tf.tensor2d(resp, undefined, 'int32'), ['batch', 'seq'] as const), 2, window);
    t.deepEqual(list(host), list(await tf.cast(ops.tensor, 'int32').data()), `window ${window}`);
    ops.dispose();
  }
  const m = prefixLmMask([[1, 1, 1, 1, 0]], [[0, 0, 1, 1, 0]], 1);
  t.deepEqual(await tf.cast(m.tensor, 'int32').array(), [[
    [1, 1, 1, 0, 0, 0],
    [1, 1, 1, 0, 0, 0],
    [1, 1, 1, 0, 0, 0],
    [1, 1, 1, 1, 0, 0],
    [1, 1, 1, 1, 1, 0],
    [1, 1, 1, 1, 1, 0],
  ]]);
  m.dispose();
});

// -------------------------------------------------------------------------------------------------
// async loading
// -------------------------------------------------------------------------------------------------

test.serial('fromPresetAsync = fromPreset, weight by weight with progress, the event loop running meanwhile', async (t) => {
  const dir = path.join(DIR, 'preset');
  const sync = fromPreset(dir);
  const before = tf.memory().numTensors;
  let ticks = 0;
  const timer = setInterval(() => ticks++, 0);
  const progress: [number, number, string][] = [];
  const params = await fromPresetAsync(dir, { onProgress: (done, total, what) => void progress.push([done, total, what]) });
  clearInterval(timer);
  try {
    const a = d.collectTensors(sync);
    const b = d.collectTensors(params);
    t.is(b.length, a.length);
    for (let i = 0; i < a.length; i++) t.deepEqual(list(await b[i].data()), list(await a[i].data()));
    t.deepEqual(params.config, sync.config);
    const total = progress[0][1];
    t.is(progress[progress.length - 1][0], total, 'ends at the total');
    t.true(progress.every(([done], i) => i === 0 || done > progress[i - 1][0]), 'increasing');
    t.true(ticks > 0, `a timer ran ${ticks} times while loading`);
  } finally {
    d.disposeTree(params);
    d.disposeTree(sync);
  }
  t.is(tf.memory().numTensors, before - d.collectTensors(sync).length, 'memory-neutral (the sync params freed too)');
  // errors as fromPreset's, and a file cut after its index leaves no tensor behind
  const missing = path.join(DIR, 'nope');
  t.is(await thrown(() => fromPresetAsync(missing)), await thrown(() => fromPreset(missing)));
  const cut = tempDir(t, 'pg-cut-');
  fs.cpSync(dir, cut, { recursive: true });
  const h5 = path.join(cut, 'model.weights.h5');
  fs.truncateSync(h5, Math.floor(fs.statSync(h5).size * 0.8));
  const count = tf.memory().numTensors;
  const message = await thrown(() => fromPresetAsync(cut));
  t.not(message, 'no error');
  t.is(tf.memory().numTensors, count, `no tensor left behind (${message.split('\n')[0]})`);
  const lmDir = fixtureLM(t);
  const lm = await loadCausalLMAsync(lmDir);
  const lmSync = loadCausalLM(lmDir);
  t.deepEqual(lm.tokenizer.encode('caption en\n'), lmSync.tokenizer.encode('caption en\n'));
  t.deepEqual(list(await lm.params.token_embedding[0].tensor.data()), list(await lmSync.params.token_embedding[0].tensor.data()));
  d.disposeTree(lm.params);
  d.disposeTree(lmSync.params);
});

// -------------------------------------------------------------------------------------------------
// the cache write
// -------------------------------------------------------------------------------------------------

backendTest('the fixed-size cache write: exact values at the written position, the rest untouched; analytic gradients', async (t) => {
  const axes = ['batch', 'key_seq', 'kv_heads', 'head_dim'] as const;
  // batch 2, key_seq 3, kv_heads 1, head_dim 2; row 0 writes position 2, row 1 position 0
  const cache = [[[[1.5, -2]], [[3, 4]], [[0, 0]]], [[[0, 0]], [[7, 8]], [[9, -10]]]];
  const fresh = [[[[0.1, 0.2]]], [[[-0.3, 1e-7]]]];
  const write = [[0, 0, 1], [1, 0, 0]];
  const before = tf.memory().numTensors;
  const c = d.named(tf.tensor4d(cache), axes);
  const f = d.named(tf.tensor4d(fresh), axes);
  const w = d.named(tf.tensor2d(write, undefined, 'bool'), ['batch', 'key_seq'] as const);
  const out = withCache(c, f, w);
  t.deepEqual(await out.tensor.array(), [[[[1.5, -2]], [[3, 4]], [[Math.fround(0.1), Math.fround(0.2)]]], [[[Math.fround(-0.3), Math.fround(1e-7)]], [[7, 8]], [[9, -10]]]]);
  // d/dcache = g * (1 - onehot), d/dfresh = sum over key_seq of g * onehot, for g = weights
  const g = tf.tensor4d([[[[1, 2]], [[3, 4]], [[5, 6]]], [[[7, 8]], [[9, 10]], [[11, 12]]]]);
  const [dc, df] = tf.grads((a: tf.Tensor, b: tf.Tensor) => tf.sum(tf.mul(withCache(d.named(a, axes), d.named(b, axes), w).tensor, g)))([c.tensor, f.tensor]);
  t.deepEqual(await dc.array(), [[[[1, 2]], [[3, 4]], [[0, 0]]], [[[0, 0]], [[9, 10]], [[11, 12]]]]);
  t.deepEqual(await df.array(), [[[[5, 6]]], [[[7, 8]]]]);
  tf.dispose([c.tensor, f.tensor, w.tensor, out.tensor, g, dc, df]);
  t.is(tf.memory().numTensors, before);
}, { webgpu: true });
