/**
 * Optimizers as pure functions over any params pytree (src/train/api.ts `Optimizer`), each exactly keras 3's
 * rule as its torch backend runs it (keras/src/backend/torch/optimizers/torch_adam.py, torch_optimizer.py,
 * keras/src/optimizers/sgd.py), which is what the fixtures in spec/fixtures/train were made with:
 *
 *   Adam:   t = step + 1;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
 *           alpha = lr sqrt(1 - b2^t) / (1 - b1^t);  w -= (m alpha) / (sqrt(v) + eps)
 *           (epsilon is added to sqrt(v), not to sqrt(v_hat): NOT torch.optim.Adam)
 *   AdamW:  first w *= 1 - weight_decay * lr for every variable not excluded, then Adam
 *   SGD:    momentum 0: w -= lr g;  else m = momentum m - lr g, and w += m (nesterov: w += momentum m - lr g)
 *
 * `update` returns new params and a new state; the caller owns (and disposes) old and new. Every slot is a
 * pytree shaped like the params, so a state can be written as tensors and read back bit for bit. Scalars of
 * the rule (alpha, the decay factor) are rounded to float32 as keras computes them in float32 tensors.
 */
import { tf } from '../../dsl/tf';
import * as d from '../../dsl';
import type { Named, Tree } from '../../dsl';
import type { Optimizer, OptimizerSplit, OptimizerState } from './api';

const f32 = Math.fround;

/** Map two same-structure pytrees leaf by leaf (by path), checking that they match. */
function zipLeaves(what: string, a: Tree, b: Tree): Map<string, Named> {
  const mine = d.leaves(a);
  const other = new Map(d.leaves(b));
  if (mine.length !== other.size) throw new Error(`${what}: ${other.size} leaves, expected ${mine.length} (the params' structure)`);
  for (const [path, x] of mine) {
    const y = other.get(path);
    if (!y) throw new Error(`${what}: no leaf '${path}'`);
    if (y.shape.length !== x.shape.length || y.shape.some((n, i) => n !== x.shape[i])) {
      throw new Error(`${what}: '${path}' has shape [${y.shape.join(', ')}], expected [${x.shape.join(', ')}]`);
    }
  }
  return other;
}

const zerosLike = (params: Tree): Tree => d.mapTree(params, (x) => d.named(tf.zerosLike(x.tensor), x.axes));

function checkState(name: string, state: OptimizerState, slots: readonly string[]): void {
  if (!Number.isInteger(state.step) || state.step < 0) throw new Error(`${name}: state.step must be a non-negative integer, got ${state.step}`);
  for (const s of slots) if (!(s in state.slots)) throw new Error(`${name}: state has no slot '${s}' (has ${Object.keys(state.slots).join(', ') || 'none'})`);
}

/**
 * keras' variable name of a PaliGemma params path (what `exclude_from_weight_decay(var_names=...)` matches):
 * our leaves keep keras' names (kernel, bias, gamma, beta, scale, lora_kernel_a/b) except the decoder's
 * kernels, which we store under their layer's name, and the embeddings and MAP probe. Other paths: the last
 * component.
 */
export function kerasVariableName(path: string): string {
  const parts = path.split('/');
  const last = parts[parts.length - 1];
  if (parts[0] === 'token_embedding') return 'embeddings'; // token_embedding/<shard>
  if (path === 'vit/position_embedding') return 'embeddings';
  if (path === 'vit/pooling/probe') return 'variable';
  if (/^layers\/\d+\/(attention\/(query|key|value|output)|gating_ffw|gating_ffw_2|ffw_linear)$/.test(path)) return 'kernel';
  return last;
}

export interface AdamOptions {
  readonly beta1?: number;
  readonly beta2?: number;
  readonly epsilon?: number;
}

export interface AdamWOptions extends AdamOptions {
  /** Decoupled weight decay: w *= 1 - weightDecay * lr before the Adam step. */
  readonly weightDecay: number;
  /**
   * keras' `exclude_from_weight_decay(var_names=...)`: a variable is excluded when
   * `re.search("|".join(var_names), name)` finds its variable name (`variableName(path)`).
   */
  readonly excludeFromWeightDecay?: readonly string[];
  /** The variable name matched by `excludeFromWeightDecay` (default `kerasVariableName`). */
  readonly variableName?: (path: string) => string;
}

/** An optimizer from its split (api.ts): `update` checks the state, makes the step's scalars tensors, applies. */
function fromSplit(name: string, slotNames: readonly string[], init: Optimizer['init'], split: OptimizerSplit): Optimizer {
  return {
    name,
    init,
    split,
    update(params, grads, state, learningRate) {
      checkState(name, state, slotNames);
      const scalars = split.scalars(state, learningRate).map((x) => tf.scalar(x));
      try {
        const out = split.apply(params, grads, state.slots, scalars);
        return { params: out.params, state: { step: state.step + 1, slots: out.slots } };
      } finally {
        tf.dispose(scalars);
      }
    },
  };
}

function adamLike(name: string, o: AdamOptions, decay?: { rate: number; applies: (path: string) => boolean }): Optimizer {
  const b1 = o.beta1 ?? 0.9;
  const b2 = o.beta2 ?? 0.999;
  const eps = o.epsilon ?? 1e-7;
  for (const [k, v] of [['beta1', b1], ['beta2', b2]] as const) {
    if (!(v >= 0 && v < 1)) throw new Error(`${name}: ${k} must be in [0, 1), got ${v}`);
  }
  if (!(eps >= 0)) throw new Error(`${name}: epsilon must be >= 0, got ${eps}`);
  return fromSplit(name, ['m', 'v'], (params) => ({ step: 0, slots: { m: zerosLike(params), v: zerosLike(params) } }), {
    scalars(state, learningRate) {
      const t = state.step + 1;
      const lr = f32(learningRate);
      // float32 as keras computes it: alpha = lr * sqrt(1 - b2^t) / (1 - b1^t)
      const alpha = f32(f32(lr * f32(Math.sqrt(f32(1 - f32(b2 ** t))))) / f32(1 - f32(b1 ** t)));
      const decayFactor = decay ? f32(1 - f32(f32(decay.rate) * lr)) : 1;
      return [alpha, decayFactor];
    },
    apply(params, grads, slots, [alpha, decayFactor]) {
      const g = zipLeaves(`${name}: grads`, params, grads);
      const m = zipLeaves(`${name}: state.slots.m`, params, slots.m);
      const v = zipLeaves(`${name}: state.slots.v`, params, slots.v);
      const newM = new Map<string, Named>();
      const newV = new Map<string, Named>();
      const next = d.mapTree(params, (p, path) =>
        d.scoped(() => {
          const gi = tf.cast(g.get(path)!.tensor, 'float32');
          const mi = tf.add(tf.mul(m.get(path)!.tensor, b1), tf.mul(gi, 1 - b1));
          const vi = tf.add(tf.mul(v.get(path)!.tensor, b2), tf.mul(tf.mul(gi, gi), 1 - b2));
          newM.set(path, d.named(tf.keep(mi), p.axes));
          newV.set(path, d.named(tf.keep(vi), p.axes));
          // torch_optimizer._apply_weight_decay runs before the update: w *= 1 - wd * lr
          const w = decay && decay.applies(path) ? tf.mul(p.tensor, decayFactor) : p.tensor;
          return d.named(tf.sub(w, tf.div(tf.mul(mi, alpha), tf.add(tf.sqrt(vi), eps))), p.axes);
        }),
      );
      return { params: next, slots: { m: d.mapTree(params, (_, path) => newM.get(path)!), v: d.mapTree(params, (_, path) => newV.get(path)!) } };
    },
  });
}

/** keras.optimizers.Adam (defaults beta1 0.9, beta2 0.999, epsilon 1e-7: keras_hub's default compile). */
export const adam = (o: AdamOptions = {}): Optimizer => adamLike('adam', o);

/** keras.optimizers.AdamW with `exclude_from_weight_decay(var_names=...)`. */
export function adamw(o: AdamWOptions): Optimizer {
  if (!(o.weightDecay >= 0)) throw new Error(`adamw: weightDecay must be >= 0, got ${o.weightDecay}`);
  const names = [...new Set(o.excludeFromWeightDecay ?? [])];
  const pattern = names.length ? new RegExp(names.join('|')) : null;
  const nameOf = o.variableName ?? kerasVariableName;
  return adamLike('adamw', o, { rate: o.weightDecay, applies: (path) => !(pattern && pattern.test(nameOf(path))) });
}

export interface SgdOptions {
  readonly momentum?: number;
  readonly nesterov?: boolean;
}

/** keras.optimizers.SGD: one slot `momentum` when momentum > 0. */
export function sgd(o: SgdOptions = {}): Optimizer {
  const mu = o.momentum ?? 0;
  if (!(mu >= 0 && mu <= 1)) throw new Error(`sgd: momentum must be in [0, 1], got ${mu}`);
  const slotNames = mu !== 0 ? ['momentum'] : [];
  return fromSplit('sgd', slotNames, (params) => ({ step: 0, slots: (mu !== 0 ? { momentum: zerosLike(params) } : {}) as Record<string, Tree> }), {
    scalars: (_state, learningRate) => [f32(learningRate)],
    apply(params, grads, slots, [lr]) {
      const g = zipLeaves('sgd: grads', params, grads);
      if (mu === 0) {
        const next = d.mapTree(params, (p, path) => d.scoped(() => d.named(tf.sub(p.tensor, tf.mul(g.get(path)!.tensor, lr)), p.axes)));
        return { params: next, slots: {} as Record<string, Tree> };
      }
      const m = zipLeaves('sgd: state.slots.momentum', params, slots.momentum);
      const newM = new Map<string, Named>();
      const next = d.mapTree(params, (p, path) =>
        d.scoped(() => {
          const step = tf.mul(g.get(path)!.tensor, lr);
          const mi = tf.sub(tf.mul(m.get(path)!.tensor, mu), step);
          newM.set(path, d.named(tf.keep(mi), p.axes));
          const delta = o.nesterov ? tf.sub(tf.mul(mi, mu), step) : mi;
          return d.named(tf.add(p.tensor, delta), p.axes);
        }),
      );
      return { params: next, slots: { momentum: d.mapTree(params, (_, path) => newM.get(path)!) } };
    },
  });
}

/** The global norm (a scalar tensor) and the gradients scaled on the device by maxNorm / max(norm, maxNorm). */
function clipOnDevice<T extends Tree>(grads: T, maxNorm: number): { grads: T; norm: tf.Scalar } {
  if (!(maxNorm > 0)) throw new Error(`clipByGlobalNorm: maxNorm must be > 0, got ${maxNorm}`);
  const all = d.leaves(grads);
  // a chain of adds, not tf.addN: webgpu binds every addN input as a storage buffer (at most 8-12 per stage)
  const norm = tf.tidy(() =>
    tf.sqrt(all.map(([, x]) => tf.sum(tf.square(tf.cast(x.tensor, 'float32')))).reduce((a, b) => tf.add(a, b), tf.scalar(0))),
  ) as tf.Scalar;
  // keras' clip_by_global_norm: g * clip / max(norm, clip), i.e. unchanged when the norm is below the limit
  const factor = tf.tidy(() => tf.div(maxNorm, tf.maximum(norm, maxNorm)));
  const out = d.mapTree(grads, (x) => d.scoped(() => d.named(tf.mul(x.tensor, factor), x.axes)));
  factor.dispose();
  return { grads: out, norm };
}

/**
 * Scale every gradient by min(1, maxNorm / ||g||) with ||g|| the global L2 norm over all leaves (keras'
 * `global_clipnorm`). Returns new gradient tensors (the caller disposes the old ones) and the norm before
 * clipping. The scaling happens on the device; reading the norm is synchronous, which the webgpu backend
 * cannot do in Node: use `clipByGlobalNormAsync` there.
 */
export function clipByGlobalNorm<T extends Tree>(grads: T, maxNorm: number): { grads: T; norm: number } {
  if (tf.getBackend() === 'webgpu') throw new Error('clipByGlobalNorm: webgpu has no synchronous read in Node; use clipByGlobalNormAsync');
  const r = clipOnDevice(grads, maxNorm);
  const norm = (r.norm.dataSync() as Float32Array)[0];
  r.norm.dispose();
  return { grads: r.grads, norm };
}

/** `clipByGlobalNorm` on any backend, the norm read asynchronously. */
export async function clipByGlobalNormAsync<T extends Tree>(grads: T, maxNorm: number): Promise<{ grads: T; norm: number }> {
  const r = clipOnDevice(grads, maxNorm);
  const norm = ((await r.norm.data()) as Float32Array)[0];
  r.norm.dispose();
  return { grads: r.grads, norm };
}

/** Dispose every slot of an optimizer state. */
export function disposeState(state: OptimizerState): void {
  for (const s of Object.values(state.slots)) d.disposeTree(s);
}
