/**
 * PaliGemmaCausalLM, strings in and strings out: keras_hub's preprocessor (image converter + prompt
 * packing), `generate`, and its postprocessor (drop padding and special ids, detokenize).
 *
 *   const lm = loadCausalLM('checkpoints/tiny');
 *   const { texts } = await generateText(lm, { images: ['cat.png'], prompts: ['caption en\n'] }, { maxLength: 32 });
 */
import { tf } from '../../dsl/tf';
import * as d from '../../dsl';
import { fromPreset, resolvePreset } from '../runtime/preset';
import { loadTokenizer, type Tokenizer } from '../text/tokenizer';
import { convertImages, type ImageSource } from '../preprocess/image';
import { generatePostprocess, packGenerationBatch, specialTokenIds } from '../preprocess/packing';
import { generate, type GenerateOptions, type GenerateOutput } from './generate';
import type { PaliGemmaParams } from '../../models/paligemma';
import type { Images } from '../../models/siglip';

export interface CausalLM {
  readonly params: PaliGemmaParams;
  readonly tokenizer: Tokenizer;
}

/** Params and tokenizer of a preset (a directory or any name `fromPreset` resolves). */
export function loadCausalLM(preset: string, options: { onProgress?: (done: number, total: number, what: string) => void } = {}): CausalLM {
  const params = fromPreset(preset, options);
  // fromPreset succeeded, so the preset's files are on disk: its tokenizer is beside the weights
  const dir = resolvePreset(preset).dir!;
  try {
    return { params, tokenizer: loadTokenizer(dir) };
  } catch (e) {
    d.disposeTree(params);
    throw e;
  }
}

export interface TextInputs {
  /** Image files, encoded bytes or raw pixels (converted as keras_hub's PaliGemmaImageConverter does), or a converted [batch, S, S, 3] tensor. */
  readonly images: readonly ImageSource[] | Images;
  readonly prompts: readonly string[];
}

export interface TextOptions extends Omit<GenerateOptions, 'maxLength' | 'stopTokenIds'> {
  /** Prompt + answer tokens, <bos> included (keras_hub's max_length). */
  readonly maxLength: number;
  /** Stop ids; default [eos] (keras' "auto"). `null`: never stop early. */
  readonly stopTokenIds?: readonly number[] | null;
  /** Return only the generated text (keras' strip_prompt). */
  readonly stripPrompt?: boolean;
}

export interface TextOutput {
  readonly texts: string[];
  readonly output: GenerateOutput;
  /** Generated tokens over all rows, and the seconds it took (prefill included). */
  readonly generatedTokens: number;
  readonly seconds: number;
}

export async function generateText(lm: CausalLM, inputs: TextInputs, options: TextOptions): Promise<TextOutput> {
  const { params, tokenizer } = lm;
  const size = params.config.image_size;
  const L = options.maxLength;
  const prompts = inputs.prompts.map((p) => tokenizer.encode(p));
  prompts.forEach((ids, r) => {
    if (ids.length + 1 >= L) {
      throw new Error(`prompt ${r} is ${ids.length + 1} tokens with <bos>; max length ${L} leaves no room to generate (raise the max length or shorten the prompt)`);
    }
  });
  const packed = packGenerationBatch(prompts, undefined, L, { pad: tokenizer.padId, eos: tokenizer.eosId, bos: tokenizer.bosId });
  const rows = (a: Int32Array) => Array.from({ length: prompts.length }, (_, r) => a.slice(r * L, (r + 1) * L));
  const ownImages = !(inputs.images instanceof d.Named);
  let images: Images;
  if (inputs.images instanceof d.Named) {
    images = inputs.images as Images;
  } else {
    const converted = convertImages(inputs.images as readonly ImageSource[], size);
    images = d.named(tf.tensor(converted.data, [...converted.shape]), ['batch', 'height', 'width', 'channels'] as const);
  }
  if (images.size('batch') !== prompts.length) {
    if (ownImages) images.dispose();
    throw new Error(`generateText: ${images.size('batch')} images for ${prompts.length} prompts`);
  }
  const t0 = performance.now();
  let output: GenerateOutput;
  try {
    output = await generate(params, { images, tokenIds: rows(packed.tokenIds), paddingMask: rows(packed.paddingMask) }, {
      ...options,
      maxLength: L,
      stopTokenIds: options.stopTokenIds === null ? undefined : options.stopTokenIds ?? [tokenizer.eosId],
    });
  } finally {
    if (ownImages) images.dispose();
  }
  const seconds = (performance.now() - t0) / 1000;
  const special = specialTokenIds({ pad: tokenizer.padId, eos: tokenizer.eosId, bos: tokenizer.bosId });
  let generatedTokens = 0;
  const texts = output.tokenIds.map((ids, r) => {
    const start = options.stripPrompt ? output.promptLengths[r] : 0;
    const mask = Uint8Array.from(output.paddingMask[r], (m, i) => (i < start || i >= output.promptLengths[r] + output.steps ? 0 : m));
    if (!options.stripPrompt) for (let i = 0; i < output.promptLengths[r]; i++) mask[i] = 1;
    generatedTokens += Math.min(output.steps, L - output.promptLengths[r]);
    return tokenizer.decode(generatePostprocess(ids, mask, special));
  });
  return { texts, output, generatedTokens, seconds };
}
