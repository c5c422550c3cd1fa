/**
 * `jit`: compile a pure function of pytrees of named tensors, as jax.jit does, onto onnxruntime.
 *
 *   const f = d.jit((p: PaliGemmaParams, x: BackboneInputs) => backbone(p, x));
 *   const y = f(params, inputs);      // first call per signature: trace, convert, create a session
 *   const z = f(params, otherInputs); // later calls: run the session
 *
 * The signature of a call is the pytree structure of its arguments, every tensor's shape and dtype, and
 * every non-tensor leaf (numbers, strings, booleans: static options, like jax's static_argnums). The
 * first call per signature runs `fn` once on the recording 'trace' backend (onnx/trace.ts), converts the
 * graph (onnx/convert.ts) and creates an onnxruntime-node session (all graph optimisations, one intra-op
 * thread per core); later calls feed the argument tensors' host arrays to it (no copies on the cpu
 * backend) and wrap its outputs as tensors on the current backend, with the traced output's structure
 * and axis names.
 *
 * What is baked in: values computed on the host during the trace (RoPE tables from host positions, masks
 * from host arrays, tensors the function closes over) are constants of the graph. They must therefore
 * depend only on the signature: pass anything that changes between calls as a tensor argument. A function
 * whose signature changes every call retraces every call; `traces` counts them.
 *
 * Int8 (`int8: { weights: i }`, onnx/int8.ts): the weight matMuls of argument i run with int8 weights quantized
 * into the session, which is then bound to those weight tensors (their identity joins the signature).
 *
 * Memory: a call allocates only its outputs (tf.memory().numTensors grows by the number of output
 * tensors) and releases the ORT tensors it made.
 */
import { tf } from './tf';
import { Named } from './named';
import { convert } from './onnx/convert';
import type { WeightInput } from './onnx/int8';
import { deriveKey, dropoutMask, withKeyTracing, type Key, type KeyStep } from './random';
import { createSession, onnxThreads, type OrtType, type Session } from './onnx/runtime';
import { placeholder, traced, valueOfTensor, type Value } from './onnx/trace';

export interface JitOptions {
  /** Intra-op threads of the session (default: setOnnxThreads, else one per core). */
  readonly threads?: number;
  /** A name for the model (errors, stats). */
  readonly name?: string;
  /** onnxruntime's CPU memory arena (default true; see createSession). */
  readonly memArena?: boolean;
  /**
   * Int8 weights (onnx/int8.ts): the tensor leaves of argument `weights` are weights, and every 2-D
   * matMul reading one of them runs as an int8 MatMulNBits over a copy quantized when the session is
   * created. The session is then bound to those weights' values: the signature includes their identity
   * (the tensor objects), and a call with other weights releases the sessions compiled with the old ones.
   */
  readonly int8?: { readonly weights: number };
  /**
   * Arguments that are PRNG keys (a Key or undefined): not part of the signature, so one graph serves every
   * key. Dropout masks drawn from them (or from keys derived by foldIn/split inside the function) become graph
   * inputs: each call replays the derivations from its own keys and draws the masks on the host, the bits
   * eager dropout draws. Whether a key is given (or undefined) is part of the signature.
   */
  readonly keys?: readonly number[];
}

export interface CompileStats {
  readonly signature: string;
  readonly nodes: number;
  readonly initializerBytes: number;
  readonly modelBytes: number;
  readonly traceMs: number;
  readonly sessionMs: number;
  /** matMuls compiled to int8 (the int8 option). */
  readonly int8MatMuls: number;
  /** Bytes of their quantized weights. */
  readonly int8Bytes: number;
}

export type Jitted<F extends (...args: never[]) => unknown> = F & {
  /** How many times `fn` was traced (one per distinct signature). */
  readonly traces: number;
  /** One entry per compiled signature. */
  readonly stats: readonly CompileStats[];
  /** Release every session. */
  dispose(): void;
};

type Leaf = Named | tf.Tensor;

/** Tensor leaves of a pytree (records by key order, arrays), with a structure string of everything else. */
function flatten(tree: unknown, leaves: Leaf[]): string {
  if (tree instanceof Named) {
    leaves.push(tree);
    return `N(${tree.dtype}[${tree.shape.join(',')}]{${tree.axes.join(',')}})`;
  }
  if (tree instanceof tf.Tensor) {
    leaves.push(tree);
    return `T(${tree.dtype}[${tree.shape.join(',')}])`;
  }
  if (Array.isArray(tree)) return `[${tree.map((t) => flatten(t, leaves)).join(',')}]`;
  if (tree !== null && typeof tree === 'object') {
    return `{${Object.keys(tree)
      .map((k) => `${JSON.stringify(k)}:${flatten((tree as Record<string, unknown>)[k], leaves)}`)
      .join(',')}}`;
  }
  if (typeof tree === 'function') throw new Error('jit: functions cannot be arguments of a jitted function (close over them instead)');
  return tree === undefined ? 'u' : JSON.stringify(tree);
}

/** Rebuild `tree` with its tensor leaves replaced, in flatten's order. */
function unflatten(tree: unknown, next: (leaf: Leaf) => Leaf): unknown {
  if (tree instanceof Named || tree instanceof tf.Tensor) return next(tree);
  if (Array.isArray(tree)) return tree.map((t) => unflatten(t, next));
  if (tree !== null && typeof tree === 'object') return Object.fromEntries(Object.entries(tree).map(([k, t]) => [k, unflatten(t, next)]));
  return tree;
}

interface Compiled {
  readonly session: Session;
  readonly inputs: readonly Value[];
  readonly inputNames: readonly string[];
  readonly outputNames: readonly string[];
  /** The output pytree with traced tensors as leaves (only their shapes, dtypes and axes are used). */
  readonly template: unknown;
  readonly outputs: readonly Value[];
  /** The int8 weights' bytes, which onnxruntime may read from where they are for the session's life. */
  readonly externalData: readonly { readonly data: Uint8Array }[];
  /** The identity of the int8 weights it was compiled with ('' without the option). */
  readonly weightsKey: string;
  /** Dropout masks fed after the argument leaves: which key argument, the derivation from it, rate, shape. */
  readonly masks: readonly DropoutSite[];
}

interface DropoutSite {
  readonly value: Value;
  readonly arg: number;
  readonly path: readonly KeyStep[];
  readonly rate: number;
  readonly shape: readonly number[];
}

const isKey = (k: unknown): k is Key => Array.isArray(k) && k.length === 2 && k.every((w) => Number.isInteger(w) && w >= 0 && w < 2 ** 32);
const keyString = (k: Key): string => `${k[0]}:${k[1]}`;

/** A number per tensor object, for the identity of int8 weights. */
const tensorIds = new WeakMap<tf.Tensor, number>();
let nextTensorId = 0;
const tensorId = (t: tf.Tensor): number => {
  let id = tensorIds.get(t);
  if (id === undefined) tensorIds.set(t, (id = nextTensorId++));
  return id;
};

const ortType = (dtype: tf.DataType): OrtType => {
  if (dtype === 'float32' || dtype === 'int32' || dtype === 'bool') return dtype;
  throw new Error(`jit: ${dtype} tensors cannot be passed to a compiled function`);
};

/** A tensor's values as the typed array onnxruntime wants (tfjs may hold e.g. a float32 tensor's zeros in another array type). */
function hostArray(t: tf.Tensor): ArrayBufferView {
  const v = t.dataSync();
  if (t.dtype === 'float32') return v instanceof Float32Array ? v : Float32Array.from(v);
  if (t.dtype === 'int32') return v instanceof Int32Array ? v : Int32Array.from(v);
  return v instanceof Uint8Array ? v : Uint8Array.from(v);
}

export function jit<F extends (...args: never[]) => unknown>(fn: F, options: JitOptions = {}): Jitted<F> {
  const cache = new Map<string, Compiled>();
  const stats: CompileStats[] = [];
  let traces = 0;
  const name = options.name ?? (fn.name || 'jitted');

  const int8Arg = options.int8?.weights;
  if (int8Arg !== undefined && !(Number.isInteger(int8Arg) && int8Arg >= 0)) throw new Error(`jit: int8.weights must be an argument index, got ${int8Arg}`);
  const keyArgs = new Set(options.keys ?? []);
  for (const i of keyArgs) if (!(Number.isInteger(i) && i >= 0)) throw new Error(`jit: keys must be argument indexes, got ${i}`);
  /**
   * The signature of a call, its tensor leaves (pushed to `leaves`) and the identity of its int8 weights (''
   * without the option). Key arguments count only as given or not.
   */
  const signatureOf = (args: unknown[], leaves: Leaf[]): { signature: string; weightsKey: string } => {
    let weightsKey = '';
    const parts = args.map((a, i) => {
      if (!keyArgs.has(i)) {
        const first = leaves.length;
        const part = flatten(a, leaves);
        if (i === int8Arg) weightsKey = leaves.slice(first).map((l) => tensorId(l instanceof Named ? l.tensor : l)).join(',');
        return part;
      }
      if (a === undefined) return 'u';
      if (!isKey(a)) throw new Error(`jit: ${name}: argument ${i} must be a key (two uint32 words) or undefined, got ${JSON.stringify(a)}`);
      return 'K';
    });
    return { signature: `[${parts.join(',')}]`, weightsKey };
  };

  function compile(args: unknown[], signature: string, weightsKey: string): Compiled {
    const t0 = performance.now();
    const placeholders: Value[] = [];
    const int8Weights = new Map<number, WeightInput>();
    const masks: DropoutSite[] = [];
    const roots = new Map<string, number>();
    for (const i of keyArgs) if (args[i] !== undefined) roots.set(keyString(args[i] as Key), i);
    const parents = new Map<string, { parent: Key; step: KeyStep }>();
    const keyTracing = {
      derived(child: Key, parent: Key, step: KeyStep) {
        const c = keyString(child);
        if (!roots.has(c) && !parents.has(c)) parents.set(c, { parent, step });
      },
      mask(k: Key, rate: number, shape: readonly number[]): tf.Tensor {
        const path: KeyStep[] = [];
        let at = k;
        while (!roots.has(keyString(at))) {
          const p = parents.get(keyString(at));
          if (!p) throw new Error(`jit: ${name}: dropout with a key not derived (foldIn, split) from a key argument (the keys option); it would be a constant of the graph`);
          path.unshift(p.step);
          at = p.parent;
        }
        const p = placeholder(shape, 'float32');
        masks.push({ value: p.value, arg: roots.get(keyString(at))!, path, rate, shape: [...shape] });
        return p.tensor;
      },
    };
    const { result, trace } = traced(() => {
      const made: tf.Tensor[] = [];
      const swapped = args.map((arg, index) =>
        unflatten(arg, (leaf) => {
          const t = leaf instanceof Named ? leaf.tensor : leaf;
          const p = placeholder(t.shape, t.dtype);
          placeholders.push(p.value);
          made.push(p.tensor);
          if (index === int8Arg && t.dtype === 'float32') int8Weights.set(p.value.id, { data: hostArray(t) as Float32Array, owner: t });
          return leaf instanceof Named ? new Named(p.tensor, leaf.axes) : p.tensor;
        }),
      );
      try {
        const out = tf.tidy(() => {
          const run = () => (fn as unknown as (...a: unknown[]) => unknown)(...swapped);
          const r = keyArgs.size > 0 ? withKeyTracing(keyTracing, run) : run();
          const kept: Leaf[] = [];
          flatten(r, kept);
          return { r, tensors: kept.map((l) => (l instanceof Named ? l.tensor : l)) } as unknown as tf.TensorContainer;
        }) as unknown as { r: unknown; tensors: tf.Tensor[] };
        const outputs = out.tensors.map((t) => valueOfTensor(t));
        tf.dispose(out.tensors);
        return { template: out.r, outputs };
      } finally {
        tf.dispose(made);
      }
    });
    traces++;
    const t1 = performance.now();
    const converted = convert(trace, [...placeholders, ...masks.map((m) => m.value)], result.outputs, name, { int8Weights });
    const session = createSession(converted.model, options.threads ?? onnxThreads(), { memArena: options.memArena, externalData: converted.externalData });
    stats.push({
      signature,
      nodes: converted.nodes,
      initializerBytes: converted.initializerBytes,
      modelBytes: converted.model.length,
      traceMs: t1 - t0,
      sessionMs: performance.now() - t1,
      int8MatMuls: converted.int8MatMuls,
      int8Bytes: converted.externalData.reduce((s, f) => s + f.data.length, 0),
    });
    const { inputNames, outputNames, externalData } = converted;
    return { session, inputs: placeholders, inputNames, outputNames, template: result.template, outputs: result.outputs, externalData, weightsKey, masks };
  }

  const call = (...args: unknown[]): unknown => {
    const leaves: Leaf[] = [];
    const { signature, weightsKey } = signatureOf(args, leaves);
    let c = cache.get(signature);
    if (weightsKey !== '' && [...cache.values()].some((o) => o.weightsKey !== weightsKey)) {
      // other int8 weights: every session of this function holds a quantized copy of the old ones; one set at a time
      for (const [sig, o] of cache) {
        if (o.weightsKey === weightsKey) continue;
        o.session.release();
        cache.delete(sig);
      }
      c = cache.get(signature);
    }
    if (!c) {
      c = compile(args, signature, weightsKey);
      cache.set(signature, c);
    }
    const feeds: Record<string, { type: OrtType; data: ArrayBufferView; dims: readonly number[] }> = {};
    leaves.forEach((leaf, k) => {
      const t = leaf instanceof Named ? leaf.tensor : leaf;
      // cpu backend: the tensor's own array (no copy); other backends copy it out once
      feeds[c!.inputNames[k]] = { type: ortType(t.dtype), data: hostArray(t), dims: t.shape };
    });
    c.masks.forEach((m, j) => {
      const k = m.path.reduce(deriveKey, args[m.arg] as Key);
      feeds[c!.inputNames[leaves.length + j]] = { type: 'float32', data: dropoutMask(k, m.rate, m.value.shape.reduce((a, b) => a * b, 1)), dims: m.shape };
    });
    const results = c.session.run(feeds, c.outputNames);
    let k = 0;
    return unflatten(c.template, (leaf) => {
      const v = c!.outputs[k];
      const r = results.get(c!.outputNames[k++])!;
      const data = r.data instanceof BigInt64Array ? Int32Array.from(r.data, (x) => Number(x)) : r.data;
      const t = tf.tensor(data as Float32Array, [...v.shape], v.dtype);
      return leaf instanceof Named ? new Named(t, leaf.axes) : t;
    });
  };

  Object.defineProperty(call, 'traces', { get: () => traces });
  return Object.assign(call, {
    stats,
    dispose() {
      for (const c of cache.values()) c.session.release();
      cache.clear();
    },
  }) as unknown as Jitted<F>;
}
