/**
 * Gemma / Gemma 2 decoder blocks as PaliGemma uses them (keras_hub `PaliGemmaDecoderBlock` and
 * `CachedGemmaAttention`; big_vision `models/ppp/gemma.py`).
 *
 *   h = RMSNorm(x);  a = Attention(h, mask);  [a = RMSNorm(a)];  x = x + dropout(a)
 *   h = RMSNorm(x);  f = (gelu_tanh(h W_gating) * (h W_gating_2)) W_linear;  [f = RMSNorm(f)];  x = x + f
 *
 * Attention: RoPE on q and k; GQA (query head n reads kv head n // (Hq / Hkv)); optional soft cap of the
 * logits before masking; masked softmax in float32; a query with no visible key outputs 0.
 *
 * Axes: batch, seq (queries), key_seq (keys), embed (D), heads (Hq), kv_heads (Hkv), groups (Hq / Hkv),
 * head_dim (H), ffw (intermediate_dim / 2).
 */
import { tf } from '../dsl/tf';
import * as d from '../dsl';
import type { Key, Named } from '../dsl';
import type { PaliGemmaConfig } from './config';
import { loraKernel, type LoraParams } from './lora';

// -------------------------------------------------------------------------------------------------
// params. Kernels are stored [in..., out...] (contracted axes first) so that each projection is one 2-D
// untransposed matMul; the checkpoint codec permutes keras' layout by name.
// -------------------------------------------------------------------------------------------------

export interface RmsNormParams {
  readonly scale: Named<readonly ['embed']>;
}

export interface DecoderBlockParams {
  readonly pre_attention_norm: RmsNormParams;
  readonly attention: {
    readonly query: Named<readonly ['embed', 'heads', 'head_dim']>;
    readonly key: Named<readonly ['embed', 'kv_heads', 'head_dim']>;
    readonly value: Named<readonly ['embed', 'kv_heads', 'head_dim']>;
    readonly output: Named<readonly ['heads', 'head_dim', 'embed']>;
    /** LoRA adapters of the kernels (models/lora.ts), where enabled: keras_hub's default is query and value. */
    readonly query_lora?: LoraParams;
    readonly key_lora?: LoraParams;
    readonly value_lora?: LoraParams;
    readonly output_lora?: LoraParams;
  };
  readonly post_attention_norm?: RmsNormParams;
  readonly pre_ffw_norm: RmsNormParams;
  readonly gating_ffw: Named<readonly ['embed', 'ffw']>;
  readonly gating_ffw_2: Named<readonly ['embed', 'ffw']>;
  readonly ffw_linear: Named<readonly ['ffw', 'embed']>;
  readonly gating_ffw_lora?: LoraParams;
  readonly gating_ffw_2_lora?: LoraParams;
  readonly ffw_linear_lora?: LoraParams;
  readonly post_ffw_norm?: RmsNormParams;
}

export type Hidden = Named<readonly ['batch', 'seq', 'embed']>;
/** Keys or values of one layer, keys after RoPE: [batch, key_seq, kv_heads, head_dim]. */
export type KV = Named<readonly ['batch', 'key_seq', 'kv_heads', 'head_dim']>;

export interface BlockOptions {
  /** Boolean [batch, seq, key_seq] (or any subset of those axes): true where a query may see a key. */
  readonly mask: Named;
  /** Positions of the queries, [seq] or [batch, seq], for RoPE (host positions preferred: see d.rope). */
  readonly positions: Named | d.HostPositions;
  /**
   * Keys and values of earlier positions (generation). Without `writeMask` the new ones are appended after
   * them. With `writeMask` (boolean [batch, key_seq], one true entry per row) the cache has a fixed size:
   * `x` holds one query per row and its K/V are written where the mask is true (each row at its own
   * position); `mask` must then cover the whole cache.
   */
  readonly cache?: { readonly key: KV; readonly value: KV; readonly writeMask?: Named<readonly ['batch', 'key_seq']> };
  /** Training: dropout keys for this layer; absent at inference (dropout is the identity). */
  readonly dropoutKey?: Key;
  /** keras_hub as it is, not as documented: queries always scaled by 1/sqrt(head_dim), RMSNorm eps 1e-6. */
  readonly compat?: 'keras_hub';
}

/** The query scale. Documented: 1/sqrt(H) when query_head_dim_normalize, else 1/sqrt(D / Hq). */
export function queryScale(c: PaliGemmaConfig, compat?: 'keras_hub'): number {
  // keras_hub's code always uses 1/sqrt(head_dim) (wrong for PaliGemma 2 28B, whose flag is false).
  if (compat === 'keras_hub' || c.query_head_dim_normalize) return 1 / Math.sqrt(c.head_dim);
  return 1 / Math.sqrt(c.hidden_dim / c.num_query_heads);
}

/** Epsilon of the decoder-block RMSNorms: documented layer_norm_epsilon; keras_hub's code leaves 1e-6. */
export const blockEpsilon = (c: PaliGemmaConfig, compat?: 'keras_hub'): number => (compat === 'keras_hub' ? 1e-6 : c.layer_norm_epsilon);

const rms = (x: Hidden, p: RmsNormParams, eps: number): Hidden => d.rmsNorm(x, p.scale, 'embed', eps);

// -------------------------------------------------------------------------------------------------
// attention
// -------------------------------------------------------------------------------------------------

/**
 * The keys (or values) attention reads: the cache then the new ones (concatenated), or, with a write mask,
 * the fixed-size cache with the one new position of each row written where the mask is true.
 */
function withCache(cache: KV, fresh: KV, writeMask?: Named<readonly ['batch', 'key_seq']>): KV {
  if (!writeMask) return d.concat([cache, fresh], 'key_seq');
  if (fresh.size('key_seq') !== 1) throw new Error(`attention: a cache with a writeMask takes one new position per row, got ${d.describe(fresh)}`);
  d.checkSizes(writeMask, { batch: cache.size('batch'), key_seq: cache.size('key_seq') }, 'attention: cache writeMask');
  return d.scoped(() => {
    const axes = cache.axes;
    const shape = cache.shape as number[];
    const at = tf.reshape(tf.cast(d.align(writeMask, ['batch', 'key_seq'] as const).tensor, 'bool'), [shape[0], shape[1], 1, 1]);
    const value = tf.broadcastTo(d.align(fresh, axes).tensor, shape); // [batch, key_seq, kv_heads, head_dim]
    return d.named(tf.where(tf.broadcastTo(at, shape), value, d.align(cache, axes).tensor), axes) as KV;
  });
}

export function attention(
  p: DecoderBlockParams['attention'],
  c: PaliGemmaConfig,
  x: Hidden,
  o: BlockOptions,
): { out: Hidden; key: KV; value: KV } {
  return d.scoped(() => {
    const groups = c.num_query_heads / c.num_key_value_heads;
    const q0 = d.rope(d.dot(x, loraKernel(p.query, p.query_lora), 'embed'), o.positions, 'head_dim'); // [batch, seq, heads, head_dim]
    const q = d.splitAxis(d.scale(q0, queryScale(c, o.compat)), 'heads', ['kv_heads', 'groups'] as const, [c.num_key_value_heads, groups]);
    const kNew = d.rename(d.rope(d.dot(x, loraKernel(p.key, p.key_lora), 'embed'), o.positions, 'head_dim'), 'seq', 'key_seq'); // [batch, key_seq, kv_heads, head_dim]
    const vNew = d.rename(d.dot(x, loraKernel(p.value, p.value_lora), 'embed'), 'seq', 'key_seq');
    const key: KV = o.cache ? withCache(o.cache.key, kNew, o.cache.writeMask) : kNew;
    const value: KV = o.cache ? withCache(o.cache.value, vNew, o.cache.writeMask) : vNew;
    let logits = d.dot(q, key, 'head_dim'); // [batch, seq, kv_heads, groups, key_seq]
    if (c.attention_logit_soft_cap !== null) logits = d.softCap(logits, c.attention_logit_soft_cap); // before masking
    let probs = d.softmax(logits, 'key_seq', o.mask);
    if (o.dropoutKey) probs = d.dropout(probs, c.dropout, d.foldIn(o.dropoutKey, 0));
    const heads = d.mergeAxes(d.dot(probs, value, 'key_seq'), ['kv_heads', 'groups'] as const, 'heads'); // [batch, seq, heads, head_dim]
    const out: Hidden = d.dot(heads, loraKernel(p.output, p.output_lora), 'heads', 'head_dim'); // [batch, seq, embed]
    return { out, key, value };
  });
}

// -------------------------------------------------------------------------------------------------
// block
// -------------------------------------------------------------------------------------------------

export function decoderBlock(p: DecoderBlockParams, c: PaliGemmaConfig, x: Hidden, o: BlockOptions): { x: Hidden; key: KV; value: KV } {
  return d.scoped(() => {
    const eps = blockEpsilon(c, o.compat);
    const att = attention(p.attention, c, rms(x, p.pre_attention_norm, eps), o);
    let a = att.out;
    if (p.post_attention_norm) a = rms(a, p.post_attention_norm, eps);
    if (o.dropoutKey) a = d.dropout(a, c.dropout, d.foldIn(o.dropoutKey, 1));
    const h: Hidden = d.add(x, a);
    const y = rms(h, p.pre_ffw_norm, eps);
    // the FFN is intermediate_dim / 2 wide: keras_hub's intermediate_dim counts both gates
    const gate = d.geluTanh(d.dot(y, loraKernel(p.gating_ffw, p.gating_ffw_lora), 'embed')); // [batch, seq, ffw]
    const up = d.dot(y, loraKernel(p.gating_ffw_2, p.gating_ffw_2_lora), 'embed');
    let f: Hidden = d.dot(d.mul(gate, up), loraKernel(p.ffw_linear, p.ffw_linear_lora), 'ffw');
    if (p.post_ffw_norm) f = rms(f, p.post_ffw_norm, eps);
    return { x: d.add(h, f), key: att.key, value: att.value };
  });
}

/** Sliding-window layers: only even-indexed layers, only when the config turns the window on. */
export const isSlidingLayer = (c: PaliGemmaConfig, layer: number): boolean => c.use_sliding_window_attention && layer % 2 === 0;
