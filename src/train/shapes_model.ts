/**
 * The shapes model: a small PaliGemma-2-shaped config for the shapes tasks (src/train/shapes.ts), a dataset
 * of fresh pictures for `fit`, and writing the result as a keras_hub task preset.
 *
 * Gemma 2's decoder features as PaliGemma 2 has them: post-attention and post-FFN norms, attention and final
 * logit soft caps 50 and 30, sliding-window attention on even layers with PaliGemma 2's window (4096, longer
 * than these sequences, so every layer sees the whole prefix, as in PaliGemma 2 at 224 px).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CONFIG_DEFAULTS, type PaliGemmaConfig } from '../../models/config';
import type { PaliGemmaParams } from '../../models/paligemma';
import { saveKerasPreset } from '../../checkpoints/save';
import { writeFileAtomic } from '../../checkpoints/atomic';
import type { Dataset, Example } from './data';
import { CAPTION_PREFIX, COUNT_PREFIX, detect, detectPrefix, makeScene, renderScene, SHAPES_IMAGE_SIZE, shapesRng, caption, type Scene, type TaskRecord } from './shapes';
import { shapesVocabulary, shapesVocabularyBytes } from './shapes_vocab';

/** Prompt + answer tokens with bos and eos: the longest task (3 detections) is 7 + 19 + 2 = 28. */
export const SHAPES_SEQUENCE_LENGTH = 28;

export function shapesConfig(): PaliGemmaConfig {
  return {
    ...CONFIG_DEFAULTS,
    vocabulary_size: shapesVocabulary().pieces.length,
    image_size: SHAPES_IMAGE_SIZE,
    vit_patch_size: 8,
    vit_hidden_dim: 64,
    vit_num_layers: 2,
    vit_num_heads: 2,
    vit_intermediate_dim: 128,
    num_layers: 3,
    num_query_heads: 4,
    num_key_value_heads: 2,
    hidden_dim: 128,
    intermediate_dim: 512,
    head_dim: 32,
    query_head_dim_normalize: true,
    use_post_attention_norm: true,
    use_post_ffw_norm: true,
    attention_logit_soft_cap: 50,
    final_logit_soft_cap: 30,
    use_sliding_window_attention: true,
    sliding_window_size: 4096,
    dtype: 'float32',
  };
}

/**
 * The training task of picture `index`: caption, count or detect with odds 2 : 1 : 3 (detect: one of the
 * kinds present, equally likely; counting is learnt first and needs least), drawn from its own stream so
 * the scene is the same as `makeScene`'s.
 */
export function trainingTask(scene: Scene, seed: number, index: number): TaskRecord {
  const rand = shapesRng(seed ^ 0x5bd1e995, index);
  const family = rand(6);
  if (family < 2) return { prefix: CAPTION_PREFIX, suffix: caption(scene) };
  if (family === 2) return { prefix: COUNT_PREFIX, suffix: String(scene.shapes.length) };
  const kinds = [...new Set(scene.shapes.map((s) => s.kind))];
  const kind = kinds[rand(kinds.length)];
  return { prefix: detectPrefix(kind), suffix: detect(scene, kind) };
}

/**
 * Pictures 0 .. count - 1 of `seed`, one training task each, as a `fit` dataset. Nothing is held: the
 * examples array is a view that draws picture i when it is read (a million pictures cost no memory), and
 * reading it twice gives the same example.
 */
export function shapesDataset(seed: number, count: number, size = SHAPES_IMAGE_SIZE): Dataset {
  if (!Number.isInteger(count) || count < 1 || count > 0xffffffff) throw new Error(`shapesDataset: count must be an integer in [1, 2^32), got ${count}`);
  const example = (i: number): Example => {
    const scene = makeScene(seed, i, size);
    // the picture is drawn when read: fit's dataHash reads every example's text, not its image
    return { get image() { return renderScene(scene); }, ...trainingTask(scene, seed, i), source: `shapes seed ${seed} picture ${i}` };
  };
  const examples = new Proxy(new Array<Example>(count), {
    get: (target, key, receiver) => (typeof key === 'string' && /^(0|[1-9]\d*)$/.test(key) && Number(key) < count ? example(Number(key)) : Reflect.get(target, key, receiver)),
  });
  return { examples, name: `shapes (seed ${seed}, ${count} pictures)` };
}

/** What keras_hub's task preset holds besides the backbone: tokenizer, image converter, preprocessor. */
function kerasObject(module: string, className: string, config: Record<string, unknown>, dtype = 'float32'): unknown {
  return {
    module: `keras_hub.src.models.pali_gemma.${module}`,
    class_name: className,
    config: { name: module, trainable: true, dtype: { module: 'keras', class_name: 'DTypePolicy', config: { name: dtype }, registered_name: null }, ...config },
    registered_name: `keras_hub>${className}`,
  };
}

/**
 * Writes a keras_hub PaliGemmaCausalLM preset: the backbone (config.json, model.weights.h5, metadata.json),
 * the vocabulary (assets/tokenizer/vocabulary.spm) and the tokenizer, image converter and preprocessor
 * configs, plus `extra` files (name -> contents: a README, the training log).
 */
export async function saveShapesPreset(params: PaliGemmaParams, dir: string, extra: Readonly<Record<string, string | Uint8Array>> = {}): Promise<void> {
  await saveKerasPreset(params, dir);
  const json = (name: string, value: unknown): void => writeFileAtomic(path.join(dir, name), JSON.stringify(value, null, 4) + '\n');
  fs.mkdirSync(path.join(dir, 'assets', 'tokenizer'), { recursive: true });
  writeFileAtomic(path.join(dir, 'assets', 'tokenizer', 'vocabulary.spm'), shapesVocabularyBytes());
  const tokenizer = kerasObject('pali_gemma_tokenizer', 'PaliGemmaTokenizer', { config_file: 'tokenizer.json', proto: null, sequence_length: null, add_bos: false, add_eos: false }, 'int32');
  json('tokenizer.json', tokenizer);
  const size = params.config.image_size;
  const converter = kerasObject('pali_gemma_image_converter', 'PaliGemmaImageConverter', {
    image_size: [size, size],
    scale: 1 / 127.5,
    offset: -1.0,
    interpolation: 'bilinear',
    antialias: false,
    crop_to_aspect_ratio: true,
    pad_to_aspect_ratio: false,
    bounding_box_format: 'yxyx',
  });
  json('image_converter.json', converter);
  json(
    'preprocessor.json',
    kerasObject('pali_gemma_causal_lm_preprocessor', 'PaliGemmaCausalLMPreprocessor', {
      tokenizer,
      image_converter: converter,
      config_file: 'preprocessor.json',
      sequence_length: SHAPES_SEQUENCE_LENGTH,
      add_start_token: true,
      add_end_token: true,
    }),
  );
  for (const [name, contents] of Object.entries(extra)) writeFileAtomic(path.join(dir, name), contents);
}
