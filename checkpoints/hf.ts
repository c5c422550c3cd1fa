/**
 * Hugging Face PaliGemma checkpoints (transformers `PaliGemmaForConditionalGeneration`: `config.json` plus
 * safetensors) <-> keras_hub's config and variables. Mapping and transforms: ../shared/docs/FORMATS.md
 * ("Hugging Face safetensors keys → keras_hub variables").
 *
 * - `decodeHfConfig`: HF `config.json` -> PaliGemmaConfig. PaliGemma 1 vs 2 by `text_config.model_type`
 *   (gemma / gemma2); `head_dim` from text_config (never from num_image_tokens, keras_hub's converter bug);
 *   the vocabulary is `min(image_token_index, vocab_size)` = 257152 for both generations (PG1 pads its
 *   embedding to 257216 rows); missing fields take transformers' defaults for that model type.
 * - `hfWeights`: the safetensors tensors -> a weight map by keras h5 path whose `read()` applies the transform
 *   (transposes, head reshapes, embedding rows sliced to the vocabulary) only when called. Every key, missing
 *   or unexpected, and every shape is checked first in HF terms; then `decodeParams` checks again in keras'.
 * - `encodeHfConfig`, `kerasToHf`, `writeHfCheckpoint`: the way back, for tests and for exporting.
 *
 * Key names: the legacy on-disk ones (`language_model.model.*`, `vision_tower.*`, `multi_modal_projector.*`)
 * and the ones transformers >= 4.52 writes (`model.language_model.*`, `model.vision_tower.*`,
 * `model.multi_modal_projector.*`, `lm_head.*`). The LM head is tied to the embedding: it is ignored.
 */
import * as path from 'node:path';
import { imageSequenceLength, type PaliGemmaConfig } from '../models/config';
import type { PaliGemmaParams } from '../models/paligemma';
import { encodeParams, kerasLayout, type WeightMap, type WeightSpec } from './params';
import { readSafetensors, type SafetensorsTensor, type SafetensorsTensors, type TensorToWrite } from './safetensors';
import { writeHfFiles } from './dirwrite';
import { CONFIG_MAXIMA } from './config';
import { FormatError, guarded } from './errors';
import { MAX_CONFIG_BYTES, readJsonFile } from './files';

const fmt = (s: readonly number[]) => `[${s.join(', ')}]`;
const isRecord = (u: unknown): u is Record<string, unknown> => typeof u === 'object' && u !== null && !Array.isArray(u);
/** A JSON value for a message, cut at 200 characters (a crafted file can hold megabytes in one field). */
const show = (u: unknown): string => {
  const s = u === undefined ? 'nothing' : (JSON.stringify(u) ?? String(u));
  return s.length > 200 ? `${s.slice(0, 200)}...` : s;
};

// ---------------------------------------------------------------------------------------------------------------
// config.json
// ---------------------------------------------------------------------------------------------------------------

/** transformers' defaults for the fields we read (GemmaConfig, Gemma2Config, SiglipVisionConfig). */
const GEMMA_DEFAULTS = { hidden_size: 3072, intermediate_size: 24576, num_hidden_layers: 28, num_attention_heads: 16, num_key_value_heads: 16, head_dim: 256, rms_norm_eps: 1e-6 };
const GEMMA2_DEFAULTS = {
  hidden_size: 2304, intermediate_size: 9216, num_hidden_layers: 26, num_attention_heads: 8, num_key_value_heads: 4, head_dim: 256, rms_norm_eps: 1e-6,
  query_pre_attn_scalar: 256, sliding_window: 4096, final_logit_softcapping: 30.0, attn_logit_softcapping: 50.0,
};
const SIGLIP_DEFAULTS = { hidden_size: 768, intermediate_size: 3072, num_hidden_layers: 12, num_attention_heads: 12, num_channels: 3, image_size: 224, patch_size: 16, layer_norm_eps: 1e-6 };
/** GELU names transformers maps to the tanh approximation keras_hub's Gemma uses (Gemma 1's "gelu" included). */
const TANH_GELU = ['gelu_pytorch_tanh', 'gelu_fast', 'gelu_new', 'gelu'];
/** RoPE base of keras_hub's Gemma (and of every PaliGemma). */
const ROPE_THETA = 10000;

/** Reads typed fields of a JSON object, collecting every problem as `source: path: message`. */
class Fields {
  readonly problems: string[] = [];
  constructor(readonly source: string) {}

  problem(where: string, message: string): void {
    this.problems.push(`${this.source}: ${where}: ${message}`);
  }

  object(o: Record<string, unknown>, key: string, where = key): Record<string, unknown> {
    const v = o[key];
    if (isRecord(v)) return v;
    this.problem(where, `expected an object, got ${show(v)}`);
    return {};
  }

  /** A positive integer at most `max` (see CONFIG_MAXIMA: absurd counts are refused before anything is built). */
  int(o: Record<string, unknown>, key: string, prefix: string, fallback?: number, max: number = CONFIG_MAXIMA.dim): number {
    const v = o[key] ?? fallback;
    if (Number.isSafeInteger(v) && (v as number) > 0 && (v as number) <= max) return v as number;
    const bound = Number.isSafeInteger(v) && (v as number) > max ? ` at most ${max}` : '';
    this.problem(`${prefix}${key}`, `expected a positive integer${bound}, got ${show(o[key])}`);
    return NaN;
  }

  positive(o: Record<string, unknown>, key: string, prefix: string, fallback: number): number {
    const v = o[key] ?? fallback;
    if (typeof v === 'number' && Number.isFinite(v) && v > 0) return v;
    this.problem(`${prefix}${key}`, `expected a positive number, got ${show(o[key])}`);
    return NaN;
  }

  /** A positive number or null (missing = fallback). */
  cap(o: Record<string, unknown>, key: string, prefix: string, fallback: number | null): number | null {
    const v = key in o ? o[key] : fallback;
    if (v === null || (typeof v === 'number' && Number.isFinite(v) && v > 0)) return v as number | null;
    this.problem(`${prefix}${key}`, `expected a positive number or null, got ${show(o[key])}`);
    return null;
  }
}

/** True when `json` is a transformers PaliGemma config (`model_type: "paligemma"`). */
export const isHfPaliGemmaConfig = (json: unknown): boolean => isRecord(json) && json['model_type'] === 'paligemma';

/**
 * HF PaliGemma `config.json` -> PaliGemmaConfig. Throws one error listing every problem; settings keras_hub's
 * PaliGemmaBackbone cannot express (a pooling head, another RoPE base, ...) are problems too, never dropped.
 * keras' `dropout` has no HF counterpart: it is 0.
 */
export function decodeHfConfig(json: unknown, source = 'config.json'): PaliGemmaConfig {
  if (!isRecord(json)) throw new FormatError(source, 'config', `${source}: expected a JSON object, got ${show(json)}`);
  const f = new Fields(source);
  if (json['model_type'] !== 'paligemma') f.problem('model_type', `expected "paligemma", got ${show(json['model_type'])}`);
  const text = f.object(json, 'text_config');
  const vision = f.object(json, 'vision_config');
  const t = 'text_config.';
  const v = 'vision_config.';

  // --- text: Gemma (PaliGemma 1) or Gemma 2 (PaliGemma 2)
  const textType = text['model_type'] ?? 'gemma';
  if (textType !== 'gemma' && textType !== 'gemma2') f.problem(`${t}model_type`, `expected "gemma" (PaliGemma 1) or "gemma2" (PaliGemma 2), got ${show(textType)}`);
  const gemma2 = textType === 'gemma2';
  const defaults = gemma2 ? GEMMA2_DEFAULTS : GEMMA_DEFAULTS;
  const hidden = f.int(text, 'hidden_size', t, defaults.hidden_size);
  const heads = f.int(text, 'num_attention_heads', t, defaults.num_attention_heads);
  const headDim = f.int(text, 'head_dim', t, defaults.head_dim);
  // Required (text_config's, or the top-level one of older files): a default would mis-slice the embedding.
  const vocabSize = f.int(text, 'vocab_size', t, json['vocab_size'] as number | undefined, CONFIG_MAXIMA.vocabulary);
  const imageToken = json['image_token_index'] ?? json['image_token_id'];
  if (imageToken !== undefined && !(Number.isSafeInteger(imageToken) && (imageToken as number) > 0)) {
    f.problem('image_token_index', `expected a positive integer, got ${show(imageToken)}`);
  }
  // PG1: vocab_size 257216 = 257152 ids + <image> (at 257152) + padding rows; PG2: both 257152.
  const vocabulary = typeof imageToken === 'number' ? Math.min(imageToken, vocabSize) : vocabSize;
  const activation = text['hidden_activation'] ?? text['hidden_act'];
  if (activation != null && !TANH_GELU.includes(activation as string)) {
    f.problem(`${t}hidden_activation`, `expected a tanh-approximated GELU (${TANH_GELU.join(', ')}), got ${show(activation)}`);
  }
  const rope = text['rope_theta'] ?? (isRecord(text['rope_parameters']) ? text['rope_parameters']['rope_theta'] : undefined);
  if (rope !== undefined && rope !== ROPE_THETA) f.problem(`${t}rope_theta`, `expected ${ROPE_THETA} (keras_hub's Gemma), got ${show(rope)}`);

  let queryNormalize = true;
  let attentionCap: number | null = null;
  let finalCap: number | null = null;
  let window: number | null = null;
  if (gemma2) {
    // Gemma 2 scales queries by query_pre_attn_scalar^-1/2: head_dim (2B, 9B) or hidden / heads (27B).
    const scalar = f.positive(text, 'query_pre_attn_scalar', t, GEMMA2_DEFAULTS.query_pre_attn_scalar);
    if (scalar === headDim) queryNormalize = true;
    else if (scalar === hidden / heads) queryNormalize = false;
    else if (!Number.isNaN(scalar)) {
      f.problem(`${t}query_pre_attn_scalar`, `expected head_dim (${headDim}) or hidden_size / num_attention_heads (${hidden / heads}), got ${scalar}`);
    }
    attentionCap = f.cap(text, 'attn_logit_softcapping', t, GEMMA2_DEFAULTS.attn_logit_softcapping);
    finalCap = f.cap(text, 'final_logit_softcapping', t, GEMMA2_DEFAULTS.final_logit_softcapping);
    window = f.cap(text, 'sliding_window', t, GEMMA2_DEFAULTS.sliding_window);
    const types = text['layer_types'];
    if (types !== undefined && types !== null) {
      const layers = f.int(text, 'num_hidden_layers', t, defaults.num_hidden_layers, CONFIG_MAXIMA.layers);
      const expected = Array.from({ length: layers }, (_, i) => (i % 2 === 0 && window !== null ? 'sliding_attention' : 'full_attention'));
      if (Number.isNaN(layers)) {
        // reported above
      } else if (!Array.isArray(types) || types.length !== layers || types.some((x, i) => x !== expected[i])) {
        f.problem(`${t}layer_types`, `expected sliding attention on even layers only (keras_hub's Gemma 2), got ${show(types)}`);
      }
    }
  }

  // --- vision: SigLIP without its pooling head
  const visionType = vision['model_type'] ?? 'siglip_vision_model';
  if (visionType !== 'siglip_vision_model') f.problem(`${v}model_type`, `expected "siglip_vision_model", got ${show(visionType)}`);
  const imageSize = f.int(vision, 'image_size', v, SIGLIP_DEFAULTS.image_size);
  const patch = f.int(vision, 'patch_size', v, SIGLIP_DEFAULTS.patch_size);
  if (f.int(vision, 'num_channels', v, SIGLIP_DEFAULTS.num_channels) !== 3) f.problem(`${v}num_channels`, `expected 3, got ${show(vision['num_channels'])}`);
  const visionEps = vision['layer_norm_eps'] ?? SIGLIP_DEFAULTS.layer_norm_eps;
  if (visionEps !== 1e-6) f.problem(`${v}layer_norm_eps`, `expected 1e-6 (SigLIP's, fixed in keras_hub), got ${show(visionEps)}`);
  const tokens = text['num_image_tokens'] ?? vision['num_image_tokens'];
  if (tokens !== undefined && tokens !== (imageSize / patch) ** 2) {
    f.problem('num_image_tokens', `expected (image_size / patch_size)^2 = ${(imageSize / patch) ** 2}, got ${show(tokens)}`);
  }
  const projection = json['projection_dim'] ?? vision['projection_dim'];
  if (projection !== undefined && projection !== hidden) f.problem('projection_dim', `expected text_config.hidden_size (${hidden}): keras_hub projects image tokens to the decoder's width, got ${show(projection)}`);

  const config: PaliGemmaConfig = {
    vocabulary_size: vocabulary,
    image_size: imageSize,
    num_layers: f.int(text, 'num_hidden_layers', t, defaults.num_hidden_layers, CONFIG_MAXIMA.layers),
    num_query_heads: heads,
    num_key_value_heads: f.int(text, 'num_key_value_heads', t, defaults.num_key_value_heads),
    hidden_dim: hidden,
    // keras_hub's intermediate_dim is twice each gate's width.
    intermediate_dim: 2 * f.int(text, 'intermediate_size', t, defaults.intermediate_size),
    head_dim: headDim,
    vit_patch_size: patch,
    vit_num_heads: f.int(vision, 'num_attention_heads', v, SIGLIP_DEFAULTS.num_attention_heads),
    vit_hidden_dim: f.int(vision, 'hidden_size', v, SIGLIP_DEFAULTS.hidden_size),
    vit_num_layers: f.int(vision, 'num_hidden_layers', v, SIGLIP_DEFAULTS.num_hidden_layers, CONFIG_MAXIMA.layers),
    vit_intermediate_dim: f.int(vision, 'intermediate_size', v, SIGLIP_DEFAULTS.intermediate_size),
    vit_pooling: null,
    vit_classifier_activation: null,
    vit_name: null,
    query_head_dim_normalize: queryNormalize,
    use_post_ffw_norm: gemma2,
    use_post_attention_norm: gemma2,
    attention_logit_soft_cap: attentionCap,
    final_logit_soft_cap: finalCap,
    use_sliding_window_attention: window !== null,
    sliding_window_size: window ?? 4096,
    layer_norm_epsilon: f.positive(text, 'rms_norm_eps', t, defaults.rms_norm_eps),
    dropout: 0,
    dtype: hfDtype(text['torch_dtype'] ?? json['torch_dtype'] ?? json['dtype']),
  };
  if (f.problems.length > 0) {
    const first = f.problems[0].slice(source.length + 2);
    throw new FormatError(source, first.slice(0, first.indexOf(':')), [...new Set(f.problems)].join('\n'));
  }
  return config;
}

const hfDtype = (u: unknown): string => ({ float32: 'float32', bfloat16: 'bfloat16', float16: 'float16' })[u as string] ?? 'float32';

/** The embedding rows an HF checkpoint has: PG1 pads vocabulary + <image> to a multiple of 64, PG2 does not. */
export const hfVocabSize = (c: PaliGemmaConfig): number =>
  isGemma2(c) ? c.vocabulary_size : Math.ceil((c.vocabulary_size + 2) / 64) * 64;

const isGemma2 = (c: PaliGemmaConfig) => c.use_post_attention_norm || c.use_post_ffw_norm;

/**
 * The HF `config.json` for a config (transformers' field names; tokens 0 pad, 1 eos, 2 bos as in Gemma).
 * Throws when the config has something transformers' PaliGemma cannot express.
 */
export function encodeHfConfig(c: PaliGemmaConfig): Record<string, unknown> {
  const gemma2 = isGemma2(c);
  const problems: string[] = [];
  if (c.vit_pooling !== null) problems.push(`vit_pooling ${show(c.vit_pooling)}: PaliGemma's SigLIP has no pooling`);
  if (c.vit_classifier_activation !== null) problems.push(`vit_classifier_activation ${show(c.vit_classifier_activation)}: the projector is linear`);
  if (gemma2 && !(c.use_post_attention_norm && c.use_post_ffw_norm)) problems.push('Gemma 2 has both post norms (use_post_attention_norm and use_post_ffw_norm)');
  if (!gemma2) {
    if (c.attention_logit_soft_cap !== null || c.final_logit_soft_cap !== null) problems.push('Gemma (PaliGemma 1) has no logit soft caps');
    if (c.use_sliding_window_attention) problems.push('Gemma (PaliGemma 1) has no sliding window');
    if (!c.query_head_dim_normalize) problems.push('Gemma (PaliGemma 1) scales queries by head_dim^-1/2 (query_head_dim_normalize: true)');
  }
  if (problems.length > 0) throw new Error(`encodeHfConfig: this config has no transformers PaliGemma equivalent:\n  ${problems.join('\n  ')}`);
  const tokens = imageSequenceLength(c);
  const text: Record<string, unknown> = {
    model_type: gemma2 ? 'gemma2' : 'gemma',
    vocab_size: hfVocabSize(c),
    hidden_size: c.hidden_dim,
    intermediate_size: c.intermediate_dim / 2,
    num_hidden_layers: c.num_layers,
    num_attention_heads: c.num_query_heads,
    num_key_value_heads: c.num_key_value_heads,
    head_dim: c.head_dim,
    rms_norm_eps: c.layer_norm_epsilon,
    hidden_activation: 'gelu_pytorch_tanh',
    num_image_tokens: tokens,
    torch_dtype: c.dtype === 'bfloat16' || c.dtype === 'float16' ? c.dtype : 'float32',
  };
  if (gemma2) {
    Object.assign(text, {
      query_pre_attn_scalar: c.query_head_dim_normalize ? c.head_dim : c.hidden_dim / c.num_query_heads,
      attn_logit_softcapping: c.attention_logit_soft_cap,
      final_logit_softcapping: c.final_logit_soft_cap,
      sliding_window: c.use_sliding_window_attention ? c.sliding_window_size : null,
    });
  }
  return {
    architectures: ['PaliGemmaForConditionalGeneration'],
    model_type: 'paligemma',
    image_token_index: c.vocabulary_size,
    projection_dim: c.hidden_dim,
    hidden_size: c.hidden_dim,
    pad_token_id: 0,
    eos_token_id: 1,
    bos_token_id: 2,
    torch_dtype: text['torch_dtype'],
    text_config: text,
    vision_config: {
      model_type: 'siglip_vision_model',
      hidden_size: c.vit_hidden_dim,
      intermediate_size: c.vit_intermediate_dim,
      num_hidden_layers: c.vit_num_layers,
      num_attention_heads: c.vit_num_heads,
      patch_size: c.vit_patch_size,
      image_size: c.image_size,
      num_image_tokens: tokens,
      projection_dim: c.hidden_dim,
      layer_norm_eps: 1e-6,
      hidden_act: 'gelu_pytorch_tanh',
      vision_use_head: false,
    },
  };
}

// ---------------------------------------------------------------------------------------------------------------
// The key table and the transforms
// ---------------------------------------------------------------------------------------------------------------

/** How an HF tensor becomes a keras variable (and back). */
export type Transform =
  | { readonly kind: 'copy' }
  /** 2-D kernels: HF Linear stores [out, in], keras [in, out]. */
  | { readonly kind: 'transpose' }
  /** The patch conv: HF [out, channels, h, w] <-> keras [h, w, channels, out]. */
  | { readonly kind: 'conv' }
  /** q/k/v: HF [heads * head_dim, embed] <-> keras [heads, embed, head_dim]. */
  | { readonly kind: 'heads_in'; readonly headDim: number }
  /** o: HF [embed, heads * head_dim] <-> keras [heads, head_dim, embed]. */
  | { readonly kind: 'heads_out'; readonly headDim: number }
  /** The embedding: HF has at least `rows` rows (PG1: padding and <image>); keras keeps the first `rows`. */
  | { readonly kind: 'rows'; readonly rows: number };

export interface HfSpec {
  /** The legacy HF key, e.g. `language_model.model.layers.0.self_attn.q_proj.weight`. */
  readonly hf: string;
  readonly transform: Transform;
  readonly keras: WeightSpec;
}

const LM = 'language_model.model.';
const VT = 'vision_tower.vision_model.';

/** The HF key and transform of every variable of a config (throws for variables HF has no key for). */
export function hfLayout(c: PaliGemmaConfig): HfSpec[] {
  const gemma2 = isGemma2(c);
  const copy: Transform = { kind: 'copy' };
  const transpose: Transform = { kind: 'transpose' };
  const side = (leaf: string, kernel: string): [string, Transform] => (leaf === 'kernel' ? [`${kernel}.weight`, transpose] : [`${kernel}.bias`, copy]);
  const norm = (leaf: string) => (leaf === 'gamma' ? 'weight' : 'bias');
  // PG1's Gemma has two norms per block; its "post_attention_layernorm" is the one before the FFN.
  const decoderNorms: Record<string, string> = gemma2
    ? { pre_attention_norm: 'input_layernorm', post_attention_norm: 'post_attention_layernorm', pre_ffw_norm: 'pre_feedforward_layernorm', post_ffw_norm: 'post_feedforward_layernorm' }
    : { pre_attention_norm: 'input_layernorm', pre_ffw_norm: 'post_attention_layernorm' };
  const map = (s: WeightSpec): [string, Transform] | undefined => {
    const k = s.keras;
    let m: RegExpExecArray | null;
    if (k === 'token_embedding/embeddings') return [`${LM}embed_tokens.weight`, { kind: 'rows', rows: c.vocabulary_size }];
    if (k === 'final_normalization/scale') return [`${LM}norm.weight`, copy];
    if ((m = /^image_classifier\/(kernel|bias)$/.exec(k))) return side(m[1], 'multi_modal_projector.linear');
    if (k === 'image_encoder/encoder_embeddings/embedding_conv/kernel') return [`${VT}embeddings.patch_embedding.weight`, { kind: 'conv' }];
    if (k === 'image_encoder/encoder_embeddings/embedding_conv/bias') return [`${VT}embeddings.patch_embedding.bias`, copy];
    if (k === 'image_encoder/encoder_embeddings/position_embedding/embeddings') return [`${VT}embeddings.position_embedding.weight`, copy];
    if ((m = /^image_encoder\/encoder_layer_norm\/(gamma|beta)$/.exec(k))) return [`${VT}post_layernorm.${norm(m[1])}`, copy];
    if ((m = /^image_encoder\/encoder_block_(\d+)\/layer_norm_([12])\/(gamma|beta)$/.exec(k))) return [`${VT}encoder.layers.${m[1]}.layer_norm${m[2]}.${norm(m[3])}`, copy];
    if ((m = /^image_encoder\/encoder_block_(\d+)\/multi_head_attention\/(query|key|value|out)_proj\/(kernel|bias)$/.exec(k))) {
      const proj = { query: 'q_proj', key: 'k_proj', value: 'v_proj', out: 'out_proj' }[m[2]];
      return side(m[3], `${VT}encoder.layers.${m[1]}.self_attn.${proj}`);
    }
    if ((m = /^image_encoder\/encoder_block_(\d+)\/mlp_dense_([12])\/(kernel|bias)$/.exec(k))) return side(m[3], `${VT}encoder.layers.${m[1]}.mlp.fc${m[2]}`);
    if ((m = /^decoder_block_(\d+)\/(\w+_norm)\/scale$/.exec(k)) && decoderNorms[m[2]] !== undefined) return [`${LM}layers.${m[1]}.${decoderNorms[m[2]]}.weight`, copy];
    if ((m = /^decoder_block_(\d+)\/attention\/(query|key|value)\/kernel$/.exec(k))) {
      return [`${LM}layers.${m[1]}.self_attn.${m[2][0]}_proj.weight`, { kind: 'heads_in', headDim: c.head_dim }];
    }
    if ((m = /^decoder_block_(\d+)\/attention\/attention_output\/kernel$/.exec(k))) return [`${LM}layers.${m[1]}.self_attn.o_proj.weight`, { kind: 'heads_out', headDim: c.head_dim }];
    if ((m = /^decoder_block_(\d+)\/(ffw_gating|ffw_gating_2|ffw_linear)\/kernel$/.exec(k))) {
      const proj = { ffw_gating: 'gate_proj', ffw_gating_2: 'up_proj', ffw_linear: 'down_proj' }[m[2]];
      return [`${LM}layers.${m[1]}.mlp.${proj}.weight`, transpose];
    }
    return undefined;
  };
  const specs = kerasLayout(c);
  const unmapped = specs.filter((s) => map(s) === undefined).map((s) => s.keras);
  if (unmapped.length > 0) throw new Error(`hfLayout: transformers' PaliGemma has no weights for ${unmapped.join(', ')}`);
  return specs.map((s) => {
    const [hf, transform] = map(s)!;
    return { hf, transform, keras: s };
  });
}

/** The HF shape that gives this keras shape (for 'rows': the fewest rows accepted). */
export function hfShape(t: Transform, k: readonly number[]): number[] {
  switch (t.kind) {
    case 'copy':
    case 'rows':
      return [...k];
    case 'transpose':
      return [k[1], k[0]];
    case 'conv':
      return [k[3], k[2], k[0], k[1]];
    case 'heads_in':
      return [k[0] * k[2], k[1]];
    case 'heads_out':
      return [k[2], k[0] * k[1]];
  }
}

/** `values` of HF shape `shape` in keras' layout. */
export function toKeras(t: Transform, shape: readonly number[], values: Float32Array): Float32Array {
  switch (t.kind) {
    case 'copy':
      return values;
    case 'rows':
      return values.length === t.rows * shape[1] ? values : values.slice(0, t.rows * shape[1]);
    case 'transpose':
      return transpose2d(values, shape[0], shape[1]);
    case 'conv':
      return permute(values, shape, [2, 3, 1, 0]);
    case 'heads_in': {
      // [N*H, D] = [N, H, D] -> [N, D, H]: one [H, D] transpose per head
      const [rows, d] = shape;
      const out = new Float32Array(values.length);
      for (let n = 0; n < rows / t.headDim; n++) transpose2d(values, t.headDim, d, out, n * t.headDim * d);
      return out;
    }
    case 'heads_out':
      // [D, N*H] -> [N*H, D] = [N, H, D]
      return transpose2d(values, shape[0], shape[1]);
  }
}

/** `values` of keras shape `shape` in HF's layout (for 'rows': padded with zero rows to `hfRows`). */
export function toHf(t: Transform, shape: readonly number[], values: Float32Array, hfRows?: number): Float32Array {
  switch (t.kind) {
    case 'copy':
      return values;
    case 'rows': {
      const out = new Float32Array((hfRows ?? shape[0]) * shape[1]);
      out.set(values);
      return out;
    }
    case 'transpose':
      return transpose2d(values, shape[0], shape[1]);
    case 'conv':
      return permute(values, shape, [3, 2, 0, 1]);
    case 'heads_in': {
      // [N, D, H] -> [N, H, D]
      const [n, d, h] = shape;
      const out = new Float32Array(values.length);
      for (let i = 0; i < n; i++) transpose2d(values, d, h, out, i * d * h);
      return out;
    }
    case 'heads_out':
      // [N, H, D] = [N*H, D] -> [D, N*H]
      return transpose2d(values, shape[0] * shape[1], shape[2]);
  }
}

/** [rows, cols] -> [cols, rows], in 64 x 64 tiles; `offset` selects a block of `src` and of `out`. */
function transpose2d(src: Float32Array, rows: number, cols: number, out = new Float32Array(rows * cols), offset = 0): Float32Array {
  const T = 64;
  for (let i0 = 0; i0 < rows; i0 += T) {
    const i1 = Math.min(rows, i0 + T);
    for (let j0 = 0; j0 < cols; j0 += T) {
      const j1 = Math.min(cols, j0 + T);
      for (let i = i0; i < i1; i++) {
        for (let j = j0; j < j1; j++) out[offset + j * rows + i] = src[offset + i * cols + j];
      }
    }
  }
  return out;
}

/** out[axes permuted] = src: output axis a is input axis perm[a]. */
function permute(src: Float32Array, shape: readonly number[], perm: readonly number[]): Float32Array {
  const rank = shape.length;
  const strides = new Array<number>(rank);
  for (let a = rank - 1, s = 1; a >= 0; a--) {
    strides[a] = s;
    s *= shape[a];
  }
  const outShape = perm.map((p) => shape[p]);
  const outStrides = perm.map((p) => strides[p]); // input stride of each output axis
  const out = new Float32Array(src.length);
  const idx = new Array<number>(rank).fill(0);
  let from = 0;
  for (let o = 0; o < out.length; o++) {
    out[o] = src[from];
    for (let a = rank - 1; a >= 0; a--) {
      idx[a]++;
      from += outStrides[a];
      if (idx[a] < outShape[a]) break;
      from -= outStrides[a] * outShape[a];
      idx[a] = 0;
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------------------
// Reading: HF tensors -> keras weight map
// ---------------------------------------------------------------------------------------------------------------

/** New (transformers >= 4.52) key names -> the legacy ones the table uses. */
export function legacyKey(key: string): string {
  if (key.startsWith('model.language_model.')) return `${LM}${key.slice('model.language_model.'.length)}`;
  if (key.startsWith('model.vision_tower.')) return key.slice('model.'.length);
  if (key.startsWith('model.multi_modal_projector.')) return key.slice('model.'.length);
  if (key.startsWith('lm_head.')) return `language_model.${key}`;
  return key;
}

export interface HfWeightsOptions {
  /** The config says `vision_use_head` (transformers' SigLIP default): its head exists but PaliGemma never runs it. */
  readonly ignoreVisionHead?: boolean;
}

/**
 * HF tensors -> a weight map by keras h5 path, each `read()` transforming lazily. Throws one error listing
 * every missing HF key (with the HF shape expected and the keras variable it feeds), every HF shape that does
 * not fit the config, and every unexpected key.
 */
export function hfWeights(c: PaliGemmaConfig, tensors: SafetensorsTensors, source = 'safetensors', options: HfWeightsOptions = {}): WeightMap {
  const byLegacy = new Map<string, SafetensorsTensor>();
  const problems: string[] = [];
  for (const [key, tensor] of tensors) {
    const legacy = legacyKey(key);
    const seen = byLegacy.get(legacy);
    if (seen !== undefined) problems.push(`"${seen.key}" and "${key}" are the same weight (old and new transformers names)`);
    byLegacy.set(legacy, tensor);
  }
  const out = new Map<string, { shape: readonly number[]; file: string; read(): Float32Array }>();
  const used = new Set<string>();
  for (const spec of hfLayout(c)) {
    const tensor = byLegacy.get(spec.hf);
    const want = hfShape(spec.transform, spec.keras.kerasShape);
    const wanted = spec.transform.kind === 'rows' ? `[>= ${want[0]}, ${want[1]}]` : fmt(want);
    if (tensor === undefined) {
      problems.push(`missing ${spec.hf} (HF shape ${wanted}, for ${spec.keras.keras} ${fmt(spec.keras.kerasShape)})`);
      continue;
    }
    used.add(spec.hf);
    const got = tensor.shape;
    const fits =
      spec.transform.kind === 'rows'
        ? got.length === 2 && got[0] >= want[0] && got[1] === want[1]
        : got.length === want.length && got.every((n, i) => n === want[i]);
    if (!fits) {
      problems.push(`wrong shape ${tensor.key} in ${tensor.file}: expected ${wanted} (for ${spec.keras.keras} ${fmt(spec.keras.kerasShape)}), got ${fmt(got)}`);
      continue;
    }
    const t = spec.transform;
    out.set(spec.keras.h5, {
      shape: spec.keras.kerasShape,
      file: tensor.file,
      read: () => (t.kind === 'rows' ? tensor.readPrefix(t.rows * got[1]) : toKeras(t, got, tensor.read())),
    });
  }
  for (const [legacy, tensor] of byLegacy) {
    if (used.has(legacy)) continue;
    if (legacy === 'language_model.lm_head.weight') continue; // tied to the embedding
    if (options.ignoreVisionHead && legacy.startsWith(`${VT}head.`)) continue;
    problems.push(`unexpected ${tensor.key} (shape ${fmt(tensor.shape)}, in ${tensor.file})`);
  }
  if (problems.length > 0) {
    throw new Error(`${source}: ${problems.length} problem(s) with the Hugging Face weights for this config:\n  ${problems.join('\n  ')}`);
  }
  return out;
}

/** A Hugging Face PaliGemma directory: its config and its weights by keras h5 path. */
export function readHfCheckpoint(dir: string): { config: PaliGemmaConfig; weights: WeightMap } {
  const file = path.join(dir, 'config.json');
  const json = guarded(file, () => readJsonFile(file, MAX_CONFIG_BYTES));
  const config = guarded(file, () => decodeHfConfig(json, file));
  const vision = isRecord(json) && isRecord(json['vision_config']) ? json['vision_config'] : {};
  const weights = hfWeights(config, readSafetensors(dir), dir, { ignoreVisionHead: vision['vision_use_head'] !== false });
  return { config, weights };
}

// ---------------------------------------------------------------------------------------------------------------
// Writing: keras values -> HF tensors
// ---------------------------------------------------------------------------------------------------------------

/** keras-layout values by h5 path (what `encodeParams` gives) -> HF tensors by legacy key, in table order. */
export function kerasToHf(c: PaliGemmaConfig, values: ReadonlyMap<string, { shape: readonly number[]; values: Float32Array }>): Map<string, { shape: number[]; values: Float32Array }> {
  const out = new Map<string, { shape: number[]; values: Float32Array }>();
  for (const spec of hfLayout(c)) {
    const v = values.get(spec.keras.h5);
    if (v === undefined) throw new Error(`kerasToHf: no values for ${spec.keras.h5} (${spec.keras.keras})`);
    const shape = hfShape(spec.transform, v.shape);
    if (spec.transform.kind === 'rows') shape[0] = hfVocabSize(c);
    out.set(spec.hf, { shape, values: toHf(spec.transform, v.shape, v.values, shape[0]) });
  }
  return out;
}

export interface WriteHfOptions {
  /** Stored dtype (default F32). */
  readonly dtype?: 'F32' | 'BF16' | 'F16';
  /** Shard above this many bytes of data per file (`model-0000i-of-0000n.safetensors` + index). */
  readonly maxShardBytes?: number;
}

/** Write params as a Hugging Face PaliGemma checkpoint: `config.json` and safetensors weights. */
export function writeHfCheckpoint(dir: string, params: PaliGemmaParams, options: WriteHfOptions = {}): void {
  const c = params.config;
  const hfConfig = encodeHfConfig(options.dtype === 'BF16' ? { ...c, dtype: 'bfloat16' } : options.dtype === 'F16' ? { ...c, dtype: 'float16' } : c);
  const tensors: [string, TensorToWrite][] = [...kerasToHf(c, encodeParams(params))].map(([k, t]) => [k, { ...t, dtype: options.dtype ?? 'F32' }]);
  writeHfFiles(dir, hfConfig, tensors, options.maxShardBytes);
}

