/**
 * Process hygiene: the library, loaded in a user's process, leaves no process-wide handlers behind, prints
 * nothing of its own on stderr, does not wake Dawn on a machine without a Vulkan driver, and keeps one
 * private runtime directory per user instead of a new one per process.
 *
 * Each case runs a small user script in a child Node process against the built bundle (dist/index.js), with
 * its own TMPDIR, so what it leaves in the temporary directory can be listed.
 */
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tempDir } from '../helpers/files';
import { SWIFTSHADER_ICD, privateRuntimeDir, vulkanDrivers } from '../../src/runtime/backend';

const bundle = join(__dirname, '..', '..', 'index.js');

interface Run {
  status: number | null;
  stdout: string;
  stderr: string;
}

/** Runs `script` (CommonJS; `pg` is the package) in a child with TMPDIR=`tmp` and no XDG_RUNTIME_DIR. */
function user(script: string, tmp: string, env: NodeJS.ProcessEnv = {}): Run {
  const base: NodeJS.ProcessEnv = { ...process.env, TMPDIR: tmp, ...env };
  delete base.XDG_RUNTIME_DIR;
  for (const [k, v] of Object.entries(env)) if (v === undefined) delete base[k];
  const code = `const pg = require(${JSON.stringify(bundle)});\n${script}`;
  const r = spawnSync(process.execPath, ['-e', code], { env: base, encoding: 'utf8', timeout: 60_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

const noDriver = { VK_ICD_FILENAMES: '/nonexistent/icd.json', VK_DRIVER_FILES: undefined, VK_ADD_DRIVER_FILES: undefined };

test("an uncaught error in the user's script keeps Node's exit code 1 after wasm started (tfjs' own setBackend)", (t) => {
  const tmp = tempDir(t);
  const r = user(`pg.tf.setBackend('wasm').then(() => pg.tf.ready()).then(() => { console.log(pg.tf.getBackend()); setTimeout(() => { throw new Error('the user failed'); }, 1); });`, tmp, noDriver);
  t.is(r.stdout, 'wasm\n');
  t.is(r.status, 1, r.stderr);
  t.regex(r.stderr, /Error: the user failed\n\s+at Timeout/);
});

test("a user's unhandled rejection keeps exit code 1, and no listener is left, after wasm (2 threads) started", (t) => {
  const tmp = tempDir(t);
  const r = user(
    `const count = () => ['uncaughtException', 'unhandledRejection'].map((e) => process.listenerCount(e)).join(',');\n` +
      `const before = count();\n` +
      `pg.setBackend('wasm', { threads: 2 }).then((info) => {\n` +
      `  console.log(before + ' ' + count() + ' ' + info.threads);\n` +
      `  Promise.reject(new Error('the user rejected'));\n` +
      `});`,
    tmp,
    noDriver,
  );
  t.is(r.status, 1, r.stderr);
  t.is(r.stdout, '0,0 0,0 2\n');
  t.regex(r.stderr, /Error: the user rejected/);
});

test("a handler the user installs while wasm loads is kept, and decides the exit", (t) => {
  const tmp = tempDir(t);
  const r = user(
    `const mine = (e) => { console.log('mine: ' + e.message); process.exit(42); };\n` +
      `const started = pg.setBackend('wasm');\n` +
      `process.on('uncaughtException', mine);\n` +
      `started.then(() => {\n` +
      `  console.log(process.listeners('uncaughtException').length + ' ' + (process.listeners('uncaughtException')[0] === mine));\n` +
      `  setTimeout(() => { throw new Error('boom'); }, 1);\n` +
      `});`,
    tmp,
    noDriver,
  );
  t.is(r.status, 42, r.stderr);
  t.is(r.stdout, '1 true\nmine: boom\n');
});

test('auto without a Vulkan driver picks onnx (installed here) without asking Dawn: nothing on stderr, nothing left in TMPDIR', (t) => {
  const tmp = tempDir(t);
  const r = user(
    `pg.setBackend('auto').then((info) => { pg.tf.tensor([1, 2]).print(); console.log(info.name + ': ' + info.reason); });`,
    tmp,
    noDriver,
  );
  t.is(r.status, 0, r.stderr);
  t.is(r.stdout, 'Tensor\n    [1, 2]\nonnx: no Vulkan driver, so no WebGPU adapter: onnx, models compiled onto onnxruntime-node, params in host memory\n');
  t.is(r.stderr, ''); // no "vkCreateInstance: Found no drivers!", no XDG_RUNTIME_DIR complaint
  t.deepEqual(readdirSync(tmp), []);
});

test('no tfjs-node banner on the first cpu tensor, whether or not setBackend was called', (t) => {
  const tmp = tempDir(t);
  const r = user(`pg.tf.square(pg.tf.tensor([3])).print(); pg.setBackend('cpu').then(() => pg.tf.tensor([4]).print());`, tmp, noDriver);
  t.is(r.status, 0, r.stderr);
  t.is(r.stdout, 'Tensor\n    [9]\nTensor\n    [4]\n');
  t.is(r.stderr, '');
});

test('vulkanDrivers follows the loader: an override list replaces the search, missing files count for nothing', (t) => {
  const tmp = tempDir(t);
  if (process.platform !== 'linux') return t.is(vulkanDrivers({}), undefined);
  const icd = join(tmp, 'share', 'vulkan', 'icd.d');
  mkdirSync(icd, { recursive: true });
  t.deepEqual(vulkanDrivers({ VK_ICD_FILENAMES: '/nonexistent/a.json:/nonexistent/b.json', HOME: tmp }), []);
  // the search with every XDG folder moved into tmp; /usr/local/etc and /etc are always searched
  const env = { XDG_CONFIG_DIRS: join(tmp, 'none'), XDG_DATA_DIRS: join(tmp, 'share'), XDG_DATA_HOME: join(tmp, 'none'), HOME: tmp };
  const manifests = (dir: string): string[] =>
    existsSync(dir) ? readdirSync(dir).filter((n) => n.endsWith('.json')).map((n) => join(dir, n)) : [];
  const system = ['/usr/local/etc/vulkan/icd.d', '/etc/vulkan/icd.d'].flatMap(manifests);
  t.deepEqual(vulkanDrivers(env), system);
  const manifest = join(icd, 'x_icd.json');
  writeFileSync(manifest, '{}');
  t.deepEqual(vulkanDrivers(env), [...system, manifest]);
  t.deepEqual(vulkanDrivers({ ...env, VK_DRIVER_FILES: icd }), [manifest]);
  t.deepEqual(vulkanDrivers({ ...env, VK_ICD_FILENAMES: '/nonexistent/a.json', VK_ADD_DRIVER_FILES: manifest }), [manifest]);
});

test('privateRuntimeDir: one directory per user, mode 0700, reused; an unsafe one is passed over and removed at exit', (t) => {
  const tmp = tempDir(t);
  const uid = process.getuid!();
  const script = `console.log(pg.privateRuntimeDir());`;
  const first = user(script, tmp);
  const second = user(script, tmp);
  const shared = join(tmp, `paligemma-xdg-${uid}`);
  t.is(first.stdout, `${shared}\n`, first.stderr);
  t.is(second.stdout, `${shared}\n`);
  t.is(statSync(shared).mode & 0o777, 0o700);
  t.deepEqual(readdirSync(tmp), [`paligemma-xdg-${uid}`]);

  chmodSync(shared, 0o755); // someone else could enter it: not ours to use
  const third = user(`const d = pg.privateRuntimeDir(); console.log(d + ' ' + require('node:fs').existsSync(d));`, tmp);
  const [dir, existed] = third.stdout.trim().split(' ');
  t.not(dir, shared);
  t.regex(dir, new RegExp(`^${tmp}/paligemma-xdg-\\w{6}$`));
  t.is(existed, 'true');
  t.false(existsSync(dir), 'removed when the process exited');
  t.deepEqual(readdirSync(tmp), [`paligemma-xdg-${uid}`]);
  t.is(typeof privateRuntimeDir, 'function');
});

test('probing SwiftShader from two processes leaves one runtime directory, and Dawn prints nothing', (t) => {
  if (!existsSync(SWIFTSHADER_ICD)) return t.pass(`no ${SWIFTSHADER_ICD} here`);
  const tmp = tempDir(t);
  const script = `pg.availableBackends().then((a) => console.log(typeof a.webgpu === 'string' ? a.webgpu : a.webgpu.description));`;
  const env = { VK_ICD_FILENAMES: SWIFTSHADER_ICD };
  for (let i = 0; i < 2; i++) {
    const r = user(script, tmp, env);
    t.is(r.status, 0, r.stderr);
    t.regex(r.stdout, /^SwiftShader/);
    t.is(r.stderr, '');
  }
  t.deepEqual(readdirSync(tmp), [`paligemma-xdg-${process.getuid!()}`]);
});
