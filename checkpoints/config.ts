/**
 * The strict io-ts codec of keras_hub's `config.json` for `PaliGemmaBackbone` <-> `PaliGemmaConfig`.
 *
 * keras_hub writes `{module, class_name, config, registered_name}` (`Backbone.save_to_preset`); `config` holds
 * the constructor's arguments (keras_hub/src/models/pali_gemma/pali_gemma_backbone.py) plus the Layer's `name`,
 * `trainable` and `dtype`. Decoding is strict: a wrong type, a missing required argument and an argument
 * keras_hub does not take are all reported, each with its path (`config.hidden_dim: expected number, got
 * "abc"`), never silently dropped. Optional arguments missing from the file take `CONFIG_DEFAULTS` (keras_hub's
 * own defaults). Aliases that keras_hub accepts are normalized: `vit_pooling: "0"` -> `"zero"`,
 * `vit_intermediate_dim: null` -> 4304, `vit_classifier_activation: "linear"` -> null; a dtype policy object or
 * policy map -> its (default) policy name.
 *
 * The encoder writes the JSON keras_hub writes (same keys, same order, a `DTypePolicy` object for `dtype`), so
 * `decode(encode(c))` is the identity and `encode(decode(json))` reproduces keras_hub's files.
 */
import * as t from 'io-ts';
import { isLeft } from 'fp-ts/Either';
import { FormatError } from './errors';
import { CONFIG_DEFAULTS, configProblems, type PaliGemmaConfig, type VitPooling } from '../models/config';

// ---------------------------------------------------------------------------------------------------------------
// Failures that say what was expected and what was there
// ---------------------------------------------------------------------------------------------------------------

/** A JSON value for a message, cut at 200 characters (a crafted file can hold megabytes in one field). */
const show = (u: unknown): string => {
  const s = u === undefined ? 'nothing' : (JSON.stringify(u) ?? String(u));
  return s.length > 200 ? `${s.slice(0, 200)}...` : s;
};

const fail = (u: unknown, c: t.Context, expected: string): t.Validation<never> =>
  t.failure(u, c, `expected ${expected}, got ${show(u)}`);

const isRecord = (u: unknown): u is Record<string, unknown> => typeof u === 'object' && u !== null && !Array.isArray(u);

/** `source: path: message` for each error, e.g. `config.json: config.hidden_dim: expected number, got "abc"`. */
export function formatErrors(source: string, errors: t.Errors): string[] {
  const lines = errors.map((e) => {
    const path = e.context
      .map((entry) => entry.key)
      .filter((key) => key !== '')
      .join('.');
    const message = e.message ?? `expected ${e.context[e.context.length - 1]?.type.name ?? 'a value'}, got ${show(e.value)}`;
    return `${source}: ${path === '' ? '' : `${path}: `}${message}`;
  });
  return [...new Set(lines)];
}

// ---------------------------------------------------------------------------------------------------------------
// Leaf codecs (JSON value <-> field value)
// ---------------------------------------------------------------------------------------------------------------

type Codec<A, O = unknown> = t.Type<A, O, unknown>;

const leaf = <A, O>(name: string, validate: t.Validate<unknown, A>, encode: (a: A) => O, is: (u: unknown) => u is A): Codec<A, O> =>
  new t.Type<A, O, unknown>(name, is, validate, encode);

const isFiniteNumber = (u: unknown): u is number => typeof u === 'number' && Number.isFinite(u);

/** A number passing `ok`; a non-number is reported as "expected number" first. */
const numberWhere = (name: string, ok: (n: number) => boolean): Codec<number, number> =>
  leaf(
    name,
    (u, c) => (!isFiniteNumber(u) ? fail(u, c, 'number') : ok(u) ? t.success(u) : fail(u, c, name)),
    (n) => n,
    (u): u is number => isFiniteNumber(u) && ok(u),
  );


/**
 * Sane maxima, far above every PaliGemma (Gemma 2 27B: 46 layers, hidden 4608, MLP 2 * 36864, vocabulary
 * 257152): a config.json from the internet with an absurd count would otherwise hang or abort V8 (layer tables,
 * `layer_types` checks) before any weight is looked at.
 */
export const CONFIG_MAXIMA = {
  layers: 1024,
  heads: 1024,
  dim: 1 << 18,
  vocabulary: 1 << 22,
  image: 8192,
  window: 1 << 24,
} as const;

/** A positive integer at most `max`. */
export const intUpTo = (max: number): Codec<number, number> =>
  numberWhere(`positive integer at most ${max}`, (n) => Number.isInteger(n) && n > 0 && n <= max);
const M = CONFIG_MAXIMA;
const positiveNumber = numberWhere('positive number', (n) => n > 0);
const dropoutRate = numberWhere('number in [0, 1)', (n) => n >= 0 && n < 1);

const bool = leaf<boolean, boolean>(
  'boolean',
  (u, c) => (typeof u === 'boolean' ? t.success(u) : fail(u, c, 'boolean')),
  (b) => b,
  (u): u is boolean => typeof u === 'boolean',
);

const str = leaf<string, string>(
  'string',
  (u, c) => (typeof u === 'string' ? t.success(u) : fail(u, c, 'string')),
  (s) => s,
  (u): u is string => typeof u === 'string',
);

/** `codec` or null. */
const nullable = <A, O>(codec: Codec<A, O>): Codec<A | null, O | null> =>
  leaf(
    `${codec.name} or null`,
    (u, c) => {
      if (u === null) return t.success(null);
      const r = codec.validate(u, c);
      return isLeft(r) ? fail(u, c, `${codec.name} or null`) : r;
    },
    (a) => (a === null ? null : codec.encode(a)),
    (u): u is A | null => u === null || codec.is(u),
  );

/** One of fixed JSON values, each decoding to a value (aliases map several JSON values to one). */
const oneOf = <A extends string | null>(name: string, table: ReadonlyArray<readonly [unknown, A]>): Codec<A, A> => {
  const values = table.map(([json]) => json);
  return leaf(
    name,
    (u, c) => {
      const hit = table.find(([json]) => json === u);
      return hit === undefined ? fail(u, c, `one of ${values.map(show).join(', ')}`) : t.success(hit[1]);
    },
    (a) => a,
    (u): u is A => table.some(([, value]) => value === u),
  );
};

/** keras_hub's PaliGemmaVit pooling: None, "map", "gap", or "zero" with its alias "0" (pali_gemma_vit.py). */
const vitPooling = oneOf<VitPooling>('vit_pooling', [
  [null, null],
  ['map', 'map'],
  ['gap', 'gap'],
  ['zero', 'zero'],
  ['0', 'zero'],
]);

/** `keras.activations.get`: None and "linear" are both the identity. */
const classifierActivation = oneOf<PaliGemmaConfig['vit_classifier_activation']>('vit_classifier_activation', [
  [null, null],
  ['linear', null],
  ['gelu', 'gelu'],
  ['gelu_approximate', 'gelu_approximate'],
  ['tanh', 'tanh'],
  ['relu', 'relu'],
]);

/** `vit_intermediate_dim`: old PG1 presets have null, which keras_hub turns into 4304 ("TODO remove default"). */
const vitIntermediateDim = leaf<number, number>(
  'vit_intermediate_dim',
  (u, c) => (u === null ? t.success(CONFIG_DEFAULTS.vit_intermediate_dim) : intUpTo(M.dim).validate(u, c)),
  (n) => n,
  intUpTo(M.dim).is,
);

// ---------------------------------------------------------------------------------------------------------------
// dtype: a policy name, a serialized DTypePolicy, or a DTypePolicyMap (quantized models)
// ---------------------------------------------------------------------------------------------------------------

/** Float policies keras accepts by name (keras/src/dtype_policies/dtype_policy.py). */
const POLICY_NAMES = ['float16', 'float32', 'float64', 'bfloat16', 'mixed_float16', 'mixed_bfloat16'] as const;

export interface DTypePolicyJson {
  readonly module: string;
  readonly class_name: string;
  readonly config: { readonly name: string };
  readonly registered_name: string | null;
}

const policyName = oneOf<string>(
  'dtype policy name',
  POLICY_NAMES.map((n) => [n, n] as const),
);

/** Validates an object's keys against `fields` (name -> codec) and rejects any other key. */
function strictFields(u: Record<string, unknown>, c: t.Context, fields: Readonly<Record<string, t.Decoder<unknown, unknown>>>, optional: readonly string[] = []): t.Errors {
  const errors: t.Errors = [];
  for (const [key, codec] of Object.entries(fields)) {
    if (!(key in u)) {
      if (!optional.includes(key)) errors.push(...missing(u, t.appendContext(c, key, codec, undefined)));
      continue;
    }
    const r = codec.validate(u[key], t.appendContext(c, key, codec, u[key]));
    if (isLeft(r)) errors.push(...r.left);
  }
  for (const key of Object.keys(u)) if (!(key in fields)) errors.push(...unknownField(u[key], t.appendContext(c, key, t.unknown, u[key])));
  return errors;
}

const missing = (u: unknown, c: t.Context): t.Errors => [{ value: u, context: c, message: 'missing (required)' }];
const unknownField = (u: unknown, c: t.Context): t.Errors => [{ value: u, context: c, message: 'unknown field' }];

const serializedPolicy = (u: Record<string, unknown>, c: t.Context): t.Validation<string> => {
  const errors = strictFields(u, c, { module: str, class_name: str, config: t.unknown, registered_name: nullable(str) }, ['registered_name']);
  if (errors.length > 0) return t.failures(errors);
  const inner = u['config'];
  const innerContext = t.appendContext(c, 'config', t.unknown, inner);
  switch (u['class_name']) {
    case 'DTypePolicy':
    case 'FloatDTypePolicy': {
      if (!isRecord(inner)) return fail(inner, innerContext, 'object');
      const innerErrors = strictFields(inner, innerContext, { name: policyName });
      return innerErrors.length > 0 ? t.failures(innerErrors) : t.success(inner['name'] as string);
    }
    case 'DTypePolicyMap': {
      // keras DTypePolicyMap.get_config: {default_policy, policy_map}; a null default defers to keras' global
      // policy, which is float32 unless a program changed it.
      if (!isRecord(inner)) return fail(inner, innerContext, 'object');
      const innerErrors = strictFields(inner, innerContext, { default_policy: t.unknown, policy_map: t.unknown });
      if (innerErrors.length > 0) return t.failures(innerErrors);
      const def = inner['default_policy'];
      return def === null ? t.success(CONFIG_DEFAULTS.dtype) : dtypePolicy.validate(def, t.appendContext(innerContext, 'default_policy', dtypePolicy, def));
    }
    default:
      return fail(u['class_name'], t.appendContext(c, 'class_name', str, u['class_name']), 'one of "DTypePolicy", "FloatDTypePolicy", "DTypePolicyMap"');
  }
};

const dtypePolicy: Codec<string, DTypePolicyJson> = leaf<string, DTypePolicyJson>(
  'dtype',
  (u, c) => (typeof u === 'string' ? policyName.validate(u, c) : isRecord(u) ? serializedPolicy(u, c) : fail(u, c, 'dtype policy name or DTypePolicy object')),
  (name) => ({ module: 'keras', class_name: 'DTypePolicy', config: { name }, registered_name: null }),
  (u): u is string => typeof u === 'string',
);

// ---------------------------------------------------------------------------------------------------------------
// The backbone's arguments
// ---------------------------------------------------------------------------------------------------------------

type FieldSpec<A> = { readonly codec: Codec<A>; readonly required: true } | { readonly codec: Codec<A>; readonly required: false; readonly default: A };

const required = <A>(codec: Codec<A>): FieldSpec<A> => ({ codec, required: true });
const optional = <K extends keyof typeof CONFIG_DEFAULTS>(key: K, codec: Codec<PaliGemmaConfig[K]>): FieldSpec<PaliGemmaConfig[K]> => ({
  codec,
  required: false,
  default: CONFIG_DEFAULTS[key] as PaliGemmaConfig[K],
});

/** Every argument, in the order keras_hub's `get_config` writes them (dtype goes first, after name/trainable). */
const FIELDS: { readonly [K in keyof PaliGemmaConfig]: FieldSpec<PaliGemmaConfig[K]> } = {
  dtype: optional('dtype', dtypePolicy),
  vocabulary_size: required(intUpTo(M.vocabulary)),
  image_size: required(intUpTo(M.image)),
  num_layers: required(intUpTo(M.layers)),
  num_query_heads: required(intUpTo(M.heads)),
  num_key_value_heads: required(intUpTo(M.heads)),
  hidden_dim: required(intUpTo(M.dim)),
  intermediate_dim: required(intUpTo(M.dim)),
  head_dim: required(intUpTo(M.dim)),
  vit_patch_size: required(intUpTo(M.image)),
  vit_num_heads: required(intUpTo(M.heads)),
  vit_hidden_dim: required(intUpTo(M.dim)),
  vit_num_layers: required(intUpTo(M.layers)),
  vit_intermediate_dim: optional('vit_intermediate_dim', vitIntermediateDim),
  vit_pooling: optional('vit_pooling', vitPooling),
  vit_classifier_activation: optional('vit_classifier_activation', classifierActivation),
  vit_name: optional('vit_name', nullable(str)),
  query_head_dim_normalize: optional('query_head_dim_normalize', bool),
  use_post_ffw_norm: optional('use_post_ffw_norm', bool),
  use_post_attention_norm: optional('use_post_attention_norm', bool),
  final_logit_soft_cap: optional('final_logit_soft_cap', nullable(positiveNumber)),
  attention_logit_soft_cap: optional('attention_logit_soft_cap', nullable(positiveNumber)),
  sliding_window_size: optional('sliding_window_size', intUpTo(M.window)),
  use_sliding_window_attention: optional('use_sliding_window_attention', bool),
  layer_norm_epsilon: optional('layer_norm_epsilon', positiveNumber),
  dropout: optional('dropout', dropoutRate),
};

/** Layer arguments keras writes for every layer: checked, then dropped (they do not change the model). */
const LAYER_FIELDS = { name: str, trainable: bool } as const;

/** The JSON of `config.config` as keras_hub writes it. */
export type BackboneConfigJson = { readonly name: string; readonly trainable: boolean } & {
  readonly [K in keyof PaliGemmaConfig]: K extends 'dtype' ? DTypePolicyJson : unknown;
};

/** The whole `config.json`. */
export interface BackboneJson {
  readonly module: string;
  readonly class_name: 'PaliGemmaBackbone';
  readonly config: BackboneConfigJson;
  readonly registered_name: string;
}

function validateArguments(u: unknown, c: t.Context): t.Validation<PaliGemmaConfig> {
  if (!isRecord(u)) return fail(u, c, 'object');
  const errors: t.Errors = [];
  const out: Record<string, unknown> = {};
  for (const [key, spec] of Object.entries(FIELDS) as [string, FieldSpec<unknown>][]) {
    if (!(key in u)) {
      if (spec.required) errors.push(...missing(u, t.appendContext(c, key, spec.codec, undefined)));
      else out[key] = spec.default;
      continue;
    }
    const r = spec.codec.validate(u[key], t.appendContext(c, key, spec.codec, u[key]));
    if (isLeft(r)) errors.push(...r.left);
    else out[key] = r.right;
  }
  for (const [key, codec] of Object.entries(LAYER_FIELDS)) {
    if (!(key in u)) continue;
    const r = codec.validate(u[key], t.appendContext(c, key, codec, u[key]));
    if (isLeft(r)) errors.push(...r.left);
  }
  for (const key of Object.keys(u)) {
    if (!(key in FIELDS) && !(key in LAYER_FIELDS)) errors.push(...unknownField(u[key], t.appendContext(c, key, t.unknown, u[key])));
  }
  // Every field was validated by its codec above: this is the one place the record gets its type.
  return errors.length > 0 ? t.failures(errors) : t.success(out as unknown as PaliGemmaConfig);
}

function encodeArguments(config: PaliGemmaConfig): BackboneConfigJson {
  const out: Record<string, unknown> = { name: 'pali_gemma_backbone', trainable: true };
  for (const [key, spec] of Object.entries(FIELDS) as [keyof PaliGemmaConfig, FieldSpec<unknown>][]) {
    out[key] = spec.codec.encode(config[key]);
  }
  return out as BackboneConfigJson;
}

const isConfig = (u: unknown): u is PaliGemmaConfig =>
  isRecord(u) && (Object.entries(FIELDS) as [string, FieldSpec<unknown>][]).every(([key, spec]) => spec.codec.is(u[key]));

/** `config.json`'s inner `config` object (the constructor arguments) <-> PaliGemmaConfig. */
export const PaliGemmaArguments: t.Type<PaliGemmaConfig, BackboneConfigJson, unknown> = new t.Type(
  'PaliGemmaBackbone arguments',
  isConfig,
  validateArguments,
  encodeArguments,
);

const MODULE = 'keras_hub.src.models.pali_gemma.pali_gemma_backbone';
const REGISTERED_NAME = 'keras_hub>PaliGemmaBackbone';

/** The whole `config.json` (`{module, class_name, config, registered_name}`) <-> PaliGemmaConfig. */
export const PaliGemmaBackboneJson: t.Type<PaliGemmaConfig, BackboneJson, unknown> = new t.Type(
  'PaliGemmaBackbone',
  isConfig,
  (u, c) => {
    if (!isRecord(u)) return fail(u, c, 'object');
    const className = oneOf('class_name', [['PaliGemmaBackbone', 'PaliGemmaBackbone']]);
    const errors = strictFields(u, c, { module: str, class_name: className, config: t.unknown, registered_name: nullable(str) }, ['registered_name']);
    if (!('config' in u)) return t.failures(errors);
    const args = PaliGemmaArguments.validate(u['config'], t.appendContext(c, 'config', PaliGemmaArguments, u['config']));
    if (isLeft(args)) return t.failures([...errors, ...args.left]);
    return errors.length > 0 ? t.failures(errors) : args;
  },
  (config) => ({ module: MODULE, class_name: 'PaliGemmaBackbone', config: encodeArguments(config), registered_name: REGISTERED_NAME }),
);

// ---------------------------------------------------------------------------------------------------------------
// Entry points
// ---------------------------------------------------------------------------------------------------------------

/**
 * Decode a parsed `config.json`: the whole file (`{module, class_name, config, ...}`) or just its `config`
 * object. Throws one error listing every problem, each line prefixed with `source`.
 */
export function decodeConfig(json: unknown, source = 'config.json'): PaliGemmaConfig {
  const codec = isRecord(json) && 'class_name' in json ? PaliGemmaBackboneJson : PaliGemmaArguments;
  const result = codec.decode(json);
  if (isLeft(result)) {
    const lines = formatErrors(source, result.left);
    const first = lines[0].slice(source.length + 2);
    throw new FormatError(source, first.slice(0, Math.max(0, first.indexOf(':'))) || 'config', lines.join('\n'));
  }
  // the fields decode one by one; whether they fit together (patch divides image, ...) is checked here
  const problems = configProblems(result.right);
  if (problems.length > 0) throw new FormatError(source, 'config', problems.map((p) => `${source}: ${p}`).join('\n'));
  return result.right;
}

/** The `config.json` keras_hub would write for this config. */
export function encodeConfig(config: PaliGemmaConfig): BackboneJson {
  return PaliGemmaBackboneJson.encode(config);
}
