/**
 * d.jit's `keys` option: key arguments are out of the signature, and dropout masks drawn from them (through
 * foldIn/split chains inside the function) are graph inputs drawn per call, equal to eager dropout's.
 */
import test from 'ava';
import { tf } from '../../dsl/tf';
import * as d from '../../dsl';
import type { Named } from '../../dsl';
import { seeded } from '../helpers/numeric';

type X = Named<readonly ['rows', 'cols']>;
const sites = (x: X, k: d.Key | undefined) => {
  if (!k) return x;
  const [, second] = d.split(d.foldIn(k, 3), 2);
  // two sites: one from foldIn, one from foldIn then split
  return d.add(d.dropout(x, 0.5, d.foldIn(k, 3)), d.dropout(x, 0.25, second));
};

test.serial('jit keys: one graph for every key, masks equal to eager dropout', (t) => {
  const x = d.named(tf.tensor(seeded(6 * 7, 1), [6, 7]), ['rows', 'cols'] as const);
  const f = d.jit(sites, { name: 'sites', keys: [1] });
  const before = tf.memory().numTensors;
  const seen: Float32Array[] = [];
  for (const seed of [1, 2, 3]) {
    const got = f(x, d.key(seed));
    const want = tf.tidy(() => sites(x, d.key(seed)).tensor);
    t.deepEqual(got.tensor.dataSync(), want.dataSync(), `key(${seed}): the eager masks`);
    seen.push(got.tensor.dataSync() as Float32Array);
    tf.dispose([got.tensor, want]);
  }
  t.is(f.traces, 1, 'the key is not part of the signature');
  t.notDeepEqual(seen[0], seen[1], 'another key, other masks');
  t.is(tf.memory().numTensors, before, 'memory-neutral');
  // no key: another signature (no dropout in the graph)
  const plain = f(x, undefined);
  t.deepEqual(plain.tensor.dataSync(), x.tensor.dataSync());
  t.is(f.traces, 2);
  plain.dispose();
  f.dispose();
  x.dispose();
});

test.serial('jit keys: literal errors for a key not derived from a key argument, and for a non-key', (t) => {
  const x = d.named(tf.tensor(seeded(4, 2), [2, 2]), ['rows', 'cols'] as const);
  const closure = d.jit((y: X, _k: d.Key) => d.dropout(y, 0.5, d.key(9)), { name: 'closure', keys: [1] });
  t.throws(() => closure(x, d.key(1)), { message: 'jit: closure: dropout with a key not derived (foldIn, split) from a key argument (the keys option); it would be a constant of the graph' });
  const f = d.jit(sites, { name: 'sites', keys: [1] });
  t.throws(() => f(x, [1, 2, 3] as unknown as d.Key), { message: 'jit: sites: argument 1 must be a key (two uint32 words) or undefined, got [1,2,3]' });
  t.throws(() => d.jit(sites, { keys: [-1] }), { message: 'jit: keys must be argument indexes, got -1' });
  x.dispose();
});
