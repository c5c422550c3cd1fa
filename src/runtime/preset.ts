/**
 * `fromPreset`: a PaliGemma from what keras_hub users pass to `PaliGemmaBackbone.from_preset`.
 *
 *   fromPreset('pali_gemma2_pt_3b_224')                       built-in name or alias (checkpoints/presets.ts)
 *   fromPreset('kaggle://keras/paligemma2/keras/pali_gemma2_pt_3b_224/2')   Kaggle handle (version optional)
 *   fromPreset('hf://google/paligemma2-3b-pt-224')            Hugging Face repo (`@revision` optional)
 *   fromPreset('./my_preset')                                 local directory: Keras preset or HF checkpoint
 *   fromPreset('./pt_224.npz', { config: 'pali_gemma_3b_224' })  big_vision `.npz` (or a directory holding one)
 *
 * big_vision checkpoints (checkpoints/bigvision.ts) carry no config. Their config is, in this order:
 * `options.config` (a built-in preset name or a PaliGemmaConfig); a config.json beside the `.npz` (keras_hub's
 * or Hugging Face's); else the one built-in preset config that every array's shape fits (shapes cannot tell
 * soft caps, windows or epsilons apart, so other configs must be given). A directory is a big_vision checkpoint
 * when it holds `.npz` files and neither model.weights.h5 nor safetensors; with several `.npz` files (the
 * Hugging Face `*-jax` repos hold float32, bf16 and f16 copies), pass the file.
 *
 * Nothing is downloaded: names and handles are looked up in the caches that kagglehub and huggingface_hub
 * fill (and in $PALIGEMMA_PRESETS/<name>); a preset that is not there is an error that lists the paths tried
 * and the command that fetches it, never random weights. As in keras_hub, a built-in name wins over a local
 * directory of the same name (pass `./name` for the directory).
 *
 * Where files are looked for:
 * - built-in name: `$PALIGEMMA_PRESETS/<name>`, then kagglehub's cache for the row's Kaggle handle (exactly
 *   the version keras_hub's table names);
 * - `kaggle://owner/model/framework/variation[/version]`: `$KAGGLEHUB_CACHE` (default ~/.cache/kagglehub)
 *   `/models/<owner>/<model>/<framework>/<variation>/<version>`; without a version, the highest one there;
 * - `hf://org/repo[@revision]`: `$HF_HUB_CACHE` (else `$HF_HOME/hub`, else ~/.cache/huggingface/hub)
 *   `/models--org--repo/snapshots/<commit>`: the commit of `refs/<revision>` (default `main`), or a snapshot
 *   named `<revision>`, or, with no revision and no refs/main, the most recently modified snapshot.
 *
 * `loadWeights: false` builds the config from the preset's config.json when the files are on disk, else (for
 * built-in names, and Kaggle handles of built-in presets) from the table, and draws keras_hub's initializers.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as d from '../../dsl';
import type { Key } from '../../dsl';
import { decodeConfig } from '../../checkpoints/config';
import { readHfCheckpoint, decodeHfConfig, isHfPaliGemmaConfig } from '../../checkpoints/hf';
import { initParams } from '../../checkpoints/init';
import { readKerasWeights, readPresetConfig } from '../../checkpoints/keras';
import { buildTree, checkWeights, decodeParams, kerasLayout, parameterCount, skeleton, type WeightMap } from '../../checkpoints/params';
import { bigVisionWeights, inferBigVisionConfig } from '../../checkpoints/bigvision';
import { readNpz, type NpzArrays } from '../../checkpoints/npz';
import { hasSafetensors } from '../../checkpoints/safetensors';
import { validateConfig, type PaliGemmaConfig } from '../../models/config';
import type { PaliGemmaParams } from '../../models/paligemma';
import { PRESETS, closestPresetNames, findPreset, findPresetByHandle, findShippedPreset, type PresetInfo, type ShippedPreset } from '../../checkpoints/presets';
import { assertFitsBackend } from './backend';
import { FormatError, guarded } from '../../checkpoints/errors';
import { recoverDir } from '../../checkpoints/atomic';
import { MAX_CONFIG_BYTES, joinInside, readJsonFile, readRegularFile, segmentProblem } from '../../checkpoints/files';
import { tf } from '../../dsl/tf';

// ---------------------------------------------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------------------------------------------

export interface FromPresetOptions {
  /** Read the preset's weights (default true). false: keras_hub's initializers on the preset's config. */
  readonly loadWeights?: boolean;
  /** PRNG key of the initializers (`loadWeights: false`); default `key(seed ?? 0)`. */
  readonly key?: Key;
  readonly seed?: number;
  /** After each weight is read: parameters read so far, parameters in all, and the weight's h5 path. */
  readonly onProgress?: (done: number, total: number, what: string) => void;
  /**
   * The config of a big_vision `.npz` checkpoint (which has none): a built-in preset name or a config. Refused
   * for other formats, whose files hold their config.
   */
  readonly config?: string | PaliGemmaConfig;
}

/** keras_hub's `save_to_preset` layout, a Hugging Face transformers checkpoint, or a big_vision `.npz`. */
export type PresetFormat = 'keras' | 'hf' | 'bigvision';

export interface ResolvedPreset {
  /** What was asked for. */
  readonly preset: string;
  /** The built-in row, for a built-in name or alias or the Kaggle handle of one. */
  readonly builtin: PresetInfo | undefined;
  /** The directory holding the files (for a big_vision `.npz` given as a file: that file), or null when they are not on this machine. */
  readonly dir: string | null;
  readonly format: PresetFormat | null;
  /** Every place looked at, with what was found there. */
  readonly tried: readonly string[];
  /** How to get the files (when `dir` is null). */
  readonly howToGet: string;
}

// ---------------------------------------------------------------------------------------------------------------
// Caches
// ---------------------------------------------------------------------------------------------------------------

const env = (name: string): string | undefined => (process.env[name] ? process.env[name] : undefined);
const expandHome = (p: string): string => (p === '~' || p.startsWith('~/') ? path.join(os.homedir(), p.slice(1)) : p);
const isDir = (p: string): boolean => {
  try {
    return fs.statSync(p).isDirectory();
  } catch {
    return false;
  }
};

/** kagglehub's cache folder (kagglehub/config.py: KAGGLEHUB_CACHE, else ~/.cache/kagglehub). */
export const kagglehubCache = (): string => expandHome(env('KAGGLEHUB_CACHE') ?? path.join(os.homedir(), '.cache', 'kagglehub'));

/** huggingface_hub's cache folder (HF_HUB_CACHE, HUGGINGFACE_HUB_CACHE, $HF_HOME/hub, $XDG_CACHE_HOME/huggingface/hub). */
export function hfHubCache(): string {
  const direct = env('HF_HUB_CACHE') ?? env('HUGGINGFACE_HUB_CACHE');
  if (direct !== undefined) return expandHome(direct);
  const home = env('HF_HOME') ?? path.join(env('XDG_CACHE_HOME') ?? path.join(os.homedir(), '.cache'), 'huggingface');
  return path.join(expandHome(home), 'hub');
}

export interface KaggleHandle {
  readonly owner: string;
  readonly model: string;
  readonly framework: string;
  readonly variation: string;
  readonly version: number | null;
}

const KAGGLE_FORM = 'kaggle://<owner>/<model>/<framework>/<variation>[/<version>]';

/** `kaggle://owner/model/framework/variation[/version]`. */
export function parseKaggleHandle(handle: string): KaggleHandle {
  const parts = handle.replace(/^kaggle:\/\//, '').split('/');
  // Each part is one directory of kagglehub's cache: `.` and `..` (which match [\w.-]+) would leave it.
  const ok =
    (parts.length === 4 || parts.length === 5) &&
    parts.every((p) => /^[\w.-]+$/.test(p) && segmentProblem(p) === null) &&
    (parts.length === 4 || /^\d+$/.test(parts[4]));
  if (!ok) throw new FormatError(handle, 'handle', `"${handle}": not a Kaggle model handle; expected ${KAGGLE_FORM}`);
  const [owner, model, framework, variation, version] = parts;
  return { owner, model, framework, variation, version: version === undefined ? null : Number(version) };
}

const handleString = (h: KaggleHandle, version = h.version): string =>
  `${h.owner}/${h.model}/${h.framework}/${h.variation}${version === null ? '' : `/${version}`}`;

/** `<cache>/models/owner/model/framework/variation`, checked to stay inside the cache. */
const kaggleVariationDir = (h: KaggleHandle): string =>
  joinInside(path.join(kagglehubCache(), 'models'), [h.owner, h.model, h.framework, h.variation], `kaggle://${handleString(h)}`);

/** The versions of a Kaggle model variation in kagglehub's cache, highest first. */
function cachedVersions(h: KaggleHandle): number[] {
  const dir = kaggleVariationDir(h);
  if (!isDir(dir)) return [];
  return fs
    .readdirSync(dir)
    .filter((n) => /^\d+$/.test(n) && isDir(path.join(dir, n)))
    .map(Number)
    .sort((a, b) => b - a);
}

function lookInKaggleCache(h: KaggleHandle, tried: string[]): string | null {
  const where = `kagglehub's cache${env('KAGGLEHUB_CACHE') ? ', $KAGGLEHUB_CACHE' : ''}`;
  const variationDir = kaggleVariationDir(h);
  const versions = cachedVersions(h);
  if (h.version === null) {
    if (versions.length > 0) return path.join(variationDir, String(versions[0]));
    tried.push(`${variationDir}/<version> (${where}): no version there`);
    return null;
  }
  const dir = path.join(variationDir, String(h.version));
  if (isDir(dir)) return dir;
  const others = versions.length > 0 ? `; versions there: ${versions.join(', ')} (kaggle://${handleString(h, versions[0])} loads one)` : '';
  tried.push(`${dir} (${where}): no such directory${others}`);
  return null;
}

function lookInHfCache(repo: string, revision: string | null, tried: string[]): string | null {
  const where = `the Hugging Face cache${env('HF_HUB_CACHE') ? ', $HF_HUB_CACHE' : env('HF_HOME') ? ', $HF_HOME/hub' : ''}`;
  const handle = `hf://${repo}${revision === null ? '' : `@${revision}`}`;
  const root = joinInside(hfHubCache(), [`models--${repo.replace(/\//g, '--')}`], handle);
  const snapshots = path.join(root, 'snapshots');
  if (!isDir(snapshots)) {
    tried.push(`${snapshots} (${where}): no such directory`);
    return null;
  }
  const ref = joinInside(path.join(root, 'refs'), (revision ?? 'main').split('/'), handle);
  if (fs.existsSync(ref)) {
    // A ref file holds a commit hash; anything else is refused without showing it (it is not ours to print).
    const commit = guarded(ref, () => readRegularFile(ref, 1024)).toString('utf8').trim();
    if (!/^[\w.-]+$/.test(commit) || segmentProblem(commit) !== null) {
      throw new FormatError(ref, 'ref', `${ref}: ref: expected a commit hash (letters, digits, '.', '-', '_'), got ${commit.length} other characters`);
    }
    const dir = path.join(snapshots, commit);
    if (isDir(dir)) return dir;
    tried.push(`${dir} (refs/${revision ?? 'main'} of ${where}): no such snapshot`);
    return null;
  }
  if (revision !== null) {
    const dir = joinInside(snapshots, revision.split('/'), handle);
    if (isDir(dir)) return dir;
    tried.push(`${dir} (${where}): no ref or snapshot "${revision}"`);
    return null;
  }
  const newest = fs
    .readdirSync(snapshots)
    .map((n) => path.join(snapshots, n))
    .filter(isDir)
    .sort((a, b) => fs.statSync(b).mtimeMs - fs.statSync(a).mtimeMs)[0];
  if (newest !== undefined) return newest;
  tried.push(`${snapshots} (${where}): no snapshot`);
  return null;
}

// ---------------------------------------------------------------------------------------------------------------
// Resolution
// ---------------------------------------------------------------------------------------------------------------

const NOT_DOWNLOADED = 'is not on this machine, and paligemma-ts downloads nothing';
const FORMS =
  'A preset is a built-in name (checkpoints/presets.ts), a local directory (a keras_hub preset or a Hugging Face checkpoint), ' +
  `${KAGGLE_FORM} or hf://<org>/<repo>[@<revision>].`;

const kaggleHowTo = (handle: string) =>
  `Get it with kagglehub where there is a network (a Kaggle account that accepted the Gemma license):\n` +
  `    python -c 'import kagglehub; print(kagglehub.model_download("${handle}"))'\n` +
  `  then use the same cache here (KAGGLEHUB_CACHE), copy the printed directory to $PALIGEMMA_PRESETS/<name>, or pass that directory.`;

const hfHowTo = (repo: string, revision: string | null) =>
  `Get it with huggingface_hub where there is a network (the PaliGemma repos are gated: accept the license, then huggingface-cli login):\n` +
  `    huggingface-cli download ${repo}${revision === null ? '' : ` --revision ${revision}`}\n` +
  `  then use the same cache here (HF_HUB_CACHE or HF_HOME), or pass the snapshot directory.`;

/**
 * The root of the installed package: the nearest folder above this bundle (dist/index.js, or a spec bundle
 * under dist/spec/) whose package.json is paligemma-ts', else above the working directory; undefined if none.
 */
export function packageRoot(): string | undefined {
  for (const start of [__dirname, process.cwd()]) {
    for (let dir = path.resolve(start); ; dir = path.dirname(dir)) {
      const file = path.join(dir, 'package.json');
      if (fs.existsSync(file)) {
        try {
          if ((JSON.parse(fs.readFileSync(file, 'utf8')) as { name?: unknown }).name === 'paligemma-ts') return dir;
        } catch {
          // not ours: keep looking above
        }
      }
      if (path.dirname(dir) === dir) break;
    }
  }
  return undefined;
}

/** The directory of a preset shipped in the package (checkpoints/presets.ts: SHIPPED_PRESETS). */
export function shippedPresetDir(shipped: ShippedPreset): string {
  const root = packageRoot();
  const dir = root === undefined ? undefined : path.join(root, shipped.dir);
  if (dir === undefined || !fs.existsSync(path.join(dir, 'config.json'))) {
    throw new Error(`the shipped preset '${shipped.name}' is missing: expected ${shipped.dir}/config.json in the package (${root ?? `no paligemma-ts package.json above ${__dirname}`})`);
  }
  return dir;
}

/**
 * Where a preset's files are. Throws for an unknown name (with the closest names), a malformed handle or
 * a local path that does not exist; a known preset that is not on disk gives `dir: null` and the paths tried.
 */
export function resolvePreset(preset: string): ResolvedPreset {
  const tried: string[] = [];
  const found = (dir: string | null, builtin: PresetInfo | undefined, howToGet: string): ResolvedPreset => ({
    preset,
    builtin,
    dir,
    format: dir === null ? null : presetFormat(dir),
    tried,
    howToGet,
  });

  const shipped = findShippedPreset(preset);
  if (shipped !== undefined) return found(shippedPresetDir(shipped), undefined, '');

  const builtin = findPreset(preset);
  if (builtin !== undefined) {
    const root = env('PALIGEMMA_PRESETS');
    if (root === undefined) tried.push('$PALIGEMMA_PRESETS/<name>: PALIGEMMA_PRESETS is not set');
    else {
      for (const name of [...new Set([builtin.name, preset])]) {
        const dir = path.join(expandHome(root), name);
        if (isDir(dir)) return found(dir, builtin, '');
        tried.push(`${dir} ($PALIGEMMA_PRESETS): no such directory`);
      }
    }
    const h = parseKaggleHandle(builtin.kaggleHandle);
    return found(lookInKaggleCache(h, tried), builtin, kaggleHowTo(handleString(h)));
  }

  const scheme = /^([a-z][\w+.-]*):\/\//i.exec(preset)?.[1]?.toLowerCase();
  if (scheme === 'kaggle') {
    let h: KaggleHandle;
    try {
      h = parseKaggleHandle(preset);
    } catch {
      throw new FormatError(preset, 'handle', `fromPreset("${preset}"): not a Kaggle model handle; expected ${KAGGLE_FORM} (no empty, "." or ".." parts)`);
    }
    return found(lookInKaggleCache(h, tried), findPresetByHandle(preset), kaggleHowTo(handleString(h)));
  }
  if (scheme === 'hf') {
    const m = /^hf:\/\/([\w.-]+\/[\w.-]+)(?:@([\w./-]+))?$/.exec(preset);
    // Repo and revision parts become directories of the cache: `.`, `..` and empty parts would leave it.
    const parts = m === null ? [] : [...m[1].split('/'), ...(m[2]?.split('/') ?? [])];
    if (m === null || parts.some((p) => segmentProblem(p) !== null)) {
      throw new FormatError(preset, 'handle', `fromPreset("${preset}"): not a Hugging Face repo; expected hf://<org>/<repo>[@<revision>] (no empty, "." or ".." parts)`);
    }
    return found(lookInHfCache(m[1], m[2] ?? null, tried), undefined, hfHowTo(m[1], m[2] ?? null));
  }
  if (scheme !== undefined) throw new Error(`fromPreset("${preset}"): the ${scheme}:// scheme is not supported here. ${FORMS}`);

  const local = expandHome(preset);
  // a save killed between its two renames (checkpoints/atomic.ts writeDirAtomic) left the previous, complete
  // version aside: put it back, as the next save would (best effort: a read-only place stays as it is)
  if (!fs.existsSync(local)) {
    try {
      recoverDir(local);
    } catch {
      // not ours to fix: the error below names the missing directory
    }
  }
  if (isDir(local) || (local.endsWith('.npz') && fs.existsSync(local))) return found(path.resolve(local), undefined, '');
  if (/[/\\]/.test(preset) || preset.startsWith('.') || preset.startsWith('~') || fs.existsSync(local)) {
    throw new Error(`fromPreset("${preset}"): ${path.resolve(local)} is not a directory. ${FORMS}`);
  }
  throw new Error(`fromPreset("${preset}"): unknown preset. Closest built-in presets: ${closestPresetNames(preset).join(', ')}. ${FORMS}`);
}

/** The format of a preset directory, from its config.json (or task.json). */
export function presetFormat(dir: string): PresetFormat {
  if (dir.endsWith('.npz') && fs.existsSync(dir) && !isDir(dir)) return 'bigvision';
  if (isDir(dir) && npzFiles(dir).length > 0 && !fs.existsSync(path.join(dir, 'model.weights.h5')) && !hasSafetensors(dir)) return 'bigvision';
  const configFile = path.join(dir, 'config.json');
  const taskFile = path.join(dir, 'task.json');
  if (fs.existsSync(configFile)) {
    const json = readJson(configFile);
    const record = typeof json === 'object' && json !== null ? (json as Record<string, unknown>) : {};
    if (record['class_name'] === 'PaliGemmaBackbone') return 'keras';
    if (isHfPaliGemmaConfig(json)) return 'hf';
    const what = record['class_name'] !== undefined ? `class_name ${JSON.stringify(record['class_name'])}` : record['model_type'] !== undefined ? `model_type ${JSON.stringify(record['model_type'])}` : 'neither class_name nor model_type';
    throw new Error(`${configFile}: not a PaliGemma config (${what}; expected class_name "PaliGemmaBackbone" or model_type "paligemma")`);
  }
  if (fs.existsSync(taskFile) && taskBackbone(taskFile) !== undefined) return 'keras';
  // What the directory holds is not listed: it may be any directory of the user's.
  throw new FormatError(
    dir,
    'config.json',
    `${dir}: not a PaliGemma preset: expected config.json (keras_hub: class_name PaliGemmaBackbone; Hugging Face: model_type paligemma, ` +
      `with *.safetensors) or a keras_hub task.json whose backbone is a PaliGemmaBackbone${isDir(dir) ? '' : '; no such directory'}`,
  );
}

/** The backbone config inside a keras_hub task.json, if it is a PaliGemmaBackbone. */
function taskBackbone(file: string): unknown {
  const json = readJson(file) as { config?: { backbone?: { class_name?: unknown } } } | null;
  const backbone = json?.config?.backbone;
  return backbone?.class_name === 'PaliGemmaBackbone' ? backbone : undefined;
}

function readJson(file: string): unknown {
  return readJsonFile(file, MAX_CONFIG_BYTES);
}

function notOnDiskError(r: ResolvedPreset, extra = ''): Error {
  const builtin = r.builtin !== undefined ? `\nFor initialised weights with this architecture: fromPreset("${r.preset}", { loadWeights: false }).` : '';
  return new Error(`fromPreset("${r.preset}"): the preset ${NOT_DOWNLOADED}. Looked in:\n  - ${r.tried.join('\n  - ')}\n${r.howToGet}${builtin}${extra}`);
}

// ---------------------------------------------------------------------------------------------------------------
// Config and weights of a directory
// ---------------------------------------------------------------------------------------------------------------

/** The `.npz` files of a directory, sorted. */
const npzFiles = (dir: string): string[] => fs.readdirSync(dir).filter((n) => n.endsWith('.npz')).sort();

/** The big_vision `.npz` of a preset path: the file itself, or the only one in a directory. */
function npzFile(dir: string): string {
  if (!isDir(dir)) return dir;
  const files = npzFiles(dir);
  if (files.length === 1) return path.join(dir, files[0]);
  throw new Error(`${dir}: ${files.length} .npz files (${files.join(', ')}); pass one of them: fromPreset("${path.join(dir, files[0])}", ...)`);
}

/** A config option: a built-in preset name or a config. */
function configOption(config: string | PaliGemmaConfig): PaliGemmaConfig {
  if (typeof config !== 'string') return config;
  const row = findPreset(config);
  if (row === undefined) throw new Error(`options.config: unknown preset "${config}". Closest built-in presets: ${closestPresetNames(config).join(', ')}`);
  return row.config;
}

/** The config of a big_vision checkpoint (see the header): option, config.json beside it, or inferred. */
function bigVisionConfig(where: string, option: string | PaliGemmaConfig | undefined, arrays?: NpzArrays): PaliGemmaConfig {
  if (option !== undefined) return configOption(option);
  const dir = isDir(where) ? where : path.dirname(where);
  const configFile = path.join(dir, 'config.json');
  if (fs.existsSync(configFile)) {
    const json = readJson(configFile);
    if (isHfPaliGemmaConfig(json)) return decodeHfConfig(json, configFile);
    return readPresetConfig(dir);
  }
  const file = npzFile(where);
  return inferBigVisionConfig(arrays ?? readNpz(file), PRESETS.map((p) => [p.name, p.config] as const), file);
}

/** The backbone config of a preset directory (keras_hub, Hugging Face or big_vision). */
export function readDirConfig(dir: string, format: PresetFormat = presetFormat(dir), config?: string | PaliGemmaConfig): PaliGemmaConfig {
  if (format === 'bigvision') return bigVisionConfig(dir, config);
  if (format === 'hf') {
    const file = path.join(dir, 'config.json');
    return decodeHfConfig(readJson(file), file);
  }
  if (fs.existsSync(path.join(dir, 'config.json'))) return readPresetConfig(dir);
  const file = path.join(dir, 'task.json');
  return decodeConfig(taskBackbone(file), `${file}: config.backbone`);
}

function readDirWeights(dir: string, format: PresetFormat, configOpt?: string | PaliGemmaConfig): { config: PaliGemmaConfig; weights: WeightMap } {
  if (format === 'bigvision') {
    const file = npzFile(dir);
    const arrays = readNpz(file);
    const config = bigVisionConfig(dir, configOpt, arrays);
    return { config, weights: bigVisionWeights(config, arrays, file) };
  }
  if (format === 'hf') {
    if (!hasSafetensors(dir)) throw new Error(`${dir}: a Hugging Face config.json but no model.safetensors or model.safetensors.index.json`);
    return readHfCheckpoint(dir);
  }
  return { config: readDirConfig(dir, format), weights: readKerasWeights(dir) };
}

/** The config of any preset: from its files when on disk, else from the built-in table. */
export function presetConfig(preset: string): PaliGemmaConfig {
  const r = resolvePreset(preset);
  if (r.dir !== null) return readDirConfig(r.dir, r.format!);
  if (r.builtin !== undefined) return r.builtin.config;
  throw notOnDiskError(r);
}

/** Reports progress as weights are read (counted in parameters). */
function withProgress(weights: WeightMap, onProgress: NonNullable<FromPresetOptions['onProgress']>): WeightMap {
  const total = [...weights.values()].reduce((n, w) => n + w.shape.reduce((a, b) => a * b, 1), 0);
  let done = 0;
  return new Map(
    [...weights].map(([key, w]) => [
      key,
      {
        shape: w.shape,
        ...(w.file !== undefined ? { file: w.file } : {}),
        read: () => {
          const values = w.read();
          done += values.length;
          onProgress(done, total, key);
          return values;
        },
      },
    ]),
  );
}

// ---------------------------------------------------------------------------------------------------------------
// fromPreset
// ---------------------------------------------------------------------------------------------------------------

/**
 * PaliGemma params from a preset (see the header for what `preset` may be). Checks every weight's key and shape
 * against the config before creating a tensor, and refuses weights that would not fit the backend (the wasm
 * heap) before allocating them.
 */
export function fromPreset(preset: string, options: FromPresetOptions = {}): PaliGemmaParams {
  const r = resolvePreset(preset);
  const loadWeights = options.loadWeights ?? true;
  if (options.config !== undefined && r.format !== 'bigvision') {
    throw new Error(`fromPreset("${preset}"): options.config is for big_vision .npz checkpoints, which carry no config; this preset's files have their own`);
  }
  if (!loadWeights) {
    const config = r.dir !== null ? readDirConfig(r.dir, r.format!, options.config) : r.builtin?.config;
    if (config === undefined) throw notOnDiskError(r, '\nWithout its files its config is unknown too (loadWeights: false needs a built-in name or the files).');
    guard(preset, config);
    return initParams(config, options.key ?? d.key(options.seed ?? 0));
  }
  if (r.dir === null) throw notOnDiskError(r);
  const { config, weights } = readDirWeights(r.dir, r.format!, options.config);
  guard(preset, config);
  const source = options.onProgress ? withProgress(weights, options.onProgress) : weights;
  // In a tidy scope, so a read that fails halfway (a file cut meanwhile) leaves no tensor behind.
  return tf.tidy(() => decodeParams(config, source, r.dir!) as unknown as tf.TensorContainer) as unknown as PaliGemmaParams;
}

/** One macrotask: timers, I/O and UI events run before the next weight is read. */
const yieldToEventLoop = (): Promise<void> => new Promise((resolve) => (typeof setImmediate === 'function' ? setImmediate(resolve) : setTimeout(resolve, 0)));

/**
 * `fromPreset`, yielding to the event loop before each weight read, so a notebook or a UI keeps running
 * while a multi-GB preset loads (transformers.js' from_pretrained is async; keras_hub's from_preset, and
 * our `fromPreset`, are not). The same checks, in the same order, with the same errors: every key and shape
 * against the config before any weight is read, the backend's memory line before any tensor is made.
 * `onProgress` is called after each weight. A read that fails halfway frees the tensors made so far.
 */
export async function fromPresetAsync(preset: string, options: FromPresetOptions = {}): Promise<PaliGemmaParams> {
  const r = resolvePreset(preset);
  if ((options.loadWeights ?? true) === false || r.dir === null || (options.config !== undefined && r.format !== 'bigvision')) {
    await yieldToEventLoop();
    return fromPreset(preset, options); // nothing to read in steps: initialised weights, or fromPreset's error
  }
  const { config, weights } = readDirWeights(r.dir, r.format!, options.config);
  guard(preset, config);
  checkWeights(config, weights, r.dir);
  const specs = kerasLayout(config);
  const total = specs.reduce((n, s) => n + s.kerasShape.reduce((a, b) => a * b, 1), 0);
  let done = 0;
  let root: Record<string, unknown> = skeleton(config);
  try {
    for (const s of specs) {
      await yieldToEventLoop();
      const values = weights.get(s.h5)!.read();
      root = buildTree<Record<string, unknown>>([s], () => values, root);
      done += values.length;
      options.onProgress?.(done, total, s.h5);
    }
  } catch (e) {
    d.disposeTree(root);
    throw e;
  }
  return root as unknown as PaliGemmaParams;
}

/** Refuse, before any allocation, params that would not fit the current backend (see src/runtime.ts). */
function guard(preset: string, config: PaliGemmaConfig): void {
  validateConfig(config, `config of fromPreset("${preset}")`); // HF and big_vision configs are not checked on decode
  const count = parameterCount(config);
  assertFitsBackend(count * 4, `fromPreset("${preset}"): ${count.toLocaleString('en-US')} parameters as float32`);
  // A config within CONFIG_MAXIMA can still describe more parameters than this machine holds: refuse it
  // before initializers (loadWeights: false) or the weight checks allocate anything.
  if (count * 4 > os.totalmem()) {
    throw new FormatError(
      preset,
      'config',
      `fromPreset("${preset}"): the config describes ${count.toLocaleString('en-US')} parameters (${(count * 4 / 2 ** 30).toFixed(1)} GiB as float32), more than this machine's memory (${(os.totalmem() / 2 ** 30).toFixed(1)} GiB)`,
    );
  }
}

/** A preset directory (keras_hub or Hugging Face): `fromPreset(dir)`. */
export function loadPreset(dir: string): PaliGemmaParams {
  return fromPreset(dir);
}
