/**
 * big_vision PaliGemma checkpoints (`.npz`: Kaggle `google/paligemma` and `google/paligemma-2` jax variations, Hugging Face `google/*-jax`) <->
 * keras_hub's variables. Key table: ../shared/docs/FORMATS.md ("big_vision .npz"); references: keras_hub's
 * `convert_pali_gemma2_checkpoints.py` and big_vision's `models/ppp/gemma.py`.
 *
 * - `bigVisionWeights(config, arrays)`: the npz arrays -> a weight map by keras h5 path. Layers are stacked
 *   (scan) in big_vision: each keras variable is one contiguous C-order block of a stacked array (layer i,
 *   and for kv_einsum / gating_einsum the half [i, 0] or [i, 1]), read on its own by `readRange`, so loading
 *   never holds a whole stacked array. Reshapes are free in C order: ViT q/k/v (W, heads, head_dim) -> (W, W),
 *   out (heads, head_dim, W) -> (W, W), biases (heads, head_dim) -> (W), `img/pos_embedding` (1, P, W) -> (P, W).
 *   - `llm/embedder/input_embedding` may have more rows than the vocabulary (padding): the first
 *     `vocabulary_size` rows are kept (as big_vision's `_del_pad_rows` does); that is the only thing dropped.
 *   - `llm/layers/mlp/gating_einsum` is (L, 2, D, F); checkpoints saved with Gemma's `transpose_gating_einsum`
 *     hold (L, 2, F, D) and are transposed (big_vision's `_maybe_transpose_gating_einsum`). We decide by the
 *     config's D and F, not by which is larger; when D = F the two cannot be told apart: (L, 2, D, F) is assumed.
 *   - Attention: `q_einsum` + `kv_einsum`, or, when the config has as many key/value heads as query heads,
 *     Gemma's fused `qkv_einsum` (L, 3, N, D, H).
 *   - Keys may carry a leading `params/` (big_vision's `save_params`) or not.
 *   Every key, missing or unexpected, and every shape is checked first in big_vision terms (one error naming
 *   each key with its expected shape); then `decodeParams` checks again in keras'.
 * - `inferBigVisionConfig(arrays)`: the built-in preset config (checkpoints/presets.ts) whose every shape fits, when
 *   exactly one does: shapes alone say nothing of soft caps, windows or epsilons, so only known configs are
 *   accepted; anything else needs a config.
 * - `kerasToBigVision(config, values)`: keras-layout values -> big_vision arrays (stacked), for tests and export.
 */
import type { PaliGemmaConfig } from '../models/config';
import { kerasLayout, type WeightMap, type WeightSpec } from './params';
import type { NpzArrays, NpyArray } from './npz';

const fmt = (s: readonly number[]) => `[${s.join(', ')}]`;
const product = (s: readonly number[]) => s.reduce((a, b) => a * b, 1);

// ---------------------------------------------------------------------------------------------------------------
// The key table
// ---------------------------------------------------------------------------------------------------------------

/** Where a keras variable lives in big_vision's arrays. */
export interface BigVisionSpec {
  /** big_vision key without `params/`, e.g. `llm/layers/attn/q_einsum/w`. */
  readonly bv: string;
  /** The full shape of that array (for the embedding: the fewest rows accepted). */
  readonly bvShape: readonly number[];
  /** Leading indices selecting the variable's block (e.g. [layer] or [layer, 1]). */
  readonly index: readonly number[];
  /** 'rows': a prefix of rows (embedding); 'transpose': the block is the keras kernel transposed (gating). */
  readonly kind: 'block' | 'rows' | 'transpose';
  readonly keras: WeightSpec;
}

const LLM = 'llm/';
const LAYERS = 'llm/layers/';
const ENC = 'img/Transformer/encoderblock/';
const ATTN = `${ENC}MultiHeadDotProductAttention_0/`;

/**
 * The big_vision key of every variable of a config. `gatingTransposed`: the checkpoint stores gating_einsum as
 * (L, 2, F, D); `fusedQkv`: it has `qkv_einsum` (only possible when the query and key/value head counts match).
 */
export function bigVisionLayout(c: PaliGemmaConfig, layout: { gatingTransposed?: boolean; fusedQkv?: boolean } = {}): BigVisionSpec[] {
  const L = c.num_layers;
  const N = c.num_query_heads;
  const K = c.num_key_value_heads;
  const D = c.hidden_dim;
  const H = c.head_dim;
  const F = c.intermediate_dim / 2;
  const Lv = c.vit_num_layers;
  const W = c.vit_hidden_dim;
  const heads = c.vit_num_heads;
  const M = c.vit_intermediate_dim;
  const P = (c.image_size / c.vit_patch_size) ** 2;
  const fused = layout.fusedQkv === true && N === K;
  const vitLn: Record<string, string> = { layer_norm_1: 'LayerNorm_0', layer_norm_2: 'LayerNorm_1' };
  const map = (s: WeightSpec): Omit<BigVisionSpec, 'keras'> | undefined => {
    const k = s.keras;
    const block = (bv: string, bvShape: number[], ...index: number[]) => ({ bv, bvShape, index, kind: 'block' as const });
    let m: RegExpExecArray | null;
    if (k === 'token_embedding/embeddings') return { bv: `${LLM}embedder/input_embedding`, bvShape: [c.vocabulary_size, D], index: [], kind: 'rows' };
    if (k === 'final_normalization/scale') return block(`${LLM}final_norm/scale`, [D]);
    if ((m = /^image_classifier\/(kernel|bias)$/.exec(k))) return m[1] === 'kernel' ? block('img/head/kernel', [W, D]) : block('img/head/bias', [D]);
    if ((m = /^image_encoder\/encoder_embeddings\/embedding_conv\/(kernel|bias)$/.exec(k))) {
      return m[1] === 'kernel' ? block('img/embedding/kernel', [c.vit_patch_size, c.vit_patch_size, 3, W]) : block('img/embedding/bias', [W]);
    }
    if (k === 'image_encoder/encoder_embeddings/position_embedding/embeddings') return block('img/pos_embedding', [1, P, W], 0);
    if ((m = /^image_encoder\/encoder_layer_norm\/(gamma|beta)$/.exec(k))) return block(`img/Transformer/encoder_norm/${m[1] === 'gamma' ? 'scale' : 'bias'}`, [W]);
    if ((m = /^image_encoder\/encoder_block_(\d+)\/(layer_norm_[12])\/(gamma|beta)$/.exec(k))) {
      return block(`${ENC}${vitLn[m[2]]}/${m[3] === 'gamma' ? 'scale' : 'bias'}`, [Lv, W], Number(m[1]));
    }
    if ((m = /^image_encoder\/encoder_block_(\d+)\/multi_head_attention\/(query|key|value|out)_proj\/(kernel|bias)$/.exec(k))) {
      const i = Number(m[1]);
      const hd = W / heads;
      if (m[2] === 'out') return m[3] === 'kernel' ? block(`${ATTN}out/kernel`, [Lv, heads, hd, W], i) : block(`${ATTN}out/bias`, [Lv, W], i);
      return m[3] === 'kernel' ? block(`${ATTN}${m[2]}/kernel`, [Lv, W, heads, hd], i) : block(`${ATTN}${m[2]}/bias`, [Lv, heads, hd], i);
    }
    if ((m = /^image_encoder\/encoder_block_(\d+)\/mlp_dense_([12])\/(kernel|bias)$/.exec(k))) {
      const i = Number(m[1]);
      const dense = `${ENC}MlpBlock_0/Dense_${Number(m[2]) - 1}/`;
      const [inn, out] = m[2] === '1' ? [W, M] : [M, W];
      return m[3] === 'kernel' ? block(`${dense}kernel`, [Lv, inn, out], i) : block(`${dense}bias`, [Lv, out], i);
    }
    if ((m = /^decoder_block_(\d+)\/(pre_attention_norm|post_attention_norm|pre_ffw_norm|post_ffw_norm)\/scale$/.exec(k))) {
      return block(`${LAYERS}${m[2]}/scale`, [L, D], Number(m[1]));
    }
    if ((m = /^decoder_block_(\d+)\/attention\/(query|key|value)\/kernel$/.exec(k))) {
      const i = Number(m[1]);
      const which = { query: 0, key: 1, value: 2 }[m[2] as 'query' | 'key' | 'value'];
      if (fused) return block(`${LAYERS}attn/qkv_einsum/w`, [L, 3, N, D, H], i, which);
      if (which === 0) return block(`${LAYERS}attn/q_einsum/w`, [L, N, D, H], i);
      return block(`${LAYERS}attn/kv_einsum/w`, [L, 2, K, D, H], i, which - 1);
    }
    if ((m = /^decoder_block_(\d+)\/attention\/attention_output\/kernel$/.exec(k))) return block(`${LAYERS}attn/attn_vec_einsum/w`, [L, N, H, D], Number(m[1]));
    if ((m = /^decoder_block_(\d+)\/(ffw_gating|ffw_gating_2)\/kernel$/.exec(k))) {
      const half = m[2] === 'ffw_gating' ? 0 : 1;
      if (layout.gatingTransposed) return { bv: `${LAYERS}mlp/gating_einsum`, bvShape: [L, 2, F, D], index: [Number(m[1]), half], kind: 'transpose' };
      return block(`${LAYERS}mlp/gating_einsum`, [L, 2, D, F], Number(m[1]), half);
    }
    if ((m = /^decoder_block_(\d+)\/ffw_linear\/kernel$/.exec(k))) return block(`${LAYERS}mlp/linear`, [L, F, D], Number(m[1]));
    return undefined;
  };
  const specs = kerasLayout(c);
  const unmapped = specs.filter((s) => map(s) === undefined).map((s) => s.keras);
  if (unmapped.length > 0) throw new Error(`bigVisionLayout: big_vision's PaliGemma has no weights for ${unmapped.join(', ')}`);
  return specs.map((s) => ({ ...map(s)!, keras: s }));
}

// ---------------------------------------------------------------------------------------------------------------
// Reading: npz arrays -> keras weight map
// ---------------------------------------------------------------------------------------------------------------

const PREFIX = 'params/';
const sameShape = (a: readonly number[], b: readonly number[]) => a.length === b.length && a.every((v, i) => v === b[i]);

/** The arrays by big_vision key without `params/`; two keys for one array are a problem. */
function byBigVisionKey(arrays: NpzArrays, problems: string[]): Map<string, NpyArray> {
  const out = new Map<string, NpyArray>();
  for (const [key, a] of arrays) {
    const bv = key.startsWith(PREFIX) ? key.slice(PREFIX.length) : key;
    const seen = out.get(bv);
    if (seen !== undefined) problems.push(`"${seen.key}" and "${key}" are the same weight (with and without ${PREFIX})`);
    out.set(bv, a);
  }
  return out;
}

/** The layout options the arrays' shapes call for. */
function detectLayout(c: PaliGemmaConfig, arrays: Map<string, NpyArray>): { gatingTransposed: boolean; fusedQkv: boolean } {
  const D = c.hidden_dim;
  const F = c.intermediate_dim / 2;
  const gating = arrays.get(`${LAYERS}mlp/gating_einsum`)?.shape;
  const gatingTransposed = D !== F && gating !== undefined && sameShape(gating, [c.num_layers, 2, F, D]);
  const fusedQkv = arrays.has(`${LAYERS}attn/qkv_einsum/w`) && !arrays.has(`${LAYERS}attn/q_einsum/w`);
  return { gatingTransposed, fusedQkv };
}

/** Problems of big_vision arrays against a config (empty: they fit) and the matching specs. */
function checkArrays(c: PaliGemmaConfig, arrays: NpzArrays): { problems: string[]; specs: BigVisionSpec[]; byKey: Map<string, NpyArray> } {
  const problems: string[] = [];
  const byKey = byBigVisionKey(arrays, problems);
  const specs = bigVisionLayout(c, detectLayout(c, byKey));
  const checked = new Set<string>();
  for (const s of specs) {
    if (checked.has(s.bv)) continue;
    checked.add(s.bv);
    const a = byKey.get(s.bv);
    const wanted = s.kind === 'rows' ? `[>= ${s.bvShape[0]}, ${s.bvShape[1]}]` : fmt(s.bvShape);
    const feeds = specs.filter((x) => x.bv === s.bv);
    const what = feeds.length === 1 ? `${s.keras.keras} ${fmt(s.keras.kerasShape)}` : `${feeds.length} variables, ${s.keras.keras} ${fmt(s.keras.kerasShape)} first`;
    if (a === undefined) {
      problems.push(`missing ${PREFIX}${s.bv} (big_vision shape ${wanted}, for ${what})`);
      continue;
    }
    const fits = s.kind === 'rows' ? a.shape.length === 2 && a.shape[0] >= s.bvShape[0] && a.shape[1] === s.bvShape[1] : sameShape(a.shape, s.bvShape);
    if (!fits) problems.push(`wrong shape ${a.key}: expected ${wanted} (for ${what}), got ${fmt(a.shape)}`);
  }
  for (const [bv, a] of byKey) if (!checked.has(bv)) problems.push(`unexpected ${a.key} (shape ${fmt(a.shape)})`);
  return { problems, specs, byKey };
}

/**
 * big_vision arrays -> a weight map by keras h5 path, each `read()` reading only its block. Throws one error
 * listing every missing key (with the big_vision shape expected and the keras variable it feeds), every shape
 * that does not fit the config, and every unexpected key.
 */
export function bigVisionWeights(c: PaliGemmaConfig, arrays: NpzArrays, source = 'npz'): WeightMap {
  const { problems, specs, byKey } = checkArrays(c, arrays);
  if (problems.length > 0) throw new Error(`${source}: ${problems.length} problem(s) with the big_vision weights for this config:\n  ${problems.join('\n  ')}`);
  const out = new Map<string, { shape: readonly number[]; file: string; read(): Float32Array }>();
  for (const s of specs) {
    const a = byKey.get(s.bv)!;
    const shape = a.shape;
    const count = product(s.keras.kerasShape);
    // Flat offset of the block a[index...]: index in the leading axes times the size of what follows them.
    let start = 0;
    s.index.forEach((n, axis) => (start = start * shape[axis] + n));
    start *= product(shape.slice(s.index.length));
    const [rows, cols] = s.keras.kerasShape;
    out.set(s.keras.h5, {
      shape: s.keras.kerasShape,
      file: a.file,
      read: () => (s.kind === 'transpose' ? transpose2d(a.readRange(start, count), cols, rows) : a.readRange(start, count)),
    });
  }
  return out;
}

/** [rows, cols] -> [cols, rows]. */
function transpose2d(src: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(rows * cols);
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) out[j * rows + i] = src[i * cols + j];
  return out;
}

/**
 * The one config among `candidates` (name, config) that every array fits, or an error naming the closest
 * misfit. Used with the built-in presets' configs: see the header.
 */
export function inferBigVisionConfig(arrays: NpzArrays, candidates: readonly (readonly [string, PaliGemmaConfig])[], source = 'npz'): PaliGemmaConfig {
  const fits = new Map<string, { names: string[]; config: PaliGemmaConfig }>();
  let best: { name: string; problems: string[] } | undefined;
  for (const [name, config] of candidates) {
    const { problems } = checkArrays(config, arrays);
    if (problems.length === 0) {
      const id = JSON.stringify(config);
      const seen = fits.get(id);
      if (seen) seen.names.push(name);
      else fits.set(id, { names: [name], config });
    } else if (best === undefined || problems.length < best.problems.length) best = { name, problems };
  }
  if (fits.size === 1) return [...fits.values()][0].config;
  const pass = 'pass the config: fromPreset(file, { config: <built-in preset name or a PaliGemmaConfig> })';
  if (fits.size > 1) throw new Error(`${source}: the arrays fit several configs (${[...fits.values()].map((f) => f.names[0]).join(', ')}); ${pass}`);
  const closest = best === undefined ? '' : ` The closest is ${best.name}, with ${best.problems.length} problem(s):\n  ${best.problems.slice(0, 5).join('\n  ')}${best.problems.length > 5 ? '\n  ...' : ''}`;
  throw new Error(`${source}: a big_vision checkpoint carries no config, and its arrays fit no built-in preset; ${pass}.${closest}`);
}

// ---------------------------------------------------------------------------------------------------------------
// Writing: keras values -> big_vision arrays
// ---------------------------------------------------------------------------------------------------------------

export interface KerasToBigVisionOptions {
  /** Rows of the stored embedding (>= vocabulary_size; the extra rows are zero padding). */
  readonly embeddingRows?: number;
  /** Store gating_einsum as (L, 2, F, D) (Gemma's `transpose_gating_einsum`). */
  readonly gatingTransposed?: boolean;
  /** Store `qkv_einsum` instead of q_einsum + kv_einsum (needs as many key/value heads as query heads). */
  readonly fusedQkv?: boolean;
  /** Prefix of every key (default `params/`). */
  readonly prefix?: string;
}

/** keras-layout values by h5 path (what `encodeParams` gives) -> big_vision arrays by key, stacked. */
export function kerasToBigVision(
  c: PaliGemmaConfig,
  values: ReadonlyMap<string, { shape: readonly number[]; values: Float32Array }>,
  options: KerasToBigVisionOptions = {},
): Map<string, { shape: number[]; values: Float32Array }> {
  const specs = bigVisionLayout(c, options);
  const out = new Map<string, { shape: number[]; values: Float32Array }>();
  const prefix = options.prefix ?? PREFIX;
  for (const s of specs) {
    const v = values.get(s.keras.h5);
    if (v === undefined) throw new Error(`kerasToBigVision: no values for ${s.keras.h5} (${s.keras.keras})`);
    const key = `${prefix}${s.bv}`;
    let array = out.get(key);
    if (array === undefined) {
      const shape = [...s.bvShape];
      if (s.kind === 'rows') shape[0] = Math.max(options.embeddingRows ?? shape[0], shape[0]);
      array = { shape, values: new Float32Array(product(shape)) };
      out.set(key, array);
    }
    let start = 0;
    s.index.forEach((n, axis) => (start = start * array!.shape[axis] + n));
    start *= product(array.shape.slice(s.index.length));
    const [rows, cols] = s.keras.kerasShape;
    array.values.set(s.kind === 'transpose' ? transpose2d(v.values, rows, cols) : v.values, start);
  }
  return out;
}
