/** The preset shipped in the package (checkpoints/tiny), found from the installed package's root. */
import * as fs from 'node:fs';
import * as path from 'node:path';

/**
 * `<package>/checkpoints/tiny` seen from the bundle (dist/index.js), else `./checkpoints/tiny` (a checkout,
 * where the spec bundles lie deeper in dist/). src/cli/commands.ts has the same lookup (`defaultPresetDir`).
 */
export function shippedPresetDir(): string {
  const candidates = [path.resolve(__dirname, '..', 'checkpoints', 'tiny'), path.resolve('checkpoints', 'tiny')];
  const found = candidates.find((c) => fs.existsSync(path.join(c, 'config.json')));
  if (!found) throw new Error(`the shipped tiny preset is missing; looked in ${candidates.join(', ')}`);
  return found;
}
