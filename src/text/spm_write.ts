/**
 * Writing a `sentencepiece.ModelProto`: the fields `readModelProto` reads (pieces, the trainer spec's model
 * type, vocabulary size, special ids and pieces, whitespace and byte-fallback flags, both normalizer specs),
 * every one written explicitly so that a reader's proto2 defaults never decide anything. What this writes,
 * read back, is the same `ModelProto` and so the same tokenizer (spec/text/spm_write.spec.ts). Used to save a
 * preset's `assets/tokenizer/vocabulary.spm` whatever the tokenizer was loaded from.
 */
import type { ModelProto, NormalizerSpec, PieceType, TrainerSpec } from './tokenizer';

const PIECE_TYPE: Record<PieceType, number> = { NORMAL: 1, UNKNOWN: 2, CONTROL: 3, USER_DEFINED: 4, UNUSED: 5, BYTE: 6 };
const MODEL_TYPE: Record<TrainerSpec['modelType'], number> = { UNIGRAM: 1, BPE: 2, WORD: 3, CHAR: 4 };

/** Bytes of one message, built field by field. */
class Writer {
  private readonly parts: number[] = [];
  private varint(n: number): void {
    // negative int32s are 10-byte two's-complement varints (proto2 int32)
    let lo = n >>> 0;
    let hi = n < 0 ? 0xffffffff : Math.floor(n / 2 ** 32) >>> 0;
    for (;;) {
      const b = lo & 0x7f;
      lo = ((lo >>> 7) | (hi << 25)) >>> 0;
      hi >>>= 7;
      if (lo === 0 && hi === 0) {
        this.parts.push(b);
        return;
      }
      this.parts.push(b | 0x80);
    }
  }
  private tag(field: number, wire: number): void {
    this.varint(field * 8 + wire);
  }
  int(field: number, n: number): this {
    this.tag(field, 0);
    this.varint(n);
    return this;
  }
  bool(field: number, b: boolean): this {
    return this.int(field, b ? 1 : 0);
  }
  float(field: number, x: number): this {
    this.tag(field, 5);
    const b = new Uint8Array(4);
    new DataView(b.buffer).setFloat32(0, x, true);
    this.parts.push(...b);
    return this;
  }
  bytes(field: number, b: Uint8Array): this {
    this.tag(field, 2);
    this.varint(b.length);
    for (const x of b) this.parts.push(x);
    return this;
  }
  string(field: number, s: string): this {
    return this.bytes(field, new TextEncoder().encode(s));
  }
  message(field: number, w: Writer): this {
    return this.bytes(field, w.finish());
  }
  finish(): Uint8Array {
    return Uint8Array.from(this.parts);
  }
}

function normalizer(s: NormalizerSpec): Writer {
  return new Writer()
    .string(1, s.name)
    .bytes(2, s.precompiledCharsmap)
    .bool(3, s.addDummyPrefix)
    .bool(4, s.removeExtraWhitespaces)
    .bool(5, s.escapeWhitespaces);
}

export function encodeModelProto(m: ModelProto): Uint8Array {
  const w = new Writer();
  for (const p of m.pieces) w.message(1, new Writer().string(1, p.piece).float(2, p.score).int(3, PIECE_TYPE[p.type]));
  const t = m.trainerSpec;
  w.message(
    2,
    new Writer()
      .int(3, MODEL_TYPE[t.modelType])
      .int(4, t.vocabSize)
      .bool(24, t.treatWhitespaceAsSuffix)
      .bool(35, t.byteFallback)
      .int(40, t.unkId)
      .int(41, t.bosId)
      .int(42, t.eosId)
      .int(43, t.padId)
      .string(44, t.unkSurface)
      .string(45, t.unkPiece)
      .string(46, t.bosPiece)
      .string(47, t.eosPiece)
      .string(48, t.padPiece),
  );
  w.message(3, normalizer(m.normalizerSpec));
  if (m.denormalizerSpec) w.message(5, normalizer(m.denormalizerSpec));
  return w.finish();
}
