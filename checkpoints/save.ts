/**
 * Saving params as a Keras preset directory, the files keras_hub's `save_to_preset` writes for a backbone:
 * `config.json` (the strict codec's encoder), `metadata.json`, and `model.weights.h5` (float32, contiguous,
 * each `vars` group named after its keras layer). Every file is written atomically (temp file + rename).
 * Tensors are read with `await data()`, so it works on every backend, WebGPU included.
 */
import type { PaliGemmaParams } from '../models/paligemma';
import type { H5WriteDataset } from './h5write';
import { inKerasLayout, kerasLayout } from './params';
import { writeKerasPresetFiles } from './dirwrite';

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

