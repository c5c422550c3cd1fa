/**
 * Generation: keras_hub `PaliGemmaCausalLM.generate` (greedy, top-k, top-p samplers, stop token ids) with a
 * fixed-size per-layer KV cache, each row generated exactly as it would be alone.
 *
 * Schedule (this project's documented choice; ../shared/fixtures/text/README.md "What this project
 * matches"). Positions are in the concatenated [image (N) | text (T)] sequence; row r's prompt is
 * [bos] + prompt, P_r tokens, left-aligned in a buffer of T tokens (padding_mask = P_r ones then zeros).
 *   1. Prefill once over the packed batch, image + text[0 : max_r P_r], with the prefix-LM mask of the
 *      prompts (image and prompt bidirectional, padding keys never visible). Its K/V fill a cache
 *      [batch, key_seq = N + T, kv_heads, head_dim] per layer (keys after RoPE; zeros past the prefill).
 *      Row r's first token (text position P_r) comes from the prefill logits at its last prompt position.
 *   2. Decode step s = 1, 2, ...: every row feeds its newest token, text position t_r = P_r + s - 1, at
 *      cache position c_r = N + t_r: RoPE at c_r, its K/V written at c_r (cache * (1 - onehot) + onehot * new,
 *      by broadcasting: no Tile/Select copies; nothing re-run), attention over keys j <= c_r (and
 *      j >= c_r - (window - 1) on sliding layers; masks built on the host, uploaded once per step), and
 *      the logits sample text position t_r + 1. A row whose buffer is full is frozen (it writes nothing,
 *      its logits are dropped); a step costs one token per row plus attention over the N + T cache.
 *   3. Stop when every row has produced a stop token at a generated position (prompt and padding never
 *      count) or has a full buffer. A row that stopped keeps generating, masked, while others continue
 *      (as keras_hub); positions never reached hold 0.
 *   A row also ends after `maxNewTokens` generated tokens (transformers' max_new_tokens; not keras_hub's).
 * Output mask (keras_hub's): with stop ids, true through a row's first generated stop token (inclusive),
 * false after it; a row that never stopped, or a call without stop ids, is all true (false past a
 * maxNewTokens budget). Finish reason per row: 'stop' (a stop id) or 'length' (buffer or budget).
 * Streaming: `onToken` gets each kept token in step order, rows in order within a step, through a row's
 * stop token and never after it.
 *
 * Why not keras_hub's batched schedule: keras_hub starts every row at the SHORTEST prompt's length and
 * re-feeds the longer prompts' tails through the causal decode path, overwriting their prefix-LM K/V
 * with causal ones; batched row answers then differ from the same row alone (the fixture's row 1 differs
 * from its 2nd token on, logits by up to 14). Here every prompt stays bidirectional and row r starts at
 * its own P_r, so batching never changes a row's answer: the shortest row equals keras_hub's batched row,
 * and every row equals keras_hub's run of that row alone (`greedy_row{0,1}_alone`).
 * Consequences: keras_hub's `stop_token_ids=(0,)` stops at once (its unfilled zeros count as stops);
 * here only generated positions count, so 0 stops a row only when the model emits it. The number of
 * sampling draws per row is T - P_r (keras_hub draws T - min P for every row, discarding the prompt ones).
 *
 * Samplers (keras_hub/src/samplers on the numpy backend): probs = softmax(logits / temperature) in float32;
 * greedy = argmax(probs), first index on ties; top-k = the k largest probs (stable: ties lower id first);
 * top-p = probs sorted descending (stable), keep = shift_right(cumsum <= p) with the first always kept;
 * then keras.random.categorical(log(kept)) as numpy does it: q = softmax(log(kept)) in float32,
 * cdf = cumsum(float64(q)) / cdf[-1], pick candidates[searchsorted(cdf, u, 'right')], u uniform in [0, 1).
 * The uniforms are injectable ([step][row] or a function) to replay a recorded run; otherwise they come
 * from `dsl/random.ts` under an explicit seed or key: u(step, row) = uniformBits(foldIn(foldIn(key, step),
 * row), 1)[0] (24 bits).
 *
 * Logits are read to the host each step (`await data()`, never dataSync: webgpu in Node has none).
 */
import * as os from 'node:os';
import { tf, inNode } from '../../dsl/tf';
import * as d from '../../dsl';
import type { Key, Named } from '../../dsl';
import { imageSequenceLength } from '../../models/config';
import { decoderBlock, isSlidingLayer, type Hidden, type KV } from '../../models/gemma';
import { checkTokenIds, decode, embedInputs, lookup, unembed, type PaliGemmaParams } from '../../models/paligemma';
import type { PaliGemmaConfig } from '../../models/config';
import { assertFitsBackend, compiledModels, formatBytes, maxTensorBytes } from '../runtime/backend';
import type { Images } from '../../models/siglip';
import { decodeStepCompiled, prefillCompiled, transposedEmbeddingCompiled, type Quantize } from './compiled';

// -------------------------------------------------------------------------------------------------
// samplers
// -------------------------------------------------------------------------------------------------

export type Sampler =
  | { readonly kind: 'greedy'; readonly temperature?: number }
  | { readonly kind: 'top_k'; readonly k: number; readonly temperature?: number }
  | { readonly kind: 'top_p'; readonly p: number; readonly k?: number; readonly temperature?: number };

export const greedy = (temperature?: number): Sampler => ({ kind: 'greedy', temperature });
export const topK = (k: number, temperature?: number): Sampler => ({ kind: 'top_k', k, temperature });
export const topP = (p: number, options: { k?: number; temperature?: number } = {}): Sampler => ({ kind: 'top_p', p, ...options });

/** A sampler's choice for one row: the token and, for top-k/top-p, the candidates and their q. */
export interface Choice {
  readonly token: number;
  /** Candidate ids in sampling order (descending probability, ties lower id first). */
  readonly candidates?: Int32Array;
  /** q = softmax(log(candidate probs)), the distribution the categorical draw uses (float32). */
  readonly probs?: Float32Array;
}

export function checkSampler(s: Sampler, vocab: number): void {
  const t = s.temperature ?? 1;
  if (!(t > 0) || !Number.isFinite(t)) throw new Error(`sampler: temperature must be a positive number, got ${t}`);
  if (s.kind === 'top_k' || (s.kind === 'top_p' && s.k !== undefined)) {
    const k = s.k!;
    if (!Number.isInteger(k) || k < 1 || k > vocab) throw new Error(`sampler: ${s.kind} k must be an integer in [1, ${vocab}], got ${k}`);
  }
  if (s.kind === 'top_p' && !(s.p > 0 && s.p <= 1)) throw new Error(`sampler: top_p p must be in (0, 1], got ${s.p}`);
}

const needsUniforms = (s: Sampler): boolean => s.kind !== 'greedy';

/** softmax(logits / temperature) in float32, as keras' Sampler.compute_probabilities. */
export function probabilities(logits: ArrayLike<number>, temperature = 1): Float32Array {
  const n = logits.length;
  const x = new Float32Array(n);
  let m = -Infinity;
  for (let i = 0; i < n; i++) {
    x[i] = Math.fround(logits[i] / temperature);
    if (x[i] > m) m = x[i];
  }
  let sum = 0;
  for (let i = 0; i < n; i++) {
    x[i] = Math.fround(Math.exp(Math.fround(x[i] - m)));
    sum += x[i];
  }
  const s = Math.fround(sum);
  for (let i = 0; i < n; i++) x[i] = Math.fround(x[i] / s);
  return x;
}

/** The values of `probs` in descending order (a native numeric sort of a copy). */
const descending = (probs: Float32Array): Float32Array => Float32Array.from(probs).sort().reverse();

/**
 * The `limit` ids of largest `probs`, in descending order, ties lower id first (a stable descending sort).
 * Only ids at or above the limit-th largest value can qualify: those are selected first, so a 257k
 * vocabulary sorts a handful of ids, not all of them.
 */
function topIds(probs: Float32Array, limit: number, sorted = descending(probs)): Int32Array {
  const threshold = sorted[limit - 1];
  const pool: number[] = [];
  for (let i = 0; i < probs.length; i++) if (probs[i] >= threshold) pool.push(i);
  pool.sort((a, b) => probs[b] - probs[a] || a - b);
  return Int32Array.from(pool.slice(0, limit));
}

/**
 * keras.random.categorical(log(candidateProbs)) on the numpy backend, for one row and one uniform u:
 * q = softmax(log(p)) in float32, cdf = cumsum(float64(q)) / cdf[-1], index = searchsorted(cdf, u, 'right').
 */
export function categorical(candidateProbs: Float32Array, u: number): { index: number; q: Float32Array } {
  const n = candidateProbs.length;
  const logits = candidateProbs.map((p) => Math.fround(Math.log(p)));
  const q = probabilities(logits);
  const cdf = new Float64Array(n);
  let acc = 0;
  for (let i = 0; i < n; i++) cdf[i] = acc += q[i];
  for (let i = 0; i < n; i++) cdf[i] /= acc;
  let index = 0;
  while (index < n - 1 && cdf[index] <= u) index++; // searchsorted 'right': first cdf > u
  return { index, q };
}

/** The sampler's choice for one row of logits; `u` (uniform in [0, 1)) is used by top-k and top-p. */
export function sample(s: Sampler, logits: ArrayLike<number>, u?: number): Choice {
  checkSampler(s, logits.length);
  const probs = probabilities(logits, s.temperature ?? 1);
  if (s.kind === 'greedy') {
    let best = 0;
    for (let i = 1; i < probs.length; i++) if (probs[i] > probs[best]) best = i; // first index on ties
    return { token: best };
  }
  if (u === undefined || !(u >= 0 && u < 1)) throw new Error(`sampler: ${s.kind} needs a uniform in [0, 1), got ${u}`);
  let candidates: Int32Array;
  if (s.kind === 'top_k') {
    candidates = topIds(probs, s.k);
  } else {
    // sorted descending (only the first k with a k), keep = shift_right(cumsum <= p), the first always
    // kept; cumsum in float32 as numpy on a float32 array. Equal values sum the same in any tie order.
    const sorted = descending(probs);
    const width = s.k ?? probs.length;
    let count = 1;
    let cum = 0;
    for (let i = 0; i < width - 1; i++) {
      cum = Math.fround(cum + sorted[i]);
      if (!(cum <= s.p)) break;
      count = i + 2;
    }
    candidates = topIds(probs, count, sorted);
  }
  const kept = Float32Array.from(candidates, (i) => probs[i]);
  const { index, q } = categorical(kept, u);
  return { token: candidates[index], candidates, probs: q };
}

/** Uniforms for sampling: an array [step][row], or a function of (step, row). */
export type Uniforms = readonly ArrayLike<number>[] | ((step: number, row: number) => number);

/** u(step, row) from a key: uniformBits(foldIn(foldIn(key, step), row), 1)[0]. */
export const uniformsFromKey =
  (k: Key) =>
  (step: number, row: number): number =>
    d.uniformBits(d.foldIn(d.foldIn(k, step), row), 1)[0];

function uniformSource(u: Uniforms): (step: number, row: number) => number {
  if (typeof u === 'function') return u;
  return (step, row) => {
    const v = u[step]?.[row];
    if (v === undefined) throw new Error(`generate: uniforms has no value for step ${step}, row ${row} (it has ${u.length} steps)`);
    return v;
  };
}

// -------------------------------------------------------------------------------------------------
// prefill and decode step (tensors in, tensors out; synchronous and memory-neutral)
// -------------------------------------------------------------------------------------------------

/** One layer's fixed-size cache: keys (after RoPE) and values, [batch, key_seq = N + T, kv_heads, head_dim]. */
export interface LayerCache {
  readonly key: KV;
  readonly value: KV;
}

export interface StepOutput {
  /** Soft-capped logits of the next token of each row, [batch, vocab]. */
  readonly logits: Named<readonly ['batch', 'vocab']>;
  readonly cache: LayerCache[];
}

/** Final RMSNorm, tied embedding, final soft cap: hidden [batch, embed] -> logits [batch, vocab]. */
export function head(p: PaliGemmaParams, h: Named<readonly ['batch', 'embed']>, transposed?: TransposedEmbedding): Named<readonly ['batch', 'vocab']> {
  return d.scoped(() => {
    const normed = d.rmsNorm(h, p.final_norm.scale, 'embed', p.config.layer_norm_epsilon);
    let out: Named = transposed
      ? d.concat(transposed.map((t) => d.dot(normed, t, 'embed')), 'vocab')
      : unembed(normed, p.token_embedding);
    if (p.config.final_logit_soft_cap !== null) out = d.softCap(out, p.config.final_logit_soft_cap);
    return out as Named<readonly ['batch', 'vocab']>;
  });
}

/** Calls that may decode at least this many steps use the transposed embedding on wasm (see generate). */
export const TRANSPOSED_HEAD_MIN_STEPS = 16;

/** The tied embedding's row shards transposed, [embed, vocab] each (see `transposedEmbedding`). */
export type TransposedEmbedding = readonly Named<readonly ['embed', 'vocab']>[];

/**
 * On wasm, the tied embedding transposed once per generate call, when it fits: a step's logits are then
 * x [batch, embed] . E^T [embed, vocab], a 2-D untransposed matMul whose weights XNNPACK packs once, where
 * E . x^T is a matMul of one output column (bench config: 54 -> 16 ms per step). It costs the table twice
 * more (the transpose and XNNPACK's packed copy), so it is made only when both fit the wasm line; cpu and
 * webgpu gain nothing from it and get undefined.
 */
export function transposedEmbedding(p: PaliGemmaParams): TransposedEmbedding | undefined {
  if (tf.getBackend() !== 'wasm') return undefined;
  const bytes = 2 * p.config.vocabulary_size * p.config.hidden_dim * 4;
  try {
    assertFitsBackend(bytes, 'the transposed embedding');
  } catch {
    return undefined;
  }
  return p.token_embedding.map((shard) => d.named(tf.transpose(shard.tensor), ['embed', 'vocab'] as const));
}

/**
 * The head a call of up to `steps` decode steps uses: the embedding transposed once (the caller disposes it)
 * when that pays, i.e. for 16+ steps, eager on wasm (see `transposedEmbedding`) or compiled (onnxruntime's
 * MatMul with a transposed B of one output column is slow: compiled.ts); otherwise undefined.
 */
export function transposedHead(p: PaliGemmaParams, steps: number, compiled: boolean): TransposedEmbedding | undefined {
  if (steps < TRANSPOSED_HEAD_MIN_STEPS) return undefined;
  return compiled ? transposedEmbeddingCompiled(p) : transposedEmbedding(p);
}

/** Host rows as an int32 [rows, width] tensor, short rows padded with 0. */
export const int32Rows = (rows: readonly ArrayLike<number>[], width: number): tf.Tensor2D =>
  tf.tensor2d(Int32Array.from({ length: rows.length * width }, (_, i) => rows[Math.floor(i / width)][i % width] ?? 0), [rows.length, width], 'int32');

/**
 * Prefill: the vision tower, then the decoder over image + text[0 : max P_r] under the prompts' prefix-LM
 * mask (padding keys never visible). Returns each row's logits at its last prompt position (they predict
 * text position P_r) and every layer's K/V, zero-padded to a fixed key_seq of N + `length`.
 */
export function prefill(
  p: PaliGemmaParams,
  images: Images,
  tokenIds: readonly ArrayLike<number>[],
  promptLengths: readonly number[],
  length: number,
  compat?: 'keras_hub',
  transposed?: TransposedEmbedding,
): StepOutput {
  return d.scoped(() => {
    const n = imageSequenceLength(p.config);
    const batch = promptLengths.length;
    const width = Math.max(...promptLengths);
    const ids = d.named(int32Rows(tokenIds, width), ['batch', 'seq'] as const);
    const paddingMask = d.named(promptPaddingMask(promptLengths, width), ['batch', 'seq'] as const);
    const responseMask = d.named(tf.zeros([batch, width], 'int32'), ['batch', 'seq'] as const);
    const x = embedInputs(p, { images, token_ids: ids, padding_mask: paddingMask, response_mask: responseMask });
    // the masks from host rows: the prefix-LM masks are built on the host and uploaded once
    const hostPad = promptLengths.map((len) => Int32Array.from({ length: width }, (_, i) => (i < len ? 1 : 0)));
    const hostResp = promptLengths.map(() => new Int32Array(width));
    const { x: h, cache } = decode(p, x, hostPad, hostResp, { compat }); // [batch, N + width, embed]
    return prefillOutput(p, h, cache, tf.tensor1d(lastPromptRows(n, width, promptLengths), 'int32'), length, transposed);
  });
}

/** int32 [batch, width]: 1 on each row's first P_r positions (its prompt), 0 after. */
export function promptPaddingMask(promptLengths: readonly number[], width: number): tf.Tensor2D {
  const mask = new Int32Array(promptLengths.length * width).map((_, i) => (i % width < promptLengths[Math.floor(i / width)] ? 1 : 0));
  return tf.tensor2d(mask, [promptLengths.length, width], 'int32');
}

/** The flat row (in [batch * (N + width)]) of each row's last prompt position: b * (N + width) + N + P_b - 1. */
export const lastPromptRows = (n: number, width: number, promptLengths: readonly number[]): Int32Array => Int32Array.from(promptLengths, (len, b) => b * (n + width) + n + len - 1);

/**
 * Prefill's end, eager and compiled: the logits at each row's last prompt position (`lastRows`, flat rows
 * of `h` as `lastPromptRows` gives them) and every layer's K/V zero-padded to N + `length` keys.
 */
export function prefillOutput(p: PaliGemmaParams, h: Named<readonly ['batch', 'seq', 'embed']>, cache: readonly LayerCache[], lastRows: tf.Tensor1D, length: number, transposed?: TransposedEmbedding): StepOutput {
  const [batch, seq, embed] = h.shape;
  const width = seq - imageSequenceLength(p.config);
  const last = d.named(tf.gather(tf.reshape(h.tensor, [batch * seq, embed]), lastRows), ['batch', 'embed'] as const);
  const grow = (kv: KV) => d.pad(kv, 'key_seq', 0, length - width) as KV;
  return { logits: head(p, last, transposed), cache: cache.map((c) => ({ key: grow(c.key), value: grow(c.value) })) };
}

type StepRows = Named<readonly ['batch', 'seq']>;

/**
 * A decode step's inputs besides params and cache, as tensors: built on the host from the step's numbers
 * (`stepInputs`), so the eager step and the compiled one (compiled.ts: one graph for every step) run the
 * same `decodeLayers` on them.
 */
export interface StepInputs {
  /** int32 [batch, seq = 1]: each row's new token. */
  readonly tokenIds: StepRows;
  /** Each row's cache position, [batch, seq = 1]: host values (eager: RoPE's angles on the host, see d.rope) or an int32 tensor (a graph). */
  readonly positions: d.HostPositions | StepRows;
  /** bool [batch, seq = 1, key_seq]: keys visible to the new token, on full and on sliding-window layers. */
  readonly full: Named<readonly ['batch', 'seq', 'key_seq']>;
  readonly sliding: Named<readonly ['batch', 'seq', 'key_seq']>;
  /** bool [batch, key_seq]: where each active row writes its new K/V. */
  readonly writeMask: Named<readonly ['batch', 'key_seq']>;
}

/**
 * The inputs of a step that feeds `tokenIds[r]` at cache position `cachePositions[r]`: keys j <= position
 * visible (and j >= position - (window - 1) on sliding layers), K/V written there by rows with `active[r]`.
 * The caller disposes the tensors (`sliding` may be `full`).
 */
export function stepInputs(
  c: PaliGemmaParams['config'],
  tokenIds: readonly number[],
  cachePositions: readonly number[],
  active: readonly boolean[],
  length: number,
  positions: 'host' | 'tensor',
): StepInputs {
  const batch = tokenIds.length;
  const visible = (window?: number) => {
    const m = new Uint8Array(batch * length);
    for (let b = 0; b < batch; b++) {
      const pos = cachePositions[b];
      const from = window === undefined ? 0 : Math.max(0, pos - (window - 1));
      for (let j = from; j <= pos && j < length; j++) m[b * length + j] = 1;
    }
    return d.named(tf.tensor3d(m, [batch, 1, length], 'bool'), ['batch', 'seq', 'key_seq'] as const);
  };
  const write = new Uint8Array(batch * length);
  for (let b = 0; b < batch; b++) if (active[b]) write[b * length + cachePositions[b]] = 1;
  const full = visible();
  return {
    tokenIds: d.named(tf.tensor2d(Int32Array.from(tokenIds), [batch, 1], 'int32'), ['batch', 'seq'] as const),
    positions:
      positions === 'host'
        ? { axes: ['batch', 'seq'], shape: [batch, 1], values: cachePositions }
        : d.named(tf.tensor2d(Int32Array.from(cachePositions), [batch, 1], 'int32'), ['batch', 'seq'] as const),
    full,
    sliding: c.use_sliding_window_attention ? visible(c.sliding_window_size) : full,
    writeMask: d.named(tf.tensor2d(write, [batch, length], 'bool'), ['batch', 'key_seq'] as const),
  };
}

/** The decode step on its inputs: the new tokens' embeddings through every layer (reading and writing its cache), then the head. */
export function decodeLayers(p: PaliGemmaParams, cache: readonly LayerCache[], x: StepInputs, compat?: 'keras_hub', transposed?: TransposedEmbedding): StepOutput {
  const c = p.config;
  const batch = x.tokenIds.size('batch');
  // sqrt(D) rounded to float32 first, as embedInputs (keras_hub) does
  let h = d.scale(lookup(p.token_embedding, x.tokenIds), Math.fround(Math.sqrt(c.hidden_dim))) as unknown as Hidden;
  const next: LayerCache[] = [];
  p.layers.forEach((layer, i) => {
    const mask = isSlidingLayer(c, i) ? x.sliding : x.full;
    const out = decoderBlock(layer, c, h, { mask, positions: x.positions, cache: { ...cache[i], writeMask: x.writeMask }, compat });
    h = out.x;
    next.push({ key: out.key, value: out.value });
  });
  const last = d.named(tf.reshape(h.tensor, [batch, h.size('embed')]), ['batch', 'embed'] as const);
  return { logits: head(p, last, transposed), cache: next };
}

/**
 * One decode step for every row: feed `tokenIds[r]` at cache position `cachePositions[r]` (RoPE there, K/V
 * written there, keys j <= position visible, and j >= position - (window - 1) on sliding layers). Rows with
 * `active[r]` false write nothing (their logits are meaningless). Returns the logits and the new cache; the
 * old cache is left to the caller.
 */
export function decodeStep(
  p: PaliGemmaParams,
  cache: readonly LayerCache[],
  tokenIds: readonly number[],
  cachePositions: readonly number[],
  active: readonly boolean[],
  compat?: 'keras_hub',
  transposed?: TransposedEmbedding,
): StepOutput {
  return d.scoped(() => decodeLayers(p, cache, stepInputs(p.config, tokenIds, cachePositions, active, cache[0].key.size('key_seq'), 'host'), compat, transposed));
}

// -------------------------------------------------------------------------------------------------
// generate
// -------------------------------------------------------------------------------------------------

/**
 * Positions the decoder takes, image + text: Gemma's and Gemma 2's max_position_embeddings (8192, as in
 * Hugging Face's PaliGemma text configs; keras_hub's config does not state it, and RoPE would run past it
 * untrained). Gemma 2's sliding window (4096) limits what a layer sees, not the length.
 */
export const MAX_POSITIONS = 8192;

/**
 * Bytes of tensors a generate call holds at its peak: two copies of the KV cache (a step's new cache
 * before the old one is freed), the prefill's attention logits, probabilities and mask, and the logits.
 */
export function generationBytes(c: PaliGemmaConfig, batch: number, maxLength: number, promptWidth = maxLength): { cache: number; prefill: number; total: number } {
  const n = imageSequenceLength(c);
  const keys = n + maxLength;
  const cache = 2 * c.num_layers * batch * keys * c.num_key_value_heads * c.head_dim * 4;
  const prefill = 3 * batch * c.num_query_heads * (n + promptWidth) ** 2 * 4;
  return { cache, prefill, total: 2 * cache + prefill + 2 * batch * c.vocabulary_size * 4 };
}

/** maxLength a positive integer, and image + text positions at most MAX_POSITIONS. */
export function checkMaxLength(c: PaliGemmaConfig, maxLength: number, who: string): void {
  if (!Number.isInteger(maxLength) || maxLength < 1) throw new Error(`${who}: maxLength must be a positive integer, got ${maxLength}`);
  const n = imageSequenceLength(c);
  if (n + maxLength > MAX_POSITIONS) {
    throw new Error(
      `${who}: maxLength ${maxLength} with ${n} image tokens needs ${n + maxLength} positions; the model takes at most ${MAX_POSITIONS} ` +
        `(Gemma's max_position_embeddings), so maxLength can be at most ${MAX_POSITIONS - n}`,
    );
  }
}

/**
 * Refuses, before anything is allocated, a buffer the model cannot take: maxLength must be a positive
 * integer, image + text positions at most MAX_POSITIONS, and the tensors (generationBytes) must fit the
 * backend (the wasm heap line, WebGPU's largest buffer binding).
 */
export function checkGenerationBounds(c: PaliGemmaConfig, batch: number, maxLength: number, who: string, promptWidth = maxLength): void {
  checkMaxLength(c, maxLength, who);
  const bytes = generationBytes(c, batch, maxLength, promptWidth);
  const layerCache = bytes.cache / (2 * c.num_layers);
  const attention = bytes.prefill / 3;
  const biggest = Math.max(layerCache, attention);
  if (biggest > maxTensorBytes()) {
    throw new Error(`${who}: maxLength ${maxLength} for ${batch} row(s) needs a ${formatBytes(biggest)} tensor; one buffer holds at most ${formatBytes(maxTensorBytes())} on this backend`);
  }
  const what = `${who}: maxLength ${maxLength} for ${batch} row(s) (KV cache ${formatBytes(bytes.cache)}, prefill attention ${formatBytes(bytes.prefill)})`;
  assertFitsBackend(bytes.total, what);
  // cpu keeps tensors in the JS heap: more than the machine's memory would end in an out-of-memory abort
  if (inNode && tf.getBackend() === 'cpu' && bytes.total > os.totalmem()) {
    throw new Error(`${what} needs ${formatBytes(bytes.total)} of tensors, more than this machine's ${formatBytes(os.totalmem())} of memory`);
  }
}

/** Rows of a [batch, seq] int tensor or of plain arrays. */
type Rows = Named<readonly ['batch', 'seq']> | readonly ArrayLike<number>[];

export interface GenerateInputs {
  /** float32 [batch, S, S, 3] in [-1, 1] (the image converter's output). */
  readonly images: Images;
  /** int32 [batch, T]: [bos] + prompt, then zeros (keras_hub's generate_preprocess packing). */
  readonly tokenIds: Rows;
  /** [batch, T]: ones over each prompt, then zeros. */
  readonly paddingMask: Rows;
}

/** Why a row ended: `'stop'` it generated a stop token; `'length'` it used its budget (buffer or maxNewTokens). */
export type FinishReason = 'stop' | 'length';

/** One generated token, streamed as soon as its step is sampled (before the next step runs). */
export interface TokenEvent {
  readonly row: number;
  readonly token: number;
  /** Text position of the token (row r's first generated token is at P_r). */
  readonly position: number;
  /** Sampling step (0 = from the prefill). */
  readonly step: number;
  /** Set on the row's last token: why the row ends there. */
  readonly finish?: FinishReason;
}

export interface GenerateOptions {
  /** Buffer length T (prompt + generated tokens, keras_hub's max_length). Default: the width of `tokenIds`. */
  readonly maxLength?: number;
  /** Generated tokens per row at most (prompt not counted); the buffer (maxLength) bounds it too. */
  readonly maxNewTokens?: number;
  /**
   * Streaming: called once per kept token, in step order and within a step in row order, through a row's
   * stop token (inclusive) or its last budgeted token; never after a row finished. Awaited when it returns
   * a promise (tensors are not held across it beyond the cache).
   */
  readonly onToken?: (event: TokenEvent) => void | Promise<void>;
  /** Default greedy. */
  readonly sampler?: Sampler;
  /** A row stops after generating one of these (none: generate until the buffer is full). */
  readonly stopTokenIds?: readonly number[];
  /** Key for the sampling uniforms (top-k, top-p); or `seed` for key(seed). One of the three is required. */
  readonly key?: Key;
  readonly seed?: number;
  /** Replay: uniforms[step][row] (row r's step s samples text position P_r + s), or a function. */
  readonly uniforms?: Uniforms;
  /** Keep each step's logits (for tests). */
  readonly returnLogits?: boolean;
  /** Also return the sampler's candidates and q per step (top-k, top-p). */
  readonly returnChoices?: boolean;
  readonly compat?: 'keras_hub';
  /** Run prefill and decode steps compiled on onnxruntime (two sessions). Default: the 'onnx' backend is active. */
  readonly compiled?: boolean;
  /**
   * 'int8': every weight matMul of the prefill and decode graphs runs with int8 weights (blockwise scales)
   * and int8 activations (compiled.ts, dsl/onnx/int8.ts), as keras' `quantize("int8")`; compiled only. The
   * first call per params object quantizes the weights (kept with the sessions).
   */
  readonly quantize?: Quantize;
}

export interface GenerateOutput {
  /** int32 [batch][T]: prompt, generated tokens, 0 where nothing was generated. */
  readonly tokenIds: Int32Array[];
  /** [batch][T]: keras' output mask (true through the first generated stop token; all true without stop ids). */
  readonly paddingMask: Uint8Array[];
  /** P_r: row r's first generated token is at text position P_r. */
  readonly promptLengths: number[];
  /** Sampling steps run (the prefill's counts as step 0). */
  readonly steps: number;
  /** Per row: `'stop'` (generated a stop id) or `'length'` (buffer full or maxNewTokens reached). */
  readonly finishReasons: FinishReason[];
  /** Per row: tokens the output keeps (through the stop token inclusive, or the whole budget). */
  readonly generatedLengths: number[];
  /** [batch][step] -> float32 [vocab]: the logits that sampled text position P_r + step. */
  readonly logits?: Float32Array[][];
  /** [batch][step]: the sampler's choices. */
  readonly choices?: Choice[][];
}

async function readRows(x: Rows, what: string): Promise<Int32Array[]> {
  if (Array.isArray(x)) return (x as readonly ArrayLike<number>[]).map((r) => Int32Array.from(r));
  const t = x as Named<readonly ['batch', 'seq']>;
  if (t.rank !== 2) throw new Error(`generate: ${what} must be [batch, seq], got ${d.describe(t)}`);
  const data = Int32Array.from(await t.tensor.data());
  const [b, s] = t.shape;
  return Array.from({ length: b }, (_, r) => data.slice(r * s, (r + 1) * s));
}

/** Prompt lengths from a left-aligned padding mask, with literal errors for what generate cannot take. */
function promptLengthsOf(mask: Int32Array[], ids: Int32Array[], length: number): number[] {
  if (mask.length !== ids.length) throw new Error(`generate: paddingMask has ${mask.length} rows but tokenIds has ${ids.length}`);
  if (mask.length === 0) throw new Error('generate: no rows');
  return mask.map((row, r) => {
    if (row.length !== ids[r].length) throw new Error(`generate: row ${r} has ${ids[r].length} token ids but ${row.length} padding_mask entries`);
    let len = 0;
    while (len < row.length && row[len] !== 0) len++;
    const after = row.findIndex((v, i) => i > len && v !== 0);
    if (after >= 0) throw new Error(`generate: row ${r}'s padding_mask has a 1 at ${after} after a 0 at ${len}; prompts must be left-aligned`);
    if (len === 0) throw new Error(`generate: row ${r} has an empty prompt; a packed prompt starts with [bos]`);
    if (len >= length) throw new Error(`generate: row ${r}'s prompt (${len} tokens) fills the whole buffer (max length ${length}): nothing to generate`);
    return len;
  });
}

/**
 * keras_hub `PaliGemmaCausalLM.generate` on packed prompts, each row generated as it would be alone (see
 * the header for the schedule). Memory-neutral: every tensor it makes is freed; outputs are host arrays.
 */
export async function generate(p: PaliGemmaParams, inputs: GenerateInputs, options: GenerateOptions = {}): Promise<GenerateOutput> {
  const c = p.config;
  const n = imageSequenceLength(c);
  const sampler = options.sampler ?? greedy();
  checkSampler(sampler, c.vocabulary_size);
  const ids = await readRows(inputs.tokenIds, 'tokenIds');
  const width = ids[0]?.length ?? 0;
  const length = options.maxLength ?? width;
  checkMaxLength(c, length, 'generate');
  const plen = promptLengthsOf(await readRows(inputs.paddingMask, 'paddingMask'), ids, length);
  checkGenerationBounds(c, ids.length, length, 'generate', Math.max(...plen));
  checkTokenIds(c, ids, plen, 'generate');
  const budget = options.maxNewTokens ?? Infinity;
  if (options.maxNewTokens !== undefined && (!Number.isInteger(budget) || budget < 1)) {
    throw new Error(`generate: maxNewTokens must be a positive integer, got ${options.maxNewTokens}`);
  }
  const batch = plen.length;
  if (inputs.images.shape[0] !== batch) throw new Error(`generate: images has ${inputs.images.shape[0]} rows but tokenIds has ${batch}`);
  const stops = new Set<number>();
  for (const s of options.stopTokenIds ?? []) {
    if (!Number.isInteger(s) || s < 0 || s >= c.vocabulary_size) {
      throw new Error(`generate: stop token id ${s} is not an integer in [0, ${c.vocabulary_size})`);
    }
    stops.add(s);
  }
  let uniform: ((step: number, row: number) => number) | undefined;
  if (needsUniforms(sampler)) {
    if (options.uniforms) uniform = uniformSource(options.uniforms);
    else if (options.key) uniform = uniformsFromKey(options.key);
    else if (options.seed !== undefined) uniform = uniformsFromKey(d.key(options.seed));
    else throw new Error(`generate: the ${sampler.kind} sampler needs uniforms, a key or a seed`);
  }

  const tokens = ids.map((row, r) => {
    const out = new Int32Array(length);
    out.set(row.subarray(0, plen[r]));
    return out;
  });
  const firstStop: number[] = plen.map(() => -1);
  const logits: Float32Array[][] | undefined = options.returnLogits ? plen.map(() => []) : undefined;
  const choices: Choice[][] | undefined = options.returnChoices ? plen.map(() => []) : undefined;
  // row r samples position P_r + step while it has room in the buffer and in its new-token budget
  const isActive = (r: number, step: number) => plen[r] + step < length && step < budget;
  const finished: (FinishReason | undefined)[] = plen.map(() => undefined);

  const compiled = options.compiled ?? compiledModels();
  const quantize = options.quantize;
  if (quantize !== undefined && quantize !== 'int8') throw new Error(`generate: quantize must be 'int8', got ${JSON.stringify(quantize)}`);
  if (quantize && !compiled) throw new Error(`generate: quantize 'int8' runs compiled, on onnxruntime (backend 'onnx' or compiled: true); the active backend is '${tf.getBackend()}'`);
  // the transposed head pays for itself after ~12 steps (bench config, wasm: transpose + XNNPACK's packing
  // ~140 ms of CPU, then ~11 ms saved per step), so only calls that may run 16 steps or more make it
  const mostSteps = Math.max(...plen.map((len) => Math.min(length - len, budget)));
  // int8: the head's MatMulNBits reads the embedding quantized as it is stored ([vocab, embed] is its [N, K])
  const transposed = quantize ? undefined : transposedHead(p, mostSteps, compiled);
  let state: StepOutput | undefined;
  let step = 0;
  try {
    const first: StepOutput = compiled
      ? prefillCompiled(p, inputs.images, tokens, plen, length, options.compat, quantize)
      : prefill(p, inputs.images, tokens, plen, length, options.compat, transposed);
    state = first;
    for (;;) {
      const host = (await state.logits.tensor.data()) as Float32Array;
      const vocab = host.length / batch;
      for (let r = 0; r < batch; r++) {
        if (!isActive(r, step)) continue;
        const row = host.subarray(r * vocab, (r + 1) * vocab);
        const choice = sample(sampler, row, uniform?.(step, r));
        const pos = plen[r] + step;
        tokens[r][pos] = choice.token;
        if (firstStop[r] < 0 && stops.has(choice.token)) firstStop[r] = pos;
        logits?.[r].push(Float32Array.from(row));
        choices?.[r].push(choice);
        if (finished[r] === undefined) {
          if (firstStop[r] === pos) finished[r] = 'stop';
          else if (!isActive(r, step + 1)) finished[r] = 'length';
          await options.onToken?.({ row: r, token: choice.token, position: pos, step, ...(finished[r] ? { finish: finished[r] } : {}) });
        }
      }
      step++;
      if (plen.every((_, r) => firstStop[r] >= 0 || !isActive(r, step))) break;
      // feed each row's newest token (text position P_r + step - 1) at cache position N + P_r + step - 1
      const active = plen.map((_, r) => isActive(r, step));
      const feed = plen.map((len, r) => (active[r] ? tokens[r][len + step - 1] : 0));
      const at = plen.map((len, r) => (active[r] ? n + len + step - 1 : n + length - 1));
      const next: StepOutput = compiled
        ? decodeStepCompiled(p, state.cache, feed, at, active, options.compat, transposed, quantize)
        : decodeStep(p, state.cache, feed, at, active, options.compat, transposed);
      disposeState(state);
      state = next;
    }
  } finally {
    if (state) disposeState(state);
    if (transposed) tf.dispose(transposed.map((t) => t.tensor));
  }

  // keras' mask: true through the first generated stop; past a maxNewTokens budget (not keras) false too
  const ends = plen.map((len, r) => (firstStop[r] >= 0 ? firstStop[r] + 1 : Math.min(length, len + budget)));
  const paddingMask = tokens.map((_, r) => new Uint8Array(length).fill(1).fill(0, ends[r]));
  return {
    tokenIds: tokens,
    paddingMask,
    promptLengths: plen,
    steps: step,
    finishReasons: finished.map((f) => f ?? 'length'),
    generatedLengths: ends.map((e, r) => e - plen[r]),
    ...(logits ? { logits } : {}),
    ...(choices ? { choices } : {}),
  };
}

function disposeState(s: StepOutput): void {
  tf.dispose(d.collectTensors(s));
}
