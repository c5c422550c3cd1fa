import test from 'ava';
import * as fc from 'fast-check';
import * as assert from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { indexH5, openH5 } from '../../checkpoints/h5';
import { writeH5, type H5WriteDataset } from '../../checkpoints/h5write';
import { KERAS_HUB, LOCAL, goldenInput, tempDir } from './helpers';

const bits = (x: Float32Array): Uint32Array => new Uint32Array(x.buffer, x.byteOffset, x.length);

test('the golden file: same bytes as the one h5py read back (make_h5.py)', (t) => {
  const { dir, remove } = tempDir();
  try {
    const { datasets, groups } = goldenInput();
    const out = path.join(dir, 'written.h5');
    writeH5(out, datasets, { groups });
    t.true(fs.readFileSync(out).equals(fs.readFileSync(path.join(LOCAL, 'written.h5'))));
    const h = indexH5(out);
    t.deepEqual([...h.groupAttrs.keys()], ['', 'layers', 'layers/dense', 'layers/dense/vars', 'layers/input_layer', 'layers/input_layer/vars', 'vars', 'wide']);
    t.deepEqual(h.groupAttrs.get('layers/input_layer/vars'), { name: 'ünï ✓' });
    t.deepEqual(h.datasets.get('scalar')!.attrs, { note: 'a scalar' });
  } finally {
    remove();
  }
});

for (const name of ['pg1_basic', 'pg1_bf16']) {
  test(`${name}: write it as float32 and read it back: same tree, attributes and values`, (t) => {
    const { dir, remove } = tempDir();
    try {
      const src = openH5(path.join(KERAS_HUB, name, 'preset/model.weights.h5'));
      const datasets = new Map<string, H5WriteDataset>();
      for (const [p, d] of src.datasets) datasets.set(p, { shape: d.shape, values: () => src.readFloat32(p) });
      const groups = new Map([...src.groupAttrs].map(([g, attrs]) => [g, attrs as Record<string, string>]));
      const out = path.join(dir, 'model.weights.h5');
      writeH5(out, datasets, { groups });
      const back = openH5(out);
      t.deepEqual([...back.groupAttrs], [...src.groupAttrs]);
      t.deepEqual([...back.datasets.keys()], [...src.datasets.keys()]);
      for (const [p, d] of src.datasets) {
        const ds = back.datasets.get(p)!;
        t.deepEqual([ds.shape, ds.dtype, ds.attrs], [d.shape, 'float32', {}]);
        t.deepEqual(bits(back.readFloat32(p)), bits(src.readFloat32(p)), p);
      }
      back.close();
      src.close();
    } finally {
      remove();
    }
  });
}

test('a group of 600 members: symbol nodes under a two-level B-tree', (t) => {
  const { dir, remove } = tempDir();
  try {
    const datasets = new Map<string, H5WriteDataset>();
    for (let i = 0; i < 600; i++) datasets.set(`wide/m${String(i).padStart(3, '0')}`, { shape: [2], values: new Float32Array([i, -i]) });
    const out = path.join(dir, 'wide.h5');
    writeH5(out, datasets);
    const h = openH5(out);
    t.deepEqual([...h.datasets.keys()], [...datasets.keys()]);
    t.deepEqual(Array.from(h.readFloat32('wide/m599')), [599, -599]);
    h.close();
  } finally {
    remove();
  }
});

const name = fc.stringMatching(/^[a-z0-9_]{1,6}$/);
const dataset = fc
  .array(fc.integer({ min: 0, max: 4 }), { maxLength: 3 })
  .chain((shape) =>
    fc.record({
      shape: fc.constant(shape),
      values: fc.float32Array({ minLength: shape.reduce((a, b) => a * b, 1), maxLength: shape.reduce((a, b) => a * b, 1) }),
      attrs: fc.dictionary(name, fc.string(), { maxKeys: 2 }),
    }),
  );

test('any tree of float32 datasets and string attributes round-trips bit for bit', (t) => {
  const { dir, remove } = tempDir();
  try {
    let run = 0;
    fc.assert(
      fc.property(fc.dictionary(fc.array(name, { minLength: 1, maxLength: 3 }).map((p) => p.join('/')), dataset, { minKeys: 1, maxKeys: 12 }), (tree) => {
        const paths = Object.keys(tree);
        // A path cannot be both a dataset and a group: keep the leaves only.
        const leaves = paths.filter((p) => !paths.some((q) => q.startsWith(`${p}/`)));
        const datasets = new Map(leaves.map((p) => [p, { ...tree[p], attrs: { ...tree[p].attrs } }]));
        const out = path.join(dir, `run-${run++}.h5`);
        writeH5(out, datasets);
        const h = openH5(out);
        try {
          assert.deepStrictEqual([...h.datasets.keys()].sort(), [...leaves].sort());
          for (const [p, d] of datasets) {
            const ds = h.datasets.get(p)!;
            assert.deepStrictEqual([ds.shape, ds.attrs], [d.shape, Object.fromEntries(Object.entries(d.attrs).sort(([a], [b]) => (a < b ? -1 : 1)))]);
            assert.deepStrictEqual(bits(h.readFloat32(p)), bits(d.values));
          }
        } finally {
          h.close();
        }
      }),
      { numRuns: Number(process.env.H5_RUNS ?? 40) },
    );
    t.pass();
  } finally {
    remove();
  }
});

test('atomic: a failure leaves the old file and no temporary file', (t) => {
  const { dir, remove } = tempDir();
  try {
    const out = path.join(dir, 'model.weights.h5');
    writeH5(out, new Map([['a', { shape: [1], values: new Float32Array([1]) }]]));
    const before = fs.readFileSync(out);
    const failing = new Map<string, H5WriteDataset>([
      ['a', { shape: [2], values: new Float32Array([1, 2]) }],
      ['b', { shape: [2], values: () => { throw new Error('out of memory'); } }],
    ]);
    t.throws(() => writeH5(out, failing), { message: 'out of memory' });
    t.true(fs.readFileSync(out).equals(before));
    t.deepEqual(fs.readdirSync(dir), ['model.weights.h5']);
    // A success replaces it.
    writeH5(out, new Map([['b', { shape: [2], values: new Float32Array([1, 2]) }]]));
    t.deepEqual([...indexH5(out).datasets.keys()], ['b']);
    t.deepEqual(fs.readdirSync(dir), ['model.weights.h5']);
  } finally {
    remove();
  }
});

test('bad input is refused before anything is written', (t) => {
  const { dir, remove } = tempDir();
  try {
    const out = path.join(dir, 'x.h5');
    const one = (shape: number[], values: Float32Array) => ({ shape, values });
    t.throws(() => writeH5(out, new Map([['a', one([2, 2], new Float32Array(3))]])), {
      message: `writeH5: ${out}: dataset "a" has shape [2, 2] (4 values) but 3 values`,
    });
    t.throws(() => writeH5(out, new Map([['a', one([1], new Float32Array(1))], ['a/b', one([1], new Float32Array(1))]])), {
      message: `writeH5: ${out}: "a" is both a dataset and a group`,
    });
    t.throws(() => writeH5(out, new Map([['a', { ...one([1], new Float32Array(1)), attrs: { dtype: 'bfloat16' } }]])), {
      message: `writeH5: ${out}: dataset "a": a dtype attribute ("bfloat16") would mislabel float32 data for keras`,
    });
    t.throws(() => writeH5(out, new Map([['a//b', one([1], new Float32Array(1))]])), { message: 'writeH5: invalid path "a//b"' });
    t.deepEqual(fs.readdirSync(dir), []);
  } finally {
    remove();
  }
});
