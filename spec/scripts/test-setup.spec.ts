/**
 * scripts/test-setup.mjs (npm test's pretest) against fake dpkg, dpkg-query, apt-get and sudo on the PATH:
 * it installs exactly the missing packages, says what it does on stderr, and installs nothing when all are
 * there or when PALIGEMMA_NO_APT=1.
 */
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { chmodSync, existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tempDir } from '../helpers/files';

const script = join(__dirname, '..', '..', '..', 'scripts', 'test-setup.mjs');

function fakeSystem(dir: string, installed: readonly string[]): { log: string } {
  const log = join(dir, 'apt.log');
  const tool = (name: string, body: string) => {
    writeFileSync(join(dir, name), `#!/bin/sh\n${body}\n`);
    chmodSync(join(dir, name), 0o755);
  };
  tool('dpkg', 'exit 0');
  // dpkg-query -W -f=${Status} <package>
  tool('dpkg-query', `case " ${installed.join(' ')} " in *" $3 "*) printf 'install ok installed'; exit 0;; esac; exit 1`);
  tool('apt-get', `echo "apt-get $*" >> ${log}`);
  tool('sudo', `[ "$1" = -n ] && shift; exec "$@"`);
  return { log };
}

function pretest(dir: string, env: NodeJS.ProcessEnv = {}) {
  const r = spawnSync(process.execPath, [script], { env: { ...process.env, PATH: `${dir}:${process.env.PATH}`, ...env }, encoding: 'utf8' });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

test('installs exactly the missing packages through apt-get, progress on stderr', (t) => {
  const dir = tempDir(t);
  const { log } = fakeSystem(dir, ['chromium', 'libvulkan1']);
  const r = pretest(dir);
  t.is(r.status, 0, r.stderr);
  t.is(r.stdout, '');
  t.is(r.stderr, 'pretest: installing jupyter-nbconvert, jupyter-client (apt-get install -y --no-install-recommends jupyter-nbconvert jupyter-client)\n');
  t.is(readFileSync(log, 'utf8'), 'apt-get update -q\napt-get install -y -q --no-install-recommends jupyter-nbconvert jupyter-client\n');
});

test('nothing to do when everything is installed; PALIGEMMA_NO_APT=1 only names the command', (t) => {
  const dir = tempDir(t);
  const { log } = fakeSystem(dir, ['chromium', 'libvulkan1', 'jupyter-nbconvert', 'jupyter-client']);
  const all = pretest(dir);
  t.deepEqual([all.status, all.stdout, all.stderr], [0, '', '']);
  const none = tempDir(t);
  fakeSystem(none, []);
  const refused = pretest(none, { PALIGEMMA_NO_APT: '1' });
  t.is(refused.status, 0);
  t.is(
    refused.stderr,
    'pretest: missing chromium, libvulkan1, jupyter-nbconvert, jupyter-client; the tests that need them will fail. ' +
      'Install them: sudo apt-get install -y --no-install-recommends chromium libvulkan1 jupyter-nbconvert jupyter-client\n',
  );
  t.false(existsSync(log));
  t.false(existsSync(join(none, 'apt.log')));
});
