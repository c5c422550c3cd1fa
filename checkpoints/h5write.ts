/**
 * An HDF5 writer for Keras `.weights.h5` files: float32 datasets and string attributes in the format h5py writes
 * by default (superblock v0, v1 object headers, symbol-table groups, contiguous data), so h5py and keras read the
 * files back. Written atomically: a temporary file next to the target, fsync'ed, then renamed over it.
 *
 * Reference: "HDF5 File Format Specification Version 3.0" (The HDF Group). The reader is h5.ts.
 */
import * as fs from 'node:fs';
import { writeAtomically, writeFully } from './atomic';
import { HOST_LE, MSG, SIGNATURE, UNDEFINED, joinPath, pad8, showPath } from './h5';

// ---------------------------------------------------------------------------------------------------------------
// Writing: float32 datasets in the format h5py writes by default, so h5py and keras read it back
// ---------------------------------------------------------------------------------------------------------------
//
// Layout: superblock v0 | metadata (per group: v1 object header, local heap, symbol nodes, v1 B-tree nodes; per
// dataset: v1 object header) | global heap collections (string attribute values) | raw data, 8-byte aligned.
// Structures mirror what h5py 3.7 / HDF5 1.10 write for Keras weights (checked against the fixtures' bytes):
// 8-byte addresses and lengths, group leaf K 4 (8 entries per symbol node), internal K 16 (32 children per
// B-tree node, more levels above that), float32 little-endian, contiguous layout, string attributes as scalar
// variable-length UTF-8.

export interface H5WriteDataset {
  readonly shape: readonly number[];
  /**
   * The values, C order; a function is called once, when the dataset's bytes are written (one at a time).
   * A BigInt64Array writes a signed little-endian int64 dataset (keras' `lora/vars/rank`).
   */
  readonly values: Float32Array | BigInt64Array | (() => Float32Array);
  readonly attrs?: Readonly<Record<string, string>>;
}

export interface H5WriteOptions {
  /** Groups to create (also when empty, like keras' `vars` of layers without weights) and their string attributes. */
  readonly groups?: ReadonlyMap<string, Readonly<Record<string, string>>>;
}

/**
 * Write `datasets` (path -> float32 array) to `file`: to a temporary file next to it, fsync'ed, then renamed over
 * `file`, so a crash or an error leaves either the old file or the new one, never half of one.
 */
export function writeH5(file: string, datasets: ReadonlyMap<string, H5WriteDataset>, options: H5WriteOptions = {}): void {
  const plan = planFile(file, datasets, options.groups ?? new Map());
  writeAtomically(file, (fd) => {
    writeFully(fd, plan.metadata, 0);
    for (const d of plan.datasets) writeValues(fd, file, d);
    fs.ftruncateSync(fd, plan.end); // the end of the last dataset, also when it is empty
  });
}

const W = { offsets: 8, lengths: 8, leafK: 4, internalK: 16 } as const;
const ENTRY_BYTES = 2 * W.offsets + 24; // symbol table entry
const SNOD_BYTES = 8 + 2 * W.leafK * ENTRY_BYTES;
const BTREE_BYTES = 8 + 2 * W.offsets + (2 * W.internalK + 1) * W.lengths + 2 * W.internalK * W.offsets;
const SUPERBLOCK_BYTES = 24 + 4 * W.offsets + ENTRY_BYTES;
const HEAP_HEADER_BYTES = 8 + 2 * W.lengths + W.offsets;
const GCOL_MIN_BYTES = 4096; // HDF5 never makes a smaller collection
const FLOAT32_TYPE = /* @__PURE__ */ Buffer.from([0x11, 0x20, 0x1f, 0x00, 4, 0, 0, 0, 0, 0, 32, 0, 23, 8, 0, 23, 127, 0, 0, 0]);
/** Fixed-point v1, little-endian, signed, 8 bytes, offset 0, precision 64 (h5py's `<i8`). */
const INT64_TYPE = /* @__PURE__ */ Buffer.from([0x10, 0x08, 0x00, 0x00, 8, 0, 0, 0, 0, 0, 64, 0]);
const bytesPerElement = (d: { values: unknown }) => (d.values instanceof BigInt64Array ? 8 : 4);
/** Variable-length UTF-8 string over 1-byte unsigned integers (what h5py writes for `str`). */
const VLEN_UTF8_TYPE = /* @__PURE__ */ Buffer.from([0x19, 0x01, 0x01, 0x00, 16, 0, 0, 0, 0x10, 0, 0, 0, 1, 0, 0, 0, 0, 0, 8, 0]);
/** Fill value message v2: allocation late, fill if set, default value (as h5py writes it). */
const FILL_VALUE = /* @__PURE__ */ Buffer.from([2, 2, 2, 1, 0, 0, 0, 0]);

interface PlannedAttr {
  readonly name: Buffer;
  readonly value: Buffer;
  /** Where the value lives in the global heap: set by the plan. */
  collection: number;
  index: number;
}

interface PlannedDataset {
  readonly kind: 'dataset';
  readonly path: string;
  readonly shape: readonly number[];
  readonly count: number;
  readonly values: Float32Array | BigInt64Array | (() => Float32Array);
  readonly attrs: PlannedAttr[];
  header: number;
  data: number;
}

interface PlannedGroup {
  readonly kind: 'group';
  readonly path: string;
  readonly members: Map<string, PlannedGroup | PlannedDataset>;
  attrs: PlannedAttr[];
  header: number;
  heap: number;
  /** Heap offset of each member's name. */
  names: Map<string, number>;
  heapData: Buffer;
  snods: number[];
  /** B-tree nodes by level, bottom first; the root is the last level's only node. */
  levels: { address: number; children: number[]; keys: number[] }[][];
}

interface Plan {
  readonly metadata: Buffer;
  readonly datasets: readonly PlannedDataset[];
  readonly end: number;
}

const byteOrder = (a: string, b: string): number => Buffer.compare(Buffer.from(a), Buffer.from(b));

function planAttrs(attrs: Readonly<Record<string, string>> | undefined, where: string): PlannedAttr[] {
  return Object.entries(attrs ?? {}).map(([name, value]) => {
    if (typeof value !== 'string') throw new Error(`writeH5: ${where}: attribute "${name}" must be a string, got ${JSON.stringify(value)}`);
    return { name: Buffer.from(name, 'utf8'), value: Buffer.from(value, 'utf8'), collection: 0, index: 0 };
  });
}

function planFile(file: string, datasets: ReadonlyMap<string, H5WriteDataset>, groups: ReadonlyMap<string, Readonly<Record<string, string>>>): Plan {
  const newGroup = (path: string): PlannedGroup => ({
    kind: 'group', path, members: new Map(), attrs: [], header: 0, heap: 0, names: new Map(), heapData: Buffer.alloc(0), snods: [], levels: [],
  });
  const root = newGroup('');
  const groupAt = (path: string): PlannedGroup => {
    let g = root;
    for (const name of path === '' ? [] : path.split('/')) {
      const next = g.members.get(name) ?? newGroup(joinPath(g.path, name));
      if (next.kind !== 'group') throw new Error(`writeH5: ${file}: "${next.path}" is both a dataset and a group`);
      g.members.set(name, next);
      g = next;
    }
    return g;
  };
  for (const [path, attrs] of groups) {
    if (path !== '') checkPath(path);
    groupAt(path).attrs = planAttrs(attrs, `group "${showPath(path)}"`);
  }
  const planned: PlannedDataset[] = [];
  for (const [path, d] of datasets) {
    checkPath(path);
    const cut = path.lastIndexOf('/');
    const name = path.slice(cut + 1);
    const parent = groupAt(cut < 0 ? '' : path.slice(0, cut));
    if (parent.members.has(name)) throw new Error(`writeH5: ${file}: "${path}" is both a dataset and a group`);
    if (!d.shape.every((n) => Number.isSafeInteger(n) && n >= 0)) throw new Error(`writeH5: ${file}: dataset "${path}" has shape [${d.shape.join(', ')}]`);
    const count = d.shape.reduce((a, b) => a * b, 1);
    if (typeof d.values !== 'function' && d.values.length !== count) {
      throw new Error(`writeH5: ${file}: dataset "${path}" has shape [${d.shape.join(', ')}] (${count} values) but ${d.values.length} values`);
    }
    if (d.attrs?.['dtype'] !== undefined) {
      throw new Error(`writeH5: ${file}: dataset "${path}": a dtype attribute (${JSON.stringify(d.attrs['dtype'])}) would mislabel float32 data for keras`);
    }
    const ds: PlannedDataset = { kind: 'dataset', path, shape: d.shape, count, values: d.values, attrs: planAttrs(d.attrs, `dataset "${path}"`), header: 0, data: 0 };
    parent.members.set(name, ds);
    planned.push(ds);
  }

  // Addresses: superblock, then every object's metadata depth first, then the global heap, then the data.
  let next = SUPERBLOCK_BYTES;
  const take = (n: number): number => {
    const at = next;
    next += n;
    return at;
  };
  const allGroups: PlannedGroup[] = [];
  const allAttrs: PlannedAttr[] = [];
  const place = (g: PlannedGroup): void => {
    allGroups.push(g);
    allAttrs.push(...g.attrs);
    g.header = take(objectHeaderBytes([16], g.attrs));
    const names = [...g.members.keys()].sort(byteOrder);
    const heapParts: Buffer[] = [Buffer.alloc(8)]; // offset 0: the empty name, the B-tree's leftmost key
    let offset = 8;
    for (const name of names) {
      const bytes = Buffer.from(`${name}\0`, 'utf8');
      g.names.set(name, offset);
      heapParts.push(bytes, Buffer.alloc(pad8(bytes.length) - bytes.length));
      offset += pad8(bytes.length);
    }
    g.heapData = Buffer.concat(heapParts);
    g.heap = take(HEAP_HEADER_BYTES + g.heapData.length);
    g.snods = Array.from({ length: Math.ceil(names.length / (2 * W.leafK)) }, () => take(SNOD_BYTES));
    // B-tree: level 0 points at symbol nodes, each level above at up to 2K nodes below; one node at least.
    let children = g.snods;
    let keys = g.snods.map((_, i) => g.names.get(names[Math.min(names.length, (i + 1) * 2 * W.leafK) - 1])!);
    do {
      const level: { address: number; children: number[]; keys: number[] }[] = [];
      for (let i = 0; i < Math.max(1, children.length); i += 2 * W.internalK) {
        level.push({ address: take(BTREE_BYTES), children: children.slice(i, i + 2 * W.internalK), keys: keys.slice(i, i + 2 * W.internalK) });
      }
      g.levels.push(level);
      children = level.map((n) => n.address);
      keys = level.map((n) => n.keys[n.keys.length - 1] ?? 0);
    } while (children.length > 1);
    for (const name of names) {
      const m = g.members.get(name)!;
      if (m.kind === 'group') place(m);
      else {
        allAttrs.push(...m.attrs);
        m.header = take(objectHeaderBytes([16 * m.shape.length + 8, pad8(m.values instanceof BigInt64Array ? INT64_TYPE.length : FLOAT32_TYPE.length), 8, 24], m.attrs));
      }
    }
  };
  place(root);
  const collections = planCollections(allAttrs, take);
  next = pad8(next);
  for (const d of planned) d.data = take(bytesPerElement(d) * d.count);
  const metadataEnd = planned.length > 0 ? planned[0].data : next;

  const out = new Writer(Buffer.alloc(metadataEnd));
  writeSuperblock(out, root, next);
  for (const g of allGroups) writeGroup(out, g);
  for (const d of planned) writeDatasetHeader(out, d);
  for (const c of collections) writeCollection(out, c);
  return { metadata: out.buf, datasets: planned, end: next };
}

/** Slash-separated names, none empty, `.` or containing NUL. */
function checkPath(path: string): void {
  if (path.split('/').some((name) => name === '' || name === '.' || name.includes('\0'))) throw new Error(`writeH5: invalid path "${path}"`);
}

/** Bytes of a v1 object header with messages of these data sizes plus the attributes. */
function objectHeaderBytes(messageSizes: readonly number[], attrs: readonly PlannedAttr[]): number {
  const sizes = [...messageSizes, ...attrs.map(attributeBytes)];
  return 16 + sizes.reduce((n, s) => n + 8 + pad8(s), 0);
}

const attributeBytes = (a: PlannedAttr): number => 8 + pad8(a.name.length + 1) + pad8(VLEN_UTF8_TYPE.length) + 8 + (4 + W.offsets + 4);

interface PlannedCollection {
  readonly address: number;
  readonly size: number;
  readonly objects: readonly PlannedAttr[];
}

/** Global heap collections for the attribute values: at least 4096 bytes, at most 65535 objects each. */
function planCollections(attrs: readonly PlannedAttr[], take: (n: number) => number): PlannedCollection[] {
  const collections: PlannedCollection[] = [];
  for (let i = 0; i < attrs.length; i += 65535) {
    const objects = attrs.slice(i, i + 65535);
    const used = 16 + objects.reduce((n, a) => n + 16 + pad8(a.value.length), 0);
    // The free space left is itself an object (index 0, 16-byte header): leave room for it or none at all.
    const size = used >= GCOL_MIN_BYTES ? used : used + Math.max(16, GCOL_MIN_BYTES - used);
    const address = take(size);
    objects.forEach((a, k) => {
      a.collection = address;
      a.index = k + 1;
    });
    collections.push({ address, size, objects });
  }
  return collections;
}

/** Little-endian writes at absolute positions. */
class Writer {
  constructor(readonly buf: Buffer) {}

  bytes(at: number, b: Uint8Array): number {
    this.buf.set(b, at);
    return at + b.length;
  }

  u8(at: number, v: number): number {
    this.buf[at] = v;
    return at + 1;
  }

  u16(at: number, v: number): number {
    this.buf.writeUInt16LE(v, at);
    return at + 2;
  }

  u32(at: number, v: number): number {
    this.buf.writeUInt32LE(v, at);
    return at + 4;
  }

  /** An 8-byte address or length; UNDEFINED as all ones. */
  u64(at: number, v: number): number {
    if (v === UNDEFINED) this.buf.fill(0xff, at, at + 8);
    else this.buf.writeBigUInt64LE(BigInt(v), at);
    return at + 8;
  }
}

function writeSuperblock(w: Writer, root: PlannedGroup, end: number): void {
  let p = w.bytes(0, SIGNATURE);
  p = w.bytes(p, Buffer.from([0, 0, 0, 0, 0, W.offsets, W.lengths, 0]));
  p = w.u16(p, W.leafK);
  p = w.u16(p, W.internalK);
  p = w.u32(p, 0); // consistency flags
  p = w.u64(p, 0); // base address
  p = w.u64(p, UNDEFINED); // free-space info
  p = w.u64(p, end);
  p = w.u64(p, UNDEFINED); // driver info
  writeEntry(w, p, 0, root);
}

/** A symbol table entry; groups cache their B-tree and heap addresses in the scratch pad (cache type 1). */
function writeEntry(w: Writer, at: number, nameOffset: number, object: PlannedGroup | PlannedDataset): number {
  let p = w.u64(at, nameOffset);
  p = w.u64(p, object.header);
  p = w.u32(p, object.kind === 'group' ? 1 : 0);
  p = w.u32(p, 0);
  if (object.kind === 'group') {
    w.u64(p, object.levels[object.levels.length - 1][0].address);
    w.u64(p + 8, object.heap);
  }
  return p + 16;
}

/** A v1 object header: prefix, then each message (type, size, flags) with its data padded to 8. */
function writeObjectHeader(w: Writer, at: number, messages: readonly [number, number, Buffer][], attrs: readonly PlannedAttr[]): void {
  const all: [number, number, Buffer][] = [...messages, ...attrs.map((a): [number, number, Buffer] => [MSG.attribute, 0, encodeAttribute(a)])];
  const size = all.reduce((n, [, , data]) => n + 8 + pad8(data.length), 0);
  let p = w.u8(at, 1);
  p = w.u8(p, 0);
  p = w.u16(p, all.length);
  p = w.u32(p, 1); // reference count
  p = w.u32(p, size);
  p += 4;
  for (const [type, flags, data] of all) {
    p = w.u16(p, type);
    p = w.u16(p, pad8(data.length));
    p = w.u8(p, flags);
    p = w.bytes(p + 3, data) + (pad8(data.length) - data.length);
  }
}

function encodeAttribute(a: PlannedAttr): Buffer {
  const w = new Writer(Buffer.alloc(attributeBytes(a)));
  let p = w.u8(0, 1); // version 1: name, type and space each padded to 8
  p = w.u8(p, 0);
  p = w.u16(p, a.name.length + 1);
  p = w.u16(p, VLEN_UTF8_TYPE.length);
  p = w.u16(p, 8);
  p = w.bytes(p, a.name) + 1;
  p = pad8(p);
  p = w.bytes(p, VLEN_UTF8_TYPE);
  p = pad8(p);
  p = w.u8(p, 1) + 7; // dataspace v1, rank 0: a scalar
  p = w.u32(p, a.value.length);
  p = w.u64(p, a.collection);
  w.u32(p, a.index);
  return w.buf;
}

function u64s(values: readonly number[]): Buffer {
  const w = new Writer(Buffer.alloc(8 * values.length));
  values.forEach((v, i) => w.u64(8 * i, v));
  return w.buf;
}

function writeGroup(w: Writer, g: PlannedGroup): void {
  const btreeRoot = g.levels[g.levels.length - 1][0].address;
  writeObjectHeader(w, g.header, [[MSG.symbolTable, 0, u64s([btreeRoot, g.heap])]], g.attrs);
  // Local heap: header, then the names; no free space (HDF5 encodes "no free block" as offset 1).
  let p = w.bytes(g.heap, Buffer.from('HEAP'));
  p = w.u32(p, 0);
  p = w.u64(p, g.heapData.length);
  p = w.u64(p, 1);
  p = w.u64(p, g.heap + HEAP_HEADER_BYTES);
  w.bytes(p, g.heapData);
  const names = [...g.names.keys()];
  g.snods.forEach((address, i) => {
    const chunk = names.slice(i * 2 * W.leafK, (i + 1) * 2 * W.leafK);
    let q = w.bytes(address, Buffer.from('SNOD'));
    q = w.u8(q, 1);
    q = w.u8(q, 0);
    q = w.u16(q, chunk.length);
    for (const name of chunk) q = writeEntry(w, q, g.names.get(name)!, g.members.get(name)!);
  });
  g.levels.forEach((level, depth) => {
    level.forEach((node, i) => {
      let q = w.bytes(node.address, Buffer.from('TREE'));
      q = w.u8(q, 0); // group node
      q = w.u8(q, depth);
      q = w.u16(q, node.children.length);
      q = w.u64(q, i > 0 ? level[i - 1].address : UNDEFINED);
      q = w.u64(q, i + 1 < level.length ? level[i + 1].address : UNDEFINED);
      // Keys: the left key is the name before this node's first ("" for the first node), then each child's last.
      q = w.u64(q, i > 0 ? level[i - 1].keys[level[i - 1].keys.length - 1] : 0);
      node.children.forEach((child, k) => {
        q = w.u64(q, child);
        q = w.u64(q, node.keys[k]);
      });
    });
  });
}

function writeDatasetHeader(w: Writer, d: PlannedDataset): void {
  const space = new Writer(Buffer.alloc(8 + 16 * d.shape.length));
  let p = space.u8(0, 1);
  p = space.u8(p, d.shape.length);
  space.u8(p, d.shape.length > 0 ? 1 : 0); // maximum sizes follow (equal to the sizes), as h5py writes them
  d.shape.forEach((n, i) => {
    space.u64(8 + 8 * i, n);
    space.u64(8 + 8 * (d.shape.length + i), n);
  });
  const layout = new Writer(Buffer.alloc(18));
  layout.u64(layout.u8(layout.u8(0, 3), 1), d.count === 0 ? UNDEFINED : d.data); // v3, contiguous
  layout.u64(10, bytesPerElement(d) * d.count);
  const spaceData = d.shape.length > 0 ? space.buf : space.buf.subarray(0, 8);
  writeObjectHeader(
    w,
    d.header,
    [
      [MSG.dataspace, 0, spaceData],
      [MSG.datatype, 1, d.values instanceof BigInt64Array ? INT64_TYPE : FLOAT32_TYPE],
      [0x05, 1, FILL_VALUE],
      [MSG.layout, 0, layout.buf],
    ],
    d.attrs,
  );
}

function writeCollection(w: Writer, c: PlannedCollection): void {
  let p = w.bytes(c.address, Buffer.from('GCOL'));
  p = w.u8(p, 1) + 3;
  p = w.u64(p, c.size);
  for (const a of c.objects) {
    p = w.u16(p, a.index);
    p = w.u16(p, 0) + 4; // reference count, reserved
    p = w.u64(p, a.value.length);
    p = w.bytes(p, a.value);
    p = pad8(p - c.address) + c.address;
  }
  const free = c.address + c.size - p;
  if (free >= 16) w.u64(p + 8, free); // index 0: free space, its size counting its own header
}

function writeValues(fd: number, file: string, d: PlannedDataset): void {
  const values = typeof d.values === 'function' ? d.values() : d.values;
  if (values.length !== d.count) {
    throw new Error(`writeH5: ${file}: dataset "${d.path}" has shape [${d.shape.join(', ')}] (${d.count} values) but ${values.length} values`);
  }
  let bytes = new Uint8Array(values.buffer, values.byteOffset, values.byteLength);
  if (!HOST_LE) {
    bytes = new Uint8Array(values.byteLength);
    const view = new DataView(bytes.buffer);
    if (values instanceof BigInt64Array) values.forEach((v, i) => view.setBigInt64(8 * i, v, true));
    else values.forEach((v, i) => view.setFloat32(4 * i, v, true));
  }
  writeFully(fd, bytes, d.data);
}
