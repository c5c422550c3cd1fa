/** A tiny fine-tuning dataset on disk: PNG images of flat colours and a JSONL of captions about them. */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { PNG } from 'pngjs';

export const COLOURS: readonly (readonly [string, [number, number, number]])[] = [
  ['red', [220, 30, 30]],
  ['green', [30, 200, 40]],
  ['blue', [30, 40, 220]],
  ['black', [5, 5, 5]],
  ['white', [250, 250, 250]],
  ['grey', [128, 128, 128]],
];

/** Writes `n` images and `<name>.jsonl` into `dir` (cycling through the colours); returns the JSONL path. */
export function tinyJsonl(dir: string, n = 6, name = 'train'): string {
  fs.mkdirSync(path.join(dir, 'images'), { recursive: true });
  const lines: string[] = [];
  for (let i = 0; i < n; i++) {
    const [word, rgb] = COLOURS[i % COLOURS.length];
    const png = new PNG({ width: 8, height: 6 });
    for (let p = 0; p < 48; p++) png.data.set([rgb[0], rgb[1], (rgb[2] + i) % 256, 255], p * 4);
    const image = `images/${name}-${i}.png`;
    fs.writeFileSync(path.join(dir, image), PNG.sync.write(png));
    lines.push(JSON.stringify({ image, prefix: i % 2 ? 'caption en' : 'answer en what colour?', suffix: i % 2 ? `a ${word} square` : word }));
  }
  const file = path.join(dir, `${name}.jsonl`);
  fs.writeFileSync(file, lines.join('\n') + '\n');
  return file;
}
