/**
 * LoRA adapters on disk, and the layout table they share with the params (models/lora.ts has the math).
 *
 * Which kernels can have an adapter: every Dense / EinsumDense kernel of the backbone (keras' `enable_lora`
 * exists on those two classes only), i.e. every `kerasLayout` spec whose keras path ends in `/kernel` except
 * the patch embedding (a Conv2D). For a kernel of keras shape [..., out], A is [..., rank] and B [rank, out].
 * In our params the adapter sits next to the kernel: `<layer>/lora_kernel_a` beside `<layer>/kernel`
 * (ViT Dense, MAP head), or in `<kernel>_lora/lora_kernel_a` where we store a kernel under its layer's name
 * (decoder `layers/i/attention/query` -> `layers/i/attention/query_lora/...`).
 *
 * Files:
 * - keras_hub's `.lora.h5` (`Backbone.save_lora_weights`): `lora/vars/rank` (int64 scalar) and
 *   `lora/{index}/vars/lora_kernel_a|b` (float32), where index is the layer's position in keras'
 *   `_flatten_layers` order of the layers that have weights (spec/fixtures/train/README.md). No attributes.
 * - a safetensors adapter (ours): keys `<keras layer path>/lora_kernel_a|b` in keras' layout, metadata
 *   `format: paligemma-ts-lora`, `rank`, `alpha`. Not PEFT's layout: keras_hub's decoder A is per head.
 */
import * as fs from 'node:fs';
import { openH5 } from './h5';
import { guarded } from './errors';
import { writeH5, type H5WriteDataset } from './h5write';
import { readSafetensorsFile, writeSafetensors, type TensorToWrite } from './safetensors';
import { kerasLayout, type WeightSpec } from './params';
import type { PaliGemmaConfig } from '../models/config';

/** `PaliGemmaBackbone.default_lora_layer_names()`: layers are matched by their (last) name. */
export const DEFAULT_LORA_LAYER_NAMES = ['query_dense', 'value_dense', 'query', 'value', 'query_proj', 'value_proj'] as const;

export interface LoraLayer {
  /** keras layer path, e.g. `decoder_block_0/attention/query`. */
  readonly layer: string;
  /** The kernel's spec (params path, keras shape and axes). */
  readonly kernel: WeightSpec;
  /** Where the adapter's leaves live in params: `<holder>/lora_kernel_a`. */
  readonly holder: string;
}

/** Every kernel that can take an adapter, in `kerasLayout` order. */
export function loraLayers(config: PaliGemmaConfig): LoraLayer[] {
  return kerasLayout(config)
    .filter((s) => s.keras.endsWith('/kernel') && !s.keras.endsWith('embedding_conv/kernel'))
    .map((s) => ({
      layer: s.keras.slice(0, -'/kernel'.length),
      kernel: s,
      holder: s.param.endsWith('/kernel') ? s.param.slice(0, -'/kernel'.length) : `${s.param}_lora`,
    }));
}

/** The specs of one layer's A and B for a rank (keras' shapes: A = kernel[:-1] + [rank], B = [rank, kernel[-1]]). */
export function adapterSpecs(l: LoraLayer, rank: number): [WeightSpec, WeightSpec] {
  const k = l.kernel;
  const out = k.kerasAxes[k.kerasAxes.length - 1];
  return [
    {
      h5: '',
      keras: `${l.layer}/lora_kernel_a`,
      param: `${l.holder}/lora_kernel_a`,
      kerasShape: [...k.kerasShape.slice(0, -1), rank],
      kerasAxes: [...k.kerasAxes.slice(0, -1), 'lora_rank'],
      axes: [...k.axes.filter((a) => a !== out), 'lora_rank'],
    },
    { h5: '', keras: `${l.layer}/lora_kernel_b`, param: `${l.holder}/lora_kernel_b`, kerasShape: [rank, k.kerasShape[k.kerasShape.length - 1]], kerasAxes: ['lora_rank', out], axes: ['lora_rank', out] },
  ];
}

// -------------------------------------------------------------------------------------------------
// keras' layer index (the `.lora.h5` group names)
// -------------------------------------------------------------------------------------------------

/**
 * keras layer path -> index in `[l for l in backbone._flatten_layers(include_self=False) if l.weights]`: a
 * depth-first pre-order visiting each layer's sublayers in reverse attribute order (README of the fixtures).
 */
export function kerasLayerIndex(c: PaliGemmaConfig): Map<string, number> {
  if (c.vit_pooling === 'map') throw new Error(".lora.h5: the keras layer order of a vit_pooling='map' backbone is not known here");
  const order = ['token_embedding', 'pali_gemma_vit', 'image_classifier', 'image_encoder'];
  for (let j = c.vit_num_layers - 1; j >= 0; j--) {
    const b = `image_encoder/encoder_block_${j}`;
    const mha = `${b}/multi_head_attention`;
    order.push(b, `${b}/layer_norm_2`, `${b}/mlp_dense_2`, `${b}/mlp_dense_1`, `${b}/layer_norm_1`, mha, `${mha}/out_proj`, `${mha}/value_proj`, `${mha}/key_proj`, `${mha}/query_proj`);
  }
  order.push('image_encoder/encoder_embeddings', 'image_encoder/encoder_embeddings/position_embedding', 'image_encoder/encoder_embeddings/embedding_conv', 'image_encoder/encoder_layer_norm');
  for (let i = 0; i < c.num_layers; i++) {
    const b = `decoder_block_${i}`;
    const a = `${b}/attention`;
    order.push(b, `${b}/ffw_linear`, `${b}/ffw_gating_2`, `${b}/ffw_gating`);
    if (c.use_post_ffw_norm) order.push(`${b}/post_ffw_norm`);
    order.push(`${b}/pre_ffw_norm`, a, `${a}/attention_output`, `${a}/value`, `${a}/key`, `${a}/query`);
    if (c.use_post_attention_norm) order.push(`${b}/post_attention_norm`);
    order.push(`${b}/pre_attention_norm`);
  }
  order.push('final_normalization');
  return new Map(order.map((p, i) => [p, i]));
}

/** One adapter's values in keras' layout. */
export interface AdapterValues {
  readonly layer: string;
  readonly a: { readonly shape: readonly number[]; readonly values: Float32Array };
  readonly b: { readonly shape: readonly number[]; readonly values: Float32Array };
}

export interface LoraFile {
  readonly rank: number;
  /** Scale alpha / rank is 1 in keras_hub's files (they store no alpha). */
  readonly alpha: number;
  readonly adapters: readonly AdapterValues[];
}

const fmt = (s: readonly number[]) => `[${s.join(', ')}]`;

/** Read keras_hub's `.lora.h5` for a backbone of this config; every key, index and shape is checked first. */
function readLoraH5Unchecked(file: string, config: PaliGemmaConfig): LoraFile {
  if (!fs.existsSync(file)) throw new Error(`${file}: no such file`);
  const index = kerasLayerIndex(config);
  const byIndex = new Map([...index].map(([p, i]) => [i, p]));
  const layers = new Map(loraLayers(config).map((l) => [l.layer, l]));
  const h5 = openH5(file);
  try {
    const rankDs = h5.datasets.get('lora/vars/rank');
    if (!rankDs) throw new Error(`${file}: missing lora/vars/rank (not a keras_hub .lora.h5 file?)`);
    if (rankDs.shape.length !== 0 || (rankDs.dtype !== 'int64' && rankDs.dtype !== 'int32')) {
      throw new Error(`${file}: lora/vars/rank must be an integer scalar, got ${rankDs.dtype} ${fmt(rankDs.shape)}`);
    }
    const bytes = h5.readBytes('lora/vars/rank');
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const rank = rankDs.dtype === 'int64' ? Number(view.getBigInt64(0, rankDs.littleEndian)) : view.getInt32(0, rankDs.littleEndian);
    if (!Number.isSafeInteger(rank) || rank < 1) throw new Error(`${file}: lora/vars/rank is ${rank}, expected a positive integer`);
    const found = new Map<number, { a?: string; b?: string }>();
    for (const key of h5.datasets.keys()) {
      if (key === 'lora/vars/rank') continue;
      const m = /^lora\/(\d+)\/vars\/(lora_kernel_a|lora_kernel_b)$/.exec(key);
      if (!m) throw new Error(`${file}: unexpected dataset ${key} (expected lora/<index>/vars/lora_kernel_a|b)`);
      const entry = found.get(Number(m[1])) ?? {};
      entry[m[2] === 'lora_kernel_a' ? 'a' : 'b'] = key;
      found.set(Number(m[1]), entry);
    }
    const adapters: AdapterValues[] = [];
    for (const [i, keys] of [...found].sort((x, y) => x[0] - y[0])) {
      const layerPath = byIndex.get(i);
      const layer = layerPath ? layers.get(layerPath) : undefined;
      if (!layer) throw new Error(`${file}: lora/${i} is keras layer ${layerPath ?? `#${i} (out of range)`}, which has no LoRA-able kernel`);
      if (!keys.a || !keys.b) throw new Error(`${file}: lora/${i} (${layerPath}) has no lora_kernel_${keys.a ? 'b' : 'a'}`);
      const [sa, sb] = adapterSpecs(layer, rank);
      const read = (key: string, s: WeightSpec) => {
        const ds = h5.datasets.get(key)!;
        if (ds.shape.length !== s.kerasShape.length || ds.shape.some((n, k) => n !== s.kerasShape[k])) {
          throw new Error(`${file}: ${key} (${s.keras}) has shape ${fmt(ds.shape)}, expected ${fmt(s.kerasShape)} for rank ${rank}`);
        }
        return { shape: [...ds.shape], values: h5.readFloat32(key) };
      };
      adapters.push({ layer: layer.layer, a: read(keys.a, sa), b: read(keys.b, sb) });
    }
    return { rank, alpha: rank, adapters };
  } finally {
    h5.close();
  }
}

/** Write keras_hub's `.lora.h5` (keras_hub's `load_lora_weights` reads it; its alpha is always the rank). */
export function writeLoraH5(file: string, config: PaliGemmaConfig, lora: LoraFile): void {
  const index = kerasLayerIndex(config);
  const layers = new Map(loraLayers(config).map((l) => [l.layer, l]));
  const datasets = new Map<string, H5WriteDataset>([['lora/vars/rank', { shape: [], values: BigInt64Array.of(BigInt(lora.rank)) }]]);
  for (const ad of lora.adapters) {
    const i = index.get(ad.layer);
    const layer = layers.get(ad.layer);
    if (i === undefined || !layer) throw new Error(`writeLoraH5: ${file}: ${ad.layer} is not a LoRA-able layer`);
    const [sa, sb] = adapterSpecs(layer, lora.rank);
    for (const [s, v] of [[sa, ad.a], [sb, ad.b]] as const) {
      if (fmt(v.shape) !== fmt(s.kerasShape)) throw new Error(`writeLoraH5: ${file}: ${s.keras} has shape ${fmt(v.shape)}, expected ${fmt(s.kerasShape)}`);
    }
    datasets.set(`lora/${i}/vars/lora_kernel_a`, { shape: ad.a.shape, values: ad.a.values });
    datasets.set(`lora/${i}/vars/lora_kernel_b`, { shape: ad.b.shape, values: ad.b.values });
  }
  writeH5(file, datasets);
}

// -------------------------------------------------------------------------------------------------
// safetensors adapters
// -------------------------------------------------------------------------------------------------

export const LORA_SAFETENSORS_FORMAT = 'paligemma-ts-lora';

export function writeLoraSafetensors(file: string, lora: LoraFile): void {
  const tensors: Array<[string, TensorToWrite]> = [];
  for (const ad of lora.adapters) {
    tensors.push([`${ad.layer}/lora_kernel_a`, ad.a], [`${ad.layer}/lora_kernel_b`, ad.b]);
  }
  writeSafetensors(file, tensors, { format: LORA_SAFETENSORS_FORMAT, rank: String(lora.rank), alpha: String(lora.alpha) });
}

function readLoraSafetensorsUnchecked(file: string, config: PaliGemmaConfig): LoraFile {
  const st = readSafetensorsFile(file);
  if (st.metadata.format !== LORA_SAFETENSORS_FORMAT) {
    throw new Error(`${file}: __metadata__.format is ${JSON.stringify(st.metadata.format)}, expected "${LORA_SAFETENSORS_FORMAT}"`);
  }
  const rank = Number(st.metadata.rank);
  const alpha = Number(st.metadata.alpha ?? st.metadata.rank);
  if (!Number.isSafeInteger(rank) || rank < 1) throw new Error(`${file}: __metadata__.rank is ${JSON.stringify(st.metadata.rank)}, expected a positive integer`);
  if (!Number.isFinite(alpha)) throw new Error(`${file}: __metadata__.alpha is ${JSON.stringify(st.metadata.alpha)}, expected a number`);
  const layers = new Map(loraLayers(config).map((l) => [l.layer, l]));
  const byLayer = new Map<string, Set<string>>();
  for (const key of st.tensors.keys()) {
    const m = /^(.*)\/(lora_kernel_a|lora_kernel_b)$/.exec(key);
    if (!m || !layers.has(m[1])) throw new Error(`${file}: unexpected tensor ${key} (expected <LoRA-able keras layer>/lora_kernel_a|b)`);
    (byLayer.get(m[1]) ?? byLayer.set(m[1], new Set()).get(m[1])!).add(m[2]);
  }
  const adapters: AdapterValues[] = [];
  for (const [layerPath, kinds] of byLayer) {
    if (kinds.size !== 2) throw new Error(`${file}: ${layerPath} has no ${kinds.has('lora_kernel_a') ? 'lora_kernel_b' : 'lora_kernel_a'}`);
    const [sa, sb] = adapterSpecs(layers.get(layerPath)!, rank);
    const read = (s: WeightSpec) => {
      const t = st.tensors.get(s.keras)!;
      if (fmt(t.shape) !== fmt(s.kerasShape)) throw new Error(`${file}: ${s.keras} has shape ${fmt(t.shape)}, expected ${fmt(s.kerasShape)} for rank ${rank}`);
      return { shape: [...t.shape], values: t.read() };
    };
    adapters.push({ layer: layerPath, a: read(sa), b: read(sb) });
  }
  return { rank, alpha, adapters };
}

/** Read keras_hub's `.lora.h5` for a backbone of this config; every key, index and shape is checked first. Errors are FormatErrors. */
export const readLoraH5 = (file: string, config: PaliGemmaConfig): LoraFile => guarded(file, () => readLoraH5Unchecked(file, config));
/** Read a safetensors adapter (see the header); errors are FormatErrors. */
export const readLoraSafetensors = (file: string, config: PaliGemmaConfig): LoraFile => guarded(file, () => readLoraSafetensorsUnchecked(file, config));
