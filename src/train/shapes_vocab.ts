/**
 * The vocabulary of the shapes model: a small SentencePiece BPE model laid out like Gemma's and PaliGemma's.
 *
 *   0 <pad>, 1 <eos>, 2 <bos> (CONTROL, Gemma's ids), 3 <unk>, 4..259 the 256 byte pieces (byte fallback:
 *   any text encodes), then single characters (a-z, 0-9, punctuation, '\n', '▁'), then the word pieces,
 *   then `<loc0000>`..`<loc1023>` (USER_DEFINED) at the end, as PaliGemma has them: the tokenizer derives
 *   `locOffset` from the piece `<loc0000>` (src/text/tokenizer.ts).
 *
 * Word pieces. Gemma's normalizer adds no dummy prefix, so a word at the start of a text is `caption` and
 * after a space `▁caption`; both forms of every word are pieces, and so is every prefix (2 characters or more)
 * of each form, scored by length. Why every prefix: BPE merges the best-scored adjacent pair that is a piece;
 * the first symbol of a word is always a prefix of it, so first + second is again a prefix, a piece, and the
 * merging can only end with the whole word as one token. No piece holds '▁' past its first character, so no
 * merge crosses a space.
 */
import type { ModelProto, SentencePiece } from '../text/tokenizer';
import { encodeModelProto } from '../text/spm_write';
import { SHAPES_WORDS } from './shapes';

const CHARS = [...'abcdefghijklmnopqrstuvwxyz0123456789', ...'.,;:?!\'"-()<>', '\n', '\u2581'];

export function shapesVocabulary(words: readonly string[] = SHAPES_WORDS): ModelProto {
  const control = (piece: string): SentencePiece => ({ piece, score: 0, type: 'CONTROL' });
  const pieces: SentencePiece[] = [control('<pad>'), control('<eos>'), control('<bos>'), { piece: '<unk>', score: 0, type: 'UNKNOWN' }];
  for (let b = 0; b < 256; b++) pieces.push({ piece: `<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`, score: 0, type: 'BYTE' });
  const seen = new Set<string>();
  const add = (piece: string, score: number): void => {
    if (seen.has(piece)) return;
    seen.add(piece);
    pieces.push({ piece, score, type: 'NORMAL' });
  };
  // single characters score lowest (they are never merged *into*, only merged); longer prefixes higher
  for (const ch of CHARS) add(ch, -1000);
  const forms = [...words.flatMap((w) => [w, `\u2581${w}`]), '\u2581;'];
  const prefixes = forms.flatMap((f) => Array.from({ length: [...f].length - 1 }, (_, i) => [...f].slice(0, i + 2).join('')));
  // shorter prefixes first (ties: in order of appearance), scored -length so every merge is of a real piece
  prefixes
    .map((p, i) => ({ p, i }))
    .sort((a, b) => [...a.p].length - [...b.p].length || a.i - b.i)
    .forEach(({ p }) => add(p, -[...p].length));
  const vocabSize = pieces.length;
  for (let i = 0; i < 1024; i++) pieces.push({ piece: `<loc${String(i).padStart(4, '0')}>`, score: 0, type: 'USER_DEFINED' });
  return {
    pieces,
    trainerSpec: {
      modelType: 'BPE',
      vocabSize, // as PaliGemma's: the pieces before the location tokens
      treatWhitespaceAsSuffix: false,
      byteFallback: true,
      unkId: 3,
      bosId: 2,
      eosId: 1,
      padId: 0,
      unkPiece: '<unk>',
      bosPiece: '<bos>',
      eosPiece: '<eos>',
      padPiece: '<pad>',
      unkSurface: ' \u2047 ',
    },
    normalizerSpec: { name: 'identity', precompiledCharsmap: new Uint8Array(0), addDummyPrefix: false, removeExtraWhitespaces: false, escapeWhitespaces: true },
  };
}

/** The vocabulary as the bytes of a `.spm` file (a preset's assets/tokenizer/vocabulary.spm). */
export const shapesVocabularyBytes = (words?: readonly string[]): Uint8Array => encodeModelProto(shapesVocabulary(words));
