/**
 * Golden-fixture I/O: the format of ../shared/fixtures (raw little-endian C-order `.bin` files described
 * by `{file, dtype, shape}` entries of a `manifest.json`), and `runFixture`, which computes every output a
 * manifest asks for from its preset (the `paligemma run-fixture` contract).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { tf } from '../../dsl/tf';
import * as d from '../../dsl';
import type { Named } from '../../dsl';
import { backbone, logits, type BackboneInputs, type PaliGemmaParams } from '../../models/paligemma';
import { vit } from '../../models/siglip';
import { buildTree, byKerasPath, diffWeights, vitLayout, type WeightSpec } from '../../checkpoints/params';
import { readWeightsFiles } from '../../checkpoints/keras';
import { CONFIG_DEFAULTS, type PaliGemmaConfig, type VitPooling } from '../../models/config';
import type { VitParams } from '../../models/siglip';
import { loadPreset } from '../runtime/preset';
import { writeFileAtomic } from '../../checkpoints/atomic';
import { computeTrainFixture, TRAIN_KINDS } from './train_fixture';

export type BinDType = 'float32' | 'int32' | 'uint8' | 'float64' | 'uint32';
export interface BinEntry {
  readonly file: string;
  readonly dtype: BinDType;
  readonly shape: readonly number[];
}
export interface Manifest {
  readonly name?: string;
  readonly inputs: Readonly<Record<string, BinEntry>>;
  readonly outputs: Readonly<Record<string, BinEntry>>;
  readonly debug?: Readonly<Record<string, BinEntry>>;
  readonly gradients?: Readonly<Record<string, BinEntry & { keras_path?: string }>>;
  readonly loss_inputs?: Readonly<Record<string, BinEntry>>;
  readonly options?: { readonly compat?: 'keras_hub' };
  readonly [k: string]: unknown;
}

export type BinArray = Float32Array | Int32Array | Uint8Array | Float64Array | Uint32Array;

const ctors = { float32: Float32Array, int32: Int32Array, uint8: Uint8Array, float64: Float64Array, uint32: Uint32Array } as const;

export function readManifest(dir: string): Manifest {
  const file = path.join(dir, 'manifest.json');
  if (!fs.existsSync(file)) throw new Error(`${file}: no such file (a fixture directory has a manifest.json)`);
  const m = JSON.parse(fs.readFileSync(file, 'utf8')) as Manifest;
  if (typeof m.inputs !== 'object' || typeof m.outputs !== 'object') throw new Error(`${file}: expected "inputs" and "outputs" objects`);
  return m;
}

/** Read one `.bin` tensor, checking its byte size against dtype and shape. */
export function readBin(dir: string, e: BinEntry): BinArray {
  const file = path.join(dir, e.file);
  const Ctor = ctors[e.dtype];
  if (!Ctor) throw new Error(`${file}: unsupported dtype ${e.dtype}`);
  const buf = fs.readFileSync(file);
  const n = e.shape.reduce((a, b) => a * b, 1);
  if (buf.byteLength !== n * Ctor.BYTES_PER_ELEMENT) {
    throw new Error(`${file}: ${buf.byteLength} bytes, expected ${n * Ctor.BYTES_PER_ELEMENT} for ${e.dtype} [${e.shape.join(', ')}]`);
  }
  const out = new Ctor(n);
  new Uint8Array(out.buffer).set(buf);
  return out;
}

/** Write a `.bin` tensor atomically. */
export function writeBin(dir: string, file: string, data: BinArray): void {
  writeFileAtomic(path.join(dir, file), new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
}

/** The four backbone inputs of a manifest as named tensors. */
export function fixtureInputs(dir: string, m: Manifest): BackboneInputs {
  const get = (k: string) => {
    const e = m.inputs[k];
    if (!e) throw new Error(`${path.join(dir, 'manifest.json')}: inputs.${k} is missing`);
    return tf.tensor(readBin(dir, e) as Float32Array, e.shape as number[], e.dtype === 'float32' ? 'float32' : 'int32');
  };
  return {
    images: d.named(get('images'), ['batch', 'height', 'width', 'channels'] as const),
    token_ids: d.named(get('token_ids'), ['batch', 'seq'] as const),
    padding_mask: d.named(get('padding_mask'), ['batch', 'seq'] as const),
    response_mask: d.named(get('response_mask'), ['batch', 'seq'] as const),
  };
}

export interface Computed {
  readonly outputs: Map<string, { shape: number[]; data: Float32Array }>;
  readonly gradients: Map<string, { shape: number[]; data: Float32Array; keras_path?: string }>;
  /** Training fixtures: every variable after the last step, by keras path. */
  readonly weights_final?: Map<string, { shape: number[]; data: Float32Array; keras_path?: string }>;
  /** preprocess fixtures: `runs[name][key]`. */
  readonly runs?: Map<string, Map<string, { shape: number[]; data: Float32Array | Int32Array | Uint8Array; dtype: 'float32' | 'int32' | 'uint8' }>>;
  /** Files written next to the manifest (e.g. the `.lora.h5` after training), by name. */
  readonly files?: Map<string, (file: string) => void>;
}

const read = async (x: Named | tf.Tensor) => {
  const t = x instanceof tf.Tensor ? x : x.tensor;
  return { shape: [...t.shape], data: (await t.data()) as Float32Array };
};

/** Everything the manifest lists, computed from `<dir>/preset` on the current backend. */
export async function computeFixture(dir: string, m: Manifest = readManifest(dir), params?: PaliGemmaParams): Promise<Computed> {
  if (m.vit_kwargs) return computeStandaloneVit(dir, m);
  if ((TRAIN_KINDS as readonly unknown[]).includes(m.kind)) return computeTrainFixture(dir, m);
  const own = params ?? loadPreset(path.join(dir, 'preset'));
  const compat = m.options?.compat;
  const inputs = fixtureInputs(dir, m);
  const outputs: Computed['outputs'] = new Map();
  const gradients: Computed['gradients'] = new Map();
  try {
    const seq = backbone(own, inputs, { compat });
    if ('sequence_output' in m.outputs) outputs.set('sequence_output', await read(seq));
    if ('logits' in m.outputs) {
      const l = logits(own, seq);
      outputs.set('logits', await read(l));
      l.dispose();
    }
    if ('vit_output' in m.outputs) {
      const v = d.scoped(() => vit(own.vit, { ...own.config }, inputs.images));
      // a pooled ViT output is one token; the manifest stores it as [batch, embed]
      const flat = tf.reshape(v.tensor, [v.shape[0], v.shape[2]]);
      outputs.set('vit_output', await read(flat));
      tf.dispose([v.tensor, flat]);
    }
    seq.dispose();
    if (m.loss_inputs?.R) {
      const R = d.named(tf.tensor(readBin(dir, m.loss_inputs.R) as Float32Array, m.loss_inputs.R.shape as number[]), ['batch', 'seq', 'embed'] as const);
      const { value, grads } = lossAndGrads(own, inputs, R, compat);
      outputs.set('loss', { shape: [1], data: Float32Array.from(await value.data()) });
      const byPath = byKerasPath(grads.params);
      for (const [k, g] of byPath) gradients.set(k, { ...(await read(g)), keras_path: k });
      gradients.set('images', await read(grads.images));
      tf.dispose([value, R.tensor, grads.images.tensor, ...d.leaves(grads.params).map(([, x]) => x.tensor), ...[...byPath.values()].map((x) => x.tensor)]);
    }
  } finally {
    tf.dispose(d.collectTensors(inputs));
    if (!params) d.disposeTree(own);
  }
  return { outputs, gradients };
}

/** loss = sum(sequence_output * R) and its gradient with respect to every weight and the images. */
export function lossAndGrads(p: PaliGemmaParams, inputs: BackboneInputs, R: Named, compat?: 'keras_hub') {
  const { value, grads } = d.valueAndGrad(
    (both: { params: PaliGemmaParams; images: Named }) =>
      d.sumAll(d.mul(backbone(both.params, { ...inputs, images: both.images as BackboneInputs['images'] }, { compat }), R)),
    { params: p, images: inputs.images as Named },
  );
  return { value, grads };
}

/** Write computed outputs in the fixture format: `<out>/outputs/*.bin`, `<out>/gradients/*.bin`, manifest. */
export function writeComputed(outDir: string, c: Computed): void {
  fs.mkdirSync(path.join(outDir, 'outputs'), { recursive: true });
  const manifest: {
    outputs: Record<string, BinEntry>;
    gradients?: Record<string, BinEntry & { keras_path?: string }>;
    weights_final?: Record<string, BinEntry & { keras_path?: string }>;
    runs?: Record<string, Record<string, BinEntry>>;
    files?: string[];
  } = { outputs: {} };
  for (const [k, v] of c.outputs) {
    const file = `outputs/${k}.bin`;
    writeBin(outDir, file, v.data);
    manifest.outputs[k] = { file, dtype: 'float32', shape: v.shape };
  }
  if (c.gradients.size > 0) {
    fs.mkdirSync(path.join(outDir, 'gradients'), { recursive: true });
    manifest.gradients = {};
    for (const [k, v] of c.gradients) {
      const file = `gradients/${k.replace(/\//g, '__')}.bin`;
      writeBin(outDir, file, v.data);
      manifest.gradients[k] = { file, dtype: 'float32', shape: v.shape, ...(v.keras_path ? { keras_path: v.keras_path } : {}) };
    }
  }
  if (c.weights_final?.size) {
    fs.mkdirSync(path.join(outDir, 'weights_final'), { recursive: true });
    manifest.weights_final = {};
    for (const [k, v] of c.weights_final) {
      const file = `weights_final/${k.replace(/\//g, '__')}.bin`;
      writeBin(outDir, file, v.data);
      manifest.weights_final[k] = { file, dtype: 'float32', shape: v.shape, keras_path: k };
    }
  }
  if (c.runs?.size) {
    manifest.runs = {};
    for (const [name, run] of c.runs) {
      fs.mkdirSync(path.join(outDir, name), { recursive: true });
      const entries: Record<string, BinEntry> = {};
      for (const [k, v] of run) {
        const file = `${name}/${k}.bin`;
        writeBin(outDir, file, v.data);
        entries[k] = { file, dtype: v.dtype, shape: v.shape };
      }
      manifest.runs[name] = entries;
    }
  }
  if (c.files?.size) {
    manifest.files = [];
    for (const [name, write] of c.files) {
      write(path.join(outDir, name));
      manifest.files.push(name);
    }
  }
  writeFileAtomic(path.join(outDir, 'manifest.json'), JSON.stringify(manifest, null, 2) + '\n');
}

// -------------------------------------------------------------------------------------------------
// a PaliGemmaVit on its own (fixture vit_pooling_standalone: `vit.weights.h5` + `vit_config.json`)
// -------------------------------------------------------------------------------------------------

interface VitKwargs {
  readonly image_size: number;
  readonly patch_size: number;
  readonly num_heads: number;
  readonly hidden_dim: number;
  readonly num_layers: number;
  readonly intermediate_dim: number;
  readonly num_classes: number;
}

/** The ViT with each pooling the manifest lists (`pooling_none`, `pooling_gap`, `pooling_zero`, `pooling_0`). */
async function computeStandaloneVit(dir: string, m: Manifest): Promise<Computed> {
  const k = m.vit_kwargs as VitKwargs;
  const config: PaliGemmaConfig = {
    ...CONFIG_DEFAULTS,
    vocabulary_size: 1, num_layers: 0, num_query_heads: 1, num_key_value_heads: 1, intermediate_dim: 2, head_dim: 2,
    hidden_dim: k.num_classes, image_size: k.image_size, vit_patch_size: k.patch_size, vit_num_heads: k.num_heads,
    vit_hidden_dim: k.hidden_dim, vit_num_layers: k.num_layers, vit_intermediate_dim: k.intermediate_dim,
  };
  // Model.save_weights of a bare PaliGemmaVit: its layers sit at the top level (`layers/...`).
  const specs: WeightSpec[] = [
    ...vitLayout(config, 'layers/', '', 'image_encoder/'),
    { h5: 'layers/dense/vars/0', keras: 'image_classifier/kernel', param: 'image_classifier/kernel', kerasShape: [k.hidden_dim, k.num_classes], kerasAxes: ['vit_embed', 'embed'], axes: ['vit_embed', 'embed'] },
    { h5: 'layers/dense/vars/1', keras: 'image_classifier/bias', param: 'image_classifier/bias', kerasShape: [k.num_classes], kerasAxes: ['embed'], axes: ['embed'] },
  ];
  const file = path.join(dir, 'vit.weights.h5');
  const weights = readWeightsFiles([file]);
  const problems = diffWeights(specs, weights);
  if (problems.length) throw new Error(`${file}: ${problems.join('; ')}`);
  const vitParams = buildTree<VitParams>(specs, (s) => weights.get(s.h5)!.read(), { blocks: [] });
  const images = d.named(tf.tensor(readBin(dir, m.inputs.images) as Float32Array, m.inputs.images.shape as number[]), ['batch', 'height', 'width', 'channels'] as const);
  const outputs: Computed['outputs'] = new Map();
  try {
    for (const name of Object.keys(m.outputs)) {
      const pooling = name.replace(/^pooling_/, '');
      const vitPooling: VitPooling = pooling === 'none' ? null : pooling === '0' ? 'zero' : (pooling as VitPooling);
      const out = d.scoped(() => {
        const x = vit(vitParams, { ...config, vit_pooling: vitPooling }, images);
        // pooled outputs are one token: the fixture stores them as [batch, classes]
        return vitPooling === null ? x.tensor : tf.reshape(x.tensor, [x.shape[0], x.shape[2]]);
      });
      outputs.set(name, await read(out));
      out.dispose();
    }
  } finally {
    images.dispose();
    d.disposeTree(vitParams);
  }
  return { outputs, gradients: new Map() };
}
