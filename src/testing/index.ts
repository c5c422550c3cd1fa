/**
 * paligemma-ts/testing: property-testing tools for code built on the models, with no test runner inside (use
 * it from ava, jest, vitest, node:test, ...). fast-check is the only thing it needs (a peer of this module).
 *
 *   import fc from 'fast-check';
 *   import { configs, inputSpecs, randomInputs, validateConfig } from 'paligemma-ts/testing';
 *
 *   fc.assert(fc.property(configs({ family: 'pg2', attention: 'gqa' }), inputSpecs(), (config, spec) => {
 *     const params = initParams(config, d.key(spec.seed));
 *     const inputs = randomInputs(config, spec.batch, spec.length, spec);
 *     ... backbone(params, inputs) ...
 *   }));
 *
 * - `configs(options)`: valid configs (validateConfig passes), tiny by default (every width <= 8): PaliGemma 1
 *   or 2 shapes, each ViT pooling, multi-head / grouped-query / multi-query attention.
 * - `inputSpecs(options)`, `inputsFor(config, options)` and `randomInputs(config, batch, length, options)`:
 *   backbone inputs whose rows are a prompt, a response and padding (the layout keras_hub's preprocessor
 *   makes), from a seed (and, with `inputsFor`, token ids drawn by fast-check).
 * - `validateConfig`, `configProblems`, `ConfigError`: the cross-field rules (models/config.ts).
 */
import fc from 'fast-check';
// Everything else comes through the package's own entry, so a separately built kit (dist/testing.js with
// '../index' external) makes its tensors with the package's one TensorFlow.js, not a second copy.
import { tf, d, CONFIG_DEFAULTS, SHIPPED_PRESETS, shippedPresetDir, type BackboneInputs, type PaliGemmaConfig, type VitPooling } from '../index';

export { ConfigError, configProblems, validateConfig, validateVitConfig, vitConfigProblems } from '../index';

// ---------------------------------------------------------------------------------------------------------
// Configs
// ---------------------------------------------------------------------------------------------------------

/**
 * - `pg1`: Gemma 1 decoder (no soft caps, no post norms, no sliding window), as the PaliGemma 1 presets;
 * - `pg2`: Gemma 2 decoder (attention and final soft caps, post-attention and post-FFN norms, a sliding window
 *   on even layers), with query scaling by head_dim or not (the 28B scales by hidden_dim / heads).
 */
export type Family = 'pg1' | 'pg2';
/** `mha`: as many key/value heads as query heads; `gqa`: fewer, more than one; `mqa`: one. */
export type Attention = 'mha' | 'gqa' | 'mqa';

export interface ConfigOptions {
  /** Default: both. */
  readonly family?: Family | readonly Family[];
  /** Default: all four (null, 'map', 'gap', 'zero'). */
  readonly pooling?: readonly VitPooling[];
  /** Default: all three. */
  readonly attention?: Attention | readonly Attention[];
  /** The largest width of anything (hidden, head, ffn, vocabulary above 3, ViT): default 8. Keep it small. */
  readonly maxDim?: number;
  /** Most decoder layers (default 2) and ViT layers (default 1; 0 is drawn too). */
  readonly maxLayers?: number;
  readonly maxVitLayers?: number;
  /** Most patches per side of the image (default 2). */
  readonly maxGrid?: number;
}

const list = <T>(x: T | readonly T[] | undefined, all: readonly T[]): readonly T[] => (x === undefined ? all : Array.isArray(x) ? x : [x as T]);

/** Even numbers from 2 to `max` (at least [2]). */
const evens = (max: number) => fc.integer({ min: 1, max: Math.max(1, Math.floor(max / 2)) }).map((n) => 2 * n);

/** Key/value and query head counts for an attention kind, with query heads <= max. */
function heads(kind: Attention, max: number): fc.Arbitrary<{ q: number; kv: number }> {
  const top = Math.max(2, max);
  if (kind === 'mqa') return fc.integer({ min: 1, max: top }).map((q) => ({ q, kv: 1 }));
  if (kind === 'mha') return fc.integer({ min: 1, max: top }).map((q) => ({ q, kv: q }));
  // gqa: kv in [2, q/2], q a multiple of kv
  return fc
    .integer({ min: 2, max: Math.max(2, Math.floor(top / 2)) })
    .chain((kv) => fc.integer({ min: 2, max: Math.max(2, Math.floor(top / kv)) }).map((groups) => ({ q: kv * groups, kv })));
}

/** Valid configs (every one passes `validateConfig`), tiny unless asked otherwise; shrinks toward smaller ones. */
export function configs(options: ConfigOptions = {}): fc.Arbitrary<PaliGemmaConfig> {
  const max = options.maxDim ?? 8;
  if (!(Number.isInteger(max) && max >= 4)) throw new Error(`configs: maxDim must be an integer >= 4, got ${max}`);
  const families = list(options.family, ['pg1', 'pg2'] as const);
  const poolings = list(options.pooling, [null, 'map', 'gap', 'zero'] as const);
  const attentions = list(options.attention, ['mha', 'gqa', 'mqa'] as const);
  return fc
    .record({
      family: fc.constantFrom(...families),
      attention: fc.constantFrom(...attentions),
      vocabulary_size: fc.integer({ min: 4, max: Math.max(4, max) }),
      patch: fc.integer({ min: 1, max: 4 }),
      grid: fc.integer({ min: 1, max: options.maxGrid ?? 2 }),
      num_layers: fc.integer({ min: 1, max: options.maxLayers ?? 2 }),
      hidden_dim: fc.integer({ min: 1, max }),
      ffw: fc.integer({ min: 1, max: Math.max(1, Math.floor(max / 2)) }),
      head_dim: evens(max),
      vit_num_heads: fc.integer({ min: 1, max: 2 }),
      vit_head_dim: fc.integer({ min: 1, max: Math.max(1, Math.floor(max / 2)) }),
      vit_num_layers: fc.integer({ min: 0, max: options.maxVitLayers ?? 1 }),
      vit_intermediate_dim: fc.integer({ min: 1, max }),
      vit_pooling: fc.constantFrom(...poolings),
      query_head_dim_normalize: fc.boolean(),
      window: fc.integer({ min: 1, max: 6 }),
      caps: fc.tuple(fc.constantFrom(5, 50), fc.constantFrom(3, 30)),
    })
    .chain((r) => heads(r.attention, Math.min(4, max)).map((h) => ({ ...r, ...h })))
    .map((r): PaliGemmaConfig => {
      const pg2 = r.family === 'pg2';
      return {
        ...CONFIG_DEFAULTS,
        vocabulary_size: r.vocabulary_size,
        image_size: r.patch * r.grid,
        num_layers: r.num_layers,
        num_query_heads: r.q,
        num_key_value_heads: r.kv,
        hidden_dim: r.hidden_dim,
        intermediate_dim: 2 * r.ffw, // twice the FFN width (keras_hub)
        head_dim: r.head_dim,
        vit_patch_size: r.patch,
        vit_num_heads: r.vit_num_heads,
        vit_hidden_dim: r.vit_num_heads * r.vit_head_dim,
        vit_num_layers: r.vit_num_layers,
        vit_intermediate_dim: r.vit_intermediate_dim,
        vit_pooling: r.vit_pooling,
        // PaliGemma 1 always scales queries by head_dim; PaliGemma 2's 28B does not
        query_head_dim_normalize: pg2 ? r.query_head_dim_normalize : true,
        use_post_attention_norm: pg2,
        use_post_ffw_norm: pg2,
        attention_logit_soft_cap: pg2 ? r.caps[0] : null,
        final_logit_soft_cap: pg2 ? r.caps[1] : null,
        use_sliding_window_attention: pg2,
        sliding_window_size: pg2 ? r.window : CONFIG_DEFAULTS.sliding_window_size,
      };
    });
}

// ---------------------------------------------------------------------------------------------------------
// Inputs
// ---------------------------------------------------------------------------------------------------------

/** One row of a batch: `prompt` tokens (<bos> included), then `response` tokens, then padding to the length. */
export interface MaskRow {
  readonly prompt: number;
  readonly response: number;
}

/** Rows of `batch` prompt/response splits of `length` tokens (any split, padding included, empty rows too). */
export function maskRows(batch: number, length: number): fc.Arbitrary<MaskRow[]> {
  const row = fc
    .tuple(fc.integer({ min: 0, max: length }), fc.integer({ min: 0, max: length }))
    .map(([p, r]) => ({ prompt: p, response: Math.min(r, length - p) }));
  return fc.array(row, { minLength: batch, maxLength: batch });
}

/** What `randomInputs` needs besides the config: a batch, a text length, the rows' masks and a seed. */
export interface InputSpec {
  readonly batch: number;
  readonly length: number;
  readonly rows: readonly MaskRow[];
  readonly seed: number;
}

/** Input specs (plain data, no tensors: arbitraries must not allocate); defaults batch 1..2, length 1..5. */
export function inputSpecs(options: { batch?: { min: number; max: number }; length?: { min: number; max: number } } = {}): fc.Arbitrary<InputSpec> {
  const b = options.batch ?? { min: 1, max: 2 };
  const l = options.length ?? { min: 1, max: 5 };
  return fc
    .record({ batch: fc.integer(b), length: fc.integer(l), seed: fc.integer({ min: 0, max: 2 ** 31 - 1 }) })
    .chain(({ batch, length, seed }) => maskRows(batch, length).map((rows) => ({ batch, length, rows, seed })));
}

/**
 * Inputs of a config as plain data: an input spec whose token ids are drawn by fast-check too (so a failing
 * case shrinks toward small ids), each in [0, vocabulary_size). Pass it to `randomInputs(config, s.batch,
 * s.length, s)`; images still come from the seed.
 */
export function inputsFor(config: PaliGemmaConfig, options: Parameters<typeof inputSpecs>[0] = {}): fc.Arbitrary<InputSpec & { readonly tokenIds: number[] }> {
  const V = config.vocabulary_size;
  return inputSpecs(options).chain((spec) =>
    fc.array(fc.integer({ min: 0, max: V - 1 }), { minLength: spec.batch * spec.length, maxLength: spec.batch * spec.length }).map((tokenIds) => ({ ...spec, tokenIds })),
  );
}

/** Deterministic uniform numbers in [0, 1) from a seed (mulberry32: reproducible, not cryptographic). */
export function uniforms(n: number, seed: number): Float64Array {
  const out = new Float64Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (s + 0x6d2b79f5) >>> 0;
    let x = Math.imul(s ^ (s >>> 15), 1 | s);
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x;
    out[i] = ((x ^ (x >>> 14)) >>> 0) / 2 ** 32;
  }
  return out;
}

export interface RandomInputOptions {
  /** Default 0. */
  readonly seed?: number;
  /** Each row's prompt/response split (default: every token a prompt token: all ones, no response). */
  readonly rows?: readonly MaskRow[];
  /** The token ids, batch x length row-major (default: uniform over the vocabulary). */
  readonly tokenIds?: ArrayLike<number>;
}

/**
 * Backbone inputs for a config: images uniform in [-1, 1) (the range the image converter gives),
 * [batch, image_size, image_size, 3]; token ids uniform in [0, vocabulary_size), [batch, length]; padding and
 * response masks from `rows`. The caller owns the tensors (`disposeInputs`).
 */
export function randomInputs(config: PaliGemmaConfig, batch: number, length: number, options: RandomInputOptions = {}): BackboneInputs {
  if (!(Number.isInteger(batch) && batch >= 1)) throw new Error(`randomInputs: batch must be an integer >= 1, got ${batch}`);
  if (!(Number.isInteger(length) && length >= 1)) throw new Error(`randomInputs: length must be an integer >= 1, got ${length}`);
  const rows = options.rows ?? Array.from({ length: batch }, () => ({ prompt: length, response: 0 }));
  if (rows.length !== batch) throw new Error(`randomInputs: ${rows.length} rows for a batch of ${batch}`);
  rows.forEach((r, b) => {
    if (!(r.prompt >= 0 && r.response >= 0 && r.prompt + r.response <= length)) {
      throw new Error(`randomInputs: row ${b} has prompt ${r.prompt} + response ${r.response} tokens, more than the length ${length}`);
    }
  });
  const seed = options.seed ?? 0;
  const V = config.vocabulary_size;
  const ids = options.tokenIds !== undefined ? Int32Array.from(options.tokenIds) : Int32Array.from(uniforms(batch * length, seed), (u) => Math.floor(u * V));
  if (ids.length !== batch * length) throw new Error(`randomInputs: ${ids.length} token ids for batch ${batch} x length ${length}`);
  const pad = new Int32Array(batch * length);
  const resp = new Int32Array(batch * length);
  rows.forEach(({ prompt, response }, b) => {
    for (let t = 0; t < length; t++) {
      pad[b * length + t] = t < prompt + response ? 1 : 0;
      resp[b * length + t] = t >= prompt && t < prompt + response ? 1 : 0;
    }
  });
  const S = config.image_size;
  const pixels = Float32Array.from(uniforms(batch * S * S * 3, seed + 1), (u) => 2 * u - 1);
  return {
    images: d.named(tf.tensor(pixels, [batch, S, S, 3]), ['batch', 'height', 'width', 'channels'] as const),
    token_ids: d.named(tf.tensor(ids, [batch, length], 'int32'), ['batch', 'seq'] as const),
    padding_mask: d.named(tf.tensor(pad, [batch, length], 'int32'), ['batch', 'seq'] as const),
    response_mask: d.named(tf.tensor(resp, [batch, length], 'int32'), ['batch', 'seq'] as const),
  };
}

/** Frees what `randomInputs` made. */
export const disposeInputs = (x: BackboneInputs): void => d.disposeTree(x);

// ---------------------------------------------------------------------------------------------------------
// The shipped preset, memory neutrality
// ---------------------------------------------------------------------------------------------------------

/** The directory of the package's default shipped preset (the first of SHIPPED_PRESETS). */
export const defaultPresetDir = (): string => shippedPresetDir(SHIPPED_PRESETS[0]);

/** What `memoryNeutral` measured. */
export interface MemoryReport<T> {
  readonly result: T;
  readonly tensorsBefore: number;
  readonly tensorsAfter: number;
}

/**
 * Runs `f` and throws when it leaves tensors behind or frees tensors it did not make
 * (`tf.memory().numTensors` before != after), naming `what` and both counts.
 */
export async function memoryNeutral<T>(f: () => T | Promise<T>, what = 'the function'): Promise<MemoryReport<T>> {
  const tensorsBefore = tf.memory().numTensors;
  const result = await f();
  const tensorsAfter = tf.memory().numTensors;
  if (tensorsAfter !== tensorsBefore) {
    throw new Error(`${what} is not memory-neutral: ${tensorsBefore} tensors before, ${tensorsAfter} after`);
  }
  return { result, tensorsBefore, tensorsAfter };
}
