/**
 * Parity with the real keras_hub on every golden fixture: sequence_output, logits and vit_output within
 * 1e-4 absolute; the `grad` fixture's loss and every gradient within 1e-3 relative + 1e-4 absolute; and
 * the per-layer debug tensors, which localise a mismatch, on cpu, wasm and webgpu.
 */
import * as path from 'node:path';
import { tf } from '../../dsl/tf';
import * as d from '../../dsl';
import { backbone } from '../../models/paligemma';
import { computeFixture, fixtureInputs, readBin, readManifest } from '../../src/cli/fixture';
import { loadPreset } from '../../src/runtime/preset';
import { backendTest } from '../helpers/backends';
import { assertClose } from '../helpers/numeric';

const root = 'spec/fixtures/keras_hub';
const forward = ['vit_pooling_standalone', 'pg1_basic', 'pg2_full', 'pg2_keras_quirks', 'pg1_vit_gelu', 'causal_lm', 'vit_map_pooling', 'pg1_bf16', 'pg1_sharded', 'grad'];

for (const name of forward) {
  backendTest(`${name}: outputs match keras_hub within 1e-4`, async (t) => {
    const dir = path.join(root, name);
    const m = readManifest(dir);
    const before = tf.memory().numTensors;
    const { outputs, gradients } = await computeFixture(dir, m);
    t.is(tf.memory().numTensors, before, 'computeFixture is memory-neutral');
    for (const [k, e] of Object.entries(m.outputs)) {
      if (k === 'loss') continue;
      const got = outputs.get(k);
      if (!got) return t.fail(`no ${k} computed`);
      t.deepEqual(got.shape, [...e.shape], `${k} shape`);
      const worst = assertClose(t, got.data, readBin(dir, e), 1e-4, 0, `${name} ${k}`);
      t.log(`${k}: max |diff| ${worst.toExponential(2)}`);
    }
    if (m.gradients) {
      const loss = outputs.get('loss')!.data[0];
      assertClose(t, [loss], [m.loss_value as number], 1e-4, 1e-3, 'loss');
      let worstGrad = 0;
      for (const [k, e] of Object.entries(m.gradients)) {
        const got = gradients.get(k);
        if (!got) return t.fail(`no gradient for ${k}`);
        t.deepEqual(got.shape, [...e.shape], `${k} gradient shape`);
        worstGrad = Math.max(worstGrad, assertClose(t, got.data, readBin(dir, e), 1e-4, 1e-3, `gradient of ${k}`));
      }
      t.is(gradients.size, Object.keys(m.gradients).length, 'a gradient for every weight and the images');
      t.log(`gradients: max |diff| ${worstGrad.toExponential(2)} over ${gradients.size}`);
    }
  }, { webgpu: true });
}

for (const name of ['pg1_basic', 'pg2_full', 'vit_map_pooling', 'grad']) {
  backendTest(`${name}: every debug tensor matches (vit, embeddings, masks, each decoder block)`, async (t) => {
    const dir = path.join(root, name);
    const m = readManifest(dir);
    const params = loadPreset(path.join(dir, 'preset'));
    const inputs = fixtureInputs(dir, m);
    const seen = new Map<string, tf.Tensor>();
    const out = backbone(params, inputs, { compat: m.options?.compat, debug: (k, x) => seen.set(k, tf.keep(tf.clone(x.tensor))) });
    for (const [k, e] of Object.entries(m.debug ?? {})) {
      if (k === 'logits_before_soft_cap') continue;
      const got = seen.get(k);
      if (!got) {
        t.fail(`no debug tensor ${k}`);
        continue;
      }
      const expected = readBin(dir, e);
      if (e.dtype === 'uint8') t.deepEqual(Array.from(await tf.cast(got, 'int32').data()), Array.from(expected), `${k} (literal mask)`);
      else assertClose(t, await got.data(), expected, 1e-4, 0, `${name} ${k}`);
    }
    tf.dispose([...seen.values(), out.tensor, ...d.collectTensors(inputs)]);
    d.disposeTree(params);
  });
}
