/**
 * Hugging Face safetensors (https://github.com/huggingface/safetensors, "Format"): an 8-byte little-endian
 * header length N, N bytes of JSON `{key: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}`,
 * then the raw little-endian, C-order data; offsets count from the first byte after the header.
 *
 * Reading indexes the header only and checks every tensor against the file (byte counts, extent, overlaps):
 * a truncated file is reported with the file, the key, the dtype and shape, before anything is allocated.
 * `read()` then fetches one tensor with positioned reads (never the whole file) and widens F16/BF16 to float32.
 * Large checkpoints are sharded: `model.safetensors.index.json` maps each key to its shard file.
 *
 * The writer is atomic (a temporary file next to the target, fsync, rename), for tests and for saving.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { HOST_LE, readFloatsAt, readFully, type FloatDType } from './io';
import { writeDirAtomic, writeFileAtomic } from './atomic';
import { FormatError, guarded } from './errors';
import { isRegularFile, jsonDepth, openRegularFile, readJsonFile, segmentProblem } from './files';

// ---------------------------------------------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------------------------------------------

/** Element sizes of the safetensors dtypes (safetensors `Dtype`). */
const DTYPE_BYTES = {
  BOOL: 1, U8: 1, I8: 1, F8_E5M2: 1, F8_E4M3: 1,
  I16: 2, U16: 2, F16: 2, BF16: 2,
  I32: 4, U32: 4, F32: 4,
  I64: 8, U64: 8, F64: 8,
} as const;

export type SafetensorsDType = keyof typeof DTYPE_BYTES;
/** The dtypes `read()` widens to float32. */
export type SafetensorsFloat = 'F32' | 'BF16' | 'F16' | 'F64';
const FLOATS: readonly string[] = ['F32', 'BF16', 'F16', 'F64'];

export interface SafetensorsTensor {
  readonly key: string;
  readonly dtype: SafetensorsDType;
  readonly shape: readonly number[];
  /** The `.safetensors` file that holds it. */
  readonly file: string;
  /** Absolute byte offset in `file`, and the byte count. */
  readonly offset: number;
  readonly byteLength: number;
  /** The whole tensor, widened to float32. */
  read(): Float32Array;
  /** The first `count` elements (C order: the first rows of a matrix), widened to float32. */
  readPrefix(count: number): Float32Array;
}

export type SafetensorsTensors = ReadonlyMap<string, SafetensorsTensor>;

export interface SafetensorsFile {
  readonly file: string;
  readonly tensors: SafetensorsTensors;
  /** The header's `__metadata__` (string -> string), `{}` when absent. */
  readonly metadata: Readonly<Record<string, string>>;
}

export const SAFETENSORS_FILE = 'model.safetensors';
export const SAFETENSORS_INDEX_FILE = 'model.safetensors.index.json';

/** The safetensors reference implementation refuses headers above 100 MB. */
const MAX_HEADER_BYTES = 100_000_000;
/** More dimensions than any checkpoint has: refused before their product is taken. */
const MAX_RANK = 16;

const fmt = (s: readonly number[]) => `[${s.join(', ')}]`;
const describe = (key: string, dtype: string, shape: readonly number[]) => `tensor "${key}" (${dtype} ${fmt(shape)})`;
/** A JSON value for a message, cut at 200 characters (a header can be 100 MB). */
const show = (u: unknown): string => {
  const s = JSON.stringify(u) ?? String(u);
  return s.length > 200 ? `${s.slice(0, 200)}...` : s;
};
const isRecord = (u: unknown): u is Record<string, unknown> => typeof u === 'object' && u !== null && !Array.isArray(u);

// ---------------------------------------------------------------------------------------------------------------
// Reading one file
// ---------------------------------------------------------------------------------------------------------------

/** Index one `.safetensors` file: its header, checked against the file's size. Reads no tensor data. */
export function readSafetensorsFile(file: string): SafetensorsFile {
  return guarded(file, () => indexFile(file));
}

function indexFile(file: string): SafetensorsFile {
  const fd = openRegularFile(file);
  try {
    const size = fs.fstatSync(fd).size;
    if (size < 8) throw new Error(`${file}: truncated safetensors file (${size} bytes): no 8-byte header length`);
    const head = Buffer.alloc(8);
    readFully(fd, file, head, 0);
    const headerBytes = Number(head.readBigUInt64LE(0));
    if (headerBytes > MAX_HEADER_BYTES) throw new Error(`${file}: not a safetensors file (header length ${headerBytes} bytes, above ${MAX_HEADER_BYTES})`);
    if (8 + headerBytes > size) {
      throw new Error(`${file}: truncated safetensors file (${size} bytes): the JSON header needs bytes 8..${8 + headerBytes}`);
    }
    const headerBuf = Buffer.alloc(headerBytes);
    readFully(fd, file, headerBuf, 8);
    let header: unknown;
    const text = headerBuf.toString('utf8');
    // The header is {key: {dtype, shape, data_offsets}}: 3 levels; refuse deep nesting before parsing it.
    if (jsonDepth(text, 8) > 8) throw new FormatError(file, 'header', `${file}: header: nested deeper than 8 levels; not a safetensors header`);
    try {
      header = JSON.parse(text);
    } catch (e) {
      throw new Error(`${file}: not a safetensors file (its header is not JSON: ${(e as Error).message})`);
    }
    return indexHeader(file, header, 8 + headerBytes, size);
  } finally {
    fs.closeSync(fd);
  }
}

function indexHeader(file: string, header: unknown, dataStart: number, size: number): SafetensorsFile {
  if (!isRecord(header)) throw new Error(`${file}: safetensors header: expected a JSON object, got ${show(header)}`);
  const problems: string[] = [];
  const truncated: string[] = [];
  const tensors = new Map<string, SafetensorsTensor>();
  let metadata: Record<string, string> = {};
  const spans: [number, number, string][] = [];
  for (const [key, entry] of Object.entries(header)) {
    if (key === '__metadata__') {
      if (!isRecord(entry) || !Object.values(entry).every((v) => typeof v === 'string')) {
        problems.push(`__metadata__: expected an object of strings, got ${show(entry)}`);
      } else metadata = entry as Record<string, string>;
      continue;
    }
    if (!isRecord(entry)) {
      problems.push(`${key}: expected {dtype, shape, data_offsets}, got ${show(entry)}`);
      continue;
    }
    const { dtype, shape, data_offsets: offsets } = entry;
    const okDtype = typeof dtype === 'string' && dtype in DTYPE_BYTES;
    const okShape = Array.isArray(shape) && shape.every((n) => Number.isSafeInteger(n) && n >= 0);
    const okOffsets = Array.isArray(offsets) && offsets.length === 2 && offsets.every((n) => Number.isSafeInteger(n) && n >= 0) && offsets[0] <= offsets[1];
    if (!okDtype) problems.push(`${key}: dtype: expected one of ${Object.keys(DTYPE_BYTES).join(', ')}, got ${show(dtype)}`);
    if (!okShape) problems.push(`${key}: shape: expected a list of non-negative integers, got ${show(shape)}`);
    if (!okOffsets) problems.push(`${key}: data_offsets: expected [begin, end] with begin <= end, got ${show(offsets)}`);
    if (!okDtype || !okShape || !okOffsets) continue;
    const d = dtype as SafetensorsDType;
    const s = shape as number[];
    const [begin, end] = offsets as [number, number];
    const need = s.reduce((a, b) => a * b, 1) * DTYPE_BYTES[d];
    if (s.length > MAX_RANK || !Number.isSafeInteger(need)) {
      problems.push(`${describe(key, d, s)}: shape: more than ${MAX_RANK} dimensions or more bytes than a file can hold`);
      continue;
    }
    if (end - begin !== need) {
      problems.push(`${describe(key, d, s)}: data_offsets [${begin}, ${end}] hold ${end - begin} bytes, the dtype and shape need ${need}`);
      continue;
    }
    if (dataStart + end > size) {
      truncated.push(`${describe(key, d, s)} needs bytes ${dataStart + begin}..${dataStart + end}`);
    }
    spans.push([begin, end, key]);
    tensors.set(key, makeTensor(file, key, d, s, dataStart + begin, need));
  }
  spans.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  for (let i = 1; i < spans.length; i++) {
    if (spans[i][0] < spans[i - 1][1]) problems.push(`tensors "${spans[i - 1][2]}" and "${spans[i][2]}" overlap (bytes ${spans[i][0]}..${spans[i - 1][1]})`);
  }
  if (problems.length > 0) throw new FormatError(file, 'header', problems.map((p) => `${file}: ${p}`).join('\n'));
  if (truncated.length > 0) throw truncationError(file, size, truncated);
  // As the reference implementation (safetensors `Metadata::validate`): the data region starts right after the
  // header and the tensors tile it, from offset 0, without gaps, to the end of the file. A header length that is
  // off by a few bytes would otherwise shift every tensor, and bytes in a gap would be read by nobody.
  let at = 0;
  for (const [begin, end, key] of spans) {
    if (begin !== at) {
      throw new FormatError(file, 'data_offsets', `${file}: data_offsets: tensor "${key}" starts at ${begin}, expected ${at} (tensors must tile the data region from 0 without gaps)`);
    }
    at = end;
  }
  if (dataStart + at !== size) {
    throw new FormatError(file, 'data_offsets', `${file}: data_offsets: the tensors end at byte ${dataStart + at} (header ${dataStart} + data ${at}), but the file has ${size} bytes`);
  }
  return { file, tensors, metadata };
}

/** Names the file, its size and the tensors past its end (at most 5, then a count). */
function truncationError(file: string, size: number, details: readonly string[]): Error {
  const more = details.length > 5 ? `; and ${details.length - 5} more` : '';
  return new FormatError(file, 'size', `${file}: truncated safetensors file (${size} bytes): ${details.slice(0, 5).join('; ')}${more}`);
}

function makeTensor(file: string, key: string, dtype: SafetensorsDType, shape: readonly number[], offset: number, byteLength: number): SafetensorsTensor {
  const count = byteLength / DTYPE_BYTES[dtype];
  const tensor: SafetensorsTensor = {
    key, dtype, shape, file, offset, byteLength,
    read: () => readFloats(tensor, count),
    readPrefix: (n: number) => {
      if (!Number.isSafeInteger(n) || n < 0 || n > count) throw new Error(`${file}: ${describe(key, dtype, shape)}: cannot read the first ${n} of its ${count} elements`);
      return readFloats(tensor, n);
    },
  };
  return tensor;
}

// ---------------------------------------------------------------------------------------------------------------
// Reading data: positioned reads in pieces, widened to float32
// ---------------------------------------------------------------------------------------------------------------

function readFloats(t: SafetensorsTensor, count: number): Float32Array {
  return guarded(t.file, () => readFloatsOf(t, count));
}

function readFloatsOf(t: SafetensorsTensor, count: number): Float32Array {
  if (!FLOATS.includes(t.dtype)) throw new Error(`${t.file}: ${describe(t.key, t.dtype, t.shape)} is not a float tensor (F32, BF16, F16, F64)`);
  const elem = DTYPE_BYTES[t.dtype];
  const fd = openRegularFile(t.file);
  try {
    // The file may have changed since it was indexed.
    const size = fs.fstatSync(fd).size;
    if (t.offset + count * elem > size) {
      throw truncationError(t.file, size, [`${describe(t.key, t.dtype, t.shape)} needs bytes ${t.offset}..${t.offset + t.byteLength}`]);
    }
    return readFloatsAt(fd, t.file, t.offset, count, FLOAT_DTYPES[t.dtype as SafetensorsFloat], true);
  } finally {
    fs.closeSync(fd);
  }
}

/** safetensors' dtype names as the shared widening knows them (safetensors is always little-endian). */
const FLOAT_DTYPES: Readonly<Record<SafetensorsFloat, FloatDType>> = { BF16: 'bfloat16', F16: 'float16', F32: 'float32', F64: 'float64' };

// ---------------------------------------------------------------------------------------------------------------
// A checkpoint directory: model.safetensors, or the shards model.safetensors.index.json lists
// ---------------------------------------------------------------------------------------------------------------

/** True when `dir` holds safetensors weights (single or sharded). */
export const hasSafetensors = (dir: string): boolean =>
  fs.existsSync(path.join(dir, SAFETENSORS_INDEX_FILE)) || fs.existsSync(path.join(dir, SAFETENSORS_FILE));

/**
 * The tensors of a Hugging Face checkpoint directory: the shards `model.safetensors.index.json` lists (each key
 * must be in the shard the index names, and every shard key must be listed), else `model.safetensors`.
 */
export function readSafetensors(dir: string): SafetensorsTensors {
  const indexFile = path.join(dir, SAFETENSORS_INDEX_FILE);
  if (fs.existsSync(indexFile)) return readShardedSafetensors(indexFile);
  const single = path.join(dir, SAFETENSORS_FILE);
  if (fs.existsSync(single)) return readSafetensorsFile(single).tensors;
  throw new Error(`${dir}: no safetensors weights (neither ${SAFETENSORS_INDEX_FILE} nor ${SAFETENSORS_FILE})`);
}

/** `{"metadata": {...}, "weight_map": {key: shard file name}}` (transformers `save_pretrained`). */
export function readShardedSafetensors(indexFile: string): SafetensorsTensors {
  return guarded(indexFile, () => readShards(indexFile));
}

function readShards(indexFile: string): SafetensorsTensors {
  const json = readJsonFile(indexFile);
  const weightMap = isRecord(json) ? json['weight_map'] : undefined;
  if (!isRecord(weightMap)) throw new Error(`${indexFile}: expected {"weight_map": {key: shard file}}, got ${JSON.stringify(json)?.slice(0, 200)}`);
  const problems: string[] = [];
  for (const [key, shard] of Object.entries(weightMap)) {
    const bad = typeof shard === 'string' ? segmentProblem(shard) : JSON.stringify(shard);
    if (bad !== null) problems.push(`weight_map.${key}: expected a shard file name, got ${bad}`);
  }
  if (problems.length > 0) throw new FormatError(indexFile, 'weight_map', problems.map((p) => `${indexFile}: ${p}`).join('\n'));
  const dir = path.dirname(indexFile);
  const shards = [...new Set(Object.values(weightMap) as string[])].sort();
  for (const shard of shards) {
    if (!isRegularFile(path.join(dir, shard))) throw new FormatError(indexFile, 'weight_map', `${indexFile}: lists shard ${shard}, which is not in ${dir}`);
  }
  const out = new Map<string, SafetensorsTensor>();
  for (const shard of shards) {
    for (const [key, tensor] of readSafetensorsFile(path.join(dir, shard)).tensors) {
      const listed = weightMap[key];
      if (listed === undefined) problems.push(`${shard} holds "${key}", which weight_map does not list`);
      else if (listed !== shard) problems.push(`${shard} holds "${key}", which weight_map puts in ${listed as string}`);
      else out.set(key, tensor);
    }
  }
  for (const [key, shard] of Object.entries(weightMap)) {
    if (!out.has(key) && !problems.some((p) => p.includes(`"${key}"`))) problems.push(`weight_map puts "${key}" in ${shard as string}, which has no such tensor`);
  }
  if (problems.length > 0) throw new FormatError(indexFile, 'weight_map', problems.map((p) => `${indexFile}: ${p}`).join('\n'));
  return out;
}

// ---------------------------------------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------------------------------------

/** A tensor to write: float32 values stored as F32, BF16 (round to nearest even) or F16, or raw bytes. */
export type TensorToWrite =
  | { readonly shape: readonly number[]; readonly values: Float32Array; readonly dtype?: 'F32' | 'BF16' | 'F16' }
  | { readonly shape: readonly number[]; readonly bytes: Uint8Array; readonly dtype: SafetensorsDType };

/** float32 -> bfloat16 bits, rounding to nearest even (NaN stays NaN). */
export function toBfloat16Bits(x: number): number {
  const b = new DataView(new ArrayBuffer(4));
  b.setFloat32(0, x);
  const bits = b.getUint32(0);
  if ((bits & 0x7fffffff) > 0x7f800000) return 0x7fc0;
  return ((bits + 0x7fff + ((bits >>> 16) & 1)) >>> 16) & 0xffff;
}

/** float32 -> IEEE half bits, rounding to nearest even (overflow to infinity, NaN stays NaN). */
export function toHalfBits(x: number): number {
  const b = new DataView(new ArrayBuffer(4));
  b.setFloat32(0, x);
  const bits = b.getUint32(0);
  const sign = (bits >>> 16) & 0x8000;
  const exp = (bits >>> 23) & 0xff;
  const mant = bits & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant !== 0 ? 0x200 : 0);
  const e = exp - 127 + 15;
  if (e >= 31) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    const m = mant | 0x800000; // implicit 1
    const shift = 14 - e;
    const half = 1 << (shift - 1);
    const rest = m & ((1 << shift) - 1);
    let out = m >>> shift;
    if (rest > half || (rest === half && (out & 1) === 1)) out++;
    return sign | out;
  }
  let out = (e << 10) | (mant >>> 13);
  const rest = mant & 0x1fff;
  if (rest > 0x1000 || (rest === 0x1000 && (out & 1) === 1)) out++; // may carry into the exponent: correct
  return sign | out;
}

function encodeData(key: string, t: TensorToWrite): { dtype: SafetensorsDType; bytes: Uint8Array } {
  const count = t.shape.reduce((a, b) => a * b, 1);
  if ('bytes' in t) {
    if (t.bytes.byteLength !== count * DTYPE_BYTES[t.dtype]) {
      throw new Error(`writeSafetensors: ${describe(key, t.dtype, t.shape)} needs ${count * DTYPE_BYTES[t.dtype]} bytes, got ${t.bytes.byteLength}`);
    }
    return { dtype: t.dtype, bytes: t.bytes };
  }
  const dtype = t.dtype ?? 'F32';
  if (t.values.length !== count) throw new Error(`writeSafetensors: ${describe(key, dtype, t.shape)} needs ${count} values, got ${t.values.length}`);
  if (dtype === 'F32') {
    if (HOST_LE) return { dtype, bytes: new Uint8Array(t.values.buffer, t.values.byteOffset, t.values.byteLength) };
    const bytes = new Uint8Array(count * 4);
    const view = new DataView(bytes.buffer);
    for (let i = 0; i < count; i++) view.setFloat32(4 * i, t.values[i], true);
    return { dtype, bytes };
  }
  const bytes = new Uint8Array(count * 2);
  const view = new DataView(bytes.buffer);
  const convert = dtype === 'BF16' ? toBfloat16Bits : toHalfBits;
  for (let i = 0; i < count; i++) view.setUint16(2 * i, convert(t.values[i]), true);
  return { dtype, bytes };
}

/**
 * Write one `.safetensors` file atomically. Tensors are laid out in the order given; the header is padded with
 * spaces to a multiple of 8 bytes (as the reference implementation does). `metadata` defaults to {format: pt}.
 */
export function writeSafetensors(file: string, tensors: Iterable<readonly [string, TensorToWrite]>, metadata: Readonly<Record<string, string>> = { format: 'pt' }): void {
  const header: Record<string, unknown> = { __metadata__: metadata };
  const chunks: Uint8Array[] = [];
  let offset = 0;
  for (const [key, t] of tensors) {
    if (key === '__metadata__' || key in header) throw new Error(`writeSafetensors: key "${key}" given twice (or reserved)`);
    const { dtype, bytes } = encodeData(key, t);
    header[key] = { dtype, shape: [...t.shape], data_offsets: [offset, offset + bytes.byteLength] };
    chunks.push(bytes);
    offset += bytes.byteLength;
  }
  let json = Buffer.from(JSON.stringify(header), 'utf8');
  const padded = Math.ceil(json.byteLength / 8) * 8;
  if (padded !== json.byteLength) json = Buffer.concat([json, Buffer.alloc(padded - json.byteLength, 0x20)]);
  const length = Buffer.alloc(8);
  length.writeBigUInt64LE(BigInt(json.byteLength));
  writeFileAtomic(file, [length, json, ...chunks]);
}

/**
 * Write a sharded checkpoint into `dir`: `model-0000i-of-0000n.safetensors` (each at most `maxShardBytes` of
 * data, a tensor never split) and `model.safetensors.index.json`, as transformers' `save_pretrained` names them.
 */
export function writeShardedSafetensors(dir: string, tensors: Iterable<readonly [string, TensorToWrite]>, maxShardBytes: number): string[] {
  let names: string[] = [];
  writeDirAtomic(dir, (tmp) => (names = fillShardedSafetensors(tmp, tensors, maxShardBytes)), { keep: (n) => !isSafetensorsFile(n) });
  return names;
}

/** Weight files of a Hugging Face checkpoint: replaced as a whole when weights are saved. */
export const isSafetensorsFile = (name: string): boolean => name.endsWith('.safetensors') || name === SAFETENSORS_INDEX_FILE;

/** The shards and the index, written into `dir` (not atomic as a whole: the callers' `writeDirAtomic` is). */
export function fillShardedSafetensors(dir: string, tensors: Iterable<readonly [string, TensorToWrite]>, maxShardBytes: number): string[] {
  const shards: [string, TensorToWrite][][] = [[]];
  let bytes = 0;
  for (const [key, t] of tensors) {
    const size = storedBytes(t);
    if (bytes > 0 && bytes + size > maxShardBytes) {
      shards.push([]);
      bytes = 0;
    }
    shards[shards.length - 1].push([key, t]);
    bytes += size;
  }
  const n = shards.length;
  const pad = (i: number) => String(i).padStart(5, '0');
  const names = shards.map((_, i) => `model-${pad(i + 1)}-of-${pad(n)}.safetensors`);
  const weightMap: Record<string, string> = {};
  let total = 0;
  shards.forEach((shard, i) => {
    writeSafetensors(path.join(dir, names[i]), shard);
    for (const [key, t] of shard) {
      weightMap[key] = names[i];
      total += storedBytes(t);
    }
  });
  writeFileAtomic(path.join(dir, SAFETENSORS_INDEX_FILE), [Buffer.from(JSON.stringify({ metadata: { total_size: total }, weight_map: weightMap }, null, 2) + '\n')]);
  return names;
}

const storedBytes = (t: TensorToWrite): number =>
  'bytes' in t ? t.bytes.byteLength : t.shape.reduce((a, b) => a * b, 1) * DTYPE_BYTES[t.dtype ?? 'F32'];

