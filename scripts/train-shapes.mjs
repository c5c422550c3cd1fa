// Builds src/train/shapes_train.ts into dist/train-shapes.js (the same esbuild settings as scripts/build.mjs:
// tfjs' ESM builds bundled so that gradients are registered) and runs it with this script's arguments:
//
//   node scripts/train-shapes.mjs --steps 18000 --batch 48 --warmup 500 --out checkpoints/shapes
//   node scripts/train-shapes.mjs --eval --preset checkpoints/shapes --seed 7 --count 2000
//
// The shipped checkpoints/shapes was made by the first command (settings, loss curve and evaluations in its
// train_log.json); the second measures it. Training is not part of the tests.
import * as esbuild from 'esbuild';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';

const root = new URL('..', import.meta.url).pathname;
const [entry, name] = process.argv[2] === '--eval' ? ['src/train/shapes_eval.ts', 'eval-shapes'] : ['src/train/shapes_train.ts', 'train-shapes'];
const args = process.argv.slice(process.argv[2] === '--eval' ? 3 : 2);
await esbuild.build({
  bundle: true,
  platform: 'node',
  format: 'cjs',
  target: 'node20',
  mainFields: ['module', 'main'],
  external: ['webgpu', 'onnxruntime-node', 'onnxruntime-node/*'],
  sourcemap: 'linked',
  logLevel: 'warning',
  define: { 'process.env.NODE_ENV': '"production"' },
  entryPoints: { [name]: join(root, entry) },
  outdir: join(root, 'dist'),
});
const r = spawnSync(process.execPath, ['--enable-source-maps', join(root, 'dist', `${name}.js`), ...args], { stdio: 'inherit' });
process.exit(r.status ?? 1);
