/**
 * keras_hub's initializers for a PaliGemmaBackbone (`from_preset(..., load_weights=False)`):
 * - token embedding: VarianceScaling(1, fan_in, untruncated normal): N(0, 1 / vocabulary_size)
 *   (keras' fan_in of a 2-D [vocab, embed] variable is its first dimension);
 * - every kernel, the patch conv and the MAP probe: glorot_uniform, U(+-sqrt(6 / (fan_in + fan_out))) with
 *   keras' fans (rank > 2: receptive field = product of the leading dims);
 * - ViT position embedding: keras Embedding's default, U(-0.05, 0.05);
 * - biases and LayerNorm betas 0, LayerNorm gammas 1, RMSNorm scales 0 (they multiply by 1 + scale).
 * Values come from our explicit PRNG: same key, same params, on every backend.
 */
import * as d from '../dsl';
import type { Key } from '../dsl';
import { validateConfig, type PaliGemmaConfig } from '../models/config';
import type { PaliGemmaParams } from '../models/paligemma';
import { buildTree, kerasLayout, skeleton, type WeightSpec } from './params';

function fans(shape: readonly number[]): [number, number] {
  if (shape.length === 1) return [shape[0], shape[0]];
  if (shape.length === 2) return [shape[0], shape[1]];
  const rf = shape.slice(0, -2).reduce((a, b) => a * b, 1);
  return [shape[shape.length - 2] * rf, shape[shape.length - 1] * rf];
}

/** The values keras_hub's initializer would draw for one variable (in keras' layout). */
export function initialValues(s: WeightSpec, k: Key): Float32Array {
  const n = s.kerasShape.reduce((a, b) => a * b, 1);
  const leaf = s.keras.split('/').pop()!;
  if (leaf === 'bias' || leaf === 'beta' || leaf === 'scale') return new Float32Array(n);
  if (leaf === 'gamma') return new Float32Array(n).fill(1);
  const u = d.uniformBits(k, n);
  if (s.keras === 'token_embedding/embeddings') {
    const std = Math.sqrt(1 / s.kerasShape[0]);
    const v = d.uniformBits(d.foldIn(k, 1), n);
    // Box-Muller on (0, 1] x [0, 1)
    return Float32Array.from(u, (a, i) => std * Math.sqrt(-2 * Math.log(1 - a)) * Math.cos(2 * Math.PI * v[i]));
  }
  if (s.keras.endsWith('position_embedding/embeddings')) return Float32Array.from(u, (a) => (a * 2 - 1) * 0.05);
  const [fanIn, fanOut] = fans(s.kerasShape);
  const limit = Math.sqrt(6 / (fanIn + fanOut));
  return Float32Array.from(u, (a) => (a * 2 - 1) * limit);
}

/** Fresh params for a config, as keras_hub would initialise them (distributions, not bits). */
export function initParams(config: PaliGemmaConfig, k: Key): PaliGemmaParams {
  validateConfig(config); // before kerasLayout computes shapes from it
  const specs = kerasLayout(config);
  const keys = new Map(specs.map((s, i) => [s.h5, d.foldIn(k, i)] as const));
  return buildTree<PaliGemmaParams>(specs, (s) => initialValues(s, keys.get(s.h5)!), skeleton(config));
}
