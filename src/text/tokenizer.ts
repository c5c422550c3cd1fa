/**
 * Tokenizer: Gemma's / PaliGemma's SentencePiece model, read from its ModelProto and run in plain TypeScript.
 *
 * What: `loadSentencePiece(bytes)` reads a SentencePiece `ModelProto` (the `.spm` / `tokenizer.model` file)
 * and returns an encoder/decoder that reproduces sentencepiece 0.1.97 (the library keras_hub's
 * `PaliGemmaTokenizer` wraps) id for id on BPE models with an identity normalizer: Gemma, PaliGemma.
 *
 * Why hand-written: the proto is tiny (pieces of piece/score/type plus a dozen scalar options), so a
 * short wire-format reader costs less than a protobuf runtime and a generated schema; and the encoder
 * must match sentencepiece's exact merge order, which no JS BPE library promises.
 *
 * Rules reproduced (file names are sentencepiece's `src/`, tag v0.1.97):
 * - Reading (model_interface.cc InitializePieces): NORMAL, USER_DEFINED and UNUSED pieces are merge
 *   candidates; CONTROL, UNKNOWN and BYTE pieces are "reserved" and looked up first by PieceToId; exactly
 *   one UNKNOWN piece; with byte_fallback all 256 `<0xNN>` pieces must exist.
 * - Normalizer (normalizer.cc Normalize): only the identity rule (no precompiled charsmap, so no NFKC).
 *   ' ' becomes '▁' (escape_whitespaces); a '▁' is prepended (add_dummy_prefix, appended with
 *   treat_whitespace_as_suffix) and space runs are squeezed and trimmed (remove_extra_whitespaces) only when
 *   the model asks, which Gemma's does not. Malformed UTF-8 (here: a lone surrogate) becomes U+FFFD.
 * - Initial symbols (bpe_model.cc SampleEncode): left to right, the longest USER_DEFINED piece at each
 *   position is one frozen symbol (`<loc0123>`, "\n\n\n", even inside a word); otherwise one character.
 *   CONTROL pieces (`<bos>`) are never matched in text.
 * - Merges: repeatedly merge the adjacent non-frozen pair whose concatenation is a piece, highest score
 *   first, leftmost on ties (SymbolPairComparator); merges into UNUSED pieces are undone afterwards.
 * - Ids (sentencepiece_processor.cc PopulateSentencePieceText): a symbol that is not a piece is unknown;
 *   with byte_fallback it becomes its UTF-8 bytes as `<0xNN>` pieces, otherwise runs of unknown symbols
 *   become one `<unk>`.
 * - Decoding (sentencepiece_processor.cc Decode): CONTROL -> "", UNKNOWN -> unk_surface (" ⁇ "), '▁' ->
 *   ' ' (the leading one is kept unless add_dummy_prefix or remove_extra_whitespaces); runs of byte pieces
 *   are decoded as UTF-8 with one U+FFFD per invalid byte (util.cc DecodeUTF8; WHATWG TextDecoder gives one
 *   U+FFFD per maximal invalid subpart instead, e.g. 1 for a truncated 3-byte sequence, so it is not used).
 *
 * Not implemented, refused with an error naming the file: UNIGRAM / WORD / CHAR models, precompiled
 * normalizers (nmt_nfkc...).
 *
 * A Hugging Face `tokenizer.json` of Gemma's BPE form (as transformers converts a SentencePiece model) is read
 * into the same ModelProto by `src/tokenizer_json.ts` and runs through the same encoder (`loadTokenizerJson`);
 * that file says how merge ranks become scores and where HF's own order could differ.
 */
import { existsSync, statSync } from 'node:fs';
import { FormatError, guarded } from '../../checkpoints/errors';
import { jsonDepth, MAX_JSON_BYTES, MAX_JSON_DEPTH, readRegularFile } from '../../checkpoints/files';
import { join } from 'node:path';
import { tokenizerJsonKind, tokenizerJsonToModelProto } from './tokenizer_json';

// ---------------------------------------------------------------------------------------------------------
// ModelProto (sentencepiece_model.proto), the fields this tokenizer uses
// ---------------------------------------------------------------------------------------------------------

export type PieceType = 'NORMAL' | 'UNKNOWN' | 'CONTROL' | 'USER_DEFINED' | 'UNUSED' | 'BYTE';
export type ModelType = 'UNIGRAM' | 'BPE' | 'WORD' | 'CHAR';

export interface SentencePiece {
  readonly piece: string;
  readonly score: number; // float32
  readonly type: PieceType;
}

export interface TrainerSpec {
  readonly modelType: ModelType;
  readonly vocabSize: number; // as trained: PaliGemma appends loc/seg pieces after it
  readonly treatWhitespaceAsSuffix: boolean;
  readonly byteFallback: boolean;
  readonly unkId: number;
  readonly bosId: number;
  readonly eosId: number;
  readonly padId: number;
  readonly unkPiece: string;
  readonly bosPiece: string;
  readonly eosPiece: string;
  readonly padPiece: string;
  readonly unkSurface: string;
}

export interface NormalizerSpec {
  readonly name: string;
  readonly precompiledCharsmap: Uint8Array;
  readonly addDummyPrefix: boolean;
  readonly removeExtraWhitespaces: boolean;
  readonly escapeWhitespaces: boolean;
}

export interface ModelProto {
  readonly pieces: readonly SentencePiece[];
  readonly trainerSpec: TrainerSpec;
  readonly normalizerSpec: NormalizerSpec;
  readonly denormalizerSpec?: NormalizerSpec;
}

// Enum numbers of the proto; names index by number.
const PIECE_TYPES: Record<number, PieceType> = {
  1: 'NORMAL',
  2: 'UNKNOWN',
  3: 'CONTROL',
  4: 'USER_DEFINED',
  5: 'UNUSED',
  6: 'BYTE',
};
const MODEL_TYPES: Record<number, ModelType> = { 1: 'UNIGRAM', 2: 'BPE', 3: 'WORD', 4: 'CHAR' };

// proto2 defaults, from sentencepiece_model.proto.
const DEFAULT_TRAINER_SPEC: TrainerSpec = {
  modelType: 'UNIGRAM',
  vocabSize: 8000,
  treatWhitespaceAsSuffix: false,
  byteFallback: false,
  unkId: 0,
  bosId: 1,
  eosId: 2,
  padId: -1,
  unkPiece: '<unk>',
  bosPiece: '<s>',
  eosPiece: '</s>',
  padPiece: '<pad>',
  unkSurface: ' \u2047 ',
};
const DEFAULT_NORMALIZER_SPEC: NormalizerSpec = {
  name: '',
  precompiledCharsmap: new Uint8Array(0),
  addDummyPrefix: true,
  removeExtraWhitespaces: true,
  escapeWhitespaces: true,
};

// ---------------------------------------------------------------------------------------------------------
// Protobuf wire format: just enough to walk fields (varint, 64-bit, length-delimited, 32-bit)
// ---------------------------------------------------------------------------------------------------------

/** A malformed message; `readModelProto` turns it into an error naming the file. */
class WireError extends Error {}

interface Cursor {
  readonly bytes: Uint8Array;
  readonly view: DataView;
  pos: number;
}

type WireValue =
  | { readonly wire: 'varint'; readonly lo: number; readonly hi: number } // two uint32 halves
  | { readonly wire: 'i64'; readonly at: number }
  | { readonly wire: 'len'; readonly start: number; readonly end: number }
  | { readonly wire: 'i32'; readonly at: number };

function readVarint(c: Cursor, end: number): { lo: number; hi: number } {
  let lo = 0;
  let hi = 0;
  for (let shift = 0; shift < 70; shift += 7) {
    if (c.pos >= end) throw new WireError(`truncated varint at byte ${c.pos}`);
    const b = c.bytes[c.pos++] & 0x7f;
    if (shift < 28) {
      lo |= b << shift;
    } else if (shift === 28) {
      lo |= b << 28; // the low 4 bits; the 3 above go to `hi`
      hi |= b >> 4;
    } else {
      hi |= b << (shift - 32);
    }
    if ((c.bytes[c.pos - 1] & 0x80) === 0) return { lo: lo >>> 0, hi: hi >>> 0 };
  }
  throw new WireError(`varint longer than 10 bytes at byte ${c.pos}`);
}

/** Calls `visit` for each field of the message in bytes [c.pos, end). */
function forEachField(c: Cursor, end: number, visit: (field: number, value: WireValue) => void): void {
  while (c.pos < end) {
    const tagAt = c.pos;
    const tag = readVarint(c, end);
    const field = (tag.lo >>> 3) + tag.hi * 2 ** 29;
    const wireType = tag.lo & 7;
    if (field === 0) throw new WireError(`field number 0 at byte ${tagAt}`);
    let value: WireValue;
    if (wireType === 0) value = { wire: 'varint', ...readVarint(c, end) };
    else if (wireType === 1) value = { wire: 'i64', at: skip(c, 8, end) };
    else if (wireType === 5) value = { wire: 'i32', at: skip(c, 4, end) };
    else if (wireType === 2) {
      const n = readVarint(c, end);
      if (n.hi !== 0) throw new WireError(`length too large at byte ${tagAt}`);
      const start = skip(c, n.lo, end);
      value = { wire: 'len', start, end: c.pos };
    } else throw new WireError(`wire type ${wireType} (field ${field}) at byte ${tagAt}`);
    visit(field, value);
  }
}

/** Advances past n bytes and returns where they start. */
function skip(c: Cursor, n: number, end: number): number {
  if (c.pos + n > end) throw new WireError(`truncated field at byte ${c.pos}: ${n} bytes announced`);
  const at = c.pos;
  c.pos += n;
  return at;
}

function expectWire<W extends WireValue['wire']>(
  v: WireValue,
  wire: W,
  name: string,
): Extract<WireValue, { wire: W }> {
  if (v.wire !== wire) throw new WireError(`${name} has wire type ${v.wire}, expected ${wire}`);
  return v as Extract<WireValue, { wire: W }>;
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

function asString(c: Cursor, v: WireValue, name: string): string {
  const { start, end } = expectWire(v, 'len', name);
  try {
    return utf8.decode(c.bytes.subarray(start, end));
  } catch {
    throw new WireError(`${name} is not UTF-8 at byte ${start}`);
  }
}
const asBytes = (c: Cursor, v: WireValue, name: string): Uint8Array => {
  const { start, end } = expectWire(v, 'len', name);
  return c.bytes.slice(start, end);
};
const asInt32 = (v: WireValue, name: string): number => expectWire(v, 'varint', name).lo | 0;
const asBool = (v: WireValue, name: string): boolean => {
  const { lo, hi } = expectWire(v, 'varint', name);
  return lo !== 0 || hi !== 0;
};
const asFloat = (c: Cursor, v: WireValue, name: string): number =>
  c.view.getFloat32(expectWire(v, 'i32', name).at, true);

/** Runs `parse` on the sub-message in `v`, leaving the cursor after it. */
function subMessage<T>(c: Cursor, v: WireValue, name: string, parse: (c: Cursor, end: number) => T): T {
  const { start, end } = expectWire(v, 'len', name);
  const after = c.pos;
  c.pos = start;
  const out = parse(c, end);
  c.pos = after;
  return out;
}

function readPiece(c: Cursor, end: number): SentencePiece {
  let piece = '';
  let score = 0;
  let type: PieceType = 'NORMAL';
  // sentencepiece writes each of the three fields at most once; a repeated or unknown one (protobuf would
  // read "last wins" or skip it) means the piece's length swallowed its neighbours: refused, not guessed
  const seen = new Set<number>();
  forEachField(c, end, (field, v) => {
    if (field < 1 || field > 3) throw new WireError(`piece ${JSON.stringify(piece)} has an unknown field ${field}`);
    if (seen.has(field)) throw new WireError(`piece ${JSON.stringify(piece)} has field ${field} twice`);
    seen.add(field);
    if (field === 1) piece = asString(c, v, 'SentencePiece.piece');
    else if (field === 2) score = asFloat(c, v, 'SentencePiece.score');
    else if (field === 3) {
      const n = asInt32(v, 'SentencePiece.type');
      const t = PIECE_TYPES[n];
      if (t === undefined) throw new WireError(`piece '${piece}' has unknown type ${n}`);
      type = t;
    }
  });
  return { piece, score, type };
}

function readTrainerSpec(c: Cursor, end: number): TrainerSpec {
  const s: { -readonly [K in keyof TrainerSpec]: TrainerSpec[K] } = { ...DEFAULT_TRAINER_SPEC };
  forEachField(c, end, (field, v) => {
    switch (field) {
      case 3: {
        const n = asInt32(v, 'TrainerSpec.model_type');
        const t = MODEL_TYPES[n];
        if (t === undefined) throw new WireError(`unknown model_type ${n}`);
        s.modelType = t;
        break;
      }
      case 4: s.vocabSize = asInt32(v, 'TrainerSpec.vocab_size'); break;
      case 24: s.treatWhitespaceAsSuffix = asBool(v, 'TrainerSpec.treat_whitespace_as_suffix'); break;
      case 35: s.byteFallback = asBool(v, 'TrainerSpec.byte_fallback'); break;
      case 40: s.unkId = asInt32(v, 'TrainerSpec.unk_id'); break;
      case 41: s.bosId = asInt32(v, 'TrainerSpec.bos_id'); break;
      case 42: s.eosId = asInt32(v, 'TrainerSpec.eos_id'); break;
      case 43: s.padId = asInt32(v, 'TrainerSpec.pad_id'); break;
      case 44: s.unkSurface = asString(c, v, 'TrainerSpec.unk_surface'); break;
      case 45: s.unkPiece = asString(c, v, 'TrainerSpec.unk_piece'); break;
      case 46: s.bosPiece = asString(c, v, 'TrainerSpec.bos_piece'); break;
      case 47: s.eosPiece = asString(c, v, 'TrainerSpec.eos_piece'); break;
      case 48: s.padPiece = asString(c, v, 'TrainerSpec.pad_piece'); break;
    }
  });
  return s;
}

function readNormalizerSpec(c: Cursor, end: number): NormalizerSpec {
  const s: { -readonly [K in keyof NormalizerSpec]: NormalizerSpec[K] } = { ...DEFAULT_NORMALIZER_SPEC };
  forEachField(c, end, (field, v) => {
    switch (field) {
      case 1: s.name = asString(c, v, 'NormalizerSpec.name'); break;
      case 2: s.precompiledCharsmap = asBytes(c, v, 'NormalizerSpec.precompiled_charsmap'); break;
      case 3: s.addDummyPrefix = asBool(v, 'NormalizerSpec.add_dummy_prefix'); break;
      case 4: s.removeExtraWhitespaces = asBool(v, 'NormalizerSpec.remove_extra_whitespaces'); break;
      case 5: s.escapeWhitespaces = asBool(v, 'NormalizerSpec.escape_whitespaces'); break;
    }
  });
  return s;
}

/**
 * Reads a serialized `sentencepiece.ModelProto`. Throws, naming `source`, when the bytes are not one (bad wire
 * format, no pieces, no unknown piece, duplicate or empty pieces, incomplete byte pieces).
 */
export function readModelProto(bytes: Uint8Array, source = 'SentencePiece model'): ModelProto {
  const c: Cursor = { bytes, view: new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength), pos: 0 };
  const pieces: SentencePiece[] = [];
  let trainerSpec = DEFAULT_TRAINER_SPEC;
  let normalizerSpec = DEFAULT_NORMALIZER_SPEC;
  let denormalizerSpec: NormalizerSpec | undefined;
  const seen = new Set<number>();
  try {
    forEachField(c, bytes.length, (field, v) => {
      seen.add(field);
      if (field === 1) {
        if (pieces.length >= MAX_PIECES) throw new WireError(`more than ${MAX_PIECES} pieces`);
        pieces.push(subMessage(c, v, 'ModelProto.pieces', readPiece));
      } else if (field === 2) trainerSpec = subMessage(c, v, 'ModelProto.trainer_spec', readTrainerSpec);
      else if (field === 3) normalizerSpec = subMessage(c, v, 'ModelProto.normalizer_spec', readNormalizerSpec);
      else if (field === 5) denormalizerSpec = subMessage(c, v, 'ModelProto.denormalizer_spec', readNormalizerSpec);
      // Skipping unknown fields (proto's rule) would drop a damaged piece and shift every id after it.
      else if (field === 4) expectWire(v, 'len', 'ModelProto.self_test_data');
      else throw new WireError(`unknown ModelProto field ${field}`);
    });
    // Every model sentencepiece's trainer writes has both specs; a file without them is cut short (protobuf
    // has no end marker), and proto2 defaults would silently make another tokenizer (UNIGRAM, dummy prefix).
    if (pieces.length > 0 && !seen.has(2)) throw new WireError('no trainer_spec (a cut-off file?)');
    if (pieces.length > 0 && !seen.has(3)) throw new WireError('no normalizer_spec (a cut-off file?)');
    const model: ModelProto = { pieces, trainerSpec, normalizerSpec, ...(denormalizerSpec && { denormalizerSpec }) };
    checkPieces(model);
    return model;
  } catch (e) {
    if (e instanceof WireError) {
      throw new FormatError(source, 'ModelProto', `tokenizer: ${source} is not a SentencePiece ModelProto (${e.message})`);
    }
    throw e;
  }
}

/** model_interface.cc InitializePieces: the checks sentencepiece makes before it will load a model. */
function checkPieces({ pieces, trainerSpec }: ModelProto): void {
  if (pieces.length === 0) throw new WireError('no pieces');
  const seen = new Set<string>();
  const bytesFound = new Set<number>();
  let unknowns = 0;
  pieces.forEach(({ piece, type }, id) => {
    if (piece === '') throw new WireError(`piece ${id} is empty`);
    // Reserved and normal pieces live in two maps, so the same string may appear once in each.
    const key = (isReserved(type) ? 'r' : 'n') + piece;
    if (seen.has(key)) throw new WireError(`piece '${piece}' is defined twice`);
    seen.add(key);
    if (type === 'UNKNOWN') unknowns++;
    if (type === 'BYTE') {
      const b = pieceToByte(piece);
      if (b < 0) throw new WireError(`byte piece '${piece}' is invalid`);
      if (!trainerSpec.byteFallback) throw new WireError(`byte piece '${piece}' but byte_fallback is false`);
      bytesFound.add(b);
    }
  });
  if (unknowns !== 1) throw new WireError(`${unknowns} UNKNOWN pieces, expected 1`);
  if (trainerSpec.byteFallback && bytesFound.size !== 256) {
    throw new WireError(`byte_fallback is true but only ${bytesFound.size} of 256 byte pieces exist`);
  }
}

const isReserved = (t: PieceType): boolean => t === 'CONTROL' || t === 'UNKNOWN' || t === 'BYTE';

/** `<0x41>` -> 0x41; -1 for anything else (model_interface.cc PieceToByte: upper-case hex, two digits). */
function pieceToByte(piece: string): number {
  const m = /^<0x([0-9A-F]{2})>$/.exec(piece);
  return m ? parseInt(m[1], 16) : -1;
}
const byteToPiece = (b: number): string => `<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`;

// ---------------------------------------------------------------------------------------------------------
// Vocabulary lookups
// ---------------------------------------------------------------------------------------------------------

/** A trie over UTF-16 code units, for longest-prefix matching of USER_DEFINED pieces. */
interface TrieNode {
  readonly next: Map<number, TrieNode>;
  end: boolean;
}

function buildTrie(words: Iterable<string>): TrieNode {
  const root: TrieNode = { next: new Map(), end: false };
  for (const w of words) {
    let node = root;
    for (let i = 0; i < w.length; i++) {
      const u = w.charCodeAt(i);
      let child = node.next.get(u);
      if (child === undefined) node.next.set(u, (child = { next: new Map(), end: false }));
      node = child;
    }
    node.end = true;
  }
  return root;
}

/** Length (in code units) of the longest word of the trie that starts at s[at]; 0 if none. */
function longestMatch(trie: TrieNode, s: string, at: number): number {
  let node: TrieNode | undefined = trie;
  let best = 0;
  for (let i = at; i < s.length; i++) {
    node = node.next.get(s.charCodeAt(i));
    if (node === undefined) break;
    if (node.end) best = i + 1 - at;
  }
  return best;
}

interface Vocabulary {
  readonly pieces: readonly SentencePiece[];
  readonly normal: ReadonlyMap<string, number>; // NORMAL, USER_DEFINED, UNUSED: merge candidates
  readonly reserved: ReadonlyMap<string, number>; // CONTROL, UNKNOWN, BYTE
  readonly userDefined: TrieNode;
  readonly longestNormal: number; // code units; longer concatenations cannot be pieces
  readonly byteIds: readonly number[]; // byte -> id of `<0xNN>`, -1 without byte fallback
  readonly unkId: number;
}

function buildVocabulary(pieces: readonly SentencePiece[]): Vocabulary {
  const normal = new Map<string, number>();
  const reserved = new Map<string, number>();
  const byteIds = new Array<number>(256).fill(-1);
  let longestNormal = 0;
  let unkId = -1;
  pieces.forEach(({ piece, type }, id) => {
    if (isReserved(type)) {
      reserved.set(piece, id);
    } else {
      normal.set(piece, id);
      longestNormal = Math.max(longestNormal, piece.length);
    }
    if (type === 'BYTE') byteIds[pieceToByte(piece)] = id;
    if (type === 'UNKNOWN') unkId = id;
  });
  const userDefined = buildTrie(pieces.filter((p) => p.type === 'USER_DEFINED').map((p) => p.piece));
  return { pieces, normal, reserved, userDefined, longestNormal, byteIds, unkId };
}

/** ModelInterface::PieceToId: reserved pieces first, then normal ones; unknown strings -> unk id. */
function lookup(v: Vocabulary, piece: string): number {
  return v.reserved.get(piece) ?? v.normal.get(piece) ?? v.unkId;
}

// ---------------------------------------------------------------------------------------------------------
// Encoding: normalize, split into initial symbols, merge, map to ids
// ---------------------------------------------------------------------------------------------------------

const SPACE = ' ';
const MARKER = '\u2581'; // '▁', sentencepiece's kSpaceSymbol

/** Length of the code point at s[i] (2 for a surrogate pair, 1 otherwise, lone surrogates included). */
function codePointLength(s: string, i: number): number {
  const u = s.charCodeAt(i);
  if (u >= 0xd800 && u < 0xdc00 && i + 1 < s.length) {
    const w = s.charCodeAt(i + 1);
    if (w >= 0xdc00 && w < 0xe000) return 2;
  }
  return 1;
}
const isLoneSurrogate = (s: string, i: number, n: number): boolean =>
  n === 1 && s.charCodeAt(i) >= 0xd800 && s.charCodeAt(i) < 0xe000;

/**
 * normalizer.cc Normalize with the identity rule. A lone surrogate, which has no UTF-8 form, is read as
 * U+FFFD, as sentencepiece reads a malformed UTF-8 byte.
 */
function normalize(text: string, spec: NormalizerSpec, treatWhitespaceAsSuffix: boolean, v: Vocabulary): string {
  if (spec.removeExtraWhitespaces) return normalizeSqueezing(text, spec, treatWhitespaceAsSuffix, v);
  if (text === '') return '';
  const space = spec.escapeWhitespaces ? MARKER : SPACE;
  const body = text.replace(/\p{Cs}/gu, '\ufffd').replaceAll(SPACE, space);
  if (!spec.addDummyPrefix) return body;
  return treatWhitespaceAsSuffix ? body + space : space + body;
}

/**
 * The same with remove_extra_whitespaces (not Gemma's): heading spaces go, a space run keeps one space, and
 * trailing escaped spaces go, the dummy prefix and literal '▁'s included. As in sentencepiece, the input is
 * read in chunks (a USER_DEFINED piece, else one character) and a run is cut at the start of a chunk.
 */
function normalizeSqueezing(text: string, spec: NormalizerSpec, treatWhitespaceAsSuffix: boolean, v: Vocabulary): string {
  const chunks: string[] = [];
  for (let i = 0; i < text.length; ) {
    const n = longestMatch(v.userDefined, text, i) || codePointLength(text, i);
    chunks.push(isLoneSurrogate(text, i, n) ? '\ufffd' : text.slice(i, i + n));
    i += n;
  }
  if (chunks.every((c) => c === SPACE)) return '';
  const space = spec.escapeWhitespaces ? MARKER : SPACE;
  let out = !treatWhitespaceAsSuffix && spec.addDummyPrefix ? space : '';
  let prevIsSpace = true;
  for (const c of chunks) {
    const chunk: string = prevIsSpace ? c.replace(/^ +/, '') : c;
    if (chunk === '') continue;
    out += chunk.replaceAll(SPACE, space);
    prevIsSpace = chunk.endsWith(SPACE);
  }
  let end = out.length;
  while (end > 0 && out[end - 1] === space) end--;
  out = out.slice(0, end);
  return treatWhitespaceAsSuffix && spec.addDummyPrefix ? out + space : out;
}

/** A merge candidate: symbols `left` and `right` (adjacent) concatenate to a piece of this score. */
interface Candidate {
  readonly left: number;
  readonly right: number;
  readonly score: number;
  readonly length: number; // of the concatenation when queued; a mismatch later means it is stale
}

/** bpe_model.cc SymbolPairComparator: the higher score first, then the leftmost. */
const mergesFirst = (a: Candidate, b: Candidate): boolean =>
  a.score > b.score || (a.score === b.score && a.left < b.left);

function pushCandidate(heap: Candidate[], c: Candidate): void {
  let i = heap.length;
  heap.push(c);
  while (i > 0) {
    const parent = (i - 1) >> 1;
    if (!mergesFirst(c, heap[parent])) break;
    heap[i] = heap[parent];
    i = parent;
  }
  heap[i] = c;
}

function popCandidate(heap: Candidate[]): Candidate | undefined {
  const top = heap[0];
  const last = heap.pop();
  if (heap.length === 0 || last === undefined) return top;
  let i = 0;
  for (;;) {
    const l = 2 * i + 1;
    const r = l + 1;
    let best = l;
    if (l >= heap.length) break;
    if (r < heap.length && mergesFirst(heap[r], heap[l])) best = r;
    if (!mergesFirst(heap[best], last)) break;
    heap[i] = heap[best];
    i = best;
  }
  heap[i] = last;
  return top;
}

/**
 * bpe_model.cc SampleEncode (no dropout): the normalized text as a list of piece strings. Symbols form a
 * doubly linked list over array slots; a merged-away slot holds ''. Every merge queues at most two new
 * candidates, so this is O(n log n) in the number of characters.
 */
function bpe(normalized: string, v: Vocabulary): string[] {
  const symbols: string[] = [];
  const frozen: boolean[] = [];
  for (let i = 0; i < normalized.length; ) {
    const user = longestMatch(v.userDefined, normalized, i);
    const n = user || codePointLength(normalized, i);
    symbols.push(normalized.slice(i, i + n));
    frozen.push(user > 0);
    i += n;
  }
  const count = symbols.length;
  const prev = Int32Array.from({ length: count }, (_, i) => i - 1);
  const next = Int32Array.from({ length: count }, (_, i) => (i + 1 < count ? i + 1 : -1));
  const heap: Candidate[] = [];
  const unmerge = new Map<string, readonly [string, string]>(); // merges into UNUSED pieces, undone below

  const consider = (left: number, right: number): void => {
    if (left < 0 || right < 0 || frozen[left] || frozen[right]) return;
    const length = symbols[left].length + symbols[right].length;
    if (length > v.longestNormal) return;
    const merged = symbols[left] + symbols[right];
    const id = v.normal.get(merged);
    if (id === undefined) return;
    pushCandidate(heap, { left, right, score: v.pieces[id].score, length });
    if (v.pieces[id].type === 'UNUSED') unmerge.set(merged, [symbols[left], symbols[right]]);
  };

  for (let i = 1; i < count; i++) consider(i - 1, i);
  for (let top = popCandidate(heap); top !== undefined; top = popCandidate(heap)) {
    const { left, right } = top;
    const l = symbols[left];
    const r = symbols[right];
    if (l === '' || r === '' || l.length + r.length !== top.length) continue; // stale
    symbols[left] = l + r;
    symbols[right] = '';
    next[left] = next[right];
    if (next[right] >= 0) prev[next[right]] = left;
    consider(prev[left], left);
    consider(left, next[left]);
  }

  const out: string[] = [];
  const resegment = (piece: string): void => {
    const id = lookup(v, piece);
    const parts = v.pieces[id].type === 'UNUSED' ? unmerge.get(piece) : undefined;
    if (parts === undefined) {
      out.push(piece);
    } else {
      resegment(parts[0]);
      resegment(parts[1]);
    }
  };
  for (let i = count > 0 ? 0 : -1; i >= 0; i = next[i]) resegment(symbols[i]);
  return out;
}

interface Token {
  readonly id: number;
  readonly piece: string;
}

const utf8Encoder = new TextEncoder();

/**
 * sentencepiece_processor.cc PopulateSentencePieceText: pieces to ids. Unknown symbols become their UTF-8
 * bytes (byte_fallback), or else one `<unk>` per run, whose piece is the run's text.
 */
function toTokens(pieces: readonly string[], v: Vocabulary, byteFallback: boolean): Token[] {
  const tokens: Token[] = [];
  let prevUnknown = false;
  for (const piece of pieces) {
    const id = lookup(v, piece);
    const unknown = id === v.unkId;
    if (unknown && byteFallback) {
      for (const b of utf8Encoder.encode(piece)) tokens.push({ id: v.byteIds[b], piece: byteToPiece(b) });
    } else if (unknown && prevUnknown) {
      const last = tokens.pop() as Token;
      tokens.push({ id, piece: last.piece + piece });
    } else {
      tokens.push({ id, piece });
    }
    prevUnknown = unknown;
  }
  return tokens;
}

// ---------------------------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------------------------

/**
 * util.cc DecodeUTF8 applied until the bytes are used up: a valid sequence gives its character, anything
 * else gives U+FFFD and consumes one byte (so `E4 BD` gives two U+FFFD).
 */
export function decodeUtf8PerByte(bytes: readonly number[]): string {
  let out = '';
  const trail = (i: number): boolean => i < bytes.length && (bytes[i] & 0xc0) === 0x80;
  const valid = (cp: number): boolean => cp < 0xd800 || (cp >= 0xe000 && cp <= 0x10ffff);
  for (let i = 0; i < bytes.length; ) {
    const b = bytes[i];
    let cp = -1;
    let n = 1;
    if (b < 0x80) cp = b;
    else if ((b & 0xe0) === 0xc0 && trail(i + 1)) {
      cp = ((b & 0x1f) << 6) | (bytes[i + 1] & 0x3f);
      n = 2;
      if (cp < 0x80) cp = -1; // overlong
    } else if ((b & 0xf0) === 0xe0 && trail(i + 1) && trail(i + 2)) {
      cp = ((b & 0x0f) << 12) | ((bytes[i + 1] & 0x3f) << 6) | (bytes[i + 2] & 0x3f);
      n = 3;
      if (cp < 0x800 || !valid(cp)) cp = -1; // overlong or a surrogate
    } else if ((b & 0xf8) === 0xf0 && trail(i + 1) && trail(i + 2) && trail(i + 3)) {
      cp = ((b & 0x07) << 18) | ((bytes[i + 1] & 0x3f) << 12) | ((bytes[i + 2] & 0x3f) << 6) | (bytes[i + 3] & 0x3f);
      n = 4;
      if (cp < 0x10000 || !valid(cp)) cp = -1; // overlong or above U+10FFFF
    }
    if (cp < 0) {
      out += '\ufffd';
      i += 1;
    } else {
      out += String.fromCodePoint(cp);
      i += n;
    }
  }
  return out;
}

/** sentencepiece_processor.cc Decode. */
function decodeIds(ids: readonly number[], model: ModelProto): string {
  const { pieces, trainerSpec, normalizerSpec } = model;
  // The leading '▁' is the dummy prefix only when the normalizer adds one (or trims spaces).
  const stripsLeadingSpace = normalizerSpec.addDummyPrefix || normalizerSpec.removeExtraWhitespaces;
  let text = '';
  let bytes: number[] = [];
  let atStart = true; // no visible text yet: a leading '▁' may still be the dummy prefix
  let strippedSpace = false;
  for (const id of ids) {
    if (!Number.isInteger(id) || id < 0 || id >= pieces.length) {
      throw new RangeError(`tokenizer: invalid id ${id} (the vocabulary has ${pieces.length} pieces)`);
    }
    const { piece, type } = pieces[id];
    if (type === 'BYTE') {
      bytes.push(pieceToByte(piece));
      continue;
    }
    if (bytes.length > 0) {
      text += decodeUtf8PerByte(bytes);
      bytes = [];
    }
    if (strippedSpace || text !== '') atStart = false;
    strippedSpace = false;
    if (type === 'CONTROL') continue; // <bos>, <eos>, <pad>: invisible
    if (type === 'UNKNOWN') {
      text += trainerSpec.unkSurface;
      continue;
    }
    let surface = piece;
    if (atStart && stripsLeadingSpace && surface.startsWith(MARKER)) {
      surface = surface.slice(MARKER.length);
      strippedSpace = !normalizerSpec.removeExtraWhitespaces; // that trims every leading space
    }
    text += surface.replaceAll(MARKER, SPACE);
  }
  if (bytes.length > 0) text += decodeUtf8PerByte(bytes);
  return text;
}

// ---------------------------------------------------------------------------------------------------------
// Tokenizer
// ---------------------------------------------------------------------------------------------------------

export interface Tokenizer {
  readonly model: ModelProto;
  /** Number of pieces, e.g. 257152 for PaliGemma (trainer_spec.vocab_size excludes loc/seg pieces). */
  readonly vocabularySize: number;
  /** Ids of the trainer_spec's bos/eos/pad pieces when they are CONTROL pieces, else -1 (as sentencepiece). */
  readonly bosId: number;
  readonly eosId: number;
  readonly padId: number;
  /** The UNKNOWN piece. */
  readonly unkId: number;
  /** Id of `<loc0000>` (PaliGemma: 256000), if the vocabulary has it. */
  readonly locOffset?: number;
  /** Id of `<seg000>` (PaliGemma: 257024), if the vocabulary has it. */
  readonly segOffset?: number;
  /** Text -> ids: int32[T]. No bos/eos is added. */
  encode(text: string): number[];
  /** Text -> pieces, as sentencepiece's `encode(out_type=str)`. */
  encodePieces(text: string): string[];
  /** Ids -> text. Throws a RangeError on an id outside the vocabulary. */
  decode(ids: readonly number[]): string;
  idToPiece(id: number): string;
  /** The exact piece's id; undefined when absent (sentencepiece would answer the unk id). */
  pieceToId(piece: string): number | undefined;
}

/** Reads a SentencePiece model and refuses, naming `source`, what this tokenizer does not reproduce. */
export function loadSentencePiece(bytes: Uint8Array, source = 'SentencePiece model'): Tokenizer {
  return guarded(source, () => fromModelProto(readModelProto(bytes, source), source));
}

/** Far above Gemma's 257152 pieces; refused before they are read. */
export const MAX_PIECES = 1 << 22;

/**
 * Reads a Hugging Face `tokenizer.json` (its text, or the parsed object) of Gemma's BPE form into the same
 * tokenizer; refuses, naming `source` and the field, any other form (see src/tokenizer_json.ts).
 */
export function loadTokenizerJson(json: string | unknown, source = 'tokenizer.json'): Tokenizer {
  return guarded(source, () => tokenizerFromJson(json, source));
}

function tokenizerFromJson(json: string | unknown, source: string): Tokenizer {
  let parsed = json;
  if (typeof json === 'string') {
    if (jsonDepth(json, MAX_JSON_DEPTH) > MAX_JSON_DEPTH) {
      throw new FormatError(source, 'json', `tokenizer: ${source} is nested deeper than ${MAX_JSON_DEPTH} levels; not a tokenizer.json`);
    }
    try {
      parsed = JSON.parse(json);
    } catch (e) {
      throw new Error(`tokenizer: ${source} is not JSON (${(e as Error).message})`);
    }
  }
  const model = tokenizerJsonToModelProto(parsed, source);
  try {
    checkPieces(model);
  } catch (e) {
    if (e instanceof WireError) throw new Error(`tokenizer: ${source}: ${e.message}`);
    throw e;
  }
  return fromModelProto(model, source);
}

function fromModelProto(model: ModelProto, source: string): Tokenizer {
  const { trainerSpec, normalizerSpec, denormalizerSpec } = model;
  if (trainerSpec.modelType !== 'BPE') {
    throw new Error(
      `tokenizer: ${source} is a SentencePiece ${trainerSpec.modelType} model; only BPE (Gemma, PaliGemma) is implemented`,
    );
  }
  for (const spec of [normalizerSpec, denormalizerSpec]) {
    if (spec !== undefined && spec.precompiledCharsmap.length > 0) {
      throw new Error(
        `tokenizer: ${source} uses the '${spec.name}' normalization rule (a precompiled charsmap); only 'identity' is implemented`,
      );
    }
  }
  const v = buildVocabulary(model.pieces);
  const idOf = (piece: string): number | undefined => v.reserved.get(piece) ?? v.normal.get(piece);
  const controlId = (piece: string): number => {
    const id = idOf(piece);
    return id !== undefined && model.pieces[id].type === 'CONTROL' ? id : -1;
  };
  const tokens = (text: string): Token[] =>
    toTokens(
      bpe(normalize(text, normalizerSpec, trainerSpec.treatWhitespaceAsSuffix, v), v),
      v,
      trainerSpec.byteFallback,
    );
  const locOffset = idOf('<loc0000>');
  const segOffset = idOf('<seg000>');
  return {
    model,
    vocabularySize: model.pieces.length,
    bosId: controlId(trainerSpec.bosPiece),
    eosId: controlId(trainerSpec.eosPiece),
    padId: controlId(trainerSpec.padPiece),
    unkId: v.unkId,
    ...(locOffset !== undefined && { locOffset }),
    ...(segOffset !== undefined && { segOffset }),
    encode: (text) => tokens(text).map((t) => t.id),
    encodePieces: (text) => tokens(text).map((t) => t.piece),
    decode: (ids) => decodeIds(ids, model),
    idToPiece: (id) => {
      const p = model.pieces[id];
      if (p === undefined) {
        throw new RangeError(`tokenizer: invalid id ${id} (the vocabulary has ${model.pieces.length} pieces)`);
      }
      return p.piece;
    },
    pieceToId: idOf,
  };
}

/** Where a SentencePiece model may sit in a directory: Keras preset, bare file, Hugging Face. */
const MODEL_FILES = ['assets/tokenizer/vocabulary.spm', 'vocabulary.spm', 'tokenizer.model'];

/**
 * Loads a tokenizer from a `.spm` / `.model` file, a Hugging Face `tokenizer.json` file, a Keras preset
 * directory (`assets/tokenizer/vocabulary.spm`) or a Hugging Face folder. In a directory the SentencePiece
 * model is preferred (it is the exact source); `tokenizer.json` is used only without one. A Keras preset's
 * own `tokenizer.json` (`class_name: PaliGemmaTokenizer`, no `model.type`) is its config, never a vocabulary.
 */
export function loadTokenizer(pathOrDir: string): Tokenizer {
  const isFile = (p: string): boolean => existsSync(p) && statSync(p).isFile();
  const load = (p: string): Tokenizer => loadSentencePiece(new Uint8Array(guarded(p, () => readRegularFile(p, MAX_JSON_BYTES))), p);
  /** `presetVocabulary`: the error's hint on a Keras config, where the preset keeps its vocabulary. */
  const loadJson = (p: string, presetVocabulary = 'its assets/tokenizer/vocabulary.spm'): Tokenizer => {
    const text = guarded(p, () => readRegularFile(p, MAX_JSON_BYTES)).toString('utf8');
    if (jsonDepth(text, MAX_JSON_DEPTH) > MAX_JSON_DEPTH) {
      throw new FormatError(p, 'json', `tokenizer: ${p} is nested deeper than ${MAX_JSON_DEPTH} levels; not a tokenizer.json`);
    }
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch (e) {
      throw new FormatError(p, 'json', `tokenizer: ${p} is not JSON (${(e as Error).message})`);
    }
    const kind = tokenizerJsonKind(json);
    if (kind.kind === 'keras') {
      throw new FormatError(p, 'class_name', 
        `tokenizer: ${p} is a Keras tokenizer config (class_name ${kind.className}), not a Hugging Face ` +
          `tokenizer.json; the preset's vocabulary is ${presetVocabulary}`,
      );
    }
    return loadTokenizerJson(json, p);
  };
  const isDir = existsSync(pathOrDir) && statSync(pathOrDir).isDirectory();
  if (!isDir) {
    if (!isFile(pathOrDir)) throw new Error(`tokenizer: no SentencePiece model found; tried ${pathOrDir}`);
    return pathOrDir.endsWith('.json') ? loadJson(pathOrDir) : load(pathOrDir);
  }
  const tried = MODEL_FILES.map((f) => join(pathOrDir, f));
  const found = tried.find(isFile);
  if (found !== undefined) return load(found);
  const json = join(pathOrDir, 'tokenizer.json');
  if (isFile(json)) return loadJson(json, `${tried[0]}, which is missing`);
  throw new Error(
    `tokenizer: no SentencePiece model or Hugging Face tokenizer.json found; tried ${[...tried, json].join(', ')}`,
  );
}
