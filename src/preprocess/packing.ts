/**
 * Token packing of keras_hub's `PaliGemmaCausalLMPreprocessor`, on token ids (tokenizing is not done here).
 *
 * Reference: keras_hub 71453d08 `pali_gemma_causal_lm_preprocessor.py` (`_call_python`,
 * `_generate_preprocess_python`), `MultiSegmentPacker` (python workflow, `truncate="round_robin"`,
 * `sep_value=[]`) and `causal_lm_preprocessor.py` (`_generate_postprocess_python`, `strip_to_ragged_python`).
 * Rules and worked examples: spec/fixtures/text/README.md, section 2. With L = `sequenceLength`:
 *
 *   training    pack `[bos] prompt response [eos]` to L + 1 (prompt + response budget L - 1, trimmed
 *               round robin), then shift: inputs are the first L, targets `y` the last L;
 *   generation  pack `[bos] prompt (response)` to L, no eos (budget L - 1);
 *   postprocess drop padded positions, then special ids; what is left goes to the detokenizer.
 *
 * Outputs are flat row-major `Int32Array`s of shape `[B, L]` plus that shape; masks are 0/1 (SEMANTICS.md:
 * masks are int32, read as `!= 0`). The single-row functions return B = 1.
 */

// ---------------------------------------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------------------------------------

/** Token ids of one sequence: a plain array or any typed array. */
export type Ids = ArrayLike<number>;

export interface SpecialIds {
  readonly bos: number;
  readonly eos: number;
  readonly pad: number;
}

/** Gemma's (and this project's test tokenizer's) special ids: `<pad>` 0, `<eos>` 1, `<bos>` 2. */
export const GEMMA_SPECIAL_IDS: SpecialIds = { pad: 0, eos: 1, bos: 2 };

/** `tokenizer.special_token_ids` of PaliGemma: the ids generatePostprocess strips. */
export const specialTokenIds = (special: SpecialIds = GEMMA_SPECIAL_IDS): number[] => [special.pad, special.eos, special.bos];

/** `preprocessor(x)`: the model inputs `x` (token ids and masks), the targets `y` and their weights. */
export interface TrainingBatch {
  /** int32[B, L]: `[bos] prompt response [eos]`, right-padded, cut to L. */
  readonly tokenIds: Int32Array;
  /** int32[B, L]: `tokenIds != pad`. */
  readonly paddingMask: Int32Array;
  /** int32[B, L]: 1 on response tokens and the eos (segment 1). */
  readonly responseMask: Int32Array;
  /** int32[B, L]: the next token, `seq[1:]`. */
  readonly y: Int32Array;
  /** int32[B, L]: 1 where the target `y` is a response token or the eos, `(segment == 1)[1:]`. */
  readonly sampleWeight: Int32Array;
  readonly shape: [number, number];
}

/** `generate_preprocess(x)`: the prompt to prefill (plus a response prefix, if one was given). */
export interface GenerationBatch {
  /** int32[B, L]: `[bos] prompt (response)`, right-padded, no eos. */
  readonly tokenIds: Int32Array;
  /** int32[B, L]: `tokenIds != pad`. */
  readonly paddingMask: Int32Array;
  /** int32[B, L]: 1 on the given response tokens; all 0 without responses. */
  readonly responseMask: Int32Array;
  readonly shape: [number, number];
}

// ---------------------------------------------------------------------------------------------------------
// Truncation and packing of one row
// ---------------------------------------------------------------------------------------------------------

/**
 * How many tokens of each segment survive `MultiSegmentPacker`'s round-robin trimming to `budget`: the
 * budget is handed out one token at a time, segment 0, 1, 0, 1, ..., skipping exhausted segments. (keras_hub
 * keeps the tokens whose priority `k * numSegments + s` is at most a cutoff; this is the same allocation.)
 */
export function roundRobinKeep(lengths: readonly number[], budget: number): number[] {
  const keep = lengths.map(() => 0);
  let left = Math.max(0, budget);
  for (let k = 0; left > 0; k++) {
    let any = false;
    for (let s = 0; s < lengths.length && left > 0; s++) {
      if (k < lengths[s]) {
        keep[s]++;
        left--;
        any = true;
      }
    }
    if (!any) break; // everything fits
  }
  return keep;
}

/**
 * `MultiSegmentPacker` on one row: `[start] seg0 seg1 ... [end]` (no separators), trimmed round robin to
 * fit `length`, right-padded with `pad`. Segment ids: the start token belongs to segment 0, the end token to
 * the last segment, padding is 0.
 */
function packRow(
  segments: readonly Ids[],
  length: number,
  start: number,
  end: number | null,
  pad: number,
): { tokens: number[]; segmentIds: number[] } {
  const budget = length - 1 - (end === null ? 0 : 1);
  const keep = roundRobinKeep(
    segments.map((s) => s.length),
    budget,
  );
  const tokens = [start];
  const segmentIds = [0];
  segments.forEach((segment, s) => {
    for (let i = 0; i < keep[s]; i++) {
      tokens.push(segment[i]);
      segmentIds.push(s);
    }
  });
  if (end !== null) {
    tokens.push(end);
    segmentIds.push(segments.length - 1);
  }
  while (tokens.length < length) {
    tokens.push(pad);
    segmentIds.push(0);
  }
  return { tokens, segmentIds };
}

// ---------------------------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------------------------

function checkLength(sequenceLength: number, who: string): void {
  if (!Number.isInteger(sequenceLength) || sequenceLength < 1) {
    throw new Error(`${who}: sequenceLength must be a positive integer, got ${sequenceLength}`);
  }
}

function checkIds(ids: Ids, what: string, who: string): void {
  for (let i = 0; i < ids.length; i++) {
    const v = ids[i];
    if (!Number.isInteger(v) || v < 0 || v > 0x7fffffff) {
      throw new Error(`${who}: ${what}[${i}] is ${v}, not a token id (a non-negative int32)`);
    }
  }
}

function checkRows(a: readonly unknown[], b: readonly unknown[] | undefined, who: string): void {
  if (b !== undefined && a.length !== b.length) {
    throw new Error(`${who}: ${a.length} prompts but ${b.length} responses`);
  }
}

// ---------------------------------------------------------------------------------------------------------
// Training
// ---------------------------------------------------------------------------------------------------------

/**
 * `PaliGemmaCausalLMPreprocessor(x)` for a batch of (prompt, response) rows: packs to L + 1 with bos and
 * eos, then splits into inputs `seq[:L]` and targets `seq[1:]`. The eos therefore only appears in `y`, and
 * only when the row is full; `sampleWeight` is 1 at the last prompt position (its target is the first
 * response token) and at position 0 when the prompt is empty.
 */
export function packTrainingBatch(
  prompts: readonly Ids[],
  responses: readonly Ids[],
  sequenceLength: number,
  special: SpecialIds = GEMMA_SPECIAL_IDS,
): TrainingBatch {
  const who = 'packTraining';
  checkLength(sequenceLength, who);
  checkRows(prompts, responses, who);
  const B = prompts.length;
  const L = sequenceLength;
  const tokenIds = new Int32Array(B * L);
  const paddingMask = new Int32Array(B * L);
  const responseMask = new Int32Array(B * L);
  const y = new Int32Array(B * L);
  const sampleWeight = new Int32Array(B * L);
  for (let b = 0; b < B; b++) {
    checkIds(prompts[b], `prompts[${b}]`, who);
    checkIds(responses[b], `responses[${b}]`, who);
    // One extra position so that inputs and shifted targets both have length L.
    const { tokens, segmentIds } = packRow([prompts[b], responses[b]], L + 1, special.bos, special.eos, special.pad);
    for (let i = 0; i < L; i++) {
      tokenIds[b * L + i] = tokens[i];
      // keras: `token_ids != pad_token_id`, so a pad id inside a prompt is masked too (faithfully kept).
      paddingMask[b * L + i] = tokens[i] !== special.pad ? 1 : 0;
      responseMask[b * L + i] = segmentIds[i] === 1 ? 1 : 0;
      y[b * L + i] = tokens[i + 1];
      sampleWeight[b * L + i] = segmentIds[i + 1] === 1 ? 1 : 0;
    }
  }
  return { tokenIds, paddingMask, responseMask, y, sampleWeight, shape: [B, L] };
}

/** `packTrainingBatch` for one row: shapes `[1, L]`. */
export function packTraining(
  promptIds: Ids,
  responseIds: Ids,
  sequenceLength: number,
  special: SpecialIds = GEMMA_SPECIAL_IDS,
): TrainingBatch {
  return packTrainingBatch([promptIds], [responseIds], sequenceLength, special);
}

// ---------------------------------------------------------------------------------------------------------
// Generation
// ---------------------------------------------------------------------------------------------------------

/**
 * `generate_preprocess(x)` for a batch: `[bos] prompt` (+ `response` when responses are given, as a prefix
 * the model continues) packed to L with no eos, round-robin budget L - 1.
 */
export function packGenerationBatch(
  prompts: readonly Ids[],
  responses: readonly Ids[] | undefined,
  sequenceLength: number,
  special: SpecialIds = GEMMA_SPECIAL_IDS,
): GenerationBatch {
  const who = 'packGeneration';
  checkLength(sequenceLength, who);
  checkRows(prompts, responses, who);
  const B = prompts.length;
  const L = sequenceLength;
  const tokenIds = new Int32Array(B * L);
  const paddingMask = new Int32Array(B * L);
  const responseMask = new Int32Array(B * L);
  for (let b = 0; b < B; b++) {
    checkIds(prompts[b], `prompts[${b}]`, who);
    if (responses) checkIds(responses[b], `responses[${b}]`, who);
    // Without responses keras packs a single segment, so the prompt alone gets the whole budget.
    const segments = responses ? [prompts[b], responses[b]] : [prompts[b]];
    const { tokens, segmentIds } = packRow(segments, L, special.bos, null, special.pad);
    for (let i = 0; i < L; i++) {
      tokenIds[b * L + i] = tokens[i];
      paddingMask[b * L + i] = tokens[i] !== special.pad ? 1 : 0;
      responseMask[b * L + i] = segmentIds[i] === 1 ? 1 : 0;
    }
  }
  return { tokenIds, paddingMask, responseMask, shape: [B, L] };
}

/** `packGenerationBatch` for one row: shapes `[1, L]`. */
export function packGeneration(
  promptIds: Ids,
  responseIds: Ids | undefined,
  sequenceLength: number,
  special: SpecialIds = GEMMA_SPECIAL_IDS,
): GenerationBatch {
  return packGenerationBatch([promptIds], responseIds === undefined ? undefined : [responseIds], sequenceLength, special);
}

// ---------------------------------------------------------------------------------------------------------
// Postprocess
// ---------------------------------------------------------------------------------------------------------

/**
 * `generate_postprocess` up to the detokenizer: keep the positions whose `paddingMask` is set, then drop
 * every id in `specialIds` (anywhere, not only at the ends). Returns the ids to detokenize.
 */
export function generatePostprocess(
  tokenIds: Ids,
  paddingMask: ArrayLike<number | boolean>,
  specialIds: Iterable<number> = specialTokenIds(),
): number[] {
  if (tokenIds.length !== paddingMask.length) {
    throw new Error(`generatePostprocess: ${tokenIds.length} token ids but ${paddingMask.length} mask values`);
  }
  const strip = new Set(specialIds);
  const out: number[] = [];
  for (let i = 0; i < tokenIds.length; i++) {
    if (paddingMask[i] && !strip.has(tokenIds[i])) out.push(tokenIds[i]);
  }
  return out;
}

/** `generatePostprocess` on each row of flat row-major `[B, T]` arrays. */
export function generatePostprocessBatch(
  tokenIds: Ids,
  paddingMask: ArrayLike<number | boolean>,
  shape: readonly [number, number],
  specialIds: Iterable<number> = specialTokenIds(),
): number[][] {
  const [B, T] = shape;
  if (tokenIds.length !== B * T || paddingMask.length !== B * T) {
    throw new Error(
      `generatePostprocessBatch: shape [${B}, ${T}] needs ${B * T} values; got ${tokenIds.length} token ids and ${paddingMask.length} mask values`,
    );
  }
  const strip = [...specialIds];
  const rows: number[][] = [];
  for (let b = 0; b < B; b++) {
    const ids = Array.prototype.slice.call(tokenIds, b * T, (b + 1) * T) as number[];
    const mask = Array.prototype.slice.call(paddingMask, b * T, (b + 1) * T) as (number | boolean)[];
    rows.push(generatePostprocess(ids, mask, strip));
  }
  return rows;
}
