/**
 * The text-side preprocessing fixture (spec/fixtures/text/preprocess, from keras_hub's real
 * `PaliGemmaCausalLMPreprocessor` and `PaliGemmaImageConverter`), typed for the specs. Paths are relative
 * to the repository root, ava's working directory.
 */
import { readFileSync } from 'node:fs';

export const ROOT = 'spec/fixtures/text/preprocess/';
export const TOKENIZER_ROOT = 'spec/fixtures/text/tokenizer/';

export interface TensorRef {
  readonly file: string;
  readonly dtype: 'float32' | 'int32' | 'uint8';
  readonly shape: number[];
}

export interface Pair {
  readonly prompt: string;
  readonly response: string;
  readonly prompt_ids: number[];
  readonly response_ids: number[];
}

export interface FixtureImage {
  readonly png: string;
  readonly pil_mode: string;
  readonly pixels: TensorRef;
  readonly outputs: Record<string, TensorRef>;
}

export interface Manifest {
  readonly special_ids: { bos: number; eos: number; pad: number };
  readonly pairs: Pair[];
  readonly packing: Record<'L16' | 'L32', Record<'x_token_ids' | 'x_padding_mask' | 'x_response_mask' | 'y' | 'sample_weight', TensorRef>>;
  readonly generate_preprocess: Record<string, Record<'token_ids' | 'padding_mask' | 'response_mask', TensorRef>>;
  readonly generate_postprocess: { token_ids: number[]; padding_mask: number[]; output: string }[];
  readonly image_converter: { images: Record<string, FixtureImage> };
}

export const manifest: Manifest = JSON.parse(readFileSync(ROOT + 'manifest.json', 'utf8'));

/** A raw little-endian tensor of the fixture, as a plain array of numbers. */
export function load(ref: TensorRef): number[] {
  const bytes = readFileSync(ROOT + ref.file);
  const buffer = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
  const typed = ref.dtype === 'float32' ? new Float32Array(buffer) : ref.dtype === 'int32' ? new Int32Array(buffer) : new Uint8Array(buffer);
  const size = ref.shape.reduce((a, b) => a * b, 1);
  if (typed.length !== size) throw new Error(`fixture ${ref.file}: ${typed.length} values for shape [${ref.shape.join(', ')}]`);
  return Array.from(typed);
}

/**
 * `decode([id])` of every piece, from the tokenizer fixture's vocab.json: enough to detokenize ids that
 * contain no byte pieces (a test stand-in; the real tokenizer lives in src/text/tokenizer.ts).
 */
export function pieceDecoder(): (ids: number[]) => string {
  const vocab: { pieces: [number, string, number, string, string][] } = JSON.parse(readFileSync(TOKENIZER_ROOT + 'vocab.json', 'utf8'));
  const surface = new Map(vocab.pieces.map(([id, , , type, decoded]) => [id, { type, decoded }]));
  return (ids) =>
    ids
      .map((id) => {
        const piece = surface.get(id);
        if (!piece) throw new Error(`pieceDecoder: no piece ${id}`);
        if (piece.type === 'BYTE') throw new Error(`pieceDecoder: byte piece ${id} needs the real tokenizer`);
        return piece.decoded;
      })
      .join('');
}
