/**
 * Images in, model pixels out: keras_hub's `PaliGemmaImageConverter`, value for value, on typed arrays.
 *
 * Reference: keras_hub 71453d08 `ImageConverter._call_python` (resize, then `x * scale + offset`) with the
 * PaliGemma settings `image_size=(S, S), scale=1/127.5, offset=-1`, `interpolation="bilinear"`,
 * `antialias=False`, `crop_to_aspect_ratio=True`; the resize is keras 3.16's numpy backend
 * (`keras/src/backend/numpy/image.py`: `resize`, `_resize`, `_scale_and_translate`, `_compute_weight_mat`).
 * The rules and the fixture are in spec/fixtures/text/README.md, section 2. Steps:
 *
 *   1. centre crop to the target aspect ratio (a square for PaliGemma);
 *   2. separable bilinear resize, height then width, jax `scale_and_translate` semantics, no antialias,
 *      float32 arithmetic; an axis whose size does not change is skipped;
 *   3. integer (uint8) input is rounded half to even and clipped after the resize; float input is not;
 *   4. `float32(x) * float32(1/127.5) + float32(-1)`.
 *
 * Channels, where this module departs from keras_hub on purpose: keras_hub's converter keeps the channel
 * count, so an RGBA image comes out with 4 channels and a grayscale one with 1, which the SigLIP patch
 * embedding (3 input channels) cannot take. `convertImage` therefore converts to RGB first, as PIL's
 * `.convert("RGB")` does: RGBA drops alpha (no compositing) and gray is replicated. Since every step is
 * per channel, this equals keras_hub on the `.convert("RGB")`-ed image exactly. `convertPixels` is the
 * channel-preserving keras_hub converter itself.
 *
 * Decoding: PNG with pngjs, JPEG with jpeg-js, chosen by the magic bytes (never the extension). Decoded
 * images are uint8, so they take the rounding path of step 3, as keras_hub does with PIL-loaded arrays.
 * Known differences from loading with PIL:
 *   - 16-bit PNG samples become `round(v * 255 / 65535)` (pngjs' normalisation); PIL keeps the high byte.
 *   - gray + alpha PNGs decode as RGBA (R = G = B); palette PNGs decode to their colours (RGB, or RGBA when
 *     the palette has transparency), whereas `np.array` of a PIL "P" image holds palette indices.
 *   - JPEG: jpeg-js' IDCT and chroma upsampling are not libjpeg's, so pixels can differ slightly; gray
 *     JPEGs decode as RGB. EXIF orientation is ignored, as in PIL without `exif_transpose` and keras_hub.
 *
 * Layouts: every pixel array is HWC, row-major (`float32[H, W, C]`); a batch is `float32[B, S, S, 3]`.
 */
import { PNG } from 'pngjs';
import { FormatError, asFormatError } from '../../checkpoints/errors';
import { readRegularFile } from '../../checkpoints/files';
import { crc32 } from '../../checkpoints/npz';
import * as jpeg from 'jpeg-js';
import type { Tensor } from '../../dsl/tf';

// ---------------------------------------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------------------------------------

export type Channels = 1 | 3 | 4;

/**
 * Raw pixels `[height, width, channels]`, HWC row-major. `Uint8Array` data is an integer image (rounded
 * after the resize, like keras' uint8 path); `Float32Array` data is a float image on the same 0..255 scale.
 */
export interface RawImage {
  readonly data: Uint8Array | Float32Array;
  readonly height: number;
  readonly width: number;
  readonly channels: Channels;
}

/** What `convertImage` accepts: a file path, the bytes of a PNG or JPEG file, or raw pixels. */
export type ImageSource = string | Uint8Array | RawImage;

export interface ConverterOptions {
  /**
   * Centre crop to the target aspect ratio before resizing. Default true, keras_hub's `ImageConverter`
   * default and what its PaliGemma presets use. (big_vision and Hugging Face resize without cropping.)
   */
  readonly cropToAspectRatio?: boolean;
}

/** The PaliGemma converter constants, as float32 (keras casts `scale` and `offset` to the compute dtype). */
export const IMAGE_SCALE = Math.fround(1 / 127.5);
export const IMAGE_OFFSET = -1;

// ---------------------------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------------------------

const PNG_MAGIC = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];
const JPEG_MAGIC = [0xff, 0xd8, 0xff];

const startsWith = (bytes: Uint8Array, magic: readonly number[]): boolean =>
  bytes.length >= magic.length && magic.every((b, i) => bytes[i] === b);

const message = (e: unknown): string => (e instanceof Error ? e.message : String(e));

/**
 * The most pixels an image may declare: 2^26 (e.g. 8192 x 8192; PaliGemma looks at 896 x 896 at most). Checked
 * from the header, before anything is allocated: a 146-byte PNG can declare 20000 x 20000.
 */
export const MAX_IMAGE_PIXELS = 1 << 26;
/** The largest image file read. */
export const MAX_IMAGE_BYTES = 1 << 28;

/** Read and decode an image file (PNG or JPEG, by content). Errors name the file. */
export function readImage(path: string): RawImage {
  let bytes: Uint8Array;
  try {
    bytes = readRegularFile(path, MAX_IMAGE_BYTES);
  } catch (e) {
    const why = e instanceof FormatError && e.cause instanceof Error ? e.cause.message : message(e).replace(`${path}: cannot read: `, '');
    throw new FormatError(path, 'file', `readImage: cannot read '${path}': ${why}`, { cause: e });
  }
  return decodeImage(bytes, path);
}

/** Decode the bytes of a PNG or JPEG file, sniffing the magic bytes. `name` only labels errors. */
export function decodeImage(bytes: Uint8Array, name = '<bytes>'): RawImage {
  try {
    return decodeBytes(bytes, name);
  } catch (e) {
    if (e instanceof FormatError) throw e;
    if (e instanceof Error && e.constructor === Error) throw new FormatError(name, 'image', e.message, { cause: e });
    throw asFormatError(e, name);
  }
}

/** A refusal naming the image, the field and the values. */
const refuse = (name: string, field: string, detail: string): FormatError => new FormatError(name, field, `decodeImage: '${name}' ${detail}`);

/** The pixel budget, checked from the header. */
function checkPixels(name: string, width: number, height: number): void {
  if (width === 0 || height === 0) throw refuse(name, 'size', `has zero size (${height}x${width})`);
  if (width * height > MAX_IMAGE_PIXELS) {
    throw refuse(name, 'size', `declares ${height}x${width} = ${width * height} pixels, above the limit of ${MAX_IMAGE_PIXELS} (MAX_IMAGE_PIXELS)`);
  }
}

function decodeBytes(bytes: Uint8Array, name: string): RawImage {
  if (bytes.length === 0) throw new Error(`decodeImage: '${name}' is empty (0 bytes)`);
  if (startsWith(bytes, PNG_MAGIC)) return decodePng(bytes, name);
  if (startsWith(bytes, JPEG_MAGIC)) return decodeJpeg(bytes, name);
  const head = Array.from(bytes.subarray(0, 8), (b) => b.toString(16).padStart(2, '0')).join(' ');
  throw new Error(`decodeImage: '${name}' is not a PNG or JPEG (first bytes: ${head})`);
}

/** pngjs' 1/2/4/16-bit to 8-bit rule (format-normaliser.js `scaleDepth`). */
const scaleSample = (v: number, depth: number): number =>
  depth === 8 ? v : Math.floor((v * 255) / (2 ** depth - 1) + 0.5);

/**
 * Walk the chunk list up to IEND before pngjs sees it: a cut-off file gets a clear message (pngjs reports it
 * as "There are some read requests waitng on finished stream"), the structure is checked (IHDR first, a PLTE
 * for palette images, at least one IDAT: pngjs decodes a PNG without IDAT as an all-black picture), the pixel
 * budget is checked from IHDR, and the compressed data must be able to hold the image (deflate expands at
 * most ~1032:1) before anything is allocated. CRCs, as libpng by default: a bad CRC in a critical chunk
 * (IHDR, PLTE, IDAT, IEND) is an error; an ancillary chunk with a bad CRC is dropped (libpng warns and
 * discards it). Returns the chunks to decode.
 */
function checkPngChunks(bytes: Uint8Array, name: string): Uint8Array {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let pos = PNG_MAGIC.length;
  const kept: Uint8Array[] = [bytes.subarray(0, pos)];
  let first = true;
  let idat = 0;
  let palette = false;
  let width = 0;
  let height = 0;
  let colorType = 0;
  let depth = 0;
  for (;;) {
    if (pos + 8 > bytes.length) {
      throw refuse(name, 'IEND', `is a truncated PNG (${bytes.length} bytes, no IEND chunk)`);
    }
    const length = view.getUint32(pos);
    const type = String.fromCharCode(...bytes.subarray(pos + 4, pos + 8));
    if (length > 0x7fffffff || pos + 12 + length > bytes.length) {
      throw refuse(name, type, `is a truncated PNG (${bytes.length} bytes, ends inside chunk ${type})`);
    }
    const stored = view.getUint32(pos + 8 + length);
    const actual = crc32(bytes.subarray(pos + 4, pos + 8 + length));
    const critical = (bytes[pos + 4] & 0x20) === 0;
    if (stored !== actual && critical) {
      throw refuse(name, type, `is a corrupt PNG: chunk ${JSON.stringify(type)} at byte ${pos} has CRC 0x${actual.toString(16).padStart(8, '0')}, the file says 0x${stored.toString(16).padStart(8, '0')}`);
    }
    if (first && type !== 'IHDR') throw refuse(name, 'IHDR', `is a corrupt PNG: the first chunk is ${JSON.stringify(type)}, not IHDR`);
    if (type === 'IHDR') {
      if (!first || length !== 13) throw refuse(name, 'IHDR', `is a corrupt PNG: IHDR of ${length} bytes${first ? '' : ' after the first chunk'} (13 expected, once, first)`);
      width = view.getUint32(pos + 8);
      height = view.getUint32(pos + 12);
      depth = bytes[pos + 16];
      colorType = bytes[pos + 17];
      checkPixels(name, width, height);
    }
    if (type === 'PLTE') palette = true;
    if (type === 'IDAT') idat += length;
    first = false;
    if (stored === actual || critical) kept.push(bytes.subarray(pos, pos + 12 + length));
    pos += 12 + length; // length, type, data, crc
    if (type === 'IEND') break;
  }
  if (idat === 0) throw refuse(name, 'IDAT', 'is a corrupt PNG: no IDAT chunk (no image data)');
  if (colorType === 3 && !palette) throw refuse(name, 'PLTE', 'is a corrupt PNG: a palette image without a PLTE chunk');
  const samples = [1, 0, 3, 1, 2, 0, 4][colorType] ?? 4;
  const rowBytes = Math.ceil((width * samples * Math.max(depth, 1)) / 8) + 1; // + the filter byte
  const needed = rowBytes * height; // without interlacing; Adam7 needs a little more
  if (needed > idat * 1032 + 1024) {
    throw refuse(name, 'IDAT', `is a corrupt PNG: ${idat} bytes of IDAT cannot hold ${height}x${width} pixels (${needed} bytes inflated)`);
  }
  const keptBytes = kept.reduce((n, k) => n + k.length, 0);
  return keptBytes === pos ? bytes.subarray(0, pos) : Buffer.concat(kept);
}

function decodePng(input: Uint8Array, name: string): RawImage {
  // pngjs needs Node (Buffer, zlib); the browser build (paligemma-ts/browser) has its own decoder
  if (typeof Buffer === 'undefined') throw new Error(`decodeImage: '${name}' is a PNG, and PNG bytes decode in Node only; in a browser use decodeImageInBrowser`);
  const bytes = checkPngChunks(input, name);
  const buffer = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let png: ReturnType<typeof PNG.sync.read> & { transColor?: number[] };
  try {
    png = PNG.sync.read(buffer);
  } catch (e) {
    throw new FormatError(name, 'png', `decodeImage: '${name}' is a PNG that cannot be decoded: ${message(e)}`, { cause: e });
  }
  const { width, height, depth } = png;
  const colorType: number = png.colorType; // @types/pngjs omits 3 (palette), which pngjs does report
  if (width === 0 || height === 0) throw new Error(`decodeImage: '${name}' has zero size (${height}x${width})`);
  // pngjs always returns 8-bit RGBA (palette expanded, gray replicated, 16-bit scaled).
  const rgba = png.data;
  const n = width * height;
  // A tRNS colour key (gray or RGB images): pngjs zeroes the whole pixel, colour included. PIL keeps the
  // colour (and np.array has no alpha), so restore it: only keyed pixels have alpha 0 in these types.
  if (png.transColor && (colorType === 0 || colorType === 2)) {
    const key = png.transColor.map((v) => scaleSample(v, depth));
    const [r, g, b] = key.length === 1 ? [key[0], key[0], key[0]] : key;
    for (let p = 0; p < n; p++) {
      if (rgba[4 * p + 3] === 0) {
        rgba[4 * p] = r;
        rgba[4 * p + 1] = g;
        rgba[4 * p + 2] = b;
      }
    }
  }
  if (colorType === 0) return pick(rgba, height, width, 1); // gray: R of R = G = B
  if (colorType === 2) return pick(rgba, height, width, 3);
  if (colorType === 3) {
    // Palette: RGBA only when some palette entry is not opaque.
    let opaque = true;
    for (let p = 0; p < n && opaque; p++) opaque = rgba[4 * p + 3] === 255;
    return pick(rgba, height, width, opaque ? 3 : 4);
  }
  return pick(rgba, height, width, 4); // 4 (gray + alpha, as RGBA) and 6 (RGBA)
}

/** The first `channels` of every RGBA pixel. */
function pick(rgba: Uint8Array, height: number, width: number, channels: Channels): RawImage {
  if (channels === 4) return { data: new Uint8Array(rgba.subarray(0, height * width * 4)), height, width, channels };
  const n = height * width;
  const data = new Uint8Array(n * channels);
  for (let p = 0; p < n; p++) for (let c = 0; c < channels; c++) data[p * channels + c] = rgba[4 * p + c];
  return { data, height, width, channels };
}

/**
 * Walk the JPEG markers up to the first scan: a frame header (SOFn) with a non-zero size within the pixel
 * budget must come before it, so nothing is allocated for a crafted header, and a file without a scan is
 * refused rather than decoded as nothing.
 */
function checkJpegMarkers(bytes: Uint8Array, name: string): void {
  let pos = 2;
  let frame = false;
  for (;;) {
    if (pos + 2 > bytes.length) throw refuse(name, 'SOS', `is a truncated JPEG (${bytes.length} bytes, no scan)`);
    if (bytes[pos] !== 0xff) throw refuse(name, 'marker', `is a corrupt JPEG: expected a marker at byte ${pos}, got 0x${bytes[pos].toString(16)}`);
    const marker = bytes[pos + 1];
    if (marker === 0xff) {
      pos++; // fill byte
      continue;
    }
    if (marker === 0xd8 || (marker >= 0xd0 && marker <= 0xd7) || marker === 0x01) {
      pos += 2; // no length
      continue;
    }
    if (marker === 0xd9) throw refuse(name, 'SOS', 'is a corrupt JPEG: it ends (EOI) before any scan');
    if (pos + 4 > bytes.length) throw refuse(name, 'SOS', `is a truncated JPEG (${bytes.length} bytes, no scan)`);
    const length = (bytes[pos + 2] << 8) | bytes[pos + 3];
    if (length < 2 || pos + 2 + length > bytes.length) throw refuse(name, 'marker', `is a truncated JPEG (${bytes.length} bytes, ends inside marker 0x${marker.toString(16)})`);
    const sof = marker >= 0xc0 && marker <= 0xcf && marker !== 0xc4 && marker !== 0xc8 && marker !== 0xcc;
    if (sof) {
      if (length < 8) throw refuse(name, 'SOF', `is a corrupt JPEG: a frame header of ${length} bytes`);
      checkPixels(name, (bytes[pos + 7] << 8) | bytes[pos + 8], (bytes[pos + 5] << 8) | bytes[pos + 6]);
      frame = true;
    }
    if (marker === 0xda) {
      if (!frame) throw refuse(name, 'SOF', 'is a corrupt JPEG: a scan before any frame header');
      return;
    }
    pos += 2 + length;
  }
}

function decodeJpeg(bytes: Uint8Array, name: string): RawImage {
  checkJpegMarkers(bytes, name);
  let img: { width: number; height: number; data: Uint8Array };
  try {
    // formatAsRGBA false: 3 channels, gray replicated, CMYK / YCCK converted by jpeg-js. Its own limits
    // (megapixels, memory) backstop ours.
    img = jpeg.decode(bytes, { useTArray: true, formatAsRGBA: false, maxResolutionInMP: MAX_IMAGE_PIXELS / 1e6, maxMemoryUsageInMB: 1024 });
  } catch (e) {
    throw new FormatError(name, 'jpeg', `decodeImage: '${name}' is a JPEG that cannot be decoded: ${message(e)}`, { cause: e });
  }
  if (img.width === 0 || img.height === 0) {
    throw new Error(`decodeImage: '${name}' has zero size (${img.height}x${img.width})`);
  }
  return { data: img.data, height: img.height, width: img.width, channels: 3 };
}

/**
 * A `tf.Tensor3D` `[H, W, C]` as raw pixels: int32 / uint8-valued tensors (e.g. from a decoder) become an
 * integer image, float32 ones a float image on the 0..255 scale. Reads the tensor; does not dispose it.
 */
export async function imageFromTensor(t: Tensor): Promise<RawImage> {
  if (t.rank !== 3) throw new Error(`imageFromTensor: expected a rank-3 [H, W, C] tensor, got shape [${t.shape.join(', ')}]`);
  const [height, width, channels] = t.shape;
  const values = await t.data();
  let data: Uint8Array | Float32Array;
  if (t.dtype === 'float32') {
    data = Float32Array.from(values as Float32Array);
  } else if (t.dtype === 'int32') {
    data = new Uint8Array(values.length);
    for (let i = 0; i < values.length; i++) {
      const v = values[i] as number;
      if (!(v >= 0 && v <= 255)) throw new Error(`imageFromTensor: int32 pixel ${v} at index ${i} is outside 0..255`);
      data[i] = v;
    }
  } else {
    throw new Error(`imageFromTensor: dtype ${t.dtype} is not an image (use int32 or float32)`);
  }
  return checkImage({ data, height, width, channels: channels as Channels }, 'imageFromTensor');
}

// ---------------------------------------------------------------------------------------------------------
// The converter
// ---------------------------------------------------------------------------------------------------------

/** Validate a raw image's sizes, channels and data length; returns it unchanged. */
export function checkImage(image: RawImage, who = 'checkImage'): RawImage {
  const { data, height, width, channels } = image;
  if (!(data instanceof Uint8Array || data instanceof Float32Array)) {
    throw new Error(`${who}: pixel data must be a Uint8Array or a Float32Array`);
  }
  for (const [what, v] of [['height', height], ['width', width]] as const) {
    if (!Number.isInteger(v) || v < 0) throw new Error(`${who}: ${what} must be a non-negative integer, got ${v}`);
  }
  if (height === 0 || width === 0) throw new Error(`${who}: image has zero size (height ${height}, width ${width})`);
  if (channels !== 1 && channels !== 3 && channels !== 4) {
    throw new Error(`${who}: channels must be 1, 3 or 4, got ${channels}`);
  }
  if (data.length !== height * width * channels) {
    throw new Error(
      `${who}: data has ${data.length} values but height * width * channels = ${height} * ${width} * ${channels} = ${height * width * channels}`,
    );
  }
  return image;
}

/** RGB as PIL's `.convert("RGB")`: RGBA drops alpha (`pixels[..., :3]`), gray is replicated. */
export function toRgb(image: RawImage): RawImage {
  const { data, height, width, channels } = checkImage(image, 'toRgb');
  if (channels === 3) return image;
  const n = height * width;
  const out = data instanceof Uint8Array ? new Uint8Array(n * 3) : new Float32Array(n * 3);
  for (let p = 0; p < n; p++) {
    for (let c = 0; c < 3; c++) out[3 * p + c] = channels === 1 ? data[p] : data[4 * p + c];
  }
  return { data: out, height, width, channels: 3 };
}

export interface CropBox {
  readonly top: number;
  readonly left: number;
  readonly height: number;
  readonly width: number;
}

/**
 * keras' `crop_to_aspect_ratio` window: the largest centred box of the target aspect ratio.
 * `int(...)` in keras truncates toward zero: Math.trunc, on the same float64 quotients.
 */
export function cropBox(height: number, width: number, targetHeight: number, targetWidth: number): CropBox {
  const h = Math.max(Math.min(height, Math.trunc((width * targetHeight) / targetWidth)), 1);
  const w = Math.max(Math.min(width, Math.trunc((height * targetWidth) / targetHeight)), 1);
  return { top: Math.trunc((height - h) / 2), left: Math.trunc((width - w) / 2), height: h, width: w };
}

/** Cut `box` out of an image (no copy when the box is the whole image). */
export function cropImage(image: RawImage, box: CropBox): RawImage {
  const { data, width, channels } = image;
  if (box.height === image.height && box.width === width) return image;
  const size = box.height * box.width * channels;
  const out = data instanceof Uint8Array ? new Uint8Array(size) : new Float32Array(size);
  const rowLength = box.width * channels;
  for (let y = 0; y < box.height; y++) {
    const from = ((box.top + y) * width + box.left) * channels;
    out.set(data.subarray(from, from + rowLength), y * rowLength);
  }
  return { data: out, height: box.height, width: box.width, channels };
}

/** Nonzero taps of one output sample: input indices (ascending) and their float32 weights. */
interface Taps {
  readonly index: number[];
  readonly weight: number[];
}

/**
 * keras' `_compute_weight_mat` for the triangle kernel, translation 0 and no antialias, as sparse taps.
 * Built in float64 like numpy (python-float scale), then cast to float32 (`.astype(output.dtype)`).
 */
function bilinearTaps(inSize: number, outSize: number): Taps[] {
  const scale = outSize / inSize; // keras: shape[d] / image.shape[d]
  const invScale = 1.0 / scale; // keras divides by the scale again rather than using in / out
  const taps: Taps[] = [];
  for (let j = 0; j < outSize; j++) {
    // Half-pixel centres; the `- translation * inv_scale` term is an exact 0 here.
    const sample = (j + 0.5) * invScale - 0.5;
    const index: number[] = [];
    const raw: number[] = [];
    let total = 0;
    for (let i = 0; i < inSize; i++) {
      const w = Math.max(0, 1 - Math.abs(sample - i)); // triangle kernel, kernel_scale 1 (no antialias)
      total += w; // numpy sums axis 0 in index order; the zeros add nothing
      if (w !== 0) {
        index.push(i);
        raw.push(w);
      }
    }
    // Normalise per output sample: at the borders this renormalises the single tap to 1 (edge clamp).
    // keras zeroes columns whose sum is <= 1000 * eps(float32), and samples outside [-0.5, in - 0.5];
    // neither happens without translation, but both are kept for fidelity.
    const valid = Math.abs(total) > 1000 * 2 ** -23 && sample >= -0.5 && sample <= inSize - 0.5;
    taps.push({ index, weight: raw.map((w) => (valid ? Math.fround(w / total) : 0)) });
  }
  return taps;
}

/**
 * One float32 contraction term, `acc + x * w`. numpy's float32 `tensordot` is a BLAS sgemm, and its last-bit
 * rounding belongs to the BLAS kernel, not to keras. A fused multiply-add chain in index order (what FMA
 * sgemm kernels do) matches the fixture best: bit for bit at S = 16, within 1 float32 ulp of the resized
 * value at S = 24, where the oracle's kernel mixes fused and unfused steps (this machine's numpy with
 * OpenBLAS 0.3.31 is 1 ulp off on as many elements). Unfused `fround(acc + fround(x * w))` misses 5x as often.
 * x * w is exact in float64 (24 x 24 bits), so one `fround` of the float64 sum is the fused rounding
 * (barring a double rounding at an exact float32 midpoint, which these magnitudes make vanishingly rare).
 */
const madd32 = (acc: number, x: number, w: number): number => Math.fround(acc + x * w);

/** Resize along the height axis: `[H, W, C] -> [outH, W, C]`, float32. */
function resizeHeight(src: Float32Array, height: number, rowLength: number, outHeight: number): Float32Array {
  const out = new Float32Array(outHeight * rowLength);
  const taps = bilinearTaps(height, outHeight);
  for (let j = 0; j < outHeight; j++) {
    const { index, weight } = taps[j];
    for (let k = 0; k < rowLength; k++) {
      let acc = 0;
      for (let t = 0; t < index.length; t++) acc = madd32(acc, src[index[t] * rowLength + k], weight[t]);
      out[j * rowLength + k] = acc;
    }
  }
  return out;
}

/** Resize along the width axis: `[H, W, C] -> [H, outW, C]`, float32. */
function resizeWidth(src: Float32Array, height: number, width: number, channels: number, outWidth: number): Float32Array {
  const out = new Float32Array(height * outWidth * channels);
  const taps = bilinearTaps(width, outWidth);
  for (let y = 0; y < height; y++) {
    for (let j = 0; j < outWidth; j++) {
      const { index, weight } = taps[j];
      for (let c = 0; c < channels; c++) {
        let acc = 0;
        for (let t = 0; t < index.length; t++) acc = madd32(acc, src[(y * width + index[t]) * channels + c], weight[t]);
        out[(y * outWidth + j) * channels + c] = acc;
      }
    }
  }
  return out;
}

/** numpy's `np.round`: half to even. */
function roundHalfEven(v: number): number {
  const r = Math.round(v); // halves go up
  return r - v === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/**
 * keras' `_resize` (bilinear, no antialias) of one image to `[outHeight, outWidth, C]`, any channel count.
 * Uint8 in, uint8 out (rounded and clipped); float32 in, float32 out.
 */
export function resizeBilinear(image: RawImage, outHeight: number, outWidth: number): RawImage {
  const { data, height, width, channels } = image;
  // keras only contracts the axes whose size changes; with none, the input comes back as is (no rounding).
  if (height === outHeight && width === outWidth) return image;
  const isInteger = data instanceof Uint8Array;
  // `x.astype(np.float32)` for integers, a copy for floats: everything below is float32.
  let x: Float32Array = Float32Array.from(data);
  if (height !== outHeight) x = resizeHeight(x, height, width * channels, outHeight);
  if (width !== outWidth) x = resizeWidth(x, outHeight, width, channels, outWidth);
  if (!isInteger) return { data: x, height: outHeight, width: outWidth, channels };
  // Integer input: `np.clip(np.round(out), x.min(), x.max()).astype(uint8)`. The clip bounds are the data's
  // own min and max (keras takes them over the whole batch; bilinear weights are convex, so either way the
  // clip only catches float32 round-off).
  let lo = 255;
  let hi = 0;
  for (let i = 0; i < data.length; i++) {
    if (data[i] < lo) lo = data[i];
    if (data[i] > hi) hi = data[i];
  }
  const out = new Uint8Array(x.length);
  for (let i = 0; i < x.length; i++) out[i] = Math.min(hi, Math.max(lo, roundHalfEven(x[i])));
  return { data: out, height: outHeight, width: outWidth, channels };
}

/** `float32(x) * float32(1/127.5) + float32(-1)`: two float32 roundings, no fused multiply-add. */
export function rescale(image: RawImage): Float32Array {
  const { data } = image;
  const out = new Float32Array(data.length);
  for (let i = 0; i < data.length; i++) out[i] = Math.fround(Math.fround(data[i] * IMAGE_SCALE) + IMAGE_OFFSET);
  return out;
}

/**
 * keras_hub's `PaliGemmaImageConverter` itself: crop, resize, rescale, keeping the channel count
 * (`float32[S, S, C]`). Use `convertImage` for model input.
 */
export function convertPixels(
  image: RawImage,
  imageSize: number,
  options: ConverterOptions = {},
): RawImage & { data: Float32Array } {
  checkImage(image, 'convertPixels');
  checkSize(imageSize, 'convertPixels');
  const box = cropBox(image.height, image.width, imageSize, imageSize);
  const cropped = options.cropToAspectRatio === false ? image : cropImage(image, box);
  const resized = resizeBilinear(cropped, imageSize, imageSize);
  return { data: rescale(resized), height: imageSize, width: imageSize, channels: image.channels };
}

function checkSize(imageSize: number, who: string): void {
  if (!Number.isInteger(imageSize) || imageSize < 1) {
    throw new Error(`${who}: imageSize must be a positive integer, got ${imageSize}`);
  }
}

/** Decode a source (path, file bytes or raw pixels) into raw pixels. */
export function loadImage(source: ImageSource, who = 'loadImage'): RawImage {
  if (typeof source === 'string') return readImage(source);
  if (source instanceof Uint8Array) return decodeImage(source);
  return checkImage(source, who);
}

/** One image, ready for the model: `float32[S, S, 3]` in [-1, 1] (HWC). */
export function convertImage(source: ImageSource, imageSize: number, options: ConverterOptions = {}): Float32Array {
  return convertPixels(toRgb(loadImage(source, 'convertImage')), imageSize, options).data;
}

/**
 * Several images, each converted on its own (so sizes may differ), stacked into `float32[B, S, S, 3]`.
 * keras_hub's converter cannot batch images of different sizes; converting one at a time gives the same
 * values as its batched call on equal sizes (the README records batched == unbatched).
 */
export function convertImages(
  sources: readonly ImageSource[],
  imageSize: number,
  options: ConverterOptions = {},
): { data: Float32Array; shape: [number, number, number, 3] } {
  checkSize(imageSize, 'convertImages');
  const plane = imageSize * imageSize * 3;
  const data = new Float32Array(sources.length * plane);
  sources.forEach((source, b) => data.set(convertImage(source, imageSize, options), b * plane));
  return { data, shape: [sources.length, imageSize, imageSize, 3] };
}
