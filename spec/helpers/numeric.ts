/**
 * Numeric helpers for specs: seeded values, closeness with a named worst element, finite differences, and
 * tensor-count neutrality.
 */
import type { ExecutionContext } from 'ava';
import { tf } from '../../dsl/tf';

/** Deterministic values in [-1, 1) (a small LCG; tests need reproducibility, not quality). */
export function seeded(n: number, seed: number, scale = 1): Float32Array {
  const out = new Float32Array(n);
  let s = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = ((s / 2 ** 32) * 2 - 1) * scale;
  }
  return out;
}

/** max |a - b| and where; asserts it is within atol + rtol * |b|. */
export function assertClose(
  t: ExecutionContext,
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  atol: number,
  rtol = 0,
  what = 'values',
): number {
  t.is(actual.length, expected.length, `${what}: length`);
  let worst = 0;
  let worstAt = -1;
  let fail = -1;
  for (let i = 0; i < expected.length; i++) {
    const d = Math.abs(actual[i] - expected[i]);
    if (!(d <= atol + rtol * Math.abs(expected[i])) && fail < 0) fail = i;
    if (d > worst || Number.isNaN(d)) {
      worst = d;
      worstAt = i;
    }
  }
  if (fail >= 0) {
    t.fail(`${what}: element ${fail} is ${actual[fail]}, expected ${expected[fail]} (atol ${atol}, rtol ${rtol}); max |diff| ${worst} at ${worstAt}`);
  } else {
    t.pass();
  }
  return worst;
}

/** Runs `fn` and asserts that it leaves no tensor behind other than the ones it returns. */
export async function assertNeutral<T>(t: ExecutionContext, fn: () => T | Promise<T>, returned: (out: T) => number = () => 1): Promise<T> {
  const before = tf.memory().numTensors;
  const out = await fn();
  t.is(tf.memory().numTensors - before, returned(out), 'tensors created = tensors returned');
  return out;
}

/**
 * Gradient of sum(f(x) * r) by central differences with one Richardson step, (4 D(eps/2) - D(eps)) / 3,
 * computed with the same ops in float32: the truncation error is O(eps^4), and eps 1e-2 keeps float32
 * rounding noise (~1e-7 |f| / eps) small.
 */
export async function finiteDifference(f: (x: tf.Tensor) => tf.Tensor, x: Float32Array, shape: number[], r: tf.Tensor, eps = 1e-2): Promise<Float32Array> {
  const g = new Float32Array(x.length);
  for (let i = 0; i < x.length; i++) {
    const at = async (delta: number) => {
      const xi = Float32Array.from(x);
      xi[i] += delta;
      const v = tf.tidy(() => tf.sum(tf.mul(f(tf.tensor(xi, shape)), r)));
      const out = (await v.data())[0];
      v.dispose();
      return out;
    };
    const central = async (h: number) => ((await at(h)) - (await at(-h))) / (2 * h);
    g[i] = (4 * (await central(eps / 2)) - (await central(eps))) / 3;
  }
  return g;
}
