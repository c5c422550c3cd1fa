import { tf } from '../../dsl/tf';
import * as d from '../../dsl';
import { backendTest, test } from '../helpers/backends';

const hex = ([a, b]: readonly number[]) => [a.toString(16).padStart(8, '0'), b.toString(16).padStart(8, '0')];

test('Threefry-2x32 (20 rounds) reproduces the Random123 known-answer vectors', (t) => {
  t.deepEqual(hex(d.threefry2x32([0, 0], 0, 0)), ['6b200159', '99ba4efe']);
  t.deepEqual(hex(d.threefry2x32([0xffffffff, 0xffffffff], 0xffffffff, 0xffffffff)), ['1cb996fc', 'bb002be7']);
  t.deepEqual(hex(d.threefry2x32([0x13198a2e, 0x03707344], 0x243f6a88, 0x85a308d3)), ['c4923a9c', '483df7a0']);
});

test('keys split deterministically and independently', (t) => {
  const k = d.key(42);
  t.deepEqual(d.split(k, 3), d.split(k, 3));
  const [a, b] = d.split(k);
  t.notDeepEqual(a, b);
  t.notDeepEqual(d.foldIn(k, 1), d.foldIn(k, 2));
  const u = d.uniformBits(a, 10000);
  const mean = u.reduce((s, v) => s + v, 0) / u.length;
  t.true(Math.abs(mean - 0.5) < 0.01, `mean ${mean}`);
  t.true(u.every((v) => v >= 0 && v < 1));
  t.throws(() => d.key(-1), { message: 'key: seed must be a non-negative safe integer, got -1' });
});

backendTest('dropout: the same key gives the same mask on every backend; kept values scaled by 1 / (1 - rate)', async (t) => {
  const x = d.named(tf.ones([4, 50]), ['seq', 'embed'] as const);
  const y = await d.dropout(x, 0.25, d.key(7)).tensor.data();
  const keep = d.uniformBits(d.key(7), 200).map((u) => (u >= 0.25 ? 1 / 0.75 : 0));
  t.deepEqual(Array.from(y), Array.from(keep));
  const kept = Array.from(y).filter((v) => v !== 0).length;
  t.true(kept > 120 && kept < 180, `${kept} of 200 kept`);
  t.is(d.dropout(x, 0.25, undefined), x, 'no key: identity');
  x.dispose();
}, { webgpu: true });
