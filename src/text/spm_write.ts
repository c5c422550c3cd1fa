/**
 * Writing a SentencePiece ModelProto (sentencepiece_model.proto): the inverse of `readModelProto` for the
 * fields it reads. Used to build the vocabulary of the shapes model (src/train/shapes_vocab.ts) and, in the
 * tests, hand-made models.
 */
import type { ModelProto, NormalizerSpec, SentencePiece, TrainerSpec } from './tokenizer';

const MODEL_TYPE_NUMBERS = { UNIGRAM: 1, BPE: 2, WORD: 3, CHAR: 4 } as const;
const PIECE_TYPE_NUMBERS = { NORMAL: 1, UNKNOWN: 2, CONTROL: 3, USER_DEFINED: 4, UNUSED: 5, BYTE: 6 } as const;

export function writeModelProto(m: ModelProto): Uint8Array {
  const out: number[] = [];
  for (const p of m.pieces) bytesField(out, 1, writePiece(p));
  bytesField(out, 2, writeTrainerSpec(m.trainerSpec));
  bytesField(out, 3, writeNormalizerSpec(m.normalizerSpec));
  if (m.denormalizerSpec) bytesField(out, 5, writeNormalizerSpec(m.denormalizerSpec));
  return new Uint8Array(out);
}

const utf8 = (s: string): Uint8Array => new TextEncoder().encode(s);

function writePiece(p: SentencePiece): number[] {
  const out: number[] = [];
  bytesField(out, 1, utf8(p.piece));
  // field 2, wire type 5 (fixed32): the score as a little-endian float32
  out.push((2 << 3) | 5, ...new Uint8Array(new Float32Array([p.score]).buffer));
  varintField(out, 3, PIECE_TYPE_NUMBERS[p.type]);
  return out;
}

function writeTrainerSpec(s: TrainerSpec): number[] {
  const out: number[] = [];
  varintField(out, 3, MODEL_TYPE_NUMBERS[s.modelType]);
  varintField(out, 4, s.vocabSize);
  varintField(out, 24, +s.treatWhitespaceAsSuffix);
  varintField(out, 35, +s.byteFallback);
  [s.unkId, s.bosId, s.eosId, s.padId].forEach((id, i) => varintField(out, 40 + i, id));
  const strings: [number, string][] = [
    [44, s.unkSurface],
    [45, s.unkPiece],
    [46, s.bosPiece],
    [47, s.eosPiece],
    [48, s.padPiece],
  ];
  for (const [field, value] of strings) bytesField(out, field, utf8(value));
  return out;
}

function writeNormalizerSpec(s: NormalizerSpec): number[] {
  const out: number[] = [];
  bytesField(out, 1, utf8(s.name));
  bytesField(out, 2, s.precompiledCharsmap);
  varintField(out, 3, +s.addDummyPrefix);
  varintField(out, 4, +s.removeExtraWhitespaces);
  varintField(out, 5, +s.escapeWhitespaces);
  return out;
}

/** Varint of a non-negative number, or of a negative int32 as its 10-byte two's complement (proto's int32). */
function varint(out: number[], n: number): void {
  let v = BigInt.asUintN(64, BigInt(n));
  do {
    const b = Number(v & 0x7fn);
    v >>= 7n;
    out.push(v > 0n ? b | 0x80 : b);
  } while (v > 0n);
}
function varintField(out: number[], field: number, n: number): void {
  varint(out, field << 3);
  varint(out, n);
}
function bytesField(out: number[], field: number, bytes: ArrayLike<number>): void {
  varint(out, (field << 3) | 2);
  varint(out, bytes.length);
  for (let i = 0; i < bytes.length; i++) out.push(bytes[i]);
}
