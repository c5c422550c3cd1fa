/**
 * src/preprocess/outputs.ts: detection and segmentation answers on literal strings and on token ids (the
 * fixture's tokenizer has loc_offset 1200 and seg_offset 2224), and the mapping back to the original image.
 */
import test from 'ava';
import { idsToText, locsToBox, parseDetectionIds, parseDetections, segCodes, segCodesFromIds } from '../../src/preprocess/outputs';
import { manifest, pieceDecoder } from './fixture';

const FIXTURE_OFFSETS = { locOffset: 1200, segOffset: 2224 };

test('detection: two objects, model frame (fractions of the square input)', (t) => {
  const objects = parseDetections('<loc0123><loc0456><loc0789><loc1000> cat ; <loc0010><loc0020><loc0300><loc0400> dog');
  t.deepEqual(objects, [
    { label: 'cat', locs: [123, 456, 789, 1000], box: { yMin: 123 / 1024, xMin: 456 / 1024, yMax: 789 / 1024, xMax: 1000 / 1024 }, seg: [] },
    { label: 'dog', locs: [10, 20, 300, 400], box: { yMin: 10 / 1024, xMin: 20 / 1024, yMax: 300 / 1024, xMax: 400 / 1024 }, seg: [] },
  ]);
});

test('detection: boxes in the original image go back through the centre crop', (t) => {
  // 200 x 300 (H x W): keras crops columns 50..249, a 200 x 200 square.
  t.deepEqual(parseDetections('<loc0000><loc0512><loc1024><loc0256> cat', { height: 200, width: 300 }), [], '<loc1024> is not a location token');
  const [box] = parseDetections('<loc0000><loc0512><loc0512><loc1023> cat', { height: 200, width: 300 });
  t.deepEqual(box.box, { yMin: 0, xMin: 50 + 100, yMax: 100, xMax: 50 + (1023 / 1024) * 200 });
  // A tall 300 x 100 image: rows 100..199 were kept.
  t.deepEqual(locsToBox([0, 0, 512, 1024 - 1], { height: 300, width: 100 }), { yMin: 100, xMin: 0, yMax: 150, xMax: (1023 / 1024) * 100 });
  // Without the crop (big_vision / Hugging Face preprocessing) the bins span the whole image.
  t.deepEqual(locsToBox([256, 256, 512, 768], { height: 200, width: 300, cropToAspectRatio: false }), { yMin: 50, xMin: 75, yMax: 100, xMax: 225 });
});

test('detection: an echoed prompt, whitespace, missing labels and malformed groups', (t) => {
  const text = 'detect cat ; dog\n<loc0001><loc0002><loc0003><loc0004> cat ; <loc0005><loc0006> dog ; <loc0007><loc0008><loc0009><loc0010>';
  const objects = parseDetections(text);
  t.deepEqual(
    objects.map((o) => [o.label, ...o.locs]),
    [
      ['cat', 1, 2, 3, 4],
      ['', 7, 8, 9, 10],
    ],
  );
  t.deepEqual(parseDetections(''), []);
  t.deepEqual(parseDetections('a cat on a sofa'), []);
  t.deepEqual(parseDetections('<LOC0001><loc0002><loc0003><loc0004><loc123> x'), []);
  // Labels with spaces; a label running into the next group without ";".
  t.deepEqual(
    parseDetections('<loc0001><loc0002><loc0003><loc0004> red car <loc0005><loc0006><loc0007><loc0008> tree').map((o) => o.label),
    ['red car', 'tree'],
  );
});

test('segmentation: box, 16 codes and label', (t) => {
  const text = manifest.pairs[3].response;
  const [object] = parseDetections(text, { height: 64, width: 64 });
  t.is(object.label, 'cat');
  t.deepEqual(object.locs, [100, 200, 300, 400]);
  t.deepEqual(object.seg, Array.from({ length: 16 }, (_, i) => i + 1));
  t.deepEqual(object.box, { yMin: 6.25, xMin: 12.5, yMax: 18.75, xMax: 25 });
  t.deepEqual(segCodes(text), object.seg);
  t.deepEqual(segCodes('<seg000> <seg127><seg128><seg12>'), [0, 127]);
});

test('token ids: loc and seg ids become pieces, the rest goes through the detokenizer', (t) => {
  const decode = pieceDecoder();
  const detection = manifest.pairs[2];
  t.is(idsToText(detection.response_ids, decode, FIXTURE_OFFSETS), detection.response);
  t.deepEqual(
    parseDetectionIds(detection.response_ids, decode, FIXTURE_OFFSETS).map((o) => [o.label, ...o.locs]),
    [
      ['cat', 123, 456, 789, 1000],
      ['dog', 10, 20, 300, 400],
    ],
  );
  const segmentation = manifest.pairs[3];
  t.is(idsToText(segmentation.response_ids, decode, FIXTURE_OFFSETS), segmentation.response);
  t.deepEqual(segCodesFromIds(segmentation.response_ids, FIXTURE_OFFSETS), Array.from({ length: 16 }, (_, i) => i + 1));
  // PaliGemma's real offsets are the default.
  t.is(idsToText([256000, 257023, 257024, 257151], () => 'never called'), '<loc0000><loc1023><seg000><seg127>');
});
