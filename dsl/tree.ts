/**
 * Pytrees of named tensors: readonly records and arrays whose leaves are `Named`. Params are pytrees;
 * gradients have the same structure as the params they are taken against.
 */
import { tf } from './tf';
import { Named } from './named';

export type Tree = Named | readonly Tree[] | { readonly [k: string]: Tree };

/** Leaves in a fixed order (records by insertion order), with their paths (`layers/0/attn/query`). */
export function leaves(tree: unknown, prefix = ''): Array<[string, Named]> {
  if (tree instanceof Named) return [[prefix, tree]];
  if (Array.isArray(tree)) return tree.flatMap((t, i) => leaves(t, prefix ? `${prefix}/${i}` : `${i}`));
  if (tree !== null && typeof tree === 'object') {
    return Object.entries(tree).flatMap(([k, t]) => leaves(t, prefix ? `${prefix}/${k}` : k));
  }
  return [];
}

/** Same structure, each leaf mapped. Non-tensor values are kept. */
export function mapTree<T>(tree: T, f: (x: Named, path: string) => Named, prefix = ''): T {
  if (tree instanceof Named) return f(tree, prefix) as unknown as T;
  if (Array.isArray(tree)) return tree.map((t, i) => mapTree(t, f, prefix ? `${prefix}/${i}` : `${i}`)) as unknown as T;
  if (tree !== null && typeof tree === 'object') {
    return Object.fromEntries(Object.entries(tree).map(([k, t]) => [k, mapTree(t, f, prefix ? `${prefix}/${k}` : k)])) as T;
  }
  return tree;
}

/** Dispose every tensor of a pytree. */
export function disposeTree(tree: unknown): void {
  for (const [, x] of leaves(tree)) x.dispose();
}

/**
 * The value of `loss(params)` and its gradient with respect to every leaf of `params`, as a pytree of the
 * same structure. Memory-neutral apart from the returned tensors.
 */
export function valueAndGrad<P>(loss: (params: P) => tf.Scalar, params: P): { value: tf.Scalar; grads: P } {
  const flat = leaves(params);
  const xs = flat.map(([, x]) => x.tensor);
  const { value, grads } = tf.valueAndGrads((...ts: tf.Tensor[]) => {
    const byTensor = new Map(flat.map(([, x], i) => [x, ts[i]] as const));
    return loss(mapTree(params, (x) => new Named(byTensor.get(x) ?? x.tensor, x.axes)));
  })(xs);
  const byLeaf = new Map(flat.map(([, x], i) => [x, grads[i]] as const));
  return { value, grads: mapTree(params, (x) => new Named(byLeaf.get(x)!, x.axes)) };
}
