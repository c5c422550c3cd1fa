/**
 * Tracing: a tfjs KernelBackend ('trace') that records every kernel call with its inferred output shapes
 * and computes no data, so a pure function run on it once yields its graph (as jax.jit traces).
 *
 * - Graph inputs are placeholder tensors made by `placeholder`; reading their values is an error.
 * - Host values written during the trace (tf.tensor(...), scalars, tf.fill, masks built on the host) are
 *   constants; a kernel whose inputs are all constants is evaluated at once on the cpu backend (constant
 *   folding), so host-side masks and RoPE tables become initializers, never graph nodes.
 * - A tensor from another backend captured by the function (not passed in) is read once and becomes a
 *   constant, as a closed-over array does under jax.jit.
 * - A kernel the converter does not know is an error naming the kernel, the op that called it and the
 *   input shapes.
 */
import { tf } from '../tf';
import { kernelTable } from './kernels';

type DataId = object;
type Values = Float32Array | Int32Array | Uint8Array;

/** One value of the graph: a graph input, a constant, or an output of a recorded node. */
export interface Value {
  readonly id: number;
  readonly shape: readonly number[];
  readonly dtype: tf.DataType;
  readonly kind: 'input' | 'const' | 'node';
  /** Constants only. */
  readonly values?: Values;
}

export interface GraphNode {
  readonly kernel: string;
  /** The tfjs op that ran the kernel (its scope name), for error messages. */
  readonly op: string;
  readonly inputs: readonly Value[];
  readonly attrs: Readonly<Record<string, unknown>>;
  readonly outputs: readonly Value[];
}

export interface Trace {
  readonly nodes: GraphNode[];
  readonly values: Map<DataId, Value>;
  nextId: number;
}

export const BACKEND = 'trace';

let current: Trace | undefined;

const typed = (values: unknown, dtype: tf.DataType, size: number): Values => {
  if (dtype === 'float32') return values instanceof Float32Array ? values : Float32Array.from(values as ArrayLike<number>);
  if (dtype === 'int32') return values instanceof Int32Array ? values : Int32Array.from(values as ArrayLike<number>);
  if (dtype === 'bool') return values instanceof Uint8Array ? values : Uint8Array.from(values as ArrayLike<number>);
  throw new Error(`jit: ${dtype} tensors (size ${size}) cannot be traced; use float32, int32 or bool`);
};

const active = (): Trace => {
  if (!current) throw new Error(`jit: the '${BACKEND}' backend is only usable inside a trace`);
  return current;
};

function newValue(t: Trace, v: Omit<Value, 'id'>): Value {
  return { id: t.nextId++, ...v };
}

/** The value behind a dataId, reading tensors of other backends (captured by the function) as constants. */
function valueOf(dataId: DataId): Value {
  const t = active();
  const known = t.values.get(dataId);
  if (known) return known;
  const engine = tf.engine() as unknown as { state: { tensorInfo: Map<DataId, { shape: number[]; dtype: tf.DataType }> }; readSync(d: DataId): unknown };
  const info = engine.state.tensorInfo.get(dataId);
  if (!info) throw new Error('jit: a kernel input is not a live tensor');
  const v = newValue(t, { shape: info.shape, dtype: info.dtype, kind: 'const', values: typed(engine.readSync(dataId), info.dtype, info.shape.reduce((a, b) => a * b, 1)) });
  t.values.set(dataId, v);
  return v;
}

/** The backend: data is a map dataId -> Value; refcounts as tfjs expects. */
class TraceBackend extends tf.KernelBackend {
  private refs = new WeakMap<DataId, number>();

  bind(dataId: DataId, v: Value): void {
    active().values.set(dataId, v);
    this.refs.set(dataId, 1);
  }

  override write(values: unknown, shape: number[], dtype: tf.DataType): DataId {
    const dataId = {};
    const t = active();
    this.bind(dataId, newValue(t, { shape, dtype, kind: 'const', values: typed(values, dtype, shape.reduce((a, b) => a * b, 1)) }));
    return dataId;
  }

  override move(dataId: DataId, values: unknown, shape: number[], dtype: tf.DataType, refCount: number): void {
    const t = active();
    t.values.set(dataId, newValue(t, { shape, dtype, kind: 'const', values: typed(values, dtype, shape.reduce((a, b) => a * b, 1)) }));
    this.refs.set(dataId, refCount);
  }

  override readSync(dataId: DataId): Values {
    const v = valueOf(dataId);
    if (v.kind === 'const') return v.values!;
    throw new Error(`jit: the traced function reads a [${v.shape.join(', ')}] ${v.dtype} tensor that depends on its inputs back to the host (dataSync/data/arraySync); a compiled function must stay in tensors`);
  }

  override read(dataId: DataId): Promise<Values> {
    return Promise.resolve(this.readSync(dataId));
  }

  override disposeData(dataId: DataId, force = false): boolean {
    const n = (this.refs.get(dataId) ?? 1) - 1;
    if (n > 0 && !force) {
      this.refs.set(dataId, n);
      return false;
    }
    this.refs.delete(dataId);
    return true;
  }

  override refCount(dataId: DataId): number {
    return this.refs.get(dataId) ?? 0;
  }

  override incRef(dataId: DataId): void {
    this.refs.set(dataId, (this.refs.get(dataId) ?? 0) + 1);
  }

  override numDataIds(): number {
    return 0;
  }

  override memory(): { unreliable: boolean } {
    return { unreliable: true };
  }

  override floatPrecision(): 32 {
    return 32;
  }

  override epsilon(): number {
    return 1e-7;
  }

  override dispose(): void {}

  override timerAvailable(): boolean {
    return false;
  }
}

let backend: TraceBackend | undefined;

// -------------------------------------------------------------------------------------------------
// kernels: record, or fold when every input is a constant
// -------------------------------------------------------------------------------------------------

/** The innermost tfjs op running (ops run in scopes named `<op>__op`). */
const opName = (): string => {
  const state = (tf.engine() as unknown as { state: { scopeStack: Array<{ name: string }>; activeScope?: { name: string } } }).state;
  const scopes = [...state.scopeStack, ...(state.activeScope ? [state.activeScope] : [])];
  for (let i = scopes.length - 1; i >= 0; i--) if (scopes[i].name.endsWith('__op')) return scopes[i].name.slice(0, -4);
  return '(no op)';
};

const describeInputs = (inputs: readonly Value[]): string => inputs.map((v) => `${v.dtype}[${v.shape.join(', ')}]`).join(', ');

/** Run a kernel on the cpu backend over constants: its outputs as constants. */
function fold(kernelName: string, inputs: Record<string, Value>, attrs: Record<string, unknown>, asArray: boolean): Array<{ values: Values; shape: number[]; dtype: tf.DataType }> {
  const cpu = tf.engine().findBackend('cpu');
  const kernel = tf.getKernel(kernelName, 'cpu');
  if (!cpu || !kernel) throw new Error(`jit: cannot fold ${kernelName}: no cpu kernel`);
  const written: DataId[] = [];
  const entries = Object.entries(inputs).map(([k, v]) => {
    const dataId = cpu.write(v.values!.slice(), v.shape as number[], v.dtype);
    written.push(dataId);
    return [k, { dataId, shape: v.shape as number[], dtype: v.dtype }] as const;
  });
  // Concat and Pack take an array of inputs, the other kernels a record
  const infos = asArray ? entries.map(([, info]) => info) : Object.fromEntries(entries);
  try {
    const out = kernel.kernelFunc({ inputs: infos as unknown as tf.NamedTensorInfoMap, attrs: attrs as tf.NamedAttrMap, backend: cpu });
    const outs = Array.isArray(out) ? out : [out];
    return outs.map((o) => {
      const values = typed(cpu.readSync(o.dataId), o.dtype, o.shape.reduce((a, b) => a * b, 1)).slice();
      if (!written.includes(o.dataId)) cpu.disposeData(o.dataId, true);
      return { values, shape: o.shape, dtype: o.dtype };
    });
  } finally {
    for (const id of written) cpu.disposeData(id, true);
  }
}

function recordKernel(kernelName: string) {
  return ({ inputs, attrs }: { inputs: tf.NamedTensorInfoMap; attrs?: tf.NamedAttrMap }): tf.TensorInfo | tf.TensorInfo[] => {
    const t = active();
    const b = backend!;
    const byName: Record<string, Value> = {};
    for (const [k, info] of Object.entries(inputs)) if (info) byName[k] = valueOf(info.dataId);
    const list = Object.values(byName);
    const a = (attrs ?? {}) as Record<string, unknown>;
    const spec = kernelTable[kernelName];
    if (!spec) {
      throw new Error(`jit: no ONNX conversion for kernel '${kernelName}' (called by op '${opName()}' on ${describeInputs(list) || 'no inputs'}, attrs ${JSON.stringify(a)})`);
    }
    const many = spec.outputs !== undefined;
    if (list.every((v) => v.kind === 'const') && spec.fold !== false) {
      const outs = fold(kernelName, byName, a, Array.isArray(inputs)).map((o) => {
        const dataId = {};
        b.bind(dataId, newValue(t, { shape: o.shape, dtype: o.dtype, kind: 'const', values: o.values }));
        return { dataId, shape: o.shape, dtype: o.dtype };
      });
      return many ? outs : outs[0];
    }
    let shapes: Array<{ shape: number[]; dtype: tf.DataType }>;
    try {
      shapes = spec.infer(byName, a);
    } catch (e) {
      throw new Error(`jit: ${kernelName} (op '${opName()}') on ${describeInputs(list)}: ${(e as Error).message}`);
    }
    const outputs = shapes.map((s) => newValue(t, { shape: s.shape, dtype: s.dtype, kind: 'node' }));
    t.nodes.push({ kernel: kernelName, op: opName(), inputs: list, attrs: { ...a, inputNames: Object.keys(byName) }, outputs });
    const infos = outputs.map((v) => {
      const dataId = {};
      b.bind(dataId, v);
      return { dataId, shape: v.shape as number[], dtype: v.dtype };
    });
    return many ? infos : infos[0];
  };
}

/** Register the backend and one kernel per tfjs kernel name (unknown ones throw a clear error). */
function register(): TraceBackend {
  if (backend) return backend;
  backend = new TraceBackend();
  tf.registerBackend(BACKEND, () => backend!, -1);
  const names = new Set<string>(Object.keys(kernelTable));
  for (const b of ['cpu', 'wasm', 'webgpu']) for (const k of tf.getKernelsForBackend(b)) names.add(k.kernelName);
  for (const name of names) tf.registerKernel({ kernelName: name, backendName: BACKEND, kernelFunc: recordKernel(name) as unknown as tf.KernelFunc });
  return backend;
}

/**
 * Run `run` on the trace backend (it makes its inputs with `placeholder` and calls the traced function);
 * the previous backend is restored afterwards, whatever happens.
 */
export function traced<T>(run: () => T): { result: T; trace: Trace } {
  register();
  if (current) throw new Error('jit: a jitted function was called while tracing another (nested jit is not supported)');
  const previous = tf.getBackend();
  const trace: Trace = { nodes: [], values: new Map(), nextId: 0 };
  current = trace;
  void tf.setBackend(BACKEND); // synchronous: the backend initialises synchronously
  try {
    return { result: run(), trace };
  } finally {
    void tf.setBackend(previous);
    current = undefined;
  }
}

/** A placeholder tensor on the trace backend: a graph input of this shape and dtype. */
export function placeholder(shape: readonly number[], dtype: tf.DataType): { tensor: tf.Tensor; value: Value } {
  const t = active();
  const dataId = {};
  const value = newValue(t, { shape: [...shape], dtype, kind: 'input' });
  backend!.bind(dataId, value);
  const tensor = tf.engine().makeTensorFromTensorInfo({ dataId, shape: [...shape], dtype }, backend);
  return { tensor, value };
}

/** The value a trace-backend tensor stands for. */
export const valueOfTensor = (x: tf.Tensor): Value => valueOf(x.dataId);
