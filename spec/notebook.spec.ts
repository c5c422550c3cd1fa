/**
 * The research notebook (notebooks/paligemma.ipynb) runs headless in the tslab TypeScript kernel, as CI runs
 * it: `jupyter nbconvert --execute` (Debian's jupyter-nbconvert and jupyter-client) on the built package.
 *
 * The kernel is registered by the README's step, `node scripts/install-kernel.mjs` (`jupyter kernelspec
 * install`; `tslab install` needs IPython in the python3 on the PATH, which Debian's Jupyter lacks), into a
 * temporary Jupyter directory, never the user's: the data, config and runtime (connection files) directories
 * all point into the same temporary folder.
 */
import test, { type ExecutionContext } from 'ava';
import { spawn } from 'node:child_process';
import { readFileSync, writeFileSync, existsSync } from 'node:fs';
import { tempDir } from './helpers/files';
import { join } from 'node:path';
import { PNG } from 'pngjs';
import { webgpuAvailable } from './helpers/backends';

const root = join(__dirname, '..', '..');
const notebook = join(root, 'notebooks', 'paligemma.ipynb');
const installHint = 'apt-get install -y jupyter-nbconvert jupyter-client';

interface Output {
  output_type: string;
  name?: string;
  text?: string | string[];
  data?: Record<string, string | string[]>;
}
interface Cell {
  cell_type: string;
  source: string | string[];
  outputs?: Output[];
  execution_count?: number | null;
}
interface Notebook {
  cells: Cell[];
  metadata: { kernelspec?: { name: string } };
}

const joined = (s: string | string[] | undefined): string => (Array.isArray(s) ? s.join('') : (s ?? ''));

function run(cmd: string, args: string[], env: NodeJS.ProcessEnv): Promise<{ code: number | null; stdout: string; stderr: string; error?: Error }> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { cwd: root, env });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (b) => (stdout += b));
    child.stderr.on('data', (b) => (stderr += b));
    child.on('error', (error) => resolve({ code: null, stdout, stderr, error }));
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

/**
 * nbconvert's own report of a failing cell has its source but not its text: tslab answers with a bare error
 * status and prints the error (a stack, or the compiler's diagnostics) on the cell's stderr. This nbconvert
 * config adds that text to nbconvert's stderr, between two marker lines.
 */
const reportConfig = `
import sys
def report(cell, cell_index, execute_reply):
    reply = execute_reply['content']
    print('>>> failed cell', cell_index, file=sys.stderr)
    print(cell.source, file=sys.stderr)
    print('---', file=sys.stderr)
    for o in cell.outputs:
        if o.get('name') == 'stderr':
            sys.stderr.write(o.get('text', ''))
    if reply.get('ename'):
        print('%s: %s' % (reply['ename'], reply.get('evalue', '')), file=sys.stderr)
    print('<<< failed cell', file=sys.stderr)
c.ExecutePreprocessor.on_cell_error = report
`;

/** The failed cell's report from nbconvert's stderr, else its last lines (a dead kernel, a timeout). */
function failure(stderr: string): string {
  const begin = stderr.indexOf('>>> failed cell ');
  const end = stderr.indexOf('<<< failed cell', begin);
  return begin >= 0 && end > begin ? stderr.slice(begin + 4, end).trim() : stderr.slice(-6000);
}

const notebooks = [notebook, join(root, 'notebooks', 'fine-tune.ipynb')];

test('the committed notebooks use the tslab kernel and have their outputs cleared', (t) => {
  for (const file of notebooks) {
    const nb = JSON.parse(readFileSync(file, 'utf8')) as Notebook;
    t.is(nb.metadata.kernelspec?.name, 'tslab', file);
    const code = nb.cells.filter((c) => c.cell_type === 'code');
    t.true(code.length >= 5, file);
    for (const c of code) {
      t.deepEqual(c.outputs, [], joined(c.source));
      t.is(c.execution_count, null);
    }
  }
});

/**
 * Executes a notebook as CI does: the kernel registered by the README's step (`node scripts/install-kernel.mjs`)
 * in a temporary Jupyter directory, then `jupyter nbconvert --execute`. Returns the executed cells' outputs,
 * or undefined after failing the test with the failing cell's source and error.
 */
async function execute(t: ExecutionContext, file: string): Promise<{ outputs: Output[]; stdout: string } | undefined> {
  const version = await run('jupyter', ['nbconvert', '--version'], process.env);
  if (version.code !== 0) {
    t.fail(
      `jupyter nbconvert is not available (${version.error?.message ?? version.stderr.trim()}): ` +
        `run \`${installHint}\` (Debian; .ci/run does it on CI)`,
    );
    return undefined;
  }
  if (!existsSync(join(root, 'dist', 'index.js')) || !existsSync(join(root, 'dist', 'types', 'src', 'index.d.ts'))) {
    t.fail('the notebook imports the built package: run `npm run build` first (npm test does)');
    return undefined;
  }
  const tmp = tempDir(t, 'paligemma-notebook-');
  const env = {
    ...process.env,
    JUPYTER_PATH: join(tmp, 'data'),
    JUPYTER_DATA_DIR: join(tmp, 'data'),
    JUPYTER_CONFIG_DIR: join(tmp, 'config'),
    JUPYTER_RUNTIME_DIR: join(tmp, 'runtime'),
  };
  // the README's step, as written: registers the kernel (here under the temporary JUPYTER_DATA_DIR)
  const install = await run(process.execPath, [join(root, 'scripts', 'install-kernel.mjs')], env);
  t.is(install.code, 0, install.stderr);
  const spec = JSON.parse(readFileSync(join(tmp, 'data', 'kernels', 'tslab', 'kernel.json'), 'utf8'));
  t.deepEqual(spec.argv.slice(2), ['kernel', '--config-path', '{connection_file}']);
  const started = Date.now();
  writeFileSync(join(tmp, 'report.py'), reportConfig);
  const args = ['nbconvert', '--to', 'notebook', '--execute', '--ExecutePreprocessor.timeout=300', '--ExecutePreprocessor.kernel_name=tslab'];
  args.push(`--config=${join(tmp, 'report.py')}`, '--output-dir', tmp, '--output', 'out', file);
  const exec = await run('jupyter', args, env);
  if (exec.code !== 0) {
    t.fail(`the notebook failed (jupyter nbconvert --execute exited with ${exec.code ?? exec.error?.message}):\n${failure(exec.stderr)}`);
    return undefined;
  }
  t.log(`executed in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  const out = JSON.parse(readFileSync(join(tmp, 'out.ipynb'), 'utf8')) as Notebook;
  const outputs = out.cells.flatMap((c) => c.outputs ?? []);
  const stderr = outputs.filter((o) => o.output_type === 'stream' && o.name === 'stderr').map((o) => joined(o.text));
  t.deepEqual(stderr, [], 'the notebook printed on stderr');
  const stdout = outputs.filter((o) => o.output_type === 'stream' && o.name === 'stdout').map((o) => joined(o.text)).join('');
  t.log(stdout.trim());
  return { outputs, stdout };
}

test('the notebook runs headless in the tslab kernel and shows the picture, the mask and the text', async (t) => {
  t.timeout(180_000);
  const executed = await execute(t, notebook);
  if (executed === undefined) return;
  const { outputs, stdout } = executed;

  // (a) the package, its backend, one TensorFlow.js with every backend this machine has
  t.regex(stdout, /^TensorFlow\.js 4\.\d+\.\d+, backend (cpu|wasm|webgpu|onnx): /m);
  t.regex(stdout, /^setBackend: unknown backend 'gpu'/m);
  const expected = ['cpu', 'wasm', ...(webgpuAvailable() ? ['webgpu'] : [])];
  t.regex(stdout, new RegExp(`^registered with pg\\.tf: ${expected.join(', ')}$`, 'm'));
  for (const name of expected) t.true(stdout.includes(`${name}: sum over embed of [batch=2, embed=3] = [batch=2] [ 3, 3 ]`), name);

  // (b), (c) the input picture (the file itself) and the mask
  // named tensors print themselves; the shipped preset by name, its summary; a bad config refused by name
  t.true(stdout.includes('Named<[batch=2, seq=3, embed=4]> float32 [0, 1, 2, 3, 4, 5, ... 18 more]\n'));
  t.true(stdout.includes('sum over embed: Named<[batch=2, seq=3]> float32\n'));
  t.regex(stdout, /^layers\.0-2 +3 x 9,344  pre_attention_norm\.scale \[embed=32\]$/m);
  t.regex(stdout, /^token_embedding +75,264  shard 0 \[vocab=2352, embed=32\]$/m);
  t.regex(stdout, /^total +107,168  \(0\.4 MiB as float32\)$/m);
  t.true(stdout.includes('invalid PaliGemma config: image_size 225 is not a multiple of vit_patch_size 16: the image is cut into vit_patch_size squares\n'));

  const pngs = outputs.filter((o) => o.output_type === 'display_data' && o.data?.['image/png'] != null);
  t.is(pngs.length, 3);
  const bytes = pngs.map((o) => Buffer.from(joined(o.data!['image/png']), 'base64'));
  t.true(bytes[0].equals(readFileSync(join(root, 'checkpoints', 'tiny', 'cat.png'))));
  const mask = PNG.sync.read(bytes[1]);
  t.is(mask.width, mask.height);
  t.true(mask.width >= 100);
  const colours = new Set<string>();
  for (let i = 0; i < mask.data.length; i += 4) colours.add(Array.from(mask.data.subarray(i, i + 3)).join(','));
  for (const c of ['255,255,255', '40,40,40', '66,133,244', '52,168,83', '251,140,0', '160,160,160']) t.true(colours.has(c), c);
  t.regex(stdout, /^16 image \+ \d+ prompt \+ \d+ response \+ 4 padding tokens$/m);

  // (d) generation, (e) detections
  t.regex(stdout, /^text: "caption en\\n.*"$/m);
  t.regex(stdout, /^\d+ tokens in \d+\.\d+ s: \d+\.\d tokens\/s on (cpu|wasm|webgpu|onnx)$/m);
  t.true(stdout.includes('cat: locs 100,200,900,800 -> y 6.3..56.3, x 12.5..50.0 of 64x64'));
  t.true(stdout.includes('ball: locs 512,0,1023,300 -> y 32.0..63.9, x 0.0..18.8 of 64x64'));
  t.regex(stdout, /^streamed (\d+) tokens, finish: (stop|length); the pieces add up: true$/m);
  // (f) the boxes drawn: 4x the 64 px picture, the cat's top edge (y 6.25 -> 25) in the first colour
  t.true(stdout.includes('drawn at 4x: cat rgb(234, 67, 53), ball rgb(66, 133, 244)\n'));
  const drawn = PNG.sync.read(bytes[2]);
  t.deepEqual([drawn.width, drawn.height], [256, 256]);
  t.deepEqual(Array.from(drawn.data.subarray(4 * (25 * 256 + 100), 4 * (25 * 256 + 100) + 3)), [234, 67, 53]);
  t.regex(stdout, /^0 tensors left$/m);
});

test('the fine-tuning notebook trains the shipped model, plots the loss and frees everything', async (t) => {
  t.timeout(240_000);
  const executed = await execute(t, notebooks[1]);
  if (executed === undefined) return;
  const { outputs, stdout } = executed;
  t.regex(stdout, /^backend (cpu|wasm|webgpu|onnx)$/m);
  t.true(stdout.includes('107,168 parameters\n'));
  t.true(stdout.includes('answer en what colour? -> red\ncaption en -> a green square\n'));
  const before = /^before: loss (\d+\.\d+), exact match (\d)\/6$/m.exec(stdout);
  const after = /^after: loss (\d+\.\d+), exact match (\d)\/6$/m.exec(stdout);
  const trained = /^30 steps in [\d.]+ s; loss (\d+\.\d+) -> (\d+\.\d+)$/m.exec(stdout);
  t.truthy(before && after && trained, stdout);
  // training lowers the loss: the last step's below half the first's, and the evaluated loss falls too
  t.true(Number(trained![2]) < Number(trained![1]) / 2, trained![0]);
  t.true(Number(after![1]) < Number(before![1]), `${before![0]} / ${after![0]}`);
  t.regex(stdout, /^step 10: loss \d+\.\d{3}\nstep 20: loss \d+\.\d{3}\nstep 30: loss \d+\.\d{3}$/m);
  t.regex(stdout, /^a red square, asked its colour: ".*" \(finish: (stop|length)\)$/m);
  const pngs = outputs.filter((o) => o.output_type === 'display_data' && o.data?.['image/png'] != null);
  t.is(pngs.length, 1, 'the loss curve');
  const plot = PNG.sync.read(Buffer.from(joined(pngs[0].data!['image/png']), 'base64'));
  t.deepEqual([plot.width, plot.height], [640, 360]);
  t.regex(stdout, /^0 tensors left$/m);
});
