/**
 * The built-in presets: keras_hub's table (keras_hub/src/models/pali_gemma/pali_gemma_presets.py) with the
 * architecture of each one (keras_hub's conversion scripts, tools/checkpoint_conversion/). See
 * ../shared/docs/PRESETS.md.
 *
 * Each row carries its full `PaliGemmaConfig`, so `fromPreset(name, { loadWeights: false })` works without any
 * file, and `parameterCount(config)` can be checked against keras_hub's count (spec/presets.spec.ts).
 */
import { CONFIG_DEFAULTS, type PaliGemmaConfig } from '../models/config';

// ---------------------------------------------------------------------------------------------------------------
// Architectures
// ---------------------------------------------------------------------------------------------------------------

export type PresetFamily = 'PG1 3B' | 'PG2 3B' | 'PG2 10B' | 'PG2 28B';
export type ImageSize = 224 | 448 | 896;

/** Every preset: the SigLIP So400m/14 encoder, no pooling, a linear projection; vocabulary 257152. */
const VIT = {
  vocabulary_size: 257152,
  vit_patch_size: 14,
  vit_hidden_dim: 1152,
  vit_num_layers: 27,
  vit_num_heads: 16,
  vit_intermediate_dim: 4304,
  vit_pooling: null,
  vit_classifier_activation: null,
  vit_name: null,
  layer_norm_epsilon: 1e-6,
  dropout: 0,
} as const;

/** Gemma 2: logit soft caps 50 (attention) and 30 (final), a 4096 window on even layers, post norms. */
const GEMMA2 = {
  attention_logit_soft_cap: 50,
  final_logit_soft_cap: 30,
  use_sliding_window_attention: true,
  sliding_window_size: 4096,
  use_post_attention_norm: true,
  use_post_ffw_norm: true,
  // The PaliGemma 2 conversion builds under keras.config.set_floatx("bfloat16").
  dtype: 'bfloat16',
} as const;

/** The decoder of each family (`intermediate_dim` is keras_hub's: twice each FFN gate's width). */
const DECODERS: Readonly<Record<PresetFamily, Omit<PaliGemmaConfig, 'image_size' | keyof typeof VIT>>> = {
  'PG1 3B': {
    ...CONFIG_DEFAULTS,
    num_layers: 18, num_query_heads: 8, num_key_value_heads: 1, hidden_dim: 2048, intermediate_dim: 32768, head_dim: 256,
    query_head_dim_normalize: true,
  },
  'PG2 3B': {
    ...CONFIG_DEFAULTS, ...GEMMA2,
    num_layers: 26, num_query_heads: 8, num_key_value_heads: 4, hidden_dim: 2304, intermediate_dim: 18432, head_dim: 256,
    query_head_dim_normalize: true,
  },
  'PG2 10B': {
    ...CONFIG_DEFAULTS, ...GEMMA2,
    num_layers: 42, num_query_heads: 16, num_key_value_heads: 8, hidden_dim: 3584, intermediate_dim: 28672, head_dim: 256,
    query_head_dim_normalize: true,
  },
  'PG2 28B': {
    ...CONFIG_DEFAULTS, ...GEMMA2,
    num_layers: 46, num_query_heads: 32, num_key_value_heads: 16, hidden_dim: 4608, intermediate_dim: 73728, head_dim: 128,
    // Gemma 2 27B scales queries by 1/sqrt(hidden_dim / num_query_heads) = 1/sqrt(144), not 1/sqrt(head_dim).
    query_head_dim_normalize: false,
  },
};

/** The full backbone config of a family at an image size. */
export function familyConfig(family: PresetFamily, imageSize: ImageSize): PaliGemmaConfig {
  return { ...DECODERS[family], ...VIT, image_size: imageSize };
}

// ---------------------------------------------------------------------------------------------------------------
// The table
// ---------------------------------------------------------------------------------------------------------------

export interface PresetInfo {
  readonly name: string;
  /** Other names accepted for it (older spellings that keras_hub's documentation still shows). */
  readonly aliases: readonly string[];
  readonly description: string;
  /** The number of parameters of `config` (= keras_hub's count, except where `kerasHubParams` differs). */
  readonly params: number;
  /** keras_hub's `metadata.params`: the three 28B rows share the 224 count (a copy-paste slip upstream). */
  readonly kerasHubParams: number;
  readonly imageSize: ImageSize;
  /** The preprocessor's text sequence length, where keras_hub gives one (PaliGemma 1 presets). */
  readonly sequenceLength: number | null;
  readonly family: PresetFamily;
  /** pt = pre-trained, mix = fine-tuned on a task mixture, ft_docci = fine-tuned on DOCCI captions. */
  readonly training: 'pt' | 'mix' | 'ft_docci';
  /** `kaggle://owner/model/framework/variation/version`. */
  readonly kaggleHandle: string;
  readonly config: PaliGemmaConfig;
}

/** One row: the count is keras_hub's, the config follows from family and image size. */
const row = (
  name: string,
  kerasHubParams: number,
  imageSize: ImageSize,
  sequenceLength: number | null,
  family: PresetFamily,
  training: PresetInfo['training'],
  kaggleHandle: string,
  aliases: readonly string[] = [],
): PresetInfo => {
  const config = familyConfig(family, imageSize);
  // 28B: keras_hub lists the 224 count for 448 and 896 too; the position embedding has (size/14)^2 rows.
  const params = family === 'PG2 28B' ? kerasHubParams + config.vit_hidden_dim * ((imageSize / 14) ** 2 - 256) : kerasHubParams;
  const what = { pt: 'pre-trained', mix: 'fine-tuned on a mixture of vision-language tasks', ft_docci: 'fine-tuned on DOCCI for detailed captions' }[training];
  const gemma = { 'PG1 3B': 'Gemma 2B (18 layers)', 'PG2 3B': 'Gemma 2 2B (26 layers)', 'PG2 10B': 'Gemma 2 9B (42 layers)', 'PG2 28B': 'Gemma 2 27B (46 layers)' }[family];
  const description =
    `${family.startsWith('PG2') ? 'PaliGemma 2' : 'PaliGemma'} ${family.split(' ')[1]}, image size ${imageSize}, ${what}; ` +
    `SigLIP So400m/14 image encoder (27 layers) and ${gemma} decoder` +
    (sequenceLength === null ? '.' : `; text sequence length ${sequenceLength}.`);
  return { name, aliases, description, params, kerasHubParams, imageSize, sequenceLength, family, training, kaggleHandle, config };
};

const PG1 = 'kaggle://keras/paligemma/keras/';
const PG2 = 'kaggle://keras/paligemma2/keras/';

export const PRESETS: readonly PresetInfo[] = [
  row('pali_gemma_3b_mix_224', 2_923_335_408, 224, 256, 'PG1 3B', 'mix', `${PG1}pali_gemma_3b_mix_224/4`, ['pali_gemma_mix_224']),
  row('pali_gemma_3b_224', 2_923_335_408, 224, 128, 'PG1 3B', 'pt', `${PG1}pali_gemma_3b_224/4`),
  row('pali_gemma_3b_mix_448', 2_924_220_144, 448, 512, 'PG1 3B', 'mix', `${PG1}pali_gemma_3b_mix_448/4`),
  row('pali_gemma_3b_448', 2_924_220_144, 448, 512, 'PG1 3B', 'pt', `${PG1}pali_gemma_3b_448/4`),
  row('pali_gemma_3b_896', 2_927_759_088, 896, 512, 'PG1 3B', 'pt', `${PG1}pali_gemma_3b_896/4`),
  row('pali_gemma2_pt_3b_224', 3_032_094_960, 224, null, 'PG2 3B', 'pt', `${PG2}pali_gemma2_pt_3b_224/2`),
  row('pali_gemma2_pt_3b_448', 3_032_979_696, 448, null, 'PG2 3B', 'pt', `${PG2}pali_gemma2_pt_3b_448/2`),
  row('pali_gemma2_pt_3b_896', 3_036_518_640, 896, null, 'PG2 3B', 'pt', `${PG2}pali_gemma2_pt_3b_896/2`),
  row('pali_gemma2_mix_3b_224', 3_032_094_960, 224, null, 'PG2 3B', 'mix', `${PG2}pali_gemma2_mix_3b_224/2`),
  row('pali_gemma2_mix_3b_448', 3_032_979_696, 448, null, 'PG2 3B', 'mix', `${PG2}pali_gemma2_mix_3b_448/2`),
  row('pali_gemma_2_ft_docci_3b_448', 3_032_979_696, 448, null, 'PG2 3B', 'ft_docci', `${PG2}pali_gemma_2_ft_docci_3b_448/2`, ['pali_gemma2_3b_ft_docci_448']),
  row('pali_gemma2_pt_10b_224', 9_662_409_456, 224, null, 'PG2 10B', 'pt', `${PG2}pali_gemma2_pt_10b_224/3`),
  row('pali_gemma2_pt_10b_448', 9_663_294_192, 448, null, 'PG2 10B', 'pt', `${PG2}pali_gemma2_pt_10b_448/3`),
  row('pali_gemma2_pt_10b_896', 9_666_833_136, 896, null, 'PG2 10B', 'pt', `${PG2}pali_gemma2_pt_10b_896/3`),
  row('pali_gemma2_mix_10b_224', 9_662_409_456, 224, null, 'PG2 10B', 'mix', `${PG2}pali_gemma2_mix_10b_224/3`),
  row('pali_gemma2_mix_10b_448', 9_663_294_192, 448, null, 'PG2 10B', 'mix', `${PG2}pali_gemma2_mix_10b_448/3`),
  row('pali_gemma2_ft_docci_10b_448', 9_663_294_192, 448, null, 'PG2 10B', 'ft_docci', `${PG2}pali_gemma2_ft_docci_10b_448/3`, ['pali_gemma2_10b_ft_docci_448']),
  row('pali_gemma2_pt_28b_224', 27_650_192_112, 224, null, 'PG2 28B', 'pt', `${PG2}pali_gemma2_pt_28b_224/4`),
  row('pali_gemma2_pt_28b_448', 27_650_192_112, 448, null, 'PG2 28B', 'pt', `${PG2}pali_gemma2_pt_28b_448/3`),
  row('pali_gemma2_pt_28b_896', 27_650_192_112, 896, null, 'PG2 28B', 'pt', `${PG2}pali_gemma2_pt_28b_896/3`),
  row('pali_gemma2_mix_28b_224', 27_650_192_112, 224, null, 'PG2 28B', 'mix', `${PG2}pali_gemma2_28b_mix_224/3`),
  row('pali_gemma2_mix_28b_448', 27_650_192_112, 448, null, 'PG2 28B', 'mix', `${PG2}pali_gemma2_28b_mix_448/3`),
];

// ---------------------------------------------------------------------------------------------------------------
// Presets shipped in the package (trained or made by this project, not keras_hub's)
// ---------------------------------------------------------------------------------------------------------------


// ---------------------------------------------------------------------------------------------------------------
// Lookup
// ---------------------------------------------------------------------------------------------------------------

const BY_NAME = new Map<string, PresetInfo>(PRESETS.flatMap((p) => [p.name, ...p.aliases].map((n) => [n, p] as const)));

/** Every accepted name: the presets' names, then their aliases. */
export const presetNames = (): string[] => [...PRESETS.map((p) => p.name), ...PRESETS.flatMap((p) => p.aliases)];

/** keras_hub's names and the shipped presets' names, for suggestions. */
const suggestableNames = (): string[] => [...presetNames(), ...SHIPPED_PRESETS.flatMap((p) => [p.name, ...p.aliases])];

/** The preset with this name or alias. */
export const findPreset = (name: string): PresetInfo | undefined => BY_NAME.get(name);

/** The preset whose Kaggle handle is this one (with any version when `handle` has none or another one). */
export function findPresetByHandle(handle: string): PresetInfo | undefined {
  const stem = (h: string) => h.replace(/^kaggle:\/\//, '').replace(/\/\d+$/, '');
  return PRESETS.find((p) => p.kaggleHandle === handle) ?? PRESETS.find((p) => stem(p.kaggleHandle) === stem(handle));
}

/** The character pairs of a name, ignoring case and separators ("PaliGemma2-3B" -> pa, al, ..., 3b). */
function bigrams(s: string): string[] {
  const n = s.toLowerCase().replace(/[^a-z0-9]/g, '');
  return Array.from({ length: Math.max(0, n.length - 1) }, (_, i) => n.slice(i, i + 2));
}

/** Dice similarity of two names' character pairs, in [0, 1]. */
function similarity(a: string, b: string): number {
  const left = bigrams(a);
  const right = bigrams(b);
  const counts = new Map<string, number>();
  for (const x of right) counts.set(x, (counts.get(x) ?? 0) + 1);
  let common = 0;
  for (const x of left) {
    const k = counts.get(x) ?? 0;
    if (k > 0) {
      common++;
      counts.set(x, k - 1);
    }
  }
  return left.length + right.length === 0 ? 0 : (2 * common) / (left.length + right.length);
}

/** The `n` accepted names most like `name` (shared character pairs; ties in table order). */
export function closestPresetNames(name: string, n = 3): string[] {
  return suggestableNames()
    .map((candidate, i) => ({ candidate, i, s: similarity(name, candidate) }))
    .sort((a, b) => b.s - a.s || a.i - b.i)
    .slice(0, n)
    .map((x) => x.candidate);
}

// ---------------------------------------------------------------------------------------------------------------
// Shipped presets
// ---------------------------------------------------------------------------------------------------------------

/** A preset whose files ship inside the package (listed in package.json's "files"). */
export interface ShippedPreset {
  readonly name: string;
  /** Other names accepted for it. */
  readonly aliases: readonly string[];
  /** Its directory, relative to the package root. */
  readonly dir: string;
  /** A picture shipped with it, relative to its directory: the CLI's default --image. */
  readonly image: string;
  readonly description: string;
}

/**
 * The presets shipped in the package, by name: `fromPreset('tiny')`, `paligemma run --preset tiny`. The first
 * row is the CLI's default preset. A shipped name wins over a local directory of the same name, as built-in
 * names do (pass `./tiny` for the directory).
 */
export const SHIPPED_PRESETS: readonly ShippedPreset[] = [
  {
    name: 'paligemma_shapes',
    aliases: ['shapes'],
    dir: 'checkpoints/shapes',
    image: 'shapes.png',
    description:
      'A small PaliGemma-2-shaped model trained by this project (scripts/train-shapes.mjs) on pictures of coloured shapes: ' +
      "'caption en', 'answer en how many shapes?', 'detect <circle|square|triangle>'. The CLI's default.",
  },
  {
    name: 'tiny',
    aliases: ['paligemma_tiny'],
    dir: 'checkpoints/tiny',
    image: 'cat.png',
    description: 'PaliGemma 2 shaped, 16 px images, 3 decoder layers; random weights (its text is random), for trying things out',
  },
];

/** The shipped preset with this name or alias. */
export const findShippedPreset = (name: string): ShippedPreset | undefined => SHIPPED_PRESETS.find((p) => p.name === name || p.aliases.includes(name));
