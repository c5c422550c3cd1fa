/**
 * openH5Bytes (HDF5 from memory: a browser's fetch/ArrayBuffer) against the file reader: the same index,
 * attributes and values for every .h5 file of the fixtures and the shipped preset, and the same errors
 * (truncation, refused features) with the name in place of the path.
 */
import test from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { indexH5, openH5, openH5Bytes } from '../../checkpoints/h5';
import { LOCAL } from './helpers';

const root = path.join(__dirname, '..', '..', '..');
const allH5 = (dir: string): string[] =>
  fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = path.join(dir, e.name);
    return e.isDirectory() ? allH5(p) : e.name.endsWith('.h5') ? [p] : [];
  });
const files = [...allH5(path.join(root, 'spec', 'fixtures')), path.join(root, 'checkpoints', 'tiny', 'model.weights.h5')]
  .concat(['tail.h5', 'types_latest.h5', 'types_v0.h5', 'written.h5'].map((f) => path.join(LOCAL, f)))
  .sort();

const bits = (a: Float32Array | Uint8Array): Buffer => Buffer.from(a.buffer, a.byteOffset, a.byteLength);

test('openH5Bytes reads every .h5 of the fixtures as openH5 reads the file: index, attributes, every value', (t) => {
  t.true(files.length >= 20, `${files.length} files`);
  let values = 0;
  for (const file of files) {
    const bytes = new Uint8Array(fs.readFileSync(file));
    const fromFile = openH5(file);
    const fromBytes = openH5Bytes(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength), file);
    try {
      t.is(fromBytes.size, fromFile.size);
      t.is(fromBytes.superblockVersion, fromFile.superblockVersion);
      t.deepEqual(fromBytes.groupAttrs, fromFile.groupAttrs, file);
      t.deepEqual(fromBytes.datasets, fromFile.datasets, file);
      for (const [p, ds] of fromFile.datasets) {
        const float = ['float16', 'bfloat16', 'float32', 'float64'].includes(ds.dtype);
        if (float) {
          const a = fromFile.readFloat32(p);
          const b = fromBytes.readFloat32(p);
          t.true(bits(a).equals(bits(b)), `${file}: ${p}`); // bit for bit
          values += a.length;
        }
        t.true(bits(fromBytes.readBytes(p)).equals(bits(fromFile.readBytes(p))), `${file}: ${p}`);
      }
    } finally {
      fromFile.close();
      fromBytes.close();
    }
  }
  t.log(`${files.length} files, ${values} float values`);
});

test('openH5Bytes: the errors of the file reader, naming the given name', (t) => {
  const tail = fs.readFileSync(path.join(LOCAL, 'tail.h5'));
  t.throws(() => openH5Bytes(tail.subarray(0, 6000), 'tail.h5'), {
    message: 'tail.h5: truncated HDF5 file (6000 bytes, the superblock says 8208): dataset "tail" needs bytes 4112..8208 (4096 bytes)',
  });
  t.throws(() => openH5Bytes(new Uint8Array(0)), { message: '<bytes>: not an HDF5 file (no HDF5 signature at byte 0, 512, 1024, ...)' });
  t.throws(() => openH5Bytes(fs.readFileSync(path.join(LOCAL, 'chunked.h5')), 'c.h5'), {
    message: `c.h5: dataset "w": chunked layout with filters (compression) is not supported; re-save it contiguous (h5py's default, or \`h5repack -l CONTI\`)`,
  });
  t.throws(() => indexH5(path.join(LOCAL, 'dense_links.h5')));
  const h = openH5Bytes(tail, 'tail.h5');
  t.throws(() => h.readFloat32('nope'), { message: 'tail.h5: no dataset "nope"' });
  h.close();
  t.throws(() => h.readFloat32('tail'), { message: 'tail.h5: read after close()' });
});
