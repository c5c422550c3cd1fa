/**
 * Untrusted files, handles and paths: one literal error per class of problem the probe of issue 9 found, each a
 * `FormatError` naming the file and the field.
 */
import test, { type ExecutionContext } from 'ava';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { FormatError } from '../../checkpoints/errors';
import { writeH5 } from '../../checkpoints/h5write';
import { lookup3, openH5 } from '../../checkpoints/h5';
import { readKerasWeights, readPresetConfig, readWeightsFiles } from '../../checkpoints/keras';
import { crc32, readNpz, writeNpz } from '../../checkpoints/npz';
import { readSafetensors, readSafetensorsFile, writeSafetensors } from '../../checkpoints/safetensors';
import { decodeHfConfig } from '../../checkpoints/hf';
import { decodeImage } from '../../src/preprocess/image';
import { fromPreset, resolvePreset } from '../../src/runtime/preset';
import { loadSentencePiece, loadTokenizer } from '../../src/text/tokenizer';
import { tempDir } from '../helpers/files';

/** The FormatError `f` throws (fails the test on anything else). */
function formatError(t: ExecutionContext, f: () => unknown): FormatError {
  const e = t.throws(f);
  if (!(e instanceof FormatError)) throw new Error(`expected a FormatError, got ${String(e)}`);
  return e;
}

const f32 = (n: number, k: number) => Float32Array.from({ length: n }, (_, i) => i * k);

// ---------------------------------------------------------------------------------------------------------------
// Silently wrong weights
// ---------------------------------------------------------------------------------------------------------------

test('safetensors: a header length off by a few bytes (the data would shift) is refused', (t) => {
  const file = path.join(tempDir(t), 'model.safetensors');
  writeSafetensors(file, [['w', { shape: [4], values: f32(4, 1) }]], {});
  const bytes = fs.readFileSync(file);
  const n = Number(bytes.readBigUInt64LE(0));
  // 4 spaces more in the header: still valid JSON, and the data would start 4 bytes late
  const longer = Buffer.concat([bytes.subarray(0, 8 + n), Buffer.from('    '), bytes.subarray(8 + n)]);
  longer.writeBigUInt64LE(BigInt(n + 4), 0);
  fs.writeFileSync(file, longer);
  t.deepEqual(readSafetensorsFile(file).tensors.get('w')!.read(), f32(4, 1)); // the header's own padding is fine
  longer.writeBigUInt64LE(BigInt(n), 0); // ... but the data region must start right after the header
  fs.writeFileSync(file, longer);
  const e = formatError(t, () => readSafetensorsFile(file));
  t.is(e.message, `${file}: data_offsets: the tensors end at byte ${8 + n + 16} (header ${8 + n} + data 16), but the file has ${8 + n + 20} bytes`);
  t.deepEqual([e.file, e.field], [file, 'data_offsets']);
  // a gap between tensors: bytes nobody reads
  const gap = path.join(path.dirname(file), 'gap.safetensors');
  const header = Buffer.from(JSON.stringify({ a: { dtype: 'F32', shape: [1], data_offsets: [0, 4] }, b: { dtype: 'F32', shape: [1], data_offsets: [8, 12] } }));
  const length = Buffer.alloc(8);
  length.writeBigUInt64LE(BigInt(header.length));
  fs.writeFileSync(gap, Buffer.concat([length, header, Buffer.alloc(12)]));
  t.is(formatError(t, () => readSafetensorsFile(gap)).message, `${gap}: data_offsets: tensor "b" starts at 8, expected 4 (tensors must tile the data region from 0 without gaps)`);
});

/** A writeH5 file whose dataset `from` points at byte `to` instead (its 8-byte address patched). */
function patchedH5(dir: string, to: (offsets: Map<string, number>) => number): { file: string; offsets: Map<string, number> } {
  const file = path.join(dir, 'model.weights.h5');
  writeH5(file, new Map([['a', { shape: [4], values: f32(4, 1) }], ['b', { shape: [4], values: f32(4, 2) }]]));
  const offsets = new Map([...readWeightsFiles([file]).values()].map((w) => [w.path, w.offset]));
  const bytes = fs.readFileSync(file);
  const address = Buffer.alloc(8);
  address.writeBigUInt64LE(BigInt(offsets.get('b')!));
  const at = bytes.indexOf(address);
  t_assert(at > 0 && bytes.indexOf(address, at + 1) < 0, 'the address of b occurs once');
  bytes.writeBigUInt64LE(BigInt(to(offsets)), at);
  fs.writeFileSync(file, bytes);
  return { file, offsets };
}
function t_assert(ok: boolean, what: string): void {
  if (!ok) throw new Error(what);
}

test('HDF5: a data address into another dataset, or into the metadata, is refused', (t) => {
  const dir = tempDir(t);
  const { file, offsets } = patchedH5(dir, (o) => o.get('a')! + 8);
  const a = offsets.get('a')!;
  const e = formatError(t, () => readKerasWeights(dir));
  t.is(e.message, `${file}: dataset "b" (bytes ${a + 8}..${a + 24}) overlaps dataset "a" (bytes ${a}..${a + 16})`);
  t.deepEqual([e.file, e.field], [file, 'b']);
  const meta = patchedH5(tempDir(t), () => 0).file;
  t.regex(formatError(t, () => readWeightsFiles([meta])).message, new RegExp(`^${meta}: dataset "b" \\(bytes 0\\.\\.16\\) overlaps the metadata \\(signature\\) \\(bytes 0\\.\\.8\\)$`));
});

test('HDF5: a data address moved into free space is refused: the data it named is left unreferenced, and is not zero', (t) => {
  // the fuzzer's case: one bit of a .lora.h5 data address (byte 23059, ^4) moves a dataset onto unused
  // (zero) bytes; every other check passes, and it would load zeros
  const file = path.join(tempDir(t), 'adapter.lora.h5');
  const bytes = fs.readFileSync('spec/fixtures/train/lora_forward_grad/adapter.lora.h5');
  bytes[23059] ^= 4;
  fs.writeFileSync(file, bytes);
  const e = formatError(t, () => readWeightsFiles([file]));
  t.is(e.message, `${file}: bytes 4808..4936 are referenced by no object, yet byte 4808 is 179, not 0: a data address was changed, or an in-place edit left freed space (h5repack rewrites such a file)`);
  t.deepEqual([e.file, e.field], [file, 'layout']);
});

test('HDF5: version 2 object headers and superblocks are checked against their lookup3 checksums', (t) => {
  t.is(lookup3(new Uint8Array(0)), 0xdeadbeef);
  // Bob Jenkins' published values for hashlittle("Four score and seven years ago", 30, 0) and initval 0 on ""
  t.is(lookup3(new TextEncoder().encode('Four score and seven years ago')), 0x17770551);
  const src = fs.readFileSync('spec/checkpoints/fixtures/types_latest.h5');
  const header = src.indexOf('OHDR', 48);
  const file = path.join(tempDir(t), 'types_latest.h5');
  const bytes = Buffer.from(src);
  bytes[header + 20] ^= 0x10;
  fs.writeFileSync(file, bytes);
  t.regex(formatError(t, () => openH5(file)).message, new RegExp(`^${file}: .* at byte ${header}: checksum [0-9a-f]{8} stored, the bytes give [0-9a-f]{8}$`));
  const sb = Buffer.from(src);
  sb[12] ^= 1; // superblock v3: a flag byte
  fs.writeFileSync(file, sb);
  t.regex(formatError(t, () => openH5(file)).message, new RegExp(`^${file}: the superblock at byte 0: checksum [0-9a-f]{8} stored, the bytes give [0-9a-f]{8}$`));
});

test('npz: corrupted data fails its CRC-32 (numpy refuses it too)', (t) => {
  const file = path.join(tempDir(t), 'params.npz');
  writeNpz(file, [['w', { shape: [4], values: f32(4, 1) }]]);
  const bytes = fs.readFileSync(file);
  const at = bytes.indexOf(Buffer.from(new Float32Array([3]).buffer));
  bytes[at] ^= 1;
  fs.writeFileSync(file, bytes);
  const w = readNpz(file).get('w')!;
  const e = formatError(t, () => w.read());
  t.regex(e.message, new RegExp(`^${file}: w: CRC-32 is 0x[0-9a-f]{8}, the archive says 0x[0-9a-f]{8} \\(the entry is corrupt\\)$`));
  t.deepEqual([e.file, e.field], [file, 'w']);
  t.is(formatError(t, () => w.readRange(0, 1)).message, e.message);
});

/** A PNG from chunks, each with its CRC. */
function png(chunks: [string, Buffer][]): Buffer {
  const parts: Uint8Array[] = [Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])];
  for (const [type, data] of chunks) {
    const head = Buffer.alloc(8);
    head.writeUInt32BE(data.length);
    head.write(type, 4, 'latin1');
    const crc = Buffer.alloc(4);
    crc.writeUInt32BE(crc32(Buffer.concat([head.subarray(4), data])));
    parts.push(head, data, crc);
  }
  return Buffer.concat(parts);
}
const ihdr = (w: number, h: number) => {
  const b = Buffer.alloc(13);
  b.writeUInt32BE(w);
  b.writeUInt32BE(h, 4);
  b.set([8, 2, 0, 0, 0], 8); // 8-bit RGB
  return b;
};

test('PNG: no IDAT (pngjs gave an all-black picture), a 20000 x 20000 declaration in 100 bytes, a bad CRC', (t) => {
  t.is(formatError(t, () => decodeImage(png([['IHDR', ihdr(2, 2)], ['IEND', Buffer.alloc(0)]]), 'x.png')).message, "decodeImage: 'x.png' is a corrupt PNG: no IDAT chunk (no image data)");
  const huge = png([['IHDR', ihdr(20000, 20000)], ['IDAT', Buffer.from([0x78, 0x9c, 0x63, 0, 0, 0, 1, 0, 1])], ['IEND', Buffer.alloc(0)]]);
  t.true(huge.length < 150);
  const e = formatError(t, () => decodeImage(huge, 'huge.png'));
  t.is(e.message, "decodeImage: 'huge.png' declares 20000x20000 = 400000000 pixels, above the limit of 67108864 (MAX_IMAGE_PIXELS)");
  t.deepEqual([e.file, e.field], ['huge.png', 'size']);
  const bad = png([['IHDR', ihdr(2, 2)], ['IEND', Buffer.alloc(0)]]);
  bad[8 + 8 + 13] ^= 1; // IHDR's CRC
  t.is(formatError(t, () => decodeImage(bad, 'crc.png')).message, `decodeImage: 'crc.png' is a corrupt PNG: chunk "IHDR" at byte 8 has CRC 0x${crc32(Buffer.concat([Buffer.from('IHDR'), ihdr(2, 2)])).toString(16).padStart(8, '0')}, the file says 0x${bad.readUInt32BE(29).toString(16).padStart(8, '0')}`);
});

test('JPEG: the frame size is checked before decoding; no scan is refused, not decoded as nothing', (t) => {
  const sof = Buffer.from([0xff, 0xc0, 0, 11, 8, 0x4e, 0x20, 0x4e, 0x20, 1, 1, 0x11, 0]); // 20000 x 20000, 1 component
  t.is(formatError(t, () => decodeImage(Buffer.concat([Buffer.from([0xff, 0xd8]), sof, Buffer.from([0xff, 0xd9])]), 'big.jpg')).message, "decodeImage: 'big.jpg' declares 20000x20000 = 400000000 pixels, above the limit of 67108864 (MAX_IMAGE_PIXELS)");
  const small = Buffer.from([0xff, 0xc0, 0, 11, 8, 0, 2, 0, 2, 1, 1, 0x11, 0]);
  t.is(formatError(t, () => decodeImage(Buffer.concat([Buffer.from([0xff, 0xd8]), small, Buffer.from([0xff, 0xd9])]), 'empty.jpg')).message, "decodeImage: 'empty.jpg' is a corrupt JPEG: it ends (EOI) before any scan");
  // jpeg-js' own TypeErrors (a scan whose tables are missing) come out with the file named
  const e = formatError(t, () => decodeImage(Buffer.concat([Buffer.from([0xff, 0xd8]), small, Buffer.from([0xff, 0xda, 0, 8, 1, 1, 0, 0, 0x3f, 0, 0xff, 0xd9])]), 'tables.jpg'));
  t.regex(e.message, /^decodeImage: 'tables\.jpg' is a JPEG that cannot be decoded: /);
});

// ---------------------------------------------------------------------------------------------------------------
// Escapes
// ---------------------------------------------------------------------------------------------------------------

test('handles: "..", "." and empty parts are refused in kaggle:// and hf:// (repo and revision)', (t) => {
  for (const [handle, form] of [
    ['kaggle://keras/paligemma2/keras/../../../../etc', 'kaggle://<owner>/<model>/<framework>/<variation>[/<version>]'],
    ['kaggle://keras/./keras/x/1', 'kaggle://<owner>/<model>/<framework>/<variation>[/<version>]'],
    ['kaggle://keras//keras/x', 'kaggle://<owner>/<model>/<framework>/<variation>[/<version>]'],
  ] as const) {
    const e = formatError(t, () => resolvePreset(handle));
    t.is(e.message, `fromPreset("${handle}"): not a Kaggle model handle; expected ${form} (no empty, "." or ".." parts)`);
    t.deepEqual([e.file, e.field], [handle, 'handle']);
  }
  for (const handle of ['hf://google/..', 'hf://../x', 'hf://google/paligemma@../../../../etc/passwd', 'hf://google/paligemma@refs//main']) {
    t.is(
      formatError(t, () => fromPreset(handle)).message,
      `fromPreset("${handle}"): not a Hugging Face repo; expected hf://<org>/<repo>[@<revision>] (no empty, "." or ".." parts)`,
    );
  }
});

test('hf://: a ref file that is not a commit hash is refused without printing it', async (t) => {
  const root = tempDir(t);
  const repo = path.join(root, 'models--org--repo');
  fs.mkdirSync(path.join(repo, 'snapshots'), { recursive: true });
  fs.mkdirSync(path.join(repo, 'refs'));
  fs.writeFileSync(path.join(repo, 'refs', 'main'), 'root:x:0:0:secret\n');
  const before = process.env['HF_HUB_CACHE'];
  process.env['HF_HUB_CACHE'] = root;
  try {
    const e = formatError(t, () => resolvePreset('hf://org/repo'));
    t.is(e.message, `${path.join(repo, 'refs', 'main')}: ref: expected a commit hash (letters, digits, '.', '-', '_'), got 17 other characters`);
    t.false(e.message.includes('secret'));
  } finally {
    if (before === undefined) delete process.env['HF_HUB_CACHE'];
    else process.env['HF_HUB_CACHE'] = before;
  }
});

test('shard names: empty, "." and "..", and paths, are refused in both shard maps', (t) => {
  const dir = tempDir(t);
  const map = path.join(dir, 'model.weights.json');
  for (const name of ['', '..', '../model.weights.h5', '/etc/passwd']) {
    fs.writeFileSync(map, JSON.stringify({ metadata: { total_size: 0 }, weight_map: { '/layers/a/vars': name } }));
    const e = formatError(t, () => readKerasWeights(dir));
    t.is(e.message, `${map}: weight_map./layers/a/vars: expected "/<group path>" -> shard file name or list of them, got ${JSON.stringify(name)}`);
  }
  fs.rmSync(map);
  const index = path.join(dir, 'model.safetensors.index.json');
  fs.writeFileSync(index, JSON.stringify({ weight_map: { w: '' } }));
  t.is(formatError(t, () => readSafetensors(dir)).message, `${index}: weight_map.w: expected a shard file name, got an empty name`);
  fs.writeFileSync(index, JSON.stringify({ weight_map: { w: '..' } }));
  t.is(formatError(t, () => readSafetensors(dir)).message, `${index}: weight_map.w: expected a shard file name, got "..", which is not a file name`);
});

// ---------------------------------------------------------------------------------------------------------------
// Hangs and blow-ups from a few bytes
// ---------------------------------------------------------------------------------------------------------------

test('config.json: absurd counts are refused before anything is built from them', (t) => {
  const dir = tempDir(t);
  const config = JSON.parse(fs.readFileSync('spec/fixtures/text/generate/preset/config.json', 'utf8')) as { config: Record<string, unknown> };
  config.config['num_layers'] = 1e9;
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(config));
  const e = formatError(t, () => readPresetConfig(dir));
  t.is(e.message, `${path.join(dir, 'config.json')}: config.num_layers: expected positive integer at most 1024, got 1000000000`);
  t.is(e.field, 'config.num_layers');
  const hf = { model_type: 'paligemma', text_config: { model_type: 'gemma2', vocab_size: 10, num_hidden_layers: 1e9, layer_types: [] }, vision_config: {} };
  t.is(formatError(t, () => decodeHfConfig(hf, 'hf.json')).message.split('\n')[0], 'hf.json: text_config.num_hidden_layers: expected a positive integer at most 1024, got 1000000000');
});

test('JSON nested deeper than 64 levels is refused before parsing (no stack overflow)', (t) => {
  const dir = tempDir(t);
  fs.writeFileSync(path.join(dir, 'config.json'), '['.repeat(100000) + ']'.repeat(100000));
  t.is(formatError(t, () => readPresetConfig(dir)).message, `${path.join(dir, 'config.json')}: json: nested deeper than 64 levels`);
  fs.writeFileSync(path.join(dir, 'tokenizer.json'), '{"a":'.repeat(100000) + '1' + '}'.repeat(100000));
  t.is(formatError(t, () => loadTokenizer(path.join(dir, 'tokenizer.json'))).message, `tokenizer: ${path.join(dir, 'tokenizer.json')} is nested deeper than 64 levels; not a tokenizer.json`);
});

const mkfifo = (file: string): boolean => {
  try {
    execFileSync('mkfifo', [file]);
    return true;
  } catch {
    return false;
  }
};

test('a FIFO in place of model.weights.h5 or config.json is refused, never read (it would block forever)', (t) => {
  const dir = tempDir(t);
  if (!mkfifo(path.join(dir, 'model.weights.h5')) || !mkfifo(path.join(dir, 'config.json'))) {
    t.pass('no mkfifo on this platform');
    return;
  }
  const weights = path.join(dir, 'model.weights.h5');
  t.is(formatError(t, () => readKerasWeights(dir)).message, `${weights}: cannot read: a FIFO, not a regular file`);
  t.is(formatError(t, () => readPresetConfig(dir)).message, `${path.join(dir, 'config.json')}: cannot read: a FIFO, not a regular file`);
  t.is(formatError(t, () => fromPreset(dir)).message, `${path.join(dir, 'config.json')}: cannot read: a FIFO, not a regular file`);
});

// ---------------------------------------------------------------------------------------------------------------
// Unclear errors become clear ones
// ---------------------------------------------------------------------------------------------------------------

test('SentencePiece: a file cut after its pieces, and unknown fields, are refused (proto2 defaults would load)', (t) => {
  const piece = (s: string, type: number) => {
    const text = Buffer.from(s);
    const body = Buffer.concat([Buffer.from([0x0a, text.length]), text, Buffer.from([0x15, 0, 0, 0, 0, 0x18, type])]);
    return Buffer.concat([Buffer.from([0x0a, body.length]), body]);
  };
  const pieces = Buffer.concat([piece('<unk>', 2), piece('a', 1)]);
  t.is(formatError(t, () => loadSentencePiece(pieces, 'cut.spm')).message, 'tokenizer: cut.spm is not a SentencePiece ModelProto (no trainer_spec (a cut-off file?))');
  t.is(formatError(t, () => loadSentencePiece(Buffer.concat([pieces, Buffer.from([0x4a, 0])]), 'x.spm')).message, 'tokenizer: x.spm is not a SentencePiece ModelProto (unknown ModelProto field 9)');
});

test('an HDF5 file with bytes past its end-of-file address (inserted or appended) is refused', (t) => {
  const dir = tempDir(t);
  const file = path.join(dir, 'model.weights.h5');
  writeH5(file, new Map([['a', { shape: [4], values: f32(4, 1) }]]));
  const size = fs.statSync(file).size;
  fs.appendFileSync(file, Buffer.alloc(4));
  t.is(formatError(t, () => readKerasWeights(dir)).message, `${file}: superblock: the end-of-file address is ${size}, but the file has ${size + 4} bytes`);
});

test('a config within the maxima that describes more parameters than the machine holds is refused before allocating', (t) => {
  const dir = tempDir(t);
  const config = JSON.parse(fs.readFileSync('spec/fixtures/text/generate/preset/config.json', 'utf8')) as { config: Record<string, unknown> };
  Object.assign(config.config, { num_layers: 1024, hidden_dim: 1 << 18, intermediate_dim: 1 << 18 });
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(config));
  const e = formatError(t, () => fromPreset(dir, { loadWeights: false }));
  t.regex(e.message, new RegExp(`^fromPreset\\("${dir}"\\): the config describes [\\d,]+ parameters \\([\\d.]+ GiB as float32\\), more than this machine's memory \\([\\d.]+ GiB\\)$`));
  t.is(e.field, 'config');
});
