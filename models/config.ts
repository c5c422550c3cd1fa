/**
 * PaliGemmaBackbone's constructor arguments, with keras_hub's names and documented meanings
 * (keras_hub/src/models/pali_gemma/pali_gemma_backbone.py). Snake case on purpose: a config.json written by
 * keras_hub decodes into this record unchanged, and every field can be grepped against keras_hub.
 */
export type VitPooling = null | 'map' | 'gap' | 'zero';

export interface PaliGemmaConfig {
  readonly vocabulary_size: number;
  readonly image_size: number;
  readonly num_layers: number;
  readonly num_query_heads: number;
  readonly num_key_value_heads: number;
  readonly hidden_dim: number;
  /** Twice the width of each FFN gate: the FFN is `intermediate_dim / 2` wide (a keras_hub convention). */
  readonly intermediate_dim: number;
  readonly head_dim: number;
  readonly vit_patch_size: number;
  readonly vit_num_heads: number;
  readonly vit_hidden_dim: number;
  readonly vit_num_layers: number;
  /** keras_hub's default when missing or null: 4304. */
  readonly vit_intermediate_dim: number;
  /** `"0"` in a config is read as its alias `"zero"`. */
  readonly vit_pooling: VitPooling;
  /** null = linear; `"gelu"` = exact erf GELU (keras' default gelu, approximate=False). */
  readonly vit_classifier_activation: null | 'gelu' | 'gelu_approximate' | 'tanh' | 'relu';
  readonly vit_name: string | null;
  readonly query_head_dim_normalize: boolean;
  readonly use_post_ffw_norm: boolean;
  readonly use_post_attention_norm: boolean;
  readonly attention_logit_soft_cap: number | null;
  readonly final_logit_soft_cap: number | null;
  readonly use_sliding_window_attention: boolean;
  readonly sliding_window_size: number;
  readonly layer_norm_epsilon: number;
  readonly dropout: number;
  /** The dtype policy name: 'float32', 'bfloat16', 'float16', 'mixed_bfloat16', ... Weights are computed in float32. */
  readonly dtype: string;
}

/** Defaults of keras_hub's PaliGemmaBackbone constructor for the optional arguments. */
export const CONFIG_DEFAULTS = {
  vit_intermediate_dim: 4304,
  vit_pooling: null,
  vit_classifier_activation: null,
  vit_name: null,
  query_head_dim_normalize: true,
  use_post_ffw_norm: false,
  use_post_attention_norm: false,
  attention_logit_soft_cap: null,
  final_logit_soft_cap: null,
  use_sliding_window_attention: false,
  sliding_window_size: 4096,
  layer_norm_epsilon: 1e-6,
  dropout: 0,
  dtype: 'float32',
} as const satisfies Partial<PaliGemmaConfig>;

/** Number of image tokens the decoder sees: (S/p)^2, or 1 when the ViT pools. */
export const imageSequenceLength = (c: PaliGemmaConfig): number =>
  c.vit_pooling === null ? (c.image_size / c.vit_patch_size) ** 2 : 1;

// ---------------------------------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------------------------------

/** A config whose fields do not fit together; `problems` lists each one, naming the fields and their values. */
export class ConfigError extends Error {
  override readonly name = 'ConfigError';
  constructor(
    readonly problems: readonly string[],
    where = 'config',
  ) {
    super(`invalid PaliGemma ${where}: ${problems.join('; ')}`);
  }
}

type Fields = Partial<Record<keyof PaliGemmaConfig, unknown>>;

const isCount = (v: unknown, least: number): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= least;
const show = (v: unknown): string => (typeof v === 'string' ? JSON.stringify(v) : String(v));

function counts(c: Fields, fields: ReadonlyArray<readonly [keyof PaliGemmaConfig, number]>, problems: string[]): void {
  for (const [f, least] of fields) {
    if (!isCount(c[f], least)) problems.push(`${f} must be an integer >= ${least}, got ${show(c[f])}`);
  }
}

/** What is wrong with the image encoder's fields (empty when nothing is): what `vit` needs. */
export function vitConfigProblems(c: Fields): string[] {
  const problems: string[] = [];
  counts(c, [['image_size', 1], ['vit_patch_size', 1], ['vit_num_heads', 1], ['vit_hidden_dim', 1], ['vit_num_layers', 0], ['vit_intermediate_dim', 1]], problems);
  const { image_size: S, vit_patch_size: p, vit_hidden_dim: Dv, vit_num_heads: Hv } = c;
  // the ViT cuts the image into p x p patches: (S/p)^2 of them, one position embedding each
  if (isCount(S, 1) && isCount(p, 1) && S % p !== 0) problems.push(`image_size ${S} is not a multiple of vit_patch_size ${p}: the image is cut into vit_patch_size squares`);
  if (isCount(Dv, 1) && isCount(Hv, 1) && Dv % Hv !== 0) problems.push(`vit_hidden_dim ${Dv} is not a multiple of vit_num_heads ${Hv}: each head gets vit_hidden_dim / vit_num_heads features`);
  if (![null, 'map', 'gap', 'zero'].includes(c.vit_pooling as VitPooling)) problems.push(`vit_pooling must be null, "map", "gap" or "zero", got ${show(c.vit_pooling)}`);
  if (![null, 'gelu', 'gelu_approximate', 'tanh', 'relu'].includes(c.vit_classifier_activation as null)) {
    problems.push(`vit_classifier_activation must be null, "gelu", "gelu_approximate", "tanh" or "relu", got ${show(c.vit_classifier_activation)}`);
  }
  return problems;
}

/** Gemma's special ids: pad 0, eos 1, bos 2 (src/preprocess/packing.ts); the vocabulary must hold them. */
const LARGEST_SPECIAL_ID = 2;

/** What is wrong with a config (empty when nothing is): every field's type and range, and the cross-field rules. */
export function configProblems(c: Fields): string[] {
  const problems = vitConfigProblems(c);
  counts(c, [['vocabulary_size', 1], ['num_layers', 1], ['num_query_heads', 1], ['num_key_value_heads', 1], ['hidden_dim', 1], ['intermediate_dim', 2], ['head_dim', 2]], problems);
  const { vocabulary_size: V, num_query_heads: H, num_key_value_heads: K, intermediate_dim: F, head_dim: Dh } = c;
  if (isCount(V, 1) && V <= LARGEST_SPECIAL_ID) problems.push(`vocabulary_size ${V} cannot hold Gemma's special ids (pad 0, eos 1, bos 2): it must be > ${LARGEST_SPECIAL_ID}`);
  if (isCount(H, 1) && isCount(K, 1) && H % K !== 0) problems.push(`num_query_heads ${H} is not a multiple of num_key_value_heads ${K}: each key/value head serves num_query_heads / num_key_value_heads query heads`);
  // keras_hub's intermediate_dim is twice each FFN gate's width
  if (isCount(F, 2) && F % 2 !== 0) problems.push(`intermediate_dim ${F} is odd: it is twice the FFN width (keras_hub's convention), so it must be even`);
  // RoPE rotates head_dim in two halves
  if (isCount(Dh, 2) && Dh % 2 !== 0) problems.push(`head_dim ${Dh} is odd: RoPE rotates the two halves of each head, so it must be even`);
  if (c.use_sliding_window_attention === true && !isCount(c.sliding_window_size, 1)) {
    problems.push(`sliding_window_size must be an integer >= 1 when use_sliding_window_attention is true, got ${show(c.sliding_window_size)}`);
  }
  for (const f of ['attention_logit_soft_cap', 'final_logit_soft_cap'] as const) {
    const v = c[f];
    if (v !== null && !(typeof v === 'number' && Number.isFinite(v) && v > 0)) problems.push(`${f} must be null or a number > 0, got ${show(v)}`);
  }
  const eps = c.layer_norm_epsilon;
  if (!(typeof eps === 'number' && Number.isFinite(eps) && eps > 0)) problems.push(`layer_norm_epsilon must be a number > 0, got ${show(eps)}`);
  const p = c.dropout;
  if (!(typeof p === 'number' && p >= 0 && p < 1)) problems.push(`dropout must be a number in [0, 1), got ${show(p)}`);
  for (const f of ['query_head_dim_normalize', 'use_post_ffw_norm', 'use_post_attention_norm', 'use_sliding_window_attention'] as const) {
    if (typeof c[f] !== 'boolean') problems.push(`${f} must be true or false, got ${show(c[f])}`);
  }
  return problems;
}

/**
 * Throws a ConfigError listing every problem of the config, or returns it unchanged. The model entry points
 * call it, so a bad config fails here, naming the fields, rather than deep inside tfjs
 * (`Tensor must have a shape comprised of positive integers but got shape [14.0625,16]`).
 */
export function validateConfig<C extends PaliGemmaConfig>(c: C, where = 'config'): C {
  const problems = configProblems(c);
  if (problems.length > 0) throw new ConfigError(problems, where);
  return c;
}


/** `validateConfig` for the image encoder's fields only (a standalone ViT has no decoder). */
export function validateVitConfig<C extends Fields>(c: C, where = 'ViT config'): C {
  const problems = vitConfigProblems(c);
  if (problems.length > 0) throw new ConfigError(problems, where);
  return c;
}
