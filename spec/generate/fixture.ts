/**
 * keras_hub's generate() fixture (spec/fixtures/text/generate, README there) as the generation specs read it:
 * the manifest, its prompts as host rows, and the preset with the fixture's images for one test.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { tf } from '../../dsl/tf';
import * as d from '../../dsl';
import type { PaliGemmaParams } from '../../models/paligemma';
import type { Images } from '../../models/siglip';
import { readBin, type BinEntry } from '../../src/cli/fixture';
import { loadPreset } from '../../src/runtime/preset';

export const DIR = 'spec/fixtures/text/generate';
/** The token buffer's length. */
export const T = 24;
export const manifest = JSON.parse(fs.readFileSync(path.join(DIR, 'manifest.json'), 'utf8')) as {
  inputs: Record<'images' | 'token_ids' | 'padding_mask', BinEntry>;
  runs: Record<string, { outputs: { token_ids: BinEntry }; decode?: { logits: BinEntry }; sampling?: { uniforms: BinEntry } }>;
};
export const bin = (e: BinEntry) => readBin(DIR, e);
export const rowsOf = (flat: ArrayLike<number>, width: number): number[][] =>
  Array.from({ length: flat.length / width }, (_, r) => Array.from(flat).slice(r * width, (r + 1) * width));
export const tokenIds = rowsOf(bin(manifest.inputs.token_ids), T);
export const paddingMask = rowsOf(bin(manifest.inputs.padding_mask), T);
/** A run's generated token rows. */
export const runTokens = (name: string) => rowsOf(bin(manifest.runs[name].outputs.token_ids), T);
export const list = (a: ArrayLike<number>) => Array.from(a);

/** The fixture's preset and images for `fn`, freed after it. */
export async function withModel(fn: (p: PaliGemmaParams, images: Images) => Promise<void>): Promise<void> {
  const params = loadPreset(path.join(DIR, 'preset'));
  const images = d.named(tf.tensor(bin(manifest.inputs.images) as Float32Array, [...manifest.inputs.images.shape]), ['batch', 'height', 'width', 'channels'] as const);
  try {
    await fn(params, images);
  } finally {
    images.dispose();
    d.disposeTree(params);
  }
}
