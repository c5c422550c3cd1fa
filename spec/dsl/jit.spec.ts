/**
 * d.jit: traced once per signature onto onnxruntime; every keras_hub fixture's forward (sequence_output,
 * logits) and the `grad` fixture's loss and gradients through the compiled path; literal errors; memory.
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import * as path from 'node:path';
import test from 'ava';
import { tf } from '../../dsl/tf';
import * as d from '../../dsl';
import type { Named } from '../../dsl';
import { backbone, logits, type BackboneInputs, type PaliGemmaParams } from '../../models/paligemma';
import { byKerasPath } from '../../checkpoints/params';
import { fixtureInputs, lossAndGrads, readBin, readManifest } from '../../src/cli/fixture';
import { loadPreset } from '../../src/runtime/preset';
import { assertClose, seeded } from '../helpers/numeric';

const root = 'spec/fixtures/keras_hub';
const forward = ['pg1_basic', 'pg2_full', 'pg2_keras_quirks', 'pg1_vit_gelu', 'causal_lm', 'vit_map_pooling', 'pg1_bf16', 'pg1_sharded', 'grad'];

const model = (compat?: 'keras_hub') =>
  d.jit((p: PaliGemmaParams, x: BackboneInputs) => {
    const sequence_output = backbone(p, x, { compat });
    return { sequence_output, logits: logits(p, sequence_output) };
  });

for (const name of forward) {
  test.serial(`jit: ${name} sequence_output and logits match keras_hub within 1e-4`, async (t) => {
    const dir = path.join(root, name);
    const m = readManifest(dir);
    const params = loadPreset(path.join(dir, 'preset'));
    const inputs = fixtureInputs(dir, m);
    const f = model(m.options?.compat);
    const before = tf.memory().numTensors;
    const first = f(params, inputs);
    t.is(tf.memory().numTensors, before + 2, 'a call allocates only its two outputs');
    const again = f(params, inputs);
    t.is(f.traces, 1, 'the second call runs the session without tracing');
    t.deepEqual(first.sequence_output.axes, ['batch', 'seq', 'embed']);
    for (const k of ['sequence_output', 'logits'] as const) {
      const e = m.outputs[k];
      if (!e) continue;
      t.deepEqual(first[k].shape, [...e.shape], `${k} shape`);
      const worst = assertClose(t, await first[k].tensor.data(), readBin(dir, e), 1e-4, 0, `${name} ${k}`);
      t.deepEqual(await again[k].tensor.data(), await first[k].tensor.data(), `${k}: same result on the second call`);
      t.log(`${k}: max |diff| ${worst.toExponential(2)}`);
    }
    tf.dispose([...d.collectTensors(first), ...d.collectTensors(again), ...d.collectTensors(inputs)]);
    d.disposeTree(params);
    f.dispose();
  });
}

test.serial('jit: the grad fixture loss and every gradient (value-and-gradient traced through tfjs gradients)', async (t) => {
  const dir = path.join(root, 'grad');
  const m = readManifest(dir);
  const params = loadPreset(path.join(dir, 'preset'));
  const inputs = fixtureInputs(dir, m);
  const R = d.named(tf.tensor(readBin(dir, m.loss_inputs!.R) as Float32Array, m.loss_inputs!.R.shape as number[]), ['batch', 'seq', 'embed'] as const);
  const f = d.jit((p: PaliGemmaParams, x: BackboneInputs, r: typeof R) => lossAndGrads(p, x, r, m.options?.compat));
  const before = tf.memory().numTensors;
  const { value, grads } = f(params, inputs, R);
  const outputs = [value, ...d.collectTensors(grads)];
  t.is(tf.memory().numTensors, before + outputs.length, 'only the outputs are new');
  assertClose(t, await value.data(), [m.loss_value as number], 1e-4, 1e-3, 'loss');
  const byPath = byKerasPath(grads.params);
  byPath.set('images', grads.images);
  for (const [k, e] of Object.entries(m.gradients!)) {
    const got = byPath.get(k);
    if (!got) return t.fail(`no gradient for ${k}`);
    assertClose(t, await got.tensor.data(), readBin(dir, e), 1e-4, 1e-3, `gradient of ${k}`);
  }
  t.is(byPath.size, Object.keys(m.gradients!).length);
  tf.dispose([...outputs, ...[...byPath.values()].map((x) => x.tensor), R.tensor, ...d.collectTensors(inputs)]);
  d.disposeTree(params);
  f.dispose();
});

const x34 = (): Named<readonly ['a', 'b']> => d.named(tf.tensor(seeded(12, 1), [3, 4]), ['a', 'b'] as const);

test.serial('jit: one trace per signature (shapes, dtypes, structure, static leaves)', (t) => {
  const f = d.jit((x: Named<readonly ['a', 'b']>, o: { s: number }) => d.scale(x, o.s));
  const a = x34();
  const b = d.named(tf.tensor(seeded(8, 2), [2, 4]), ['a', 'b'] as const);
  const outs = [f(a, { s: 2 }), f(a, { s: 2 }), f(b, { s: 2 }), f(a, { s: 3 }), f(a, { s: 3 })];
  t.is(f.traces, 3);
  t.deepEqual(Array.from(outs[3].tensor.dataSync()), Array.from(a.tensor.dataSync(), (v) => Math.fround(v * 3)));
  tf.dispose([...outs.map((o) => o.tensor), a.tensor, b.tensor]);
  f.dispose();
});

test.serial('jit: reductions over one axis (Max keeps its axes in `reductionIndices`): max, logSumExp, logSoftmax, sum equal eager', (t) => {
  // before the fix, a traced tf.max(x, 1, true) reduced every axis: [1, 1], which logSumExp could not
  // reshape, and logSoftmax silently subtracted the global maximum
  const f = d.jit((x: Named<readonly ['a', 'b']>) => ({
    max: tf.max(x.tensor, 1, true),
    min: tf.min(x.tensor, 0),
    lse: tf.logSumExp(x.tensor, 1),
    logSoftmax: tf.logSoftmax(x.tensor, 1),
    sum: tf.sum(x.tensor, 0),
  }));
  const a = x34();
  const got = f(a);
  const want = { max: tf.max(a.tensor, 1, true), min: tf.min(a.tensor, 0), lse: tf.logSumExp(a.tensor, 1), logSoftmax: tf.logSoftmax(a.tensor, 1), sum: tf.sum(a.tensor, 0) };
  for (const k of Object.keys(want) as (keyof typeof want)[]) {
    t.deepEqual(got[k].shape, want[k].shape, `${k} shape`);
    assertClose(t, got[k].dataSync() as Float32Array, want[k].dataSync() as Float32Array, 1e-6, 0, k);
  }
  t.deepEqual(got.max.shape, [3, 1]);
  tf.dispose([a.tensor, ...Object.values(got), ...Object.values(want)]);
  f.dispose();
});

test.serial('jit: host values computed during the trace are constants; closed-over tensors too', (t) => {
  const w = tf.tensor([1, 2, 3, 4], [4]);
  const f = d.jit((x: Named<readonly ['a', 'b']>) => d.named(tf.add(tf.mul(x.tensor, w), tf.tensor([10, 20, 30, 40], [4])), x.axes));
  const a = x34();
  const y = f(a);
  const x = a.tensor.dataSync();
  t.deepEqual(Array.from(y.tensor.dataSync()), Array.from(x, (v, i) => Math.fround(Math.fround(v * (1 + (i % 4))) + 10 * (1 + (i % 4)))));
  t.is(tf.getBackend(), 'cpu', 'the backend is restored after tracing');
  tf.dispose([w, a.tensor, y.tensor]);
  f.dispose();
});

test.serial('jit: a kernel without a conversion is an error naming it, its op and its shapes', (t) => {
  const f = d.jit((x: Named<readonly ['a', 'b']>) => d.named(tf.cumsum(x.tensor, 1), x.axes));
  const a = x34();
  const before = tf.memory().numTensors;
  t.throws(() => f(a), {
    message: `jit: no ONNX conversion for kernel 'Cumsum' (called by op 'cumsum' on float32[3, 4], attrs {"axis":1,"exclusive":false,"reverse":false})`,
  });
  t.is(tf.getBackend(), 'cpu', 'the backend is restored after a failed trace');
  t.is(tf.memory().numTensors, before, 'a failed trace leaks nothing');
  a.dispose();
});

test.serial('jit: reading a traced value on the host is an error', (t) => {
  const f = d.jit((x: Named<readonly ['a', 'b']>) => d.scale(x, x.tensor.dataSync()[0]));
  const a = x34();
  t.throws(() => f(a), {
    message: 'jit: the traced function reads a [3, 4] float32 tensor that depends on its inputs back to the host (dataSync/data/arraySync); a compiled function must stay in tensors',
  });
  a.dispose();
});

test('a process that ran a compiled function leaves no onnxruntime telemetry log (mat-debug-<pid>.log) in /tmp', (t) => {
  const lib = JSON.stringify(path.resolve('dist', 'index.js'));
  const script = `const { d, tf } = require(${lib});
const f = d.jit((x) => d.scale(x, 2));
const x = d.named(tf.tensor([1, 2], [2]), ['a']);
console.log(Array.from(f(x).tensor.dataSync()).join(','));`;
  const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8' });
  t.is(r.status, 0, r.stderr);
  t.is(r.stdout, '2,4\n');
  t.false(existsSync(`/tmp/mat-debug-${r.pid}.log`));
});
