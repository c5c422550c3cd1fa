import test from 'ava';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { tf } from '../../dsl/tf';
import * as d from '../../dsl';
import { setBackend } from '../../src/runtime/backend';
import { loadCausalLM } from '../../src/generate/causal_lm';
import { readJsonl } from '../../src/train/data';
import { fit, type FitOptions } from '../../src/train/fit';
import { adam } from '../../src/train/optim';
import { selectTrainable, trainableOf } from '../../src/train/select';
import { hasCheckpoint, loadCheckpoint, saveCheckpoint } from '../../src/train/checkpoint';
import { tempDir } from '../helpers/files';
import { tinyJsonl } from '../helpers/train';

const preset = 'spec/fixtures/train/preprocess_train/preset';

test.before(async () => {
  await setBackend('cpu');
});

const bytesOf = async (params: unknown): Promise<Buffer> =>
  Buffer.concat(await Promise.all(d.leaves(params).map(async ([, x]) => Buffer.from(Float32Array.from((await x.tensor.data()) as Float32Array).buffer))));

const runOptions = (tokenizer: FitOptions['tokenizer'], ckpt: string): FitOptions => ({
  tokenizer,
  steps: 5,
  batchSize: 2,
  schedule: 1e-2,
  shuffle: d.key(3),
  checkpoint: { dir: ckpt, every: 2 },
  resume: ckpt,
});

test.serial('resume after a failure at step 4 (last checkpoint: step 2) gives the uninterrupted weights bit for bit', async (t) => {
  const dir = tempDir(t);
  const data = readJsonl(tinyJsonl(dir, 5));
  const lm = loadCausalLM(preset);
  const a = await fit(lm.params, data, runOptions(lm.tokenizer, path.join(dir, 'a')));
  const expected = await bytesOf(a.params);
  await t.throwsAsync(
    fit(lm.params, data, {
      ...runOptions(lm.tokenizer, path.join(dir, 'b')),
      onStep: (s) => {
        if (s.step === 4) throw new Error('interrupted');
      },
    }),
    { message: 'interrupted' },
  );
  const before = tf.memory().numTensors;
  const b = await fit(lm.params, data, runOptions(lm.tokenizer, path.join(dir, 'b')));
  t.is(b.stepsRun, 3, 'steps 3, 4, 5');
  t.is(b.step, 5);
  t.true((await bytesOf(b.params)).equals(expected));
  t.deepEqual(b.history.steps.map((s) => s.loss), a.history.steps.map((s) => s.loss), 'the history continues too');
  t.is(tf.memory().numTensors, before + b.trainable.length);
  // a finished run resumed again does nothing and returns the same weights
  const c = await fit(lm.params, data, runOptions(lm.tokenizer, path.join(dir, 'b')));
  t.is(c.stepsRun, 0);
  t.true((await bytesOf(c.params)).equals(expected));
  for (const r of [a, b, c]) d.disposeTree(trainableOf(r.params, r.trainable));
  d.disposeTree(lm.params);
});

/** The child: train (resuming when the checkpoint exists), print each step, write the final weights. */
const CHILD = `
const m = require(process.argv[2]);
const fs = require('fs');
(async () => {
  await m.setBackend('cpu');
  const [, , , presetDir, jsonl, ckpt, out] = process.argv;
  const lm = m.loadCausalLM(presetDir);
  const r = await m.fit(lm.params, m.readJsonl(jsonl), {
    tokenizer: lm.tokenizer, steps: 8, batchSize: 2, schedule: 1e-2, shuffle: m.d.key(3),
    checkpoint: { dir: ckpt, every: 1 }, resume: ckpt,
    onStep: (s) => { process.stdout.write('step ' + s.step + '\\n'); },
  });
  const parts = [];
  for (const [, x] of m.d.leaves(r.params)) parts.push(Buffer.from(Float32Array.from(await x.tensor.data()).buffer));
  fs.writeFileSync(out, Buffer.concat(parts));
  process.stdout.write('resumed at ' + (r.step - r.stepsRun) + '\\n');
})().catch((e) => { console.error(e); process.exit(1); });
`;

function child(script: string, args: string[], killAt?: number): Promise<{ out: string; killed: boolean }> {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, [script, path.resolve('dist/index.js'), ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    p.stdout.on('data', (b) => {
      out += b;
      if (killAt !== undefined && out.includes(`step ${killAt}\n`)) p.kill('SIGKILL');
    });
    p.stderr.on('data', (b) => (err += b));
    p.on('error', reject);
    p.on('exit', (code, signal) => {
      if (signal === 'SIGKILL') resolve({ out, killed: true });
      else if (code === 0) resolve({ out, killed: false });
      else reject(new Error(`child exited ${code}: ${err}`));
    });
  });
}

test.serial('SIGKILL at a random step, then resume: the same final weights bit for bit as an uninterrupted run (cpu)', async (t) => {
  const dir = tempDir(t);
  const jsonl = tinyJsonl(dir, 5);
  const script = path.join(dir, 'child.js');
  fs.writeFileSync(script, CHILD);
  const full = await child(script, [path.resolve(preset), jsonl, path.join(dir, 'ck-a'), path.join(dir, 'a.bin')]);
  t.true(full.out.endsWith('resumed at 0\n'));
  // steps 2..7: the checkpoint of at least step 1 is complete; the kill may land while one is being written
  const killAt = 2 + Math.floor(Math.random() * 6);
  t.log(`killed at step ${killAt}`);
  const killed = await child(script, [path.resolve(preset), jsonl, path.join(dir, 'ck-b'), path.join(dir, 'b.bin')], killAt);
  t.true(killed.killed);
  t.false(fs.existsSync(path.join(dir, 'b.bin')));
  const resumed = await child(script, [path.resolve(preset), jsonl, path.join(dir, 'ck-b'), path.join(dir, 'b.bin')]);
  const from = Number(/resumed at (\d+)\n$/.exec(resumed.out)![1]);
  t.true(from >= killAt - 1 && from < 8, `resumed at ${from}`);
  t.true(fs.readFileSync(path.join(dir, 'b.bin')).equals(fs.readFileSync(path.join(dir, 'a.bin'))), 'bit for bit');
  // nothing left beside the checkpoint but itself
  t.deepEqual(fs.readdirSync(dir).filter((f) => f.startsWith('.ck-b')), []);
});

test.serial('a checkpoint that would load wrongly is refused, naming the file; a crash between renames is recovered', async (t) => {
  const dir = tempDir(t);
  const lm = loadCausalLM(preset);
  const paths = selectTrainable(lm.params, { train: ['layers/**'] });
  const trainable = trainableOf(lm.params, paths);
  const opt = adam();
  const state = opt.init(trainable);
  const ck = path.join(dir, 'ck');
  const meta = { step: 3, keys: { dropout: null, shuffle: d.key(1) }, position: { epoch: 1, offset: 2 }, history: { steps: [] }, fingerprint: { data: 'x', examples: 4 } };
  const before = tf.memory().numTensors;
  await saveCheckpoint(ck, trainable, opt, state, meta);
  t.is(tf.memory().numTensors, before);
  const back = loadCheckpoint(ck, trainable, opt, { data: 'x', examples: 4 });
  t.is(back.step, 3);
  t.deepEqual(back.position, { epoch: 1, offset: 2 });
  t.deepEqual(back.keys.shuffle, d.key(1));
  for (const p of paths) t.deepEqual(await back.trainable[p].tensor.data(), await trainable[p].tensor.data(), p);
  d.disposeTree(back.trainable);
  for (const s of Object.values(back.optimizerState.slots)) d.disposeTree(s);
  t.is(tf.memory().numTensors, before);

  t.is(t.throws(() => loadCheckpoint(ck, trainable, opt, { data: 'x', examples: 5 }))?.message, `checkpoint ${ck} belongs to another run: examples is 4 there, 5 here`);
  const all = trainableOf(lm.params, selectTrainable(lm.params));
  t.is(
    t.throws(() => loadCheckpoint(ck, all, opt, {}))?.message,
    `checkpoint ${ck}: trainable leaves differ from this run's: missing vit/blocks/0/layer_norm_1/gamma, vit/blocks/0/layer_norm_1/beta, vit/blocks/0/query_proj/kernel; unexpected none`,
  );
  const sgdLike = { ...opt, name: 'sgd' };
  t.is(t.throws(() => loadCheckpoint(ck, trainable, sgdLike, {}))?.message, `checkpoint ${ck}: optimizer "adam", this run uses sgd`);

  // a crash between the two renames of writeDirAtomic: the old directory is beside it, renamed aside
  fs.renameSync(ck, path.join(dir, '.ck.old-123.abc'));
  t.true(hasCheckpoint(ck));
  t.deepEqual(fs.readdirSync(dir), ['ck']);

  // a truncated file (a torn copy, a full disk) is refused by its recorded length
  const file = path.join(ck, 'optimizer.safetensors');
  const size = fs.statSync(file).size;
  fs.truncateSync(file, size - 4);
  t.is(t.throws(() => loadCheckpoint(ck, trainable, opt, {}))?.message, `checkpoint ${file}: ${size - 4} bytes, state.json says ${size} bytes`);
  fs.rmSync(file);
  t.is(t.throws(() => loadCheckpoint(ck, trainable, opt, {}))?.message, `checkpoint ${file}: missing, state.json says ${size} bytes`);
  fs.writeFileSync(path.join(ck, 'state.json'), '{"format": "paligemma-ts-checkpoint", "version": 1, "step": -1}');
  t.is(t.throws(() => loadCheckpoint(ck, trainable, opt, {}))?.message, `checkpoint ${path.join(ck, 'state.json')}: step must be an integer >= 0, got -1`);
  t.is(tf.memory().numTensors, before);
  d.disposeTree(state.slots);
  d.disposeTree(lm.params);
});
