/**
 * Which params train. A selection is by path predicate or globs over params paths (`dsl/tree.ts` `leaves`):
 *
 *   { freeze: ['vit/**'] }                       everything but the vision tower
 *   { train: ['**\/lora_kernel_*'] }              only LoRA adapters
 *   { train: (path) => path.startsWith('layers/') }
 *
 * Globs: `*` is any run of characters within one path component, `**` any number of whole components
 * (zero included), `?` one character. `train` defaults to everything; `freeze` then removes leaves.
 *
 * The trainable part of params is a flat record keyed by full path (a `Tree` whose leaf paths are the params
 * paths), which is what optimizers get. `valueAndGradTrainable` differentiates with respect to those leaves
 * only: frozen leaves enter the loss as constants, so tfjs keeps no gradient for them.
 */
import { tf } from '../../dsl/tf';
import * as d from '../../dsl';
import type { Named } from '../../dsl';
import type { LossReport } from './api';

export type PathPredicate = (path: string) => boolean;
export type PathSelector = readonly string[] | PathPredicate;

export interface Selection {
  readonly train?: PathSelector;
  readonly freeze?: PathSelector;
}

/** The trainable leaves by full params path. */
export type Trainable = Readonly<Record<string, Named>>;

/** A glob over `/`-separated paths as a RegExp (see the module comment). */
export function globToRegExp(glob: string): RegExp {
  if (glob === '') throw new Error('glob: empty pattern');
  const parts = glob.split('/');
  let re = '';
  parts.forEach((part, i) => {
    const last = i === parts.length - 1;
    if (part === '**') {
      // zero or more whole components, with their separator
      re += last ? '.*' : '(?:[^/]+/)*';
      return;
    }
    re += part.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '[^/]*').replace(/\?/g, '[^/]');
    if (!last) re += '/';
  });
  return new RegExp(`^${re}$`);
}

function predicate(s: PathSelector): PathPredicate {
  if (typeof s === 'function') return s;
  const res = s.map(globToRegExp);
  return (path) => res.some((r) => r.test(path));
}

/**
 * The paths of the trainable leaves. Each glob must match at least one leaf (a typo would otherwise train
 * or freeze nothing silently): the error names the glob and a few paths.
 */
export function selectTrainable(params: unknown, selection: Selection = {}): string[] {
  const paths = d.leaves(params).map(([p]) => p);
  for (const key of ['train', 'freeze'] as const) {
    const s = selection[key];
    if (Array.isArray(s)) {
      for (const g of s as readonly string[]) {
        const re = globToRegExp(g);
        if (!paths.some((p) => re.test(p))) {
          throw new Error(`selectTrainable: ${key} glob '${g}' matches no params path (paths look like ${paths.slice(0, 3).join(', ')}, ...)`);
        }
      }
    }
  }
  const train = selection.train ? predicate(selection.train) : () => true;
  const freeze = selection.freeze ? predicate(selection.freeze) : () => false;
  return paths.filter((p) => train(p) && !freeze(p));
}

/** The trainable leaves (the params' own tensors, not copies) as a flat record by path. */
export function trainableOf(params: unknown, paths: readonly string[]): Trainable {
  const all = new Map(d.leaves(params));
  const out: Record<string, Named> = {};
  for (const p of paths) {
    const x = all.get(p);
    if (!x) throw new Error(`trainableOf: params have no leaf '${p}'`);
    out[p] = x;
  }
  return out;
}

/** Params with the given leaves replaced (by path); every other leaf is shared, not copied. */
export function withLeaves<P>(params: P, replaced: Trainable): P {
  const seen = new Set<string>();
  const out = d.mapTree(params, (x, path) => {
    const r = replaced[path];
    if (!r) return x;
    seen.add(path);
    if (r.shape.length !== x.shape.length || r.shape.some((n, i) => n !== x.shape[i])) {
      throw new Error(`withLeaves: '${path}' has shape [${r.shape.join(', ')}], expected [${x.shape.join(', ')}]`);
    }
    return r;
  });
  for (const p of Object.keys(replaced)) if (!seen.has(p)) throw new Error(`withLeaves: params have no leaf '${p}'`);
  return out;
}

export interface SelectionSummary {
  readonly trainable: { readonly leaves: number; readonly parameters: number };
  readonly frozen: { readonly leaves: number; readonly parameters: number };
  /** Trainable parameter counts by top-level group (`vit`, `layers`, `token_embedding`, ...). */
  readonly byGroup: Readonly<Record<string, { readonly trainable: number; readonly frozen: number }>>;
  /** A few printable lines. */
  readonly text: string;
}

export function summarize(params: unknown, paths: readonly string[]): SelectionSummary {
  const on = new Set(paths);
  const t = { leaves: 0, parameters: 0 };
  const f = { leaves: 0, parameters: 0 };
  const byGroup: Record<string, { trainable: number; frozen: number }> = {};
  for (const [p, x] of d.leaves(params)) {
    const n = x.tensor.size;
    const g = (byGroup[p.split('/')[0]] ??= { trainable: 0, frozen: 0 });
    if (on.has(p)) {
      t.leaves++;
      t.parameters += n;
      g.trainable += n;
    } else {
      f.leaves++;
      f.parameters += n;
      g.frozen += n;
    }
  }
  const total = t.parameters + f.parameters;
  const pct = total ? ((100 * t.parameters) / total).toFixed(2) : '0.00';
  const lines = [
    `trainable: ${t.parameters.toLocaleString('en-US')} parameters in ${t.leaves} tensors (${pct}% of ${total.toLocaleString('en-US')})`,
    `frozen:    ${f.parameters.toLocaleString('en-US')} parameters in ${f.leaves} tensors`,
    ...Object.entries(byGroup).map(([g, c]) => `  ${g}: ${c.trainable.toLocaleString('en-US')} trainable, ${c.frozen.toLocaleString('en-US')} frozen`),
  ];
  return { trainable: t, frozen: f, byGroup, text: lines.join('\n') };
}

/** The tensors being differentiated by the innermost `valueAndGradTrainable` call (empty outside one). */
const differentiated: Array<ReadonlySet<tf.Tensor>> = [];

/**
 * Whether `x` is differentiated by the `valueAndGradTrainable` call running now: true or false inside one,
 * undefined outside (a loss can then skip gradients nobody asked for, e.g. the frozen embedding's).
 */
export function isDifferentiated(x: tf.Tensor): boolean | undefined {
  const top = differentiated[differentiated.length - 1];
  return top ? top.has(x) : undefined;
}

/**
 * The value of `loss(params)` and its gradient with respect to the `trainable` leaves only (a flat record by
 * path, like `trainable`). The loss may return a scalar or a `LossReport` (then `report` holds it; its
 * `loss` is `value`). A trainable leaf the loss does not depend on gets a zero gradient. Memory-neutral
 * apart from the returned tensors.
 */
export function valueAndGradTrainable<P>(
  loss: (params: P) => tf.Scalar | LossReport,
  params: P,
  trainable: Trainable,
): { value: tf.Scalar; grads: Trainable; report?: LossReport } {
  const paths = Object.keys(trainable);
  if (paths.length === 0) throw new Error('valueAndGradTrainable: nothing is trainable');
  const xs = paths.map((p) => trainable[p].tensor);
  let aux: { correct: tf.Scalar; weight: tf.Scalar } | undefined;
  differentiated.push(new Set(xs));
  let result: { value: tf.Tensor; grads: Array<tf.Tensor | undefined> };
  try {
    result = tf.engine().gradients(
    () => {
      const inner: Record<string, Named> = {};
      paths.forEach((p, i) => (inner[p] = new d.Named(xs[i], trainable[p].axes)));
      const out = loss(withLeaves(params, inner));
      if (out instanceof tf.Tensor) return out;
      // the forward runs in a tidy: keep the report's other scalars past it
      aux = { correct: tf.keep(out.correct), weight: tf.keep(out.weight) };
      return out.loss;
    },
    xs,
    undefined,
    true,
  );
  } finally {
    differentiated.pop();
  }
  const { value, grads } = result;
  if (value.rank !== 0) {
    tf.dispose([value, ...grads.filter((g) => g)]);
    throw new Error(`valueAndGradTrainable: the loss must be a scalar, got shape [${value.shape.join(', ')}]`);
  }
  const out: Record<string, Named> = {};
  paths.forEach((p, i) => (out[p] = d.named(grads[i] ?? tf.zerosLike(xs[i]), trainable[p].axes)));
  const scalar = value as tf.Scalar;
  return { value: scalar, grads: out, ...(aux ? { report: { loss: scalar, ...aux } } : {}) };
}

