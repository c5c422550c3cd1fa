/**
 * A small HDF5 reader for Keras `.weights.h5` files: it indexes every group and dataset and reads one dataset at
 * a time, on demand.
 *
 * Why our own: jsfive reads the whole file into one ArrayBuffer, and h5wasm is 32-bit wasm that fails past
 * ~4 GB of file addresses; a PaliGemma preset is 6 to 55 GB. This reader touches only metadata, with positioned
 * reads (`fs.readSync(fd, buf, 0, n, position)`; 64-bit offsets are held as numbers, exact up to 2^53), and
 * records where each dataset's bytes are, so a caller can load one tensor at a time.
 *
 * Supported: what h5py 3.x / HDF5 1.10 writes for Keras weights (default `libver`), and the newer format that
 * `libver='latest'` writes:
 *   - superblock v0/v1 (h5py's default) and v2/v3;
 *   - object headers v1 and v2 (`OHDR`), with continuation blocks;
 *   - old-style groups: symbol table message -> v1 B-tree (`TREE`) -> symbol nodes (`SNOD`), names in the local
 *     heap (`HEAP`); new-style compact groups: link messages (hard links);
 *   - dataspaces v1/v2 (simple, scalar, null);
 *   - datatypes: integers (1/2/4/8 bytes), IEEE floats (16/32/64 bits, and bfloat16 declared as a float), fixed
 *     and variable-length strings (the latter in global heap collections, `GCOL`), and OPAQUE of 2 bytes read as
 *     bfloat16 (see `BFLOAT16_OPAQUE` below);
 *   - data layout messages v1-v4, contiguous and compact;
 *   - attribute messages v1-v3 (scalars and arrays of numbers and strings).
 * Refused, with an error that names the file and the object: chunked layouts (hence also compression and
 * filters), virtual datasets, external raw data files, dense link or attribute storage (fractal heaps), shared
 * (committed) messages, soft and external links, datatypes other than the above. Checksums of v2 metadata are
 * not verified.
 *
 * The writer is in h5write.ts.
 *
 * Reference: "HDF5 File Format Specification Version 3.0" (The HDF Group); each parser names its section.
 */
import * as fs from 'node:fs';
import { FormatError, guarded } from './errors';
import { openRegularFile } from './files';
import { HOST_LE, bfloat16ToNumber, halfToNumber, readFloatsAt, readFully, widenInto, type FloatDType } from './io';

export { HOST_LE, bfloat16ToNumber, halfToNumber };

// ---------------------------------------------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------------------------------------------

/** Element types a dataset can have. */
export type H5DType =
  | 'float16'
  | 'bfloat16'
  | 'float32'
  | 'float64'
  | 'int8'
  | 'uint8'
  | 'int16'
  | 'uint16'
  | 'int32'
  | 'uint32'
  | 'int64'
  | 'uint64';

/** Bytes per element of each dtype. */
export const DTYPE_BYTES: Readonly<Record<H5DType, number>> = {
  float16: 2,
  bfloat16: 2,
  float32: 4,
  float64: 8,
  int8: 1,
  uint8: 1,
  int16: 2,
  uint16: 2,
  int32: 4,
  uint32: 4,
  int64: 8,
  uint64: 8,
};

/** An attribute's value: scalars as such, any non-scalar flattened in C order. */
export type H5AttrValue = string | number | readonly string[] | readonly number[];
export type H5Attrs = Readonly<Record<string, H5AttrValue>>;

export interface H5Dataset {
  /** The file that holds the bytes. */
  readonly file: string;
  /** Slash-separated, no leading slash: `layers/reversible_embedding/vars/0`. */
  readonly path: string;
  /** `[]` for a scalar. */
  readonly shape: readonly number[];
  readonly dtype: H5DType;
  /** Byte order of the stored elements (h5py writes native order: little-endian on x86 and arm). */
  readonly littleEndian: boolean;
  /** Absolute byte offset of the first element in `file`. */
  readonly offset: number;
  readonly byteLength: number;
  readonly attrs: H5Attrs;
}

export interface H5Index {
  readonly file: string;
  /** The file's size in bytes when it was indexed. */
  readonly size: number;
  readonly superblockVersion: number;
  /** Every dataset, by path, in name order within each group. */
  readonly datasets: ReadonlyMap<string, H5Dataset>;
  /** Every group's attributes, by path (`''` is the root group); groups without attributes map to `{}`. */
  readonly groupAttrs: ReadonlyMap<string, H5Attrs>;
}

export interface H5File extends H5Index {
  /** The dataset widened to float32 (bfloat16/float16 exactly, float64 rounded). Throws for integer data. */
  readFloat32(path: string): Float32Array;
  /** The dataset's stored bytes, as they are on disk. */
  readBytes(path: string): Uint8Array;
  close(): void;
}

/** Index `file` and keep it open for reads; call `close()` when done. */
export function openH5(file: string): H5File {
  return guarded(file, () => {
    const fd = openRegularFile(file);
    try {
      const index = indexFd(file, fd);
      return new OpenFile(index, fd);
    } catch (e) {
      fs.closeSync(fd);
      throw e;
    }
  });
}

/**
 * Index an HDF5 file held in memory (a browser's `fetch`/`ArrayBuffer`, a test's bytes); `name` labels errors
 * as a path would. Reads copy out of `bytes` on demand; `close()` only forbids further reads.
 */
export function openH5Bytes(bytes: Uint8Array | ArrayBuffer, name = '<bytes>'): H5File {
  const data = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
  const index = indexSource(new Source(name, data.length, (dst, pos) => dst.set(data.subarray(pos, pos + dst.length))));
  let open = true;
  const dataset = (path: string): H5Dataset => {
    if (!open) throw new Error(`${name}: read after close()`);
    const ds = index.datasets.get(path);
    if (ds === undefined) throw new Error(`${name}: no dataset "${path}"`);
    return ds;
  };
  const stored = (ds: H5Dataset): Uint8Array => data.slice(ds.offset, ds.offset + ds.byteLength);
  return {
    ...index,
    readBytes: (path) => stored(dataset(path)),
    readFloat32(path) {
      const ds = dataset(path);
      if (ds.dtype !== 'float32' && ds.dtype !== 'bfloat16' && ds.dtype !== 'float16' && ds.dtype !== 'float64') {
        throw new Error(`${name}: dataset "${ds.path}" is ${ds.dtype}, not a float type: read its bytes instead`);
      }
      const raw = stored(ds); // a copy, so aligned for typed-array views
      if (ds.dtype === 'float32' && ds.littleEndian === HOST_LE) return new Float32Array(raw.buffer, 0, raw.length / 4);
      const out = new Float32Array(raw.length / DTYPE_BYTES[ds.dtype]);
      widenInto(ds.dtype, ds.littleEndian, raw, out);
      return out;
    },
    close: () => {
      open = false;
    },
  };
}

/** Index `file` and close it: the result describes where the data is; read it later with `readDatasetFloat32`. */
export function indexH5(file: string): H5Index {
  return guarded(file, () => {
    const fd = openRegularFile(file);
    try {
      return indexFd(file, fd);
    } finally {
      fs.closeSync(fd);
    }
  });
}

/** Read one dataset as float32, opening and closing its file. */
export function readDatasetFloat32(ds: H5Dataset): Float32Array {
  return guarded(ds.file, () => withFd(ds.file, (fd) => readFloat32At(fd, ds)));
}

/** Read one dataset's stored bytes, opening and closing its file. */
export function readDatasetBytes(ds: H5Dataset): Uint8Array {
  return guarded(ds.file, () => withFd(ds.file, (fd) => readBytesAt(fd, ds)));
}

class OpenFile implements H5File {
  readonly file: string;
  readonly size: number;
  readonly superblockVersion: number;
  readonly datasets: ReadonlyMap<string, H5Dataset>;
  readonly groupAttrs: ReadonlyMap<string, H5Attrs>;
  private fd: number | null;

  constructor(index: H5Index, fd: number) {
    this.file = index.file;
    this.size = index.size;
    this.superblockVersion = index.superblockVersion;
    this.datasets = index.datasets;
    this.groupAttrs = index.groupAttrs;
    this.fd = fd;
  }

  readFloat32(path: string): Float32Array {
    return guarded(this.file, () => readFloat32At(this.openFd(), this.dataset(path)));
  }

  readBytes(path: string): Uint8Array {
    return guarded(this.file, () => readBytesAt(this.openFd(), this.dataset(path)));
  }

  close(): void {
    if (this.fd !== null) fs.closeSync(this.fd);
    this.fd = null;
  }

  private dataset(path: string): H5Dataset {
    const ds = this.datasets.get(path);
    if (ds === undefined) throw new Error(`${this.file}: no dataset "${path}"`);
    return ds;
  }

  private openFd(): number {
    if (this.fd === null) throw new Error(`${this.file}: read after close()`);
    return this.fd;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Positioned reads and a little-endian cursor
// ---------------------------------------------------------------------------------------------------------------

/** HDF5's "undefined address": all bytes 0xff. */
export const UNDEFINED = -1;

/** Fills `dst` with the bytes at `pos` (the caller checked that they exist). */
type ReadAt = (dst: Uint8Array, pos: number) => void;

/**
 * The file, or its bytes in memory: positioned reads that fail with a truncation message naming what was
 * being read. The parser sees only this, so one parser serves files (Node) and byte arrays (browsers).
 */
class Source {
  /** The file size the superblock records (its end-of-file address); set once the superblock is read. */
  expectedSize = Number.NaN;
  /** Every metadata extent read while indexing, [begin, end): datasets' data must not overlap them. */
  readonly metadata: [number, number, string][] = [];

  constructor(
    readonly file: string,
    readonly size: number,
    private readonly readAt: ReadAt,
  ) {}

  read(pos: number, n: number, what: string, record = true): Uint8Array {
    if (!Number.isSafeInteger(pos) || !Number.isSafeInteger(n) || pos < 0 || n < 0 || pos + n > this.size) throw new PastEnd(`${what} needs bytes ${pos}..${pos + n}`);
    if (record && n > 0) this.metadata.push([pos, pos + n, what]);
    const buf = new Uint8Array(n);
    this.readAt(buf, pos);
    return buf;
  }
}

// Buffer-free byte helpers (the parser also runs in browsers). Buffer's utf8 keeps a BOM; so do we.
const utf8Decoder = new TextDecoder('utf-8', { ignoreBOM: true });
const utf8 = (b: Uint8Array): string => utf8Decoder.decode(b);
const latin1 = (b: Uint8Array): string => String.fromCharCode(...b);
const sameBytes = (a: Uint8Array, b: Uint8Array): boolean => a.length === b.length && a.every((x, i) => x === b[i]);

/** Something lies past the end of the file; `detail` names it and the bytes it needs. */
class PastEnd extends Error {
  constructor(readonly detail: string) {
    super(detail);
  }
}

/** The truncation error: names the file, both sizes and what is missing (at most 5 things, then a count). */
function truncated(src: Source, details: readonly string[]): Error {
  const expected = Number.isNaN(src.expectedSize) ? '' : `, the superblock says ${src.expectedSize}`;
  const shown = details.length === 0 ? ['the end of the file is missing'] : details.slice(0, 5);
  const more = details.length > 5 ? `; and ${details.length - 5} more` : '';
  return new Error(`${src.file}: truncated HDF5 file (${src.size} bytes${expected}): ${shown.join('; ')}${more}`);
}

/** Fill `dst` from `pos`, in reads of at most 1 GiB (readSync's length must fit in an int32). */
interface Sizes {
  /** Size of file addresses ("offsets") and of lengths, in bytes (superblock). */
  readonly offsets: number;
  readonly lengths: number;
  /** Absolute position that addresses are relative to: where the superblock is. */
  readonly base: number;
}

/** Reads little-endian fields from a buffer; `what` names the structure for errors. */
class Cursor {
  pos = 0;

  constructor(
    readonly buf: Uint8Array,
    readonly sizes: Sizes,
    readonly what: string,
    /** Absolute file position of buf[0]. */
    readonly filePos: number,
  ) {}

  get remaining(): number {
    return this.buf.length - this.pos;
  }

  fail(detail: string): Error {
    return new Error(`${this.what}: ${detail}`);
  }

  private take(n: number): number {
    if (this.pos + n > this.buf.length) {
      throw this.fail(`ends early: needs ${n} more bytes at byte ${this.pos} of ${this.buf.length}`);
    }
    const at = this.pos;
    this.pos += n;
    return at;
  }

  u8(): number {
    return this.buf[this.take(1)];
  }

  u16(): number {
    const at = this.take(2);
    return this.buf[at] | (this.buf[at + 1] << 8);
  }

  u32(): number {
    const at = this.take(4);
    return (this.buf[at] | (this.buf[at + 1] << 8) | (this.buf[at + 2] << 16)) + this.buf[at + 3] * 2 ** 24;
  }

  /** An unsigned little-endian integer of `n` bytes (n <= 8), exact as a number. */
  uint(n: number): number {
    const at = this.take(n);
    let v = 0;
    for (let i = n - 1; i >= 0; i--) v = v * 256 + this.buf[at + i];
    if (!Number.isSafeInteger(v)) throw this.fail(`${n}-byte integer at byte ${at} is too large: ${v}`);
    return v;
  }

  /** A file address, absolute, or UNDEFINED. */
  address(): number {
    const n = this.sizes.offsets;
    const at = this.take(n);
    if (this.buf.subarray(at, at + n).every((b) => b === 0xff)) return UNDEFINED;
    this.pos = at;
    return this.sizes.base + this.uint(n);
  }

  length(): number {
    return this.uint(this.sizes.lengths);
  }

  bytes(n: number): Uint8Array {
    const at = this.take(n);
    return this.buf.subarray(at, at + n);
  }

  skip(n: number): void {
    this.take(n);
  }

  /** A cursor over the next n bytes (and skip them here). */
  sub(n: number, what = this.what): Cursor {
    const at = this.take(n);
    return new Cursor(this.buf.subarray(at, at + n), this.sizes, what, this.filePos + at);
  }

  signature(expected: string): void {
    const got = latin1(this.bytes(expected.length));
    if (got !== expected) throw this.fail(`expected signature "${expected}", got ${JSON.stringify(got)}`);
  }
}

export const pad8 = (n: number): number => (n + 7) & ~7;

/** A NUL-terminated (or NUL-padded) string. */
const cString = (b: Uint8Array): string => {
  const end = b.indexOf(0);
  return utf8(b.subarray(0, end < 0 ? b.length : end));
};

// ---------------------------------------------------------------------------------------------------------------
// Superblock (spec II.A)
// ---------------------------------------------------------------------------------------------------------------

export const SIGNATURE = Uint8Array.from([0x89, 0x48, 0x44, 0x46, 0x0d, 0x0a, 0x1a, 0x0a]);

interface Superblock {
  readonly version: number;
  readonly sizes: Sizes;
  /** Absolute end-of-file position recorded by the writer. */
  readonly expectedSize: number;
  readonly rootAddress: number;
}

/** The signature is at 0 or, after a user block, at 512, 1024, 2048, ... */
function findSignature(src: Source): number {
  for (let pos = 0; pos + 8 <= src.size; pos = pos === 0 ? 512 : pos * 2) {
    if (sameBytes(src.read(pos, 8, 'signature'), SIGNATURE)) return pos;
  }
  throw new Error(`${src.file}: not an HDF5 file (no HDF5 signature at byte 0, 512, 1024, ...)`);
}

function readSuperblock(src: Source): Superblock {
  const at = findSignature(src);
  const what = `${src.file}: superblock`;
  const head = new Cursor(src.read(at, Math.min(src.size - at, 256), 'the superblock', false), { offsets: 8, lengths: 8, base: at }, what, at);
  head.skip(8);
  const version = head.u8();
  if (version === 0 || version === 1) {
    head.skip(4); // free-space, root symbol table entry and shared header versions, reserved
    const offsets = head.u8();
    const lengths = head.u8();
    head.skip(1 + 2 + 2 + 4); // reserved, group leaf/internal node K, consistency flags
    if (version === 1) head.skip(4); // indexed storage internal node K, reserved
    const c = withSizes(head, { offsets, lengths, base: at });
    c.address(); // base address: addresses are relative to the superblock's position (HDF5 does the same)
    c.address(); // free-space info
    const eof = c.address();
    c.address(); // driver info block
    const root = readSymbolTableEntry(c);
    src.metadata.push([at, at + c.pos, 'the superblock']);
    return { version, sizes: c.sizes, expectedSize: eof, rootAddress: root.address };
  }
  if (version === 2 || version === 3) {
    const offsets = head.u8();
    const lengths = head.u8();
    head.skip(1); // consistency flags
    const c = withSizes(head, { offsets, lengths, base: at });
    c.address(); // base address
    c.address(); // superblock extension (shared message tables etc.: shared messages are refused where met)
    const eof = c.address();
    const root = c.address();
    checkSum(src, at, c.buf.subarray(0, c.pos), 'the superblock');
    c.skip(4); // the checksum
    src.metadata.push([at, at + c.pos, 'the superblock']);
    return { version, sizes: c.sizes, expectedSize: eof, rootAddress: root };
  }
  throw head.fail(`unsupported superblock version ${version} (supported: 0-3)`);
}

function withSizes(c: Cursor, sizes: Sizes): Cursor {
  if (![2, 4, 8].includes(sizes.offsets) || ![2, 4, 8].includes(sizes.lengths)) {
    throw c.fail(`unsupported address/length sizes ${sizes.offsets}/${sizes.lengths}`);
  }
  const next = new Cursor(c.buf, sizes, c.what, c.filePos);
  next.pos = c.pos;
  return next;
}

/** Symbol table entry (spec III.C): link name offset, object header address, cache type, scratch pad. */
function readSymbolTableEntry(c: Cursor): { nameOffset: number; address: number } {
  const nameOffset = c.uint(c.sizes.offsets);
  const address = c.address();
  c.skip(4 + 4 + 16);
  return { nameOffset, address };
}

// ---------------------------------------------------------------------------------------------------------------
// Object headers (spec IV.A)
// ---------------------------------------------------------------------------------------------------------------

interface Message {
  readonly type: number;
  readonly flags: number;
  readonly data: Cursor;
}

export const MSG = {
  nil: 0x00,
  dataspace: 0x01,
  linkInfo: 0x02,
  datatype: 0x03,
  link: 0x06,
  external: 0x07,
  layout: 0x08,
  filters: 0x0b,
  attribute: 0x0c,
  continuation: 0x10,
  symbolTable: 0x11,
  attributeInfo: 0x15,
} as const;

/** Messages whose content we decode: if stored as shared (in another object or a heap) we refuse them. */
const DECODED = new Set<number>([MSG.dataspace, MSG.datatype, MSG.layout, MSG.filters, MSG.attribute, MSG.link]);
const SHARED_FLAG = 0x02;

/** All messages of the object header at `address`, following continuation blocks. */
function readObjectHeader(src: Source, sizes: Sizes, address: number, what: string): Message[] {
  if (address === UNDEFINED) throw new Error(`${src.file}: ${what} has an undefined address`);
  const first = src.read(address, 4, what);
  const messages =
    latin1(first) === 'OHDR' ? readHeaderV2(src, sizes, address, what) : readHeaderV1(src, sizes, address, what);
  for (const m of messages) {
    if (m.flags & SHARED_FLAG && DECODED.has(m.type)) {
      throw new Error(`${src.file}: ${what}: message type 0x${m.type.toString(16)} is shared (committed); not supported`);
    }
  }
  return messages;
}

/** Version 1: a 16-byte prefix, then 8-byte-aligned messages; continuation blocks hold bare messages. */
function readHeaderV1(src: Source, sizes: Sizes, address: number, what: string): Message[] {
  const prefix = new Cursor(src.read(address, 16, what), sizes, `${src.file}: ${what}`, address);
  const version = prefix.u8();
  if (version !== 1) throw prefix.fail(`unsupported object header version ${version} (supported: 1 and 2)`);
  prefix.skip(1);
  const count = prefix.u16();
  prefix.skip(4); // reference count
  const size = prefix.u32();
  const messages: Message[] = [];
  const blocks: [number, number][] = [[address + 16, size]];
  const seen = new Set<number>();
  for (let b = 0; b < blocks.length && messages.length < count; b++) {
    const [pos, len] = blocks[b];
    if (seen.has(pos)) throw prefix.fail(`continuation loop at byte ${pos}`);
    seen.add(pos);
    const c = new Cursor(src.read(pos, len, what), sizes, `${src.file}: ${what}`, pos);
    while (c.remaining >= 8 && messages.length < count) {
      const type = c.u16();
      const msgSize = c.u16();
      const flags = c.u8();
      c.skip(3);
      const data = c.sub(msgSize);
      messages.push({ type, flags, data });
      if (type === MSG.continuation) blocks.push([data.address(), data.length()]);
    }
  }
  return messages;
}

/**
 * HDF5's metadata checksum (H5_checksum_metadata): Bob Jenkins' lookup3 `hashlittle` over the bytes, initial
 * value 0, as a uint32. Version 2 object headers, their continuation blocks and superblocks 2-3 end with one.
 */
export function lookup3(k: Uint8Array): number {
  const rot = (x: number, n: number): number => (x << n) | (x >>> (32 - n));
  let a = (0xdeadbeef + k.length) | 0;
  let b = a;
  let c = a;
  let i = 0;
  let n = k.length;
  const word = (at: number): number => k[at] | (k[at + 1] << 8) | (k[at + 2] << 16) | (k[at + 3] << 24);
  while (n > 12) {
    a = (a + word(i)) | 0;
    b = (b + word(i + 4)) | 0;
    c = (c + word(i + 8)) | 0;
    // mix
    a = (a - c) | 0; a ^= rot(c, 4); c = (c + b) | 0;
    b = (b - a) | 0; b ^= rot(a, 6); a = (a + c) | 0;
    c = (c - b) | 0; c ^= rot(b, 8); b = (b + a) | 0;
    a = (a - c) | 0; a ^= rot(c, 16); c = (c + b) | 0;
    b = (b - a) | 0; b ^= rot(a, 19); a = (a + c) | 0;
    c = (c - b) | 0; c ^= rot(b, 4); b = (b + a) | 0;
    n -= 12;
    i += 12;
  }
  if (n === 0) return c >>> 0;
  // the last 1..12 bytes, zero-padded, into a, b, c
  const tail = new Uint8Array(12);
  tail.set(k.subarray(i, i + n));
  const t = (at: number): number => tail[at] | (tail[at + 1] << 8) | (tail[at + 2] << 16) | (tail[at + 3] << 24);
  a = (a + t(0)) | 0;
  b = (b + t(4)) | 0;
  c = (c + t(8)) | 0;
  // final
  c ^= b; c = (c - rot(b, 14)) | 0;
  a ^= c; a = (a - rot(c, 11)) | 0;
  b ^= a; b = (b - rot(a, 25)) | 0;
  c ^= b; c = (c - rot(b, 16)) | 0;
  a ^= c; a = (a - rot(c, 4)) | 0;
  b ^= a; b = (b - rot(a, 14)) | 0;
  c ^= b; c = (c - rot(b, 24)) | 0;
  return c >>> 0;
}

/** Checks the uint32 checksum stored after `covered` (the bytes it covers). */
function checkSum(src: Source, at: number, covered: Uint8Array, what: string): void {
  const stored = src.read(at + covered.length, 4, what);
  const want = (stored[0] | (stored[1] << 8) | (stored[2] << 16) | (stored[3] << 24)) >>> 0;
  const got = lookup3(covered);
  if (got !== want) throw new FormatError(src.file, what, `${src.file}: ${what} at byte ${at}: checksum ${want.toString(16).padStart(8, '0')} stored, the bytes give ${got.toString(16).padStart(8, '0')}`);
}

/** Version 2: "OHDR", flags, optional times and attribute phase limits, chunk size, messages, checksum. */
function readHeaderV2(src: Source, sizes: Sizes, address: number, what: string): Message[] {
  const head = new Cursor(src.read(address, 6, what), sizes, `${src.file}: ${what}`, address);
  head.signature('OHDR');
  const version = head.u8();
  if (version !== 2) throw head.fail(`unsupported object header version ${version}`);
  const flags = head.u8();
  const chunkSizeBytes = 1 << (flags & 0x03);
  const optional = (flags & 0x20 ? 16 : 0) + (flags & 0x10 ? 4 : 0);
  const rest = new Cursor(src.read(address + 6, optional + chunkSizeBytes, what), sizes, head.what, address + 6);
  rest.skip(optional);
  const chunk0 = rest.uint(chunkSizeBytes);
  const prefix = 6 + optional + chunkSizeBytes;
  if (chunk0 > src.size) throw head.fail(`chunk 0 of ${chunk0} bytes is larger than the file`);
  // the checksum covers the prefix and chunk 0 and follows them; chunk 0's messages are read from the same bytes
  const first = src.read(address, prefix + chunk0, what);
  checkSum(src, address, first, what);
  const trackOrder = (flags & 0x04) !== 0;
  const messages: Message[] = [];
  const blocks: [number, number][] = [[address + prefix, chunk0]];
  const seen = new Set<number>();
  for (let b = 0; b < blocks.length; b++) {
    const [pos, len] = blocks[b];
    if (seen.has(pos)) throw head.fail(`continuation loop at byte ${pos}`);
    seen.add(pos);
    const bytes = b === 0 ? first.subarray(prefix) : src.read(pos, len, what);
    const c = new Cursor(bytes, sizes, head.what, pos);
    if (b > 0) c.signature('OCHK');
    if (b > 0 && len >= 8) checkSum(src, pos, bytes.subarray(0, len - 4), `${what} (continuation block)`);
    const end = b > 0 ? len - 4 : len; // continuation blocks end with a checksum; chunk 0's follows its size
    const headerSize = trackOrder ? 6 : 4;
    while (end - c.pos >= headerSize) {
      const type = c.u8();
      const msgSize = c.u16();
      const msgFlags = c.u8();
      if (trackOrder) c.skip(2);
      const data = c.sub(msgSize);
      messages.push({ type, flags: msgFlags, data });
      if (type === MSG.continuation) blocks.push([data.address(), data.length()]);
    }
  }
  return messages;
}

// ---------------------------------------------------------------------------------------------------------------
// Message decoders
// ---------------------------------------------------------------------------------------------------------------

/** Dataspace (spec IV.A.2.b): `null` for a null dataspace (no elements), `[]` for a scalar. */
function decodeDataspace(c: Cursor): number[] | null {
  const version = c.u8();
  const rank = c.u8();
  const flags = c.u8();
  if (version === 1) {
    c.skip(5);
  } else if (version === 2) {
    const type = c.u8();
    if (type === 2) return null;
  } else {
    throw c.fail(`unsupported dataspace version ${version}`);
  }
  const shape: number[] = [];
  for (let i = 0; i < rank; i++) shape.push(c.length());
  if (flags & 0x01) for (let i = 0; i < rank; i++) c.length(); // maximum sizes
  return shape;
}

/** An HDF5 datatype, as far as we need it. */
type H5Type =
  | { readonly kind: 'int'; readonly size: number; readonly signed: boolean; readonly le: boolean }
  | { readonly kind: 'float'; readonly dtype: FloatDType; readonly le: boolean }
  | { readonly kind: 'string'; readonly size: number; readonly padding: number }
  | { readonly kind: 'vlen-string' }
  | { readonly kind: 'opaque'; readonly size: number; readonly tag: string }
  | { readonly kind: 'other'; readonly size: number; readonly description: string };

const CLASS_NAMES = ['fixed-point', 'floating-point', 'time', 'string', 'bitfield', 'opaque', 'compound', 'reference', 'enumerated', 'variable-length', 'array'];


/** The IEEE layouts we accept: [dtype, size, exponent bits, mantissa bits, bias]. bfloat16 is float32's top half. */
const FLOAT_LAYOUTS: readonly (readonly [FloatDType, number, number, number, number])[] = [
  ['float16', 2, 5, 10, 15],
  ['bfloat16', 2, 8, 7, 127],
  ['float32', 4, 8, 23, 127],
  ['float64', 8, 11, 52, 1023],
];

/** Datatype (spec IV.A.2.d). */
function decodeDatatype(c: Cursor): H5Type {
  const classAndVersion = c.u8();
  const cls = classAndVersion & 0x0f;
  const bits0 = c.u8();
  const bits1 = c.u8();
  c.u8();
  const size = c.u32();
  switch (cls) {
    case 0: {
      const bitOffset = c.u16();
      const precision = c.u16();
      if (bitOffset !== 0 || precision !== size * 8 || ![1, 2, 4, 8].includes(size)) {
        return { kind: 'other', size, description: `${size}-byte integer with ${precision} bits at offset ${bitOffset}` };
      }
      return { kind: 'int', size, signed: (bits0 & 0x08) !== 0, le: (bits0 & 0x01) === 0 };
    }
    case 1: {
      const bitOffset = c.u16();
      const precision = c.u16();
      const expLocation = c.u8();
      const expSize = c.u8();
      const mantLocation = c.u8();
      const mantSize = c.u8();
      const bias = c.u32();
      const vax = (bits0 & 0x40) !== 0;
      // IEEE: no padding bits set (bits 1-3) and an implied leading mantissa bit (normalization 2, bits 4-5);
      // anything else is another number format, which reading as IEEE would get wrong.
      const ieee = (bits0 & 0x0e) === 0 && ((bits0 >> 4) & 0x03) === 2;
      const layout = FLOAT_LAYOUTS.find(
        ([, s, e, m, b]) => s === size && e === expSize && m === mantSize && b === bias && mantLocation === 0 && expLocation === m,
      );
      if (layout === undefined || vax || !ieee || bitOffset !== 0 || precision !== size * 8 || bits1 !== size * 8 - 1) {
        return { kind: 'other', size, description: `${size}-byte float (exponent ${expSize} bits, mantissa ${mantSize} bits, bias ${bias}${vax ? ', VAX order' : ''}${ieee ? '' : `, not IEEE: class bits 0x${bits0.toString(16)}`})` };
      }
      return { kind: 'float', dtype: layout[0], le: (bits0 & 0x01) === 0 };
    }
    case 3:
      return { kind: 'string', size, padding: bits0 & 0x0f };
    case 5:
      return { kind: 'opaque', size, tag: cString(c.bytes(bits0)) };
    case 9:
      // Variable-length: type 1 = string; a sequence of anything else is not an attribute Keras writes.
      if ((bits0 & 0x0f) === 1) return { kind: 'vlen-string' };
      return { kind: 'other', size, description: 'variable-length sequence' };
    default:
      return { kind: 'other', size, description: CLASS_NAMES[cls] ?? `datatype class ${cls}` };
  }
}

const describeType = (t: H5Type): string => {
  switch (t.kind) {
    case 'int':
      return `${t.signed ? '' : 'un'}signed ${t.size * 8}-bit integer`;
    case 'float':
      return t.dtype;
    case 'string':
      return `${t.size}-byte string`;
    case 'vlen-string':
      return 'variable-length string';
    case 'opaque':
      return `${t.size}-byte opaque (tag ${JSON.stringify(t.tag)})`;
    case 'other':
      return t.description;
  }
};

type Layout =
  | { readonly kind: 'contiguous'; readonly address: number; readonly size: number | null }
  | { readonly kind: 'compact'; readonly position: number; readonly size: number }
  | { readonly kind: 'chunked' }
  | { readonly kind: 'virtual' };

/** Data layout (spec IV.A.2.i). Versions 1-2 give no size for contiguous data (it follows from the shape). */
function decodeLayout(c: Cursor): Layout {
  const version = c.u8();
  if (version === 1 || version === 2) {
    const rank = c.u8();
    const cls = c.u8();
    c.skip(5);
    const address = cls === 0 ? UNDEFINED : c.address();
    c.skip(rank * 4);
    if (cls === 1) return { kind: 'contiguous', address, size: null };
    if (cls === 2) return { kind: 'chunked' };
    const size = c.u32();
    if (size > c.remaining) throw c.fail(`compact data of ${size} bytes runs past its message (${c.remaining} bytes left)`);
    return { kind: 'compact', position: c.filePos + c.pos, size };
  }
  if (version === 3 || version === 4) {
    const cls = c.u8();
    if (cls === 0) {
      const size = c.u16();
      if (size > c.remaining) throw c.fail(`compact data of ${size} bytes runs past its message (${c.remaining} bytes left)`);
      return { kind: 'compact', position: c.filePos + c.pos, size };
    }
    if (cls === 1) return { kind: 'contiguous', address: c.address(), size: c.length() };
    if (cls === 2) return { kind: 'chunked' };
    if (cls === 3) return { kind: 'virtual' };
    throw c.fail(`unknown layout class ${cls}`);
  }
  throw c.fail(`unsupported data layout version ${version}`);
}

/** Link (spec IV.A.2.g): a name and, for hard links, the object's address. */
function decodeLink(c: Cursor): { name: string; address: number } {
  const version = c.u8();
  if (version !== 1) throw c.fail(`unsupported link message version ${version}`);
  const flags = c.u8();
  const type = flags & 0x08 ? c.u8() : 0;
  if (flags & 0x04) c.skip(8); // creation order
  if (flags & 0x10) c.skip(1); // name character set
  const nameLength = c.uint(1 << (flags & 0x03));
  const name = utf8(c.bytes(nameLength));
  if (type !== 0) {
    throw c.fail(`link "${name}" is a ${type === 1 ? 'soft' : type === 64 ? 'external' : `type ${type}`} link; only hard links are supported`);
  }
  return { name, address: c.address() };
}

/** Link info (spec IV.A.2.c): a defined fractal heap address means the links are in dense storage. */
function linksAreDense(c: Cursor): boolean {
  c.u8(); // version
  const flags = c.u8();
  if (flags & 0x01) c.skip(8); // maximum creation index
  return c.address() !== UNDEFINED;
}

/** Attribute info (spec IV.A.2.v): same question for attributes. */
function attributesAreDense(c: Cursor): boolean {
  c.u8(); // version
  const flags = c.u8();
  if (flags & 0x01) c.skip(2); // maximum creation index
  return c.address() !== UNDEFINED;
}

// ---------------------------------------------------------------------------------------------------------------
// Attributes (spec IV.A.2.m) and the global heap (spec III.E) that holds variable-length strings
// ---------------------------------------------------------------------------------------------------------------

class GlobalHeap {
  private readonly collections = new Map<number, Map<number, Uint8Array>>();

  constructor(
    private readonly src: Source,
    private readonly sizes: Sizes,
  ) {}

  object(address: number, index: number, what: string): Uint8Array {
    let objects = this.collections.get(address);
    if (objects === undefined) {
      objects = this.readCollection(address, what);
      this.collections.set(address, objects);
    }
    const obj = objects.get(index);
    if (obj === undefined) throw new Error(`${this.src.file}: ${what}: no object ${index} in the global heap at byte ${address}`);
    return obj;
  }

  /** "GCOL", version, reserved, collection size; then objects (index, refcount, reserved, size, data padded to 8). */
  private readCollection(address: number, what: string): Map<number, Uint8Array> {
    const label = `global heap collection of ${what}`;
    const head = new Cursor(this.src.read(address, 8 + this.sizes.lengths, label), this.sizes, `${this.src.file}: ${label}`, address);
    head.signature('GCOL');
    head.skip(4);
    const size = head.length();
    const c = new Cursor(this.src.read(address, size, label), this.sizes, head.what, address);
    c.skip(8 + this.sizes.lengths);
    const objects = new Map<number, Uint8Array>();
    while (c.remaining >= 8 + this.sizes.lengths) {
      const index = c.u16();
      if (index === 0) break; // free space: the rest of the collection
      c.skip(2 + 4);
      const objSize = c.length();
      objects.set(index, c.bytes(objSize));
      c.skip(pad8(objSize) - objSize);
    }
    return objects;
  }
}

function decodeAttribute(c: Cursor, heap: GlobalHeap): [string, H5AttrValue] {
  const version = c.u8();
  if (version < 1 || version > 3) throw c.fail(`unsupported attribute message version ${version}`);
  const flags = c.u8();
  if (flags & 0x03) throw c.fail('attribute with a shared datatype or dataspace; not supported');
  const nameSize = c.u16();
  const typeSize = c.u16();
  const spaceSize = c.u16();
  if (version === 3) c.skip(1); // name character set
  const padded = (n: number): number => (version === 1 ? pad8(n) : n);
  const name = cString(c.bytes(padded(nameSize)).subarray(0, nameSize));
  const what = `${c.what}: attribute "${name}"`;
  const type = decodeDatatype(c.sub(padded(typeSize), what));
  const shape = decodeDataspace(c.sub(padded(spaceSize), what));
  const count = shape === null ? 0 : shape.reduce((a, b) => a * b, 1);
  // Each element takes at least one byte of the message (a 0-byte string type takes none: bounded apart).
  if (count > Math.max(c.remaining, 1 << 16)) throw c.fail(`${count} elements cannot fit the ${c.remaining} bytes left in the message`);
  const values = decodeElements(type, count, new Cursor(c.bytes(c.remaining), c.sizes, what, 0), heap);
  return [name, shape !== null && shape.length === 0 ? values[0] : (values as readonly string[] | readonly number[])];
}

function decodeElements(type: H5Type, count: number, c: Cursor, heap: GlobalHeap): (string | number)[] {
  const out: (string | number)[] = [];
  for (let i = 0; i < count; i++) out.push(decodeElement(type, c, heap));
  return out;
}

function decodeElement(type: H5Type, c: Cursor, heap: GlobalHeap): string | number {
  switch (type.kind) {
    case 'int':
      return decodeInt(c.bytes(type.size), type.signed, type.le, c);
    case 'float': {
      const b = c.bytes(DTYPE_BYTES[type.dtype]);
      const le = type.le ? b : Uint8Array.from(b).reverse();
      return widenScalar(type.dtype, le);
    }
    case 'string': {
      const b = c.bytes(type.size);
      const s = cString(b);
      return type.padding === 2 ? s.replace(/ +$/, '') : s;
    }
    case 'vlen-string': {
      const length = c.u32();
      const address = c.address();
      const index = c.u32();
      // an empty string may still name a heap object (our writer's do): read it, so that its collection
      // counts as referenced (checkUnreferenced)
      if (length === 0 && (address === 0 || address === UNDEFINED)) return '';
      return utf8(heap.object(address, index, c.what).subarray(0, length));
    }
    default:
      throw c.fail(`unsupported attribute type: ${describeType(type)}`);
  }
}

function decodeInt(b: Uint8Array, signed: boolean, le: boolean, c: Cursor): number {
  const bytes = le ? b : Uint8Array.from(b).reverse();
  let v = 0n;
  for (let i = bytes.length - 1; i >= 0; i--) v = (v << 8n) | BigInt(bytes[i]);
  if (signed && bytes[bytes.length - 1] & 0x80) v -= 1n << BigInt(8 * bytes.length);
  const n = Number(v);
  if (!Number.isSafeInteger(n)) throw c.fail(`integer ${v} does not fit a JavaScript number exactly`);
  return n;
}

/** One little-endian float element as a number. */
function widenScalar(dtype: FloatDType, b: Uint8Array): number {
  const view = new DataView(b.buffer, b.byteOffset, b.byteLength);
  switch (dtype) {
    case 'float16':
      return halfToNumber(view.getUint16(0, true));
    case 'bfloat16':
      return bfloat16ToNumber(view.getUint16(0, true));
    case 'float32':
      return view.getFloat32(0, true);
    case 'float64':
      return view.getFloat64(0, true);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Groups: symbol tables (old style) and link messages (new style)
// ---------------------------------------------------------------------------------------------------------------

/** Old-style group members: walk the v1 B-tree (spec III.A.1) to its symbol nodes (III.B); names in the local heap (III.D). */
function readSymbolTable(src: Source, sizes: Sizes, btree: number, localHeap: number, what: string): [string, number][] {
  const names = readLocalHeap(src, sizes, localHeap, `local heap of ${what}`);
  const entries: [string, number][] = [];
  const seen = new Set<number>();
  const visit = (node: number, depth: number): void => {
    if (depth > 64) throw new Error(`${src.file}: B-tree of ${what} is deeper than 64 levels`);
    // A node reached twice would be read again and again (a crafted tree can fan out exponentially).
    if (seen.has(node)) throw new FormatError(src.file, 'B-tree', `${src.file}: B-tree of ${what}: node at byte ${node} is reached twice`);
    seen.add(node);
    const label = `B-tree node of ${what}`;
    const headSize = 8 + 2 * sizes.offsets;
    const head = new Cursor(src.read(node, headSize, label), sizes, `${src.file}: ${label}`, node);
    head.signature('TREE');
    const type = head.u8();
    if (type !== 0) throw head.fail(`expected a group B-tree node (type 0), got type ${type}`);
    const level = head.u8();
    const used = head.u16();
    const bodySize = (used + 1) * sizes.lengths + used * sizes.offsets;
    const body = new Cursor(src.read(node + headSize, bodySize, label), sizes, head.what, node + headSize);
    body.length(); // key 0
    for (let i = 0; i < used; i++) {
      const child = body.address();
      body.length(); // key i+1
      if (level > 0) visit(child, depth + 1);
      else entries.push(...readSymbolNode(src, sizes, child, names, what));
    }
  };
  visit(btree, 0);
  return entries;
}

function readSymbolNode(src: Source, sizes: Sizes, address: number, names: Uint8Array, what: string): [string, number][] {
  const label = `symbol table node of ${what}`;
  const head = new Cursor(src.read(address, 8, label), sizes, `${src.file}: ${label}`, address);
  head.signature('SNOD');
  head.skip(2); // version, reserved
  const count = head.u16();
  const entrySize = 2 * sizes.offsets + 24;
  const c = new Cursor(src.read(address + 8, count * entrySize, label), sizes, head.what, address + 8);
  const out: [string, number][] = [];
  for (let i = 0; i < count; i++) {
    const entry = readSymbolTableEntry(c);
    if (entry.nameOffset >= names.length) throw c.fail(`link name offset ${entry.nameOffset} is outside the local heap`);
    out.push([cString(names.subarray(entry.nameOffset)), entry.address]);
  }
  return out;
}

/** "HEAP", version, reserved, data segment size, free list offset, data segment address. */
function readLocalHeap(src: Source, sizes: Sizes, address: number, label: string): Uint8Array {
  const head = new Cursor(src.read(address, 8 + 2 * sizes.lengths + sizes.offsets, label), sizes, `${src.file}: ${label}`, address);
  head.signature('HEAP');
  head.skip(4);
  const size = head.length();
  head.length(); // free list head
  const data = head.address();
  return src.read(data, size, label);
}

// ---------------------------------------------------------------------------------------------------------------
// The walk: every object reachable from the root, by path
// ---------------------------------------------------------------------------------------------------------------

export const showPath = (path: string): string => (path === '' ? '/' : path);
export const joinPath = (parent: string, name: string): string => (parent === '' ? name : `${parent}/${name}`);

/** Most objects (paths) an index walks: a 27B Keras preset has a few thousand. */
const MAX_OBJECTS = 1 << 17;

function indexFd(file: string, fd: number): H5Index {
  return indexSource(new Source(file, fs.fstatSync(fd).size, (dst, pos) => readFully(fd, file, dst, pos)));
}

function indexSource(src: Source): H5Index {
  const file = src.file;
  const sb = readSuperblock(src);
  src.expectedSize = sb.expectedSize;
  const heap = new GlobalHeap(src, sb.sizes);
  const datasets = new Map<string, H5Dataset>();
  const groupAttrs = new Map<string, H5Attrs>();

  // In a truncated file, go on past what is missing, to name every dataset and group that is lost.
  const isTruncated = src.size < sb.expectedSize;
  const missing: string[] = [];
  const visit = (address: number, path: string, ancestors: readonly number[]): void => {
    try {
      visitObject(address, path, ancestors);
    } catch (e) {
      if (!(e instanceof PastEnd)) throw e;
      if (!isTruncated) throw new Error(`${file}: corrupt HDF5 file: ${e.detail}, past its end (${src.size} bytes)`);
      missing.push(e.detail);
    }
  };
  // HDF5 lets one object have several names (h5py hard links), so an object can be reached more than once;
  // crafted links can make the number of paths exponential, so the walk has a budget.
  let visits = 0;
  const visitObject = (address: number, path: string, ancestors: readonly number[]): void => {
    const what = `object header of "${showPath(path)}"`;
    if (++visits > MAX_OBJECTS) throw new FormatError(file, path, `${file}: more than ${MAX_OBJECTS} objects (or paths to them); not a weights file`);
    const messages = readObjectHeader(src, sb.sizes, address, what);
    const attrs = readAttributes(src, messages, heap, path);
    const layout = messages.find((m) => m.type === MSG.layout);
    if (layout !== undefined) {
      const ds = describeDataset(src, messages, layout, attrs, path);
      objectOf.set(ds, address);
      datasets.set(path, ds);
      return;
    }
    const children = groupMembers(src, sb.sizes, messages, path);
    if (children === null) return; // a committed datatype: neither group nor dataset
    if (ancestors.includes(address)) throw new Error(`${file}: group "${showPath(path)}" contains itself (a hard-link cycle)`);
    groupAttrs.set(path, attrs);
    children.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    // Two members with one name: one would silently hide the other.
    for (let i = 1; i < children.length; i++) {
      if (children[i][0] === children[i - 1][0]) {
        throw new FormatError(file, joinPath(path, children[i][0]), `${file}: group "${showPath(path)}" has two members named ${JSON.stringify(children[i][0])}`);
      }
    }
    for (const [name, child] of children) visit(child, joinPath(path, name), [...ancestors, address]);
  };
  visit(sb.rootAddress, '', []);

  if (isTruncated) throw truncated(src, missing);
  // HDF5 writers end the file at its end-of-file address: bytes past it were inserted or appended (a shift
  // of everything after an insertion would otherwise load as other values).
  if (src.size > sb.expectedSize) {
    throw new FormatError(file, 'superblock', `${file}: superblock: the end-of-file address is ${sb.expectedSize}, but the file has ${src.size} bytes`);
  }
  checkExtents(src, datasets);
  return { file, size: src.size, superblockVersion: sb.version, datasets, groupAttrs };
}

/**
 * Every dataset's data must lie in the file apart from the metadata and from every other dataset: a crafted
 * data address pointing into another dataset or into an object header would otherwise load as weights.
 * (Compact data lives inside its own object header, where decodeLayout has checked it.)
 */
function checkExtents(src: Source, datasets: ReadonlyMap<string, H5Dataset>): void {
  const data = [...datasets.values()].filter((d) => d.byteLength > 0 && !compactData.has(d)).sort((a, b) => a.offset - b.offset);
  const fail = (d: H5Dataset, other: string, b: number, e: number): never => {
    throw new FormatError(src.file, d.path, `${src.file}: dataset "${d.path}" (bytes ${d.offset}..${d.offset + d.byteLength}) overlaps ${other} (bytes ${b}..${e})`);
  };
  // One object under two names is one extent; distinct objects must not overlap.
  const extents = new Map<number, H5Dataset>();
  for (const d of data) if (!extents.has(objectOf.get(d) ?? -1)) extents.set(objectOf.get(d) ?? -1, d);
  const distinct = [...extents.values()].sort((a, b) => a.offset - b.offset);
  for (let i = 1; i < distinct.length; i++) {
    const [p, d] = [distinct[i - 1], distinct[i]];
    if (d.offset < p.offset + p.byteLength) fail(d, `dataset "${p.path}"`, p.offset, p.offset + p.byteLength);
  }
  // The metadata as sorted extents; each dataset is checked against the ones that start before it ends.
  const meta = [...src.metadata].sort((a, b) => a[0] - b[0]);
  const maxLength = meta.reduce((m, [b, e]) => Math.max(m, e - b), 0);
  for (const d of distinct) {
    const end = d.offset + d.byteLength;
    // first extent that could reach d: begin >= d.offset - maxLength
    let lo = 0;
    let hi = meta.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (meta[mid][0] < d.offset - maxLength) lo = mid + 1;
      else hi = mid;
    }
    for (let i = lo; i < meta.length && meta[i][0] < end; i++) {
      if (meta[i][1] > d.offset) fail(d, `the metadata (${meta[i][2]})`, meta[i][0], meta[i][1]);
    }
  }
  checkUnreferenced(src, distinct);
}

/**
 * The HDF5 library leaves no stray bytes: below the end-of-file address every byte is metadata, a dataset's
 * data, or space it allocated and never wrote (unused parts of metadata blocks, zero-filled). So bytes that
 * nothing references must be zero. Nonzero ones are data that lost its reference: a data address changed to
 * point into free space would otherwise load zeros silently while the weights it named sit unreferenced
 * (found by the fuzzer: an address flip in a .lora.h5 that every other check passes).
 */
function checkUnreferenced(src: Source, data: readonly H5Dataset[]): void {
  const spans = [...src.metadata.map(([b, e]) => [b, e] as const), ...data.map((d) => [d.offset, d.offset + d.byteLength] as const)].sort((a, b) => a[0] - b[0]);
  const zero = (from: number, to: number): void => {
    for (let pos = from; pos < to; pos += 1 << 20) {
      const bytes = src.read(pos, Math.min(1 << 20, to - pos), 'unreferenced bytes', false);
      const i = bytes.findIndex((b) => b !== 0);
      if (i >= 0) {
        throw new FormatError(src.file, 'layout', `${src.file}: bytes ${from}..${to} are referenced by no object, yet byte ${pos + i} is ${bytes[i]}, not 0: a data address was changed, or an in-place edit left freed space (h5repack rewrites such a file)`);
      }
    }
  };
  let at = 0;
  for (const [b, e] of spans) {
    if (b > at) zero(at, b);
    at = Math.max(at, e);
  }
  if (at < src.size) zero(at, src.size);
}

/** The object header address of each dataset. */
const objectOf = new WeakMap<H5Dataset, number>();

/** Datasets whose data is compact (inside the object header). */
const compactData = new WeakSet<H5Dataset>();

function readAttributes(src: Source, messages: readonly Message[], heap: GlobalHeap, path: string): H5Attrs {
  const info = messages.find((m) => m.type === MSG.attributeInfo);
  if (info !== undefined && attributesAreDense(info.data)) {
    throw new Error(`${src.file}: "${showPath(path)}" keeps its attributes in dense storage (a fractal heap); not supported`);
  }
  const decoded = messages.filter((m) => m.type === MSG.attribute).map((m) => decodeAttribute(m.data, heap));
  decoded.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)); // name order, as h5py lists them
  return Object.fromEntries(decoded);
}

/** The members of a group as [name, address], or null when the object is not a group. */
function groupMembers(src: Source, sizes: Sizes, messages: readonly Message[], path: string): [string, number][] | null {
  const what = `group "${showPath(path)}"`;
  const symbolTable = messages.find((m) => m.type === MSG.symbolTable);
  if (symbolTable !== undefined) {
    const btree = symbolTable.data.address();
    const localHeap = symbolTable.data.address();
    return readSymbolTable(src, sizes, btree, localHeap, what);
  }
  const info = messages.find((m) => m.type === MSG.linkInfo);
  if (info !== undefined && linksAreDense(info.data)) {
    throw new Error(`${src.file}: ${what} keeps its links in dense storage (a fractal heap); not supported`);
  }
  const links = messages.filter((m) => m.type === MSG.link).map((m) => decodeLink(m.data));
  if (info === undefined && links.length === 0) return null;
  return links.map(({ name, address }) => [name, address]);
}

/** Where a dataset's bytes are, with every check that can be made without reading them. */
function describeDataset(src: Source, messages: readonly Message[], layoutMsg: Message, attrs: H5Attrs, path: string): H5Dataset {
  const where = `${src.file}: dataset "${path}"`;
  const need = (type: number, name: string): Message => {
    const m = messages.find((x) => x.type === type);
    if (m === undefined) throw new Error(`${where}: no ${name} message`);
    return m;
  };
  if (messages.some((m) => m.type === MSG.external)) throw new Error(`${where}: data in external files; not supported`);
  const shape = decodeDataspace(need(MSG.dataspace, 'dataspace').data) ?? [0]; // a null dataspace: no elements
  const type = decodeDatatype(need(MSG.datatype, 'datatype').data);
  const { dtype, littleEndian } = datasetDType(type, attrs, where);
  const count = shape.reduce((a, b) => a * b, 1);
  const byteLength = count * DTYPE_BYTES[dtype];
  const limit = Math.max(src.size, Number.isNaN(src.expectedSize) ? 0 : src.expectedSize);
  if (!Number.isSafeInteger(byteLength) || byteLength > limit) {
    throw new FormatError(src.file, path, `${where}: shape [${shape.join(', ')}] of ${dtype} needs ${byteLength} bytes, more than the file's ${limit}`);
  }
  const layout = decodeLayout(layoutMsg.data);
  if (layout.kind === 'chunked' || layout.kind === 'virtual') {
    const filtered = messages.some((m) => m.type === MSG.filters) ? ' with filters (compression)' : '';
    throw new Error(`${where}: ${layout.kind} layout${filtered} is not supported; re-save it contiguous (h5py's default, or \`h5repack -l CONTI\`)`);
  }
  const base = { file: src.file, path, shape, dtype, littleEndian, byteLength, attrs };
  if (layout.kind === 'compact') {
    if (layout.size !== byteLength) throw new Error(`${where}: compact data is ${layout.size} bytes, the shape and type need ${byteLength}`);
    const ds: H5Dataset = { ...base, offset: layout.position };
    compactData.add(ds);
    return ds;
  }
  if (layout.size !== null && layout.size !== byteLength) {
    throw new Error(`${where}: stored size is ${layout.size} bytes, the shape and type need ${byteLength}`);
  }
  if (layout.address === UNDEFINED) {
    if (byteLength === 0) return { ...base, offset: 0 };
    throw new Error(`${where}: no storage allocated (the dataset was never written)`);
  }
  if (layout.address + byteLength > src.size) {
    throw new PastEnd(`dataset "${path}" needs bytes ${layout.address}..${layout.address + byteLength} (${byteLength} bytes)`);
  }
  return { ...base, offset: layout.address };
}

/**
 * bfloat16 stored as OPAQUE: Keras writes a bfloat16 variable as an ml_dtypes array, which h5py maps to an untagged
 * 2-byte OPAQUE type, and marks newer files with the attribute `dtype="bfloat16"` (keras saving_lib.py
 * `H5IOStore.__setitem__`). Older Keras (PR keras-team/keras#19091) wrote no attribute and read any 2-byte void
 * as bfloat16. We do the same, and refuse an OPAQUE whose `dtype` attribute says something else.
 */
const BFLOAT16_OPAQUE = { size: 2, tag: '' } as const;

function datasetDType(type: H5Type, attrs: H5Attrs, where: string): { dtype: H5DType; littleEndian: boolean } {
  const marked = attrs['dtype'];
  const result = ((): { dtype: H5DType; littleEndian: boolean } => {
    switch (type.kind) {
      case 'int': {
        const dtype = `${type.signed ? '' : 'u'}int${type.size * 8}` as H5DType;
        return { dtype, littleEndian: type.le };
      }
      case 'float':
        return { dtype: type.dtype, littleEndian: type.le };
      case 'opaque':
        if (type.size === BFLOAT16_OPAQUE.size && type.tag === BFLOAT16_OPAQUE.tag && (marked === undefined || marked === 'bfloat16')) {
          return { dtype: 'bfloat16', littleEndian: true };
        }
        throw new Error(`${where}: ${describeType(type)} data${marked === undefined ? '' : ` marked dtype=${JSON.stringify(marked)}`} is not a known numeric type`);
      default:
        throw new Error(`${where}: unsupported datatype: ${describeType(type)}`);
    }
  })();
  if (marked === 'bfloat16' && result.dtype !== 'bfloat16') {
    throw new Error(`${where}: marked dtype="bfloat16" but stored as ${describeType(type)}`);
  }
  return result;
}

// ---------------------------------------------------------------------------------------------------------------
// Reading data
// ---------------------------------------------------------------------------------------------------------------


/** Bytes per read when converting: bounds the scratch memory. */

function withFd<T>(file: string, f: (fd: number) => T): T {
  const fd = fs.openSync(file, 'r');
  try {
    return f(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/** The file may have changed since it was indexed: check the bytes are still there. */
function checkExtent(fd: number, ds: H5Dataset): void {
  const size = fs.fstatSync(fd).size;
  if (ds.offset + ds.byteLength > size) {
    throw new Error(
      `${ds.file}: truncated HDF5 file (${size} bytes): dataset "${ds.path}" needs bytes ${ds.offset}..${ds.offset + ds.byteLength} (${ds.byteLength} bytes)`,
    );
  }
}

function readBytesAt(fd: number, ds: H5Dataset): Uint8Array {
  checkExtent(fd, ds);
  const out = new Uint8Array(ds.byteLength);
  readFully(fd, ds.file, out, ds.offset);
  return out;
}

function readFloat32At(fd: number, ds: H5Dataset): Float32Array {
  if (ds.dtype !== 'float32' && ds.dtype !== 'bfloat16' && ds.dtype !== 'float16' && ds.dtype !== 'float64') {
    throw new Error(`${ds.file}: dataset "${ds.path}" is ${ds.dtype}, not a float type: read its bytes instead`);
  }
  checkExtent(fd, ds);
  return readFloatsAt(fd, ds.file, ds.offset, ds.byteLength / DTYPE_BYTES[ds.dtype], ds.dtype, ds.littleEndian);
}

