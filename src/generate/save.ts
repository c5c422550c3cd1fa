/**
 * Saving a whole PaliGemmaCausalLM as keras_hub's `save_to_preset` of the task writes it (compare
 * spec/fixtures/train/preprocess_train/preset, written by keras_hub): the backbone (`config.json`,
 * `model.weights.h5`, `metadata.json`), the preprocessor (`preprocessor.json` with its tokenizer and image
 * converter configs inline), `tokenizer.json` and `image_converter.json` (their configs), and the vocabulary
 * in `assets/tokenizer/vocabulary.spm`. `loadCausalLM(dir)` loads it back.
 *
 * The directory is written as a whole (`writeDirAtomic`): a crash leaves the old preset or the new one.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { saveKerasPreset } from '../../checkpoints/save';
import { writeDirAtomic } from '../../checkpoints/atomic';
import { encodeModelProto } from '../text/spm_write';
import type { CausalLM } from './causal_lm';

export interface SaveCausalLMOptions {
  /** The preprocessor's `sequence_length` (keras_hub's default for PaliGemma: 512). */
  readonly sequenceLength?: number;
}

const policy = (name: string) => ({ module: 'keras', class_name: 'DTypePolicy', config: { name }, registered_name: null });

function tokenizerJson() {
  return {
    module: 'keras_hub.src.models.pali_gemma.pali_gemma_tokenizer',
    class_name: 'PaliGemmaTokenizer',
    config: {
      name: 'pali_gemma_tokenizer',
      trainable: true,
      dtype: policy('int32'),
      config_file: 'tokenizer.json',
      proto: null,
      sequence_length: null,
      add_bos: false,
      add_eos: false,
    },
    registered_name: 'keras_hub>PaliGemmaTokenizer',
  };
}

function imageConverterJson(imageSize: number) {
  return {
    module: 'keras_hub.src.models.pali_gemma.pali_gemma_image_converter',
    class_name: 'PaliGemmaImageConverter',
    config: {
      name: 'pali_gemma_image_converter',
      trainable: true,
      dtype: policy('float32'),
      image_size: [imageSize, imageSize],
      // keras_hub stores the python float 1/127.5; the converter casts it to float32 (IMAGE_SCALE)
      scale: 1 / 127.5,
      offset: -1,
      interpolation: 'bilinear',
      antialias: false,
      crop_to_aspect_ratio: true,
      pad_to_aspect_ratio: false,
      bounding_box_format: 'yxyx',
    },
    registered_name: 'keras_hub>PaliGemmaImageConverter',
  };
}

function preprocessorJson(imageSize: number, sequenceLength: number) {
  return {
    module: 'keras_hub.src.models.pali_gemma.pali_gemma_causal_lm_preprocessor',
    class_name: 'PaliGemmaCausalLMPreprocessor',
    config: {
      name: 'pali_gemma_causal_lm_preprocessor',
      trainable: true,
      dtype: policy('float32'),
      tokenizer: tokenizerJson(),
      image_converter: imageConverterJson(imageSize),
      config_file: 'preprocessor.json',
      sequence_length: sequenceLength,
      add_start_token: true,
      add_end_token: true,
    },
    registered_name: 'keras_hub>PaliGemmaCausalLMPreprocessor',
  };
}

const json = (x: unknown): string => JSON.stringify(x, null, 4);

/**
 * Write `lm` as a keras_hub task preset in `dir` (replacing it whole). A kernel with a LoRA adapter is
 * written merged (kernel + scale A.B) and the adapters are not written, as keras_hub's save_to_preset does
 * (the params codec, checkpoints/params.ts). Memory-neutral.
 */
export async function saveCausalLM(lm: CausalLM, dir: string, options: SaveCausalLMOptions = {}): Promise<void> {
  const L = options.sequenceLength ?? 512;
  if (!Number.isInteger(L) || L < 1) throw new Error(`saveCausalLM: sequenceLength must be a positive integer, got ${L}`);
  const size = lm.params.config.image_size;
  // the weights are read asynchronously (WebGPU has no dataSync), so they go to a staging folder first and
  // move into the atomically built directory after
  const parent = path.dirname(path.resolve(dir));
  fs.mkdirSync(parent, { recursive: true });
  const staging = fs.mkdtempSync(path.join(parent, `.${path.basename(path.resolve(dir))}.staging-`));
  try {
    await saveKerasPreset(lm.params, staging);
    const vocabulary = encodeModelProto(lm.tokenizer.model);
    writeDirAtomic(dir, (tmp) => {
      for (const f of fs.readdirSync(staging)) fs.renameSync(path.join(staging, f), path.join(tmp, f));
      fs.writeFileSync(path.join(tmp, 'preprocessor.json'), json(preprocessorJson(size, L)));
      fs.writeFileSync(path.join(tmp, 'tokenizer.json'), json(tokenizerJson()));
      fs.writeFileSync(path.join(tmp, 'image_converter.json'), json(imageConverterJson(size)));
      fs.mkdirSync(path.join(tmp, 'assets', 'tokenizer'), { recursive: true });
      fs.writeFileSync(path.join(tmp, 'assets', 'tokenizer', 'vocabulary.spm'), vocabulary);
    });
  } finally {
    fs.rmSync(staging, { recursive: true, force: true });
  }
}
