// Registers tslab's TypeScript kernel with Jupyter, for the notebooks (README: Notebook).
//
//   node scripts/install-kernel.mjs            per user (jupyter kernelspec install --user)
//   node scripts/install-kernel.mjs --sys-prefix | --prefix <dir>   passed to jupyter kernelspec install
//
// Why not `npx tslab install`: it runs `python3 -c ...` with IPython imports, which fails where python3 is not
// the Python that runs Jupyter (pyenv, a venv) or IPython is missing (Debian's jupyter-* packages do not pull
// it in). `jupyter kernelspec install` is Jupyter's own command: it works with whatever Python Jupyter runs on.
// The kernel starts as this Node running this checkout's tslab, so Jupyter needs neither node nor tslab on
// its PATH.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';

const require = createRequire(import.meta.url);
const tslab = join(dirname(require.resolve('tslab/package.json')), 'bin', 'tslab');
const spec = {
  argv: [process.execPath, tslab, 'kernel', '--config-path', '{connection_file}'],
  display_name: 'TypeScript',
  language: 'typescript',
};
const where = process.argv.slice(2);
const dir = mkdtempSync(join(tmpdir(), 'tslab-kernel-'));
try {
  writeFileSync(join(dir, 'kernel.json'), JSON.stringify(spec, null, 2));
  const args = ['kernelspec', 'install', '--name', 'tslab', ...(where.length > 0 ? where : ['--user']), dir];
  try {
    execFileSync('jupyter', args, { stdio: 'inherit' });
  } catch (e) {
    console.error(`jupyter ${args.join(' ')} failed (${e.message}). Is Jupyter installed? Debian: apt-get install -y jupyter-nbconvert jupyter-client (and jupyter-notebook or pip install jupyterlab to edit).`);
    process.exit(1);
  }
  console.log(`tslab kernel: ${spec.argv.slice(0, 2).join(' ')}`);
} finally {
  rmSync(dir, { recursive: true, force: true });
}
