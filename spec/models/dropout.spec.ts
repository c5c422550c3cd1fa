/**
 * Training mode: dropout (pg2_full has dropout 0.1) applies exactly at keras_hub's two decoder sites, is
 * a pure function of the key (same key, same output, on every backend), and is the identity without a key.
 */
import * as path from 'node:path';
import { tf } from '../../dsl/tf';
import * as d from '../../dsl';
import { backbone } from '../../models/paligemma';
import { fixtureInputs, readManifest } from '../../src/cli/fixture';
import { loadPreset } from '../../src/runtime/preset';
import { setBackend } from '../../src/runtime/backend';
import { test } from '../helpers/backends';
import { assertClose } from '../helpers/numeric';

const dir = path.join('spec/fixtures/keras_hub', 'pg2_full');

async function run(backend: 'cpu' | 'wasm', key?: d.Key, dropout?: number) {
  await setBackend(backend);
  const loaded = loadPreset(path.join(dir, 'preset'));
  const params = dropout === undefined ? loaded : { ...loaded, config: { ...loaded.config, dropout } };
  const inputs = fixtureInputs(dir, readManifest(dir));
  const seen = new Map<string, Float32Array>();
  const keep: tf.Tensor[] = [];
  const out = backbone(params, inputs, { train: key ? { key } : undefined, debug: (k, x) => { if (k === 'image_embeddings') keep.push(tf.keep(tf.clone(x.tensor))); } });
  const values = (await out.tensor.data()) as Float32Array;
  seen.set('image_embeddings', (await keep[0].data()) as Float32Array);
  tf.dispose([out.tensor, ...keep, ...d.collectTensors(inputs)]);
  d.disposeTree(loaded);
  return { values, image: seen.get('image_embeddings')! };
}

test.serial('dropout: keyed, identical on cpu and wasm, absent from the ViT, identity at inference or rate 0', async (t) => {
  const evalOut = await run('cpu');
  const a = await run('cpu', d.key(1));
  const a2 = await run('cpu', d.key(1));
  const b = await run('cpu', d.key(2));
  const w = await run('wasm', d.key(1));
  const rate0 = await run('cpu', d.key(1), 0);
  t.deepEqual(Array.from(a.values), Array.from(a2.values), 'same key, same output');
  assertClose(t, w.values, a.values, 1e-5, 0, 'same key on wasm');
  const differs = (x: Float32Array, y: Float32Array) => x.some((v, i) => Math.abs(v - y[i]) > 1e-3);
  t.true(differs(a.values, evalOut.values), 'training output differs from inference');
  t.true(differs(a.values, b.values), 'another key, another mask');
  t.deepEqual(Array.from(a.image), Array.from(evalOut.image), 'the ViT has no dropout');
  t.deepEqual(Array.from(rate0.values), Array.from(evalOut.values), 'rate 0 is the identity');
});
