import test from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { PNG } from 'pngjs';
import { tf } from '../../dsl/tf';
import * as d from '../../dsl';
import { setBackend } from '../../src/runtime/backend';
import { loadCausalLM } from '../../src/generate/causal_lm';
import { datasetFromArray, readJsonl } from '../../src/train/data';
import { fit, type StepRecord } from '../../src/train/fit';
import { sgd } from '../../src/train/optim';
import { trainableOf } from '../../src/train/select';
import { formatProgress, progressPrinter } from '../../src/train/progress';
import { tempDir } from '../helpers/files';
import { tinyJsonl } from '../helpers/train';
import { assertClose } from '../helpers/numeric';
import { compiledTraining } from '../../src/train/compiled';

const preset = 'spec/fixtures/train/preprocess_train/preset';

test.before(async () => {
  await setBackend('cpu');
});

const values = async (params: unknown): Promise<Float32Array[]> => Promise.all(d.leaves(params).map(async ([, x]) => Float32Array.from((await x.tensor.data()) as Float32Array)));

test.serial('200 steps: the tensor count is flat from step to step; the loss falls; the result owns only its trained leaves [wasm]', async (t) => {
  // wasm: the same code as cpu at half the time per tiny step
  await setBackend('wasm');
  t.teardown(() => setBackend('cpu'));
  const dir = tempDir(t);
  const data = readJsonl(tinyJsonl(dir, 6));
  const lm = loadCausalLM(preset);
  const before = tf.memory().numTensors;
  const counts: number[] = [];
  const r = await fit(lm.params, data, {
    tokenizer: lm.tokenizer,
    steps: 200,
    batchSize: 2,
    schedule: 1e-2,
    onStep: () => {
      counts.push(tf.memory().numTensors);
    },
  });
  t.is(counts.length, 200);
  t.true(counts.every((c) => c === counts[0]), `tensor counts ${[...new Set(counts)].join(', ')}`);
  t.is(counts[0], before + 2 * r.trainable.length + r.trainable.length, 'live: params, the new trainable leaves, two Adam slots each');
  t.is(tf.memory().numTensors, before + r.trainable.length, 'after fit: the new trainable leaves only');
  const losses = r.history.steps.map((s) => s.loss);
  t.true(losses[199] < losses[0] / 2, `loss ${losses[0].toFixed(3)} -> ${losses[199].toFixed(3)}`);
  t.is(r.step, 200);
  t.deepEqual(r.history.warnings, []);
  d.disposeTree(trainableOf(r.params, r.trainable));
  d.disposeTree(lm.params);
});

test.serial('gradient accumulation: 2 micro-batches of 2 make the step of one batch of 4 (fixed length, no shuffle)', async (t) => {
  const dir = tempDir(t);
  const data = readJsonl(tinyJsonl(dir, 4));
  const lm = loadCausalLM(preset);
  const common = { tokenizer: lm.tokenizer, steps: 1, shuffle: false as const, sequenceLength: 16, optimizer: sgd(), schedule: 0.5 };
  const a = await fit(lm.params, data, { ...common, batchSize: 4 });
  const b = await fit(lm.params, data, { ...common, batchSize: 2, accumulate: 2 });
  t.is(b.history.steps[0].examples, 4);
  t.true(Math.abs(a.history.steps[0].loss - b.history.steps[0].loss) < 1e-6, `loss ${a.history.steps[0].loss} vs ${b.history.steps[0].loss}`);
  const va = await values(a.params);
  const vb = await values(b.params);
  const v0 = await values(lm.params);
  let moved = 0;
  va.forEach((x, i) =>
    x.forEach((xa, j) => {
      const da = xa - v0[i][j];
      const db = vb[i][j] - v0[i][j];
      if (da !== 0) moved++;
      // the update is 0.5 * gradient: gradients agree within 1e-3 relative + 1e-4 absolute
      if (Math.abs(da - db) > 0.5 * 1e-4 + 1e-3 * Math.abs(da)) t.fail(`leaf ${i}[${j}]: ${da} vs ${db}`);
    }),
  );
  t.true(moved > 1000, `${moved} weights moved`);
  d.disposeTree(trainableOf(a.params, a.trainable));
  d.disposeTree(trainableOf(b.params, b.trainable));
  d.disposeTree(lm.params);
});

test.serial('a dropout key with dropout 0 is reported; a trainable selection trains only those leaves; clipping records the norm', async (t) => {
  const dir = tempDir(t);
  const data = readJsonl(tinyJsonl(dir, 4));
  const lm = loadCausalLM(preset);
  const warnings: string[] = [];
  const r = await fit(lm.params, data, {
    tokenizer: lm.tokenizer,
    steps: 2,
    batchSize: 2,
    dropout: d.key(1),
    trainable: { train: ['layers/**'] },
    clipNorm: 1e-3,
    schedule: 1e-2,
    onWarning: (m) => warnings.push(m),
  });
  t.deepEqual(warnings, ['a dropout key was given but the config has dropout 0: training runs without dropout']);
  t.deepEqual(r.history.warnings, warnings);
  t.true(r.trainable.length > 0 && r.trainable.every((p) => p.startsWith('layers/')));
  const old = new Map(d.leaves(lm.params));
  for (const [p, x] of d.leaves(r.params)) t.is(x === old.get(p), !r.trainable.includes(p), p);
  t.true(r.history.steps.every((s) => s.gradNorm! > 1e-3), 'the norm before clipping is recorded');
  d.disposeTree(trainableOf(r.params, r.trainable));
  d.disposeTree(lm.params);
});

test.serial('dropout from explicit keys: the same key repeats the run, another key changes it; dropout without a key is reported', async (t) => {
  const dir = tempDir(t);
  const data = readJsonl(tinyJsonl(dir, 2));
  const lm = loadCausalLM(preset);
  const params = { ...lm.params, config: { ...lm.params.config, dropout: 0.5 } };
  const run = async (dropout?: d.Key) => {
    const warnings: string[] = [];
    const r = await fit(params, data, { tokenizer: lm.tokenizer, steps: 2, batchSize: 2, schedule: 1e-2, dropout, onWarning: (m) => warnings.push(m) });
    d.disposeTree(trainableOf(r.params, r.trainable));
    return { losses: r.history.steps.map((s) => s.loss), warnings };
  };
  const a = await run(d.key(1));
  const b = await run(d.key(1));
  const c = await run(d.key(2));
  const none = await run();
  t.deepEqual(b.losses, a.losses);
  t.notDeepEqual(c.losses, a.losses);
  t.notDeepEqual(none.losses, a.losses);
  t.deepEqual(a.warnings, []);
  t.deepEqual(none.warnings, ['the config has dropout 0.5 but no dropout key was given: training runs without dropout']);
  d.disposeTree(lm.params);
});

test.serial('onnx: a step is one compiled session run (loss, gradients, update), equal to cpu, with dropout too (one graph for every key)', async (t) => {
  const dir = tempDir(t);
  const data = readJsonl(tinyJsonl(dir, 4));
  const lm = loadCausalLM(preset);
  const dropping = { ...lm.params, config: { ...lm.params.config, dropout: 0.5 } };
  const run = async (params: typeof lm.params, dropout?: d.Key) => {
    const warnings: string[] = [];
    const optimizer = sgd({ momentum: 0.9 });
    const r = await fit(params, data, { tokenizer: lm.tokenizer, steps: 3, batchSize: 2, sequenceLength: 24, optimizer, schedule: 1e-2, dropout, onWarning: (m) => warnings.push(m) });
    const weights = await values(trainableOf(r.params, r.trainable));
    d.disposeTree(trainableOf(r.params, r.trainable));
    return { losses: r.history.steps.map((s) => s.loss), warnings, weights, traces: compiledTraining.step(optimizer)?.traces ?? 0 };
  };
  try {
    const cpu = await run(lm.params);
    const cpuDrop = await run(dropping, d.key(7));
    await setBackend('onnx');
    const before = tf.memory().numTensors;
    const onnx = await run(lm.params);
    const onnxDrop = await run(dropping, d.key(7));
    t.is(tf.memory().numTensors, before, 'memory-neutral');
    // one graph for the 3 steps (a fixed sequence length: one batch shape)
    t.is(onnx.traces, 1);
    assertClose(t, onnx.losses, cpu.losses, 1e-4, 0, 'losses');
    onnx.weights.forEach((w, i) => assertClose(t, w, cpu.weights[i], 1e-4, 0, `leaf ${i}`));
    // dropout compiled: the masks are inputs drawn from each step's key, the bits cpu draws
    t.is(onnxDrop.traces, 1, 'one compiled step graph for the 3 steps and their 3 keys');
    t.deepEqual(onnxDrop.warnings, []);
    assertClose(t, onnxDrop.losses, cpuDrop.losses, 1e-4, 0, 'losses with dropout');
    onnxDrop.weights.forEach((w, i) => assertClose(t, w, cpuDrop.weights[i], 1e-4, 0, `leaf ${i} with dropout`));
    t.notDeepEqual(onnxDrop.losses.slice(1), onnx.losses.slice(1), 'dropout changed the run');
  } finally {
    await setBackend('cpu');
    d.disposeTree(lm.params);
  }
});

test.serial('onnx: batches of many lengths compile a graph each, and the fourth shape is reported', async (t) => {
  const lm = loadCausalLM(preset);
  const image = { height: 8, width: 8, channels: 3 as const, data: new Uint8Array(8 * 8 * 3).fill(100) };
  // rows of 1 to 8 words, in order, two per batch: four lengths
  const data = datasetFromArray(Array.from({ length: 8 }, (_, i) => ({ image, prefix: 'caption en', suffix: Array(i + 1).fill('red').join(' ') })));
  await setBackend('onnx');
  try {
    const warnings: string[] = [];
    const r = await fit(lm.params, data, { tokenizer: lm.tokenizer, steps: 4, batchSize: 2, shuffle: false, optimizer: sgd(), schedule: 1e-3, onWarning: (m) => warnings.push(m) });
    d.disposeTree(trainableOf(r.params, r.trainable));
    const shapes = warnings[0]?.match(/\(([^)]*)\)/)?.[1];
    t.is(warnings.length, 1);
    t.is(warnings[0], `4 batch shapes compiled so far (${shapes}): each is a graph of its own; a fixed sequenceLength (and full batches) makes one`);
    t.is(new Set(shapes!.split(', ')).size, 4);
  } finally {
    await setBackend('cpu');
    d.disposeTree(lm.params);
  }
});

test.serial('evaluation every N steps: loss, token accuracy, exact match; onEval sees each; the loss curve is written', async (t) => {
  const dir = tempDir(t);
  const data = readJsonl(tinyJsonl(dir, 4));
  const held = readJsonl(tinyJsonl(dir, 3, 'eval'));
  const lm = loadCausalLM(preset);
  const seen: number[] = [];
  const steps: StepRecord[] = [];
  const plot = path.join(dir, 'out', 'loss.svg');
  const r = await fit(lm.params, data, {
    tokenizer: lm.tokenizer,
    steps: 5,
    batchSize: 2,
    schedule: 1e-2,
    eval: { data: held, every: 2 },
    plot,
    onStep: (s) => {
      steps.push(s);
    },
    onEval: (e, report) => {
      seen.push(e.step);
      t.is(report.predictions!.length, 3);
      t.is(e.correct, report.predictions!.filter((p, i) => p.trim() === held.examples[i].suffix).length);
    },
  });
  t.deepEqual(seen, [2, 4, 5]);
  t.deepEqual(r.history.evals.map((e) => e.step), [2, 4, 5]);
  for (const e of r.history.evals) {
    t.true(e.loss! > 0 && e.tokenAccuracy! >= 0 && e.tokenAccuracy! <= 1 && e.total === 3);
  }
  t.deepEqual(steps.map((s) => s.step), [1, 2, 3, 4, 5]);
  t.deepEqual(steps.map((s) => s.examples), [2, 2, 2, 2, 2]);
  const svg = fs.readFileSync(plot, 'utf8');
  t.true(svg.startsWith('<svg xmlns="http://www.w3.org/2000/svg"'));
  t.is((svg.match(/<circle /g) ?? []).length, 3, 'one dot per evaluation');
  const png = PNG.sync.read(fs.readFileSync(path.join(dir, 'out', 'loss.png')));
  t.deepEqual([png.width, png.height], [640, 360]);
  d.disposeTree(trainableOf(r.params, r.trainable));
  d.disposeTree(lm.params);
});

test.serial('bad options are refused before any work', async (t) => {
  const dir = tempDir(t);
  const data = readJsonl(tinyJsonl(dir, 2));
  const lm = loadCausalLM(preset);
  const o = { tokenizer: lm.tokenizer };
  await t.throwsAsync(fit(lm.params, data, { ...o, steps: 2, epochs: 1 }), { message: 'fit: give steps or epochs, not both' });
  await t.throwsAsync(fit(lm.params, data, { ...o, accumulate: 0 }), { message: 'fit: accumulate must be a positive integer, got 0' });
  await t.throwsAsync(fit(lm.params, data, { ...o, clipNorm: -1 }), { message: 'fit: clipNorm must be > 0, got -1' });
  await t.throwsAsync(fit(lm.params, data, { ...o, sequenceLength: 4 }), { message: new RegExp(`^${dir.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}/train.jsonl:\\d: prompt and response are \\d+ tokens with <bos>`) });
  d.disposeTree(lm.params);
});

test('progress line: literal format; TTY redraws, logs print every few steps', (t) => {
  t.is(formatProgress({ step: 12, steps: 200, loss: 1.23456, stepsPerSecond: 2.1, tokensPerSecond: 340.4 }), '[#...................] step  12/200 loss 1.2346 2.10 steps/s 340 tok/s ETA 1m30s');
  t.is(formatProgress({ step: 3, steps: 4, loss: 0.5, stepsPerSecond: 0, tokensPerSecond: 12.25, evalAccuracy: 0.5 }, 0), 'step 3/4 loss 0.5000 0.00 steps/s 12.3 tok/s ETA ? eval 0.500');
  const log: string[] = [];
  const p = progressPrinter({ write: (s) => log.push(s) }, { every: 2 });
  for (let i = 1; i <= 5; i++) p.update({ step: i, steps: 5, loss: 1, stepsPerSecond: 1, tokensPerSecond: 1 });
  t.deepEqual(log.map((l) => l.split(' ')[1]), ['1/5', '2/5', '4/5', '5/5']);
  const tty: string[] = [];
  const q = progressPrinter({ write: (s) => tty.push(s), isTTY: true });
  q.update({ step: 5, steps: 5, loss: 1, stepsPerSecond: 1, tokensPerSecond: 1 });
  q.message('hello');
  q.done();
  t.deepEqual(tty, ['\r[####################] step 5/5 loss 1.0000 1.00 steps/s 1.00 tok/s ETA 0s\x1b[K', '\r\x1b[Khello\n', '\n']);
});
