/**
 * Ops on named tensors: what SigLIP and Gemma need, each synchronous and memory-neutral (intermediates are
 * freed in a `tidy`; only the result survives), each with a gradient on cpu, wasm and webgpu.
 *
 * Lowering choices, measured on this machine (../shared/docs/MEASURED.md):
 * - `dot` contracts by name and lowers to `matMul` (tf.einsum has no gradient). Axes are transposed so that
 *   a weight contraction is one 2-D, untransposed matMul: the only shape tfjs-wasm runs on XNNPACK (~35
 *   GFLOP/s vs 1-3 for batched or transposed operands). Its gradient is written the same way (explicit
 *   transposes, then plain 2-D matMuls) instead of tfjs' transposed matMuls.
 * - `embed` is a gather whose gradient is a scatter-add (ScatterNd): tfjs' own gradient of gather needs
 *   UnsortedSegmentSum, which wasm lacks.
 * - GELU-tanh is written as `x * sigmoid(2z)`: the same function (0.5 (1 + tanh z) = sigmoid(2z)) and
 *   ~9x faster than tanh on wasm.
 */
import { tf } from './tf';
import { Named, named, describe, type Axes } from './named';
import type { AxisOf, Contractible, FreshAxis, MergeInto, Rename, Splice, Union, Without } from './types';

// -------------------------------------------------------------------------------------------------
// scopes
// -------------------------------------------------------------------------------------------------

/** `tf.tidy` for functions returning named tensors (or records/arrays of them). */
export function scoped<T>(fn: () => T): T {
  let out!: T;
  tf.tidy(() => {
    out = fn();
    return collectTensors(out);
  });
  return out;
}

/** Every tf.Tensor inside a value made of records, arrays and named tensors. */
export function collectTensors(value: unknown, into: tf.Tensor[] = []): tf.Tensor[] {
  if (value instanceof tf.Tensor) into.push(value);
  else if (value instanceof Named) into.push(value.tensor);
  else if (Array.isArray(value)) for (const v of value) collectTensors(v, into);
  else if (value !== null && typeof value === 'object') for (const v of Object.values(value)) collectTensors(v, into);
  return into;
}

// -------------------------------------------------------------------------------------------------
// layout: permute, rename, split and merge axes
// -------------------------------------------------------------------------------------------------

const indexOf = (x: Named, axis: string, op: string): number => {
  const i = x.axes.indexOf(axis);
  if (i < 0) throw new Error(`${op}: no axis '${axis}' in ${describe(x)}`);
  return i;
};

const isIdentity = (perm: readonly number[]): boolean => perm.every((p, i) => p === i);

const transposeTo = (t: tf.Tensor, from: Axes, to: Axes): tf.Tensor => {
  const perm = to.map((a) => from.indexOf(a));
  return isIdentity(perm) ? t : tf.transpose(t, perm);
};

/** Permute `x` to the order `axes` (a permutation of its axes). */
export function align<A extends Axes, const B extends readonly A[number][]>(x: Named<A>, axes: B): Named<B> {
  if (axes.length !== x.rank || axes.some((a) => !x.axes.includes(a))) {
    throw new Error(`align: [${axes.join(', ')}] is not a permutation of ${describe(x)}`);
  }
  return named(transposeTo(x.tensor, x.axes, axes), axes);
}

/** Rename one axis (no data moves). */
export function rename<A extends Axes, const F extends string, const T extends string>(
  x: Named<A>,
  from: AxisOf<A, F>,
  to: FreshAxis<A, T>,
): Named<Rename<A, F, T>> {
  indexOf(x, from, 'rename');
  if (x.axes.includes(to)) throw new Error(`rename: axis '${to}' already in ${describe(x)}`);
  return new Named(x.tensor, x.axes.map((a) => (a === from ? to : a)) as unknown as Rename<A, F, T>);
}

/** Split one axis into several (row-major): `split(x, 'qkv', ['heads', 'head_dim'], [8, 64])`. */
export function splitAxis<A extends Axes, const F extends string, const T extends Axes>(
  x: Named<A>,
  axis: AxisOf<A, F>,
  into: T,
  sizes: readonly number[],
): Named<Splice<A, F, T>> {
  const i = indexOf(x, axis, 'splitAxis');
  const n = x.shape[i];
  const product = sizes.reduce((a, b) => a * b, 1);
  if (into.length !== sizes.length || product !== n) {
    throw new Error(`splitAxis: '${axis}' is ${n} in ${describe(x)}, cannot split into [${into.map((a, k) => `${a}=${sizes[k]}`).join(', ')}]`);
  }
  const shape = [...x.shape.slice(0, i), ...sizes, ...x.shape.slice(i + 1)];
  const axes = [...x.axes.slice(0, i), ...into, ...x.axes.slice(i + 1)];
  return named(tf.reshape(x.tensor, shape), axes) as unknown as Named<Splice<A, F, T>>;
}

/** Merge several axes (in the given order, row-major) into one, placed where the first of them was. */
export function mergeAxes<A extends Axes, const M extends readonly A[number][], const T extends string>(
  x: Named<A>,
  axes: M,
  into: T,
): Named<MergeInto<A, M[number], T>> {
  return scoped(() => {
    const first = Math.min(...axes.map((a) => indexOf(x, a, 'mergeAxes')));
    const rest = x.axes.filter((a) => !axes.includes(a));
    const order = [...rest.slice(0, first), ...axes, ...rest.slice(first)];
    const t = transposeTo(x.tensor, x.axes, order);
    const size = axes.reduce((p, a) => p * x.size(a), 1);
    const shape = [...rest.slice(0, first).map((a) => x.size(a)), size, ...rest.slice(first).map((a) => x.size(a))];
    return named(tf.reshape(t, shape), [...rest.slice(0, first), into, ...rest.slice(first)]) as unknown as Named<MergeInto<A, M[number], T>>;
  });
}

/** Insert a new axis of size 1. */
export function expand<A extends Axes, const T extends string>(x: Named<A>, axis: FreshAxis<A, T>, at = 0): Named<Axes> {
  if (x.axes.includes(axis)) throw new Error(`expand: axis '${axis}' already in ${describe(x)}`);
  return named(tf.expandDims(x.tensor, at), [...x.axes.slice(0, at), axis, ...x.axes.slice(at)]);
}

/** Bring `x` to the axes `to` (a superset, any order) with size-1 axes where it has none. */
function broadcastTo(x: Named, to: Axes, op: string): tf.Tensor {
  const mine = to.filter((a) => x.axes.includes(a));
  if (mine.length !== x.rank) {
    const missing = x.axes.filter((a) => !to.includes(a));
    throw new Error(`${op}: axes [${missing.join(', ')}] of ${describe(x)} are not in [${to.join(', ')}]`);
  }
  const t = transposeTo(x.tensor, x.axes, mine);
  const shape = to.map((a) => (x.axes.includes(a) ? x.size(a) : 1));
  return t.rank === shape.length ? t : tf.reshape(t, shape);
}

function checkShared(x: Named, y: Named, op: string): void {
  for (const a of x.axes) {
    if (y.axes.includes(a) && x.size(a) !== y.size(a)) {
      throw new Error(`${op}: '${a}' is ${x.size(a)} in x ${describe(x)} but ${y.size(a)} in y ${describe(y)}`);
    }
  }
}

// -------------------------------------------------------------------------------------------------
// contraction
// -------------------------------------------------------------------------------------------------

/**
 * 2-D matMul whose gradient also uses only 2-D untransposed matMuls (after explicit transposes), the
 * XNNPACK fast path of tfjs-wasm: dA = dY . B^T, dB = A^T . dY.
 */
const matMul2d = tf.customGrad(((a: tf.Tensor2D, b: tf.Tensor2D, save: tf.GradSaveFunc) => {
  save([a, b]);
  return {
    value: tf.matMul(a, b),
    gradFunc: (dy: tf.Tensor2D, [sa, sb]: tf.Tensor[]) => [
      tf.matMul(dy, tf.transpose(sb)),
      tf.matMul(tf.transpose(sa), dy),
    ],
  };
}) as unknown as Parameters<typeof tf.customGrad>[0]) as unknown as (
  a: tf.Tensor2D,
  b: tf.Tensor2D,
) => tf.Tensor2D;

/**
 * [nb, m, k] x [nb, k, n]. tfjs-wasm runs batched matMuls in a scalar loop (1-3 GFLOP/s); for a few
 * batches, nb 2-D matMuls on XNNPACK are faster even counting the copies of unstack (measured in the bench:
 * the ViT's attention matMuls went from 375 ms to 65 ms plus 50 ms of unstack). Other backends batch natively.
 */
function batchedMatMul(a: tf.Tensor3D, b: tf.Tensor3D): tf.Tensor3D {
  const nb = a.shape[0];
  if (tf.getBackend() !== 'wasm' || nb > 64) return tf.matMul(a, b);
  const as = tf.unstack(a) as tf.Tensor2D[];
  const bs = tf.unstack(b) as tf.Tensor2D[];
  return tf.stack(as.map((ai, i) => matMul2d(ai, bs[i]))) as tf.Tensor3D;
}

/**
 * Contract `x` and `y` over the named axes. Axes in both operands that are not contracted are batch axes.
 * The result has x's remaining axes (in x's order) then y's free axes (in y's order).
 *
 *   dot(x: [batch, seq, embed], w: [embed, mlp], 'embed')                 -> [batch, seq, mlp]
 *   dot(q: [batch, seq, heads, head_dim], k: [batch, key_seq, heads, head_dim], 'head_dim')
 *                                                                          -> [batch, seq, heads, key_seq]
 */
export function dot<A extends Axes, B extends Axes, const C extends string>(
  x: Named<A>,
  y: Named<B>,
  ...contract: Contractible<A, B, C>[]
): Named<[...Without<A, C>, ...Without<B, C | A[number]>]> {
  const over = contract as readonly string[];
  for (const c of over) {
    if (!x.axes.includes(c)) throw new Error(`dot: cannot contract '${c}': no such axis in x ${describe(x)}`);
    if (!y.axes.includes(c)) throw new Error(`dot: cannot contract '${c}': no such axis in y ${describe(y)}`);
    if (x.size(c) !== y.size(c)) {
      throw new Error(`dot: '${c}' is ${x.size(c)} in x ${describe(x)} but ${y.size(c)} in y ${describe(y)}`);
    }
  }
  checkShared(x, y, 'dot');
  const batch = x.axes.filter((a) => y.axes.includes(a) && !over.includes(a));
  const xFree = x.axes.filter((a) => !y.axes.includes(a));
  const yFree = y.axes.filter((a) => !x.axes.includes(a));
  const prod = (t: Named, axes: readonly string[]) => axes.reduce((p, a) => p * t.size(a), 1);
  const [nb, m, k, n] = [prod(x, batch), prod(x, xFree), prod(x, over), prod(y, yFree)];
  const resultAxes = [...x.axes.filter((a) => !over.includes(a)), ...yFree];
  // x.y or, transposed, (y^T x^T)^T: whichever moves fewer elements (operands already in the order a plain
  // matMul wants move nothing). The tied-embedding logits, x [batch, seq, embed] . E [vocab, embed], would
  // transpose all of E; as E . x^T only x and the small result move (1.0 GFLOP: 179 ms -> ~50 ms in the bench).
  const moved = (t: Named, order: readonly string[], size: number) => (isIdentity(order.map((a) => t.axes.indexOf(a))) ? 0 : size);
  const plain = moved(x, [...batch, ...xFree, ...over], m * k) + moved(y, [...batch, ...over, ...yFree], k * n);
  const swapped = moved(y, [...batch, ...yFree, ...over], k * n) + moved(x, [...batch, ...over, ...xFree], m * k) + m * n;
  const [p, q, pFree, qFree] = swapped < plain ? [y, x, yFree, xFree] : [x, y, xFree, yFree];
  const [rows, cols] = swapped < plain ? [n, m] : [m, n];
  return scoped(() => {
    const a = tf.reshape(transposeTo(p.tensor, p.axes, [...batch, ...pFree, ...over]), nb === 1 ? [rows, k] : [nb, rows, k]);
    const b = tf.reshape(transposeTo(q.tensor, q.axes, [...batch, ...over, ...qFree]), nb === 1 ? [k, cols] : [nb, k, cols]);
    const c = nb === 1 ? matMul2d(a as tf.Tensor2D, b as tf.Tensor2D) : batchedMatMul(a as tf.Tensor3D, b as tf.Tensor3D);
    const computed = [...batch, ...pFree, ...qFree];
    const out = tf.reshape(c, computed.map((a) => (x.axes.includes(a) ? x.size(a) : y.size(a))));
    return named(transposeTo(out, computed, resultAxes), resultAxes);
  }) as unknown as Named<[...Without<A, C>, ...Without<B, C | A[number]>]>;
}

// -------------------------------------------------------------------------------------------------
// elementwise, broadcasting by name
// -------------------------------------------------------------------------------------------------

type Binary = (a: tf.Tensor, b: tf.Tensor) => tf.Tensor;

function binary<A extends Axes, B extends Axes>(op: string, f: Binary, x: Named<A>, y: Named<B> | number): Named<Union<A, B>> {
  if (typeof y === 'number') return scoped(() => named(f(x.tensor, tf.scalar(y, x.dtype)), x.axes)) as unknown as Named<Union<A, B>>;
  checkShared(x, y, op);
  const axes = [...x.axes, ...y.axes.filter((a) => !x.axes.includes(a))];
  return scoped(() => named(f(broadcastTo(x, axes, op), broadcastTo(y, axes, op)), axes)) as unknown as Named<Union<A, B>>;
}

export const add = <A extends Axes, B extends Axes>(x: Named<A>, y: Named<B> | number) => binary('add', tf.add, x, y);
export const sub = <A extends Axes, B extends Axes>(x: Named<A>, y: Named<B> | number) => binary('sub', tf.sub, x, y);
export const mul = <A extends Axes, B extends Axes>(x: Named<A>, y: Named<B> | number) => binary('mul', tf.mul, x, y);
export const div = <A extends Axes, B extends Axes>(x: Named<A>, y: Named<B> | number) => binary('div', tf.div, x, y);

const unary =
  (f: (t: tf.Tensor) => tf.Tensor) =>
  <A extends Axes>(x: Named<A>): Named<A> =>
    scoped(() => named(f(x.tensor), x.axes));

export const neg = unary(tf.neg);
export const exp = unary(tf.exp);
export const tanh = unary(tf.tanh);
export const rsqrt = unary(tf.rsqrt);
export const sqrt = unary(tf.sqrt);
export const square = unary(tf.square);
export const sigmoid = unary(tf.sigmoid);
export const relu = unary(tf.relu);

/** x * s for a plain number s. */
export const scale = <A extends Axes>(x: Named<A>, s: number): Named<A> => scoped(() => named(tf.mul(x.tensor, tf.scalar(s)), x.axes));

/** float32 or int32 cast. */
export const cast = <A extends Axes>(x: Named<A>, dtype: 'float32' | 'int32' | 'bool'): Named<A> =>
  scoped(() => named(tf.cast(x.tensor, dtype), x.axes));

/**
 * GELU, tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), written as x * sigmoid(2z),
 * which is the same function (0.5 (1 + tanh z) = sigmoid(2z)) and much cheaper on wasm. x^3 as x*x*x.
 */
export const geluTanh = unary((x) => {
  const z = tf.mul(tf.add(x, tf.mul(tf.mul(tf.mul(x, x), x), 0.044715)), Math.sqrt(2 / Math.PI));
  return tf.mul(x, tf.sigmoid(tf.mul(z, 2)));
});

/** GELU, exact: 0.5 x (1 + erf(x / sqrt 2)) (keras' `gelu` with approximate=False). */
export const geluErf = unary((x) => tf.mul(tf.mul(x, 0.5), tf.add(tf.erf(tf.mul(x, Math.SQRT1_2)), 1)));

/** Soft cap: tanh(x / c) * c (Gemma 2's attention and final logits). */
export const softCap = <A extends Axes>(x: Named<A>, cap: number): Named<A> =>
  scoped(() => named(tf.mul(tf.tanh(tf.div(x.tensor, cap)), cap), x.axes));

// -------------------------------------------------------------------------------------------------
// reductions and normalisations
// -------------------------------------------------------------------------------------------------

const reduce =
  (f: (t: tf.Tensor, axis: number) => tf.Tensor, op: string) =>
  <A extends Axes, const C extends string>(x: Named<A>, axis: AxisOf<A, C>): Named<Without<A, C>> =>
    scoped(() => named(f(x.tensor, indexOf(x, axis, op)), x.axes.filter((a) => a !== axis))) as unknown as Named<Without<A, C>>;

export const sum = reduce((t, i) => tf.sum(t, i), 'sum');
export const mean = reduce((t, i) => tf.mean(t, i), 'mean');
export const max = reduce((t, i) => tf.max(t, i), 'max');

/** Sum of every element, as a scalar tensor (a loss). */
export const sumAll = (x: Named): tf.Scalar => tf.sum(x.tensor) as tf.Scalar;

/** RMSNorm over `axis` with Gemma's scale convention: x / sqrt(mean(x^2) + eps) * (1 + scale). */
export function rmsNorm<A extends Axes, const C extends string>(
  x: Named<A>,
  scaleParam: Named<readonly [C]>,
  axis: AxisOf<A, C>,
  eps: number,
): Named<A> {
  return scoped(() => {
    const i = indexOf(x, axis, 'rmsNorm');
    checkShared(x, scaleParam, 'rmsNorm');
    const t = tf.cast(x.tensor, 'float32');
    const ms = tf.mean(tf.square(t), i, true);
    const normed = tf.mul(t, tf.rsqrt(tf.add(ms, eps)));
    // Gemma stores the scale as an offset from 1 (zero-initialised).
    return named(tf.mul(normed, broadcastTo(new Named(tf.add(scaleParam.tensor, 1), scaleParam.axes), x.axes, 'rmsNorm')), x.axes);
  });
}

/** LayerNorm over `axis`: (x - mean) / sqrt(var + eps) * gamma + beta, biased variance (SigLIP). */
export function layerNorm<A extends Axes, const C extends string>(
  x: Named<A>,
  gamma: Named<readonly [C]>,
  beta: Named<readonly [C]>,
  axis: AxisOf<A, C>,
  eps: number,
): Named<A> {
  return scoped(() => {
    const i = indexOf(x, axis, 'layerNorm');
    checkShared(x, gamma, 'layerNorm');
    checkShared(x, beta, 'layerNorm');
    const mu = tf.mean(x.tensor, i, true);
    const centred = tf.sub(x.tensor, mu);
    const variance = tf.mean(tf.square(centred), i, true);
    const normed = tf.mul(centred, tf.rsqrt(tf.add(variance, eps)));
    return named(tf.add(tf.mul(normed, broadcastTo(gamma, x.axes, 'layerNorm')), broadcastTo(beta, x.axes, 'layerNorm')), x.axes);
  });
}

/**
 * Softmax over `axis` in float32. With a boolean `mask` (broadcast by name), masked logits become -1e9
 * and masked probabilities 0, so a query with no visible key gets all zeros (keras' masked softmax, then
 * its zeroing of fully masked rows). The -1e9 is added rather than substituted: |logit| << 1e9, so a
 * masked entry still underflows to exactly 0 after exp whenever its row has a visible key, and adding
 * lets the mask broadcast natively instead of being tiled to the logits' shape (a 300 ms Tile per layer on
 * wasm in the benchmark).
 */
export function softmax<A extends Axes, const C extends string>(x: Named<A>, axis: AxisOf<A, C>, mask?: Named): Named<A> {
  return scoped(() => {
    const last = [...x.axes.filter((a) => a !== axis), axis];
    let t = tf.cast(transposeTo(x.tensor, x.axes, last), 'float32');
    let keep: tf.Tensor | undefined;
    if (mask) {
      checkShared(x, mask, 'softmax');
      keep = tf.cast(broadcastTo(mask, last, 'softmax'), 'float32'); // size-1 axes where the mask has none
      t = tf.add(t, tf.mul(tf.sub(1, keep), -1e9));
    }
    let p = tf.softmax(t);
    if (keep) p = tf.mul(p, keep);
    return named(transposeTo(p, last, x.axes), x.axes);
  });
}

// -------------------------------------------------------------------------------------------------
// gather, slice, concat, pad
// -------------------------------------------------------------------------------------------------

/** gather along axis 0 whose gradient is a scatter-add (ScatterNd exists on cpu, wasm and webgpu). */
const gatherRows = tf.customGrad(((table: tf.Tensor2D, ids: tf.Tensor1D, save: tf.GradSaveFunc) => {
  save([ids]);
  const rows = table.shape[0];
  const width = table.shape[1];
  return {
    value: tf.gather(table, ids),
    gradFunc: (dy: tf.Tensor2D, [savedIds]: tf.Tensor[]) => [
      tf.scatterND(tf.reshape(savedIds, [-1, 1]), dy, [rows, width]),
      tf.zerosLike(savedIds),
    ],
  };
}) as unknown as Parameters<typeof tf.customGrad>[0]) as unknown as (
  table: tf.Tensor2D,
  ids: tf.Tensor1D,
) => tf.Tensor2D;

/** Embedding lookup: table [vocab, E] and int32 ids [...I] -> [...I, E]. */
export function embed<I extends Axes, const V extends string, const E extends string>(
  table: Named<readonly [V, E]>,
  ids: Named<I>,
): Named<[...I, E]> {
  return scoped(() => {
    const flat = tf.reshape(tf.cast(ids.tensor, 'int32'), [-1]) as tf.Tensor1D;
    const rows = gatherRows(table.tensor as tf.Tensor2D, flat);
    return named(tf.reshape(rows, [...ids.shape, table.shape[1]]), [...ids.axes, table.axes[1]]);
  }) as unknown as Named<[...I, E]>;
}

/** `x[..., begin : begin + size, ...]` along a named axis. */
export function slice<A extends Axes, const C extends string>(x: Named<A>, axis: AxisOf<A, C>, begin: number, size: number): Named<A> {
  const i = indexOf(x, axis, 'slice');
  if (begin < 0 || size < 0 || begin + size > x.shape[i]) {
    throw new Error(`slice: [${begin}, ${begin + size}) is outside '${axis}' of ${describe(x)}`);
  }
  if (begin === 0 && size === x.shape[i]) return scoped(() => named(tf.clone(x.tensor), x.axes));
  const b = x.shape.map((_, k) => (k === i ? begin : 0));
  const s = x.shape.map((n, k) => (k === i ? size : n));
  return scoped(() => named(tf.slice(x.tensor, b, s), x.axes));
}

/** Concatenate along a named axis; the other operands are aligned to the first by name. */
export function concat<A extends Axes, const C extends string>(xs: readonly Named<A>[], axis: AxisOf<A, C>): Named<A> {
  if (xs.length === 0) throw new Error('concat: no tensors');
  const first = xs[0];
  const i = indexOf(first, axis, 'concat');
  for (const x of xs.slice(1)) {
    if (x.rank !== first.rank || first.axes.some((a) => !x.axes.includes(a))) {
      throw new Error(`concat: axes of ${describe(x)} differ from ${describe(first)}`);
    }
    for (const a of first.axes) {
      if (a !== axis && x.size(a) !== first.size(a)) {
        throw new Error(`concat: '${a}' is ${first.size(a)} in ${describe(first)} but ${x.size(a)} in ${describe(x)}`);
      }
    }
  }
  return scoped(() => named(tf.concat(xs.map((x) => transposeTo(x.tensor, x.axes, first.axes)), i), first.axes));
}

/** Pad a named axis with `before` and `after` constant entries. */
export function pad<A extends Axes, const C extends string>(x: Named<A>, axis: AxisOf<A, C>, before: number, after: number, value = 0): Named<A> {
  const i = indexOf(x, axis, 'pad');
  const paddings = x.shape.map((_, k) => (k === i ? [before, after] : [0, 0])) as Array<[number, number]>;
  return scoped(() => named(tf.pad(x.tensor, paddings, value), x.axes));
}

// -------------------------------------------------------------------------------------------------
// rotary position embedding
// -------------------------------------------------------------------------------------------------

/** Positions known on the host (the usual case): RoPE's angles are then computed on the host too. */
export interface HostPositions {
  readonly axes: Axes;
  readonly shape: readonly number[];
  readonly values: ArrayLike<number>;
}

/**
 * RoPE on the `feature` axis (size H, even): halves x1 = x[:H/2], x2 = x[H/2:], angles
 * theta = position * 10000^(-2i/H), out = [x1 cos - x2 sin, x2 cos + x1 sin]. `positions` has axes that are a
 * subset of x's (e.g. [seq] or [batch, seq]).
 *
 * Host positions (preferred): inverse frequencies and angles are rounded to float32 as keras_hub computes
 * them, then cos and sin are taken in float64 and rounded once. Device positions compute cos/sin with the
 * backend's kernels, whose error WGSL only bounds by 2^-11 (measured 1.2e-4 at angle 7 on SwiftShader).
 */
export function rope<A extends Axes>(x: Named<A>, positions: Named | HostPositions, feature: A[number], maxWavelength = 10000): Named<A> {
  const h = x.size(feature);
  if (h % 2 !== 0) throw new Error(`rope: '${feature}' must be even, it is ${h} in ${describe(x)}`);
  return scoped(() => {
    const half = h / 2;
    const inv = new Float32Array(half);
    for (let i = 0; i < half; i++) inv[i] = 1 / Math.fround(Math.pow(maxWavelength, Math.fround((2 * i) / h)));
    let cos: Named;
    let sin: Named;
    if (positions instanceof Named) {
      const theta = mul(cast(positions, 'float32'), named(tf.tensor1d(inv), [feature])); // [...positions, feature/2]
      cos = unary(tf.cos)(theta);
      sin = unary(tf.sin)(theta);
    } else {
      const n = positions.values.length;
      const c = new Float32Array(n * half);
      const s = new Float32Array(n * half);
      for (let p = 0; p < n; p++) {
        for (let i = 0; i < half; i++) {
          const theta = Math.fround(positions.values[p] * inv[i]);
          c[p * half + i] = Math.cos(theta);
          s[p * half + i] = Math.sin(theta);
        }
      }
      const axes = [...positions.axes, feature];
      cos = named(tf.tensor(c, [...positions.shape, half]), axes);
      sin = named(tf.tensor(s, [...positions.shape, half]), axes);
    }
    const x1 = slice(x, feature as never, 0, half);
    const x2 = slice(x, feature as never, half, half);
    const out1 = sub(mul(x1, cos), mul(x2, sin));
    const out2 = add(mul(x2, cos), mul(x1, sin));
    const joined = concat([align(out1, x.axes as never), align(out2, x.axes as never)] as Named<Axes>[], feature as never);
    return joined as unknown as Named<A>;
  });
}
