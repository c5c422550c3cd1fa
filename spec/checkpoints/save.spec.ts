import * as fs from 'node:fs';
import * as path from 'node:path';
import { tf } from '../../dsl/tf';
import * as d from '../../dsl';
import { saveKerasPreset } from '../../checkpoints/save';
import { readKerasWeights } from '../../checkpoints/keras';
import { computeFixture, readBin, readManifest } from '../../src/cli/fixture';
import { loadPreset } from '../../src/runtime/preset';
import { backendTest } from '../helpers/backends';
import { tempDir } from '../helpers/files';

for (const name of ['pg2_full', 'vit_map_pooling']) {
  backendTest(`${name}: save -> load gives the same weights, bit for bit, and the fixture's outputs`, async (t) => {
    const src = path.join('spec/fixtures/keras_hub', name);
    const before = tf.memory().numTensors;
    const params = loadPreset(path.join(src, 'preset'));
    const dir = tempDir(t, 'pg-save-');
    await saveKerasPreset(params, path.join(dir, 'preset'));
    const a = readKerasWeights(path.join(src, 'preset'));
    const b = readKerasWeights(path.join(dir, 'preset'));
    t.deepEqual([...b.keys()].sort(), [...a.keys()].sort(), 'the same h5 paths');
    for (const [k, w] of a) t.deepEqual(Array.from(b.get(k)!.read()), Array.from(w.read()), k);
    const names = (w: typeof a) => [...w].map(([k, v]) => `${k}: ${v.layerName}`).sort();
    t.deepEqual(names(b), names(a), 'every vars group named like keras names it');
    fs.copyFileSync(path.join(src, 'manifest.json'), path.join(dir, 'manifest.json'));
    fs.cpSync(path.join(src, 'inputs'), path.join(dir, 'inputs'), { recursive: true });
    const m = readManifest(src);
    const { outputs } = await computeFixture(dir, m);
    t.deepEqual(Array.from(outputs.get('sequence_output')!.data).length, Array.from(readBin(src, m.outputs.sequence_output)).length);
    const expected = readBin(src, m.outputs.sequence_output);
    t.true(outputs.get('sequence_output')!.data.every((v, i) => Math.abs(v - expected[i]) <= 1e-4));
    d.disposeTree(params);
    t.is(tf.memory().numTensors, before);
  });
}
