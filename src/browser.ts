/**
 * `paligemma-ts/browser`: the model path for browsers (dist/browser.mjs, one ES module with TensorFlow.js
 * inside). Everything comes in as bytes: a preset from `fetch` (`fetchCausalLM(url)`) or from buffers you
 * hold (`causalLMFromBytes`), pictures decoded by the browser (`decodeImageInBrowser`) or raw pixels.
 *
 * What stays in Node (dist/index.js): file paths (fromPreset, loadTokenizer, readImage), the kaggle/hf
 * caches, checkpoint writers, the CLI, and PNG bytes through pngjs (decode PNGs with `decodeImageInBrowser`;
 * JPEG bytes decode with `decodeImage` exactly as in Node, jpeg-js being plain JavaScript; a browser's own
 * JPEG decoder rounds differently). The browser build replaces Node's modules by stubs that throw, naming
 * the function (scripts/build.mjs), so a Node-only path reached by mistake says so instead of misbehaving.
 *
 * wasm: tfjs fetches its .wasm files from `setWasmPaths(prefix)` (serve node_modules/@tensorflow/
 * tfjs-backend-wasm/dist/ or use a CDN); threads need a cross-origin-isolated page, as in tfjs.
 */
import { decodeConfig } from '../checkpoints/config';
import { openH5Bytes } from '../checkpoints/h5';
import { decodeParams, parameterCount, type WeightMap } from '../checkpoints/params';
import { tf } from '../dsl/tf';
import type { PaliGemmaParams } from '../models/paligemma';
import type { CausalLM } from './generate/causal_lm';
import type { RawImage } from './preprocess/image';
import { assertFitsBackend } from './runtime/backend';
import { loadSentencePiece, loadTokenizerJson, type Tokenizer } from './text/tokenizer';

export { tf } from '../dsl/tf';
export * as d from '../dsl';
export type { Named, Key } from '../dsl';
export { setWasmPaths } from '@tensorflow/tfjs-backend-wasm';
export { setBackend, backendInfo, availableBackends, backendNames, type BackendInfo, type BackendName, type BackendRequest } from './runtime/backend';

export * from '../models/config';
export { backbone, logits, prefixLmMask, type PaliGemmaParams, type BackboneInputs } from '../models/paligemma';
export { decodeConfig } from '../checkpoints/config';
export { decodeParams, kerasLayout, parameterCount } from '../checkpoints/params';
export { openH5Bytes, type H5File } from '../checkpoints/h5';
export { loadSentencePiece, loadTokenizerJson, type Tokenizer } from './text/tokenizer';
export { checkImage, convertImage, convertImages, convertPixels, decodeImage, toRgb, type RawImage } from './preprocess/image';
export { parseDetections, segCodes } from './preprocess/outputs';
export { generate, greedy, topK, topP, type Sampler } from './generate/generate';
export { generateText, type CausalLM, type TextInputs, type TextOptions, type TextOutput } from './generate/causal_lm';

/** The files of a keras_hub preset, as bytes (or parsed JSON for the config). */
export interface PresetBytes {
  /** config.json: its text, its bytes, or the parsed object. */
  readonly config: string | Uint8Array | ArrayBuffer | object;
  /** model.weights.h5 (a single-file preset). */
  readonly weights: Uint8Array | ArrayBuffer;
  /** assets/tokenizer/vocabulary.spm (SentencePiece), or a Hugging Face tokenizer.json (text or parsed). */
  readonly tokenizer: Uint8Array | ArrayBuffer | { readonly json: string | object };
}

const text = (b: Uint8Array | ArrayBuffer): string => new TextDecoder().decode(b);

/**
 * PaliGemma params and tokenizer from a preset's bytes. The config is checked (strictly, as in Node), then
 * every weight's key and shape against it before any tensor is made; `name` labels errors as a path would.
 */
export function causalLMFromBytes(files: PresetBytes, name = 'preset'): CausalLM {
  const configFile = `${name}/config.json`;
  let json: unknown = files.config;
  if (typeof json === 'string' || json instanceof Uint8Array || json instanceof ArrayBuffer) {
    const source = typeof json === 'string' ? json : text(json);
    try {
      json = JSON.parse(source);
    } catch (e) {
      throw new Error(`${configFile}: not valid JSON: ${(e as Error).message}`);
    }
  }
  const config = decodeConfig(json, configFile);
  const tokenizer = tokenizerFromBytes(files.tokenizer, name);
  const count = parameterCount(config);
  assertFitsBackend(count * 4, `${name}: ${count.toLocaleString('en-US')} parameters as float32`);
  const h5 = openH5Bytes(files.weights, `${name}/model.weights.h5`);
  try {
    const weights: WeightMap = new Map(
      [...h5.datasets].map(([path, ds]) => [path, { shape: ds.shape, file: h5.file, read: () => h5.readFloat32(path) }]),
    );
    const params = tf.tidy(() => decodeParams(config, weights, h5.file) as unknown as tf.TensorContainer) as unknown as PaliGemmaParams;
    return { params, tokenizer };
  } finally {
    h5.close();
  }
}

function tokenizerFromBytes(source: PresetBytes['tokenizer'], name: string): Tokenizer {
  if (source instanceof Uint8Array || source instanceof ArrayBuffer) {
    const bytes = source instanceof Uint8Array ? source : new Uint8Array(source);
    return loadSentencePiece(bytes, `${name}/assets/tokenizer/vocabulary.spm`);
  }
  return loadTokenizerJson(source.json, `${name}/tokenizer.json`);
}

/**
 * Fetches a keras_hub preset folder served at `baseUrl` (config.json, model.weights.h5,
 * assets/tokenizer/vocabulary.spm) and loads it with `causalLMFromBytes`. Sharded presets
 * (model.weights.json) are not read here: serve a single-file preset.
 */
export async function fetchCausalLM(baseUrl: string | URL, options: { fetch?: typeof fetch } = {}): Promise<CausalLM> {
  const get = options.fetch ?? fetch;
  const base = new URL(String(baseUrl).endsWith('/') ? String(baseUrl) : `${baseUrl}/`, globalThis.location?.href);
  const bytes = async (file: string): Promise<ArrayBuffer> => {
    const url = new URL(file, base);
    const response = await get(url);
    if (!response.ok) throw new Error(`fetchCausalLM: ${url}: HTTP ${response.status} ${response.statusText}`);
    return response.arrayBuffer();
  };
  const [config, weights, tokenizer] = await Promise.all([
    bytes('config.json'),
    bytes('model.weights.h5'),
    bytes('assets/tokenizer/vocabulary.spm'),
  ]);
  return causalLMFromBytes({ config, weights, tokenizer }, base.href.replace(/\/$/, ''));
}

/**
 * A PNG, JPEG (or any format the browser reads) decoded by the browser into raw pixels, as the Node decoder
 * (`decodeImage`) gives them: no colour-space conversion, no premultiplied alpha, and the channels Node
 * gives: a PNG's by its colour type (gray 1, RGB 3, gray+alpha and RGBA 4, palette 3 or 4 when some entry is
 * not opaque), 3 for JPEG, else 3 or 4 by alpha. (Node's pngjs ignores gamma and ICC profiles; a browser
 * with `colorSpaceConversion: 'none'` should too.)
 */
export async function decodeImageInBrowser(source: Blob | ArrayBuffer | Uint8Array): Promise<RawImage> {
  const bytes = source instanceof Blob ? new Uint8Array(await source.arrayBuffer()) : source instanceof Uint8Array ? source : new Uint8Array(source);
  // a Blob takes no view of a SharedArrayBuffer: copy those (slice() makes a plain ArrayBuffer)
  const part = (bytes.buffer instanceof ArrayBuffer ? bytes : bytes.slice()) as Uint8Array<ArrayBuffer>;
  const bitmap = await createImageBitmap(new Blob([part]), { colorSpaceConversion: 'none', premultiplyAlpha: 'none' });
  let rgba: Uint8ClampedArray;
  const { width, height } = bitmap;
  try {
    const canvas = new OffscreenCanvas(width, height);
    const context = canvas.getContext('2d', { willReadFrequently: true });
    if (context == null) throw new Error('decodeImageInBrowser: no 2d canvas context');
    context.drawImage(bitmap, 0, 0);
    rgba = context.getImageData(0, 0, width, height).data;
  } finally {
    bitmap.close();
  }
  const n = width * height;
  const opaque = (): boolean => {
    for (let p = 0; p < n; p++) if (rgba[4 * p + 3] !== 255) return false;
    return true;
  };
  const isPng = bytes.length > 25 && bytes[0] === 0x89 && bytes[1] === 0x50 && bytes[2] === 0x4e && bytes[3] === 0x47;
  const colorType = isPng ? bytes[25] : -1; // IHDR: 8 signature + 8 chunk head + 9 bytes in
  const isJpeg = bytes[0] === 0xff && bytes[1] === 0xd8;
  const channels: 1 | 3 | 4 =
    colorType === 0 ? 1 : colorType === 2 || isJpeg ? 3 : colorType === 4 || colorType === 6 ? 4 : opaque() ? 3 : 4;
  if (channels === 4) return { data: new Uint8Array(rgba.buffer.slice(0)), height, width, channels };
  const data = new Uint8Array(n * channels);
  for (let p = 0; p < n; p++) for (let c = 0; c < channels; c++) data[channels * p + c] = rgba[4 * p + c];
  return { data, height, width, channels };
}
