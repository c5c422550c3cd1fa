/**
 * Hugging Face `tokenizer.json`, in the BPE form that transformers' `GemmaConverter` writes for Gemma and
 * PaliGemma, turned into the SentencePiece `ModelProto` that `src/tokenizer.ts` encodes and decodes exactly.
 *
 * What the converter writes (transformers convert_slow_tokenizer.py, SpmConverter + GemmaConverter):
 * - `model`: BPE, `byte_fallback: true`, `unk_token: "<unk>"`, no dropout, no subword prefix/suffix;
 *   `vocab` maps every piece to its SentencePiece id (the `<0x09>` byte piece may be named "\t");
 *   `merges` lists, for every vocabulary entry, each split into two vocabulary entries, ordered by the
 *   entry's SentencePiece score, highest first (ties in the order of the vocabulary, or by split length).
 * - `normalizer`: Replace(" " -> "▁"); `pre_tokenizer`: none, or a Split on " " (a no-op after that normalizer);
 *   `decoder`: Replace("▁" -> " "), ByteFallback, Fuse.
 * - `added_tokens`: the CONTROL and USER_DEFINED pieces (special for CONTROL and <start_of_turn>/<end_of_turn>);
 *   files saved by transformers add `<unk>` and any processor token (PaliGemma's `<image>`) as well.
 *
 * What is rebuilt for our encoder:
 * - Ids as given (model.vocab plus added tokens beyond it); they must be 0..N-1 with no holes.
 * - Types: model.unk_token -> UNKNOWN; `<0xNN>` (or the "\t" standing for `<0x09>`, renamed back) -> BYTE;
 *   special added tokens `<pad>`, `<eos>`, `<bos>` -> CONTROL (never matched in text, decoded as ""); every other
 *   added token -> USER_DEFINED (matched in text, longest first, as HF matches added tokens); the rest NORMAL.
 * - Scores: a piece produced by merges gets score = -(rank of the first merge producing it). Our encoder merges
 *   the adjacent pair whose concatenation is a piece, highest score first, leftmost on ties; HF merges the pair
 *   of lowest merge rank, leftmost on ties. Higher score = lower first rank, so the two orders agree whenever
 *   the candidates produce different pieces. They can differ only when two live candidates produce the SAME
 *   piece through DIFFERENT splits ("a"+"bc" and "ab"+"c"; or "ab"+"abab" and "abab"+"ab" side by side): we
 *   take the leftmost, as SentencePiece does (equal scores), while HF takes the split listed first. So on
 *   a file converted from a SentencePiece model we reproduce SentencePiece, which is what keras_hub runs. The
 *   same holds if one piece's splits are not contiguous in the merge list (another piece ranked between them):
 *   we rank all its splits at the first. The converter keeps them contiguous unless two pieces share a score.
 * - Our encoder merges any adjacent pair whose concatenation is a NORMAL piece, HF only listed pairs. So the
 *   file must list, for each NORMAL piece, every split into two vocabulary entries, and each character of a
 *   NORMAL piece must be a vocabulary entry (HF byte-falls-back an unknown character, so it never merges).
 *   The converter writes exactly that; a file that does not (trained by `tokenizers`, edited) is refused.
 *
 * Where HF's fast tokenizer itself departs from SentencePiece, we follow SentencePiece (keras_hub): special
 * tokens (`<bos>`, `<unk>`) typed in text are not matched; `<unk>` decodes as " ⁇ "; a run of byte pieces with
 * an invalid sequence gives one U+FFFD per invalid byte (HF: one per byte of the whole run); no `<bos>` is added
 * (HF's post_processor adds one).
 *
 * Refused, with an error naming the file and the field: other models (Unigram, WordPiece, WordLevel), BPE
 * without byte_fallback or with dropout / subword affixes / ignore_merges, normalizers, pre-tokenizers and
 * decoders other than Gemma's, added tokens with lstrip / rstrip / single_word or holding a space or '▁'.
 */
import type { ModelProto, PieceType, SentencePiece } from './tokenizer';
import { FormatError } from '../../checkpoints/errors';

type JsonObject = Record<string, unknown>;
const isObject = (v: unknown): v is JsonObject => typeof v === 'object' && v !== null && !Array.isArray(v);

const MARKER = '\u2581'; // '▁'
/** Special added tokens that are SentencePiece CONTROL pieces in Gemma's model (bos/eos/pad). */
const CONTROL_TOKENS = new Set(['<pad>', '<eos>', '<bos>']);
const BYTE_PIECE = /^<0x([0-9A-F]{2})>$/;

/** What a parsed `tokenizer.json` is: Hugging Face's schema (`model.type`), a Keras config (`class_name`), or neither. */
export type TokenizerJsonKind =
  | { readonly kind: 'huggingface'; readonly modelType: string }
  | { readonly kind: 'keras'; readonly className: string }
  | { readonly kind: 'unknown' };

export function tokenizerJsonKind(json: unknown): TokenizerJsonKind {
  if (isObject(json) && isObject(json.model) && typeof json.model.type === 'string') {
    return { kind: 'huggingface', modelType: json.model.type };
  }
  if (isObject(json) && typeof json.class_name === 'string') return { kind: 'keras', className: json.class_name };
  return { kind: 'unknown' };
}

const show = (v: unknown): string => {
  const s = JSON.stringify(v) ?? String(v);
  return s.length > 80 ? `${s.slice(0, 77)}...` : s;
};

const isStringPattern = (p: unknown, s: string): boolean =>
  isObject(p) && Object.keys(p).length === 1 && p.String === s;
const isReplace = (n: unknown, from: string, to: string): boolean =>
  isObject(n) && n.type === 'Replace' && isStringPattern(n.pattern, from) && n.content === to;
const isNoOpSplit = (p: unknown): boolean =>
  isObject(p) && p.type === 'Split' && isStringPattern(p.pattern, ' ') && !p.invert;

/**
 * Reads a parsed Hugging Face `tokenizer.json` into a ModelProto (trainer/normalizer specs as Gemma's
 * SentencePiece model has them). Throws, naming `source` and the field, what the encoder cannot reproduce.
 */
export function tokenizerJsonToModelProto(json: unknown, source: string): ModelProto {
  const refuse = (field: string, what: string): Error => new FormatError(source, field, `tokenizer: ${source}: ${field} ${what}`);
  const kind = tokenizerJsonKind(json);
  if (kind.kind === 'keras') {
    throw new Error(
      `tokenizer: ${source} is a Keras tokenizer config (class_name ${kind.className}), not a Hugging Face tokenizer.json`,
    );
  }
  if (kind.kind !== 'huggingface' || !isObject(json) || !isObject(json.model)) {
    throw new Error(`tokenizer: ${source} is not a Hugging Face tokenizer.json (no model.type)`);
  }
  const model = json.model;
  const onlyBpe = 'only BPE with byte_fallback (Gemma, PaliGemma) is supported';
  if (model.type !== 'BPE') throw refuse('model.type', `is ${show(model.type)}; ${onlyBpe}`);
  if (model.byte_fallback !== true) throw refuse('model.byte_fallback', `is ${show(model.byte_fallback)}; ${onlyBpe}`);
  if (model.dropout != null && model.dropout !== 0) {
    throw refuse('model.dropout', `is ${show(model.dropout)}; only deterministic BPE (null) is supported`);
  }
  for (const f of ['continuing_subword_prefix', 'end_of_word_suffix']) {
    if (model[f] != null && model[f] !== '') throw refuse(`model.${f}`, `is ${show(model[f])}; only none is supported`);
  }
  if (model.ignore_merges === true) throw refuse('model.ignore_merges', 'is true; only false is supported');

  // Text transforms: exactly Gemma's, i.e. SentencePiece's identity normalizer with escaped spaces.
  const n = json.normalizer;
  const gemmaNormalizer =
    isReplace(n, ' ', MARKER) ||
    (isObject(n) && n.type === 'Sequence' && Array.isArray(n.normalizers) && n.normalizers.length === 1 &&
      isReplace(n.normalizers[0], ' ', MARKER));
  if (!gemmaNormalizer) throw refuse('normalizer', `is ${show(n)}; only Replace(" " -> "▁") (Gemma) is supported`);
  const p = json.pre_tokenizer;
  const noOpPre =
    p == null ||
    isNoOpSplit(p) ||
    (isObject(p) && p.type === 'Sequence' && Array.isArray(p.pretokenizers) && p.pretokenizers.every(isNoOpSplit));
  if (!noOpPre) throw refuse('pre_tokenizer', `is ${show(p)}; only none or a Split on " " (Gemma) is supported`);
  const d = json.decoder;
  const steps = isObject(d) && d.type === 'Sequence' && Array.isArray(d.decoders) ? d.decoders : [d];
  const count = (test: (s: unknown) => boolean): number => steps.filter(test).length;
  const replaces = count((s) => isReplace(s, MARKER, ' '));
  const byteFallbacks = count((s) => isObject(s) && s.type === 'ByteFallback');
  const fuses = count((s) => isObject(s) && s.type === 'Fuse');
  if (replaces !== 1 || byteFallbacks !== 1 || fuses > 1 || replaces + byteFallbacks + fuses !== steps.length) {
    throw refuse('decoder', `is ${show(d)}; only Replace("▁" -> " "), ByteFallback, Fuse (Gemma) is supported`);
  }

  // Ids: model.vocab, then added tokens (at the same id, or beyond the vocabulary).
  if (!isObject(model.vocab)) throw refuse('model.vocab', 'is not an object of token -> id');
  const vocab = new Map<string, number>();
  const byId: (string | undefined)[] = [];
  for (const [token, id] of Object.entries(model.vocab)) {
    // ids index an array: bounded (far above Gemma's 257152) so a crafted id cannot make it huge.
    if (!Number.isInteger(id) || (id as number) < 0 || (id as number) >= 1 << 22) throw refuse(`model.vocab[${show(token)}]`, `is ${show(id)}, not an id (0..${(1 << 22) - 1})`);
    if (byId[id as number] !== undefined) {
      throw refuse(`model.vocab[${show(token)}]`, `has id ${id}, already ${show(byId[id as number])}`);
    }
    if (token === '') throw refuse('model.vocab', 'has an empty token');
    vocab.set(token, id as number);
    byId[id as number] = token;
  }
  const added = json.added_tokens ?? [];
  if (!Array.isArray(added)) throw refuse('added_tokens', 'is not an array');
  const special = new Map<number, boolean>();
  const normalizedFlags = new Set<boolean>();
  added.forEach((t: unknown, i) => {
    const field = `added_tokens[${i}]`;
    if (!isObject(t) || typeof t.content !== 'string' || t.content === '' || !Number.isInteger(t.id) || (t.id as number) < 0 || (t.id as number) >= 1 << 22) {
      throw refuse(field, `is ${show(t)}, not {id, content, ...}`);
    }
    for (const f of ['lstrip', 'rstrip', 'single_word']) {
      if (t[f] === true) throw refuse(`${field}.${f}`, `is true (${show(t.content)}); only false is supported`);
    }
    const id = t.id as number;
    const at = vocab.get(t.content);
    if (at !== undefined && at !== id) throw refuse(`${field}.id`, `is ${id} but model.vocab has ${show(t.content)} at ${at}`);
    if (at === undefined && byId[id] !== undefined) {
      throw refuse(`${field}.id`, `is ${id} (${show(t.content)}), already ${show(byId[id])}`);
    }
    vocab.set(t.content, id);
    byId[id] = t.content;
    special.set(id, t.special === true);
  });
  for (let id = 0; id < byId.length; id++) {
    if (byId[id] === undefined) throw refuse('model.vocab', `has no token with id ${id} (ids must be 0..${byId.length - 1})`);
  }
  const tokens = byId as string[];
  if (tokens.length === 0) throw refuse('model.vocab', 'is empty');

  // Types.
  const unkToken = model.unk_token;
  if (typeof unkToken !== 'string' || !vocab.has(unkToken)) throw refuse('model.unk_token', `is ${show(unkToken)}, not a token of model.vocab`);
  const unkId = vocab.get(unkToken) as number;
  const tabIsByte = !vocab.has('<0x09>') && vocab.has('\t'); // GemmaConverter names the <0x09> piece "\t"
  const types: PieceType[] = tokens.map((token, id) => {
    if (id === unkId) return 'UNKNOWN';
    if (BYTE_PIECE.test(token) || (tabIsByte && token === '\t')) return 'BYTE';
    if (special.has(id)) return special.get(id) && CONTROL_TOKENS.has(token) ? 'CONTROL' : 'USER_DEFINED';
    return 'NORMAL';
  });
  for (let b = 0; b < 256; b++) {
    const piece = `<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`;
    const id = vocab.get(piece) ?? (b === 9 && tabIsByte ? vocab.get('\t') : undefined);
    if (id === undefined || types[id] !== 'BYTE') throw refuse('model.vocab', `lacks ${piece}; byte_fallback needs all 256 byte pieces`);
  }
  added.forEach((t: JsonObject, i) => {
    if (types[t.id as number] !== 'USER_DEFINED') return;
    const content = t.content as string;
    if (content.includes(' ') || content.includes(MARKER)) {
      throw refuse(`added_tokens[${i}].content`, `is ${show(content)}; a space or '▁' in an added token is not supported`);
    }
    normalizedFlags.add(t.normalized === true);
  });
  if (normalizedFlags.size > 1) throw refuse('added_tokens', 'mix normalized true and false; only one kind is supported');

  // Merges: the first rank producing each piece.
  if (!Array.isArray(model.merges)) throw refuse('model.merges', 'is not an array');
  const firstRank = new Map<string, number>();
  const pairs = new Set<string>();
  const pairKey = (l: string, r: string): string => `${l.length}:${l}${r}`;
  model.merges.forEach((m: unknown, rank) => {
    const field = `model.merges[${rank}]`;
    const parts = typeof m === 'string' ? m.split(' ') : m;
    if (!Array.isArray(parts) || parts.length !== 2 || !parts.every((s) => typeof s === 'string' && s !== '')) {
      throw refuse(field, `is ${show(m)}, not "left right" or [left, right]`);
    }
    const [l, r] = parts as [string, string];
    for (const half of [l, r, l + r]) {
      if (!vocab.has(half)) throw refuse(field, `${show(m)}: ${show(half)} is not in model.vocab`);
    }
    const into = types[vocab.get(l + r) as number];
    if (into === 'BYTE' || into === 'UNKNOWN') throw refuse(field, `${show(m)} makes the ${into} piece ${show(l + r)}`);
    pairs.add(pairKey(l, r));
    if (!firstRank.has(l + r)) firstRank.set(l + r, rank);
  });
  // Our encoder merges any split of a NORMAL piece; HF only listed ones (see the header).
  tokens.forEach((token, id) => {
    if (types[id] !== 'NORMAL') return;
    const chars = Array.from(token);
    for (const c of chars) {
      if (!vocab.has(c)) throw refuse('model.vocab', `has ${show(token)} whose character ${show(c)} is not a token`);
    }
    let at = 0;
    for (let k = 1; k < chars.length; k++) {
      at += chars[k - 1].length;
      const l = token.slice(0, at);
      const r = token.slice(at);
      if (vocab.has(l) && vocab.has(r) && !pairs.has(pairKey(l, r))) {
        throw refuse('model.merges', `lacks ${show(`${l} ${r}`)}, a split of ${show(token)} into two tokens`);
      }
    }
  });

  const unranked = -model.merges.length; // below every merge; such pieces are never formed (see the header)
  const pieces: SentencePiece[] = tokens.map((token, id) => {
    const rank = firstRank.get(token);
    const score = types[id] === 'NORMAL' ? (rank === undefined ? unranked : rank === 0 ? 0 : -rank) : 0;
    return { piece: types[id] === 'BYTE' && token === '\t' ? '<0x09>' : token, score, type: types[id] };
  });
  const idOfControl = (name: string): number => {
    const id = vocab.get(name);
    return id !== undefined && types[id] === 'CONTROL' ? id : -1;
  };
  return {
    pieces,
    trainerSpec: {
      modelType: 'BPE',
      vocabSize: pieces.length,
      treatWhitespaceAsSuffix: false,
      byteFallback: true,
      unkId,
      bosId: idOfControl('<bos>'),
      eosId: idOfControl('<eos>'),
      padId: idOfControl('<pad>'),
      unkPiece: unkToken,
      bosPiece: '<bos>',
      eosPiece: '<eos>',
      padPiece: '<pad>',
      unkSurface: ' \u2047 ',
    },
    normalizerSpec: {
      name: 'identity',
      precompiledCharsmap: new Uint8Array(0),
      addDummyPrefix: false,
      removeExtraWhitespaces: false,
      escapeWhitespaces: true,
    },
  };
}
