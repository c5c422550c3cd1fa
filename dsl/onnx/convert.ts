/**
 * A trace -> an ONNX model: graph inputs in the order given, constants as initializers, every recorded
 * kernel as ONNX nodes (kernels.ts), graph outputs in the order given. Nodes no output depends on (a
 * gradient tape's unused branches) are dropped first.
 */
import type { tf } from '../tf';
import { kernelTable, onnxType, type Emit } from './kernels';
import { emitInt8, planInt8, type Int8MatMul, type WeightInput } from './int8';
import { encodeModel, rawBytes, type NodeSpec, type TensorValue } from './proto';
import type { GraphNode, Trace, Value } from './trace';

export const OPSET = 17;

/** Keep only the nodes that the outputs depend on (through `inputsOf`), in recorded (topological) order. */
function live(nodes: readonly GraphNode[], outputs: readonly Value[], inputsOf = (n: GraphNode): readonly Value[] => n.inputs): GraphNode[] {
  const producer = new Map<number, GraphNode>();
  for (const n of nodes) for (const o of n.outputs) producer.set(o.id, n);
  const needed = new Set<GraphNode>();
  const stack = [...outputs];
  const seen = new Set<number>();
  while (stack.length) {
    const v = stack.pop()!;
    if (seen.has(v.id)) continue;
    seen.add(v.id);
    const n = producer.get(v.id);
    if (n && !needed.has(n)) {
      needed.add(n);
      stack.push(...inputsOf(n));
    }
  }
  return nodes.filter((n) => needed.has(n));
}

export interface Converted {
  readonly model: Uint8Array;
  readonly inputNames: readonly string[];
  readonly outputNames: readonly string[];
  readonly nodes: number;
  readonly initializerBytes: number;
  /** In-memory files holding initializers' bytes (int8 weights), for createSession. */
  readonly externalData: readonly { readonly path: string; readonly data: Uint8Array }[];
  /** How many matMuls run in int8. */
  readonly int8MatMuls: number;
}

export interface ConvertOptions {
  /**
   * Graph input id -> a float32 weight: 2-D matMuls reading one of these (through reshapes and
   * transposes) run in int8 (int8.ts), with the weight quantized into the model.
   */
  readonly int8Weights?: ReadonlyMap<number, WeightInput>;
}

export function convert(trace: Trace, inputs: readonly Value[], outputs: readonly Value[], name: string, options: ConvertOptions = {}): Converted {
  const nodes: NodeSpec[] = [];
  const initializers: TensorValue[] = [];
  const names = new Map<number, string>();
  const inputNames = inputs.map((v, k) => {
    const n = `in${k}`;
    if (!names.has(v.id)) names.set(v.id, n);
    return n;
  });
  let counter = 0;
  const scalarOf = (value: number, dtype: tf.DataType, dims: number[]): string => {
    const n = `s${counter++}`;
    const t = onnxType(dtype);
    const raw = t === 'float32' ? rawBytes(Float32Array.of(value)) : t === 'int32' ? rawBytes(Int32Array.of(value)) : Uint8Array.of(value ? 1 : 0);
    initializers.push({ name: n, dtype: t, dims, raw });
    return n;
  };
  const int64Cache = new Map<string, string>();
  const e: Emit = {
    name(v) {
      const known = names.get(v.id);
      if (known) return known;
      if (v.kind === 'const') {
        const n = `c${v.id}`;
        initializers.push({ name: n, dtype: onnxType(v.dtype), dims: v.shape, raw: rawBytes(v.values!) });
        names.set(v.id, n);
        return n;
      }
      if (v.kind === 'input') throw new Error(`jit: the traced function uses a placeholder that is not one of its inputs (shape [${v.shape.join(', ')}])`);
      const n = `v${v.id}`;
      names.set(v.id, n);
      return n;
    },
    tmp: () => `t${counter++}`,
    int64(values, dims) {
      const key = `${values.join(',')}|${dims?.join(',') ?? ''}`;
      const known = int64Cache.get(key);
      if (known) return known;
      const n = `i64_${int64Cache.size}`;
      initializers.push({ name: n, dtype: 'int64', dims: dims ?? [values.length], raw: rawBytes(BigInt64Array.from(values, (x) => BigInt(x))) });
      int64Cache.set(key, n);
      return n;
    },
    scalar: (value, dtype) => scalarOf(value, dtype, []),
    scalar1: (value, dtype) => scalarOf(value, dtype, [1]),
    node(op, ins, outs, attrs, domain) {
      nodes.push({ op, inputs: ins, outputs: outs, attrs, name: `n${nodes.length}_${op}`, domain });
    },
  };
  const externalData: { path: string; data: Uint8Array }[] = [];
  const weightNames = new Map<object, { q: string; scales: string }>();
  const weight = (m: { q: Uint8Array; scales: Float32Array; n: number; block: number }) => {
    const known = weightNames.get(m);
    if (known) return known;
    const k = externalData.length;
    const path = `int8_${k}.bin`;
    externalData.push({ path, data: m.q });
    initializers.push({ name: `q${k}`, dtype: 'uint8', dims: [m.n, m.q.length / m.n / m.block, m.block], raw: m.q, external: { location: path, offset: 0 } });
    initializers.push({ name: `qs${k}`, dtype: 'float32', dims: [m.scales.length], raw: rawBytes(m.scales) });
    weightNames.set(m, { q: `q${k}`, scales: `qs${k}` });
    return weightNames.get(m)!;
  };
  let kept = live(trace.nodes, outputs);
  let plans = new Map<GraphNode, Int8MatMul>();
  if (options.int8Weights?.size) {
    plans = planInt8(kept, options.int8Weights);
    // a weight's reshapes and transposes are dead once its matMuls read the quantized copy
    kept = live(kept, outputs, (n) => (plans.has(n) ? [plans.get(n)!.x] : n.inputs));
  }
  for (const n of kept) {
    const plan = plans.get(n);
    if (plan) {
      emitInt8({ ...e, weight }, plan, e.name(n.outputs[0]));
      continue;
    }
    const spec = kernelTable[n.kernel];
    const keys = (n.attrs.inputNames as string[]) ?? [];
    const byName = Object.fromEntries(keys.map((k, i) => [k, n.inputs[i]]));
    spec.emit(e, byName, n.attrs as Record<string, unknown>, n.outputs.map((o) => e.name(o)), n.outputs);
  }
  const outputNames = outputs.map((v, k) => {
    const n = `out${k}`;
    e.node('Identity', [e.name(v)], [n]);
    return n;
  });
  const model = encodeModel({
    name,
    opset: OPSET,
    nodes,
    initializers,
    inputs: inputs.map((v, k) => ({ name: inputNames[k], dtype: onnxType(v.dtype), dims: v.shape })),
    outputs: outputs.map((v, k) => ({ name: outputNames[k], dtype: onnxType(v.dtype), dims: v.shape })),
  });
  return { model, inputNames, outputNames, nodes: nodes.length, initializerBytes: initializers.reduce((s, t) => s + t.raw.length, 0), externalData, int8MatMuls: plans.size };
}
