/**
 * The ONNX protobuf messages `jit` writes, encoded by hand (onnx/onnx.proto3; no protobuf dependency).
 *
 * Wire format: each field is a varint key (field number << 3 | wire type) then a varint (type 0), a
 * little-endian 32-bit value (type 5) or a varint length and that many bytes (type 2: strings, bytes,
 * sub-messages, packed repeated numbers). Only the fields below are written.
 */

// -------------------------------------------------------------------------------------------------
// wire format
// -------------------------------------------------------------------------------------------------

/** A growable byte buffer with the protobuf primitives. */
export class Writer {
  private buf = new Uint8Array(256);
  private len = 0;

  private reserve(n: number): void {
    if (this.len + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.len + n) size *= 2;
    const next = new Uint8Array(size);
    next.set(this.buf.subarray(0, this.len));
    this.buf = next;
  }

  /** Unsigned varint; negative int64 values are written as 10-byte two's complement. */
  varint(v: number | bigint): this {
    let x = BigInt.asUintN(64, BigInt(v));
    this.reserve(10);
    while (x >= 0x80n) {
      this.buf[this.len++] = Number(x & 0x7fn) | 0x80;
      x >>= 7n;
    }
    this.buf[this.len++] = Number(x);
    return this;
  }

  bytes(b: Uint8Array): this {
    this.reserve(b.length);
    this.buf.set(b, this.len);
    this.len += b.length;
    return this;
  }

  key(field: number, wire: 0 | 2 | 5): this {
    return this.varint((field << 3) | wire);
  }

  /** Field with a varint value (int32, int64, enum). */
  int(field: number, v: number | bigint): this {
    return this.key(field, 0).varint(v);
  }

  /** Field with a float32 value. */
  float(field: number, v: number): this {
    const b = new Uint8Array(4);
    new DataView(b.buffer).setFloat32(0, v, true);
    return this.key(field, 5).bytes(b);
  }

  /** Length-delimited field: bytes, a string (UTF-8) or a sub-message. */
  lengthDelimited(field: number, payload: Uint8Array | string | Writer): this {
    const b = typeof payload === 'string' ? new TextEncoder().encode(payload) : payload instanceof Writer ? payload.finish() : payload;
    return this.key(field, 2).varint(b.length).bytes(b);
  }

  /** Packed repeated varints. */
  packed(field: number, values: readonly (number | bigint)[]): this {
    const inner = new Writer();
    for (const v of values) inner.varint(v);
    return this.lengthDelimited(field, inner);
  }

  finish(): Uint8Array {
    return this.buf.subarray(0, this.len);
  }
}

// -------------------------------------------------------------------------------------------------
// ONNX messages
// -------------------------------------------------------------------------------------------------

/** TensorProto.DataType values. */
export const ElemType = { float32: 1, uint8: 2, int8: 3, int32: 6, int64: 7, bool: 9 } as const;
export type ElemTypeName = keyof typeof ElemType;

export interface TensorValue {
  readonly name: string;
  readonly dtype: ElemTypeName;
  readonly dims: readonly number[];
  /** Little-endian raw bytes (bool: one byte each). */
  readonly raw: Uint8Array;
  /**
   * Store the bytes outside the ModelProto, at this offset of the in-memory file `location` given to the
   * session (createSession's externalData): a protobuf message cannot exceed 2 GiB, a 3B model's int8
   * weights are 2.6 GB. `raw` is then not written.
   */
  readonly external?: { readonly location: string; readonly offset: number };
}

export type AttrValue =
  | { readonly kind: 'int'; readonly value: number }
  | { readonly kind: 'ints'; readonly value: readonly number[] }
  | { readonly kind: 'float'; readonly value: number }
  | { readonly kind: 'string'; readonly value: string }
  | { readonly kind: 'tensor'; readonly value: TensorValue };

export interface NodeSpec {
  readonly op: string;
  readonly inputs: readonly string[];
  readonly outputs: readonly string[];
  readonly attrs?: Readonly<Record<string, AttrValue>>;
  readonly name?: string;
  /** The operator set of `op` (default: ONNX's); e.g. 'com.microsoft' for onnxruntime's contrib operators. */
  readonly domain?: string;
}

export interface ValueSpec {
  readonly name: string;
  readonly dtype: ElemTypeName;
  readonly dims: readonly number[];
}

export interface ModelSpec {
  readonly nodes: readonly NodeSpec[];
  readonly inputs: readonly ValueSpec[];
  readonly outputs: readonly ValueSpec[];
  readonly initializers: readonly TensorValue[];
  readonly opset: number;
  readonly name: string;
}

function tensorProto(t: TensorValue): Writer {
  const w = new Writer().packed(1, t.dims).int(2, ElemType[t.dtype]).lengthDelimited(8, t.name);
  if (!t.external) return w.lengthDelimited(9, t.raw);
  const entry = (key: string, value: string) => new Writer().lengthDelimited(1, key).lengthDelimited(2, value);
  w.lengthDelimited(13, entry('location', t.external.location));
  w.lengthDelimited(13, entry('offset', String(t.external.offset)));
  w.lengthDelimited(13, entry('length', String(t.raw.length)));
  return w.int(14, 1); // data_location: EXTERNAL
}

function attributeProto(name: string, a: AttrValue): Writer {
  const w = new Writer().lengthDelimited(1, name);
  switch (a.kind) {
    case 'float':
      return w.float(2, a.value).int(20, 1);
    case 'int':
      return w.int(3, a.value).int(20, 2);
    case 'string':
      return w.lengthDelimited(4, a.value).int(20, 3);
    case 'tensor':
      return w.lengthDelimited(5, tensorProto(a.value)).int(20, 4);
    case 'ints':
      return w.packed(8, a.value).int(20, 7);
  }
}

function valueInfoProto(v: ValueSpec): Writer {
  const shape = new Writer();
  for (const d of v.dims) shape.lengthDelimited(1, new Writer().int(1, d));
  const tensorType = new Writer().int(1, ElemType[v.dtype]).lengthDelimited(2, shape);
  return new Writer().lengthDelimited(1, v.name).lengthDelimited(2, new Writer().lengthDelimited(1, tensorType));
}

function nodeProto(n: NodeSpec): Writer {
  const w = new Writer();
  for (const i of n.inputs) w.lengthDelimited(1, i);
  for (const o of n.outputs) w.lengthDelimited(2, o);
  if (n.name) w.lengthDelimited(3, n.name);
  w.lengthDelimited(4, n.op);
  for (const [k, a] of Object.entries(n.attrs ?? {})) w.lengthDelimited(5, attributeProto(k, a));
  if (n.domain) w.lengthDelimited(7, n.domain);
  return w;
}

/** A serialized ModelProto (IR version 8). */
export function encodeModel(m: ModelSpec): Uint8Array {
  const graph = new Writer();
  for (const n of m.nodes) graph.lengthDelimited(1, nodeProto(n));
  graph.lengthDelimited(2, m.name);
  for (const t of m.initializers) graph.lengthDelimited(5, tensorProto(t));
  for (const v of m.inputs) graph.lengthDelimited(11, valueInfoProto(v));
  for (const v of m.outputs) graph.lengthDelimited(12, valueInfoProto(v));
  const model = new Writer()
    .int(1, 8)
    .lengthDelimited(2, 'paligemma-ts')
    .lengthDelimited(7, graph)
    .lengthDelimited(8, new Writer().lengthDelimited(1, '').int(2, m.opset));
  // onnxruntime's contrib operators (MatMulNBits) are version 1 of their domain
  for (const domain of new Set(m.nodes.flatMap((n) => (n.domain ? [n.domain] : [])))) model.lengthDelimited(8, new Writer().lengthDelimited(1, domain).int(2, 1));
  return model.finish();
}

/** Raw little-endian bytes of a typed array (this machine is little-endian, as ONNX's raw_data). */
export const rawBytes = (a: ArrayBufferView): Uint8Array => new Uint8Array(a.buffer, a.byteOffset, a.byteLength).slice();
