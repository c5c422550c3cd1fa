/**
 * The token embedding in row shards (what a WebGPU binding limit forces on PaliGemma 2's 2.4 GB table),
 * forced here with a small limit: outputs, logits and gradients still match keras_hub, and saving writes the
 * whole table back.
 */
import * as path from 'node:path';
import * as d from '../../dsl';
import { computeFixture, readBin, readManifest } from '../../src/cli/fixture';
import { loadPreset } from '../../src/runtime/preset';
import { setMaxTensorBytes } from '../../src/runtime/backend';
import { readKerasWeights } from '../../checkpoints/keras';
import { saveKerasPreset } from '../../checkpoints/save';
import { backendTest } from '../helpers/backends';
import { tempDir } from '../helpers/files';
import { assertClose } from '../helpers/numeric';

for (const name of ['pg1_basic', 'grad']) {
  backendTest(`${name}: a sharded embedding gives keras_hub's outputs and gradients`, async (t) => {
    const dir = path.join('spec/fixtures/keras_hub', name);
    const m = readManifest(dir);
    setMaxTensorBytes(1000); // 1000 bytes: 7 rows of 32 (pg1_basic) or 15 rows of 16 (grad) floats per shard
    let params;
    try {
      params = loadPreset(path.join(dir, 'preset'));
    } finally {
      setMaxTensorBytes();
    }
    const vocab = m.outputs.logits?.shape[2] ?? 64;
    t.true(params.token_embedding.length > 4, `${params.token_embedding.length} shards`);
    t.is(params.token_embedding.reduce((n, s) => n + s.size('vocab'), 0), vocab);
    const { outputs, gradients } = await computeFixture(dir, m, params);
    for (const [k, e] of Object.entries(m.outputs)) {
      if (k !== 'loss') assertClose(t, outputs.get(k)!.data, readBin(dir, e), 1e-4, 0, k);
    }
    for (const [k, e] of Object.entries(m.gradients ?? {})) assertClose(t, gradients.get(k)!.data, readBin(dir, e), 1e-4, 1e-3, `gradient of ${k}`);
    if (name === 'pg1_basic') {
      const out = tempDir(t, 'pg-shards-');
      await saveKerasPreset(params, out);
      const saved = readKerasWeights(out).get('layers/reversible_embedding/vars/0')!.read();
      t.deepEqual(Array.from(saved), Array.from(readKerasWeights(path.join(dir, 'preset')).get('layers/reversible_embedding/vars/0')!.read()));
    }
    d.disposeTree(params);
  }, { webgpu: true });
}
