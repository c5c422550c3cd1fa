/**
 * `paligemma make-shapes --out DIR --count N --seed S [--tasks all|colour-count]`: writes the shapes data set
 * (src/train/shapes.ts) as PNG pictures and one JSONL of `{image, prefix, suffix}` records (image paths
 * relative to the JSONL): every task of every picture (caption, count, one detection per kind present), or
 * one colour-count question per picture, the task the README fine-tunes the shipped model on with LoRA.
 *
 *   DIR/shapes.jsonl
 *   DIR/images/000000.png ...
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { PNG } from 'pngjs';
import { writeFileAtomic } from '../../checkpoints/atomic';
import { defineCommand } from './command';
import { colourCountTask, makeScene, renderScene, sceneTasks, SHAPES_IMAGE_SIZE } from '../train/shapes';

export interface ShapesRecord {
  readonly image: string;
  readonly prefix: string;
  readonly suffix: string;
}

/** PNG bytes of an RGB picture (opaque). */
export function encodePng(image: { height: number; width: number; data: Uint8Array }): Uint8Array {
  const png = new PNG({ width: image.width, height: image.height });
  for (let i = 0; i < image.height * image.width; i++) {
    png.data.set(image.data.subarray(i * 3, i * 3 + 3), i * 4);
    png.data[i * 4 + 3] = 255;
  }
  return new Uint8Array(PNG.sync.write(png));
}

/** Which records: every task the shipped model knows, or the colour-count task it does not (shapes.ts). */
export type ShapesTasks = 'all' | 'colour-count';

/** Writes pictures 0 .. count - 1 of `seed` and their records; returns the records (in file order). */
export function writeShapesDataset(dir: string, seed: number, count: number, size = SHAPES_IMAGE_SIZE, tasks: ShapesTasks = 'all'): ShapesRecord[] {
  if (fs.existsSync(dir) && !fs.statSync(dir).isDirectory()) throw new Error(`--out ${dir} is a file, not a directory`);
  fs.mkdirSync(path.join(dir, 'images'), { recursive: true });
  const records: ShapesRecord[] = [];
  const digits = Math.max(6, String(count - 1).length);
  for (let i = 0; i < count; i++) {
    const scene = makeScene(seed, i, size);
    const image = `images/${String(i).padStart(digits, '0')}.png`;
    writeFileAtomic(path.join(dir, image), encodePng(renderScene(scene)));
    for (const t of tasks === 'all' ? sceneTasks(scene) : [colourCountTask(scene, seed, i)]) records.push({ image, prefix: t.prefix, suffix: t.suffix });
  }
  writeFileAtomic(path.join(dir, 'shapes.jsonl'), records.map((r) => JSON.stringify(r) + '\n').join(''));
  return records;
}

export const makeShapesCommand = defineCommand({
  name: 'make-shapes',
  summary: 'write pictures of coloured shapes (PNG) and a JSONL of {image, prefix, suffix} tasks: caption, count, detect',
  example: 'paligemma make-shapes --out data/shapes --count 100 --seed 0',
  flags: {
    out: { type: 'string', help: 'the directory to write (created; shapes.jsonl and images/)', placeholder: 'dir', required: true },
    count: { type: 'integer', help: 'how many pictures', default: 100, min: 1, max: 1_000_000 },
    seed: { type: 'integer', help: 'the data seed: picture i of a seed is always the same', default: 0, min: 0, max: 0xffffffff },
    size: { type: 'integer', help: 'picture side in pixels', default: SHAPES_IMAGE_SIZE, min: 13, max: 1024 },
    tasks: {
      type: 'string',
      help: "all: caption, count and one detection per kind present, per picture; colour-count: one 'answer en how many <colour> shapes?' per picture (a task the shipped model was not trained on)",
      default: 'all',
      choices: ['all', 'colour-count'],
    },
  },
  async run(flags, _positionals, io) {
    const records = writeShapesDataset(flags.out, flags.seed, flags.count, flags.size, flags.tasks as ShapesTasks);
    io.out(`wrote ${flags.count} pictures and ${records.length} records to ${path.join(flags.out, 'shapes.jsonl')}`);
    return 0;
  },
});
