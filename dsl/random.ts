/**
 * Explicit PRNG keys (as in JAX): a key is two uint32 words; `split` derives independent keys
 * deterministically, and random bits are a pure function of (key, counter). Bits are made on the host with
 * Threefry-2x32 (Salmon et al. 2011, 20 rounds), so the same key gives the same dropout mask on every
 * backend.
 */
import { tf } from './tf';
import { Named, named, type Axes } from './named';
import { scoped } from './ops';

export type Key = readonly [number, number];

/** A key from an integer seed (< 2^53). */
export function key(seed: number): Key {
  if (!Number.isSafeInteger(seed) || seed < 0) throw new Error(`key: seed must be a non-negative safe integer, got ${seed}`);
  return [Math.floor(seed / 2 ** 32) >>> 0, seed >>> 0];
}

const ROTATIONS = [13, 15, 26, 6, 17, 29, 16, 24];
const rotl = (x: number, r: number) => ((x << r) | (x >>> (32 - r))) >>> 0;

/** Threefry-2x32 of the counter (c0, c1) under key k: two uint32 words. */
export function threefry2x32(k: Key, c0: number, c1: number): [number, number] {
  const ks = [k[0] >>> 0, k[1] >>> 0, (0x1bd11bda ^ k[0] ^ k[1]) >>> 0];
  let x0 = (c0 + ks[0]) >>> 0;
  let x1 = (c1 + ks[1]) >>> 0;
  for (let group = 0; group < 5; group++) {
    for (let r = 0; r < 4; r++) {
      x0 = (x0 + x1) >>> 0;
      x1 = rotl(x1, ROTATIONS[(group % 2) * 4 + r]) ^ x0;
    }
    // key injection after every 4 rounds
    x0 = (x0 + ks[(group + 1) % 3]) >>> 0;
    x1 = (x1 + ks[(group + 2) % 3] + group + 1) >>> 0;
  }
  return [x0, x1];
}

/** How a key was derived from its parent: foldIn(parent, data) or split(parent, n)[index]. */
export type KeyStep = { readonly fold: number } | { readonly split: number; readonly index: number };

/**
 * While d.jit traces a function with key arguments (its `keys` option): every derivation is reported, so the
 * jit can replay a site's chain from each call's key, and a dropout mask becomes a graph input instead of a
 * constant of the trace. Internal to jit.ts.
 */
export interface KeyTracing {
  derived(child: Key, parent: Key, step: KeyStep): void;
  /** The mask tensor (a graph input) for dropout of `shape` at `rate` with key k. */
  mask(k: Key, rate: number, shape: readonly number[]): tf.Tensor;
}

let tracing: KeyTracing | undefined;

/** Run `f` with key derivations and dropout masks reported to `t` (d.jit's trace). */
export function withKeyTracing<T>(t: KeyTracing, f: () => T): T {
  const previous = tracing;
  tracing = t;
  try {
    return f();
  } finally {
    tracing = previous;
  }
}

/** n new keys from one. */
export function split(k: Key, n = 2): Key[] {
  const keys = Array.from({ length: n }, (_, i) => threefry2x32(k, 0, i) as Key);
  if (tracing) keys.forEach((child, index) => tracing!.derived(child, k, { split: n, index }));
  return keys;
}

/** A key for a sub-computation named by an integer (e.g. a layer index). */
export function foldIn(k: Key, data: number): Key {
  const child = threefry2x32(k, 1, data >>> 0) as Key;
  tracing?.derived(child, k, { fold: data });
  return child;
}

/** The key that `step` derives from k. */
export const deriveKey = (k: Key, step: KeyStep): Key => ('fold' in step ? foldIn(k, step.fold) : split(k, step.split)[step.index]);

/** n uniform floats in [0, 1), 24 bits each. */
export function uniformBits(k: Key, n: number): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i += 2) {
    const [a, b] = threefry2x32(k, 2, i >>> 1);
    out[i] = (a >>> 8) / 16777216;
    if (i + 1 < n) out[i + 1] = (b >>> 8) / 16777216;
  }
  return out;
}

/**
 * Inverted dropout: keep each element with probability 1 - rate and scale kept ones by 1 / (1 - rate)
 * (keras' Dropout). rate 0 or no key is the identity.
 */
export function dropout<A extends Axes>(x: Named<A>, rate: number, k: Key | undefined): Named<A> {
  if (rate < 0 || rate >= 1) throw new Error(`dropout: rate must be in [0, 1), got ${rate}`);
  if (!k || rate === 0) return x;
  if (tracing) {
    const mask = tracing.mask(k, rate, x.shape);
    return scoped(() => named(tf.mul(x.tensor, mask), x.axes));
  }
  const keep = dropoutMask(k, rate, x.tensor.size);
  return scoped(() => named(tf.mul(x.tensor, tf.tensor(keep, x.shape as number[])), x.axes));
}

/** Dropout's multiplier per element: 1 / (1 - rate) where the uniform bits of k reach `rate`, else 0. */
export function dropoutMask(k: Key, rate: number, n: number): Float32Array {
  const u = uniformBits(k, n);
  const keep = new Float32Array(n);
  const s = 1 / (1 - rate);
  for (let i = 0; i < n; i++) keep[i] = u[i] >= rate ? s : 0;
  return keep;
}

