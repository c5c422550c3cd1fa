/**
 * paligemma-ts: the public API. One CommonJS bundle (dist/index.js) with one copy of TensorFlow.js inside,
 * re-exported as `tf`: use it, not a separately installed @tensorflow/tfjs-core, so tensors from both sides
 * belong to the same engine.
 */
export { tf } from '../dsl/tf';
export * from './runtime/backend';
export { main } from './cli/cli';

// the named-tensor DSL
export * as d from '../dsl';
export type { Named, Key } from '../dsl';

// models
export * from '../models/config';
export { backbone, logits, tokenEmbedding, lookup, unembed, prefixLmMask, embedInputs, type Embedding, type PaliGemmaParams, type BackboneInputs, type BackboneOptions } from '../models/paligemma';
export { vit, encode as vitEncode } from '../models/siglip';

// checkpoints
export { kerasLayout, decodeParams, encodeParams, parameterCount } from '../checkpoints/params';
export { initParams } from '../checkpoints/init';
export { saveKerasPreset } from '../checkpoints/save';
export { decodeConfig, encodeConfig } from '../checkpoints/config';
export { readKerasWeights, readPresetConfig } from '../checkpoints/keras';
export { FormatError } from '../checkpoints/errors';
export { MAX_IMAGE_PIXELS } from './preprocess/image';

// presets, text, images, generation, training
export * from './runtime/preset';
export { PRESETS, SHIPPED_PRESETS, findPreset, findShippedPreset, presetNames, type PresetInfo, type ShippedPreset } from '../checkpoints/presets';
export * from './text/tokenizer';
export * from './preprocess/image';
export * from './preprocess/packing';
export * from './preprocess/outputs';
export * from './generate/generate';
export * from './generate/causal_lm';
export type { TrainBatch, LossReport, Optimizer, OptimizerState, Schedule, RunKeys } from './train/api';
export * from './train/step';
export { causalLmLoss, defaultLossChunk, type LossOptions } from './train/loss';
export { adam, adamw, sgd, clipByGlobalNorm, clipByGlobalNormAsync, disposeState, kerasVariableName, type AdamOptions, type AdamWOptions, type SgdOptions } from './train/optim';
export { constant, warmupLinear, warmupCosine, type WarmupOptions } from './train/schedule';
export * from './train/select';
export { enableLora, withAdapters, adaptersOf, adaptedLayers, loraTargets, loraTrainable, loraSpecs, mergeLora, type LoraOptions } from './train/lora';
export { loraKernel, type LoraParams } from '../models/lora';
export { readLoraH5, writeLoraH5, readLoraSafetensors, writeLoraSafetensors, loraLayers, kerasLayerIndex, DEFAULT_LORA_LAYER_NAMES, type LoraFile, type LoraLayer, type AdapterValues } from '../checkpoints/lora';
export * from './train/data';
export * from './train/fit';
export * from './train/evaluate';
export * from './train/checkpoint';
export * from './train/progress';
export * from './train/plot';
export * from './generate/save';
export { encodeModelProto } from './text/spm_write';
export { computeFixture, readManifest, readBin, writeComputed } from './cli/fixture';

// notebooks: parameter tables and detection drawings (named tensors print themselves: dsl/named.ts)
export * from './notebook/summary';
export * from './notebook/draw';
