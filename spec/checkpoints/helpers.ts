/**
 * Reading the fixtures' `h5_tree.txt` and `manifest.json` (written by the fixture generator with h5py), so the
 * specs can compare our HDF5 reader with h5py's view of the same files.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { H5WriteDataset } from '../../checkpoints/h5write';
import { makeTempDir } from '../helpers/files';

export const KERAS_HUB = 'spec/fixtures/keras_hub';
export const LOCAL = 'spec/checkpoints/fixtures';

/** Every preset directory among the fixtures, by fixture name. */
export function presetDirs(): Map<string, string> {
  const dirs = new Map<string, string>();
  for (const name of fs.readdirSync(KERAS_HUB).sort()) {
    const preset = path.join(KERAS_HUB, name, 'preset');
    if (fs.existsSync(preset)) dirs.set(name, preset);
  }
  dirs.set('text_generate', 'spec/fixtures/text/generate/preset');
  return dirs;
}

export interface TreeFile {
  /** group path (no trailing slash) -> attributes (only listed in sharded trees, else null) */
  readonly groups: Map<string, Record<string, string> | null>;
  readonly datasets: Map<string, { shape: number[]; dtype: string; attrs: Record<string, string> }>;
}

/** h5py's listing: one section per file (`== name ==` headers in sharded trees, else a single section ''). */
export function readTree(fixtureDir: string): Map<string, TreeFile> {
  const files = new Map<string, TreeFile>();
  let current: TreeFile | null = null;
  const section = (name: string): TreeFile => {
    const f: TreeFile = { groups: new Map(), datasets: new Map() };
    files.set(name, f);
    return f;
  };
  for (const line of fs.readFileSync(path.join(fixtureDir, 'h5_tree.txt'), 'utf8').split('\n')) {
    if (line.trim() === '') continue;
    const header = /^== (.+) ==$/.exec(line);
    if (header) {
      current = section(header[1]);
      continue;
    }
    current ??= section('');
    const [p, ...rest] = line.split('\t');
    if (p.endsWith('/')) {
      current.groups.set(p.slice(0, -1), rest.length > 0 ? parseAttrs(rest[0]) : null);
    } else {
      const attrs = rest[2] === undefined ? {} : parseAttrs(rest[2]);
      current.datasets.set(p, { shape: JSON.parse(rest[0]) as number[], dtype: rest[1], attrs });
    }
  }
  return files;
}

/** `attrs{'name': 'x'}` or `attrs{dtype='bfloat16'}` -> {name: 'x'} / {dtype: 'bfloat16'} (string values only). */
function parseAttrs(s: string): Record<string, string> {
  const body = /^attrs\{(.*)\}$/.exec(s);
  if (!body) throw new Error(`unexpected attrs column: ${s}`);
  // Two spellings: `'name': 'x'` (group attributes) and `dtype='bfloat16'` (dataset attributes).
  return Object.fromEntries([...body[1].matchAll(/'?(\w+)'?(?::\s*|=)'([^']*)'/g)].map((m) => [m[1], m[2]]));
}

export interface ManifestWeight {
  readonly h5_path: string;
  readonly shape: number[];
  readonly h5_file?: string;
}

export function readManifest(fixtureDir: string): { weights?: ManifestWeight[]; config?: Record<string, unknown> | null } {
  return JSON.parse(fs.readFileSync(path.join(fixtureDir, 'manifest.json'), 'utf8')) as {
    weights?: ManifestWeight[];
    config?: Record<string, unknown> | null;
  };
}

/** A fresh temporary directory, removed by the returned function (spec/helpers/files.ts). */
export const tempDir = (): { dir: string; remove: () => void } => makeTempDir('paligemma-ckpt-');

/** numpy's float32 -> bfloat16 rounding (round to nearest, ties to even), as bits; NaN stays a quiet NaN. */
export function bf16Bits(x: Float32Array): Uint16Array {
  const u = new Uint32Array(x.buffer, x.byteOffset, x.length);
  const out = new Uint16Array(x.length);
  for (let i = 0; i < u.length; i++) {
    const bits = u[i];
    if ((bits & 0x7fffffff) > 0x7f800000) out[i] = (bits >>> 16) | 0x40;
    else out[i] = (bits + 0x7fff + ((bits >>> 16) & 1)) >>> 16;
  }
  return out;
}

/** The input of spec/checkpoints/fixtures/written.h5 (checked with h5py by make_h5.py). */
export function goldenInput(): { datasets: Map<string, H5WriteDataset>; groups: Map<string, Record<string, string>> } {
  const ramp = (n: number) => Float32Array.from({ length: n }, (_, i) => (i - n / 2) / 4);
  const datasets = new Map<string, H5WriteDataset>([
    ['layers/dense/vars/0', { shape: [3, 4], values: ramp(12) }],
    ['layers/dense/vars/1', { shape: [4], values: () => ramp(4) }],
    ['scalar', { shape: [], values: new Float32Array([3.5]), attrs: { note: 'a scalar' } }],
    ['empty', { shape: [0, 2], values: new Float32Array(0) }],
  ]);
  for (let i = 0; i < 10; i++) datasets.set(`wide/m${i}`, { shape: [1], values: new Float32Array([i]) });
  const groups = new Map<string, Record<string, string>>([
    ['', {}],
    ['vars', { name: 'model' }],
    ['layers/dense/vars', { name: 'dense' }],
    ['layers/input_layer/vars', { name: 'ünï ✓' }],
  ]);
  return { datasets, groups };
}
