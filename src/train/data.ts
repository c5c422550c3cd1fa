/**
 * Fine-tuning data: `{image, prefix, suffix}` records (big_vision's and the common PaliGemma fine-tuning
 * datasets' JSONL form, image paths relative to the JSONL file) or in-memory arrays, batched through
 * keras_hub's training preprocessor (`packTrainingBatch` + the image converter).
 *
 * Batching is a pure function of (dataset, shuffle key, position): epoch e visits the examples in the
 * order `epochOrder(n, key, e)` (Fisher-Yates driven by Threefry bits of `foldIn(key, e)`), and a
 * `DataPosition` {epoch, offset} says where the next batch starts. A checkpoint stores the position, so a
 * resumed run sees exactly the batches an uninterrupted one would.
 *
 * Prompts: a prefix gets a trailing "\n" when it has none (big_vision and Hugging Face's processor put a
 * newline between prefix and suffix; keras_hub users write it into the prompt). Truncation is never silent:
 * a row longer than the sequence length is an error unless `truncate: true`, which trims it as keras_hub does
 * (round robin) and counts it.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { tf } from '../../dsl/tf';
import * as d from '../../dsl';
import type { Key } from '../../dsl';
import { convertImage, type ImageSource } from '../preprocess/image';
import { packTrainingBatch, type SpecialIds } from '../preprocess/packing';
import type { Tokenizer } from '../text/tokenizer';
import type { TrainBatch } from './api';

// ---------------------------------------------------------------------------------------------------------
// Records
// ---------------------------------------------------------------------------------------------------------

export interface Example {
  /** An image file path (absolute, or resolved against the JSONL's folder), PNG/JPEG bytes, or raw pixels. */
  readonly image: ImageSource;
  readonly prefix: string;
  readonly suffix: string;
  /** Where the record came from, for errors: `file:line`, or `examples[i]`. */
  readonly source: string;
}

export interface Dataset {
  readonly examples: readonly Example[];
  /** The JSONL file, or a label for in-memory data. */
  readonly name: string;
}

const describe = (v: unknown): string => (v === undefined ? 'missing' : `${JSON.stringify(v)?.slice(0, 40)} (${Array.isArray(v) ? 'array' : typeof v})`);

function checkText(value: unknown, field: 'prefix' | 'suffix', where: string): string {
  if (typeof value !== 'string') throw new Error(`${where}: "${field}" must be a string, got ${describe(value)}`);
  // an empty suffix gives no response token to learn but the eos: almost always a broken record
  if (field === 'suffix' && value.length === 0) throw new Error(`${where}: "suffix" is empty`);
  return value;
}

/** In-memory records (`image` may be a path, bytes or raw pixels), checked like JSONL lines. */
export function datasetFromArray(records: readonly { readonly image: ImageSource; readonly prefix: string; readonly suffix: string }[], name = 'examples'): Dataset {
  if (records.length === 0) throw new Error(`${name}: no examples`);
  const examples = records.map((r, i): Example => {
    const where = `${name}[${i}]`;
    if (r === null || typeof r !== 'object') throw new Error(`${where}: not a record, got ${describe(r)}`);
    if (r.image === undefined || r.image === null) throw new Error(`${where}: "image" is missing`);
    if (typeof r.image === 'string' && !fs.existsSync(r.image)) throw new Error(`${where}: image '${r.image}' does not exist`);
    return { image: r.image, prefix: checkText(r.prefix, 'prefix', where), suffix: checkText(r.suffix, 'suffix', where), source: where };
  });
  return { examples, name };
}

/**
 * A JSONL file of `{"image": "relative/or/absolute.png", "prefix": "...", "suffix": "..."}` lines (blank
 * lines skipped, other fields ignored). Every line is parsed and checked, and every image must exist, before
 * anything is returned; images are decoded when batched, and a decoding error names the file and line too.
 */
export function readJsonl(file: string): Dataset {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new Error(`${file}: cannot read (${(e as Error).message})`);
  }
  const dir = path.dirname(file);
  const examples: Example[] = [];
  text.split('\n').forEach((raw, i) => {
    const line = raw.replace(/\r$/, '');
    if (line.trim() === '') return;
    const where = `${file}:${i + 1}`;
    let json: unknown;
    try {
      json = JSON.parse(line);
    } catch (e) {
      throw new Error(`${where}: bad JSON (${(e as Error).message})`);
    }
    if (json === null || typeof json !== 'object' || Array.isArray(json)) throw new Error(`${where}: expected a JSON object, got ${describe(json)}`);
    const r = json as Record<string, unknown>;
    if (typeof r.image !== 'string' || r.image === '') throw new Error(`${where}: "image" must be a file path, got ${describe(r.image)}`);
    const image = path.resolve(dir, r.image);
    if (!fs.existsSync(image)) throw new Error(`${where}: image '${r.image}' does not exist (looked for ${image})`);
    examples.push({ image, prefix: checkText(r.prefix, 'prefix', where), suffix: checkText(r.suffix, 'suffix', where), source: where });
  });
  if (examples.length === 0) throw new Error(`${file}: no examples`);
  return { examples, name: file };
}

/** The prompt keras_hub's preprocessor gets for a prefix: the prefix with a trailing newline. */
export const promptOf = (prefix: string): string => (prefix.endsWith('\n') ? prefix : `${prefix}\n`);

// ---------------------------------------------------------------------------------------------------------
// Order
// ---------------------------------------------------------------------------------------------------------

/**
 * The order of epoch `epoch`: a permutation of 0..n-1 by Fisher-Yates, its draws `uint32 % (i + 1)` from
 * Threefry under `foldIn(key, epoch)` (the modulo bias, < (i+1) / 2^32, is irrelevant for shuffling). No key:
 * the file order.
 */
export function epochOrder(n: number, key: Key | undefined, epoch: number): Int32Array {
  const order = Int32Array.from({ length: n }, (_, i) => i);
  if (!key) return order;
  const k = d.foldIn(key, epoch);
  for (let i = n - 1; i > 0; i--) {
    const j = d.threefry2x32(k, 3, i)[0] % (i + 1);
    const t = order[i];
    order[i] = order[j];
    order[j] = t;
  }
  return order;
}

/** Where the next batch starts: `offset` examples of epoch `epoch` have been used. */
export interface DataPosition {
  readonly epoch: number;
  readonly offset: number;
}
export const DATA_START: DataPosition = { epoch: 0, offset: 0 };

// ---------------------------------------------------------------------------------------------------------
// Batches
// ---------------------------------------------------------------------------------------------------------

export interface BatchOptions {
  readonly tokenizer: Tokenizer;
  /** The model's image size (config.image_size). */
  readonly imageSize: number;
  readonly batchSize: number;
  /**
   * Text positions per row (keras_hub's `sequence_length`): a number, or 'longest' for the longest row of
   * each batch (`1 + prompt + response` tokens: bos, the prompt, the response; the eos is the last target).
   */
  readonly sequenceLength: number | 'longest';
  /** With 'longest': never more than this (rows above it are truncated or refused like fixed lengths). */
  readonly maxSequenceLength?: number;
  /** Trim over-long rows as keras_hub does (round robin) and count them; default false: an error. */
  readonly truncate?: boolean;
  /** Shuffle with this key (one permutation per epoch); none: file order. */
  readonly shuffle?: Key;
  /** Drop the last, smaller batch of each epoch (default false: it is used, so shapes vary). */
  readonly dropRemainder?: boolean;
  /** keras_hub's converter crops to the aspect ratio first (default true). */
  readonly cropToAspectRatio?: boolean;
  /** Give prefixes to the preprocessor as they are (keras_hub's `prompts`); default: `promptOf(prefix)`. */
  readonly verbatimPrompts?: boolean;
}

/** A batch on the host, before tensors: the model inputs and targets, plus where its rows came from. */
export interface HostBatch {
  readonly images: Float32Array;
  readonly tokenIds: Int32Array;
  readonly paddingMask: Int32Array;
  readonly responseMask: Int32Array;
  readonly y: Int32Array;
  readonly sampleWeight: Int32Array;
  /** [batch, seq]. */
  readonly shape: [number, number];
  readonly imageSize: number;
  /** Indices into `dataset.examples`. */
  readonly rows: readonly number[];
  /** Rows that were trimmed to fit (only with `truncate: true`). */
  readonly truncated: number;
  /** Target tokens that carry weight (response tokens and the eos). */
  readonly targetTokens: number;
}

export function checkBatchOptions(o: BatchOptions): void {
  if (!Number.isInteger(o.batchSize) || o.batchSize < 1) throw new Error(`batchSize must be a positive integer, got ${o.batchSize}`);
  if (o.sequenceLength !== 'longest' && (!Number.isInteger(o.sequenceLength) || o.sequenceLength < 2)) {
    throw new Error(`sequenceLength must be an integer >= 2 or 'longest', got ${o.sequenceLength}`);
  }
  if (o.maxSequenceLength !== undefined && (!Number.isInteger(o.maxSequenceLength) || o.maxSequenceLength < 2)) {
    throw new Error(`maxSequenceLength must be an integer >= 2, got ${o.maxSequenceLength}`);
  }
}

/** How many batches an epoch has. */
export function batchesPerEpoch(data: Dataset, o: Pick<BatchOptions, 'batchSize' | 'dropRemainder'>): number {
  const n = data.examples.length;
  const full = Math.floor(n / o.batchSize);
  if (o.dropRemainder) {
    if (full === 0) throw new Error(`${data.name}: ${n} examples, fewer than one batch of ${o.batchSize} (and dropRemainder is set)`);
    return full;
  }
  return Math.ceil(n / o.batchSize);
}

/** The rows of the batch at `position`, and the position after it (moving to the next epoch at its end). */
export function batchRows(data: Dataset, o: Pick<BatchOptions, 'batchSize' | 'dropRemainder' | 'shuffle'>, position: DataPosition): { rows: number[]; next: DataPosition } {
  const n = data.examples.length;
  let { epoch, offset } = position;
  const left = n - offset;
  if (left <= 0 || (o.dropRemainder && left < o.batchSize)) {
    epoch++;
    offset = 0;
  }
  const order = epochOrder(n, o.shuffle, epoch);
  const rows = Array.from(order.subarray(offset, Math.min(n, offset + o.batchSize)));
  const end = offset + rows.length;
  return { rows, next: end >= n || (o.dropRemainder && n - end < o.batchSize) ? { epoch: epoch + 1, offset: 0 } : { epoch, offset: end } };
}

/**
 * Tokenize, pack and convert the given rows: keras_hub's `PaliGemmaCausalLMPreprocessor` in training mode.
 * Errors name the record (`file:line`).
 */
export function makeBatch(data: Dataset, rows: readonly number[], o: BatchOptions): HostBatch {
  checkBatchOptions(o);
  const tk = o.tokenizer;
  const special: SpecialIds = { pad: tk.padId, eos: tk.eosId, bos: tk.bosId };
  const prompts: number[][] = [];
  const responses: number[][] = [];
  for (const r of rows) {
    const ex = data.examples[r];
    prompts.push(tk.encode(o.verbatimPrompts ? ex.prefix : promptOf(ex.prefix)));
    responses.push(tk.encode(ex.suffix));
  }
  // training packs [bos] prompt response [eos] to L + 1, so a row fits in L = 1 + prompt + response
  const needed = prompts.map((p, i) => 1 + p.length + responses[i].length);
  let L: number;
  if (o.sequenceLength === 'longest') {
    L = Math.max(...needed);
    if (o.maxSequenceLength !== undefined) L = Math.min(L, o.maxSequenceLength);
  } else {
    L = o.sequenceLength;
  }
  let truncated = 0;
  needed.forEach((n, i) => {
    if (n <= L) return;
    if (!o.truncate) {
      const ex = data.examples[rows[i]];
      throw new Error(
        `${ex.source}: prompt and response are ${n} tokens with <bos> (${prompts[i].length} + ${responses[i].length}, plus the <eos> target); ` +
          `the sequence length ${L} would truncate them (raise the sequence length, or allow truncation)`,
      );
    }
    truncated++;
  });
  const packed = packTrainingBatch(prompts, responses, L, special);
  const plane = o.imageSize * o.imageSize * 3;
  const images = new Float32Array(rows.length * plane);
  rows.forEach((r, b) => {
    const ex = data.examples[r];
    try {
      images.set(convertImage(ex.image, o.imageSize, { cropToAspectRatio: o.cropToAspectRatio }), b * plane);
    } catch (e) {
      throw new Error(`${ex.source}: image ${typeof ex.image === 'string' ? `'${ex.image}' ` : ''}cannot be used: ${(e as Error).message}`);
    }
  });
  let targetTokens = 0;
  for (const w of packed.sampleWeight) targetTokens += w;
  return {
    images,
    tokenIds: packed.tokenIds,
    paddingMask: packed.paddingMask,
    responseMask: packed.responseMask,
    y: packed.y,
    sampleWeight: packed.sampleWeight,
    shape: packed.shape,
    imageSize: o.imageSize,
    rows,
    truncated,
    targetTokens,
  };
}

/** The batch at `position` and the position after it. */
export function batchAt(data: Dataset, o: BatchOptions, position: DataPosition): { batch: HostBatch; next: DataPosition } {
  const { rows, next } = batchRows(data, o, position);
  return { batch: makeBatch(data, rows, o), next };
}

/** Batches of one epoch, in order (for evaluation). */
export function* epochBatches(data: Dataset, o: BatchOptions, epoch = 0): Generator<HostBatch> {
  let p: DataPosition = { epoch, offset: 0 };
  for (let i = 0; i < batchesPerEpoch(data, o); i++) {
    const { batch, next } = batchAt(data, o, p);
    yield batch;
    p = next;
  }
}

/** The model's tensors for a host batch (the caller disposes them, e.g. `tf.dispose(d.collectTensors(b))`). */
export function toTensors(b: HostBatch): TrainBatch {
  const [B, L] = b.shape;
  const S = b.imageSize;
  const seq = ['batch', 'seq'] as const;
  return {
    images: d.named(tf.tensor4d(b.images, [B, S, S, 3]), ['batch', 'height', 'width', 'channels'] as const),
    token_ids: d.named(tf.tensor2d(b.tokenIds, [B, L], 'int32'), seq),
    padding_mask: d.named(tf.tensor2d(b.paddingMask, [B, L], 'int32'), seq),
    response_mask: d.named(tf.tensor2d(b.responseMask, [B, L], 'int32'), seq),
    y: d.named(tf.tensor2d(b.y, [B, L], 'int32'), seq),
    sample_weight: d.named(tf.tensor2d(Float32Array.from(b.sampleWeight), [B, L], 'float32'), seq),
  };
}
