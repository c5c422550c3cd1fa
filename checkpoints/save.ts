/**
 * Saving params as a Keras preset directory, the files keras_hub's `save_to_preset` writes for a backbone:
 * `config.json` (the strict codec's encoder), `metadata.json`, and `model.weights.h5` (float32, contiguous,
 * each `vars` group named after its keras layer). Every file is written atomically (temp file + rename).
 * Tensors are read with `await data()`, so it works on every backend, WebGPU included.
 */
import * as path from 'node:path';
import * as d from '../dsl';
import type { PaliGemmaParams } from '../models/paligemma';
import { encodeConfig } from './config';
import { writeH5, type H5WriteDataset } from './h5write';
import { inKerasLayout, kerasLayout, parameterCount } from './params';
import { writeDirAtomic, writeFileAtomic } from './atomic';
import type { PaliGemmaConfig } from '../models/config';

/** The files a Keras preset's weights and config are: replaced as a whole by a save (others are kept). */
export const isKerasPresetFile = (name: string): boolean =>
  ['model.weights.h5', 'model.weights.json', 'config.json', 'metadata.json'].includes(name) || /^model_\d+\.weights\.h5$/.test(name);

export async function saveKerasPreset(params: PaliGemmaParams, dir: string): Promise<void> {
  const specs = kerasLayout(params.config);
  const datasets = new Map<string, H5WriteDataset>();
  const groups = new Map<string, Record<string, string>>();
  for (const s of specs) {
    const t = inKerasLayout(params, s);
    const values = Float32Array.from((await t.data()) as Float32Array);
    t.dispose();
    datasets.set(s.h5, { shape: s.kerasShape, values });
    // the `name` attribute of a vars group is its keras layer's name: the owner in the variable's path
    groups.set(s.h5.slice(0, s.h5.lastIndexOf('/')), { name: s.keras.split('/').slice(-2)[0] });
  }
  groups.set('', { name: 'pali_gemma_backbone' });
  writeKerasPresetFiles(dir, params.config, datasets, groups);
}

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
    parameter_count: parameterCount(config),
    date_saved: new Date().toISOString().replace(/T(\d+):(\d+):(\d+).*/, '@$1:$2:$3'),
    tasks: ['CausalLM'],
    saved_by: 'paligemma-ts',
  };
  writeFileAtomic(path.join(dir, 'metadata.json'), JSON.stringify(metadata, null, 4) + '\n');
}
