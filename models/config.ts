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
