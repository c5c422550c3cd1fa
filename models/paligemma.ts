/**
 * PaliGemma (1 and 2): SigLIP image tokens prepended to scaled text embeddings, a Gemma / Gemma 2 decoder
 * under a prefix-LM mask, a final RMSNorm, and tied-embedding logits (keras_hub `PaliGemmaBackbone`,
 * `PaliGemmaCausalLM`; big_vision `models/proj/paligemma/paligemma.py`). Math: ../shared/docs/SEMANTICS.md.
 *
 *   x = concat([vit(images), token_embedding[token_ids] * sqrt(D)], seq)       # [batch, N + T, embed]
 *   for each layer: x = decoderBlock(x, prefix-LM mask (+ sliding window on even layers), RoPE 0..L-1)
 *   sequence_output = RMSNorm(x)
 *   logits = softcap(sequence_output[:, N:] . token_embedding^T)               # [batch, T, vocab]
 *
 * Params carry their config, so the model is a pure function `backbone(params, inputs, options)`.
 */
import { tf, readsSync } from '../dsl/tf';
import * as d from '../dsl';
import type { Key, Named } from '../dsl';
import { imageSequenceLength, validateConfig, type PaliGemmaConfig } from './config';
import { decoderBlock, isSlidingLayer, type DecoderBlockParams, type Hidden, type KV, type RmsNormParams } from './gemma';
import { vit, type Images, type VitParams } from './siglip';

/**
 * The tied input/output embedding as row shards (vocabulary rows 0..n0-1, n0..., in order): one shard unless
 * a single buffer cannot hold it (WebGPU binds at most 2 GiB; PaliGemma 2's table is 2.4 GB).
 */
export type Embedding = readonly Named<readonly ['vocab', 'embed']>[];

export interface PaliGemmaParams {
  readonly config: PaliGemmaConfig;
  readonly token_embedding: Embedding;
  readonly vit: VitParams;
  readonly layers: readonly DecoderBlockParams[];
  readonly final_norm: RmsNormParams;
}

/** keras_hub's inputs: images [-1, 1] NHWC float32; token_ids, padding_mask, response_mask int32 [batch, seq]. */
export interface BackboneInputs {
  readonly images: Images;
  readonly token_ids: Named<readonly ['batch', 'seq']>;
  readonly padding_mask: Named<readonly ['batch', 'seq']>;
  readonly response_mask: Named<readonly ['batch', 'seq']>;
}

export interface BackboneOptions {
  /** Training: dropout where keras_hub applies it (attention probabilities and the attention branch). */
  readonly train?: { readonly key: Key };
  /** Reproduce keras_hub's code where it departs from its documentation (../shared/docs/SEMANTICS.md). */
  readonly compat?: 'keras_hub';
  /** Called with intermediate tensors (names as in the fixtures' debug/). Keep what you need with tf.keep(tf.clone(...)). */
  readonly debug?: (name: string, x: Named) => void;
}

export { imageSequenceLength };

/** The tied input/output embedding (keras_hub's `backbone.token_embedding`), as row shards. */
export const tokenEmbedding = (p: PaliGemmaParams): Embedding => p.token_embedding;

/** Embedding lookup over row shards: each shard serves the ids in its row range. */
export function lookup<I extends readonly string[]>(table: Embedding, ids: Named<I>): Named<[...I, 'embed']> {
  if (table.length === 1) return d.embed(table[0], ids);
  return d.scoped(() => {
    let offset = 0;
    let sum: Named | undefined;
    for (const shard of table) {
      const rows = shard.size('vocab');
      const local = d.sub(d.cast(ids, 'int32'), offset);
      const inside = d.cast(d.named(tf.logicalAnd(tf.greaterEqual(local.tensor, 0), tf.less(local.tensor, rows)), ids.axes), 'float32');
      const safe = d.named(tf.where(tf.cast(inside.tensor, 'bool'), local.tensor, tf.zerosLike(local.tensor)), ids.axes);
      const part = d.mul(d.embed(shard, safe), inside); // zero where the id is another shard's
      sum = sum ? d.add(sum, part) : part;
      offset += rows;
    }
    return sum as Named<[...I, 'embed']>;
  });
}

/** x . E^T over row shards, concatenated along the vocabulary: [..., vocab]. */
export function unembed<A extends readonly string[]>(x: Named<A>, table: Embedding): Named<[...d.Without<A, 'embed'>, 'vocab']> {
  const parts = table.map((shard) => d.dot(x as Named, shard as Named, 'embed' as never));
  if (parts.length === 1) return parts[0] as Named<[...d.Without<A, 'embed'>, 'vocab']>;
  const out = d.concat(parts, 'vocab' as never);
  for (const p of parts) p.dispose();
  return out as Named<[...d.Without<A, 'embed'>, 'vocab']>;
}

// -------------------------------------------------------------------------------------------------
// masks
// -------------------------------------------------------------------------------------------------

/** A [batch, seq] int mask as a tensor or as host rows. */
export type MaskRows = Named<readonly ['batch', 'seq']> | readonly ArrayLike<number>[];

/**
 * The prefix-LM mask on the host, Uint8Array [batch, L, L] with L = imageTokens + T (1 = visible):
 *   allowed[b, i, j] = (pad[b, j] && !resp[b, j]) || (resp[b, j] && j <= i)
 * with pad = [1]*N ++ padding_mask and resp = [0]*N ++ response_mask: image and prompt see each other both
 * ways and never the response; the response is causal; padded keys are never visible. On sliding layers
 * also |i - j| <= window - 1 (symmetric, so it also cuts the prefix).
 */
export function prefixLmMaskValues(
  paddingMask: readonly ArrayLike<number>[],
  responseMask: readonly ArrayLike<number>[],
  imageTokens: number,
  slidingWindow?: number,
): Uint8Array {
  const batch = paddingMask.length;
  const T = paddingMask[0]?.length ?? 0;
  const L = imageTokens + T;
  const out = new Uint8Array(batch * L * L);
  const prefix = new Uint8Array(L);
  const resp = new Uint8Array(L);
  for (let b = 0; b < batch; b++) {
    for (let j = 0; j < L; j++) {
      const pj = j < imageTokens || paddingMask[b][j - imageTokens] !== 0;
      const rj = j >= imageTokens && responseMask[b][j - imageTokens] !== 0;
      prefix[j] = pj && !rj ? 1 : 0;
      resp[j] = rj ? 1 : 0;
    }
    for (let i = 0; i < L; i++) {
      const row = (b * L + i) * L;
      const from = slidingWindow === undefined ? 0 : Math.max(0, i - (slidingWindow - 1));
      const to = slidingWindow === undefined ? L - 1 : Math.min(L - 1, i + slidingWindow - 1);
      for (let j = from; j <= to; j++) out[row + j] = prefix[j] | (resp[j] & (j <= i ? 1 : 0));
    }
  }
  return out;
}

/** Host rows of a mask: given as rows, or read synchronously (cpu, wasm); undefined on webgpu (no dataSync in Node) and in a trace. */
function hostRows(m: MaskRows): readonly ArrayLike<number>[] | undefined {
  if (!(m instanceof d.Named)) return m;
  if (!readsSync()) return undefined;
  const [b, t] = m.shape;
  const v = m.tensor.dataSync();
  return Array.from({ length: b }, (_, r) => v.subarray(r * t, (r + 1) * t));
}

/**
 * The prefix-LM mask, boolean [batch, seq, key_seq] over image + text (see prefixLmMaskValues for the
 * formula). Built on the host and uploaded once (from host rows, or from the mask tensors where they can
 * be read synchronously); on webgpu from tensors, with tensor ops.
 */
export function prefixLmMask(paddingMask: MaskRows, responseMask: MaskRows, imageTokens: number, slidingWindow?: number): Named<readonly ['batch', 'seq', 'key_seq']> {
  const pad = hostRows(paddingMask);
  const resp = hostRows(responseMask);
  if (pad && resp) {
    const L = imageTokens + (pad[0]?.length ?? 0);
    const values = prefixLmMaskValues(pad, resp, imageTokens, slidingWindow);
    return d.named(tf.tensor3d(values, [pad.length, L, L], 'bool'), ['batch', 'seq', 'key_seq'] as const);
  }
  return prefixLmMaskOps(paddingMask as Named<readonly ['batch', 'seq']>, responseMask as Named<readonly ['batch', 'seq']>, imageTokens, slidingWindow);
}

/** prefixLmMask with tensor ops (webgpu, whose tensors cannot be read synchronously). */
export function prefixLmMaskOps(
  paddingMask: Named<readonly ['batch', 'seq']>,
  responseMask: Named<readonly ['batch', 'seq']>,
  imageTokens: number,
  slidingWindow?: number,
): Named<readonly ['batch', 'seq', 'key_seq']> {
  return d.scoped(() => {
    const batch = paddingMask.size('batch');
    const length = imageTokens + paddingMask.size('seq');
    const extend = (m: Named, fill: number) =>
      tf.concat([tf.fill([batch, imageTokens], fill, 'int32'), tf.cast(tf.notEqual(m.tensor, 0), 'int32')], 1);
    const pad = tf.cast(extend(paddingMask, 1), 'bool'); // [batch, key_seq]
    const resp = tf.cast(extend(responseMask, 0), 'bool');
    const i = tf.reshape(tf.range(0, length, 1, 'int32'), [length, 1]); // queries
    const j = tf.reshape(tf.range(0, length, 1, 'int32'), [1, length]); // keys
    const causal = tf.lessEqual(j, i); // [seq, key_seq]
    const prefixKey = tf.expandDims(tf.logicalAnd(pad, tf.logicalNot(resp)), 1); // [batch, 1, key_seq]
    const responseKey = tf.expandDims(resp, 1);
    let allowed = tf.logicalOr(prefixKey, tf.logicalAnd(responseKey, tf.expandDims(causal, 0)));
    if (slidingWindow !== undefined) {
      allowed = tf.logicalAnd(allowed, tf.expandDims(tf.lessEqual(tf.abs(tf.sub(i, j)), slidingWindow - 1), 0));
    }
    return d.named(allowed, ['batch', 'seq', 'key_seq'] as const);
  });
}

// -------------------------------------------------------------------------------------------------
// forward
// -------------------------------------------------------------------------------------------------

/**
 * Token ids must index the vocabulary: an id outside [0, vocabulary_size) is refused on the host, naming
 * the id, its row and position (tfjs' cpu gather throws an opaque index error, wasm and webgpu read
 * whatever memory follows the table). `lengths[r]`: check row r's first lengths[r] ids only (its prompt).
 */
export function checkTokenIds(c: PaliGemmaConfig, rows: readonly ArrayLike<number>[], lengths: readonly number[] | undefined, who: string): void {
  const vocab = c.vocabulary_size;
  rows.forEach((row, r) => {
    const n = lengths?.[r] ?? row.length;
    for (let i = 0; i < n; i++) {
      const id = row[i];
      if (!(Number.isInteger(id) && id >= 0 && id < vocab)) {
        throw new Error(`${who}: token id ${id} at row ${r}, position ${i} is outside the vocabulary of ${vocab} ids [0, ${vocab - 1}]`);
      }
    }
  });
}

export function checkInputs(c: PaliGemmaConfig, x: BackboneInputs): void {
  validateConfig(c);
  const [b, t] = x.token_ids.shape;
  const expect = (name: string, got: readonly number[], want: readonly number[]) => {
    if (got.length !== want.length || got.some((g, i) => g !== want[i])) {
      throw new Error(`backbone: ${name} has shape [${got.join(', ')}], expected [${want.join(', ')}]`);
    }
  };
  expect('images', x.images.shape, [b, c.image_size, c.image_size, 3]);
  expect('padding_mask', x.padding_mask.shape, [b, t]);
  expect('response_mask', x.response_mask.shape, [b, t]);
  // ids checked on the host where a synchronous read exists (cpu, wasm); webgpu in Node has no dataSync,
  // so there generate and the CLI check their host arrays before making the tensor
  if (readsSync()) {
    const ids = x.token_ids.tensor.dataSync();
    checkTokenIds(c, Array.from({ length: b }, (_, r) => ids.subarray(r * t, (r + 1) * t)), undefined, 'backbone');
  }
}

/** Image and scaled text embeddings, concatenated: [batch, N + T, embed]. */
export function embedInputs(p: PaliGemmaParams, x: BackboneInputs, debug?: BackboneOptions['debug']): Hidden {
  validateConfig(p.config);
  return d.scoped(() => {
    const c = p.config;
    const image = d.rename(vit(p.vit, c, x.images, debug), 'patches', 'seq');
    debug?.('image_embeddings', image);
    // sqrt(D) rounded to float32 first, as keras_hub does (ops.cast(ops.sqrt(hidden_dim), dtype))
    const text = d.scale(lookup(p.token_embedding, x.token_ids), Math.fround(Math.sqrt(c.hidden_dim))); // not applied to images
    debug?.('text_embeddings_scaled', text);
    return d.concat<readonly ['batch', 'seq', 'embed'], 'seq'>([image, text], 'seq');
  });
}

/** Positions offset..offset+L-1 over image + text (padding does not shift them), on the host. */
export const positions = (length: number, offset = 0): d.HostPositions => ({
  axes: ['seq'],
  shape: [length],
  values: Array.from({ length }, (_, i) => offset + i),
});

/** Runs the decoder over `x` with the prefix-LM masks; returns the hidden states and every layer's K/V. */
export function decode(
  p: PaliGemmaParams,
  x: Hidden,
  paddingMask: MaskRows,
  responseMask: MaskRows,
  options: BackboneOptions = {},
): { x: Hidden; cache: Array<{ key: KV; value: KV }> } {
  return d.scoped(() => {
    const c = p.config;
    const n = imageSequenceLength(c);
    const pos = positions(x.size('seq'));
    // host rows read once, both masks built on the host and uploaded once each (not per layer)
    const pad = hostRows(paddingMask) ?? paddingMask;
    const resp = hostRows(responseMask) ?? responseMask;
    const full = prefixLmMask(pad, resp, n);
    const sliding = c.use_sliding_window_attention ? prefixLmMask(pad, resp, n, c.sliding_window_size) : full;
    const cache: Array<{ key: KV; value: KV }> = [];
    let h = x;
    p.layers.forEach((layer, i) => {
      const mask = isSlidingLayer(c, i) ? sliding : full;
      options.debug?.(`attention_mask_layer${i}`, mask);
      const key = options.train ? d.foldIn(options.train.key, i) : undefined;
      const out = decoderBlock(layer, c, h, { mask, positions: pos, dropoutKey: key, compat: options.compat });
      h = out.x;
      cache.push({ key: out.key, value: out.value });
      options.debug?.(`decoder_block_${i}_output`, h);
    });
    return { x: h, cache };
  });
}

/** keras_hub's `PaliGemmaBackbone` call: sequence_output [batch, N + T, embed] (final RMSNorm at every position). */
export function backbone(p: PaliGemmaParams, inputs: BackboneInputs, options: BackboneOptions = {}): Hidden {
  checkInputs(p.config, inputs);
  return d.scoped(() => {
    const x = embedInputs(p, inputs, options.debug);
    const { x: h } = decode(p, x, inputs.padding_mask, inputs.response_mask, options);
    return d.rmsNorm(h, p.final_norm.scale, 'embed', p.config.layer_norm_epsilon) as Hidden;
  });
}

/**
 * `PaliGemmaCausalLM` logits from the backbone output: text positions only, tied embedding, final soft cap.
 * [batch, T, vocab].
 */
export function logits(p: PaliGemmaParams, sequenceOutput: Hidden, options: Pick<BackboneOptions, 'debug'> = {}): Named<readonly ['batch', 'seq', 'vocab']> {
  return d.scoped(() => {
    const n = imageSequenceLength(p.config);
    const text = d.slice(sequenceOutput, 'seq', n, sequenceOutput.size('seq') - n);
    let out: Named = unembed(text, p.token_embedding);
    options.debug?.('logits_before_soft_cap', out);
    if (p.config.final_logit_soft_cap !== null) out = d.softCap(out, p.config.final_logit_soft_cap);
    return out as Named<readonly ['batch', 'seq', 'vocab']>;
  });
}
