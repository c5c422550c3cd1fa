// Build: one CommonJS bundle of the library (dist/index.js), one per spec file (dist/spec/**), the bench.
//
// Why a bundler: tfjs-core 4.22's ESM build cannot be loaded by Node (extensionless imports) and its CommonJS
// build registers no gradients. esbuild with mainFields [module, main] bundles the ESM builds of tfjs-core
// and the backends into CommonJS that plain `node` runs, keeping the packages' side-effect imports (kernel
// and gradient registration: tfjs lists them under "sideEffects", which esbuild honours). The native
// `webgpu` addon stays external. Types come from `tsc --emitDeclarationOnly`.
import * as esbuild from 'esbuild';
import { execFileSync } from 'node:child_process';
import { readdirSync, statSync, rmSync, existsSync } from 'node:fs';
import { join } from 'node:path';

const root = new URL('..', import.meta.url).pathname;
const walk = (dir) =>
  readdirSync(join(root, dir)).flatMap((name) => {
    const rel = join(dir, name);
    if (name === 'fixtures') return [];
    return statSync(join(root, rel)).isDirectory() ? walk(rel) : [rel];
  });

const common = {
  bundle: true,
  platform: 'node',
  format: 'cjs',
  target: 'node20',
  mainFields: ['module', 'main'],
  // webgpu is a native addon; ava must be the runner's own instance (a bundled copy has no runner).
  external: ['webgpu', 'ava'],
  sourcemap: 'linked',
  logLevel: 'warning',
  // tfjs prints a banner suggesting tfjs-node on first use; it is noise for our users.
  define: { 'process.env.NODE_ENV': '"production"' },
};

// dist is not wiped: parallel builds (and a test run reading dist/spec) must not see it vanish.
// *.main.ts under spec/ are scripts run with node (the fuzzer: npm run fuzz), bundled like the specs.
const specs = existsSync(join(root, 'spec')) ? walk('spec').filter((f) => f.endsWith('.spec.ts') || f.endsWith('.main.ts')) : [];
await Promise.all([
  esbuild.build({ ...common, entryPoints: { index: join(root, 'src/index.ts') }, outdir: join(root, 'dist') }),
  existsSync(join(root, 'src/cli/bench.ts')) &&
    esbuild.build({ ...common, entryPoints: { bench: join(root, 'src/cli/bench.ts') }, outdir: join(root, 'dist') }),
  specs.length &&
    esbuild.build({
      ...common,
      entryPoints: specs.map((f) => join(root, f)),
      outbase: root,
      outdir: join(root, 'dist'),
    }),
]);
if (!process.argv.includes('--no-types')) {
  // the project's own TypeScript: node_modules/.bin/tsc may be tslab's bundled 5.0 (a devDependency for the notebook)
  execFileSync(process.execPath, [join(root, 'node_modules/typescript/bin/tsc'), '-p', join(root, 'tsconfig.build.json')], { stdio: 'inherit' });
}
