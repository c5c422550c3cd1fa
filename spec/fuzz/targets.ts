/**
 * The fuzz targets: a tiny seed file per reader, written by our writers (or by hand, for the tokenizers), and
 * the public API call that loads it. Summaries: structure = keys, shapes, dtypes, sizes; values = a digest of
 * every value read. A key that a mutation renames (a name is content in every one of these formats) is refused
 * by `sameKeys`, as `decodeParams` / the tokenizer's consumer refuse missing and unexpected keys downstream.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { PNG } from 'pngjs';
import * as jpeg from 'jpeg-js';
import { formatError } from '../../checkpoints/errors';
import { writeH5, type H5WriteDataset } from '../../checkpoints/h5write';
import { readPresetConfig, readShardedWeights, readWeightsFiles } from '../../checkpoints/keras';
import { readNpz, writeNpz } from '../../checkpoints/npz';
import { readLoraH5 } from '../../checkpoints/lora';
import { readSafetensorsFile, readShardedSafetensors, writeSafetensors } from '../../checkpoints/safetensors';
import { readImage } from '../../src/preprocess/image';
import { loadTokenizer } from '../../src/text/tokenizer';
import type { Summary, Target } from './harness';
import { makeTempDir } from '../helpers/tmp';

const digest = (parts: Iterable<Uint8Array | string>): string => {
  const h = crypto.createHash('sha1');
  for (const p of parts) h.update(p);
  return h.digest('hex').slice(0, 16);
};
const bytesOf = (a: Float32Array): Uint8Array => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);

/** The key check consumers make: the seed's keys, no more, no fewer. */
function sameKeys(file: string, keys: readonly string[], expected: readonly string[] | undefined): void {
  if (expected === undefined) return;
  const missing = expected.filter((k) => !keys.includes(k));
  const extra = keys.filter((k) => !expected.includes(k));
  if (missing.length + extra.length > 0) throw formatError(file, 'keys', `missing ${JSON.stringify(missing)}, unexpected ${JSON.stringify(extra)}`);
}

/** Ranges of the contents of JSON string literals and of numbers: a change there is a value, not structure. */
function jsonValueRanges(text: string, keysToo = false): [number, number][] {
  const out: [number, number][] = [];
  for (const m of text.matchAll(/"((?:[^"\\]|\\.)*)"|-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?/g)) {
    if (m[0].startsWith('"')) {
      // a key (followed by ':') is structure
      const after = text.slice(m.index + m[0].length).trimStart();
      if (keysToo || !after.startsWith(':')) out.push([m.index + 1, m.index + m[0].length - 1]);
    } else out.push([m.index, m.index + m[0].length]);
  }
  return out;
}

/** Write a seed with one of our writers into a scratch directory and take its bytes. */
function seedFrom(write: (file: string) => void, name: string): Uint8Array {
  const { dir, remove } = makeTempDir('paligemma-fuzz-seed-');
  try {
    const file = path.join(dir, name);
    write(file);
    return new Uint8Array(fs.readFileSync(file));
  } finally {
    remove();
  }
}

const f32 = (n: number, k: number): Float32Array => Float32Array.from({ length: n }, (_, i) => (i + 1) * k);

// ---------------------------------------------------------------------------------------------------------------
// Checkpoints
// ---------------------------------------------------------------------------------------------------------------

const H5_DATASETS = new Map<string, H5WriteDataset>([
  ['layers/dense/vars/0', { shape: [2, 3], values: f32(6, 0.5) }],
  ['layers/dense/vars/1', { shape: [3], values: f32(3, -1) }],
  ['layers/norm/vars/0', { shape: [4], values: f32(4, 2) }],
]);
const H5_GROUPS = new Map([
  ['', { name: 'root' }],
  ['layers/dense/vars', { name: 'dense' }],
  ['layers/norm/vars', { name: 'norm' }],
]);

function h5Target(): Target {
  const seed = seedFrom((f) => writeH5(f, H5_DATASETS, { groups: H5_GROUPS }), 'model.weights.h5');
  let keys: string[] | undefined;
  const regions: [number, number][] = [];
  // Through the Keras weights reader (what loads an untrusted model.weights.h5), which indexes with h5.ts.
  const load = (file: string): Summary => {
    const ws = [...readWeightsFiles([file]).values()];
    sameKeys(file, ws.map((w) => w.path), keys);
    if (keys === undefined) {
      keys = ws.map((w) => w.path);
      for (const w of ws) regions.push([w.offset, w.offset + w.byteLength]);
    }
    return { structure: ws.map((w) => `${w.path}:${w.dtype}[${w.shape.join(',')}]`).join(';'), values: digest(ws.map((w) => bytesOf(w.read()))) };
  };
  return { name: 'h5', seed, fileName: 'model.weights.h5', dataRegions: regions, load };
}

function safetensorsTarget(): Target {
  const seed = seedFrom(
    (f) =>
      writeSafetensors(f, [
        ['a', { shape: [2, 3], values: f32(6, 0.25) }],
        ['b', { shape: [3], values: f32(3, 3), dtype: 'BF16' }],
        ['c', { shape: [2, 2], values: f32(4, -2), dtype: 'F16' }],
      ]),
    'model.safetensors',
  );
  let keys: string[] | undefined;
  const regions: [number, number][] = [];
  const load = (file: string): Summary => {
    const st = readSafetensorsFile(file);
    const ts = [...st.tensors.values()];
    sameKeys(file, ts.map((t) => t.key), keys);
    if (keys === undefined) {
      keys = ts.map((t) => t.key);
      for (const t of ts) regions.push([t.offset, t.offset + t.byteLength]);
    }
    return { structure: ts.map((t) => `${t.key}:${t.dtype}[${t.shape.join(',')}]`).join(';'), values: digest(ts.map((t) => bytesOf(t.read()))) };
  };
  return { name: 'safetensors', seed, fileName: 'model.safetensors', dataRegions: regions, load };
}

function npzTarget(compress: boolean): Target {
  const seed = seedFrom(
    (f) =>
      writeNpz(
        f,
        [
          ['params/w', { shape: [2, 3], values: f32(6, 0.5) }],
          ['params/b', { shape: [3], values: f32(3, 1.5), dtype: 'bfloat16' }],
        ],
        { compress },
      ),
    'params.npz',
  );
  let keys: string[] | undefined;
  const load = (file: string): Summary => {
    const arrays = [...readNpz(file).values()];
    sameKeys(file, arrays.map((a) => a.key), keys);
    keys ??= arrays.map((a) => a.key);
    return { structure: arrays.map((a) => `${a.key}:${a.descr}[${a.shape.join(',')}]`).join(';'), values: digest(arrays.map((a) => bytesOf(a.read()))) };
  };
  // No data regions: every byte of an entry is under its CRC-32.
  return { name: compress ? 'npz-deflated' : 'npz', seed, fileName: 'params.npz', dataRegions: [], load };
}

function shardIndexTarget(): Target {
  const shard0 = seedFrom((f) => writeH5(f, new Map([...H5_DATASETS].slice(0, 2)), { groups: new Map([['layers/dense/vars', { name: 'dense' }]]) }), 's0.h5');
  const shard1 = seedFrom((f) => writeH5(f, new Map([...H5_DATASETS].slice(2)), { groups: new Map([['layers/norm/vars', { name: 'norm' }]]) }), 's1.h5');
  const total = [...H5_DATASETS.values()].reduce((n, d) => n + (d.values as Float32Array).byteLength, 0);
  const map = { metadata: { total_size: total }, weight_map: { '/layers/dense/vars': 'model_00000.weights.h5', '/layers/norm/vars': ['model_00001.weights.h5'] } };
  const seed = new Uint8Array(Buffer.from(JSON.stringify(map, null, 2)));
  let keys: string[] | undefined;
  const load = (file: string): Summary => {
    const weights = [...readShardedWeights(file).values()];
    sameKeys(file, weights.map((w) => w.path), keys);
    keys ??= weights.map((w) => w.path);
    return {
      structure: weights.map((w) => `${w.path}:${w.dtype}[${w.shape.join(',')}]@${path.basename(w.file)}`).join(';'),
      values: digest(weights.map((w) => bytesOf(w.read()))),
    };
  };
  return {
    name: 'sharded-index',
    seed,
    fileName: 'model.weights.json',
    dataRegions: [],
    beside: new Map([
      ['model_00000.weights.h5', shard0],
      ['model_00001.weights.h5', shard1],
    ]),
    load,
  };
}

/** transformers' `model.safetensors.index.json` over two shards. */
function hfIndexTarget(): Target {
  const shard = (entries: [string, number][]) =>
    seedFrom((f) => writeSafetensors(f, entries.map(([k, n]) => [k, { shape: [n], values: f32(n, n) }] as const)), 'shard.safetensors');
  const index = { metadata: { total_size: 36 }, weight_map: { a: 'model-00001-of-00002.safetensors', b: 'model-00001-of-00002.safetensors', c: 'model-00002-of-00002.safetensors' } };
  let keys: string[] | undefined;
  const load = (file: string): Summary => {
    const ts = [...readShardedSafetensors(file).values()];
    sameKeys(file, ts.map((t) => t.key), keys);
    keys ??= ts.map((t) => t.key);
    return { structure: ts.map((t) => `${t.key}:${t.dtype}[${t.shape.join(',')}]@${path.basename(t.file)}`).join(';'), values: digest(ts.map((t) => bytesOf(t.read()))) };
  };
  return {
    name: 'hf-index',
    seed: new Uint8Array(Buffer.from(JSON.stringify(index, null, 2))),
    fileName: 'model.safetensors.index.json',
    dataRegions: [],
    beside: new Map([
      ['model-00001-of-00002.safetensors', shard([['a', 4], ['b', 2]])],
      ['model-00002-of-00002.safetensors', shard([['c', 3]])],
    ]),
    load,
  };
}

function configTarget(): Target {
  // keras_hub's own config.json of the tiny generation fixture
  const text = fs.readFileSync('spec/fixtures/text/generate/preset/config.json', 'utf8');
  const seed = new Uint8Array(Buffer.from(text));
  const load = (_file: string, dir: string): Summary => {
    const config = readPresetConfig(dir);
    return { structure: Object.keys(config).sort().join(','), values: JSON.stringify(config) };
  };
  return { name: 'config.json', seed, fileName: 'config.json', dataRegions: jsonValueRanges(text), textual: true, load };
}

// ---------------------------------------------------------------------------------------------------------------
// Tokenizers
// ---------------------------------------------------------------------------------------------------------------

/** A tiny BPE vocabulary: specials, (optionally) the 256 byte pieces, and a few merges. */
function tinyPieces(bytes: boolean): { piece: string; score: number; type: number }[] {
  const pieces = [
    { piece: '<pad>', score: 0, type: 3 },
    { piece: '<eos>', score: 0, type: 3 },
    { piece: '<bos>', score: 0, type: 3 },
    { piece: '<unk>', score: 0, type: 2 },
  ];
  if (bytes) for (let b = 0; b < 256; b++) pieces.push({ piece: `<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`, score: 0, type: 6 });
  for (const [piece, score] of [['\u2581', -1], ['a', -2], ['b', -3], ['ab', -4], ['\u2581a', -5], ['\u2581ab', -6]] as const) pieces.push({ piece, score, type: 1 });
  return pieces;
}

const varint = (out: number[], n: number): void => {
  for (; n >= 0x80; n = Math.floor(n / 128)) out.push((n & 0x7f) | 0x80);
  out.push(n);
};
const field = (out: number[], no: number, body: number[]): void => {
  varint(out, (no << 3) | 2);
  varint(out, body.length);
  out.push(...body);
};
const vfield = (out: number[], no: number, v: number): void => {
  varint(out, no << 3);
  varint(out, v);
};

/**
 * A SentencePiece ModelProto, with its data regions: the body of every top-level field. Protobuf has no
 * integrity check, so a change inside a message is content, read exactly as sentencepiece reads it; the
 * framing (top-level tags and lengths) is the structure.
 */
function tinySpm(): { bytes: Uint8Array; regions: [number, number][] } {
  const out: number[] = [];
  const regions: [number, number][] = [];
  const top = (no: number, body: number[]): void => {
    field(out, no, body);
    regions.push([out.length - body.length, out.length]);
  };
  for (const p of tinyPieces(false)) {
    const body: number[] = [];
    field(body, 1, [...Buffer.from(p.piece, 'utf8')]);
    body.push((2 << 3) | 5, ...new Uint8Array(new Float32Array([p.score]).buffer));
    vfield(body, 3, p.type);
    top(1, body);
  }
  const trainer: number[] = [];
  vfield(trainer, 3, 2); // BPE
  vfield(trainer, 4, 10);
  vfield(trainer, 40, 3);
  vfield(trainer, 41, 2);
  vfield(trainer, 42, 1);
  vfield(trainer, 43, 0);
  for (const [no, s] of [[45, '<unk>'], [46, '<bos>'], [47, '<eos>'], [48, '<pad>']] as const) field(trainer, no, [...Buffer.from(s)]);
  top(2, trainer);
  const normalizer: number[] = [];
  field(normalizer, 1, [...Buffer.from('identity')]);
  vfield(normalizer, 3, 0);
  vfield(normalizer, 4, 0);
  top(3, normalizer);
  return { bytes: new Uint8Array(out), regions };
}

function tokenizerSummary(file: string): Summary {
  const tok = loadTokenizer(file);
  const pieces = tok.model.pieces;
  return {
    structure: `${pieces.length} pieces, ${tok.model.trainerSpec.modelType}`,
    values: digest([...pieces.map((p) => `${p.piece}\u0000${p.score}\u0000${p.type}`), JSON.stringify(tok.model.trainerSpec), JSON.stringify(tok.model.normalizerSpec)]),
  };
}

function spmTarget(): Target {
  const { bytes, regions } = tinySpm();
  return { name: 'spm', seed: bytes, fileName: 'tokenizer.model', dataRegions: regions, load: tokenizerSummary };
}

function tokenizerJsonTarget(): Target {
  const pieces = tinyPieces(true);
  const vocab = Object.fromEntries(pieces.map((p, id) => [p.piece, id]));
  const json = {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: pieces
      .map((p, id) => ({ ...p, id }))
      .filter((p) => p.type === 3 || p.type === 2)
      .map((p) => ({ id: p.id, content: p.piece, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true })),
    normalizer: { type: 'Replace', pattern: { String: ' ' }, content: '\u2581' },
    pre_tokenizer: { type: 'Split', pattern: { String: ' ' }, behavior: 'MergedWithPrevious', invert: false },
    post_processor: null,
    decoder: {
      type: 'Sequence',
      decoders: [{ type: 'Replace', pattern: { String: '\u2581' }, content: ' ' }, { type: 'ByteFallback' }, { type: 'Fuse' }],
    },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: '<unk>',
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: true,
      byte_fallback: true,
      ignore_merges: false,
      vocab,
      merges: [['a', 'b'], ['\u2581', 'a'], ['\u2581a', 'b'], ['\u2581', 'ab']],
    },
  };
  const text = JSON.stringify(json);
  // vocab keys are piece texts: values, like the strings and numbers
  return { name: 'tokenizer.json', seed: new Uint8Array(Buffer.from(text)), fileName: 'tokenizer.json', dataRegions: jsonValueRanges(text, true), textual: true, load: tokenizerSummary };
}

// ---------------------------------------------------------------------------------------------------------------
// Images
// ---------------------------------------------------------------------------------------------------------------

function rgba(width: number, height: number): Buffer {
  const data = Buffer.alloc(width * height * 4);
  for (let i = 0; i < width * height; i++) data.set([(i * 37) & 255, (i * 11) & 255, (i * 5) & 255, 255], 4 * i);
  return data;
}

function imageSummary(file: string): Summary {
  const img = readImage(file);
  return { structure: `${img.height}x${img.width}x${img.channels}`, values: digest([new Uint8Array(img.data.buffer, img.data.byteOffset, img.data.byteLength)]) };
}

function pngTarget(): Target {
  const png = new PNG({ width: 5, height: 4 });
  png.data = rgba(5, 4);
  const seed = new Uint8Array(PNG.sync.write(png, { colorType: 6 }));
  // No data regions: every chunk is under its CRC.
  return { name: 'png', seed, fileName: 'image.png', dataRegions: [], load: imageSummary };
}

/** The size a JPEG's first frame header declares (`HxWx3`), or null without one. */
function jpegDeclared(bytes: Uint8Array): string | null {
  for (let pos = 2; pos + 9 <= bytes.length; ) {
    if (bytes[pos] !== 0xff) return null;
    const marker = bytes[pos + 1];
    if (marker >= 0xc0 && marker <= 0xcf && marker !== 0xc4 && marker !== 0xc8 && marker !== 0xcc) {
      return `${(bytes[pos + 5] << 8) | bytes[pos + 6]}x${(bytes[pos + 7] << 8) | bytes[pos + 8]}x3`;
    }
    if (marker === 0xd8 || marker === 0x01 || (marker >= 0xd0 && marker <= 0xd7)) pos += 2;
    else pos += 2 + ((bytes[pos + 2] << 8) | bytes[pos + 3]);
  }
  return null;
}

function jpegTarget(): Target {
  const seed = new Uint8Array(jpeg.encode({ data: rgba(8, 6), width: 8, height: 6 }, 90).data);
  // JPEG has no integrity check: a load must have the size the (mutated) frame header declares.
  return { name: 'jpeg', seed, fileName: 'image.jpg', dataRegions: [[0, seed.length]], load: imageSummary, declared: jpegDeclared };
}

// ---------------------------------------------------------------------------------------------------------------
// LoRA adapters (keras_hub's .lora.h5, as the train fixtures hold one)
// ---------------------------------------------------------------------------------------------------------------

function loraTarget(): Target {
  const dir = 'spec/fixtures/train/lora_forward_grad';
  const seed = new Uint8Array(fs.readFileSync(path.join(dir, 'adapter.lora.h5')));
  const config = readPresetConfig(path.join(dir, 'preset'));
  const regions: [number, number][] = [];
  for (const w of readWeightsFiles([path.join(dir, 'adapter.lora.h5')]).values()) regions.push([w.offset, w.offset + w.byteLength]);
  // keras_hub's load_lora_weights reads exactly the model's LoRA-enabled layers (each by its index): an
  // adapter for another layer, or a missing one, is refused there; the same check stands in for it here.
  let layers: string[] | undefined;
  const load = (file: string): Summary => {
    const lora = readLoraH5(file, config);
    sameKeys(file, lora.adapters.map((a) => a.layer), layers);
    layers ??= lora.adapters.map((a) => a.layer);
    return {
      structure: `rank ${lora.rank}: ${lora.adapters.map((a) => `${a.layer}[${a.a.shape.join(',')}|${a.b.shape.join(',')}]`).join(';')}`,
      values: digest(lora.adapters.flatMap((a) => [bytesOf(a.a.values), bytesOf(a.b.values)])),
    };
  };
  return { name: 'lora.h5', seed, fileName: 'adapter.lora.h5', dataRegions: regions, load };
}

/** Every target, by name. */
export const TARGETS: Readonly<Record<string, () => Target>> = {
  h5: h5Target,
  'sharded-index': shardIndexTarget,
  'hf-index': hfIndexTarget,
  safetensors: safetensorsTarget,
  npz: () => npzTarget(false),
  'npz-deflated': () => npzTarget(true),
  spm: spmTarget,
  'tokenizer.json': tokenizerJsonTarget,
  'config.json': configTarget,
  png: pngTarget,
  jpeg: jpegTarget,
  'lora.h5': loraTarget,
};
