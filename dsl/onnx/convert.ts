/**
 * A trace -> an ONNX model: graph inputs in the order given, constants as initializers, every recorded
 * kernel as ONNX nodes (kernels.ts), graph outputs in the order given. Nodes no output depends on (a
 * gradient tape's unused branches) are dropped first.
 */
import type { tf } from '../tf';
import { kernelTable, onnxType, type Emit } from './kernels';
import { encodeModel, rawBytes, type NodeSpec, type TensorValue } from './proto';
import type { GraphNode, Trace, Value } from './trace';

export const OPSET = 17;

/** Keep only the nodes that the outputs depend on, in recorded (topological) order. */
function live(trace: Trace, outputs: readonly Value[]): GraphNode[] {
  const producer = new Map<number, GraphNode>();
  for (const n of trace.nodes) for (const o of n.outputs) producer.set(o.id, n);
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
      stack.push(...n.inputs);
    }
  }
  return trace.nodes.filter((n) => needed.has(n));
}

export interface Converted {
  readonly model: Uint8Array;
  readonly inputNames: readonly string[];
  readonly outputNames: readonly string[];
  readonly nodes: number;
  readonly initializerBytes: number;
}

export function convert(trace: Trace, inputs: readonly Value[], outputs: readonly Value[], name: string): Converted {
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
    node(op, ins, outs, attrs) {
      nodes.push({ op, inputs: ins, outputs: outs, attrs, name: `n${nodes.length}_${op}` });
    },
  };
  for (const n of live(trace, outputs)) {
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
  return { model, inputNames, outputNames, nodes: nodes.length, initializerBytes: initializers.reduce((s, t) => s + t.raw.length, 0) };
}
