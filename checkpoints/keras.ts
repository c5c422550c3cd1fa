/**
 * Keras preset directories (keras_hub `save_to_preset`): the weights as a flat map from h5 path to a lazy
 * reader, and the backbone config.
 *
 * Weights are either one `model.weights.h5` or, above keras' `max_shard_size`, `model.weights.json` (the shard
 * map) plus `model_00000.weights.h5`, `model_00001…` (keras saving_lib.py `ShardedH5IOStore`). Each shard is a
 * normal keras `.h5` with the same paths; a `vars` group whose variables straddle two shards exists in both
 * (the later copy without its `name` attribute). keras loads a sharded preset through the map; we merge the
 * datasets of all listed shards by path, check the map against what the shards hold, and refuse a dataset
 * that two shards both hold.
 *
 * Nothing is read until `read()` is called on a weight: indexing a multi-GB preset reads only its metadata.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { indexH5, readDatasetFloat32, type H5AttrValue, type H5Attrs, type H5DType, type H5Index } from './h5';
import { decodeConfig } from './config';
import { FormatError, guarded } from './errors';
import { MAX_CONFIG_BYTES, isRegularFile, readJsonFile, segmentProblem } from './files';
import type { PaliGemmaConfig } from '../models/config';

export const CONFIG_FILE = 'config.json';
export const METADATA_FILE = 'metadata.json';
export const WEIGHTS_FILE = 'model.weights.h5';
export const SHARDED_WEIGHTS_FILE = 'model.weights.json';

export interface KerasWeight {
  /** Path inside the `.h5` file(s), e.g. `layers/reversible_embedding/vars/0`. */
  readonly path: string;
  readonly shape: readonly number[];
  /** As stored: `float32`, or `bfloat16` for presets saved in bf16 (widened by `read`). */
  readonly dtype: H5DType;
  /** The `.h5` file that holds it. */
  readonly file: string;
  readonly offset: number;
  readonly byteLength: number;
  /** The `name` attribute of the enclosing `vars` group: the keras layer's name (a cross-check), if any. */
  readonly layerName: string | null;
  /** Reads the weight from disk, widened to float32. */
  read(): Float32Array;
}

export type KerasWeights = ReadonlyMap<string, KerasWeight>;

// ---------------------------------------------------------------------------------------------------------------
// Weights
// ---------------------------------------------------------------------------------------------------------------

/** The weights of a preset directory: `model.weights.h5`, or the shards listed by `model.weights.json`. */
export function readKerasWeights(presetDir: string): KerasWeights {
  const single = path.join(presetDir, WEIGHTS_FILE);
  const sharded = path.join(presetDir, SHARDED_WEIGHTS_FILE);
  const hasSingle = fs.existsSync(single);
  const hasSharded = fs.existsSync(sharded);
  return guarded(hasSharded ? sharded : hasSingle ? single : presetDir, () => weightsOf(presetDir, single, sharded, hasSingle, hasSharded));
}

function weightsOf(presetDir: string, single: string, sharded: string, hasSingle: boolean, hasSharded: boolean): KerasWeights {
  if (hasSingle && hasSharded) {
    throw new Error(`${presetDir}: both ${WEIGHTS_FILE} and ${SHARDED_WEIGHTS_FILE} exist; keep the one that was saved last`);
  }
  if (hasSharded) return readShardedWeights(sharded);
  if (hasSingle) return readWeightsFiles([single]);
  throw new Error(`${presetDir}: no weights (neither ${WEIGHTS_FILE} nor ${SHARDED_WEIGHTS_FILE})`);
}

/** The weights of one or several `.weights.h5` files, merged by path (a path in two files is an error). */
export function readWeightsFiles(files: readonly string[]): KerasWeights {
  return guarded(files[0] ?? '', () => mergeIndexes(files.map((f) => indexH5(f))));
}

/** A sharded preset: every shard the map lists, merged, after checking the map against the shards. */
export function readShardedWeights(mapFile: string): KerasWeights {
  return guarded(mapFile, () => shardedWeights(mapFile));
}

function shardedWeights(mapFile: string): KerasWeights {
  const map = readShardMap(mapFile);
  const dir = path.dirname(mapFile);
  const shardNames = [...new Set([...map.groups.values()].flat())].sort();
  for (const name of shardNames) {
    if (!isRegularFile(path.join(dir, name))) throw new FormatError(mapFile, 'weight_map', `${mapFile}: lists shard ${name}, which is not in ${dir}`);
  }
  const indexes = shardNames.map((name) => indexH5(path.join(dir, name)));
  const weights = mergeIndexes(indexes);
  checkShardMap(mapFile, map, indexes, weights);
  return weights;
}

function mergeIndexes(indexes: readonly H5Index[]): KerasWeights {
  const layerNames = mergeGroupNames(indexes);
  const out = new Map<string, KerasWeight>();
  for (const index of indexes) {
    // HDF5 allows one dataset under two names; Keras never writes that, and two weights would load the same bytes.
    const byOffset = new Map<number, string>();
    for (const ds of index.datasets.values()) {
      const other = byOffset.get(ds.offset);
      if (ds.byteLength > 0 && other !== undefined) {
        throw new FormatError(ds.file, ds.path, `${ds.file}: dataset "${ds.path}" is the same data as "${other}" (bytes ${ds.offset}..${ds.offset + ds.byteLength}); every weight must have its own`);
      }
      if (ds.byteLength > 0) byOffset.set(ds.offset, ds.path);
    }
    for (const ds of index.datasets.values()) {
      const previous = out.get(ds.path);
      if (previous !== undefined) throw new Error(`dataset "${ds.path}" is in both ${previous.file} and ${ds.file}`);
      out.set(ds.path, {
        path: ds.path,
        shape: ds.shape,
        dtype: ds.dtype,
        file: ds.file,
        offset: ds.offset,
        byteLength: ds.byteLength,
        layerName: layerNames.get(parentPath(ds.path)) ?? null,
        read: () => readDatasetFloat32(ds),
      });
    }
  }
  return out;
}

const parentPath = (p: string): string => p.slice(0, Math.max(0, p.lastIndexOf('/')));

/** Each group's `name` attribute, merged across files: the copies of a split `vars` group must not disagree. */
function mergeGroupNames(indexes: readonly H5Index[]): Map<string, string> {
  const names = new Map<string, { name: string; file: string }>();
  for (const index of indexes) {
    for (const [group, attrs] of index.groupAttrs) {
      const name = nameAttr(attrs, index.file, group);
      if (name === null) continue;
      const seen = names.get(group);
      if (seen !== undefined && seen.name !== name) {
        throw new Error(`group "${group}" is named "${seen.name}" in ${seen.file} but "${name}" in ${index.file}`);
      }
      names.set(group, { name, file: index.file });
    }
  }
  return new Map([...names].map(([group, { name }]) => [group, name]));
}

function nameAttr(attrs: H5Attrs, file: string, group: string): string | null {
  const name: H5AttrValue | undefined = attrs['name'];
  if (name === undefined) return null;
  if (typeof name !== 'string') throw new Error(`${file}: group "${group}" has a non-string name attribute ${JSON.stringify(name)}`);
  return name;
}

// ---------------------------------------------------------------------------------------------------------------
// The shard map (model.weights.json)
// ---------------------------------------------------------------------------------------------------------------

interface ShardMap {
  readonly totalSize: number;
  /** `vars` group path (no leading slash) -> the shard files that hold its variables. */
  readonly groups: ReadonlyMap<string, readonly string[]>;
}

/** `{"metadata": {"total_size": bytes}, "weight_map": {"/<group>/vars": file | [file, ...]}}`. */
function readShardMap(file: string): ShardMap {
  const json = readJsonFile(file);
  const problems: string[] = [];
  const isObject = (u: unknown): u is Record<string, unknown> => typeof u === 'object' && u !== null && !Array.isArray(u);
  if (!isObject(json)) throw new Error(`${file}: expected an object, got ${JSON.stringify(json)}`);
  for (const key of Object.keys(json)) if (key !== 'metadata' && key !== 'weight_map') problems.push(`${key}: unknown field`);
  const metadata = json['metadata'];
  const totalSize = isObject(metadata) ? metadata['total_size'] : undefined;
  if (typeof totalSize !== 'number') problems.push(`metadata.total_size: expected number, got ${JSON.stringify(totalSize) ?? 'nothing'}`);
  const weightMap = json['weight_map'];
  const groups = new Map<string, string[]>();
  if (!isObject(weightMap)) problems.push(`weight_map: expected object, got ${JSON.stringify(weightMap) ?? 'nothing'}`);
  else {
    for (const [key, value] of Object.entries(weightMap)) {
      const files = typeof value === 'string' ? [value] : value;
      // Shard names are file names in the preset directory: not empty, not `.` or `..`, no separators.
      const valid = Array.isArray(files) && files.length > 0 && files.every((f) => typeof f === 'string' && segmentProblem(f) === null);
      if (!key.startsWith('/') || !valid) {
        problems.push(`weight_map.${key}: expected "/<group path>" -> shard file name or list of them, got ${JSON.stringify(value)}`);
      } else groups.set(key.slice(1), files as string[]);
    }
  }
  if (problems.length > 0) throw new FormatError(file, 'weight_map', problems.slice(0, 20).map((p) => `${file}: ${p}`).join('\n') + more(problems));
  return { totalSize: totalSize as number, groups };
}

/** The map and the shards must agree: keras loads each listed group from the listed shards, and only those. */
function checkShardMap(file: string, map: ShardMap, indexes: readonly H5Index[], weights: KerasWeights): void {
  const problems: string[] = [];
  for (const [group, shards] of map.groups) {
    for (const shard of shards) {
      const index = indexes.find((i) => path.basename(i.file) === shard);
      if (index !== undefined && !index.groupAttrs.has(group)) problems.push(`weight_map lists /${group} in ${shard}, which has no such group`);
    }
  }
  for (const w of weights.values()) {
    const shards = map.groups.get(parentPath(w.path));
    if (shards === undefined) problems.push(`dataset "${w.path}" (in ${path.basename(w.file)}) is not in weight_map: keras would not load it`);
    else if (!shards.includes(path.basename(w.file))) {
      problems.push(`dataset "${w.path}" is in ${path.basename(w.file)}, but weight_map lists /${parentPath(w.path)} in ${shards.join(', ')}`);
    }
  }
  const bytes = [...weights.values()].reduce((n, w) => n + w.byteLength, 0);
  if (bytes !== map.totalSize) problems.push(`metadata.total_size is ${map.totalSize} bytes, the shards hold ${bytes}`);
  if (problems.length > 0) throw new FormatError(file, 'weight_map', problems.slice(0, 20).map((p) => `${file}: ${p}`).join('\n') + more(problems));
}

/** A count of the problems past the 20 listed (a crafted map can have millions). */
const more = (problems: readonly string[]): string => (problems.length > 20 ? `\n(and ${problems.length - 20} more)` : '');

// ---------------------------------------------------------------------------------------------------------------
// config.json and metadata.json
// ---------------------------------------------------------------------------------------------------------------

/** The backbone config of a preset, from its `config.json` (strict: see checkpoints/config.ts). */
export function readPresetConfig(presetDir: string): PaliGemmaConfig {
  const file = path.join(presetDir, CONFIG_FILE);
  return guarded(file, () => decodeConfig(readJsonFile(file, MAX_CONFIG_BYTES), file));
}

/** What `metadata.json` says; informational, so only the types of the fields we know are checked. */
export interface PresetMetadata {
  readonly keras_version?: string;
  /** keras_hub, or keras_nlp for presets saved before the rename. */
  readonly keras_hub_version?: string;
  readonly keras_nlp_version?: string;
  readonly parameter_count?: number;
  readonly date_saved?: string;
  readonly tasks?: readonly string[];
  readonly [key: string]: unknown;
}

const METADATA_TYPES: Readonly<Record<string, (u: unknown) => boolean>> = {
  keras_version: (u) => typeof u === 'string',
  keras_hub_version: (u) => typeof u === 'string',
  keras_nlp_version: (u) => typeof u === 'string',
  parameter_count: (u) => Number.isSafeInteger(u) && (u as number) >= 0,
  date_saved: (u) => typeof u === 'string',
  tasks: (u) => Array.isArray(u) && u.every((x) => typeof x === 'string'),
};

/** The preset's `metadata.json`, or null when there is none (it is optional for loading). */
export function readPresetMetadata(presetDir: string): PresetMetadata | null {
  const file = path.join(presetDir, METADATA_FILE);
  if (!fs.existsSync(file)) return null;
  const json = readJson(file);
  if (typeof json !== 'object' || json === null || Array.isArray(json)) throw new Error(`${file}: expected an object, got ${JSON.stringify(json)}`);
  const record = json as Record<string, unknown>;
  const problems = Object.entries(METADATA_TYPES)
    .filter(([key, ok]) => key in record && !ok(record[key]))
    .map(([key]) => `${file}: ${key}: unexpected value ${JSON.stringify(record[key])}`);
  if (problems.length > 0) throw new Error(problems.join('\n'));
  return record as PresetMetadata;
}

function readJson(file: string): unknown {
  return readJsonFile(file, MAX_CONFIG_BYTES);
}
