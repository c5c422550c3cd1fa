/**
 * `drawDetections`: the boxes of a detection answer drawn on the picture, as PNG bytes (for tslab's
 * `display.png`, a file, an <img>) and as raw RGB pixels. Small pictures are enlarged (nearest neighbour) so a
 * 64 x 64 image still shows its boxes; each label gets a colour, listed in `legend` (no fonts: labels are not
 * written on the picture).
 */
import { PNG } from 'pngjs';
import { loadImage, toRgb, type ImageSource, type RawImage } from '../preprocess/image';
import type { Box, DetectedObject } from '../preprocess/outputs';

export type Rgb = readonly [number, number, number];

/** Colours for boxes, in order of first appearance of a label (Google's four, then more). */
export const BOX_COLOURS: readonly Rgb[] = [
  [234, 67, 53], [66, 133, 244], [52, 168, 83], [251, 188, 4], [171, 71, 188], [0, 172, 193], [255, 112, 67], [158, 157, 36],
];

export interface DrawOptions {
  /** Enlarge until the longer side is at least this many pixels (a whole factor; default 256; 0: never). */
  readonly minSize?: number;
  /** Line width in output pixels (default 2). */
  readonly thickness?: number;
}

export interface Drawing {
  /** RGB, the enlarged size. */
  readonly image: RawImage;
  readonly png: Uint8Array;
  /** How much the picture was enlarged. */
  readonly scale: number;
  /** Each label (in order of first appearance) and its colour. */
  readonly legend: ReadonlyArray<{ readonly label: string; readonly colour: Rgb }>;
}

/**
 * Draw each object's box (in pixels of `image`, as `parseDetections(text, { height, width })` gives them) as a
 * rectangle outline; boxes are clamped to the picture, and yMin/yMax (xMin/xMax) may come in either order.
 */
export function drawDetections(source: ImageSource, objects: ReadonlyArray<Pick<DetectedObject, 'label' | 'box'>>, options: DrawOptions = {}): Drawing {
  const rgb = toRgb(loadImage(source, 'drawDetections'));
  const { height: h, width: w } = rgb;
  const minSize = options.minSize ?? 256;
  const scale = minSize > 0 ? Math.max(1, Math.ceil(minSize / Math.max(h, w))) : 1;
  const thickness = options.thickness ?? 2;
  if (!(Number.isInteger(thickness) && thickness >= 1)) throw new Error(`drawDetections: thickness must be an integer >= 1, got ${thickness}`);
  const H = h * scale;
  const W = w * scale;
  const out = new Uint8Array(H * W * 3);
  for (let y = 0; y < H; y++) {
    for (let x = 0; x < W; x++) {
      const from = 3 * (Math.floor(y / scale) * w + Math.floor(x / scale));
      // float pixels are 0..255 values (as decoded): rounded and clamped
      for (let c = 0; c < 3; c++) out[3 * (y * W + x) + c] = Math.min(255, Math.max(0, Math.round(rgb.data[from + c])));
    }
  }
  const legend: Array<{ label: string; colour: Rgb }> = [];
  const colourOf = (label: string): Rgb => {
    let entry = legend.find((l) => l.label === label);
    if (entry === undefined) {
      entry = { label, colour: BOX_COLOURS[legend.length % BOX_COLOURS.length] };
      legend.push(entry);
    }
    return entry.colour;
  };
  for (const o of objects) outline(out, W, H, scaled(o.box, scale, W, H), colourOf(o.label), thickness);
  const image: RawImage = { data: out, height: H, width: W, channels: 3 };
  return { image, png: imagePng(image), scale, legend };
}

/** A box in output pixels: [top, left, bottom, right] (inclusive), ordered and clamped. */
function scaled(b: Box, scale: number, W: number, H: number): [number, number, number, number] {
  const clamp = (v: number, hi: number) => Math.min(hi, Math.max(0, Math.round(v * scale)));
  const [y0, y1] = [clamp(Math.min(b.yMin, b.yMax), H - 1), clamp(Math.max(b.yMin, b.yMax), H - 1)];
  const [x0, x1] = [clamp(Math.min(b.xMin, b.xMax), W - 1), clamp(Math.max(b.xMin, b.xMax), W - 1)];
  return [y0, x0, y1, x1];
}

function outline(px: Uint8Array, W: number, H: number, [top, left, bottom, right]: number[], colour: Rgb, thickness: number): void {
  const set = (y: number, x: number) => {
    if (y >= 0 && y < H && x >= 0 && x < W) px.set(colour, 3 * (y * W + x));
  };
  for (let k = 0; k < thickness; k++) {
    for (let x = left; x <= right; x++) {
      set(top + k, x);
      set(bottom - k, x);
    }
    for (let y = top; y <= bottom; y++) {
      set(y, left + k);
      set(y, right - k);
    }
  }
}

/** PNG bytes of an RGB image (8 bits, opaque). */
export function imagePng(image: RawImage): Uint8Array {
  const { height, width } = image;
  const rgb = toRgb(image);
  const png = new PNG({ width, height });
  for (let i = 0; i < width * height; i++) {
    png.data[4 * i] = rgb.data[3 * i];
    png.data[4 * i + 1] = rgb.data[3 * i + 1];
    png.data[4 * i + 2] = rgb.data[3 * i + 2];
    png.data[4 * i + 3] = 255;
  }
  return new Uint8Array(PNG.sync.write(png));
}
