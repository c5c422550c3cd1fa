/**
 * src/preprocess/image.ts against keras_hub's PaliGemmaImageConverter (fixture: 3 images x raw /
 * pil_convert_rgb x uint8 / float32 inputs x S 16 / 24), plus decoding (PNG variants built byte by byte,
 * a JPEG round trip) and literal error messages.
 *
 * Parity, stated precisely: every S = 16 output is bit-identical. At S = 24 the float path is within 1
 * float32 ulp of the RESIZED value (before `x / 127.5 - 1`, where the -1 cancels leading bits and can
 * turn that 1 ulp into many output ulps near 0), and the uint8 path is identical except where the resized
 * value sits within 1 ulp of a .5 tie, where rounding takes either neighbour. The ulp is the BLAS kernel's
 * (image.ts `madd32`).
 */
import test from 'ava';
import { readFileSync, writeFileSync } from 'node:fs';
import { tempDir } from '../helpers/files';
import { join } from 'node:path';
import { deflateSync } from 'node:zlib';
import * as jpeg from 'jpeg-js';
import type { Tensor } from '../../dsl/tf';
import {
  IMAGE_SCALE,
  convertImage,
  convertImages,
  convertPixels,
  cropBox,
  cropImage,
  decodeImage,
  imageFromTensor,
  readImage,
  resizeBilinear,
  toRgb,
  type Channels,
  type RawImage,
} from '../../src/preprocess/image';
import { ROOT, load, manifest } from './fixture';

// ---------------------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------------------

const f32 = new Float32Array(1);
const i32 = new Int32Array(f32.buffer);
/** The float32 `k` ulps away from `v`. */
function ulpStep(v: number, k: number): number {
  f32[0] = v;
  i32[0] += v >= 0 ? k : -k;
  return f32[0];
}
const rescale1 = (v: number): number => Math.fround(Math.fround(v * IMAGE_SCALE) - 1);

function fixturePixels(name: string): RawImage {
  const ref = manifest.image_converter.images[name].pixels;
  const [height, width, channels] = ref.shape;
  return { data: Uint8Array.from(load(ref)), height, width, channels: channels as Channels };
}

/** The resized float32 values (before rescaling) of the float path, for the tolerance checks. */
function resizedFloat(image: RawImage, S: number): Float32Array {
  const float = { ...image, data: Float32Array.from(image.data) };
  return resizeBilinear(cropImage(float, cropBox(image.height, image.width, S, S)), S, S).data as Float32Array;
}

// ---------------------------------------------------------------------------------------------------------
// keras_hub parity
// ---------------------------------------------------------------------------------------------------------

const OUTPUT_NAME = /^(raw|pil_convert_rgb)_(uint8|float32)_S(\d+)$/;

for (const [name, image] of Object.entries(manifest.image_converter.images)) {
  test(`PNG decoding of ${name} equals its .u8.bin pixels`, (t) => {
    const decoded = readImage(ROOT + image.png);
    const expected = fixturePixels(name);
    t.deepEqual([decoded.height, decoded.width, decoded.channels], [expected.height, expected.width, expected.channels]);
    t.true(decoded.data instanceof Uint8Array);
    t.deepEqual(Array.from(decoded.data), Array.from(expected.data));
  });

  for (const [outputName, ref] of Object.entries(image.outputs)) {
    const [, kind, dtype, size] = OUTPUT_NAME.exec(outputName) ?? [];
    const S = Number(size);
    test(`image converter ${name} ${outputName}`, (t) => {
      let input = fixturePixels(name);
      if (kind === 'pil_convert_rgb') input = toRgb(input);
      const resized = resizedFloat(input, S);
      if (dtype === 'float32') input = { ...input, data: Float32Array.from(input.data) };
      const out = convertPixels(input, S);
      const expected = load(ref);
      t.deepEqual([out.height, out.width, out.channels], ref.shape);
      t.is(out.data.length, expected.length);

      let exact = 0;
      const unexplained: string[] = [];
      for (let i = 0; i < expected.length; i++) {
        if (out.data[i] === expected[i]) {
          exact++;
          continue;
        }
        const v = resized[i];
        if (dtype === 'float32') {
          // Within 1 ulp of the resized value.
          if (rescale1(ulpStep(v, 1)) === expected[i] || rescale1(ulpStep(v, -1)) === expected[i]) continue;
        } else {
          // A rounding tie: v within 1 ulp of k + 0.5, and keras took the other neighbour.
          const tie = Math.floor(v) + 0.5;
          const level = Math.round((expected[i] + 1) * 127.5);
          const nearTie = ulpStep(v, -1) <= tie && tie <= ulpStep(v, 1);
          if (nearTie && (level === Math.floor(v) || level === Math.ceil(v))) continue;
        }
        unexplained.push(`index ${i}: ours ${out.data[i]}, keras ${expected[i]}, resized ${v}`);
      }
      t.log(`${exact} of ${expected.length} bit-identical`);
      t.deepEqual(unexplained, []);
      if (S === 16) t.is(exact, expected.length, 'S = 16 must be bit-identical');
    });
  }
}

test('convertImage from the PNG files equals the converter on .convert("RGB") pixels', (t) => {
  for (const [name, image] of Object.entries(manifest.image_converter.images)) {
    const rgbName = image.pil_mode === 'RGB' ? 'raw_uint8_S16' : 'pil_convert_rgb_uint8_S16';
    const fromFile = convertImage(ROOT + image.png, 16);
    t.is(fromFile.length, 16 * 16 * 3);
    t.deepEqual(Array.from(fromFile), load(image.outputs[rgbName]), name);
  }
});

test('convertImages stacks images of different sizes and sources into [B, S, S, 3]', (t) => {
  const a = ROOT + manifest.image_converter.images.a_rgb_23x37.png;
  const b = readFileSync(ROOT + manifest.image_converter.images.b_rgba_64x64.png);
  const c = fixturePixels('c_gray_200x300');
  const batch = convertImages([a, b, c], 24);
  t.deepEqual(batch.shape, [3, 24, 24, 3]);
  const plane = 24 * 24 * 3;
  [a, b, c].forEach((source, i) => {
    t.deepEqual(Array.from(batch.data.subarray(i * plane, (i + 1) * plane)), Array.from(convertImage(source, 24)));
  });
  t.true(batch.data.every((v) => v >= -1 && v <= 1));
});

test('an image already S x S is only rescaled; cropToAspectRatio: false stretches instead of cropping', (t) => {
  const data = Uint8Array.from({ length: 4 * 4 * 3 }, (_, i) => (i * 37) % 256);
  const square: RawImage = { data, height: 4, width: 4, channels: 3 };
  t.deepEqual(Array.from(convertImage(square, 4)), Array.from(data, rescale1));
  // 2 x 4 -> 2 x 2: the crop keeps the middle columns 1..2; a stretch averages column pairs.
  const wide: RawImage = { data: Uint8Array.from([0, 10, 20, 30, 40, 50, 60, 70]), height: 2, width: 4, channels: 1 };
  const cropped = convertPixels(wide, 2).data;
  t.deepEqual(Array.from(cropped), [10, 20, 50, 60].map(rescale1));
  const stretched = convertPixels(wide, 2, { cropToAspectRatio: false }).data;
  // Height 2 -> 2 is skipped; width 4 -> 2 samples at 0.5 and 2.5: (0+10)/2 = 5, (20+30)/2 = 25, ...
  t.deepEqual(Array.from(stretched), [5, 25, 45, 65].map(rescale1));
});

test('uint8 input rounds half to even after the resize; float input does not round', (t) => {
  // 1 x 2 -> 1 x 1 samples at 0.5: the mean of the two pixels.
  const pairs: [number, number, number][] = [
    [0, 1, 0], // 0.5 -> 0
    [1, 2, 2], // 1.5 -> 2
    [2, 3, 2], // 2.5 -> 2
    [254, 255, 254], // 254.5 -> 254
  ];
  for (const [a, b, rounded] of pairs) {
    const u8: RawImage = { data: Uint8Array.from([a, b]), height: 1, width: 2, channels: 1 };
    t.deepEqual(Array.from(resizeBilinear(u8, 1, 1).data), [rounded]);
    const fl: RawImage = { data: Float32Array.from([a, b]), height: 1, width: 2, channels: 1 };
    t.deepEqual(Array.from(resizeBilinear(fl, 1, 1).data), [(a + b) / 2]);
  }
});

test('toRgb drops alpha and replicates gray, as PIL .convert("RGB")', (t) => {
  const rgba: RawImage = { data: Uint8Array.from([1, 2, 3, 4, 5, 6, 7, 8]), height: 1, width: 2, channels: 4 };
  t.deepEqual(Array.from(toRgb(rgba).data), [1, 2, 3, 5, 6, 7]);
  const gray: RawImage = { data: Float32Array.from([9, 200]), height: 2, width: 1, channels: 1 };
  const rgb = toRgb(gray);
  t.true(rgb.data instanceof Float32Array);
  t.deepEqual([rgb.channels, ...rgb.data], [3, 9, 9, 9, 200, 200, 200]);
});

test('cropBox is keras crop_to_aspect_ratio', (t) => {
  t.deepEqual(cropBox(23, 37, 16, 16), { top: 0, left: 7, height: 23, width: 23 });
  t.deepEqual(cropBox(200, 300, 24, 24), { top: 0, left: 50, height: 200, width: 200 });
  t.deepEqual(cropBox(301, 100, 8, 8), { top: 100, left: 0, height: 100, width: 100 });
  t.deepEqual(cropBox(10, 10, 3, 6), { top: 2, left: 0, height: 5, width: 10 });
});

test('imageFromTensor reads int32 and float32 [H, W, C] tensors', async (t) => {
  const fake = (dtype: string, values: Int32Array | Float32Array, shape: number[]): Tensor =>
    ({ rank: shape.length, shape, dtype, data: async () => values }) as unknown as Tensor;
  const ints = await imageFromTensor(fake('int32', Int32Array.from([0, 128, 255]), [1, 1, 3]));
  t.true(ints.data instanceof Uint8Array);
  t.deepEqual([ints.height, ints.width, ints.channels, ...ints.data], [1, 1, 3, 0, 128, 255]);
  const floats = await imageFromTensor(fake('float32', Float32Array.from([0.5]), [1, 1, 1]));
  t.true(floats.data instanceof Float32Array);
  await t.throwsAsync(imageFromTensor(fake('int32', Int32Array.from([0, 256, 0]), [1, 1, 3])), {
    message: 'imageFromTensor: int32 pixel 256 at index 1 is outside 0..255',
  });
  await t.throwsAsync(imageFromTensor(fake('int32', Int32Array.from([0, 1]), [1, 2])), {
    message: 'imageFromTensor: expected a rank-3 [H, W, C] tensor, got shape [1, 2]',
  });
});

// ---------------------------------------------------------------------------------------------------------
// PNG variants, written byte by byte
// ---------------------------------------------------------------------------------------------------------

const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});
function crc32(bytes: Uint8Array): number {
  let c = 0xffffffff;
  for (const b of bytes) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}
function chunk(type: string, data: Uint8Array): Buffer {
  const out = Buffer.alloc(12 + data.length);
  out.writeUInt32BE(data.length, 0);
  out.write(type, 4, 'latin1');
  out.set(data, 8);
  out.writeUInt32BE(crc32(out.subarray(4, 8 + data.length)), 8 + data.length);
  return out;
}
/** A PNG from unfiltered scanlines (each row's bytes; filter type 0 is prepended). */
function pngFile(width: number, height: number, depth: number, colorType: number, rows: number[][], extra: [string, number[]][] = []): Buffer {
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr.set([depth, colorType, 0, 0, 0], 8);
  const raw = Uint8Array.from(rows.flatMap((row) => [0, ...row]));
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', ihdr),
    ...extra.map(([type, data]) => chunk(type, Uint8Array.from(data))),
    chunk('IDAT', deflateSync(raw)),
    chunk('IEND', new Uint8Array(0)),
  ]);
}
const decoded = (png: Buffer): number[] => {
  const img = decodeImage(png);
  return [img.height, img.width, img.channels, ...img.data];
};

test('PNG: 8-bit gray, RGB, gray+alpha, RGBA', (t) => {
  t.deepEqual(decoded(pngFile(2, 1, 8, 0, [[7, 250]])), [1, 2, 1, 7, 250]);
  t.deepEqual(decoded(pngFile(1, 2, 8, 2, [[1, 2, 3], [4, 5, 6]])), [2, 1, 3, 1, 2, 3, 4, 5, 6]);
  // Gray + alpha decodes as RGBA with R = G = B (the converter then drops alpha).
  t.deepEqual(decoded(pngFile(1, 1, 8, 4, [[9, 100]])), [1, 1, 4, 9, 9, 9, 100]);
  t.deepEqual(decoded(pngFile(1, 1, 8, 6, [[1, 2, 3, 4]])), [1, 1, 4, 1, 2, 3, 4]);
});

test('PNG: 16-bit and 1-bit samples are scaled to 8 bits by round(v * 255 / max)', (t) => {
  // 16-bit RGB: 0x1234 = 4660 -> round(18.13) = 18; 0x8080 -> 128; 0xffff -> 255.
  t.deepEqual(decoded(pngFile(1, 1, 16, 2, [[0x12, 0x34, 0x80, 0x80, 0xff, 0xff]])), [1, 1, 3, 18, 128, 255]);
  // 1-bit gray: 0b10100000 holds 1, 0, 1 for three pixels.
  t.deepEqual(decoded(pngFile(3, 1, 1, 0, [[0b10100000]])), [1, 3, 1, 255, 0, 255]);
});

test('PNG: palette expands to RGB, or RGBA when tRNS makes an entry transparent', (t) => {
  const plte: [string, number[]] = ['PLTE', [10, 20, 30, 40, 50, 60]];
  t.deepEqual(decoded(pngFile(2, 1, 8, 3, [[1, 0]], [plte])), [1, 2, 3, 40, 50, 60, 10, 20, 30]);
  t.deepEqual(decoded(pngFile(2, 1, 8, 3, [[1, 0]], [plte, ['tRNS', [128]]])), [1, 2, 4, 40, 50, 60, 255, 10, 20, 30, 128]);
});

test('PNG: a tRNS colour key keeps the keyed colour (PIL keeps it; pngjs zeroes it)', (t) => {
  t.deepEqual(decoded(pngFile(2, 1, 8, 0, [[7, 8]], [['tRNS', [0, 7]]])), [1, 2, 1, 7, 8]);
  t.deepEqual(decoded(pngFile(2, 1, 8, 2, [[1, 2, 3, 4, 5, 6]], [['tRNS', [0, 1, 0, 2, 0, 3]]])), [1, 2, 3, 1, 2, 3, 4, 5, 6]);
  // 16-bit gray key 0x8080 -> 128 after scaling.
  t.deepEqual(decoded(pngFile(1, 1, 16, 0, [[0x80, 0x80]], [['tRNS', [0x80, 0x80]]])), [1, 1, 1, 128]);
});

// ---------------------------------------------------------------------------------------------------------
// JPEG
// ---------------------------------------------------------------------------------------------------------

test('JPEG round trip: encode with jpeg-js, decode by magic bytes (not the extension)', (t) => {
  const width = 16;
  const height = 12;
  const rgba = new Uint8Array(width * height * 4);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      rgba.set([x * 16, y * 20, 128, 255], (y * width + x) * 4);
    }
  }
  const bytes = jpeg.encode({ data: rgba, width, height }, 95).data;
  const dir = tempDir(t, 'paligemma-jpeg-');
  const path = join(dir, 'photo.png'); // a misleading extension on purpose
  writeFileSync(path, bytes);
  const img = readImage(path);
  t.deepEqual([img.height, img.width, img.channels], [height, width, 3]);
  let maxDiff = 0;
  for (let p = 0; p < width * height; p++) {
    for (let c = 0; c < 3; c++) maxDiff = Math.max(maxDiff, Math.abs(img.data[p * 3 + c] - rgba[p * 4 + c]));
  }
  t.log(`max |decoded - original| = ${maxDiff}`);
  t.true(maxDiff <= 12);
  const converted = convertImage(path, 8);
  t.is(converted.length, 8 * 8 * 3);
});

// ---------------------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------------------

test('bad files: missing, empty, not an image, truncated PNG, corrupt JPEG', (t) => {
  const dir = tempDir(t, 'paligemma-bad-');
  const missing = join(dir, 'missing.png');
  t.throws(() => readImage(missing), { message: `readImage: cannot read '${missing}': ENOENT: no such file or directory, open '${missing}'` });

  const empty = join(dir, 'empty.png');
  writeFileSync(empty, '');
  t.throws(() => convertImage(empty, 16), { message: `decodeImage: '${empty}' is empty (0 bytes)` });

  const text = join(dir, 'notes.jpg');
  writeFileSync(text, 'hello world\n');
  t.throws(() => readImage(text), { message: `decodeImage: '${text}' is not a PNG or JPEG (first bytes: 68 65 6c 6c 6f 20 77 6f)` });

  const truncated = join(dir, 'truncated.png');
  writeFileSync(truncated, readFileSync(ROOT + manifest.image_converter.images.a_rgb_23x37.png).subarray(0, 60));
  t.throws(() => readImage(truncated), { message: `decodeImage: '${truncated}' is a truncated PNG (60 bytes, ends inside chunk IDAT)` });

  const corrupt = join(dir, 'corrupt.jpg');
  writeFileSync(corrupt, Buffer.from([0xff, 0xd8, 0xff, 0x00, 0x01, 0x02]));
  t.throws(() => readImage(corrupt), { message: `decodeImage: '${corrupt}' is a truncated JPEG (6 bytes, ends inside marker 0x0)` });

  t.throws(() => decodeImage(Buffer.from('GIF89a')), { message: `decodeImage: '<bytes>' is not a PNG or JPEG (first bytes: 47 49 46 38 39 61)` });
});

test('bad raw pixels: zero size, channel count, data length, image size', (t) => {
  t.throws(() => convertImage({ data: new Uint8Array(0), height: 0, width: 5, channels: 3 }, 16), {
    message: 'convertImage: image has zero size (height 0, width 5)',
  });
  t.throws(() => convertImage({ data: new Uint8Array(8), height: 2, width: 2, channels: 2 as Channels }, 16), {
    message: 'convertImage: channels must be 1, 3 or 4, got 2',
  });
  t.throws(() => convertImage({ data: new Uint8Array(10), height: 2, width: 2, channels: 3 }, 16), {
    message: 'convertImage: data has 10 values but height * width * channels = 2 * 2 * 3 = 12',
  });
  t.throws(() => convertImage({ data: [1, 2, 3] as unknown as Uint8Array, height: 1, width: 1, channels: 3 }, 16), {
    message: 'convertImage: pixel data must be a Uint8Array or a Float32Array',
  });
  t.throws(() => convertImages([], 0), { message: 'convertImages: imageSize must be a positive integer, got 0' });
  t.throws(() => convertPixels({ data: new Uint8Array(3), height: 1, width: 1, channels: 3 }, 2.5), {
    message: 'convertPixels: imageSize must be a positive integer, got 2.5',
  });
});
