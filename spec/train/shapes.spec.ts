/**
 * The shapes data set (src/train/shapes.ts), its vocabulary (src/train/shapes_vocab.ts) and `make-shapes`:
 * literal records for a seed, boxes that match the drawn pixels, determinism per (seed, index), PNG + JSONL
 * files that read back as the pictures and tasks.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import test from 'ava';
import { PNG } from 'pngjs';
import { main, type Io } from '../../src/cli/cli';
import { parseDetections } from '../../src/preprocess/outputs';
import { loadSentencePiece, readModelProto } from '../../src/text/tokenizer';
import { encodeModelProto } from '../../src/text/spm_write';
import { RGB, caption, detect, edgeToBin, makeScene, renderScene, sceneTasks, SHAPE_KINDS, shapesRng, type Scene } from '../../src/train/shapes';
import { shapesVocabulary, shapesVocabularyBytes } from '../../src/train/shapes_vocab';
import { shapesDataset, trainingTask } from '../../src/train/shapes_model';
import { detectionMatches, iou } from '../../src/train/shapes_eval';
import { tempDir } from '../helpers/files';

function capture(): Io & { lines: string[]; errors: string[] } {
  const lines: string[] = [];
  const errors: string[] = [];
  return { lines, errors, out: (l) => lines.push(l), err: (l) => errors.push(l) };
}

test('makeScene: literal scenes and tasks of seed 0', (t) => {
  t.deepEqual(makeScene(0, 0), {
    size: 32,
    shapes: [
      { kind: 'square', colour: 'green', top: 13, left: 10, size: 7 },
      { kind: 'square', colour: 'red', top: 17, left: 21, size: 11 },
    ],
  });
  t.deepEqual(sceneTasks(makeScene(0, 0)), [
    { prefix: 'caption en', suffix: 'a green square and a red square' },
    { prefix: 'answer en how many shapes?', suffix: '2' },
    // the second square's right edge is the picture's (32 px -> bin 1024), clipped to the last bin
    { prefix: 'detect square', suffix: '<loc0416><loc0320><loc0640><loc0544> square ; <loc0544><loc0672><loc0896><loc1023> square' },
  ]);
  t.deepEqual(sceneTasks(makeScene(0, 1)), [
    { prefix: 'caption en', suffix: 'a green triangle' },
    { prefix: 'answer en how many shapes?', suffix: '1' },
    { prefix: 'detect triangle', suffix: '<loc0064><loc0448><loc0320><loc0704> triangle' },
  ]);
  t.deepEqual(sceneTasks(makeScene(0, 2)), [
    { prefix: 'caption en', suffix: 'a green circle and a yellow square' },
    { prefix: 'answer en how many shapes?', suffix: '2' },
    { prefix: 'detect circle', suffix: '<loc0544><loc0224><loc0896><loc0576> circle' },
    { prefix: 'detect square', suffix: '<loc0064><loc0352><loc0448><loc0736> square' },
  ]);
});

test('caption: one, two and three shapes, left to right', (t) => {
  const s = (kind: 'circle' | 'square' | 'triangle', colour: 'red' | 'blue' | 'yellow', left: number) => ({ kind, colour, top: 0, left, size: 7 });
  const scene = (shapes: ReturnType<typeof s>[]): Scene => ({ size: 32, shapes });
  t.is(caption(scene([s('circle', 'red', 0)])), 'a red circle');
  t.is(caption(scene([s('circle', 'red', 0), s('square', 'blue', 9)])), 'a red circle and a blue square');
  t.is(caption(scene([s('circle', 'red', 0), s('square', 'blue', 9), s('triangle', 'yellow', 18)])), 'a red circle, a blue square and a yellow triangle');
  t.is(detect(scene([s('circle', 'red', 0)]), 'square'), '');
});

test('makeScene: the same (seed, index) always gives the same scene; seeds and indices differ', (t) => {
  t.deepEqual(makeScene(3, 17), makeScene(3, 17));
  t.notDeepEqual(makeScene(3, 17), makeScene(4, 17));
  t.notDeepEqual(makeScene(3, 17), makeScene(3, 18));
  const rand = shapesRng(5, 9);
  const again = shapesRng(5, 9);
  t.deepEqual([rand(1000), rand(1000), rand(1000)], [again(1000), again(1000), again(1000)]);
  t.throws(() => makeScene(-1, 0), { message: 'shapes: seed must be an integer in [0, 2^32), got -1' });
  t.throws(() => makeScene(0, 0.5), { message: 'shapes: index must be an integer in [0, 2^32), got 0.5' });
});

test('every box is the drawn pixels\' bounding box, and the detection answer parses back to it', (t) => {
  const counts = [0, 0, 0, 0];
  for (let i = 0; i < 300; i++) {
    const scene = makeScene(11, i);
    counts[scene.shapes.length]++;
    const image = renderScene(scene);
    const colourAt = (y: number, x: number) => Array.from(image.data.subarray((y * 32 + x) * 3, (y * 32 + x) * 3 + 3));
    for (const s of scene.shapes) {
      // the box holds this shape's pixels only, and a one-pixel ring around it is background
      let [y0, x0, y1, x1] = [Infinity, Infinity, -Infinity, -Infinity];
      for (let y = s.top - 1; y <= s.top + s.size; y++) {
        for (let x = s.left - 1; x <= s.left + s.size; x++) {
          if (y < 0 || x < 0 || y >= 32 || x >= 32) continue;
          const c = colourAt(y, x);
          if (c.join() === RGB.background.join()) continue;
          t.deepEqual(c, [...RGB[s.colour]]);
          [y0, x0, y1, x1] = [Math.min(y0, y), Math.min(x0, x), Math.max(y1, y + 1), Math.max(x1, x + 1)];
        }
      }
      t.deepEqual([y0, x0, y1, x1], [s.top, s.left, s.top + s.size, s.left + s.size], `scene ${i}`);
    }
    for (const kind of SHAPE_KINDS) {
      const mine = scene.shapes.filter((s) => s.kind === kind);
      const parsed = parseDetections(detect(scene, kind), { height: 32, width: 32 });
      t.is(parsed.length, mine.length);
      parsed.forEach((p, j) => {
        const s = mine[j];
        t.is(p.label, kind);
        t.deepEqual(p.locs, [s.top, s.left, s.top + s.size, s.left + s.size].map((e) => edgeToBin(e, 32)));
        // bins are edge * 32; the far edge at 32 px is bin 1023, 1/32 px short
        t.true(Math.abs(p.box.yMin - s.top) < 1e-9 && Math.abs(p.box.xMin - s.left) < 1e-9);
        t.true(s.top + s.size - p.box.yMax >= 0 && s.top + s.size - p.box.yMax <= 1 / 32);
        t.true(s.left + s.size - p.box.xMax >= 0 && s.left + s.size - p.box.xMax <= 1 / 32);
      });
    }
  }
  t.true(counts[1] > 50 && counts[2] > 50 && counts[3] > 50, `shape counts ${counts}`);
});

test('the vocabulary: Gemma\'s special ids, loc tokens at the end, whole-word tokens, exact round trips', (t) => {
  const tok = loadSentencePiece(shapesVocabularyBytes(), 'shapes.spm');
  t.deepEqual([tok.padId, tok.eosId, tok.bosId, tok.unkId], [0, 1, 2, 3]);
  t.is(tok.vocabularySize, 1466);
  t.is(tok.locOffset, 442);
  t.is(tok.model.trainerSpec.vocabSize, 442);
  t.is(tok.idToPiece(442 + 1023), '<loc1023>');
  t.is(tok.segOffset, undefined);
  t.deepEqual(readModelProto(encodeModelProto(shapesVocabulary())), shapesVocabulary());
  t.deepEqual(tok.encodePieces('answer en how many shapes?\n'), ['answer', '\u2581en', '\u2581how', '\u2581many', '\u2581shapes', '?', '\n']);
  t.deepEqual(tok.encodePieces('a red circle, a blue square and a yellow triangle'), ['a', '\u2581red', '\u2581circle', ',', '\u2581a', '\u2581blue', '\u2581square', '\u2581and', '\u2581a', '\u2581yellow', '\u2581triangle']);
  t.deepEqual(tok.encode('<loc0416><loc0320> square ; <loc0001>'), [442 + 416, 442 + 320, tok.pieceToId('\u2581square')!, tok.pieceToId('\u2581;')!, tok.pieceToId('\u2581')!, 443]);
  for (let i = 0; i < 100; i++) {
    for (const r of sceneTasks(makeScene(12, i))) {
      t.is(tok.decode(tok.encode(r.suffix)), r.suffix);
      t.is(tok.decode(tok.encode(r.prefix)), r.prefix);
    }
  }
  // any other text still encodes (byte fallback) and decodes back
  t.is(tok.decode(tok.encode('What colour? Ünïcödé 🙂')), 'What colour? Ünïcödé 🙂');
});

test('shapesDataset: example i is picture i of the seed with its training task, drawn when read; the task odds are 2 : 1 : 3', (t) => {
  const ds = shapesDataset(4, 3000);
  t.is(ds.examples.length, 3000);
  t.is(ds.name, 'shapes (seed 4, 3000 pictures)');
  for (const i of [0, 17, 2999]) {
    const e = ds.examples[i];
    const scene = makeScene(4, i);
    t.deepEqual({ prefix: e.prefix, suffix: e.suffix }, trainingTask(scene, 4, i));
    t.deepEqual(e.image, renderScene(scene));
    t.is(e.source, `shapes seed 4 picture ${i}`);
  }
  t.is(ds.examples[3000] as unknown, undefined);
  const families = { caption: 0, count: 0, detect: 0 };
  for (const e of ds.examples) families[e.prefix === 'caption en' ? 'caption' : e.prefix.startsWith('detect ') ? 'detect' : 'count']++;
  // 3000 draws of 2/6, 1/6, 3/6: within 4 standard deviations of 1000, 500, 1500
  t.true(Math.abs(families.caption - 1000) < 104 && Math.abs(families.count - 500) < 82 && Math.abs(families.detect - 1500) < 110, JSON.stringify(families));
  t.throws(() => shapesDataset(4, 0), { message: 'shapesDataset: count must be an integer in [1, 2^32), got 0' });
});

test('make-shapes writes PNGs and a JSONL that read back as the scenes and their tasks', async (t) => {
  const out = tempDir(t, 'pg-shapes-');
  const io = capture();
  t.is(await main(['make-shapes', '--out', out, '--count', '3', '--seed', '0'], io), 0);
  t.deepEqual(io.lines, [`wrote 3 pictures and 10 records to ${path.join(out, 'shapes.jsonl')}`]);
  const lines = fs.readFileSync(path.join(out, 'shapes.jsonl'), 'utf8').trimEnd().split('\n').map((l) => JSON.parse(l));
  t.deepEqual(lines.slice(0, 4), [
    { image: 'images/000000.png', prefix: 'caption en', suffix: 'a green square and a red square' },
    { image: 'images/000000.png', prefix: 'answer en how many shapes?', suffix: '2' },
    { image: 'images/000000.png', prefix: 'detect square', suffix: '<loc0416><loc0320><loc0640><loc0544> square ; <loc0544><loc0672><loc0896><loc1023> square' },
    { image: 'images/000001.png', prefix: 'caption en', suffix: 'a green triangle' },
  ]);
  t.is(lines.length, 10);
  for (let i = 0; i < 3; i++) {
    const png = PNG.sync.read(fs.readFileSync(path.join(out, 'images', `00000${i}.png`)));
    const rgb = renderScene(makeScene(0, i)).data;
    t.deepEqual([png.width, png.height], [32, 32]);
    t.true(rgb.every((v, j) => png.data[Math.floor(j / 3) * 4 + (j % 3)] === v));
  }
  // usage errors (exit 2) from the strict parser (src/cli/parse.ts)
  const hint = "run 'paligemma make-shapes --help' for its flags";
  const bad = capture();
  t.is(await main(['make-shapes', '--out', out, '--count', '0'], bad), 2);
  t.deepEqual(bad.errors, ["paligemma make-shapes: --count must be an integer from 1 to 1000000; got '0'", hint]);
  const unknown = capture();
  t.is(await main(['make-shapes', '--out', out, '--colour', 'red'], unknown), 2);
  t.deepEqual(unknown.errors, ['paligemma make-shapes: unknown flag --colour', hint]);
  const missing = capture();
  t.is(await main(['make-shapes'], missing), 2);
  t.deepEqual(missing.errors, ['paligemma make-shapes: missing --out <dir>', hint]);
});

test('make-shapes --tasks colour-count: one "how many <colour> shapes?" per picture, answered by counting the scene', async (t) => {
  const out = tempDir(t, 'pg-shapes-');
  const io = capture();
  t.is(await main(['make-shapes', '--out', out, '--count', '40', '--seed', '3', '--tasks', 'colour-count'], io), 0);
  t.deepEqual(io.lines, [`wrote 40 pictures and 40 records to ${path.join(out, 'shapes.jsonl')}`]);
  const lines = fs.readFileSync(path.join(out, 'shapes.jsonl'), 'utf8').trimEnd().split('\n').map((l) => JSON.parse(l));
  const seen = new Set<string>();
  lines.forEach((r, i) => {
    const m = /^answer en how many (red|green|blue|yellow) shapes\?$/.exec(r.prefix);
    t.truthy(m, r.prefix);
    seen.add(`${m![1]}:${r.suffix}`);
    t.is(r.image, `images/${String(i).padStart(6, '0')}.png`);
    t.is(r.suffix, String(makeScene(3, i).shapes.filter((s) => s.colour === m![1]).length));
  });
  t.true([...seen].some((k) => k.endsWith(':0')) && [...seen].some((k) => !k.endsWith(':0')), 'zero and non-zero answers both occur');
  t.is(new Set([...seen].map((k) => k.split(':')[0])).size, 4, 'every colour is asked about');
  const bad = capture();
  t.is(await main(['make-shapes', '--out', out, '--tasks', 'colours'], bad), 2);
  t.is(bad.errors[0], "paligemma make-shapes: --tasks must be one of all, colour-count; got 'colours'");
});

test('iou and detectionMatches: analytic boxes, labels, counts and order', (t) => {
  t.is(iou({ yMin: 0, xMin: 0, yMax: 2, xMax: 2 }, { yMin: 1, xMin: 1, yMax: 3, xMax: 3 }), 1 / 7);
  t.is(iou({ yMin: 0, xMin: 0, yMax: 1, xMax: 1 }, { yMin: 2, xMin: 2, yMax: 3, xMax: 3 }), 0);
  const want = '<loc0000><loc0000><loc0512><loc0512> circle ; <loc0512><loc0512><loc1023><loc1023> circle';
  // first box shifted by 1/16 of its side (IoU 0.78), second exact
  t.true(detectionMatches('<loc0032><loc0032><loc0544><loc0544> circle ; <loc0512><loc0512><loc1023><loc1023> circle', want));
  t.false(detectionMatches('<loc0512><loc0512><loc1023><loc1023> circle ; <loc0000><loc0000><loc0512><loc0512> circle', want), 'order');
  t.false(detectionMatches('<loc0000><loc0000><loc0512><loc0512> circle', want), 'count');
  t.false(detectionMatches('<loc0000><loc0000><loc0512><loc0512> square ; <loc0512><loc0512><loc1023><loc1023> circle', want), 'label');
  t.false(detectionMatches('<loc0000><loc0000><loc0200><loc0200> circle ; <loc0512><loc0512><loc1023><loc1023> circle', want), 'IoU 0.15');
});
