/**
 * The multi-file writers of checkpoint directories, from plain arrays (no tensors, so no TensorFlow.js): a
 * Keras preset (config.json, metadata.json, model.weights.h5) and a Hugging Face checkpoint (config.json and
 * safetensors weights, sharded or not). Each directory is written as a whole with `writeDirAtomic`: a kill at
 * any moment leaves the old checkpoint or the new one; files of the directory that are not checkpoint files
 * (a README, a tokenizer) are kept.
 */
import * as path from 'node:path';
import type { PaliGemmaConfig } from '../models/config';
import { writeDirAtomic, writeFileAtomic } from './atomic';
import { encodeConfig } from './config';
import { writeH5, type H5WriteDataset } from './h5write';
import { fillShardedSafetensors, isSafetensorsFile, writeSafetensors, type TensorToWrite } from './safetensors';

/** The files a Keras preset's weights and config are: replaced as a whole by a save (others are kept). */
export const isKerasPresetFile = (name: string): boolean =>
  ['model.weights.h5', 'model.weights.json', 'config.json', 'metadata.json'].includes(name) || /^model_\d+\.weights\.h5$/.test(name);

/**
 * The files of a Keras preset, written as a whole (checkpoints/atomic.ts `writeDirAtomic`): a kill at any
 * moment leaves the old preset or the new one. Files in `dir` that are not preset files are kept.
 */
export function writeKerasPresetFiles(
  dir: string,
  config: PaliGemmaConfig,
  datasets: ReadonlyMap<string, H5WriteDataset>,
  groups: ReadonlyMap<string, Record<string, string>>,
): void {
  writeDirAtomic(dir, (tmp) => fillPreset(tmp, config, datasets, groups), { keep: (n) => !isKerasPresetFile(n) });
}

function fillPreset(dir: string, config: PaliGemmaConfig, datasets: ReadonlyMap<string, H5WriteDataset>, groups: ReadonlyMap<string, Record<string, string>>): void {
  writeH5(path.join(dir, 'model.weights.h5'), datasets, { groups });
  writeFileAtomic(path.join(dir, 'config.json'), JSON.stringify(encodeConfig(config), null, 4) + '\n');
  const metadata = {
    keras_version: '3.16.0',
    keras_hub_version: '0.32.0.dev0',
    // every parameter is one element of one dataset
    parameter_count: [...datasets.values()].reduce((n, d) => n + d.shape.reduce((a, b) => a * b, 1), 0),
    date_saved: new Date().toISOString().replace(/T(\d+):(\d+):(\d+).*/, '@$1:$2:$3'),
    tasks: ['CausalLM'],
    saved_by: 'paligemma-ts',
  };
  writeFileAtomic(path.join(dir, 'metadata.json'), JSON.stringify(metadata, null, 4) + '\n');
}

/**
 * A Hugging Face checkpoint's files (config.json, safetensors weights, sharded above `maxShardBytes`), written
 * as a whole (`writeDirAtomic`): a kill at any moment leaves the old checkpoint or the new one. Files in `dir`
 * that are neither weights nor config.json are kept.
 */
export function writeHfFiles(dir: string, hfConfig: unknown, tensors: readonly (readonly [string, TensorToWrite])[], maxShardBytes?: number): void {
  writeDirAtomic(
    dir,
    (tmp) => {
      if (maxShardBytes !== undefined) fillShardedSafetensors(tmp, tensors, maxShardBytes);
      else writeSafetensors(path.join(tmp, 'model.safetensors'), tensors);
      writeFileAtomic(path.join(tmp, 'config.json'), JSON.stringify(hfConfig, null, 2) + '\n');
    },
    { keep: (n) => !isSafetensorsFile(n) && n !== 'config.json' },
  );
}
