/**
 * Compiled generation: `prefill` and `decodeStep` (generate.ts) as two d.jit sessions, so a whole
 * `generate` runs two onnxruntime sessions (one prefill graph per prompt width, one decode-step graph).
 *
 * The eager functions take host arrays and build their masks, gather rows and RoPE tables on the host.
 * Under jit those would be baked into the graph as constants of the first call, so here every per-call host
 * value is built on the host by the wrapper and passed in as a tensor: token ids, the padding mask, the
 * rows holding each prompt's last position, cache positions (RoPE angles then computed in the graph,
 * float32 as keras_hub; ONNX's float32 sin/cos are within an ulp of the host's), the visibility masks and
 * the cache write mask. Only shapes and static options (buffer length, compat) select a graph.
 */
import { tf } from '../../dsl/tf';
import * as d from '../../dsl';
import type { Named } from '../../dsl';
import { imageSequenceLength } from '../../models/config';
import { backbone, decode, embedInputs, logits, type BackboneInputs, type Embedding, type PaliGemmaParams } from '../../models/paligemma';
import type { Images } from '../../models/siglip';
import { decodeLayers, int32Rows, lastPromptRows, prefillOutput, promptPaddingMask, stepInputs, type LayerCache, type StepInputs, type StepOutput, type TransposedEmbedding } from './generate';

type Rows2 = Named<readonly ['batch', 'seq']>;

interface PrefillTensors {
  readonly images: Images;
  readonly tokenIds: Rows2;
  readonly paddingMask: Rows2;
  /** int32 [batch]: b * (N + width) + N + P_b - 1, each row's last prompt position in the flat sequence. */
  readonly lastRows: Named<readonly ['batch']>;
}

/** The pure prefill: tensors in, logits and the zero-padded cache out. */
function prefillPure(p: PaliGemmaParams, x: PrefillTensors, length: number, compat: 'keras_hub' | null): StepOutput {
  const batch = x.tokenIds.size('batch');
  const width = x.tokenIds.size('seq');
  const responseMask = d.named(tf.zeros([batch, width], 'int32'), ['batch', 'seq'] as const);
  const h0 = embedInputs(p, { images: x.images, token_ids: x.tokenIds, padding_mask: x.paddingMask, response_mask: responseMask });
  const { x: h, cache } = decode(p, h0, x.paddingMask, responseMask, { compat: compat ?? undefined });
  return prefillOutput(p, h, cache, x.lastRows.tensor as tf.Tensor1D, length);
}

/** The decode step as a graph: positions are a tensor (host positions would be constants of the trace). */
function decodeStepPure(p: PaliGemmaParams, cache: readonly LayerCache[], x: StepInputs & { readonly positions: Rows2 }, compat: 'keras_hub' | null, transposed: TransposedEmbedding | null): StepOutput {
  return decodeLayers(p, cache, x, compat ?? undefined, transposed ?? undefined);
}

/** The backbone's sequence_output and the causal LM's logits in one graph. */
function forwardPure(p: PaliGemmaParams, x: BackboneInputs, compat: 'keras_hub' | null) {
  const sequence_output = backbone(p, x, { compat: compat ?? undefined });
  return { sequence_output, logits: logits(p, sequence_output) };
}

/**
 * Int8 weights (`quantize: 'int8'`): the same pure functions compiled with every weight matMul as an int8
 * MatMulNBits (dsl/onnx/int8.ts), the weights quantized once per params object. Decode is memory-bound, so
 * reading a quarter of the bytes is what makes it fast; prefill runs the int8 GEMM (VNNI), ~2x float32.
 */
export type Quantize = 'int8';
const INT8 = { weights: 0 } as const;

const forwardJit = d.jit(forwardPure, { name: 'forward' });
const forwardInt8Jit = d.jit(forwardPure, { name: 'forward_int8', int8: INT8 });

/** sequence_output [batch, N + T, embed] and logits [batch, T, vocab], compiled (one session per input shape). */
export const forwardCompiled = (p: PaliGemmaParams, x: BackboneInputs, compat?: 'keras_hub', quantize?: Quantize) =>
  (quantize === 'int8' ? forwardInt8Jit : forwardJit)(p, x, compat ?? null);

const prefillJit = d.jit(prefillPure, { name: 'prefill' });
const prefillInt8Jit = d.jit(prefillPure, { name: 'prefill_int8', int8: INT8 });
const transposeJit = d.jit((table: Embedding): TransposedEmbedding => table.map((shard) => d.named(tf.transpose(shard.tensor), ['embed', 'vocab'] as const)), { name: 'transpose_embedding', memArena: false });

/**
 * The tied embedding transposed, [embed, vocab] per shard, by onnxruntime (3B: 2.1 GB in ~1 s). With it a
 * decode step's logits are x . E^T, a MatMul that MLAS spreads over every thread at memory speed; E . x^T
 * (MatMul with a transposed B, one output column) ran at ~8 GB/s here: 250 of a 3B step's 530 ms. The
 * caller disposes it.
 */
export const transposedEmbeddingCompiled = (p: PaliGemmaParams): TransposedEmbedding => transposeJit(p.token_embedding);
const decodeJit = d.jit(decodeStepPure, { name: 'decode_step' });
const decodeInt8Jit = d.jit(decodeStepPure, { name: 'decode_step_int8', int8: INT8 });

/** The sessions behind compiled generation (traces, stats), e.g. to check that decode traced once. */
export const compiledGeneration = {
  forward: forwardJit,
  prefill: prefillJit,
  decodeStep: decodeJit,
  transpose: transposeJit,
  int8: { forward: forwardInt8Jit, prefill: prefillInt8Jit, decodeStep: decodeInt8Jit },
};

/** generate.ts `prefill`, compiled: same arguments, same result. */
export function prefillCompiled(
  p: PaliGemmaParams,
  images: Images,
  tokenIds: readonly ArrayLike<number>[],
  promptLengths: readonly number[],
  length: number,
  compat?: 'keras_hub',
  quantize?: Quantize,
): StepOutput {
  const n = imageSequenceLength(p.config);
  const width = Math.max(...promptLengths);
  const x: PrefillTensors = {
    images,
    tokenIds: d.named(int32Rows(tokenIds, width), ['batch', 'seq'] as const),
    paddingMask: d.named(promptPaddingMask(promptLengths, width), ['batch', 'seq'] as const),
    lastRows: d.named(tf.tensor1d(lastPromptRows(n, width, promptLengths), 'int32'), ['batch'] as const),
  };
  try {
    return (quantize === 'int8' ? prefillInt8Jit : prefillJit)(p, x, length, compat ?? null);
  } finally {
    tf.dispose([x.tokenIds.tensor, x.paddingMask.tensor, x.lastRows.tensor]);
  }
}

/** generate.ts `decodeStep`, compiled: same arguments, same result. */
export function decodeStepCompiled(
  p: PaliGemmaParams,
  cache: readonly LayerCache[],
  tokenIds: readonly number[],
  cachePositions: readonly number[],
  active: readonly boolean[],
  compat?: 'keras_hub',
  transposed?: TransposedEmbedding,
  quantize?: Quantize,
): StepOutput {
  if (quantize && transposed) throw new Error('decodeStepCompiled: int8 decode reads the head from the (quantized) embedding; pass no transposed embedding');
  const x = stepInputs(p.config, tokenIds, cachePositions, active, cache[0].key.size('key_seq'), 'tensor') as StepInputs & { readonly positions: Rows2 };
  try {
    return (quantize === 'int8' ? decodeInt8Jit : decodeJit)(p, cache, x, compat ?? null, transposed ?? null);
  } finally {
    tf.dispose([...new Set(d.collectTensors(x))]);
  }
}
