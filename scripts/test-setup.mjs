// `npm test`'s pretest: the system packages some tests need, installed when they are missing and we may.
//
//   chromium            the headless browser of spec/browser.spec.ts, and SwiftShader's Vulkan driver
//                       (/usr/lib/chromium/vk_swiftshader_icd.json): a software WebGPU adapter for the webgpu
//                       backend in Node (spec/helpers/setup.ts points VK_ICD_FILENAMES at it)
//   libvulkan1          the Vulkan loader that the webgpu package (Dawn) opens
//   jupyter-nbconvert,  run the notebook headless (spec/notebook.spec.ts)
//   jupyter-client
//
// On Debian/Ubuntu as root (CI, containers): apt-get installs what is missing. Not root: `sudo -n` when
// that needs no password, else a warning that names the command (the tests that need a package then fail,
// saying so). Elsewhere (no dpkg): nothing to do here; the tests say what they miss.
// PALIGEMMA_NO_APT=1 never installs.
import { spawnSync } from 'node:child_process';

const packages = ['chromium', 'libvulkan1', 'jupyter-nbconvert', 'jupyter-client'];
const say = (line) => console.error(`pretest: ${line}`);
const ok = (cmd, args) => spawnSync(cmd, args, { stdio: 'ignore' }).status === 0;

if (!ok('dpkg', ['--version'])) {
  say(`not a Debian system: install ${packages.join(', ')} (or their equivalents) yourself for the browser, webgpu and notebook tests`);
  process.exit(0);
}
const installed = (p) => spawnSync('dpkg-query', ['-W', '-f=${Status}', p], { encoding: 'utf8' }).stdout?.includes('install ok installed');
const missing = packages.filter((p) => !installed(p));
if (missing.length === 0) process.exit(0);

const command = `apt-get install -y --no-install-recommends ${missing.join(' ')}`;
const root = process.getuid?.() === 0;
const sudo = root ? [] : ok('sudo', ['-n', 'true']) ? ['sudo', '-n'] : null;
if (process.env.PALIGEMMA_NO_APT === '1' || sudo === null) {
  say(`missing ${missing.join(', ')}; the tests that need them will fail. Install them: sudo ${command}`);
  process.exit(0);
}
say(`installing ${missing.join(', ')} (${command})`);
const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
for (const args of [['apt-get', 'update', '-q'], ['apt-get', 'install', '-y', '-q', '--no-install-recommends', ...missing]]) {
  const [cmd, ...rest] = [...sudo, ...args];
  // apt's progress goes to stderr, so that npm test's stdout stays the tests' own
  const r = spawnSync(cmd, rest, { stdio: ['ignore', process.stderr, process.stderr], env });
  if (r.status !== 0) {
    say(`${args.join(' ')} failed (exit ${r.status ?? r.error?.message})`);
    process.exit(1);
  }
}
