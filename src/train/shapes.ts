/**
 * A seeded generator of pictures of coloured shapes and PaliGemma-style tasks about them: the data the
 * shipped `paligemma_shapes` model was trained on (scripts/train-shapes.mjs) and is evaluated on.
 *
 * Pure: picture `index` of seed `seed` depends on nothing else (not on how many pictures are asked for), so a
 * test can pin literal records and a fresh seed gives pictures the model has never seen.
 *
 *   scene:   1 to 3 shapes (circle, square, triangle), each red, green, blue or yellow, 7 to 13 px, on a white
 *            SIZE x SIZE picture, never touching (a 1 px gap at least), listed left to right (then top down).
 *   caption en                  -> a red circle            (1 shape)
 *                                  a red circle and a blue square
 *                                  a red circle, a blue square and a green triangle
 *   answer en how many shapes?  -> 2
 *   detect circle               -> <loc0096><loc0064><loc0384><loc0352> circle ; <loc...>...<loc...> circle
 *
 * Boxes use PaliGemma's detection format (src/preprocess/outputs.ts): four `<locNNNN>` tokens y0 x0 y1 x1,
 * each a coordinate in 1024 bins of the picture, of the drawn pixels' bounding box in continuous coordinates
 * (row r spans [r, r + 1)): bin = edge * 1024 / SIZE, the far edges (at most SIZE) clipped to 1023, the last bin.
 */
import type { RawImage } from '../preprocess/image';

export const SHAPE_KINDS = ['circle', 'square', 'triangle'] as const;
export const COLOURS = ['red', 'green', 'blue', 'yellow'] as const;
export type ShapeKind = (typeof SHAPE_KINDS)[number];
export type Colour = (typeof COLOURS)[number];

/** The RGB of each colour, and of the background. */
export const RGB: Readonly<Record<Colour | 'background', readonly [number, number, number]>> = {
  red: [220, 40, 40],
  green: [40, 170, 60],
  blue: [40, 80, 220],
  yellow: [230, 200, 40],
  background: [255, 255, 255],
};

export const SHAPES_IMAGE_SIZE = 32;
export const MIN_SHAPE = 7;
export const MAX_SHAPE = 13;
export const MAX_SHAPES = 3;

/** One shape: its kind, colour and the square of pixels `[top, top + size) x [left, left + size)` it fills. */
export interface Shape {
  readonly kind: ShapeKind;
  readonly colour: Colour;
  readonly top: number;
  readonly left: number;
  readonly size: number;
}

export interface Scene {
  /** The picture's side in pixels. */
  readonly size: number;
  /** Left to right (by `left`, then `top`). */
  readonly shapes: readonly Shape[];
}

/** The task prompts (PaliGemma's prefixes; the model input adds the trailing newline). */
export const CAPTION_PREFIX = 'caption en';
export const COUNT_PREFIX = 'answer en how many shapes?';
export const detectPrefix = (kind: ShapeKind): string => `detect ${kind}`;

export interface TaskRecord {
  readonly prefix: string;
  readonly suffix: string;
}

// ---------------------------------------------------------------------------------------------------------
// Randomness: a counter-based hash, so picture i of a seed needs no other picture
// ---------------------------------------------------------------------------------------------------------

/** A 32-bit mix (splitmix32's finaliser). */
function mix32(x: number): number {
  x = Math.imul(x ^ (x >>> 16), 0x85ebca6b);
  x = Math.imul(x ^ (x >>> 13), 0xc2b2ae35);
  return (x ^ (x >>> 16)) >>> 0;
}

/** A stream of uniform integers for (seed, index). */
export function shapesRng(seed: number, index: number): (n: number) => number {
  if (!Number.isInteger(seed) || seed < 0 || seed > 0xffffffff) throw new Error(`shapes: seed must be an integer in [0, 2^32), got ${seed}`);
  if (!Number.isInteger(index) || index < 0 || index > 0xffffffff) throw new Error(`shapes: index must be an integer in [0, 2^32), got ${index}`);
  let state = mix32(mix32(seed ^ 0x9e3779b9) ^ Math.imul(index, 0x632be5ab)) >>> 0;
  /** An integer in [0, n). (The modulo bias is < n / 2^32: irrelevant here.) */
  return (n: number) => {
    state = (state + 0x9e3779b9) >>> 0;
    return mix32(state) % n;
  };
}

// ---------------------------------------------------------------------------------------------------------
// Scenes
// ---------------------------------------------------------------------------------------------------------

/** Boxes at least one pixel apart (no shared edge, no touching corner). */
const apart = (a: Shape, b: Shape): boolean =>
  a.left + a.size < b.left || b.left + b.size < a.left || a.top + a.size < b.top || b.top + b.size < a.top;

/** Picture `index` of `seed`: 1 to 3 shapes, placed by rejection sampling (a shape that cannot fit is dropped). */
export function makeScene(seed: number, index: number, size = SHAPES_IMAGE_SIZE): Scene {
  if (!Number.isInteger(size) || size < MAX_SHAPE || size > 1024) throw new Error(`shapes: size must be an integer in [${MAX_SHAPE}, 1024], got ${size}`);
  const rand = shapesRng(seed, index);
  const wanted = 1 + rand(MAX_SHAPES);
  const shapes: Shape[] = [];
  for (let tries = 0; shapes.length < wanted && tries < 100; tries++) {
    const s = MIN_SHAPE + rand(MAX_SHAPE - MIN_SHAPE + 1);
    const candidate: Shape = {
      kind: SHAPE_KINDS[rand(SHAPE_KINDS.length)],
      colour: COLOURS[rand(COLOURS.length)],
      top: rand(size - s + 1),
      left: rand(size - s + 1),
      size: s,
    };
    if (shapes.every((o) => apart(o, candidate))) shapes.push(candidate);
  }
  shapes.sort((a, b) => a.left - b.left || a.top - b.top);
  return { size, shapes };
}

/** Whether pixel (row y, column x) belongs to the shape (tested at the pixel's centre). */
export function covers(s: Shape, y: number, x: number): boolean {
  const r = y - s.top;
  const c = x - s.left;
  if (r < 0 || c < 0 || r >= s.size || c >= s.size) return false;
  if (s.kind === 'square') return true;
  const cx = s.size / 2;
  if (s.kind === 'circle') {
    // centre distance <= radius; the pixels touching the box's middle rows and columns are always in
    return (c + 0.5 - cx) ** 2 + (r + 0.5 - cx) ** 2 <= cx * cx;
  }
  // triangle, apex up: row r spans a half-width of (r + 1) / 2 about the centre, so the top row has one pixel
  // (odd size) or two (even size) and the bottom row is full: the drawn pixels fill the box's bounds exactly
  return Math.abs(c + 0.5 - cx) <= (r + 1) / 2;
}

/** The scene as an RGB picture (later shapes never overlap earlier ones: they are apart). */
export function renderScene(scene: Scene): RawImage & { readonly data: Uint8Array } {
  const { size } = scene;
  const data = new Uint8Array(size * size * 3);
  for (let y = 0; y < size; y++) {
    for (let x = 0; x < size; x++) {
      const hit = scene.shapes.find((s) => covers(s, y, x));
      data.set(RGB[hit ? hit.colour : 'background'], (y * size + x) * 3);
    }
  }
  return { height: size, width: size, channels: 3, data };
}

// ---------------------------------------------------------------------------------------------------------
// Tasks
// ---------------------------------------------------------------------------------------------------------

export const locToken = (bin: number): string => `<loc${String(bin).padStart(4, '0')}>`;

/** An edge (a pixel boundary, 0..size) as a location bin: edge * 1024 / size, at most 1023. */
export function edgeToBin(edge: number, size: number): number {
  return Math.min(1023, Math.floor((edge * 1024) / size));
}

/** The shape's box as PaliGemma's four location tokens, y0 x0 y1 x1. */
export function boxTokens(s: Shape, size: number): string {
  return [s.top, s.left, s.top + s.size, s.left + s.size].map((e) => locToken(edgeToBin(e, size))).join('');
}

const describe = (s: Shape): string => `a ${s.colour} ${s.kind}`;

export function caption(scene: Scene): string {
  const parts = scene.shapes.map(describe);
  if (parts.length <= 1) return parts.join('');
  return `${parts.slice(0, -1).join(', ')} and ${parts[parts.length - 1]}`;
}

/** The detection answer for one kind: every shape of it, left to right, separated by ` ; ` ("" when none). */
export function detect(scene: Scene, kind: ShapeKind): string {
  return scene.shapes
    .filter((s) => s.kind === kind)
    .map((s) => `${boxTokens(s, scene.size)} ${kind}`)
    .join(' ; ');
}

/** Every task of a scene: caption, count, then one detection per kind present (in SHAPE_KINDS order). */
export function sceneTasks(scene: Scene): TaskRecord[] {
  const kinds = SHAPE_KINDS.filter((k) => scene.shapes.some((s) => s.kind === k));
  return [
    { prefix: CAPTION_PREFIX, suffix: caption(scene) },
    { prefix: COUNT_PREFIX, suffix: String(scene.shapes.length) },
    ...kinds.map((k) => ({ prefix: detectPrefix(k), suffix: detect(scene, k) })),
  ];
}

/**
 * A task the shipped model was NOT trained on, for fine-tuning it (the README's LoRA example):
 * `answer en how many <colour> shapes?` -> the number of shapes of that colour (0 to 3). One record per
 * picture, the colour drawn from the picture's own stream (so roughly half the answers are 0).
 */
export const colourCountPrefix = (colour: Colour): string => `answer en how many ${colour} shapes?`;

export function colourCountTask(scene: Scene, seed: number, index: number): TaskRecord {
  const colour = COLOURS[shapesRng(seed ^ 0x27d4eb2f, index)(COLOURS.length)];
  return { prefix: colourCountPrefix(colour), suffix: String(scene.shapes.filter((s) => s.colour === colour).length) };
}

/** The task family of a prefix, for per-prefix accuracy (`detect <kind>` -> `detect`). */
export const taskOf = (prefix: string): string => (prefix.startsWith('detect ') ? 'detect' : prefix);

/** Every word the tasks use (prompts and answers), for the model's vocabulary. */
export const SHAPES_WORDS: readonly string[] = [
  ...new Set([
    ...CAPTION_PREFIX.split(' '),
    ...COUNT_PREFIX.replace('?', '').split(' '),
    'detect',
    'a',
    'and',
    ...SHAPE_KINDS,
    ...COLOURS,
  ]),
];
