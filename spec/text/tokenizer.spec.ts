/**
 * Tokenizer parity with sentencepiece 0.1.97 on the Gemma-shaped fixture (spec/fixtures/text/tokenizer, see
 * its README section 1): every encode and decode case, the vocabulary, the special ids, a round-trip
 * property, and literal errors. Rules the fixture cannot show (UNUSED pieces, runs of unknowns without
 * byte fallback, the dummy-prefix normalizer) are checked on tiny models written here, with outputs worked
 * out by hand from sentencepiece's sources.
 */
import test from 'ava';
import fc from 'fast-check';
import { readFileSync } from 'node:fs';
import {
  decodeUtf8PerByte,
  loadSentencePiece,
  loadTokenizer,
  readModelProto,
  type ModelProto,
  type NormalizerSpec,
  type PieceType,
  type SentencePiece,
  type TrainerSpec,
} from '../../src/text/tokenizer';

const DIR = 'spec/fixtures/text/tokenizer';
const SPM = `${DIR}/vocabulary.spm`;

interface EncodeCase {
  id: number;
  category: string;
  text: string;
  ids: number[];
  pieces: string[];
  decoded: string;
  roundtrip: boolean;
}
interface DecodeCase {
  note: string;
  ids: number[];
  pieces: string[];
  decoded: string;
}
interface Cases {
  encode_cases: EncodeCase[];
  decode_cases: DecodeCase[];
  not_roundtrip: { id: number; text: string; decoded: string }[];
}
const cases: Cases = JSON.parse(readFileSync(`${DIR}/cases.json`, 'utf8'));
const vocab: { pieces: [number, string, number, PieceType, string][] } = JSON.parse(
  readFileSync(`${DIR}/vocab.json`, 'utf8'),
);
const spmBytes = new Uint8Array(readFileSync(SPM));
const tok = loadSentencePiece(spmBytes, SPM);

const show = (s: string): string => {
  const j = JSON.stringify(s);
  return j.length > 40 ? `${j.slice(0, 37)}..."` : j;
};

// ---------------------------------------------------------------------------------------------------------
// Fixture parity
// ---------------------------------------------------------------------------------------------------------

test('the fixture has 352 encode cases, 27 decode cases, 13 not-roundtrip cases', (t) => {
  t.is(cases.encode_cases.length, 352);
  t.is(cases.decode_cases.length, 27);
  t.is(cases.not_roundtrip.length, 13);
});

for (const c of cases.encode_cases) {
  test(`encode #${c.id} ${c.category} ${show(c.text)}`, (t) => {
    t.deepEqual(tok.encode(c.text), c.ids);
    t.deepEqual(tok.encodePieces(c.text), c.pieces);
    t.is(tok.decode(c.ids), c.decoded);
    t.is(c.decoded === c.text, c.roundtrip);
  });
}

for (const c of cases.decode_cases) {
  test(`decode ${c.note}`, (t) => {
    t.is(tok.decode(c.ids), c.decoded);
    t.deepEqual(
      c.ids.map((id) => tok.idToPiece(id)),
      c.pieces,
    );
  });
}

test('exactly the not_roundtrip cases fail to round-trip, all because of a literal U+2581', (t) => {
  const failing = cases.encode_cases.filter((c) => tok.decode(tok.encode(c.text)) !== c.text);
  t.deepEqual(
    failing.map((c) => c.id),
    cases.not_roundtrip.map((c) => c.id),
  );
  for (const c of cases.not_roundtrip) {
    t.true(c.text.includes('\u2581'));
    t.is(tok.decode(tok.encode(c.text)), c.decoded);
    t.is(c.decoded, c.text.replaceAll('\u2581', ' '));
  }
});

test('vocab.json: every piece, score, type and single-id decode', (t) => {
  const pieces = tok.model.pieces;
  t.is(pieces.length, vocab.pieces.length);
  const mismatches = vocab.pieces.filter(
    ([id, piece, score, type, decoded]) =>
      pieces[id].piece !== piece ||
      !Object.is(pieces[id].score, Math.fround(score)) ||
      pieces[id].type !== type ||
      tok.decode([id]) !== decoded ||
      tok.pieceToId(piece) !== id,
  );
  t.deepEqual(mismatches, []);
});

test('special ids, spec fields and loc/seg offsets of the fixture', (t) => {
  t.is(tok.vocabularySize, 2352);
  t.deepEqual([tok.padId, tok.eosId, tok.bosId, tok.unkId], [0, 1, 2, 3]);
  t.is(tok.locOffset, 1200);
  t.is(tok.segOffset, 2224);
  t.is(tok.pieceToId('<loc1023>'), 2223);
  t.is(tok.pieceToId('<seg127>'), 2351);
  t.is(tok.pieceToId('\n'), 12);
  t.is(tok.pieceToId('<bos>'), 2);
  t.is(tok.pieceToId('nope!!'), undefined); // sentencepiece (and keras_hub's token_to_id) answer unk = 3
  t.is(tok.idToPiece(1200), '<loc0000>');
  t.throws(() => tok.idToPiece(2352), { message: 'tokenizer: invalid id 2352 (the vocabulary has 2352 pieces)' });
  const { trainerSpec, normalizerSpec } = tok.model;
  t.like(trainerSpec, { modelType: 'BPE', vocabSize: 1200, byteFallback: true, unkSurface: ' \u2047 ' });
  t.like(trainerSpec, { padId: 0, eosId: 1, bosId: 2, unkId: 3, bosPiece: '<bos>', eosPiece: '<eos>' });
  t.like(normalizerSpec, {
    name: 'identity',
    addDummyPrefix: false,
    removeExtraWhitespaces: false,
    escapeWhitespaces: true,
  });
  t.is(normalizerSpec.precompiledCharsmap.length, 0);
});

test('a lone surrogate (no UTF-8 form) is read as U+FFFD, as sentencepiece reads a malformed byte', (t) => {
  t.deepEqual(tok.encodePieces('a\ud800'), ['a', '<0xEF>', '<0xBF>', '<0xBD>']);
  t.is(tok.decode(tok.encode('a\ud800b\udfff')), 'a\ufffdb\ufffd');
});

test('decode: an id outside the vocabulary is a RangeError', (t) => {
  t.throws(() => tok.decode([5, -1]), {
    instanceOf: RangeError,
    message: 'tokenizer: invalid id -1 (the vocabulary has 2352 pieces)',
  });
  t.throws(() => tok.decode([2352]), { message: 'tokenizer: invalid id 2352 (the vocabulary has 2352 pieces)' });
});

// ---------------------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------------------

/** Text mixing any code point with the pieces that exercise the frozen-symbol and whitespace rules. */
const textArb = fc
  .array(
    fc.oneof(
      fc.string({ unit: 'binary', maxLength: 4 }),
      fc.string({ unit: 'grapheme', maxLength: 4 }),
      fc.constantFrom(' ', '  ', '\n', '\n\n\n\n', '\t', '<loc0001>', '<seg127>', '<bos>', '<mask>', 'the', '\u00a0'),
    ),
    { maxLength: 12 },
  )
  .map((parts) => parts.join(''))
  .filter((s) => !s.includes('\u2581'));

test('property: decode(encode(s)) == s for text without U+2581', (t) => {
  fc.assert(
    fc.property(textArb, (s) => tok.decode(tok.encode(s)) === s),
    { numRuns: 500 },
  );
  t.pass();
});

test('property: pieces name the ids, and reassemble the text with spaces escaped', (t) => {
  const isByte = (p: string): boolean => /^<0x[0-9A-F]{2}>$/.test(p);
  /** Pieces joined, each run of byte pieces read back as UTF-8. */
  const reassemble = (pieces: string[]): string => {
    let text = '';
    let bytes: number[] = [];
    for (const p of [...pieces, '']) {
      if (isByte(p)) {
        bytes.push(parseInt(p.slice(3, 5), 16));
        continue;
      }
      text += decodeUtf8PerByte(bytes) + p;
      bytes = [];
    }
    return text;
  };
  fc.assert(
    fc.property(textArb, (s) => {
      const ids = tok.encode(s);
      const pieces = tok.encodePieces(s);
      t.deepEqual(
        pieces.map((p) => tok.pieceToId(p)),
        ids,
      );
      return reassemble(pieces) === s.replaceAll(' ', '\u2581');
    }),
    { numRuns: 200 },
  );
});

test('decodeUtf8PerByte: one U+FFFD per invalid byte, valid UTF-8 as TextDecoder reads it', (t) => {
  t.is(decodeUtf8PerByte([0xe4, 0xbd]), '\ufffd\ufffd'); // TextDecoder: one U+FFFD
  t.is(new TextDecoder().decode(new Uint8Array([0xe4, 0xbd])), '\ufffd');
  t.is(decodeUtf8PerByte([0xc0, 0xaf]), '\ufffd\ufffd'); // overlong '/'
  t.is(decodeUtf8PerByte([0xed, 0xa0, 0x80]), '\ufffd\ufffd\ufffd'); // an encoded surrogate
  t.is(decodeUtf8PerByte([0xf4, 0x90, 0x80, 0x80]), '\ufffd\ufffd\ufffd\ufffd'); // above U+10FFFF
  t.is(decodeUtf8PerByte([0xef, 0xbf, 0xbd]), '\ufffd'); // a real U+FFFD is one character
  fc.assert(
    fc.property(fc.string({ unit: 'binary' }), (s) => decodeUtf8PerByte([...new TextEncoder().encode(s)]) === s),
  );
});

// ---------------------------------------------------------------------------------------------------------
// Speed: no quadratic work on long inputs, and real vocabulary sizes load quickly
// ---------------------------------------------------------------------------------------------------------

test('speed: the 5000-character case, a 200k-character text, a 257k-piece vocabulary', (t) => {
  const long = cases.encode_cases.find((c) => c.category === 'long') as EncodeCase;
  let start = performance.now();
  for (let i = 0; i < 20; i++) tok.encode(long.text);
  const perLong = (performance.now() - start) / 20;

  const huge = long.text.repeat(40);
  start = performance.now();
  const ids = tok.encode(huge);
  const hugeMs = performance.now() - start;
  t.is(tok.decode(ids), huge);

  // Gemma-sized: pad the fixture with 255k pieces that no text here can reach (private-use characters).
  const padded: ModelProto = {
    ...tok.model,
    pieces: [
      ...tok.model.pieces,
      ...Array.from({ length: 254800 }, (_, i) => ({ piece: `\ue000${i}`, score: -1e6, type: 'NORMAL' as const })),
    ],
  };
  const bytes = writeModelProto(padded);
  start = performance.now();
  const big = loadSentencePiece(bytes, 'padded.spm');
  const loadMs = performance.now() - start;
  t.is(big.vocabularySize, 257152);
  t.deepEqual(big.encode(long.text), long.ids);

  t.log(`encode 5000 chars: ${perLong.toFixed(2)} ms; 200k chars: ${hugeMs.toFixed(0)} ms; load 257k pieces: ${loadMs.toFixed(0)} ms`);
  t.true(hugeMs < 5000, `200k characters took ${hugeMs} ms`);
  t.true(loadMs < 10000, `loading 257k pieces took ${loadMs} ms`);
});

// ---------------------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------------------

test('loadTokenizer: a missing file names the path tried', (t) => {
  t.throws(() => loadTokenizer(`${DIR}/missing.spm`), {
    message: `tokenizer: no SentencePiece model found; tried ${DIR}/missing.spm`,
  });
});

test('loadTokenizer: a directory without a model names every path tried', (t) => {
  t.throws(() => loadTokenizer('spec/fixtures/text'), {
    message:
      'tokenizer: no SentencePiece model or Hugging Face tokenizer.json found; tried ' +
      'spec/fixtures/text/assets/tokenizer/vocabulary.spm, spec/fixtures/text/vocabulary.spm, ' +
      'spec/fixtures/text/tokenizer.model, spec/fixtures/text/tokenizer.json',
  });
});

test('loadTokenizer: a file, or a directory holding vocabulary.spm', (t) => {
  t.deepEqual(loadTokenizer(SPM).encode('caption en\n'), [799, 792, 498, 569, 12]);
  t.deepEqual(loadTokenizer(DIR).encode('detect cat ; dog\n'), tok.encode('detect cat ; dog\n'));
});

test('loadTokenizer: a .json file that is not a Hugging Face tokenizer.json is refused (see tokenizer_json.spec)', (t) => {
  t.throws(() => loadTokenizer(`${DIR}/vocab.json`), {
    message: `tokenizer: ${DIR}/vocab.json is not a Hugging Face tokenizer.json (no model.type)`,
  });
});

test('loadTokenizer: a file that is not a ModelProto is named', (t) => {
  t.throws(() => loadTokenizer('spec/fixtures/text/README.md'), {
    message: 'tokenizer: spec/fixtures/text/README.md is not a SentencePiece ModelProto (wire type 3 (field 4) at byte 0)',
  });
});

test('loadSentencePiece: truncated and empty models are not ModelProtos', (t) => {
  // The file opens with piece 0: 0x0a (field 1, length-delimited) 0x0e (14 bytes) `<pad>`...
  t.throws(() => loadSentencePiece(spmBytes.subarray(0, 10), 'cut.spm'), {
    message: 'tokenizer: cut.spm is not a SentencePiece ModelProto (truncated field at byte 2: 14 bytes announced)',
  });
  t.throws(() => loadSentencePiece(spmBytes.subarray(0, 1), 'cut.spm'), {
    message: 'tokenizer: cut.spm is not a SentencePiece ModelProto (truncated varint at byte 1)',
  });
  t.throws(() => loadSentencePiece(new Uint8Array(0), 'empty.spm'), {
    message: 'tokenizer: empty.spm is not a SentencePiece ModelProto (no pieces)',
  });
});

test('loadSentencePiece: a model without its unknown piece or with a duplicate piece is refused', (t) => {
  const noUnk = { ...tok.model, pieces: tok.model.pieces.filter((p) => p.type !== 'UNKNOWN') };
  t.throws(() => loadSentencePiece(writeModelProto(noUnk), 'nounk.spm'), {
    message: 'tokenizer: nounk.spm is not a SentencePiece ModelProto (0 UNKNOWN pieces, expected 1)',
  });
  const twice = { ...tok.model, pieces: [...tok.model.pieces, tok.model.pieces[300]] };
  t.throws(() => loadSentencePiece(writeModelProto(twice), 'twice.spm'), {
    message: `tokenizer: twice.spm is not a SentencePiece ModelProto (piece '${tok.model.pieces[300].piece}' is defined twice)`,
  });
  const fewBytes = { ...tok.model, pieces: tok.model.pieces.filter((p) => p.piece !== '<0x41>') };
  t.throws(() => loadSentencePiece(writeModelProto(fewBytes), 'bytes.spm'), {
    message: 'tokenizer: bytes.spm is not a SentencePiece ModelProto (byte_fallback is true but only 255 of 256 byte pieces exist)',
  });
});

test('loadSentencePiece: unigram models and precompiled normalizers are refused, naming the file', (t) => {
  const unigram = { ...tok.model, trainerSpec: { ...tok.model.trainerSpec, modelType: 'UNIGRAM' as const } };
  t.throws(() => loadSentencePiece(writeModelProto(unigram), 'gemma-unigram.spm'), {
    message: 'tokenizer: gemma-unigram.spm is a SentencePiece UNIGRAM model; only BPE (Gemma, PaliGemma) is implemented',
  });
  const nfkc = {
    ...tok.model,
    normalizerSpec: { ...tok.model.normalizerSpec, name: 'nmt_nfkc', precompiledCharsmap: new Uint8Array([1, 2, 3]) },
  };
  t.throws(() => loadSentencePiece(writeModelProto(nfkc), 'nfkc.spm'), {
    message:
      "tokenizer: nfkc.spm uses the 'nmt_nfkc' normalization rule (a precompiled charsmap); only 'identity' is implemented",
  });
});

test('readModelProto: writing the fixture back gives the same model', (t) => {
  t.deepEqual(readModelProto(writeModelProto(tok.model)), tok.model);
});

// ---------------------------------------------------------------------------------------------------------
// Rules the fixture does not exercise, on tiny hand-made models
// ---------------------------------------------------------------------------------------------------------

function tinyModel(
  pieces: [string, number, PieceType?][],
  trainer: Partial<TrainerSpec> = {},
  normalizer: Partial<NormalizerSpec> = {},
): ModelProto {
  return {
    pieces: [
      { piece: '<unk>', score: 0, type: 'UNKNOWN' },
      { piece: '<s>', score: 0, type: 'CONTROL' },
      ...pieces.map(([piece, score, type]) => ({ piece, score, type: type ?? 'NORMAL' })),
    ],
    trainerSpec: { ...tok.model.trainerSpec, byteFallback: false, bosPiece: '<s>', ...trainer },
    normalizerSpec: { ...tok.model.normalizerSpec, ...normalizer },
  };
}
const loadTiny = (m: ModelProto) => loadSentencePiece(writeModelProto(m), 'tiny.spm');
const chars: [string, number][] = [...'abc\u2581'].map((ch) => [ch, -100]);

test('tiny: equal scores merge leftmost first; a higher score wins wherever it is', (t) => {
  const tie = loadTiny(tinyModel([...chars, ['ab', -1], ['bc', -1]]));
  t.deepEqual(tie.encodePieces('abc'), ['ab', 'c']);
  const right = loadTiny(tinyModel([...chars, ['ab', -1], ['bc', -0.5]]));
  t.deepEqual(right.encodePieces('abc'), ['a', 'bc']);
});

test('tiny: a merge into an UNUSED piece is undone, one through it is kept', (t) => {
  const m = loadTiny(tinyModel([...chars, ['ab', -1, 'UNUSED'], ['abc', -2]]));
  t.deepEqual(m.encodePieces('ab'), ['a', 'b']);
  t.deepEqual(m.encodePieces('abc'), ['abc']);
});

test('tiny: without byte fallback a run of unknown characters is one <unk> holding the run', (t) => {
  const m = loadTiny(tinyModel(chars));
  t.deepEqual(m.encodePieces('a\u2603\u{1f600}b\u2603'), ['a', '\u2603\u{1f600}', 'b', '\u2603']);
  t.deepEqual(m.encode('a\u2603\u{1f600}b\u2603'), [2, 0, 3, 0]);
  t.is(m.decode(m.encode('a\u2603\u{1f600}b')), 'a \u2047 b');
});

test('tiny: add_dummy_prefix and remove_extra_whitespaces (Llama-style normalizer)', (t) => {
  const m = loadTiny(tinyModel(chars, {}, { addDummyPrefix: true, removeExtraWhitespaces: true }));
  t.deepEqual(m.encodePieces('  a   b  '), ['\u2581', 'a', '\u2581', 'b']);
  t.deepEqual(m.encodePieces('   '), []);
  t.deepEqual(m.encodePieces(' a\u2581 \u2581'), ['\u2581', 'a']); // trailing literal '▁'s go too
  t.deepEqual(m.encodePieces('\u2581'), []); // and so does the dummy prefix
  t.is(m.decode(m.encode('  a   b  ')), 'a b');
  t.is(m.decode([1, 5, 2, 5, 5, 3]), 'a  b'); // <s> ▁ a ▁ ▁ b: leading spaces trimmed, inner ones kept
  const keep = loadTiny(tinyModel(chars, {}, { addDummyPrefix: true, removeExtraWhitespaces: false }));
  t.deepEqual(keep.encodePieces(' a'), ['\u2581', '\u2581', 'a']);
  t.is(keep.decode(keep.encode(' a')), ' a'); // only the dummy prefix is stripped
});

// ---------------------------------------------------------------------------------------------------------
// A ModelProto writer, for the tests above (the inverse of readModelProto for the fields it reads)
// ---------------------------------------------------------------------------------------------------------

function writeModelProto(m: ModelProto): Uint8Array {
  const out: number[] = [];
  for (const p of m.pieces) message(out, 1, writePiece(p));
  message(out, 2, writeTrainerSpec(m.trainerSpec));
  message(out, 3, writeNormalizerSpec(m.normalizerSpec));
  if (m.denormalizerSpec) message(out, 5, writeNormalizerSpec(m.denormalizerSpec));
  return new Uint8Array(out);
}

const MODEL_TYPE_NUMBERS = { UNIGRAM: 1, BPE: 2, WORD: 3, CHAR: 4 };
const PIECE_TYPE_NUMBERS = { NORMAL: 1, UNKNOWN: 2, CONTROL: 3, USER_DEFINED: 4, UNUSED: 5, BYTE: 6 };

function writePiece(p: SentencePiece): number[] {
  const out: number[] = [];
  bytesField(out, 1, new TextEncoder().encode(p.piece));
  const f = new Uint8Array(new Float32Array([p.score]).buffer);
  out.push((2 << 3) | 5, ...f);
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
  for (const [field, value] of strings) bytesField(out, field, new TextEncoder().encode(value));
  return out;
}

function writeNormalizerSpec(s: NormalizerSpec): number[] {
  const out: number[] = [];
  bytesField(out, 1, new TextEncoder().encode(s.name));
  bytesField(out, 2, s.precompiledCharsmap);
  varintField(out, 3, +s.addDummyPrefix);
  varintField(out, 4, +s.removeExtraWhitespaces);
  varintField(out, 5, +s.escapeWhitespaces);
  return out;
}

/** Varint of a non-negative number, or of a negative int32 as its 10-byte two's complement. */
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
function message(out: number[], field: number, body: number[]): void {
  bytesField(out, field, body);
}
