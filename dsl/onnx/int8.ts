/**
 * Int8 weights for compiled matMuls (jit's `int8` option), as keras' `quantize("int8")` and transformers.js'
 * q8 models do: a 2-D matMul one of whose operands is a weight (a graph input named as weights, reached
 * through reshapes and transposes only) runs as onnxruntime's MatMulNBits (com.microsoft, bits 8) over an
 * initializer quantized here at compile time; onnxruntime prepacks it for its int8 GEMM (VNNI on x86).
 *
 * The numbers:
 * - Weights: symmetric, one float32 scale per block of `blockSize(K)` weights along K of each output
 *   column (finer than keras' one scale per column): scale = max|w| / 127, q = round(w / scale), stored
 *   as q + 128 since MatMulNBits' default zero point for 8 bits is 128. Padding past K is q = 0.
 * - Activations: accuracy_level 4 makes onnxruntime quantize each block of a row of x to int8 with its own
 *   scale and accumulate in int32 (keras quantizes activations per row). Its float32-compute level (0) is
 *   not an int8 kernel in 1.30: 90 ms for [1,2048]x[2048,16384] against 0.54 ms, and 4.0 ms in float32.
 */
import { int, ints } from './kernels';
import type { AttrValue } from './proto';
import type { GraphNode, Value } from './trace';

/** Block length along K: 128, or the smallest power of two from 16 covering a shorter K. */
export const blockSize = (k: number): number => Math.min(128, Math.max(16, 2 ** Math.ceil(Math.log2(k))));

/** A weight as MatMulNBits wants it: q [n, blocks, block] (uint8, zero point 128), scales [n * blocks]. */
export interface QuantizedMatrix {
  readonly q: Uint8Array;
  readonly scales: Float32Array;
  readonly n: number;
  readonly k: number;
  readonly block: number;
}

/**
 * Quantize the matrix W [k, n] (element (kk, nn) at data[kk * n + nn]) or, with `nMajor`, W^T stored
 * [n, k]. Blocks run along k within one output column nn.
 */
export function quantizeInt8(data: Float32Array, n: number, k: number, nMajor: boolean): QuantizedMatrix {
  if (data.length !== n * k) throw new Error(`int8: a [${k}, ${n}] weight needs ${n * k} values, got ${data.length}`);
  const block = blockSize(k);
  const blocks = Math.ceil(k / block);
  const q = new Uint8Array(n * blocks * block).fill(128);
  const scales = new Float32Array(n * blocks);
  const [sn, sk] = nMajor ? [k, 1] : [1, n]; // strides of nn and kk in data
  // [k, n] is read a tile of TILE columns at a time, so that a block's rows stay in cache (3B: 2 s, not 50)
  const TILE = nMajor ? 1 : 64;
  for (let b = 0; b < blocks; b++) {
    const k0 = b * block;
    const k1 = Math.min(k, k0 + block);
    for (let n0 = 0; n0 < n; n0 += TILE) {
      for (let nn = n0; nn < Math.min(n, n0 + TILE); nn++) {
        let max = 0;
        for (let kk = k0, at = nn * sn + k0 * sk; kk < k1; kk++, at += sk) {
          const v = data[at];
          if (v > max) max = v;
          else if (-v > max) max = -v;
        }
        const scale = Math.fround(max / 127);
        scales[nn * blocks + b] = scale;
        if (scale === 0) continue; // an all-zero block: q stays 128 (zero)
        const out = (nn * blocks + b) * block - k0;
        // 128 + round(w / scale), rounding half up: w / scale + 128.5 lies in [1, 256) and the Uint8Array
        // store truncates it (w / scale is within [-127, 127] up to float rounding)
        for (let kk = k0, at = nn * sn + k0 * sk; kk < k1; kk++, at += sk) q[out + kk] = data[at] / scale + 128.5;
      }
    }
  }
  return { q, scales, n, k, block };
}

/** The float32 matrix W^T [n, k] that a QuantizedMatrix stands for (tests, error reports). */
export function dequantizeInt8(m: QuantizedMatrix): Float32Array {
  const blocks = Math.ceil(m.k / m.block);
  const w = new Float32Array(m.n * m.k);
  for (let nn = 0; nn < m.n; nn++) for (let kk = 0; kk < m.k; kk++) {
    const b = Math.floor(kk / m.block);
    w[nn * m.k + kk] = (m.q[(nn * blocks + b) * m.block + (kk % m.block)] - 128) * m.scales[nn * blocks + b];
  }
  return w;
}

/** A matMul to run in int8: x is the activation operand, the weight is quantized as [n, k]. */
export interface Int8MatMul {
  readonly x: Value;
  /** x must be transposed to [m, k] first. */
  readonly transposeX: boolean;
  /** The weight was matMul's first operand: C = W x, computed as (x^T W^T)^T. */
  readonly weightFirst: boolean;
  readonly weight: QuantizedMatrix;
}

const RESHAPES = new Set(['Reshape', 'ExpandDims', 'Squeeze', 'Identity']);

/** Permute a row-major array of `shape` by `perm` (numpy's transpose). */
function transposeHost(data: Float32Array, shape: readonly number[], perm: readonly number[]): Float32Array {
  const rank = shape.length;
  const strides = shape.map((_, i) => shape.slice(i + 1).reduce((a, b) => a * b, 1));
  const outShape = perm.map((p) => shape[p]);
  const inStride = perm.map((p) => strides[p]);
  const out = new Float32Array(data.length);
  const idx = new Array<number>(rank).fill(0);
  for (let o = 0, src = 0; o < out.length; o++) {
    out[o] = data[src];
    for (let d = rank - 1; d >= 0; d--) {
      idx[d]++;
      src += inStride[d];
      if (idx[d] < outShape[d]) break;
      src -= inStride[d] * idx[d];
      idx[d] = 0;
    }
  }
  return out;
}

/** A weight graph input: its host values, and the object whose identity they belong to (its tensor). */
export interface WeightInput {
  readonly data: Float32Array;
  readonly owner: object;
}

/**
 * Quantized matrices by weight and by how a graph reads it, so that graphs over the same weights (the
 * prefill and the decode step) quantize each once and share the bytes; an entry lives as long as its
 * weight tensor.
 */
const quantized = new WeakMap<object, Map<string, QuantizedMatrix>>();

/**
 * Which live matMuls read a weight, and their quantized weights. `weights`: graph input id -> the weight.
 * A matMul qualifies when it is 2-D and one operand is a weight through Reshape/Transpose/Identity nodes
 * only (how `dot` feeds a weight to matMul); the weight's chain is replayed on the host.
 */
export function planInt8(nodes: readonly GraphNode[], weights: ReadonlyMap<number, WeightInput>): Map<GraphNode, Int8MatMul> {
  const producer = new Map<number, GraphNode>();
  for (const n of nodes) for (const o of n.outputs) producer.set(o.id, n);
  /** The weight an operand reads, quantized as [n, k] (`nMajor`: the 2-D operand is [n, k]); undefined if none. */
  const weightOf = (v: Value, n: number, k: number, nMajor: boolean): QuantizedMatrix | undefined => {
    const chain: GraphNode[] = [];
    let at = v;
    while (!weights.has(at.id)) {
      const node = producer.get(at.id);
      if (!node || node.inputs.length !== 1 || !(RESHAPES.has(node.kernel) || node.kernel === 'Transpose')) return undefined;
      chain.unshift(node);
      at = node.inputs[0];
    }
    const w = weights.get(at.id)!;
    const key = `${chain.map((c) => (c.kernel === 'Transpose' ? `T${c.attrs.perm}` : `R${c.outputs[0].shape}`)).join('|')}|${nMajor ? 'nk' : 'kn'}`;
    const known = quantized.get(w.owner)?.get(key);
    if (known) return known;
    let data = w.data;
    let shape = at.shape;
    for (const c of chain) {
      if (c.kernel === 'Transpose') data = transposeHost(data, shape, c.attrs.perm as number[]);
      shape = c.outputs[0].shape;
    }
    const m = quantizeInt8(data, n, k, nMajor);
    if (!quantized.has(w.owner)) quantized.set(w.owner, new Map());
    quantized.get(w.owner)!.set(key, m);
    return m;
  };
  const plans = new Map<GraphNode, Int8MatMul>();
  for (const n of nodes) {
    if (n.kernel !== 'BatchMatMul' || n.inputs.length !== 2 || n.inputs.some((v) => v.shape.length !== 2 || v.dtype !== 'float32')) continue;
    const [a, b] = n.inputs;
    const [ta, tb] = [Boolean(n.attrs.transposeA), Boolean(n.attrs.transposeB)];
    // C [m, n] = x W: W is b, [k, n] (or [n, k] when transposed)
    const [kb, nb] = tb ? [b.shape[1], b.shape[0]] : b.shape;
    const wb = weightOf(b, nb, kb, tb);
    if (wb) {
      plans.set(n, { x: a, transposeX: ta, weightFirst: false, weight: wb });
      continue;
    }
    // C [rows, m] = W x: W is a, [rows, k] (or [k, rows] when transposed); x^T must be [m, k]
    const [rows, ka] = ta ? [a.shape[1], a.shape[0]] : a.shape;
    const wa = weightOf(a, rows, ka, !ta);
    if (wa) plans.set(n, { x: b, transposeX: !tb, weightFirst: true, weight: wa });
  }
  return plans;
}

/** What emitting a plan needs from the converter. */
export interface Int8Emit {
  name(v: Value): string;
  tmp(): string;
  /** Add the quantized bytes as an initializer (external data) and return its name. */
  weight(m: QuantizedMatrix): { q: string; scales: string };
  node(op: string, inputs: readonly string[], outputs: readonly string[], attrs?: Record<string, AttrValue>, domain?: string): void;
}

/** MatMulNBits for one planned matMul, writing the original node's output `out`. */
export function emitInt8(e: Int8Emit, p: Int8MatMul, out: string): void {
  let x = e.name(p.x);
  if (p.transposeX) {
    const t = e.tmp();
    e.node('Transpose', [x], [t], { perm: ints([1, 0]) });
    x = t;
  }
  const { q, scales } = e.weight(p.weight);
  const attrs = { K: int(p.weight.k), N: int(p.weight.n), bits: int(8), block_size: int(p.weight.block), accuracy_level: int(4) };
  if (!p.weightFirst) {
    e.node('MatMulNBits', [x, q, scales], [out], attrs, 'com.microsoft');
    return;
  }
  const t = e.tmp();
  e.node('MatMulNBits', [x, q, scales], [t], attrs, 'com.microsoft');
  e.node('Transpose', [t], [out], { perm: ints([1, 0]) });
}
