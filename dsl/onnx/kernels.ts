/**
 * tfjs kernels -> ONNX (opset 17): for each kernel the tracer may meet, its output shapes and dtypes
 * (inferred, never computed) and the ONNX nodes that compute it. Semantics follow tfjs-core's kernel
 * definitions (kernel_names.ts) and the cpu backend; broadcasting in both is numpy's.
 */
import type { tf } from '../tf';
import type { AttrValue, ElemTypeName } from './proto';
import type { Value } from './trace';

type Shape = number[];
type Out = { shape: Shape; dtype: tf.DataType };
type Inputs = Record<string, Value>;
type Attrs = Record<string, unknown>;

/** What a kernel's emitter may do: name values, add constants and nodes. */
export interface Emit {
  name(v: Value): string;
  /** A fresh name for an intermediate. */
  tmp(): string;
  /** An int64 constant (shapes, axes, pads). */
  int64(values: readonly number[], dims?: readonly number[]): string;
  /** A scalar constant of a tfjs dtype. */
  scalar(value: number, dtype: tf.DataType): string;
  /** The same as a [1] tensor. */
  scalar1(value: number, dtype: tf.DataType): string;
  node(op: string, inputs: readonly string[], outputs: readonly string[], attrs?: Record<string, AttrValue>, domain?: string): void;
}

export interface KernelSpec {
  readonly infer: (inputs: Inputs, attrs: Attrs) => Out[];
  readonly emit: (e: Emit, inputs: Inputs, attrs: Attrs, outputs: readonly string[], outs: readonly Value[]) => void;
  /** Set when the kernel returns an array of tensors (SplitV, Unpack). */
  readonly outputs?: 'many';
  /** false: never constant-fold (none yet). */
  readonly fold?: false;
}

export const onnxType = (dtype: tf.DataType): ElemTypeName => {
  if (dtype === 'float32' || dtype === 'int32' || dtype === 'bool') return dtype;
  throw new Error(`jit: dtype ${dtype} has no ONNX conversion`);
};

export const ints = (value: readonly number[]): AttrValue => ({ kind: 'ints', value });
export const int = (value: number): AttrValue => ({ kind: 'int', value });
const toDtype = (dtype: tf.DataType): AttrValue => int({ float32: 1, int32: 6, bool: 9 }[dtype as 'float32'] ?? NaN);

const first = (i: Inputs): Value => Object.values(i)[0];
const normAxes = (axis: unknown, rank: number): number[] => {
  const list = axis === undefined || axis === null ? [...Array(rank).keys()] : Array.isArray(axis) ? (axis as number[]) : [axis as number];
  return list.map((a) => (a < 0 ? a + rank : a));
};

export function broadcastShapes(a: readonly number[], b: readonly number[]): Shape {
  const n = Math.max(a.length, b.length);
  const out: Shape = [];
  for (let i = 0; i < n; i++) {
    const x = a[a.length - n + i] ?? 1;
    const y = b[b.length - n + i] ?? 1;
    if (x !== y && x !== 1 && y !== 1) throw new Error(`shapes [${a.join(', ')}] and [${b.join(', ')}] do not broadcast`);
    out.push(x === 1 ? y : x);
  }
  return out;
}

// -------------------------------------------------------------------------------------------------
// families
// -------------------------------------------------------------------------------------------------

const same = (i: Inputs): Out[] => [{ shape: [...first(i).shape], dtype: first(i).dtype }];

/** Elementwise unary: one ONNX op, or a small composition. */
const unary = (op: string): KernelSpec => ({
  infer: same,
  emit: (e, i, _a, [o]) => e.node(op, [e.name(first(i))], [o]),
});

const binaryInfer =
  (dtype?: tf.DataType) =>
  (i: Inputs): Out[] => [{ shape: broadcastShapes(i.a.shape, i.b.shape), dtype: dtype ?? i.a.dtype }];

const binary = (op: string, dtype?: tf.DataType): KernelSpec => ({
  infer: binaryInfer(dtype),
  emit: (e, i, _a, [o]) => e.node(op, [e.name(i.a), e.name(i.b)], [o]),
});

/** A reduction's axes: tfjs' Max names its attribute `reductionIndices`, the other reductions `axis`. */
const reductionAxes = (a: Attrs, rank: number): number[] => normAxes('reductionIndices' in a ? a.reductionIndices : a.axis, rank);

const reduceInfer = (dtype?: tf.DataType) => (i: Inputs, a: Attrs): Out[] => {
  const x = first(i);
  const axes = reductionAxes(a, x.shape.length);
  const shape = a.keepDims ? x.shape.map((s, k) => (axes.includes(k) ? 1 : s)) : x.shape.filter((_, k) => !axes.includes(k));
  return [{ shape, dtype: dtype ?? x.dtype }];
};

/** Reductions with `axes` as an attribute (opset 17: all but ReduceSum). */
const reduce = (op: string): KernelSpec => ({
  infer: reduceInfer(),
  emit: (e, i, a, [o]) => {
    const x = first(i);
    e.node(op, [e.name(x)], [o], { axes: ints(reductionAxes(a, x.shape.length)), keepdims: int(a.keepDims ? 1 : 0) });
  },
});

/** A kernel whose output is its input reshaped (Reshape, ExpandDims, Squeeze). */
const reshapeTo: KernelSpec['emit'] = (e, i, _a, [o], [out]) => e.node('Reshape', [e.name(first(i)), e.int64(out.shape)], [o]);

// -------------------------------------------------------------------------------------------------
// the table
// -------------------------------------------------------------------------------------------------

/** Kernels without tensor inputs (Fill, Range): always constants, folded on the cpu backend. */
const foldOnly: KernelSpec = {
  infer: () => {
    throw new Error('has no tensor inputs and is always folded');
  },
  emit: () => {},
};

export const kernelTable: Record<string, KernelSpec> = {
  Fill: foldOnly,
  Range: foldOnly,
  // elementwise unary
  Abs: unary('Abs'),
  Neg: unary('Neg'),
  Sigmoid: unary('Sigmoid'),
  Tanh: unary('Tanh'),
  Erf: unary('Erf'),
  Exp: unary('Exp'),
  Log: unary('Log'),
  Sqrt: unary('Sqrt'),
  Cos: unary('Cos'),
  Sin: unary('Sin'),
  Floor: unary('Floor'),
  Ceil: unary('Ceil'),
  Relu: unary('Relu'),
  Identity: unary('Identity'),
  LogicalNot: unary('Not'),
  Reciprocal: unary('Reciprocal'),
  Rsqrt: {
    infer: same,
    emit: (e, i, _a, [o]) => {
      const s = e.tmp();
      e.node('Sqrt', [e.name(first(i))], [s]);
      e.node('Reciprocal', [s], [o]);
    },
  },
  Square: {
    infer: same,
    emit: (e, i, _a, [o]) => e.node('Mul', [e.name(first(i)), e.name(first(i))], [o]),
  },
  Cast: {
    infer: (i, a) => [{ shape: [...first(i).shape], dtype: a.dtype as tf.DataType }],
    emit: (e, i, a, [o]) => {
      const x = first(i);
      // tfjs casts to bool as x != 0 (as ONNX does); int32 from float truncates toward zero in both
      e.node('Cast', [e.name(x)], [o], { to: toDtype(a.dtype as tf.DataType) });
    },
  },
  ZerosLike: {
    infer: same,
    emit: (e, i, _a, [o], [out]) => e.node('ConstantOfShape', [e.int64(out.shape)], [o], { value: { kind: 'tensor', value: scalarTensor(0, out.dtype) } }),
  },
  OnesLike: {
    infer: same,
    emit: (e, i, _a, [o], [out]) => e.node('ConstantOfShape', [e.int64(out.shape)], [o], { value: { kind: 'tensor', value: scalarTensor(1, out.dtype) } }),
  },
  ClipByValue: {
    infer: same,
    emit: (e, i, a, [o]) => {
      const x = first(i);
      e.node('Clip', [e.name(x), e.scalar(a.clipValueMin as number, x.dtype), e.scalar(a.clipValueMax as number, x.dtype)], [o]);
    },
  },

  // elementwise binary (numpy broadcasting)
  Add: binary('Add'),
  Sub: binary('Sub'),
  Multiply: binary('Mul'),
  RealDiv: binary('Div'),
  Maximum: binary('Max'),
  Minimum: binary('Min'),
  Pow: binary('Pow'),
  Equal: binary('Equal', 'bool'),
  Less: binary('Less', 'bool'),
  LessEqual: binary('LessOrEqual', 'bool'),
  Greater: binary('Greater', 'bool'),
  GreaterEqual: binary('GreaterOrEqual', 'bool'),
  LogicalAnd: binary('And', 'bool'),
  LogicalOr: binary('Or', 'bool'),
  NotEqual: {
    infer: binaryInfer('bool'),
    emit: (e, i, _a, [o]) => {
      const eq = e.tmp();
      e.node('Equal', [e.name(i.a), e.name(i.b)], [eq]);
      e.node('Not', [eq], [o]);
    },
  },
  SquaredDifference: {
    infer: binaryInfer(),
    emit: (e, i, _a, [o]) => {
      const d = e.tmp();
      e.node('Sub', [e.name(i.a), e.name(i.b)], [d]);
      e.node('Mul', [d, d], [o]);
    },
  },
  Select: {
    infer: (i) => [{ shape: broadcastShapes(broadcastShapes(i.condition.shape, i.t.shape), i.e.shape), dtype: i.t.dtype }],
    emit: (e, i, _a, [o]) => e.node('Where', [e.name(i.condition), e.name(i.t), e.name(i.e)], [o]),
  },

  // reductions
  Mean: reduce('ReduceMean'),
  Max: reduce('ReduceMax'),
  Min: reduce('ReduceMin'),
  Prod: reduce('ReduceProd'),
  Sum: {
    infer: reduceInfer(),
    emit: (e, i, a, [o]) => {
      const x = first(i);
      e.node('ReduceSum', [e.name(x), e.int64(normAxes(a.axis, x.shape.length))], [o], { keepdims: int(a.keepDims ? 1 : 0) });
    },
  },
  ArgMax: {
    infer: (i, a) => [{ shape: reduceInfer()(i, { axis: a.axis, keepDims: false })[0].shape, dtype: 'int32' }],
    emit: (e, i, a, [o]) => {
      const x = first(i);
      const t = e.tmp();
      // tfjs returns the first index of the maximum, as ONNX with select_last_index = 0
      e.node('ArgMax', [e.name(x)], [t], { axis: int(normAxes(a.axis, x.shape.length)[0]), keepdims: int(0) });
      e.node('Cast', [t], [o], { to: toDtype('int32') });
    },
  },
  Softmax: {
    infer: (i) => same(i),
    emit: (e, i, a, [o]) => {
      const x = first(i);
      const dim = a.dim as number;
      e.node('Softmax', [e.name(x)], [o], { axis: int(dim < 0 ? dim + x.shape.length : dim) });
    },
  },

  // layout
  Reshape: { infer: (i, a) => [{ shape: resolveShape(a.shape as number[], first(i).shape), dtype: first(i).dtype }], emit: reshapeTo },
  ExpandDims: {
    infer: (i, a) => {
      const x = first(i);
      const r = x.shape.length;
      const dim = (a.dim as number) < 0 ? (a.dim as number) + r + 1 : (a.dim as number);
      return [{ shape: [...x.shape.slice(0, dim), 1, ...x.shape.slice(dim)], dtype: x.dtype }];
    },
    emit: reshapeTo,
  },
  Squeeze: {
    infer: (i, a) => {
      const x = first(i);
      const axes = a.axis === undefined || (a.axis as number[]).length === 0 ? x.shape.map((s, k) => (s === 1 ? k : -1)).filter((k) => k >= 0) : normAxes(a.axis, x.shape.length);
      return [{ shape: x.shape.filter((_, k) => !axes.includes(k)), dtype: x.dtype }];
    },
    emit: reshapeTo,
  },
  Transpose: {
    infer: (i, a) => [{ shape: (a.perm as number[]).map((p) => first(i).shape[p]), dtype: first(i).dtype }],
    emit: (e, i, a, [o]) => e.node('Transpose', [e.name(first(i))], [o], { perm: ints(a.perm as number[]) }),
  },
  BroadcastTo: {
    infer: (i, a) => [{ shape: [...(a.shape as number[])], dtype: first(i).dtype }],
    emit: (e, i, a, [o]) => e.node('Expand', [e.name(first(i)), e.int64(a.shape as number[])], [o]),
  },
  Tile: {
    infer: (i, a) => [{ shape: first(i).shape.map((s, k) => s * (a.reps as number[])[k]), dtype: first(i).dtype }],
    emit: (e, i, a, [o]) => e.node('Tile', [e.name(first(i)), e.int64(a.reps as number[])], [o]),
  },
  Slice: {
    infer: (i, a) => {
      const x = first(i);
      const { size } = sliceBounds(x.shape, a);
      return [{ shape: size, dtype: x.dtype }];
    },
    emit: (e, i, a, [o]) => {
      const x = first(i);
      const { begin, size } = sliceBounds(x.shape, a);
      e.node('Slice', [e.name(x), e.int64(begin), e.int64(begin.map((b, k) => b + size[k])), e.int64([...begin.keys()])], [o]);
    },
  },
  Concat: {
    infer: (i, a) => {
      const xs = Object.values(i);
      const axis = normAxes(a.axis, xs[0].shape.length)[0];
      const shape = [...xs[0].shape];
      shape[axis] = xs.reduce((s, x) => s + x.shape[axis], 0);
      return [{ shape, dtype: xs[0].dtype }];
    },
    emit: (e, i, a, [o]) => {
      const xs = Object.values(i);
      e.node('Concat', xs.map((x) => e.name(x)), [o], { axis: int(normAxes(a.axis, xs[0].shape.length)[0]) });
    },
  },
  Pack: {
    infer: (i, a) => {
      const xs = Object.values(i);
      const axis = normAxes(a.axis, xs[0].shape.length + 1)[0];
      return [{ shape: [...xs[0].shape.slice(0, axis), xs.length, ...xs[0].shape.slice(axis)], dtype: xs[0].dtype }];
    },
    emit: (e, i, a, [o]) => {
      const xs = Object.values(i);
      const axis = normAxes(a.axis, xs[0].shape.length + 1)[0];
      const one = [...xs[0].shape.slice(0, axis), 1, ...xs[0].shape.slice(axis)];
      const parts = xs.map((x) => {
        const t = e.tmp();
        e.node('Reshape', [e.name(x), e.int64(one)], [t]);
        return t;
      });
      e.node('Concat', parts, [o], { axis: int(axis) });
    },
  },
  Unpack: {
    outputs: 'many',
    infer: (i, a) => {
      const x = first(i);
      const axis = normAxes(a.axis, x.shape.length)[0];
      return Array.from({ length: x.shape[axis] }, () => ({ shape: x.shape.filter((_, k) => k !== axis), dtype: x.dtype }));
    },
    emit: (e, i, a, outputs, outs) => {
      const x = first(i);
      const axis = normAxes(a.axis, x.shape.length)[0];
      const parts = outputs.map(() => e.tmp());
      e.node('Split', [e.name(x), e.int64(outputs.map(() => 1))], parts, { axis: int(axis) });
      parts.forEach((p, k) => e.node('Reshape', [p, e.int64(outs[k].shape)], [outputs[k]]));
    },
  },
  SplitV: {
    outputs: 'many',
    infer: (i, a) => {
      const x = first(i);
      const axis = normAxes(a.axis, x.shape.length)[0];
      return splitSizes(x.shape[axis], a.numOrSizeSplits).map((n) => ({ shape: x.shape.map((s, k) => (k === axis ? n : s)), dtype: x.dtype }));
    },
    emit: (e, i, a, outputs) => {
      const x = first(i);
      const axis = normAxes(a.axis, x.shape.length)[0];
      e.node('Split', [e.name(x), e.int64(splitSizes(x.shape[axis], a.numOrSizeSplits))], outputs, { axis: int(axis) });
    },
  },
  PadV2: {
    infer: (i, a) => [{ shape: first(i).shape.map((s, k) => s + (a.paddings as number[][])[k][0] + (a.paddings as number[][])[k][1]), dtype: first(i).dtype }],
    emit: (e, i, a, [o]) => {
      const x = first(i);
      const p = a.paddings as number[][];
      e.node('Pad', [e.name(x), e.int64([...p.map((q) => q[0]), ...p.map((q) => q[1])]), e.scalar(a.constantValue as number, x.dtype)], [o], { mode: { kind: 'string', value: 'constant' } });
    },
  },

  // contraction
  BatchMatMul: {
    infer: (i, a) => {
      const [x, y] = [i.a.shape, i.b.shape];
      const [m, k1] = a.transposeA ? [x[x.length - 1], x[x.length - 2]] : [x[x.length - 2], x[x.length - 1]];
      const [k2, n] = a.transposeB ? [y[y.length - 1], y[y.length - 2]] : [y[y.length - 2], y[y.length - 1]];
      if (k1 !== k2) throw new Error(`inner sizes ${k1} and ${k2} differ`);
      const batch = broadcastShapes(x.slice(0, -2), y.slice(0, -2));
      return [{ shape: [...batch, m, n], dtype: i.a.dtype }];
    },
    emit: (e, i, a, [o]) => {
      const side = (v: Value, transpose: unknown) => {
        if (!transpose) return e.name(v);
        const r = v.shape.length;
        const t = e.tmp();
        e.node('Transpose', [e.name(v)], [t], { perm: ints([...Array(r - 2).keys(), r - 1, r - 2]) });
        return t;
      };
      e.node('MatMul', [side(i.a, a.transposeA), side(i.b, a.transposeB)], [o]);
    },
  },

  // gather and scatter
  GatherV2: {
    infer: (i, a) => {
      if ((a.batchDims as number) !== 0) throw new Error(`batchDims ${a.batchDims} is not supported`);
      const axis = normAxes(a.axis, i.x.shape.length)[0];
      return [{ shape: [...i.x.shape.slice(0, axis), ...i.indices.shape, ...i.x.shape.slice(axis + 1)], dtype: i.x.dtype }];
    },
    emit: (e, i, a, [o]) => e.node('Gather', [e.name(i.x), e.name(i.indices)], [o], { axis: int(normAxes(a.axis, i.x.shape.length)[0]) }),
  },
  OneHot: {
    infer: (i, a) => [{ shape: [...i.indices.shape, a.depth as number], dtype: a.dtype as tf.DataType }],
    emit: (e, i, a, [o], [out]) => {
      // tfjs: off everywhere, on at the index (an index outside [0, depth) gives a row of off, as ONNX's).
      // onnxruntime implements OneHot for (int64 indices, float values, int64 depth): cast around it.
      const idx = e.tmp();
      const values = e.tmp();
      e.node('Cast', [e.name(i.indices)], [idx], { to: int(7) });
      e.node('Concat', [e.scalar1(a.offValue as number, 'float32'), e.scalar1(a.onValue as number, 'float32')], [values], { axis: int(0) });
      if (out.dtype === 'float32') return e.node('OneHot', [idx, e.int64([a.depth as number], []), values], [o], { axis: int(-1) });
      const hot = e.tmp();
      e.node('OneHot', [idx, e.int64([a.depth as number], []), values], [hot], { axis: int(-1) });
      e.node('Cast', [hot], [o], { to: toDtype(out.dtype) });
    },
  },
  ScatterNd: {
    // zeros of `shape` with `updates` added at `indices` (repeated indices sum, as tf.scatterND)
    infer: (i, a) => [{ shape: [...(a.shape as number[])], dtype: i.updates.dtype }],
    emit: (e, i, a, [o], [out]) => {
      const zeros = e.tmp();
      const idx = e.tmp();
      e.node('ConstantOfShape', [e.int64(out.shape)], [zeros], { value: { kind: 'tensor', value: scalarTensor(0, out.dtype) } });
      e.node('Cast', [e.name(i.indices)], [idx], { to: int(7) });
      e.node('ScatterND', [zeros, idx, e.name(i.updates)], [o], { reduction: { kind: 'string', value: 'add' } });
    },
  },
};

// -------------------------------------------------------------------------------------------------
// helpers
// -------------------------------------------------------------------------------------------------

function resolveShape(shape: readonly number[], from: readonly number[]): Shape {
  const size = from.reduce((p, s) => p * s, 1);
  const known = shape.reduce((p, s) => (s === -1 ? p : p * s), 1);
  const out = shape.map((s) => (s === -1 ? size / known : s));
  if (out.reduce((p, s) => p * s, 1) !== size) throw new Error(`cannot reshape [${from.join(', ')}] to [${shape.join(', ')}]`);
  return out;
}

function sliceBounds(shape: readonly number[], a: Attrs): { begin: number[]; size: number[] } {
  const r = shape.length;
  const b = typeof a.begin === 'number' ? [a.begin as number] : (a.begin as number[]);
  const s = typeof a.size === 'number' ? [a.size as number] : (a.size as number[]);
  const begin = Array.from({ length: r }, (_, k) => b[k] ?? 0);
  const size = Array.from({ length: r }, (_, k) => (s[k] === undefined || s[k] === -1 ? shape[k] - begin[k] : s[k]));
  return { begin, size };
}

function splitSizes(n: number, spec: unknown): number[] {
  if (typeof spec === 'number') return Array.from({ length: spec }, () => n / spec);
  const sizes = [...(spec as number[])];
  const free = sizes.indexOf(-1);
  if (free >= 0) sizes[free] = n - sizes.reduce((p, s) => (s === -1 ? p : p + s), 0);
  return sizes;
}

function scalarTensor(value: number, dtype: tf.DataType) {
  const t = onnxType(dtype);
  const raw = t === 'float32' ? new Uint8Array(Float32Array.of(value).buffer) : t === 'int32' ? new Uint8Array(Int32Array.of(value).buffer) : Uint8Array.of(value ? 1 : 0);
  return { name: '', dtype: t, dims: [1], raw };
}
