/**
 * The multi-file writers under test by the kill test (atomic.spec.ts), each writing one of two versions of a
 * tiny checkpoint (every value 1 in version A, 2 in B), and a reader that says which version a directory
 * holds, checking that every file of it is of that one version.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { writeHfFiles, writeKerasPresetFiles } from '../../checkpoints/dirwrite';
import { readSafetensors, writeShardedSafetensors } from '../../checkpoints/safetensors';
import { readKerasWeights } from '../../checkpoints/keras';
import { decodeConfig } from '../../checkpoints/config';
import type { H5WriteDataset } from '../../checkpoints/h5write';

export const WRITERS = ['keras', 'hf-sharded', 'safetensors-sharded'] as const;
export type WriterName = (typeof WRITERS)[number];
export type Version = 'A' | 'B';

const value = (v: Version): number => (v === 'A' ? 1 : 2);
const N = 1 << 14; // 64 KiB per tensor: a write takes a few milliseconds
const KEYS = ['t0', 't1', 't2', 't3'];

const configJson = (): unknown => JSON.parse(fs.readFileSync('spec/fixtures/text/generate/preset/config.json', 'utf8'));

export function writeVersion(writer: WriterName, dir: string, v: Version): void {
  const values = () => new Float32Array(N).fill(value(v));
  switch (writer) {
    case 'keras': {
      const datasets = new Map<string, H5WriteDataset>(KEYS.map((k) => [`layers/${k}/vars/0`, { shape: [N], values: values() }]));
      const groups = new Map(KEYS.map((k) => [`layers/${k}/vars`, { name: k }]));
      const config = decodeConfig(configJson());
      writeKerasPresetFiles(dir, { ...config, vit_name: `version_${v}` }, datasets, groups);
      return;
    }
    case 'hf-sharded':
      writeHfFiles(dir, { model_type: 'paligemma', version: v }, KEYS.map((k) => [k, { shape: [N], values: values() }] as const), 2 * N * 4);
      return;
    case 'safetensors-sharded':
      writeShardedSafetensors(dir, KEYS.map((k) => [k, { shape: [N], values: values() }] as const), N * 4);
      return;
  }
}

/** The version `dir` holds, complete and unmixed; throws otherwise. */
export function readVersion(writer: WriterName, dir: string): Version {
  const versions = new Set<string>();
  const add = (values: Float32Array) => {
    for (const x of new Set(values)) versions.add(x === 1 ? 'A' : x === 2 ? 'B' : `value ${x}`);
  };
  switch (writer) {
    case 'keras': {
      const weights = readKerasWeights(dir);
      if (weights.size !== KEYS.length) throw new Error(`${dir}: ${weights.size} weights`);
      for (const w of weights.values()) add(w.read());
      const config = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8')) as { config: { vit_name: string } };
      versions.add(config.config.vit_name.slice(-1));
      break;
    }
    case 'hf-sharded':
    case 'safetensors-sharded': {
      const tensors = readSafetensors(dir);
      if (tensors.size !== KEYS.length) throw new Error(`${dir}: ${tensors.size} tensors`);
      for (const t of tensors.values()) add(t.read());
      if (writer === 'hf-sharded') versions.add((JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8')) as { version: string }).version);
      break;
    }
  }
  if (versions.size !== 1) throw new Error(`${dir}: mixed versions ${[...versions].join(', ')}`);
  return [...versions][0] as Version;
}
