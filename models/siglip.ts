/**
 * SigLIP vision encoder as PaliGemma uses it (keras_hub `PaliGemmaVit`; big_vision `models/vit.py`).
 *
 *   patches = conv_pxp(images) + position_embedding        # [batch, patches, vit_embed]
 *   for each block: x += out(MHA(LN1(x))); x += mlp2(gelu_tanh(mlp1(LN2(x))))
 *   x = LN(x); x = pool(x)                                   # none | map | gap | zero
 *   image_embeddings = act(x . W + b)                        # [batch, patches | 1, embed]
 *
 * Axes: batch, height, width, channels (images); patches (N = (S/p)^2); vit_embed (Dv); vit_qkv (Dv before
 * it is split into vit_heads x vit_head_dim); vit_mlp; embed (the decoder's width D).
 */
import * as d from '../dsl';
import type { Named } from '../dsl';
import type { Without } from '../dsl/types';
import type { PaliGemmaConfig } from './config';
import { loraKernel, type LoraParams } from './lora';

// -------------------------------------------------------------------------------------------------
// params (leaf names follow keras_hub's variables)
// -------------------------------------------------------------------------------------------------

export interface Dense<I extends string, O extends string> extends Partial<LoraParams> {
  readonly kernel: Named<readonly [I, O]>;
  readonly bias: Named<readonly [O]>;
}

/** The MAP head's EinsumDense projections (kernel [vit_embed, vit_heads, vit_head_dim]), LoRA where enabled. */
export interface HeadProjection extends Partial<LoraParams> {
  readonly kernel: Named<readonly ['vit_embed', 'vit_heads', 'vit_head_dim']>;
  readonly bias: Named<readonly ['vit_heads', 'vit_head_dim']>;
}

export interface LayerNormParams<A extends string> {
  readonly gamma: Named<readonly [A]>;
  readonly beta: Named<readonly [A]>;
}

export interface VitBlockParams {
  readonly layer_norm_1: LayerNormParams<'vit_embed'>;
  readonly query_proj: Dense<'vit_embed', 'vit_qkv'>;
  readonly key_proj: Dense<'vit_embed', 'vit_qkv'>;
  readonly value_proj: Dense<'vit_embed', 'vit_qkv'>;
  readonly out_proj: Dense<'vit_qkv', 'vit_embed'>;
  readonly layer_norm_2: LayerNormParams<'vit_embed'>;
  readonly mlp_dense_1: Dense<'vit_embed', 'vit_mlp'>;
  readonly mlp_dense_2: Dense<'vit_mlp', 'vit_embed'>;
}

/** SigLIP's multi-head attention pooling head (keras_hub `MultiHeadAttentionPooling`). */
export interface MapHeadParams {
  readonly probe: Named<readonly ['vit_embed']>;
  readonly query: HeadProjection;
  readonly key: HeadProjection;
  readonly value: HeadProjection;
  readonly output: { readonly kernel: Named<readonly ['vit_heads', 'vit_head_dim', 'vit_embed']>; readonly bias: Named<readonly ['vit_embed']> } & Partial<LoraParams>;
  readonly layer_norm: LayerNormParams<'vit_embed'>;
  readonly mlp_dense_1: Dense<'vit_embed', 'vit_mlp'>;
  readonly mlp_dense_2: Dense<'vit_mlp', 'vit_embed'>;
}

export interface VitParams {
  readonly patch_embedding: {
    readonly kernel: Named<readonly ['patch_h', 'patch_w', 'channels', 'vit_embed']>;
    readonly bias: Named<readonly ['vit_embed']>;
  };
  readonly position_embedding: Named<readonly ['patches', 'vit_embed']>;
  readonly blocks: readonly VitBlockParams[];
  readonly encoder_layer_norm: LayerNormParams<'vit_embed'>;
  readonly pooling?: MapHeadParams;
  readonly image_classifier: Dense<'vit_embed', 'embed'>;
}

export type VitConfig = Pick<
  PaliGemmaConfig,
  'image_size' | 'vit_patch_size' | 'vit_num_heads' | 'vit_hidden_dim' | 'vit_num_layers' | 'vit_intermediate_dim' | 'vit_pooling' | 'vit_classifier_activation'
>;

export type Images = Named<readonly ['batch', 'height', 'width', 'channels']>;

/** SigLIP's LayerNorm epsilon (fixed: keras_hub and big_vision both use 1e-6). */
const LN_EPS = 1e-6;

// -------------------------------------------------------------------------------------------------
// layers
// -------------------------------------------------------------------------------------------------

/** x . kernel + bias, contracting the kernel's input axis (kernel + LoRA where the layer has an adapter). */
function dense<A extends readonly string[], I extends string, O extends string>(x: Named<A>, p: Dense<I, O>): Named<[...Without<A, I>, O]> {
  // the one generic contraction of this file: TypeScript cannot check a contraction over a type parameter
  const y = d.dot(x as Named, loraKernel(p.kernel, p) as Named, p.kernel.axes[0] as never);
  return d.add(y, p.bias as Named) as unknown as Named<[...Without<A, I>, O]>;
}

type Tokens = Named<readonly ['batch', 'patches', 'vit_embed']>;

/** Non-overlapping p x p patches, flattened row-major (index = row * S/p + col), then one matMul. */
export function patchEmbed(p: VitParams, images: Images, patch: number): Tokens {
  return d.scoped(() => {
    const s = images.size('height');
    if (s !== images.size('width') || s % patch !== 0) {
      throw new Error(`patchEmbed: images are ${s}x${images.size('width')}, need a square whose side is a multiple of ${patch}`);
    }
    const grid = s / patch;
    const rows = d.splitAxis(images, 'height', ['grid_h', 'patch_h'] as const, [grid, patch]);
    const cells = d.splitAxis(rows, 'width', ['grid_w', 'patch_w'] as const, [grid, patch]); // rank 6
    const patches = d.mergeAxes(d.mergeAxes(cells, ['grid_h', 'grid_w'] as const, 'patches'), ['patch_h', 'patch_w', 'channels'] as const, 'pixels');
    const kernel = d.mergeAxes(p.patch_embedding.kernel, ['patch_h', 'patch_w', 'channels'] as const, 'pixels');
    const x = d.dot(patches, kernel, 'pixels'); // [batch, patches, vit_embed]
    return d.add(d.add(x, p.patch_embedding.bias), p.position_embedding);
  });
}

/** Multi-head self-attention without mask: scores q.k / sqrt(head_dim), softmax in float32. */
function vitAttention(p: VitBlockParams, x: Tokens, heads: number): Tokens {
  const headDim = x.size('vit_embed') / heads;
  const project = (w: Dense<'vit_embed', 'vit_qkv'>) => d.splitAxis(dense(x, w), 'vit_qkv', ['vit_heads', 'vit_head_dim'] as const, [heads, headDim]);
  const q = d.scale(project(p.query_proj), 1 / Math.sqrt(headDim)); // [batch, patches, vit_heads, vit_head_dim]
  const k = d.rename(project(p.key_proj), 'patches', 'key_patches');
  const v = d.rename(project(p.value_proj), 'patches', 'key_patches');
  const probs = d.softmax(d.dot(q, k, 'vit_head_dim'), 'key_patches'); // [batch, patches, vit_heads, key_patches]
  const o = d.dot(probs, v, 'key_patches'); // [batch, patches, vit_heads, vit_head_dim]
  return dense(d.mergeAxes(o, ['vit_heads', 'vit_head_dim'] as const, 'vit_qkv'), p.out_proj);
}

function vitBlock(p: VitBlockParams, x: Tokens, heads: number): Tokens {
  return d.scoped(() => {
    const h = d.add(x, vitAttention(p, d.layerNorm(x, p.layer_norm_1.gamma, p.layer_norm_1.beta, 'vit_embed', LN_EPS), heads));
    const y = d.layerNorm(h, p.layer_norm_2.gamma, p.layer_norm_2.beta, 'vit_embed', LN_EPS);
    return d.add(h, dense(d.geluTanh(dense(y, p.mlp_dense_1)), p.mlp_dense_2));
  });
}

/** MAP head: a learned probe attends over the patches (biased q/k/v/out), then x + MLP(LN(x)). */
function mapPool(p: MapHeadParams, x: Tokens, heads: number): Named<readonly ['batch', 'vit_embed']> {
  return d.scoped(() => {
    const headDim = p.query.kernel.size('vit_head_dim');
    const q = d.scale(d.add(d.dot(p.probe, loraKernel(p.query.kernel, p.query), 'vit_embed'), p.query.bias), 1 / Math.sqrt(headDim)); // [vit_heads, vit_head_dim]
    const k = d.add(d.dot(x, loraKernel(p.key.kernel, p.key), 'vit_embed'), p.key.bias); // [batch, patches, vit_heads, vit_head_dim]
    const v = d.add(d.dot(x, loraKernel(p.value.kernel, p.value), 'vit_embed'), p.value.bias);
    const probs = d.softmax(d.dot(q, k, 'vit_head_dim'), 'patches'); // [vit_heads, batch, patches]
    const o = d.dot(probs, v, 'patches'); // [vit_heads, batch, vit_head_dim]
    const pooled = d.add(d.dot(o, loraKernel(p.output.kernel, p.output), 'vit_heads', 'vit_head_dim'), p.output.bias); // [batch, vit_embed]
    const y = d.layerNorm(pooled, p.layer_norm.gamma, p.layer_norm.beta, 'vit_embed', LN_EPS);
    // keras' Dense(activation="gelu") is the exact erf GELU
    return d.add(pooled, dense(d.geluErf(dense(y, p.mlp_dense_1)), p.mlp_dense_2));
  });
}

const activations: Record<string, (x: Named) => Named> = {
  gelu: d.geluErf, // keras' "gelu" is approximate=False
  gelu_approximate: d.geluTanh,
  tanh: d.tanh,
  relu: d.relu,
};

/** Encoder output after the final LayerNorm, before pooling: [batch, patches, vit_embed]. */
export function encode(p: VitParams, c: VitConfig, images: Images): Tokens {
  return d.scoped(() => {
    let x = patchEmbed(p, images, c.vit_patch_size);
    for (const block of p.blocks) x = vitBlock(block, x, c.vit_num_heads);
    return d.layerNorm(x, p.encoder_layer_norm.gamma, p.encoder_layer_norm.beta, 'vit_embed', LN_EPS);
  });
}

/** Pooling of the encoder output: none keeps [batch, patches, vit_embed]; the others give [batch, vit_embed]. */
export function pool(p: VitParams, c: VitConfig, x: Tokens): Tokens | Named<readonly ['batch', 'vit_embed']> {
  switch (c.vit_pooling) {
    case null:
      return x;
    case 'gap':
      return d.mean(x, 'patches');
    case 'zero':
      return d.scoped(() => d.mean(d.slice(x, 'patches', 0, 1), 'patches'));
    case 'map':
      if (!p.pooling) throw new Error("vit_pooling is 'map' but the params have no pooling head");
      return mapPool(p.pooling, x, c.vit_num_heads);
  }
}

/** The image tokens the decoder sees: [batch, patches, embed] (patches = 1 when pooled). */
export function vit(p: VitParams, c: VitConfig, images: Images, debug?: (name: string, x: Named) => void): Named<readonly ['batch', 'patches', 'embed']> {
  return d.scoped(() => {
    const encoded = encode(p, c, images);
    debug?.('vit_encoder_output', encoded);
    const pooled = pool(p, c, encoded);
    if (c.vit_pooling !== null) debug?.('vit_pooled', pooled);
    let x: Named = dense(pooled as Named, p.image_classifier);
    const act = c.vit_classifier_activation;
    if (act !== null) {
      const f = activations[act];
      if (!f) throw new Error(`vit_classifier_activation '${act}' is not supported (null, gelu, gelu_approximate, tanh, relu)`);
      x = f(x);
    }
    // a pooled image is one token
    return (c.vit_pooling === null ? x : d.expand(x, 'patches', 1)) as Named<readonly ['batch', 'patches', 'embed']>;
  });
}
