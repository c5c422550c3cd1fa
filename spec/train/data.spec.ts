import test from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { PNG } from 'pngjs';
import { tf } from '../../dsl/tf';
import * as d from '../../dsl';
import { readBin, readManifest } from '../../src/cli/fixture';
import { loadTokenizer } from '../../src/text/tokenizer';
import type { RawImage } from '../../src/preprocess/image';
import { batchAt, batchRows, batchesPerEpoch, datasetFromArray, epochOrder, makeBatch, readJsonl, toTensors, type Dataset } from '../../src/train/data';
import { tempDir } from '../helpers/files';

const fx = 'spec/fixtures/train/preprocess_train';
const tokenizer = loadTokenizer(path.join(fx, 'preset'));

interface Pair {
  prompt: string;
  response: string;
}

/** The fixture's six (image, prompt, response) examples, as keras_hub got them. */
function fixtureData(): Dataset {
  const m = readManifest(fx) as unknown as { pairs: Pair[]; inputs: { images_uint8: { file: string; dtype: 'uint8'; shape: number[] } } };
  const e = m.inputs.images_uint8;
  const pixels = readBin(fx, e) as Uint8Array;
  const [, H, W, C] = e.shape;
  // a Dataset built directly: the fixture has an empty response (row 3), which the file readers refuse
  return {
    name: 'fixture',
    examples: m.pairs.map((p, i) => ({
      image: { data: pixels.slice(i * H * W * C, (i + 1) * H * W * C), height: H, width: W, channels: C as 3 } satisfies RawImage,
      prefix: p.prompt,
      suffix: p.response,
      source: `fixture[${i}]`,
    })),
  };
}

for (const L of [16, 32]) {
  test(`keras_hub's training preprocessor, strings and uint8 images in (preprocess_train L${L})`, (t) => {
    const data = fixtureData();
    const run = (readManifest(fx) as unknown as { runs: Record<string, Record<string, { file: string; dtype: 'int32' | 'uint8' | 'float32'; shape: number[] }>> }).runs[`L${L}`];
    const b = makeBatch(data, [0, 1, 2, 3, 4, 5], { tokenizer, imageSize: 16, batchSize: 6, sequenceLength: L, truncate: true, verbatimPrompts: true });
    const ints = (k: string) => Array.from(readBin(fx, run[k]) as Int32Array | Uint8Array);
    t.deepEqual(b.shape, [6, L]);
    t.deepEqual(Array.from(b.tokenIds), ints('x_token_ids'));
    t.deepEqual(Array.from(b.paddingMask), ints('x_padding_mask'));
    t.deepEqual(Array.from(b.responseMask), ints('x_response_mask'));
    t.deepEqual(Array.from(b.y), ints('y'));
    t.deepEqual(Array.from(b.sampleWeight), ints('sample_weight'));
    t.deepEqual(Array.from(b.images), Array.from(readBin(fx, run.x_images) as Float32Array), 'images bit for bit');
    // rows 0, 1, 2, 5 are cut at L16 (row 2 loses its prompt's "\n"); at L32 only row 5
    t.is(b.truncated, L === 16 ? 4 : 1);
  });
}

test('a row that does not fit is an error naming the record, unless truncation is asked for', (t) => {
  const data = fixtureData();
  const e = t.throws(() => makeBatch(data, [5, 0], { tokenizer, imageSize: 16, batchSize: 2, sequenceLength: 32, verbatimPrompts: true }));
  t.is(
    e?.message,
    'fixture[5]: prompt and response are 62 tokens with <bos> (6 + 55, plus the <eos> target); the sequence length 32 would truncate them (raise the sequence length, or allow truncation)',
  );
  const ok = makeBatch(data, [5, 0], { tokenizer, imageSize: 16, batchSize: 2, sequenceLength: 32, truncate: true, verbatimPrompts: true });
  t.is(ok.truncated, 1);
});

test("'longest' packs to the longest row of the batch (1 + prompt + response), capped by maxSequenceLength", (t) => {
  const data = fixtureData();
  const opts = { tokenizer, imageSize: 16, batchSize: 2, sequenceLength: 'longest', verbatimPrompts: true } as const;
  const b = makeBatch(data, [3, 1], opts);
  t.deepEqual(b.shape, [2, 20]); // row 1: 1 + 13 + 6
  t.deepEqual(Array.from(b.y.slice(20, 40)).slice(12, 20), [12, 791, 813, 794, 287, 536, 796, 1]);
  t.deepEqual(Array.from(b.sampleWeight.slice(0, 20)), [0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], 'row 3: only the eos is a target');
  t.is(b.truncated, 0);
  t.is(b.targetTokens, 1 + 7, 'row 3: only the eos; row 1: 6 response tokens and the eos');
  const capped = makeBatch(data, [3, 1], { ...opts, maxSequenceLength: 12, truncate: true });
  t.deepEqual(capped.shape, [2, 12]);
  t.is(capped.truncated, 1);
});

test('the newline PaliGemma prompts end with is added to a prefix that lacks it', (t) => {
  const data: Dataset = { name: 'x', examples: [{ image: { data: new Uint8Array(12), height: 2, width: 2, channels: 3 }, prefix: 'caption en', suffix: 'two dogs', source: 'x[0]' }] };
  const a = makeBatch(data, [0], { tokenizer, imageSize: 16, batchSize: 1, sequenceLength: 'longest' });
  t.deepEqual(Array.from(a.tokenIds), [2, 799, 792, 498, 569, 12, 791, 813, 794, 287, 536, 796].slice(0, a.shape[1]));
});

// ---------------------------------------------------------------------------------------------------------
// Order
// ---------------------------------------------------------------------------------------------------------

test('shuffling: a permutation per epoch, a function of (key, epoch) only', (t) => {
  const k = d.key(7);
  const a = Array.from(epochOrder(10, k, 0));
  t.deepEqual(Array.from(epochOrder(10, k, 0)), a, 'same key, same epoch: same order');
  t.deepEqual([...a].sort((x, y) => x - y), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
  t.notDeepEqual(Array.from(epochOrder(10, k, 1)), a, 'next epoch: another order');
  t.notDeepEqual(Array.from(epochOrder(10, d.key(8), 0)), a, 'another seed: another order');
  t.deepEqual(Array.from(epochOrder(4, undefined, 3)), [0, 1, 2, 3], 'no key: file order');
  // pinned, so a change of the shuffle (which would silently change every resumed run) is noticed
  t.deepEqual(a, PINNED_ORDER);
});
const PINNED_ORDER = [2, 5, 4, 9, 8, 6, 3, 0, 7, 1];

test('positions walk the epochs; the last batch is smaller unless dropRemainder', (t) => {
  const data = fixtureData(); // 6 examples
  const o = { batchSize: 4, shuffle: d.key(1) };
  t.is(batchesPerEpoch(data, o), 2);
  let p = { epoch: 0, offset: 0 };
  const seen: number[][] = [];
  for (let i = 0; i < 4; i++) {
    const { rows, next } = batchRows(data, o, p);
    seen.push(rows);
    p = next;
  }
  t.deepEqual(seen.map((r) => r.length), [4, 2, 4, 2]);
  t.deepEqual([...seen[0], ...seen[1]].sort(), [0, 1, 2, 3, 4, 5]);
  t.deepEqual(p, { epoch: 2, offset: 0 });
  t.deepEqual(seen[2].concat(seen[3]), Array.from(epochOrder(6, d.key(1), 1)));
  const dr = { ...o, dropRemainder: true };
  t.is(batchesPerEpoch(data, dr), 1);
  const first = batchRows(data, dr, { epoch: 0, offset: 0 });
  t.deepEqual(first.next, { epoch: 1, offset: 0 });
});

test('toTensors: the model inputs with their axes, float weights; memory-neutral once disposed', (t) => {
  const data = fixtureData();
  const before = tf.memory().numTensors;
  const { batch } = batchAt(data, { tokenizer, imageSize: 16, batchSize: 2, sequenceLength: 16, truncate: true, verbatimPrompts: true }, { epoch: 0, offset: 0 });
  const x = toTensors(batch);
  t.deepEqual(x.images.shape, [2, 16, 16, 3]);
  t.deepEqual(x.token_ids.axes, ['batch', 'seq']);
  t.is(x.sample_weight.tensor.dtype, 'float32');
  t.is(x.y.tensor.dtype, 'int32');
  tf.dispose(d.collectTensors(x));
  t.is(tf.memory().numTensors, before);
});

// ---------------------------------------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------------------------------------

function png(file: string): void {
  const p = new PNG({ width: 4, height: 3 });
  p.data.fill(200);
  fs.writeFileSync(file, PNG.sync.write(p));
}

test('JSONL: image paths relative to the file; blank lines skipped', (t) => {
  const dir = tempDir(t);
  fs.mkdirSync(path.join(dir, 'img'));
  png(path.join(dir, 'img', 'a.png'));
  const file = path.join(dir, 'train.jsonl');
  fs.writeFileSync(file, '{"image": "img/a.png", "prefix": "caption en", "suffix": "two dogs"}\n\n{"image": "img/a.png", "prefix": "ocr", "suffix": "cat", "extra": 1}\n');
  const data = readJsonl(file);
  t.is(data.examples.length, 2);
  t.is(data.examples[0].image, path.join(dir, 'img', 'a.png'));
  t.is(data.examples[1].source, `${file}:3`);
  const b = makeBatch(data, [0, 1], { tokenizer, imageSize: 16, batchSize: 2, sequenceLength: 'longest' });
  t.deepEqual(b.shape, [2, 12]);
});

test('JSONL: a bad record is an error naming the file and line', (t) => {
  const dir = tempDir(t);
  png(path.join(dir, 'a.png'));
  fs.writeFileSync(path.join(dir, 'bad.png'), 'not an image');
  const good = '{"image": "a.png", "prefix": "caption en", "suffix": "two dogs"}';
  const cases: [string, string][] = [
    ['{"image": "a.png", "prefix": "caption en", "suffix": "two dogs"', "bad JSON (Expected ',' or '}' after property value in JSON at position 63"],
    ['{"image": "b.png", "prefix": "caption en", "suffix": "x"}', `image 'b.png' does not exist (looked for ${path.join(dir, 'b.png')})`],
    ['{"image": "a.png", "prefix": "caption en", "suffix": ""}', '"suffix" is empty'],
    ['{"image": "a.png", "prefix": 3, "suffix": "x"}', '"prefix" must be a string, got 3 (number)'],
    ['{"prefix": "caption en", "suffix": "x"}', '"image" must be a file path, got missing'],
    ['["a.png"]', 'expected a JSON object, got ["a.png"] (array)'],
  ];
  for (const [line, message] of cases) {
    const file = path.join(dir, 'd.jsonl');
    fs.writeFileSync(file, `${good}\n${line}\n`);
    const e = t.throws(() => readJsonl(file));
    t.true(e!.message.startsWith(`${file}:2: ${message}`), e!.message);
  }
  const file = path.join(dir, 'u.jsonl');
  fs.writeFileSync(file, `${good}\n\n{"image": "bad.png", "prefix": "ocr", "suffix": "x"}\n`);
  const data = readJsonl(file);
  const e = t.throws(() => makeBatch(data, [0, 1], { tokenizer, imageSize: 16, batchSize: 2, sequenceLength: 'longest' }));
  t.is(e?.message, `${file}:3: image '${path.join(dir, 'bad.png')}' cannot be used: decodeImage: '${path.join(dir, 'bad.png')}' is not a PNG or JPEG (first bytes: 6e 6f 74 20 61 6e 20 69)`);
  fs.writeFileSync(file, '\n');
  t.is(t.throws(() => readJsonl(file))?.message, `${file}: no examples`);
});

test('in-memory arrays are checked like files', (t) => {
  t.is(t.throws(() => datasetFromArray([{ image: 'nope.png', prefix: 'a', suffix: 'b' }]))?.message, "examples[0]: image 'nope.png' does not exist");
  t.is(t.throws(() => datasetFromArray([{ image: new Uint8Array(3), prefix: 'a', suffix: '' }], 'mine'))?.message, 'mine[0]: "suffix" is empty');
  t.is(t.throws(() => datasetFromArray([]))?.message, 'examples: no examples');
});
