import fc from 'fast-check';
import { tf } from '../../dsl/tf';
import * as d from '../../dsl';
import { backendTest, test } from '../helpers/backends';
import { assertClose, assertNeutral, finiteDifference, seeded } from '../helpers/numeric';

const T = (values: Float32Array, shape: number[]) => tf.tensor(values, shape);

// ------------------------------------------------------------------------------------------------
// values against naive references
// ------------------------------------------------------------------------------------------------

/** Naive x[b,s,e] . w[e,m] */
function naiveDense(x: Float32Array, w: Float32Array, [b, s, e]: number[], m: number): Float32Array {
  const out = new Float32Array(b * s * m);
  for (let i = 0; i < b * s; i++) for (let j = 0; j < m; j++) {
    let acc = 0;
    for (let k = 0; k < e; k++) acc += x[i * e + k] * w[k * m + j];
    out[i * m + j] = acc;
  }
  return out;
}

backendTest('dot: dense contraction equals a naive loop, for any sizes (fast-check)', async (t) => {
  await fc.assert(
    fc.asyncProperty(fc.integer({ min: 1, max: 3 }), fc.integer({ min: 1, max: 5 }), fc.integer({ min: 1, max: 6 }), fc.integer({ min: 1, max: 6 }), async (b, s, e, m) => {
      const xv = seeded(b * s * e, b + 10 * s + 100 * e);
      const wv = seeded(e * m, m + 7);
      const x = d.named(T(xv, [b, s, e]), ['batch', 'seq', 'embed'] as const);
      const w = d.named(T(wv, [e, m]), ['embed', 'mlp'] as const);
      const y = await assertNeutral(t, () => d.dot(x, w, 'embed'));
      t.deepEqual(y.axes, ['batch', 'seq', 'mlp']);
      assertClose(t, await y.tensor.data(), naiveDense(xv, wv, [b, s, e], m), 1e-5, 1e-5);
      tf.dispose([x.tensor, w.tensor, y.tensor]);
    }),
    { numRuns: 12 },
  );
}, { webgpu: true });

backendTest('dot: batch axes, several contracted axes, and name invariance', async (t) => {
  // q [b, s, h, k] . k [b, t, h, k] over k -> [b, s, h, t]
  const [b, s, h, k, u] = [2, 3, 2, 4, 5];
  const qv = seeded(b * s * h * k, 1);
  const kv = seeded(b * u * h * k, 2);
  const q = d.named(T(qv, [b, s, h, k]), ['batch', 'seq', 'heads', 'head_dim'] as const);
  const key = d.named(T(kv, [b, u, h, k]), ['batch', 'key_seq', 'heads', 'head_dim'] as const);
  const logits = d.dot(q, key, 'head_dim');
  t.deepEqual(logits.axes, ['batch', 'seq', 'heads', 'key_seq']);
  const expected = new Float32Array(b * s * h * u);
  for (let bi = 0; bi < b; bi++) for (let si = 0; si < s; si++) for (let hi = 0; hi < h; hi++) for (let ui = 0; ui < u; ui++) {
    let acc = 0;
    for (let ki = 0; ki < k; ki++) acc += qv[((bi * s + si) * h + hi) * k + ki] * kv[((bi * u + ui) * h + hi) * k + ki];
    expected[((bi * s + si) * h + hi) * u + ui] = acc;
  }
  assertClose(t, await logits.tensor.data(), expected, 1e-5, 1e-5, 'q.k');
  // the same contraction with the operands permuted by name gives the same values, aligned by name
  const permuted = d.dot(d.align(q, ['head_dim', 'heads', 'batch', 'seq'] as const), d.align(key, ['key_seq', 'batch', 'head_dim', 'heads'] as const), 'head_dim');
  t.deepEqual(permuted.axes, ['heads', 'batch', 'seq', 'key_seq']);
  assertClose(t, await d.align(permuted, ['batch', 'seq', 'heads', 'key_seq'] as const).tensor.data(), expected, 1e-5, 1e-5, 'permuted');
  // two contracted axes: o [b, s, h, k] . wo [h, k, e] -> [b, s, e]
  const wo = d.named(T(seeded(h * k * 3, 3), [h, k, 3]), ['heads', 'head_dim', 'embed'] as const);
  const out = d.dot(q, wo, 'heads', 'head_dim');
  t.deepEqual(out.axes, ['batch', 'seq', 'embed']);
  const flat = d.dot(d.mergeAxes(q, ['heads', 'head_dim'] as const, 'hk') as d.Named, d.mergeAxes(wo, ['heads', 'head_dim'] as const, 'hk') as d.Named, 'hk' as never);
  assertClose(t, await out.tensor.data(), await flat.tensor.data(), 1e-5, 0, 'merged');
  tf.dispose([q.tensor, key.tensor, wo.tensor, logits.tensor, permuted.tensor, out.tensor, flat.tensor]);
}, { webgpu: true });

backendTest('elementwise ops broadcast by name and match analytic values', async (t) => {
  const xv = Float32Array.from([-2, -0.5, 0, 0.5, 1, 3]);
  const x = d.named(T(xv, [2, 3]), ['seq', 'embed'] as const);
  const bias = d.named(tf.tensor1d([1, 2, 3]), ['embed'] as const);
  const col = d.named(tf.tensor1d([10, 20]), ['seq'] as const);
  t.deepEqual(Array.from(await d.add(x, bias).tensor.data()), [-1, 1.5, 3, 1.5, 3, 6]);
  t.deepEqual(Array.from(await d.mul(bias, col).tensor.data()), [10, 20, 20, 40, 30, 60], 'outer product by names: [embed, seq]');
  const gt = (v: number) => 0.5 * v * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (v + 0.044715 * v ** 3)));
  const erf = (v: number) => {
    // Abramowitz-Stegun 7.1.26 is too coarse; use a series good to 1e-12 for |v| <= 3.
    let sum = 0;
    let term = v;
    for (let n = 0; n < 60; n++) {
      sum += term / (2 * n + 1);
      term *= (-v * v) / (n + 1);
    }
    return (2 / Math.sqrt(Math.PI)) * sum;
  };
  const ge = (v: number) => 0.5 * v * (1 + erf(v / Math.SQRT2));
  assertClose(t, await d.geluTanh(x).tensor.data(), Array.from(xv, gt), 2e-6, 1e-6, 'gelu tanh');
  assertClose(t, await d.geluErf(x).tensor.data(), Array.from(xv, ge), 2e-6, 1e-6, 'gelu erf');
  assertClose(t, await d.softCap(x, 1.5).tensor.data(), Array.from(xv, (v) => Math.tanh(v / 1.5) * 1.5), 1e-6, 1e-6, 'soft cap');
  assertClose(t, await d.rsqrt(d.add(d.square(x), 1)).tensor.data(), Array.from(xv, (v) => 1 / Math.sqrt(v * v + 1)), 1e-6, 1e-6, 'rsqrt');
  assertClose(t, await d.mean(x, 'embed').tensor.data(), [-2.5 / 3, 4.5 / 3], 1e-6, 0, 'mean');
  tf.dispose([x.tensor, bias.tensor, col.tensor]);
}, { webgpu: true });

backendTest('rmsNorm uses (1 + scale) and layerNorm the biased variance', async (t) => {
  const xv = Float32Array.from([1, 2, 3, 4, -1, 0, 1, 2]);
  const x = d.named(T(xv, [2, 4]), ['seq', 'embed'] as const);
  const scale = d.named(tf.tensor1d([0, 1, -0.5, 0.25]), ['embed'] as const);
  const rms = await d.rmsNorm(x, scale, 'embed', 1e-6).tensor.data();
  const expected: number[] = [];
  for (let r = 0; r < 2; r++) {
    const row = Array.from(xv.slice(r * 4, r * 4 + 4));
    const ms = row.reduce((a, v) => a + v * v, 0) / 4;
    row.forEach((v, i) => expected.push((v / Math.sqrt(ms + 1e-6)) * (1 + [0, 1, -0.5, 0.25][i])));
  }
  assertClose(t, rms, expected, 1e-6, 1e-6, 'rms');
  const beta = d.named(tf.tensor1d([0.5, 0, 0, -1]), ['embed'] as const);
  const ln = await d.layerNorm(x, scale, beta, 'embed', 1e-6).tensor.data();
  const lnExpected: number[] = [];
  for (let r = 0; r < 2; r++) {
    const row = Array.from(xv.slice(r * 4, r * 4 + 4));
    const mu = row.reduce((a, v) => a + v, 0) / 4;
    const variance = row.reduce((a, v) => a + (v - mu) ** 2, 0) / 4;
    row.forEach((v, i) => lnExpected.push(((v - mu) / Math.sqrt(variance + 1e-6)) * [0, 1, -0.5, 0.25][i] + [0.5, 0, 0, -1][i]));
  }
  assertClose(t, ln, lnExpected, 1e-5, 1e-6, 'layer norm');
  tf.dispose([x.tensor, scale.tensor, beta.tensor]);
}, { webgpu: true });

backendTest('masked softmax: rows sum to 1 over visible keys, and a row with none is all zeros', async (t) => {
  const logits = d.named(tf.tensor2d([[1, 2, 3], [1, 2, 3], [5, 5, 5]]), ['seq', 'key_seq'] as const);
  const mask = d.named(tf.tensor2d([[1, 1, 1], [1, 0, 1], [0, 0, 0]], undefined, 'bool'), ['seq', 'key_seq'] as const);
  const p = await assertNeutral(t, () => d.softmax(logits, 'key_seq', mask));
  const e = [Math.exp(1), Math.exp(2), Math.exp(3)];
  const z = e[0] + e[1] + e[2];
  assertClose(t, await p.tensor.data(), [e[0] / z, e[1] / z, e[2] / z, e[0] / (e[0] + e[2]), 0, e[2] / (e[0] + e[2]), 0, 0, 0], 1e-6, 1e-6);
  // a mask broadcast by name: [key_seq] only
  const keyMask = d.named(tf.tensor1d([1, 1, 0], 'bool'), ['key_seq'] as const);
  const q = await d.softmax(logits, 'key_seq', keyMask).tensor.data();
  assertClose(t, q.slice(0, 3), [e[0] / (e[0] + e[1]), e[1] / (e[0] + e[1]), 0], 1e-6, 1e-6, 'broadcast mask');
  tf.dispose([logits.tensor, mask.tensor, keyMask.tensor, p.tensor]);
}, { webgpu: true });

backendTest('rope rotates halves by position * 10000^(-2i/H)', async (t) => {
  const [s, h] = [3, 4];
  const xv = seeded(s * h, 5);
  const x = d.named(T(xv, [s, h]), ['seq', 'head_dim'] as const);
  const pos: d.HostPositions = { axes: ['seq'], shape: [3], values: [0, 1, 7] };
  const y = await d.rope(x, pos, 'head_dim').tensor.data();
  const expected: number[] = [];
  for (let i = 0; i < s; i++) {
    const p = [0, 1, 7][i];
    const row = xv.slice(i * h, i * h + h);
    const out = new Array(h);
    for (let j = 0; j < h / 2; j++) {
      const th = p * Math.pow(10000, (-2 * j) / h);
      out[j] = row[j] * Math.cos(th) - row[j + h / 2] * Math.sin(th);
      out[j + h / 2] = row[j + h / 2] * Math.cos(th) + row[j] * Math.sin(th);
    }
    expected.push(...out);
  }
  assertClose(t, y, expected, 1e-5, 1e-5);
  tf.dispose([x.tensor]);
}, { webgpu: true });

backendTest('embed gathers rows; its gradient adds up repeated ids', async (t) => {
  const table = d.named(tf.tensor2d([[1, 2], [3, 4], [5, 6]]), ['vocab', 'embed'] as const);
  const ids = d.named(tf.tensor2d([[2, 0, 2]], undefined, 'int32'), ['batch', 'seq'] as const);
  const rows = d.embed(table, ids);
  t.deepEqual(rows.axes, ['batch', 'seq', 'embed']);
  t.deepEqual(Array.from(await rows.tensor.data()), [5, 6, 1, 2, 5, 6]);
  const g = tf.grad((tab: tf.Tensor) => tf.sum(tf.mul(d.embed(d.named(tab, ['vocab', 'embed'] as const), ids).tensor, tf.tensor3d([[[1, 2], [3, 4], [5, 6]]]))))(table.tensor);
  t.deepEqual(Array.from(await g.data()), [3, 4, 0, 0, 6, 8]);
  tf.dispose([table.tensor, ids.tensor, rows.tensor, g]);
}, { webgpu: true });

backendTest('slice, concat, pad, split and merge axes', async (t) => {
  const x = d.named(tf.tensor2d([[0, 1, 2, 3], [4, 5, 6, 7]]), ['seq', 'embed'] as const);
  t.deepEqual(Array.from(await d.slice(x, 'embed', 1, 2).tensor.data()), [1, 2, 5, 6]);
  const y = d.named(tf.tensor2d([[8, 9], [10, 11], [12, 13], [14, 15]]), ['embed', 'seq'] as const);
  const c = d.concat([x, d.align(y, ['seq', 'embed'] as const)] as const, 'embed');
  t.deepEqual(c.shape, [2, 8]);
  t.deepEqual(Array.from(await c.tensor.data()), [0, 1, 2, 3, 8, 10, 12, 14, 4, 5, 6, 7, 9, 11, 13, 15]);
  t.deepEqual(Array.from(await d.pad(x, 'seq', 1, 0).tensor.data()), [0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7]);
  const split = d.splitAxis(x, 'embed', ['heads', 'head_dim'] as const, [2, 2]);
  t.deepEqual(split.axes, ['seq', 'heads', 'head_dim']);
  const merged = d.mergeAxes(split, ['head_dim', 'heads'] as const, 'mixed');
  t.deepEqual(merged.axes, ['seq', 'mixed']);
  t.deepEqual(Array.from(await merged.tensor.data()), [0, 2, 1, 3, 4, 6, 5, 7]);
  tf.dispose([x.tensor, y.tensor, c.tensor]);
}, { webgpu: true });

// ------------------------------------------------------------------------------------------------
// gradients against finite differences, on every backend
// ------------------------------------------------------------------------------------------------

const gradCases: Array<[string, number[], (x: tf.Tensor) => tf.Tensor]> = [
  ['dot', [2, 3], (x) => d.dot(d.named(x, ['seq', 'embed'] as const), d.named(tf.tensor2d([[1, -2], [0.5, 1], [2, 0]]), ['embed', 'mlp'] as const), 'embed').tensor],
  ['batched dot', [2, 2, 2], (x) => d.dot(d.named(x, ['heads', 'seq', 'head_dim'] as const), d.named(tf.tensor3d([[[1, 2], [3, 4]], [[-1, 0], [2, 1]]]), ['heads', 'key_seq', 'head_dim'] as const), 'head_dim').tensor],
  ['geluTanh', [6], (x) => d.geluTanh(d.named(x, ['e'] as const)).tensor],
  ['geluErf', [6], (x) => d.geluErf(d.named(x, ['e'] as const)).tensor],
  ['softCap', [6], (x) => d.softCap(d.named(x, ['e'] as const), 0.7).tensor],
  ['exp, tanh, rsqrt', [6], (x) => d.mul(d.exp(d.named(x, ['e'] as const)), d.rsqrt(d.add(d.square(d.tanh(d.named(x, ['e'] as const))), 1))).tensor],
  ['rmsNorm', [2, 3], (x) => d.rmsNorm(d.named(x, ['s', 'e'] as const), d.named(tf.tensor1d([0.1, -0.2, 0.3]), ['e'] as const), 'e', 1e-6).tensor],
  ['layerNorm', [2, 3], (x) => d.layerNorm(d.named(x, ['s', 'e'] as const), d.named(tf.tensor1d([1.1, 0.8, 1.3]), ['e'] as const), d.named(tf.tensor1d([0.1, 0, -0.1]), ['e'] as const), 'e', 1e-6).tensor],
  ['masked softmax', [2, 3], (x) => d.softmax(d.named(x, ['s', 'k'] as const), 'k', d.named(tf.tensor2d([[1, 0, 1], [1, 1, 1]], undefined, 'bool'), ['s', 'k'] as const)).tensor],
  ['rope', [2, 4], (x) => d.rope(d.named(x, ['s', 'h'] as const), d.named(tf.tensor1d([3, 5]), ['s'] as const), 'h').tensor],
  ['slice + concat + pad', [2, 3], (x) => { const n = d.named(x, ['s', 'e'] as const); return d.pad(d.concat([d.slice(n, 'e', 1, 2), n], 'e'), 's', 1, 1).tensor; }],
  ['mean + sum', [2, 3], (x) => d.add(d.mean(d.named(x, ['s', 'e'] as const), 'e'), d.sum(d.named(x, ['s', 'e'] as const), 's')).tensor],
];

for (const [name, shape, f] of gradCases) {
  backendTest(`gradient of ${name} matches finite differences`, async (t) => {
    const n = shape.reduce((a, b) => a * b, 1);
    const xv = seeded(n, name.length, 0.9);
    const x = tf.tensor(xv, shape);
    const outShape = tf.tidy(() => f(x).shape);
    const r = tf.tensor(seeded(outShape.reduce((a, b) => a * b, 1), 99), outShape);
    const g = tf.grad((v: tf.Tensor) => tf.sum(tf.mul(f(v), r)))(x);
    const fd = await finiteDifference(f, xv, shape, r);
    assertClose(t, await g.data(), fd, 2e-3, 2e-3, name);
    tf.dispose([x, r, g]);
  }, { webgpu: true });
}

// ------------------------------------------------------------------------------------------------
// errors, memory
// ------------------------------------------------------------------------------------------------

test('runtime size errors name the axis, both sizes and both operands', (t) => {
  const x = d.named(tf.zeros([2, 5, 2048]), ['batch', 'seq', 'embed'] as const);
  const w = d.named(tf.zeros([1152, 8]), ['embed', 'mlp'] as const);
  t.throws(() => d.dot(x, w, 'embed'), { message: "dot: 'embed' is 2048 in x [batch=2, seq=5, embed=2048] but 1152 in y [embed=1152, mlp=8]" });
  t.throws(() => d.add(x, d.named(tf.zeros([3]), ['seq'] as const)), { message: "add: 'seq' is 5 in x [batch=2, seq=5, embed=2048] but 3 in y [seq=3]" });
  t.throws(() => d.named(tf.zeros([2, 3]), ['a'] as const), { message: 'named: 1 names [a] for a rank-2 tensor of shape [2, 3]' });
  t.throws(() => d.splitAxis(w, 'mlp', ['a', 'b'] as const, [3, 3]), { message: "splitAxis: 'mlp' is 8 in [embed=1152, mlp=8], cannot split into [a=3, b=3]" });
  t.throws(() => d.slice(w, 'mlp', 4, 5), { message: "slice: [4, 9) is outside 'mlp' of [embed=1152, mlp=8]" });
  tf.dispose([x.tensor, w.tensor]);
});

backendTest('every op is memory-neutral', async (t) => {
  const x = d.named(tf.ones([2, 4]), ['seq', 'embed'] as const);
  const s = d.named(tf.zeros([4]), ['embed'] as const);
  const w = d.named(tf.ones([4, 1]), ['embed', 'one'] as const);
  const pos = d.named(tf.tensor1d([0, 1]), ['seq'] as const);
  const ops: Array<() => d.Named> = [
    () => d.dot(x, w, 'embed'),
    () => d.add(x, s), () => d.geluTanh(x), () => d.geluErf(x), () => d.softCap(x, 2), () => d.rmsNorm(x, s, 'embed', 1e-6),
    () => d.layerNorm(x, s, s, 'embed', 1e-6), () => d.softmax(x, 'embed'), () => d.rope(x, pos, 'embed'),
    () => d.concat([x, x], 'seq'), () => d.pad(x, 'seq', 1, 1), () => d.mergeAxes(x, ['embed', 'seq'] as const, 'all') as d.Named, () => d.mean(x, 'embed'),
    () => d.dropout(x, 0.5, d.key(1)),
  ];
  for (const op of ops) {
    const before = tf.memory().numTensors;
    const y = op();
    t.is(tf.memory().numTensors, before + 1);
    y.dispose();
  }
  tf.dispose([x.tensor, s.tensor, w.tensor, pos.tensor]);
});
