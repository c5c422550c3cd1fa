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
 * Memory: a call allocates only its outputs (tf.memory().numTensors grows by the number of output
 * tensors) and releases the ORT tensors it made.
 */
import { tf } from './tf';
import { Named } from './named';
import { convert } from './onnx/convert';
import { createSession, onnxThreads, type OrtType, type Session } from './onnx/runtime';
import { placeholder, traced, valueOfTensor, type Value } from './onnx/trace';

export interface JitOptions {
  /** Intra-op threads of the session (default: setOnnxThreads, else one per core). */
  readonly threads?: number;
  /** A name for the model (errors, stats). */
  readonly name?: string;
  /** onnxruntime's CPU memory arena (default true; see createSession). */
  readonly memArena?: boolean;
}

export interface CompileStats {
  readonly signature: string;
  readonly nodes: number;
  readonly initializerBytes: number;
  readonly modelBytes: number;
  readonly traceMs: number;
  readonly sessionMs: number;
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
}

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

  function compile(args: unknown[], signature: string): Compiled {
    const t0 = performance.now();
    const placeholders: Value[] = [];
    const { result, trace } = traced(() => {
      const made: tf.Tensor[] = [];
      const swapped = unflatten(args, (leaf) => {
        const t = leaf instanceof Named ? leaf.tensor : leaf;
        const p = placeholder(t.shape, t.dtype);
        placeholders.push(p.value);
        made.push(p.tensor);
        return leaf instanceof Named ? new Named(p.tensor, leaf.axes) : p.tensor;
      }) as unknown[];
      try {
        const out = tf.tidy(() => {
          const r = (fn as unknown as (...a: unknown[]) => unknown)(...swapped);
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
    const converted = convert(trace, placeholders, result.outputs, name);
    const session = createSession(converted.model, options.threads ?? onnxThreads(), { memArena: options.memArena });
    stats.push({ signature, nodes: converted.nodes, initializerBytes: converted.initializerBytes, modelBytes: converted.model.length, traceMs: t1 - t0, sessionMs: performance.now() - t1 });
    return { session, inputs: placeholders, inputNames: converted.inputNames, outputNames: converted.outputNames, template: result.template, outputs: result.outputs };
  }

  const call = (...args: unknown[]): unknown => {
    const leaves: Leaf[] = [];
    const signature = flatten(args, leaves);
    let c = cache.get(signature);
    if (!c) {
      c = compile(args, signature);
      cache.set(signature, c);
    }
    const feeds: Record<string, { type: OrtType; data: ArrayBufferView; dims: readonly number[] }> = {};
    leaves.forEach((leaf, k) => {
      const t = leaf instanceof Named ? leaf.tensor : leaf;
      // cpu backend: the tensor's own array (no copy); other backends copy it out once
      feeds[c!.inputNames[k]] = { type: ortType(t.dtype), data: hostArray(t), dims: t.shape };
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
