/**
 * `paligemma presets`: every preset this package knows, shipped ones first, then keras_hub's built-in table
 * (checkpoints/presets.ts), with its size, whether its files are on this machine (looked up where `fromPreset`
 * looks: src/runtime/preset.ts) and roughly what memory a forward pass needs.
 */
import { defineCommand } from './command';
import { table } from './parse';
import { PRESETS, SHIPPED_PRESETS } from '../../checkpoints/presets';
import { parameterCount } from '../../checkpoints/params';
import { imageSequenceLength, type PaliGemmaConfig } from '../../models/config';
import { presetConfig, resolvePreset } from '../runtime/preset';
import { formatBytes, WASM_SAFE_BYTES_DEFAULT } from '../runtime/backend';

/** The text length assumed by `memoryNeeded`: a prompt and an answer of a few dozen tokens. */
export const ESTIMATE_TEXT_TOKENS = 64;

/**
 * Bytes a batch-1 forward pass needs, roughly: the float32 weights, plus the largest attention scores alive at
 * once, held twice (the logits and their softmax): the ViT's heads x n x n over n patches, or the decoder's
 * query heads x L x L over L = image tokens + `textTokens`. Other activations are small beside these.
 */
export function memoryNeeded(c: PaliGemmaConfig, textTokens = ESTIMATE_TEXT_TOKENS): number {
  const patches = (c.image_size / c.vit_patch_size) ** 2;
  const L = imageSequenceLength(c) + textTokens;
  const scores = Math.max(c.vit_num_heads * patches * patches, c.num_query_heads * L * L);
  return 4 * parameterCount(c) + 2 * 4 * scores;
}

/** 2_923_335_408 -> "2.92 B", 107_168 -> "107.2 K". */
export function formatCount(n: number): string {
  if (n >= 1e9) return `${(n / 1e9).toFixed(2)} B`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(1)} M`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)} K`;
  return String(n);
}

interface Row {
  readonly name: string;
  readonly config: PaliGemmaConfig;
  readonly dir: string | null;
  /** Why the files found for it are not a preset (a directory without a config.json, ...). */
  readonly broken?: string;
}

/** Where a preset's files are; a directory that is there but not a preset is reported, not thrown. */
function located(name: string): Pick<Row, 'dir' | 'broken'> {
  try {
    return { dir: resolvePreset(name).dir };
  } catch (e) {
    return { dir: null, broken: (e as Error).message };
  }
}

function rows(): { shipped: Row[]; builtin: Row[] } {
  const shipped = SHIPPED_PRESETS.map((p) => ({ name: p.name, ...located(p.name), config: presetConfig(p.name) }));
  const builtin = PRESETS.map((p) => ({ name: p.name, ...located(p.name), config: p.config }));
  return { shipped, builtin };
}

const HEADER = ['name', 'params', 'float32', 'here', 'needs ~', 'wasm'];

function cells(r: Row): string[] {
  const n = parameterCount(r.config);
  const wasm = 4 * n <= WASM_SAFE_BYTES_DEFAULT ? 'yes' : 'no';
  return [r.name, formatCount(n), formatBytes(4 * n), r.broken !== undefined ? 'bad' : r.dir === null ? 'no' : 'yes', formatBytes(memoryNeeded(r.config)), wasm];
}

export const presetsCommand = defineCommand({
  name: 'presets',
  summary: 'every preset: parameters, float32 size, whether it is on this machine, and the memory it needs',
  example: 'paligemma presets',
  flags: {},
  async run(_flags, _positionals, io) {
    const { shipped, builtin } = rows();
    const lines = table([HEADER, ...shipped.map(cells), ...builtin.map(cells)]);
    io.out('shipped in this package (--preset <name>):');
    io.out(lines[0]);
    for (const l of lines.slice(1, 1 + shipped.length)) io.out(l);
    io.out('');
    io.out("keras_hub's built-in presets (--preset <name>; nothing is downloaded: fromPreset looks in $PALIGEMMA_PRESETS and the kagglehub cache):");
    io.out(lines[0]);
    for (const l of lines.slice(1 + shipped.length)) io.out(l);
    const aliases = PRESETS.flatMap((p) => p.aliases.map((a) => `${a} = ${p.name}`));
    if (aliases.length > 0) io.out(`aliases: ${aliases.join(', ')}`);
    io.out('');
    const here = [...shipped, ...builtin].filter((r) => r.dir !== null || r.broken !== undefined);
    const found = here.filter((r) => r.dir !== null);
    io.out(here.length === 0 ? 'on this machine: none' : 'on this machine:');
    for (const r of found) io.out(`  ${r.name}: ${r.dir}`);
    for (const r of [...shipped, ...builtin]) if (r.broken !== undefined) io.out(`  ${r.name}: not usable: ${r.broken}`);
    io.out('');
    io.out(
      `needs ~: float32 weights + twice the largest attention scores of a batch-1 forward (${ESTIMATE_TEXT_TOKENS} text tokens); ` +
        `wasm: whether the float32 weights fit under its ${formatBytes(WASM_SAFE_BYTES_DEFAULT)} line (the 4 GiB heap); ` +
        'cpu and webgpu take any size that fits in memory.',
    );
    return 0;
  },
});
