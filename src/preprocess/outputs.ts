/**
 * Reading PaliGemma's structured answers: detection boxes and segmentation codes.
 *
 * Format (PaliGemma's "detect" and "segment" tasks; big_vision and the Hugging Face demos parse the same):
 *
 *   <loc0123><loc0456><loc0789><loc1000> cat ; <loc0010><loc0020><loc0300><loc0400> dog
 *   <loc0100><loc0200><loc0300><loc0400> <seg001>...<seg016> cat
 *
 * Each object is four location tokens `y0 x0 y1 x1` (yxyx), each `<locNNNN>` (4 digits, 0..1023) a
 * coordinate in 1024 bins of the image the model saw, optionally followed by `<segNNN>` codes (3 digits,
 * 0..127; 16 per mask in PaliGemma, for its VQ-VAE mask decoder, which is not part of this module), then a
 * label; objects are separated by ";". Text before the first location group (an echoed prompt) is skipped.
 *
 * Coordinate frame of the returned boxes: continuous pixel coordinates of the ORIGINAL image (origin at the
 * top-left corner of the top-left pixel, y down, x right; a pixel row r spans [r, r + 1)), not rounded.
 * Why and how: the model never sees the original image. keras_hub's converter centre-crops it to a square
 * (`cropBox`) and resizes that square; the resize maps edges to edges (half-pixel centres, `image.ts`), so a
 * bin value v is the fraction v / 1024 of the crop's height or width, and the crop's offset puts it back:
 *
 *   y = top + (v / 1024) * cropHeight,   x = left + (v / 1024) * cropWidth
 *
 * Objects outside the crop (cut away before the model saw them) cannot be found. With
 * `cropToAspectRatio: false` (big_vision / Hugging Face preprocessing, a plain stretch) the crop is the
 * whole image. Without a frame, boxes are in the model's own frame: fractions of its square input, in [0, 1).
 */
import { cropBox } from './image';

/** Location bins per axis. */
export const LOC_BINS = 1024;
/** Segmentation codebook size. */
export const SEG_CODES = 128;
/** PaliGemma's token offsets in Gemma's vocabulary (`<loc0000>` = 256000, `<seg000>` = 257024). */
export const PALIGEMMA_OFFSETS: TokenOffsets = { locOffset: 256000, segOffset: 257024 };

export interface TokenOffsets {
  /** Id of `<loc0000>`. */
  readonly locOffset: number;
  /** Id of `<seg000>`. */
  readonly segOffset: number;
}

/** The original image a box is mapped back to, and how it was fed to the model. */
export interface ImageFrame {
  readonly height: number;
  readonly width: number;
  /** Whether the image was centre-cropped to a square before the resize (keras_hub: true, the default). */
  readonly cropToAspectRatio?: boolean;
}

export interface Box {
  readonly yMin: number;
  readonly xMin: number;
  readonly yMax: number;
  readonly xMax: number;
}

export interface DetectedObject {
  /** The label text, trimmed ("" when the model gave none). */
  readonly label: string;
  /** The four raw bin values `[y0, x0, y1, x1]`, in the model's order (not sorted). */
  readonly locs: readonly [number, number, number, number];
  /** The box in the requested frame (see the header); yMin is from y0, and so on, without reordering. */
  readonly box: Box;
  /** The `<segNNN>` codes after the box, in order (empty for detection answers). */
  readonly seg: readonly number[];
}

// ---------------------------------------------------------------------------------------------------------
// Lexing
// ---------------------------------------------------------------------------------------------------------

type Piece = { kind: 'loc'; value: number } | { kind: 'seg'; value: number } | { kind: 'text'; text: string };

// Exactly the vocabulary's pieces: 4-digit <locNNNN> below 1024, 3-digit <segNNN> below 128. Anything else
// (`<loc1024>`, `<loc123>`, `<LOC0001>`) is plain text, as the tokenizer treats it.
const TOKEN = /<loc(\d{4})>|<seg(\d{3})>/g;

function lex(text: string): Piece[] {
  const pieces: Piece[] = [];
  let last = 0;
  const pushText = (s: string): void => {
    if (s === '') return;
    const prev = pieces[pieces.length - 1];
    if (prev && prev.kind === 'text') pieces[pieces.length - 1] = { kind: 'text', text: prev.text + s };
    else pieces.push({ kind: 'text', text: s });
  };
  for (const m of text.matchAll(TOKEN)) {
    const value = Number(m[1] ?? m[2]);
    const isLoc = m[1] !== undefined;
    const at = m.index ?? 0; // always set for matchAll results
    pushText(text.slice(last, at));
    last = at + m[0].length;
    if (isLoc ? value < LOC_BINS : value < SEG_CODES) pieces.push({ kind: isLoc ? 'loc' : 'seg', value });
    else pushText(m[0]);
  }
  pushText(text.slice(last));
  return pieces;
}

// ---------------------------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------------------------

/** Map four bin values to a box in the frame (see the header for the derivation). */
export function locsToBox(locs: readonly [number, number, number, number], frame?: ImageFrame): Box {
  const [y0, x0, y1, x1] = locs.map((v) => v / LOC_BINS);
  if (!frame) return { yMin: y0, xMin: x0, yMax: y1, xMax: x1 };
  const { height, width } = frame;
  if (!(height > 0 && width > 0)) throw new Error(`locsToBox: frame must have a positive size, got ${height}x${width}`);
  // A square target: the crop depends only on the image's sizes, not on S.
  const crop = frame.cropToAspectRatio === false ? { top: 0, left: 0, height, width } : cropBox(height, width, 1, 1);
  return {
    yMin: crop.top + y0 * crop.height,
    xMin: crop.left + x0 * crop.width,
    yMax: crop.top + y1 * crop.height,
    xMax: crop.left + x1 * crop.width,
  };
}

/**
 * Parse a decoded detection or segmentation answer (`<locNNNN>` pieces as text) into objects. Fragments
 * that do not start with four location tokens (an echoed prompt, a truncated answer) are skipped.
 */
export function parseDetections(text: string, frame?: ImageFrame): DetectedObject[] {
  const pieces = lex(text);
  const objects: DetectedObject[] = [];
  let i = 0;
  while (i < pieces.length) {
    const group = pieces.slice(i, i + 4);
    if (group.length < 4 || !group.every((p) => p.kind === 'loc')) {
      i++;
      continue;
    }
    const locs = group.map((p) => (p as { value: number }).value) as [number, number, number, number];
    i += 4;
    // Segmentation codes may follow, after optional whitespace.
    const seg: number[] = [];
    for (; i < pieces.length; i++) {
      const p = pieces[i];
      if (p.kind === 'seg') seg.push(p.value);
      else if (!(p.kind === 'text' && p.text.trim() === '' && pieces[i + 1]?.kind === 'seg')) break;
    }
    // The label runs to the next ";" (which ends the object) or the next location token.
    let label = '';
    if (i < pieces.length) {
      const p = pieces[i];
      if (p.kind === 'text') {
        const semi = p.text.indexOf(';');
        label = (semi < 0 ? p.text : p.text.slice(0, semi)).trim();
        i++;
      }
    }
    objects.push({ label, locs, box: locsToBox(locs, frame), seg });
  }
  return objects;
}

/** Every `<segNNN>` code of a decoded string, in order. */
export function segCodes(text: string): number[] {
  return lex(text).flatMap((p) => (p.kind === 'seg' ? [p.value] : []));
}

// ---------------------------------------------------------------------------------------------------------
// From token ids
// ---------------------------------------------------------------------------------------------------------

/**
 * Token ids to the text `parseDetections` reads: location and segmentation ids become their pieces
 * (`<loc0123>`, `<seg045>`), every run of other ids goes through `detokenize` (the tokenizer's decode; the
 * Gemma decoder maps `▁` to a space without stripping, so decoding runs separately equals decoding at once).
 */
export function idsToText(
  ids: ArrayLike<number>,
  detokenize: (ids: number[]) => string,
  offsets: TokenOffsets = PALIGEMMA_OFFSETS,
): string {
  const { locOffset, segOffset } = offsets;
  let text = '';
  let run: number[] = [];
  const flush = (): void => {
    if (run.length) text += detokenize(run);
    run = [];
  };
  for (let i = 0; i < ids.length; i++) {
    const id = ids[i];
    if (id >= locOffset && id < locOffset + LOC_BINS) {
      flush();
      text += `<loc${String(id - locOffset).padStart(4, '0')}>`;
    } else if (id >= segOffset && id < segOffset + SEG_CODES) {
      flush();
      text += `<seg${String(id - segOffset).padStart(3, '0')}>`;
    } else {
      run.push(id);
    }
  }
  flush();
  return text;
}

/** `parseDetections` on token ids (see `idsToText`). */
export function parseDetectionIds(
  ids: ArrayLike<number>,
  detokenize: (ids: number[]) => string,
  offsets: TokenOffsets = PALIGEMMA_OFFSETS,
  frame?: ImageFrame,
): DetectedObject[] {
  return parseDetections(idsToText(ids, detokenize, offsets), frame);
}

/** The segmentation codes among token ids (`id - segOffset` for every `<segNNN>` id), in order. */
export function segCodesFromIds(ids: ArrayLike<number>, offsets: TokenOffsets = PALIGEMMA_OFFSETS): number[] {
  const out: number[] = [];
  for (let i = 0; i < ids.length; i++) {
    const code = ids[i] - offsets.segOffset;
    if (code >= 0 && code < SEG_CODES) out.push(code);
  }
  return out;
}
