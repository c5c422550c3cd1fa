/**
 * numpy `.npz` archives (what big_vision's `save_params` and `np.savez` write): a ZIP of `.npy` files.
 *
 * - `readNpz(file)`: the arrays of an archive by key (the entry name without `.npy`, e.g.
 *   `params/llm/layers/attn/q_einsum/w`), each with its shape and dtype and lazy reads. Only the ZIP central
 *   directory and each entry's `.npy` header are read up front.
 *   - ZIP: the end-of-central-directory record, ZIP64 too (real checkpoints are > 4 GB: 64-bit sizes and
 *     offsets in the ZIP64 extra field and the ZIP64 end record). One disk only, no encryption.
 *   - Stored entries (method 0, what `np.savez` writes): positioned reads of just the elements asked for, so
 *     a slice of a stacked array costs only its bytes. Deflated entries (method 8, `np.savez_compressed`):
 *     inflated whole with zlib on their first read and kept by the reader, so a compressed archive costs its
 *     uncompressed size in memory while its arrays are being read.
 *   - `.npy` v1, v2 and v3 headers; dtypes `<f4`, `<f2`, `<f8` (and big-endian `>`), and `|V2` / `<V2`, which
 *     is how numpy stores bfloat16 (ml_dtypes' dtype has no numpy code: it is saved as 2-byte void), widened
 *     to float32. C order only: a Fortran-order array is refused.
 *   - Sizes are checked up front (a truncated file is an error that names the file and, where it is one entry
 *     that is cut, the key), and entries must not overlap. CRC-32s are checked as numpy's zipfile does, on
 *     the first read of an entry: a whole read checks it in the same pass; a range read first reads the entry
 *     once to check it (once per entry).
 * - `writeNpz(file, arrays)`: stored (or, for tests, deflated) entries, written atomically; ZIP64 records on
 *   request or when sizes need them.
 */
import * as fs from 'node:fs';
import * as zlib from 'node:zlib';
import { writeFileAtomic } from './atomic';
import { FormatError, guarded } from './errors';
import { openRegularFile } from './files';
import { HOST_LE, readFloatsAt, readFully, widenInto, type FloatDType } from './io';

const fmt = (s: readonly number[]) => `[${s.join(', ')}]`;

// ---------------------------------------------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------------------------------------------

export type NpyDType = FloatDType;

/** One array of an archive. Reads return new float32 arrays. */
export interface NpyArray {
  /** Entry name without `.npy`. */
  readonly key: string;
  readonly file: string;
  readonly shape: readonly number[];
  readonly dtype: NpyDType;
  /** The numpy dtype string, e.g. `<f4` or `|V2`. */
  readonly descr: string;
  /** All elements, C order. */
  read(): Float32Array;
  /** `count` elements from flat (C-order) element `start`. */
  readRange(start: number, count: number): Float32Array;
}

export type NpzArrays = ReadonlyMap<string, NpyArray>;

// ---------------------------------------------------------------------------------------------------------------
// ZIP structure
// ---------------------------------------------------------------------------------------------------------------

const SIG_LOCAL = 0x04034b50;
const SIG_CENTRAL = 0x02014b50;
const SIG_END = 0x06054b50;
const SIG_END64 = 0x06064b50;
const SIG_LOCATOR64 = 0x07064b50;
const U32_MAX = 0xffffffff;
const U16_MAX = 0xffff;

interface ZipEntry {
  readonly name: string;
  readonly crc: number;
  readonly method: number;
  readonly compressedSize: number;
  readonly size: number;
  readonly localOffset: number;
}

/** A little-endian u64 as a number (exact below 2^53; refuses more). */
function u64(view: DataView, at: number, file: string, what: string): number {
  const lo = view.getUint32(at, true);
  const hi = view.getUint32(at + 4, true);
  const n = hi * 2 ** 32 + lo;
  if (!Number.isSafeInteger(n)) throw new Error(`${file}: ${what} ${hi} * 2^32 + ${lo} is too large`);
  return n;
}

function readAt(fd: number, file: string, pos: number, length: number): DataView {
  const bytes = new Uint8Array(length);
  readFully(fd, file, bytes, pos);
  return new DataView(bytes.buffer);
}

/** The central directory of a ZIP file: every entry's name, method, sizes and local header offset. */
function readCentralDirectory(fd: number, file: string, fileSize: number): ZipEntry[] {
  const notZip = (why: string) => new Error(`${file}: not a .npz (ZIP) archive, or truncated: ${why}`);
  // The end record (22 bytes + a comment of up to 64 KiB) is the last thing in the file.
  const tail = Math.min(fileSize, 22 + U16_MAX);
  if (tail < 22) throw notZip(`${fileSize} bytes`);
  const tailView = readAt(fd, file, fileSize - tail, tail);
  let end = -1;
  for (let i = tail - 22; i >= 0; i--) {
    if (tailView.getUint32(i, true) === SIG_END && i + 22 + tailView.getUint16(i + 20, true) <= tail) {
      end = i;
      break;
    }
  }
  if (end < 0) throw notZip('no end-of-central-directory record in its last bytes');
  const endPos = fileSize - tail + end;
  let count = tailView.getUint16(end + 10, true);
  let cdSize = tailView.getUint32(end + 12, true);
  let cdOffset = tailView.getUint32(end + 16, true);
  if (tailView.getUint16(end + 4, true) !== 0 || tailView.getUint16(end + 6, true) !== 0) throw new Error(`${file}: a multi-disk ZIP archive is not supported`);
  let cdEnd = endPos;
  if (count === U16_MAX || cdSize === U32_MAX || cdOffset === U32_MAX) {
    // ZIP64: a locator just before the end record points at the ZIP64 end record.
    if (endPos < 20) throw notZip('no ZIP64 end-of-central-directory locator');
    const loc = readAt(fd, file, endPos - 20, 20);
    if (loc.getUint32(0, true) !== SIG_LOCATOR64) throw notZip('sizes need ZIP64 but there is no ZIP64 locator');
    const end64Pos = u64(loc, 8, file, 'ZIP64 end record offset');
    if (end64Pos + 56 > endPos - 20) throw notZip(`the ZIP64 end record at ${end64Pos} is past the end of the archive`);
    const e64 = readAt(fd, file, end64Pos, 56);
    if (e64.getUint32(0, true) !== SIG_END64) throw notZip(`no ZIP64 end record at ${end64Pos}`);
    count = u64(e64, 32, file, 'entry count');
    cdSize = u64(e64, 40, file, 'central directory size');
    cdOffset = u64(e64, 48, file, 'central directory offset');
    cdEnd = end64Pos;
  }
  if (cdOffset + cdSize > cdEnd) throw notZip(`the central directory (${cdSize} bytes at ${cdOffset}) runs past its end record at ${cdEnd}`);
  const cd = readAt(fd, file, cdOffset, cdSize);
  const bytes = new Uint8Array(cd.buffer);
  const entries: ZipEntry[] = [];
  let at = 0;
  for (let i = 0; i < count; i++) {
    if (at + 46 > cdSize || cd.getUint32(at, true) !== SIG_CENTRAL) throw notZip(`central directory entry ${i} of ${count} is damaged`);
    const recordEnd = at + 46 + cd.getUint16(at + 28, true) + cd.getUint16(at + 30, true) + cd.getUint16(at + 32, true);
    if (recordEnd > cdSize) throw notZip(`central directory entry ${i} of ${count} runs past the directory (${recordEnd} > ${cdSize} bytes)`);
    const crc = cd.getUint32(at + 16, true);
    const flags = cd.getUint16(at + 8, true);
    const method = cd.getUint16(at + 10, true);
    let compressedSize = cd.getUint32(at + 20, true);
    let size = cd.getUint32(at + 24, true);
    const nameLen = cd.getUint16(at + 28, true);
    const extraLen = cd.getUint16(at + 30, true);
    const commentLen = cd.getUint16(at + 32, true);
    let localOffset = cd.getUint32(at + 42, true);
    const name = Buffer.from(bytes.subarray(at + 46, at + 46 + nameLen)).toString('utf8');
    if (flags & 1) throw new Error(`${file}: entry ${name} is encrypted`);
    // ZIP64 extra field (id 1): the 64-bit values of exactly the fields saturated above, in this order.
    for (let x = at + 46 + nameLen, xEnd = x + extraLen; x + 4 <= xEnd; ) {
      const id = cd.getUint16(x, true);
      const len = cd.getUint16(x + 2, true);
      if (id === 1) {
        let p = x + 4;
        const need = 8 * [size, compressedSize, localOffset].filter((v) => v === U32_MAX).length;
        if (len < need || x + 4 + len > xEnd) throw notZip(`entry ${name}: its ZIP64 extra field holds ${len} bytes, ${need} needed`);
        if (size === U32_MAX) (size = u64(cd, p, file, `${name} size`)), (p += 8);
        if (compressedSize === U32_MAX) (compressedSize = u64(cd, p, file, `${name} compressed size`)), (p += 8);
        if (localOffset === U32_MAX) localOffset = u64(cd, p, file, `${name} offset`);
      }
      x += 4 + len;
    }
    entries.push({ name, crc, method, compressedSize, size, localOffset });
    at += 46 + nameLen + extraLen + commentLen;
  }
  return entries;
}

/** Where an entry's data starts (after its local header, whose extra field may differ from the central one). */
function dataOffset(fd: number, file: string, fileSize: number, e: ZipEntry): number {
  if (e.localOffset + 30 > fileSize) throw new Error(`${file}: truncated: entry ${e.name} starts at byte ${e.localOffset} but the file has ${fileSize} bytes`);
  const h = readAt(fd, file, e.localOffset, 30);
  if (h.getUint32(0, true) !== SIG_LOCAL) throw new Error(`${file}: entry ${e.name}: no local header at byte ${e.localOffset}`);
  const nameLength = h.getUint16(26, true);
  if (e.localOffset + 30 + nameLength > fileSize) throw new Error(`${file}: truncated: entry ${e.name}'s local header runs past the end of the file`);
  // As Python's zipfile: the local header must name the same entry as the central directory.
  const local = Buffer.from(readAt(fd, file, e.localOffset + 30, nameLength).buffer).toString('utf8');
  if (local !== e.name) throw new FormatError(file, e.name, `${file}: ${e.name}: the local header at byte ${e.localOffset} names ${JSON.stringify(local.slice(0, 100))}`);
  return e.localOffset + 30 + nameLength + h.getUint16(28, true);
}

// ---------------------------------------------------------------------------------------------------------------
// .npy headers
// ---------------------------------------------------------------------------------------------------------------

const DESCRS: Readonly<Record<string, { dtype: NpyDType; le: boolean }>> = {
  '<f4': { dtype: 'float32', le: true },
  '>f4': { dtype: 'float32', le: false },
  '<f2': { dtype: 'float16', le: true },
  '>f2': { dtype: 'float16', le: false },
  '<f8': { dtype: 'float64', le: true },
  '>f8': { dtype: 'float64', le: false },
  // bfloat16: numpy saves ml_dtypes' bfloat16 as 2-byte void; the bytes are little-endian bf16.
  '|V2': { dtype: 'bfloat16', le: true },
  '<V2': { dtype: 'bfloat16', le: true },
};
const ELEMENT_BYTES: Readonly<Record<NpyDType, number>> = { float16: 2, bfloat16: 2, float32: 4, float64: 8 };

interface NpyHeader {
  readonly descr: string;
  readonly dtype: NpyDType;
  readonly le: boolean;
  readonly shape: number[];
  /** Bytes before the data. */
  readonly headerBytes: number;
}

/** Bytes needed to parse a header, from its first 12 bytes (or -1 when they are not an .npy preamble). */
function npyHeaderLength(pre: Uint8Array): number {
  if (pre.length < 10 || pre[0] !== 0x93 || Buffer.from(pre.subarray(1, 6)).toString('latin1') !== 'NUMPY') return -1;
  const major = pre[6];
  const view = new DataView(pre.buffer, pre.byteOffset, pre.byteLength);
  if (major === 1) return 10 + view.getUint16(8, true);
  if ((major === 2 || major === 3) && pre.length >= 12) return 12 + view.getUint32(8, true);
  return -1;
}

/** Parse an `.npy` header (the python dict literal `{'descr': ..., 'fortran_order': ..., 'shape': (...)}`). */
function parseNpyHeader(bytes: Uint8Array, where: string): NpyHeader {
  if (bytes.length < 10 || bytes[0] !== 0x93 || Buffer.from(bytes.subarray(1, 6)).toString('latin1') !== 'NUMPY') throw new Error(`${where}: not an .npy array (no \\x93NUMPY magic)`);
  const major = bytes[6];
  if (major < 1 || major > 3) throw new Error(`${where}: .npy format version ${major}.${bytes[7]} is not supported (1, 2 or 3)`);
  const headerBytes = npyHeaderLength(bytes);
  if (headerBytes < 0 || headerBytes > bytes.length) throw new Error(`${where}: truncated .npy header`);
  const text = Buffer.from(bytes.subarray(major === 1 ? 10 : 12, headerBytes)).toString(major === 3 ? 'utf8' : 'latin1');
  const descr = /'descr'\s*:\s*'([^']*)'/.exec(text)?.[1];
  const fortran = /'fortran_order'\s*:\s*(True|False)/.exec(text)?.[1];
  const shapeText = /'shape'\s*:\s*\(([^)]*)\)/.exec(text)?.[1];
  if (descr === undefined || fortran === undefined || shapeText === undefined) throw new Error(`${where}: cannot parse the .npy header ${JSON.stringify(text.trim())}`);
  if (fortran === 'True') throw new Error(`${where}: Fortran-order arrays are not supported (save it C-ordered: np.ascontiguousarray)`);
  const known = DESCRS[descr];
  if (known === undefined) throw new Error(`${where}: dtype ${descr} is not supported (float32 <f4, float16 <f2, float64 <f8, bfloat16 |V2)`);
  const shape = shapeText
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s !== '')
    .map((s) => {
      const n = Number(s.replace(/L$/, ''));
      if (!Number.isSafeInteger(n) || n < 0) throw new Error(`${where}: bad shape (${shapeText}) in the .npy header`);
      return n;
    });
  if (shape.length > 32 || !Number.isSafeInteger(shape.reduce((a, b) => a * b, 1))) throw new Error(`${where}: bad shape (${shapeText.slice(0, 200)}) in the .npy header`);
  return { descr, ...known, shape, headerBytes };
}

// ---------------------------------------------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------------------------------------------

/** Every array of an `.npz` file by key; reads are lazy (see the header). */
export function readNpz(file: string): NpzArrays {
  return guarded(file, () => indexNpz(file));
}

function indexNpz(file: string): NpzArrays {
  const fd = openRegularFile(file);
  const out = new Map<string, NpyArray>();
  try {
    const fileSize = fs.fstatSync(fd).size;
    const spans: [number, number, string][] = [];
    for (const e of readCentralDirectory(fd, file, fileSize)) {
      if (e.name.endsWith('/')) continue; // a directory entry
      const key = e.name.endsWith('.npy') ? e.name.slice(0, -4) : e.name;
      const where = `${file}: ${key}`;
      if (e.method !== 0 && e.method !== 8) throw new Error(`${where}: ZIP compression method ${e.method} is not supported (0 stored, 8 deflated)`);
      const start = dataOffset(fd, file, fileSize, e);
      if (start + e.compressedSize > fileSize) {
        throw new Error(`${where}: truncated: its data ends at byte ${start + e.compressedSize} but the file has ${fileSize} bytes`);
      }
      if (e.method === 0 && e.compressedSize !== e.size) throw new Error(`${where}: a stored entry of ${e.compressedSize} bytes that says it holds ${e.size}`);
      // Deflate expands at most ~1032:1: a larger claim is a lie (or a bomb), refused before inflating.
      if (e.method === 8 && e.size > e.compressedSize * 1032 + 1024) {
        throw new FormatError(file, key, `${where}: says ${e.compressedSize} deflated bytes hold ${e.size}, beyond deflate's maximum ratio`);
      }
      spans.push([e.localOffset, start + e.compressedSize, key]);
      const array = e.method === 0 ? storedArray(fd, file, key, start, e) : deflatedArray(fd, file, key, start, e);
      if (out.has(key)) throw new Error(`${file}: the key ${key} appears twice`);
      out.set(key, array);
    }
    // Entries must not share bytes (overlapping entries are how ZIP bombs multiply; zipfile refuses them).
    spans.sort((a, b) => a[0] - b[0]);
    for (let i = 1; i < spans.length; i++) {
      if (spans[i][0] < spans[i - 1][1]) {
        throw new FormatError(file, spans[i][2], `${file}: entries ${spans[i - 1][2]} and ${spans[i][2]} overlap (bytes ${spans[i][0]}..${spans[i - 1][1]})`);
      }
    }
  } finally {
    fs.closeSync(fd);
  }
  return out;
}

function checkSize(h: NpyHeader, entryBytes: number, where: string): number {
  const n = h.shape.reduce((a, b) => a * b, 1);
  const need = h.headerBytes + n * ELEMENT_BYTES[h.dtype];
  if (entryBytes !== need) {
    const what = entryBytes < need ? 'truncated' : 'too long';
    throw new Error(`${where}: ${what}: ${h.descr} ${fmt(h.shape)} needs ${need} bytes with its header, the entry has ${entryBytes}`);
  }
  return n;
}

function checkRange(where: string, n: number, start: number, count: number): void {
  if (!(Number.isSafeInteger(start) && Number.isSafeInteger(count) && start >= 0 && count >= 0 && start + count <= n)) {
    throw new Error(`${where}: elements ${start}..${start + count} are out of range (${n} elements)`);
  }
}

function storedArray(fd: number, file: string, key: string, start: number, e: ZipEntry): NpyArray {
  const where = `${file}: ${key}`;
  const size = e.size;
  const pre = new Uint8Array(Math.min(size, 12));
  readFully(fd, file, pre, start);
  const len = npyHeaderLength(pre);
  if (len > MAX_NPY_HEADER) throw new FormatError(file, key, `${where}: .npy header of ${len} bytes, above ${MAX_NPY_HEADER}`);
  const headerBytes = new Uint8Array(len > 0 && len <= size ? len : pre.length);
  readFully(fd, file, headerBytes, start);
  const h = parseNpyHeader(headerBytes, where);
  const n = checkSize(h, size, where);
  const elem = ELEMENT_BYTES[h.dtype];
  let verified = false;
  /** The whole entry through one scratch buffer: CRC-32 of all of it, the data widened into `out` if given. */
  const pass = (f: number, out: Float32Array | null): void => {
    let crc = crc32Update(0xffffffff, headerBytes);
    const perPiece = Math.floor(PIECE_BYTES / elem);
    const scratch = new Uint8Array(Math.min(n, perPiece) * elem);
    for (let from = 0; from < n; from += perPiece) {
      const count = Math.min(perPiece, n - from);
      const piece = scratch.subarray(0, count * elem);
      readFully(f, file, piece, start + h.headerBytes + from * elem);
      crc = crc32Update(crc, piece);
      if (out !== null) widenInto(h.dtype, h.le, piece, out.subarray(from, from + count));
    }
    checkCrc(file, key, e, (crc ^ 0xffffffff) >>> 0);
    verified = true;
  };
  const withFile = <T>(g: (f: number) => T): T =>
    guarded(file, () => {
      const f = openRegularFile(file);
      try {
        return g(f);
      } catch (err) {
        throw err instanceof FormatError ? err : new Error(`${where}: ${(err as Error).message}`);
      } finally {
        fs.closeSync(f);
      }
    });
  const readRange = (from: number, count: number): Float32Array => {
    checkRange(where, n, from, count);
    return withFile((f) => {
      if (!verified) pass(f, null);
      return readFloatsAt(f, file, start + h.headerBytes + from * elem, count, h.dtype, h.le);
    });
  };
  const read = (): Float32Array =>
    withFile((f) => {
      if (verified) return readFloatsAt(f, file, start + h.headerBytes, n, h.dtype, h.le);
      const out = new Float32Array(n);
      pass(f, out);
      return out;
    });
  return { key, file, shape: h.shape, dtype: h.dtype, descr: h.descr, read, readRange };
}

/** Bytes per piece of a checked read. */
const PIECE_BYTES = 1 << 26;
/** numpy refuses .npy headers above 10000 bytes by default (`max_header_size`); we allow a little more. */
const MAX_NPY_HEADER = 1 << 16;

function checkCrc(file: string, key: string, e: ZipEntry, crc: number): void {
  if (crc !== e.crc) {
    const hex = (n: number) => `0x${n.toString(16).padStart(8, '0')}`;
    throw new FormatError(file, key, `${file}: ${key}: CRC-32 is ${hex(crc)}, the archive says ${hex(e.crc)} (the entry is corrupt)`);
  }
}

function deflatedArray(fd: number, file: string, key: string, start: number, e: ZipEntry): NpyArray {
  const where = `${file}: ${key}`;
  const compressed = (length: number) => {
    const f = fs.openSync(file, 'r');
    try {
      const bytes = new Uint8Array(length);
      readFully(f, file, bytes, start);
      return bytes;
    } finally {
      fs.closeSync(f);
    }
  };
  // The header from a prefix: a sync flush inflates what it can without needing the end of the stream.
  // 4 KiB of deflate inflate to at most ~4 MiB; a header it does not cover is parsed after inflating all.
  const prefix = new Uint8Array(Math.min(e.compressedSize, 1 << 12));
  readFully(fd, file, prefix, start);
  let head: Uint8Array;
  try {
    head = zlib.inflateRawSync(prefix, { finishFlush: zlib.constants.Z_SYNC_FLUSH });
  } catch (err) {
    throw new FormatError(file, key, `${where}: cannot inflate: ${(err as Error).message}`);
  }
  const len = npyHeaderLength(head);
  let whole: Uint8Array | null = null;
  const inflateAll = (): Uint8Array => {
    if (whole === null) {
      let inflated: Uint8Array;
      try {
        // Never more than the entry says (plus one byte, to notice more).
        inflated = zlib.inflateRawSync(compressed(e.compressedSize), { maxOutputLength: e.size + 1 });
      } catch (err) {
        throw new FormatError(file, key, `${where}: cannot inflate: ${(err as Error).message}`);
      }
      if (inflated.length !== e.size) throw new FormatError(file, key, `${where}: inflated to ${inflated.length} bytes, the archive says ${e.size}`);
      checkCrc(file, key, e, crc32(inflated));
      whole = inflated;
    }
    return whole;
  };
  if (len < 0 || len > head.length) head = inflateAll();
  const h = parseNpyHeader(head, where);
  const n = checkSize(h, e.size, where);
  const readRange = (from: number, count: number): Float32Array => {
    checkRange(where, n, from, count);
    const bytes = inflateAll();
    const elem = ELEMENT_BYTES[h.dtype];
    const src = bytes.slice(h.headerBytes + from * elem, h.headerBytes + (from + count) * elem); // aligned copy
    const out = new Float32Array(count);
    widenInto(h.dtype, h.le, src, out);
    return out;
  };
  return { key, file, shape: h.shape, dtype: h.dtype, descr: h.descr, read: () => readRange(0, n), readRange };
}

// ---------------------------------------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------------------------------------

export interface NpyToWrite {
  readonly shape: readonly number[];
  readonly values: Float32Array;
  /** Stored dtype (default float32); bfloat16 is written as `<V2` (rounded to nearest even), like numpy does. */
  readonly dtype?: 'float32' | 'bfloat16';
}

export interface WriteNpzOptions {
  /** Deflate entries (method 8) instead of storing them. */
  readonly compress?: boolean;
  /** ZIP64 records for every entry and the end (as numpy's force_zip64 does); they are used anyway past 4 GB. */
  readonly zip64?: boolean;
}

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

/** Fold `bytes` into a running CRC-32 register (start from 0xffffffff, finish with ^ 0xffffffff). */
export function crc32Update(c: number, bytes: Uint8Array): number {
  for (let i = 0; i < bytes.length; i++) c = CRC_TABLE[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return c;
}

/** CRC-32 (ZIP's, PNG's) of `bytes`. */
export function crc32(bytes: Uint8Array): number {
  return (crc32Update(0xffffffff, bytes) ^ 0xffffffff) >>> 0;
}

/** float32 -> bfloat16 bits, rounded to nearest even (NaN stays NaN). */
function bfloat16Bits(values: Float32Array): Uint16Array {
  const bits = new Uint32Array(values.buffer, values.byteOffset, values.length);
  const out = new Uint16Array(values.length);
  for (let i = 0; i < values.length; i++) {
    const b = bits[i];
    out[i] = Number.isNaN(values[i]) ? (b >>> 16) | 0x40 : (b + 0x7fff + ((b >>> 16) & 1)) >>> 16;
  }
  return out;
}

/** One `.npy` file (v1 header, C order, little-endian). */
export function encodeNpy(a: NpyToWrite): Uint8Array {
  const n = a.shape.reduce((x, y) => x * y, 1);
  if (n !== a.values.length) throw new Error(`encodeNpy: shape ${fmt(a.shape)} has ${n} elements, got ${a.values.length} values`);
  const bf16 = a.dtype === 'bfloat16';
  const shape = a.shape.length === 1 ? `(${a.shape[0]},)` : `(${a.shape.join(', ')})`;
  let dict = `{'descr': '${bf16 ? '<V2' : '<f4'}', 'fortran_order': False, 'shape': ${shape}, }`;
  // numpy pads the header with spaces to a multiple of 64 bytes, ending in a newline.
  const unpadded = 10 + dict.length + 1;
  dict += ' '.repeat((64 - (unpadded % 64)) % 64) + '\n';
  const header = new Uint8Array(10 + dict.length);
  header.set([0x93, ...Buffer.from('NUMPY', 'latin1'), 1, 0]);
  new DataView(header.buffer).setUint16(8, dict.length, true);
  header.set(Buffer.from(dict, 'latin1'), 10);
  let data: Uint8Array;
  if (bf16) {
    const bits = bfloat16Bits(a.values);
    data = new Uint8Array(bits.buffer);
  } else data = new Uint8Array(a.values.buffer, a.values.byteOffset, a.values.byteLength);
  if (!HOST_LE) throw new Error('encodeNpy: big-endian hosts are not supported');
  const out = new Uint8Array(header.length + data.length);
  out.set(header);
  out.set(data, header.length);
  return out;
}

/** Write arrays (key -> values) as an `.npz` file, atomically; keys become `<key>.npy` entries. */
export function writeNpz(file: string, arrays: Iterable<readonly [string, NpyToWrite]>, options: WriteNpzOptions = {}): void {
  const pieces: Uint8Array[] = [];
  const central: Uint8Array[] = [];
  let offset = 0;
  let count = 0;
  for (const [key, a] of arrays) {
    const raw = encodeNpy(a);
    const data = options.compress ? new Uint8Array(zlib.deflateRawSync(raw)) : raw;
    const name = Buffer.from(`${key}.npy`, 'utf8');
    const big = options.zip64 === true || raw.length >= U32_MAX || offset >= U32_MAX;
    const crc = crc32(raw);
    const method = options.compress ? 8 : 0;
    // local header: ZIP64 extra = [size, compressed size]
    const local = new DataView(new ArrayBuffer(30 + name.length + (big ? 20 : 0)));
    local.setUint32(0, SIG_LOCAL, true);
    local.setUint16(4, big ? 45 : 20, true);
    local.setUint16(6, 0x800, true); // UTF-8 names
    local.setUint16(8, method, true);
    local.setUint16(12, 0x21, true); // 1980-01-01
    local.setUint32(14, crc, true);
    local.setUint32(18, big ? U32_MAX : data.length, true);
    local.setUint32(22, big ? U32_MAX : raw.length, true);
    local.setUint16(26, name.length, true);
    local.setUint16(28, big ? 20 : 0, true);
    new Uint8Array(local.buffer).set(name, 30);
    if (big) {
      const x = 30 + name.length;
      local.setUint16(x, 1, true);
      local.setUint16(x + 2, 16, true);
      setU64(local, x + 4, raw.length);
      setU64(local, x + 12, data.length);
    }
    // central header: ZIP64 extra = [size, compressed size, offset]
    const cen = new DataView(new ArrayBuffer(46 + name.length + (big ? 28 : 0)));
    cen.setUint32(0, SIG_CENTRAL, true);
    cen.setUint16(4, big ? 45 : 20, true);
    cen.setUint16(6, big ? 45 : 20, true);
    cen.setUint16(8, 0x800, true);
    cen.setUint16(10, method, true);
    cen.setUint16(14, 0x21, true);
    cen.setUint32(16, crc, true);
    cen.setUint32(20, big ? U32_MAX : data.length, true);
    cen.setUint32(24, big ? U32_MAX : raw.length, true);
    cen.setUint16(28, name.length, true);
    cen.setUint16(30, big ? 28 : 0, true);
    cen.setUint32(42, big ? U32_MAX : offset, true);
    new Uint8Array(cen.buffer).set(name, 46);
    if (big) {
      const x = 46 + name.length;
      cen.setUint16(x, 1, true);
      cen.setUint16(x + 2, 24, true);
      setU64(cen, x + 4, raw.length);
      setU64(cen, x + 12, data.length);
      setU64(cen, x + 20, offset);
    }
    pieces.push(new Uint8Array(local.buffer), data);
    central.push(new Uint8Array(cen.buffer));
    offset += local.byteLength + data.length;
    count++;
  }
  const cdOffset = offset;
  const cdSize = central.reduce((n, c) => n + c.length, 0);
  const zip64 = options.zip64 === true || cdOffset >= U32_MAX || count >= U16_MAX;
  const tail: Uint8Array[] = [];
  if (zip64) {
    const e64 = new DataView(new ArrayBuffer(56));
    e64.setUint32(0, SIG_END64, true);
    setU64(e64, 4, 44);
    e64.setUint16(12, 45, true);
    e64.setUint16(14, 45, true);
    setU64(e64, 24, count);
    setU64(e64, 32, count);
    setU64(e64, 40, cdSize);
    setU64(e64, 48, cdOffset);
    const loc = new DataView(new ArrayBuffer(20));
    loc.setUint32(0, SIG_LOCATOR64, true);
    setU64(loc, 8, cdOffset + cdSize);
    loc.setUint32(16, 1, true);
    tail.push(new Uint8Array(e64.buffer), new Uint8Array(loc.buffer));
  }
  const end = new DataView(new ArrayBuffer(22));
  end.setUint32(0, SIG_END, true);
  end.setUint16(8, zip64 ? U16_MAX : count, true);
  end.setUint16(10, zip64 ? U16_MAX : count, true);
  end.setUint32(12, zip64 ? U32_MAX : cdSize, true);
  end.setUint32(16, zip64 ? U32_MAX : cdOffset, true);
  tail.push(new Uint8Array(end.buffer));
  writeFileAtomic(file, [...pieces, ...central, ...tail]);
}

function setU64(view: DataView, at: number, n: number): void {
  view.setUint32(at, n % 2 ** 32, true);
  view.setUint32(at + 4, Math.floor(n / 2 ** 32), true);
}
