// Build: the package (dist/index.js and its views), one bundle per spec file (dist/spec/**), the bench.
//
// Why a bundler: tfjs-core 4.22's ESM build cannot be loaded by Node (extensionless imports) and its CommonJS
// build registers no gradients. esbuild with mainFields [module, main] bundles the ESM builds of tfjs-core
// and the backends into CommonJS that plain `node` runs, keeping the packages' side-effect imports (kernel
// and gradient registration: tfjs lists them under "sideEffects", which esbuild honours). The native
// `webgpu` addon stays external (an optional peer, loaded only when the webgpu backend is asked for). Types
// come from `tsc --emitDeclarationOnly`.
//
// What the package ships (package.json "exports"):
//   dist/index.js     CommonJS: the library, with the one TensorFlow.js inside; no source map
//   dist/index.mjs    ESM: the same module's exports, named (Node's "ES module wrapper" for dual packages: a
//                     second, ESM bundle would hold a second TensorFlow.js, and tensors of one engine are
//                     foreign to the other)
//   dist/testing.js   CommonJS: `paligemma-ts/testing`, the kit (src/testing), which reaches the library only
//                     through require('./index.js') (one TensorFlow.js) and needs fast-check (an optional peer)
//   dist/testing.mjs  ESM: the same, named
//   dist/browser.mjs  ESM for browsers: `paligemma-ts/browser` (src/browser.ts), minified, Node's modules
//                     replaced by stubs that throw (see nodeOnly below)
//   dist/types/       declarations
// Developers' bundles (dist/spec/**, dist/bench.js) keep their source maps and are not shipped.
import * as esbuild from 'esbuild';
import { execFileSync } from 'node:child_process';
import { readdirSync, statSync, rmSync, existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

const root = new URL('..', import.meta.url).pathname;
const walk = (dir) =>
  readdirSync(join(root, dir)).flatMap((name) => {
    const rel = join(dir, name);
    if (name === 'fixtures') return [];
    return statSync(join(root, rel)).isDirectory() ? walk(rel) : [rel];
  });

// tfjs-core requires node-fetch only where Node has no global fetch (before 18; we need 20): bundling it and
// its URL parser (tr46, whatwg-url) cost 390 KB of the package's budget for a path never taken
const noNodeFetch = {
  name: 'no-node-fetch',
  setup(build) {
    build.onResolve({ filter: /^node-fetch$/ }, () => ({ path: 'node-fetch', namespace: 'no-node-fetch' }));
    build.onLoad({ filter: /.*/, namespace: 'no-node-fetch' }, () => ({
      loader: 'js',
      contents: `module.exports = function fetch() { throw new Error("node-fetch is not bundled: paligemma-ts needs Node >= 20, whose global fetch tfjs uses"); };`,
    }));
  },
};

const common = {
  bundle: true,
  plugins: [noNodeFetch],
  platform: 'node',
  format: 'cjs',
  target: 'node20',
  mainFields: ['module', 'main'],
  // webgpu and onnxruntime-node are native addons; ava must be the runner's own instance (a bundled copy has no runner).
  external: ['webgpu', 'ava', 'onnxruntime-node', 'onnxruntime-node/*'],
  sourcemap: 'linked',
  logLevel: 'warning',
  // tfjs prints a banner suggesting tfjs-node on first use; it is noise for our users.
  define: { 'process.env.NODE_ENV': '"production"' },
};

// The testing kit imports the library as '../index' (src/index.ts): in its own bundle that is the built
// library, so the kit and the user's code share one TensorFlow.js; fast-check is the user's own.
const kitOnLibrary = {
  name: 'kit-on-library',
  setup(build) {
    build.onResolve({ filter: /^\.\.\/index$/ }, (args) =>
      args.importer === join(root, 'src', 'testing', 'index.ts') ? { path: './index.js', external: true } : undefined,
    );
  },
};

// The browser build: Node's built-in modules (and pngjs, the native webgpu addon) resolve to stubs whose
// every export throws "<module>.<name> is Node-only", so that Node-only paths (file names, caches, pngjs) are
// inert in a page and say so if reached. The stubs are side-effect free: what the browser path does not
// use, esbuild drops, and spec/browser.spec.ts checks what remains.
const NODE_ONLY = /^(node:.*|fs|path|os|zlib|module|url|util|stream|events|assert|crypto|child_process|worker_threads|perf_hooks|buffer|pngjs|webgpu|onnxruntime-node(?:\/.*)?)$/;
const nodeOnly = {
  name: 'node-only',
  setup(build) {
    build.onResolve({ filter: NODE_ONLY }, (args) =>
      // packages map their Node-only requires to nothing themselves ("browser": {"fs": false}); ours get stubs
      args.importer.includes('/node_modules/') && !/^(pngjs|webgpu|onnxruntime-node)/.test(args.path)
        ? undefined
        : { path: args.path.replace(/^node:/, ''), namespace: 'node-only', sideEffects: false },
    );
    build.onLoad({ filter: /.*/, namespace: 'node-only' }, async (args) => {
      const names = args.path === 'pngjs' ? ['PNG'] : /^(webgpu|onnxruntime-node)/.test(args.path) ? [] : Object.keys(await import(`node:${args.path}`));
      const valid = names.filter((n) => /^[A-Za-z_$][\w$]*$/.test(n) && n !== 'default');
      const stub = (n) => `export const ${n} = /* @__PURE__ */ nodeOnly(${JSON.stringify(`${args.path}.${n}`)});`;
      return {
        loader: 'js',
        contents:
          `function nodeOnly(name) {\n` +
          `  return function () { throw new Error(name + ' is Node-only: not in the browser build of paligemma-ts (pass bytes, see paligemma-ts/browser)'); };\n` +
          `}\n${valid.map(stub).join('\n')}\nexport default {};\n`,
      };
    });
  },
};
const browserBuild = () =>
  esbuild.build({
    entryPoints: [join(root, 'src/browser.ts')],
    outfile: join(root, 'dist/browser.mjs'),
    bundle: true,
    platform: 'browser',
    format: 'esm',
    target: 'es2022',
    mainFields: ['browser', 'module', 'main'],
    minify: true,
    legalComments: 'eof',
    logLevel: 'warning',
    define: { 'process.env.NODE_ENV': '"production"' },
    plugins: [nodeOnly],
  });

// dist is not wiped: parallel builds (and a test run reading dist/spec) must not see it vanish.
// the specs, the module ava loads before each of them (package.json "ava.require"), and *.main.ts under
// spec/: scripts run with node (the fuzzer: npm run fuzz), bundled like the specs
const specs =
  existsSync(join(root, 'spec')) && !process.argv.includes('--no-specs')
    ? walk('spec').filter((f) => f.endsWith('.spec.ts') || f.endsWith('.main.ts') || f === join('spec', 'helpers', 'setup.ts'))
    : [];
await Promise.all([
  esbuild.build({ ...common, entryPoints: [join(root, 'src/index.ts')], outfile: join(root, 'dist/index.js'), sourcemap: false }),
  esbuild.build({
    ...common,
    entryPoints: [join(root, 'src/testing/index.ts')],
    outfile: join(root, 'dist/testing.js'),
    sourcemap: false,
    external: [...common.external, 'fast-check'],
    plugins: [...common.plugins, kitOnLibrary],
  }),
  browserBuild(),
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
for (const stale of ['dist/index.js.map']) rmSync(join(root, stale), { force: true });

// The ESM views, listing the CommonJS exports by name (asked of the built bundles in a child process: loading
// them here would start TensorFlow.js in the build).
const [names, testingNames] = JSON.parse(
  execFileSync(
    process.execPath,
    ['-p', `JSON.stringify([${JSON.stringify(join(root, 'dist/index.js'))}, ${JSON.stringify(join(root, 'dist/testing.js'))}].map((f) => Object.keys(require(f))))`],
    { encoding: 'utf8' },
  ),
);
const esmView = (keys, file) =>
  `// ESM view of dist/${file} (scripts/build.mjs): one module, one TensorFlow.js.\n` +
  `import m from './${file}';\n` +
  `export const { ${keys.join(', ')} } = m;\n`;
writeFileSync(join(root, 'dist/index.mjs'), esmView(names, 'index.js'));
writeFileSync(join(root, 'dist/testing.mjs'), esmView(testingNames, 'testing.js'));
if (!process.argv.includes('--no-types')) {
  // the project's own TypeScript: node_modules/.bin/tsc may be tslab's bundled 5.0 (a devDependency for the notebook)
  execFileSync(process.execPath, [join(root, 'node_modules/typescript/bin/tsc'), '-p', join(root, 'tsconfig.build.json')], { stdio: 'inherit' });
}
