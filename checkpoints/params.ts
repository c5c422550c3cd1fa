/**
 * The strict params codec of PaliGemma: keras_hub's variables (by their `.weights.h5` paths) <-> our
 * params pytree (models/paligemma.ts).
 *
 * One table, `kerasLayout(config)`, lists every variable the config implies: its h5 path, its keras
 * variable path (what gradients are keyed by), its keras shape and axis names, and where it lives in our
 * params with which axis order. Decoding checks the set of keys (a diff of missing and unexpected ones)
 * and every shape against the config before it creates a single tensor; it is an io-ts `Type`, so a
 * failure is a `Left` with every problem listed, and `decodeParams` throws them as one message.
 * Kernels are permuted by name into the layout the model multiplies with ([in..., out...]).
 */
import * as t from 'io-ts';
import { isLeft } from 'fp-ts/Either';
import { tf } from '../dsl/tf';
import * as d from '../dsl';
import { imageSequenceLength, type PaliGemmaConfig } from '../models/config';
import { maxTensorBytes } from '../dsl/limits';
import type { PaliGemmaParams } from '../models/paligemma';
import { loraKernel, type LoraParams } from '../models/lora';

// -------------------------------------------------------------------------------------------------
// the layout table
// -------------------------------------------------------------------------------------------------

export interface WeightSpec {
  /** Path inside the `.weights.h5` file, e.g. `layers/reversible_embedding/vars/0`. */
  readonly h5: string;
  /** keras variable path, e.g. `token_embedding/embeddings` (gradients are keyed by it). */
  readonly keras: string;
  /** Path in our params pytree, e.g. `token_embedding` or `layers/0/attention/query`. */
  readonly param: string;
  readonly kerasShape: readonly number[];
  /** Axis names of the keras layout, one per dimension of kerasShape. */
  readonly kerasAxes: readonly string[];
  /** Our axis order (a permutation of kerasAxes, or, with `squeeze`, kerasAxes without size-1 axes). */
  readonly axes: readonly string[];
  /** Drop leading size-1 axes (the MAP probe is stored [1, 1, D]). */
  readonly squeeze?: boolean;
  /** Stored as an array of row shards (the token embedding: see `shardRows`). */
  readonly sharded?: boolean;
}

const suffix = (i: number) => (i === 0 ? '' : `_${i}`);

/** Every variable of a PaliGemmaBackbone with this config. `vitRoot` is the ViT's prefix in the h5 file. */
export function kerasLayout(c: PaliGemmaConfig, vitRoot = 'layers/pali_gemma_vit/layers/'): WeightSpec[] {
  const specs: WeightSpec[] = [];
  const w = (h5: string, keras: string, param: string, kerasShape: number[], kerasAxes: string[], axes = kerasAxes, squeeze = false) =>
    specs.push({ h5, keras, param, kerasShape, kerasAxes, axes, ...(squeeze ? { squeeze } : {}) });
  const D = c.hidden_dim;
  const Dv = c.vit_hidden_dim;
  const H = c.head_dim;
  const F = c.intermediate_dim / 2;
  const p = c.vit_patch_size;
  const patches = (c.image_size / p) ** 2;

  specs.push({ h5: 'layers/reversible_embedding/vars/0', keras: 'token_embedding/embeddings', param: 'token_embedding', kerasShape: [c.vocabulary_size, D], kerasAxes: ['vocab', 'embed'], axes: ['vocab', 'embed'], sharded: true });
  specs.push(...vitLayout(c, vitRoot, 'vit/', 'image_encoder/'));
  w(`${vitRoot}dense/vars/0`, 'image_classifier/kernel', 'vit/image_classifier/kernel', [Dv, D], ['vit_embed', 'embed']);
  w(`${vitRoot}dense/vars/1`, 'image_classifier/bias', 'vit/image_classifier/bias', [D], ['embed']);
  void patches;

  for (let i = 0; i < c.num_layers; i++) {
    const h5 = `layers/pali_gemma_decoder_block${suffix(i)}/`;
    const k = `decoder_block_${i}/`;
    const our = `layers/${i}/`;
    const norm = (name: string) => w(`${h5}${name}/vars/0`, `${k}${name}/scale`, `${our}${name}/scale`, [D], ['embed']);
    norm('pre_attention_norm');
    if (c.use_post_attention_norm) norm('post_attention_norm');
    w(`${h5}attention/query_dense/vars/0`, `${k}attention/query/kernel`, `${our}attention/query`, [c.num_query_heads, D, H], ['heads', 'embed', 'head_dim'], ['embed', 'heads', 'head_dim']);
    w(`${h5}attention/key_dense/vars/0`, `${k}attention/key/kernel`, `${our}attention/key`, [c.num_key_value_heads, D, H], ['kv_heads', 'embed', 'head_dim'], ['embed', 'kv_heads', 'head_dim']);
    w(`${h5}attention/value_dense/vars/0`, `${k}attention/value/kernel`, `${our}attention/value`, [c.num_key_value_heads, D, H], ['kv_heads', 'embed', 'head_dim'], ['embed', 'kv_heads', 'head_dim']);
    w(`${h5}attention/output_dense/vars/0`, `${k}attention/attention_output/kernel`, `${our}attention/output`, [c.num_query_heads, H, D], ['heads', 'head_dim', 'embed']);
    norm('pre_ffw_norm');
    if (c.use_post_ffw_norm) norm('post_ffw_norm');
    w(`${h5}gating_ffw/vars/0`, `${k}ffw_gating/kernel`, `${our}gating_ffw`, [D, F], ['embed', 'ffw']);
    w(`${h5}gating_ffw_2/vars/0`, `${k}ffw_gating_2/kernel`, `${our}gating_ffw_2`, [D, F], ['embed', 'ffw']);
    w(`${h5}ffw_linear/vars/0`, `${k}ffw_linear/kernel`, `${our}ffw_linear`, [F, D], ['ffw', 'embed']);
  }
  w('layers/rms_normalization/vars/0', 'final_normalization/scale', 'final_norm/scale', [D], ['embed']);
  return specs;
}

/** The ViT encoder (+ MAP head) variables; the classifier is separate (its width is the decoder's). */
export function vitLayout(c: Pick<PaliGemmaConfig, 'image_size' | 'vit_patch_size' | 'vit_hidden_dim' | 'vit_num_layers' | 'vit_intermediate_dim' | 'vit_num_heads' | 'vit_pooling'>, root: string, param: string, keras: string): WeightSpec[] {
  const specs: WeightSpec[] = [];
  const w = (h5: string, k: string, pp: string, kerasShape: number[], kerasAxes: string[], axes = kerasAxes, squeeze = false) =>
    specs.push({ h5, keras: k, param: pp, kerasShape, kerasAxes, axes, ...(squeeze ? { squeeze } : {}) });
  const Dv = c.vit_hidden_dim;
  const M = c.vit_intermediate_dim;
  const p = c.vit_patch_size;
  const enc = `${root}pali_gemma_vit_encoder/`;
  const emb = `${enc}vision_embeddings/`;
  w(`${emb}patch_embedding/vars/0`, `${keras}encoder_embeddings/embedding_conv/kernel`, `${param}patch_embedding/kernel`, [p, p, 3, Dv], ['patch_h', 'patch_w', 'channels', 'vit_embed']);
  w(`${emb}patch_embedding/vars/1`, `${keras}encoder_embeddings/embedding_conv/bias`, `${param}patch_embedding/bias`, [Dv], ['vit_embed']);
  w(`${emb}position_embedding/vars/0`, `${keras}encoder_embeddings/position_embedding/embeddings`, `${param}position_embedding`, [(c.image_size / p) ** 2, Dv], ['patches', 'vit_embed']);
  for (let i = 0; i < c.vit_num_layers; i++) {
    const h5 = `${enc}resblocks/pali_gemma_vit_encoder_block${suffix(i)}/`;
    const k = `${keras}encoder_block_${i}/`;
    const our = `${param}blocks/${i}/`;
    const ln = (name: string) => {
      w(`${h5}${name}/vars/0`, `${k}${name}/gamma`, `${our}${name}/gamma`, [Dv], ['vit_embed']);
      w(`${h5}${name}/vars/1`, `${k}${name}/beta`, `${our}${name}/beta`, [Dv], ['vit_embed']);
    };
    const dense = (h5name: string, kname: string, ourName: string, i0: [number, string], o: [number, string]) => {
      w(`${h5}${h5name}/vars/0`, `${k}${kname}/kernel`, `${our}${ourName}/kernel`, [i0[0], o[0]], [i0[1], o[1]]);
      w(`${h5}${h5name}/vars/1`, `${k}${kname}/bias`, `${our}${ourName}/bias`, [o[0]], [o[1]]);
    };
    ln('layer_norm_1');
    for (const proj of ['query', 'key', 'value'] as const) {
      dense(`attn/${proj}_proj`, `multi_head_attention/${proj}_proj`, `${proj}_proj`, [Dv, 'vit_embed'], [Dv, 'vit_qkv']);
    }
    dense('attn/out_proj', 'multi_head_attention/out_proj', 'out_proj', [Dv, 'vit_qkv'], [Dv, 'vit_embed']);
    ln('layer_norm_2');
    dense('mlp_dense_1', 'mlp_dense_1', 'mlp_dense_1', [Dv, 'vit_embed'], [M, 'vit_mlp']);
    dense('mlp_dense_2', 'mlp_dense_2', 'mlp_dense_2', [M, 'vit_mlp'], [Dv, 'vit_embed']);
  }
  w(`${enc}encoder_layer_norm/vars/0`, `${keras}encoder_layer_norm/gamma`, `${param}encoder_layer_norm/gamma`, [Dv], ['vit_embed']);
  w(`${enc}encoder_layer_norm/vars/1`, `${keras}encoder_layer_norm/beta`, `${param}encoder_layer_norm/beta`, [Dv], ['vit_embed']);
  if (c.vit_pooling === 'map') {
    const h5 = `${root}multi_head_attention_pooling/`;
    const heads = c.vit_num_heads;
    const hd = Math.floor(Dv / heads);
    w(`${h5}vars/0`, 'pooling/variable', `${param}pooling/probe`, [1, 1, Dv], ['one', 'one_', 'vit_embed'], ['vit_embed'], true);
    for (const [h5name, kname, ourName] of [['query_dense', 'query', 'query'], ['key_dense', 'key', 'key'], ['value_dense', 'value', 'value']] as const) {
      w(`${h5}mha/${h5name}/vars/0`, `pooling/multi_head_attention/${kname}/kernel`, `${param}pooling/${ourName}/kernel`, [Dv, heads, hd], ['vit_embed', 'vit_heads', 'vit_head_dim']);
      w(`${h5}mha/${h5name}/vars/1`, `pooling/multi_head_attention/${kname}/bias`, `${param}pooling/${ourName}/bias`, [heads, hd], ['vit_heads', 'vit_head_dim']);
    }
    w(`${h5}mha/output_dense/vars/0`, 'pooling/multi_head_attention/attention_output/kernel', `${param}pooling/output/kernel`, [heads, hd, Dv], ['vit_heads', 'vit_head_dim', 'vit_embed']);
    w(`${h5}mha/output_dense/vars/1`, 'pooling/multi_head_attention/attention_output/bias', `${param}pooling/output/bias`, [Dv], ['vit_embed']);
    w(`${h5}layer_norm/vars/0`, 'pooling/layer_normalization/gamma', `${param}pooling/layer_norm/gamma`, [Dv], ['vit_embed']);
    w(`${h5}layer_norm/vars/1`, 'pooling/layer_normalization/beta', `${param}pooling/layer_norm/beta`, [Dv], ['vit_embed']);
    // keras_hub's MAP MLP is Dv wide (MultiHeadAttentionPooling(hidden_dim=vit_hidden_dim))
    w(`${h5}mlp_block/layers/dense/vars/0`, 'pooling/sequential/dense/kernel', `${param}pooling/mlp_dense_1/kernel`, [Dv, Dv], ['vit_embed', 'vit_mlp']);
    w(`${h5}mlp_block/layers/dense/vars/1`, 'pooling/sequential/dense/bias', `${param}pooling/mlp_dense_1/bias`, [Dv], ['vit_mlp']);
    w(`${h5}mlp_block/layers/dense_1/vars/0`, 'pooling/sequential/dense_1/kernel', `${param}pooling/mlp_dense_2/kernel`, [Dv, Dv], ['vit_mlp', 'vit_embed']);
    w(`${h5}mlp_block/layers/dense_1/vars/1`, 'pooling/sequential/dense_1/bias', `${param}pooling/mlp_dense_2/bias`, [Dv], ['vit_embed']);
  }
  return specs;
}

/** Number of parameters the config implies (keras_hub's `count_params`). */
export const parameterCount = (c: PaliGemmaConfig): number =>
  kerasLayout(c).reduce((n, s) => n + s.kerasShape.reduce((a, b) => a * b, 1), 0);

// -------------------------------------------------------------------------------------------------
// decoding
// -------------------------------------------------------------------------------------------------

/** A flat source of weights by h5 path; `read` is called once per weight, after all checks passed. */
export interface WeightEntry {
  readonly shape: readonly number[];
  readonly file?: string;
  read(): Float32Array;
}
export type WeightMap = ReadonlyMap<string, WeightEntry>;

const sameShape = (a: readonly number[], b: readonly number[]) => a.length === b.length && a.every((v, i) => v === b[i]);
const fmt = (s: readonly number[]) => `[${s.join(', ')}]`;

/** Every problem of `weights` against `specs`: missing keys, unexpected keys, wrong shapes. */
export function diffWeights(specs: readonly WeightSpec[], weights: WeightMap): string[] {
  const expected = new Map(specs.map((s) => [s.h5, s]));
  const problems: string[] = [];
  for (const s of specs) {
    const got = weights.get(s.h5);
    if (!got) problems.push(`missing ${s.h5} (${s.keras}, expected shape ${fmt(s.kerasShape)})`);
    else if (!sameShape(got.shape, s.kerasShape)) {
      problems.push(`wrong shape ${s.h5}${got.file ? ` in ${got.file}` : ''} (${s.keras}): expected ${fmt(s.kerasShape)}, got ${fmt(got.shape)}`);
    }
  }
  for (const key of weights.keys()) if (!expected.has(key)) problems.push(`unexpected ${key} (shape ${fmt(weights.get(key)!.shape)})`);
  return problems;
}

function setPath(root: Record<string, unknown>, path: string, value: unknown): void {
  const keys = path.split('/');
  let node: Record<string, unknown> = root;
  keys.forEach((k, i) => {
    if (i === keys.length - 1) {
      node[k] = value;
      return;
    }
    if (node[k] === undefined) node[k] = /^\d+$/.test(keys[i + 1]) ? [] : {};
    node = node[k] as Record<string, unknown>;
  });
}

/** One tensor in our layout from keras' values. */
function toNamed(s: WeightSpec, values: Float32Array): d.Named {
  return d.scoped(() => {
    if (s.squeeze) return d.named(tf.tensor(values, s.kerasShape.filter((n) => n !== 1) as number[]), s.axes);
    return d.align(d.named(tf.tensor(values, s.kerasShape as number[]), s.kerasAxes), s.axes);
  });
}

/**
 * A table as row shards of at most `maxBytes` each (one shard when it fits): one WebGPU buffer binding holds
 * at most 2 GiB on most GPUs, and PaliGemma 2's embedding (257152 x 2304 float32) is 2.4 GB.
 */
export function shardRows(s: WeightSpec, values: Float32Array, maxBytes = maxTensorBytes()): d.Named[] {
  const [rows, width] = s.kerasShape;
  const per = Math.max(1, Math.min(rows, Math.floor(maxBytes / (4 * width))));
  const shards: d.Named[] = [];
  for (let r = 0; r < rows; r += per) {
    const n = Math.min(per, rows - r);
    shards.push(toNamed({ ...s, kerasShape: [n, width] }, values.subarray(r * width, (r + n) * width)));
  }
  return shards;
}

/** The non-tensor part of params: the config, and the layer lists (empty when a config has 0 layers). */
export const skeleton = (config: PaliGemmaConfig): Record<string, unknown> => ({ config, layers: [], vit: { blocks: [] } });

/** Build a pytree from specs and a value source (after checks). */
export function buildTree<T>(specs: readonly WeightSpec[], values: (s: WeightSpec) => Float32Array, extra: Record<string, unknown> = {}): T {
  const root: Record<string, unknown> = { ...extra };
  for (const s of specs) setPath(root, s.param, s.sharded ? shardRows(s, values(s)) : toNamed(s, values(s)));
  return root as T;
}

/** The leaf (or the row shards) at a params path. */
function valueAt(params: unknown, s: WeightSpec): d.Named | readonly d.Named[] {
  const v = s.param.split('/').reduce<unknown>((node, k) => (node as Record<string, unknown> | undefined)?.[k], params);
  if (v instanceof d.Named || (Array.isArray(v) && v.length > 0 && v.every((x) => x instanceof d.Named))) return v as d.Named | d.Named[];
  throw new Error(`params have no ${s.param} (${s.keras})`);
}

/** The LoRA adapter of a kernel, if params have one (checkpoints/lora.ts: beside `<layer>/kernel`, or in `<kernel>_lora`). */
function adapterOf(params: unknown, s: WeightSpec): Partial<LoraParams> | undefined {
  if (!s.keras.endsWith('/kernel')) return undefined;
  const holder = s.param.endsWith('/kernel') ? s.param.slice(0, -'/kernel'.length) : `${s.param}_lora`;
  const h = holder.split('/').reduce<unknown>((node, k) => (node as Record<string, unknown> | undefined)?.[k], params) as Partial<LoraParams> | undefined;
  return h?.lora_kernel_a instanceof d.Named ? h : undefined;
}

/**
 * A param in keras' layout (shards concatenated), as a new tensor. A kernel with a LoRA adapter is written
 * merged, kernel + scale * A.B, as keras' save_own_variables does (keras_hub's save_to_preset of a LoRA model).
 */
export function inKerasLayout(params: unknown, s: WeightSpec): tf.Tensor {
  const v = valueAt(params, s);
  const lora = Array.isArray(v) ? undefined : adapterOf(params, s);
  return tf.tidy(() => {
    const one = lora ? loraKernel(v as d.Named, lora) : (v as d.Named);
    const t = Array.isArray(v) ? tf.concat(v.map((x) => d.align(x, s.kerasAxes as never).tensor), 0) : s.squeeze ? one.tensor : d.align(one, s.kerasAxes as never).tensor;
    return tf.reshape(t, s.kerasShape as number[]);
  });
}

/** io-ts codec: weights by h5 path -> PaliGemma params (and back, as keras-layout Float32Arrays). */
export function paramsCodec(config: PaliGemmaConfig, source = 'weights'): t.Type<PaliGemmaParams, Map<string, { shape: number[]; values: Float32Array }>, WeightMap> {
  const specs = kerasLayout(config);
  return new t.Type<PaliGemmaParams, Map<string, { shape: number[]; values: Float32Array }>, WeightMap>(
    'PaliGemmaParams',
    (u): u is PaliGemmaParams => typeof u === 'object' && u !== null && 'token_embedding' in u && 'layers' in u,
    (weights, context) => {
      const problems = diffWeights(specs, weights);
      if (problems.length > 0) return t.failures(problems.map((message) => ({ value: weights, context, message: `${source}: ${message}` })));
      return t.success(buildTree<PaliGemmaParams>(specs, (s) => weights.get(s.h5)!.read(), skeleton(config)));
    },
    (params) => encodeParams(params, specs),
  );
}

/** Decode or throw one error listing every missing, unexpected and mis-shaped weight. */
export function decodeParams(config: PaliGemmaConfig, weights: WeightMap, source = 'weights'): PaliGemmaParams {
  const result = paramsCodec(config, source).decode(weights);
  if (isLeft(result)) {
    const lines = result.left.map((e) => e.message ?? 'invalid');
    throw new Error(`${source}: ${lines.length} problem(s) with the weights for this config:\n  ${lines.map((l) => l.replace(`${source}: `, '')).join('\n  ')}`);
  }
  return result.right;
}

/** Params -> keras-layout values by h5 path. Reads tensors synchronously (cpu, wasm; see saveKerasPreset). */
export function encodeParams(params: PaliGemmaParams, specs = kerasLayout(params.config)): Map<string, { shape: number[]; values: Float32Array }> {
  const out = new Map<string, { shape: number[]; values: Float32Array }>();
  for (const s of specs) {
    const t = inKerasLayout(params, s);
    out.set(s.h5, { shape: [...s.kerasShape], values: Float32Array.from(t.dataSync() as Float32Array) });
    t.dispose();
  }
  return out;
}

/** Gradients (a params-shaped pytree) keyed by keras variable path, in keras' layout (new tensors). */
export function byKerasPath(grads: PaliGemmaParams, specs = kerasLayout(grads.config)): Map<string, d.Named> {
  return new Map(specs.map((s) => [s.keras, d.named(inKerasLayout(grads, s), s.kerasAxes)] as const));
}

export { imageSequenceLength };
