/**
 * The browser entry's loaders, run in Node on the shipped preset's bytes: causalLMFromBytes and
 * fetchCausalLM (with an injected fetch) give the params and tokenizer that loadCausalLM gives from the
 * directory, and bad input is refused with errors that name the file, leaving no tensor behind.
 */
import test from 'ava';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { tf } from '../dsl/tf';
import * as d from '../dsl';
import { causalLMFromBytes, fetchCausalLM } from '../src/browser';
import { generateText, loadCausalLM, type CausalLM } from '../src/generate/causal_lm';
import { setBackend } from '../src/runtime/backend';

const preset = join(__dirname, '..', '..', 'checkpoints', 'tiny');
const bytes = (f: string): Uint8Array => new Uint8Array(readFileSync(join(preset, f)));
const files = () => ({
  config: bytes('config.json'),
  weights: bytes('model.weights.h5'),
  tokenizer: bytes('assets/tokenizer/vocabulary.spm'),
});

async function sameModel(t: import('ava').ExecutionContext, a: CausalLM, b: CausalLM): Promise<void> {
  t.deepEqual(a.params.config, b.params.config);
  const la = d.leaves(a.params);
  const lb = d.leaves(b.params);
  t.is(la.length, lb.length);
  for (let i = 0; i < la.length; i++) {
    t.is(la[i][0], lb[i][0]);
    t.deepEqual(await la[i][1].tensor.data(), await lb[i][1].tensor.data(), la[i][0]);
  }
  t.deepEqual(a.tokenizer.encode('caption en\n'), b.tokenizer.encode('caption en\n'));
}

test.serial('causalLMFromBytes and fetchCausalLM load what loadCausalLM loads, and generate the same text', async (t) => {
  await setBackend('cpu');
  const before = tf.memory().numTensors;
  const fromDir = loadCausalLM(preset);
  const fromBytes = causalLMFromBytes(files(), 'tiny');
  const fetched: string[] = [];
  const fakeFetch = (async (url: URL) => {
    fetched.push(String(url));
    const rel = String(url).replace('https://example.test/models/tiny/', '');
    return new Response(readFileSync(join(preset, rel)));
  }) as unknown as typeof fetch;
  const fromFetch = await fetchCausalLM('https://example.test/models/tiny', { fetch: fakeFetch });
  t.deepEqual(fetched.sort(), ['assets/tokenizer/vocabulary.spm', 'config.json', 'model.weights.h5'].map((f) => `https://example.test/models/tiny/${f}`));
  await sameModel(t, fromDir, fromBytes);
  await sameModel(t, fromDir, fromFetch);
  const options = { maxLength: 20, stripPrompt: true };
  const image = join(preset, 'cat.png');
  const a = await generateText(fromDir, { images: [image], prompts: ['caption en\n'] }, options);
  const b = await generateText(fromBytes, { images: [image], prompts: ['caption en\n'] }, options);
  t.is(b.texts[0], a.texts[0]);
  for (const lm of [fromDir, fromBytes, fromFetch]) d.disposeTree(lm.params);
  t.is(tf.memory().numTensors, before);
});

test.serial('causalLMFromBytes: bad bytes are refused, naming the file, with no tensor left', async (t) => {
  await setBackend('cpu');
  const before = tf.memory().numTensors;
  t.throws(() => causalLMFromBytes({ ...files(), config: '{"oops' }, 'p'), { message: /^p\/config\.json: not valid JSON: / });
  const weights = bytes('model.weights.h5');
  t.throws(() => causalLMFromBytes({ ...files(), weights: weights.subarray(0, 1000) }, 'p'), {
    message: /^p\/model\.weights\.h5: truncated HDF5 file \(1000 bytes, the superblock says 605472\): /,
  });
  t.throws(() => causalLMFromBytes({ ...files(), tokenizer: new Uint8Array([1, 2, 3]) }, 'p'), {
    message: /^tokenizer: p\/assets\/tokenizer\/vocabulary\.spm is not a SentencePiece ModelProto/,
  });
  const config = JSON.parse(readFileSync(join(preset, 'config.json'), 'utf8'));
  config.config.hidden_dim *= 2; // the weights no longer fit the config
  t.throws(() => causalLMFromBytes({ ...files(), config }, 'p'), { message: /p\/model\.weights\.h5/ });
  const missing = (async () => new Response('no', { status: 404, statusText: 'Not Found' })) as unknown as typeof fetch;
  await t.throwsAsync(fetchCausalLM('https://example.test/x/', { fetch: missing }), {
    message: /^fetchCausalLM: https:\/\/example\.test\/x\/(config\.json|model\.weights\.h5|assets\/tokenizer\/vocabulary\.spm): HTTP 404 Not Found$/,
  });
  t.is(tf.memory().numTensors, before);
});
