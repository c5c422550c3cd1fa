/**
 * Named tensors: a tfjs tensor plus the names of its axes.
 *
 * The names live in the type (`Named<['batch', 'seq', 'embed']>`) so that contractions and alignments are
 * checked by the compiler; the sizes stay runtime values, checked at every op with errors that name the
 * axis, both sizes and both operands. Type-level code only compares and removes names: no arithmetic on
 * sizes and no string parsing (both hit TypeScript's recursion limits and give unreadable errors).
 */
import { tf } from './tf';

export type Axes = readonly string[];

/** A tensor whose axes carry names. Plain record: `tidy` finds the tensor inside and keeps or frees it. */
export class Named<A extends Axes = Axes> {
  constructor(
    readonly tensor: tf.Tensor,
    readonly axes: A,
  ) {}

  get shape(): readonly number[] {
    return this.tensor.shape;
  }

  get rank(): number {
    return this.axes.length;
  }

  get dtype(): tf.DataType {
    return this.tensor.dtype;
  }

  /** Size of a named axis. */
  size(axis: A[number]): number {
    const i = this.axes.indexOf(axis);
    if (i < 0) throw new Error(`size: no axis '${axis}' in ${describe(this)}`);
    return this.tensor.shape[i];
  }

  dispose(): void {
    this.tensor.dispose();
  }

  /** `Named<[batch=2, seq=8, embed=32]> float32`: the header `inspect` prints, without values. */
  toString(): string {
    return `Named<${describe(this)}> ${this.tensor.dtype}${this.tensor.isDisposed ? ' (disposed)' : ''}`;
  }

  /**
   * How Node's console.log, util.inspect and tslab print a named tensor: the header and its first values.
   * Keyed by the global symbol Node looks up, so no node:util import (the bundle must still load in a browser).
   */
  [Symbol.for('nodejs.util.inspect.custom')](): string {
    return `${this.toString()}${this.tensor.isDisposed ? '' : ` ${preview(this.tensor)}`}`;
  }
}

/** Values shown by `inspect`: the first few, then how many more. */
const PREVIEW = 6;

/** `[0.1235, -0.5, 3, ... 506 more]` of the flattened values, or why there are none (webgpu reads async only). */
function preview(t: tf.Tensor): string {
  let values: ArrayLike<number | string | Uint8Array>;
  try {
    // only the first values are read: printing a 2 GB embedding must not copy it (wasm's readSync copies)
    const head = t.size > PREVIEW && t.dtype !== 'string' ? tf.tidy(() => tf.slice(tf.reshape(t, [-1]), 0, PREVIEW)) : t;
    try {
      values = head.dataSync() as ArrayLike<number>;
    } finally {
      if (head !== t) head.dispose();
    }
  } catch {
    return `(values: await x.tensor.data() on ${tf.getBackend()})`;
  }
  const shown = Array.from({ length: Math.min(PREVIEW, values.length) }, (_, i) => {
    const v = values[i];
    return typeof v === 'number' ? String(Number.isInteger(v) ? v : Number(v.toPrecision(4))) : String(v);
  });
  const more = t.size - shown.length;
  return `[${shown.join(', ')}${more > 0 ? `, ... ${more} more` : ''}]`;
}

/** `[batch=2, seq=5]`: axes with sizes, for error messages. */
export const describe = (x: Named): string =>
  `[${x.axes.map((a, i) => `${a}=${x.tensor.shape[i]}`).join(', ')}]`;

/** Wrap a tensor, checking that the number of names matches its rank and that names are unique. */
export function named<const A extends Axes>(tensor: tf.Tensor, axes: A): Named<A> {
  if (tensor.rank !== axes.length) {
    throw new Error(`named: ${axes.length} names [${axes.join(', ')}] for a rank-${tensor.rank} tensor of shape [${tensor.shape.join(', ')}]`);
  }
  const seen = new Set<string>();
  for (const a of axes) {
    if (seen.has(a)) throw new Error(`named: axis '${a}' appears twice in [${axes.join(', ')}]`);
    seen.add(a);
  }
  return new Named(tensor, axes);
}

/** Check that `x` has exactly these sizes (by name): the runtime half of a decoder's shape check. */
export function checkSizes(x: Named, sizes: Readonly<Record<string, number>>, what: string): void {
  for (const [axis, expected] of Object.entries(sizes)) {
    const i = x.axes.indexOf(axis);
    if (i < 0) throw new Error(`${what}: no axis '${axis}' in ${describe(x)}`);
    if (x.tensor.shape[i] !== expected) {
      throw new Error(`${what}: '${axis}' is ${x.tensor.shape[i]} but ${expected} was expected, in ${describe(x)}`);
    }
  }
}
