/**
 * Loading a PaliGemma from a Keras preset directory (config.json + model.weights.h5 or sharded weights).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { indexH5, readDatasetFloat32 } from '../checkpoints/h5';
import { decodeParams, type WeightMap } from '../checkpoints/params';
import { CONFIG_DEFAULTS, type PaliGemmaConfig } from '../models/config';
import type { PaliGemmaParams } from '../models/paligemma';

// TEMPORARY until checkpoints/keras.ts lands: single-file weights and a lenient config.
export function readConfigLoose(dir: string): PaliGemmaConfig {
  const raw = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8')).config;
  const c = { ...CONFIG_DEFAULTS, ...raw } as Record<string, unknown>;
  if (c.vit_intermediate_dim == null) c.vit_intermediate_dim = 4304;
  if (c.vit_pooling === '0') c.vit_pooling = 'zero';
  if (typeof c.dtype === 'object' && c.dtype) c.dtype = (c.dtype as { config: { name: string } }).config.name;
  return c as unknown as PaliGemmaConfig;
}

export function readWeightsLoose(dir: string): WeightMap {
  const index = indexH5(path.join(dir, 'model.weights.h5'));
  return new Map([...index.datasets].map(([k, ds]) => [k, { shape: ds.shape, file: ds.file, read: () => readDatasetFloat32(ds) }]));
}

export function loadPreset(dir: string): PaliGemmaParams {
  const config = readConfigLoose(dir);
  return decodeParams(config, readWeightsLoose(dir), dir);
}
