/**
 * The npm package as a user gets it: `npm pack` holds what users need and nothing else, within a size
 * budget; the tarball installs into a scratch ESM project and a scratch CommonJS project (from the npm cache
 * when it can: `--prefer-offline`; CI's `npm ci` fills the cache), whose scripts import the public API and
 * `paligemma-ts/testing` through the `exports` map and generate with the shipped preset, as this process does
 * from the sources. `webgpu` is an optional peer: not installed, and asked for only by the webgpu backend.
 *
 * Both `npm pack` runs use --ignore-scripts: `prepack` would rebuild dist/ under the running tests (npm test
 * has just built it).
 */
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tempDir } from './helpers/files';
import { setBackend } from '../src/runtime/backend';
import { generateText, loadCausalLM } from '../src/generate/causal_lm';
import { webgpuMissingMessage } from '../src/runtime/backend';
import * as d from '../dsl';
import { SHIPPED_PRESETS } from '../checkpoints/presets';

const root = join(__dirname, '..', '..');
const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as {
  name: string;
  version: string;
  exports: Record<string, string | Record<string, string>>;
  bin: Record<string, string>;
};

/** The environment for a child npm: the parent `npm test`'s own npm_* settings are not the child's. */
function npmEnv(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!/^npm_/i.test(k)) env[k] = v;
  return { ...env, npm_config_audit: 'false', npm_config_fund: 'false', npm_config_update_notifier: 'false', ...extra };
}

function sh(cmd: string, args: string[], cwd: string, env: NodeJS.ProcessEnv = npmEnv()): string {
  const r = spawnSync(cmd, args, { cwd, env, encoding: 'utf8', timeout: 300_000, maxBuffer: 64 << 20 });
  if (r.status !== 0) {
    throw new Error(`${cmd} ${args.join(' ')} (in ${cwd}) exited with ${r.status ?? r.error?.message}:\n${r.stderr}\n${r.stdout}`.trim());
  }
  return r.stdout;
}

interface PackEntry {
  filename: string;
  size: number;
  unpackedSize: number;
  files: { path: string; size: number }[];
}

// The budget: what the code needs (one bundle with TensorFlow.js inside, its views, the types, the bin),
// plus the shipped preset(s). 25.7 MB / 148 MB unpacked before this check existed.
const CODE_UNPACKED_BUDGET = 4 * 2 ** 20;
const PACKED_BUDGET = 2 * 2 ** 20;

test('npm pack holds the bundle, its views, the types, bin, LICENSE and the shipped presets, within the budget', (t) => {
  const [entry] = JSON.parse(sh('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], root)) as PackEntry[];
  const paths = entry.files.map((f) => f.path).sort();
  const preset = entry.files.filter((f) => f.path.startsWith('checkpoints/'));
  const code = entry.files.filter((f) => !f.path.startsWith('checkpoints/'));
  const codeBytes = code.reduce((n, f) => n + f.size, 0);
  t.log(`packed ${(entry.size / 2 ** 20).toFixed(2)} MiB, unpacked ${(entry.unpackedSize / 2 ** 20).toFixed(2)} MiB ` +
    `(code ${(codeBytes / 2 ** 20).toFixed(2)} MiB, preset ${(preset.reduce((n, f) => n + f.size, 0) / 2 ** 20).toFixed(2)} MiB), ${paths.length} files`);
  t.true(codeBytes <= CODE_UNPACKED_BUDGET, `code is ${codeBytes} bytes unpacked, over the ${CODE_UNPACKED_BUDGET} budget`);
  t.true(entry.size <= PACKED_BUDGET + preset.reduce((n, f) => n + f.size, 0), `the tarball is ${entry.size} bytes`);

  // nothing users do not need
  t.deepEqual(paths.filter((p) => /\.map$|(^|\/)spec\/|bench|\.ts$(?<!\.d\.ts)|^src\/|^scripts\/|^\.ci\//.test(p)), []);
  t.deepEqual([...new Set(paths.map((p) => p.split('/')[0]))].sort(), ['LICENSE', 'README.md', 'bin', 'checkpoints', 'dist', 'package.json']);
  t.deepEqual([...new Set(preset.map((f) => f.path.split('/')[1]))].sort(), ['shapes', 'tiny']);
  t.true(readFileSync(join(root, 'LICENSE'), 'utf8').includes('Apache License\n                           Version 2.0, January 2004'));
  // everything the exports map and bin name is in it
  const targets = Object.values(pkg.exports).flatMap((v) => (typeof v === 'string' ? [v] : Object.values(v)));
  for (const target of [...targets, ...Object.values(pkg.bin)]) t.true(paths.includes(target.replace(/^\.\//, '')), target);
});

const esmScript = `
import { tf, setBackend, loadCausalLM, generateText, backendInfo, SHIPPED_PRESETS } from 'paligemma-ts';
import { defaultPresetDir, memoryNeutral } from 'paligemma-ts/testing';
import * as cjsView from 'paligemma-ts';
await setBackend('wasm');
const lm = loadCausalLM(defaultPresetDir());
const { result } = await memoryNeutral(() =>
  generateText(lm, { images: [defaultPresetDir() + '/' + SHIPPED_PRESETS[0].image], prompts: ['caption en\\n'] }, { maxLength: 24, stripPrompt: true }),
);
let webgpu;
try { await setBackend('webgpu'); webgpu = 'started'; } catch (e) { webgpu = e.message; }
console.log(JSON.stringify({
  text: result.texts[0], backend: backendInfo().name, tf: tf.version_core, resolved: import.meta.resolve('paligemma-ts'),
  testing: import.meta.resolve('paligemma-ts/testing'), browser: import.meta.resolve('paligemma-ts/browser'), preset: defaultPresetDir(), webgpu, names: Object.keys(cjsView).length,
}));
`;

const cjsScript = `
const { tf, setBackend, loadCausalLM, generateText, backendInfo, SHIPPED_PRESETS } = require('paligemma-ts');
const { defaultPresetDir, memoryNeutral } = require('paligemma-ts/testing');
(async () => {
  await setBackend('wasm');
  const lm = loadCausalLM(defaultPresetDir());
  const { result } = await memoryNeutral(() =>
    generateText(lm, { images: [defaultPresetDir() + '/' + SHIPPED_PRESETS[0].image], prompts: ['caption en\\n'] }, { maxLength: 24, stripPrompt: true }),
  );
  let webgpu;
  try { await setBackend('webgpu'); webgpu = 'started'; } catch (e) { webgpu = e.message; }
  console.log(JSON.stringify({
    text: result.texts[0], backend: backendInfo().name, tf: tf.version_core, resolved: require.resolve('paligemma-ts'),
    testing: require.resolve('paligemma-ts/testing'), preset: defaultPresetDir(), webgpu, names: Object.keys(require('paligemma-ts')).length,
  }));
})();
`;

const typesEsm = `
import { tf, setBackend, type BackendInfo, type CausalLM } from 'paligemma-ts';
import { memoryNeutral, defaultPresetDir } from 'paligemma-ts/testing';
import type { PresetBytes } from 'paligemma-ts/browser';
declare const files: PresetBytes;
const info: BackendInfo = await setBackend('cpu');
const count: number = (await memoryNeutral(() => tf.memory().numTensors)).result;
const dir: string = defaultPresetDir();
declare const lm: CausalLM;
// @ts-expect-error: a string is not a backend info
const wrong: BackendInfo = 'cpu';
export { info, count, dir, lm, wrong, files };
`;

const typesCjs = `
import pg = require('paligemma-ts');
import testing = require('paligemma-ts/testing');
export const name: pg.BackendName = 'wasm';
export const dir: string = testing.defaultPresetDir();
// @ts-expect-error: no such export
pg.noSuchExport();
`;

test('the tarball installs into scratch ESM and CommonJS projects, which generate what the sources generate', async (t) => {
  t.timeout(600_000);
  const tmp = tempDir(t, 'paligemma-package-');
  let started = Date.now();
  const [packed] = JSON.parse(sh('npm', ['pack', '--json', '--ignore-scripts', '--pack-destination', tmp], root)) as PackEntry[];
  const tarball = join(tmp, packed.filename);
  t.is(packed.filename, `${pkg.name}-${pkg.version}.tgz`);
  t.log(`npm pack: ${((Date.now() - started) / 1000).toFixed(1)} s`);

  const app = join(tmp, 'app');
  mkdirSync(join(app, 'cjs'), { recursive: true });
  writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'scratch-esm', private: true, type: 'module' }));
  writeFileSync(join(app, 'cjs', 'package.json'), JSON.stringify({ name: 'scratch-cjs', private: true, type: 'commonjs' }));
  writeFileSync(join(app, 'main.js'), esmScript);
  writeFileSync(join(app, 'cjs', 'main.js'), cjsScript);
  started = Date.now();
  // fast-check: the testing kit's optional peer, which a user of the kit has
  sh('npm', ['install', tarball, 'fast-check', '--prefer-offline', '--no-audit', '--no-fund', '--loglevel=error'], app);
  t.log(`npm install (prefer-offline): ${((Date.now() - started) / 1000).toFixed(1)} s`);
  t.false(existsSync(join(app, 'node_modules', 'webgpu')), 'webgpu is an optional peer: not installed');
  t.false(existsSync(join(app, 'node_modules', 'paligemma-ts', 'dist', 'spec')));

  // The answer here, from the sources, on the same backend
  await setBackend('wasm');
  const shipped = SHIPPED_PRESETS[0];
  const lm = loadCausalLM(join(root, shipped.dir));
  const here = await generateText(lm, { images: [join(root, shipped.dir, shipped.image)], prompts: ['caption en\n'] }, { maxLength: 24, stripPrompt: true });
  d.disposeTree(lm.params);

  // A Vulkan ICD manifest is named, so the webgpu backend gets as far as loading the (absent) webgpu package.
  const icd = join(tmp, 'icd.json');
  writeFileSync(icd, '{}');
  const env = npmEnv({ VK_ICD_FILENAMES: icd, XDG_RUNTIME_DIR: tmp });
  const installed = join(app, 'node_modules', 'paligemma-ts');
  for (const [kind, cwd, entry] of [['esm', app, 'index.mjs'], ['cjs', join(app, 'cjs'), 'index.js']] as const) {
    const out = JSON.parse(sh(process.execPath, ['main.js'], cwd, env)) as Record<string, string | number>;
    t.is(out.text, here.texts[0], kind);
    t.is(out.backend, 'wasm', kind);
    t.true(String(out.resolved).endsWith(`node_modules/paligemma-ts/dist/${entry}`), `${kind}: ${out.resolved}`);
    t.true(String(out.testing).endsWith(`dist/testing.${kind === 'esm' ? 'mjs' : 'js'}`), kind);
    if (kind === 'esm') t.true(String(out.browser).endsWith('node_modules/paligemma-ts/dist/browser.mjs'), String(out.browser));
    t.is(out.preset, join(installed, shipped.dir), kind);
    t.is(out.webgpu, webgpuMissingMessage, kind);
    t.true(Number(out.names) > 100, `${kind}: ${out.names} exports`);
  }

  // the types, through the exports map, as TypeScript resolves them for ESM and for CommonJS
  writeFileSync(join(app, 'types.mts'), typesEsm);
  writeFileSync(join(app, 'cjs', 'types.cts'), typesCjs);
  const tsc = join(root, 'node_modules', 'typescript', 'bin', 'tsc');
  const tscArgs = ['--noEmit', '--strict', '--module', 'nodenext', '--moduleResolution', 'nodenext', '--target', 'es2022'];
  tscArgs.push('--skipLibCheck', '--types', 'node', '--typeRoots', join(root, 'node_modules', '@types'), 'types.mts', 'cjs/types.cts');
  const typed = spawnSync(process.execPath, [tsc, ...tscArgs], { cwd: app, encoding: 'utf8' });
  t.is(typed.status, 0, typed.stdout);

  // the bin, as the README's first command runs it
  const bin = spawnSync(join(app, 'node_modules', '.bin', 'paligemma'), ['generate', '--prompt', 'caption en', '--backend', 'wasm', '--max-length', '24'], {
    cwd: app,
    env,
    encoding: 'utf8',
  });
  t.is(bin.status, 0, bin.stderr);
  t.is(bin.stdout, `${here.texts[0]}\n`);
});
