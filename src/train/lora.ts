/**
 * LoRA on PaliGemma params, as keras_hub's `backbone.enable_lora(rank)` (spec/fixtures/train/README.md):
 *
 *   enableLora(params, { rank, key })            adapters on keras_hub's default targets: decoder attention
 *                                                query/value, ViT query_proj/value_proj (+ the MAP head's
 *                                                query/value); A he_uniform from `key`, B zeros; alpha = rank
 *   enableLora(params, { rank, alpha, targets })  any kernels, by params path, keras layer path or glob
 *   loraTrainable(params)                        what keras_hub trains then: every A and B, and the bias of
 *                                                each adapted layer that has one (keras' Dense.enable_lora
 *                                                freezes only the kernel)
 *   mergeLora(params)                            kernels + scale * A.B, adapters removed (keras' save_to_preset)
 *   withAdapters / adaptersOf                    to and from the files of checkpoints/lora.ts
 *
 * New params share every tensor they do not change with the old ones (dispose only what you created).
 */
import { tf } from '../../dsl/tf';
import * as d from '../../dsl';
import type { Key, Named } from '../../dsl';
import type { PaliGemmaParams } from '../../models/paligemma';
import { loraKernel } from '../../models/lora';
import { adapterSpecs, DEFAULT_LORA_LAYER_NAMES, loraLayers, type AdapterValues, type LoraFile, type LoraLayer } from '../../checkpoints/lora';
import type { WeightSpec } from '../../checkpoints/params';
import { globToRegExp } from './select';

export interface LoraOptions {
  readonly rank: number;
  /** Scale = alpha / rank; default alpha = rank (keras_hub has no alpha: scale 1). */
  readonly alpha?: number;
  /**
   * Kernels to adapt: params paths (`layers/0/attention/query`), keras layer paths
   * (`decoder_block_0/attention/query`) or globs of either (`layers/*\/attention/key`). Default: keras_hub's
   * `default_lora_layer_names()` matched by layer name.
   */
  readonly targets?: readonly string[];
  /** For A's he_uniform initialisation. */
  readonly key: Key;
}

/** The layers `targets` selects; each target must select something. */
export function loraTargets(params: PaliGemmaParams, targets?: readonly string[]): LoraLayer[] {
  const all = loraLayers(params.config);
  if (!targets) return all.filter((l) => (DEFAULT_LORA_LAYER_NAMES as readonly string[]).includes(l.layer.split('/').pop()!));
  const chosen = new Set<LoraLayer>();
  for (const t of targets) {
    const re = globToRegExp(t);
    const hits = all.filter((l) => re.test(l.kernel.param) || re.test(l.layer) || re.test(l.kernel.keras));
    if (hits.length === 0) throw new Error(`enableLora: unknown target '${t}': no Dense/EinsumDense kernel matches it (e.g. ${all.slice(0, 2).map((l) => l.kernel.param).join(', ')}, ...)`);
    for (const h of hits) chosen.add(h);
  }
  return all.filter((l) => chosen.has(l));
}

// -------------------------------------------------------------------------------------------------
// pytree surgery
// -------------------------------------------------------------------------------------------------

/** A copy of `tree` with `value` at `path` (records and arrays along the path are copied, nothing else). */
function setAt(tree: unknown, keys: readonly string[], value: unknown): unknown {
  if (keys.length === 0) return value;
  const [k, ...rest] = keys;
  if (Array.isArray(tree)) {
    const copy = [...tree];
    copy[Number(k)] = setAt(tree[Number(k)], rest, value);
    return copy;
  }
  const node = (tree ?? {}) as Record<string, unknown>;
  return { ...node, [k]: setAt(node[k], rest, value) };
}

function getAt(tree: unknown, path: string): unknown {
  return path.split('/').reduce<unknown>((node, k) => (node as Record<string, unknown> | undefined)?.[k], tree);
}

/** A copy without the keys named (at the record at `path`). */
function removeAt(tree: unknown, path: string, names: readonly string[]): unknown {
  const node = getAt(tree, path) as Record<string, unknown>;
  const copy = Object.fromEntries(Object.entries(node).filter(([k]) => !names.includes(k)));
  return setAt(tree, path.split('/'), copy);
}

/** Does this layer already have an adapter in params? */
const hasAdapter = (params: unknown, l: LoraLayer) => getAt(params, `${l.holder}/lora_kernel_a`) instanceof d.Named;

/** keras' he_uniform for A: U(-limit, limit), limit = sqrt(6 / fan_in), fan_in as keras' compute_fans. */
function heUniform(s: WeightSpec, k: Key): Named {
  const shape = s.kerasShape;
  const fanIn = shape.length === 2 ? shape[0] : shape.slice(0, -2).reduce((a, b) => a * b, 1) * shape[shape.length - 2];
  const limit = Math.sqrt(6 / fanIn);
  const n = shape.reduce((a, b) => a * b, 1);
  const u = d.uniformBits(k, n);
  const values = new Float32Array(n);
  for (let i = 0; i < n; i++) values[i] = (2 * u[i] - 1) * limit;
  return toOurs(s, values);
}

/** keras-layout values -> a named tensor in our axis order. */
function toOurs(s: WeightSpec, values: Float32Array): Named {
  return d.scoped(() => d.align(d.named(tf.tensor(values, s.kerasShape as number[]), s.kerasAxes), s.axes as never));
}

function checkRank(rank: number, alpha: number | undefined, who: string): void {
  if (!Number.isInteger(rank) || rank < 1) throw new Error(`${who}: rank must be a positive integer, got ${rank}`);
  if (alpha !== undefined && !Number.isFinite(alpha)) throw new Error(`${who}: alpha must be a finite number, got ${alpha}`);
}

/** Params with adapters on the given layers, A and B as given (keras layout) or initialised. */
function addAdapters(params: PaliGemmaParams, layers: readonly LoraLayer[], rank: number, alpha: number, values: (l: LoraLayer, a: WeightSpec, b: WeightSpec, i: number) => [Named, Named], who: string): PaliGemmaParams {
  let out: unknown = params;
  layers.forEach((l, i) => {
    if (hasAdapter(params, l)) throw new Error(`${who}: ${l.layer} (${l.kernel.param}) already has a LoRA adapter`);
    const [sa, sb] = adapterSpecs(l, rank);
    const [a, b] = values(l, sa, sb, i);
    const keys = l.holder.split('/');
    out = setAt(out, [...keys, 'lora_kernel_a'], a);
    out = setAt(out, [...keys, 'lora_kernel_b'], b);
    out = setAt(out, [...keys, 'lora_scale'], alpha / rank);
  });
  return out as PaliGemmaParams;
}

/** keras_hub's enable_lora: A he_uniform (float32) from `key` (one key per layer, folded in), B zeros. */
export function enableLora(params: PaliGemmaParams, o: LoraOptions): PaliGemmaParams {
  checkRank(o.rank, o.alpha, 'enableLora');
  const layers = loraTargets(params, o.targets);
  return addAdapters(params, layers, o.rank, o.alpha ?? o.rank, (_, sa, sb, i) => [heUniform(sa, d.foldIn(o.key, i)), d.named(tf.zeros(sb.axes.map((a) => sb.kerasShape[sb.kerasAxes.indexOf(a)])), sb.axes)], 'enableLora');
}

/** Params with the adapters of a file (`readLoraH5` / `readLoraSafetensors`) added. */
export function withAdapters(params: PaliGemmaParams, file: LoraFile): PaliGemmaParams {
  checkRank(file.rank, file.alpha, 'withAdapters');
  const byLayer = new Map(loraLayers(params.config).map((l) => [l.layer, l]));
  const values = new Map(file.adapters.map((a) => [a.layer, a]));
  const layers = file.adapters.map((a) => {
    const l = byLayer.get(a.layer);
    if (!l) throw new Error(`withAdapters: ${a.layer} is not a LoRA-able layer of this model`);
    return l;
  });
  return addAdapters(params, layers, file.rank, file.alpha, (l, sa, sb) => [toOurs(sa, values.get(l.layer)!.a.values), toOurs(sb, values.get(l.layer)!.b.values)], 'withAdapters');
}

/** The layers of params that have an adapter. */
export function adaptedLayers(params: PaliGemmaParams): LoraLayer[] {
  return loraLayers(params.config).filter((l) => hasAdapter(params, l));
}

/** Every adapter of params in keras' layout (reads the tensors; the rank must be the same everywhere). */
export async function adaptersOf(params: PaliGemmaParams): Promise<LoraFile> {
  const layers = adaptedLayers(params);
  if (layers.length === 0) throw new Error('adaptersOf: the params have no LoRA adapter');
  const ranks = new Set(layers.map((l) => (getAt(params, `${l.holder}/lora_kernel_b`) as Named).shape[0]));
  const scales = new Set(layers.map((l) => (getAt(params, `${l.holder}/lora_scale`) as number | undefined) ?? 1));
  if (ranks.size !== 1 || scales.size !== 1) throw new Error(`adaptersOf: adapters of different ranks [${[...ranks]}] or scales [${[...scales]}] cannot share one file`);
  const rank = [...ranks][0];
  const adapters: AdapterValues[] = [];
  for (const l of layers) {
    const [sa, sb] = adapterSpecs(l, rank);
    const read = async (s: WeightSpec) => {
      const leaf = getAt(params, s.param) as Named;
      const t = d.align(leaf, s.kerasAxes as never); // the leaf itself when already in keras' order
      const values = Float32Array.from((await t.tensor.data()) as Float32Array);
      if (t.tensor !== leaf.tensor) t.dispose();
      return { shape: [...s.kerasShape], values };
    };
    adapters.push({ layer: l.layer, a: await read(sa), b: await read(sb) });
  }
  return { rank, alpha: [...scales][0] * rank, adapters };
}

/** keras_hub's trainable set after enable_lora: every A and B, and the bias of each adapted layer. */
export function loraTrainable(params: PaliGemmaParams): string[] {
  const paths: string[] = [];
  for (const l of adaptedLayers(params)) {
    if (l.kernel.param.endsWith('/kernel') && getAt(params, `${l.holder}/bias`) instanceof d.Named) paths.push(`${l.holder}/bias`);
    paths.push(`${l.holder}/lora_kernel_a`, `${l.holder}/lora_kernel_b`);
  }
  return paths;
}

/** The LoRA leaves' specs (keras paths and layouts) of params, for gradients and checkpoints. */
export function loraSpecs(params: PaliGemmaParams): WeightSpec[] {
  return adaptedLayers(params).flatMap((l) => adapterSpecs(l, (getAt(params, `${l.holder}/lora_kernel_b`) as Named).shape[0]));
}

/**
 * Adapters folded in: each adapted kernel becomes kernel + scale * A.B (a new tensor) and the adapter leaves
 * are removed. Returns the merged params; `created` lists the new kernels (the caller disposes them).
 */
export function mergeLora(params: PaliGemmaParams): PaliGemmaParams {
  let out: unknown = params;
  for (const l of adaptedLayers(params)) {
    const holder = getAt(params, l.holder) as { lora_kernel_a: Named; lora_kernel_b: Named; lora_scale?: number };
    const merged = loraKernel(getAt(params, l.kernel.param) as Named, holder);
    out = setAt(out, l.kernel.param.split('/'), merged);
    out = l.kernel.param.endsWith('/kernel') ? removeAt(out, l.holder, ['lora_kernel_a', 'lora_kernel_b', 'lora_scale']) : removeAt(out, l.holder.split('/').slice(0, -1).join('/'), [l.holder.split('/').pop()!]);
  }
  return out as PaliGemmaParams;
}
