/**
 * Compile-time axis checks. `npm test` type-checks this file (tsc --noEmit): each `@ts-expect-error` fails
 * the build if the line it marks ever compiles, and the accepted lines must keep compiling. At run time
 * the same mistakes are caught with the messages asserted below.
 */
import { tf } from '../../dsl/tf';
import * as d from '../../dsl';
import { test } from '../helpers/backends';

const x = () => d.named(tf.zeros([2, 3, 4]), ['batch', 'seq', 'embed'] as const);
const w = () => d.named(tf.zeros([4, 5]), ['embed', 'mlp'] as const);

export function accepted() {
  const y: d.Named<['batch', 'seq', 'mlp']> = d.dot(x(), w(), 'embed');
  const z: d.Named<readonly ['seq', 'batch', 'embed']> = d.align(x(), ['seq', 'batch', 'embed'] as const);
  const r: d.Named<['batch', 'time', 'embed']> = d.rename(x(), 'seq', 'time');
  const s: d.Named<['batch', 'seq', 'heads', 'head_dim']> = d.splitAxis(x(), 'embed', ['heads', 'head_dim'] as const, [2, 2]);
  const m: d.Named<['batch', 'seq']> = d.mean(x(), 'embed');
  return [y, z, r, s, m];
}

export function rejected() {
  // @ts-expect-error cannot contract 'mlp': axes of x are [batch, seq, embed]
  d.dot(x(), w(), 'mlp');
  // @ts-expect-error cannot contract 'seq': axes of y are [embed, mlp]
  d.dot(x(), w(), 'seq');
  // @ts-expect-error no axis 'time' in [batch, seq, embed]
  d.mean(x(), 'time');
  // @ts-expect-error axis 'embed' already in [batch, seq, embed]
  d.rename(x(), 'seq', 'embed');
  // @ts-expect-error 'mlp' is not an axis of x: not a permutation
  d.align(x(), ['mlp', 'seq', 'batch'] as const);
  // @ts-expect-error a result typed with the wrong axes
  const wrong: d.Named<['batch', 'seq', 'embed']> = d.dot(x(), w(), 'embed');
  return wrong;
}

test('the mistakes the compiler rejects also fail at run time, with messages', (t) => {
  t.throws(() => (d.dot as any)(x(), w(), 'mlp'), { message: "dot: cannot contract 'mlp': no such axis in x [batch=2, seq=3, embed=4]" });
  t.throws(() => (d.mean as any)(x(), 'time'), { message: "mean: no axis 'time' in [batch=2, seq=3, embed=4]" });
  t.throws(() => (d.rename as any)(x(), 'seq', 'embed'), { message: "rename: axis 'embed' already in [batch=2, seq=3, embed=4]" });
  t.throws(() => (d.align as any)(x(), ['mlp', 'seq', 'batch']), { message: 'align: [mlp, seq, batch] is not a permutation of [batch=2, seq=3, embed=4]' });
});
