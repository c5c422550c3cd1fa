/**
 * PaliGemmaCausalLM, strings in and strings out: keras_hub's preprocessor (image converter + prompt
 * packing), `generate`, and its postprocessor (drop padding and special ids, detokenize).
 *
 *   const lm = loadCausalLM('checkpoints/tiny');
 *   const { texts, finishReasons } = await generateText(lm, { images: ['cat.png'], prompts: ['caption en'] }, {
 *     maxNewTokens: 32,
 *     onToken: ({ row, piece }) => process.stdout.write(piece),
 *   });
 */
import { tf } from '../../dsl/tf';
import * as d from '../../dsl';
import { fromPreset, fromPresetAsync, resolvePreset } from '../runtime/preset';
import { loadTokenizer, type Tokenizer } from '../text/tokenizer';
import { convertImages, type ImageSource } from '../preprocess/image';
import { generatePostprocess, packGenerationBatch, specialTokenIds } from '../preprocess/packing';
import { checkGenerationBounds, generate, type FinishReason, type GenerateOptions, type GenerateOutput, type TokenEvent } from './generate';
import type { PaliGemmaParams } from '../../models/paligemma';
import type { Images } from '../../models/siglip';

export interface CausalLM {
  readonly params: PaliGemmaParams;
  readonly tokenizer: Tokenizer;
}

/** Params and tokenizer of a preset (a directory or any name `fromPreset` resolves). */
export function loadCausalLM(preset: string, options: { onProgress?: (done: number, total: number, what: string) => void } = {}): CausalLM {
  return withTokenizer(preset, fromPreset(preset, options));
}

/** The preset's tokenizer beside its loaded params (the params are disposed if the tokenizer fails). */
function withTokenizer(preset: string, params: PaliGemmaParams): CausalLM {
  // the params loaded, so the preset's files are on disk: its tokenizer is beside the weights
  const dir = resolvePreset(preset).dir!;
  try {
    return { params, tokenizer: loadTokenizer(dir) };
  } catch (e) {
    d.disposeTree(params);
    throw e;
  }
}

/**
 * `loadCausalLM` without freezing the event loop: the weights are read by `fromPresetAsync` (one weight
 * per macrotask, `onProgress` after each), then the tokenizer. Both forms stay: `loadCausalLM` is keras_hub's
 * synchronous from_preset, this one transformers.js' awaited from_pretrained.
 */
export async function loadCausalLMAsync(preset: string, options: { onProgress?: (done: number, total: number, what: string) => void } = {}): Promise<CausalLM> {
  return withTokenizer(preset, await fromPresetAsync(preset, options));
}

export interface TextInputs {
  /** Image files, encoded bytes or raw pixels (converted as keras_hub's PaliGemmaImageConverter does), or a converted [batch, S, S, 3] tensor. */
  readonly images: readonly ImageSource[] | Images;
  readonly prompts: readonly string[];
}

/** New tokens per row when neither maxLength nor maxNewTokens is given (the CLI's default too). */
export const DEFAULT_MAX_NEW_TOKENS = 64;

/** One streamed token with its text: `text` is the row's answer so far, `piece` what it added. */
export interface TextTokenEvent extends TokenEvent {
  /** The generated text so far (prompt excluded, special ids dropped), as `texts[row]` with stripPrompt. */
  readonly text: string;
  /**
   * The text this token added: `text` minus the previous event's `text`. Byte-fallback tokens that end
   * inside a UTF-8 character add '' until the character is complete (a trailing U+FFFD is held back).
   */
  readonly piece: string;
}

export interface TextOptions extends Omit<GenerateOptions, 'maxLength' | 'maxNewTokens' | 'stopTokenIds' | 'onToken'> {
  /** Prompt + answer tokens, <bos> included (keras_hub's max_length): the buffer. Default: longest prompt + maxNewTokens. */
  readonly maxLength?: number;
  /** Answer tokens per row at most (transformers' max_new_tokens). Default DEFAULT_MAX_NEW_TOKENS when maxLength is not given. */
  readonly maxNewTokens?: number;
  /** Stop ids; default [eos] (keras' "auto"). `null`: never stop early. */
  readonly stopTokenIds?: readonly number[] | null;
  /** Return only the generated text (keras' strip_prompt). */
  readonly stripPrompt?: boolean;
  /** Streaming: each kept token with its row's text so far (see GenerateOptions.onToken for the order). */
  readonly onToken?: (event: TextTokenEvent) => void | Promise<void>;
  /** Take prompts exactly as given (keras_hub); default: end each with "\n" (see `promptText`). */
  readonly rawPrompts?: boolean;
}

export interface TextOutput {
  readonly texts: string[];
  /** Per row: 'stop' (a stop id, by default <eos>) or 'length' (maxNewTokens or maxLength reached). */
  readonly finishReasons: FinishReason[];
  readonly output: GenerateOutput;
  /** Generated tokens over all rows, and the seconds it took (prefill included). */
  readonly generatedTokens: number;
  readonly seconds: number;
}

/**
 * The prompt PaliGemma is given: the text with "\n" appended unless it already ends with one. PaliGemma
 * was trained on "<bos>prefix\n" (big_vision); Hugging Face's PaliGemmaProcessor always appends "\n",
 * keras_hub appends nothing and its examples write "caption en\n". Appending only when missing gives both
 * conventions' intended prompt ("caption en" and "caption en\n" are the same prompt). `generateText`, and
 * the CLI's `run` and `generate`, all use it; `rawPrompts: true` turns it off.
 */
export const promptText = (prompt: string): string => (prompt.endsWith('\n') ? prompt : `${prompt}\n`);

/** Text of generated ids as streamed: special ids dropped, a trailing incomplete UTF-8 character held back. */
function streamedText(tokenizer: Tokenizer, ids: readonly number[], special: ReadonlySet<number>, final: boolean): string {
  const text = tokenizer.decode(ids.filter((id) => !special.has(id)));
  return final ? text : text.replace(/\uFFFD+$/, '');
}

export async function generateText(lm: CausalLM, inputs: TextInputs, options: TextOptions = {}): Promise<TextOutput> {
  const { params, tokenizer } = lm;
  const size = params.config.image_size;
  const texts0 = options.rawPrompts ? inputs.prompts : inputs.prompts.map(promptText);
  const prompts = texts0.map((p) => tokenizer.encode(p));
  const longest = Math.max(0, ...prompts.map((ids) => ids.length + 1));
  const maxNewTokens = options.maxNewTokens ?? (options.maxLength === undefined ? DEFAULT_MAX_NEW_TOKENS : undefined);
  if (maxNewTokens !== undefined && (!Number.isInteger(maxNewTokens) || maxNewTokens < 1)) {
    throw new Error(`generateText: maxNewTokens must be a positive integer, got ${maxNewTokens}`);
  }
  const L = options.maxLength ?? longest + maxNewTokens!;
  checkGenerationBounds(params.config, prompts.length, L, 'generateText');
  prompts.forEach((ids, r) => {
    if (ids.length + 1 >= L) {
      throw new Error(`prompt ${r} is ${ids.length + 1} tokens with <bos>; max length ${L} leaves no room to generate (raise the max length or shorten the prompt)`);
    }
  });
  const packed = packGenerationBatch(prompts, undefined, L, { pad: tokenizer.padId, eos: tokenizer.eosId, bos: tokenizer.bosId });
  const rows = (a: Int32Array) => Array.from({ length: prompts.length }, (_, r) => a.slice(r * L, (r + 1) * L));
  const special = specialTokenIds({ pad: tokenizer.padId, eos: tokenizer.eosId, bos: tokenizer.bosId });
  const specialSet = new Set(special);
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
  // streaming: each row's generated ids and the text already reported
  const generated: number[][] = prompts.map(() => []);
  const reported: string[] = prompts.map(() => '');
  const onToken = options.onToken;
  const t0 = performance.now();
  let output: GenerateOutput;
  try {
    output = await generate(params, { images, tokenIds: rows(packed.tokenIds), paddingMask: rows(packed.paddingMask) }, {
      ...options,
      maxLength: L,
      maxNewTokens,
      stopTokenIds: options.stopTokenIds === null ? undefined : options.stopTokenIds ?? [tokenizer.eosId],
      onToken: onToken
        ? (e) => {
            generated[e.row].push(e.token);
            const text = streamedText(tokenizer, generated[e.row], specialSet, e.finish !== undefined);
            const piece = text.startsWith(reported[e.row]) ? text.slice(reported[e.row].length) : text;
            reported[e.row] = text;
            return onToken({ ...e, text, piece });
          }
        : undefined,
    });
  } finally {
    if (ownImages) images.dispose();
  }
  const seconds = (performance.now() - t0) / 1000;
  const generatedTokens = output.generatedLengths.reduce((a, b) => a + b, 0);
  const texts = output.tokenIds.map((ids, r) => {
    const start = options.stripPrompt ? output.promptLengths[r] : 0;
    const end = output.promptLengths[r] + output.generatedLengths[r];
    const mask = Uint8Array.from(output.paddingMask[r], (m, i) => (i < start || i >= end ? 0 : m));
    if (!options.stripPrompt) for (let i = 0; i < output.promptLengths[r]; i++) mask[i] = 1;
    return tokenizer.decode(generatePostprocess(ids, mask, special));
  });
  return { texts, finishReasons: output.finishReasons, output, generatedTokens, seconds };
}
