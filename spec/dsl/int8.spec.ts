/**
 * Int8 weights under jit (dsl/onnx/int8.ts): the quantizer's literal bytes, onnxruntime's MatMulNBits
 * equal to a host emulation of its arithmetic (int8 weights and int8 activations, blockwise), both operand
 * orders `dot` produces, the session bound to the weights' identity, and memory.
 */
import test from 'ava';
import { tf } from '../../dsl/tf';
import * as d from '../../dsl';
import type { Named } from '../../dsl';
import { blockSize, dequantizeInt8, quantizeInt8 } from '../../dsl/onnx/int8';
import { seeded } from '../helpers/numeric';

test('quantizeInt8: literal bytes, scales and padding of a [3, 2] weight', (t) => {
  // W [k=3, n=2]; column 0 = [1, 0.5, -1], column 1 = [-2, 4, 1]
  const m = quantizeInt8(Float32Array.of(1, -2, 0.5, 4, -1, 1), 2, 3, false);
  t.is(m.block, 16, 'the smallest block MatMulNBits takes');
  t.deepEqual(Array.from(m.scales), [Math.fround(1 / 127), Math.fround(4 / 127)]);
  // [1, 0.5, -1] / fround(1 / 127) = [127.0000005, 63.5000002, -127.0000005] -> [127, 64, -127]; + 128 (the zero
  // point); padding is 128
  t.deepEqual(Array.from(m.q.subarray(0, 4)), [255, 192, 1, 128]);
  // [-2, 4, 1] / fround(4 / 127) = [-63.5000002, 127.0000005, 31.75]: fround rounds 4/127 down, so -2 is past
  // the tie -> [-64, 127, 32]
  t.deepEqual(Array.from(m.q.subarray(16, 19)), [64, 255, 160]);
  t.deepEqual(Array.from(m.q.subarray(19, 32)), new Array(13).fill(128));
  // the same weight stored [n, k] quantizes to the same bytes
  t.deepEqual(quantizeInt8(Float32Array.of(1, 0.5, -1, -2, 4, 1), 2, 3, true).q, m.q);
  t.deepEqual([blockSize(3), blockSize(16), blockSize(17), blockSize(100), blockSize(2048)], [16, 16, 32, 128, 128]);
  // an all-zero block has scale 0 and dequantizes to zeros
  t.deepEqual(Array.from(dequantizeInt8(quantizeInt8(new Float32Array(4), 2, 2, false))), [0, 0, 0, 0]);
});

test('quantizeInt8: every weight within half a step of its block scale', (t) => {
  const [k, n] = [300, 7];
  const w = seeded(k * n, 3);
  const m = quantizeInt8(w, n, k, false);
  const back = dequantizeInt8(m); // [n, k]
  const blocks = Math.ceil(k / m.block);
  let worst = 0;
  for (let j = 0; j < n; j++)
    for (let kk = 0; kk < k; kk++) {
      const scale = m.scales[j * blocks + Math.floor(kk / m.block)];
      worst = Math.max(worst, Math.abs(back[j * k + kk] - w[kk * n + j]) / scale);
    }
  t.true(worst <= 0.5 + 1e-4, `worst error ${worst} steps`);
});

/** onnxruntime's MatMulNBits (bits 8, accuracy_level 4) on the host: each block of a row of x quantized to int8 (scale max|x| / 127), int32 sums, scaled. */
function emulate(x: Float32Array, m: number, w: ReturnType<typeof quantizeInt8>): Float32Array {
  const { k, n, block } = w;
  const blocks = Math.ceil(k / block);
  const y = new Float32Array(m * n);
  for (let i = 0; i < m; i++)
    for (let b = 0; b < blocks; b++) {
      const [k0, k1] = [b * block, Math.min(k, (b + 1) * block)];
      let max = 0;
      for (let kk = k0; kk < k1; kk++) max = Math.max(max, Math.abs(x[i * k + kk]));
      const sx = max / 127;
      const qx = Array.from({ length: k1 - k0 }, (_, j) => (sx ? Math.round(x[i * k + k0 + j] / sx) : 0));
      for (let j = 0; j < n; j++) {
        let sum = 0;
        for (let kk = k0; kk < k1; kk++) sum += qx[kk - k0] * (w.q[(j * blocks + b) * block + kk - k0] - 128);
        y[i * n + j] += sum * sx * w.scales[j * blocks + b];
      }
    }
  return y;
}

test.serial('jit int8: x.W and the tied-head form E.x^T equal the host emulation of MatMulNBits within 1e-5', (t) => {
  const [m, k, n] = [5, 300, 40]; // K past one block of 128, padded in the last
  const xs = seeded(m * k, 1);
  const w = d.named(tf.tensor(seeded(k * n, 2), [k, n]), ['embed', 'mlp'] as const);
  const e = d.named(tf.tensor(seeded(n * k, 4), [n, k]), ['vocab', 'embed'] as const);
  const x = d.named(tf.tensor(xs, [m, k]), ['rows', 'embed'] as const);
  const f = d.jit((p: { w: Named<readonly ['embed', 'mlp']>; e: Named<readonly ['vocab', 'embed']> }, h: Named<readonly ['rows', 'embed']>) => ({ y: d.dot(h, p.w, 'embed'), z: d.dot(h, p.e, 'embed') }), { int8: { weights: 0 } });
  const before = tf.memory().numTensors;
  const out = f({ w, e }, x);
  t.is(tf.memory().numTensors, before + 2, 'a call allocates only its outputs');
  t.deepEqual(out.z.axes, ['rows', 'vocab']);
  t.is(f.stats[0].int8MatMuls, 2, 'both matMuls run in int8');
  t.is(f.stats[0].int8Bytes, 2 * n * 3 * 128, 'int8 bytes: [40, 3 blocks, 128] per weight');
  const expectY = emulate(xs, m, quantizeInt8(w.tensor.dataSync() as Float32Array, n, k, false));
  const expectZ = emulate(xs, m, quantizeInt8(e.tensor.dataSync() as Float32Array, n, k, true));
  const worst = (a: ArrayLike<number>, b: ArrayLike<number>) => Math.max(...Array.from(a, (v, i) => Math.abs(v - b[i])));
  t.true(worst(out.y.tensor.dataSync(), expectY) < 1e-5, `x.W: ${worst(out.y.tensor.dataSync(), expectY)}`);
  t.true(worst(out.z.tensor.dataSync(), expectZ) < 1e-5, `E.x^T: ${worst(out.z.tensor.dataSync(), expectZ)}`);
  // and a quantized matMul is not a float32 one: the int8 rounding is visible
  const float = tf.matMul(x.tensor, w.tensor);
  t.true(worst(out.y.tensor.dataSync(), float.dataSync()) > 1e-4);
  tf.dispose([out.y.tensor, out.z.tensor, float]);

  // the session is bound to the weights: same weights, no new trace; other weights, a new session
  tf.dispose(d.collectTensors(f({ w, e }, x)));
  t.is(f.traces, 1);
  const w2 = d.named(tf.mul(w.tensor, 2), w.axes);
  const doubled = f({ w: w2, e }, x);
  t.is(f.traces, 2, 'other weights of the same shapes: traced and quantized again');
  t.true(worst(doubled.y.tensor.dataSync(), expectY.map((v) => 2 * v)) < 1e-5, 'the new session computes with the new weights');
  t.is(f.stats.length, 2);
  tf.dispose(d.collectTensors(doubled));
  // one set of weights at a time: another input shape with the new weights, then the old weights again
  const x3 = d.named(tf.tensor(seeded(3 * k, 8), [3, k]), ['rows', 'embed'] as const);
  tf.dispose(d.collectTensors(f({ w: w2, e }, x3)));
  t.is(f.traces, 3, 'a new input shape');
  tf.dispose(d.collectTensors(f({ w: w2, e }, x)));
  t.is(f.traces, 3, 'both shapes compiled with the new weights are kept');
  tf.dispose(d.collectTensors(f({ w, e }, x3)));
  t.is(f.traces, 4, 'the old weights again: compiled again (their sessions were released)');
  tf.dispose(d.collectTensors(f({ w, e }, x)));
  t.is(f.traces, 5, 'the sessions of the new weights were released in turn');
  x3.dispose();
  f.dispose();
  tf.dispose([w.tensor, w2.tensor, e.tensor, x.tensor]);
  t.is(tf.memory().numTensors, before - 3);
});

test.serial('jit int8: activations and non-weight matMuls stay float32', (t) => {
  // q.k^T reads no weight: a float32 MatMul; only the projection is int8
  const q = d.named(tf.tensor(seeded(6 * 16, 5), [6, 16]), ['seq', 'head_dim'] as const);
  const kx = d.named(tf.tensor(seeded(6 * 16, 6), [6, 16]), ['key_seq', 'head_dim'] as const);
  const w = d.named(tf.tensor(seeded(16 * 16, 7), [16, 16]), ['head_dim', 'out'] as const);
  const f = d.jit((p: { w: typeof w }, a: typeof q, b: typeof kx) => d.dot(d.dot(a, p.w, 'head_dim'), d.rename(b, 'head_dim', 'out'), 'out'), { int8: { weights: 0 } });
  const y = f({ w }, q, kx);
  t.is(f.stats[0].int8MatMuls, 1);
  tf.dispose([y.tensor, q.tensor, kx.tensor, w.tensor]);
  f.dispose();
});

test('jit int8: the weights argument must be an index', (t) => {
  t.throws(() => d.jit((x: tf.Tensor) => x, { int8: { weights: -1 } }), { message: 'jit: int8.weights must be an argument index, got -1' });
});
