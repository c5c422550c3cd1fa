import test from 'ava';
import * as fc from 'fast-check';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { bfloat16ToNumber, halfToNumber, indexH5, openH5, readDatasetFloat32, type H5DType, type H5File, type H5Index } from '../../checkpoints/h5';
import { KERAS_HUB, LOCAL, bf16Bits, presetDirs, readManifest, readTree, tempDir } from './helpers';

const h5FilesOf = (dir: string): string[] =>
  fs
    .readdirSync(dir)
    .filter((f) => f.endsWith('.h5'))
    .sort()
    .map((f) => path.join(dir, f));

const withH5 = <T>(file: string, f: (h: H5File) => T): T => {
  const h = openH5(file);
  try {
    return f(h);
  } finally {
    h.close();
  }
};

// ---------------------------------------------------------------------------------------------------------------
// keras_hub fixtures against h5py's listing
// ---------------------------------------------------------------------------------------------------------------

const H5PY_DTYPES: Record<string, H5DType> = { float32: 'float32', '|V2': 'bfloat16' };

for (const [name, preset] of presetDirs()) {
  if (name === 'text_generate') continue;
  test(`${name}: every group and dataset, as h5py lists them`, (t) => {
    const tree = readTree(path.join(KERAS_HUB, name));
    for (const file of h5FilesOf(preset)) {
      const expected = tree.get(tree.size === 1 ? '' : path.basename(file));
      if (expected === undefined) return t.fail(`${file} is not in h5_tree.txt`);
      withH5(file, (h) => {
        t.is(h.superblockVersion, 0);
        t.deepEqual([...h.groupAttrs.keys()].filter((g) => g !== '').sort(), [...expected.groups.keys()].sort());
        t.deepEqual([...h.datasets.keys()].sort(), [...expected.datasets.keys()].sort());
        for (const [p, want] of expected.datasets) {
          const ds = h.datasets.get(p)!;
          t.deepEqual(ds.shape, want.shape, p);
          t.is(ds.dtype, H5PY_DTYPES[want.dtype], p);
          t.deepEqual(ds.attrs, want.attrs, p);
          t.true(ds.littleEndian);
        }
        // Sharded trees list every group's attributes: check them all (the `name` of each vars group).
        for (const [g, attrs] of expected.groups) if (attrs !== null) t.deepEqual(h.groupAttrs.get(g), attrs, g);
      });
    }
  });
}

test('the vit_pooling_standalone weights (Model.save_weights)', (t) => {
  const dir = path.join(KERAS_HUB, 'vit_pooling_standalone');
  const expected = readTree(dir).get('')!;
  withH5(path.join(dir, 'vit.weights.h5'), (h) => {
    t.deepEqual([...h.datasets.keys()].sort(), [...expected.datasets.keys()].sort());
    for (const [p, want] of expected.datasets) t.deepEqual(h.datasets.get(p)!.shape, want.shape, p);
  });
});

test('every manifest weight is where the manifest says, with its shape', (t) => {
  const indexes = new Map<string, H5Index>();
  for (const [name, preset] of presetDirs()) {
    const manifest = readManifest(path.dirname(preset));
    for (const w of manifest.weights ?? []) {
      const file = path.join(preset, w.h5_file ?? 'model.weights.h5');
      if (!indexes.has(file)) indexes.set(file, indexH5(file));
      const ds = indexes.get(file)!.datasets.get(w.h5_path);
      t.deepEqual(ds?.shape, w.shape, `${name}: ${w.h5_path}`);
    }
  }
});

test('vars groups carry the keras layer name; bf16 datasets carry dtype="bfloat16"', (t) => {
  withH5(path.join(KERAS_HUB, 'pg1_basic/preset/model.weights.h5'), (h) => {
    t.deepEqual(h.groupAttrs.get('vars'), { name: 'pali_gemma_backbone' });
    t.deepEqual(h.groupAttrs.get('layers/pali_gemma_decoder_block_1/vars'), { name: 'decoder_block_1' });
    t.deepEqual(h.groupAttrs.get('layers/pali_gemma_decoder_block_1/attention/query_dense/vars'), { name: 'query' });
    t.deepEqual(h.groupAttrs.get('layers'), {});
    const vars = [...h.groupAttrs].filter(([g]) => g.endsWith('vars'));
    t.true(vars.length > 50);
    for (const [g, attrs] of vars) t.is(typeof attrs['name'], 'string', g);
  });
  withH5(path.join(KERAS_HUB, 'pg1_bf16/preset/model.weights.h5'), (h) => {
    for (const ds of h.datasets.values()) t.deepEqual(ds.attrs, { dtype: 'bfloat16' });
  });
});

// ---------------------------------------------------------------------------------------------------------------
// Values
// ---------------------------------------------------------------------------------------------------------------

test('pg1_bf16 holds pg1_basic rounded to bfloat16 (nearest even), bit for bit', (t) => {
  const basic = openH5(path.join(KERAS_HUB, 'pg1_basic/preset/model.weights.h5'));
  const bf16 = openH5(path.join(KERAS_HUB, 'pg1_bf16/preset/model.weights.h5'));
  t.deepEqual([...bf16.datasets.keys()], [...basic.datasets.keys()]);
  let ties = 0;
  for (const [p, ds] of basic.datasets) {
    t.is(ds.dtype, 'float32');
    t.is(bf16.datasets.get(p)!.dtype, 'bfloat16');
    const f32 = basic.readFloat32(p);
    const want = bf16Bits(f32);
    const raw = bf16.readBytes(p);
    const got = new Uint16Array(raw.buffer, raw.byteOffset, raw.length / 2);
    t.deepEqual(got, want, p);
    // Widening is exact: the bits become float32's upper half.
    const widened = new Uint32Array(bf16.readFloat32(p).buffer);
    t.true(widened.every((bits, i) => bits === want[i] << 16 >>> 0), p);
    ties += new Uint32Array(f32.buffer).filter((b) => (b & 0xffff) === 0x8000).length;
  }
  t.log(`${ties} exact ties among pg1_basic's weights`);
  basic.close();
  bf16.close();
});

test('bfloat16ToNumber is the upper half of a float32', (t) => {
  fc.assert(
    fc.property(fc.float({ noNaN: true }), (x) => {
      const bits = new Uint32Array(new Float32Array([x]).buffer)[0];
      const truncated = new Float32Array(new Uint32Array([bits & 0xffff0000]).buffer)[0];
      return Object.is(bfloat16ToNumber(bits >>> 16), truncated);
    }),
  );
  t.pass();
});

test('halfToNumber: IEEE binary16', (t) => {
  const cases: [number, number][] = [
    [0x3c00, 1],
    [0xc000, -2],
    [0x3555, 0.333251953125],
    [0x7bff, 65504],
    [0x0400, 2 ** -14],
    [0x0001, 2 ** -24],
    [0x7c00, Infinity],
    [0xfc00, -Infinity],
    [0x8000, -0],
  ];
  for (const [bits, value] of cases) t.true(Object.is(halfToNumber(bits), value), bits.toString(16));
  t.true(Number.isNaN(halfToNumber(0x7e00)));
});

// ---------------------------------------------------------------------------------------------------------------
// h5py's datatypes and both file formats (spec/checkpoints/fixtures/make_h5.py)
// ---------------------------------------------------------------------------------------------------------------

/** The generator's formula for float data: v[i] = (i - n/2) / 4. */
const ramp = (n: number, add = 0): number[] => Array.from({ length: n }, (_, i) => Math.fround(Math.fround((i - n / 2) / 4) + add));

for (const [file, version] of [
  ['types_v0.h5', 0],
  ['types_latest.h5', 3],
] as const) {
  test(`${file}: superblock v${version}, datatypes, layouts, attributes`, (t) => {
    withH5(path.join(LOCAL, file), (h) => {
      t.is(h.superblockVersion, version);
      for (const [name, dtype, le] of [
        ['f16', 'float16', true],
        ['f32', 'float32', true],
        ['f64', 'float64', true],
        ['f32_be', 'float32', false],
      ] as const) {
        const ds = h.datasets.get(`floats/${name}`)!;
        t.deepEqual([ds.shape, ds.dtype, ds.littleEndian], [[2, 3], dtype, le], name);
        t.deepEqual(Array.from(h.readFloat32(`floats/${name}`)), ramp(6), name);
      }
      for (const bits of [8, 16, 32, 64]) {
        const signed = h.datasets.get(`ints/i${bits}`)!;
        const unsigned = h.datasets.get(`ints/u${bits}`)!;
        t.deepEqual([signed.dtype, unsigned.dtype, signed.byteLength], [`int${bits}`, `uint${bits}`, (5 * bits) / 8]);
        const view = new DataView(h.readBytes(`ints/i${bits}`).buffer);
        const at = (i: number): number => Number(bits === 64 ? view.getBigInt64(8 * i, true) : bits === 32 ? view.getInt32(4 * i, true) : bits === 16 ? view.getInt16(2 * i, true) : view.getInt8(i));
        t.deepEqual([0, 1, 2, 3, 4].map(at), [-2, -1, 0, 1, 2]);
        t.throws(() => h.readFloat32(`ints/i${bits}`), { message: `${path.join(LOCAL, file)}: dataset "ints/i${bits}" is int${bits}, not a float type: read its bytes instead` });
      }
      // bfloat16 as keras writes it: marked with the dtype attribute, and (older keras) unmarked.
      const marked = h.datasets.get('bf16/marked')!;
      t.deepEqual([marked.dtype, marked.shape, marked.attrs], ['bfloat16', [2, 4], { dtype: 'bfloat16' }]);
      const want = bf16Bits(new Float32Array(ramp(8, Math.fround(1 / 3))));
      t.deepEqual(Array.from(h.readFloat32('bf16/marked')), Array.from(want, (b) => bfloat16ToNumber(b)));
      t.is(h.datasets.get('bf16/unmarked')!.dtype, 'bfloat16');
      t.deepEqual(Array.from(h.readFloat32('bf16/unmarked')), ramp(4));
      // Scalar, empty and compact (data inside the object header).
      t.deepEqual([h.datasets.get('scalar')!.shape, Array.from(h.readFloat32('scalar'))], [[], [3.5]]);
      t.deepEqual([h.datasets.get('empty')!.shape, h.readFloat32('empty').length], [[0, 4], 0]);
      t.deepEqual(Array.from(h.readFloat32('compact')), ramp(4));
      t.deepEqual(h.groupAttrs.get('attrs'), {
        fixed: 'abc',
        float: 2.5,
        floats: [0.5, 1.5],
        int: 7,
        ints: [1, -2, 3],
        name: 'hello',
        strs: ['a', 'bc'],
        unicode: 'ünï ✓',
      });
    });
  });
}

test('types_v0.h5: continuation blocks (v1 headers) and a 300-member group (two-level B-tree)', (t) => {
  withH5(path.join(LOCAL, 'types_v0.h5'), (h) => {
    const many = h.datasets.get('many_attrs')!;
    t.deepEqual(many.attrs, Object.fromEntries(Array.from({ length: 20 }, (_, i) => [`a${String(i).padStart(2, '0')}`, i])));
    const members = [...h.datasets.keys()].filter((p) => p.startsWith('big/'));
    t.deepEqual(members, Array.from({ length: 300 }, (_, i) => `big/m${String(i).padStart(3, '0')}`));
    // Hard links: all 300 are the same dataset.
    t.true(members.every((p) => h.datasets.get(p)!.offset === h.datasets.get('target')!.offset));
  });
});

test('types_latest.h5: continuation blocks ("OCHK") in v2 headers', (t) => {
  withH5(path.join(LOCAL, 'types_latest.h5'), (h) => {
    t.deepEqual(h.datasets.get('cont')!.attrs, Object.fromEntries(Array.from({ length: 8 }, (_, i) => [`a${i}`, 'x'.repeat(40)])));
    t.deepEqual(Array.from(h.readFloat32('cont')), [0, 1, 2]);
  });
});

// ---------------------------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------------------------

test('refused features name the file and the object', (t) => {
  t.throws(() => indexH5(path.join(LOCAL, 'chunked.h5')), {
    message: `${LOCAL}/chunked.h5: dataset "w": chunked layout with filters (compression) is not supported; re-save it contiguous (h5py's default, or \`h5repack -l CONTI\`)`,
  });
  t.throws(() => indexH5(path.join(LOCAL, 'dense_links.h5')), {
    message: `${LOCAL}/dense_links.h5: group "layers" keeps its links in dense storage (a fractal heap); not supported`,
  });
  t.throws(() => indexH5(path.join(LOCAL, 'make_h5.py')), {
    message: `${LOCAL}/make_h5.py: not an HDF5 file (no HDF5 signature at byte 0, 512, 1024, ...)`,
  });
  withH5(path.join(LOCAL, 'tail.h5'), (h) => t.throws(() => h.readFloat32('nope'), { message: `${LOCAL}/tail.h5: no dataset "nope"` }));
});

test('truncated files: the error names the file, both sizes, and every dataset or header that is cut', (t) => {
  const { dir, remove } = tempDir();
  try {
    const cut = (source: string, bytes: number): string => {
      const out = path.join(dir, `cut-${bytes}.h5`);
      fs.writeFileSync(out, fs.readFileSync(source).subarray(0, bytes));
      return out;
    };
    // The last dataset of tail.h5 ends the file: cutting it leaves every header intact.
    const tail = cut(path.join(LOCAL, 'tail.h5'), 6000);
    t.throws(() => openH5(tail), {
      message: `${tail}: truncated HDF5 file (6000 bytes, the superblock says 8208): dataset "tail" needs bytes 4112..8208 (4096 bytes)`,
    });
    // keras files keep the root's local heap at the end: a cut there loses everything under "layers".
    const source = path.join(KERAS_HUB, 'pg1_basic/preset/model.weights.h5');
    const keras = cut(source, 290000);
    t.throws(() => indexH5(keras), {
      message: `${keras}: truncated HDF5 file (290000 bytes, the superblock says 300184): local heap of group "layers" needs bytes 297936..298288`,
    });
    const early = cut(source, 100);
    t.throws(() => indexH5(early), {
      message: `${early}: truncated HDF5 file (100 bytes, the superblock says 300184): object header of "/" needs bytes 96..112`,
    });
    const empty = cut(source, 0);
    t.throws(() => indexH5(empty), { message: `${empty}: not an HDF5 file (no HDF5 signature at byte 0, 512, 1024, ...)` });
    // A file cut after it was indexed: the read says so.
    const whole = path.join(dir, 'whole.h5');
    fs.copyFileSync(path.join(LOCAL, 'tail.h5'), whole);
    const ds = indexH5(whole).datasets.get('tail')!;
    fs.truncateSync(whole, 5000);
    t.throws(() => readDatasetFloat32(ds), {
      message: `${whole}: truncated HDF5 file (5000 bytes): dataset "tail" needs bytes 4112..8208 (4096 bytes)`,
    });
  } finally {
    remove();
  }
});

test('offsets past 4 GiB: a user block of 4 GiB before the file (sparse)', (t) => {
  const { dir, remove } = tempDir();
  try {
    const source = path.join(KERAS_HUB, 'pg1_basic/preset/model.weights.h5');
    const far = path.join(dir, 'far.h5');
    const shift = 2 ** 32;
    const fd = fs.openSync(far, 'w');
    fs.writeSync(fd, fs.readFileSync(source), 0, undefined, shift);
    fs.closeSync(fd);
    const stat = fs.statSync(far);
    if (stat.blocks * 512 > 64 * 2 ** 20) return t.pass(`no sparse files here (${stat.blocks * 512} bytes allocated): skipped`);
    withH5(source, (near) =>
      withH5(far, (h) => {
        t.is(h.size, shift + near.size);
        for (const [p, ds] of near.datasets) {
          t.is(h.datasets.get(p)!.offset, ds.offset + shift);
          t.deepEqual(h.readFloat32(p), near.readFloat32(p));
        }
      }),
    );
  } finally {
    remove();
  }
});
